//! What each incoming message does. Cheap messages (deltas, acks, touches) are handled
//! inline in the connection's read loop, preserving per-connection order; requests that
//! wait (fetches, state transfer, forwarded sync writes) run in their own tasks.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A transfer this node serves, waiting for its barrier: (request id, the requester's
/// connection, its task permit).
pub(crate) type Serving = (u64, ReplyTx, Option<OwnedSemaphorePermit>);

use super::{Cluster, ReplyTx};
use crate::replication::{
    self,
    apply::{Effect, ForDriver, Handled},
    join::{self, Serve},
};
use crate::store::unix_now;
use crate::wire::{Hello, Message, SessionId, SessionState};

/// Size of one state-transfer chunk.
pub(crate) const CHUNK_BYTES: usize = 256 * 1024;

async fn reply(tx: Option<&ReplyTx>, msg: Message) {
    if let Some(tx) = tx {
        let _ = tx.send(msg.outgoing()).await;
    }
}

/// The replica's gap retry is due ([`crate::replication::replica::Event::RepairGap`]): if
/// the session is still behind, fetch it whole from the delta's sender and merge it.
/// Bounded (see `gaps`): one fetch per session at a time, [`super::gaps::MAX_GAP_REPAIRS`]
/// at once; past that, anti-entropy with the sender repairs it.
pub(crate) fn repair_gap(c: &Cluster, from: String, sid: SessionId) {
    if c.inner.store.with(sid, |s| !s.has_gap()).unwrap_or(true) {
        return;
    }
    let repair = match c.inner.requests.gaps.start(sid) {
        Ok(r) => r,
        Err(super::gaps::NoRepair::Running) => return,
        Err(super::gaps::NoRepair::Busy) => {
            c.anti_entropy_soon(&from, false);
            return;
        }
    };
    let c = c.clone();
    c.clone().spawn(async move {
        let _repair = repair;
        let Some(link) = c.link_of(&from) else {
            return;
        };
        let id = c.next_id();
        let msg = Message::FetchReq {
            id,
            sid,
            min_version: 0,
            wait_ms: 0,
        };
        c.inner.metrics.remote_fetches.inc();
        if let Some(Message::FetchResp {
            session: Some(s), ..
        }) = c
            .request(&from, &link, id, msg, Duration::from_secs(2))
            .await
        {
            c.inner.store.merge(&s);
        }
    });
}

/// Handles one message from `peer`; `reply_tx` is the connection's reply channel (inbound
/// connections only). The replication core decides ([`replication::apply`]); this
/// performs its effects, and runs the flows that wait.
///
/// Requests that wait (fetches, forwarded writes, state transfers) run in their own tasks,
/// at most [`TASKS_PER_CONNECTION`] at once per connection (`tasks`): past that, the
/// connection's read loop waits for one to finish, which pushes back on the peer through
/// TCP instead of letting it spawn without bound.
pub(crate) async fn handle(
    c: &Cluster,
    peer: &Hello,
    msg: Message,
    reply_tx: Option<&ReplyTx>,
    tasks: &Arc<Semaphore>,
) {
    let inner = &c.inner;
    // Only anti-entropy reads the scope; building it (backup mode: a copy of the view) for
    // every delta would be work on the hot path.
    let scope: Box<dyn Fn(SessionId) -> bool + Send + Sync> =
        if matches!(msg, Message::AeDigest { .. } | Message::AeSummary { .. }) {
            c.ae_scope(&peer.node_id)
        } else {
            Box::new(|_| true)
        };
    let handled =
        replication::apply::on_message(&inner.store, &inner.metrics, msg, unix_now(), &scope);
    let msg = match handled {
        Handled::Effects(effects) => {
            perform(c, &peer.node_id, reply_tx, effects).await;
            return;
        }
        Handled::Driver(msg) => msg,
    };
    match msg {
        ForDriver::Forward { ack, delta } => {
            // We are (or were) the session's primary: apply and replicate to the backups.
            let fx =
                replication::apply::apply_delta(&inner.store, &inner.metrics, &delta, unix_now());
            perform(c, &peer.node_id, reply_tx, fx).await;
            let tracker = c.inner.life.tasks.clone();
            let c = c.clone();
            let tx = reply_tx.cloned();
            let permit = permit(tasks).await;
            tracker.spawn(async move {
                let _permit = permit;
                let targets = c.inner.replica.lock().forward_targets(delta.sid);
                // The forwarder asked for an ack exactly when its write is sync.
                let sync = ack != 0;
                let holders = c.send_delta(delta, &targets, sync).await;
                let acked = c.inner.replica.lock().acknowledges(holders);
                if sync && replication::route::forward_acked(acked) {
                    reply(tx.as_ref(), Message::Ack { id: ack }).await;
                }
            });
        }
        ForDriver::FetchReq {
            id,
            sid,
            min_version,
            wait_ms,
        } => {
            let tracker = c.inner.life.tasks.clone();
            let c = c.clone();
            let tx = reply_tx.cloned();
            let permit = permit(tasks).await;
            tracker.spawn(async move {
                let _permit = permit;
                let seen = c.inner.store.seen_through(sid);
                if !replication::fetch::answer_now(min_version, wait_ms, seen) {
                    c.wait_for_version(sid, min_version, Duration::from_millis(wait_ms as u64))
                        .await;
                }
                let session = c.inner.store.state(sid);
                reply(tx.as_ref(), Message::FetchResp { id, session }).await;
            });
        }
        ForDriver::StateReq { id, only_owned } => {
            // The replica runs the barrier, then asks for the snapshot to be streamed
            // (`Event::ServeState` → [`stream_state`]) on this connection. One transfer
            // per requester: a newer request replaces the older one (and its permit).
            let Some(tx) = reply_tx.cloned() else { return };
            let permit = permit(tasks).await;
            inner
                .net
                .serving
                .lock()
                .insert(peer.node_id.clone(), (id, tx, permit));
            let now = c.now_ms();
            c.with_replica(|r| r.on_state_req(now, &peer.node_id, id, only_owned));
        }
        ForDriver::Barrier { id } => {
            // Answer on our own link to the asker, behind everything already queued there.
            if let Some(link) = c.link_of(&peer.node_id) {
                link.send(&inner.metrics, Message::BarrierAck { id }.outgoing())
                    .await;
            } else {
                reply(reply_tx, Message::BarrierAck { id }).await;
            }
        }
        ForDriver::Leaving => {
            tracing::info!(node = %peer.node_id, "member is leaving");
            let link = c
                .with_replica(|r| r.on_leaving(&peer.node_id, peer.incarnation))
                .and_then(|id| {
                    let links = inner.net.links.lock();
                    links.values().find(|l| l.id == id).cloned()
                });
            if let Some(link) = link {
                super::net::remove_member_on(c, &link, "left gracefully");
            }
        }
        ForDriver::LateHello => {
            tracing::warn!(node = %peer.node_id, "unexpected hello after the handshake");
        }
    }
}

