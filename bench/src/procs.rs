//! The processes a benchmark starts — `tribe-node` clusters and nginx — and what `/proc`
//! says about them (CPU time, RSS). Everything started here is killed on drop; temp dirs
//! (key file, logs, nginx config) go with it.

use std::collections::BTreeSet;
use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::http;

/// Runtime threads of every node started (`--node-threads`).
static NODE_THREADS: OnceLock<u16> = OnceLock::new();

/// Sets the runtime threads of the nodes started from now on (once).
pub fn set_node_threads(n: u16) {
    let _ = NODE_THREADS.set(n);
}

/// A free TCP port on 127.0.0.1 (bound, then released; never handed out twice by this
/// process). Another process may still take it before we bind it: [`Cluster::start`]
/// retries on new ports when a node fails to start.
pub fn free_port() -> Result<u16> {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        if GIVEN.lock().expect("port set").insert(port) {
            return Ok(port);
        }
    }
}

pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Clock ticks per second for `/proc/<pid>/stat` times.
fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// `(ppid, utime + stime in ticks)` from the text of `/proc/<pid>/stat`.
pub fn parse_stat(stat: &str) -> Option<(u32, u64)> {
    parse_stat_times(stat).map(|(ppid, utime, stime)| (ppid, utime + stime))
}

/// `(ppid, utime, stime)` in ticks from the text of `/proc/<pid>/stat`.
fn parse_stat_times(stat: &str) -> Option<(u32, u64, u64)> {
    // The command name is in parentheses and may hold spaces: fields count from the last ')'.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state): ppid is field 4, utime 14, stime 15.
    let ppid = f.get(1)?.parse().ok()?;
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((ppid, utime, stime))
}

/// utime + stime of the processes, in seconds (a process that is gone counts 0).
pub fn cpu_seconds(pids: &[u32]) -> f64 {
    let (user, sys) = cpu_user_sys_seconds(pids);
    user + sys
}

/// `(utime, stime)` of the processes, in seconds (a process that is gone counts 0).
pub fn cpu_user_sys_seconds(pids: &[u32]) -> (f64, f64) {
    let (user, sys) = pids
        .iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
        .filter_map(|s| parse_stat_times(&s))
        .fold((0u64, 0u64), |(u, s), (_, ut, st)| (u + ut, s + st));
    (user as f64 / clock_ticks(), sys as f64 / clock_ticks())
}

/// This process's own CPU time (the load client), in seconds.
pub fn own_cpu_seconds() -> f64 {
    cpu_seconds(&[std::process::id()])
}

/// Resident set size of a process, in bytes.
pub fn rss_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS in /proc/<pid>/status")?;
    Ok(kb * 1024)
}

/// The direct children of `pid` (nginx's workers), by scanning `/proc`.
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|s| parse_stat(&s))
                .is_some_and(|(ppid, _)| ppid == pid)
        })
        .collect()
}

/// The last lines of a log file, for error messages.
fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Where the node binary is: `--node-bin` / `$TRIBE_NODE_BIN`, else `tribe-node` next to
/// this executable (both built by `cargo build --release -p tribe-node -p tribe-bench`).
pub fn find_node_bin(given: Option<PathBuf>) -> Result<PathBuf> {
    let bin = match given {
        Some(p) => p,
        None => std::env::current_exe()?
            .parent()
            .context("executable without a directory")?
            .join("tribe-node"),
    };
    if !bin.is_file() {
        bail!(
            "{} not found: build it first (cargo build --release -p tribe-node -p tribe-bench) \
             or pass --node-bin",
            bin.display()
        );
    }
    Ok(bin)
}

/// Where nginx is: `--nginx`, else the usual places, else `nginx` on the PATH.
pub fn find_nginx(given: Option<PathBuf>) -> PathBuf {
    given.unwrap_or_else(|| {
        [
            "/usr/sbin/nginx",
            "/usr/local/sbin/nginx",
            "/usr/local/nginx/sbin/nginx",
        ]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .unwrap_or_else(|| "nginx".into())
    })
}

/// One `tribe-node` process; killed on drop.
pub struct Node {
    child: Option<Child>,
    /// App (demo) listener.
    pub http: SocketAddr,
    /// Admin listener (health, metrics, cluster view).
    pub admin: SocketAddr,
    log: PathBuf,
}

