//! Drives anti-entropy ([`crate::replication::antientropy`]): a full round with a member
//! right after every (re)connection, again at once while a round left differences for
//! later, and with every member each `--anti-entropy-interval` (leaving out sessions
//! still being written, except every `FULL_EVERY`th round).
//!
//! A round costs the initiator one digest (one pass over its sessions, off the async
//! workers) and one message of `RANGES` hashes; the responder's summary and the
//! exchanges that follow are handled by the core like any other message.

use std::time::Duration;

use tokio::sync::mpsc;

use super::Cluster;
use crate::replication::antientropy;
use crate::store::unix_now;
use crate::wire::{Message, SessionId};

/// Kicks queued at most (a kick per member is enough; more are dropped).
pub(crate) const KICKS: usize = 1024;
/// Pause before a follow-up round (lets the previous round's pushes land first).
const FOLLOW_UP: Duration = Duration::from_millis(50);

impl Cluster {
    /// Which sessions this node compares with `peer`: every session in delta mode; in
    /// backup mode, those both own under the current view.
    pub(crate) fn ae_scope(&self, peer: &str) -> Box<dyn Fn(SessionId) -> bool + Send + Sync> {
        self.inner.replica.lock().ae_scope(peer)
    }

    /// Asks for an anti-entropy round with `peer` soon; `full`: compare every session,
    /// also those changed in the last seconds.
    pub(crate) fn anti_entropy_soon(&self, peer: &str, full: bool) {
        let _ = self.inner.net.ae_kick.try_send((peer.to_string(), full));
    }

    /// Starts one anti-entropy round with `peer`: sends it this node's digest.
    async fn anti_entropy_round(&self, peer: &str, full: bool) {
        let Some(link) = self.link_of(peer) else {
            return;
        };
        // Only a full round answers a queue overflow (a settled one skips the sessions
        // being written, which are the ones the dropped deltas were about).
        if full {
            link.resync
                .store(false, std::sync::atomic::Ordering::Relaxed);
        }
        let this = self.clone();
        let scope = self.ae_scope(peer);
        let settle = if full { 0 } else { antientropy::SETTLE_SECS };
        let digest = tokio::task::spawn_blocking(move || {
            antientropy::digest(&this.inner.store, unix_now(), settle, &scope)
        })
        .await;
        let Ok(buckets) = digest else { return };
        self.inner.metrics.anti_entropy_rounds.inc();
        link.send(
            &self.inner.metrics,
            Message::AeDigest { buckets, settle }.outgoing(),
        )
        .await;
    }
}

/// Runs rounds on kicks and on the interval until shutdown. A node only initiates rounds
/// once it has joined (before, its state transfer is bringing it up to date).
pub(crate) async fn run(c: Cluster, mut kicks: mpsc::Receiver<Kick>) {
    let inner = c.inner.clone();
    let mut tick = tokio::time::interval(
        inner
            .cfg
            .anti_entropy_interval
            .max(Duration::from_millis(100)),
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ready = inner.signals.ready.subscribe();
    let mut schedule = antientropy::Schedule::default();
    loop {
        tokio::select! {
            _ = tick.tick() => {
                // A link that dropped messages (its queue overflowed) gets a full round.
                schedule.period(c.alive_peers().into_iter().map(|(n, link)| {
                    let dropped = link.resync.load(std::sync::atomic::Ordering::Relaxed);
                    (n, dropped)
                }));
            }
            k = kicks.recv() => match k {
                Some((peer, full)) => {
                    tokio::time::sleep(FOLLOW_UP).await;
                    schedule.kick(peer, full);
                    while let Ok((p, f)) = kicks.try_recv() {
                        schedule.kick(p, f);
                    }
                }
                None => return,
            },
            _ = inner.life.shutdown.cancelled() => return,
        }
        if !*ready.borrow_and_update() || c.leaving() {
            continue;
        }
        for (peer, full) in schedule.take() {
            c.anti_entropy_round(&peer, full).await;
        }
    }
}

/// A request for a round: the member, and whether it is full.
pub(crate) type Kick = (String, bool);

/// A channel for kicks.
pub(crate) fn kicks() -> (mpsc::Sender<Kick>, mpsc::Receiver<Kick>) {
    mpsc::channel(KICKS)
}
