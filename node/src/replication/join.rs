//! Joining: which members a joining node takes a state transfer from, when it is done
//! (the readiness rule), and how a member serves a transfer (the barrier first). Two
//! state machines with no I/O; the [`super::replica::Replica`] owns both and turns their
//! outputs into events for the driver (`cluster/`) or the simulation.
//!
//! # The readiness rule
//!
//! A joining node is ready only once, for **every member alive in its view, a state
//! transfer from that member's current incarnation completed** (its last `StateChunk`
//! arrived). A member admitted during the join is asked too; a member suspected or
//! removed meanwhile is no longer waited for (it holds nothing this node could reach);
//! a transfer that fails while its member stays alive is asked again after
//! [`RETRY_MS`]. The join starts only once the driver has settled (every discovered
//! candidate dialed once, bounded): a node with no member when it starts is alone.
//! Delta mode asks for every session, backup mode for the sessions the joiner will own.
//! So a node never reports ready while a member it reaches holds a session (that the
//! member held when it served the transfer) that the node lacks. Members reached only
//! after the node became ready (a healed cut, a restart) are reconciled by anti-entropy
//! without taking the node out of service.
//!
//! # Serving a transfer: the barrier
//!
//! Before a member snapshots its sessions for a joiner it sends a `Barrier` to every other
//! live member; each answers `BarrierAck` on its own connection, behind everything it had
//! queued for this member. So every delta a writer sent before it knew the joiner is in
//! the snapshot. The snapshot is taken once every barrier was answered, or its member
//! failed, or [`BARRIER_TIMEOUT_MS`] passed (a slow member delays the join, never blocks
//! it); then the chunks stream, the last one marked `done`.

use std::collections::{BTreeMap, BTreeSet};

use crate::ownership;
use crate::wire::SessionId;

/// Longest a single state transfer may take before it is asked again (ms).
pub const TRANSFER_TIMEOUT_MS: u64 = 120_000;
/// Pause before a failed transfer is asked again from a member still alive (ms).
pub const RETRY_MS: u64 = 1_000;
/// Longest a served transfer waits for its barrier (ms).
pub const BARRIER_TIMEOUT_MS: u64 = 1_000;
/// Transfers served at once (one per requester; more are not answered, and the
/// requester asks again).
pub const MAX_SERVES: usize = 64;
/// Request ids of the replica's own requests (state requests and barriers) have this bit
/// set; the driver's request ids count up from 1 and never reach it.
pub const OWN_ID: u64 = 1 << 63;

/// A state transfer to ask `node` for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The member.
    pub node: String,
    /// The request id (`StateReq { id }`; its last chunk carries it).
    pub id: u64,
}

#[derive(Debug, Clone)]
struct InFlight {
    id: u64,
    incarnation: u64,
    deadline: u64,
}

/// The join of this node; see the module documentation.
#[derive(Debug, Default)]
pub struct Join {
    started_at: Option<u64>,
    joined: bool,
    asked: BTreeMap<String, InFlight>,
    done: BTreeSet<(String, u64)>,
    retry: BTreeMap<String, u64>,
    next: u64,
}

impl Join {
    fn id(&mut self) -> u64 {
        self.next += 1;
        OWN_ID | (self.next << 1)
    }

    /// Whether the join started (the driver settled).
    pub fn started(&self) -> bool {
        self.started_at.is_some()
    }

    /// Whether it completed (once true, stays true).
    pub fn joined(&self) -> bool {
        self.joined
    }

    /// Marks the join done without a transfer (a node that starts a cluster).
    pub fn set_joined(&mut self) {
        self.joined = true;
        self.asked.clear();
        self.retry.clear();
    }

    fn ask(&mut self, now: u64, node: &str, incarnation: u64) -> Option<Request> {
        if self.joined
            || !self.started()
            || self.asked.contains_key(node)
            || self.retry.contains_key(node)
            || self.done.contains(&(node.to_string(), incarnation))
        {
            return None;
        }
        let id = self.id();
        self.asked.insert(
            node.to_string(),
            InFlight {
                id,
                incarnation,
                deadline: now + TRANSFER_TIMEOUT_MS,
            },
        );
        Some(Request {
            node: node.to_string(),
            id,
        })
    }

    /// The driver settled at `now`: ask every member alive now (`alive`: node,
    /// incarnation). The join may complete at once (no member: alone).
    pub fn begin(&mut self, now: u64, alive: &[(String, u64)]) -> Vec<Request> {
        if self.started() || self.joined {
            return vec![];
        }
        self.started_at = Some(now);
        alive
            .iter()
            .filter_map(|(n, inc)| self.ask(now, n, *inc))
            .collect()
    }

