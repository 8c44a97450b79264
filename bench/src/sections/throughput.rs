//! Session writes and reads through a round-robin front door (nginx, keepalive to the
//! nodes, no sticky sessions): 1 and 3 nodes, delta mode, async and sync, plus nginx
//! answering by itself (the proxy's ceiling on this machine).
//!
//! [`CONNECTIONS`] connections, each one user with its own session, requests one after
//! another (the last case: clients that drop the `SESSIONID_V` version cookie, i.e. plain
//! async replication without read-your-writes, where out-of-sequence answers are expected);
//! first a warm-up of writes (creates the sessions), then a write phase
//! (`POST /counter`) and a read phase (`GET /counter`). CPU (utime+stime from /proc) is
//! taken over each measured phase for the node processes, nginx (master + worker) and
//! this client separately.

use std::time::Duration;

use anyhow::Result;
use serde_json::{json, Value};

use super::{progress, Env};
use crate::load::{self, Client, Op, Phase};
use crate::procs::{cpu_seconds, own_cpu_seconds, Cluster, Nginx};
use crate::report::{col, Check, Fmt, Table};

/// Connections (users) the client keeps busy.
pub const CONNECTIONS: usize = 64;

/// Runs the section.
pub async fn run(env: &Env) -> Result<Table> {
    let (warm, measure) = if env.quick {
        (Duration::from_millis(300), Duration::from_millis(1500))
    } else {
        (Duration::from_secs(1), Duration::from_secs(8))
    };
    let mut t = Table::new(
        "throughput",
        "Session writes and reads through nginx round-robin (delta mode)",
        &[
            col("nodes", "nodes", Fmt::Text),
            col("send_mode", "send mode", Fmt::Text),
            col("op", "request", Fmt::Text),
            col("requests_per_s", "req/s", Fmt::Int),
            col("p50_ms", "p50 ms", Fmt::Fixed(2)),
            col("p99_ms", "p99 ms", Fmt::Fixed(2)),
            col("out_of_sequence", "out of sequence", Fmt::Int),
            col("errors", "errors", Fmt::Int),
            col("node_cpu_s_per_1k", "node CPU-s per 1k", Fmt::Fixed(3)),
            col("node_cpu_us_per_req", "node CPU µs per req", Fmt::Fixed(1)),
            col("node_cpu_vs_trivial", "× trivial backend", Fmt::Fixed(2)),
            col("nginx_cpu_s_per_1k", "nginx CPU-s per 1k", Fmt::Fixed(3)),
            col("client_cpu_s_per_1k", "client CPU-s per 1k", Fmt::Fixed(3)),
        ],
    );
    t.note(format!(
        "{CONNECTIONS} connections, one session each, sequential requests; {:.1} s per phase after a \
         {:.1} s warm-up; CPU = utime+stime over the phase (nodes: all node processes; nginx: \
         master + 1 worker; client: this benchmark). \"× trivial backend\": node CPU per request \
         over the three trivial backends' (nginx `return 200`) CPU per request behind the same \
         proxy.",
        measure.as_secs_f64(),
        warm.as_secs_f64()
    ));

    progress("throughput: nginx return 200 (ceiling)");
    {
        let nginx = Nginx::static_ok(&env.nginx).await?;
        let mut clients: Vec<Client> = (0..CONNECTIONS).map(|_| Client::new(nginx.addr)).collect();
        load::run(&mut clients, Op::Ceiling, warm).await;
        let (phase, _, nginx_cpu, client_cpu) =
            measured(&mut clients, Op::Ceiling, measure, &[], &nginx).await;
        let mut row = row(
            "–",
            "nginx return 200",
            "POST /counter",
            &phase,
            None,
            None,
            nginx_cpu,
            client_cpu,
        );
        row[6] = Value::Null; // nothing to be in sequence with
        t.row(row);
    }

    // The same nginx proxying round-robin to three trivial backends (nginx `return 200`
    // each, in the "node CPU" column): the ceiling a 3-node cluster behind this proxy can
    // approach on this machine.
    progress("throughput: nginx proxying to 3 trivial backends (proxied ceiling)");
    // The trivial backends' CPU per request, what each node row is compared with.
    let trivial = {
        let mut backends = Vec::new();
        for _ in 0..3 {
            backends.push(Nginx::static_ok(&env.nginx).await?);
        }
        let addrs: Vec<_> = backends.iter().map(|b| b.addr).collect();
        let backend_pids: Vec<u32> = backends.iter().flat_map(|b| b.pids()).collect();
        let nginx = Nginx::round_robin(&env.nginx, &addrs).await?;
        let mut clients: Vec<Client> = (0..CONNECTIONS).map(|_| Client::new(nginx.addr)).collect();
        load::run(&mut clients, Op::Ceiling, warm).await;
        let (phase, backend_cpu, nginx_cpu, client_cpu) =
            measured(&mut clients, Op::Ceiling, measure, &backend_pids, &nginx).await;
        let trivial = per_request(backend_cpu, &phase);
        let mut row = row(
            "3 trivial",
            "nginx → 3 × nginx return 200",
            "POST /counter",
            &phase,
            Some(backend_cpu),
            Some(trivial),
            nginx_cpu,
            client_cpu,
        );
        row[6] = Value::Null;
        t.row(row);
        trivial
    };

    // (nodes, send mode, clients send the version cookie)
    let cases = [
        (1usize, "async", true),
        (1, "sync", true),
        (3, "async", true),
        (3, "sync", true),
        (3, "async", false),
    ];
    for (nodes, send, ryw) in cases {
        {
            let mode = if ryw {
                send
            } else {
                "async, no version cookie"
            };
            progress(format!("throughput: {nodes} node(s), {mode}"));
            let cluster =
                Cluster::start(&env.node_bin, nodes, nodes, &["--send-mode", send]).await?;
            let nginx = Nginx::round_robin(&env.nginx, &cluster.http_addrs()).await?;
            let pids = cluster.pids();
            let mut clients: Vec<Client> = (0..CONNECTIONS)
                .map(|_| {
                    if ryw {
                        Client::new(nginx.addr)
                    } else {
                        Client::without_version(nginx.addr)
                    }
                })
                .collect();
            let warmup = load::run(&mut clients, Op::Write, warm).await;
            if warmup.errors > 0 {
                t.note(format!(
                    "{nodes} node(s) {mode}: {} errors in the warm-up, e.g. {}",
                    warmup.errors,
                    warmup.first_error.unwrap_or_default()
                ));
            }
            for (op, name) in [(Op::Write, "POST /counter"), (Op::Read, "GET /counter")] {
                let (phase, node_cpu, nginx_cpu, client_cpu) =
                    measured(&mut clients, op, measure, &pids, &nginx).await;
                if let Some(e) = &phase.first_error {
                    t.note(format!("{nodes} node(s) {mode} {name}: first error: {e}"));
                }
                t.row(row(
                    &nodes.to_string(),
                    mode,
                    name,
                    &phase,
                    Some(node_cpu),
                    Some(trivial),
                    nginx_cpu,
                    client_cpu,
                ));
                if nodes == 3 && send == "async" && ryw && op == Op::Write {
                    let ratio = per_request(node_cpu, &phase) / trivial;
                    t.checks.push(Check::at_most(
                        "node CPU per write (3 nodes, async) over a trivial backend's per request",
                        ratio,
                        3.0,
                        "×",
                        2,
                    ));
                }
            }
            let rollbacks = cluster.metric_sum("tribe_rollbacks_total").await?;
            if rollbacks > 0.0 {
                t.note(format!(
                    "{nodes} node(s) {mode}: tribe_rollbacks_total = {rollbacks}"
                ));
            }
        }
    }
    Ok(t)
}

