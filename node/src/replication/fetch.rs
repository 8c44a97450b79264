//! The read path's decisions (read-your-writes): whether a request runs on the local copy,
//! waits for the client's version, or fetches the session; and the fetch plan — whom to
//! ask first, when to hedge, whom to ask as the fallback, and when a fetch is complete.
//!
//! Pure: [`FetchPlan`] is a small state machine (replies and time go in, asks and the
//! outcome come out); the [`super::replica::Replica`] builds it from its view
//! ([`super::replica::Replica::fetch_plan`]). The driver (`cluster/mod.rs: fetch`) sends
//! the `FetchReq`s, awaits the replies and runs the hedge timer; the simulation runs the
//! same plan over its network.

use std::collections::BTreeSet;

/// Backup mode: how long past its consistency wait a fetch waits for the primary's
/// answer before asking the other owners as well (ms).
pub const HEDGE_AFTER_MS: u64 = 25;

/// How long an asked replica may take beyond the consistency wait before it counts as
/// not answering (ms).
pub const ANSWER_MARGIN_MS: u64 = 500;

/// How a fetch from the replicas ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetched {
    /// A copy at least as new as asked for arrived, or every replica asked answered
    /// (with its copy or with "no such session").
    Complete,
    /// No copy new enough arrived and some replica did not answer in time.
    Incomplete,
}

/// What a request for a session does first, from what this node holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadStart {
    /// Run on the local copy now.
    Serve,
    /// No such session (the local copy is dead).
    NoSession,
    /// Delta mode, an id never seen, no version cookie: wait (bounded) for the creating
    /// write, then serve what is here (if anything); never fan out to the peers.
    AwaitCreate,
    /// An owner whose copy is behind the client's version: wait (bounded) for it, then
    /// fetch.
    WaitThenFetch,
    /// Fetch from the replicas.
    Fetch,
}

/// Decides how a request whose client saw `min_version` (0: nothing) starts. `owner`:
/// this node should hold the session (always in delta mode); `local`: its copy's
/// `seen_through` and whether it is dead.
pub fn read_start(
    backup_mode: bool,
    owner: bool,
    local: Option<(u64, bool)>,
    min_version: u64,
) -> ReadStart {
    if local.is_none() && min_version == 0 && !backup_mode {
        return ReadStart::AwaitCreate;
    }
    match local {
        Some((_, true)) => ReadStart::NoSession,
        // An owner (every node in delta mode) with a fresh-enough copy serves it; a
        // non-owner's cached copy serves only a client with a version it reaches.
        Some((v, false)) if v >= min_version && (owner || min_version > 0) => ReadStart::Serve,
        Some(_) if min_version > 0 && owner => ReadStart::WaitThenFetch,
        _ => ReadStart::Fetch,
    }
}

/// After a fetch: whether the request fails as "no replica answered in time" — nothing
/// here holds the client's version and a replica that may hold it was silent (not "no
/// session", and not a rollback, which is only when every replica answered without it).
pub fn unreachable(fetched: Fetched, seen_through: Option<u64>, min_version: u64) -> bool {
    fetched == Fetched::Incomplete && seen_through.is_none_or(|v| v < min_version)
}

/// Whether a copy that holds every write through `seen_through` is older than what the
/// client saw: served anyway, it is a rollback (counted, the cookie lowered).
pub fn rolled_back(seen_through: u64, min_version: u64) -> bool {
    seen_through < min_version
}

/// A replica asked for a session by a client that saw `min_version`, allowed to wait
/// `wait_ms` for it: whether it answers at once (its copy holds the version, or the asker
/// did not ask it to wait), else it waits (bounded) for the version first.
pub fn answer_now(min_version: u64, wait_ms: u32, seen_through: Option<u64>) -> bool {
    min_version == 0 || wait_ms == 0 || seen_through.unwrap_or(0) >= min_version
}

/// One replica's answer to a fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// Its copy, at this version (merged by the driver).
    Copy(u64),
    /// It has no copy.
    NoCopy,
    /// No answer in time (or its link failed).
    NoAnswer,
}