    /// `node` (incarnation) was admitted (or readmitted, or restarted): ask it too.
    pub fn on_member_up(&mut self, now: u64, node: &str, incarnation: u64) -> Option<Request> {
        if self
            .asked
            .get(node)
            .is_some_and(|f| f.incarnation != incarnation)
        {
            // A transfer from an earlier incarnation will never finish.
            self.asked.remove(node);
        }
        self.retry.remove(node);
        self.ask(now, node, incarnation)
    }

    /// `node` was suspected or removed: not waited for while it is not alive.
    pub fn on_member_down(&mut self, node: &str) {
        self.asked.remove(node);
        self.retry.remove(node);
    }

    /// The last chunk of transfer `id` arrived from `from`. True when it is this join's.
    pub fn on_done(&mut self, from: &str, id: u64) -> bool {
        match self.asked.get(from) {
            Some(f) if f.id == id => {
                let f = self.asked.remove(from).expect("present");
                self.done.insert((from.to_string(), f.incarnation));
                true
            }
            _ => id & OWN_ID != 0 && id & 1 == 0,
        }
    }

    /// The request to `node` could not be sent at `now` (no link, a full queue): asked
    /// again after [`RETRY_MS`] while it is alive.
    pub fn on_not_sent(&mut self, now: u64, node: &str) {
        if self.asked.remove(node).is_some() {
            self.retry.insert(node.to_string(), now + RETRY_MS);
        }
    }

    /// Transfers past their deadline fail (asked again after [`RETRY_MS`]); retries due
    /// are asked again of the members still alive (`alive`).
    pub fn on_timeout(&mut self, now: u64, alive: &[(String, u64)]) -> Vec<Request> {
        let late: Vec<String> = self
            .asked
            .iter()
            .filter(|(_, f)| f.deadline <= now)
            .map(|(n, _)| n.clone())
            .collect();
        for n in late {
            self.asked.remove(&n);
            self.retry.insert(n, now + RETRY_MS);
        }
        let due: Vec<String> = self
            .retry
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(n, _)| n.clone())
            .collect();
        let mut out = Vec::new();
        for n in due {
            self.retry.remove(&n);
            if let Some((_, inc)) = alive.iter().find(|(a, _)| *a == n) {
                out.extend(self.ask(now, &n, *inc));
            }
        }
        out
    }

    /// Applies the readiness rule: completes the join when it started and a transfer from
    /// every member in `alive` completed. Returns how long the join took (ms) when it
    /// completes now.
    pub fn check(&mut self, now: u64, alive: &[(String, u64)]) -> Option<u64> {
        let started = self.started_at?;
        if self.joined {
            return None;
        }
        let all = alive
            .iter()
            .all(|(n, inc)| self.done.contains(&(n.clone(), *inc)));
        if !all {
            return None;
        }
        self.set_joined();
        Some(now.saturating_sub(started))
    }

    /// The members a transfer from is still missing (for logs and `/cluster`).
    pub fn waiting_for(&self, alive: &[(String, u64)]) -> Vec<String> {
        alive
            .iter()
            .filter(|(n, inc)| !self.done.contains(&(n.clone(), *inc)))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// The earliest deadline.
    pub fn poll_timeout(&self) -> Option<u64> {
        let a = self.asked.values().map(|f| f.deadline).min();
        let r = self.retry.values().copied().min();
        a.into_iter().chain(r).min()
    }
}

/// A served transfer whose barrier is done: stream the snapshot to `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Serve {
    /// The requester.
    pub to: String,
    /// Its request id (every chunk carries it).
    pub id: u64,
    /// Only the sessions it owns (backup mode).
    pub only_owned: bool,
}

#[derive(Debug, Clone)]
struct Serving {
    id: u64,
    only_owned: bool,
    /// Barrier id → the member it was sent to.
    waiting: BTreeMap<u64, String>,
    deadline: u64,
}

/// The transfers this node serves, waiting for their barriers.
#[derive(Debug, Default)]
pub struct Serves {
    serving: BTreeMap<String, Serving>,
    next: u64,
}

impl Serves {
    /// `requester` asked for a transfer (`id`) at `now`; `peers`: the other live members.
    /// Returns the barriers to send (member, barrier id), and the transfer to stream now
    /// when there is nothing to wait for. A second request from the same requester
    /// replaces the first; past [`MAX_SERVES`] requesters the request is not answered.
    pub fn on_request(
        &mut self,
        now: u64,
        requester: &str,
        id: u64,
        only_owned: bool,
        peers: &[String],
    ) -> (Vec<(String, u64)>, Option<Serve>) {
        if !self.serving.contains_key(requester) && self.serving.len() >= MAX_SERVES {
            return (vec![], None);
        }
        let mut waiting = BTreeMap::new();
        for p in peers.iter().filter(|p| *p != requester) {
            self.next += 1;
            waiting.insert(OWN_ID | (self.next << 1) | 1, p.clone());
        }
        let barriers: Vec<(String, u64)> = waiting.iter().map(|(id, p)| (p.clone(), *id)).collect();
        let s = Serving {
            id,
            only_owned,
            waiting,
            deadline: now + BARRIER_TIMEOUT_MS,
        };
        self.serving.insert(requester.to_string(), s);
        let ready = self.release(requester);
        (barriers, ready)
    }

