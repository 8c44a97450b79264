//! The replica: this node's member table, its live view, readiness, and the sync writes
//! waiting for acks, as one state machine with no sockets, tasks, locks or clock of its
//! own (quinn-proto's shape: events and time go in, effects are polled out).
//!
//! The driver (`cluster/`) holds it behind one lock; the simulation ([`super::sim`])
//! drives the same type through its fault schedules. Inputs:
//! - [`Replica::peer_up`] — a handshake completed on an outbound link;
//! - [`Replica::peer_suspect`] / [`Replica::peer_removed`] — that link broke, or a
//!   connect failed; [`Replica::on_leaving`] — the peer said goodbye;
//! - [`Replica::start_sync`] / [`Replica::on_ack`] — a sync write sent / one target acked;
//! - [`Replica::on_timeout`] — time passed (sync deadlines).
//!
//! Outputs: [`Replica::poll_event`] (view changes, finished sync writes, peers whose
//! outstanding requests fail) and [`Replica::poll_timeout`] (the next deadline).
//!
//! # When a sync write is acknowledged, and what that promises
//!
//! A sync write waits for every target live when it was sent. A target stops being waited
//! for when it acks, when it is suspected or removed (its link broke or was silent for
//! the member timeout), or at the sync timeout. It then ends with `holders` = the writer
//! plus the targets that acked; it is acknowledged when `holders >= min_members`.
//! A write that ended with no peer ack ([`SyncDone::alone`]) is held by its writer alone:
//! it is the only kind of acknowledged write that dies with one node. Precisely: an
//! acknowledged sync write is lost only if every one of its `holders` loses it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;

use tribe_api::MemberState;

use crate::ownership;
use crate::wire::SessionId;

use super::fetch::FetchPlan;
use super::route::{self, ForwardRetry, Route};

/// Names one outbound link of the driver (a member is reachable through it).
pub type LinkId = u64;

/// A peer admitted after a handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Node id.
    pub node_id: String,
    /// Incarnation (start time, unix ms).
    pub incarnation: u64,
    /// Replication address it advertises.
    pub addr: SocketAddr,
    /// Alive or suspect.
    pub state: MemberState,
    /// Whether it had finished joining when it said hello.
    pub ready: bool,
    /// The driver's link to it.
    pub link: LinkId,
}

/// What the replica needs to know of the configuration.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// This node's id.
    pub me: String,
    /// Backup mode (else delta mode).
    pub backup_mode: bool,
    /// Backups per session (backup mode).
    pub backups: usize,
    /// `--min-members` (0 or 1: off).
    pub min_members: usize,
    /// `--send-mode sync`.
    pub sync: bool,
    /// `--sync-timeout` (ms).
    pub sync_timeout_ms: u64,
}

/// How a sync write's wait ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncDone {
    /// The write's ack id.
    pub id: u64,
    /// Members holding it as far as this node knows: itself and the targets that acked.
    pub holders: usize,
    /// No peer acked: only this node is known to hold it.
    pub alone: bool,
    /// Some target was still waited for at the sync timeout.
    pub timed_out: bool,
    /// Whether it may be acknowledged (`holders >= min_members`).
    pub acknowledged: bool,
}

/// Something the driver must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The live view (sorted ids, this node included) changed.
    ViewChanged(Vec<String>),
    /// A sync write's wait ended.
    SyncDone(SyncDone),
    /// `node` was suspected or removed: requests waiting for its replies fail now.
    PeerFailed(String),
    /// `node` was (re)admitted: compare everything with it soon (full anti-entropy).
    Resync(String),
    /// A delta from `from` left a hole in `sid` [`GAP_RETRY_MS`] ago: if the session is
    /// still behind, fetch it whole from `from` (`FetchReq`, no wait) and merge it.
    RepairGap {
        /// The delta's sender.
        from: String,
        /// The session.
        sid: SessionId,
    },
}

/// How long a gap may stay before the session is fetched from the delta's sender (ms):
/// deltas on different links may simply be reordered, so look again shortly first.
pub const GAP_RETRY_MS: u64 = 200;

/// Gaps waiting for their retry, at most (more are left to anti-entropy).
pub const MAX_GAPS_WAITING: usize = 1024;

