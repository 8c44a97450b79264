//! The default ports of a node; the operator's Services and probes use the same.

/// The app's HTTP listener.
pub const HTTP: u16 = 8080;
/// The admin listener: health, readiness, metrics, `/cluster`, sessions.
pub const ADMIN: u16 = 9090;
/// Peer-to-peer replication.
pub const REPLICATION: u16 = 4000;
/// The Redis-protocol endpoint, when enabled (on loopback by default).
pub const RESP: u16 = 6379;