    fn release(&mut self, requester: &str) -> Option<Serve> {
        if !self.serving.get(requester)?.waiting.is_empty() {
            return None;
        }
        let s = self.serving.remove(requester)?;
        Some(Serve {
            to: requester.to_string(),
            id: s.id,
            only_owned: s.only_owned,
        })
    }

    /// `from` answered barrier `id`. `Err(())` when `id` is no barrier of this node;
    /// else the transfer now ready, if any.
    pub fn on_ack(&mut self, from: &str, id: u64) -> Result<Option<Serve>, ()> {
        if id & OWN_ID == 0 || id & 1 == 0 {
            return Err(());
        }
        let requester = self
            .serving
            .iter()
            .find(|(_, s)| s.waiting.get(&id).is_some_and(|p| p == from))
            .map(|(r, _)| r.clone());
        let Some(r) = requester else {
            return Ok(None);
        };
        self.serving
            .get_mut(&r)
            .expect("present")
            .waiting
            .remove(&id);
        Ok(self.release(&r))
    }

    /// `node` failed: its barriers are not waited for, its own requests are dropped.
    pub fn on_peer_down(&mut self, node: &str) -> Vec<Serve> {
        self.serving.remove(node);
        let ids: Vec<String> = self.serving.keys().cloned().collect();
        let mut out = Vec::new();
        for r in ids {
            let s = self.serving.get_mut(&r).expect("present");
            s.waiting.retain(|_, p| p != node);
            out.extend(self.release(&r));
        }
        out
    }

    /// Barriers past their deadline are not waited for any more.
    pub fn on_timeout(&mut self, now: u64) -> Vec<Serve> {
        let due: Vec<String> = self
            .serving
            .iter()
            .filter(|(_, s)| s.deadline <= now)
            .map(|(r, _)| r.clone())
            .collect();
        let mut out = Vec::new();
        for r in due {
            self.serving.get_mut(&r).expect("present").waiting.clear();
            out.extend(self.release(&r));
        }
        out
    }

    /// The earliest deadline.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.serving.values().map(|s| s.deadline).min()
    }
}

/// Whether `sid` belongs in a snapshot for `requester`: every session (delta mode), or
/// those it owns under `view` with it added (backup mode, `k` backups).
pub fn in_snapshot(
    sid: SessionId,
    only_owned: bool,
    view: &[String],
    k: usize,
    requester: &str,
) -> bool {
    !only_owned || ownership::is_owner(sid, view, k, requester)
}

