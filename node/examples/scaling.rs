//! Scaling benchmark (issue 4): what one replicated session write costs as the cluster
//! grows, in `delta` mode (every node holds every session) and `backup` mode (a primary
//! and `k` backups per session).
//!
//! For each routing, mode and cluster size N it starts N release-build `tribe-node`
//! processes on loopback (static peers), creates the sessions, then drives a fixed
//! number of `POST /counter` writes, each session's writes one after another, either
//! each on the next node (`round-robin`: a proxy without sticky sessions, so most writes
//! land on a node that is not the session's primary) or always on the same node
//! (`sticky`). It reports, for the write phase only:
//! - CPU-seconds of all node processes (utime + stime from `/proc/<pid>/stat`, 10 ms
//!   ticks: hence 20,000 writes by default) per 1,000 writes, and the idle CPU the same
//!   nodes burn in as long (for context);
//! - bytes sent to peers per write (`tribe_bytes_sent_total`), and replication deltas,
//!   forwards to the primary and remote fetches per write;
//! - writes whose answer was not the previous counter + 1 ("lost"; must be 0).
//!
//! ```text
//! cargo build --release -p tribe-node --bin tribe-node --example scaling
//! target/release/examples/scaling [--nodes 2,4,8,16] [--modes delta,backup] \
//!     [--routing round-robin,sticky] [--writes 20000] [--sessions 100] [--concurrency 2] [--json]
//! ```
//! The node binary is `target/release/tribe-node` (or `$TRIBE_NODE_BIN`); node logs go
//! to `$TRIBE_BENCH_LOGS` (default: a fresh directory under the temp dir).

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use futures::StreamExt;

/// Command line.
#[derive(Debug, Parser)]
#[command(about = "CPU and bytes per replicated write vs cluster size, delta vs backup mode")]
struct Args {
    /// Cluster sizes.
    #[arg(long, value_delimiter = ',', default_value = "2,4,8,16")]
    nodes: Vec<usize>,
    /// Modes: `delta`, `backup` (k = --backups).
    #[arg(long, value_delimiter = ',', default_value = "delta,backup")]
    modes: Vec<String>,
    /// How each session's writes pick a node: `round-robin` (the next node every time,
    /// like a round-robin proxy without sticky sessions) or `sticky` (always the same
    /// node, sessions spread evenly).
    #[arg(long, value_delimiter = ',', default_value = "round-robin,sticky")]
    routing: Vec<String>,
    /// Backups per session in backup mode.
    #[arg(long, default_value_t = 1)]
    backups: usize,
    /// Measured writes per run.
    #[arg(long, default_value_t = 20000)]
    writes: usize,
    /// Sessions the writes are spread over.
    #[arg(long, default_value_t = 100)]
    sessions: usize,
    /// Sessions written concurrently in all (each session has at most one request in
    /// flight). Low by default so that the machine is not saturated and the figure is
    /// the work a write costs, not how 2N tokio workers contend for the cores.
    #[arg(long, default_value_t = 2)]
    concurrency: usize,
    /// Sessions written concurrently per node instead (the same load per node at every
    /// N; on a small machine large N then also measures scheduling contention).
    #[arg(long)]
    concurrency_per_node: Option<usize>,
    /// Print JSON instead of a Markdown table.
    #[arg(long)]
    json: bool,
}

/// One measured run.
#[derive(Debug, Clone, serde::Serialize)]
struct Row {
    routing: String,
    concurrency: usize,
    mode: String,
    nodes: usize,
    writes: usize,
    seconds: f64,
    cpu_seconds: f64,
    cpu_seconds_per_1k_writes: f64,
    idle_cpu_seconds_per_1k_writes: f64,
    bytes_per_write: f64,
    deltas_per_write: f64,
    forwards_per_write: f64,
    fetches_per_write: f64,
    lost_writes: usize,
}

fn node_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("TRIBE_NODE_BIN") {
        return p.into();
    }
    // target/release/examples/scaling → target/release/tribe-node
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(|d| d.parent())
        .map(|d| d.join("tribe-node"))
        .expect("target dir")
}

