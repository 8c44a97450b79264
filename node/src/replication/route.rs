//! The write path's decisions: where a local write goes (delta mode: every live peer;
//! backup mode: straight to the backups from the primary, else forwarded to the
//! primary, or straight to the owners when the primary cannot be reached), how many
//! members hold it when that ends, the retry of a sync forward whose primary left before
//! acking (re-decided under the new view), the async "primary's queue is full" fallback,
//! what a primary does with a forwarded write, and where batched touches go.
//!
//! Pure: the [`super::replica::Replica`] answers these from its view and member table
//! ([`super::replica::Replica::route_write`] and friends); the driver (`cluster/mod.rs`)
//! and the simulation perform the sends and the waits.

use std::collections::BTreeMap;

use crate::wire::SessionId;

/// Attempts of a sync forward (the first one included) before the write goes straight to
/// the owners.
pub const FORWARD_ATTEMPTS: u32 = 3;

/// Touches per `Touch` message.
pub const TOUCH_BATCH: usize = 1024;

/// Where a local write goes, decided under the current view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Send the delta to `targets` (sync: wait for each): delta mode (every live peer),
    /// the primary in backup mode (its backups), or a node whose primary is unknown or
    /// unreachable (the owners other than itself).
    Direct {
        /// Peers to send the delta to.
        targets: Vec<String>,
    },
    /// Backup mode, this node is not the primary: forward to it; it applies the write and
    /// sends it to the other owners.
    Forward {
        /// The session's primary.
        primary: String,
        /// The other owners (the primary's backups), this node excluded.
        backups: Vec<String>,
        /// Members holding the write once the primary acks: this node, the primary and
        /// the backups it replicates to ([`Route::holders_on_ack`]).
        holders: usize,
    },
}

impl Route {
    /// Decides the route of a write: `owners` of the session under the current view
    /// (primary first; backup mode), `peers` the live peers (delta mode), `reachable`
    /// whether a live link to a member exists.
    pub fn decide(
        me: &str,
        backup_mode: bool,
        owners: &[String],
        peers: &[String],
        reachable: impl Fn(&str) -> bool,
    ) -> Route {
        if !backup_mode {
            return Route::Direct {
                targets: peers.to_vec(),
            };
        }
        let others: Vec<String> = owners.iter().filter(|o| *o != me).cloned().collect();
        match owners.first() {
            Some(p) if p != me && reachable(p) => {
                let backups: Vec<String> = others.iter().filter(|o| *o != p).cloned().collect();
                Route::Forward {
                    primary: p.clone(),
                    holders: Self::holders_on_ack(me, owners),
                    backups,
                }
            }
            // This node is the primary, or the primary is unknown or unreachable: the
            // owners get it straight from here.
            _ => Route::Direct { targets: others },
        }
    }

    /// Members holding a forwarded write once the primary acked it: the owners (the
    /// primary acks after the backups it sent the write to acked or were suspected, and
    /// only when its own count is acknowledged: [`forward_acked`]) plus this node when it
    /// is not one of them. `1 + backups` owners while the view has that many members.
    pub fn holders_on_ack(me: &str, owners: &[String]) -> usize {
        owners.len() + usize::from(!owners.iter().any(|o| o == me))
    }

    /// Async forward whose primary's queue is full (stuck, not suspected yet): the
    /// backups get the write straight from here, so it does not live on this node alone.
    pub fn full_queue_fallback(&self) -> Vec<String> {
        match self {
            Route::Forward { backups, .. } => backups.clone(),
            Route::Direct { .. } => Vec::new(),
        }
    }
}

/// What a primary does with a forwarded write: the owners to send it to (every owner
/// other than itself; if it no longer is an owner, all of them, so the new primary gets
/// it too).
pub fn forward_targets(me: &str, owners: &[String]) -> Vec<String> {
    owners.iter().filter(|o| *o != me).cloned().collect()
}

