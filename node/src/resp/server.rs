//! The RESP listener: one task per connection, commands executed against the
//! [`Cluster`] through [`Keys`].

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, Semaphore};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use super::codec::{CodecError, Limits, Reply, RespCodec};
use super::commands::{self, Command, KeyOp, Write};
use super::keyspace::{self, Entry};
use crate::cluster::Cluster;
use crate::wire::SessionId;

/// The Redis version reported to clients (`HELLO`, `INFO`): the command set follows
/// Redis 7.0 where it is implemented.
pub const REDIS_VERSION: &str = "7.0.0";

pub use crate::clock::unix_millis as now_ms;

/// Options of the RESP listener.
#[derive(Debug, Clone)]
pub struct Options {
    /// Password clients must give with `AUTH` or `HELLO ... AUTH` (none: no `AUTH`).
    pub password: Option<Bytes>,
    /// Request size limits.
    pub limits: Limits,
    /// Most concurrent connections (Redis' `maxclients`).
    pub max_clients: usize,
    /// Of `max_clients`, how many only authenticated clients may hold (with a password,
    /// unauthenticated connections get at most `max_clients - reserved`).
    pub reserved: usize,
    /// With a password: how long a connection may take to authenticate before it is
    /// closed.
    pub auth_timeout: Duration,
    /// Close an authenticated client idle this long (Redis' `timeout`; `None`: never).
    pub idle_timeout: Option<Duration>,
    /// How long a data command waits for the node to become ready (joined, not
    /// draining) before it is answered `-LOADING`.
    pub ready_wait: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            password: None,
            limits: Limits::default(),
            max_clients: 10_000,
            reserved: RESERVED_SLOTS,
            auth_timeout: Duration::from_secs(10),
            idle_timeout: None,
            ready_wait: READY_WAIT,
        }
    }
}

const STRIPES: usize = 256;

/// Connection slots only authenticated clients may hold (with a password).
pub const RESERVED_SLOTS: usize = 32;

/// Longest `KEYS` / `SCAN MATCH` pattern: matching costs up to pattern × key length per
/// key, so the pattern is bounded (Redis' own patterns for sessions are a few bytes).
pub const MAX_PATTERN: usize = 128;

/// How long a wrong password is held before its answer. Failures are answered one at a
/// time node-wide, so this bounds password guessing to a few per second however many
/// connections guess.
pub const AUTH_FAILURE_DELAY: Duration = Duration::from_millis(100);

/// Wrong passwords are logged at most this often (with the count since the last line).
const AUTH_LOG_EVERY: Duration = Duration::from_secs(10);

/// How long a data command waits, by default, for the node to become ready.
pub const READY_WAIT: Duration = Duration::from_secs(2);

/// The answer to a data command while the node is not ready: node-redis, redis-py,
/// phpredis and Lettuce treat `LOADING` as retryable, as when a Redis loads its dataset.
pub const LOADING: &str =
    "LOADING Tribe node not ready (joining the cluster or shutting down); retry shortly";

/// Keys over a cluster: loads, locks and writes. Cheap to clone.
#[derive(Clone)]
pub struct Keys {
    cluster: Cluster,
    /// Read-modify-write commands on one key run one at a time on this node (so `SET NX`,
    /// `HINCRBY` and friends are atomic here); keys are striped over these locks.
    locks: Arc<Vec<Mutex<()>>>,
    /// Whole-keyspace commands (`KEYS`, `SCAN`, `DBSIZE`, `INFO`) run on the blocking
    /// pool, one at a time: never on a runtime worker, where they would delay
    /// heartbeats and every other client.
    scans: Arc<Semaphore>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys").finish_non_exhaustive()
    }
}

/// A key as loaded: its entry and the raw attributes it was decoded from (what a write
/// diffs against, so it only sends what the command changed).
#[derive(Debug, Default)]
pub struct Loaded {
    /// The live entry (`None`: no such key).
    pub entry: Option<Entry>,
    /// The session's attributes at load time.
    pub raw: HashMap<String, Bytes>,
    /// The session's expiry at load time (unix seconds; 0: no session).
    pub expiry: u64,
}

