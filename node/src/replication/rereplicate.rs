//! Backup mode: which sessions a node copies to whom when the live view changes, or when
//! it leaves. Pure functions of the store, this node's id and the two views; the driver
//! (`cluster/lifecycle.rs`) pushes the plan and retries what failed.

use std::collections::HashMap;

use crate::ownership;
use crate::store::Store;
use crate::wire::SessionId;

/// Sessions this node (`me`) must copy when the live view changes from `old` to `new`,
/// by target member; `k` backups per session.
///
/// Leaving: this node hands every session it owns to the owners it gains without it.
/// Otherwise, for each session whose owner *set* changed, every holder that is an owner
/// under `new` copies it to all the other new owners (or, when no old owner survives,
/// whoever holds a copy does). Copying to owners that kept theirs costs a little, but it
/// heals copies that an intermediate view's sender never delivered: two members dying
/// a few milliseconds apart produce two view changes, and the first one's sender may be
/// the second to die. Merges are idempotent, so a copy that arrives twice changes nothing.
pub fn plan_moves(
    store: &Store,
    me: &str,
    k: usize,
    old: &[String],
    new: &[String],
    leaving: bool,
    now: u64,
) -> HashMap<String, Vec<SessionId>> {
    let mut plan: HashMap<String, Vec<SessionId>> = HashMap::new();
    for sid in store.ids() {
        if store.is_dead(sid, now).unwrap_or(true) {
            continue;
        }
        let old_o = ownership::owners(sid, old, k);
        let new_o = ownership::owners(sid, new, k);
        let targets: Vec<&str> = if leaving {
            if !old_o.contains(&me) {
                continue;
            }
            new_o
                .iter()
                .copied()
                .filter(|t| *t != me && !old_o.contains(t))
                .collect()
        } else {
            let same = old_o.len() == new_o.len() && old_o.iter().all(|o| new_o.contains(o));
            let survivor = old_o.iter().any(|o| new_o.contains(o));
            if same || (survivor && !new_o.contains(&me)) {
                continue;
            }
            new_o.iter().copied().filter(|t| *t != me).collect()
        };
        for t in targets {
            plan.entry(t.to_string()).or_default().push(sid);
        }
    }
    plan
}

/// The failed pushes still worth retrying under `view`: the target is still a live
/// owner, and the session is still held here.
pub fn still_needed(
    store: &Store,
    k: usize,
    failed: HashMap<String, Vec<SessionId>>,
    view: &[String],
    now: u64,
) -> HashMap<String, Vec<SessionId>> {
    failed
        .into_iter()
        .filter(|(node, _)| view.contains(node))
        .map(|(node, sids)| {
            let keep: Vec<SessionId> = sids
                .into_iter()
                .filter(|sid| {
                    ownership::is_owner(*sid, view, k, &node)
                        && store.is_dead(*sid, now) == Some(false)
                })
                .collect();
            (node, keep)
        })
        .filter(|(_, sids)| !sids.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Delta, Stamp};

    const NOW: u64 = 1_000;

    fn store(n: i128) -> Store {
        let s = Store::new();
        for sid in 0..n {
            s.apply_at(
                &Delta {
                    sid,
                    stamp: Stamp {
                        counter: 1,
                        origin: 1,
                    },
                    base: 0,
                    set: vec![("a".into(), bytes::Bytes::from_static(b"1"))],
                    removed: vec![],
                    expiry: Some(NOW + 600),
                    invalidate: false,
                },
                NOW,
            );
        }
        s
    }

    fn v(ids: &[&str]) -> Vec<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_node_that_was_alone_hands_everything_to_the_new_owners() {
        // A cut node saw only itself; on the heal every session's owners change and none
        // of its old owners (itself) stays one for the sessions the others now own.
        let s = store(300);
        let all = v(&["a", "b", "c"]);
        let plan = plan_moves(&s, "c", 1, &v(&["c"]), &all, false, NOW);
        for sid in 0..300 {
            let owners = ownership::owners(sid, &all, 1);
            for o in owners.iter().filter(|o| **o != "c") {
                assert!(plan[*o].contains(&sid), "session {sid} to {o}");
            }
        }
    }

    #[test]
    fn leaving_hands_over_only_what_it_owned_to_owners_it_gains() {
        let s = store(300);
        let all = v(&["a", "b", "c"]);
        let plan = plan_moves(&s, "c", 1, &all, &v(&["a", "b"]), true, NOW);
        let moved: usize = plan.values().map(Vec::len).sum();
        let owned = (0..300)
            .filter(|sid| ownership::owners(*sid, &all, 1).contains(&"c"))
            .count();
        assert_eq!(moved, owned, "one copy per session c owned");
        let retry = still_needed(&s, 1, plan, &v(&["a"]), NOW);
        assert!(
            retry.keys().all(|n| n == "a"),
            "only live targets are retried"
        );
    }
}
