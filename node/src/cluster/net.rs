//! Links to peers (outbound, one per address), inbound connections, and the failure
//! detector: a member whose link breaks is suspect; a failed TCP connect removes it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{handle, Cluster};
use crate::admission::{Admission, Limits, Slot};
use crate::crypto::FINGERPRINT_LEN;
use crate::membership::Discovery;
use crate::metrics::Metrics;
use crate::reachability::Problem;
use crate::replication::liveness::Liveness;
use crate::replication::replica::{Admission as Admitted, Inbound, LinkId};
use crate::transport::{self, Connection, HandshakeError};
use crate::wire::{Hello, Message, Outgoing, WireError};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The outbound side of one peer: a bounded queue drained by a task that keeps a
/// connection open, reconnecting with backoff.
#[derive(Debug)]
pub struct Link {
    /// Names it in the replica's member table.
    pub id: LinkId,
    /// The address dialed.
    pub addr: SocketAddr,
    tx: mpsc::Sender<(Outgoing, Instant)>,
    /// Messages queued or being written.
    inflight: Arc<AtomicUsize>,
    cancel: CancellationToken,
    /// Proposed by discovery (else only learned from the peer's own hello).
    wanted: AtomicBool,
    /// Dial attempts so far (join waits for one per candidate).
    pub attempts: std::sync::atomic::AtomicU32,
    /// Cuts a reconnect backoff short (the peer just dialed us, so it is up).
    kick: tokio::sync::Notify,
    /// Messages were dropped: run anti-entropy with this peer soon.
    pub resync: AtomicBool,
}

impl Link {
    /// Queues a message; never waits. When the queue is full (the peer is slow, frozen
    /// or cut off and not suspected yet) the message is dropped, counted, and the peer
    /// marked for resynchronisation: anti-entropy repairs what it missed once the link
    /// is healthy again. So one stuck peer cannot slow down writes to anyone else.
    /// False when dropped.
    pub async fn send(&self, metrics: &Metrics, out: Outgoing) -> bool {
        self.queue(metrics, out)
    }

    /// [`Link::send`], callable without an async context (under the replica's lock).
    pub fn queue(&self, metrics: &Metrics, out: Outgoing) -> bool {
        self.inflight.fetch_add(1, Ordering::SeqCst);
        let ok = self.tx.try_send((out, Instant::now())).is_ok();
        if !ok {
            self.inflight.fetch_sub(1, Ordering::SeqCst);
            metrics.deltas_dropped.inc();
            self.resync.store(true, Ordering::Relaxed);
        }
        ok
    }

    /// Whether everything queued has been written to the socket.
    pub fn drained(&self) -> bool {
        self.inflight.load(Ordering::SeqCst) == 0
    }

    /// Stops the link.
    pub fn close(&self) {
        self.cancel.cancel();
    }
}

/// Returns the link to `addr`, creating it (and its task) if needed.
pub(crate) fn ensure_link(c: &Cluster, addr: SocketAddr, wanted: bool) -> Option<Arc<Link>> {
    let inner = &c.inner;
    if addr == inner.me.advertise {
        return None;
    }
    let mut links = inner.net.links.lock();
    if let Some(l) = links.get(&addr) {
        if wanted {
            l.wanted.store(true, Ordering::Relaxed);
        }
        return Some(l.clone());
    }
    let (tx, rx) = mpsc::channel(inner.cfg.peer_queue.max(16));
    static NEXT_LINK: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let link = Arc::new(Link {
        id: NEXT_LINK.fetch_add(1, Ordering::Relaxed),
        addr,
        tx,
        inflight: Arc::new(AtomicUsize::new(0)),
        cancel: inner.life.shutdown.child_token(),
        wanted: AtomicBool::new(wanted),
        attempts: Default::default(),
        kick: tokio::sync::Notify::new(),
        resync: AtomicBool::new(false),
    });
    links.insert(addr, link.clone());
    c.spawn(run_link(c.clone(), link.clone(), rx));
    Some(link)
}

