//! The simulation's membership driver: admission through `Hello`/`HelloAck`, joins through
//! `StateReq`/`StateChunk` and the `Barrier`/`BarrierAck` barrier, graceful leaves with
//! hand-off (`Put`s, then `Leaving`), backup-mode re-replication rounds, restarts from
//! disk, and the readiness checker. Every decision is the production [`Replica`]'s
//! ([`super::super::join`], [`super::super::handoff`]); this only moves messages, as
//! `cluster/` does.
//!
//! The readiness checker: when a node's replica reports [`Event::Joined`], for every
//! member alive in its view that is *reachable* (running, not frozen, not cut from it),
//! the node holds every session that member held when it served the node's state
//! transfer, with every write that member's copy had then (or, had it served none,
//! every session it holds now, of those the node would own). A peer the node has not admitted yet is not a member to it: it is
//! reconciled by anti-entropy once admitted.
//!
//! [`Replica`]: super::Replica
//! [`Event::Joined`]: super::Event::Joined

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::{index_of, InFlight, Node, Sim};
use crate::replication::{handoff, join, rereplicate};
use crate::wire::{Hello, Message, SessionId};

/// A node waits at most this long after a (re)start for its peers to answer its dials
/// before it starts its join (ms), as `cluster/lifecycle.rs` settles.
pub(super) const SETTLE_MS: u64 = 1_000;
/// A leaving node stops at the latest this long after it started leaving (ms).
const LEAVE_DRAIN_MS: u64 = 2_000;
/// Sessions per simulated state-transfer chunk (few: several chunks per transfer).
const CHUNK_SESSIONS: usize = 4;

/// How a node stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stop {
    /// Memory lost.
    Crash,
    /// The store survives (`--data-dir`): it restarts from it, with a new incarnation
    /// and origin, restoring its sessions as `persist::load` does (the unexpired ones on
    /// the new clock, `changed_at` 0). The last flush is modelled as complete.
    Disk,
    /// The end of a graceful leave.
    Left,
}

/// A node's membership state in the driver.
#[derive(Debug, Default)]
pub(super) struct NodeMembership {
    /// Starts its join at the latest then (ms).
    pub(super) settle_at: u64,
    /// Leaving: stops at the latest then (ms).
    pub(super) leave_by: Option<u64>,
    /// `Leaving` sent.
    said_goodbye: bool,
    /// A re-replication round (or the hand-off) in flight.
    pub(super) round: Option<Round>,
}

/// The pushes of one round: `Put` ack id → (target, sessions); what failed.
#[derive(Debug, Default)]
pub(super) struct Round {
    pub(super) puts: HashMap<u64, (usize, Vec<SessionId>)>,
    pub(super) failed: HashMap<String, Vec<SessionId>>,
}

/// Sessions and their attribute names.
type Snapshot = BTreeMap<SessionId, BTreeSet<String>>;

fn snapshot_of(store: &crate::store::Store, keep: impl Fn(SessionId) -> bool) -> Snapshot {
    let mut snap = Snapshot::new();
    store.for_each(|sid, s| {
        if keep(sid) {
            snap.insert(sid, s.live_attrs().map(|(k, _)| k.to_string()).collect());
        }
    });
    snap
}

/// The cluster's membership state in the simulation.
#[derive(Debug, Default)]
pub(super) struct SimMembership {
    /// Stores kept by crashed nodes (restarts from disk).
    pub(super) disk: Vec<Option<crate::store::Store>>,
    /// Snapshots served: (server, its incarnation, requester, its incarnation) → the
    /// sessions, each with its attribute names (the simulation's writes only add some).
    served: HashMap<(usize, u32, usize, u32), Snapshot>,
}

