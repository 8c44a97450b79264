//! Sessions for any language: stock apps whose frameworks keep sessions in Redis —
//! express-session + connect-redis (node-redis), Flask-Session (redis-py), PHP's
//! `session.save_handler = redis` (phpredis) — each unchanged but for the store
//! address, three instances behind a real nginx round-robin.
//!
//! Each test runs the same flows twice: against one real `redis-server` (so the flows
//! prove compatibility, not only Tribe's view of RESP), then against three Tribe nodes in
//! sync mode, each app instance talking RESP to its own node, with a node and its app
//! killed (`kill -9`, a pod dying), a scale-up to five and a scale-down to two in the
//! middle: every answer must be exactly what the browser's own history says (nothing
//! lost, nothing stale).
//!
//! The endpoint's own rules are tested here too: no data before the node is ready or
//! once it drains (and a sidecar restarted under load loses no session), the limits
//! against hostile raw-TCP clients, scans that never stall the node, and the refusal to
//! serve a public address without a password.
//!
//! The apps live in `examples/apps/`; `scripts/install-test-deps` installs their
//! packages (npm, PyPI, Debian).

mod support;

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};
use support::nginx::Nginx;
use support::*;

/// The three stock apps.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Express,
    Flask,
    Php,
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn apps_dir() -> PathBuf {
    repo().join("examples/apps")
}

/// Panics with a clear message when an app's runtime or packages are missing.
fn require(kind: Kind) {
    let missing = |what: &str| -> ! { panic!("{what} not found: run scripts/install-test-deps") };
    if !Path::new("/usr/bin/redis-server").exists()
        && Command::new("redis-server")
            .arg("--version")
            .output()
            .is_err()
    {
        missing("redis-server");
    }
    match kind {
        Kind::Express => {
            let dir = apps_dir().join("express");
            if !dir.join("node_modules/connect-redis").is_dir() {
                missing("examples/apps/express/node_modules");
            }
            // The node-redis the lock file names, not an older one left installed (before
            // 5.11 it could hang for good after a reconnect reset mid-handshake).
            let version = |file: &str, field: &str| -> Option<String> {
                let text = std::fs::read_to_string(dir.join(file)).ok()?;
                let v: Value = serde_json::from_str(&text).ok()?;
                v.pointer(field)?.as_str().map(str::to_string)
            };
            let want = version("package.json", "/dependencies/redis");
            let have = version("node_modules/redis/package.json", "/version");
            assert_eq!(
                have, want,
                "examples/apps/express/node_modules holds another node-redis than package.json names: run scripts/install-test-deps"
            );
        }
        Kind::Flask => {
            if !repo().join(".tools/apps-venv/bin/python").exists() {
                missing(".tools/apps-venv (Flask-Session)");
            }
        }
        Kind::Php => {
            let out = Command::new("php").arg("-m").output();
            let has = out.map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .any(|l| l == "redis")
            });
            if !has.unwrap_or(false) {
                missing("php with the redis extension (php-cli, php-redis)");
            }
        }
    }
}

/// One app instance; killed on drop, its log printed when the test panics.
struct App {
    name: String,
    addr: SocketAddr,
    child: Option<Child>,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl App {
    fn spawn(kind: Kind, name: &str, store: SocketAddr) -> App {
        Self::spawn_at(
            kind,
            name,
            store,
            SocketAddr::from(([127, 0, 0, 1], free_port())),
        )
    }

    fn spawn_at(kind: Kind, name: &str, store: SocketAddr, addr: SocketAddr) -> App {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("app.log");
        let file = File::create(&log).unwrap();
        let url = format!("redis://{store}");
        let mut cmd = match kind {
            Kind::Express => {
                let mut c = Command::new("node");
                c.arg("app.js").current_dir(apps_dir().join("express"));
                c
            }
            Kind::Flask => {
                let mut c = Command::new(repo().join(".tools/apps-venv/bin/python"));
                c.arg("app.py").current_dir(apps_dir().join("flask"));
                c
            }
            Kind::Php => {
                let mut c = Command::new("php");
                c.args(["-d", "session.save_handler=redis"])
                    .arg("-d")
                    .arg(format!("session.save_path=tcp://{store}"))
                    .arg("-S")
                    .arg(addr.to_string())
                    .arg(apps_dir().join("php/index.php"));
                c
            }
        };
        let child = cmd
            .env("PORT", addr.port().to_string())
            .env("REDIS_URL", url)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the {kind:?} app: {e}"));
        App {
            name: name.to_string(),
            addr,
            child: Some(child),
            log,
            _dir: dir,
        }
    }

    async fn wait_up(&mut self) {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("app {} exited ({st}); log:\n{}", self.name, self.log());
            }
            let ok = http
                .get(format!("http://{}/healthz", self.addr))
                .timeout(Duration::from_secs(1))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "app {} not up; log:\n{}",
                self.name,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "===== log of app {} =====\n{}===== end =====",
                self.name,
                self.log()
            );
        }
    }
}

/// A real `redis-server` on a free loopback port, no persistence; killed on drop.
struct RedisServer {
    addr: SocketAddr,
    child: Child,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    async fn start() -> RedisServer {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start redis-server: run scripts/install-test-deps");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        eventually(
            "redis-server listening",
            Duration::from_secs(10),
            || async move {
                tokio::net::TcpStream::connect(addr)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            },
        )
        .await;
        RedisServer {
            addr,
            child,
            _dir: dir,
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a browser's own history says its session holds.
#[derive(Debug, Clone)]
struct Model {
    user: String,
    count: i64,
    cart: Vec<String>,
}

impl Model {
    fn json(&self) -> Value {
        json!({"user": self.user, "count": self.count, "cart": self.cart})
    }
}

async fn call(b: &mut HttpClient, front: SocketAddr, method: Method, path: &str) -> Value {
    let (status, body) = b
        .request(method, front, path, None)
        .await
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    assert_eq!(status, 200, "{path} answered {status}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: bad JSON {body:?}: {e}"))
}

/// A browser that opens a new connection per request: an nginx reload (the front door's
/// endpoints changing) closes idle keep-alive connections, and a request sent on one at
/// that moment would fail for reasons that have nothing to do with sessions.
fn browser() -> HttpClient {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    HttpClient::sharing(&http)
}

/// Signs `n` browsers in (concurrently) through `front`.
async fn sign_in(front: SocketAddr, n: usize, tag: &str) -> Vec<(HttpClient, Model)> {
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let user = format!("{tag}-u{i}");
        set.spawn(async move {
            let mut b = browser();
            let got = call(&mut b, front, Method::POST, &format!("/login?user={user}")).await;
            let m = Model {
                user,
                count: 0,
                cart: vec![],
            };
            assert_eq!(got, m.json(), "sign-in");
            (i, b, m)
        });
    }
    let mut out: Vec<_> = set.join_all().await;
    out.sort_by_key(|(i, _, _)| *i);
    out.into_iter().map(|(_, b, m)| (b, m)).collect()
}

