//! The contract between a Tribe node and whatever drives or watches it (the operator,
//! `kubectl tribe`, an app's own tooling), in one place so the two sides cannot drift:
//!
//! - [`ClusterView`] — the JSON document a node serves on its admin port at `GET /cluster`;
//! - [`ReplicationMode`], [`SendMode`], [`MembershipMode`], [`SessionAdapter`], [`Durability`] — the mode values, with their
//!   spelling on the command line, in environment variables and in JSON;
//! - [`env`](mod@env) — the names of the `TRIBE_*` environment variables a node reads;
//! - [`ports`] — the default ports;
//! - [`VERSION`] — the build version (every crate of the workspace shares it), and
//!   [`LogFormat`] with, behind the `log` feature, the one log setup of both binaries
//!   ([`log::init`](crate::log)).
//!
//! Dependency-light on purpose (serde only; JSON Schema behind the `schemars` feature,
//! tracing-subscriber behind `log`): both a node and an operator link it.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod env;
#[cfg(feature = "log")]
pub mod log;
mod modes;
pub mod ports;
mod view;

pub use modes::{
    Durability, LogFormat, MembershipMode, ParseModeError, ReplicationMode, SendMode,
    SessionAdapter,
};
pub use view::{ClusterView, MemberState, MemberView, NotReadyReason, PeerProblem};

/// The build version of Tribe (the workspace's version, shared by every crate): what
/// `--version`, `/cluster` and the `tribe_build_info` metric report.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
