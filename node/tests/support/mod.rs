//! Process-level test harness: real `tribe-node` processes, real sockets, real tools.
//!
//! - [`Node`]: a node process (optionally inside a network namespace) with its log in a
//!   temp file; killed on drop, its log printed when the test panics.
//! - [`Netns`], [`Hub`], [`Veth`], [`Dnsmasq`]: network namespaces, a bridge living in its
//!   own namespace (so the host's bridge netfilter and firewall never see the traffic),
//!   veth links, and a real DNS server — all named uniquely per run and removed on drop.
//! - [`HttpClient`]: a tiny client that keeps cookies per client (one "browser").
//! - [`eventually`]: bounded polling for an expected state; never a bare sleep.
//!
//! Nothing here touches the machine's outward interface: multicast and DNS stay inside
//! namespaces and links the test created.
#![allow(dead_code)] // each test binary uses a different part of the harness

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::future::Future;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The node binary under test.
pub fn node_bin() -> &'static str {
    env!("CARGO_BIN_EXE_tribe-node")
}

/// A short id unique to this process and call: `<pid hex>-<counter>` (the pid lets
/// [`reap_stale_namespaces`] find what a killed test run left behind).
pub fn unique_tag() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "{:x}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs a command; panics with its stderr on failure; returns stdout.
pub fn run(program: &str, args: &[&str]) -> String {
    try_run(program, args).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs a command; returns stdout, or an error naming the command and its stderr.
pub fn try_run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{program} {args:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        ))
    }
}

/// Panics with a clear message unless we are root with `ip` (and `extra` tools) present.
pub fn require_tools(extra: &[&str]) {
    let uid = run("id", &["-u"]);
    assert_eq!(
        uid.trim(),
        "0",
        "network-namespace tests need root (they create netns, veths, bridges)"
    );
    for tool in std::iter::once(&"ip").chain(extra) {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false);
        assert!(found, "{tool} not found: run scripts/install-test-deps");
    }
}

/// A free TCP port on 127.0.0.1 below the kernel's ephemeral range (bound then released;
/// never handed out twice by this process, so tests running in parallel threads do not
/// collide). Below the ephemeral range because a node restarted on its old ports must find
/// them free: on a busy machine an outgoing connection could otherwise take a killed
/// node's port as its source port.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let ephemeral_start: u32 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768);
    // 10000..20000 (the operator's tests use blocks from 20000 up).
    let (lo, hi) = (10_000u32, ephemeral_start.min(20_000));
    assert!(hi > lo + 1000, "ephemeral ports start at {ephemeral_start}");
    let seed = std::process::id().wrapping_mul(7919);
    for _ in 0..20_000 {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = (lo + seed.wrapping_add(n.wrapping_mul(104_729)) % (hi - lo)) as u16;
        let mut given = GIVEN.lock().unwrap();
        if !given.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            return port;
        }
    }
    panic!("no free port in {lo}..{hi}")
}