/// `steps` counter and cart requests per browser (browsers concurrently, each one's
/// requests in order), then `GET /me`; every answer must equal the browser's model.
async fn flows(
    front: SocketAddr,
    browsers: Vec<(HttpClient, Model)>,
    steps: usize,
    phase: &str,
) -> Vec<(HttpClient, Model)> {
    let mut set = tokio::task::JoinSet::new();
    for (i, (mut b, mut m)) in browsers.into_iter().enumerate() {
        let phase = phase.to_string();
        set.spawn(async move {
            for s in 0..steps {
                let got = if s % 3 == 2 {
                    let item = format!("{phase}-{s}");
                    m.cart.push(item.clone());
                    call(&mut b, front, Method::POST, &format!("/cart?item={item}")).await
                } else {
                    m.count += 1;
                    call(&mut b, front, Method::POST, "/count").await
                };
                assert_eq!(
                    got,
                    m.json(),
                    "browser {i}, {phase} step {s}: stale or lost"
                );
            }
            let got = call(&mut b, front, Method::GET, "/me").await;
            assert_eq!(got, m.json(), "browser {i}, {phase}: /me");
            (i, b, m)
        });
    }
    let mut out: Vec<_> = set.join_all().await;
    out.sort_by_key(|(i, _, _)| *i);
    out.into_iter().map(|(_, b, m)| (b, m)).collect()
}

/// Signs out every browser and checks the session is gone on the next request (which
/// lands on another instance).
async fn sign_out(front: SocketAddr, browsers: Vec<(HttpClient, Model)>) {
    for (mut b, _) in browsers {
        call(&mut b, front, Method::POST, "/logout").await;
        for _ in 0..3 {
            let got = call(&mut b, front, Method::GET, "/me").await;
            assert_eq!(
                got,
                json!({"user": null, "count": 0, "cart": []}),
                "signed out"
            );
        }
    }
}

const BROWSERS: usize = 4;
const STEPS: usize = 9;

async fn on_redis_server(kind: Kind) {
    let redis = RedisServer::start().await;
    let mut apps: Vec<App> = (0..3)
        .map(|i| App::spawn(kind, &format!("redis-app{i}"), redis.addr))
        .collect();
    for a in &mut apps {
        a.wait_up().await;
    }
    let nginx = Nginx::round_robin(&apps.iter().map(|a| a.addr).collect::<Vec<_>>());
    let browsers = sign_in(nginx.addr, BROWSERS, "redis").await;
    let browsers = flows(nginx.addr, browsers, STEPS, "a").await;
    let browsers = flows(nginx.addr, browsers, STEPS, "b").await;
    sign_out(nginx.addr, browsers).await;
}