/// A free loopback port, never the same twice in one run.
fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut given = GIVEN.lock().unwrap();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// Where node logs go: `$TRIBE_BENCH_LOGS`, else a fresh directory under the temp dir.
fn log_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::var_os("TRIBE_BENCH_LOGS")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                std::env::temp_dir().join(format!("tribe-scaling-{}", std::process::id()))
            });
        std::fs::create_dir_all(&dir).expect("create the log directory");
        dir
    })
    .clone()
}

/// A node process; killed on drop.
struct Proc {
    child: Child,
    http: SocketAddr,
    admin: SocketAddr,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_cluster(mode: &str, n: usize, mode_args: &[String]) -> Vec<Proc> {
    let bin = node_bin();
    assert!(
        bin.is_file(),
        "{} not found: cargo build --release -p tribe-node",
        bin.display()
    );
    let at = |p| SocketAddr::from(([127, 0, 0, 1], p));
    let ports: Vec<(u16, u16, u16)> = (0..n)
        .map(|_| (free_port(), free_port(), free_port()))
        .collect();
    (0..n)
        .map(|i| {
            let (http, admin, repl) = ports[i];
            let peers: Vec<String> = (0..n)
                .filter(|&j| j != i)
                .map(|j| at(ports[j].2).to_string())
                .collect();
            let log = std::fs::File::create(log_dir().join(format!("{mode}-{n}-n{}.log", i + 1)))
                .expect("create a node log");
            let mut cmd = Command::new(&bin);
            cmd.args(["--node-id", &format!("n{}", i + 1), "--insecure"])
                .args(["--membership", "static"])
                .args(["--http-addr", &at(http).to_string()])
                .args(["--admin-addr", &at(admin).to_string()])
                .args(["--replication-addr", &at(repl).to_string()])
                .args(mode_args)
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log);
            if !peers.is_empty() {
                cmd.args(["--peers", &peers.join(",")]);
            }
            let child = cmd.spawn().expect("start tribe-node");
            Proc {
                child,
                http: at(http),
                admin: at(admin),
            }
        })
        .collect()
}

/// Clock ticks per second (`getconf CLK_TCK`, usually 100).
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime of the processes, in seconds.
fn cpu_seconds(procs: &[Proc], ticks: f64) -> f64 {
    procs
        .iter()
        .map(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{}/stat", p.child.id()))
                .expect("read /proc/<pid>/stat");
            // Fields after "(comm)": state is field 3, utime 14, stime 15.
            let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            let utime: f64 = f[11].parse().unwrap();
            let stime: f64 = f[12].parse().unwrap();
            (utime + stime) / ticks
        })
        .sum()
}

/// Sum of one metric family over the nodes.
async fn metric_sum(http: &reqwest::Client, procs: &[Proc], family: &str) -> f64 {
    let mut sum = 0.0;
    for p in procs {
        let text = http
            .get(format!("http://{}/metrics", p.admin))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .unwrap();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            if let Some((series, value)) = line.rsplit_once(' ') {
                if series.split('{').next() == Some(family) {
                    sum += value.parse::<f64>().unwrap_or(0.0);
                }
            }
        }
    }
    sum
}

