//! `tribe-operator local FILE`: the SessionCluster in FILE as `tribe-node` processes on
//! this machine, behind a round-robin front door, with a live table of the nodes.
//!
//! Each node gets the environment the Deployment would give its pods
//! ([`crate::resources::node_settings`]), with only what differs on one machine replaced
//! ([`plan`]): its own ports on 127.0.0.1 and static membership with the other nodes as
//! peers.
//!
//! A supervision loop (every 500 ms) keeps the processes at the file's `replicas`: it
//! restarts nodes that exit (with backoff), re-reads the file when its mtime changes,
//! starts nodes or drains the highest ones to match, and restarts the others one at a
//! time, each only while every other node is ready, when their environment changed
//! (static peers change with the size). Nothing in the loop waits for a node to stop:
//! a draining node is SIGTERMed, watched, and SIGKILLed after `--grace`.
//!
//! SIGINT/SIGTERM: the front door closes, every node gets SIGTERM at once, and the
//! command exits 0 when they have all exited; a second signal SIGKILLs them. Nodes run
//! in their own process group, so a terminal's Ctrl-C reaches only the operator, which
//! stops them in order.

pub mod plan;
pub mod proxy;
pub mod view;

use crate::controller::validate;
use crate::crd::SessionCluster;
use crate::{Error, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use proxy::Backends;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{info, warn};
use tribe_api::{ClusterView, LogFormat};
use view::{Display, Header, LogTail, NodeState, Row};

/// Flags of `tribe-operator local`.
#[derive(clap::Args, Debug, Clone)]
pub struct LocalArgs {
    /// A SessionCluster manifest (YAML).
    pub file: PathBuf,
    /// The tribe-node binary (default: next to tribe-operator, else on PATH).
    #[arg(long)]
    pub node_bin: Option<PathBuf>,
    /// Address of the round-robin front door (open http://LISTEN/).
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub listen: SocketAddr,
    /// First port of the nodes: node i uses base+10i (http), +1 (admin), +2 (replication).
    #[arg(long, default_value_t = 18100)]
    pub base_port: u16,
    /// Directory for the cluster key and the logs (default: $TMPDIR/tribe-local-NAME).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// How long a draining node gets to hand its sessions over before SIGKILL.
    #[arg(long, default_value = "30", value_name = "SECONDS")]
    pub grace: u64,
}

/// Reads a SessionCluster manifest and checks its spec. Without a namespace it is in
/// `default`, as `kubectl apply` would put it (the cluster name and multicast group
/// derive from the namespace).
pub fn load(path: &Path) -> Result<SessionCluster> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| context(e, format!("cannot read {}", path.display())))?;
    let mut sc: SessionCluster = serde_saphyr::from_str(&text)
        .map_err(|e| Error::Serialization(format!("{}: {e}", path.display())))?;
    validate(&sc.spec).map_err(|e| Error::InvalidSpec(format!("{}: {e}", path.display())))?;
    if sc.metadata.namespace.is_none() {
        sc.metadata.namespace = Some("default".into());
    }
    Ok(sc)
}

/// An I/O error that says what was being done.
fn context(e: std::io::Error, what: String) -> Error {
    Error::Io(std::io::Error::new(e.kind(), format!("{what}: {e}")))
}

/// Checks that the ports of the first `n` slots are free, so a clash is one clear error
/// at start rather than nodes failing in a restart loop.
fn check_ports(base: u16, n: usize) -> Result<()> {
    for index in 0..n {
        let (http, admin, repl) = plan::ports(base, index);
        for (port, what) in [(http, "http"), (admin, "admin"), (repl, "replication")] {
            std::net::TcpListener::bind(("127.0.0.1", port)).map_err(|e| {
                context(
                    e,
                    format!("port {port} ({what} of node {index}) is not free; choose another --base-port"),
                )
            })?;
        }
    }
    Ok(())
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
    node: String,
    env: Vec<(String, String)>,
    child: Option<Child>,
    pid: Option<u32>,
    started: Instant,
    failures: u32,
    restart_at: Option<Instant>,
    /// SIGTERM was sent; SIGKILL follows at this instant.
    draining: Option<Instant>,
    /// The last `/cluster` answer of the running process.
    report: Option<ClusterView>,
}

impl Slot {
    fn state(&self, now: Instant) -> NodeState {
        match (&self.child, self.draining, self.report.as_ref()) {
            (None, _, _) => match self.restart_at {
                Some(t) => NodeState::Restarting(t.saturating_duration_since(now)),
                None => NodeState::Stopped,
            },
            (Some(_), Some(_), _) => NodeState::Draining,
            (Some(_), None, None) => NodeState::Starting,
            (Some(_), None, Some(r)) if r.ready => NodeState::Ready,
            (Some(_), None, Some(_)) => NodeState::Joining,
        }
    }
}

