//! The benchmark's sections; each starts what it needs, measures, and returns its table.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

pub mod convergence;
pub mod gray;
pub mod lag;
pub mod persistence;
pub mod replicated;
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

/// Connections [`seed`] writes over.
pub(crate) const SEED_CONNECTIONS: usize = 32;

/// Sessions a node holds (its admin `/cluster`).
pub(crate) async fn held(admin: std::net::SocketAddr) -> Result<usize> {
    use anyhow::Context;
    let view = crate::http::get_json(admin, "/cluster").await?;
    Ok(view["sessions"]
        .as_u64()
        .context("no sessions in /cluster")? as usize)
}

/// Creates `sessions` sessions, one `method path` with `body` and no cookie each, spread
/// over `targets` on [`SEED_CONNECTIONS`] connections. Returns the number of failed
/// requests (failing if more than 1% fail).
pub(crate) async fn seed(
    targets: &[std::net::SocketAddr],
    sessions: usize,
    method: hyper::Method,
    path: &'static str,
    body: bytes::Bytes,
) -> Result<usize> {
    use anyhow::Context;
    use std::cell::Cell;
    let left = Cell::new(sessions);
    let errors = Cell::new(0usize);
    let workers = (0..SEED_CONNECTIONS).map(|i| {
        let (method, body, left, errors) = (method.clone(), body.clone(), &left, &errors);
        let addr = targets[i % targets.len()];
        async move {
            let mut conn = None;
            while left.get() > 0 {
                left.set(left.get() - 1);
                let ok = async {
                    if conn.is_none() {
                        conn = Some(crate::http::Conn::connect(addr).await?);
                    }
                    let c = conn.as_mut().expect("connected");
                    let a = c.send(method.clone(), path, None, body.clone()).await?;
                    anyhow::ensure!(
                        a.status == hyper::StatusCode::OK,
                        "{method} {path}: {}",
                        a.status
                    );
                    anyhow::Ok(())
                }
                .await;
                if ok.is_err() {
                    conn = None;
                    errors.set(errors.get() + 1);
                    left.set(left.get() + 1);
                    if errors.get() > sessions / 100 + 10 {
                        return ok;
                    }
                }
            }
            Ok(())
        }
    });
    for r in futures::future::join_all(workers).await {
        r.context("creating the sessions failed")?;
    }
    Ok(errors.get())
}
