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
/// Longest a single state transfer may take before another peer is tried.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(120);
/// A non-owned copy (backup mode) unused this long is evicted.
const CACHE_TTL_SECS: u64 = 30;
/// Sessions per hand-off / re-replication message.
const PUT_BATCH: usize = 256;
/// Pause before retrying re-replication pushes that failed.
const RETRY_AFTER: Duration = Duration::from_secs(1);

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
            let links = inner.links.lock();
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
            let ib = inner.inbound.lock();
            alive.iter().all(|n| ib.contains_key(n))
        };
        if dialed_back {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Joins: waits for discovery, connects, pulls state, then reports ready.
pub(crate) async fn join(c: Cluster, discovery: Arc<Discovery>) {
    let inner = c.inner.clone();
    tokio::select! {
        _ = discovery.initial_round() => {}
        _ = inner.shutdown.cancelled() => return,
    }
    settle(&c, &discovery).await;
    // Peers that answer but refuse our key: wait (not ready) instead of joining as a
    // second, empty cluster; transfer the state once we can authenticate.
    c.wait_while_isolated().await;
    let started = Instant::now();
    inner.metrics.state_transfer_sessions.set(0);
    let mut peers = c.alive_peers();
    // Prefer peers that had finished joining.
    {
        let r = inner.replica.lock();
        peers.sort_by_key(|(n, _)| (!r.member(n).is_some_and(|m| m.ready), n.clone()));
    }
    if c.backup_mode() {
        let reqs = peers.iter().map(|(node, link)| {
            let id = c.next_id();
            c.request(
                node,
                link,
                id,
                Message::StateReq {
                    id,
                    only_owned: true,
                },
                TRANSFER_TIMEOUT,
            )
        });
        let results = futures::future::join_all(reqs).await;
        let failed = results.iter().filter(|r| r.is_none()).count();
        if failed > 0 {
            tracing::warn!(
                failed,
                "some peers did not complete the state transfer (they left?)"
            );
        }
    } else {
        for (node, link) in &peers {
            let id = c.next_id();
            let r = c
                .request(
                    node,
                    link,
                    id,
                    Message::StateReq {
                        id,
                        only_owned: false,
                    },
                    TRANSFER_TIMEOUT,
                )
                .await;
            if r.is_some() {
                break;
            }
            tracing::warn!(peer = %node, "state transfer failed; trying another peer");
        }
    }
    let secs = started.elapsed().as_secs_f64();
    inner.metrics.state_transfer_seconds.set(secs);
    tracing::info!(
        peers = peers.len(),
        sessions = inner.store.len(),
        seconds = secs,
        "joined: state transfer complete, ready"
    );
    c.with_replica(|r| r.set_joined());
    inner.ready.send_replace(true);
}

/// Leaves gracefully within the drain timeout.
pub(crate) async fn leave(c: Cluster) {
    let inner = c.inner.clone();
    c.with_replica(|r| r.set_leaving());
    let deadline = tokio::time::Instant::now() + inner.cfg.drain_timeout;
    flush_touches(&c).await;
    if c.backup_mode() {
        let view = c.live_members();
        let without: Vec<String> = view
            .iter()
            .filter(|n| **n != inner.me.node_id)
            .cloned()
            .collect();
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
    let discovery = inner.discovery.lock().clone();
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

fn still_needed(
    c: &Cluster,
    failed: HashMap<String, Vec<SessionId>>,
    view: &[String],
) -> HashMap<String, Vec<SessionId>> {
    let inner = &c.inner;
    rereplicate::still_needed(&inner.store, inner.cfg.backups, failed, view, unix_now())
}

/// Backup mode: after every view change, copy sessions to their new owners; retry
/// pushes that failed (a timeout, a broken link) while their target is still an owner.
pub(crate) async fn rereplicate_on_view_change(c: Cluster) {
    let inner = c.inner.clone();
    let mut rx = inner.view.subscribe();
    let mut old = rx.borrow_and_update().clone();
    let mut retry: HashMap<String, Vec<SessionId>> = HashMap::new();
    loop {
        tokio::select! {
            r = rx.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(RETRY_AFTER), if !retry.is_empty() => {}
            _ = inner.shutdown.cancelled() => return,
        }
        let new = rx.borrow_and_update().clone();
        if c.leaving() {
            old = new;
            continue;
        }
        let mut plan = if new != old {
            plan_moves(&c, &old, &new, false)
        } else {
            HashMap::new()
        };
        if !plan.is_empty() {
            let total: usize = plan.values().map(Vec::len).sum();
            tracing::info!(
                sessions = total,
                members = new.len(),
                "membership changed: re-replicating"
            );
        }
        for (node, sids) in still_needed(&c, std::mem::take(&mut retry), &new) {
            let list = plan.entry(node).or_default();
            list.extend(sids);
            list.sort_unstable();
            list.dedup();
        }
        if !plan.is_empty() {
            retry = push_plan(&c, plan).await;
        }
        old = new;
    }
}

async fn flush_touches(c: &Cluster) {
    let inner = &c.inner;
    let touched: Vec<(SessionId, u64)> = std::mem::take(&mut *inner.touched.lock())
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
            _ = inner.shutdown.cancelled() => return,
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