fn unreachable_reply() -> Reply {
    Reply::err("TRYAGAIN no replica of this key answered in time")
}

impl Keys {
    /// Keys stored in `cluster`'s sessions.
    pub fn new(cluster: Cluster) -> Self {
        Keys {
            cluster,
            locks: Arc::new((0..STRIPES).map(|_| Mutex::new(())).collect()),
            scans: Arc::new(Semaphore::new(1)),
        }
    }

    /// The cluster underneath.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    fn stripe(sid: SessionId) -> usize {
        (sid as u128 % STRIPES as u128) as usize
    }

    /// Loads `key` as a client that has seen version `min_version` of it (0: none).
    pub async fn load(&self, key: &[u8], min_version: u64) -> Result<Loaded, Reply> {
        let sid = keyspace::session_id(key);
        if min_version == 0 && !self.cluster.backup_mode() && !self.cluster.store().contains(sid) {
            // Delta mode: a ready node holds every session, and a client with no evidence
            // of a newer version (none reaches RESP: the proxy waits for it before the app
            // runs) gets no wait for a key nobody wrote: new-key `SET`, missing-key `GET`
            // and `EXISTS` answer at once (see `Cluster::load` for the HTTP side's wait).
            return Ok(Loaded::default());
        }
        let loaded = self
            .cluster
            .load(sid, min_version)
            .await
            .map_err(|_| unreachable_reply())?;
        let Some(l) = loaded else {
            return Ok(Loaded::default());
        };
        let raw: HashMap<String, Bytes> = l
            .session
            .live_attrs()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        let expiry = l.session.expiry;
        let entry = keyspace::decode(raw.iter().map(|(k, v)| (k.as_str(), v)), expiry, now_ms())
            .filter(|(name, _)| name.as_ref() == key)
            .map(|(_, e)| e);
        Ok(Loaded { entry, raw, expiry })
    }

    /// Writes `entry` (`None`: delete) over what `loaded` read; returns the session's
    /// new version. In sync mode returns once the replicas acknowledged.
    /// `Err` is the reply when `--min-members` refuses the write (`-CLUSTERDOWN`, as a
    /// Redis cluster without quorum answers).
    pub async fn store(
        &self,
        key: &[u8],
        loaded: &Loaded,
        entry: Option<&Entry>,
    ) -> Result<u64, Reply> {
        let sid = keyspace::session_id(key);
        let (data, expiry) = keyspace::encode(key, entry, loaded.expiry, now_ms());
        self.cluster
            .write_changes(sid, Some(&loaded.raw), &data, expiry)
            .await
            .map_err(|e| Reply::err(format!("CLUSTERDOWN {e}")))
    }

    /// Runs a single-key command.
    pub async fn key_command(&self, key: &[u8], op: &KeyOp) -> Reply {
        if !writes(op) {
            return match self.load(key, 0).await {
                Ok(l) => commands::apply(op, l.entry, now_ms()).0,
                Err(e) => e,
            };
        }
        let _guard = self.locks[Self::stripe(keyspace::session_id(key))]
            .lock()
            .await;
        let loaded = match self.load(key, 0).await {
            Ok(l) => l,
            Err(e) => return e,
        };
        let (reply, write) = commands::apply(op, loaded.entry.clone(), now_ms());
        if let Write::Put(entry) = write {
            if entry.is_some() || loaded.entry.is_some() || !loaded.raw.is_empty() {
                if let Err(refused) = self.store(key, &loaded, entry.as_ref()).await {
                    return refused;
                }
            }
        }
        reply
    }

    /// `DEL`: the number of keys that existed.
    pub async fn del(&self, keys: &[Bytes]) -> Reply {
        let mut n = 0;
        for key in keys {
            let _guard = self.locks[Self::stripe(keyspace::session_id(key))]
                .lock()
                .await;
            match self.load(key, 0).await {
                Ok(l) if l.entry.is_some() => {
                    if let Err(refused) = self.store(key, &l, None).await {
                        return refused;
                    }
                    n += 1;
                }
                Ok(_) => {}
                Err(e) => return e,
            }
        }
        Reply::Int(n)
    }

    /// `EXISTS`: how many of `keys` exist (a key named twice counts twice).
    pub async fn exists(&self, keys: &[Bytes]) -> Reply {
        let mut n = 0;
        for key in keys {
            match self.load(key, 0).await {
                Ok(l) => n += l.entry.is_some() as i64,
                Err(e) => return e,
            }
        }
        Reply::Int(n)
    }

    /// `MGET`: string values, nil for a missing or non-string key.
    pub async fn mget(&self, keys: &[Bytes]) -> Reply {
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            match self.load(key, 0).await {
                Ok(l) => out.push(match l.entry.map(|e| e.value) {
                    Some(keyspace::Value::Str(s)) => Reply::Bulk(s),
                    _ => Reply::Null,
                }),
                Err(e) => return e,
            }
        }
        Reply::Array(out)
    }

    /// `RENAME` / `RENAMENX`. Atomic on this node; the replicas receive two writes (the
    /// new key, then the old one's removal).
    pub async fn rename(&self, from: &[u8], to: &[u8], nx: bool) -> Reply {
        let (a, b) = (
            Self::stripe(keyspace::session_id(from)),
            Self::stripe(keyspace::session_id(to)),
        );
        let _g1 = self.locks[a.min(b)].lock().await;
        let _g2 = if a != b {
            Some(self.locks[a.max(b)].lock().await)
        } else {
            None
        };
        let src = match self.load(from, 0).await {
            Ok(l) => l,
            Err(e) => return e,
        };
        let Some(entry) = src.entry.clone() else {
            return Reply::err("ERR no such key");
        };
        if from == to {
            return if nx { Reply::Int(0) } else { Reply::OK };
        }
        let dst = match self.load(to, 0).await {
            Ok(l) => l,
            Err(e) => return e,
        };
        if nx && dst.entry.is_some() {
            return Reply::Int(0);
        }
        if let Err(refused) = self.store(to, &dst, Some(&entry)).await {
            return refused;
        }
        if let Err(refused) = self.store(from, &src, None).await {
            return refused;
        }
        if nx {
            Reply::Int(1)
        } else {
            Reply::OK
        }
    }

    /// The key held in session `sid` and its type, when it is a live key.
    fn live_key(&self, sid: SessionId, now: u64) -> Option<(Bytes, &'static str)> {
        let found = self.cluster.store().with(sid, |s| {
            if s.is_dead(now / 1000) {
                return None;
            }
            let name = keyspace::live_key(s.live_attrs(), now)?;
            let kind = if s.get(keyspace::STR).is_some() {
                "string"
            } else {
                "hash"
            };
            Some((name, kind))
        })??;
        (keyspace::session_id(&found.0) == sid).then_some(found)
    }

    /// Live keys held by this node (every key in delta mode; in backup mode the keys
    /// this node is an owner of or has cached) for which `keep` holds.
    fn local_keys(&self, mut keep: impl FnMut(&[u8], &'static str) -> bool) -> Vec<Bytes> {
        let now = now_ms();
        let mut out = Vec::new();
        for sid in self.cluster.store().ids() {
            if let Some((name, kind)) = self.live_key(sid, now) {
                if keep(&name, kind) {
                    out.push(name);
                }
            }
        }
        out
    }

    /// `SCAN`: visits the about `count` keys at the lowest scan positions at or after
    /// `cursor`, answers those that match, and the next cursor (0: done). Positions are
    /// fixed per key (52 bits of its hash, safe in every client's number type), so a key
    /// present for the whole iteration is returned, as Redis guarantees. Work per call:
    /// a pass over the session ids, then `count` keys looked at.
    pub fn scan(
        &self,
        cursor: u64,
        pattern: Option<&[u8]>,
        count: usize,
        kind: Option<&[u8]>,
    ) -> Reply {
        let mut ids: Vec<(u64, SessionId)> = self
            .cluster
            .store()
            .ids()
            .into_iter()
            .map(|sid| (scan_position(sid), sid))
            .filter(|(pos, _)| *pos >= cursor)
            .collect();
        let mut next = 0;
        if ids.len() > count {
            ids.select_nth_unstable(count - 1);
            let last = ids[count - 1].0;
            // Keys sharing the last position are visited together (a cursor cannot
            // point between them).
            let (mut visit, rest): (Vec<_>, Vec<_>) =
                ids.into_iter().partition(|(p, _)| *p <= last);
            if !rest.is_empty() {
                next = last + 1;
            }
            visit.sort_unstable();
            ids = visit;
        } else {
            ids.sort_unstable();
        }
        let now = now_ms();
        let keys: Vec<Reply> = ids
            .into_iter()
            .filter_map(|(_, sid)| self.live_key(sid, now))
            .filter(|(name, t)| {
                pattern.is_none_or(|p| keyspace::glob_match(p, name))
                    && kind.is_none_or(|k| k == t.as_bytes())
            })
            .map(|(name, _)| Reply::Bulk(name))
            .collect();
        Reply::Array(vec![Reply::bulk(next.to_string()), Reply::Array(keys)])
    }

    /// `KEYS pattern`.
    pub fn keys(&self, pattern: &[u8]) -> Reply {
        let keys = self.local_keys(|name, _| keyspace::glob_match(pattern, name));
        Reply::Array(keys.into_iter().map(Reply::Bulk).collect())
    }

    /// `DBSIZE`.
    pub fn dbsize(&self) -> Reply {
        Reply::Int(self.local_keys(|_, _| true).len() as i64)
    }

    /// Runs a whole-keyspace command on the blocking pool, one at a time.
    pub async fn off_runtime(&self, f: impl FnOnce(&Keys) -> Reply + Send + 'static) -> Reply {
        let Ok(_one) = self.scans.acquire().await else {
            return Reply::err("ERR shutting down");
        };
        let keys = self.clone();
        tokio::task::spawn_blocking(move || f(&keys))
            .await
            .unwrap_or_else(|_| Reply::err("ERR scan failed"))
    }
}

