//! A real nginx in front of the nodes: round-robin over the upstreams with keepalive
//! connections, as a cluster behind an ingress sees it (no sticky sessions).
//!
//! nginx runs in the foreground (`-g 'daemon off;'`) with a config generated into a temp
//! dir, on a free loopback port; it is killed on drop and its error log printed when the
//! test panics.

use std::collections::BTreeSet;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

/// A running nginx; killed (with its workers) on drop.
pub struct Nginx {
    /// Where clients reach it.
    pub addr: SocketAddr,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for Nginx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nginx").field("addr", &self.addr).finish()
    }
}

impl Nginx {
    /// Starts nginx proxying to `upstreams` round-robin (keepalive to the upstreams, no
    /// retry on another upstream: a failed request shows up as a failure), and waits
    /// (bounded) until it accepts connections.
    pub fn round_robin(upstreams: &[SocketAddr]) -> Nginx {
        assert!(!upstreams.is_empty(), "nginx needs at least one upstream");
        let servers: String = upstreams
            .iter()
            .map(|a| format!("    server {a} max_fails=0;\n"))
            .collect();
        let location = "proxy_pass http://tribe;\n      proxy_http_version 1.1;\n      \
                        proxy_set_header Connection \"\";\n      proxy_next_upstream off;\n      \
                        proxy_read_timeout 10s;";
        Self::start(
            &format!("  upstream tribe {{\n{servers}    keepalive 64;\n  }}\n"),
            location,
        )
    }

    /// Starts nginx answering every request itself (`return 200`): the proxy's own ceiling.
    pub fn static_ok() -> Nginx {
        Self::start(
            "",
            "default_type application/json;\n      return 200 '{\"counter\":0}';",
        )
    }

    /// Starts nginx as an ingress in front of pods that come and go: round-robin over
    /// `upstreams`, and a request whose *connection* to an upstream fails (refused, reset
    /// while connecting, connect timeout) is passed to the next upstream
    /// (`proxy_next_upstream error timeout`). That is safe for a `POST`: without
    /// `non_idempotent`, nginx passes a non-idempotent request on only if it has not sent
    /// it to anyone yet; a `POST` that reached a node which then died is answered 502,
    /// never replayed on another node (replaying it could apply it twice). For the same
    /// reason there is no keepalive to the upstreams: a cached connection to a node that
    /// has died since counts as "request sent" when the write into it fails, so the
    /// request would get a 502 instead of going to a live node. `max_fails=0`: a dead
    /// node stays in the rotation until [`Nginx::set_upstreams`] removes it, as an ingress
    /// keeps an endpoint until the endpoint list changes. No `reuseport`, so a reload
    /// keeps the one listening socket (connections waiting in its queue survive).
    pub fn failover(upstreams: &[SocketAddr]) -> Nginx {
        let (http_extra, location) = failover_conf(upstreams);
        Self::start_with(&http_extra, location, "")
    }

