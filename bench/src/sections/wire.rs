//! Bytes on the wire per one-attribute delta: one session written sequentially on n1 of
//! a 2-node async cluster; `tribe_bytes_sent_total` / `tribe_deltas_sent_total` of n1
//! over the writes. That is everything n1 wrote to its peer's socket meanwhile — frame
//! header, authentication tag, the delta, and the batched access-time touches — but not
//! TCP/IP headers.

use std::time::Duration;

use anyhow::{bail, Result};
use serde_json::json;
use std::time::Instant;

use super::{progress, Env};
use crate::http::{self, Conn, User};
use crate::procs::Cluster;
use crate::report::{col, Check, Fmt, Table};

/// Runs the section.
pub async fn run(env: &Env) -> Result<Table> {
    let writes: i64 = if env.quick { 1_000 } else { 5_000 };
    let mut t = Table::new(
        "wire",
        "Bytes on the wire per one-attribute delta",
        &[
            col("writes", "writes", Fmt::Int),
            col("deltas_sent", "deltas sent", Fmt::Int),
            col("bytes_sent", "bytes sent", Fmt::Int),
            col("bytes_per_delta", "bytes per delta", Fmt::Fixed(1)),
        ],
    );
    t.note(
        "2 nodes, async; one session, POST /counter (one integer attribute) on n1, sequentially; \
         n1's tribe_bytes_sent_total / tribe_deltas_sent_total over the writes (framing and \
         authentication tag included, TCP/IP headers not).",
    );
    progress("wire: bytes per delta");
    let cluster = Cluster::start(&env.node_bin, 2, 2, &["--send-mode", "async"]).await?;
    let (n1, n2) = (cluster.node(0), cluster.node(1));
    let metric = |admin, name: &'static str| async move {
        anyhow::Ok(crate::metrics::sum(
            &http::get_text(admin, "/metrics").await?,
            name,
        ))
    };
    let mut conn = Conn::connect(n1.http).await?;
    let mut user = User::default();
    user.write(&mut conn).await?; // creates the session: not a one-attribute delta
    let mut reader = user.session_only();
    let mut on_n2 = Conn::connect(n2.http).await?;
    let seen = user.last;
    serves(&mut reader, &mut on_n2, seen).await?;
    let bytes0 = metric(n1.admin, "tribe_bytes_sent_total").await?;
    let deltas0 = metric(n1.admin, "tribe_deltas_sent_total").await?;
    for _ in 0..writes {
        user.write(&mut conn).await?;
    }
    let last = user.last;
    serves(&mut reader, &mut on_n2, last).await?;
    let bytes = metric(n1.admin, "tribe_bytes_sent_total").await? - bytes0;
    let deltas = metric(n1.admin, "tribe_deltas_sent_total").await? - deltas0;
    let per_delta = bytes / deltas.max(1.0);
    t.row(vec![
        json!(writes),
        json!(deltas),
        json!(bytes),
        json!(per_delta),
    ]);
    t.checks.push(Check::at_most(
        "one-attribute delta on the wire",
        per_delta,
        100.0,
        "B",
        0,
    ));
    Ok(t)
}

/// Polls (bounded) until the reader's node serves at least `want`.
async fn serves(reader: &mut User, conn: &mut Conn, want: i64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (seen, _) = reader.read(conn).await?;
        if seen >= want {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("n2 serves {seen}, not {want}, 10 s after the write");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
