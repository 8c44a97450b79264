//! Whether this node is cut off from its peers (key refusals, version skew, failed
//! handshakes), from what the key ring and the reachability table record. The key ring
//! itself ([`crate::keyring::Keys`]) knows nothing of the cluster: the driver asks it.

use std::net::SocketAddr;
use std::time::Duration;

use tribe_api::NotReadyReason;

use super::Cluster;
use crate::keyring::Keys;

impl Cluster {
    /// Why this node is cut off, if it is: it has no live member, yet peers it discovered
    /// answer TCP and refuse its keys (or it theirs: [`NotReadyReason::KeyRefused`]),
    /// speak no protocol version it speaks ([`NotReadyReason::VersionSkew`]), or close
    /// or garble every handshake ([`NotReadyReason::HandshakeFailed`], e.g. a flood took
    /// their handshake slots). Such a node must not report ready: it would serve as a
    /// second, empty cluster behind the same Service (e.g. after the key Secret was
    /// deleted and recreated with a new key).
    pub fn isolation(&self) -> Option<NotReadyReason> {
        if self.live_members().len() > 1 {
            return None;
        }
        if !self.inner.key.refusing_peers().is_empty() {
            return Some(NotReadyReason::KeyRefused);
        }
        let problems = self.inner.reach.problems();
        if problems.is_empty() {
            None
        } else if problems
            .iter()
            .all(|(_, p)| matches!(p, crate::reachability::Problem::VersionSkew { .. }))
        {
            Some(NotReadyReason::VersionSkew)
        } else {
            Some(NotReadyReason::HandshakeFailed)
        }
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
                    key_refused = ?self.inner.key.refusing_peers(),
                    problems = ?self.inner.reach.problems(),
                    "every peer found refuses this node or fails its handshakes: not joining (not ready) until one completes"
                );
                warned = true;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                _ = self.inner.shutdown.cancelled() => return,
            }
        }
        if warned {
            tracing::info!("a handshake with a peer completed: joining");
        }
    }

    /// The node's keys (reloaded from the key file).
    pub fn keys(&self) -> &Keys {
        &self.inner.key
    }

    /// The key ids this node holds (primary first) and the peers refusing its keys.
    pub fn key_status(&self) -> (Vec<String>, Vec<SocketAddr>) {
        self.inner.key.status()
    }
}
