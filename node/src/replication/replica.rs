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

use super::handoff::{self, Rereplication, Round};
use super::join::{Join, Serve, Serves};
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
    // ---------------------------------------------- membership: join, serve, hand-off
    /// Ask `node` for a state transfer: `StateReq { id, only_owned }` (the join's).
    RequestState {
        /// The member.
        node: String,
        /// Request id (the last `StateChunk` carries it).
        id: u64,
        /// Backup mode: only the sessions this node will own.
        only_owned: bool,
    },
    /// Send `Barrier { id }` to `node` (a transfer served waits for its `BarrierAck`).
    Barrier {
        /// The member.
        node: String,
        /// Barrier id.
        id: u64,
    },
    /// The barrier of a served transfer is done: stream the snapshot (chunks of the
    /// sessions [`super::join::in_snapshot`] keeps, the last one `done`).
    ServeState(Serve),
    /// The join completed (the readiness rule held) after `ms` milliseconds.
    Joined {
        /// How long the join took.
        ms: u64,
    },
    /// Backup mode: a re-replication round is due ([`Replica::take_rereplication`]).
    Rereplicate,
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
    // ---------------------------------------------- membership: join, serve, hand-off
    join: Join,
    serves: Serves,
    rerep: Rereplication,
    /// The latest `now` (ms) passed in (only for the join's duration).
    clock: u64,
}