/// One `FetchReq` to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ask {
    /// The replica to ask.
    pub node: String,
    /// How long it may wait for the version before answering (ms).
    pub wait_ms: u32,
    /// How long to wait for its answer (ms).
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Asking the owners (every live peer in delta mode).
    Owners,
    /// Backup mode: every owner answered, none with the version: the other live members.
    Others,
    Done(Fetched),
}

/// A fetch of one session. Delta mode: every live peer at once. Backup mode: the first
/// owner (the primary, which every write reaches first) alone; the other owners when it
/// has not answered with the version by the consistency wait plus [`HEDGE_AFTER_MS`]
/// (the hedge) or answered without it. Complete when a copy at least as new as asked
/// arrives, or when every replica asked answered. Backup mode, with a client version
/// that no owner had: the other live members are asked before it counts as complete
/// (the write's server may be a non-owner whose forward is still queued).
#[derive(Debug, Clone)]
pub struct FetchPlan {
    min_version: u64,
    wait_ms: u32,
    timeout_ms: u64,
    hedge_at: Option<u64>,
    asks: Vec<Ask>,
    later: Vec<String>,
    others: Vec<String>,
    outstanding: BTreeSet<String>,
    complete: bool,
    phase: Phase,
}

impl FetchPlan {
    /// A fetch starting at `now` (ms) for a client that saw `min_version`: `targets` the
    /// replicas (backup mode: the owners other than this node with a live link, primary
    /// first; delta mode: every live peer), `others` the live non-owners (backup mode).
    pub fn new(
        now: u64,
        backup_mode: bool,
        mut targets: Vec<String>,
        others: Vec<String>,
        min_version: u64,
        consistency_wait_ms: u64,
    ) -> FetchPlan {
        let wait_ms = if min_version > 0 {
            consistency_wait_ms.min(u32::MAX as u64) as u32
        } else {
            0
        };
        let later = if backup_mode && targets.len() > 1 {
            targets.split_off(1)
        } else {
            Vec::new()
        };
        let mut plan = FetchPlan {
            min_version,
            wait_ms,
            timeout_ms: consistency_wait_ms + ANSWER_MARGIN_MS,
            hedge_at: (!later.is_empty()).then(|| now + wait_ms as u64 + HEDGE_AFTER_MS),
            asks: Vec::new(),
            later,
            others: if backup_mode && min_version > 0 {
                others
            } else {
                Vec::new()
            },
            outstanding: BTreeSet::new(),
            complete: true,
            phase: Phase::Owners,
        };
        if targets.is_empty() {
            plan.phase = Phase::Done(Fetched::Complete);
        }
        for t in targets {
            plan.ask(t, wait_ms);
        }
        plan
    }

    fn ask(&mut self, node: String, wait_ms: u32) {
        if self.outstanding.insert(node.clone()) {
            self.asks.push(Ask {
                node,
                wait_ms,
                timeout_ms: self.timeout_ms,
            });
        }
    }

    /// The next `FetchReq` to send.
    pub fn poll_ask(&mut self) -> Option<Ask> {
        if self.asks.is_empty() {
            None
        } else {
            Some(self.asks.remove(0))
        }
    }

    /// When [`FetchPlan::on_timeout`] has something to do (the hedge), in ms.
    pub fn poll_timeout(&self) -> Option<u64> {
        match self.phase {
            Phase::Owners if !self.later.is_empty() => self.hedge_at,
            _ => None,
        }
    }

    /// Time passed: past the hedge time, the other owners are asked too.
    pub fn on_timeout(&mut self, now: u64) {
        if self.poll_timeout().is_some_and(|t| t <= now) {
            self.hedge();
        }
    }

    fn hedge(&mut self) {
        let wait = self.wait_ms;
        for n in std::mem::take(&mut self.later) {
            self.ask(n, wait);
        }
    }

