//! Prometheus metrics of one node (text exposition on the admin port's `/metrics`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Label of the rejected-frames counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    /// Why the frame was refused (`bad_tag`, `too_large`, ...).
    pub reason: String,
}

/// Label for session counts by role.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Role {
    /// `primary`, `backup` or `cached` (backup mode), `replica` (delta mode).
    pub role: String,
}

/// Every metric the node exports.
#[derive(Debug)]
pub struct Metrics {
    /// Sessions held, by role.
    pub sessions: Family<Role, Gauge>,
    /// Live members, this node included.
    pub members: Gauge,
    /// Deltas sent to replicas (backup mode: k per write).
    pub deltas_sent: Counter,
    /// Writes forwarded to a session's primary (backup mode).
    pub forwards_sent: Counter,
    /// Deltas received.
    pub deltas_received: Counter,
    /// Deltas that changed nothing (stale or duplicate).
    pub deltas_stale: Counter,
    /// Deltas that could not be queued (peer gone or stuck).
    pub deltas_dropped: Counter,
    /// Deltas whose base was missing (a whole-session fetch followed).
    pub delta_gaps: Counter,
    /// Frames refused, by reason; the connection was closed.
    pub frames_rejected: Family<Reason, Counter>,
    /// Handshakes refused (other cluster, bad key).
    pub handshakes_rejected: Counter,
    /// Handshakes that failed, by reason (`bad_handshake`, `unknown_key`, `timeout`,
    /// `too_many_handshakes`, `too_many_from_source`, `stranger_limit`, `version_skew`,
    /// ...); each is also in `handshakes_rejected`. The totals behind the rate-limited
    /// WARN lines.
    pub handshake_failures: Family<Reason, Counter>,
    /// Bytes written to peers.
    pub bytes_sent: Counter,
    /// Bytes read from peers.
    pub bytes_received: Counter,
    /// Time a delta spent queued before it was written to the socket.
    pub replication_lag: Histogram,
    /// Sync writes: time until every replica acked.
    pub sync_ack_seconds: Histogram,
    /// Sync writes that timed out waiting for an ack.
    pub sync_timeouts: Counter,
    /// Sync writes acknowledged while this node alone held them (no peer acked: every
    /// target was suspected first, or there was none). Only these die with one node.
    pub sync_writes_alone: Counter,
    /// Requests that waited for a newer version their client had seen.
    pub consistency_waits: Counter,
    /// Requests that fetched the session from a peer to meet their client's version.
    pub consistency_fetches: Counter,
    /// Time spent waiting or fetching for read-your-writes.
    pub consistency_wait_seconds: Histogram,
    /// Requests that ran on an older version than their client had seen (async loss).
    pub rollbacks: Counter,
    /// Whole-session fetches from peers (backup-mode reads, gaps, misses).
    pub remote_fetches: Counter,
    /// Sessions waiting to be copied to new owners (backup mode).
    pub rereplication_backlog: Gauge,
    /// Sessions copied to new owners.
    pub rereplicated: Counter,
    /// Seconds the last join-time state transfer took.
    pub state_transfer_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Sessions received by the last state transfer.
    pub state_transfer_sessions: Gauge,
    /// Sessions expired by the sweeper.
    pub sessions_expired: Counter,
    /// Members suspected: their link was silent for the member timeout (frozen, cut) or broke.
    pub members_suspected: Counter,
    /// Peer connections closed because their cluster key was removed from the key file.
    pub connections_evicted: Counter,
    /// Anti-entropy rounds started by this node.
    pub anti_entropy_rounds: Counter,
    /// Sessions pushed or pulled by anti-entropy because two members held them differently.
    pub anti_entropy_repaired: Counter,
    /// Session writes refused (503) because fewer than `--min-members` members were live.
    pub writes_refused: Counter,
    /// Session loads by the app (a request that reads its session: reads).
    pub session_loads: Counter,
    /// Session saves by the app (a request that changed its session: writes).
    pub session_saves: Counter,
    /// 1 while the node is ready (joined, state transferred, not shutting down).
    pub ready: Gauge,
    /// Resident memory of the node process, bytes (refreshed at each scrape).
    pub resident_memory_bytes: Gauge,
    /// The memory limit of the node's cgroup, bytes; 0 when unlimited or unknown.
    pub memory_limit_bytes: Gauge,
    /// Redis endpoint: `AUTH` (or `HELLO ... AUTH`) attempts with a wrong password.
    pub resp_auth_failures: Counter,
    /// Persistence (`--data-dir`).
    pub persist: PersistMetrics,
}

/// Metrics of persistence (`--data-dir`); all zero without it.
#[derive(Debug)]
pub struct PersistMetrics {
    /// Bytes of session records (and deletions) written to the backend.
    pub bytes: Counter,
    /// Sessions written (puts and deletions).
    pub writes: Counter,
    /// Duration of one flush (one atomic, durable batch).
    pub flush_seconds: Histogram,
    /// Flushes that failed (retried at the next interval).
    pub errors: Counter,
    /// Sessions whose latest state is on disk.
    pub sessions_on_disk: Gauge,
    /// Sessions in memory.
    pub sessions_resident: Gauge,
    /// Sessions swapped out (on disk only, read back on access).
    pub sessions_swapped: Gauge,
    /// Sessions loaded from disk at start.
    pub loaded: Gauge,
    /// Seconds the load from disk took at start.
    pub load_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Times unreadable persisted data was set aside at start.
    pub set_aside: Counter,
    /// Bytes the backend's files take.
    pub disk_bytes: Gauge,
}

