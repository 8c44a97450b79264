//! Stamping a local write: the delta a request's changes become.

use std::collections::HashMap;

use bytes::Bytes;

use crate::store::Store;
use crate::wire::{Delta, SessionId, Stamp};

/// What a local write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    /// Attributes changed: replicate this delta (already applied locally).
    Delta(Delta),
    /// Only the expiry grew: replicate it as a (batched) touch.
    Touched(u64),
    /// Nothing changed.
    Unchanged,
}

/// Applies a local write of `data` to `sid`, stamped `version + 1` with `origin`.
/// `loaded`: the attributes the request loaded (only what it changed since is written,
/// so a concurrent write from another node that arrived after the load is not undone);
/// `None`: diff against the replica (a new session). `expiry` is on this node's clock.
pub fn local_write(
    store: &Store,
    origin: u32,
    sid: SessionId,
    loaded: Option<&HashMap<String, Bytes>>,
    data: &HashMap<String, Bytes>,
    expiry: u64,
    now: u64,
) -> Written {
    store.with_mut(sid, |s| {
        let stamp = Stamp {
            // Versions above `wire::MAX_COUNTER` never come in from peers (refused at
            // decode), so this cannot saturate; it never wraps either.
            counter: s.version.saturating_add(1),
            origin,
        };
        let d = match loaded {
            Some(loaded) => s.diff_from(sid, loaded, data, stamp),
            None => s.diff(sid, data, stamp),
        };
        s.last_local_access = now;
        match d {
            Some(mut d) => {
                // Every delta carries the session's expiry (a few bytes), not only a
                // grown one: a replica that does not hold the session yet (a joiner
                // before its state transfer delivers it, a missed create) must not hold
                // an expiry-less copy, which the sweeper would expire at once.
                d.expiry = Some(expiry.max(s.expiry));
                s.apply(&d);
                s.changed_at = now;
                Written::Delta(d)
            }
            None if expiry > s.expiry => {
                s.expiry = expiry;
                Written::Touched(expiry)
            }
            None => Written::Unchanged,
        }
    })
}

/// Stamps an invalidation of `sid` and applies it locally.
pub fn local_invalidate(store: &Store, origin: u32, sid: SessionId, now: u64) -> Delta {
    store.with_mut(sid, |s| {
        let d = Delta {
            sid,
            stamp: Stamp {
                counter: s.version.saturating_add(1),
                origin,
            },
            base: s.version,
            set: vec![],
            removed: vec![],
            expiry: None,
            invalidate: true,
        };
        s.apply(&d);
        s.changed_at = now;
        d
    })
}
