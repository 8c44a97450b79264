//! Who owns a session in `backup` mode: rendezvous (highest-random-weight) hashing.
//!
//! Every member scores `hash(session, member)`; the highest is the primary, the next `k`
//! the backups. All nodes with the same member list compute the same owners without
//! talking, and a join or leave moves only the sessions whose top `k+1` changed
//! (about `(k+1)/N` of them), unlike `hash mod N`.

use crate::model::SessionId;

/// XXH3 of the member name seeded with the session id: a specified, stable hash, so
/// nodes of different builds (a rolling upgrade) agree on owners.
fn score(sid: SessionId, member: &str) -> u64 {
    let seed = (sid as u128 as u64) ^ ((sid as u128 >> 64) as u64).rotate_left(32);
    xxhash_rust::xxh3::xxh3_64_with_seed(member.as_bytes(), seed)
}

/// The owners of `sid` among `members`: primary first, then up to `backups` backups.
pub fn owners(sid: SessionId, members: &[String], backups: usize) -> Vec<&str> {
    let mut scored: Vec<(u64, &str)> = members
        .iter()
        .map(|m| (score(sid, m), m.as_str()))
        .collect();
    // Highest score first; ties (astronomically rare) broken by name for determinism.
    scored.sort_unstable_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    scored
        .into_iter()
        .take(backups + 1)
        .map(|(_, m)| m)
        .collect()
}

/// The primary of `sid` among `members` (the first of [`owners`]), without sorting.
pub fn primary(sid: SessionId, members: &[String]) -> Option<&str> {
    members
        .iter()
        .map(|m| (score(sid, m), m.as_str()))
        .max_by(|a, b| a.0.cmp(&b.0).then_with(|| b.1.cmp(a.1)))
        .map(|(_, m)| m)
}

/// Whether `me` is among the owners of `sid`.
pub fn is_owner(sid: SessionId, members: &[String], backups: usize, me: &str) -> bool {
    owners(sid, members, backups).contains(&me)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn members(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("node-{i}")).collect()
    }

    fn sid(i: u64) -> SessionId {
        // Spread like random ids.
        (i as i128).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835u128 as i128)
    }

    #[test]
    fn primary_is_the_first_owner() {
        for n in [1, 2, 5, 16] {
            let m = members(n);
            for i in 0..500 {
                assert_eq!(primary(sid(i), &m), owners(sid(i), &m, 1).first().copied());
            }
        }
        assert_eq!(primary(sid(1), &[]), None);
    }

    #[test]
    fn owners_are_distinct_and_deterministic() {
        let m = members(6);
        for i in 0..1000 {
            let o = owners(sid(i), &m, 2);
            assert_eq!(o.len(), 3);
            assert!(o[0] != o[1] && o[1] != o[2] && o[0] != o[2]);
            assert_eq!(o, owners(sid(i), &m, 2));
        }
        assert_eq!(
            owners(sid(1), &members(2), 5).len(),
            2,
            "never more owners than members"
        );
    }

    #[test]
    fn load_is_balanced() {
        let m = members(6);
        let k = 1;
        let n = 60_000;
        let mut held: HashMap<&str, usize> = HashMap::new();
        for i in 0..n {
            for o in owners(sid(i), &m, k) {
                *held.entry(o).or_default() += 1;
            }
        }
        let expected = n as f64 * (k + 1) as f64 / 6.0;
        for (node, c) in held {
            let ratio = c as f64 / expected;
            assert!(
                (0.9..1.1).contains(&ratio),
                "{node} holds {c}, expected ~{expected}"
            );
        }
    }

    #[test]
    fn a_join_or_leave_moves_few_sessions() {
        let before = members(8);
        let mut after = before.clone();
        after.push("node-new".into());
        let n = 20_000;
        let k = 1;
        let moved = (0..n)
            .filter(|&i| {
                let a: Vec<_> = owners(sid(i), &before, k);
                let b: Vec<_> = owners(sid(i), &after, k);
                a.iter().any(|x| !b.contains(x))
            })
            .count();
        // Only sessions the new node takes change owners: about (k+1)/9 of them.
        let frac = moved as f64 / n as f64;
        assert!(frac < 0.3, "moved {frac}");
        // Leave: only sessions the departed node owned change.
        let gone = "node-3";
        let left: Vec<String> = before.iter().filter(|m| *m != gone).cloned().collect();
        for i in 0..n {
            let a = owners(sid(i), &before, k);
            let b = owners(sid(i), &left, k);
            if !a.contains(&gone) {
                assert_eq!(a, b, "session {i} moved although its owners stayed");
            } else {
                // Survivors keep their relative order; the next-ranked node fills in.
                let kept: Vec<_> = a.iter().filter(|x| **x != gone).collect();
                assert!(kept.iter().all(|x| b.contains(x)));
            }
        }
    }
}