/// Whether the primary acks a forwarded sync write whose own wait ended with `holders`
/// members (itself included): only when that count is acknowledged under the cluster's
/// rule, so the forwarder never acknowledges what fewer than `--min-members` hold.
pub fn forward_acked(acknowledged: bool) -> bool {
    acknowledged
}

/// The next step of a local write ([`ForwardRetry`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Send the delta to `targets` (sync: and wait for them); the write ends there.
    Send(Vec<String>),
    /// Forward to `primary` (sync: wait for its ack until [`ForwardRetry::deadline`]).
    Forward {
        /// The primary.
        primary: String,
        /// Async and the primary's queue is full: send to these instead.
        fallback: Vec<String>,
        /// Members holding the write once the primary acks.
        holders: usize,
    },
    /// The sync timeout passed before a primary acked: held by this node alone.
    TimedOut,
}

/// A local write under way: the forward's attempts and deadline. A sync forward whose
/// primary leaves before acking (its waiter is failed at once) is decided again under the
/// new view, so an acknowledged sync write is on the owners, not only on its writer;
/// bounded by the sync timeout and [`FORWARD_ATTEMPTS`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardRetry {
    deadline: u64,
    attempts: u32,
}

impl ForwardRetry {
    /// A write started at `now` (ms) with the sync timeout `sync_timeout_ms`.
    pub fn new(now: u64, sync_timeout_ms: u64) -> ForwardRetry {
        ForwardRetry {
            deadline: now.saturating_add(sync_timeout_ms),
            attempts: 0,
        }
    }

    /// When a sync forward stops waiting (ms).
    pub fn deadline(&self) -> u64 {
        self.deadline
    }

    /// The first step, from the route decided now.
    pub fn first(&mut self, route: Route) -> Step {
        self.attempts = 1;
        Self::step(route)
    }

    /// The forward to the primary failed at `now` (it left, its link broke, or no link
    /// was found) without an ack; `route` is decided again under the current view.
    pub fn after_failure(&mut self, now: u64, route: Route) -> Step {
        if now >= self.deadline {
            return Step::TimedOut;
        }
        if self.attempts >= FORWARD_ATTEMPTS {
            // The primary kept failing fast: the owners get it straight from here.
            return Step::Send(match route {
                Route::Direct { targets } => targets,
                Route::Forward {
                    primary,
                    mut backups,
                    ..
                } => {
                    backups.insert(0, primary);
                    backups
                }
            });
        }
        self.attempts += 1;
        Self::step(route)
    }

    fn step(route: Route) -> Step {
        match route {
            Route::Direct { targets } => Step::Send(targets),
            r @ Route::Forward { .. } => {
                let fallback = r.full_queue_fallback();
                let Route::Forward {
                    primary, holders, ..
                } = r
                else {
                    unreachable!()
                };
                Step::Forward {
                    primary,
                    fallback,
                    holders,
                }
            }
        }
    }
}