/// Three nodes in sync mode, an app instance on each, nginx round-robin over the apps:
/// flows, then a pod killed (`kill -9` of its node and app), flows, a scale-up to five,
/// flows, a scale-down to two (graceful: the front door drops the pods, then SIGTERM),
/// flows and sign-out. Every answer must match the browser's history.
async fn on_tribe(kind: Kind, extra: &[&str]) {
    const SLOTS: usize = 6;
    let all: Vec<Addrs> = (0..SLOTS).map(|_| Addrs::loopback()).collect();
    let resp: Vec<SocketAddr> = (0..SLOTS)
        .map(|_| SocketAddr::from(([127, 0, 0, 1], free_port())))
        .collect();
    let spawn = |i: usize| {
        let r = resp[i].to_string();
        let mut args = vec!["--send-mode", "sync", "--resp-addr", &r];
        args.extend_from_slice(extra);
        spawn_static(i, &all, &args)
    };
    let mut nodes: Vec<Option<Node>> = (0..SLOTS).map(|_| None).collect();
    let mut apps: Vec<Option<App>> = (0..SLOTS).map(|_| None).collect();
    for (i, slot) in nodes.iter_mut().enumerate().take(3) {
        *slot = Some(spawn(i));
    }
    for n in nodes.iter_mut().flatten() {
        n.wait_ready(READY_TIMEOUT).await;
    }
    let start = |i: usize| App::spawn(kind, &format!("tribe-app{i}"), resp[i]);
    for (i, slot) in apps.iter_mut().enumerate().take(3) {
        *slot = Some(start(i));
    }
    for a in apps.iter_mut().flatten() {
        a.wait_up().await;
    }
    let live = |apps: &[Option<App>]| -> Vec<SocketAddr> {
        apps.iter().flatten().map(|a| a.addr).collect()
    };
    let nginx = Nginx::failover(&live(&apps));
    let tag = format!("{kind:?}-tribe{}", extra.join(""));
    let browsers = sign_in(nginx.addr, BROWSERS, &tag).await;
    let browsers = flows(nginx.addr, browsers, STEPS, "a").await;

    // A pod dies: its node and its app, kill -9; the ingress drops the endpoint.
    nodes[2].as_mut().unwrap().kill();
    apps[2] = None;
    nginx.set_upstreams(&live(&apps)).await;
    let browsers = flows(nginx.addr, browsers, STEPS, "b").await;

    // Scale up to five: three new pods join (state transfer), then get traffic.
    for (i, slot) in nodes.iter_mut().enumerate().skip(3) {
        *slot = Some(spawn(i));
    }
    for (i, (node, app)) in nodes.iter_mut().zip(apps.iter_mut()).enumerate().skip(3) {
        node.as_mut().unwrap().wait_ready(READY_TIMEOUT).await;
        *app = Some(start(i));
    }
    for app in apps.iter_mut().skip(3) {
        app.as_mut().unwrap().wait_up().await;
    }
    // Every member sees every other before the new pods get traffic: a node that has not
    // admitted a joiner yet does not send it its writes (the joiner's state transfer may
    // have happened before them), and nothing but a later delta to the same session
    // would show it the gap.
    let live_nodes: Vec<&Node> = nodes.iter().flatten().filter(|n| n.name != "n3").collect();
    wait_converged(&live_nodes, READY_TIMEOUT).await;
    nginx.set_upstreams(&live(&apps)).await;
    let browsers = flows(nginx.addr, browsers, STEPS, "c").await;

    // Scale down to two: the front door stops sending to three pods, then they stop.
    let staying: Vec<SocketAddr> = [4, 5]
        .iter()
        .map(|&i| apps[i].as_ref().unwrap().addr)
        .collect();
    nginx.set_upstreams(&staying).await;
    for i in [0, 1, 3] {
        apps[i] = None;
        nodes[i].as_ref().unwrap().sigterm();
    }
    for i in [0, 1, 3] {
        let n = nodes[i].as_mut().unwrap();
        assert!(
            n.wait_exit(Duration::from_secs(30)).await,
            "{} left cleanly",
            n.name
        );
    }
    let browsers = flows(nginx.addr, browsers, STEPS, "d").await;
    sign_out(nginx.addr, browsers).await;
    for i in [4, 5] {
        nodes[i].as_mut().unwrap().check_running().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn express_connect_redis_on_redis_and_on_tribe() {
    require(Kind::Express);
    on_redis_server(Kind::Express).await;
    on_tribe(Kind::Express, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flask_session_on_redis_and_on_tribe() {
    require(Kind::Flask);
    on_redis_server(Kind::Flask).await;
    on_tribe(Kind::Flask, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn php_redis_sessions_on_redis_and_on_tribe() {
    require(Kind::Php);
    on_redis_server(Kind::Php).await;
    on_tribe(Kind::Php, &[]).await;
}

/// Async mode: writes return before the replicas have them, and nginx sends the next
/// request elsewhere. With the sidecar's proxy in front of each app (version cookie,
/// hold until the local node has the session at that version) the browser still reads
/// its own writes on every request.
async fn async_behind_proxy(kind: Kind, adapter: &str) {
    let all: Vec<Addrs> = (0..3).map(|_| Addrs::loopback()).collect();
    let at = || SocketAddr::from(([127, 0, 0, 1], free_port()));
    let resp: Vec<SocketAddr> = (0..3).map(|_| at()).collect();
    let proxy: Vec<SocketAddr> = (0..3).map(|_| at()).collect();
    let app: Vec<SocketAddr> = (0..3).map(|_| at()).collect();
    let mut nodes: Vec<Node> = (0..3)
        .map(|i| {
            let (r, p, a) = (
                resp[i].to_string(),
                proxy[i].to_string(),
                app[i].to_string(),
            );
            spawn_static(
                i,
                &all,
                &[
                    "--send-mode",
                    "async",
                    "--resp-addr",
                    &r,
                    "--proxy-addr",
                    &p,
                    "--proxy-upstream",
                    &a,
                    "--proxy-adapter",
                    adapter,
                    "--consistency-wait",
                    "2s",
                ],
            )
        })
        .collect();
    wait_formed(&mut nodes).await;
    let mut apps: Vec<App> = (0..3)
        .map(|i| App::spawn_at(kind, &format!("async-app{i}"), resp[i], app[i]))
        .collect();
    for a in &mut apps {
        a.wait_up().await;
    }
    let nginx = Nginx::round_robin(&proxy);
    let browsers = sign_in(nginx.addr, BROWSERS, "async").await;
    for (b, _) in &browsers {
        assert!(
            b.cookie(&format!("{}_V", adapter_cookie(adapter)))
                .is_some(),
            "the proxy set the version cookie"
        );
    }
    let browsers = flows(nginx.addr, browsers, STEPS, "a").await;
    let browsers = flows(nginx.addr, browsers, STEPS, "b").await;
    sign_out(nginx.addr, browsers).await;
}

fn adapter_cookie(adapter: &str) -> &'static str {
    match adapter {
        "connect-redis" => "connect.sid",
        "flask-session" => "session",
        _ => "PHPSESSID",
    }
}

/// Backup mode (a primary and one backup per key): an app whose node holds no copy of
/// its session reads it from the owners and writes through the primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn express_on_tribe_in_backup_mode() {
    require(Kind::Express);
    on_tribe(
        Kind::Express,
        &["--replication", "backup", "--backups", "1"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn express_async_mode_reads_its_writes_through_the_proxy() {
    require(Kind::Express);
    async_behind_proxy(Kind::Express, "connect-redis").await;
}

/// Writes `send`, reads exactly `expect.len()` bytes (bounded) and compares.
async fn exchange(s: &mut tokio::net::TcpStream, send: &[u8], expect: &[u8]) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(send).await.unwrap();
    let mut got = vec![0u8; expect.len()];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got))
        .await
        .unwrap_or_else(|_| panic!("no answer to {:?}", String::from_utf8_lossy(send)))
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(expect),
        "answer to {:?}",
        String::from_utf8_lossy(send)
    );
}

/// Writes `send`, returns the answer's first line (an integer or a status).
async fn ask(s: &mut tokio::net::TcpStream, send: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(send).await.unwrap();
    let mut line = Vec::new();
    while !line.ends_with(b"\r\n") {
        let mut byte = [0u8; 1];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut byte))
            .await
            .expect("an answer")
            .unwrap();
        line.push(byte[0]);
    }
    String::from_utf8_lossy(&line).into_owned()
}

/// The connection is closed by the server (EOF within the bound).
async fn closed(s: &mut tokio::net::TcpStream) {
    use tokio::io::AsyncReadExt;
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
        .await
        .expect("the server closes the connection")
        .unwrap();
    assert_eq!(
        n,
        0,
        "nothing after the error: {:?}",
        String::from_utf8_lossy(&rest)
    );
}

fn cmd(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend(format!("${}\r\n{a}\r\n", a.len()).into_bytes());
    }
    out
}

