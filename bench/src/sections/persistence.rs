//! Persistence (`--data-dir`): what durability costs per write, how long a node takes
//! to start from a large data set, and memory under a `--max-active-sessions` budget.
//!
//! 1. One node, three runs: memory only, `--durability write-behind`, `--durability
//!    sync`. Writers (each its own session and keepalive connection) send `POST
//!    /counter` one after another; measured over the write phase: writes/s, utime+stime
//!    of the node per write, and bytes the node wrote to disk per write (`write_bytes`
//!    of `/proc/<pid>/io`: what reached the block layer, journal and tables included)
//!    next to the record bytes it handed the engine (`tribe_persist_bytes_total`).
//! 2. S sessions seeded into one write-behind node; once all are on disk it is
//!    SIGKILLed and started again on the same directory: time from spawn to ready,
//!    the load time the node reports, and its RSS; then again with a budget of S / 10
//!    sessions in memory (`--max-active-sessions`).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use hyper::Method;
use serde_json::json;

use super::{progress, seed, wait_for, Env};
use crate::http::{Conn, User};
use crate::procs::{cpu_seconds, Cluster};
use crate::report::{col, Check, Fmt, Table};

/// Writers in flight (a sync flush serves every writer waiting: group commit).
const WRITERS: usize = 16;

/// Bytes the process wrote to the block layer (`write_bytes` of `/proc/<pid>/io`).
fn disk_write_bytes(pid: u32) -> Result<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io"))?;
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
        .context("no write_bytes in /proc/<pid>/io")
}

/// One node with `args` and, when `data` is given, `--data-dir data`.
async fn node(env: &Env, data: Option<&Path>, args: &[&str]) -> Result<Cluster> {
    let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    if let Some(d) = data {
        all.extend(["--data-dir".into(), d.display().to_string()]);
    }
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    Cluster::start(&env.node_bin, 1, 1, &all).await
}

struct WriteRun {
    mode: &'static str,
    writes: usize,
    seconds: f64,
    cpu: f64,
    disk: u64,
    records: f64,
    p99_flush_ms: Option<f64>,
}

/// `per_writer` sequential writes by each of [`WRITERS`] users on one node.
async fn write_run(
    env: &Env,
    mode: &'static str,
    per_writer: usize,
    sessions_per_writer: usize,
) -> Result<WriteRun> {
    let dir = tempfile::Builder::new()
        .prefix("tribe-bench-data.")
        .tempdir()?;
    let cluster = match mode {
        "memory only" => node(env, None, &[]).await?,
        "write-behind" => node(env, Some(dir.path()), &["--durability", "write-behind"]).await?,
        _ => node(env, Some(dir.path()), &["--durability", "sync"]).await?,
    };
    let n = cluster.node(0);
    let (addr, pid) = (n.http, n.pid());
    // Each writer rotates over its own sessions: with more sessions than writes per
    // flush interval, write-behind cannot fold many writes of one session into one put.
    let mut writers: Vec<(Vec<User>, Conn)> = Vec::new();
    for _ in 0..WRITERS {
        let mut conn = Conn::connect(addr).await?;
        let mut users = vec![User::default(); sessions_per_writer];
        for u in &mut users {
            u.write(&mut conn).await?;
        }
        writers.push((users, conn));
    }
    let (cpu0, disk0) = (cpu_seconds(&[pid]), disk_write_bytes(pid)?);
    let rec0 = cluster.metric_sum("tribe_persist_bytes_total").await?;
    let started = Instant::now();
    let jobs = writers.iter_mut().map(|(users, c)| async move {
        for j in 0..per_writer {
            let n = users.len();
            users[j % n].write(c).await?;
        }
        anyhow::Ok(())
    });
    for r in futures::future::join_all(jobs).await {
        r?;
    }
    let seconds = started.elapsed().as_secs_f64();
    // Write-behind: the last flush is part of the cost.
    if mode == "write-behind" {
        tokio::time::sleep(Duration::from_millis(1200)).await;
    }
    let text = crate::http::get_text(cluster.node(0).admin, "/metrics").await?;
    Ok(WriteRun {
        mode,
        writes: per_writer * WRITERS,
        seconds,
        cpu: cpu_seconds(&[pid]) - cpu0,
        disk: disk_write_bytes(pid)? - disk0,
        records: crate::metrics::sum(&text, "tribe_persist_bytes_total") - rec0,
        p99_flush_ms: crate::metrics::histogram_quantile(
            &text,
            "tribe_persist_flush_seconds",
            0.99,
        )
        .map(|s| s * 1e3),
    })
}

