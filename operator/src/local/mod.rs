//! `tribe-operator local FILE`: the SessionCluster in FILE as `tribe-node` processes on
//! this machine (static peers on 127.0.0.1), behind a round-robin front door.
//!
//! A supervision loop keeps the processes at the file's `replicas`: it restarts nodes
//! that exit (with backoff), re-reads the file when its mtime changes, starts or stops
//! nodes to match, and restarts the others one at a time, each after the previous one
//! is ready again, when their command line changed (static peers change with the size).

pub mod plan;
pub mod proxy;

use crate::controller::validate;
use crate::crd::SessionCluster;
use crate::{Error, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use proxy::Backends;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime};
use tokio::process::{Child, Command};
use tokio::time::Instant;
use tracing::{info, warn};

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
    /// First port of the nodes: node i uses base+10i (http), +1 (admin), +2 (replication).
    #[arg(long, default_value_t = 18100)]
    pub base_port: u16,
    /// Directory for the cluster key and node logs (default: a temp dir per cluster).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// How long a stopping node gets before SIGKILL.
    #[arg(long, default_value = "30", value_name = "SECONDS")]
    pub grace: u64,
}

/// Reads a SessionCluster manifest and checks its spec.
pub fn load(path: &Path) -> Result<SessionCluster> {
    let text = std::fs::read_to_string(path)?;
    let sc: SessionCluster = serde_saphyr::from_str(&text)
        .map_err(|e| Error::Serialization(format!("{}: {e}", path.display())))?;
    validate(&sc.spec).map_err(Error::InvalidSpec)?;
    Ok(sc)
}

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Finds the node binary: the flag, else `tribe-node` next to this executable, else PATH.
fn node_binary(flag: Option<PathBuf>) -> PathBuf {
    if let Some(p) = flag {
        return p;
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        let candidate = dir.join("tribe-node");
        if candidate.is_file() {
            return candidate;
        }
    }
    PathBuf::from("tribe-node")
}

/// Writes a random cluster key to `dir/cluster.key` (mode 0600) unless one exists.
fn ensure_key(dir: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    let path = dir.join("cluster.key");
    if !path.exists() {
        std::fs::write(&path, crate::resources::random_key())?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(path)
}

/// One node process slot.
struct Slot {
    index: usize,
    args: Vec<String>,
    child: Option<Child>,
    started: Instant,
    failures: u32,
    restart_at: Option<Instant>,
    ready: bool,
}

struct Supervisor {
    bin: PathBuf,
    dir: PathBuf,
    key: PathBuf,
    base: u16,
    grace: Duration,
    slots: Vec<Slot>,
    prober: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Empty<hyper::body::Bytes>,
    >,
}

impl Supervisor {
    fn spawn(&self, slot: &mut Slot) {
        let log_path = self.dir.join(format!("node-{}.log", slot.index));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path);
        let (out, err) = match log.and_then(|f| Ok((f.try_clone()?, f))) {
            Ok((a, b)) => (Stdio::from(a), Stdio::from(b)),
            Err(_) => (Stdio::inherit(), Stdio::inherit()),
        };
        match Command::new(&self.bin)
            .args(&slot.args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
        {
            Ok(child) => {
                info!(node = slot.index, pid = child.id(), http = %plan::http_addr(self.base, slot.index),
                      log = %log_path.display(), "started node");
                slot.child = Some(child);
                slot.started = Instant::now();
                slot.restart_at = None;
                slot.ready = false;
            }
            Err(e) => {
                warn!(node = slot.index, bin = %self.bin.display(), error = %e, "cannot start node");
                self.schedule_restart(slot);
            }
        }
    }

    fn schedule_restart(&self, slot: &mut Slot) {
        if slot.started.elapsed() > Duration::from_secs(60) {
            slot.failures = 0;
        }
        slot.failures = slot.failures.saturating_add(1);
        let delay = Duration::from_secs(1 << slot.failures.saturating_sub(1).min(5))
            .min(Duration::from_secs(30));
        slot.restart_at = Some(Instant::now() + delay);
        slot.ready = false;
    }

    /// SIGTERM, then SIGKILL after the grace period.
    async fn stop(grace: Duration, slot: &mut Slot) {
        let Some(mut child) = slot.child.take() else {
            return;
        };
        if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        match tokio::time::timeout(grace, child.wait()).await {
            Ok(_) => info!(node = slot.index, "node stopped"),
            Err(_) => {
                warn!(node = slot.index, "node did not stop in time; killing it");
                let _ = child.kill().await;
            }
        }
        slot.ready = false;
    }

    async fn is_ready(&self, index: usize) -> bool {
        let Ok(uri) =
            format!("http://{}/readyz", plan::admin_addr(self.base, index)).parse::<http::Uri>()
        else {
            return false;
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(1), self.prober.get(uri)).await,
            Ok(Ok(resp)) if resp.status().is_success()
        )
    }

    /// One supervision round towards `sc`.
    async fn tick(&mut self, sc: &SessionCluster) {
        let replicas = usize::try_from(sc.spec.replicas.max(0))
            .unwrap_or(0)
            .min(plan::max_slots(self.base));
        // Scale down: highest slots first.
        while self.slots.len() > replicas {
            if let Some(mut slot) = self.slots.pop() {
                info!(node = slot.index, "scaling down");
                Self::stop(self.grace, &mut slot).await;
            }
        }
        // Scale up.
        while self.slots.len() < replicas {
            let index = self.slots.len();
            let mut slot = Slot {
                index,
                args: plan::node_args(sc, self.base, index, replicas, &self.key),
                child: None,
                started: Instant::now(),
                failures: 0,
                restart_at: None,
                ready: false,
            };
            self.spawn(&mut slot);
            self.slots.push(slot);
        }
        // Exited nodes restart after a backoff.
        let mut slots = std::mem::take(&mut self.slots);
        for slot in &mut slots {
            if let Some(child) = &mut slot.child {
                if let Ok(Some(status)) = child.try_wait() {
                    warn!(node = slot.index, %status, "node exited; restarting");
                    slot.child = None;
                    self.schedule_restart(slot);
                }
            }
            if slot.child.is_none() && slot.restart_at.is_some_and(|t| t <= Instant::now()) {
                self.spawn(slot);
            }
        }
        for slot in &mut slots {
            slot.ready = slot.child.is_some() && self.is_ready(slot.index).await;
        }
        // Rolling restart of nodes whose command line changed, one at a time, only
        // while every other node is ready.
        let stale = slots
            .iter()
            .position(|s| s.args != plan::node_args(sc, self.base, s.index, replicas, &self.key));
        if let Some(i) = stale {
            if slots.iter().enumerate().all(|(j, s)| j == i || s.ready) {
                let slot = &mut slots[i];
                info!(node = slot.index, "configuration changed; restarting node");
                Self::stop(self.grace, slot).await;
                slot.args = plan::node_args(sc, self.base, slot.index, replicas, &self.key);
                self.spawn(slot);
            }
        }
        self.slots = slots;
    }

    fn ready_backends(&self) -> Vec<SocketAddr> {
        self.slots
            .iter()
            .filter(|s| s.ready)
            .map(|s| plan::http_addr(self.base, s.index))
            .collect()
    }

    async fn stop_all(&mut self) {
        let grace = self.grace;
        futures::future::join_all(self.slots.iter_mut().map(|s| Self::stop(grace, s))).await;
    }
}