/// A key's fixed `SCAN` position: the top 52 bits of its session id.
pub fn scan_position(sid: SessionId) -> u64 {
    ((sid as u128) >> 76) as u64
}

/// Whether a command reads or writes data (and so needs a ready node): everything but
/// the connection's own commands (`PING`, `AUTH`, `HELLO`, `SELECT`, `CLIENT`, ...).
fn serves_data(cmd: &Command) -> bool {
    matches!(
        cmd,
        Command::Key(..)
            | Command::Del(_)
            | Command::Exists(_)
            | Command::MGet(_)
            | Command::Rename(..)
            | Command::Scan { .. }
            | Command::Keys(_)
            | Command::DbSize
            | Command::Info
    )
}

/// Whether a command may write (and so takes the key's lock).
fn writes(op: &KeyOp) -> bool {
    !matches!(
        op,
        KeyOp::Get
            | KeyOp::Strlen
            | KeyOp::Ttl(_)
            | KeyOp::Type
            | KeyOp::HGet(_)
            | KeyOp::HMGet(_)
            | KeyOp::HGetAll
            | KeyOp::HKeys
            | KeyOp::HVals
            | KeyOp::HLen
            | KeyOp::HExists(_)
    )
}

/// What the server shares between connections.
#[derive(Debug)]
struct Shared {
    keys: Keys,
    opts: Options,
    next_id: AtomicU64,
    clients: AtomicUsize,
    /// Connections not (yet) authenticated, oldest first, and how to close each.
    unauthed: parking_lot::Mutex<BTreeMap<u64, CancellationToken>>,
    /// Wrong passwords are answered one at a time (each after [`AUTH_FAILURE_DELAY`]).
    auth_failing: Mutex<()>,
    /// When a wrong password was last logged, and how many since.
    auth_log: parking_lot::Mutex<(Option<Instant>, u64)>,
}