impl Node {
    /// This node's handshake message (the real `Hello`, without the crypto).
    pub(super) fn hello(&self) -> Hello {
        Hello {
            cluster: "sim".into(),
            node_id: self.name.clone(),
            incarnation: self.incarnation as u64,
            addr: super::addr_of(index_of(&self.name)),
            nonce: [0; 16],
            ready: self.replica.joined(),
            versions: crate::wire::Versions::local(),
        }
    }
}

impl Sim {
    /// Queues a handshake message: no connection is needed (it opens one).
    pub(super) fn send_handshake(&mut self, from: usize, to: usize, msg: Message) {
        let Some(n) = self.nodes[from].as_ref() else {
            return;
        };
        let ty = msg.type_byte();
        let body = msg.encode_body_at(n.secs(self.now));
        let last = self.last_at.get(&(from, to)).copied().unwrap_or(0);
        let at = (self.now + self.rng.random_range(1..=8)).max(last);
        self.last_at.insert((from, to), at);
        self.queue(InFlight {
            at,
            from,
            to,
            ty,
            body,
            msg,
        });
    }

    /// A `Hello` or `HelloAck` arrived (`m.to` is running).
    pub(super) fn handshake(&mut self, m: InFlight) {
        let (from, to, now) = (m.from, m.to, self.now);
        let node = self.nodes[to].as_mut().unwrap();
        let msg = Message::decode_body_at(m.ty, &m.body, node.secs(now))
            .expect("the codec decodes what it encoded");
        match msg {
            Message::Hello(hello) => {
                // The acceptor (`cluster/net.rs: inbound`).
                let verdict = node.replica.on_inbound(&hello.node_id, hello.incarnation);
                if verdict == super::Inbound::Left {
                    return;
                }
                // The connection serves from now on (replies, requests).
                let timeout = self.cfg.member_timeout_ms;
                let link = node.links.entry(from).or_default();
                if link.is_none() {
                    *link = Some(super::Liveness::new(now, timeout, true));
                }
                let mine = node.hello();
                self.send_handshake(to, from, Message::HelloAck(mine.clone()));
                if verdict == super::Inbound::DialBack {
                    self.send_handshake(to, from, Message::Hello(mine));
                }
            }
            Message::HelloAck(hello) => {
                // The dialer: admitted, unless that incarnation left.
                if self.admit_hello(to, from, &hello) != super::Admission::Left {
                    self.log(format!("n{to} admitted n{from}"));
                }
            }
            _ => unreachable!("only handshake types come here"),
        }
    }

    /// Starts node `i`'s join once settled: every peer admitted, or [`SETTLE_MS`] passed.
    pub(super) fn settle_join(&mut self, i: usize) {
        let now = self.now;
        let n = self.cfg.nodes;
        let node = self.nodes[i].as_mut().unwrap();
        if node.replica.joined() || node.replica.join_started() || node.replica.stopping() {
            return;
        }
        if now >= node.member.settle_at || node.replica.alive_peers().len() == n - 1 {
            node.replica.begin_join(now);
            self.log(format!("n{i} joins"));
            self.replica_events(i);
        }
    }

    /// Streams node `i`'s snapshot for `serve` (its barrier is done).
    pub(super) fn serve_state(&mut self, i: usize, serve: join::Serve) {
        let to = index_of(&serve.to);
        let node = self.nodes[i].as_ref().unwrap();
        let view = join::view_with(node.replica.view(), &serve.to);
        let k = node.replica.config().backups;
        // In id order (the store's own order is its hasher's: not replayable).
        let mut ids = node.store.ids();
        ids.sort_unstable();
        ids.retain(|sid| join::in_snapshot(*sid, serve.only_owned, &view, k, &serve.to));
        let chunks: Vec<Vec<_>> = ids
            .chunks(CHUNK_SESSIONS)
            .map(|c| c.iter().filter_map(|s| node.store.state(*s)).collect())
            .collect();
        let sids = snapshot_of(&node.store, |sid| ids.binary_search(&sid).is_ok());
        let me = (i, node.incarnation);
        if let Some(req) = self.nodes[to].as_ref() {
            let key = (me.0, me.1, to, req.incarnation);
            self.membership.served.insert(key, sids);
        }
        for sessions in chunks {
            let chunk = Message::StateChunk {
                id: serve.id,
                sessions,
                done: false,
            };
            self.send(i, to, chunk, true);
        }
        let last = Message::StateChunk {
            id: serve.id,
            sessions: vec![],
            done: true,
        };
        self.send(i, to, last, true);
        self.log(format!("n{i} serves a state transfer to n{to}"));
    }

