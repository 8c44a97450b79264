//! Whether this node is cut off from its peers (key refusals, version skew, failed
//! handshakes), from what the key ring and the reachability table record. The key ring
//! itself ([`crate::keyring::Keys`]) knows nothing of the cluster: the driver asks it.

use std::net::SocketAddr;
use std::time::Duration;

use tribe_api::NotReadyReason;

use super::Cluster;
use crate::keyring::Keys;
use crate::reachability::Problem;

/// The rule behind [`Cluster::isolation`]: with `live` members (this node included),
/// whether peers refuse this node's keys, and the handshake problems recorded with the
/// peers it discovered. A node with a live peer is never isolated; key refusals come
/// first; version skew only when it is every problem; otherwise any recorded problem is a
/// failed handshake.
pub(crate) fn reason<'a>(
    live: usize,
    key_refused: bool,
    problems: impl IntoIterator<Item = &'a Problem>,
) -> Option<NotReadyReason> {
    if live > 1 {
        return None;
    }
    if key_refused {
        return Some(NotReadyReason::KeyRefused);
    }
    let mut problems = problems.into_iter().peekable();
    problems.peek()?;
    if problems.all(|p| matches!(p, Problem::VersionSkew { .. })) {
        Some(NotReadyReason::VersionSkew)
    } else {
        Some(NotReadyReason::HandshakeFailed)
    }
}

impl Cluster {
    /// Why this node is cut off, if it is: it has no live member, yet peers it discovered
    /// answer TCP and refuse its keys (or it theirs: [`NotReadyReason::KeyRefused`]),
    /// speak no protocol version it speaks ([`NotReadyReason::VersionSkew`]), or close
    /// or garble every handshake ([`NotReadyReason::HandshakeFailed`], e.g. a flood took
    /// their handshake slots). Such a node must not report ready: it would serve as a
    /// second, empty cluster behind the same Service (e.g. after the key Secret was
    /// deleted and recreated with a new key).
    pub fn isolation(&self) -> Option<NotReadyReason> {
        let live = self.live_members().len();
        if live > 1 {
            return None; // (without asking the key ring and the reachability table)
        }
        let refused = !self.inner.net.key.refusing_peers().is_empty();
        let problems = self.inner.net.reach.problems();
        reason(live, refused, problems.iter().map(|(_, p)| p))
    }

    /// Whether this node is cut off by its keys (see [`Self::isolation`]).
    pub fn isolated_by_key(&self) -> bool {
        self.isolation() == Some(NotReadyReason::KeyRefused)
    }

    /// Returns once this node is not [isolated](Self::isolation), or at shutdown; logs
    /// once while it waits.
    pub(crate) async fn wait_while_isolated(&self) {
        let mut warned = false;
        while let Some(why) = self.isolation() {
            if !warned {
                tracing::warn!(
                    reason = ?why,
                    key_refused = ?self.inner.net.key.refusing_peers(),
                    problems = ?self.inner.net.reach.problems(),
                    "every peer found refuses this node or fails its handshakes: not joining (not ready) until one completes"
                );
                warned = true;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                _ = self.inner.life.shutdown.cancelled() => return,
            }
        }
        if warned {
            tracing::info!("a handshake with a peer completed: joining");
        }
    }

    /// The node's keys (reloaded from the key file).
    pub fn keys(&self) -> &Keys {
        &self.inner.net.key
    }

    /// The key ids this node holds (primary first) and the peers refusing its keys.
    pub fn key_status(&self) -> (Vec<String>, Vec<SocketAddr>) {
        self.inner.net.key.status()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn skew() -> Problem {
        Problem::VersionSkew {
            theirs: (4, 4),
            ours: (2, 3),
        }
    }

    fn closed() -> Problem {
        Problem::Handshake {
            reason: "closed",
            detail: "closed before the handshake".into(),
        }
    }

    #[test]
    fn a_node_with_a_live_peer_is_never_isolated() {
        assert_eq!(reason(2, true, &[skew(), closed()]), None);
    }

    #[test]
    fn alone_without_problems_is_a_first_node_not_an_isolated_one() {
        assert_eq!(reason(1, false, &[]), None);
    }

    #[test]
    fn key_refusals_come_first() {
        assert_eq!(reason(1, true, &[skew()]), Some(NotReadyReason::KeyRefused));
        assert_eq!(reason(1, true, &[]), Some(NotReadyReason::KeyRefused));
    }

    #[test]
    fn version_skew_only_when_every_problem_is_skew() {
        assert_eq!(
            reason(1, false, &[skew(), skew()]),
            Some(NotReadyReason::VersionSkew)
        );
        assert_eq!(
            reason(1, false, &[skew(), closed()]),
            Some(NotReadyReason::HandshakeFailed)
        );
        assert_eq!(
            reason(1, false, &[closed()]),
            Some(NotReadyReason::HandshakeFailed)
        );
    }
}
