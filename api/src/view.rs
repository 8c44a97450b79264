//! The `/cluster` document a node serves on its admin port.

use serde::{Deserialize, Serialize};

use crate::{ReplicationMode, SendMode};

/// State of a member as the reporting node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    /// Handshaken link, traffic flows.
    Alive,
    /// Link broken; reconnecting. A failed connect removes it.
    Suspect,
}

/// One other member in a [`ClusterView`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberView {
    /// Node id.
    pub node: String,
    /// Replication address.
    pub addr: String,
    /// Alive or suspect.
    pub state: MemberState,
    /// Incarnation (start time, unix ms).
    pub incarnation: u64,
}

/// A node's account of itself and the cluster it sees (`GET /cluster` on the admin port).
///
/// Fields added after the first release default when absent, so a newer reader
/// understands an older node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterView {
    /// This node's id.
    pub node: String,
    /// Cluster name.
    pub cluster: String,
    /// This node's incarnation.
    #[serde(default)]
    pub incarnation: u64,
    /// Replication mode.
    pub replication: ReplicationMode,
    /// Backups per session (backup mode).
    #[serde(default)]
    pub backups: usize,
    /// Send mode.
    pub send_mode: SendMode,
    /// Joined and state transferred.
    pub ready: bool,
    /// Live sessions held.
    pub sessions: usize,
    /// Sessions this node is primary for (delta mode: all it holds).
    #[serde(default)]
    pub primary: usize,
    /// Backup mode: sessions this node is a backup for.
    #[serde(default)]
    pub backup: usize,
    /// Backup mode: sessions whose owners include a node that does not hold them yet,
    /// as far as this node knows (re-replication backlog).
    #[serde(default)]
    pub rereplication_backlog: u64,
    /// The other members (alive and suspect); this node is not among them.
    pub members: Vec<MemberView>,
    /// Ids of the cluster keys this node holds, primary first.
    #[serde(default)]
    pub keys: Vec<String>,
    /// Discovered peers that refused this node's keys lately (a node with no live member
    /// and such peers is not ready).
    #[serde(default)]
    pub refusing_peers: Vec<String>,
    /// Discovered peers that answer TCP but with which no handshake completed lately, and
    /// why (a node with no live member and such peers is not ready).
    #[serde(default)]
    pub peer_problems: Vec<PeerProblem>,
    /// Oldest replication protocol version this node speaks (0: a node too old to say).
    #[serde(default)]
    pub protocol_min: u8,
    /// Newest replication protocol version this node speaks; each connection uses the
    /// highest version both ends speak.
    #[serde(default)]
    pub protocol_max: u8,
    /// Why this node is not ready (absent when it is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_ready_reason: Option<NotReadyReason>,
    /// The node's build version ([`crate::VERSION`] of its build); `None` from a node
    /// older than the field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// A peer this node reaches but cannot complete a handshake with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerProblem {
    /// The peer's replication address.
    pub addr: String,
    /// Short label: `version_skew`, `closed`, `bad_magic`, ...
    pub reason: String,
    /// What went wrong, for people.
    pub detail: String,
}

/// Why a node reports not ready (`/readyz` 503). Spelled as a Kubernetes condition
/// reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NotReadyReason {
    /// Still joining: discovering peers or receiving the state transfer.
    Joining,
    /// Shutting down (draining or leaving).
    ShuttingDown,
    /// Fewer live members than `--min-members`.
    TooFewMembers,
    /// Every peer found refuses this node's cluster key (or it theirs).
    KeyRefused,
    /// Every peer found speaks no protocol version this node speaks.
    VersionSkew,
    /// Peers answer, but no handshake with any of them completes (e.g. their handshake
    /// slots are taken).
    HandshakeFailed,
}

impl ClusterView {
    /// Ids of this node and every member it lists, sorted.
    pub fn member_ids(&self) -> Vec<&str> {
        let mut ids: Vec<&str> = std::iter::once(self.node.as_str())
            .chain(self.members.iter().map(|m| m.node.as_str()))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_reads_an_older_node() {
        let v = ClusterView {
            node: "a".into(),
            cluster: "web.shop".into(),
            replication: ReplicationMode::Backup,
            send_mode: SendMode::Sync,
            ready: true,
            sessions: 3,
            members: vec![MemberView {
                node: "b".into(),
                addr: "10.0.0.2:4000".into(),
                state: MemberState::Suspect,
                incarnation: 7,
            }],
            version: Some(crate::VERSION.into()),
            ..ClusterView::default()
        };
        let json = serde_json::to_string(&v).unwrap();
        assert!(json.contains(r#""replication":"backup""#), "{json}");
        assert!(json.contains(r#""state":"suspect""#), "{json}");
        assert_eq!(serde_json::from_str::<ClusterView>(&json).unwrap(), v);
        let old = r#"{"node":"a","cluster":"c","replication":"delta","send_mode":"async",
            "ready":false,"sessions":1,"members":[]}"#;
        let v: ClusterView = serde_json::from_str(old).unwrap();
        assert_eq!((v.keys.len(), v.primary, v.member_ids()), (0, 0, vec!["a"]));
        assert_eq!(v.version, None, "a node older than the version field");
        assert!(serde_json::from_str::<ClusterView>(r#"{"members":3}"#).is_err());
    }
}
