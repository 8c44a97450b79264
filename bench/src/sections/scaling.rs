//! What one replicated write costs as the cluster grows (N = 2, 4, 8, 16), in `delta`
//! mode (every node holds every session) and `backup` mode (a primary and k = 1 backup).
//!
//! Per run: N nodes, 100 sessions, a fixed number of `POST /counter`, each session's
//! writes one after another, two sessions in flight (so the figure is the work a write
//! costs, not how 2N tokio runtimes contend for 2 cores). Routing is done by the client:
//! `round-robin` sends each write of a session to the next node (a proxy without sticky
//! sessions: most writes land on a node that is not the session's primary), `sticky`
//! always to the same node. Measured over the write phase (plus the wait for the last
//! async deltas to leave): utime+stime of all node processes, `tribe_bytes_sent_total`,
//! deltas, forwards to the primary and remote fetches per write.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::json;

use super::{progress, Env};
use crate::http::{Conn, Seq, User};
use crate::procs::{cpu_seconds, Cluster};
use crate::report::{col, Check, Fmt, Table};

/// Sessions the writes are spread over.
const SESSIONS: usize = 100;
/// Sessions written concurrently.
const CONCURRENCY: usize = 2;
/// Backups per session in backup mode.
const BACKUPS: usize = 1;

/// One measured run.
struct Run {
    routing: &'static str,
    mode: &'static str,
    nodes: usize,
    writes: usize,
    seconds: f64,
    cpu: f64,
    bytes: f64,
    deltas: f64,
    forwards: f64,
    fetches: f64,
    out_of_sequence: usize,
    errors: usize,
}

/// Runs the section.
pub async fn run(env: &Env) -> Result<Table> {
    let sizes = env.scaling_nodes.clone().unwrap_or_else(|| {
        if env.quick {
            vec![2, 4]
        } else {
            vec![2, 4, 8, 16]
        }
    });
    let writes = if env.quick { 3_000 } else { 20_000 };
    let mut t = Table::new(
        "scaling",
        "Cost per write vs cluster size: delta vs backup (k=1)",
        &[
            col("routing", "routing", Fmt::Text),
            col("mode", "mode", Fmt::Text),
            col("nodes", "nodes", Fmt::Int),
            col("writes_per_s", "writes/s", Fmt::Int),
            col(
                "cpu_s_per_1k_writes",
                "node CPU-s per 1k writes",
                Fmt::Fixed(3),
            ),
            col("bytes_per_write", "bytes sent per write", Fmt::Int),
            col("deltas_per_write", "deltas per write", Fmt::Fixed(2)),
            col("forwards_per_write", "forwards per write", Fmt::Fixed(2)),
            col("fetches_per_write", "fetches per write", Fmt::Fixed(2)),
            col("out_of_sequence", "out of sequence", Fmt::Int),
            col("errors", "errors", Fmt::Int),
        ],
    );
    t.note(format!(
        "{writes} POST /counter per run over {SESSIONS} sessions, {CONCURRENCY} in flight, straight \
         to the nodes (the client routes); CPU = utime+stime of all nodes over the write phase; \
         bytes = tribe_bytes_sent_total of all nodes."
    ));
    let mut runs = Vec::new();
    for routing in ["round-robin", "sticky"] {
        for mode in ["delta", "backup"] {
            for &n in &sizes {
                progress(format!("scaling: {routing}, {mode}, {n} nodes"));
                let r = run_one(env, routing, mode, n, writes).await?;
                let w = r.writes as f64;
                t.row(vec![
                    json!(r.routing),
                    json!(if r.mode == "backup" {
                        "backup k=1"
                    } else {
                        r.mode
                    }),
                    json!(r.nodes),
                    json!(w / r.seconds),
                    json!(r.cpu / w * 1000.0),
                    json!(r.bytes / w),
                    json!(r.deltas / w),
                    json!(r.forwards / w),
                    json!(r.fetches / w),
                    json!(r.out_of_sequence),
                    json!(r.errors),
                ]);
                runs.push(r);
            }
        }
    }
    // Growth from the smallest to the largest cluster; the target for backup mode.
    for routing in ["round-robin", "sticky"] {
        for mode in ["delta", "backup"] {
            let of: Vec<&Run> = runs
                .iter()
                .filter(|r| r.routing == routing && r.mode == mode)
                .collect();
            let (Some(a), Some(b)) = (of.first(), of.last()) else {
                continue;
            };
            if a.nodes == b.nodes {
                continue;
            }
            let per = |r: &Run| r.cpu / r.writes as f64;
            let bytes = |r: &Run| r.bytes / r.writes as f64;
            t.note(format!(
                "{routing}, {mode}: per write at {} nodes vs {}: CPU {:.2}×, bytes {:.2}×",
                b.nodes,
                a.nodes,
                per(b) / per(a),
                bytes(b) / bytes(a)
            ));
            if mode == "backup" {
                let check = Check::at_most(
                    &format!("backup-mode CPU per write, 16 vs 2 nodes ({routing})"),
                    per(b) / per(a),
                    1.25,
                    "×",
                    2,
                );
                t.checks.push(if a.nodes == 2 && b.nodes == 16 {
                    check
                } else {
                    check.not_judged(&format!("{} vs {} nodes", b.nodes, a.nodes))
                });
            }
        }
    }
    Ok(t)
}

