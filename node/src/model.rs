//! The replicated data model: sessions, their attributes, the stamps that order writes,
//! and the deltas a write produces. Plain data, shared by the store, the replication
//! rules, persistence and the wire (which encodes it: [`crate::wire`]); this module
//! depends on none of them.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A session id (tower-sessions' `Id` is an `i128`).
pub type SessionId = i128;

/// How a session appears in logs: a session id is the bearer secret in the user's cookie,
/// so logs carry a short one-way tag instead (the same session always gets the same tag,
/// so its lines can be followed; the tag does not give the id back).
pub fn log_tag(sid: SessionId) -> String {
    let h = xxhash_rust::xxh3::xxh3_64_with_seed(&sid.to_le_bytes(), LOG_TAG_SEED);
    format!("{:08x}", h >> 32)
}

/// Fixed, so that every node and every restart tags a session the same way.
const LOG_TAG_SEED: u64 = 0x7472_6962_655f_6c6f;

/// A Lamport stamp: the per-session counter of a write plus the writer's origin id
/// (ties between concurrent writes are broken by origin, so every node picks the same).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Stamp {
    /// Per-session Lamport counter (the session version after this write).
    pub counter: u64,
    /// The writing node's origin id.
    pub origin: u32,
}

/// A change to one session: the attributes set or removed by one write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    /// The session.
    pub sid: SessionId,
    /// Stamp of this write; its counter is the session's new version.
    pub stamp: Stamp,
    /// The session version the writer held when it wrote (a receiver below it has a gap).
    pub base: u64,
    /// Attributes set: name and JSON-encoded value.
    pub set: Vec<(String, Bytes)>,
    /// Attributes removed.
    pub removed: Vec<String>,
    /// The session's expiry (unix seconds on this node's clock; seconds remaining on the
    /// wire, see [`Message::encode_body_at`]).
    pub expiry: Option<u64>,
    /// The session was invalidated (deleted).
    pub invalidate: bool,
}

/// One attribute in a full session copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttrState {
    /// Name.
    pub name: String,
    /// Stamp of the write that produced it.
    pub stamp: Stamp,
    /// JSON value, or `None` for a tombstone (removed attribute).
    pub value: Option<Bytes>,
}

/// A whole session, for fetches, state transfer and hand-off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionState {
    /// The session.
    pub sid: SessionId,
    /// Its version (highest stamp counter seen).
    pub version: u64,
    /// Expiry (unix seconds on this node's clock; seconds remaining on the wire).
    pub expiry: u64,
    /// Set when the session was invalidated.
    pub deleted: Option<Stamp>,
    /// Attributes and tombstones.
    pub attrs: Vec<AttrState>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_tag_is_stable_short_and_does_not_show_the_id() {
        let sid: SessionId = 0x1234_5678_9abc_def0_1122_3344_5566_7788;
        assert_eq!(log_tag(sid), log_tag(sid));
        assert_eq!(log_tag(sid).len(), 8);
        assert_ne!(log_tag(sid), log_tag(sid + 1));
        let shown = [format!("{sid}"), format!("{sid:x}")];
        assert!(shown.iter().all(|s| !s.contains(&log_tag(sid))));
    }
}
