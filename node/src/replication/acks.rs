//! When a sync write may be acknowledged to the client.
//!
//! A sync write waits for an ack from every target that is live when it is sent; a
//! target that is suspected meanwhile (its link silent for the member timeout, or
//! broken) stops being waited for. So a sync write never waits longer than the member
//! timeout for a frozen or cut peer — and, unless `min_members` asks for more, a node
//! that lost every peer acknowledges writes that only it holds. With `min_members = m`
//! the write is acknowledged only when at least `m` members (the writer included) hold
//! it; otherwise the client gets an error (and may retry elsewhere), even though the
//! write was applied here and may still spread.

use std::collections::BTreeSet;

/// One sync write waiting for acks.
#[derive(Debug, Clone)]
pub struct SyncWrite {
    waiting: BTreeSet<String>,
    acked: usize,
}

/// How a sync write ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Still waiting.
    Pending,
    /// Held by enough members: acknowledge.
    Acknowledged,
    /// Every target answered or was suspected, but fewer than `min_members` hold it.
    TooFewReplicas,
}

impl SyncWrite {
    /// A write sent to `targets`.
    pub fn new(targets: impl IntoIterator<Item = String>) -> Self {
        SyncWrite {
            waiting: targets.into_iter().collect(),
            acked: 0,
        }
    }

    /// `peer` acked.
    pub fn ack(&mut self, peer: &str) {
        if self.waiting.remove(peer) {
            self.acked += 1;
        }
    }

    /// `peer` was suspected: no longer waited for.
    pub fn peer_down(&mut self, peer: &str) {
        self.waiting.remove(peer);
    }

    /// Members holding the write, the writer included.
    pub fn holders(&self) -> usize {
        self.acked + 1
    }

    /// Where the write stands, given `min_members` (0 or 1: no minimum).
    pub fn outcome(&self, min_members: usize) -> Outcome {
        if !self.waiting.is_empty() {
            return Outcome::Pending;
        }
        verdict(self.holders(), min_members)
    }
}

/// Whether a write held by `holders` members (the writer included) may be acknowledged.
pub fn verdict(holders: usize, min_members: usize) -> Outcome {
    if holders >= min_members {
        Outcome::Acknowledged
    } else {
        Outcome::TooFewReplicas
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_only_for_live_targets() {
        let mut w = SyncWrite::new(["b".to_string(), "c".to_string()]);
        w.ack("b");
        assert_eq!(w.outcome(0), Outcome::Pending);
        w.peer_down("c");
        assert_eq!(w.outcome(0), Outcome::Acknowledged);
        assert_eq!(w.outcome(2), Outcome::Acknowledged);
        assert_eq!(w.outcome(3), Outcome::TooFewReplicas);
        w.ack("c");
        assert_eq!(
            w.holders(),
            2,
            "an ack after the suspicion is not counted twice"
        );
    }
}