impl PersistMetrics {
    fn new() -> Self {
        PersistMetrics {
            bytes: Counter::default(),
            writes: Counter::default(),
            flush_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 18)),
            errors: Counter::default(),
            sessions_on_disk: Gauge::default(),
            sessions_resident: Gauge::default(),
            sessions_swapped: Gauge::default(),
            loaded: Gauge::default(),
            load_seconds: Gauge::default(),
            set_aside: Counter::default(),
            disk_bytes: Gauge::default(),
        }
    }

    fn register(&self, r: &mut Registry) {
        let r = r.sub_registry_with_prefix("persist");
        r.register(
            "bytes",
            "Bytes of session records written to disk",
            self.bytes.clone(),
        );
        r.register(
            "writes",
            "Session records written or deleted on disk",
            self.writes.clone(),
        );
        r.register(
            "flush_seconds",
            "Duration of one durable flush",
            self.flush_seconds.clone(),
        );
        r.register("errors", "Flushes that failed", self.errors.clone());
        r.register(
            "sessions_on_disk",
            "Sessions whose latest state is on disk",
            self.sessions_on_disk.clone(),
        );
        r.register(
            "sessions_resident",
            "Sessions in memory",
            self.sessions_resident.clone(),
        );
        r.register(
            "sessions_swapped",
            "Sessions swapped out to disk (read back on access)",
            self.sessions_swapped.clone(),
        );
        r.register(
            "loaded_sessions",
            "Sessions loaded from disk at start",
            self.loaded.clone(),
        );
        r.register(
            "load_seconds",
            "Duration of the load from disk at start",
            self.load_seconds.clone(),
        );
        r.register(
            "set_aside",
            "Times unreadable persisted data was set aside at start",
            self.set_aside.clone(),
        );
        r.register(
            "disk_bytes",
            "Bytes the persisted sessions take on disk",
            self.disk_bytes.clone(),
        );
    }
}