async fn wait_formed(http: &reqwest::Client, procs: &[Proc]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    for p in procs {
        loop {
            let view: Option<serde_json::Value> =
                match http.get(format!("http://{}/cluster", p.admin)).send().await {
                    Ok(r) => r.json().await.ok(),
                    Err(_) => None,
                };
            let ok = view.is_some_and(|v| {
                v["ready"] == true
                    && v["members"].as_array().is_some_and(|m| {
                        m.iter().filter(|m| m["state"] == "alive").count() == procs.len() - 1
                    })
            });
            if ok {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "cluster of {} did not form",
                procs.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// One user: its cookies (`SESSIONID` and the version cookie) and its counter.
#[derive(Default)]
struct User {
    cookies: BTreeMap<String, String>,
    counter: i64,
}

impl User {
    async fn post(&mut self, http: &reqwest::Client, node: SocketAddr) -> Result<i64, String> {
        let mut req = http.post(format!("http://{node}/counter"));
        if !self.cookies.is_empty() {
            let c: Vec<String> = self
                .cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            req = req.header(reqwest::header::COOKIE, c.join("; "));
        }
        let resp = req.send().await.map_err(|e| e.to_string())?;
        for sc in resp.headers().get_all(reqwest::header::SET_COOKIE) {
            let sc = sc.to_str().unwrap_or("");
            if let Some((k, v)) = sc.split(';').next().and_then(|p| p.split_once('=')) {
                self.cookies.insert(k.trim().into(), v.trim().into());
            }
        }
        let status = resp.status();
        let body: serde_json::Value = resp.json().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("{status}: {body}"));
        }
        body["counter"]
            .as_i64()
            .ok_or_else(|| format!("no counter in {body}"))
    }
}

async fn run_one(args: &Args, routing: &str, mode: &str, n: usize, ticks: f64) -> Row {
    let concurrency = args
        .concurrency_per_node
        .map_or(args.concurrency, |c| c * n)
        .min(args.sessions);
    let sticky = match routing {
        "round-robin" => false,
        "sticky" => true,
        other => panic!("unknown routing {other:?} (round-robin or sticky)"),
    };
    let mode_args: Vec<String> = match mode {
        "delta" => vec!["--replication".into(), "delta".into()],
        "backup" => vec![
            "--replication".into(),
            "backup".into(),
            "--backups".into(),
            args.backups.to_string(),
        ],
        other => panic!("unknown mode {other:?} (delta or backup)"),
    };
    let procs = spawn_cluster(mode, n, &mode_args);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(concurrency)
        .build()
        .unwrap();
    wait_formed(&http, &procs).await;
    let nodes: Arc<Vec<SocketAddr>> = Arc::new(procs.iter().map(|p| p.http).collect());

    // Create the sessions (not measured) and warm the connection pools.
    let mut users: Vec<User> = (0..args.sessions).map(|_| User::default()).collect();
    let created: Vec<Result<(), String>> = futures::stream::iter(users.iter_mut().enumerate())
        .map(|(i, u)| {
            let (http, nodes) = (http.clone(), nodes.clone());
            async move {
                u.counter = u.post(&http, nodes[i % nodes.len()]).await?;
                Ok(())
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    created
        .into_iter()
        .collect::<Result<(), _>>()
        .expect("create sessions");

    // Idle CPU over a short window, for context (heartbeats, maintenance ticks).
    let idle_window = Duration::from_millis(1000);
    let idle0 = cpu_seconds(&procs, ticks);
    tokio::time::sleep(idle_window).await;
    let idle_rate = (cpu_seconds(&procs, ticks) - idle0) / idle_window.as_secs_f64();

    let per_user = args.writes / args.sessions;
    let writes = per_user * args.sessions;
    let deltas0 = metric_sum(&http, &procs, "tribe_deltas_sent_total").await;
    let forwards0 = metric_sum(&http, &procs, "tribe_forwards_sent_total").await;
    let bytes0 = metric_sum(&http, &procs, "tribe_bytes_sent_total").await;
    let fetches0 = metric_sum(&http, &procs, "tribe_remote_fetches_total").await;
    let cpu0 = cpu_seconds(&procs, ticks);
    let started = Instant::now();

    let errors: Vec<String> = futures::stream::iter(users.iter_mut().enumerate())
        .map(|(i, u)| {
            let (http, nodes) = (http.clone(), nodes.clone());
            async move {
                let mut errors = Vec::new();
                for j in 0..per_user {
                    let node = nodes[(i + if sticky { 0 } else { 1 + j }) % nodes.len()];
                    match u.post(&http, node).await {
                        Ok(c) if c == u.counter + 1 => u.counter = c,
                        Ok(c) => {
                            errors.push(format!("counter {c} after {}", u.counter));
                            u.counter = c;
                        }
                        Err(e) => errors.push(e),
                    }
                }
                errors
            }
        })
        .buffer_unordered(concurrency)
        .flat_map(futures::stream::iter)
        .collect()
        .await;
    let seconds = started.elapsed().as_secs_f64();

    // Async replication: wait until every delta the writes caused has left (bounded).
    let expected = match mode {
        "delta" => (writes * (n - 1)) as f64,
        _ => (writes * args.backups.min(n - 1)) as f64,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut deltas = metric_sum(&http, &procs, "tribe_deltas_sent_total").await - deltas0;
    while deltas < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        deltas = metric_sum(&http, &procs, "tribe_deltas_sent_total").await - deltas0;
    }
    let cpu = cpu_seconds(&procs, ticks) - cpu0;
    let bytes = metric_sum(&http, &procs, "tribe_bytes_sent_total").await - bytes0;
    let forwards = metric_sum(&http, &procs, "tribe_forwards_sent_total").await - forwards0;
    let fetches = metric_sum(&http, &procs, "tribe_remote_fetches_total").await - fetches0;
    if !errors.is_empty() {
        eprintln!(
            "{mode} N={n}: {} write errors, e.g. {:?}",
            errors.len(),
            &errors[..errors.len().min(3)]
        );
    }
    let w = writes as f64;
    Row {
        routing: routing.to_string(),
        concurrency,
        mode: match mode {
            "backup" => format!("backup k={}", args.backups),
            m => m.to_string(),
        },
        nodes: n,
        writes,
        seconds,
        cpu_seconds: cpu,
        cpu_seconds_per_1k_writes: cpu / w * 1000.0,
        idle_cpu_seconds_per_1k_writes: idle_rate * seconds / w * 1000.0,
        bytes_per_write: bytes / w,
        deltas_per_write: deltas / w,
        forwards_per_write: forwards / w,
        fetches_per_write: fetches / w,
        lost_writes: errors.len(),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let args = Args::parse();
    let ticks = clock_ticks();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mut rows = Vec::new();
    for routing in &args.routing {
        for mode in &args.modes {
            for &n in &args.nodes {
                let row = run_one(&args, routing, mode, n, ticks).await;
                eprintln!("{row:?}");
                rows.push(row);
            }
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows).unwrap());
        return;
    }
    let load = match args.concurrency_per_node {
        Some(c) => format!("{c} sessions in flight per node"),
        None => format!("{} sessions in flight", args.concurrency),
    };
    println!(
        "{} writes over {} sessions per run, {load}; {cores} cores; release build\n",
        args.writes, args.sessions
    );
    println!("| routing | mode | nodes | writes/s | CPU-s per 1k writes | (idle share) | bytes sent per write | deltas per write | forwards per write | fetches per write | lost |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {:.0} | {:.3} | {:.3} | {:.0} | {:.2} | {:.2} | {:.2} | {} |",
            r.routing,
            r.mode,
            r.nodes,
            r.writes as f64 / r.seconds,
            r.cpu_seconds_per_1k_writes,
            r.idle_cpu_seconds_per_1k_writes,
            r.bytes_per_write,
            r.deltas_per_write,
            r.forwards_per_write,
            r.fetches_per_write,
            r.lost_writes
        );
    }
    // Growth from the smallest to the largest cluster, per routing and mode.
    println!();
    let mut seen = std::collections::BTreeSet::new();
    for r in &rows {
        if !seen.insert((r.routing.clone(), r.mode.clone())) {
            continue;
        }
        let of: Vec<&Row> = rows
            .iter()
            .filter(|x| x.routing == r.routing && x.mode == r.mode)
            .collect();
        if let (Some(a), Some(b)) = (of.first(), of.last()) {
            if a.nodes != b.nodes {
                println!(
                    "{}, {}: per write at {} nodes vs {}: CPU {:.2}×, bytes {:.2}×",
                    r.routing,
                    r.mode,
                    b.nodes,
                    a.nodes,
                    b.cpu_seconds_per_1k_writes / a.cpu_seconds_per_1k_writes,
                    b.bytes_per_write / a.bytes_per_write
                );
            }
        }
    }
}