/// Polls `check` every 50 ms until it returns `Ok`, or panics after `timeout` with
/// the last error.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(v) => return v,
            Err(e) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Checks that `check` keeps returning `Ok` for the whole `period` (polling every
/// 100 ms); panics at the first `Err`.
pub async fn always<F, Fut>(what: &str, period: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let end = Instant::now() + period;
    while Instant::now() < end {
        if let Err(e) = check().await {
            panic!("{what} stopped holding: {e}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------------------
// Network namespaces and links

/// A network namespace with its loopback up; deleted (with `/etc/netns/<name>`) on drop.
#[derive(Debug)]
pub struct Netns {
    /// The namespace name (`ip netns` name).
    pub name: String,
}

impl Netns {
    /// Creates `tribe-<what>-<unique>` with `lo` up and multicast-capable.
    pub fn new(what: &str) -> Self {
        reap_stale_namespaces();
        let name = format!("tribe-{what}-{}", unique_tag());
        run("ip", &["netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up", "multicast", "on"]);
        ns
    }

    /// Runs `ip -n <ns> args…`.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// A command that runs `program` inside the namespace (`ip netns exec`, which also
    /// bind-mounts `/etc/netns/<ns>/*` over `/etc/*`).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Writes `/etc/netns/<ns>/<file>` (e.g. `resolv.conf`), seen by processes started
    /// in the namespace afterwards.
    pub fn set_etc(&self, file: &str, content: &str) {
        let dir = self.etc_dir();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(file), content).unwrap();
    }

    fn etc_dir(&self) -> PathBuf {
        Path::new("/etc/netns").join(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = std::fs::remove_dir_all(self.etc_dir());
    }
}

/// Deletes the namespaces (and ends the processes inside them) that an earlier test
/// run left behind when it was killed before its guards could run: `tribe-*-<pid>-<n>`
/// whose test process `<pid>` no longer exists. Runs once per test process.
pub fn reap_stale_namespaces() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let Ok(list) = try_run("ip", &["netns", "list"]) else {
            return;
        };
        for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
            let Some(rest) = name.strip_prefix("tribe-") else {
                continue;
            };
            let mut parts = rest.rsplit('-');
            let (Some(_n), Some(pid)) = (parts.next(), parts.next()) else {
                continue;
            };
            let Ok(pid) = u32::from_str_radix(pid, 16) else {
                continue;
            };
            if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
                continue;
            }
            let pids = try_run("ip", &["netns", "pids", name]).unwrap_or_default();
            for p in pids.split_whitespace() {
                let _ = try_run("kill", &["-KILL", p]);
            }
            let _ = try_run("ip", &["netns", "del", name]);
            let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(name));
            eprintln!("removed stale test namespace {name} (its test process {pid} is gone)");
        }
    });
}

/// A /24 of 10.0.0.0/8 that no route of the host overlaps, so links the test makes
/// never shadow real networks.
pub fn free_subnet() -> [u8; 3] {
    let routes = run("ip", &["-4", "route", "show", "table", "all"]);
    let taken: Vec<(u32, u32)> = routes
        .lines()
        .filter_map(|l| {
            l.split_whitespace()
                .find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()))
        })
        .filter_map(|dst| {
            let (ip, len) = dst.split_once('/').unwrap_or((dst, "32"));
            let ip: Ipv4Addr = ip.parse().ok()?;
            let len: u32 = len.parse().ok()?;
            let mask = if len == 0 {
                0
            } else {
                u32::MAX << (32 - len.min(32))
            };
            Some((u32::from(ip) & mask, mask))
        })
        .collect();
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let seed = std::process::id();
    for _ in 0..4096 {
        let n = seed
            .wrapping_mul(2_654_435_761)
            .wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed) * 7919);
        let (a, b) = (200 + (n % 50) as u8, ((n >> 8) % 256) as u8);
        let net = u32::from(Ipv4Addr::new(10, a, b, 0));
        let ours = u32::MAX << 8;
        let overlaps = taken.iter().any(|&(t, m)| {
            let common = m & ours;
            (t & common) == (net & common) && t != 0
        });
        if !overlaps {
            return [10, a, b];
        }
    }
    panic!("no free 10.x.y.0/24 subnet")
}

/// `a.b.c.host` of a subnet from [`free_subnet`].
pub fn host(subnet: [u8; 3], host: u8) -> Ipv4Addr {
    Ipv4Addr::new(subnet[0], subnet[1], subnet[2], host)
}

/// A veth pair from the root namespace into `ns` (`eth0` there, with `ns_ip/24`; the
/// root side gets `root_ip/24`), so the test can reach services bound in `ns`.
#[derive(Debug)]
pub struct Veth {
    /// The root-side interface name.
    pub root_if: String,
}