/// Runs the section.
pub async fn run(env: &Env) -> Result<Table> {
    let per_writer: usize = if env.quick { 300 } else { 2_000 };
    let sessions_per_writer = if env.quick { 150 } else { 1_000 };
    let sessions: usize = if env.quick { 20_000 } else { 1_000_000 };
    let budget = sessions / 10;
    let mut t = Table::new(
        "persistence",
        "Persistence: cost per write, start from disk, memory under a budget",
        &[
            col("figure", "figure", Fmt::Text),
            col("value", "value", Fmt::Auto),
            col("unit", "unit", Fmt::Text),
        ],
    );
    t.note(format!(
        "One node (async, delta, one runtime thread), {WRITERS} writers × {per_writer} POST /counter, \
         each writer rotating over {sessions_per_writer} sessions of its own (each session is \
         written about {} times, so write-behind folds few writes into one put); CPU = utime+stime of the node over the write phase (write-behind: \
         plus 1.2 s for the last flush); disk bytes = write_bytes of /proc/<pid>/io.",
        per_writer.div_ceil(sessions_per_writer)
    ));
    let mut runs = Vec::new();
    for mode in ["memory only", "write-behind", "sync"] {
        progress(format!("persistence: writes, {mode}"));
        runs.push(write_run(env, mode, per_writer, sessions_per_writer).await?);
    }
    let base = runs[0].cpu / runs[0].writes as f64;
    for r in &runs {
        let w = r.writes as f64;
        t.row(vec![
            json!(format!("{}: writes/s", r.mode)),
            json!(w / r.seconds),
            json!(""),
        ]);
        t.row(vec![
            json!(format!("{}: node CPU per write", r.mode)),
            json!(r.cpu / w * 1e6),
            json!("µs"),
        ]);
        if r.mode != "memory only" {
            t.row(vec![
                json!(format!("{}: CPU per write vs memory only", r.mode)),
                json!(format!("{:.2}×", r.cpu / w / base)),
                json!(""),
            ]);
            t.row(vec![
                json!(format!("{}: bytes written to disk per write", r.mode)),
                json!(r.disk as f64 / w),
                json!("B"),
            ]);
            t.row(vec![
                json!(format!(
                    "{}: record bytes per write (to the engine)",
                    r.mode
                )),
                json!(r.records / w),
                json!("B"),
            ]);
            if let Some(ms) = r.p99_flush_ms {
                t.row(vec![
                    json!(format!("{}: flush p99", r.mode)),
                    json!(ms),
                    json!("ms"),
                ]);
            }
            t.checks.push(Check::at_most(
                &format!("node CPU per write, {} vs memory only", r.mode),
                r.cpu / w / base,
                1.2,
                "×",
                2,
            ));
        }
    }

    // Start from disk.
    let dir = tempfile::Builder::new()
        .prefix("tribe-bench-data.")
        .tempdir()?;
    progress(format!("persistence: seeding {sessions} sessions"));
    {
        let cluster = node(env, Some(dir.path()), &[]).await?;
        let n = cluster.node(0);
        let errors = seed(&[n.http], sessions, Method::POST, "/counter", Bytes::new()).await?;
        if errors > 0 {
            progress(format!("persistence: {errors} seeding errors (retried)"));
        }
        let admin = n.admin;
        wait_for(
            "every session on disk",
            Duration::from_secs(300),
            || async move {
                let text = crate::http::get_text(admin, "/metrics").await?;
                let on_disk = crate::metrics::sum(&text, "tribe_persist_sessions_on_disk");
                Ok((on_disk as usize >= sessions).then_some(()))
            },
        )
        .await?;
        t.row(vec![
            json!("sessions persisted"),
            json!(sessions),
            json!(""),
        ]);
        t.row(vec![
            json!("RSS, all in memory (the node that took the writes)"),
            json!(n.rss()? as f64 / 1e6),
            json!("MB"),
        ]);
        // Dropped: SIGKILL.
    }
    for (what, args) in [
        ("restart", vec![]),
        (
            "restart with a budget",
            vec!["--max-active-sessions".to_string(), budget.to_string()],
        ),
    ] {
        progress(format!(
            "persistence: {what} from {sessions} persisted sessions"
        ));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let started = Instant::now();
        let cluster = node(env, Some(dir.path()), &args).await?;
        let ready = started.elapsed().as_secs_f64();
        let n = cluster.node(0);
        let text = crate::http::get_text(n.admin, "/metrics").await?;
        let loaded = crate::metrics::sum(&text, "tribe_persist_loaded_sessions");
        if (loaded as usize) < sessions {
            bail!("{what}: loaded {loaded} of {sessions} sessions");
        }
        let label = if args.is_empty() {
            String::from("no budget")
        } else {
            format!("budget {}", crate::report::thousands(budget as i64))
        };
        t.row(vec![
            json!(format!("{what}: spawn → ready ({label})")),
            json!(ready),
            json!("s"),
        ]);
        t.row(vec![
            json!(format!("{what}: load (tribe_persist_load_seconds)")),
            json!(crate::metrics::sum(&text, "tribe_persist_load_seconds")),
            json!("s"),
        ]);
        t.row(vec![
            json!(format!("{what}: sessions in memory / swapped out")),
            json!(format!(
                "{} / {}",
                crate::metrics::sum(&text, "tribe_persist_sessions_resident"),
                crate::metrics::sum(&text, "tribe_persist_sessions_swapped")
            )),
            json!(""),
        ]);
        t.row(vec![
            json!(format!("{what}: RSS")),
            json!(n.rss()? as f64 / 1e6),
            json!("MB"),
        ]);
        t.row(vec![
            json!(format!("{what}: data on disk")),
            json!(crate::metrics::sum(&text, "tribe_persist_disk_bytes") / 1e6),
            json!("MB"),
        ]);
    }
    t.note(format!(
        "Start from disk: {sessions} sessions (one counter attribute each) written to one node \
         (write-behind), SIGKILLed once all are on disk, then started twice on the same directory: \
         without and with --max-active-sessions {budget}."
    ));
    Ok(t)
}
