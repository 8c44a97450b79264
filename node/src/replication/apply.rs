//! What an incoming message does to this node's state: a pure function from (store,
//! message, clock) to effects. The driver (`cluster/`) and the simulation call the same
//! function; only the flows that wait (fetches for read-your-writes, state transfer,
//! barriers, backup-mode forwarding, leaving) are handed back to the driver.

use crate::metrics::Metrics;
use crate::store::{Applied, Store};
use crate::wire::{Delta, Message, SessionId, SessionState};

use super::antientropy;

/// Sessions per `Put` sent by anti-entropy.
pub const PUT_BATCH: usize = 256;

/// Something the driver must do after a message was handled.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Answer on the connection the message arrived on.
    Reply(Message),
    /// Send to the message's sender, on this node's own link to it.
    Send(Message),
    /// A remote change was applied: wake read-your-writes waiters.
    Applied,
    /// A delta left a hole in the session's versions: look again shortly, then fetch the
    /// whole session from the sender.
    Gap(SessionId),
    /// A reply to an outstanding request of ours.
    Resolve(u64, Message),
    /// The anti-entropy summary was partial: run another round with the sender soon
    /// (full when this one was).
    AeAgain { full: bool },
    /// Sessions repaired by anti-entropy (counted).
    Repaired(usize),
}

/// How a message was handled.
#[derive(Debug)]
pub enum Handled {
    /// Done; perform these effects in order.
    Effects(Vec<Effect>),
    /// A message whose handling waits or needs the driver's membership: the driver's.
    Driver(ForDriver),
}

/// The messages whose handling waits or needs the driver's membership. Every
/// [`Message`] variant is either handled by [`on_message`] or becomes one of these, in
/// one exhaustive `match` (no catch-all): a new variant does not compile until it is
/// routed, and the driver's `match` over this enum is exhaustive too.
#[derive(Debug)]
pub enum ForDriver {
    /// Backup mode: a write forwarded to this node as the session's primary.
    Forward {
        /// Ack id (0: async).
        ack: u64,
        /// The write.
        delta: Delta,
    },
    /// A peer asks for a session (read-your-writes fetch, gap repair).
    FetchReq {
        /// Request id.
        id: u64,
        /// The session.
        sid: SessionId,
        /// The version the asker needs (0: whatever is here).
        min_version: u64,
        /// How long to wait for `min_version` before answering.
        wait_ms: u32,
    },
    /// A joiner asks for a state transfer.
    StateReq {
        /// Request id.
        id: u64,
        /// Only the sessions the asker owns (backup mode).
        only_owned: bool,
    },
    /// A barrier: answer on this node's own link, behind what is queued.
    Barrier {
        /// Request id.
        id: u64,
    },
    /// The sender leaves the cluster.
    Leaving,
    /// A hello after the handshake (a protocol error, logged).
    LateHello,
}