/// Where batched touches go: delta mode, every live peer gets every touch; backup mode,
/// each touch goes to the session's owners other than this node. In batches of
/// [`TOUCH_BATCH`], by target.
pub fn touch_plan(
    me: &str,
    backup_mode: bool,
    touched: &[(SessionId, u64)],
    peers: &[String],
    owners: impl Fn(SessionId) -> Vec<String>,
) -> BTreeMap<String, Vec<Vec<(SessionId, u64)>>> {
    let mut per: BTreeMap<String, Vec<(SessionId, u64)>> = BTreeMap::new();
    for &(sid, e) in touched {
        if backup_mode {
            for o in owners(sid) {
                if o != me {
                    per.entry(o).or_default().push((sid, e));
                }
            }
        } else {
            for p in peers {
                per.entry(p.clone()).or_default().push((sid, e));
            }
        }
    }
    per.into_iter()
        .map(|(node, list)| {
            let batches = list.chunks(TOUCH_BATCH).map(|c| c.to_vec()).collect();
            (node, batches)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ownership;

    fn view(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("n{i}")).collect()
    }

    fn owners(sid: SessionId, view: &[String], k: usize) -> Vec<String> {
        ownership::owners(sid, view, k)
            .into_iter()
            .map(String::from)
            .collect()
    }

    /// A session whose primary is `primary` (and, given, whose owners include `member` or
    /// not) among `view` with `k` backups.
    fn session(view: &[String], k: usize, pred: impl Fn(&[String]) -> bool) -> SessionId {
        (1..10_000)
            .find(|&s| pred(&owners(s, view, k)))
            .expect("some session fits")
    }

    #[test]
    fn delta_mode_sends_to_every_live_peer() {
        let peers = vec!["n1".to_string(), "n2".to_string()];
        let r = Route::decide("n0", false, &[], &peers, |_| true);
        assert_eq!(
            r,
            Route::Direct {
                targets: peers.clone()
            }
        );
    }

    #[test]
    fn routing_with_3_and_5_nodes_and_1_or_2_backups() {
        for (n, k) in [(3, 1), (3, 2), (5, 1), (5, 2)] {
            let v = view(n);
            // The primary sends to its k backups.
            let sid = session(&v, k, |o| o[0] == "n0");
            let r = Route::decide("n0", true, &owners(sid, &v, k), &[], |_| true);
            let Route::Direct { targets } = r else {
                panic!("the primary sends directly: {r:?}")
            };
            assert_eq!(targets.len(), k, "{n} nodes, {k} backups");
            assert!(!targets.contains(&"n0".to_string()));
            // A backup forwards to the primary; holders: the k + 1 owners.
            let sid = session(&v, k, |o| o[0] != "n0" && o.contains(&"n0".to_string()));
            let o = owners(sid, &v, k);
            let r = Route::decide("n0", true, &o, &[], |_| true);
            assert_eq!(
                r,
                Route::Forward {
                    primary: o[0].clone(),
                    backups: o[1..].iter().filter(|x| *x != "n0").cloned().collect(),
                    holders: k + 1,
                },
                "{n} nodes, {k} backups, a backup writes"
            );
            assert_eq!(r.full_queue_fallback().len(), k - 1);
            // A non-owner forwards too; holders: the owners and itself.
            if n > k + 1 {
                let sid = session(&v, k, |o| !o.contains(&"n0".to_string()));
                let o = owners(sid, &v, k);
                let r = Route::decide("n0", true, &o, &[], |_| true);
                let Route::Forward {
                    primary, holders, ..
                } = &r
                else {
                    panic!("a non-owner forwards: {r:?}")
                };
                assert_eq!(primary, &o[0]);
                assert_eq!(
                    *holders,
                    k + 2,
                    "{n} nodes, {k} backups, a non-owner writes"
                );
                assert_eq!(
                    r.full_queue_fallback(),
                    o[1..].to_vec(),
                    "a full queue: every backup straight"
                );
                // Its primary unreachable: every owner straight from here.
                let r = Route::decide("n0", true, &o, &[], |x| x != o[0]);
                assert_eq!(r, Route::Direct { targets: o.clone() });
            }
        }
    }

    #[test]
    fn a_view_smaller_than_the_owner_count_holds_what_it_can() {
        // 2 members, 2 backups: both own everything.
        let v = view(2);
        let sid = session(&v, 2, |o| o[0] == "n1");
        let r = Route::decide("n0", true, &owners(sid, &v, 2), &[], |_| true);
        assert!(matches!(r, Route::Forward { holders: 2, .. }), "{r:?}");
        // Alone: nowhere to send.
        let v = view(1);
        let r = Route::decide("n0", true, &owners(5, &v, 1), &[], |_| true);
        assert_eq!(r, Route::Direct { targets: vec![] });
    }

    #[test]
    fn a_forward_whose_primary_leaves_is_decided_again_under_the_new_view() {
        let v = view(5);
        let sid = session(&v, 1, |o| !o.contains(&"n0".to_string()));
        let o = owners(sid, &v, 1);
        let mut retry = ForwardRetry::new(1_000, 2_000);
        let first = retry.first(Route::decide("n0", true, &o, &[], |_| true));
        assert_eq!(
            first,
            Step::Forward {
                primary: o[0].clone(),
                fallback: vec![o[1].clone()],
                holders: 3
            }
        );
        // The primary leaves: the new view's primary is asked.
        let smaller: Vec<String> = v.iter().filter(|m| **m != o[0]).cloned().collect();
        let o2 = owners(sid, &smaller, 1);
        assert_eq!(o2[0], o[1], "its backup is promoted");
        let again = retry.after_failure(1_100, Route::decide("n0", true, &o2, &[], |_| true));
        assert!(
            matches!(&again, Step::Forward { primary, .. } if *primary == o2[0]),
            "{again:?}"
        );
        // And once more; then the attempts are used up: the owners straight.
        let r = Route::decide("n0", true, &o2, &[], |_| true);
        assert!(matches!(
            retry.after_failure(1_200, r.clone()),
            Step::Forward { .. }
        ));
        let straight: Vec<String> = o2.iter().filter(|x| *x != "n0").cloned().collect();
        assert_eq!(retry.after_failure(1_300, r), Step::Send(straight));
        // Past the deadline: timed out, whatever the view.
        let mut retry = ForwardRetry::new(1_000, 2_000);
        retry.first(Route::decide("n0", true, &o, &[], |_| true));
        assert_eq!(retry.deadline(), 3_000);
        assert_eq!(
            retry.after_failure(3_000, Route::decide("n0", true, &o2, &[], |_| true)),
            Step::TimedOut
        );
    }

    #[test]
    fn a_forward_whose_primary_is_now_this_node_sends_to_the_backups() {
        let v = view(3);
        let sid = session(&v, 1, |o| o[0] != "n0" && o[1] == "n0");
        let o = owners(sid, &v, 1);
        let mut retry = ForwardRetry::new(0, 2_000);
        retry.first(Route::decide("n0", true, &o, &[], |_| true));
        let smaller: Vec<String> = v.iter().filter(|m| **m != o[0]).cloned().collect();
        let o2 = owners(sid, &smaller, 1);
        assert_eq!(o2[0], "n0");
        assert_eq!(
            retry.after_failure(10, Route::decide("n0", true, &o2, &[], |_| true)),
            Step::Send(vec![o2[1].clone()])
        );
    }

    #[test]
    fn a_primary_replicates_a_forward_to_every_other_owner() {
        let o = vec!["n1".to_string(), "n2".to_string(), "n3".to_string()];
        assert_eq!(forward_targets("n1", &o), vec!["n2", "n3"]);
        assert_eq!(
            forward_targets("n0", &o),
            o,
            "no longer an owner: all of them"
        );
        assert!(forward_acked(true));
        assert!(!forward_acked(false));
    }

    #[test]
    fn touches_go_to_every_peer_or_to_the_owners_in_batches() {
        let peers = vec!["n1".to_string(), "n2".to_string()];
        let touched: Vec<(SessionId, u64)> =
            (0..(TOUCH_BATCH as i128 + 1)).map(|s| (s, 9)).collect();
        let plan = touch_plan("n0", false, &touched, &peers, |_| unreachable!());
        assert_eq!(plan.len(), 2);
        assert_eq!(plan["n1"].len(), 2, "two batches");
        assert_eq!(plan["n1"][0].len(), TOUCH_BATCH);
        let v = view(5);
        let plan = touch_plan("n0", true, &touched[..10], &[], |sid| owners(sid, &v, 1));
        let sent: usize = plan.values().flatten().map(|b| b.len()).sum();
        let expected: usize = touched[..10]
            .iter()
            .map(|(s, _)| owners(*s, &v, 1).iter().filter(|o| *o != "n0").count())
            .sum();
        assert_eq!(sent, expected);
        assert!(!plan.contains_key("n0"));
    }
}
