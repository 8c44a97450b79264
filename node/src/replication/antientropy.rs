//! Anti-entropy: two members find the sessions on which they differ, cheaply, and
//! exchange exactly those.
//!
//! Session ids are hashed into [`RANGES`] ranges; a range's hash is the XOR of
//! `hash(session, fingerprint)` over the live sessions in it ([`crate::store::Session::fingerprint`]).
//! A round:
//!
//! 1. the initiator sends its [`digest`] (`RANGES` × 8 bytes, whatever the session count);
//! 2. the responder compares it with its own and answers with a [`summarize`]: the
//!    `(session, fingerprint)` pairs of the ranges that differ — whole ranges, at most
//!    [`MAX_ENTRIES`] pairs, `more` when some differing ranges were left for the next round;
//! 3. the initiator [`plan`]s: it pushes its copy of every session the responder lacks or
//!    holds differently, and pulls the responder's copy of every session it lacks or holds
//!    differently. Merges are idempotent and commutative, so after one exchange both hold
//!    the merge of the two copies.
//!
//! An idle round (nothing differs) costs one digest and an empty summary: bytes do not
//! grow with the session count, only with the differences. The CPU cost of a digest is
//! one pass over the sessions in scope.
//!
//! The scope (which sessions two members compare) is the caller's: every live session in
//! delta mode, the sessions both own in backup mode. Invalidated sessions are not in any
//! digest (they age out), but a member holding a tombstone for a session its peer lists
//! as live pushes the tombstone, so a lost invalidation is still repaired.

use std::collections::HashSet;

use crate::store::{Store, Summary};
use crate::wire::SessionId;

/// Ranges of the session id space in a digest.
pub const RANGES: usize = 1024;
/// Most `(session, fingerprint)` pairs in one summary (a budget per round).
pub const MAX_ENTRIES: usize = 16_384;
/// Most sessions pulled or pushed by one round.
pub const MAX_SESSIONS: usize = 16_384;
/// Periodic rounds leave out sessions changed less than this long ago (seconds): their
/// deltas may still be in flight, and under load comparing them would only find
/// differences that are about to vanish. Rounds after a (re)connection, and every
/// [`FULL_EVERY`]th periodic round, compare every session (`settle` 0), so a session
/// that is written without pause is still repaired.
pub const SETTLE_SECS: u8 = 2;
/// Every this many periodic rounds with a member, one is full.
pub const FULL_EVERY: u64 = 6;

/// Whether anti-entropy compares this copy at `now`. Works on [`Summary`]s, which the
/// store keeps for swapped-out sessions too: a session on disk only is compared like any
/// other, without being read back (and without looking like a difference).
fn compared(s: &Summary, now: u64, settle: u8) -> bool {
    !s.is_dead(now) && s.changed_at + settle as u64 <= now
}

/// Which rounds are due with whom: the anti-entropy schedule of one node, shared by the
/// driver and the simulation. A round is *full* (compares every session, also those
/// still being written) after a (re)connection, after a queue overflow, while a full
/// round left differences for later, and every [`FULL_EVERY`]th period.
#[derive(Debug, Clone)]
pub struct Schedule<P: Ord> {
    periods: u64,
    due: std::collections::BTreeMap<P, bool>,
}

impl<P: Ord> Default for Schedule<P> {
    fn default() -> Self {
        Schedule {
            periods: 0,
            due: Default::default(),
        }
    }
}

impl<P: Ord> Schedule<P> {
    /// An `--anti-entropy-interval` passed: a round with every live peer; `dropped` says
    /// whether messages to that peer were dropped since (its round is then full).
    pub fn period(&mut self, peers: impl IntoIterator<Item = (P, bool)>) {
        self.periods += 1;
        #[allow(clippy::manual_is_multiple_of)] // u64::is_multiple_of is newer than the MSRV
        let full = self.periods % FULL_EVERY == 0;
        for (p, dropped) in peers {
            self.kick(p, full || dropped);
        }
    }

    /// A round with `peer` is wanted (a (re)connection, a partial round).
    pub fn kick(&mut self, peer: P, full: bool) {
        *self.due.entry(peer).or_default() |= full;
    }

    /// The rounds to start now: (peer, full).
    pub fn take(&mut self) -> Vec<(P, bool)> {
        std::mem::take(&mut self.due).into_iter().collect()
    }
}

/// The range a session id falls in.
pub fn range_of(sid: SessionId) -> u16 {
    (xxhash_rust::xxh3::xxh3_64(&sid.to_le_bytes()) >> 54) as u16
}

fn mix(sid: SessionId, fp: u64) -> u64 {
    let mut b = [0u8; 24];
    b[..16].copy_from_slice(&sid.to_le_bytes());
    b[16..].copy_from_slice(&fp.to_le_bytes());
    xxhash_rust::xxh3::xxh3_64(&b)
}