    /// Replaces the upstream list of a [`Nginx::failover`] proxy and reloads (SIGHUP to
    /// the master: new workers with the new list, the old ones finish their requests and
    /// exit). Returns once every worker that ran the old list has exited, i.e. no request
    /// can reach a removed upstream any more; panics (with the log) if that takes longer
    /// than 10 s, e.g. because nginx refused the new configuration.
    pub async fn set_upstreams(&self, upstreams: &[SocketAddr]) {
        let (http_extra, location) = failover_conf(upstreams);
        let conf = render(self.dir.path(), self.addr, &http_extra, location, "");
        let tmp = self.dir.path().join("nginx.conf.new");
        std::fs::write(&tmp, conf).unwrap();
        std::fs::rename(&tmp, self.conf_path()).unwrap();
        let master = self.child.as_ref().expect("nginx running").id();
        let old = children(master);
        assert!(!old.is_empty(), "nginx has no worker; log:\n{}", self.log());
        super::run("kill", &["-HUP", &master.to_string()]);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let now = children(master);
            if !now.is_empty() && now.is_disjoint(&old) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nginx did not reload within 10 s (old workers {old:?}, now {now:?}); log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// How many times nginx could not connect to an upstream (and, in a
    /// [`Nginx::failover`] proxy, passed the request to the next one), from its error log.
    pub fn upstream_connect_failures(&self) -> usize {
        std::fs::read_to_string(self.dir.path().join("error.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("while connecting to upstream"))
            .count()
    }

    fn start(http_extra: &str, location: &str) -> Nginx {
        Self::start_with(http_extra, location, " reuseport")
    }

    fn start_with(http_extra: &str, location: &str, listen_opts: &str) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let conf = render(dir.path(), addr, http_extra, location, listen_opts);
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let out = File::create(dir.path().join("stderr.log")).unwrap();
        let child = Command::new(nginx_bin())
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start nginx ({e}): run scripts/install-test-deps"));
        let mut nginx = Nginx {
            addr,
            child: Some(child),
            dir,
        };
        nginx.wait_listening(Duration::from_secs(10));
        nginx
    }

    /// The config file nginx runs with.
    pub fn conf_path(&self) -> PathBuf {
        self.dir.path().join("nginx.conf")
    }

    /// nginx's error log and stderr so far.
    pub fn log(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default();
        format!("{}{}", read("stderr.log"), read("error.log"))
    }

    fn wait_listening(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "nginx exited ({status}); config:\n{}\nlog:\n{}",
                    std::fs::read_to_string(self.conf_path()).unwrap_or_default(),
                    self.log()
                );
            }
            if std::net::TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nginx not listening on {} after {timeout:?}; log:\n{}",
                self.addr,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGTERM makes the master stop its workers; SIGKILL would orphan them.
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "===== nginx log =====\n{}\n===== end of nginx log =====",
                self.log()
            );
        }
    }
}

/// The configuration: one server on `addr` with `location /`, temp paths in `dir`.
fn render(
    dir: &Path,
    addr: SocketAddr,
    http_extra: &str,
    location: &str,
    listen_opts: &str,
) -> String {
    let d = dir.display();
    // `user` only matters (and is only honoured) when the master runs as root: it keeps
    // the workers able to use the temp dir.
    let user = if is_root() { "user root;\n" } else { "" };
    format!(
        "{user}worker_processes 1;\nerror_log {d}/error.log warn;\npid {d}/nginx.pid;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  \
         fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  \
         keepalive_requests 1000000;\n{http_extra}  server {{\n    listen {addr}{listen_opts};\n    \
         location / {{\n      {location}\n    }}\n  }}\n}}\n"
    )
}

/// The `upstream` block and `location` of a [`Nginx::failover`] proxy.
fn failover_conf(upstreams: &[SocketAddr]) -> (String, &'static str) {
    assert!(!upstreams.is_empty(), "nginx needs at least one upstream");
    let servers: String = upstreams
        .iter()
        .map(|a| format!("    server {a} max_fails=0;\n"))
        .collect();
    let location = "proxy_pass http://tribe;\n      proxy_next_upstream error timeout;\n      \
                    proxy_connect_timeout 2s;\n      proxy_read_timeout 10s;";
    (format!("  upstream tribe {{\n{servers}  }}\n"), location)
}

/// Pids of the live processes whose parent is `pid` (nginx's workers), from `/proc`.
fn children(pid: u32) -> BTreeSet<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return BTreeSet::new();
    };
    dir.filter_map(|e| {
        let child: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).ok()?;
        // `pid (comm) state ppid …`; comm may hold spaces and parentheses.
        let mut rest = stat.rsplit_once(')')?.1.split_whitespace();
        let state = rest.next()?;
        let ppid: u32 = rest.next()?.parse().ok()?;
        (ppid == pid && state != "Z").then_some(child)
    })
    .collect()
}

fn nginx_bin() -> String {
    [
        "/usr/sbin/nginx",
        "/usr/local/sbin/nginx",
        "/usr/local/nginx/sbin/nginx",
    ]
    .iter()
    .find(|p| std::path::Path::new(p).is_file())
    .map(|p| p.to_string())
    .unwrap_or_else(|| "nginx".into())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}