/// `view` with `requester` added (the view a served snapshot's ownership is judged by).
pub fn view_with(view: &[String], requester: &str) -> Vec<String> {
    let mut v = view.to_vec();
    if !v.iter().any(|n| n == requester) {
        v.push(requester.to_string());
        v.sort();
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alive(list: &[(&str, u64)]) -> Vec<(String, u64)> {
        list.iter().map(|(n, i)| (n.to_string(), *i)).collect()
    }

    #[test]
    fn a_join_waits_for_a_transfer_from_every_live_member() {
        let mut j = Join::default();
        let a = alive(&[("b", 1), ("c", 1)]);
        assert_eq!(j.check(0, &a), None, "not started: not joined");
        let reqs = j.begin(10, &a);
        assert_eq!(reqs.len(), 2);
        assert!(reqs.iter().all(|r| r.id & OWN_ID != 0));
        assert!(j.on_done("b", reqs[0].id));
        assert_eq!(j.check(20, &a), None, "c still holds sessions we may lack");
        assert_eq!(j.waiting_for(&a), vec!["c".to_string()]);
        assert!(j.on_done("b", reqs[1].id), "this join's id: consumed ...");
        assert_eq!(
            j.waiting_for(&a),
            vec!["c".to_string()],
            "... not counted for b"
        );
        assert!(j.on_done("c", reqs[1].id));
        assert_eq!(j.check(30, &a), Some(20));
        assert!(j.joined());
        assert_eq!(j.check(40, &a), None, "completes once");
    }

    #[test]
    fn a_member_that_appears_during_the_join_is_asked_too_and_one_that_fails_is_not_waited_for() {
        let mut j = Join::default();
        let reqs = j.begin(0, &alive(&[("b", 1)]));
        let d = j.on_member_up(5, "d", 7).expect("asked");
        assert_eq!(d.node, "d");
        assert!(j.on_member_up(6, "d", 7).is_none(), "asked once");
        j.on_member_down("b");
        assert!(
            j.on_done("b", reqs[0].id),
            "consumed, but no longer counted"
        );
        let now_alive = alive(&[("d", 7)]);
        assert_eq!(j.check(8, &now_alive), None);
        // d restarts: the transfer from its old incarnation never counts.
        let d2 = j.on_member_up(9, "d", 8).expect("asked again");
        assert!(j.on_done("d", d2.id));
        assert_eq!(j.check(10, &alive(&[("d", 8)])), Some(10));
    }

    #[test]
    fn alone_at_the_start_is_joined_at_once_and_a_timed_out_transfer_is_asked_again() {
        let mut j = Join::default();
        assert!(j.begin(0, &[]).is_empty());
        assert_eq!(j.check(0, &[]), Some(0));

        let mut j = Join::default();
        let a = alive(&[("b", 1)]);
        let r = j.begin(0, &a);
        assert_eq!(j.poll_timeout(), Some(TRANSFER_TIMEOUT_MS));
        assert!(
            j.on_timeout(TRANSFER_TIMEOUT_MS, &a).is_empty(),
            "retry later"
        );
        assert_eq!(j.poll_timeout(), Some(TRANSFER_TIMEOUT_MS + RETRY_MS));
        let again = j.on_timeout(TRANSFER_TIMEOUT_MS + RETRY_MS, &a);
        assert_eq!(again.len(), 1);
        assert_ne!(again[0].id, r[0].id);
        assert!(
            j.on_done("b", r[0].id) && j.check(1, &a).is_none(),
            "the old one is stale"
        );
        j.on_not_sent(5, "b");
        assert_eq!(
            j.poll_timeout(),
            Some(5 + RETRY_MS),
            "not sent: asked again soon"
        );
        let third = j.on_timeout(5 + RETRY_MS, &a);
        assert!(j.on_done("b", third[0].id));
        assert!(j.check(2, &a).is_some());
    }

    #[test]
    fn a_transfer_is_served_once_every_barrier_is_answered_or_its_member_failed() {
        let mut s = Serves::default();
        let peers = vec!["a".to_string(), "b".into(), "j".into()];
        let (barriers, now) = s.on_request(0, "j", 42, false, &peers);
        assert!(now.is_none());
        assert_eq!(barriers.len(), 2, "every live member but the joiner");
        let (ba, bb) = (&barriers[0], &barriers[1]);
        assert_eq!(
            s.on_ack("a", bb.1),
            Ok(None),
            "b's barrier answered by a: ignored"
        );
        assert_eq!(s.on_ack(&ba.0, ba.1), Ok(None));
        assert_eq!(s.on_ack("x", 42), Err(()), "not a barrier id");
        let done = s.on_peer_down(&bb.0);
        assert_eq!(
            done,
            vec![Serve {
                to: "j".into(),
                id: 42,
                only_owned: false
            }]
        );
        assert_eq!(s.poll_timeout(), None);
    }

    #[test]
    fn a_barrier_no_one_answers_delays_the_transfer_at_most_its_timeout() {
        let mut s = Serves::default();
        let (_, none) = s.on_request(0, "j", 1, true, &["a".into()]);
        assert!(none.is_none());
        assert!(s.on_timeout(BARRIER_TIMEOUT_MS - 1).is_empty());
        assert_eq!(s.on_timeout(BARRIER_TIMEOUT_MS).len(), 1);
        let (b, now) = s.on_request(0, "j", 2, false, &["j".into()]);
        assert!(b.is_empty() && now.is_some(), "no other member: at once");
        for i in 0..MAX_SERVES {
            s.on_request(0, &format!("r{i}"), 1, false, &["a".into()]);
        }
        assert_eq!(
            s.on_request(0, "late", 1, false, &[]),
            (vec![], None),
            "bounded"
        );
        s.on_peer_down("j");
    }

    #[test]
    fn backup_mode_snapshots_only_what_the_joiner_will_own() {
        let view = view_with(&["a".to_string(), "b".into()], "c");
        assert_eq!(view, vec!["a", "b", "c"]);
        let owned = (0..300)
            .filter(|s| in_snapshot(*s, true, &view, 1, "c"))
            .count();
        assert!(owned > 100 && owned < 300, "{owned}");
        assert!((0..300).all(|s| in_snapshot(s, false, &view, 1, "c")));
    }
}