type Prober = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Empty<hyper::body::Bytes>,
>;

struct Supervisor {
    bin: PathBuf,
    dir: PathBuf,
    key: PathBuf,
    base: u16,
    grace: Duration,
    slots: Vec<Slot>,
    prober: Prober,
}

/// Asks a node's admin port for its `/cluster` document (1 s bound).
async fn report(prober: &Prober, admin: SocketAddr) -> Option<ClusterView> {
    use http_body_util::BodyExt;
    let uri: http::Uri = format!("http://{admin}/cluster").parse().ok()?;
    let fetch = async {
        let resp = prober.get(uri).await.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        let body = http_body_util::Limited::new(resp.into_body(), 1 << 20)
            .collect()
            .await
            .ok()?
            .to_bytes();
        crate::probe::parse_report(&body)
    };
    tokio::time::timeout(Duration::from_secs(1), fetch)
        .await
        .ok()
        .flatten()
}

impl Supervisor {
    fn spawn(&self, slot: &mut Slot) {
        let log_path = self.dir.join(format!("node-{}.log", slot.index));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .and_then(|mut f| {
                let env: Vec<String> = slot.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
                writeln!(
                    f,
                    "--- tribe-operator local: starting {} with {}",
                    self.bin.display(),
                    env.join(" ")
                )?;
                Ok(f)
            });
        let (out, err) = match log.and_then(|f| Ok((f.try_clone()?, f))) {
            Ok((a, b)) => (Stdio::from(a), Stdio::from(b)),
            Err(_) => (Stdio::null(), Stdio::null()),
        };
        let mut cmd = Command::new(&self.bin);
        for name in plan::LOCAL_OVERRIDES {
            cmd.env_remove(name);
        }
        cmd.envs(slot.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // Its own process group: a terminal's Ctrl-C reaches the operator only,
            // which then stops the nodes itself.
            .process_group(0)
            .kill_on_drop(true);
        slot.report = None;
        slot.draining = None;
        if let Some((_, id)) = slot.env.iter().find(|(k, _)| k == tribe_api::env::NODE_ID) {
            slot.node.clone_from(id);
        }
        match cmd.spawn() {
            Ok(child) => {
                info!(node = slot.index, pid = child.id(), http = %plan::http_addr(self.base, slot.index),
                      log = %log_path.display(), "started node");
                slot.pid = child.id();
                slot.child = Some(child);
                slot.started = Instant::now();
                slot.restart_at = None;
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
        slot.pid = None;
    }

    /// SIGTERM now; `tick` (or `reap_stopping`) SIGKILLs it after the grace period.
    fn terminate(&self, slot: &mut Slot) {
        if slot.child.is_none() || slot.draining.is_some() {
            return;
        }
        if let Some(pid) = slot.pid.and_then(|p| i32::try_from(p).ok()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        slot.draining = Some(Instant::now() + self.grace);
    }

    /// One supervision round towards `sc`.
    async fn tick(&mut self, sc: &SessionCluster) {
        let replicas = usize::try_from(sc.spec.replicas.max(0))
            .unwrap_or(0)
            .min(plan::max_slots(self.base));
        let desired = |index| plan::node_env(sc, self.base, index, replicas, &self.key);
        // New slots.
        for index in 0..replicas {
            if !self.slots.iter().any(|s| s.index == index) {
                let mut slot = Slot {
                    index,
                    node: plan::node_id(sc, index),
                    env: desired(index),
                    child: None,
                    pid: None,
                    started: Instant::now(),
                    failures: 0,
                    restart_at: None,
                    draining: None,
                    report: None,
                };
                self.spawn(&mut slot);
                self.slots.push(slot);
            }
        }
        self.slots.sort_by_key(|s| s.index);
        let mut slots = std::mem::take(&mut self.slots);
        let now = Instant::now();
        for slot in &mut slots {
            let wanted = slot.index < replicas;
            if let Some(child) = &mut slot.child {
                if let Ok(Some(status)) = child.try_wait() {
                    slot.child = None;
                    slot.report = None;
                    if slot.draining.take().is_some() {
                        info!(node = slot.index, %status, "node stopped");
                        slot.pid = None;
                        if wanted {
                            slot.env = desired(slot.index);
                            self.spawn(slot);
                        }
                    } else if wanted {
                        self.schedule_restart(slot);
                        let delay = slot.restart_at.map(|t| t.saturating_duration_since(now));
                        warn!(node = slot.index, %status, restart_in = ?delay.unwrap_or_default(), "node exited; restarting");
                    } else {
                        slot.pid = None;
                    }
                }
            }
            if let (Some(deadline), Some(child)) = (slot.draining, &mut slot.child) {
                if now >= deadline {
                    warn!(node = slot.index, "node did not stop in time; killing it");
                    let _ = child.start_kill();
                }
            }
            if !wanted && slot.child.is_some() && slot.draining.is_none() {
                info!(node = slot.index, "scaling down: draining node");
                self.terminate(slot);
            }
            if wanted && slot.child.is_none() && slot.restart_at.is_some_and(|t| t <= now) {
                slot.env = desired(slot.index);
                self.spawn(slot);
            }
        }
        slots.retain(|s| s.index < replicas || s.child.is_some());
        // Ask every running node how it is, all at once.
        let reports = futures::future::join_all(slots.iter().map(|s| {
            let running = s.child.is_some();
            let admin = plan::admin_addr(self.base, s.index);
            let prober = &self.prober;
            async move {
                if running {
                    report(prober, admin).await
                } else {
                    None
                }
            }
        }))
        .await;
        for (slot, r) in slots.iter_mut().zip(reports) {
            slot.report = r;
        }
        // Rolling restart of nodes whose environment changed, one at a time, only
        // while every other node is ready.
        let now = Instant::now();
        let stale = slots.iter().position(|s| {
            s.index < replicas
                && s.child.is_some()
                && s.draining.is_none()
                && s.env != desired(s.index)
        });
        if let Some(i) = stale {
            let others_ready = slots
                .iter()
                .enumerate()
                .all(|(j, s)| j == i || s.state(now) == NodeState::Ready);
            if others_ready {
                info!(
                    node = slots[i].index,
                    "configuration changed; restarting node"
                );
                self.terminate(&mut slots[i]);
            }
        }
        self.slots = slots;
    }

    /// After the signal: SIGKILL draining nodes past their deadline, note exits.
    fn reap_stopping(&mut self) {
        let now = Instant::now();
        for slot in &mut self.slots {
            if let Some(child) = &mut slot.child {
                if let Ok(Some(status)) = child.try_wait() {
                    info!(node = slot.index, %status, "node stopped");
                    slot.child = None;
                    slot.pid = None;
                    slot.report = None;
                    slot.restart_at = None;
                    continue;
                }
                if slot.draining.is_some_and(|d| now >= d) {
                    warn!(node = slot.index, "node did not stop in time; killing it");
                    let _ = child.start_kill();
                }
            }
        }
    }

    fn kill_all(&mut self) {
        for slot in &mut self.slots {
            if let Some(child) = &mut slot.child {
                let _ = child.start_kill();
            }
        }
    }

    fn ready_backends(&self) -> Vec<SocketAddr> {
        let now = Instant::now();
        self.slots
            .iter()
            .filter(|s| s.state(now) == NodeState::Ready)
            .map(|s| plan::http_addr(self.base, s.index))
            .collect()
    }

    fn rows(&self, backends: &Backends) -> Vec<Row> {
        let now = Instant::now();
        self.slots
            .iter()
            .map(|s| {
                let http = plan::http_addr(self.base, s.index);
                Row {
                    node: s.node.clone(),
                    state: s.state(now),
                    members: s.report.as_ref().map(|r| r.members.len() + 1),
                    sessions: s.report.as_ref().map(|r| r.sessions),
                    requests: backends.served(http),
                    http: http.to_string(),
                    pid: s.pid,
                }
            })
            .collect()
    }
}

/// Where the key and the node logs go: `--work-dir`, else a temp dir per cluster.
fn work_dir(args: &LocalArgs, sc: &SessionCluster) -> PathBuf {
    args.work_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("tribe-local-{}", kube::ResourceExt::name_any(sc)))
    })
}

/// Logging for `local`: to stderr, or, when stdout is a terminal (the live table owns
/// the screen), to `dir/operator.log` and the tail shown under the table.
fn init_tracing(dir: &Path, tty: bool, format: Option<LogFormat>) -> Result<Option<LogTail>> {
    use tracing_subscriber::fmt::writer::MakeWriterExt;
    if !tty {
        let _ = tribe_api::log::init(format, "info");
        return Ok(None);
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let tail = LogTail::default();
    let file = std::sync::Arc::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("operator.log"))?,
    );
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(tail.clone().and(file))
        .with_ansi(false)
        .try_init();
    Ok(Some(tail))
}

