//! `Cluster`: membership + transport + replication, started once per process.
//!
//! # Layout
//! - `mod.rs` — shared state, the public API the session store calls (load, write, touch).
//! - `net.rs` — outbound links (one per peer, reconnect with backoff, bounded queue),
//!   inbound connections, and the failure detector.
//! - `handle.rs` — what each incoming message does.
//! - `lifecycle.rs` — join (state transfer), leave (drain, hand-off), maintenance
//!   (expiry, touches, evictions) and backup-mode re-replication.
//!
//! Locks: `parking_lot` mutexes guard short, non-async critical sections (member table,
//! pending requests); none is held across an `.await`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ReplicationMode, SendMode};
use crate::membership::{Discovery, SelfInfo};
use crate::metrics::{Metrics, Role};
use crate::ownership;
use crate::replication;
use crate::store::{unix_now, Session, Store};
use crate::wire::{Delta, Hello, Message, Outgoing, SessionId, SessionState};

mod antientropy;
mod gaps;
mod handle;
mod isolation;
mod lifecycle;
mod net;
#[cfg(test)]
mod tests;

pub use net::Link;

/// Errors starting a cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// Discovery could not start.
    #[error(transparent)]
    Membership(#[from] crate::membership::MembershipError),
    /// The data directory cannot be used.
    #[error(transparent)]
    Persist(#[from] crate::persist::StartError),
}

pub use tribe_api::{ClusterView, MemberState, MemberView};

pub use replication::replica::Member;
use replication::replica::{Event, Replica, ReplicaConfig, SyncDone};

/// The driver's state, private to `cluster/`: who this node is, its sessions, the
/// `Replica` behind one lock, and the I/O around it, grouped by job.
struct Inner {
    cfg: Config,
    me: SelfInfo,
    /// This incarnation's origin id (stamps of its writes).
    origin: u32,
    store: Arc<Store>,
    /// `--data-dir`: the backend and how writes wait for it.
    persistence: Option<crate::persist::Persistence>,
    metrics: Arc<Metrics>,
    /// The member table, view, readiness and every replication decision (one lock; never
    /// held across an await). Lock order: `replica`, then `requests` / `net.links`.
    replica: Mutex<Replica>,
    net: Net,
    requests: Requests,
    signals: Signals,
    timer: Timer,
    life: Life,
}

/// Connections and what limits or judges them.
struct Net {
    /// The cluster key ring (handshakes).
    key: crate::keyring::Keys,
    /// Outbound links by address.
    links: Mutex<HashMap<SocketAddr, Arc<Link>>>,
    /// Open inbound connections by peer node id (join waits for every member's).
    inbound: Mutex<HashMap<String, usize>>,
    /// State transfers served, waiting for the replica's barrier, by requester.
    serving: Mutex<HashMap<String, handle::Serving>>,
    discovery: Mutex<Option<Arc<Discovery>>>,
    /// Members to run an anti-entropy round with soon.
    ae_kick: mpsc::Sender<antientropy::Kick>,
    /// Peers reached over TCP whose handshakes fail (readiness, `/cluster`).
    reach: crate::reachability::Reachability,
    /// Rate limit of the WARN lines strangers can cause.
    warns: crate::warn_limit::WarnLimiter,
}

/// What this node asks of its peers and waits for.
struct Requests {
    /// Outstanding requests: (request id, node id) → waiter.
    pending: Mutex<HashMap<(u64, String), oneshot::Sender<Message>>>,
    /// Sync writes waiting for the replica's verdict: ack id → waiter.
    syncs: Mutex<HashMap<u64, oneshot::Sender<SyncDone>>>,
    next_id: AtomicU64,
    /// Fetches from peers in flight at once (a client's cookies can make a node ask its
    /// peers; this bounds how much of that runs at the same time).
    fetches: tokio::sync::Semaphore,
    /// Delta-gap repairs running (bounded).
    gaps: Arc<gaps::GapRepairs>,
    /// Sessions touched since the last flush, with their new expiry.
    touched: Mutex<HashMap<SessionId, u64>>,
}

/// What other tasks wait on.
struct Signals {
    /// Notified whenever a remote change is applied (read-your-writes waiters).
    applied: Notify,
    waiters: AtomicUsize,
    /// Mirrors the replica's join (async waiters subscribe).
    ready: watch::Sender<bool>,
    /// Sorted live member ids (this node included).
    view: watch::Sender<Vec<String>>,
}

/// The replica's one timer.
struct Timer {
    /// Monotonic epoch of the replica's clock (ms since).
    epoch: Instant,
    /// Wakes the timer task (a deadline earlier than `at` was set).
    wake: Notify,
    /// When the timer fires next (ms; `u64::MAX`: none).
    at: AtomicU64,
}

/// Tasks and shutdown.
struct Life {
    shutdown: CancellationToken,
    /// Every task this node spawns; shutdown waits for them (bounded).
    tasks: tokio_util::task::TaskTracker,
    /// The flusher, awaited at shutdown (its last flush).
    flusher: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// A running cluster node. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node", &self.inner.me.node_id)
            .finish()
    }
}

/// A session as loaded for a request.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The replica's state.
    pub session: Session,
    /// Whether its version is below what the client had seen (documented async loss).
    pub rolled_back: bool,
}

/// A session could not be loaded: this node holds no copy the client may see, and a
/// replica that may hold one did not answer in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no replica of the session answered in time")]
pub struct Unreachable;

