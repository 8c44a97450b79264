//! A Redis-protocol (RESP2/RESP3) endpoint on replicated sessions: the session store of
//! any framework that keeps its sessions in Redis (express-session + connect-redis,
//! Flask-Session, PHP's `session.save_handler = redis`, Spring Session Data Redis)
//! talks to the Tribe node next to it as if it were Redis, and gets replicated sessions
//! without a central store.
//!
//! - [`codec`] — requests in, replies out (`tokio_util` codec; bounded, Redis-compatible
//!   request parsing; RESP2 or RESP3 replies).
//! - [`keyspace`] — how a key lives in a session (pure).
//! - [`commands`] — parsing and the pure semantics of each command.
//! - [`server`] — the listener, connections, and execution against the cluster.
//! - [`ready`] — the readiness rule: data only from a ready node (`-LOADING` before).
//! - [`proxy`] — the HTTP front proxy that gives an app read-your-writes behind
//!   round-robin in async mode (version cookie; cookie → store key per adapter).
//!
//! # Consistency
//! A write is a session write: in `sync` send mode the command returns once the
//! replicas acknowledged it, so the next command on any node reads it; in `async` mode
//! it returns at once and another node may briefly serve the older value (see the
//! README and [`crate::ryw`]). Read-modify-write commands (`SET NX`, `HSET`, `HINCRBY`,
//! `RENAME`, ...) are atomic on one node; across nodes, concurrent writes merge per
//! attribute (each hash field is one), last writer wins.
//!
//! # Not offered
//! Lists, sets, sorted sets, streams, pub/sub, transactions (`MULTI`/`EXEC`/`WATCH`),
//! Lua scripting, databases other than 0, keyspace notifications, `FLUSHDB`.

pub mod codec;
pub mod commands;
pub mod keyspace;
pub mod proxy;
pub mod ready;
pub mod server;

pub use server::{serve, Keys, Options};