/// One hash per range over the live sessions for which `scope` holds, leaving out those
/// changed less than `settle` seconds before `now`.
pub fn digest(store: &Store, now: u64, settle: u8, scope: &dyn Fn(SessionId) -> bool) -> Vec<u64> {
    let mut d = vec![0u64; RANGES];
    store.for_each_summary(|sid, s| {
        if compared(&s, now, settle) && scope(sid) {
            d[range_of(sid) as usize] ^= mix(sid, s.fingerprint);
        }
    });
    d
}

/// The responder's answer to a digest: `(ranges listed, entries, more)`. A digest of the
/// wrong size is answered as if every range differed (still bounded by the budget).
pub fn summarize(
    store: &Store,
    theirs: &[u64],
    now: u64,
    settle: u8,
    scope: &dyn Fn(SessionId) -> bool,
) -> (Vec<u16>, Vec<(SessionId, u64)>, bool) {
    let mine = digest(store, now, settle, scope);
    let differ: Vec<u16> = (0..RANGES)
        .filter(|&r| theirs.get(r) != Some(&mine[r]))
        .map(|r| r as u16)
        .collect();
    if differ.is_empty() {
        return (vec![], vec![], false);
    }
    let wanted: HashSet<u16> = differ.iter().copied().collect();
    let mut per_range: std::collections::BTreeMap<u16, Vec<(SessionId, u64)>> =
        differ.iter().map(|r| (*r, Vec::new())).collect();
    store.for_each_summary(|sid, s| {
        if !compared(&s, now, settle) || !scope(sid) {
            return;
        }
        let r = range_of(sid);
        if wanted.contains(&r) {
            if let Some(v) = per_range.get_mut(&r) {
                v.push((sid, s.fingerprint));
            }
        }
    });
    let mut ranges = Vec::new();
    let mut entries = Vec::new();
    let mut more = false;
    for (r, list) in per_range {
        // Whole ranges only; always at least one (a range larger than the budget is sent
        // whole rather than never).
        if !ranges.is_empty() && entries.len() + list.len() > MAX_ENTRIES {
            more = true;
            continue;
        }
        ranges.push(r);
        entries.extend(list);
    }
    (ranges, entries, more)
}

/// What the initiator does with a summary.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Sessions to send to the responder (it lacks them or holds them differently).
    pub push: Vec<SessionId>,
    /// Sessions to ask the responder for (this node lacks them or holds them differently).
    pub pull: Vec<SessionId>,
}

impl Plan {
    /// Nothing to exchange.
    pub fn is_empty(&self) -> bool {
        self.push.is_empty() && self.pull.is_empty()
    }
}

