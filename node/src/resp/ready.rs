//! The one readiness rule of the Redis endpoint and the read-your-writes proxy: data is
//! served only while the node is ready — the same [`Cluster::is_ready`] that `/readyz`
//! reports (joined: state transfer done or loaded from disk and joined; not draining or
//! leaving). A restarted node must never answer "no such key" from an empty store.

use std::time::{Duration, Instant};

use crate::cluster::Cluster;

/// How often a waiting request re-checks readiness.
const POLL: Duration = Duration::from_millis(20);

/// Whether the node is shutting down (draining or leaving): it will not become ready
/// again, so a request is refused at once rather than held.
pub fn stopping(cluster: &Cluster) -> bool {
    cluster.stopping()
}

/// Waits up to `wait` for the node to be ready; `false` when it is not by then, or is
/// shutting down.
pub async fn ready_within(cluster: &Cluster, wait: Duration) -> bool {
    if cluster.is_ready() {
        return true;
    }
    let deadline = Instant::now() + wait;
    loop {
        if stopping(cluster) || Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL.min(deadline.saturating_duration_since(Instant::now()))).await;
        if cluster.is_ready() {
            return true;
        }
    }
}
