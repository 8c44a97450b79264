//! Join (state transfer), leave (drain and hand-off), periodic maintenance, and
//! backup-mode re-replication after membership changes.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Cluster;
use crate::membership::Discovery;
use crate::ownership;
use crate::replication::rereplicate;
use crate::store::unix_now;
use crate::wire::{Message, SessionId, SessionState};

/// How long a join waits for every discovered candidate to be dialed once, and for every
/// member to dial back.
const SETTLE: Duration = Duration::from_secs(3);
/// Poll period while settling (a bounded wait on several sources of change).
const POLL: Duration = Duration::from_millis(10);
/// A non-owned copy (backup mode) unused this long is evicted.
const CACHE_TTL_SECS: u64 = 30;
use crate::replication::handoff::PUT_BATCH;

async fn settle(c: &Cluster, discovery: &Discovery) {
    let inner = &c.inner;
    let deadline = Instant::now() + SETTLE;
    // Every candidate dialed at least once. A candidate without a link has not been
    // dialed yet (`follow_discovery` may not have seen the candidate set yet): it is
    // not done, or a joiner that races its own discovery would join with no peer and
    // report ready without any state.
    while Instant::now() < deadline {
        let cands: Vec<_> = discovery.candidates.borrow().keys().copied().collect();
        let dialed = {
            let links = inner.net.links.lock();
            cands.iter().all(|a| {
                *a == inner.me.advertise
                    || links
                        .get(a)
                        .is_some_and(|l| l.attempts.load(Ordering::SeqCst) > 0)
            })
        };
        if dialed {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    // Every alive member has dialed us back, so its writes reach us from now on.
    while Instant::now() < deadline {
        let alive: Vec<String> = c.alive_peers().into_iter().map(|(n, _)| n).collect();
        let dialed_back = {
            let ib = inner.net.inbound.lock();
            alive.iter().all(|n| ib.contains_key(n))
        };
        if dialed_back {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Joins: waits for discovery, connects (settles), then hands the join to the replica:
/// it asks every live member for a state transfer and reports [`Event::Joined`] (ready)
/// once the readiness rule holds ([`crate::replication::join`]).
///
/// [`Event::Joined`]: crate::replication::replica::Event::Joined
pub(crate) async fn join(c: Cluster, discovery: Arc<Discovery>) {
    let inner = c.inner.clone();
    tokio::select! {
        _ = discovery.initial_round() => {}
        _ = inner.life.shutdown.cancelled() => return,
    }
    settle(&c, &discovery).await;
    // Peers that answer but refuse our key: wait (not ready) instead of joining as a
    // second, empty cluster; transfer the state once we can authenticate.
    c.wait_while_isolated().await;
    inner.metrics.state_transfer_sessions.set(0);
    let now = c.now_ms();
    c.with_replica(|r| r.begin_join(now));
    let waiting = inner.replica.lock().join_waiting_for();
    tracing::info!(?waiting, "joining: state transfers requested");
}

/// The join completed after `ms` milliseconds, with `peers` live peers: ready. Called
/// under the replica's lock.
pub(crate) fn joined(c: &Cluster, ms: u64, peers: usize) {
    let inner = &c.inner;
    let secs = ms as f64 / 1000.0;
    inner.metrics.state_transfer_seconds.set(secs);
    tracing::info!(
        peers,
        sessions = inner.store.len(),
        seconds = secs,
        "joined: state transfer from every live member complete, ready"
    );
    inner.signals.ready.send_replace(true);
}

/// Leaves gracefully within the drain timeout.
pub(crate) async fn leave(c: Cluster) {
    let inner = c.inner.clone();
    c.with_replica(|r| r.set_leaving());
    let deadline = tokio::time::Instant::now() + inner.cfg.drain_timeout;
    flush_touches(&c).await;
    if let Some((view, without)) = c.with_replica(|r| r.leave_handoff()) {
        let plan = plan_moves(&c, &view, &without, true);
        let total: usize = plan.values().map(Vec::len).sum();
        tracing::info!(
            sessions = total,
            "handing sessions over to their next owners"
        );
        let _ = tokio::time::timeout_at(deadline, push_plan(&c, plan)).await;
    }
    drain_links(&c, deadline).await;
    for (_, link) in c.alive_peers() {
        link.send(&inner.metrics, Message::Leaving.outgoing()).await;
    }
    drain_links(&c, deadline).await;
    let discovery = inner.net.discovery.lock().clone();
    if let Some(d) = discovery {
        d.leave().await;
    }
    tracing::info!("left the cluster");
}

async fn drain_links(c: &Cluster, deadline: tokio::time::Instant) {
    loop {
        let pending = c.alive_peers().iter().any(|(_, l)| !l.drained());
        if !pending || tokio::time::Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(POLL).await;
    }
}

fn plan_moves(
    c: &Cluster,
    old: &[String],
    new: &[String],
    leaving: bool,
) -> HashMap<String, Vec<SessionId>> {
    let inner = &c.inner;
    rereplicate::plan_moves(
        &inner.store,
        &inner.me.node_id,
        inner.cfg.backups,
        old,
        new,
        leaving,
        unix_now(),
    )
}

/// Pushes `plan`; returns what could not be delivered (to retry), by target member.
async fn push_plan(
    c: &Cluster,
    plan: HashMap<String, Vec<SessionId>>,
) -> HashMap<String, Vec<SessionId>> {
    let inner = &c.inner;
    let total: usize = plan.values().map(Vec::len).sum();
    inner.metrics.rereplication_backlog.set(total as i64);
    let pushes = plan.into_iter().map(|(node, sids)| async move {
        let mut failed = Vec::new();
        for batch in sids.chunks(PUT_BATCH) {
            let sessions: Vec<SessionState> =
                batch.iter().filter_map(|s| inner.store.state(*s)).collect();
            let n = sessions.len();
            if c.put(&node, sessions, Duration::from_secs(5)).await {
                inner.metrics.rereplicated.inc_by(n as u64);
                inner
                    .metrics
                    .rereplication_backlog
                    .dec_by(batch.len() as i64);
            } else {
                tracing::warn!(node = %node, sessions = n, "re-replication push failed; will retry");
                failed.extend_from_slice(batch);
            }
        }
        (node, failed)
    });
    let failed: HashMap<String, Vec<SessionId>> = futures::future::join_all(pushes)
        .await
        .into_iter()
        .filter(|(_, f)| !f.is_empty())
        .collect();
    let left: usize = failed.values().map(Vec::len).sum();
    inner.metrics.rereplication_backlog.set(left as i64);
    failed
}

/// Backup mode: runs the re-replication round the replica says is due
/// ([`crate::replication::handoff`]): plans it outside the replica's lock (it reads the
/// whole store), pushes it, and reports what failed (retried later while still needed).
pub(crate) async fn rereplicate(c: Cluster) {
    let inner = &c.inner;
    let now = c.now_ms();
    let Some(round) = c.with_replica(|r| r.take_rereplication(now)) else {
        return;
    };
    let now_s = unix_now();
    let mut plan = match &round.old {
        Some(old) => plan_moves(&c, old, &round.new, false),
        None => HashMap::new(),
    };
    if !plan.is_empty() {
        let total: usize = plan.values().map(Vec::len).sum();
        tracing::info!(
            sessions = total,
            members = round.new.len(),
            "membership changed: re-replicating"
        );
    }
    let retry = rereplicate::still_needed(
        &inner.store,
        inner.cfg.backups,
        round.retry,
        &round.new,
        now_s,
    );
    for (node, sids) in retry {
        let list = plan.entry(node).or_default();
        list.extend(sids);
        list.sort_unstable();
        list.dedup();
    }
    let failed = if plan.is_empty() {
        HashMap::new()
    } else {
        push_plan(&c, plan).await
    };
    let now = c.now_ms();
    c.with_replica(|r| r.rereplication_done(now, failed));
}

async fn flush_touches(c: &Cluster) {
    let inner = &c.inner;
    let touched: Vec<(SessionId, u64)> = std::mem::take(&mut *inner.requests.touched.lock())
        .into_iter()
        .collect();
    if touched.is_empty() {
        return;
    }
    // Where they go is the replica's decision (`replication::route::touch_plan`).
    let plan = inner.replica.lock().touch_plan(&touched);
    for (node, batches) in plan {
        if let Some(link) = c.link_of(&node) {
            for batch in batches {
                link.send(&inner.metrics, Message::Touch(batch).outgoing())
                    .await;
            }
        }
    }
}

/// Every second: replicate batched touches, expire sessions, evict stale non-owned
/// copies (backup mode).
pub(crate) async fn maintenance(c: Cluster) {
    let inner = c.inner.clone();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = inner.life.shutdown.cancelled() => return,
        }
        flush_touches(&c).await;
        let now = unix_now();
        let expired = inner.store.sweep(now);
        if expired > 0 {
            inner.metrics.sessions_expired.inc_by(expired as u64);
            tracing::debug!(expired, "sessions expired");
        }
        if c.backup_mode() && c.joined() {
            let view = c.live_members();
            let me = inner.me.node_id.as_str();
            for sid in inner.store.ids() {
                // A swapped-out copy is idle by definition.
                let stale = inner
                    .store
                    .peek(sid, |s| s.last_local_access + CACHE_TTL_SECS < now)
                    .unwrap_or_else(|| inner.store.contains(sid));
                if stale && !ownership::is_owner(sid, &view, inner.cfg.backups, me) {
                    inner.store.remove(sid);
                }
            }
        }
    }
}