/// The RESP endpoint on the wire, on two sync nodes: pipelining, replication of strings,
/// TTLs and hash fields (different fields written on different nodes merge), RESP3
/// `HELLO`, Redis-style errors, and bad input answered with a protocol error and a
/// closed connection (the node keeps serving).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp_on_the_wire_across_two_nodes() {
    let all: Vec<Addrs> = (0..2).map(|_| Addrs::loopback()).collect();
    let resp: Vec<SocketAddr> = (0..2)
        .map(|_| SocketAddr::from(([127, 0, 0, 1], free_port())))
        .collect();
    let mut nodes: Vec<Node> = (0..2)
        .map(|i| {
            let r = resp[i].to_string();
            spawn_static(i, &all, &["--send-mode", "sync", "--resp-addr", &r])
        })
        .collect();
    wait_formed(&mut nodes).await;
    let connect = |a: SocketAddr| async move { tokio::net::TcpStream::connect(a).await.unwrap() };
    let (mut a, mut b) = (connect(resp[0]).await, connect(resp[1]).await);

    // Pipelined: three requests in one write, three answers in order.
    let mut p = cmd(&["PING"]);
    p.extend(cmd(&["SET", "sess:1", "hello", "EX", "100"]));
    p.extend(cmd(&["GET", "sess:1"]));
    exchange(&mut a, &p, b"+PONG\r\n+OK\r\n$5\r\nhello\r\n").await;
    // Sync mode: acknowledged means the other node has it.
    exchange(&mut b, &cmd(&["GET", "sess:1"]), b"$5\r\nhello\r\n").await;
    // TTLs are kept to the second, rounded up: 100 s from now reads as 100 or 101.
    let ttl = ask(&mut b, &cmd(&["TTL", "sess:1"])).await;
    assert!(ttl == ":100\r\n" || ttl == ":101\r\n", "TTL {ttl:?}");
    exchange(&mut b, &cmd(&["SET", "sess:1", "x", "NX"]), b"$-1\r\n").await;
    // A shorter TTL, set on the other node.
    exchange(&mut b, &cmd(&["EXPIRE", "sess:1", "50"]), b":1\r\n").await;
    let ttl = ask(&mut a, &cmd(&["TTL", "sess:1"])).await;
    assert!(ttl == ":50\r\n" || ttl == ":51\r\n", "TTL {ttl:?}");
    exchange(&mut a, &cmd(&["PERSIST", "sess:1"]), b":1\r\n").await;
    exchange(&mut b, &cmd(&["TTL", "sess:1"]), b":-1\r\n").await;
    // Hash fields from both nodes merge.
    exchange(&mut a, &cmd(&["HSET", "h", "a", "1"]), b":1\r\n").await;
    exchange(&mut b, &cmd(&["HSET", "h", "b", "2"]), b":1\r\n").await;
    let all_fields = b"*4\r\n$1\r\na\r\n$1\r\n1\r\n$1\r\nb\r\n$1\r\n2\r\n";
    exchange(&mut a, &cmd(&["HGETALL", "h"]), all_fields).await;
    exchange(&mut b, &cmd(&["HGETALL", "h"]), all_fields).await;
    exchange(
        &mut a,
        &cmd(&["GET", "h"]),
        b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n",
    )
    .await;
    // RENAME (session id rotation), DEL, EXISTS, SCAN with MATCH.
    exchange(&mut a, &cmd(&["RENAME", "sess:1", "sess:2"]), b"+OK\r\n").await;
    exchange(&mut b, &cmd(&["EXISTS", "sess:1", "sess:2"]), b":1\r\n").await;
    exchange(
        &mut b,
        &cmd(&["SCAN", "0", "MATCH", "sess:*", "COUNT", "100"]),
        b"*2\r\n$1\r\n0\r\n*1\r\n$6\r\nsess:2\r\n",
    )
    .await;
    exchange(&mut b, &cmd(&["DEL", "sess:2", "h", "nope"]), b":2\r\n").await;
    exchange(&mut a, &cmd(&["DBSIZE"]), b":0\r\n").await;
    // The same key can be written again at once after a DEL.
    exchange(&mut a, &cmd(&["SET", "h", "again"]), b"+OK\r\n").await;
    exchange(&mut b, &cmd(&["GET", "h"]), b"$5\r\nagain\r\n").await;
    // RESP3: nulls and maps change shape.
    let mut c = connect(resp[0]).await;
    use tokio::io::AsyncReadExt;
    {
        use tokio::io::AsyncWriteExt;
        c.write_all(&cmd(&["HELLO", "3"])).await.unwrap();
        let mut head = [0u8; 4];
        c.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"%7\r\n");
        let mut rest = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut rest))
            .await
            .unwrap()
            .unwrap();
        assert!(String::from_utf8_lossy(&rest[..n]).contains("proto\r\n:3\r\n"));
    }
    exchange(&mut c, &cmd(&["GET", "missing"]), b"_\r\n").await;
    exchange(
        &mut c,
        &cmd(&["HELLO", "4"]),
        b"-NOPROTO unsupported protocol version\r\n",
    )
    .await;
    // Errors keep the connection; bad input closes it.
    exchange(
        &mut a,
        &cmd(&["FLUSHALL"]),
        b"-ERR unknown command 'FLUSHALL', with args beginning with: \r\n",
    )
    .await;
    exchange(
        &mut a,
        &cmd(&["SELECT", "1"]),
        b"-ERR DB index is out of range\r\n",
    )
    .await;
    exchange(
        &mut a,
        &cmd(&["GET"]),
        b"-ERR wrong number of arguments for 'get' command\r\n",
    )
    .await;
    exchange(
        &mut a,
        b"*1\r\n$x\r\n",
        b"-ERR Protocol error: invalid bulk length\r\n",
    )
    .await;
    closed(&mut a).await;
    let mut d = connect(resp[0]).await;
    exchange(
        &mut d,
        b"*1\r\n$999999999999\r\n",
        b"-ERR Protocol error: request larger than 16777216 bytes\r\n",
    )
    .await;
    closed(&mut d).await;
    // Still serving.
    let mut e = connect(resp[0]).await;
    exchange(&mut e, b"PING\r\n", b"+PONG\r\n").await;
    for n in &mut nodes {
        n.check_running().unwrap();
    }
}