impl Veth {
    /// Links `ns` to the root namespace.
    pub fn to_root(ns: &Netns, root_ip: Ipv4Addr, ns_ip: Ipv4Addr) -> Self {
        Self::to_root_as(ns, root_ip, ns_ip, "eth0")
    }

    /// Links `ns` to the root namespace; the interface in `ns` is named `ns_if` (so a
    /// namespace can have both a bridge port `eth0` and a side link to the test).
    pub fn to_root_as(ns: &Netns, root_ip: Ipv4Addr, ns_ip: Ipv4Addr, ns_if: &str) -> Self {
        let root_if = format!("trv{}", unique_tag());
        assert!(root_if.len() <= 15, "interface name too long: {root_if}");
        run(
            "ip",
            &[
                "link", "add", &root_if, "type", "veth", "peer", "name", ns_if, "netns", &ns.name,
            ],
        );
        let v = Veth { root_if };
        run(
            "ip",
            &["addr", "add", &format!("{root_ip}/24"), "dev", &v.root_if],
        );
        run("ip", &["link", "set", &v.root_if, "up"]);
        ns.ip(&["addr", "add", &format!("{ns_ip}/24"), "dev", ns_if]);
        ns.ip(&["link", "set", ns_if, "up", "multicast", "on"]);
        v
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.root_if])
            .stderr(Stdio::null())
            .status();
    }
}

/// A bridge that lives in its own namespace (so the host's `br_netfilter`/firewall never
/// sees its traffic; IGMP snooping off so multicast floods to every port), with a veth
/// to the root namespace for the test's HTTP client.
#[derive(Debug)]
pub struct Hub {
    /// The subnet (`a.b.c.0/24`): the root side is `.1`.
    pub subnet: [u8; 3],
    /// The namespace that holds the bridge `br0`.
    pub ns: Netns,
    root_link: Veth,
    ports: AtomicU32,
}

impl Hub {
    /// Creates the hub and its link to the root namespace (`.1`).
    pub fn new() -> Self {
        let subnet = free_subnet();
        let ns = Netns::new("hub");
        ns.ip(&[
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ]);
        ns.ip(&["link", "set", "br0", "up"]);
        // The root side: a veth whose other end is a bridge port.
        let root_if = format!("trh{}", unique_tag());
        run(
            "ip",
            &[
                "link", "add", &root_if, "type", "veth", "peer", "name", "p0", "netns", &ns.name,
            ],
        );
        let root_link = Veth { root_if };
        run(
            "ip",
            &[
                "addr",
                "add",
                &format!("{}/24", host(subnet, 1)),
                "dev",
                &root_link.root_if,
            ],
        );
        run("ip", &["link", "set", &root_link.root_if, "up"]);
        ns.ip(&["link", "set", "p0", "master", "br0", "up"]);
        Hub {
            subnet,
            ns,
            root_link,
            ports: AtomicU32::new(1),
        }
    }

    /// Plugs `member` into the bridge: `eth0` there with `a.b.c.host/24`.
    pub fn plug(&self, member: &Netns, host_part: u8) -> Ipv4Addr {
        self.plug_port(member, host_part).0
    }

    /// Sets the bridge side of a port from [`Hub::plug_port`] up or down. Down cuts the
    /// member off silently: the bridge drops what it would forward there and the member's
    /// packets go nowhere (no RST, no ICMP), as a failed switch port or cable would.
    pub fn set_port(&self, port: &str, up: bool) {
        self.ns
            .ip(&["link", "set", port, if up { "up" } else { "down" }]);
    }

