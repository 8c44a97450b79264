//! Sessions for any language, side by side: a stock Express app (express-session +
//! connect-redis, `examples/apps/express`), three instances behind nginx round-robin,
//! with its sessions in
//! (a) one `redis-server` (the usual central store),
//! (b) the Tribe sidecar: one node per app instance, RESP on loopback, sync mode,
//! (c) the Tribe sidecar in async mode with its read-your-writes proxy in front of each
//!     app instance.
//!
//! The same closed-loop client as the throughput section (`POST /counter`, then
//! `GET /counter`, one session per connection); "out of sequence" counts stale or lost
//! answers. CPU is everything serving the requests except nginx and the client: the app
//! processes plus redis-server or the nodes.
//!
//! The `replicated` section gives Redis the same job as the nodes (a master with two
//! replicas, async and with `WAIT 2`), since this one compares three replicating nodes
//! with one redis-server that replicates nothing.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::json;

use super::{progress, wait_for, Env};
use crate::load::{self, Client, Op};
use crate::procs::{cpu_seconds, cpu_user_sys_seconds, free_port, loopback, Cluster, Nginx};
use crate::report::{col, Fmt, Table};
use crate::resp::{command, Resp};

/// Connections (users) the client keeps busy.
pub const CONNECTIONS: usize = 32;
/// App instances (and nodes).
const INSTANCES: usize = 3;

fn express_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/apps/express")
}

/// A child process killed on drop.
pub(super) struct Proc(pub(super) Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(super) async fn listening(what: &str, addr: SocketAddr) -> Result<()> {
    wait_for(what, Duration::from_secs(20), || async move {
        Ok(tokio::net::TcpStream::connect(addr).await.ok().map(|_| ()))
    })
    .await
}

async fn redis_server() -> Result<(Proc, SocketAddr)> {
    redis_server_with(&[]).await
}

/// A `redis-server` on a free loopback port without persistence, with the `extra`
/// arguments (e.g. `--replicaof`), once it accepts connections.
pub(super) async fn redis_server_with(extra: &[String]) -> Result<(Proc, SocketAddr)> {
    let addr = loopback(free_port()?);
    let child = Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &addr.port().to_string()])
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start redis-server (apt-get install redis-server)")?;
    let p = Proc(child);
    listening("redis-server", addr).await?;
    Ok((p, addr))
}

async fn express(store: SocketAddr) -> Result<(Proc, SocketAddr)> {
    express_at(store, loopback(free_port()?)).await
}

