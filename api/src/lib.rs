//! The contract between a Tribe node and whatever drives or watches it (the operator,
//! `kubectl tribe`, an app's own tooling), in one place so the two sides cannot drift:
//!
//! - [`ClusterView`] — the JSON document a node serves on its admin port at `GET /cluster`;
//! - [`ReplicationMode`], [`SendMode`], [`MembershipMode`], [`SessionAdapter`], [`Durability`] — the mode values, with their
//!   spelling on the command line, in environment variables and in JSON;
//! - [`env`](mod@env) — the names of the `TRIBE_*` environment variables a node reads;
//! - [`ports`] — the default ports.
//!
//! Dependency-light on purpose (serde only; JSON Schema behind the `schemars` feature):
//! both a node and an operator link it.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod env;
mod modes;
pub mod ports;
mod view;

pub use modes::{
    Durability, MembershipMode, ParseModeError, ReplicationMode, SendMode, SessionAdapter,
};
pub use view::{ClusterView, MemberState, MemberView, NotReadyReason, PeerProblem};