/// Admits the peer on `link` (false: that incarnation said goodbye).
fn admit(c: &Cluster, peer: &Hello, link: &Arc<Link>) -> bool {
    let now = c.now_ms();
    let admission = c.with_replica(|r| {
        r.peer_up(
            now,
            &peer.node_id,
            peer.incarnation,
            peer.addr,
            peer.ready,
            link.id,
        )
    });
    match admission {
        Admitted::Admitted { new: true, .. } => {
            tracing::info!(node = %peer.node_id, addr = %peer.addr, "member joined");
        }
        Admitted::Admitted {
            restarted: true, ..
        } => {
            tracing::info!(node = %peer.node_id, new = peer.incarnation, "member restarted (new incarnation)");
        }
        Admitted::Admitted { .. } => {}
        Admitted::Left => return false,
    }
    true
}

/// Marks the member on `link` suspect (its connection broke).
fn suspect(c: &Cluster, node: &str, link: &Arc<Link>) {
    if c.with_replica(|r| r.peer_suspect(node, link.id)) {
        tracing::info!(node, "member suspected: connection lost or silent");
        c.inner.metrics.members_suspected.inc();
    }
}

/// Removes the member whose link is `link` (confirmed dead, or gone).
pub(crate) fn remove_member_on(c: &Cluster, link: &Arc<Link>, why: &str) {
    if let Some(m) = c.with_replica(|r| r.peer_removed(link.id)) {
        tracing::info!(node = %m.node_id, addr = %m.addr, why, "member removed");
    }
}