    /// [`Hub::plug`], also returning the name of the bridge-side port (in the hub's
    /// namespace) for [`Hub::set_port`].
    pub fn plug_port(&self, member: &Netns, host_part: u8) -> (Ipv4Addr, String) {
        let port = format!("p{}", self.ports.fetch_add(1, Ordering::Relaxed));
        self.ns.ip(&[
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &member.name,
        ]);
        self.ns.ip(&["link", "set", &port, "master", "br0", "up"]);
        let ip = host(self.subnet, host_part);
        member.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        member.ip(&["link", "set", "eth0", "up", "multicast", "on"]);
        (ip, port)
    }
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

// ---------------------------------------------------------------------------------------
// Node processes

/// Where a node listens, as the test reaches it.
#[derive(Debug, Clone, Copy)]
pub struct Addrs {
    /// The app port.
    pub http: SocketAddr,
    /// The admin port.
    pub admin: SocketAddr,
    /// The replication port (what peers dial; also `--advertise-addr`).
    pub replication: SocketAddr,
}

impl Addrs {
    /// Three free loopback ports on 127.0.0.1.
    pub fn loopback() -> Self {
        let at = |p| SocketAddr::from(([127, 0, 0, 1], p));
        Addrs {
            http: at(free_port()),
            admin: at(free_port()),
            replication: at(free_port()),
        }
    }

    /// Fixed ports on one address (inside a namespace, ports are all free).
    pub fn on(ip: Ipv4Addr) -> Self {
        Addrs {
            http: SocketAddr::from((ip, 8080)),
            admin: SocketAddr::from((ip, 9090)),
            replication: SocketAddr::from((ip, 4000)),
        }
    }
}

/// A running `tribe-node` process; SIGKILLed on drop, its log printed if the test panics.
pub struct Node {
    /// The node id.
    pub name: String,
    /// Where it listens.
    pub addrs: Addrs,
    child: Option<Child>,
    log: PathBuf,
    _dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("name", &self.name)
            .field("addrs", &self.addrs)
            .finish()
    }
}

impl Node {
    /// Starts `tribe-node --node-id <name> --http-addr … --admin-addr … --replication-addr …
    /// --advertise-addr <replication> --insecure <extra…>` (inside `netns` if given; an
    /// `--advertise-addr` in `extra` replaces the default one).
    pub fn spawn(name: &str, addrs: Addrs, netns: Option<&Netns>, extra: &[&str]) -> Node {
        Self::spawn_env(name, addrs, netns, extra, &[])
    }

