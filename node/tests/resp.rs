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
            if !apps_dir()
                .join("express/node_modules/connect-redis")
                .is_dir()
            {
                missing("examples/apps/express/node_modules");
            }
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