async fn run_link(c: Cluster, link: Arc<Link>, mut rx: mpsc::Receiver<(Outgoing, Instant)>) {
    let inner = c.inner.clone();
    let mut backoff = Duration::from_millis(50);
    // A connection made with the current primary key to replace the one in use.
    let mut replacement: Option<Connection> = None;
    loop {
        if link.cancel.is_cancelled() {
            break;
        }
        let res = match replacement.take() {
            Some(conn) => Ok(conn),
            None => {
                let dial = transport::dial(
                    link.addr,
                    c.hello(),
                    &inner.net.key,
                    inner.cfg.max_frame,
                    CONNECT_TIMEOUT,
                );
                tokio::select! {
                    r = dial => r,
                    _ = link.cancel.cancelled() => break,
                }
            }
        };
        // `attempts` counts a dial only once its outcome is recorded (member admitted or
        // removed): a join waiting for every candidate to be dialed then sees the member.
        let dialed = || link.attempts.fetch_add(1, Ordering::SeqCst);
        match res {
            Ok(conn) => {
                inner.net.reach.clear(link.addr);
                let peer = conn.peer.clone();
                if peer.node_id == inner.me.node_id {
                    tracing::debug!(addr = %link.addr, "dialed myself; dropping that address");
                    dialed();
                    break;
                }
                if !admit(&c, &peer, &link) {
                    // A member that said goodbye and is still shutting down.
                    remove_member_on(&c, &link, "left");
                    dialed();
                } else {
                    dialed();
                    backoff = Duration::from_millis(50);
                    let err = match run_connection(&c, &link, conn, &mut rx).await {
                        Ended::Replaced(next) => {
                            // Same peer, new keys: nothing queued is lost.
                            replacement = Some(next);
                            continue;
                        }
                        Ended::Cancelled => None,
                        Ended::Failed(e) => Some(e),
                    };
                    suspect(&c, &peer.node_id, &link);
                    // What was queued for it is dropped: anti-entropy brings the peer up
                    // to date after the reconnection (a frozen peer would otherwise get
                    // a burst of stale frames, and writers would find the queue full).
                    let mut dropped = 0;
                    while rx.try_recv().is_ok() {
                        dropped += 1;
                    }
                    if dropped > 0 {
                        link.inflight.fetch_sub(dropped, Ordering::SeqCst);
                        inner.metrics.deltas_dropped.inc_by(dropped as u64);
                    }
                    if link.cancel.is_cancelled() {
                        break;
                    }
                    if let Some(e) = err {
                        tracing::debug!(node = %peer.node_id, error = %e, "link closed");
                    }
                    // Reconnect at once: the next dial is the failure detector's check.
                    continue;
                }
            }
            Err(e) if e.is_connect() => {
                // Nothing answers (or nothing in time: a frozen peer's kernel still
                // accepts): not a peer that refuses us.
                inner.net.reach.clear(link.addr);
                remove_member_on(&c, &link, "TCP connect failed");
                dialed();
                if !link.wanted.load(Ordering::Relaxed) {
                    break;
                }
            }
            Err(e) => {
                inner.metrics.handshake_failed(e.reason());
                if let HandshakeError::Wire(w) = &e {
                    inner.metrics.reject(w.reason());
                }
                // The peer answers TCP but no handshake completes: while that holds for
                // every peer found, this node is not ready (a key refusal is recorded
                // by the keyring; a peer of another cluster is no peer of ours).
                if !e.is_key_refusal() && !matches!(e.reason(), "other_cluster") {
                    inner.net.reach.failed(link.addr, problem_of(&e));
                }
                tracing::warn!(addr = %link.addr, error = %e, "handshake refused");
                remove_member_on(&c, &link, "handshake refused");
                dialed();
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = link.kick.notified() => {}
            _ = link.cancel.cancelled() => break,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    remove_member_on(&c, &link, "link closed");
    let mut links = inner.net.links.lock();
    if links.get(&link.addr).is_some_and(|l| Arc::ptr_eq(l, &link)) {
        links.remove(&link.addr);
    }
}

/// Most frames written to a connection in one flush.
const MAX_BATCH: usize = 256;

/// Feeds `first` and then whatever else is queued on `rx` (at most [`MAX_BATCH`] in all)
/// to `wr` through `frame`, without flushing; returns how many were fed. When the queue
/// runs dry the task yields once and drains again: the tasks already runnable (requests
/// being answered) queue their frames meanwhile, so that under load one flush (one
/// `write`, one wake-up of the peer's reader) carries many frames instead of one each.
/// When idle nothing else is runnable, and the yield costs a trip through the scheduler,
/// not a timer.
async fn coalesce<T, W>(
    first: T,
    rx: &mut mpsc::Receiver<T>,
    wr: &mut W,
    mut frame: impl FnMut(T) -> Outgoing,
) -> Result<usize, W::Error>
where
    W: futures::Sink<Outgoing> + Unpin,
{
    wr.feed(frame(first)).await?;
    let mut fed = 1;
    let mut yielded = false;
    while fed < MAX_BATCH {
        match rx.try_recv() {
            Ok(item) => {
                wr.feed(frame(item)).await?;
                fed += 1;
            }
            Err(_) if !yielded => {
                yielded = true;
                tokio::task::yield_now().await;
            }
            Err(_) => break,
        }
    }
    Ok(fed)
}

/// What a failed handshake tells about the peer, for `/cluster` and readiness.
fn problem_of(e: &HandshakeError) -> Problem {
    match e {
        HandshakeError::VersionSkew { theirs, ours } => Problem::VersionSkew {
            theirs: (theirs.min, theirs.max),
            ours: (ours.min, ours.max),
        },
        _ => Problem::Handshake {
            reason: e.reason(),
            detail: e.to_string(),
        },
    }
}

/// Completes when the key `conn_key` (id `key_id`) of a connection to `node` is no longer
/// in the key file; counts and logs it.
async fn key_removed(c: &Cluster, conn_key: [u8; FINGERPRINT_LEN], key_id: &str, node: &str) {
    c.inner.net.key.dropped(conn_key).await;
    evicted(c, key_id, node);
}

fn evicted(c: &Cluster, key_id: &str, node: &str) {
    c.inner.metrics.connections_evicted.inc();
    tracing::info!(
        node,
        key = key_id,
        "connection closed: its cluster key was removed from the key file"
    );
}

/// What a key change means for an outbound connection made with `conn_key`.
enum Rekey {
    /// A new connection made with the current primary key, to the same address.
    Replaced(Connection),
    /// The key file no longer holds `conn_key`, and no connection with the current
    /// primary could be made: close.
    Evicted,
}

/// Completes once the primary key is not `conn_key` any more (a rotation) and a
/// connection with the new primary is up (make before break), or once `conn_key` was
/// removed and the peer does not take the new primary (eviction). While the peer has
/// not loaded the new primary yet and `conn_key` is still held, the connection stays.
async fn rekey(c: &Cluster, addr: SocketAddr, conn_key: [u8; FINGERPRINT_LEN]) -> Rekey {
    let keys = &c.inner.net.key;
    let mut changes = keys.subscribe();
    loop {
        if changes.borrow_and_update().primary().key.fingerprint() != conn_key {
            let dial = transport::dial(
                addr,
                c.hello(),
                keys,
                c.inner.cfg.max_frame,
                CONNECT_TIMEOUT,
            );
            match dial.await {
                Ok(conn) => return Rekey::Replaced(conn),
                Err(_) if !keys.holds(&conn_key) => return Rekey::Evicted,
                Err(e) => {
                    tracing::debug!(%addr, error = %e, "no connection with the new primary key yet; keeping the current one");
                }
            }
            // Again after a while, or at the next change of the key file.
            tokio::select! {
                _ = tokio::time::sleep(crate::keyring::POLL_INTERVAL) => continue,
                r = changes.changed() => if r.is_err() { std::future::pending::<()>().await },
            }
        } else if changes.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Frames taken from a link's queue in the current batch: they leave the link's
/// `inflight` count when this is dropped (written, failed, or the connection gone).
struct Taken<'a>(usize, &'a AtomicUsize);

impl<'a> Taken<'a> {
    fn new(inflight: &'a AtomicUsize) -> Self {
        Taken(0, inflight)
    }
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        self.1.fetch_sub(self.0, Ordering::SeqCst);
    }
}

/// How an outbound connection ended.
enum Ended {
    /// The link was cancelled.
    Cancelled,
    /// It failed (or was evicted): why.
    Failed(String),
    /// Replaced by a connection made with the current primary key.
    Replaced(Connection),
}

/// Runs one established outbound connection until it fails, the link is cancelled, or
/// a key rotation replaces it.
async fn run_connection(
    c: &Cluster,
    link: &Arc<Link>,
    conn: Connection,
    rx: &mut mpsc::Receiver<(Outgoing, Instant)>,
) -> Ended {
    let inner = &c.inner;
    let Connection {
        peer,
        mut rd,
        mut wr,
        key,
        key_id,
        ..
    } = conn;
    let peer = &peer;
    // Liveness: a ping every quarter member timeout; the peer is dead when nothing was
    // heard for the member timeout (a frozen process whose kernel still ACKs, a silent
    // cut). The watchdog is apart from the writer, which may be stuck on a full socket.
    let epoch = Instant::now();
    let ms = move || epoch.elapsed().as_millis() as u64;
    let live = parking_lot::Mutex::new(Liveness::new(
        0,
        inner.cfg.member_timeout.as_millis() as u64,
        true,
    ));
    let watchdog = async {
        loop {
            let dead_at = live.lock().dead_at();
            tokio::time::sleep_until((epoch + Duration::from_millis(dead_at)).into()).await;
            if live.lock().is_dead(ms()) {
                return format!(
                    "peer silent for {} ms (frozen or cut off)",
                    inner.cfg.member_timeout.as_millis()
                );
            }
        }
    };
    let rekeying = rekey(c, link.addr, key);
    tokio::pin!(rekeying);
    let writer = async {
        let interval = Duration::from_millis(live.lock().interval());
        let mut pings = tokio::time::interval(interval);
        pings.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let failed = |e: WireError| Ended::Failed(e.to_string());
        loop {
            let item = tokio::select! {
                item = rx.recv() => item,
                r = &mut rekeying => match r {
                    Rekey::Replaced(next) => {
                        // Everything written so far goes out before the end of stream.
                        let _ = wr.close().await;
                        return Ended::Replaced(next);
                    }
                    Rekey::Evicted => {
                        evicted(c, &key_id, &peer.node_id);
                        return Ended::Failed("its key was removed".into());
                    }
                },
                _ = pings.tick() => {
                    if live.lock().ping_due(ms()) {
                        let ping = Message::Ping { nonce: ms() }.outgoing();
                        inner.metrics.bytes_sent.inc_by(ping.wire_len() as u64);
                        if let Err(e) = wr.send(ping).await {
                            return failed(e);
                        }
                    }
                    continue;
                }
            };
            let Some(first) = item else { break };
            // Every frame taken from the queue leaves `inflight` once written, or when
            // the write fails or this connection ends mid-batch (the guard's drop): a
            // count left behind would keep `drained()` false, and a graceful leave
            // waiting the whole `--drain-timeout`.
            let mut taken = Taken::new(&link.inflight);
            // One write for many frames: what is queued now, and (once) what the tasks
            // already runnable queue while this one steps aside (see `coalesce`).
            let sent = coalesce(first, rx, &mut wr, |(out, queued)| {
                taken.0 += 1;
                inner
                    .metrics
                    .replication_lag
                    .observe(queued.elapsed().as_secs_f64());
                inner.metrics.bytes_sent.inc_by(out.wire_len() as u64);
                out
            })
            .await;
            if let Err(e) = sent {
                return failed(e);
            }
            if let Err(e) = wr.flush().await {
                return failed(e);
            }
            drop(taken);
        }
        Ended::Failed("queue closed".into())
    };
    let reader = async {
        let tasks = handle::task_limit();
        while let Some(m) = rd.next().await {
            live.lock().heard(ms());
            inner
                .metrics
                .bytes_received
                .inc_by(rd.decoder_mut().take_bytes());
            match m {
                Ok(msg) => handle::handle(c, peer, msg, None, &tasks).await,
                Err(e) => {
                    inner.metrics.reject(e.reason());
                    return e.to_string();
                }
            }
        }
        "peer closed".to_string()
    };
    tokio::pin!(reader);
    let ended = tokio::select! {
        e = writer => e,
        e = &mut reader => Ended::Failed(e),
        e = watchdog => Ended::Failed(e),
        _ = link.cancel.cancelled() => Ended::Cancelled,
    };
    if matches!(ended, Ended::Replaced(_)) {
        // The old connection's last answers (acks of sync writes, fetch replies) are
        // read until the peer, having read our end of stream, closes it.
        let _ = tokio::time::timeout(inner.cfg.member_timeout, &mut reader).await;
    }
    ended
}

/// Accepts peer connections until shutdown. Handshake slots are handed out by
/// [`Admission`]: at most `--max-handshakes` at once, at most an eighth of them to one
/// source address, and a quarter kept for addresses of known peers; a connection that
/// gets none is closed at once and counted. Each handshake is deadline-bounded.
pub(crate) async fn accept_loop(c: Cluster, listener: TcpListener) {
    let total = c.inner.cfg.max_handshakes;
    let admission = Admission::new(Limits::new(total, (total / 8).max(1)));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = c.inner.life.shutdown.cancelled() => return,
        };
        match accepted {
            Ok((stream, from)) => {
                let ip = from.ip();
                let known = is_known_peer_ip(&c, ip);
                match admission.try_admit(ip, known) {
                    Ok(slot) => {
                        c.spawn(inbound(c.clone(), stream, from, slot));
                    }
                    Err(refused) => {
                        c.inner.metrics.handshake_failed(refused.reason());
                        warn_pre_auth(&c, refused.reason(), from, "no handshake slot");
                        drop(stream);
                    }
                }
            }
            Err(e) => {
                // Transient (e.g. EMFILE): warn and go on.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Whether `ip` is the address of a discovered candidate or a member (they dial from
/// the address they advertise, one per pod on Kubernetes).
fn is_known_peer_ip(c: &Cluster, ip: std::net::IpAddr) -> bool {
    // One lock at a time (the order is replica, then links).
    let linked = c.inner.net.links.lock().keys().any(|a| a.ip() == ip);
    linked || c.inner.replica.lock().members().any(|m| m.addr.ip() == ip)
}

/// A WARN line for a failure before authentication, at most one per reason per
/// [`crate::warn_limit::DEFAULT_EVERY`] (a stranger must not flood the log); the
/// `tribe_handshake_failures_total{reason}` counter carries every one.
fn warn_pre_auth(c: &Cluster, reason: &'static str, from: SocketAddr, what: &str) {
    if let Some(skipped) = c.inner.net.warns.check(reason, Instant::now()) {
        tracing::warn!(
            %from,
            reason,
            error = what,
            like_it_since_last_line = skipped,
            "inbound handshake refused (repeats are counted in tribe_handshake_failures_total, logged at most every {} s)",
            c.inner.net.warns.every().as_secs()
        );
    }
}

async fn inbound(c: Cluster, stream: tokio::net::TcpStream, from: SocketAddr, slot: Slot) {
    let inner = c.inner.clone();
    let accepted = transport::accept(stream, c.hello(), &inner.net.key, inner.cfg.max_frame).await;
    drop(slot);
    let conn = match accepted {
        Ok(x) => x,
        Err(e) => {
            inner.metrics.handshake_failed(e.reason());
            if let HandshakeError::Wire(w) = &e {
                inner.metrics.reject(w.reason());
            }
            warn_pre_auth(&c, e.reason(), from, &e.to_string());
            return;
        }
    };
    let Connection {
        peer,
        mut rd,
        mut wr,
        key,
        key_id,
        ..
    } = conn;
    let verdict = inner
        .replica
        .lock()
        .on_inbound(&peer.node_id, peer.incarnation);
    if verdict == Inbound::Left {
        return;
    }
    // Dial back at once so that this peer gets our writes from now on.
    if verdict == Inbound::DialBack {
        // The link may already exist and sit in a reconnect backoff (up to MAX_BACKOFF),
        // e.g. to a static peer that was down until now: cut it short, or the peer's
        // join waits that long for our dial-back.
        if let Some(link) = ensure_link(&c, peer.addr, false) {
            link.kick.notify_one();
        }
    }
    *inner
        .net
        .inbound
        .lock()
        .entry(peer.node_id.clone())
        .or_default() += 1;
    let (tx, mut rx) = mpsc::channel::<Outgoing>(256);
    let metrics = inner.metrics.clone();
    let writer = inner.life.tasks.spawn(async move {
        while let Some(first) = rx.recv().await {
            let sent = coalesce(first, &mut rx, &mut wr, |out| {
                metrics.bytes_sent.inc_by(out.wire_len() as u64);
                out
            })
            .await;
            if sent.is_err() || wr.flush().await.is_err() {
                return;
            }
        }
    });
    // The dialer pings an idle link every quarter member timeout: silence for twice the
    // member timeout means it is frozen or cut off; close rather than hold the socket.
    // One timer for the connection, not one per frame: it is moved only when it fires
    // early (frames arrived meanwhile).
    let silence = inner.cfg.member_timeout * 2;
    let mut heard = tokio::time::Instant::now();
    let idle = tokio::time::sleep(silence);
    tokio::pin!(idle);
    let evicted = key_removed(&c, key, &key_id, &peer.node_id);
    tokio::pin!(evicted);
    let tasks = handle::task_limit();
    loop {
        let next = tokio::select! {
            n = rd.next() => n,
            _ = inner.life.shutdown.cancelled() => break,
            _ = &mut evicted => break,
            _ = &mut idle => {
                if heard.elapsed() < silence {
                    idle.as_mut().reset(heard + silence);
                    continue;
                }
                tracing::info!(node = %peer.node_id, "inbound connection silent; closing it");
                break;
            }
        };
        heard = tokio::time::Instant::now();
        inner
            .metrics
            .bytes_received
            .inc_by(rd.decoder_mut().take_bytes());
        match next {
            Some(Ok(msg)) => handle::handle(&c, &peer, msg, Some(&tx), &tasks).await,
            Some(Err(e)) => {
                inner.metrics.reject(e.reason());
                tracing::warn!(node = %peer.node_id, error = %e, "bad frame; closing the connection");
                break;
            }
            None => break,
        }
    }
    drop(tx);
    {
        let mut ib = inner.net.inbound.lock();
        if let Some(n) = ib.get_mut(&peer.node_id) {
            *n -= 1;
            if *n == 0 {
                ib.remove(&peer.node_id);
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), writer).await;
}

/// Keeps one link per discovered candidate; a candidate that disappears is checked by
/// TCP connect and its link closed only if that fails.
pub(crate) async fn follow_discovery(c: Cluster, discovery: Arc<Discovery>) {
    let mut rx = discovery.candidates.clone();
    let mut known: std::collections::BTreeSet<SocketAddr> = Default::default();
    loop {
        let cands: std::collections::BTreeSet<SocketAddr> =
            rx.borrow_and_update().keys().copied().collect();
        for addr in &cands {
            ensure_link(&c, *addr, true);
        }
        for gone in known.difference(&cands) {
            let link = c.inner.net.links.lock().get(gone).cloned();
            if let Some(link) = link {
                link.wanted.store(false, Ordering::Relaxed);
                let c2 = c.clone();
                c.spawn(async move {
                    let c = c2;
                    if transport::tcp_check(link.addr, CONNECT_TIMEOUT).await {
                        tracing::info!(addr = %link.addr, "no longer discovered, but still answers TCP: kept");
                    } else {
                        remove_member_on(&c, &link, "no longer discovered and TCP connect failed");
                        link.close();
                    }
                });
            }
        }
        known = cands;
        tokio::select! {
            r = rx.changed() => if r.is_err() { return },
            _ = c.inner.life.shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink that records the frames fed to it (each once the next is fed or on flush).
    fn recorder() -> (
        impl futures::Sink<Outgoing, Error = std::convert::Infallible> + Unpin,
        Arc<parking_lot::Mutex<Vec<u64>>>,
    ) {
        let fed = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let log = fed.clone();
        let sink = Box::pin(futures::sink::unfold((), move |(), out: Outgoing| {
            let log = log.clone();
            async move {
                if let Ok(Message::Ping { nonce }) = Message::decode_body_at(out.ty, &out.body, 0) {
                    log.lock().push(nonce);
                }
                Ok::<_, std::convert::Infallible>(())
            }
        }));
        (sink, fed)
    }

    fn ping(nonce: u64) -> Outgoing {
        Message::Ping { nonce }.outgoing()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_flush_carries_what_is_queued_in_order_up_to_the_batch_limit() {
        let (tx, mut rx) = mpsc::channel(1024);
        for n in 1..=300 {
            tx.try_send(n).unwrap();
        }
        let (mut sink, fed) = recorder();
        let sent = coalesce(0, &mut rx, &mut sink, ping).await.unwrap();
        sink.flush().await.unwrap(); // (the link task flushes after each batch)
        assert_eq!(sent, MAX_BATCH);
        assert_eq!(*fed.lock(), (0..MAX_BATCH as u64).collect::<Vec<_>>());
        assert_eq!(
            rx.len(),
            301 - MAX_BATCH,
            "the rest waits for the next flush"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn frames_queued_by_tasks_runnable_at_the_dry_queue_join_the_same_flush() {
        let (tx, mut rx) = mpsc::channel(16);
        // Runnable when the queue first runs dry: it queues during the writer's yield.
        let late = tokio::spawn({
            let tx = tx.clone();
            async move {
                tx.send(2).await.unwrap();
                tx.send(3).await.unwrap();
            }
        });
        tx.try_send(1).unwrap();
        let (mut sink, fed) = recorder();
        let sent = coalesce(0, &mut rx, &mut sink, ping).await.unwrap();
        sink.flush().await.unwrap(); // (the link task flushes after each batch)
        late.await.unwrap();
        assert_eq!(sent, 4);
        assert_eq!(*fed.lock(), vec![0, 1, 2, 3]);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_idle_link_flushes_one_frame_after_one_yield() {
        let (_tx, mut rx) = mpsc::channel::<u64>(16);
        let (mut sink, fed) = recorder();
        assert_eq!(coalesce(7, &mut rx, &mut sink, ping).await.unwrap(), 1);
        sink.flush().await.unwrap();
        assert_eq!(*fed.lock(), vec![7]);
    }

    #[test]
    fn a_version_skew_is_told_apart_from_other_handshake_failures() {
        let e = HandshakeError::VersionSkew {
            theirs: crate::wire::Versions { min: 4, max: 4 },
            ours: crate::wire::Versions { min: 2, max: 3 },
        };
        assert_eq!(
            problem_of(&e),
            Problem::VersionSkew {
                theirs: (4, 4),
                ours: (2, 3)
            }
        );
    }
}