/// One phase with CPU taken around it: (phase, node CPU-s, nginx CPU-s, client CPU-s).
async fn measured(
    clients: &mut [Client],
    op: Op,
    duration: Duration,
    node_pids: &[u32],
    nginx: &Nginx,
) -> (Phase, f64, f64, f64) {
    let nginx_pids = nginx.pids();
    let (n0, x0, c0) = (
        cpu_seconds(node_pids),
        cpu_seconds(&nginx_pids),
        own_cpu_seconds(),
    );
    let phase = load::run(clients, op, duration).await;
    let (n1, x1, c1) = (
        cpu_seconds(node_pids),
        cpu_seconds(&nginx_pids),
        own_cpu_seconds(),
    );
    (phase, n1 - n0, x1 - x0, c1 - c0)
}

/// CPU seconds per request of a phase.
fn per_request(cpu: f64, p: &Phase) -> f64 {
    cpu / p.requests.max(1) as f64
}

/// A row; `trivial`: the trivial backends' CPU-s per request (the ratio's denominator).
#[allow(clippy::too_many_arguments)]
fn row(
    nodes: &str,
    mode: &str,
    op: &str,
    p: &Phase,
    node_cpu: Option<f64>,
    trivial: Option<f64>,
    nginx_cpu: f64,
    client_cpu: f64,
) -> Vec<Value> {
    let per_1k = |cpu: f64| per_request(cpu, p) * 1000.0;
    vec![
        json!(nodes),
        json!(mode),
        json!(op),
        json!(p.rate()),
        json!(p.ms(0.5)),
        json!(p.ms(0.99)),
        json!(p.out_of_sequence),
        json!(p.errors),
        node_cpu.map_or(Value::Null, |c| json!(per_1k(c))),
        node_cpu.map_or(Value::Null, |c| json!(per_request(c, p) * 1e6)),
        match (node_cpu, trivial) {
            (Some(c), Some(t)) if t > 0.0 => json!(per_request(c, p) / t),
            _ => Value::Null,
        },
        json!(per_1k(nginx_cpu)),
        json!(per_1k(client_cpu)),
    ]
}
