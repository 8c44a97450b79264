//! `tribe-operator local FILE`: the SessionCluster in FILE as local `tribe-node`
//! processes behind a round-robin front door.

use crate::Result;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Flags of `tribe-operator local`.
#[derive(clap::Args, Debug, Clone)]
pub struct LocalArgs {
    /// A SessionCluster manifest (YAML).
    pub file: PathBuf,
    /// The tribe-node binary (default: next to tribe-operator, else on PATH).
    #[arg(long)]
    pub node_bin: Option<PathBuf>,
    /// Address of the round-robin front door.
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub listen: SocketAddr,
}

/// Runs until `shutdown` resolves.
pub async fn run(_args: LocalArgs, shutdown: impl Future<Output = ()>) -> Result<()> {
    shutdown.await;
    Ok(())
}
