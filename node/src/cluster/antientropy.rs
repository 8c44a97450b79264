//! Drives anti-entropy ([`crate::replication::antientropy`]): a round with a member right
//! after every (re)connection, again at once while a round left differences for later,
//! and with every member each `--anti-entropy-interval`.
//!
//! A round costs the initiator one digest (one pass over its sessions, off the async
//! workers) and one message of `RANGES` hashes; the responder's summary and the
//! exchanges that follow are handled by the core like any other message.

use std::collections::BTreeSet;
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
        if !self.backup_mode() {
            return Box::new(|_| true);
        }
        let view = self.live_members();
        let k = self.inner.cfg.backups;
        let me = self.inner.me.node_id.clone();
        let peer = peer.to_string();
        Box::new(move |sid| {
            let owners = crate::ownership::owners(sid, &view, k);
            owners.contains(&me.as_str()) && owners.contains(&peer.as_str())
        })
    }

    /// Asks for an anti-entropy round with `peer` soon.
    pub(crate) fn anti_entropy_soon(&self, peer: &str) {
        let _ = self.inner.ae_kick.try_send(peer.to_string());
    }

    /// Starts one anti-entropy round with `peer`: sends it this node's digest.
    async fn anti_entropy_round(&self, peer: &str) {
        let Some(link) = self.link_of(peer) else {
            return;
        };
        link.resync
            .store(false, std::sync::atomic::Ordering::Relaxed);
        let this = self.clone();
        let scope = self.ae_scope(peer);
        let digest = tokio::task::spawn_blocking(move || {
            antientropy::digest(&this.inner.store, unix_now(), &scope)
        })
        .await;
        let Ok(buckets) = digest else { return };
        self.inner.metrics.anti_entropy_rounds.inc();
        link.send(
            &self.inner.metrics,
            Message::AeDigest { buckets }.outgoing(),
        )
        .await;
    }
}

/// Runs rounds on kicks and on the interval until shutdown. A node only initiates rounds
/// once it has joined (before, its state transfer is bringing it up to date).
pub(crate) async fn run(c: Cluster, mut kicks: mpsc::Receiver<String>) {
    let inner = c.inner.clone();
    let mut tick = tokio::time::interval(
        inner
            .cfg
            .anti_entropy_interval
            .max(Duration::from_millis(100)),
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ready = inner.ready.subscribe();
    loop {
        let mut due: BTreeSet<String> = BTreeSet::new();
        tokio::select! {
            _ = tick.tick() => {
                due.extend(c.alive_peers().into_iter().map(|(n, _)| n));
            }
            k = kicks.recv() => match k {
                Some(peer) => {
                    tokio::time::sleep(FOLLOW_UP).await;
                    due.insert(peer);
                    while let Ok(p) = kicks.try_recv() {
                        due.insert(p);
                    }
                }
                None => return,
            },
            _ = inner.shutdown.cancelled() => return,
        }
        if !*ready.borrow_and_update() || inner.leaving.load(std::sync::atomic::Ordering::SeqCst) {
            continue;
        }
        for peer in due {
            c.anti_entropy_round(&peer).await;
        }
    }
}

/// A channel for kicks.
pub(crate) fn kicks() -> (mpsc::Sender<String>, mpsc::Receiver<String>) {
    mpsc::channel(KICKS)
}