/// `--resp-password-file`: nothing but `AUTH`/`HELLO … AUTH` before authenticating; a wrong
/// password is refused; the right one opens the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp_password_is_required_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("resp-password");
    std::fs::write(&pw, "s3cret\n").unwrap();
    let resp = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let (r, p) = (resp.to_string(), pw.display().to_string());
    let mut node = Node::spawn(
        "n1",
        Addrs::loopback(),
        None,
        &[
            "--membership",
            "static",
            "--resp-addr",
            &r,
            "--resp-password-file",
            &p,
        ],
    );
    node.wait_ready(READY_TIMEOUT).await;
    let mut c = tokio::net::TcpStream::connect(resp).await.unwrap();
    exchange(
        &mut c,
        &cmd(&["GET", "k"]),
        b"-NOAUTH Authentication required.\r\n",
    )
    .await;
    exchange(
        &mut c,
        &cmd(&["AUTH", "nope"]),
        b"-WRONGPASS invalid username-password pair or user is disabled.\r\n",
    )
    .await;
    exchange(&mut c, &cmd(&["AUTH", "default", "s3cret"]), b"+OK\r\n").await;
    exchange(&mut c, &cmd(&["GET", "k"]), b"$-1\r\n").await;
    let mut d = tokio::net::TcpStream::connect(resp).await.unwrap();
    exchange(
        &mut d,
        &cmd(&["HELLO", "2", "AUTH", "default", "s3cret"]),
        b"*14\r\n",
    )
    .await;
}

// ------------------------------------------------------------ readiness and limits

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// Connects once the listener is up (bounded).
async fn connect_when_up(addr: SocketAddr) -> tokio::net::TcpStream {
    eventually("the RESP listener", READY_TIMEOUT, || async move {
        tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())
    })
    .await
}