    /// `node` answered (or did not, in time). `holds`: after merging its copy, this
    /// node's copy holds every write through the version asked for.
    pub fn on_reply(&mut self, node: &str, reply: Reply, holds: bool) {
        if matches!(self.phase, Phase::Done(_)) || !self.outstanding.remove(node) {
            return;
        }
        match reply {
            Reply::Copy(v) if v >= self.min_version => {
                self.phase = Phase::Done(Fetched::Complete);
                return;
            }
            // Also a silent non-owner in the fallback: it may be the very node that served
            // the client's write (found by the simulation: counting it as answered made
            // a cut-off writer's version a rollback instead of a failed request).
            Reply::NoAnswer => self.complete = false,
            _ => {}
        }
        if !self.outstanding.is_empty() {
            return;
        }
        match self.phase {
            Phase::Owners if !self.later.is_empty() => self.hedge(),
            Phase::Owners if self.complete && !holds && !self.others.is_empty() => {
                self.phase = Phase::Others;
                for n in std::mem::take(&mut self.others) {
                    // They answer at once: a non-owner's copy is what it is.
                    self.ask(n, 0);
                }
            }
            _ => {
                self.phase = Phase::Done(if self.complete {
                    Fetched::Complete
                } else {
                    Fetched::Incomplete
                })
            }
        }
    }