    /// The readiness checker, when node `j` reports ready (see the module documentation).
    pub(super) fn check_ready(&mut self, j: usize) {
        self.report.joins += 1;
        self.log(format!("n{j} joined: ready"));
        let nj = self.nodes[j].as_ref().unwrap();
        let have = snapshot_of(&nj.store, |_| true);
        let view = join::view_with(nj.replica.view(), &nj.name);
        let k = nj.replica.config().backups;
        let backup = nj.replica.config().backup_mode;
        for (peer, _) in nj.replica.alive_peers() {
            let m = index_of(&peer);
            if !self.running(m) || self.cut.contains(&super::pair(j, m)) {
                continue;
            }
            let nm = self.nodes[m].as_ref().unwrap();
            let key = (m, nm.incarnation, j, nj.incarnation);
            let held = match self.membership.served.get(&key) {
                Some(s) => s.clone(),
                None => snapshot_of(&nm.store, |sid| {
                    join::in_snapshot(sid, backup, &view, k, &nj.name)
                }),
            };
            // A session lacking, or lacking a write (an attribute) the member's copy had.
            let lacking: Vec<&SessionId> = held
                .iter()
                .filter(|(sid, attrs)| have.get(sid).is_none_or(|h| !attrs.is_subset(h)))
                .map(|(sid, _)| sid)
                .collect();
            assert!(
                lacking.is_empty(),
                "n{j} reports ready while n{m}, a reachable member, holds sessions it \
                 lacks: {lacking:?}"
            );
        }
    }

    /// Backup mode: runs the re-replication round node `i`'s replica says is due.
    pub(super) fn rereplicate(&mut self, i: usize) {
        let now = self.now;
        let node = self.nodes[i].as_mut().unwrap();
        if node.member.round.is_some() {
            return;
        }
        let Some(round) = node.replica.take_rereplication(now) else {
            return;
        };
        let k = node.replica.config().backups;
        let now_s = node.secs(now);
        let mut plan = match &round.old {
            Some(old) => {
                rereplicate::plan_moves(&node.store, &node.name, k, old, &round.new, false, now_s)
            }
            None => HashMap::new(),
        };
        for (n, sids) in rereplicate::still_needed(&node.store, k, round.retry, &round.new, now_s) {
            let list = plan.entry(n).or_default();
            list.extend(sids);
            list.sort_unstable();
            list.dedup();
        }
        self.push_plan(i, plan);
    }

    /// Pushes `plan` from node `i` as acked `Put`s (a round, ended by the last ack).
    fn push_plan(&mut self, i: usize, plan: HashMap<String, Vec<SessionId>>) {
        let mut round = Round::default();
        // In a replayable order (the plan's is its hashers').
        let plan: std::collections::BTreeMap<String, Vec<SessionId>> = plan
            .into_iter()
            .map(|(n, mut sids)| {
                sids.sort_unstable();
                (n, sids)
            })
            .collect();
        for (peer, sids) in plan {
            let p = index_of(&peer);
            for batch in sids.chunks(handoff::PUT_BATCH) {
                let node = self.nodes[i].as_mut().unwrap();
                let connected = node.links.get(&p).is_some_and(|l| l.is_some());
                if !connected {
                    round
                        .failed
                        .entry(peer.clone())
                        .or_default()
                        .extend_from_slice(batch);
                    continue;
                }
                let id = node.next_id;
                node.next_id += 1;
                let sessions = batch.iter().filter_map(|s| node.store.state(*s)).collect();
                round.puts.insert(id, (p, batch.to_vec()));
                self.send(i, p, Message::Put { ack: id, sessions }, true);
            }
        }
        self.nodes[i].as_mut().unwrap().member.round = Some(round);
        self.round_finished(i);
    }