/// Handles `msg` from a peer at `now` (unix seconds, this node's clock). `scope` says
/// which sessions this node and the sender compare in anti-entropy.
pub fn on_message(
    store: &Store,
    metrics: &Metrics,
    msg: Message,
    now: u64,
    scope: &dyn Fn(SessionId) -> bool,
) -> Handled {
    let mut fx = Vec::new();
    match msg {
        Message::Delta { ack, delta } => {
            fx = apply_delta(store, metrics, &delta, now);
            if ack != 0 {
                fx.push(Effect::Reply(Message::Ack { id: ack }));
            }
        }
        Message::Touch(list) => {
            for (sid, expiry) in list {
                store.touch(sid, expiry);
            }
        }
        Message::Put { ack, sessions } => {
            merge_all(store, &sessions, now);
            fx.push(Effect::Applied);
            if ack != 0 {
                fx.push(Effect::Reply(Message::Ack { id: ack }));
            }
        }
        Message::StateChunk { id, sessions, done } => {
            merge_all(store, &sessions, now);
            metrics
                .state_transfer_sessions
                .inc_by(sessions.len() as i64);
            fx.push(Effect::Applied);
            if done {
                let last = Message::StateChunk {
                    id,
                    sessions: vec![],
                    done: true,
                };
                fx.push(Effect::Resolve(id, last));
            }
        }
        Message::Ack { id } => fx.push(Effect::Resolve(id, Message::Ack { id })),
        Message::BarrierAck { id } => fx.push(Effect::Resolve(id, Message::BarrierAck { id })),
        Message::FetchResp { id, session } => {
            fx.push(Effect::Resolve(id, Message::FetchResp { id, session }))
        }
        Message::Ping { nonce } => fx.push(Effect::Reply(Message::Pong { nonce })),
        Message::Pong { .. } => {}
        Message::AeDigest { buckets, settle } => {
            let (ranges, entries, more) =
                antientropy::summarize(store, &buckets, now, settle, scope);
            fx.push(Effect::Reply(Message::AeSummary {
                ranges,
                entries,
                more,
                settle,
            }));
        }
        Message::AeSummary {
            ranges,
            entries,
            more,
            settle,
        } => {
            let plan = antientropy::plan(store, &ranges, &entries, now, settle, scope);
            if !plan.push.is_empty() {
                fx.push(Effect::Repaired(plan.push.len()));
            }
            for batch in plan.push.chunks(PUT_BATCH) {
                let sessions = states(store, batch);
                if !sessions.is_empty() {
                    fx.push(Effect::Send(Message::Put { ack: 0, sessions }));
                }
            }
            if !plan.pull.is_empty() {
                fx.push(Effect::Repaired(plan.pull.len()));
                fx.push(Effect::Send(Message::AePull { sids: plan.pull }));
            }
            if more {
                fx.push(Effect::AeAgain { full: settle == 0 });
            }
        }
        Message::AePull { mut sids } => {
            // A peer cannot make this node copy more than one round's worth.
            sids.truncate(antientropy::MAX_SESSIONS);
            for batch in sids.chunks(PUT_BATCH) {
                let sessions = states(store, batch);
                if !sessions.is_empty() {
                    fx.push(Effect::Reply(Message::Put { ack: 0, sessions }));
                }
            }
        }
        Message::Forward { ack, delta } => {
            return Handled::Driver(ForDriver::Forward { ack, delta })
        }
        Message::FetchReq {
            id,
            sid,
            min_version,
            wait_ms,
        } => {
            return Handled::Driver(ForDriver::FetchReq {
                id,
                sid,
                min_version,
                wait_ms,
            })
        }
        Message::StateReq { id, only_owned } => {
            return Handled::Driver(ForDriver::StateReq { id, only_owned })
        }
        Message::Barrier { id } => return Handled::Driver(ForDriver::Barrier { id }),
        Message::Leaving => return Handled::Driver(ForDriver::Leaving),
        Message::Hello(_) | Message::HelloAck(_) => return Handled::Driver(ForDriver::LateHello),
    }
    Handled::Effects(fx)
}

/// Applies a remote delta (also a forwarded one, backup mode): the waiters to wake and,
/// when it left a hole, the gap to repair.
pub fn apply_delta(store: &Store, metrics: &Metrics, delta: &Delta, now: u64) -> Vec<Effect> {
    metrics.deltas_received.inc();
    let (applied, gap) = store.apply_at(delta, now);
    if applied == Applied::Stale {
        metrics.deltas_stale.inc();
    }
    let mut fx = vec![Effect::Applied];
    if gap {
        metrics.delta_gaps.inc();
        fx.push(Effect::Gap(delta.sid));
    }
    fx
}

fn merge_all(store: &Store, sessions: &[SessionState], now: u64) {
    for s in sessions {
        store.merge_at(s, now);
    }
}

fn states(store: &Store, sids: &[SessionId]) -> Vec<SessionState> {
    sids.iter().filter_map(|s| store.state(*s)).collect()
}