/// Runs the section.
pub async fn run(env: &Env) -> Result<Table> {
    let (warm, measure) = if env.quick {
        (Duration::from_millis(500), Duration::from_millis(2000))
    } else {
        (Duration::from_secs(2), Duration::from_secs(8))
    };
    let mut t = Table::new(
        "sidecar",
        "Express + connect-redis behind nginx round-robin: sessions in redis-server vs the Tribe sidecar",
        &[
            col("store", "session store", Fmt::Text),
            col("op", "request", Fmt::Text),
            col("requests_per_s", "req/s", Fmt::Int),
            col("p50_ms", "p50 ms", Fmt::Fixed(2)),
            col("p99_ms", "p99 ms", Fmt::Fixed(2)),
            col("out_of_sequence", "stale or lost", Fmt::Int),
            col("errors", "errors", Fmt::Int),
            col(
                "cpu_ms_per_req",
                "app+store CPU-ms per request",
                Fmt::Fixed(3),
            ),
            col("store_cpu_us_per_req", "store CPU µs per request", Fmt::Int),
            col(
                "nginx_cpu_ms_per_req",
                "nginx CPU-ms per request",
                Fmt::Fixed(3),
            ),
            col("store_user_us_per_req", "store user µs", Fmt::Int),
            col("store_sys_us_per_req", "store sys µs", Fmt::Int),
        ],
    );
    t.note(format!(
        "{INSTANCES} Express instances (express-session + connect-redis + node-redis), {CONNECTIONS} \
         connections, one session each, sequential requests; {:.1} s per phase after a {:.1} s \
         warm-up of writes. CPU = utime+stime over the phase.",
        measure.as_secs_f64(),
        warm.as_secs_f64()
    ));
    for case in ["redis-server", "tribe sync", "tribe async + proxy"] {
        progress(format!("sidecar: {case}"));
        let mut keep: Vec<Proc> = Vec::new();
        // The apps and the store (what serves a request, nginx aside), and the store
        // alone (redis-server, or the nodes).
        let mut store_pids: Vec<u32> = Vec::new();
        let mut store_only: Vec<u32> = Vec::new();
        let front: Vec<SocketAddr>;
        let mut cluster: Option<Cluster> = None;
        let store: SocketAddr;
        match case {
            "redis-server" => {
                let (p, addr) = redis_server().await?;
                store = addr;
                store_pids.push(p.0.id());
                store_only.push(p.0.id());
                keep.push(p);
                let mut apps = Vec::new();
                for _ in 0..INSTANCES {
                    let (a, addr) = express(addr).await?;
                    store_pids.push(a.0.id());
                    keep.push(a);
                    apps.push(addr);
                }
                front = apps;
            }
            _ => {
                let sync = case == "tribe sync";
                let resp: Vec<SocketAddr> = (0..INSTANCES)
                    .map(|_| free_port().map(loopback))
                    .collect::<Result<_>>()?;
                let app_addrs: Vec<SocketAddr> = (0..INSTANCES)
                    .map(|_| free_port().map(loopback))
                    .collect::<Result<_>>()?;
                let proxies: Vec<SocketAddr> = (0..INSTANCES)
                    .map(|_| free_port().map(loopback))
                    .collect::<Result<_>>()?;
                let c = Cluster::start_each(
                    &env.node_bin,
                    INSTANCES,
                    INSTANCES,
                    &["--send-mode", if sync { "sync" } else { "async" }],
                    |i| {
                        let mut a = vec!["--resp-addr".to_string(), resp[i].to_string()];
                        if !sync {
                            a.extend([
                                "--proxy-addr".to_string(),
                                proxies[i].to_string(),
                                "--proxy-upstream".to_string(),
                                app_addrs[i].to_string(),
                                "--proxy-cookie".to_string(),
                                crate::http::SESSION_COOKIE.to_string(),
                            ]);
                        }
                        a
                    },
                )
                .await?;
                store_pids.extend(c.pids());
                store_only.extend(c.pids());
                store = resp[0];
                for i in 0..INSTANCES {
                    let (a, _) = express_at(resp[i], app_addrs[i]).await?;
                    store_pids.push(a.0.id());
                    keep.push(a);
                }
                front = if sync { app_addrs } else { proxies };
                cluster = Some(c);
            }
        }
        let nginx = Nginx::round_robin(&env.nginx, &front).await?;
        let mut clients: Vec<Client> = (0..CONNECTIONS).map(|_| Client::new(nginx.addr)).collect();
        let w = load::run(&mut clients, Op::Write, warm).await;
        if w.errors > 0 {
            t.note(format!(
                "{case}: {} errors in the warm-up, e.g. {}",
                w.errors,
                w.first_error.unwrap_or_default()
            ));
        }
        for (op, name) in [(Op::Write, "POST /counter"), (Op::Read, "GET /counter")] {
            let nginx_pids = nginx.pids();
            let (s0, x0) = (cpu_seconds(&store_pids), cpu_seconds(&nginx_pids));
            let (ou0, os0) = cpu_user_sys_seconds(&store_only);
            let p = load::run(&mut clients, op, measure).await;
            let (s1, x1) = (cpu_seconds(&store_pids), cpu_seconds(&nginx_pids));
            let (ou1, os1) = cpu_user_sys_seconds(&store_only);
            if let Some(e) = &p.first_error {
                t.note(format!("{case} {name}: first error: {e}"));
            }
            let per = |cpu: f64| cpu / p.requests.max(1) as f64 * 1000.0;
            t.row(vec![
                json!(case),
                json!(name),
                json!(p.rate()),
                json!(p.ms(0.5)),
                json!(p.ms(0.99)),
                json!(p.out_of_sequence),
                json!(p.errors),
                json!(per(s1 - s0)),
                json!(per(ou1 - ou0 + os1 - os0) * 1000.0),
                json!(per(x1 - x0)),
                json!(per(ou1 - ou0) * 1000.0),
                json!(per(os1 - os0) * 1000.0),
            ]);
        }
        // A new visitor's first session save: `SET` of a key nobody wrote, one client.
        let (rate, p50, p99, errors) = new_key_sets(store, measure).await?;
        t.row(vec![
            json!(case),
            json!("SET new key (RESP, 1 client)"),
            json!(rate),
            json!(p50),
            json!(p99),
            json!(0),
            json!(errors),
            serde_json::Value::Null,
            serde_json::Value::Null,
            serde_json::Value::Null,
            serde_json::Value::Null,
            serde_json::Value::Null,
        ]);
        // A sidecar restarted under load: kill -9 of one node (its app keeps running and
        // reconnects), then a new node in its place; sessions must not go back.
        if let (Some(c), "tribe sync") = (cluster.as_mut(), case) {
            let restart = async {
                tokio::time::sleep(measure / 4).await;
                c.nodes[1] = None; // killed
                tokio::time::sleep(Duration::from_millis(200)).await;
                c.spawn(1)?;
                c.wait_ready(1, INSTANCES - 1, Duration::from_secs(60))
                    .await?;
                anyhow::Ok(())
            };
            let (p, restarted) = tokio::join!(load::run(&mut clients, Op::Write, measure), restart);
            restarted?;
            let resets: u64 = clients.iter().map(Client::resets).sum();
            t.row(vec![
                json!(case),
                json!("POST /counter, one sidecar kill -9 + restart"),
                json!(p.rate()),
                json!(p.ms(0.5)),
                json!(p.ms(0.99)),
                json!(p.out_of_sequence),
                json!(p.errors),
                serde_json::Value::Null,
                serde_json::Value::Null,
                serde_json::Value::Null,
                serde_json::Value::Null,
                serde_json::Value::Null,
            ]);
            t.note(format!(
                "{case}, sidecar restart under load: sessions reset (a write answered below the previous one): {resets}; \"stale or lost\" there also counts saves that failed while the node was down (express-session answers 200 without the save)"
            ));
        }
        if let Some(c) = &cluster {
            let mut sums = Vec::new();
            for m in [
                "tribe_rollbacks_total",
                "tribe_consistency_waits_total",
                "tribe_consistency_fetches_total",
            ] {
                sums.push(format!("{m} = {}", c.metric_sum(m).await.unwrap_or(0.0)));
            }
            t.note(format!("{case}: {}", sums.join(", ")));
        }
        drop(nginx);
        drop(keep);
        drop(cluster);
    }
    Ok(t)
}

