//! Anti-entropy convergence: one of three nodes is frozen (SIGSTOP) while N new sessions
//! are written to the other two; after SIGCONT, how long until it holds them all, and
//! how many bytes the members exchanged meanwhile. Then what the cluster sends while
//! idle, with every replica equal (the cost of the periodic digest rounds).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use hyper::Method;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::json;

use super::{held, progress, seed, wait_for, Env, SEED_CONNECTIONS};
use crate::http;
use crate::procs::Cluster;
use crate::report::{col, Check, Fmt, Table};

/// How long the idle traffic is measured: more than one default anti-entropy interval
/// (5 s), so every member starts at least one round in it.
const IDLE_WINDOW: Duration = Duration::from_secs(6);

/// Wait after convergence before the idle window: longer than the 2 s for which a
/// changed session stays out of anti-entropy digests.
const SETTLE: Duration = Duration::from_secs(3);

/// Runs the section.
pub async fn run(env: &Env) -> Result<Table> {
    let sessions: usize = if env.quick { 10_000 } else { 100_000 };
    let mut t = Table::new(
        "convergence",
        format!(
            "Convergence of {} sessions written while a node was frozen",
            crate::report::thousands(sessions as i64)
        ),
        &[
            col("figure", "figure", Fmt::Text),
            col("value", "value", Fmt::Auto),
            col("unit", "unit", Fmt::Text),
        ],
    );
    t.note(format!(
        "3 nodes (async, delta, default --member-timeout 3s and --anti-entropy-interval 5s). \
         n3 is SIGSTOPped; once n1 and n2 suspect it, {sessions} new sessions (POST /counter \
         without a cookie: one small attribute each) are written half to n1, half to n2 over \
         {SEED_CONNECTIONS} connections, until both hold them all. Then SIGCONT: convergence is \
         the time until n3's /cluster counts every session (polled every 5 ms). Bytes are \
         tribe_bytes_sent_total: n1 + n2 from SIGCONT to convergence, n3 from before its \
         freeze to convergence (frames, tags and heartbeats included, TCP/IP headers not). \
         Idle: tribe_bytes_sent_total and tribe_anti_entropy_rounds_total of all three over \
         {} s without writes, before the freeze (no sessions) and {} s after convergence.",
        IDLE_WINDOW.as_secs(),
        SETTLE.as_secs()
    ));
    let cluster = Cluster::start(&env.node_bin, 3, 3, &["--send-mode", "async"]).await?;
    let (n1, n2) = (cluster.node(0), cluster.node(1));
    let (a1, a2) = (n1.admin, n2.admin);
    let (h1, h2) = (n1.http, n2.http);
    let n3_pid = Pid::from_raw(i32::try_from(cluster.node(2).pid())?);
    let a3 = cluster.node(2).admin;
    let all = [a1, a2, a3];

    progress("convergence: idle traffic without sessions");
    let idle_empty = idle(&all).await?;
    // n3's counters before its freeze (a frozen node answers nothing).
    let n3_sent0 = metric(&[a3], "tribe_bytes_sent_total").await?;
    let n3_rounds0 = metric(&[a3], "tribe_anti_entropy_rounds_total").await?;

    progress("convergence: freezing n3");
    kill(n3_pid, Signal::SIGSTOP).context("SIGSTOP n3")?;
    // Whatever happens next, n3 must not stay stopped (its guard's SIGKILL would still
    // end it, but a failed section should not leave it frozen meanwhile).
    let _resume = Resume(n3_pid);
    let frozen = Instant::now();
    for admin in [a1, a2] {
        wait_for(
            "n1 and n2 to suspect the frozen n3",
            Duration::from_secs(30),
            || async move { Ok((!alive(admin, "n3").await?).then_some(())) },
        )
        .await?;
    }
    let detect_secs = frozen.elapsed().as_secs_f64();

    progress(format!(
        "convergence: writing {sessions} sessions to n1 and n2"
    ));
    let seed_started = Instant::now();
    let errors = seed(&[h1, h2], sessions, Method::POST, "/counter", Bytes::new()).await?;
    for admin in [a1, a2] {
        wait_for(
            "n1 and n2 to hold every new session",
            Duration::from_secs(120),
            || async move { Ok((held(admin).await? >= sessions).then_some(())) },
        )
        .await?;
    }
    let seed_secs = seed_started.elapsed().as_secs_f64();
    let sent0 = metric(&[a1, a2], "tribe_bytes_sent_total").await?;
    let rounds0 = metric(&[a1, a2], "tribe_anti_entropy_rounds_total").await?;

    progress("convergence: resuming n3");
    let resumed = Instant::now();
    kill(n3_pid, Signal::SIGCONT).context("SIGCONT n3")?;
    let mut rejoin_secs = None;
    let mut half_secs = None;
    let converged = loop {
        if rejoin_secs.is_none() && alive(a1, "n3").await.unwrap_or(false) {
            rejoin_secs = Some(resumed.elapsed().as_secs_f64());
        }
        let have = held(a3).await.unwrap_or(0);
        if half_secs.is_none() && have >= sessions / 2 {
            half_secs = Some(resumed.elapsed().as_secs_f64());
        }
        if have >= sessions {
            break resumed.elapsed().as_secs_f64();
        }
        if resumed.elapsed() > Duration::from_secs(120) {
            bail!("n3 holds {have} of {sessions} sessions 120 s after SIGCONT");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let sent_healthy = metric(&[a1, a2], "tribe_bytes_sent_total").await? - sent0;
    let sent_n3 = metric(&[a3], "tribe_bytes_sent_total").await? - n3_sent0;
    let repaired = metric(&[a3], "tribe_anti_entropy_sessions_repaired_total").await?;
    let rounds = metric(&[a1, a2], "tribe_anti_entropy_rounds_total").await? - rounds0
        + metric(&[a3], "tribe_anti_entropy_rounds_total").await?
        - n3_rounds0;

    progress("convergence: idle traffic with the sessions");
    // Digests leave out sessions changed in the last 2 s (their deltas may be in flight):
    // right after convergence n3's just-repaired sessions still differ there.
    tokio::time::sleep(SETTLE).await;
    let idle_full = idle(&all).await?;

    for (figure, value, unit) in [
        (
            "n3 suspected by n1 and n2 after SIGSTOP",
            json!(detect_secs),
            "s",
        ),
        ("sessions written while n3 was frozen", json!(sessions), ""),
        ("write errors", json!(errors), ""),
        (
            "writing time (until n1 and n2 hold them all)",
            json!(seed_secs),
            "s",
        ),
        (
            "n3 alive again for n1 after SIGCONT",
            json!(rejoin_secs),
            "s",
        ),
        ("SIGCONT → n3 holds half of them", json!(half_secs), "s"),
        (
            "convergence: SIGCONT → n3 holds every session",
            json!(converged),
            "s",
        ),
        (
            "anti-entropy rounds started until converged (all three)",
            json!(rounds),
            "",
        ),
        (
            "sessions repaired by anti-entropy (n3's count)",
            json!(repaired),
            "",
        ),
        (
            "bytes sent by n1 + n2 until converged",
            json!(sent_healthy),
            "B",
        ),
        ("bytes sent by n3 until converged", json!(sent_n3), "B"),
        (
            "bytes exchanged per session written",
            json!((sent_healthy + sent_n3) / sessions as f64),
            "B",
        ),
        (
            "idle, no sessions: bytes sent by all three",
            json!(idle_empty.bytes),
            "B",
        ),
        (
            "idle, no sessions: anti-entropy rounds",
            json!(idle_empty.rounds),
            "",
        ),
        (
            "idle, no sessions: bytes per round",
            json!(idle_empty.per_round()),
            "B",
        ),
        (
            "idle, with the sessions: bytes sent by all three",
            json!(idle_full.bytes),
            "B",
        ),
        (
            "idle, with the sessions: anti-entropy rounds",
            json!(idle_full.rounds),
            "",
        ),
        (
            "idle, with the sessions: bytes per round",
            json!(idle_full.per_round()),
            "B",
        ),
    ] {
        t.row(vec![json!(figure), value, json!(unit)]);
    }
    // An idle round costs O(differences), not O(sessions): a small fraction of what
    // repairing every session cost. (Listing each session's id and version, 24 B, would
    // already be a tenth of it.)
    let repair_bytes = sent_healthy + sent_n3;
    t.checks.push(Check::at_most(
        "idle anti-entropy round, % of the bytes that repaired every session",
        100.0 * idle_full.per_round() / repair_bytes.max(1.0),
        1.0,
        "%",
        3,
    ));
    Ok(t)
}

/// What the three nodes sent in an idle window.
struct Idle {
    bytes: f64,
    rounds: f64,
}

impl Idle {
    /// Bytes per anti-entropy round (heartbeats included: the same in every window).
    fn per_round(&self) -> f64 {
        self.bytes / self.rounds.max(1.0)
    }
}

/// Bytes sent and anti-entropy rounds started by `admins` over [`IDLE_WINDOW`].
async fn idle(admins: &[SocketAddr]) -> Result<Idle> {
    let bytes0 = metric(admins, "tribe_bytes_sent_total").await?;
    let rounds0 = metric(admins, "tribe_anti_entropy_rounds_total").await?;
    tokio::time::sleep(IDLE_WINDOW).await; // the measurement window
    Ok(Idle {
        bytes: metric(admins, "tribe_bytes_sent_total").await? - bytes0,
        rounds: metric(admins, "tribe_anti_entropy_rounds_total").await? - rounds0,
    })
}

/// One metric summed over the nodes at `admins`.
async fn metric(admins: &[SocketAddr], name: &str) -> Result<f64> {
    let mut sum = 0.0;
    for a in admins {
        let text = http::get_text(*a, "/metrics")
            .await
            .with_context(|| format!("GET http://{a}/metrics"))?;
        sum += crate::metrics::sum(&text, name);
    }
    Ok(sum)
}

/// SIGCONTs the process on drop (a no-op when it is running).
pub(crate) struct Resume(pub(crate) Pid);

impl Drop for Resume {
    fn drop(&mut self) {
        let _ = kill(self.0, Signal::SIGCONT);
    }
}

/// Whether the node at `admin` lists `member` as alive.
pub(crate) async fn alive(admin: SocketAddr, member: &str) -> Result<bool> {
    let view = http::get_json(admin, "/cluster").await?;
    Ok(view["members"].as_array().is_some_and(|ms| {
        ms.iter()
            .any(|m| m["node"] == member && m["state"] == "alive")
    }))
}
