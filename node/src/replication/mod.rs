//! The replication core: every membership and replication *decision*, with no sockets,
//! locks held across awaits, tasks or clocks of its own. Time and messages go in,
//! effects come out; `cluster/` is the driver that owns the sockets and timers and
//! performs the effects, and [`sim`] drives the same code through seeded fault schedules.
//!
//! - [`liveness`] — per-connection failure detector (heartbeats, silence ⇒ dead).
//! - [`apply`] — what an incoming message does: apply, merge, answer, anti-entropy.
//! - [`antientropy`] — range digests, summaries and the push/pull plan.
//! - [`write`] — stamping a local write into a delta.
//! - [`route`] — where a local write goes (forward, retry, fallback) and where touches go.
//! - [`fetch`] — read-your-writes: serve, wait or fetch; whom a fetch asks and when.
//! - [`replica`] — the `Replica`: member table, view, readiness, sync-ack verdicts and
//!   deadlines, gap repair; a state machine the driver holds behind one lock.
//! - [`rereplicate`] — backup mode: what to copy to whom when the view changes or on leave.
//! - [`join`] — the join: state transfers from every live member (the readiness rule),
//!   and serving one behind a barrier.
//! - [`handoff`] — backup mode: when to re-replicate (view changes, retries) and the
//!   leave's hand-off.
//! - [`sim`] — the deterministic simulation and its checker.

pub mod antientropy;
pub mod apply;
pub mod fetch;
pub mod handoff;
pub mod join;
pub mod liveness;
pub mod replica;
pub mod rereplicate;
pub mod route;
pub mod sim;
pub mod write;