/// An unauthenticated connection's slot: released when it authenticates or closes.
struct Unauthed {
    shared: Arc<Shared>,
    id: u64,
    /// Cancelled when a newer connection needs the slot.
    evicted: CancellationToken,
}

impl Drop for Unauthed {
    fn drop(&mut self) {
        self.shared.unauthed.lock().remove(&self.id);
    }
}

/// Per-connection state.
struct Conn {
    id: u64,
    peer: SocketAddr,
    authed: bool,
    protocol: u8,
}

/// Serves RESP on `listener` until `stop` is cancelled.
///
/// On stop the listener is closed *before* the connections: a client that reconnects
/// the moment its connection closes (node-redis does at once) is then refused and
/// retries, instead of landing in the closing listener's backlog and being reset in the
/// middle of its handshake (which node-redis before 5.11 took for a ready connection,
/// and then waited on for good).
pub async fn serve(
    listener: TcpListener,
    cluster: Cluster,
    opts: Options,
    stop: CancellationToken,
) {
    // Connections end on `conns`: cancelled once the listener is closed (or when this
    // future is dropped).
    let conns = CancellationToken::new();
    let _close_conns = conns.clone().drop_guard();
    let limit = Arc::new(Semaphore::new(opts.max_clients));
    let shared = Arc::new(Shared {
        keys: Keys::new(cluster),
        opts,
        next_id: AtomicU64::new(1),
        clients: AtomicUsize::new(0),
        unauthed: parking_lot::Mutex::new(BTreeMap::new()),
        auth_failing: Mutex::new(()),
        auth_log: parking_lot::Mutex::new((None, 0)),
    });
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            a = listener.accept() => a,
        };
        let (sock, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "resp accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            tokio::spawn(refuse(sock));
            continue;
        };
        // With a password, the last `reserved` slots are for authenticated clients, and
        // when the unauthenticated ones are all taken the oldest of them is closed for
        // the newcomer: a flood of connections that never authenticate can neither fill
        // the node nor keep the app (which authenticates at once) from connecting.
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let unauthed = shared.opts.password.is_some().then(|| {
            let cap = shared
                .opts
                .max_clients
                .saturating_sub(shared.opts.reserved)
                .max(1);
            let evicted = CancellationToken::new();
            let mut pending = shared.unauthed.lock();
            while pending.len() >= cap {
                if let Some((_, oldest)) = pending.pop_first() {
                    oldest.cancel();
                }
            }
            pending.insert(id, evicted.clone());
            Unauthed {
                shared: shared.clone(),
                id,
                evicted,
            }
        });
        let shared = shared.clone();
        let stop = conns.clone();
        tokio::spawn(async move {
            shared.clients.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = connection(sock, peer, id, &shared, unauthed, stop).await {
                tracing::debug!(%peer, error = %e, "resp connection ended");
            }
            shared.clients.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
        });
    }
    drop(listener);
    conns.cancel();
}