    /// [`Node::spawn`] with extra environment variables (set after the defaults, so they
    /// can override `RUST_LOG`; `LD_PRELOAD` + `FAKETIME` run it under libfaketime).
    pub fn spawn_env(
        name: &str,
        addrs: Addrs,
        netns: Option<&Netns>,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join(format!("{name}.log"));
        let file = File::create(&log).unwrap();
        let mut cmd = match netns {
            Some(ns) => ns.command(node_bin()),
            None => Command::new(node_bin()),
        };
        let (http, admin, repl) = (
            addrs.http.to_string(),
            addrs.admin.to_string(),
            addrs.replication.to_string(),
        );
        cmd.args([
            "--node-id",
            name,
            "--http-addr",
            &http,
            "--admin-addr",
            &admin,
        ])
        .args(["--replication-addr", &repl, "--insecure"])
        // `extra` may name its own advertise address (e.g. a proxy in front of the node).
        .args(
            (!extra.contains(&"--advertise-addr"))
                .then_some(["--advertise-addr", repl.as_str()])
                .into_iter()
                .flatten(),
        )
        .args(extra)
        .env("NO_COLOR", "1")
        // Text lines (the tests read the log); `env` may choose another format, or none
        // (an empty value removes a variable: the node's default).
        .env("TRIBE_LOG_FORMAT", "text")
        .env(
            "RUST_LOG",
            std::env::var("TRIBE_TEST_LOG").unwrap_or_else(|_| "info,tribe_node=debug".into()),
        )
        .envs(env.iter().copied().filter(|(_, v)| !v.is_empty()))
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file);
        for (k, _) in env.iter().filter(|(_, v)| v.is_empty()) {
            cmd.env_remove(k);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", node_bin()));
        Node {
            name: name.to_string(),
            addrs,
            child: Some(child),
            log,
            _dir: dir,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(3))
                .build()
                .unwrap(),
        }
    }

    /// The process id (`ip netns exec` execs the node, so this is the node itself).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The node's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `Err` if the process has exited.
    pub fn check_running(&mut self) -> Result<(), String> {
        match self.child.as_mut().map(|c| c.try_wait()) {
            None => Err(format!("{} was stopped", self.name)),
            Some(Ok(Some(status))) => Err(format!(
                "{} exited ({status}); log:\n{}",
                self.name,
                self.log()
            )),
            Some(Ok(None)) => Ok(()),
            Some(Err(e)) => Err(e.to_string()),
        }
    }

    /// Waits (bounded) until `/readyz` answers 200.
    pub async fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Err(e) = self.check_running() {
                panic!("{e}");
            }
            match self.get("/readyz", true).await {
                Ok((200, _)) => return,
                r if Instant::now() >= deadline => {
                    panic!(
                        "{} not ready after {timeout:?} (last: {r:?}); log:\n{}",
                        self.name,
                        self.log()
                    )
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// GET on the admin (`admin = true`) or app port: (status, body).
    pub async fn get(&self, path: &str, admin: bool) -> Result<(u16, String), String> {
        let addr = if admin {
            self.addrs.admin
        } else {
            self.addrs.http
        };
        let resp = self
            .http
            .get(format!("http://{addr}{path}"))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        Ok((status, resp.text().await.map_err(|e| e.to_string())?))
    }

    /// `GET /cluster` as JSON.
    pub async fn cluster(&self) -> Result<serde_json::Value, String> {
        match self.get("/cluster", true).await? {
            (200, body) => {
                serde_json::from_str(&body).map_err(|e| format!("bad /cluster JSON {body:?}: {e}"))
            }
            (s, body) => Err(format!("/cluster answered {s}: {body}")),
        }
    }

    /// Ids of the members `/cluster` lists as `alive` (never the node itself).
    pub async fn alive_members(&self) -> Result<BTreeSet<String>, String> {
        Ok(members(&self.cluster().await?)
            .into_iter()
            .filter(|(_, s)| s == "alive")
            .map(|(n, _)| n)
            .collect())
    }

    /// Waits (bounded) until `/cluster` lists exactly `want` as alive members.
    pub async fn wait_alive_members(&self, want: &BTreeSet<String>, timeout: Duration) {
        eventually(
            &format!("{} to see exactly {want:?} alive", self.name),
            timeout,
            || async {
                let alive = self.alive_members().await?;
                if &alive == want {
                    Ok(())
                } else {
                    Err(format!("{} sees {alive:?}", self.name))
                }
            },
        )
        .await;
    }

    /// Every member `/cluster` lists, with its state.
    pub async fn member_states(&self) -> Result<BTreeMap<String, String>, String> {
        Ok(members(&self.cluster().await?))
    }

    /// Sum of the samples of metric family `name` (with or without a `_total` suffix)
    /// in `/metrics`; `Ok(None)` when the node does not export it.
    pub async fn metric(&self, name: &str) -> Result<Option<f64>, String> {
        let (_, text) = self.get("/metrics", true).await?;
        Ok(metric_sum(&text, name))
    }

    /// Sends SIGTERM (graceful leave).
    pub fn sigterm(&self) {
        if let Some(pid) = self.pid() {
            run("kill", &["-TERM", &pid.to_string()]);
        }
    }

    /// Sends `signal` (`STOP`, `CONT`, `TERM`, ...) with kill(1).
    pub fn signal(&self, signal: &str) {
        if let Some(pid) = self.pid() {
            run("kill", &[&format!("-{signal}"), &pid.to_string()]);
        }
    }

    /// Waits (bounded) for the process to exit; returns whether it exited 0.
    pub async fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(Some(status)) = self.child.as_mut().map(|c| c.try_wait().ok().flatten()) {
                self.child = None;
                return status.success();
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {timeout:?}; log:\n{}",
                self.name,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILLs the process and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(200).collect();
            eprintln!(
                "===== log of node {} (last {} lines) =====",
                self.name,
                tail.len()
            );
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
            eprintln!("===== end of log of {} =====", self.name);
        }
    }
}

