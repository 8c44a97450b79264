//! Writes while a peer is frozen (a gray failure): three nodes, the front door (nginx
//! round-robin) on n1 and n2 only — as an ingress stops sending to a pod whose readiness
//! probe fails — and n3 SIGSTOPped mid-run. Writes/s and latency before the freeze, in
//! the member timeout that follows it (the nodes still wait for n3), and once n1 and n2
//! suspect it; async and sync.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::json;

use super::convergence::{alive, Resume};
use super::{progress, wait_for, Env};
use crate::load::{self, Client, Op, Phase};
use crate::procs::{Cluster, Nginx};
use crate::report::{col, Check, Fmt, Table};

/// Connections (users) the client keeps busy.
const CONNECTIONS: usize = 32;

/// The nodes' default `--member-timeout`: how long a frozen peer is waited for.
const MEMBER_TIMEOUT: Duration = Duration::from_secs(3);

/// Runs the section.
pub async fn run(env: &Env) -> Result<Table> {
    let measure = if env.quick {
        Duration::from_secs(2)
    } else {
        Duration::from_secs(6)
    };
    let mut t = Table::new(
        "gray",
        "Session writes while a peer is frozen (SIGSTOP)",
        &[
            col("send_mode", "send mode", Fmt::Text),
            col("phase", "phase", Fmt::Text),
            col("requests_per_s", "writes/s", Fmt::Int),
            col("vs_healthy", "of healthy", Fmt::Fixed(2)),
            col("p50_ms", "p50 ms", Fmt::Fixed(2)),
            col("p99_ms", "p99 ms", Fmt::Fixed(2)),
            col("max_ms", "max ms", Fmt::Fixed(0)),
            col("out_of_sequence", "out of sequence", Fmt::Int),
            col("errors", "errors", Fmt::Int),
        ],
    );
    t.note(format!(
        "3 nodes (delta, default --member-timeout {}s); nginx round-robin to n1 and n2; \
         {CONNECTIONS} connections, one session each, POST /counter one after another. \
         Phases: healthy ({:.0} s); the first {} s after n3 is SIGSTOPped (writes that n3 \
         must acknowledge wait for its suspicion); frozen and suspected by n1 and n2 \
         ({:.0} s). \"of healthy\": writes/s over the healthy phase's.",
        MEMBER_TIMEOUT.as_secs(),
        measure.as_secs_f64(),
        MEMBER_TIMEOUT.as_secs(),
        measure.as_secs_f64()
    ));
    for send in ["async", "sync"] {
        progress(format!("gray: 3 nodes, {send}"));
        let cluster = Cluster::start(&env.node_bin, 3, 3, &["--send-mode", send]).await?;
        let front = [cluster.node(0).http, cluster.node(1).http];
        let admins = [cluster.node(0).admin, cluster.node(1).admin];
        let n3 = Pid::from_raw(i32::try_from(cluster.node(2).pid())?);
        let nginx = Nginx::round_robin(&env.nginx, &front).await?;
        let mut clients: Vec<Client> = (0..CONNECTIONS).map(|_| Client::new(nginx.addr)).collect();
        load::run(&mut clients, Op::Write, Duration::from_millis(500)).await;

        let healthy = load::run(&mut clients, Op::Write, measure).await;
        kill(n3, Signal::SIGSTOP).context("SIGSTOP n3")?;
        let _resume = Resume(n3);
        let frozen_at = Instant::now();
        let stalled = load::run(&mut clients, Op::Write, MEMBER_TIMEOUT).await;
        for admin in admins {
            wait_for(
                "n1 and n2 to suspect the frozen n3",
                Duration::from_secs(30),
                || async move { Ok((!alive(admin, "n3").await?).then_some(())) },
            )
            .await?;
        }
        let suspected_after = frozen_at.elapsed();
        let suspected = load::run(&mut clients, Op::Write, measure).await;

        let base = healthy.rate();
        for (name, p) in [
            ("healthy", &healthy),
            ("n3 frozen, first member timeout", &stalled),
            ("n3 frozen and suspected", &suspected),
        ] {
            if let Some(e) = &p.first_error {
                t.note(format!("{send}, {name}: first error: {e}"));
            }
            t.row(row(send, name, p, base));
        }
        t.note(format!(
            "{send}: n1 and n2 suspected n3 {:.2} s after its SIGSTOP",
            suspected_after.as_secs_f64()
        ));
        t.checks.push(Check::at_least(
            &format!("{send}: writes/s with a frozen, suspected peer over healthy"),
            suspected.rate() / base.max(1.0),
            0.8,
            "×",
            2,
        ));
        t.checks.push(Check::at_most(
            &format!("{send}: longest write while a peer is frozen"),
            stalled.ms(1.0).max(suspected.ms(1.0)) / 1000.0,
            MEMBER_TIMEOUT.as_secs_f64() + 1.0,
            "s",
            2,
        ));
    }
    Ok(t)
}

fn row(send: &str, phase: &str, p: &Phase, healthy_rate: f64) -> Vec<serde_json::Value> {
    vec![
        json!(send),
        json!(phase),
        json!(p.rate()),
        json!(p.rate() / healthy_rate.max(1.0)),
        json!(p.ms(0.5)),
        json!(p.ms(0.99)),
        json!(p.ms(1.0)),
        json!(p.out_of_sequence),
        json!(p.errors),
    ]
}
