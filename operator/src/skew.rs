//! The `VersionSkew` condition: whether the nodes of a SessionCluster all speak a common
//! replication protocol version. Each node reports the range it speaks and the peers it
//! refused for lack of a common version (`/cluster`: `protocol_min`, `protocol_max`,
//! `peer_problems` with reason `version_skew`). Pure.

use crate::crd::Condition;
use crate::rotation::NodeKeys;

/// The condition type.
pub const CONDITION: &str = "VersionSkew";

/// `VersionSkew=True` (reason `IncompatibleVersions`) when a node refused a peer for
/// speaking no protocol version it speaks, `False` (reason `Compatible`) otherwise;
/// `None` when no node answered.
pub fn condition(nodes: &[NodeKeys], generation: Option<i64>) -> Option<Condition> {
    if nodes.is_empty() {
        return None;
    }
    let refused: Vec<String> = nodes
        .iter()
        .flat_map(|n| {
            n.version_skew
                .iter()
                .map(move |p| format!("{} refused {p}", n.node))
        })
        .collect();
    let (skewed, reason, message) = if refused.is_empty() {
        let mut ranges: Vec<String> = nodes
            .iter()
            .filter(|n| n.protocol != (0, 0))
            .map(|n| format!("{}-{}", n.protocol.0, n.protocol.1))
            .collect();
        ranges.sort();
        ranges.dedup();
        let spoken = if ranges.is_empty() {
            "not reported".to_string()
        } else {
            ranges.join(", ")
        };
        (
            false,
            "Compatible",
            format!("every node speaks a common protocol version (ranges: {spoken})"),
        )
    } else {
        (
            true,
            "IncompatibleVersions",
            format!(
                "nodes speak no common replication protocol version and stay apart (adjacent \
                 releases interoperate; upgrade one release at a time): {}",
                refused.join("; ")
            ),
        )
    };
    Some(crate::status::condition(
        CONDITION, skewed, reason, message, generation,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, protocol: (u8, u8), skew: &[&str]) -> NodeKeys {
        NodeKeys {
            node: name.into(),
            protocol,
            version_skew: skew.iter().map(|s| s.to_string()).collect(),
            ..NodeKeys::default()
        }
    }

    #[test]
    fn no_report_no_condition() {
        assert!(condition(&[], Some(1)).is_none());
    }

    #[test]
    fn compatible_nodes_name_their_ranges() {
        let c = condition(&[node("a", (2, 3), &[]), node("b", (2, 2), &[])], Some(4)).unwrap();
        assert_eq!(
            (c.type_.as_str(), c.status.as_str()),
            ("VersionSkew", "False")
        );
        assert_eq!(c.reason, "Compatible");
        assert!(c.message.contains("2-2, 2-3"), "{}", c.message);
        assert_eq!(c.observed_generation, Some(4));
    }

    #[test]
    fn a_refused_peer_is_skew_and_named() {
        let c = condition(
            &[
                node(
                    "a",
                    (2, 3),
                    &["10.0.0.9:4000: it speaks 4-4, this node 2-3"],
                ),
                node("c", (4, 4), &[]),
            ],
            None,
        )
        .unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "IncompatibleVersions")
        );
        assert!(
            c.message.contains("a refused 10.0.0.9:4000"),
            "{}",
            c.message
        );
    }

    #[test]
    fn the_nodes_report_becomes_the_input() {
        let v = tribe_api::ClusterView {
            node: "a".into(),
            protocol_min: 2,
            protocol_max: 3,
            peer_problems: vec![
                tribe_api::PeerProblem {
                    addr: "10.0.0.9:4000".into(),
                    reason: "version_skew".into(),
                    detail: "speaks 4-4".into(),
                },
                tribe_api::PeerProblem {
                    addr: "10.0.0.8:4000".into(),
                    reason: "closed".into(),
                    detail: "closed".into(),
                },
            ],
            ..tribe_api::ClusterView::default()
        };
        let n = NodeKeys::from(v);
        assert_eq!(n.protocol, (2, 3));
        assert_eq!(
            n.version_skew,
            vec!["10.0.0.9:4000: speaks 4-4".to_string()]
        );
    }
}
