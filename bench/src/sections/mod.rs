//! The benchmark's sections; each starts what it needs, measures, and returns its table.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

pub mod convergence;
pub mod lag;
pub mod scaling;
pub mod sidecar;
pub mod throughput;
pub mod transfer;
pub mod wire;

/// What every section gets.
#[derive(Debug, Clone)]
pub struct Env {
    /// The `tribe-node` binary.
    pub node_bin: PathBuf,
    /// The nginx binary.
    pub nginx: PathBuf,
    /// `--quick`: shorter runs, fewer sessions, fewer cluster sizes.
    pub quick: bool,
    /// Cluster sizes for the scaling section (default 2,4,8,16; quick 2,4).
    pub scaling_nodes: Option<Vec<usize>>,
}

/// Polls `check` every 5 ms until it returns `Some`, or fails after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => String::new(),
            Err(e) => format!(": {e:#}"),
        };
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}{last}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Progress on stderr (the report goes to stdout).
pub fn progress(msg: impl std::fmt::Display) {
    eprintln!("tribe-bench: {msg}");
}
