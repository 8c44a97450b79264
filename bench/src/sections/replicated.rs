//! Replicated writes on the Redis protocol, store against store (`--only replicated`).
//! The sidecar section compares three replicating Tribe nodes with ONE redis-server that
//! keeps a single copy; this section gives Redis the same job — copies on three processes: a master with two replicas
//! (`--replicaof`), replicating asynchronously (plain `SET`) or synchronously (`SET`
//! followed by `WAIT 2 1000` in the same write) — next to one redis-server and three
//! Tribe nodes (sync, async).
//!
//! No app in between: the client speaks RESP itself. Each connection sends
//! `SET sess:<client>:<one of its 100 keys, at random> <JSON> EX 86400` one after another;
//! the JSON (~130 bytes, like an express-session record) holds a counter that changes on
//! every write (Tribe does not replicate a value that did not change). Redis clients all
//! talk to the master; Tribe client `i` to node `i % 3`.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

use super::sidecar::{redis_server_with, Proc};
use super::{progress, wait_for, Env};
use crate::load;
use crate::procs::{cpu_user_sys_seconds, free_port, loopback, Cluster};
use crate::report::{col, Fmt, Table};
use crate::resp::{command, Resp};
use serde_json::json;

/// Client counts measured per store: one, then this many connections at once.
pub const CLIENTS: [usize; 2] = [1, 8];
/// Keys each client writes (its sessions).
pub const KEYS: usize = 100;
/// Redis replicas of the master, and Tribe nodes besides the first: copies on 3 processes.
const REPLICAS: usize = 2;
/// `WAIT`'s timeout, ms.
const WAIT_MS: u64 = 1000;

/// A store under test.
#[derive(Debug, Clone, Copy)]
enum Store {
    /// One redis-server, no replicas.
    Redis,
    /// A master with [`REPLICAS`] replicas; `wait`: every `SET` is followed by `WAIT`.
    RedisReplicas { wait: bool },
    /// `REPLICAS + 1` Tribe nodes in this send mode.
    Tribe { sync: bool },
}

/// The stores, in the order of the rows.
const STORES: [(&str, Store); 5] = [
    ("redis-server", Store::Redis),
    (
        "redis-server + 2 replicas",
        Store::RedisReplicas { wait: false },
    ),
    (
        "redis-server + 2 replicas, SET + WAIT 2",
        Store::RedisReplicas { wait: true },
    ),
    ("tribe sync (3 nodes)", Store::Tribe { sync: true }),
    ("tribe async (3 nodes)", Store::Tribe { sync: false }),
];

/// One store with one client count.
pub struct Row {
    /// The store's name.
    pub store: &'static str,
    /// Connections, each writing sequentially.
    pub clients: usize,
    /// Acknowledged writes per second.
    pub rate: f64,
    /// Latency of a write (until its last reply), ms.
    pub p50_ms: f64,
    /// Latency of a write, ms.
    pub p99_ms: f64,
    /// utime of the store's processes per acknowledged write, µs.
    pub user_us: f64,
    /// stime of the store's processes per acknowledged write, µs.
    pub sys_us: f64,
    /// Writes refused (an answer other than `+OK`, or `WAIT` short of every replica) or
    /// lost with their connection.
    pub errors: u64,
    /// The first of them.
    pub first_error: Option<String>,
}