/// Compares the responder's entries for `ranges` with this node's sessions.
pub fn plan(
    store: &Store,
    ranges: &[u16],
    entries: &[(SessionId, u64)],
    now: u64,
    settle: u8,
    scope: &dyn Fn(SessionId) -> bool,
) -> Plan {
    let listed: HashSet<u16> = ranges.iter().copied().collect();
    let theirs: std::collections::HashMap<SessionId, u64> = entries
        .iter()
        .filter(|(sid, _)| listed.contains(&range_of(*sid)))
        .copied()
        .collect();
    let mut p = Plan::default();
    for (&sid, &fp) in &theirs {
        match store
            .summary(sid)
            .map(|s| (s.fingerprint, s.is_dead(now), s.deleted))
        {
            None => p.pull.push(sid),
            // An invalidation they have not seen: send the tombstone.
            Some((_, _, true)) => p.push.push(sid),
            Some((mine, _, false)) if mine != fp => {
                p.pull.push(sid);
                p.push.push(sid);
            }
            // Expired here (its expiry never grew on this node): take theirs, which
            // carries the longer expiry.
            Some((_, true, false)) => p.pull.push(sid),
            Some(_) => {}
        }
    }
    store.for_each_summary(|sid, s| {
        if compared(&s, now, settle)
            && listed.contains(&range_of(sid))
            && !theirs.contains_key(&sid)
            && scope(sid)
        {
            p.push.push(sid);
        }
    });
    p.push.sort_unstable();
    p.pull.sort_unstable();
    p.push.truncate(MAX_SESSIONS);
    p.pull.truncate(MAX_SESSIONS);
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Delta, Stamp};
    use bytes::Bytes;

    const NOW: u64 = 1_000;

    fn write(store: &Store, sid: SessionId, counter: u64, origin: u32, v: &str) {
        store.apply_at(
            &Delta {
                sid,
                stamp: Stamp { counter, origin },
                base: counter - 1,
                set: vec![("a".into(), Bytes::copy_from_slice(v.as_bytes()))],
                removed: vec![],
                expiry: Some(NOW + 600),
                invalidate: false,
            },
            NOW - 10,
        );
    }

    fn all(_: SessionId) -> bool {
        true
    }

    /// One full round between `a` (initiator) and `b`, merging what the plan moves.
    fn round(a: &Store, b: &Store) -> (Plan, bool) {
        let (ranges, entries, more) = summarize(
            b,
            &digest(a, NOW, SETTLE_SECS, &all),
            NOW,
            SETTLE_SECS,
            &all,
        );
        let p = plan(a, &ranges, &entries, NOW, SETTLE_SECS, &all);
        for sid in &p.push {
            b.merge_at(&a.state(*sid).unwrap(), NOW - 10);
        }
        for sid in &p.pull {
            a.merge_at(&b.state(*sid).unwrap(), NOW - 10);
        }
        (p, more)
    }

    #[test]
    fn equal_stores_exchange_nothing_but_the_digest() {
        let (a, b) = (Store::new(), Store::new());
        for sid in 0..10_000 {
            write(&a, sid, 1, 1, "x");
            write(&b, sid, 1, 1, "x");
        }
        let (ranges, entries, more) = summarize(&b, &digest(&a, NOW, 0, &all), NOW, 0, &all);
        assert!(ranges.is_empty() && entries.is_empty() && !more);
    }

    #[test]
    fn one_round_repairs_differences_both_ways() {
        let (a, b) = (Store::new(), Store::new());
        for sid in 0..1_000 {
            write(&a, sid, 1, 1, "x");
            write(&b, sid, 1, 1, "x");
        }
        write(&a, 5, 2, 1, "only on a");
        write(&b, 6, 2, 2, "only on b");
        write(&a, 7, 2, 1, "a's");
        write(&b, 7, 2, 2, "b's");
        write(&b, 5_000, 1, 2, "new on b");
        let (p, _) = round(&a, &b);
        assert!(!p.is_empty());
        // Only the differing sessions moved, not the ranges' other members: 5 and 7 both
        // ways (held differently), 6 and 5,000 pulled.
        assert_eq!(p.push, vec![5, 6, 7], "{p:?}");
        assert_eq!(p.pull, vec![5, 6, 7, 5_000], "{p:?}");
        for sid in [5, 6, 7, 5_000] {
            assert_eq!(
                a.with(sid, |s| s.fingerprint()),
                b.with(sid, |s| s.fingerprint()),
                "session {sid}"
            );
        }
        let (p, _) = round(&a, &b);
        assert!(p.is_empty(), "converged after one round: {p:?}");
    }

    #[test]
    fn large_differences_converge_within_the_budget_per_round() {
        let (a, b) = (Store::new(), Store::new());
        for sid in 0..20_000 {
            write(&b, sid, 1, 2, "b");
        }
        let mut rounds = 0;
        loop {
            let (p, more) = round(&a, &b);
            assert!(p.pull.len() <= MAX_SESSIONS);
            rounds += 1;
            if p.is_empty() && !more {
                break;
            }
            assert!(rounds < 20, "no convergence");
        }
        assert_eq!(a.len(), 20_000);
    }

    #[test]
    fn a_tombstone_repairs_a_missed_invalidation() {
        let (a, b) = (Store::new(), Store::new());
        write(&a, 1, 1, 1, "x");
        write(&b, 1, 1, 1, "x");
        a.apply_at(
            &Delta {
                sid: 1,
                stamp: Stamp {
                    counter: 2,
                    origin: 1,
                },
                base: 1,
                set: vec![],
                removed: vec![],
                expiry: None,
                invalidate: true,
            },
            NOW - 10,
        );
        round(&a, &b);
        assert!(b.with(1, |s| s.deleted.is_some()).unwrap());
    }

    #[test]
    fn sessions_still_changing_are_left_for_a_later_round() {
        let (a, b) = (Store::new(), Store::new());
        write(&b, 1, 1, 2, "settled");
        b.apply_at(
            &Delta {
                sid: 2,
                stamp: Stamp {
                    counter: 1,
                    origin: 2,
                },
                base: 0,
                set: vec![("a".into(), Bytes::from_static(b"just now"))],
                removed: vec![],
                expiry: Some(NOW + 600),
                invalidate: false,
            },
            NOW,
        );
        let (p, _) = round(&a, &b);
        assert_eq!(p.pull, vec![1], "only the settled session: {p:?}");
    }

    #[test]
    fn every_sixth_period_and_every_kick_for_a_reconnection_are_full() {
        let mut s = Schedule::default();
        for i in 1..=FULL_EVERY {
            s.period([("a", false), ("b", i == 2)]);
            let due = s.take();
            let full = i == FULL_EVERY;
            assert_eq!(due, vec![("a", full), ("b", full || i == 2)], "period {i}");
        }
        s.kick("a", false);
        s.kick("a", true);
        s.kick("b", false);
        assert_eq!(s.take(), vec![("a", true), ("b", false)]);
        assert!(s.take().is_empty());
    }

    #[test]
    fn a_malformed_digest_is_answered_within_the_budget() {
        let b = Store::new();
        for sid in 0..50_000 {
            write(&b, sid, 1, 2, "b");
        }
        let (ranges, entries, more) = summarize(&b, &[1, 2, 3], NOW, 0, &all);
        assert!(more && !ranges.is_empty());
        assert!(entries.len() <= MAX_ENTRIES + 200);
    }
}