/// Every SIGINT, SIGTERM or SIGHUP (the terminal went away), as a message.
fn signals() -> Result<mpsc::UnboundedReceiver<()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = int.recv() => {},
                _ = term.recv() => {},
                _ = hup.recv() => {},
            }
            if tx.send(()).is_err() {
                return;
            }
        }
    });
    Ok(rx)
}

/// `tribe-operator local`: sets up logging and signals, then [`run`]s.
pub async fn main(args: LocalArgs, log_format: Option<LogFormat>) -> Result<()> {
    let sc = load(&args.file)?;
    let dir = work_dir(&args, &sc);
    std::fs::create_dir_all(&dir)?;
    let tail = init_tracing(&dir, std::io::stdout().is_terminal(), log_format)?;
    let signals = signals()?;
    run(args, Display::new(tail), signals).await
}

/// Runs the cluster in `args.file`, showing it on `display`, until the first message on
/// `signals`; a second one kills the nodes instead of waiting for them.
pub async fn run(
    args: LocalArgs,
    mut display: Display,
    mut signals: mpsc::UnboundedReceiver<()>,
) -> Result<()> {
    let mut sc = load(&args.file)?;
    let name = kube::ResourceExt::name_any(&sc);
    let dir = work_dir(&args, &sc);
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
    check_ports(args.base_port, needed)?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| context(e, format!("cannot listen on {} (--listen)", args.listen)))?;
    let url = format!("http://{}/", listener.local_addr()?);
    info!(front_door = %url, nodes = sc.spec.replicas, bin = %bin.display(),
          work_dir = %dir.display(), "running SessionCluster {name} locally");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let front = tokio::spawn(proxy::serve(listener, backends.clone(), async {
        let _ = stop_rx.await;
    }));

    let logs = format!("{0}/operator.log, {0}/node-N.log", dir.display());
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
    let header = |sc: &SessionCluster| Header {
        cluster: name.clone(),
        url: url.clone(),
        file: args.file.display().to_string(),
        replicas: usize::try_from(sc.spec.replicas.max(0)).unwrap_or(0),
        logs: logs.clone(),
    };
    let mut seen_mtime = mtime(&args.file);
    let mut next_tick = Instant::now();
    loop {
        if Instant::now() >= next_tick {
            sup.tick(&sc).await;
            next_tick = Instant::now() + Duration::from_millis(500);
            let ready = sup.ready_backends();
            if ready != backends.get() {
                info!(
                    ready = ready.len(),
                    of = sup.slots.len(),
                    "front door backends changed"
                );
            }
            backends.set(ready);
        }
        display.show(&header(&sc), &sup.rows(&backends));
        tokio::select! {
            _ = signals.recv() => break,
            _ = tokio::time::sleep_until(next_tick) => {}
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

    info!("stopping: front door closes, every node gets SIGTERM");
    backends.set(Vec::new());
    let _ = stop_tx.send(());
    let mut slots = std::mem::take(&mut sup.slots);
    for slot in &mut slots {
        slot.restart_at = None;
        sup.terminate(slot);
    }
    sup.slots = slots;
    loop {
        sup.reap_stopping();
        display.show(&header(&sc), &sup.rows(&backends));
        if sup.slots.iter().all(|s| s.child.is_none()) {
            break;
        }
        tokio::select! {
            Some(()) = signals.recv() => {
                warn!("second signal: killing the nodes");
                sup.kill_all();
            }
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
    let last_rows = sup.rows(&backends);
    sup.slots.clear();
    if tokio::time::timeout(Duration::from_secs(5), front)
        .await
        .is_err()
    {
        warn!("front door connections still open; closing them");
    }
    display.finish(&header(&sc), &last_rows);
    info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_port_is_a_clear_error() {
        // Slot 0's replication port is the taken one. Its http and admin ports (the two
        // below) are checked first: on a busy machine another process may hold one of
        // them, so try again with another port then.
        for _ in 0..50 {
            let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = taken.local_addr().unwrap().port();
            let err = check_ports(port - 2, 1).unwrap_err().to_string();
            if err.contains(&format!("port {port} ")) {
                assert!(
                    err.contains(&format!("port {port} (replication of node 0) is not free")),
                    "{err}"
                );
                return;
            }
        }
        panic!("the ports below every free port were taken");
    }

    #[test]
    fn load_reads_and_validates() {
        let dir = std::env::temp_dir().join(format!("tribe-local-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.yaml");
        std::fs::write(&good, "apiVersion: tribe.rs/v1alpha1\nkind: SessionCluster\nmetadata: {name: shop}\nspec: {replicas: 2}\n").unwrap();
        let sc = load(&good).unwrap();
        assert_eq!(sc.spec.replicas, 2);
        assert_eq!(sc.spec.session.timeout, "30m", "defaults apply");
        assert_eq!(
            sc.cluster_id(),
            "default.shop",
            "kubectl's default namespace"
        );
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