/// The section: the table of [`measure`].
pub async fn run(env: &Env) -> Result<Table> {
    let phase = if env.quick {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(3)
    };
    let mut t = Table::new(
        "replicated",
        "Replicated writes on the Redis protocol: Redis with two replicas vs three Tribe nodes",
        &[
            col("store", "store", Fmt::Text),
            col("clients", "clients", Fmt::Int),
            col("writes_per_s", "writes/s", Fmt::Int),
            col("p50_ms", "p50 ms", Fmt::Fixed(2)),
            col("p99_ms", "p99 ms", Fmt::Fixed(2)),
            col("errors", "errors", Fmt::Int),
            col("cpu_us_per_write", "store CPU µs per write", Fmt::Int),
            col("user_us_per_write", "user µs", Fmt::Int),
            col("sys_us_per_write", "sys µs", Fmt::Int),
        ],
    );
    t.note(format!(
        "The sidecar section compares {REPLICAS_PLUS_ONE} replicating Tribe nodes with ONE \
         redis-server that keeps one copy and replicates nothing; this gives Redis the same \
         job, copies on {REPLICAS_PLUS_ONE} processes: a master with {REPLICAS} replicas \
         (`--replicaof`), asynchronous (plain SET) and synchronous (SET followed by `WAIT \
         {REPLICAS} {WAIT_MS}` in the same write; a write counts only when WAIT answers \
         :{REPLICAS}, otherwise as an error). No app: each connection sends sequential `SET \
         sess:<client>:<one of its {KEYS} keys at random> <~130-byte JSON whose counter \
         changes every write> EX 86400`; redis clients all talk to the master, Tribe client i \
         to node i mod {REPLICAS_PLUS_ONE}. {:.0} s per phase, after every client wrote each \
         of its keys once. writes/s = acknowledged writes; store CPU = utime + stime of the \
         store's processes only (master + replicas, or the nodes) per acknowledged write.",
        phase.as_secs_f64(),
    ));
    let (rows, notes) = measure(env, phase).await?;
    for n in notes {
        t.note(n);
    }
    for r in rows {
        if let Some(e) = &r.first_error {
            t.note(format!(
                "{} with {} clients: first error: {e}",
                r.store, r.clients
            ));
        }
        t.row(vec![
            json!(r.store),
            json!(r.clients),
            json!(r.rate),
            json!(r.p50_ms),
            json!(r.p99_ms),
            json!(r.errors),
            json!(r.user_us + r.sys_us),
            json!(r.user_us),
            json!(r.sys_us),
        ]);
    }
    Ok(t)
}

/// Copies of each write: the master (or the first node) and its replicas.
const REPLICAS_PLUS_ONE: usize = REPLICAS + 1;

/// Starts each store in turn, lets every client write each of its keys once, then
/// measures each of [`CLIENTS`] for `time`. Returns the rows and notes (warm-up errors).
async fn measure(env: &Env, time: Duration) -> Result<(Vec<Row>, Vec<String>)> {
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    let most = CLIENTS.into_iter().max().unwrap_or(1);
    for (name, store) in STORES {
        progress(format!("replicated: {name}"));
        let running = start(env, store)
            .await
            .with_context(|| format!("starting {name}"))?;
        let wait = matches!(store, Store::RedisReplicas { wait: true });
        let w = phase(&running.targets, most, wait, Until::EachKeyOnce).await;
        if w.errors > 0 {
            notes.push(format!(
                "{name}: {} errors creating the keys, e.g. {}",
                w.errors,
                w.first_error.unwrap_or_default()
            ));
        }
        for clients in CLIENTS {
            let (u0, s0) = cpu_user_sys_seconds(&running.pids);
            let deadline = Instant::now() + time;
            let p = phase(&running.targets, clients, wait, Until::Deadline(deadline)).await;
            let (u1, s1) = cpu_user_sys_seconds(&running.pids);
            let per = |cpu: f64| cpu / p.writes.max(1) as f64 * 1e6;
            let ms = |q: f64| p.latency.value_at_quantile(q) as f64 / 1e6;
            rows.push(Row {
                store: name,
                clients,
                rate: p.writes as f64 / p.seconds,
                p50_ms: ms(0.5),
                p99_ms: ms(0.99),
                user_us: per(u1 - u0),
                sys_us: per(s1 - s0),
                errors: p.errors,
                first_error: p.first_error,
            });
        }
    }
    Ok((rows, notes))
}

/// A started store; its processes are killed (and its temp dir removed) on drop.
struct Running {
    /// Where clients connect: client `i` to `targets[i % targets.len()]`.
    targets: Vec<SocketAddr>,
    /// The store's processes: only their CPU counts.
    pids: Vec<u32>,
    _procs: Vec<Proc>,
    _cluster: Option<Cluster>,
    _dir: Option<tempfile::TempDir>,
}