/// Reads until the server closes the connection (EOF or reset), bounded; returns what
/// came before.
async fn read_until_closed(s: &mut tokio::net::TcpStream, within: Duration) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => panic!(
                "the server did not close the connection within {within:?} (got {:?})",
                String::from_utf8_lossy(&got)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => return got,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// A node answers data commands only while `/readyz` says ready: `-LOADING` (and the
/// proxy 503) while it lacks its quorum, normal answers once a peer joins, and
/// `-LOADING` again as soon as SIGTERM's drain begins (the node still running).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp_answers_loading_until_ready_and_from_drain_on() {
    let all: Vec<Addrs> = (0..2).map(|_| Addrs::loopback()).collect();
    let resp = [loopback(), loopback()];
    let proxy = loopback();
    let (r0, r1, p) = (resp[0].to_string(), resp[1].to_string(), proxy.to_string());
    let common = ["--send-mode", "sync", "--min-members", "2"];
    let mut a1: Vec<&str> = common.to_vec();
    a1.extend(["--resp-addr", &r0, "--shutdown-delay", "10s"]);
    a1.extend(["--proxy-addr", &p, "--proxy-upstream", "127.0.0.1:9"]);
    let mut n1 = spawn_static(0, &all, &a1);
    let mut c = connect_when_up(resp[0]).await;
    exchange(&mut c, &cmd(&["PING"]), b"+PONG\r\n").await;
    let (status, _) = n1.get("/readyz", true).await.unwrap();
    assert_eq!(status, 503, "alone, below --min-members 2: not ready");
    let got = ask(&mut c, &cmd(&["GET", "sess:a"])).await;
    assert!(got.starts_with("-LOADING "), "not ready: {got:?}");
    let got = ask(&mut c, &cmd(&["SET", "sess:a", "v"])).await;
    assert!(got.starts_with("-LOADING "), "not ready: {got:?}");
    let r = reqwest::Client::new()
        .get(format!("http://{proxy}/"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503, "the proxy follows the same rule");
    assert_eq!(r.headers()["retry-after"], "1");

    let mut a2: Vec<&str> = common.to_vec();
    a2.extend(["--resp-addr", &r1]);
    let mut n2 = spawn_static(1, &all, &a2);
    n1.wait_ready(READY_TIMEOUT).await;
    n2.wait_ready(READY_TIMEOUT).await;
    exchange(&mut c, &cmd(&["SET", "sess:a", "v"]), b"+OK\r\n").await;
    let mut d = connect_when_up(resp[1]).await;
    exchange(&mut d, &cmd(&["GET", "sess:a"]), b"$1\r\nv\r\n").await;

    // SIGTERM: the node keeps running for --shutdown-delay, but serves no data.
    n1.sigterm();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got = ask(&mut c, &cmd(&["GET", "sess:a"])).await;
        if got.starts_with("-LOADING ") {
            break;
        }
        assert_eq!(got, "$1\r\n", "before the drain: the value");
        let mut rest = [0u8; 3];
        use tokio::io::AsyncReadExt;
        c.read_exact(&mut rest).await.unwrap();
        assert!(
            Instant::now() < deadline,
            "still serving data after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    n1.check_running().expect("still draining");
    let got = ask(&mut c, &cmd(&["EXISTS", "sess:a"])).await;
    assert!(got.starts_with("-LOADING "), "draining: {got:?}");
    exchange(&mut c, &cmd(&["PING"]), b"+PONG\r\n").await;
}

/// On SIGTERM the Redis listener closes before the connections do: a client that
/// reconnects the moment its connection closes (node-redis does, at once) is refused and
/// retries later, instead of being taken into the closing listener's backlog and reset
/// in the middle of its handshake (which node-redis before 5.11 took for a ready
/// connection, then waited on for good).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp_stop_closes_the_listener_before_the_connections() {
    let resp = loopback();
    let r = resp.to_string();
    let mut n = Node::spawn(
        "n1",
        Addrs::loopback(),
        None,
        &["--membership", "static", "--resp-addr", &r],
    );
    n.wait_ready(READY_TIMEOUT).await;
    let mut conns = Vec::new();
    for _ in 0..32 {
        let mut c = connect_when_up(resp).await;
        exchange(&mut c, &cmd(&["PING"]), b"+PONG\r\n").await;
        conns.push(c);
    }
    n.sigterm();
    let mut set = tokio::task::JoinSet::new();
    for mut c in conns {
        set.spawn(async move {
            read_until_closed(&mut c, Duration::from_secs(30)).await;
            tokio::net::TcpStream::connect(resp).await.is_ok()
        });
    }
    let accepted = set.join_all().await.into_iter().filter(|ok| *ok).count();
    assert_eq!(
        accepted, 0,
        "reconnects accepted after their connection was closed on SIGTERM"
    );
    assert!(n.wait_exit(Duration::from_secs(30)).await, "n1 exited");
}

/// Hostile clients against a password-protected endpoint: oversized and zero-padded
/// requests and too many arguments before `AUTH` close the connection; a flood of
/// connections that never authenticate cannot keep the app out; silent clients are
/// closed (auth timeout, idle timeout); wrong passwords are counted and slowed; a
/// request split into many small writes is parsed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp_limits_hold_against_hostile_clients() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("resp-password");
    std::fs::write(&pw, "s3cret\n").unwrap();
    let p = pw.display().to_string();
    let (ra, rb) = (loopback(), loopback());
    let (sa, sb) = (ra.to_string(), rb.to_string());
    let single = ["--membership", "static", "--resp-password-file", &p];
    let mut args_a = single.to_vec();
    args_a.extend([
        "--resp-addr",
        &sa,
        "--resp-max-clients",
        "64",
        "--resp-idle-timeout",
        "1s",
    ]);
    let mut a = Node::spawn("a", Addrs::loopback(), None, &args_a);
    let mut args_b = single.to_vec();
    args_b.extend(["--resp-addr", &sb, "--resp-auth-timeout", "1s"]);
    let mut b = Node::spawn("b", Addrs::loopback(), None, &args_b);
    a.wait_ready(READY_TIMEOUT).await;
    b.wait_ready(READY_TIMEOUT).await;
    let auth = cmd(&["AUTH", "s3cret"]);

    // Before AUTH: a bulk header declaring 20 KB, a zero-padded length, 11 arguments.
    let mut c = connect_when_up(ra).await;
    c.write_all(b"*2\r\n$4\r\nAUTH\r\n$20000\r\n")
        .await
        .unwrap();
    let got = read_until_closed(&mut c, Duration::from_secs(5)).await;
    assert_eq!(
        String::from_utf8_lossy(&got),
        "-ERR Protocol error: request larger than 16384 bytes\r\n"
    );
    let mut c = connect_when_up(ra).await;
    let mut padded = b"*1\r\n$".to_vec();
    padded.extend(std::iter::repeat_n(b'0', 17_000));
    let _ = c.write_all(&padded).await; // the server may close while we write
    let got = read_until_closed(&mut c, Duration::from_secs(5)).await;
    assert!(
        got.is_empty() || got.starts_with(b"-ERR Protocol error"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    let mut c = connect_when_up(ra).await;
    let eleven: Vec<&str> = std::iter::repeat_n("x", 11).collect();
    c.write_all(&cmd(&eleven)).await.unwrap();
    let got = read_until_closed(&mut c, Duration::from_secs(5)).await;
    assert_eq!(
        String::from_utf8_lossy(&got),
        "-ERR Protocol error: invalid multibulk length\r\n"
    );
    // After AUTH the same sizes are fine.
    let mut app = connect_when_up(ra).await;
    exchange(&mut app, &auth, b"+OK\r\n").await;
    let big = "v".repeat(20_000);
    exchange(&mut app, &cmd(&["SET", "sess:big", &big]), b"+OK\r\n").await;
    exchange(&mut app, &cmd(&["STRLEN", "sess:big"]), b":20000\r\n").await;

    // Incremental parsing: 50,000 arguments in 64-byte writes.
    let keys: Vec<String> = (0..50_000).map(|i| format!("k{i}")).collect();
    let mut req = vec!["EXISTS"];
    req.extend(keys.iter().map(String::as_str));
    for chunk in cmd(&req).chunks(64 * 1024) {
        for small in chunk.chunks(64) {
            app.write_all(small).await.unwrap();
        }
    }
    let got = ask(&mut app, b"").await;
    assert_eq!(got, ":0\r\n");

    // A flood of connections that never authenticate (32 unauthenticated slots of 64):
    // the oldest are closed for newcomers, and the app still connects and authenticates.
    let mut flood = Vec::new();
    for _ in 0..48 {
        flood.push(tokio::net::TcpStream::connect(ra).await.unwrap());
    }
    let mut late = tokio::net::TcpStream::connect(ra).await.unwrap();
    exchange(&mut late, &auth, b"+OK\r\n").await;
    exchange(&mut late, &cmd(&["STRLEN", "sess:big"]), b":20000\r\n").await;
    for (i, s) in flood.iter_mut().take(16).enumerate() {
        let got = read_until_closed(s, Duration::from_secs(5)).await;
        assert!(got.is_empty(), "flood connection {i}: {got:?}");
    }
    drop(flood);

    // Idle timeout (1 s here) closes an authenticated client that says nothing.
    let got = read_until_closed(&mut late, Duration::from_secs(5)).await;
    assert!(got.is_empty());
    // Auth timeout (1 s on b) closes a client that never authenticates.
    let mut silent = connect_when_up(rb).await;
    let got = read_until_closed(&mut silent, Duration::from_secs(5)).await;
    assert!(got.is_empty());

    // Wrong passwords: counted, and answered one at a time after a delay.
    let before = a
        .metric("tribe_resp_auth_failures")
        .await
        .unwrap()
        .unwrap_or(0.0);
    let mut g = connect_when_up(ra).await;
    let mut guesses = Vec::new();
    for i in 0..3 {
        guesses.extend(cmd(&["AUTH", &format!("guess{i}")]));
    }
    let started = Instant::now();
    g.write_all(&guesses).await.unwrap();
    for _ in 0..3 {
        let got = ask(&mut g, b"").await;
        assert!(got.starts_with("-WRONGPASS"), "{got:?}");
    }
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "three wrong passwords answered in {:?}: not slowed",
        started.elapsed()
    );
    let after = a.metric("tribe_resp_auth_failures").await.unwrap().unwrap();
    assert_eq!(after - before, 3.0);
    assert!(a.log().contains("AUTH with a wrong password"));
    a.check_running().unwrap();
    b.check_running().unwrap();
}

/// `KEYS`/`SCAN` over 20,000 keys run off the runtime: heartbeats keep flowing (the
/// peer never suspects the node), `/healthz` answers meanwhile, long patterns are
/// refused, and `SCAN` walks with a real cursor (`COUNT 1` visits about one key; a full
/// iteration returns every key once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp_heavy_scans_never_stall_the_node() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let all: Vec<Addrs> = (0..2).map(|_| Addrs::loopback()).collect();
    let resp = loopback();
    let r = resp.to_string();
    let timing = ["--heartbeat-interval", "200ms", "--member-timeout", "1s"];
    let mut a1 = vec!["--resp-addr", r.as_str()];
    a1.extend(timing);
    let mut nodes = vec![spawn_static(0, &all, &a1), spawn_static(1, &all, &timing)];
    wait_formed(&mut nodes).await;
    let mut c = connect_when_up(resp).await;
    const KEYS: usize = 20_000;
    for batch in 0..KEYS / 1000 {
        let mut req = Vec::new();
        for i in 0..1000 {
            req.extend(cmd(&["SET", &format!("sess:{:05}", batch * 1000 + i), "v"]));
        }
        c.write_all(&req).await.unwrap();
        let mut ok = vec![0u8; 5 * 1000];
        tokio::time::timeout(Duration::from_secs(30), c.read_exact(&mut ok))
            .await
            .expect("SET answers")
            .unwrap();
        assert!(ok.chunks(5).all(|r| r == b"+OK\r\n"));
    }
    exchange(&mut c, &cmd(&["DBSIZE"]), format!(":{KEYS}\r\n").as_bytes()).await;
    let long = "*".repeat(129);
    exchange(
        &mut c,
        &cmd(&["KEYS", &long]),
        b"-ERR pattern longer than 128 bytes\r\n",
    )
    .await;

    // SCAN COUNT 1 visits about one key, and the cursor moves on.
    let scan =
        |cursor: &str, count: &str| cmd(&["SCAN", cursor, "MATCH", "sess:*", "COUNT", count]);
    c.write_all(&scan("0", "1")).await.unwrap();
    let (cursor, keys) = read_scan(&mut c).await;
    assert!(cursor != "0" && keys.len() <= 2, "{cursor} {keys:?}");
    let mut seen = std::collections::BTreeSet::new();
    let mut cursor = "0".to_string();
    let mut calls = 0;
    loop {
        c.write_all(&scan(&cursor, "1000")).await.unwrap();
        let (next, keys) = read_scan(&mut c).await;
        for k in keys {
            assert!(seen.insert(k.clone()), "{k} returned twice");
        }
        calls += 1;
        cursor = next;
        if cursor == "0" {
            break;
        }
    }
    assert_eq!(seen.len(), KEYS);
    assert!(
        calls >= KEYS / 1000,
        "COUNT 1000 over {KEYS} keys took {calls} calls"
    );

    // Heavy KEYS from three clients, back to back for a few member timeouts, while
    // /healthz is polled: it answers, and the peer never suspects the node.
    let worst = format!("*{}x", "[0-9a-f]".repeat(15));
    let stop = Instant::now() + Duration::from_secs(4);
    let mut load = tokio::task::JoinSet::new();
    for _ in 0..3 {
        let req = cmd(&["KEYS", &worst]);
        load.spawn(async move {
            let mut s = tokio::net::TcpStream::connect(resp).await.unwrap();
            let mut slowest = Duration::ZERO;
            while Instant::now() < stop {
                let t = Instant::now();
                exchange(&mut s, &req, b"*0\r\n").await;
                slowest = slowest.max(t.elapsed());
            }
            slowest
        });
    }
    let mut slowest_health = Duration::ZERO;
    while Instant::now() < stop {
        let t = Instant::now();
        let (status, _) = nodes[0].get("/healthz", true).await.unwrap();
        assert_eq!(status, 200);
        slowest_health = slowest_health.max(t.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let slowest_keys = load.join_all().await.into_iter().max().unwrap();
    eprintln!("KEYS (128-byte pattern, {KEYS} keys): slowest {slowest_keys:?}; /healthz slowest {slowest_health:?}");
    assert_eq!(
        nodes[1].metric("tribe_members_suspected").await.unwrap(),
        Some(0.0),
        "the peer suspected the node serving KEYS"
    );
    let want: std::collections::BTreeSet<String> = ["n1".to_string()].into();
    assert_eq!(nodes[1].alive_members().await.unwrap(), want);
}

/// `SCAN`'s reply: (cursor, keys).
async fn read_scan(s: &mut tokio::net::TcpStream) -> (String, Vec<String>) {
    let head = ask(s, b"").await;
    assert_eq!(head, "*2\r\n");
    let _len = ask(s, b"").await;
    let cursor = ask(s, b"").await.trim_end().to_string();
    let n: usize = ask(s, b"").await.trim_end()[1..].parse().unwrap();
    let mut keys = Vec::new();
    for _ in 0..n {
        let _len = ask(s, b"").await;
        keys.push(ask(s, b"").await.trim_end().to_string());
    }
    (cursor, keys)
}

/// A `--resp-addr` beyond loopback without a password refuses to start (exit 2, saying
/// why); with `--resp-insecure` it starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp_refuses_a_public_address_without_password() {
    let public = format!("0.0.0.0:{}", free_port());
    let any = "127.0.0.1:0";
    let base = [
        "--insecure",
        "--membership",
        "static",
        "--http-addr",
        any,
        "--admin-addr",
        any,
        "--replication-addr",
        any,
        "--resp-addr",
        &public,
    ];
    let mut child = Command::new(node_bin())
        .args(base)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("a public --resp-addr without a password started");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut err = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(
        err.contains("--resp-password-file") && err.contains("--resp-insecure"),
        "{err}"
    );
    let mut node = Node::spawn(
        "open",
        Addrs::loopback(),
        None,
        &[
            "--membership",
            "static",
            "--resp-addr",
            &public,
            "--resp-insecure",
        ],
    );
    node.wait_ready(READY_TIMEOUT).await;
    assert!(node.log().contains("--resp-insecure"));
}

/// A sidecar restarted under load — `kill -9`, then a graceful restart (SIGTERM) — while
/// its Express app keeps running and reconnects: every browser's counter only goes up
/// (a node that answered before it had joined would serve an empty store, and
/// express-session would start a fresh session at 1), and every app answers again after
/// each restart (node-redis before 5.11 could hang for good when the kill reset its
/// reconnect mid-handshake: the example app pins a fixed one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn express_sidecar_restarts_under_load_and_no_session_goes_back() {
    restart_under_load(false).await;
}

