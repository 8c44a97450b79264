//! Which sessions changed since they were last persisted, and how far persistence got.
//!
//! Every change to a session marks it with a fresh sequence number; a flush takes a
//! snapshot of the marks, writes those sessions' current states, and then clears only the
//! marks it wrote (a session changed again meanwhile keeps its newer mark for the next
//! flush) and publishes the sequence number it covered. A `sync` writer waits for that
//! number to reach its own: the group commit (every writer waiting shares one flush).

use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use parking_lot::RwLock;
use tokio::sync::{watch, Notify};

use crate::model::SessionId;

/// How far persistence got: every change marked at or below `through` is durable;
/// `failures` counts flushes that failed (a waiter stops waiting when it grows).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Marks at or below this are durable.
    pub through: u64,
    /// Flushes that failed so far.
    pub failures: u64,
}

/// A flush failed before the awaited change was durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the change could not be persisted (flush failed)")]
pub struct NotPersisted;

/// The dirty set and the durability watermark.
#[derive(Debug)]
pub struct Dirty {
    marks: DashMap<SessionId, u64>,
    seq: AtomicU64,
    /// Marks take it shared, snapshots exclusive: a snapshot never misses a mark whose
    /// number it covers.
    gate: RwLock<()>,
    progress: watch::Sender<Progress>,
    /// Wakes the flusher early (a sync writer is waiting).
    pub kick: Notify,
}

impl Default for Dirty {
    fn default() -> Self {
        Dirty {
            marks: DashMap::new(),
            seq: AtomicU64::new(0),
            gate: RwLock::new(()),
            progress: watch::channel(Progress::default()).0,
            kick: Notify::new(),
        }
    }
}

/// The marks one flush writes, and the number it covers.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// (session, its mark) for every session changed.
    pub marks: Vec<(SessionId, u64)>,
    /// Every mark at or below this is in `marks` (or superseded by a newer one there).
    pub through: u64,
}

impl Dirty {
    /// Marks a session changed; returns its mark.
    pub fn mark(&self, sid: SessionId) -> u64 {
        let _g = self.gate.read();
        let s = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        self.marks.insert(sid, s);
        s
    }

    /// Whether the session has a change not yet persisted.
    pub fn contains(&self, sid: SessionId) -> bool {
        self.marks.contains_key(&sid)
    }

    /// Sessions with changes not yet persisted.
    pub fn len(&self) -> usize {
        self.marks.len()
    }

    /// Whether every change is persisted.
    pub fn is_empty(&self) -> bool {
        self.marks.is_empty()
    }

    /// The newest mark so far: waiting for it covers every change made before.
    pub fn barrier(&self) -> u64 {
        self.seq.load(Ordering::Relaxed)
    }

    /// The marks to write now.
    pub fn snapshot(&self) -> Snapshot {
        let _g = self.gate.write();
        Snapshot {
            through: self.seq.load(Ordering::Relaxed),
            marks: self.marks.iter().map(|e| (*e.key(), *e.value())).collect(),
        }
    }

    /// The snapshot's sessions are durable: clears their marks (unless changed again)
    /// and wakes the writers it covers.
    pub fn written(&self, snap: &Snapshot) {
        for (sid, m) in &snap.marks {
            self.marks.remove_if(sid, |_, cur| cur == m);
        }
        self.progress
            .send_modify(|p| p.through = p.through.max(snap.through));
    }

    /// A flush failed: its marks stay, waiters are told.
    pub fn failed(&self) {
        self.progress.send_modify(|p| p.failures += 1);
    }

    /// Waits until every change up to `mark` is durable (kicking the flusher), or a flush
    /// fails.
    pub async fn durable(&self, mark: u64) -> Result<(), NotPersisted> {
        let mut rx = self.progress.subscribe();
        let start = *rx.borrow_and_update();
        if start.through >= mark {
            return Ok(());
        }
        self.kick.notify_one();
        let reached = rx
            .wait_for(|p| p.through >= mark || p.failures != start.failures)
            .await
            .map(|p| p.through >= mark);
        match reached {
            Ok(true) => Ok(()),
            _ => Err(NotPersisted),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_after_the_snapshot_keeps_its_mark() {
        let d = Dirty::default();
        d.mark(1);
        d.mark(2);
        let snap = d.snapshot();
        assert_eq!(snap.through, 2);
        d.mark(2); // changed again while the flush runs
        d.written(&snap);
        assert!(!d.contains(1));
        assert!(d.contains(2), "the newer change is still to be written");
        assert_eq!(d.len(), 1);
    }

    #[tokio::test]
    async fn writers_wait_for_the_flush_that_covers_them() {
        let d = std::sync::Arc::new(Dirty::default());
        let m = d.mark(7);
        let waiter = tokio::spawn({
            let d = d.clone();
            async move { d.durable(m).await }
        });
        // The flusher is kicked, flushes, and the writer is released.
        d.kick.notified().await;
        let snap = d.snapshot();
        d.written(&snap);
        assert_eq!(waiter.await.unwrap(), Ok(()));
        // A failed flush releases waiters with an error.
        let m = d.mark(8);
        let waiter = tokio::spawn({
            let d = d.clone();
            async move { d.durable(m).await }
        });
        d.kick.notified().await;
        d.failed();
        assert_eq!(waiter.await.unwrap(), Err(NotPersisted));
    }
}