async fn start(env: &Env, store: Store) -> Result<Running> {
    match store {
        Store::Redis => {
            let (p, addr) = redis_server_with(&[]).await?;
            Ok(Running {
                targets: vec![addr],
                pids: vec![p.0.id()],
                _procs: vec![p],
                _cluster: None,
                _dir: None,
            })
        }
        Store::RedisReplicas { .. } => {
            // Each process its own dir: a replica loads the master's snapshot through a
            // file there.
            let dir = tempfile::Builder::new()
                .prefix("tribe-bench-redis.")
                .tempdir()?;
            let dir_of = |name: &str| -> Result<Vec<String>> {
                let d = dir.path().join(name);
                std::fs::create_dir(&d)?;
                Ok(vec!["--dir".into(), d.display().to_string()])
            };
            // No 5 s pause before the replicas' first sync.
            let mut args = dir_of("master")?;
            args.extend(["--repl-diskless-sync-delay".into(), "0".into()]);
            let (m, master) = redis_server_with(&args).await?;
            let mut procs = vec![m];
            for r in 1..=REPLICAS {
                let mut args = dir_of(&format!("replica{r}"))?;
                args.extend([
                    "--replicaof".into(),
                    master.ip().to_string(),
                    master.port().to_string(),
                ]);
                procs.push(redis_server_with(&args).await?.0);
            }
            replicas_online(master, REPLICAS).await?;
            Ok(Running {
                targets: vec![master],
                pids: procs.iter().map(|p| p.0.id()).collect(),
                _procs: procs,
                _cluster: None,
                _dir: Some(dir),
            })
        }
        Store::Tribe { sync } => {
            let n = REPLICAS_PLUS_ONE;
            let resp: Vec<SocketAddr> = (0..n)
                .map(|_| free_port().map(loopback))
                .collect::<Result<_>>()?;
            let c = Cluster::start_each(
                &env.node_bin,
                n,
                n,
                &["--send-mode", if sync { "sync" } else { "async" }],
                |i| vec!["--resp-addr".to_string(), resp[i].to_string()],
            )
            .await?;
            for &addr in &resp {
                super::sidecar::listening("a node's RESP port", addr).await?;
            }
            Ok(Running {
                targets: resp,
                pids: c.pids(),
                _procs: Vec::new(),
                _cluster: Some(c),
                _dir: None,
            })
        }
    }
}

/// Polls the master's `INFO replication` (bounded) until `n` replicas are `state=online`.
async fn replicas_online(master: SocketAddr, n: usize) -> Result<()> {
    wait_for(
        "the redis replicas to be online",
        Duration::from_secs(30),
        || async move {
            let mut c = Resp::connect(master).await?;
            c.send(&command(&[b"INFO", b"replication"])).await?;
            let info = c.reply().await?;
            let online = info.windows(12).filter(|w| w == b"state=online").count();
            Ok((online >= n).then_some(()))
        },
    )
    .await
}

/// How long a phase lasts.
#[derive(Clone, Copy)]
enum Until {
    /// Every client writes each of its keys once, in order (creates them).
    EachKeyOnce,
    /// Random keys until then.
    Deadline(Instant),
}

/// What one phase measured.
struct Phase {
    writes: u64,
    errors: u64,
    latency: Histogram<u64>,
    seconds: f64,
    first_error: Option<String>,
}