impl Node {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// VmRSS in bytes.
    pub fn rss(&self) -> Result<u64> {
        rss_bytes(self.pid())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A static-membership cluster of release-build nodes on loopback, sharing a generated
/// cluster key (a key file, as in production); every process is killed on drop and the
/// temp dir (key, logs) removed.
pub struct Cluster {
    bin: PathBuf,
    args: Vec<String>,
    ports: Vec<(u16, u16, u16)>,
    /// Slots `0..ports.len()`; `None` until started.
    pub nodes: Vec<Option<Node>>,
    dir: tempfile::TempDir,
    /// Extra arguments per slot.
    each: Vec<Vec<String>>,
}

impl Cluster {
    /// Starts `start` of `slots` nodes (each lists all `slots` as static peers; the rest
    /// can join later with [`Cluster::spawn`]) with the extra `args`, and waits until each
    /// is ready and sees the others alive. A node that fails to start (e.g. a probed free
    /// port was taken meanwhile) makes all start again on new ports (3 attempts).
    pub async fn start(bin: &Path, start: usize, slots: usize, args: &[&str]) -> Result<Cluster> {
        Self::start_each(bin, start, slots, args, |_| Vec::new()).await
    }

    /// [`Cluster::start`] where node `i` also gets `each(i)` (e.g. its own `--resp-addr`).
    pub async fn start_each(
        bin: &Path,
        start: usize,
        slots: usize,
        args: &[&str],
        each: impl Fn(usize) -> Vec<String>,
    ) -> Result<Cluster> {
        let mut last_err = None;
        for _ in 0..3 {
            let mut cluster = Cluster {
                bin: bin.to_path_buf(),
                args: args.iter().map(|a| a.to_string()).collect(),
                ports: (0..slots)
                    .map(|_| Ok((free_port()?, free_port()?, free_port()?)))
                    .collect::<Result<_>>()?,
                nodes: (0..slots).map(|_| None).collect(),
                dir: tempfile::Builder::new().prefix("tribe-bench.").tempdir()?,
                each: (0..slots).map(&each).collect(),
            };
            std::fs::write(cluster.dir.path().join("cluster.key"), random_key()?)?;
            let started = async {
                for i in 0..start {
                    cluster.spawn(i)?;
                }
                for i in 0..start {
                    cluster
                        .wait_ready(i, start - 1, Duration::from_secs(60))
                        .await?;
                }
                anyhow::Ok(())
            }
            .await;
            match started {
                Ok(()) => return Ok(cluster),
                Err(e) => {
                    eprintln!(
                        "(a cluster of {start} did not start: {e:#}; retrying on other ports)"
                    );
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.expect("three attempts"))
    }

    /// Starts the node in slot `i`.
    pub fn spawn(&mut self, i: usize) -> Result<()> {
        let (http, admin, repl) = self.ports[i];
        let peers: Vec<String> = (0..self.ports.len())
            .filter(|&j| j != i)
            .map(|j| loopback(self.ports[j].2).to_string())
            .collect();
        let log = self.dir.path().join(format!("n{}.log", i + 1));
        let out = File::create(&log)?;
        let mut cmd = Command::new(&self.bin);
        cmd.args(["--node-id", &format!("n{}", i + 1)])
            .arg("--cluster-key-file")
            .arg(self.dir.path().join("cluster.key"))
            .args(["--membership", "static"])
            .args(["--http-addr", &loopback(http).to_string()])
            .args(["--admin-addr", &loopback(admin).to_string()])
            .args(["--replication-addr", &loopback(repl).to_string()])
            .args(["--advertise-addr", &loopback(repl).to_string()])
            .args(&self.args)
            .args(self.each.get(i).into_iter().flatten())
            .env(
                "TRIBE_WORKER_THREADS",
                NODE_THREADS.get().unwrap_or(&1).to_string(),
            )
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        if !peers.is_empty() {
            cmd.args(["--peers", &peers.join(",")]);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("start {}", self.bin.display()))?;
        self.nodes[i] = Some(Node {
            child: Some(child),
            http: loopback(http),
            admin: loopback(admin),
            log,
        });
        Ok(())
    }

    /// Waits (bounded) until node `i` answers `/readyz` and `/cluster` shows `peers` alive
    /// members; fails early with its log when it exits.
    pub async fn wait_ready(&mut self, i: usize, peers: usize, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let node = self.nodes[i].as_mut().context("node not started")?;
            if let Some(status) = node.exited() {
                bail!(
                    "node n{} exited ({status}); log:\n{}",
                    i + 1,
                    tail(&node.log, 10)
                );
            }
            // /readyz first: cheap for a node busy with a state transfer.
            if http::get_text(node.admin, "/readyz").await.is_ok() {
                if let Ok(view) = http::get_json(node.admin, "/cluster").await {
                    let alive = view["members"]
                        .as_array()
                        .map_or(0, |m| m.iter().filter(|m| m["state"] == "alive").count());
                    if view["ready"] == true && alive >= peers {
                        return Ok(());
                    }
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "node n{} not ready with {peers} peers after {timeout:?}; log:\n{}",
                    i + 1,
                    tail(&node.log, 10)
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The started nodes.
    pub fn running(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().flatten()
    }

    /// Node in slot `i` (started).
    pub fn node(&self, i: usize) -> &Node {
        self.nodes[i].as_ref().expect("node started")
    }

    /// App addresses of the started nodes.
    pub fn http_addrs(&self) -> Vec<SocketAddr> {
        self.running().map(|n| n.http).collect()
    }

    /// Process ids of the started nodes.
    pub fn pids(&self) -> Vec<u32> {
        self.running().map(|n| n.pid()).collect()
    }

    /// One metric family summed over the started nodes.
    pub async fn metric_sum(&self, family: &str) -> Result<f64> {
        let mut sum = 0.0;
        for n in self.running() {
            sum += crate::metrics::sum(&http::get_text(n.admin, "/metrics").await?, family);
        }
        Ok(sum)
    }
}

/// 32 random bytes, hex: a cluster key file's content.
fn random_key() -> Result<String> {
    use std::io::Read;
    let mut key = [0u8; 32];
    File::open("/dev/urandom")?.read_exact(&mut key)?;
    Ok(key.iter().map(|b| format!("{b:02x}")).collect())
}

/// A real nginx in front of the nodes, configured as in the end-to-end tests
/// (node/tests/support/nginx.rs): one worker, round-robin over the upstreams with
/// keepalive connections, no retry on another upstream. Stopped (master and workers)
/// on drop.
pub struct Nginx {
    /// Where clients reach it.
    pub addr: SocketAddr,
    child: Option<Child>,
    workers: Vec<u32>,
    dir: tempfile::TempDir,
}

impl Nginx {
    /// nginx proxying round-robin to `upstreams`.
    pub async fn round_robin(bin: &Path, upstreams: &[SocketAddr]) -> Result<Nginx> {
        let servers: String = upstreams
            .iter()
            .map(|a| format!("    server {a} max_fails=0;\n"))
            .collect();
        let location = "proxy_pass http://tribe;\n      proxy_http_version 1.1;\n      \
                        proxy_set_header Connection \"\";\n      proxy_next_upstream off;\n      \
                        proxy_read_timeout 10s;";
        Self::start(
            bin,
            &format!("  upstream tribe {{\n{servers}    keepalive 64;\n  }}\n"),
            location,
        )
        .await
    }

    /// nginx answering every request itself (`return 200`): the proxy's own ceiling.
    pub async fn static_ok(bin: &Path) -> Result<Nginx> {
        Self::start(
            bin,
            "",
            "default_type application/json;\n      return 200 '{\"counter\":0}';",
        )
        .await
    }

    async fn start(bin: &Path, http_extra: &str, location: &str) -> Result<Nginx> {
        let dir = tempfile::Builder::new()
            .prefix("tribe-bench-nginx.")
            .tempdir()?;
        let addr = loopback(free_port()?);
        let d = dir.path().display();
        // `user` only matters (and is only honoured) when the master runs as root: it keeps
        // the workers able to use the temp dir.
        let user = if nix::unistd::Uid::effective().is_root() {
            "user root;\n"
        } else {
            ""
        };
        let conf = format!(
            "{user}worker_processes 1;\nerror_log {d}/error.log warn;\npid {d}/nginx.pid;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  \
             fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  \
             keepalive_requests 1000000;\n{http_extra}  server {{\n    listen {addr};\n    \
             location / {{\n      {location}\n    }}\n  }}\n}}\n"
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let out = File::create(dir.path().join("stderr.log"))?;
        let child = Command::new(bin)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| {
                format!(
                    "cannot start {} (apt-get install nginx, or pass --nginx)",
                    bin.display()
                )
            })?;
        let mut nginx = Nginx {
            addr,
            child: Some(child),
            workers: Vec::new(),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(Ok(Some(status))) = nginx.child.as_mut().map(|c| c.try_wait()) {
                bail!("nginx exited ({status}); log:\n{}", nginx.log());
            }
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                break;
            }
            if Instant::now() >= deadline {
                bail!(
                    "nginx not listening on {addr} after 10 s; log:\n{}",
                    nginx.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // A connection is accepted into the backlog as soon as the master listens, which
        // may be before it forked its worker: wait (bounded) for the worker too.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            nginx.workers = children_of(nginx.master_pid());
            if !nginx.workers.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                bail!("nginx started no worker within 5 s; log:\n{}", nginx.log());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(nginx)
    }

    fn master_pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// Master and workers.
    pub fn pids(&self) -> Vec<u32> {
        std::iter::once(self.master_pid())
            .chain(self.workers.iter().copied())
            .collect()
    }

    fn log(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default();
        format!("{}{}", read("stderr.log"), read("error.log"))
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGTERM makes the master stop its workers; SIGKILL would orphan them.
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = c.kill();
            let _ = c.wait();
            for w in &self.workers {
                let _ = kill(Pid::from_raw(*w as i32), Signal::SIGKILL);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_count_from_the_command_name() {
        let stat = "1234 (nginx: worker) S 1200 1234 1234 0 -1 4194624 100 0 0 0 250 31 0 0 20 0 1 0 5 0 0";
        assert_eq!(parse_stat(stat), Some((1200, 281)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn own_process_has_cpu_and_rss() {
        assert!(rss_bytes(std::process::id()).unwrap() > 0);
        assert!(own_cpu_seconds() >= 0.0);
    }
}