async fn run_one(
    env: &Env,
    routing: &'static str,
    mode: &'static str,
    n: usize,
    writes: usize,
) -> Result<Run> {
    let backups = BACKUPS.to_string();
    let args: Vec<&str> = match mode {
        "delta" => vec!["--replication", "delta"],
        _ => vec!["--replication", "backup", "--backups", &backups],
    };
    let cluster = Cluster::start(&env.node_bin, n, n, &args).await?;
    let nodes = cluster.http_addrs();
    let pids = cluster.pids();
    let sticky = routing == "sticky";

    // Create the sessions (not measured), each on the node it is first routed to.
    let mut users: Vec<User> = vec![User::default(); SESSIONS];
    let mut workers = Workers::new(&nodes);
    let created = workers.drive(&mut users, 1, sticky).await?;
    if created.errors > 0 {
        bail!("{} errors creating the sessions", created.errors);
    }

    let per_user = writes / SESSIONS;
    let writes = per_user * SESSIONS;
    let deltas0 = cluster.metric_sum("tribe_deltas_sent_total").await?;
    let forwards0 = cluster.metric_sum("tribe_forwards_sent_total").await?;
    let bytes0 = cluster.metric_sum("tribe_bytes_sent_total").await?;
    let fetches0 = cluster.metric_sum("tribe_remote_fetches_total").await?;
    let cpu0 = cpu_seconds(&pids);
    let started = Instant::now();
    let outcome = workers.drive(&mut users, per_user, sticky).await?;
    let seconds = started.elapsed().as_secs_f64();

    // Async replication: wait (bounded) until every delta the writes caused has left.
    let expected = match mode {
        "delta" => (writes * (n - 1)) as f64,
        _ => (writes * BACKUPS.min(n - 1)) as f64,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut deltas = cluster.metric_sum("tribe_deltas_sent_total").await? - deltas0;
    while deltas < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
        deltas = cluster.metric_sum("tribe_deltas_sent_total").await? - deltas0;
    }
    let cpu = cpu_seconds(&pids) - cpu0;
    Ok(Run {
        routing,
        mode,
        nodes: n,
        writes,
        seconds,
        cpu,
        bytes: cluster.metric_sum("tribe_bytes_sent_total").await? - bytes0,
        deltas,
        forwards: cluster.metric_sum("tribe_forwards_sent_total").await? - forwards0,
        fetches: cluster.metric_sum("tribe_remote_fetches_total").await? - fetches0,
        out_of_sequence: outcome.out_of_sequence,
        errors: outcome.errors,
    })
}

/// What a batch of writes saw.
#[derive(Default)]
struct Outcome {
    out_of_sequence: usize,
    errors: usize,
}

/// [`CONCURRENCY`] workers, each with its own keepalive connection to every node.
struct Workers {
    nodes: Vec<SocketAddr>,
    conns: Vec<Vec<Option<Conn>>>,
}

impl Workers {
    fn new(nodes: &[SocketAddr]) -> Workers {
        Workers {
            nodes: nodes.to_vec(),
            conns: (0..CONCURRENCY)
                .map(|_| nodes.iter().map(|_| None).collect())
                .collect(),
        }
    }

    /// Writes `per_user` times for every user; worker w takes users w, w + C, w + 2C, …
    /// and writes each one's in sequence. User i's j-th write (counting all its writes so
    /// far) goes to node i + j (round-robin) or always node i (sticky).
    async fn drive(
        &mut self,
        users: &mut [User],
        per_user: usize,
        sticky: bool,
    ) -> Result<Outcome> {
        let nodes = &self.nodes;
        let mut chunks: Vec<Vec<(usize, &mut User)>> =
            (0..CONCURRENCY).map(|_| Vec::new()).collect();
        for (i, u) in users.iter_mut().enumerate() {
            chunks[i % CONCURRENCY].push((i, u));
        }
        let jobs = chunks
            .into_iter()
            .zip(self.conns.iter_mut())
            .map(|(mine, conns)| async move {
                let mut out = Outcome::default();
                for (i, user) in mine {
                    for _ in 0..per_user {
                        let k = if sticky {
                            i
                        } else {
                            i + user.last.max(0) as usize
                        };
                        let slot = k % nodes.len();
                        let result = async {
                            if conns[slot].is_none() {
                                conns[slot] = Some(Conn::connect(nodes[slot]).await?);
                            }
                            user.write(conns[slot].as_mut().expect("connected")).await
                        }
                        .await;
                        match result {
                            Ok((_, Seq::InOrder)) => {}
                            Ok((_, Seq::OutOfSequence)) => out.out_of_sequence += 1,
                            Err(e) => {
                                if out.errors == 0 {
                                    eprintln!("tribe-bench: write error: {e:#}");
                                }
                                conns[slot] = None;
                                out.errors += 1;
                            }
                        }
                    }
                }
                out
            });
        let mut total = Outcome::default();
        for o in futures::future::join_all(jobs).await {
            total.out_of_sequence += o.out_of_sequence;
            total.errors += o.errors;
        }
        Ok(total)
    }
}