impl Replica {
    /// A replica alone (its view is itself), not joined yet.
    pub fn new(cfg: ReplicaConfig) -> Replica {
        Replica {
            view: vec![cfg.me.clone()],
            members: BTreeMap::new(),
            left: HashSet::new(),
            syncs: HashMap::new(),
            gaps: BTreeMap::new(),
            events: VecDeque::new(),
            joined: false,
            draining: false,
            leaving: false,
            join: Join::default(),
            serves: Serves::default(),
            rerep: Rereplication::new(vec![cfg.me.clone()]),
            clock: 0,
            cfg,
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
        now: u64,
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
        self.join_member_up(now, node, incarnation);
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
        self.membership_peer_failed(node);
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
            self.rerep_on_view();
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
        self.join.set_joined();
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
        self.membership_timeout(now);
    }

    /// Ends the sync write `id` now, with the acks it has (the driver's timer for it fired).
    pub fn expire_sync(&mut self, id: u64) {
        self.settle(id, true);
    }

    /// The earliest deadline (ms) at which [`Replica::on_timeout`] has something to do.
    pub fn poll_timeout(&self) -> Option<u64> {
        let sync = self.syncs.values().map(|w| w.deadline).min();
        let gap = self.gaps.values().copied().min();
        sync.into_iter()
            .chain(gap)
            .chain(self.membership_poll_timeout())
            .min()
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
    // ------------------------------------------------------------ membership (join,
    // serving transfers, readiness, leave hand-off, re-replication; see `join`, `handoff`)

    fn tick(&mut self, now: u64) {
        self.clock = self.clock.max(now);
    }

    fn alive_incarnations(&self) -> Vec<(String, u64)> {
        self.members
            .values()
            .filter(|m| m.state == MemberState::Alive)
            .map(|m| (m.node_id.clone(), m.incarnation))
            .collect()
    }

    fn ask_state(&mut self, reqs: impl IntoIterator<Item = super::join::Request>) {
        for r in reqs {
            self.events.push_back(Event::RequestState {
                node: r.node,
                id: r.id,
                only_owned: self.cfg.backup_mode,
            });
        }
    }

    fn join_check(&mut self) {
        let alive = self.alive_incarnations();
        if let Some(ms) = self.join.check(self.clock, &alive) {
            self.joined = true;
            self.events.push_back(Event::Joined { ms });
            // What changed while joining is this node's to copy now (backup mode).
            self.rerep_on_view();
        }
    }

    fn join_member_up(&mut self, now: u64, node: &str, incarnation: u64) {
        self.tick(now);
        let req = self.join.on_member_up(now, node, incarnation);
        self.ask_state(req);
    }

    fn membership_peer_failed(&mut self, node: &str) {
        self.join.on_member_down(node);
        for s in self.serves.on_peer_down(node) {
            self.events.push_back(Event::ServeState(s));
        }
        // The member is out of the table's live set already: no longer waited for.
        self.join_check();
    }

    fn membership_timeout(&mut self, now: u64) {
        self.tick(now);
        let alive = self.alive_incarnations();
        let reqs = self.join.on_timeout(now, &alive);
        self.ask_state(reqs);
        for s in self.serves.on_timeout(now) {
            self.events.push_back(Event::ServeState(s));
        }
        self.rerep_signal();
    }

    fn membership_poll_timeout(&self) -> Option<u64> {
        let j = self.join.poll_timeout();
        let s = self.serves.poll_timeout();
        let r = self.rerep.poll_timeout();
        j.into_iter().chain(s).chain(r).min()
    }

    /// The driver settled at `now` (every discovered candidate dialed once, every member
    /// dialed back, bounded): ask every live member for a state transfer. The join
    /// completes ([`Event::Joined`]) once a transfer from every live member completed
    /// (the readiness rule, [`super::join`]); at once when there is none.
    pub fn begin_join(&mut self, now: u64) {
        self.tick(now);
        let alive = self.alive_incarnations();
        let reqs = self.join.begin(now, &alive);
        self.ask_state(reqs);
        self.join_check();
    }

    /// The state request to `node` could not be sent at `now`: asked again shortly.
    pub fn state_request_not_sent(&mut self, now: u64, node: &str) {
        self.tick(now);
        self.join.on_not_sent(now, node);
    }

    /// Whether the join started.
    pub fn join_started(&self) -> bool {
        self.join.started()
    }

    /// Live members a state transfer is still missing from (joining).
    pub fn join_waiting_for(&self) -> Vec<String> {
        self.join.waiting_for(&self.alive_incarnations())
    }

    /// The last chunk of state transfer `id` arrived from `from` at `now`. True when it
    /// was this node's request (consumed); false: another request's reply.
    pub fn on_state_done(&mut self, now: u64, from: &str, id: u64) -> bool {
        self.tick(now);
        if !self.join.on_done(from, id) {
            return false;
        }
        self.join_check();
        true
    }

    /// `requester` asks for a state transfer (`id`) at `now`: barriers to the other live
    /// members first ([`Event::Barrier`]), then [`Event::ServeState`].
    pub fn on_state_req(&mut self, now: u64, requester: &str, id: u64, only_owned: bool) {
        self.tick(now);
        let peers: Vec<String> = self.alive_peers().into_iter().map(|(n, _)| n).collect();
        let (barriers, ready) = self
            .serves
            .on_request(now, requester, id, only_owned, &peers);
        for (node, id) in barriers {
            self.events.push_back(Event::Barrier { node, id });
        }
        if let Some(s) = ready {
            self.events.push_back(Event::ServeState(s));
        }
    }

    /// `from` answered barrier `id`. False when `id` is no barrier of this replica.
    pub fn on_barrier_ack(&mut self, from: &str, id: u64) -> bool {
        match self.serves.on_ack(from, id) {
            Err(()) => false,
            Ok(ready) => {
                if let Some(s) = ready {
                    self.events.push_back(Event::ServeState(s));
                }
                true
            }
        }
    }

    /// What to do with an inbound connection from `node` (incarnation) that completed
    /// its handshake: refuse it (that incarnation left), or accept it and dial back unless
    /// it is already a live member of that incarnation (then its writes reach us).
    pub fn on_inbound(&self, node: &str, incarnation: u64) -> Inbound {
        if self.has_left(node, incarnation) {
            return Inbound::Left;
        }
        let known = self
            .members
            .get(node)
            .is_some_and(|m| m.incarnation == incarnation && m.state == MemberState::Alive);
        if known {
            Inbound::Known
        } else {
            Inbound::DialBack
        }
    }

    /// Leaving (backup mode): the views to plan the hand-off with (the current view, and
    /// it without this node): `Put`s of what the new owners gain, then `Leaving`.
    pub fn leave_handoff(&self) -> Option<(Vec<String>, Vec<String>)> {
        self.cfg
            .backup_mode
            .then(|| handoff::handoff_views(&self.view, &self.cfg.me))
    }

    fn rerep_on_view(&mut self) {
        if !self.cfg.backup_mode {
            return;
        }
        self.rerep.on_view(&self.view);
        self.rerep_signal();
    }

    fn rerep_signal(&mut self) {
        if self.cfg.backup_mode && !self.leaving && self.rerep.signal(self.clock) {
            self.events.push_back(Event::Rereplicate);
        }
    }

    /// Backup mode: the re-replication round due at `now`, if any (none while leaving);
    /// plan it with [`super::rereplicate`], push it, then [`Self::rereplication_done`].
    pub fn take_rereplication(&mut self, now: u64) -> Option<Round> {
        self.tick(now);
        if self.leaving || !self.cfg.backup_mode {
            return None;
        }
        self.rerep.take(now)
    }

    /// The round ended at `now`; `failed`: pushes not delivered, by target (retried
    /// after [`handoff::RETRY_MS`] while still needed).
    pub fn rereplication_done(
        &mut self,
        now: u64,
        failed: std::collections::HashMap<String, Vec<SessionId>>,
    ) {
        self.tick(now);
        self.rerep.finished(now, failed);
        self.rerep_signal();
    }
}

/// What [`Replica::on_inbound`] decides for an inbound connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inbound {
    /// That incarnation said goodbye: close.
    Left,
    /// A live member of that incarnation: serve.
    Known,
    /// Serve, and dial back at once (so that its writes reach it from now on).
    DialBack,
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
            r.peer_up(0, "b", 1, addr(2), true, 10),
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
            r.peer_up(0, "b", 2, addr(2), true, 12),
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
        r.peer_up(0, "b", 1, addr(2), true, 10);
        assert_eq!(r.on_leaving("b", 1), Some(10));
        r.peer_removed(10);
        assert_eq!(r.peer_up(0, "b", 1, addr(2), true, 11), Admission::Left);
        assert!(matches!(
            r.peer_up(0, "b", 2, addr(2), true, 11),
            Admission::Admitted { .. }
        ));
    }