    /// Ends node `i`'s round if nothing is in flight any more.
    pub(super) fn round_finished(&mut self, i: usize) {
        let now = self.now;
        let Some(node) = self.nodes[i].as_mut() else {
            return;
        };
        if node
            .member
            .round
            .as_ref()
            .is_none_or(|r| !r.puts.is_empty())
        {
            return;
        }
        let round = node.member.round.take().unwrap();
        node.replica.rereplication_done(now, round.failed);
        self.replica_events(i);
    }

    /// Whether `id` acked one of node `i`'s round's pushes (then consumed).
    pub(super) fn put_acked(&mut self, i: usize, id: u64) -> bool {
        let node = self.nodes[i].as_mut().unwrap();
        let Some(round) = node.member.round.as_mut() else {
            return false;
        };
        if round.puts.remove(&id).is_none() {
            return false;
        }
        self.round_finished(i);
        true
    }

    /// Node `to` read `Leaving` from `from`: that incarnation is never readmitted; its
    /// member is removed (`cluster/handle.rs`).
    pub(super) fn on_leaving(&mut self, to: usize, from: usize) {
        let Some(inc) = self.nodes[from].as_ref().map(|n| n.incarnation as u64) else {
            return;
        };
        let node = self.nodes[to].as_mut().unwrap();
        if let Some(link) = node.replica.on_leaving(&format!("n{from}"), inc) {
            node.replica.peer_removed(link);
            node.links.insert(from, None);
        }
        self.replica_events(to);
    }

    /// Whether every node runs and none is leaving (one node out at a time).
    pub(super) fn all_staying(&self) -> bool {
        self.nodes
            .iter()
            .all(|n| n.as_ref().is_some_and(|n| n.member.leave_by.is_none()))
    }

    /// Node `i` leaves gracefully: not ready, hands off (backup mode: `Put`s of what the
    /// new owners gain), then says `Leaving` and stops once its queues drained.
    pub(super) fn leave(&mut self, i: usize) {
        self.log(format!("leave n{i}"));
        self.report.faults += 1;
        self.report.leaves += 1;
        let now = self.now;
        let node = self.nodes[i].as_mut().unwrap();
        node.replica.set_leaving();
        node.member.leave_by = Some(now + LEAVE_DRAIN_MS);
        let plan = node.replica.leave_handoff().map(|(view, without)| {
            let k = node.replica.config().backups;
            let now_s = node.secs(now);
            rereplicate::plan_moves(&node.store, &node.name, k, &view, &without, true, now_s)
        });
        self.replica_events(i);
        if let Some(plan) = plan {
            self.push_plan(i, plan);
        }
    }

    /// Leaving nodes: `Leaving` once the hand-off is done; stop once nothing they sent is
    /// in flight, or at the drain deadline.
    pub(super) fn leaves_step(&mut self) {
        for i in 0..self.cfg.nodes {
            if !self.running(i) {
                continue; // frozen: sends nothing
            }
            let Some(node) = self.nodes[i].as_mut() else {
                continue;
            };
            let Some(by) = node.member.leave_by else {
                continue;
            };
            if !node.member.said_goodbye && (node.member.round.is_none() || self.now >= by) {
                node.member.said_goodbye = true;
                for p in node.live_peers() {
                    self.send(i, p, Message::Leaving, false);
                }
                continue;
            }
            let drained = !self.net.values().any(|m| m.from == i);
            if node.member.said_goodbye && (drained || self.now >= by) {
                self.stop(i, super::Stop::Left);
            }
        }
    }
}

use rand::RngExt;
