//! Tribe node: replicated HTTP sessions for axum/tower-sessions apps, the way Tomcat's
//! DeltaManager/BackupManager cluster replicates sessions for Java web apps.
//!
//! # Running your own app
//! A node is a library: build a [`Config`] (usually [`Config::from_env`], so the
//! `TRIBE_*` variables the operator sets work for any app), [`Node::bind`] it, and hand
//! [`Node::serve`] your `axum::Router`. The node puts the session layer
//! ([`tower_sessions`] over a [`ReplicatedStore`]), read-your-writes and split-brain
//! protection on it, and runs it with the node's readiness, shutdown delay, drain,
//! session hand-off and ordered shutdown. Handlers take a [`tower_sessions::Session`]:
//!
//! ```no_run
//! use tribe_node::axum::{routing::get, Router};
//! use tribe_node::tower_sessions::Session;
//!
//! async fn visits(session: Session) -> String {
//!     let n: u64 = session.get("visits").await.ok().flatten().unwrap_or(0) + 1;
//!     let _ = session.insert("visits", n).await;
//!     format!("visit {n}\n")
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let node = tribe_node::Node::bind(tribe_node::Config::from_env()?).await?;
//! node.serve(Router::new().route("/", get(visits))).await?;
//! # Ok(()) }
//! ```
//!
//! `node/examples/own_app.rs` is a complete app. Use the re-exported [`axum`] and
//! [`tower_sessions`] so your app links the same versions as the node.
//!
//! # What the app may assume
//! - Session data is replicated to the other nodes (all of them in `delta` mode; a
//!   primary and `backups` others in `backup` mode) and survives a node leaving.
//! - A client reads its own writes on any node (the version cookie; bounded by
//!   `consistency_wait`).
//! - While `min_members` is not met, requests that may write (not GET/HEAD/OPTIONS) are
//!   answered 503 before they reach the app.
//!
//! # Layout
//! - [`config`] — every setting: flag, env var, default, help, parser (one table).
//! - [`node`] — [`Node`]: listeners, key, cluster, metrics, serving and shutdown.
//! - [`Cluster`] — the running cluster's handle (members, readiness, the view).
//! - [`ReplicatedStore`] — the `tower_sessions::SessionStore` over the cluster.
//! - [`ClusterKey`] — the cluster key.
//!
//! The other modules are internals (hidden from these docs; the tests use them): the key
//! file and rotation, the Noise handshake, the data model (sessions, stamps, deltas) and
//! the clock, the wire format, the session table,
//! ownership, persistence (backends, the flusher, start from disk, swap-out), membership discovery, transport, the replication core and its
//! simulation, read-your-writes, the admin and demo HTTP routers, metrics and the Redis
//! protocol endpoint.
#![forbid(unsafe_code)]

pub mod config;
pub mod node;

/// The scoped, expiring admin tokens of the session endpoints.
pub mod admin_token;

#[doc(hidden)]
pub mod admission;
#[doc(hidden)]
pub mod clock;
#[doc(hidden)]
pub mod cluster;
#[doc(hidden)]
pub mod crypto;
#[doc(hidden)]
pub mod handshake;
#[doc(hidden)]
pub mod http;
#[doc(hidden)]
pub mod keyring;
#[doc(hidden)]
pub mod membership;
#[doc(hidden)]
pub mod metrics;
#[doc(hidden)]
pub mod model;
#[doc(hidden)]
pub mod ownership;
#[doc(hidden)]
pub mod persist;
#[doc(hidden)]
pub mod reachability;
#[doc(hidden)]
pub mod replication;
#[doc(hidden)]
pub mod resp;
#[doc(hidden)]
pub mod ryw;
#[doc(hidden)]
pub mod session_store;
#[doc(hidden)]
pub mod store;
#[doc(hidden)]
pub mod transport;
#[doc(hidden)]
pub mod warn_limit;
#[doc(hidden)]
pub mod wire;

pub use axum;
pub use tower_sessions;
pub use tribe_api;

pub use cluster::{Cluster, ClusterError};
pub use config::{Config, ConfigError};
pub use crypto::ClusterKey;
pub use node::{Listeners, Node};
pub use session_store::ReplicatedStore;

/// Errors that stop a node.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Neither a cluster key nor `insecure`.
    #[error("no cluster key: set --cluster-key-file (TRIBE_CLUSTER_KEY_FILE), or pass --insecure to run without one")]
    NoKey,
    /// The key file could not be read or is empty.
    #[error("cluster key file {0}: {1}")]
    KeyFile(String, String),
    /// The advertise address is not usable.
    #[error("invalid --advertise-addr {0:?}: {1}")]
    Advertise(String, String),
    /// A listener could not be bound.
    #[error("cannot bind {0}: {1}")]
    Bind(std::net::SocketAddr, std::io::Error),
    /// The cluster side failed to start.
    #[error(transparent)]
    Cluster(#[from] cluster::ClusterError),
    /// A listener failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The RESP password file could not be read.
    #[error("--resp-password-file {0}: {1}")]
    RespPasswordFile(String, String),
    /// A non-loopback `--resp-addr` without a password (Redis' protected mode).
    #[error("--resp-addr {0} is not a loopback address and no --resp-password-file is set: anyone who reaches it could read and write every session of the cluster. Set --resp-password-file, bind 127.0.0.1, or pass --resp-insecure (labs only)")]
    RespUnprotected(std::net::SocketAddr),
}