    #[test]
    fn a_sync_write_released_by_suspicion_is_acknowledged_alone() {
        let mut r = replica(0);
        r.peer_up(0, "b", 1, addr(2), true, 10);
        r.peer_up(0, "c", 1, addr(3), true, 11);
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
        r.peer_up(0, "b", 1, addr(2), true, 10);
        r.peer_up(0, "c", 1, addr(3), true, 11);
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
        r.peer_up(0, "b", 1, addr(2), true, 10);
        r.peer_up(0, "c", 1, addr(3), true, 11);
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

    // ------------------------------------------------ membership: join, serve, hand-off

    fn requests(r: &mut Replica) -> Vec<(String, u64)> {
        events(r)
            .into_iter()
            .filter_map(|e| match e {
                Event::RequestState { node, id, .. } => Some((node, id)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_joining_replica_is_ready_only_after_a_transfer_from_every_live_member() {
        let mut r = replica(0);
        r.peer_up(0, "b", 1, addr(2), true, 10);
        r.peer_up(0, "c", 1, addr(3), true, 11);
        events(&mut r);
        assert!(
            requests(&mut r).is_empty(),
            "nothing asked before the join starts"
        );
        r.begin_join(100);
        let asked = requests(&mut r);
        assert_eq!(
            asked.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            ["b", "c"]
        );
        assert!(
            !r.on_state_done(110, "b", 12345),
            "not a join id: another request's"
        );
        assert!(r.on_state_done(120, "b", asked[0].1));
        assert!(!r.is_ready(), "c may hold sessions this node lacks");
        r.peer_up(130, "d", 1, addr(4), true, 12);
        let d = requests(&mut r);
        assert_eq!(d.len(), 1, "a member admitted during the join is asked too");
        r.peer_suspect("c", 11);
        assert!(!r.is_ready(), "d still holds sessions this node may lack");
        assert!(r.on_state_done(150, "d", d[0].1));
        assert!(r.is_ready());
        assert!(
            events(&mut r).contains(&Event::Joined { ms: 50 }),
            "joined once the suspected member is no longer waited for"
        );
        r.peer_up(200, "e", 1, addr(5), true, 13);
        assert!(
            requests(&mut r).is_empty(),
            "once ready, anti-entropy reconciles"
        );
    }

    #[test]
    fn a_replica_alone_when_it_settles_is_joined_at_once() {
        let mut r = replica(0);
        r.begin_join(5);
        assert!(r.is_ready());
        assert_eq!(events(&mut r), vec![Event::Joined { ms: 0 }]);
    }

    #[test]
    fn inbound_connections_are_refused_after_goodbye_and_dialed_back_when_unknown() {
        let mut r = replica(0);
        assert_eq!(r.on_inbound("b", 1), Inbound::DialBack);
        r.peer_up(0, "b", 1, addr(2), true, 10);
        assert_eq!(r.on_inbound("b", 1), Inbound::Known);
        assert_eq!(r.on_inbound("b", 2), Inbound::DialBack, "a new incarnation");
        r.peer_suspect("b", 10);
        assert_eq!(
            r.on_inbound("b", 1),
            Inbound::DialBack,
            "suspected: dial again"
        );
        r.on_leaving("b", 1);
        assert_eq!(r.on_inbound("b", 1), Inbound::Left);
    }

    #[test]
    fn a_transfer_is_served_after_the_barrier_of_every_other_member() {
        let mut r = replica(0);
        r.peer_up(0, "b", 1, addr(2), true, 10);
        r.peer_up(0, "c", 1, addr(3), true, 11);
        r.peer_up(0, "j", 1, addr(4), false, 12);
        events(&mut r);
        r.on_state_req(0, "j", 7, false);
        let barriers: Vec<(String, u64)> = events(&mut r)
            .into_iter()
            .filter_map(|e| match e {
                Event::Barrier { node, id } => Some((node, id)),
                _ => None,
            })
            .collect();
        assert_eq!(
            barriers.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            ["b", "c"],
            "every live member but the joiner"
        );
        assert!(r.on_barrier_ack("b", barriers[0].1));
        assert!(!r.on_barrier_ack("b", 3), "not a barrier of this replica");
        assert!(events(&mut r).is_empty(), "c's barrier is still out");
        assert_eq!(
            r.poll_timeout(),
            Some(super::super::join::BARRIER_TIMEOUT_MS)
        );
        r.on_timeout(super::super::join::BARRIER_TIMEOUT_MS);
        assert_eq!(
            events(&mut r),
            vec![Event::ServeState(Serve {
                to: "j".into(),
                id: 7,
                only_owned: false
            })]
        );
    }

    #[test]
    fn backup_mode_rereplicates_on_view_changes_retries_and_hands_off_on_leave() {
        let mut r = Replica::new(ReplicaConfig {
            me: "a".into(),
            backup_mode: true,
            backups: 1,
            min_members: 0,
            sync: false,
            sync_timeout_ms: 1_000,
        });
        r.set_joined();
        r.peer_up(0, "b", 1, addr(2), true, 10);
        assert!(events(&mut r).contains(&Event::Rereplicate));
        let round = r.take_rereplication(0).expect("due");
        assert_eq!(round.old, Some(vec!["a".to_string()]));
        assert_eq!(round.new, vec!["a".to_string(), "b".to_string()]);
        assert_eq!(r.take_rereplication(1), None, "one round at a time");
        r.rereplication_done(10, HashMap::from([("b".to_string(), vec![5])]));
        assert_eq!(r.poll_timeout(), Some(10 + handoff::RETRY_MS));
        r.on_timeout(10 + handoff::RETRY_MS);
        assert_eq!(events(&mut r), vec![Event::Rereplicate]);
        let retry = r.take_rereplication(10 + handoff::RETRY_MS).expect("retry");
        assert_eq!(retry.retry[&"b".to_string()], vec![5]);
        r.rereplication_done(2_000, HashMap::new());
        r.set_leaving();
        r.peer_up(2_001, "c", 1, addr(3), true, 11);
        assert!(
            !events(&mut r).contains(&Event::Rereplicate),
            "leaving: no rounds"
        );
        assert_eq!(
            r.leave_handoff(),
            Some((
                vec!["a".to_string(), "b".into(), "c".into()],
                vec!["b".to_string(), "c".into()]
            ))
        );
        assert_eq!(
            replica(0).leave_handoff(),
            None,
            "delta mode: every peer holds it"
        );
    }
}