/// `clients` connections writing sequentially (`wait`: `SET` + `WAIT`), all on this thread.
async fn phase(targets: &[SocketAddr], clients: usize, wait: bool, until: Until) -> Phase {
    let totals = RefCell::new(Phase {
        writes: 0,
        errors: 0,
        latency: load::histogram(),
        seconds: 0.0,
        first_error: None,
    });
    let started = Instant::now();
    let totals_ref = &totals;
    futures::future::join_all((0..clients).map(|i| {
        let addr = targets[i % targets.len()];
        async move {
            let mut rng = key_order(i);
            let mut conn: Option<Resp> = None;
            for n in 0.. {
                let key = match until {
                    Until::EachKeyOnce if n < KEYS => n,
                    Until::Deadline(d) if Instant::now() < d => rng.random_range(0..KEYS),
                    _ => break,
                };
                let t0 = Instant::now();
                let result = async {
                    if conn.is_none() {
                        conn = Some(Resp::connect(addr).await?);
                    }
                    write(conn.as_mut().expect("connected"), i, key, wait).await
                }
                .await;
                let ns = t0.elapsed().as_nanos() as u64;
                let lost = {
                    let mut t = totals_ref.borrow_mut();
                    let why = match result {
                        Ok(None) => {
                            t.writes += 1;
                            t.latency.saturating_record(ns.max(1));
                            None
                        }
                        Ok(Some(refused)) => Some(refused),
                        Err(e) => Some(format!("{e:#}")),
                    };
                    if let Some(why) = &why {
                        t.errors += 1;
                        t.first_error.get_or_insert_with(|| why.clone());
                    }
                    // After an I/O error the replies may be out of step: reconnect
                    // (a refusal keeps the connection).
                    why.is_some() && conn.as_ref().is_none_or(|c| c.broken)
                };
                if lost {
                    conn = None;
                    // Do not spin while the store is down.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }))
    .await;
    let mut p = totals.into_inner();
    p.seconds = started.elapsed().as_secs_f64();
    p
}

/// Values written so far by this process: every value is new.
static WRITES: AtomicU64 = AtomicU64::new(0);

/// An express-session-like record whose counter changes on every write (~130 bytes).
fn session_value(client: usize, n: u64) -> String {
    format!(
        r#"{{"cookie":{{"originalMaxAge":86400000,"expires":"2026-12-07T23:00:00.000Z","httpOnly":true,"path":"/"}},"user":{client},"counter":{n}}}"#
    )
}

/// One write of `client`'s `key`: `Ok(None)` once acknowledged (and, with `wait`, on
/// every replica), `Ok(Some(why))` when refused.
async fn write(c: &mut Resp, client: usize, key: usize, wait: bool) -> Result<Option<String>> {
    let key = format!("sess:{client}:{key}");
    let value = session_value(client, WRITES.fetch_add(1, Ordering::Relaxed));
    let mut req = command(&[b"SET", key.as_bytes(), value.as_bytes(), b"EX", b"86400"]);
    if wait {
        let (n, ms) = (REPLICAS.to_string(), WAIT_MS.to_string());
        req.extend(command(&[b"WAIT", n.as_bytes(), ms.as_bytes()]));
    }
    c.send(&req).await?;
    let set = c.reply().await?;
    let waited = if wait { Some(c.reply().await?) } else { None };
    if set != b"+OK" {
        return Ok(Some(format!("SET: {}", String::from_utf8_lossy(&set))));
    }
    match waited {
        Some(w) if w != format!(":{REPLICAS}").as_bytes() => Ok(Some(format!(
            "WAIT {REPLICAS} {WAIT_MS}: {}",
            String::from_utf8_lossy(&w)
        ))),
        _ => Ok(None),
    }
}

/// The keys' random order, one seed per client (the same run to run).
fn key_order(client: usize) -> SmallRng {
    SmallRng::seed_from_u64(client as u64 + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_session_sized_and_always_new() {
        let (a, b) = (session_value(3, 41), session_value(3, 42));
        assert_ne!(a, b);
        assert!((120..=140).contains(&a.len()), "{} bytes: {a}", a.len());
        assert!(serde_json::from_str::<serde_json::Value>(&a).is_ok(), "{a}");
        assert_eq!(
            command(&[b"WAIT", b"2", b"1000"]),
            b"*3\r\n$4\r\nWAIT\r\n$1\r\n2\r\n$4\r\n1000\r\n"
        );
    }

    #[test]
    fn keys_spread_over_all() {
        let mut r = key_order(0);
        let mut seen = [false; KEYS];
        for _ in 0..10_000 {
            seen[r.random_range(0..KEYS)] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }
}