/// A write was not acknowledged because of `--min-members` (split-brain protection).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WriteRefused {
    /// Fewer members are live than required: nothing was written.
    #[error("{REFUSED}: {live} live members, {min} required")]
    NoQuorum {
        /// Live members, this node included.
        live: usize,
        /// `--min-members`.
        min: usize,
    },
    /// A sync write reached fewer members than required in time.
    #[error("{REFUSED}: the write reached {holders} members, {min} required")]
    TooFewReplicas {
        /// Members holding it, this node included.
        holders: usize,
        /// `--min-members`.
        min: usize,
        /// The version written locally.
        version: u64,
    },
}

/// The start of every [`WriteRefused`] message (the HTTP layer maps it to 503).
pub const REFUSED: &str = "write refused: too few cluster members";

pub(crate) use replication::fetch::Fetched;

/// Fetches (each asking one to N - 1 peers) one node runs at once.
const MAX_FETCHES: usize = 256;

fn origin_of(node_id: &str, incarnation: u64) -> u32 {
    let h = xxhash_rust::xxh3::xxh3_64_with_seed(node_id.as_bytes(), incarnation);
    (h as u32) ^ ((h >> 32) as u32)
}

impl Cluster {
    /// Starts the node's cluster side on an already-bound replication listener:
    /// discovery, links, the accept loop and maintenance. Joining (state transfer)
    /// runs in the background; [`Cluster::ready`] tells when it is done.
    pub async fn start(
        cfg: Config,
        listener: TcpListener,
        advertise: SocketAddr,
        key: crate::keyring::Keys,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Result<Cluster, ClusterError> {
        let incarnation = crate::clock::unix_millis();
        let node_id = cfg.node_id();
        let me = SelfInfo {
            cluster: cfg.cluster.clone(),
            node_id: node_id.clone(),
            incarnation,
            advertise,
        };
        let (ready, _) = watch::channel(false);
        let (view, _) = watch::channel(vec![node_id.clone()]);
        let (ae_kick, ae_kicks) = antientropy::kicks();
        // Start from disk before anything can reach the store: loaded, then joined.
        let (store, persistence) = crate::persist::start(&cfg, &metrics.persist)?;
        let inner = Arc::new(Inner {
            origin: origin_of(&node_id, incarnation),
            me: me.clone(),
            store,
            persistence,
            metrics,
            replica: Mutex::new(Replica::new(ReplicaConfig {
                me: node_id.clone(),
                backup_mode: cfg.replication == ReplicationMode::Backup,
                backups: cfg.backups,
                min_members: cfg.min_members,
                sync: cfg.send_mode == SendMode::Sync,
                sync_timeout_ms: cfg.sync_timeout.as_millis() as u64,
            })),
            net: Net {
                key: key.clone(),
                links: Mutex::new(HashMap::new()),
                inbound: Mutex::new(HashMap::new()),
                serving: Mutex::new(HashMap::new()),
                discovery: Mutex::new(None),
                ae_kick,
                reach: Default::default(),
                warns: Default::default(),
            },
            requests: Requests {
                pending: Mutex::new(HashMap::new()),
                syncs: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                fetches: tokio::sync::Semaphore::new(MAX_FETCHES),
                gaps: gaps::GapRepairs::new(gaps::MAX_GAP_REPAIRS),
                touched: Mutex::new(HashMap::new()),
            },
            signals: Signals {
                applied: Notify::new(),
                waiters: AtomicUsize::new(0),
                ready,
                view,
            },
            timer: Timer {
                epoch: Instant::now(),
                wake: Notify::new(),
                at: AtomicU64::new(u64::MAX),
            },
            life: Life {
                shutdown: shutdown.clone(),
                tasks: tokio_util::task::TaskTracker::new(),
                flusher: Mutex::new(None),
            },
            cfg,
        });
        let cluster = Cluster { inner };
        if let Some(p) = &cluster.inner.persistence {
            *cluster.inner.life.flusher.lock() =
                Some(cluster.inner.life.tasks.spawn(crate::persist::flusher::run(
                    cluster.inner.store.clone(),
                    p.clone(),
                    cluster.inner.metrics.clone(),
                    shutdown.clone(),
                )));
        }
        cluster.spawn(net::accept_loop(cluster.clone(), listener));
        let discovery = Arc::new(
            crate::membership::start(
                &cluster.inner.cfg,
                me,
                key,
                shutdown.clone(),
                &cluster.inner.life.tasks,
            )
            .await?,
        );
        *cluster.inner.net.discovery.lock() = Some(discovery.clone());
        cluster.spawn(net::follow_discovery(cluster.clone(), discovery.clone()));
        cluster.spawn(lifecycle::maintenance(cluster.clone()));
        cluster.spawn(antientropy::run(cluster.clone(), ae_kicks));
        cluster.spawn(replica_timer(cluster.clone()));
        cluster.spawn(lifecycle::join(cluster.clone(), discovery));
        Ok(cluster)
    }

    /// Spawns a task owned by this node: [`Cluster::tasks_stopped`] waits for it.
    pub(crate) fn spawn<F>(&self, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.inner.life.tasks.spawn(task);
    }

    /// After the shutdown token was cancelled: waits until every task this node spawned
    /// has ended, up to `timeout`. False when some were still running at the deadline.
    pub async fn tasks_stopped(&self, timeout: Duration) -> bool {
        self.inner.life.tasks.close();
        let stopped = tokio::time::timeout(timeout, self.inner.life.tasks.wait())
            .await
            .is_ok();
        if !stopped {
            tracing::warn!(
                running = self.inner.life.tasks.len(),
                "tasks still running at the end of the drain timeout"
            );
        }
        stopped
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.inner.me.node_id
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.inner.cfg
    }

    /// Whether the node has joined and received its state.
    pub fn is_ready(&self) -> bool {
        self.not_ready_reason().is_none()
    }

    /// Why the node is not ready (`None` when it is).
    pub fn not_ready_reason(&self) -> Option<tribe_api::NotReadyReason> {
        use tribe_api::NotReadyReason as Why;
        let (stopping, joined, quorum) = {
            let r = self.inner.replica.lock();
            (r.stopping(), r.joined(), r.has_quorum())
        };
        if stopping {
            return Some(Why::ShuttingDown);
        }
        if let Some(why) = self.isolation() {
            return Some(why);
        }
        if !joined {
            return Some(Why::Joining);
        }
        if !quorum {
            return Some(Why::TooFewMembers);
        }
        None
    }

    /// Reports not ready from now on, while still serving and replicating (the first step
    /// of a shutdown, so that load balancers stop sending before the node leaves).
    pub fn stop_accepting(&self) {
        self.with_replica(|r| r.set_draining());
    }

    /// Runs `f` on the replica under its lock, then performs the events it produced
    /// (still under the lock, so that views are published in the order they changed;
    /// each is a non-blocking send).
    pub(crate) fn with_replica<T>(&self, f: impl FnOnce(&mut Replica) -> T) -> T {
        let inner = &self.inner;
        let mut r = inner.replica.lock();
        let out = f(&mut r);
        while let Some(e) = r.poll_event() {
            match e {
                Event::ViewChanged(ids) => {
                    inner.metrics.members.set(ids.len() as i64);
                    inner.signals.view.send_replace(ids);
                }
                Event::SyncDone(done) => {
                    if done.alone && done.acknowledged {
                        inner.metrics.sync_writes_alone.inc();
                    }
                    if let Some(tx) = inner.requests.syncs.lock().remove(&done.id) {
                        let _ = tx.send(done);
                    }
                }
                Event::PeerFailed(node) => {
                    inner.requests.pending.lock().retain(|(_, n), _| *n != node);
                    inner.net.serving.lock().remove(&node);
                }
                Event::RequestState {
                    node,
                    id,
                    only_owned,
                } => {
                    // Not queued (no link, queue full): the replica asks again shortly,
                    // or stops waiting once the member fails.
                    let msg = Message::StateReq { id, only_owned };
                    if !self.queue_to(&r, &node, msg) {
                        r.state_request_not_sent(self.now_ms(), &node);
                    }
                }
                Event::Barrier { node, id } => {
                    self.queue_to(&r, &node, Message::Barrier { id });
                }
                Event::ServeState(serve) => handle::stream_state(self, serve),
                Event::Joined { ms } => lifecycle::joined(self, ms, r.alive_peers().len()),
                Event::Rereplicate => self.spawn(lifecycle::rereplicate(self.clone())),
                Event::Resync(node) => self.anti_entropy_soon(&node, true),
                Event::RepairGap { from, sid } => handle::repair_gap(self, from, sid),
            }
        }
        // A deadline earlier than the timer sleeps for: wake it (only then: this runs for
        // every write and ack).
        if r.poll_timeout()
            .is_some_and(|t| t < inner.timer.at.load(Ordering::Relaxed))
        {
            inner.timer.wake.notify_one();
        }
        out
    }

    /// Queues `msg` on the link to the live member `node` (`r`: the replica, locked).
    fn queue_to(&self, r: &Replica, node: &str, msg: Message) -> bool {
        let Some(id) = r.link_of(node) else {
            return false;
        };
        let link = link_by_id(&self.inner.net.links.lock(), id);
        link.is_some_and(|l| l.queue(&self.inner.metrics, msg.outgoing()))
    }

    /// Milliseconds on the replica's clock.
    pub(crate) fn now_ms(&self) -> u64 {
        self.inner.timer.epoch.elapsed().as_millis() as u64
    }

    /// Whether the join completed (ready, unless draining or without quorum).
    pub(crate) fn joined(&self) -> bool {
        self.inner.replica.lock().joined()
    }

    /// Whether the node is shutting down (draining or leaving): not ready again.
    pub fn stopping(&self) -> bool {
        self.inner.replica.lock().stopping()
    }

    /// Whether the node is leaving.
    pub(crate) fn leaving(&self) -> bool {
        self.inner.replica.lock().leaving()
    }

    /// The session store.
    pub fn store(&self) -> &Arc<Store> {
        &self.inner.store
    }

    /// Discovery, once started.
    pub fn discovery(&self) -> Option<Arc<Discovery>> {
        self.inner.net.discovery.lock().clone()
    }

    /// Waits until the node is ready.
    pub async fn ready(&self) {
        let mut rx = self.inner.signals.ready.subscribe();
        let _ = rx.wait_for(|r| *r).await;
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Sorted ids of the live members, this node included.
    pub fn live_members(&self) -> Vec<String> {
        self.inner.signals.view.borrow().clone()
    }

    pub(crate) fn hello(&self) -> Hello {
        Hello {
            cluster: self.inner.me.cluster.clone(),
            node_id: self.inner.me.node_id.clone(),
            incarnation: self.inner.me.incarnation,
            addr: self.inner.me.advertise,
            nonce: [0; 16],
            ready: self.joined(),
            versions: crate::wire::Versions::local(),
        }
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.inner.requests.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Alive members other than this node: (node id, link).
    pub(crate) fn alive_peers(&self) -> Vec<(String, Arc<Link>)> {
        let peers = self.inner.replica.lock().alive_peers();
        let links = self.inner.net.links.lock();
        peers
            .into_iter()
            .filter_map(|(n, id)| link_by_id(&links, id).map(|l| (n, l)))
            .collect()
    }

    pub(crate) fn link_of(&self, node_id: &str) -> Option<Arc<Link>> {
        let id = self.inner.replica.lock().link_of(node_id)?;
        link_by_id(&self.inner.net.links.lock(), id)
    }

    /// Whether this node is the primary of `sid` under the current view (backup mode).
    pub(crate) fn is_primary(&self, sid: SessionId) -> bool {
        self.inner.replica.lock().is_primary(sid)
    }

    /// A fresh session id. In backup mode it is one whose primary is this node (drawn
    /// from the ~1/N of random ids that hash here; still ~124 random bits at 16 nodes):
    /// the node that creates a session owns it, so behind a front door with session
    /// affinity (the ingress' affinity cookie pins a client to the node that served its
    /// first request) every write lands on its primary and costs one delta to the backups,
    /// with no fetch and no forward, at any cluster size.
    pub fn new_session_id(&self) -> SessionId {
        let fresh = || loop {
            let id = rand::random::<i128>();
            if !self.inner.store.contains(id) {
                break id;
            }
        };
        if !self.backup_mode() {
            return fresh();
        }
        // Expected N draws; bounded in case the view does not contain this node yet.
        let first = fresh();
        (0..256)
            .map(|_| fresh())
            .find(|&id| self.is_primary(id))
            .unwrap_or(first)
    }

    pub(crate) fn backup_mode(&self) -> bool {
        self.inner.cfg.replication == ReplicationMode::Backup
    }

    /// Registers a waiter for a reply `id` from `node`.
    pub(crate) fn expect(&self, id: u64, node: &str) -> oneshot::Receiver<Message> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .requests
            .pending
            .lock()
            .insert((id, node.to_string()), tx);
        rx
    }

    /// Resolves a waiter (a reply arrived).
    pub(crate) fn resolve(&self, id: u64, node: &str, msg: Message) {
        // A sync write's ack, a barrier's answer and a state transfer's last chunk are
        // the replica's; anything else answers a request here.
        let now = self.now_ms();
        let consumed = match &msg {
            Message::Ack { .. } => self.with_replica(|r| r.on_ack(node, id)),
            Message::BarrierAck { .. } => self.with_replica(|r| r.on_barrier_ack(node, id)),
            Message::StateChunk { done: true, .. } => {
                self.with_replica(|r| r.on_state_done(now, node, id))
            }
            _ => false,
        };
        if consumed {
            return;
        }
        if let Some(tx) = self
            .inner
            .requests
            .pending
            .lock()
            .remove(&(id, node.to_string()))
        {
            let _ = tx.send(msg);
        }
    }

    /// Sends `msg` to `node` and waits for its reply, up to `timeout`.
    pub(crate) async fn request(
        &self,
        node: &str,
        link: &Link,
        id: u64,
        msg: Message,
        timeout: Duration,
    ) -> Option<Message> {
        let rx = self.expect(id, node);
        if !link.send(&self.inner.metrics, msg.outgoing()).await {
            self.inner
                .requests
                .pending
                .lock()
                .remove(&(id, node.to_string()));
            return None;
        }
        let r = tokio::time::timeout(timeout, rx).await;
        self.inner
            .requests
            .pending
            .lock()
            .remove(&(id, node.to_string()));
        r.ok().and_then(|r| r.ok())
    }

    // ---------------------------------------------------------------- reads

    /// Loads a session for a request whose client has seen `min_version` (0: nothing
    /// known). Waits (bounded) for a newer copy, or fetches one, per REPLICATION.md.
    /// `Ok(None)`: no such session (every replica asked said so). `Err`: this node holds
    /// no copy the client may see and a replica that may hold one did not answer in
    /// time — not the same as "no session", which would make the app drop the client's
    /// cookie, nor a rollback.
    pub async fn load(
        &self,
        sid: SessionId,
        min_version: u64,
    ) -> Result<Option<Loaded>, Unreachable> {
        use replication::fetch::{self, ReadStart};
        let inner = &self.inner;
        let now = unix_now();
        // A copy serves the client when it holds every write up to the client's version,
        // not merely a newer one: a delta can overtake an older one on another link.
        let local = inner
            .store
            .with(sid, |s| (s.seen_through(), s.is_dead(now)));
        let owner = self.inner.replica.lock().should_hold(sid);
        let started = Instant::now();
        match fetch::read_start(self.backup_mode(), owner, local, min_version) {
            ReadStart::Serve => return Ok(self.local_copy(sid, min_version, now)),
            ReadStart::NoSession => return Ok(None),
            // Delta mode: every ready node holds every session, so an id this node has
            // never seen, from a client with no valid version cookie, is answered here,
            // not by asking every peer (a random `SESSIONID` must not fan out): after a
            // bounded wait for the creating write, which may still be in flight.
            ReadStart::AwaitCreate => {
                if self
                    .wait_for_version(sid, 0, inner.cfg.consistency_wait)
                    .await
                {
                    return Ok(self.local_copy(sid, 0, unix_now()));
                }
                return Ok(None);
            }
            ReadStart::WaitThenFetch => {
                // The client has seen a newer version than ours: its delta is probably
                // in flight. Wait for it, briefly.
                inner.metrics.consistency_waits.inc();
                if self
                    .wait_for_version(sid, min_version, inner.cfg.consistency_wait)
                    .await
                {
                    inner
                        .metrics
                        .consistency_wait_seconds
                        .observe(started.elapsed().as_secs_f64());
                    return Ok(self.local_copy(sid, min_version, unix_now()));
                }
            }
            ReadStart::Fetch => {}
        }
        // Ask the replicas that should have it.
        if min_version > 0 {
            inner.metrics.consistency_fetches.inc();
        }
        let fetched = self.fetch(sid, min_version).await;
        if min_version > 0 {
            inner
                .metrics
                .consistency_wait_seconds
                .observe(started.elapsed().as_secs_f64());
        }
        if fetch::unreachable(fetched, inner.store.seen_through(sid), min_version) {
            // Nothing here that the client may see, and a replica that may hold it was
            // silent: an error, not "no session" nor an older copy (that is a rollback
            // only when every replica answered without the client's version).
            tracing::warn!(session = %crate::model::log_tag(sid), "no replica of the session answered in time");
            return Err(Unreachable);
        }
        Ok(self.local_copy(sid, min_version, unix_now()))
    }

    fn local_copy(&self, sid: SessionId, min_version: u64, now: u64) -> Option<Loaded> {
        let session = self.inner.store.with(sid, |s| s.clone())?;
        if session.is_dead(now) {
            return None;
        }
        let rolled_back = replication::fetch::rolled_back(session.seen_through(), min_version);
        if rolled_back {
            self.inner.metrics.rollbacks.inc();
            tracing::warn!(
                session = %crate::model::log_tag(sid),
                have = session.version,
                client_saw = min_version,
                "serving an older session version than the client has seen (its writer died before replicating)"
            );
        }
        self.inner
            .store
            .with_mut(sid, |s| s.last_local_access = now);
        Some(Loaded {
            session,
            rolled_back,
        })
    }

    async fn wait_for_version(&self, sid: SessionId, min: u64, max_wait: Duration) -> bool {
        let inner = &self.inner;
        let deadline = tokio::time::Instant::now() + max_wait;
        inner.signals.waiters.fetch_add(1, Ordering::SeqCst);
        let ok = loop {
            let notified = inner.signals.applied.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if inner.store.seen_through(sid).is_some_and(|v| v >= min) {
                break true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                break inner.store.seen_through(sid).is_some_and(|v| v >= min);
            }
        };
        inner.signals.waiters.fetch_sub(1, Ordering::SeqCst);
        ok
    }

    /// Fetches a session from the peers that should hold it and merges the copies, as
    /// the replica's [`replication::fetch::FetchPlan`] says (whom to ask, when to hedge,
    /// the fallback, when it is complete); this only sends, awaits and runs the timer.
    pub(crate) async fn fetch(&self, sid: SessionId, min_version: u64) -> Fetched {
        use futures::StreamExt;
        use replication::fetch::Reply;
        let inner = &self.inner;
        // Bounded: past MAX_FETCHES at once, requests queue here instead of fanning out.
        let Ok(_permit) = inner.requests.fetches.acquire().await else {
            return Fetched::Incomplete;
        };
        let wait_ms = inner.cfg.consistency_wait.as_millis() as u64;
        let now = self.now_ms();
        let mut plan = inner
            .replica
            .lock()
            .fetch_plan(now, sid, min_version, wait_ms);
        let mut asked = futures::stream::FuturesUnordered::new();
        loop {
            while let Some(ask) = plan.poll_ask() {
                let link = self.link_of(&ask.node);
                asked.push(self.ask_for(ask, link, sid, min_version));
            }
            if let Some(done) = plan.outcome() {
                return done;
            }
            let hedge = plan.poll_timeout();
            let sleep = async {
                match hedge {
                    Some(ms) => {
                        tokio::time::sleep_until(
                            (inner.timer.epoch + Duration::from_millis(ms)).into(),
                        )
                        .await
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = asked.next() => {
                    let Some((node, reply)) = r else {
                        // Nothing outstanding and no outcome: cannot happen; be safe.
                        return Fetched::Incomplete;
                    };
                    let reply = match reply {
                        Some(Message::FetchResp { session: Some(s), .. }) => {
                            inner.store.merge(&s);
                            Reply::Copy(s.version)
                        }
                        Some(_) => Reply::NoCopy,
                        None => Reply::NoAnswer,
                    };
                    let holds = inner
                        .store
                        .seen_through(sid)
                        .is_some_and(|v| v >= min_version);
                    plan.on_reply(&node, reply, holds);
                }
                _ = sleep => plan.on_timeout(self.now_ms()),
            }
        }
    }

    /// Asks `ask.node` for its copy of `sid` (one `tribe_remote_fetches`); its answer, or
    /// `None` when it did not answer in time (or has no link).
    fn ask_for(
        &self,
        ask: replication::fetch::Ask,
        link: Option<Arc<Link>>,
        sid: SessionId,
        min_version: u64,
    ) -> impl std::future::Future<Output = (String, Option<Message>)> + 'static {
        self.inner.metrics.remote_fetches.inc();
        let id = self.next_id();
        let msg = Message::FetchReq {
            id,
            sid,
            min_version,
            wait_ms: ask.wait_ms,
        };
        let this = self.clone();
        async move {
            let reply = match link {
                Some(link) => {
                    this.request(
                        &ask.node,
                        &link,
                        id,
                        msg,
                        Duration::from_millis(ask.timeout_ms),
                    )
                    .await
                }
                None => None,
            };
            (ask.node, reply)
        }
    }

    // --------------------------------------------------------------- writes

    /// Applies a local write and replicates it; in sync mode returns once the replicas
    /// acked (or the sync timeout passed). Returns the session's new version.
    pub async fn write(
        &self,
        sid: SessionId,
        data: &HashMap<String, bytes::Bytes>,
        expiry: u64,
    ) -> Result<u64, WriteRefused> {
        self.write_changes(sid, None, data, expiry).await
    }

    /// [`Cluster::write`] for a request that loaded the attributes `loaded`: only what
    /// the request changed since is written, so a concurrent write from another node that
    /// arrived after the load is not undone ([`Session::diff_from`]). `None`: diff against
    /// the local replica (a new session).
    ///
    /// `--min-members`: refused before anything is written while fewer members are live,
    /// and (sync mode) an error when fewer than that many members acknowledged the write
    /// in time (it was applied here and may still spread, but it is not acknowledged).
    pub async fn write_changes(
        &self,
        sid: SessionId,
        loaded: Option<&HashMap<String, bytes::Bytes>>,
        data: &HashMap<String, bytes::Bytes>,
        expiry: u64,
    ) -> Result<u64, WriteRefused> {
        let inner = &self.inner;
        self.check_quorum()?;
        let written = replication::write::local_write(
            &inner.store,
            inner.origin,
            sid,
            loaded,
            data,
            expiry,
            unix_now(),
        );
        let delta = match written {
            replication::write::Written::Delta(d) => d,
            replication::write::Written::Touched(expiry) => {
                inner.requests.touched.lock().insert(sid, expiry);
                return Ok(inner.store.version(sid).unwrap_or(0));
            }
            replication::write::Written::Unchanged => {
                return Ok(inner.store.version(sid).unwrap_or(0));
            }
        };
        let version = delta.stamp.counter;
        let (holders, ()) = tokio::join!(self.replicate(delta), self.persisted());
        self.check_holders(holders, version)
    }

    /// `--durability sync`: waits until every local change made so far is on disk (the
    /// flush that covers it; concurrent writers share it). A failed flush is logged and
    /// counted (`tribe_persist_errors_total`); the write stays applied and replicated.
    async fn persisted(&self) {
        let Some(p) = &self.inner.persistence else {
            return;
        };
        let Some(dirty) = self.inner.store.dirty().filter(|_| p.sync) else {
            return;
        };
        if let Err(e) = dirty.durable(dirty.barrier()).await {
            tracing::warn!(error = %e, "a sync write is answered without being on disk");
        }
    }

    /// Waits for the flusher's last flush (after the shutdown token was cancelled).
    pub async fn persistence_stopped(&self) {
        let task = self.inner.life.flusher.lock().take();
        if let Some(t) = task {
            let _ = t.await;
        }
    }

    /// Whether enough members are live for writes (`--min-members`).
    pub fn has_quorum(&self) -> bool {
        self.inner.replica.lock().has_quorum()
    }

    fn check_quorum(&self) -> Result<(), WriteRefused> {
        if self.has_quorum() {
            return Ok(());
        }
        self.inner.metrics.writes_refused.inc();
        Err(WriteRefused::NoQuorum {
            live: self.inner.signals.view.borrow().len(),
            min: self.inner.cfg.min_members,
        })
    }

    fn check_holders(&self, holders: usize, version: u64) -> Result<u64, WriteRefused> {
        let min = self.inner.cfg.min_members;
        if self.inner.replica.lock().acknowledges(holders) {
            return Ok(version);
        }
        self.inner.metrics.writes_refused.inc();
        Err(WriteRefused::TooFewReplicas {
            holders,
            min,
            version,
        })
    }

    /// Invalidates a session everywhere.
    pub async fn invalidate(&self, sid: SessionId) {
        let delta = replication::write::local_invalidate(
            &self.inner.store,
            self.inner.origin,
            sid,
            unix_now(),
        );
        tokio::join!(self.replicate(delta), self.persisted());
    }

    /// Records an access (extends the expiry); replicated in batches.
    pub fn touch(&self, sid: SessionId) {
        let expiry = unix_now() + self.inner.cfg.session_timeout.as_secs();
        if self.inner.store.touch(sid, expiry) {
            self.inner.requests.touched.lock().insert(sid, expiry);
        }
    }

    /// Sends a local write to its replicas and, in sync mode, waits for the acks. Where it
    /// goes, the forward's retry under a new view and the async full-queue fallback are
    /// the replica's decisions ([`replication::route`]); this performs them. Returns how
    /// many members hold the write as far as this node knows (itself included; in async
    /// mode, itself and the peers it was queued for).
    pub(crate) async fn replicate(&self, delta: Delta) -> usize {
        use replication::route::Step;
        let inner = &self.inner;
        let sync = inner.cfg.send_mode == SendMode::Sync;
        let sid = delta.sid;
        let (mut retry, mut step) = {
            let r = inner.replica.lock();
            let mut retry = r.start_write(self.now_ms());
            let step = retry.first(r.route_write(sid));
            (retry, step)
        };
        loop {
            let (primary, fallback, holders) = match step {
                Step::Send(targets) => return self.send_delta(delta, &targets, sync).await,
                Step::TimedOut => {
                    inner.metrics.sync_timeouts.inc();
                    return 1;
                }
                Step::Forward {
                    primary,
                    fallback,
                    holders,
                } => (primary, fallback, holders),
            };
            let failed = |this: &Self, retry: &mut replication::route::ForwardRetry| {
                let now = this.now_ms();
                let r = this.inner.replica.lock();
                retry.after_failure(now, r.route_write(sid))
            };
            let Some(link) = self.link_of(&primary) else {
                // Its link went away since the decision: decide again.
                step = failed(self, &mut retry);
                continue;
            };
            // Not the primary: forward to it; it replicates to the backups.
            inner.metrics.forwards_sent.inc();
            if !sync {
                let forward = Message::Forward {
                    ack: 0,
                    delta: delta.clone(),
                };
                if link.send(&inner.metrics, forward.outgoing()).await {
                    return holders;
                }
                // The primary's queue is full (it is stuck and not suspected yet): the
                // backups get the write straight from here, so it does not live only on
                // this non-owner.
                return self.send_delta(delta, &fallback, false).await;
            }
            let ack = self.next_id();
            let msg = Message::Forward {
                ack,
                delta: delta.clone(),
            };
            let started = Instant::now();
            let wait = Duration::from_millis(retry.deadline().saturating_sub(self.now_ms()));
            if self
                .request(&primary, &link, ack, msg, wait)
                .await
                .is_some()
            {
                inner
                    .metrics
                    .sync_ack_seconds
                    .observe(started.elapsed().as_secs_f64());
                // The primary acks after its backups did (or were suspected), and only
                // when its own count is acknowledged.
                return holders;
            }
            tracing::debug!(
                session = %crate::model::log_tag(sid),
                primary,
                "the primary did not ack a forwarded sync write; deciding again"
            );
            step = failed(self, &mut retry);
        }
    }

    /// Sends one delta to `targets`; with `sync`, waits for every ack (bounded by the sync
    /// timeout; a target suspected meanwhile stops being waited for at once). Returns how
    /// many members hold it: this node plus the targets that acked (sync) or that it was
    /// queued for (async).
    pub(crate) async fn send_delta(&self, delta: Delta, targets: &[String], sync: bool) -> usize {
        let inner = &self.inner;
        let ack = if sync { self.next_id() } else { 0 };
        let out = Message::Delta { ack, delta }.outgoing();
        let started = Instant::now();
        let links: Vec<(String, Arc<Link>)> = targets
            .iter()
            .filter_map(|n| self.link_of(n).map(|l| (n.clone(), l)))
            .collect();
        // The replica waits for the targets from before the first delta leaves (an ack
        // can come back at once); a target whose queue is full is dropped from the wait.
        let mut done = None;
        if sync {
            let (tx, rx) = oneshot::channel();
            inner.requests.syncs.lock().insert(ack, tx);
            let now = self.now_ms();
            let names = links.iter().map(|(n, _)| n.clone());
            self.with_replica(|r| r.start_sync(now, ack, names));
            done = Some(rx);
        }
        let mut queued = 0;
        for (node, link) in &links {
            if link.send(&inner.metrics, out.clone()).await {
                inner.metrics.deltas_sent.inc();
                queued += 1;
            } else if sync {
                self.with_replica(|r| r.drop_target(ack, node));
            }
        }
        let Some(mut rx) = done else {
            return 1 + queued;
        };
        // A target suspected meanwhile stops being waited for at once (the replica ends
        // the wait), so a frozen or cut peer is waited for at most the member timeout.
        let done = match tokio::time::timeout(inner.cfg.sync_timeout, &mut rx).await {
            Ok(Ok(done)) => done,
            _ => {
                self.with_replica(|r| r.expire_sync(ack));
                match rx.try_recv() {
                    Ok(done) => done,
                    Err(_) => return 1,
                }
            }
        };
        if done.timed_out {
            inner.metrics.sync_timeouts.inc();
            tracing::warn!(
                peers = ?links.iter().map(|l| &l.0).collect::<Vec<_>>(),
                "sync write timed out waiting for acks"
            );
        } else {
            inner
                .metrics
                .sync_ack_seconds
                .observe(started.elapsed().as_secs_f64());
        }
        done.holders
    }

    /// Pushes whole sessions to one member (hand-off, re-replication); waits for its ack.
    pub(crate) async fn put(
        &self,
        node: &str,
        sessions: Vec<SessionState>,
        timeout: Duration,
    ) -> bool {
        let Some(link) = self.link_of(node) else {
            return false;
        };
        let id = self.next_id();
        self.request(node, &link, id, Message::Put { ack: id, sessions }, timeout)
            .await
            .is_some()
    }

    // ---------------------------------------------------------------- views

    /// The `/cluster` document.
    pub fn view(&self) -> ClusterView {
        let inner = &self.inner;
        let members: Vec<MemberView> = inner
            .replica
            .lock()
            .members()
            .map(|m| MemberView {
                node: m.node_id.clone(),
                addr: m.addr.to_string(),
                state: m.state,
                incarnation: m.incarnation,
            })
            .collect();
        // Read `ready` before counting: counted first, a join finishing in between gives a
        // document that says ready with the sessions of a transfer still in progress.
        let not_ready_reason = self.not_ready_reason();
        let ready = not_ready_reason.is_none();
        let (primary, backup, _cached, live) = self.role_counts();
        ClusterView {
            node: inner.me.node_id.clone(),
            cluster: inner.me.cluster.clone(),
            incarnation: inner.me.incarnation,
            replication: inner.cfg.replication,
            backups: inner.cfg.backups,
            send_mode: inner.cfg.send_mode,
            ready,
            sessions: live,
            primary,
            backup,
            rereplication_backlog: inner.metrics.rereplication_backlog.get().max(0) as u64,
            members,
            keys: self.key_status().0,
            refusing_peers: self.key_status().1.iter().map(|a| a.to_string()).collect(),
            peer_problems: inner
                .net
                .reach
                .problems()
                .into_iter()
                .map(|(addr, p)| tribe_api::PeerProblem {
                    addr: addr.to_string(),
                    reason: p.reason().to_string(),
                    detail: p.detail(),
                })
                .collect(),
            protocol_min: crate::wire::Versions::local().min,
            protocol_max: crate::wire::Versions::local().max,
            not_ready_reason,
            version: Some(tribe_api::VERSION.into()),
        }
    }

    /// (primary, backup, cached, live) session counts; in delta mode every live session
    /// counts as primary.
    pub fn role_counts(&self) -> (usize, usize, usize, usize) {
        // Delta mode: every live session is primary; the store keeps that count. Backup
        // mode: a scan, but only after sessions were added or removed or the view
        // changed, or a second passed (not one per request to `/`, `/cluster`, `/metrics`).
        if !self.backup_mode() {
            let live = self.inner.store.live();
            return (live, 0, 0, live);
        }
        let view = xxhash_rust::xxh3::xxh3_64(self.live_members().join(",").as_bytes());
        let [p, b, c, live] = self.inner.store.cached(Duration::from_secs(1), view, || {
            let (p, b, c, live) = self.scan_role_counts();
            [p, b, c, live]
        });
        (p, b, c, live)
    }

    fn scan_role_counts(&self) -> (usize, usize, usize, usize) {
        let inner = &self.inner;
        let now = unix_now();
        let view = self.live_members();
        let (mut p, mut b, mut c, mut live) = (0, 0, 0, 0);
        for sid in inner.store.ids() {
            if inner.store.is_dead(sid, now).unwrap_or(true) {
                continue;
            }
            live += 1;
            if !self.backup_mode() {
                p += 1;
                continue;
            }
            let owners = ownership::owners(sid, &view, inner.cfg.backups);
            match owners.iter().position(|o| *o == inner.me.node_id) {
                Some(0) => p += 1,
                Some(_) => b += 1,
                None => c += 1,
            }
        }
        (p, b, c, live)
    }

    /// Refreshes the gauges that are computed on demand (called before `/metrics`).
    pub fn refresh_gauges(&self) {
        let (p, b, c, _) = self.role_counts();
        let m = &self.inner.metrics;
        if self.backup_mode() {
            m.sessions
                .get_or_create(&Role {
                    role: "primary".into(),
                })
                .set(p as i64);
            m.sessions
                .get_or_create(&Role {
                    role: "backup".into(),
                })
                .set(b as i64);
            m.sessions
                .get_or_create(&Role {
                    role: "cached".into(),
                })
                .set(c as i64);
        } else {
            m.sessions
                .get_or_create(&Role {
                    role: "replica".into(),
                })
                .set(p as i64);
        }
        m.members.set(self.live_members().len() as i64);
    }

    /// Leaves the cluster gracefully: not ready, hand-off (backup mode), drain queues,
    /// say goodbye. Bounded by the drain timeout.
    pub async fn leave(&self) {
        lifecycle::leave(self.clone()).await
    }
}

/// Runs the replica's deadlines ([`Replica::poll_timeout`], [`Replica::on_timeout`])
/// until shutdown.
async fn replica_timer(c: Cluster) {
    let inner = &c.inner;
    loop {
        // Read and published under the replica's lock, which `with_replica` compares
        // new deadlines against (a permit left by `notify_one` is not lost).
        let next = {
            let r = inner.replica.lock();
            let next = r.poll_timeout().unwrap_or(u64::MAX);
            inner.timer.at.store(next, Ordering::Relaxed);
            next
        };
        let sleep = async {
            match next {
                u64::MAX => std::future::pending().await,
                ms => {
                    tokio::time::sleep_until((inner.timer.epoch + Duration::from_millis(ms)).into())
                        .await
                }
            }
        };
        tokio::select! {
            _ = sleep => {
                let now = c.now_ms();
                c.with_replica(|r| r.on_timeout(now));
            }
            _ = inner.timer.wake.notified() => {}
            _ = inner.life.shutdown.cancelled() => return,
        }
    }
}

/// The link `id` in the driver's link table.
fn link_by_id(
    links: &HashMap<SocketAddr, Arc<Link>>,
    id: replication::replica::LinkId,
) -> Option<Arc<Link>> {
    links.values().find(|l| l.id == id).cloned()
}

/// Sender half of a reply channel for an inbound connection.
pub(crate) type ReplyTx = mpsc::Sender<Outgoing>;
