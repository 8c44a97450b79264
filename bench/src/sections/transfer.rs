//! Join-time state transfer: a third node joins a 2-node cluster that holds S sessions
//! of one 1 KB attribute; how long until it has them all, and how much memory a node
//! holding them uses.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use bytes::Bytes;
use hyper::Method;
use serde_json::json;

use super::{held, progress, seed, wait_for, Env, SEED_CONNECTIONS};
use crate::http;
use crate::procs::Cluster;
use crate::report::{col, Check, Fmt, Table};

/// Size of the one attribute each session holds (a JSON string, quotes included).
const VALUE_BYTES: usize = 1024;

/// Runs the section.
pub async fn run(env: &Env) -> Result<Table> {
    let sessions: usize = if env.quick { 10_000 } else { 100_000 };
    let mut t = Table::new(
        "transfer",
        format!(
            "State transfer of {} sessions of 1 KB to a joining node, and memory per session",
            crate::report::thousands(sessions as i64)
        ),
        &[
            col("figure", "figure", Fmt::Text),
            col("value", "value", Fmt::Auto),
            col("unit", "unit", Fmt::Text),
        ],
    );
    progress(format!(
        "transfer: seeding {sessions} sessions of {VALUE_BYTES} B"
    ));
    let mut cluster = Cluster::start(&env.node_bin, 2, 3, &[]).await?;
    let idle_rss = cluster.node(0).rss()?;

    let seed_started = Instant::now();
    let body = Bytes::from(format!("\"{}\"", "x".repeat(VALUE_BYTES - 2)));
    let errors = seed(
        &[cluster.node(0).http],
        sessions,
        Method::PUT,
        "/attrs/data",
        body,
    )
    .await?;
    let (n1, n2) = (cluster.node(0).admin, cluster.node(1).admin);
    for admin in [n1, n2] {
        wait_for(
            "both nodes to hold the seeded sessions",
            Duration::from_secs(120),
            || async move { Ok((held(admin).await? >= sessions).then_some(())) },
        )
        .await?;
    }
    let seed_secs = seed_started.elapsed().as_secs_f64();
    let rss_n1 = cluster.node(0).rss()?;
    let rss_n2 = cluster.node(1).rss()?;

    progress("transfer: starting the joiner");
    let started = Instant::now();
    cluster.spawn(2)?;
    cluster.wait_ready(2, 2, Duration::from_secs(120)).await?;
    let ready_secs = started.elapsed().as_secs_f64();
    let n3 = cluster.node(2);
    let text = http::get_text(n3.admin, "/metrics").await?;
    let transfer_secs = crate::metrics::sum(&text, "tribe_state_transfer_seconds");
    let transferred = crate::metrics::sum(&text, "tribe_state_transfer_sessions");
    let received = held(n3.admin).await?;
    let rss_n3 = n3.rss()?;
    let per_session = (rss_n3.saturating_sub(idle_rss)) as f64 / received.max(1) as f64;
    let mb = |b: u64| b as f64 / 1e6;

    t.note(format!(
        "2 nodes (async, delta) seeded with PUT /attrs/data (a {VALUE_BYTES}-byte JSON string, \
         a new session per request) over {SEED_CONNECTIONS} connections to n1; then n3 starts and \
         pulls the state. RSS is VmRSS from /proc; per session = (joiner's RSS − an idle node's RSS) / \
         sessions it holds."
    ));
    for (figure, value, unit) in [
        (
            "sessions seeded (and replicated to n2)",
            json!(sessions),
            "",
        ),
        ("seeding errors", json!(errors), ""),
        (
            "seeding time (until n2 holds them all)",
            json!(seed_secs),
            "s",
        ),
        ("joiner ready (start → /readyz 200)", json!(ready_secs), "s"),
        (
            "state transfer (tribe_state_transfer_seconds)",
            json!(transfer_secs),
            "s",
        ),
        ("sessions in the state transfer", json!(transferred), ""),
        ("sessions the joiner holds", json!(received), ""),
        ("RSS of an idle node", json!(mb(idle_rss)), "MB"),
        (
            "RSS of the joiner (state transfer)",
            json!(mb(rss_n3)),
            "MB",
        ),
        ("RSS of n2 (applied deltas)", json!(mb(rss_n2)), "MB"),
        ("RSS of n1 (served the writes)", json!(mb(rss_n1)), "MB"),
        (
            "RSS per session, joiner, above idle",
            json!(per_session),
            "B",
        ),
        (
            "RSS per session, joiner, total",
            json!(rss_n3 as f64 / received.max(1) as f64),
            "B",
        ),
    ] {
        t.row(vec![json!(figure), value, json!(unit)]);
    }
    let transfer = Check::at_most(
        "state transfer of 100,000 sessions of 1 KB",
        transfer_secs,
        2.0,
        "s",
        2,
    );
    t.checks.push(if sessions == 100_000 {
        transfer
    } else {
        transfer.not_judged(&format!(
            "{} sessions",
            crate::report::thousands(sessions as i64)
        ))
    });
    t.checks.push(Check::at_most(
        "RSS per 1 KB session",
        per_session / 1024.0,
        1.5,
        "KB",
        2,
    ));
    if received < sessions {
        bail!("the joiner holds {received} of {sessions} sessions");
    }
    Ok(t)
}