/// Runs the cluster in `args.file` until `shutdown` resolves.
pub async fn run(args: LocalArgs, shutdown: impl Future<Output = ()>) -> Result<()> {
    let mut sc = load(&args.file)?;
    let name = kube::ResourceExt::name_any(&sc);
    let dir = args
        .work_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("tribe-local-{name}")));
    let key = ensure_key(&dir)?;
    let bin = node_binary(args.node_bin.clone());
    let needed = usize::try_from(sc.spec.replicas.max(0)).unwrap_or(0);
    if needed > plan::max_slots(args.base_port) {
        return Err(Error::InvalidSpec(format!(
            "--base-port {} leaves room for fewer than {needed} nodes",
            args.base_port
        )));
    }

    let backends = Backends::default();
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    info!(front_door = %listener.local_addr()?, nodes = sc.spec.replicas, bin = %bin.display(),
          work_dir = %dir.display(), "running SessionCluster {name} locally");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let front = tokio::spawn(proxy::serve(listener, backends.clone(), async {
        let _ = stop_rx.await;
    }));

    let mut sup = Supervisor {
        bin,
        dir,
        key,
        base: args.base_port,
        grace: Duration::from_secs(args.grace),
        slots: Vec::new(),
        prober: hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(hyper_util::client::legacy::connect::HttpConnector::new()),
    };
    let mut seen_mtime = mtime(&args.file);
    tokio::pin!(shutdown);
    loop {
        sup.tick(&sc).await;
        let ready = sup.ready_backends();
        if ready != backends.get() {
            info!(
                ready = ready.len(),
                of = sup.slots.len(),
                "front door backends changed"
            );
        }
        backends.set(ready);
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        let now = mtime(&args.file);
        if now != seen_mtime {
            seen_mtime = now;
            match load(&args.file) {
                Ok(new) => {
                    if new.spec != sc.spec {
                        info!(replicas = new.spec.replicas, "file changed; reconciling");
                    }
                    sc = new;
                }
                Err(e) => {
                    warn!(error = %e, "file changed but cannot be used; keeping the previous spec")
                }
            }
        }
    }
    info!("stopping nodes");
    backends.set(Vec::new());
    let _ = stop_tx.send(());
    sup.stop_all().await;
    let _ = front.await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_reads_and_validates() {
        let dir = std::env::temp_dir().join(format!("tribe-local-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.yaml");
        std::fs::write(&good, "apiVersion: tribe.rs/v1alpha1\nkind: SessionCluster\nmetadata: {name: shop}\nspec: {replicas: 2}\n").unwrap();
        let sc = load(&good).unwrap();
        assert_eq!(sc.spec.replicas, 2);
        assert_eq!(sc.spec.session.timeout, "30m", "defaults apply");
        let bad = dir.join("bad.yaml");
        std::fs::write(&bad, "apiVersion: tribe.rs/v1alpha1\nkind: SessionCluster\nmetadata: {name: shop}\nspec: {replicas: 2, replication: {backups: 5}}\n").unwrap();
        assert!(matches!(load(&bad), Err(Error::InvalidSpec(_))));
        let key = ensure_key(&dir).unwrap();
        let first = std::fs::read_to_string(&key).unwrap();
        ensure_key(&dir).unwrap();
        assert_eq!(
            std::fs::read_to_string(&key).unwrap(),
            first,
            "the key is kept"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