async fn refuse(sock: TcpStream) {
    let mut f = Framed::new(sock, RespCodec::new(Limits::default()));
    let _ = f
        .send(Reply::err("ERR max number of clients reached"))
        .await;
}

/// Resolves at `at`, or never.
async fn until(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

async fn connection(
    sock: TcpStream,
    peer: SocketAddr,
    id: u64,
    shared: &Shared,
    mut unauthed: Option<Unauthed>,
    stop: CancellationToken,
) -> Result<(), CodecError> {
    let _ = sock.set_nodelay(true);
    let authed = shared.opts.password.is_none();
    let limits = if authed {
        shared.opts.limits
    } else {
        shared.opts.limits.unauthenticated()
    };
    let mut framed = Framed::new(sock, RespCodec::new(limits));
    let mut conn = Conn {
        id,
        peer,
        authed,
        protocol: 2,
    };
    let auth_deadline = Instant::now() + shared.opts.auth_timeout;
    loop {
        // Unauthenticated: closed at the auth deadline; authenticated: after the idle
        // timeout (Redis' `timeout`), when set. Closed silently, as Redis does.
        let deadline = if conn.authed {
            shared.opts.idle_timeout.map(|d| Instant::now() + d)
        } else {
            Some(auth_deadline)
        };
        let evicted = unauthed.as_ref().map(|u| u.evicted.clone());
        let next = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = async { match &evicted { Some(t) => t.cancelled().await, None => std::future::pending().await } } => {
                tracing::debug!(%peer, "unauthenticated resp connection closed for a newer one");
                return Ok(());
            }
            n = framed.next() => n,
            _ = until(deadline) => {
                tracing::debug!(%peer, authed = conn.authed, "resp connection timed out; closing");
                return Ok(());
            }
        };
        let args = match next {
            None => return Ok(()),
            Some(Ok(args)) => args,
            Some(Err(CodecError::Protocol(msg))) => {
                tracing::debug!(%peer, %msg, "resp protocol error; closing");
                framed
                    .send(Reply::err(format!("ERR Protocol error: {msg}")))
                    .await?;
                return Ok(());
            }
            Some(Err(e)) => return Err(e),
        };
        let (reply, close) = execute(shared, &mut conn, &args).await;
        if conn.authed && unauthed.is_some() {
            unauthed = None;
            framed.codec_mut().set_limits(shared.opts.limits);
        }
        if conn.protocol != framed.codec().protocol() {
            framed.codec_mut().set_protocol(conn.protocol);
        }
        framed.feed(reply).await?;
        // Pipelined requests: answer them in one write.
        if close || framed.read_buffer().is_empty() {
            framed.flush().await?;
        }
        if close {
            return Ok(());
        }
    }
}