/// The same in async mode behind the read-your-writes proxy, with a graceful restart
/// (a `kill -9` in async mode may lose writes the node acknowledged but had not sent:
/// documented, so not asserted here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn express_async_sidecar_restart_behind_the_proxy_loses_no_session() {
    restart_under_load(true).await;
}

async fn restart_under_load(async_proxy: bool) {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    require(Kind::Express);
    let all: Vec<Addrs> = (0..2).map(|_| Addrs::loopback()).collect();
    let resp = [loopback(), loopback()];
    let app_at = [loopback(), loopback()];
    let proxy = [loopback(), loopback()];
    let r: Vec<String> = resp.iter().map(|a| a.to_string()).collect();
    let (p, u): (Vec<String>, Vec<String>) = (0..2)
        .map(|i| (proxy[i].to_string(), app_at[i].to_string()))
        .unzip();
    let args = |i: usize| {
        // A graceful stop takes a moment; one that waits out a drain timeout longer than
        // `wait_exit`'s bound below (a peer's connection counted as not drained after
        // that peer's kill -9) fails the test.
        let mut a = vec!["--resp-addr", r[i].as_str(), "--drain-timeout", "60s"];
        if async_proxy {
            a.extend([
                "--send-mode",
                "async",
                "--proxy-addr",
                &p[i],
                "--proxy-upstream",
                &u[i],
            ]);
            a.extend(["--consistency-wait", "2s"]);
        } else {
            a.extend(["--send-mode", "sync"]);
        }
        a
    };
    let mut nodes: Vec<Node> = (0..2).map(|i| spawn_static(i, &all, &args(i))).collect();
    wait_formed(&mut nodes).await;
    let mut apps: Vec<App> = (0..2)
        .map(|i| {
            App::spawn_at(
                Kind::Express,
                &format!("restart-app{i}"),
                resp[i],
                app_at[i],
            )
        })
        .collect();
    for a in &mut apps {
        a.wait_up().await;
    }
    let nginx = Nginx::round_robin(if async_proxy { &proxy } else { &app_at });
    let front = nginx.addr;
    let browsers = sign_in(front, 8, "restart").await;
    let stop = Arc::new(AtomicBool::new(false));
    let successes = Arc::new(AtomicUsize::new(0));
    let mut load = tokio::task::JoinSet::new();
    for (i, (mut b, m)) in browsers.into_iter().enumerate() {
        let (stop, successes) = (stop.clone(), successes.clone());
        load.spawn(async move {
            let mut last = 0i64;
            let mut errors = 0usize;
            while !stop.load(Ordering::Relaxed) {
                match b.request(Method::POST, front, "/count", None).await {
                    Ok((200, body)) => {
                        let v: Value = serde_json::from_str(&body).unwrap();
                        assert_eq!(v["user"], json!(m.user), "browser {i}: session lost: {v}");
                        // `>=`: express-session answers 200 even when its save failed
                        // (the node was killed mid-request), so the same count may come
                        // twice; lower, or a fresh session, is a session gone back.
                        let count = v["count"].as_i64().unwrap();
                        assert!(
                            count >= last,
                            "browser {i}: counter went back from {last} to {count}"
                        );
                        last = count;
                        successes.fetch_add(1, Ordering::Relaxed);
                    }
                    // A node not ready (LOADING) or gone: the app answers 500; retry.
                    _ => {
                        errors += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
            let got = call(&mut b, front, Method::GET, "/me").await;
            assert_eq!(got["count"], json!(last), "browser {i}: /me");
            (last, errors)
        });
    }
    let progress = |want: usize| {
        let successes = successes.clone();
        async move {
            let base = successes.load(Ordering::Relaxed);
            eventually("requests succeed", Duration::from_secs(60), || {
                let s = successes.clone();
                async move {
                    let n = s.load(Ordering::Relaxed) - base;
                    if n >= want {
                        Ok(())
                    } else {
                        Err(format!("{n} of {want}"))
                    }
                }
            })
            .await;
        }
    };
    progress(40).await;
    if !async_proxy {
        // kill -9 of one sidecar; its app keeps running and reconnects to the new one.
        nodes[1].kill();
        progress(10).await;
        nodes[1] = spawn_static(1, &all, &args(1));
        nodes[1].wait_ready(READY_TIMEOUT).await;
        serve_sessions_again(&apps).await;
        progress(40).await;
    }
    // A graceful restart of the other.
    nodes[0].sigterm();
    assert!(
        nodes[0].wait_exit(Duration::from_secs(30)).await,
        "n1 left cleanly"
    );
    nodes[0] = spawn_static(0, &all, &args(0));
    nodes[0].wait_ready(READY_TIMEOUT).await;
    serve_sessions_again(&apps).await;
    progress(40).await;
    stop.store(true, Ordering::Relaxed);
    let results = load.join_all().await;
    eprintln!("browsers (count, errors): {results:?}");
    for a in &mut apps {
        assert!(
            a.child.as_mut().unwrap().try_wait().unwrap().is_none(),
            "app {} running",
            a.name
        );
    }
}

/// Each app, asked directly, signs a new browser in (a session written to its store)
/// within a bounded time: an app whose Redis client never came back hangs here.
async fn serve_sessions_again(apps: &[App]) {
    let http = reqwest::Client::new();
    for app in apps {
        let (http, addr) = (&http, app.addr);
        eventually(
            &format!("app {} to sign a browser in again", app.name),
            READY_TIMEOUT,
            || async move {
                let r = http
                    .post(format!("http://{addr}/login?user=probe"))
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                match r.status().as_u16() {
                    200 => Ok(()),
                    s => Err(format!("status {s}")),
                }
            },
        )
        .await;
    }
}