/// Most request tasks one connection may have running at once.
pub(crate) const TASKS_PER_CONNECTION: usize = 64;

/// The per-connection task limit.
pub(crate) fn task_limit() -> Arc<Semaphore> {
    Arc::new(Semaphore::new(TASKS_PER_CONNECTION))
}

async fn permit(tasks: &Arc<Semaphore>) -> Option<OwnedSemaphorePermit> {
    tasks.clone().acquire_owned().await.ok()
}

/// Performs the core's effects for a message from `peer`.
async fn perform(c: &Cluster, peer: &str, reply_tx: Option<&ReplyTx>, effects: Vec<Effect>) {
    let inner = &c.inner;
    for e in effects {
        match e {
            Effect::Reply(m) => reply(reply_tx, m).await,
            Effect::Send(m) => {
                if let Some(link) = c.link_of(peer) {
                    link.send(&inner.metrics, m.outgoing()).await;
                }
            }
            Effect::Applied => {
                if inner.signals.waiters.load(Ordering::SeqCst) > 0 {
                    inner.signals.applied.notify_waiters();
                }
            }
            Effect::Gap(sid) => {
                let now = c.now_ms();
                c.with_replica(|r| r.on_gap(now, peer, sid));
            }
            Effect::Resolve(id, m) => c.resolve(id, peer, m),
            Effect::AeAgain { full } => c.anti_entropy_soon(peer, full),
            Effect::Repaired(n) => {
                inner.metrics.anti_entropy_repaired.inc_by(n as u64);
            }
        }
    }
}

/// The replica's barrier for a transfer to `serve.to` is done: streams the snapshot on
/// the requester's connection (chunks of about [`CHUNK_BYTES`], the last one `done`).
pub(crate) fn stream_state(c: &Cluster, serve: Serve) {
    let entry = {
        let mut serving = c.inner.net.serving.lock();
        match serving.get(&serve.to) {
            Some((id, _, _)) if *id == serve.id => serving.remove(&serve.to),
            _ => None,
        }
    };
    let Some((_, tx, permit)) = entry else { return };
    let c = c.clone();
    c.clone().spawn(async move {
        let _permit = permit;
        let Serve { to, id, only_owned } = serve;
        let view = join::view_with(&c.live_members(), &to);
        let backups = c.inner.cfg.backups;
        let (chunk_tx, mut chunk_rx) = tokio::sync::mpsc::channel::<Vec<SessionState>>(4);
        let store = c.inner.store.clone();
        let producer = tokio::task::spawn_blocking(move || {
            store.for_each_chunk(
                CHUNK_BYTES,
                |sid| join::in_snapshot(sid, only_owned, &view, backups, &to),
                |chunk| {
                    let _ = chunk_tx.blocking_send(chunk);
                },
            );
        });
        while let Some(sessions) = chunk_rx.recv().await {
            let chunk = Message::StateChunk {
                id,
                sessions,
                done: false,
            };
            if tx.send(chunk.outgoing()).await.is_err() {
                return;
            }
        }
        let _ = producer.await;
        let last = Message::StateChunk {
            id,
            sessions: vec![],
            done: true,
        };
        let _ = tx.send(last.outgoing()).await;
    });
}