async fn info(shared: &Shared) -> Reply {
    let keys = match shared.keys.off_runtime(|k| k.dbsize()).await {
        Reply::Int(n) => n,
        _ => 0,
    };
    let cluster = shared.keys.cluster();
    let text = format!(
        "# Server\r\nredis_version:{REDIS_VERSION}\r\nredis_mode:standalone\r\ntribe_version:{}\r\ntribe_node:{}\r\narch_bits:64\r\n\r\n# Clients\r\nconnected_clients:{}\r\n\r\n# Replication\r\nrole:master\r\nconnected_slaves:0\r\n\r\n# Keyspace\r\ndb0:keys={keys},expires=0,avg_ttl=0\r\n",
        env!("CARGO_PKG_VERSION"),
        cluster.node_id(),
        shared.clients.load(Ordering::Relaxed),
    );
    Reply::bulk(text)
}

/// Runs one request; returns the reply and whether to close the connection after it.
async fn execute(shared: &Shared, conn: &mut Conn, args: &[Bytes]) -> (Reply, bool) {
    let cmd = match commands::parse(args) {
        Ok(c) => c,
        Err(e) => return (e, false),
    };
    let password_ok = |p: &[u8]| {
        shared
            .opts
            .password
            .as_ref()
            .is_some_and(|want| constant_time_eq(want, p))
    };
    if !conn.authed
        && !matches!(
            cmd,
            Command::Auth(_) | Command::Hello { .. } | Command::Quit
        )
    {
        return (Reply::err("NOAUTH Authentication required."), false);
    }
    let keys = &shared.keys;
    if serves_data(&cmd)
        && !super::ready::ready_within(keys.cluster(), shared.opts.ready_wait).await
    {
        return (Reply::err(LOADING), false);
    }
    let reply = match cmd {
        Command::Ping(None) => Reply::Simple("PONG"),
        Command::Ping(Some(m)) | Command::Echo(m) => Reply::Bulk(m),
        Command::Quit => return (Reply::OK, true),
        Command::Hello { protocol, password } => {
            if let Some(p) = password {
                if !password_ok(&p) {
                    return (auth_failed(shared, conn).await, false);
                }
                conn.authed = true;
            }
            if !conn.authed {
                return (
                    Reply::err("NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time"),
                    false,
                );
            }
            match protocol {
                None => {}
                Some(p @ (2 | 3)) => conn.protocol = p as u8,
                Some(_) => return (Reply::err("NOPROTO unsupported protocol version"), false),
            }
            Reply::Map(vec![
                (Reply::bulk("server"), Reply::bulk("redis")),
                (Reply::bulk("version"), Reply::bulk(REDIS_VERSION)),
                (Reply::bulk("proto"), Reply::Int(conn.protocol as i64)),
                (Reply::bulk("id"), Reply::Int(conn.id as i64)),
                (Reply::bulk("mode"), Reply::bulk("standalone")),
                (Reply::bulk("role"), Reply::bulk("master")),
                (Reply::bulk("modules"), Reply::Array(vec![])),
            ])
        }
        Command::Auth(p) => {
            if shared.opts.password.is_none() {
                Reply::err("ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?")
            } else if password_ok(&p) {
                conn.authed = true;
                Reply::OK
            } else {
                auth_failed(shared, conn).await
            }
        }
        Command::Select(db) => match std::str::from_utf8(&db)
            .ok()
            .and_then(|s| s.parse::<i64>().ok())
        {
            Some(0) => Reply::OK,
            Some(_) => Reply::err("ERR DB index is out of range"),
            None => Reply::err("ERR value is not an integer or out of range"),
        },
        Command::Client(sub) => match &sub[..] {
            b"SETNAME" | b"SETINFO" | b"NO-EVICT" | b"NO-TOUCH" => Reply::OK,
            b"ID" => Reply::Int(conn.id as i64),
            b"GETNAME" => Reply::Null,
            b"INFO" => Reply::bulk(format!("id={} db=0 resp={}\n", conn.id, conn.protocol)),
            _ => Reply::err(format!(
                "ERR unknown subcommand '{}'. Try CLIENT HELP.",
                String::from_utf8_lossy(&sub).to_ascii_lowercase()
            )),
        },
        Command::Info => info(shared).await,
        Command::CommandInfo(sub) => match sub.as_deref() {
            Some(b"COUNT") => Reply::Int(40),
            Some(b"DOCS") => Reply::Map(vec![]),
            _ => Reply::Array(vec![]),
        },
        Command::DbSize => keys.off_runtime(|k| k.dbsize()).await,
        Command::Time => {
            let us = crate::clock::unix_micros();
            Reply::Array(vec![
                Reply::bulk((us / 1_000_000).to_string()),
                Reply::bulk((us % 1_000_000).to_string()),
            ])
        }
        Command::Key(key, op) => keys.key_command(&key, &op).await,
        Command::Del(ks) => keys.del(&ks).await,
        Command::Exists(ks) => keys.exists(&ks).await,
        Command::MGet(ks) => keys.mget(&ks).await,
        Command::Rename(from, to, nx) => keys.rename(&from, &to, nx).await,
        Command::Scan {
            cursor,
            pattern,
            count,
            kind,
        } => {
            if pattern.as_ref().is_some_and(|p| p.len() > MAX_PATTERN) {
                return (pattern_too_long(), false);
            }
            keys.off_runtime(move |k| k.scan(cursor, pattern.as_deref(), count, kind.as_deref()))
                .await
        }
        Command::Keys(p) => {
            if p.len() > MAX_PATTERN {
                return (pattern_too_long(), false);
            }
            keys.off_runtime(move |k| k.keys(&p)).await
        }
    };
    (reply, false)
}

fn pattern_too_long() -> Reply {
    Reply::err(format!("ERR pattern longer than {MAX_PATTERN} bytes"))
}

/// A wrong password: counted, logged at a bounded rate, and answered after
/// [`AUTH_FAILURE_DELAY`], one failure at a time node-wide.
async fn auth_failed(shared: &Shared, conn: &Conn) -> Reply {
    shared.keys.cluster().metrics().resp_auth_failures.inc();
    {
        let mut log = shared.auth_log.lock();
        log.1 += 1;
        if log.0.is_none_or(|t| t.elapsed() >= AUTH_LOG_EVERY) {
            tracing::warn!(
                peer = %conn.peer,
                failures = log.1,
                "Redis endpoint: AUTH with a wrong password (failures since the last such line; logged at most every 10 s)"
            );
            *log = (Some(Instant::now()), 0);
        }
    }
    let _one_at_a_time = shared.auth_failing.lock().await;
    tokio::time::sleep(AUTH_FAILURE_DELAY).await;
    Reply::err("WRONGPASS invalid username-password pair or user is disabled.")
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
