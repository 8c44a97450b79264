//! Peers this node reaches over TCP but cannot complete a handshake with, and why.
//!
//! A node that discovered peers, reaches them, and completes no handshake with any of
//! them must not report ready: it would serve as a second, empty cluster behind the same
//! Service. Key refusals are tracked by [`crate::keyring::Keys`]; this tracks the others:
//! a peer that closes the connection during the handshake (e.g. every handshake slot is
//! taken by a flood), answers garbage, or speaks no protocol version this node speaks.
//!
//! An entry is cleared when a handshake with that address succeeds or a TCP connect to it
//! fails (nothing listens there any more), and forgotten after [`MEMORY`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// How long a failed handshake is remembered (a later success or failed connect clears it).
pub const MEMORY: Duration = Duration::from_secs(30);

/// Why handshakes with a peer fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The peer speaks no protocol version this node speaks.
    VersionSkew {
        /// The peer's range, `min..=max`.
        theirs: (u8, u8),
        /// This node's range.
        ours: (u8, u8),
    },
    /// The handshake failed otherwise (`reason`: the failures counter's label).
    Handshake {
        /// Short label (`closed`, `bad_magic`, ...).
        reason: &'static str,
        /// The error, for people.
        detail: String,
    },
}

impl Problem {
    /// The reason label (`version_skew`, or the handshake failure's).
    pub fn reason(&self) -> &'static str {
        match self {
            Problem::VersionSkew { .. } => "version_skew",
            Problem::Handshake { reason, .. } => reason,
        }
    }

    /// What went wrong, for people.
    pub fn detail(&self) -> String {
        match self {
            Problem::VersionSkew { theirs, ours } => format!(
                "peer speaks protocol versions {}..={}, this node {}..={}",
                theirs.0, theirs.1, ours.0, ours.1
            ),
            Problem::Handshake { detail, .. } => detail.clone(),
        }
    }
}

/// Failed handshakes by peer address (see the module docs).
#[derive(Debug, Default)]
pub struct Reachability {
    failed: Mutex<HashMap<SocketAddr, (Instant, Problem)>>,
}

impl Reachability {
    /// Records that a handshake with `addr` failed after TCP connected.
    pub fn failed(&self, addr: SocketAddr, problem: Problem) {
        self.failed.lock().insert(addr, (Instant::now(), problem));
    }

    /// Clears `addr`: a handshake succeeded, or nothing answers TCP there.
    pub fn clear(&self, addr: SocketAddr) {
        self.failed.lock().remove(&addr);
    }

    /// Current problems, by address.
    pub fn problems(&self) -> Vec<(SocketAddr, Problem)> {
        self.problems_at(Instant::now())
    }

    fn problems_at(&self, now: Instant) -> Vec<(SocketAddr, Problem)> {
        let mut f = self.failed.lock();
        f.retain(|_, (t, _)| now.saturating_duration_since(*t) < MEMORY);
        let mut v: Vec<_> = f.iter().map(|(a, (_, p))| (*a, p.clone())).collect();
        v.sort_by_key(|(a, _)| *a);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_until_cleared_or_old() {
        let r = Reachability::default();
        let a: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:4001".parse().unwrap();
        r.failed(
            a,
            Problem::Handshake {
                reason: "closed",
                detail: "peer closed the connection during the handshake".into(),
            },
        );
        r.failed(
            b,
            Problem::VersionSkew {
                theirs: (4, 4),
                ours: (2, 3),
            },
        );
        let p = r.problems();
        assert_eq!(p.len(), 2);
        assert_eq!(p[1].1.reason(), "version_skew");
        assert!(p[1].1.detail().contains("4..=4"), "{}", p[1].1.detail());
        r.clear(a);
        assert_eq!(r.problems().len(), 1);
        assert!(r.problems_at(Instant::now() + MEMORY).is_empty());
    }
}