    /// How the fetch ended, once it has.
    pub fn outcome(&self) -> Option<Fetched> {
        match self.phase {
            Phase::Done(f) => Some(f),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn asks(p: &mut FetchPlan) -> Vec<String> {
        std::iter::from_fn(|| p.poll_ask())
            .map(|a| a.node)
            .collect()
    }

    #[test]
    fn a_request_starts_from_what_this_node_holds() {
        use ReadStart::*;
        assert_eq!(read_start(false, true, None, 0), AwaitCreate);
        assert_eq!(read_start(false, true, None, 3), Fetch);
        assert_eq!(read_start(false, true, Some((3, true)), 0), NoSession);
        assert_eq!(read_start(false, true, Some((3, false)), 3), Serve);
        assert_eq!(read_start(false, true, Some((2, false)), 3), WaitThenFetch);
        // Backup mode: a non-owner's cached copy serves only a client with a version.
        assert_eq!(read_start(true, false, Some((3, false)), 0), Fetch);
        assert_eq!(read_start(true, false, Some((3, false)), 2), Serve);
        assert_eq!(read_start(true, false, Some((1, false)), 2), Fetch);
        assert_eq!(read_start(true, false, None, 0), Fetch);
        assert_eq!(read_start(true, true, Some((1, false)), 0), Serve);
        assert!(unreachable(Fetched::Incomplete, Some(1), 2));
        assert!(!unreachable(Fetched::Incomplete, Some(2), 2));
        assert!(!unreachable(Fetched::Complete, None, 2));
        assert!(rolled_back(1, 2) && !rolled_back(2, 2));
        assert!(answer_now(0, 50, None) && answer_now(3, 0, None) && answer_now(3, 50, Some(3)));
        assert!(!answer_now(3, 50, Some(2)) && !answer_now(3, 50, None));
    }

    #[test]
    fn delta_mode_asks_every_peer_at_once_and_completes_on_a_new_enough_copy() {
        let mut p = FetchPlan::new(0, false, names(&["b", "c"]), vec![], 5, 50);
        assert_eq!(asks(&mut p), ["b", "c"]);
        assert_eq!(p.poll_timeout(), None, "no hedge in delta mode");
        p.on_reply("b", Reply::Copy(4), false);
        assert_eq!(p.outcome(), None);
        p.on_reply("c", Reply::Copy(5), true);
        assert_eq!(p.outcome(), Some(Fetched::Complete));
    }

    #[test]
    fn backup_mode_asks_the_primary_then_hedges_after_the_wait_plus_25_ms() {
        let mut p = FetchPlan::new(1_000, true, names(&["p", "b"]), vec![], 5, 50);
        let first: Vec<Ask> = std::iter::from_fn(|| p.poll_ask()).collect();
        assert_eq!(
            first,
            vec![Ask {
                node: "p".into(),
                wait_ms: 50,
                timeout_ms: 550
            }]
        );
        assert_eq!(p.poll_timeout(), Some(1_000 + 50 + HEDGE_AFTER_MS));
        p.on_timeout(1_074);
        assert!(asks(&mut p).is_empty(), "not yet");
        p.on_timeout(1_075);
        assert_eq!(asks(&mut p), ["b"], "the hedge");
        assert_eq!(p.poll_timeout(), None);
        p.on_reply("b", Reply::Copy(5), true);
        assert_eq!(p.outcome(), Some(Fetched::Complete));
    }

    #[test]
    fn an_answer_without_the_version_asks_the_other_owners_at_once() {
        let mut p = FetchPlan::new(0, true, names(&["p", "b1", "b2"]), vec![], 5, 50);
        assert_eq!(asks(&mut p), ["p"]);
        p.on_reply("p", Reply::Copy(3), false);
        assert_eq!(asks(&mut p), ["b1", "b2"]);
        p.on_reply("b1", Reply::NoCopy, false);
        p.on_reply("b2", Reply::Copy(4), false);
        assert_eq!(p.outcome(), Some(Fetched::Complete), "every owner answered");
    }

    #[test]
    fn a_silent_replica_makes_the_fetch_incomplete() {
        let mut p = FetchPlan::new(0, true, names(&["p", "b"]), names(&["x"]), 5, 50);
        asks(&mut p);
        p.on_reply("p", Reply::NoAnswer, false);
        assert_eq!(asks(&mut p), ["b"]);
        p.on_reply("b", Reply::Copy(3), false);
        assert_eq!(
            p.outcome(),
            Some(Fetched::Incomplete),
            "no fallback when an owner was silent"
        );
        // A reply from someone not asked, or twice, changes nothing.
        p.on_reply("x", Reply::Copy(9), true);
        assert_eq!(p.outcome(), Some(Fetched::Incomplete));
    }

    #[test]
    fn owners_without_the_version_make_it_ask_the_other_members_before_a_rollback() {
        let mut p = FetchPlan::new(0, true, names(&["p"]), names(&["x", "y"]), 5, 50);
        assert_eq!(asks(&mut p), ["p"]);
        p.on_reply("p", Reply::Copy(4), false);
        let others: Vec<Ask> = std::iter::from_fn(|| p.poll_ask()).collect();
        assert_eq!(others.len(), 2);
        assert!(others.iter().all(|a| a.wait_ms == 0), "they answer at once");
        p.on_reply("x", Reply::NoAnswer, false);
        assert_eq!(p.outcome(), None);
        p.on_reply("y", Reply::NoCopy, false);
        assert_eq!(
            p.outcome(),
            Some(Fetched::Incomplete),
            "a silent non-owner may be the write's server: not a rollback"
        );
        let mut p = FetchPlan::new(0, true, names(&["p"]), names(&["x"]), 5, 50);
        asks(&mut p);
        p.on_reply("p", Reply::NoCopy, false);
        asks(&mut p);
        p.on_reply("x", Reply::NoCopy, false);
        assert_eq!(p.outcome(), Some(Fetched::Complete), "everyone answered");
        // Found on a non-owner: complete at once.
        let mut p = FetchPlan::new(0, true, names(&["p"]), names(&["x"]), 5, 50);
        asks(&mut p);
        p.on_reply("p", Reply::NoCopy, false);
        asks(&mut p);
        p.on_reply("x", Reply::Copy(5), true);
        assert_eq!(p.outcome(), Some(Fetched::Complete));
        // No client version: no fallback, and no wait at the replicas.
        let mut p = FetchPlan::new(0, true, names(&["p"]), names(&["x"]), 0, 50);
        assert_eq!(p.poll_ask().unwrap().wait_ms, 0);
        p.on_reply("p", Reply::NoCopy, false);
        assert_eq!(p.outcome(), Some(Fetched::Complete));
    }

    #[test]
    fn nobody_to_ask_is_complete_at_once() {
        let p = FetchPlan::new(0, true, vec![], names(&["x"]), 5, 50);
        assert_eq!(p.outcome(), Some(Fetched::Complete));
    }
}
