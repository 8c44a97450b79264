//! Replication lag, end to end: a write answered by node A, then node B polled until it
//! serves that value from its own replica.
//!
//! Two nodes (delta mode). One user writes `POST /counter` on A; right after A's answer a
//! second "tab" with the session cookie alone (no version cookie, so B answers from its
//! replica at once, without a read-your-writes wait or fetch) polls `GET /counter` on B
//! until it shows the new value. The lag is the time from A's answer to B's first
//! up-to-date answer; its resolution is one GET on loopback. Also shown: A's own
//! `tribe_replication_lag_seconds` (time a delta waited in the queue before its socket
//! write), as histogram bucket bounds.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::{json, Value};

use super::{progress, Env};
use crate::http::{self, Conn, User};
use crate::load::histogram;
use crate::procs::Cluster;
use crate::report::{col, Check, Fmt, Table};

/// Runs the section.
pub async fn run(env: &Env) -> Result<Table> {
    let samples = if env.quick { 500 } else { 5_000 };
    let mut t = Table::new(
        "lag",
        "Replication lag: write on one node, observe on another",
        &[
            col("send_mode", "send mode", Fmt::Text),
            col("samples", "writes", Fmt::Int),
            col("p50_ms", "p50 ms", Fmt::Fixed(3)),
            col("p99_ms", "p99 ms", Fmt::Fixed(3)),
            col("max_ms", "max ms", Fmt::Fixed(3)),
            col("polls_per_write", "GETs on B per write", Fmt::Fixed(2)),
            col("queue_p50_ms", "queue time p50 ≤ ms", Fmt::Fixed(3)),
            col("queue_p99_ms", "queue time p99 ≤ ms", Fmt::Fixed(3)),
        ],
    );
    t.note(format!(
        "2 nodes; {samples} sequential writes on A, each followed by GETs on B (session cookie only) \
         until B serves it; lag = A's answer → B's first up-to-date answer. Queue time: A's \
         tribe_replication_lag_seconds histogram (upper bucket bounds)."
    ));
    for mode in ["async", "sync"] {
        progress(format!("lag: {mode}"));
        let cluster = Cluster::start(&env.node_bin, 2, 2, &["--send-mode", mode]).await?;
        let (a, b) = (cluster.node(0), cluster.node(1));
        let mut on_a = Conn::connect(a.http).await?;
        let mut on_b = Conn::connect(b.http).await?;
        let mut writer = User::default();
        writer.write(&mut on_a).await?;
        let mut reader = writer.session_only();
        let mut lags = histogram();
        let mut polls = 0u64;
        for _ in 0..samples {
            let (want, _) = writer.write(&mut on_a).await?;
            let answered = Instant::now();
            loop {
                polls += 1;
                let (seen, _) = reader.read(&mut on_b).await?;
                if seen >= want {
                    break;
                }
                if answered.elapsed() > Duration::from_secs(5) {
                    bail!("{mode}: B still serves {seen} 5 s after A answered {want}");
                }
            }
            lags.saturating_record((answered.elapsed().as_nanos() as u64).max(1));
        }
        let text = http::get_text(a.admin, "/metrics").await?;
        let queue = |q| {
            crate::metrics::histogram_quantile(&text, "tribe_replication_lag_seconds", q)
                .map_or(Value::Null, |s| json!(s * 1000.0))
        };
        let ms = |q: f64| lags.value_at_quantile(q) as f64 / 1e6;
        t.row(vec![
            json!(mode),
            json!(samples),
            json!(ms(0.5)),
            json!(ms(0.99)),
            json!(lags.max() as f64 / 1e6),
            json!(polls as f64 / samples as f64),
            queue(0.5),
            queue(0.99),
        ]);
        if mode == "async" {
            t.checks.push(Check::at_most(
                "async replication lag p99",
                ms(0.99),
                1.0,
                "ms",
                3,
            ));
        }
    }
    Ok(t)
}