/// `members` of a `/cluster` document: node id → state.
pub fn members(view: &serde_json::Value) -> BTreeMap<String, String> {
    view["members"]
        .as_array()
        .map(|ms| {
            ms.iter()
                .filter_map(|m| {
                    Some((
                        m["node"].as_str()?.to_string(),
                        m["state"].as_str().unwrap_or("").to_string(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Sum of the samples of metric family `name` (optionally `tribe_`-prefixed, with or
/// without `_total`) in Prometheus/OpenMetrics text.
pub fn metric_sum(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = match line.rsplit_once(' ') {
            Some(x) => x,
            None => continue,
        };
        let family = series.split('{').next().unwrap_or("");
        let family = family.strip_prefix("tribe_").unwrap_or(family);
        let name = name.strip_prefix("tribe_").unwrap_or(name);
        if family == name || family == format!("{name}_total") {
            if let Ok(v) = value.parse::<f64>() {
                *found.get_or_insert(0.0) += v;
            }
        }
    }
    found
}

// ---------------------------------------------------------------------------------------
// HTTP client with cookies

/// One "browser": keeps the cookies the nodes set and sends them back.
#[derive(Debug)]
pub struct HttpClient {
    http: reqwest::Client,
    cookies: BTreeMap<String, String>,
}

impl Default for HttpClient {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpClient {
    /// A client with no cookies.
    pub fn new() -> Self {
        Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap(),
            cookies: BTreeMap::new(),
        }
    }

    /// Sends a request to `addr` with the cookies, stores any `Set-Cookie`s; returns
    /// (status, body).
    pub async fn request(
        &mut self,
        method: reqwest::Method,
        addr: SocketAddr,
        path: &str,
        body: Option<String>,
    ) -> Result<(u16, String), String> {
        let mut req = self.http.request(method, format!("http://{addr}{path}"));
        if !self.cookies.is_empty() {
            let cookie: Vec<String> = self
                .cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            req = req.header(reqwest::header::COOKIE, cookie.join("; "));
        }
        if let Some(b) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(b);
        }
        let resp = req.send().await.map_err(|e| e.to_string())?;
        for sc in resp.headers().get_all(reqwest::header::SET_COOKIE) {
            let Ok(sc) = sc.to_str() else { continue };
            let pair = sc.split(';').next().unwrap_or("");
            if let Some((k, v)) = pair.split_once('=') {
                let expired = sc.to_ascii_lowercase().contains("max-age=0");
                if expired || v.is_empty() {
                    self.cookies.remove(k.trim());
                } else {
                    self.cookies
                        .insert(k.trim().to_string(), v.trim().to_string());
                }
            }
        }
        let status = resp.status().as_u16();
        Ok((status, resp.text().await.map_err(|e| e.to_string())?))
    }

    /// `POST /counter` → the JSON answer.
    pub async fn post_counter(&mut self, node: &Node) -> Result<serde_json::Value, String> {
        self.json(reqwest::Method::POST, node, "/counter").await
    }

    /// `GET /counter` → the JSON answer.
    pub async fn get_counter(&mut self, node: &Node) -> Result<serde_json::Value, String> {
        self.json(reqwest::Method::GET, node, "/counter").await
    }

    async fn json(
        &mut self,
        method: reqwest::Method,
        node: &Node,
        path: &str,
    ) -> Result<serde_json::Value, String> {
        match self.request(method, node.addrs.http, path, None).await? {
            (200, body) => {
                serde_json::from_str(&body).map_err(|e| format!("bad JSON {body:?}: {e}"))
            }
            (s, body) => Err(format!("{path} on {} answered {s}: {body}", node.name)),
        }
    }
}

// ---------------------------------------------------------------------------------------
// DNS

/// A real dnsmasq inside a namespace, authoritative for `tribe.test`, answering names
/// from an `addn-hosts` file that the test rewrites; killed on drop.
pub struct Dnsmasq {
    child: Option<Child>,
    hosts: PathBuf,
    log: PathBuf,
    dir: tempfile::TempDir,
}

impl Dnsmasq {
    /// The zone dnsmasq is authoritative for: unknown names in it are NXDOMAIN.
    pub const ZONE: &'static str = "tribe.test";

    /// Starts dnsmasq in `ns` on `listen:53` with no upstream and no `/etc/hosts`.
    pub fn start(ns: &Netns, listen: Ipv4Addr) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let hosts = dir.path().join("members.hosts");
        std::fs::write(&hosts, "").unwrap();
        let log = dir.path().join("dnsmasq.log");
        let file = File::create(&log).unwrap();
        let child = ns
            .command("dnsmasq")
            .args([
                "--keep-in-foreground",
                "--log-facility=-",
                "--log-queries",
                "--conf-file=/dev/null",
            ])
            .args([
                "--no-resolv",
                "--no-hosts",
                "--no-poll",
                "--no-negcache",
                "--local-ttl=0",
                "--bind-interfaces",
            ])
            .args(["--user=root", "--group=root", "--pid-file=", "--port=53"])
            .arg(format!("--listen-address={listen}"))
            .arg(format!("--local=/{}/", Self::ZONE))
            .arg(format!("--addn-hosts={}", hosts.display()))
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("start dnsmasq (run scripts/install-test-deps)");
        let mut d = Dnsmasq {
            child: Some(child),
            hosts,
            log,
            dir,
        };
        // Wait until it has loaded the hosts file: a SIGHUP before its handlers are
        // installed would kill it.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !d.log().contains("members.hosts") {
            if let Some(Ok(Some(status))) = d.child.as_mut().map(|c| c.try_wait()) {
                panic!("dnsmasq exited ({status}): {}", d.log());
            }
            assert!(
                Instant::now() < deadline,
                "dnsmasq did not start: {}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    /// Makes `name` resolve to exactly `ips` (none: NXDOMAIN) and tells dnsmasq (SIGHUP).
    pub fn set_records(&self, name: &str, ips: &[Ipv4Addr]) {
        let tmp = self.dir.path().join("members.hosts.new");
        let mut f = File::create(&tmp).unwrap();
        for ip in ips {
            writeln!(f, "{ip} {name}").unwrap();
        }
        f.sync_all().unwrap();
        std::fs::rename(&tmp, &self.hosts).unwrap();
        if let Some(c) = &self.child {
            run("kill", &["-HUP", &c.id().to_string()]);
        }
    }

    /// dnsmasq's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("===== dnsmasq log =====\n{}\n===== end =====", self.log());
        }
    }
}

/// The IPv4 addresses `name` resolves to inside `ns` (through its resolv.conf), as the
/// system resolver sees them; empty when it does not resolve. (`getent ahostsv4` uses
/// `AI_ADDRCONFIG`: the namespace needs a non-loopback IPv4 address, e.g. a [`Veth`],
/// or glibc does not even ask.)
pub fn resolve_in(ns: &Netns, name: &str) -> BTreeSet<Ipv4Addr> {
    let out = ns
        .command("getent")
        .args(["ahostsv4", name])
        .output()
        .expect("run getent");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect()
}

/// Deadline for a node to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------
// Cookie access and nginx (read-your-writes tests)

pub mod attrs;
pub mod nginx;
pub mod postgres;

impl HttpClient {
    /// The value of cookie `name`, if the client holds it.
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.cookies.get(name).map(String::as_str)
    }

    /// Sets (or, with an empty value, forgets) cookie `name`, as a user editing it would.
    pub fn set_cookie(&mut self, name: &str, value: &str) {
        if value.is_empty() {
            self.cookies.remove(name);
        } else {
            self.cookies.insert(name.to_string(), value.to_string());
        }
    }
}

// ---------------------------------------------------------------------------------------
// Many sessions over one connection pool (backup-mode tests)

impl HttpClient {
    /// A client with no cookies that shares `http`'s connection pool: thousands of
    /// "browsers" (one per session) without thousands of sockets.
    pub fn sharing(http: &reqwest::Client) -> Self {
        Self {
            http: http.clone(),
            cookies: BTreeMap::new(),
        }
    }
}

/// The flags of node `i` of a static cluster whose replication addresses are `all`:
/// `--membership static --peers <the others>` and `extra`.
pub fn static_args(i: usize, all: &[Addrs], extra: &[&str]) -> Vec<String> {
    let peers: Vec<String> = all
        .iter()
        .enumerate()
        .filter(|(j, _)| *j != i)
        .map(|(_, a)| a.replication.to_string())
        .collect();
    let mut args: Vec<String> = vec![
        "--membership".into(),
        "static".into(),
        "--peers".into(),
        peers.join(","),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Starts node `i` (named `n<i+1>`) of the static cluster `all`.
pub fn spawn_static(i: usize, all: &[Addrs], extra: &[&str]) -> Node {
    let args = static_args(i, all, extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Node::spawn(&format!("n{}", i + 1), all[i], None, &args)
}

/// Starts `n` nodes on loopback that list each other as static peers.
pub fn static_cluster(n: usize, extra: &[&str]) -> Vec<Node> {
    let all: Vec<Addrs> = (0..n).map(|_| Addrs::loopback()).collect();
    (0..n).map(|i| spawn_static(i, &all, extra)).collect()
}

/// Waits until each of `nodes` lists exactly the others as alive members.
pub async fn wait_converged(nodes: &[&Node], timeout: Duration) {
    for node in nodes {
        let want: BTreeSet<String> = nodes
            .iter()
            .filter(|n| n.name != node.name)
            .map(|n| n.name.clone())
            .collect();
        node.wait_alive_members(&want, timeout).await;
    }
}

/// Waits until every node is ready and lists exactly the others as alive.
pub async fn wait_formed(nodes: &mut [Node]) {
    for n in nodes.iter_mut() {
        n.wait_ready(READY_TIMEOUT).await;
    }
    let all: Vec<&Node> = nodes.iter().collect();
    wait_converged(&all, READY_TIMEOUT).await;
}

/// `(counter, node)` of a `/counter` answer.
#[allow(dead_code)]
pub fn parse_counter(body: &str) -> Result<(i64, String), String> {
    let v: serde_json::Value =
        serde_json::from_str(body).map_err(|e| format!("bad JSON {body:?}: {e}"))?;
    let counter = v["counter"]
        .as_i64()
        .ok_or_else(|| format!("no counter in {body}"))?;
    Ok((counter, v["node"].as_str().unwrap_or("?").to_string()))
}

/// Waits (bounded) until `node`'s own replica of `session` holds `counter`: asked with
/// the session cookie alone, so the node answers from what it holds or finds, without a
/// read-your-writes wait for the client's version.
#[allow(dead_code)]
pub async fn wait_replica_counter(node: &Node, session: &str, counter: i64, timeout: Duration) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    eventually(
        &format!(
            "{} to serve {counter} with the session cookie alone",
            node.name
        ),
        timeout,
        || {
            let req = http
                .get(format!("http://{}/counter", node.addrs.http))
                .header(reqwest::header::COOKIE, format!("SESSIONID={session}"));
            async move {
                let resp = req.send().await.map_err(|e| e.to_string())?;
                let (n, _) = parse_counter(&resp.text().await.map_err(|e| e.to_string())?)?;
                if n == counter {
                    Ok(())
                } else {
                    Err(format!("counter {n}"))
                }
            }
        },
    )
    .await;
}
