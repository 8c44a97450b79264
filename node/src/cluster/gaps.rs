//! Bounds the repairs of delta gaps (pure bookkeeping, no I/O).
//!
//! A delta whose base this node has not seen leaves a gap, repaired by fetching the
//! whole session from the sender a moment later. A peer can send gapped deltas at any
//! rate, so the repairs are bounded: one at a time per session, and at most
//! [`MAX_GAP_REPAIRS`] at once in all. A gap found beyond that is left to anti-entropy,
//! which compares and repairs every session with that peer soon after.

use std::collections::HashSet;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::wire::SessionId;

/// Gap repairs (whole-session fetches) running at once, at most.
pub(crate) const MAX_GAP_REPAIRS: usize = 64;

/// The sessions whose gaps are being repaired.
#[derive(Debug)]
pub(crate) struct GapRepairs {
    max: usize,
    running: Mutex<HashSet<SessionId>>,
}

/// A repair in progress; ends when dropped.
#[derive(Debug)]
pub(crate) struct Repair {
    owner: Arc<GapRepairs>,
    sid: SessionId,
}

impl Drop for Repair {
    fn drop(&mut self) {
        self.owner.running.lock().remove(&self.sid);
    }
}

/// Why no repair was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoRepair {
    /// One is already running for this session.
    Running,
    /// [`MAX_GAP_REPAIRS`] are running: leave it to anti-entropy.
    Busy,
}

impl GapRepairs {
    pub(crate) fn new(max: usize) -> Arc<Self> {
        Arc::new(GapRepairs {
            max,
            running: Mutex::default(),
        })
    }

    /// Starts a repair of `sid`, unless one is running for it or too many are.
    pub(crate) fn start(self: &Arc<Self>, sid: SessionId) -> Result<Repair, NoRepair> {
        let mut r = self.running.lock();
        if r.contains(&sid) {
            return Err(NoRepair::Running);
        }
        if r.len() >= self.max {
            return Err(NoRepair::Busy);
        }
        r.insert(sid);
        Ok(Repair {
            owner: self.clone(),
            sid,
        })
    }

    /// Repairs running now.
    #[cfg(test)]
    pub(crate) fn running(&self) -> usize {
        self.running.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_of_gaps_starts_a_bounded_number_of_repairs() {
        let g = GapRepairs::new(MAX_GAP_REPAIRS);
        // A peer sends 10,000 gapped deltas on 100,000 sessions' worth of ids.
        let mut held = Vec::new();
        let (mut busy, mut dup) = (0, 0);
        for i in 0..10_000i128 {
            match g.start(i % 1000) {
                Ok(r) => held.push(r),
                Err(NoRepair::Busy) => busy += 1,
                Err(NoRepair::Running) => dup += 1,
            }
        }
        assert_eq!(held.len(), MAX_GAP_REPAIRS);
        assert_eq!(g.running(), MAX_GAP_REPAIRS);
        assert!(busy > 0 && dup > 0, "busy {busy}, dup {dup}");
        // The same session twice: one repair.
        assert_eq!(g.start(0).unwrap_err(), NoRepair::Running);
        // Finished repairs free their slots.
        held.clear();
        assert_eq!(g.running(), 0);
        assert!(g.start(0).is_ok());
    }
}