impl Metrics {
    /// Creates the metrics and registers them.
    pub fn new(registry: &mut Registry) -> Self {
        let m = Metrics {
            sessions: Family::default(),
            members: Gauge::default(),
            deltas_sent: Counter::default(),
            forwards_sent: Counter::default(),
            deltas_received: Counter::default(),
            deltas_stale: Counter::default(),
            deltas_dropped: Counter::default(),
            delta_gaps: Counter::default(),
            frames_rejected: Family::default(),
            handshakes_rejected: Counter::default(),
            handshake_failures: Family::default(),
            bytes_sent: Counter::default(),
            bytes_received: Counter::default(),
            replication_lag: Histogram::new(exponential_buckets(0.000_01, 2.0, 20)),
            sync_ack_seconds: Histogram::new(exponential_buckets(0.000_01, 2.0, 20)),
            sync_timeouts: Counter::default(),
            sync_writes_alone: Counter::default(),
            consistency_waits: Counter::default(),
            consistency_fetches: Counter::default(),
            consistency_wait_seconds: Histogram::new(exponential_buckets(0.000_01, 2.0, 20)),
            rollbacks: Counter::default(),
            remote_fetches: Counter::default(),
            rereplication_backlog: Gauge::default(),
            rereplicated: Counter::default(),
            state_transfer_seconds: Gauge::default(),
            state_transfer_sessions: Gauge::default(),
            sessions_expired: Counter::default(),
            members_suspected: Counter::default(),
            connections_evicted: Counter::default(),
            anti_entropy_rounds: Counter::default(),
            anti_entropy_repaired: Counter::default(),
            writes_refused: Counter::default(),
            session_loads: Counter::default(),
            session_saves: Counter::default(),
            ready: Gauge::default(),
            resident_memory_bytes: Gauge::default(),
            memory_limit_bytes: Gauge::default(),
            resp_auth_failures: Counter::default(),
            persist: PersistMetrics::new(),
        };
        let r = registry.sub_registry_with_prefix("tribe");
        r.register("build", "This build: its version (always 1)", build_info());
        r.register("sessions", "Sessions held, by role", m.sessions.clone());
        r.register(
            "members",
            "Live cluster members, this node included",
            m.members.clone(),
        );
        r.register(
            "deltas_sent",
            "Deltas sent to replicas",
            m.deltas_sent.clone(),
        );
        r.register(
            "forwards_sent",
            "Writes forwarded to the session's primary",
            m.forwards_sent.clone(),
        );
        r.register(
            "deltas_received",
            "Deltas received",
            m.deltas_received.clone(),
        );
        r.register(
            "deltas_stale",
            "Deltas ignored as stale or duplicate",
            m.deltas_stale.clone(),
        );
        r.register(
            "deltas_dropped",
            "Deltas that could not be queued",
            m.deltas_dropped.clone(),
        );
        r.register(
            "delta_gaps",
            "Deltas whose base was missing",
            m.delta_gaps.clone(),
        );
        r.register(
            "frames_rejected",
            "Frames refused, connection closed",
            m.frames_rejected.clone(),
        );
        r.register(
            "handshakes_rejected",
            "Handshakes refused",
            m.handshakes_rejected.clone(),
        );
        r.register(
            "handshake_failures",
            "Replication handshakes that failed, by reason",
            m.handshake_failures.clone(),
        );
        r.register("bytes_sent", "Bytes written to peers", m.bytes_sent.clone());
        r.register(
            "bytes_received",
            "Bytes read from peers",
            m.bytes_received.clone(),
        );
        r.register(
            "replication_lag_seconds",
            "Time deltas spend queued before they are written",
            m.replication_lag.clone(),
        );
        r.register(
            "sync_ack_seconds",
            "Sync writes: time until all replicas acked",
            m.sync_ack_seconds.clone(),
        );
        r.register(
            "sync_timeouts",
            "Sync writes that timed out waiting for acks",
            m.sync_timeouts.clone(),
        );
        r.register(
            "sync_writes_acknowledged_alone",
            "Sync writes acknowledged while only this node held them (no peer acked)",
            m.sync_writes_alone.clone(),
        );
        r.register(
            "resp_auth_failures",
            "Redis endpoint: AUTH attempts with a wrong password",
            m.resp_auth_failures.clone(),
        );
        r.register(
            "consistency_waits",
            "Requests that waited for their client's version",
            m.consistency_waits.clone(),
        );
        r.register(
            "consistency_fetches",
            "Requests that fetched the session for their client's version",
            m.consistency_fetches.clone(),
        );
        r.register(
            "consistency_wait_seconds",
            "Time spent waiting or fetching for read-your-writes",
            m.consistency_wait_seconds.clone(),
        );
        r.register(
            "rollbacks",
            "Requests run on an older version than their client had seen",
            m.rollbacks.clone(),
        );
        r.register(
            "remote_fetches",
            "Whole-session fetches from peers",
            m.remote_fetches.clone(),
        );
        r.register(
            "rereplication_backlog",
            "Sessions waiting to be copied to new owners",
            m.rereplication_backlog.clone(),
        );
        r.register(
            "rereplicated",
            "Sessions copied to new owners",
            m.rereplicated.clone(),
        );
        r.register(
            "state_transfer_seconds",
            "Duration of the last join-time state transfer",
            m.state_transfer_seconds.clone(),
        );
        r.register(
            "state_transfer_sessions",
            "Sessions received by the last state transfer",
            m.state_transfer_sessions.clone(),
        );
        r.register(
            "sessions_expired",
            "Sessions expired",
            m.sessions_expired.clone(),
        );
        r.register(
            "members_suspected",
            "Members suspected: link silent for the member timeout, or broken",
            m.members_suspected.clone(),
        );
        r.register(
            "connections_evicted",
            "Peer connections closed because their cluster key was removed from the key file",
            m.connections_evicted.clone(),
        );
        r.register(
            "anti_entropy_rounds",
            "Anti-entropy rounds started",
            m.anti_entropy_rounds.clone(),
        );
        r.register(
            "anti_entropy_sessions_repaired",
            "Sessions pushed or pulled by anti-entropy",
            m.anti_entropy_repaired.clone(),
        );
        r.register(
            "writes_refused",
            "Session writes refused because fewer than --min-members members were live",
            m.writes_refused.clone(),
        );
        r.register(
            "session_loads",
            "Session loads by the app (reads)",
            m.session_loads.clone(),
        );
        r.register(
            "session_saves",
            "Session saves by the app (writes)",
            m.session_saves.clone(),
        );
        r.register(
            "ready",
            "1 while the node is ready (joined, state transferred, not leaving)",
            m.ready.clone(),
        );
        r.register(
            "resident_memory_bytes",
            "Resident memory of the node process",
            m.resident_memory_bytes.clone(),
        );
        r.register(
            "memory_limit_bytes",
            "Memory limit of the node's cgroup (0: unlimited or unknown)",
            m.memory_limit_bytes.clone(),
        );
        m.persist.register(r);
        m
    }

    /// Counts a failed handshake by reason (and in `handshakes_rejected`).
    pub fn handshake_failed(&self, reason: &str) {
        self.handshakes_rejected.inc();
        self.handshake_failures
            .get_or_create(&Reason {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Counts a refused frame by reason.
    pub fn reject(&self, reason: &str) {
        self.frames_rejected
            .get_or_create(&Reason {
                reason: reason.to_string(),
            })
            .inc();
    }
}

/// `tribe_build_info{version="…"} 1` (registered as `build`; the suffix is the `Info`
/// type's).
pub fn build_info() -> prometheus_client::metrics::info::Info<Vec<(String, String)>> {
    prometheus_client::metrics::info::Info::new(vec![(
        "version".to_string(),
        tribe_api::VERSION.to_string(),
    )])
}
