//! Backup mode: *when* this node copies sessions to their new owners — after a view
//! change, again after a push failed, and once when it leaves (hand-off) — as a state
//! machine with no I/O. *What* is copied to whom is [`super::rereplicate`]'s (pure
//! functions of the store and two views, run by the driver outside the replica's lock,
//! since they read the whole store).
//!
//! One round runs at a time: the driver takes a [`Round`] ([`Rereplication::take`]),
//! pushes its plan (`Put`s, each acked), and reports what failed
//! ([`Rereplication::finished`]). Failed pushes are retried after [`RETRY_MS`] while their
//! target is still a live owner ([`super::rereplicate::still_needed`]); view changes that
//! happen during a round are planned in the next one, from the last view planned.
//! A leaving node runs no rounds: it hands off once ([`handoff_views`]).

use std::collections::HashMap;

use crate::wire::SessionId;

/// Pause before retrying re-replication pushes that failed (ms).
pub const RETRY_MS: u64 = 1_000;

/// Sessions per hand-off / re-replication `Put`.
pub const PUT_BATCH: usize = 256;

/// One round of re-replication for the driver to plan and push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Round {
    /// The view planned last, when the view changed since (plan `old` → `new`).
    pub old: Option<Vec<String>>,
    /// The current view.
    pub new: Vec<String>,
    /// Pushes that failed before, by target: retry those still needed under `new`.
    pub retry: HashMap<String, Vec<SessionId>>,
}

/// See the module documentation.
#[derive(Debug)]
pub struct Rereplication {
    planned: Vec<String>,
    current: Vec<String>,
    retry: HashMap<String, Vec<SessionId>>,
    retry_at: Option<u64>,
    running: bool,
    signalled: bool,
}

impl Rereplication {
    /// Starting from `view`.
    pub fn new(view: Vec<String>) -> Rereplication {
        Rereplication {
            planned: view.clone(),
            current: view,
            retry: HashMap::new(),
            retry_at: None,
            running: false,
            signalled: false,
        }
    }

    /// The live view is now `view`.
    pub fn on_view(&mut self, view: &[String]) {
        self.current = view.to_vec();
    }

    /// Whether a round is due at `now` (ms): the view changed since the last round, or
    /// a retry is due; never while one runs.
    pub fn due(&self, now: u64) -> bool {
        !self.running && (self.planned != self.current || self.retry_at.is_some_and(|t| t <= now))
    }

    /// Whether to tell the driver a round is due at `now`: once per round (a signal not
    /// taken yet is not repeated, and its deadline no longer polled).
    pub fn signal(&mut self, now: u64) -> bool {
        if self.signalled || !self.due(now) {
            return false;
        }
        self.signalled = true;
        true
    }

    /// Takes the round due at `now`, if any (it runs until [`Self::finished`]).
    pub fn take(&mut self, now: u64) -> Option<Round> {
        if !self.due(now) {
            return None;
        }
        self.running = true;
        self.signalled = false;
        let old = (self.planned != self.current).then(|| self.planned.clone());
        self.planned = self.current.clone();
        self.retry_at = None;
        Some(Round {
            old,
            new: self.current.clone(),
            retry: std::mem::take(&mut self.retry),
        })
    }

    /// The round ended at `now`; `failed`: pushes not delivered, by target.
    pub fn finished(&mut self, now: u64, failed: HashMap<String, Vec<SessionId>>) {
        self.running = false;
        for (node, sids) in failed.into_iter().filter(|(_, s)| !s.is_empty()) {
            let list = self.retry.entry(node).or_default();
            list.extend(sids);
            list.sort_unstable();
            list.dedup();
        }
        if !self.retry.is_empty() {
            self.retry_at = Some(now + RETRY_MS);
        }
    }

    /// Whether a round runs.
    pub fn running(&self) -> bool {
        self.running
    }

    /// When a retry is due.
    pub fn poll_timeout(&self) -> Option<u64> {
        if self.running || self.signalled {
            None
        } else {
            self.retry_at
        }
    }
}

/// Leaving: the views to plan the hand-off with (`view` → `view` without `me`).
pub fn handoff_views(view: &[String], me: &str) -> (Vec<String>, Vec<String>) {
    let without = view.iter().filter(|n| *n != me).cloned().collect();
    (view.to_vec(), without)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(ids: &[&str]) -> Vec<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_view_change_makes_one_round_from_the_last_view_planned() {
        let mut r = Rereplication::new(v(&["a", "b", "c"]));
        assert_eq!(r.take(0), None, "nothing changed");
        r.on_view(&v(&["a", "b"]));
        let round = r.take(0).expect("due");
        assert_eq!(round.old, Some(v(&["a", "b", "c"])));
        assert_eq!(round.new, v(&["a", "b"]));
        // Changes during the round wait for it, and are planned from the view it planned.
        r.on_view(&v(&["a"]));
        assert_eq!(r.take(1), None, "one round at a time");
        r.finished(2, HashMap::new());
        let next = r.take(3).expect("the change during the round");
        assert_eq!(next.old, Some(v(&["a", "b"])));
        assert_eq!(next.new, v(&["a"]));
        r.finished(4, HashMap::new());
        assert_eq!(r.poll_timeout(), None);
    }

    #[test]
    fn failed_pushes_are_retried_after_the_pause() {
        let mut r = Rereplication::new(v(&["a", "b"]));
        r.on_view(&v(&["a", "b", "c"]));
        r.take(0).expect("due");
        r.finished(100, HashMap::from([("c".to_string(), vec![3, 1, 3])]));
        assert_eq!(r.poll_timeout(), Some(100 + RETRY_MS));
        assert_eq!(r.take(100 + RETRY_MS - 1), None);
        let round = r.take(100 + RETRY_MS).expect("retry");
        assert_eq!(round.old, None, "the view did not change");
        assert_eq!(round.retry, HashMap::from([("c".to_string(), vec![1, 3])]));
        r.finished(2_000, HashMap::new());
        assert_eq!(r.take(10_000), None, "delivered: nothing more");
        r.on_view(&v(&["a"]));
        assert!(r.signal(10_001));
        assert!(!r.signal(10_002), "signalled once");
        assert!(r.take(10_003).is_some());
    }

    #[test]
    fn the_handoff_plans_the_view_without_the_leaver() {
        let (old, new) = handoff_views(&v(&["a", "b", "c"]), "b");
        assert_eq!(old, v(&["a", "b", "c"]));
        assert_eq!(new, v(&["a", "c"]));
    }
}