async fn express_at(store: SocketAddr, addr: SocketAddr) -> Result<(Proc, SocketAddr)> {
    let dir = express_dir();
    if !dir.join("node_modules/connect-redis").is_dir() {
        bail!(
            "{}/node_modules missing: run scripts/install-test-deps",
            dir.display()
        );
    }
    let child = Command::new("node")
        .arg("app.js")
        .current_dir(&dir)
        .env("PORT", addr.port().to_string())
        .env("REDIS_URL", format!("redis://{store}"))
        .env("SESSION_COOKIE", crate::http::SESSION_COOKIE)
        .env("NODE_ENV", "production")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start node (the Express app)")?;
    let p = Proc(child);
    listening("the Express app", addr).await?;
    Ok((p, addr))
}

/// Sequential `SET` of keys nobody wrote, on one RESP connection to `store`, for `time`:
/// (commands/s, p50 ms, p99 ms, error replies).
async fn new_key_sets(store: SocketAddr, time: Duration) -> Result<(f64, f64, f64, u64)> {
    let mut c = Resp::connect(store).await?;
    let mut hist = load::histogram();
    let mut errors = 0;
    let mut n = 0u64;
    let tag = std::process::id();
    let started = std::time::Instant::now();
    while started.elapsed() < time {
        let key = format!("bench:new:{tag}:{n}");
        let t0 = std::time::Instant::now();
        c.send(&command(&[b"SET", key.as_bytes(), b"v"])).await?;
        let got = c.reply().await?;
        hist.saturating_record((t0.elapsed().as_nanos() as u64).max(1));
        if got != b"+OK" {
            errors += 1;
        }
        n += 1;
    }
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1e6;
    Ok((
        n as f64 / started.elapsed().as_secs_f64(),
        ms(0.5),
        ms(0.99),
        errors,
    ))
}
