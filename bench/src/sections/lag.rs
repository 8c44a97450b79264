//! (to come)

use anyhow::{bail, Result};

use super::Env;
use crate::report::Table;

/// Runs the section.
pub async fn run(_env: &Env) -> Result<Table> {
    bail!("the lag section is not written yet")
}