/// The outcome of [`Replica::peer_up`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Admitted; `new`: not a member before (else a reconnection or a new incarnation).
    Admitted {
        /// Not a member before.
        new: bool,
        /// A member before, with another incarnation (it restarted).
        restarted: bool,
    },
    /// That incarnation said goodbye: not admitted.
    Left,
}

#[derive(Debug, Clone)]
struct SyncWait {
    waiting: BTreeSet<String>,
    acked: usize,
    deadline: u64,
}

/// See the module documentation.
#[derive(Debug)]
pub struct Replica {
    cfg: ReplicaConfig,
    members: BTreeMap<String, Member>,
    left: HashSet<(String, u64)>,
    view: Vec<String>,
    syncs: HashMap<u64, SyncWait>,
    /// Gaps to look at again: (sender, session) → when.
    gaps: BTreeMap<(String, SessionId), u64>,
    events: VecDeque<Event>,
    joined: bool,
    draining: bool,
    leaving: bool,
}

impl Replica {
    /// A replica alone (its view is itself), not joined yet.
    pub fn new(cfg: ReplicaConfig) -> Replica {
        Replica {
            view: vec![cfg.me.clone()],
            cfg,
            members: BTreeMap::new(),
            left: HashSet::new(),
            syncs: HashMap::new(),
            gaps: BTreeMap::new(),
            events: VecDeque::new(),
            joined: false,
            draining: false,
            leaving: false,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ReplicaConfig {
        &self.cfg
    }

    // ------------------------------------------------------------ membership

    /// A handshake with `node` completed on `link`.
    pub fn peer_up(
        &mut self,
        node: &str,
        incarnation: u64,
        addr: SocketAddr,
        ready: bool,
        link: LinkId,
    ) -> Admission {
        if self.left.contains(&(node.to_string(), incarnation)) {
            return Admission::Left;
        }
        let old = self.members.get(node);
        let admission = Admission::Admitted {
            new: old.is_none(),
            restarted: old.is_some_and(|m| m.incarnation != incarnation),
        };
        self.members.insert(
            node.to_string(),
            Member {
                node_id: node.to_string(),
                incarnation,
                addr,
                state: MemberState::Alive,
                ready,
                link,
            },
        );
        self.publish_view();
        // Whatever either side missed while apart (a cut, a freeze, a restart) is compared
        // and exchanged now, not only when the session is next written.
        self.events.push_back(Event::Resync(node.to_string()));
        admission
    }

    /// The link `link` to `node` broke or went silent: the member is suspect (not in the
    /// view, not waited for). False when that link no longer is the member's.
    pub fn peer_suspect(&mut self, node: &str, link: LinkId) -> bool {
        match self.members.get_mut(node) {
            Some(m) if m.link == link && m.state == MemberState::Alive => {
                m.state = MemberState::Suspect;
            }
            _ => return false,
        }
        self.peer_failed(node);
        self.publish_view();
        true
    }

    /// The member reached through `link` is gone (a failed connect, a closed link).
    pub fn peer_removed(&mut self, link: LinkId) -> Option<Member> {
        let node = self
            .members
            .values()
            .find(|m| m.link == link)
            .map(|m| m.node_id.clone())?;
        let m = self.members.remove(&node)?;
        self.peer_failed(&node);
        self.publish_view();
        Some(m)
    }

    /// `node` (incarnation `incarnation`) said goodbye: never re-admitted; its link, if
    /// it still is a member, to remove ([`Replica::peer_removed`]).
    pub fn on_leaving(&mut self, node: &str, incarnation: u64) -> Option<LinkId> {
        self.left.insert((node.to_string(), incarnation));
        self.members
            .get(node)
            .filter(|m| m.incarnation == incarnation)
            .map(|m| m.link)
    }

    /// Whether that incarnation said goodbye.
    pub fn has_left(&self, node: &str, incarnation: u64) -> bool {
        self.left.contains(&(node.to_string(), incarnation))
    }

    fn peer_failed(&mut self, node: &str) {
        self.events.push_back(Event::PeerFailed(node.to_string()));
        // Its gaps are anti-entropy's to repair once it is back.
        self.gaps.retain(|(from, _), _| from != node);
        let ids: Vec<u64> = self
            .syncs
            .iter()
            .filter(|(_, w)| w.waiting.contains(node))
            .map(|(id, _)| *id)
            .collect();
        // In id order: events come out the same way on every run (the simulation replays).
        let mut ids = ids;
        ids.sort_unstable();
        for id in ids {
            if let Some(w) = self.syncs.get_mut(&id) {
                w.waiting.remove(node);
            }
            self.settle(id, false);
        }
    }

    fn publish_view(&mut self) {
        let mut ids: Vec<String> = self
            .members
            .values()
            .filter(|m| m.state == MemberState::Alive)
            .map(|m| m.node_id.clone())
            .collect();
        ids.push(self.cfg.me.clone());
        ids.sort();
        ids.dedup();
        if ids != self.view {
            self.view = ids.clone();
            self.events.push_back(Event::ViewChanged(ids));
        }
    }

    /// Every member, alive or suspect.
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    /// One member.
    pub fn member(&self, node: &str) -> Option<&Member> {
        self.members.get(node)
    }

    /// Alive members other than this node, with their links.
    pub fn alive_peers(&self) -> Vec<(String, LinkId)> {
        self.members
            .values()
            .filter(|m| m.state == MemberState::Alive)
            .map(|m| (m.node_id.clone(), m.link))
            .collect()
    }

    /// The link to `node` while it is alive.
    pub fn link_of(&self, node: &str) -> Option<LinkId> {
        self.members
            .get(node)
            .filter(|m| m.state == MemberState::Alive)
            .map(|m| m.link)
    }

    /// Sorted ids of the live members, this node included.
    pub fn view(&self) -> &[String] {
        &self.view
    }

    /// Whether enough members are live for writes (`--min-members`).
    pub fn has_quorum(&self) -> bool {
        self.cfg.min_members <= 1 || self.view.len() >= self.cfg.min_members
    }

    /// Owners of `sid` under the current view (backup mode), primary first.
    pub fn owners(&self, sid: SessionId) -> Vec<String> {
        ownership::owners(sid, &self.view, self.cfg.backups)
            .into_iter()
            .map(String::from)
            .collect()
    }

    /// Whether this node is the primary of `sid` under the current view.
    pub fn is_primary(&self, sid: SessionId) -> bool {
        ownership::primary(sid, &self.view) == Some(self.cfg.me.as_str())
    }

    /// Where a local write goes: delta mode, every live peer; backup mode, the owners
    /// other than this node (the driver forwards to the primary when it is not this node).
    pub fn write_targets(&self, sid: SessionId) -> Vec<String> {
        if self.cfg.backup_mode {
            self.owners(sid)
                .into_iter()
                .filter(|o| *o != self.cfg.me)
                .collect()
        } else {
            self.alive_peers().into_iter().map(|(n, _)| n).collect()
        }
    }

    // ------------------------------------------------------------ readiness

    /// The join (state transfer) completed.
    pub fn set_joined(&mut self) {
        self.joined = true;
    }

    /// Whether the join completed.
    pub fn joined(&self) -> bool {
        self.joined
    }

    /// Shutting down: not ready, still serving.
    pub fn set_draining(&mut self) {
        self.draining = true;
    }

    /// Leaving: not ready; no re-replication or anti-entropy rounds of its own.
    pub fn set_leaving(&mut self) {
        self.leaving = true;
    }

    /// Whether it is leaving.
    pub fn leaving(&self) -> bool {
        self.leaving
    }

    /// Whether it is shutting down (draining or leaving): it will not be ready again.
    pub fn stopping(&self) -> bool {
        self.draining || self.leaving
    }

    /// Whether the node may report ready: joined, not draining or leaving, with quorum.
    pub fn is_ready(&self) -> bool {
        self.joined && !self.leaving && !self.draining && self.has_quorum()
    }

    // ------------------------------------------------------------ sync writes

    /// A sync write with ack id `id` was sent to `targets` at `now` (ms). With no
    /// target it ends at once.
    pub fn start_sync(&mut self, now: u64, id: u64, targets: impl IntoIterator<Item = String>) {
        let waiting: BTreeSet<String> = targets
            .into_iter()
            // Only a target that is a live member can ack; one that is not would hold the
            // write back until the timeout for nothing.
            .filter(|t| self.link_of(t).is_some())
            .collect();
        self.syncs.insert(
            id,
            SyncWait {
                waiting,
                acked: 0,
                deadline: now + self.cfg.sync_timeout_ms,
            },
        );
        self.settle(id, false);
    }

    /// `from` acked `id`. True when `id` is a sync write of this replica (the ack is
    /// consumed), false otherwise (another request's reply, for the driver).
    pub fn on_ack(&mut self, from: &str, id: u64) -> bool {
        let Some(w) = self.syncs.get_mut(&id) else {
            return false;
        };
        if w.waiting.remove(from) {
            w.acked += 1;
        }
        self.settle(id, false);
        true
    }

    /// The sync write `id` was not delivered to `node` (its queue was full): not waited for.
    pub fn drop_target(&mut self, id: u64, node: &str) {
        if let Some(w) = self.syncs.get_mut(&id) {
            w.waiting.remove(node);
        }
        self.settle(id, false);
    }

    /// Whether the sync write `id` still waits for `node`'s ack (an ack from it now counts).
    pub fn waiting_for(&self, id: u64, node: &str) -> bool {
        self.syncs
            .get(&id)
            .is_some_and(|w| w.waiting.contains(node))
    }

    /// A delta from `from` left a hole in `sid` at `now` (ms): look again in
    /// [`GAP_RETRY_MS`] ([`Event::RepairGap`]). Bounded: one entry per (sender, session).
    pub fn on_gap(&mut self, now: u64, from: &str, sid: SessionId) {
        // A peer can send gapped deltas at any rate: past the bound, anti-entropy repairs.
        if self.gaps.len() >= MAX_GAPS_WAITING {
            return;
        }
        self.gaps
            .entry((from.to_string(), sid))
            .or_insert(now + GAP_RETRY_MS);
    }

    /// Time passed: sync writes past their deadline end with the acks they have; gaps
    /// due are handed to the driver.
    pub fn on_timeout(&mut self, now: u64) {
        let due: Vec<(String, SessionId)> = self
            .gaps
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            self.gaps.remove(&key);
            let (from, sid) = key;
            self.events.push_back(Event::RepairGap { from, sid });
        }
        let due: Vec<u64> = self
            .syncs
            .iter()
            .filter(|(_, w)| w.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        let mut due = due;
        due.sort_unstable();
        for id in due {
            self.settle(id, true);
        }
    }

    /// Ends the sync write `id` now, with the acks it has (the driver's timer for it fired).
    pub fn expire_sync(&mut self, id: u64) {
        self.settle(id, true);
    }

    /// The earliest deadline (ms) at which [`Replica::on_timeout`] has something to do.
    pub fn poll_timeout(&self) -> Option<u64> {
        let sync = self.syncs.values().map(|w| w.deadline).min();
        let gap = self.gaps.values().copied().min();
        sync.into_iter().chain(gap).min()
    }

    fn settle(&mut self, id: u64, timeout: bool) {
        let Some(w) = self.syncs.get(&id) else {
            return;
        };
        if !w.waiting.is_empty() && !timeout {
            return;
        }
        let w = self.syncs.remove(&id).expect("present");
        let holders = w.acked + 1;
        self.events.push_back(Event::SyncDone(SyncDone {
            id,
            holders,
            alone: w.acked == 0,
            timed_out: !w.waiting.is_empty(),
            acknowledged: self.acknowledges(holders),
        }));
    }

    /// Whether a write held by `holders` members (the writer included) is acknowledged:
    /// always in async mode; in sync mode when `holders >= min_members`.
    pub fn acknowledges(&self, holders: usize) -> bool {
        !self.cfg.sync || holders >= self.cfg.min_members
    }

    /// Sync writes still waiting.
    pub fn syncs_waiting(&self) -> usize {
        self.syncs.len()
    }

    /// The next thing the driver must act on.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    // ------------------------------------------------ write path and reads (route, fetch)

    /// Where a local write to `sid` goes under the current view ([`Route::decide`]).
    pub fn route_write(&self, sid: SessionId) -> Route {
        let peers: Vec<String> = if self.cfg.backup_mode {
            Vec::new()
        } else {
            self.alive_peers().into_iter().map(|(n, _)| n).collect()
        };
        let owners = if self.cfg.backup_mode {
            self.owners(sid)
        } else {
            Vec::new()
        };
        Route::decide(&self.cfg.me, self.cfg.backup_mode, &owners, &peers, |n| {
            self.link_of(n).is_some()
        })
    }

    /// A local write starting at `now` (ms): its forward's attempts and deadline.
    pub fn start_write(&self, now: u64) -> ForwardRetry {
        ForwardRetry::new(now, self.cfg.sync_timeout_ms)
    }

    /// This node received a forwarded write of `sid`: the owners it sends it to.
    pub fn forward_targets(&self, sid: SessionId) -> Vec<String> {
        route::forward_targets(&self.cfg.me, &self.owners(sid))
    }

    /// Whether this node should hold `sid` (always in delta mode; an owner in backup mode).
    pub fn should_hold(&self, sid: SessionId) -> bool {
        !self.cfg.backup_mode || self.owners(sid).contains(&self.cfg.me)
    }

    /// The fetch of `sid` for a client that saw `min_version`, starting at `now` (ms):
    /// backup mode, the owners with a live link (primary first) and the other live
    /// members as the fallback; delta mode, every live peer.
    pub fn fetch_plan(
        &self,
        now: u64,
        sid: SessionId,
        min_version: u64,
        consistency_wait_ms: u64,
    ) -> FetchPlan {
        let (targets, others) = if self.cfg.backup_mode {
            let owners = self.owners(sid);
            let targets = owners
                .iter()
                .filter(|o| **o != self.cfg.me && self.link_of(o).is_some())
                .cloned()
                .collect();
            let others = self
                .alive_peers()
                .into_iter()
                .map(|(n, _)| n)
                .filter(|n| !owners.contains(n))
                .collect();
            (targets, others)
        } else {
            let peers = self.alive_peers().into_iter().map(|(n, _)| n).collect();
            (peers, Vec::new())
        };
        FetchPlan::new(
            now,
            self.cfg.backup_mode,
            targets,
            others,
            min_version,
            consistency_wait_ms,
        )
    }

    /// Which sessions this node compares with `peer` in anti-entropy: every session in
    /// delta mode; in backup mode, those both own under the current view.
    pub fn ae_scope(&self, peer: &str) -> Box<dyn Fn(SessionId) -> bool + Send + Sync> {
        if !self.cfg.backup_mode {
            return Box::new(|_| true);
        }
        let view = self.view.clone();
        let k = self.cfg.backups;
        let me = self.cfg.me.clone();
        let peer = peer.to_string();
        Box::new(move |sid| {
            let owners = ownership::owners(sid, &view, k);
            owners.contains(&me.as_str()) && owners.contains(&peer.as_str())
        })
    }

    /// Where the batched touches `touched` go ([`route::touch_plan`]).
    pub fn touch_plan(
        &self,
        touched: &[(SessionId, u64)],
    ) -> BTreeMap<String, Vec<Vec<(SessionId, u64)>>> {
        let peers: Vec<String> = self.alive_peers().into_iter().map(|(n, _)| n).collect();
        route::touch_plan(&self.cfg.me, self.cfg.backup_mode, touched, &peers, |sid| {
            self.owners(sid)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(min: usize) -> Replica {
        Replica::new(ReplicaConfig {
            me: "a".into(),
            backup_mode: false,
            backups: 1,
            min_members: min,
            sync: true,
            sync_timeout_ms: 1_000,
        })
    }

    fn addr(i: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, i], 7000))
    }

    fn events(r: &mut Replica) -> Vec<Event> {
        std::iter::from_fn(|| r.poll_event()).collect()
    }

    #[test]
    fn admits_suspects_and_removes_by_link() {
        let mut r = replica(0);
        assert_eq!(
            r.peer_up("b", 1, addr(2), true, 10),
            Admission::Admitted {
                new: true,
                restarted: false
            }
        );
        assert_eq!(
            events(&mut r),
            vec![
                Event::ViewChanged(vec!["a".into(), "b".into()]),
                Event::Resync("b".into())
            ]
        );
        assert!(!r.peer_suspect("b", 11), "another link's break is not b's");
        assert!(r.peer_suspect("b", 10));
        assert_eq!(r.view(), ["a".to_string()]);
        assert!(r.member("b").is_some(), "suspect members stay listed");
        assert_eq!(
            r.peer_up("b", 2, addr(2), true, 12),
            Admission::Admitted {
                new: false,
                restarted: true
            }
        );
        assert_eq!(r.peer_removed(10), None, "an old link removes nothing");
        assert!(r.peer_removed(12).is_some());
        assert!(r.members().next().is_none());
    }

    #[test]
    fn a_member_that_left_is_never_readmitted() {
        let mut r = replica(0);
        r.peer_up("b", 1, addr(2), true, 10);
        assert_eq!(r.on_leaving("b", 1), Some(10));
        r.peer_removed(10);
        assert_eq!(r.peer_up("b", 1, addr(2), true, 11), Admission::Left);
        assert!(matches!(
            r.peer_up("b", 2, addr(2), true, 11),
            Admission::Admitted { .. }
        ));
    }

    #[test]
    fn a_sync_write_released_by_suspicion_is_acknowledged_alone() {
        let mut r = replica(0);
        r.peer_up("b", 1, addr(2), true, 10);
        r.peer_up("c", 1, addr(3), true, 11);
        events(&mut r);
        r.start_sync(0, 7, ["b".to_string(), "c".to_string()]);
        assert!(events(&mut r).is_empty(), "waits for both");
        r.peer_suspect("b", 10);
        r.peer_suspect("c", 11);
        let done = events(&mut r)
            .into_iter()
            .find_map(|e| match e {
                Event::SyncDone(d) => Some(d),
                _ => None,
            })
            .expect("released at the suspicion");
        assert_eq!(
            done,
            SyncDone {
                id: 7,
                holders: 1,
                alone: true,
                timed_out: false,
                acknowledged: true
            }
        );
    }

    #[test]
    fn min_members_refuses_what_too_few_hold_and_acks_count_once() {
        let mut r = replica(3);
        r.peer_up("b", 1, addr(2), true, 10);
        r.peer_up("c", 1, addr(3), true, 11);
        assert!(r.has_quorum());
        events(&mut r);
        r.start_sync(0, 1, ["b".to_string(), "c".to_string(), "zz".to_string()]);
        assert!(r.on_ack("b", 1));
        assert!(!r.on_ack("b", 99), "not a sync write of this replica");
        assert_eq!(r.poll_timeout(), Some(1_000));
        r.on_timeout(999);
        assert!(events(&mut r).is_empty());
        r.on_timeout(1_000);
        let e = events(&mut r);
        assert_eq!(
            e,
            vec![Event::SyncDone(SyncDone {
                id: 1,
                holders: 2,
                alone: false,
                timed_out: true,
                acknowledged: false
            })]
        );
        r.peer_suspect("c", 11);
        assert!(!r.has_quorum());
        assert!(!r.is_ready());
    }

    #[test]
    fn a_gap_is_repaired_from_its_sender_after_the_retry_delay_unless_it_failed() {
        let mut r = replica(0);
        r.peer_up("b", 1, addr(2), true, 10);
        r.peer_up("c", 1, addr(3), true, 11);
        events(&mut r);
        r.on_gap(1_000, "b", 5);
        r.on_gap(1_100, "b", 5);
        r.on_gap(1_000, "c", 6);
        assert_eq!(r.poll_timeout(), Some(1_000 + GAP_RETRY_MS));
        r.on_timeout(1_000 + GAP_RETRY_MS - 1);
        assert!(
            events(&mut r).is_empty(),
            "reordered deltas get time to arrive"
        );
        r.peer_suspect("c", 11);
        events(&mut r);
        r.on_timeout(1_000 + GAP_RETRY_MS);
        assert_eq!(
            events(&mut r),
            vec![Event::RepairGap {
                from: "b".into(),
                sid: 5
            }],
            "one fetch per gap; none from a suspected sender"
        );
        assert_eq!(r.poll_timeout(), None);
    }

    #[test]
    fn readiness_needs_the_join_and_ends_with_draining() {
        let mut r = replica(0);
        assert!(!r.is_ready());
        r.set_joined();
        assert!(r.is_ready());
        r.set_draining();
        assert!(!r.is_ready());
    }
}
