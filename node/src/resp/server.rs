//! The RESP listener: one task per connection, commands executed against the
//! [`Cluster`] through [`Keys`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

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
}

impl Default for Options {
    fn default() -> Self {
        Options {
            password: None,
            limits: Limits::default(),
            max_clients: 10_000,
        }
    }
}

const STRIPES: usize = 256;

/// Keys over a cluster: loads, locks and writes. Cheap to clone.
#[derive(Clone)]
pub struct Keys {
    cluster: Cluster,
    /// Read-modify-write commands on one key run one at a time on this node (so `SET NX`,
    /// `HINCRBY` and friends are atomic here); keys are striped over these locks.
    locks: Arc<Vec<Mutex<()>>>,
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

    /// Live keys held by this node (every key in delta mode; in backup mode the keys
    /// this node is an owner of or has cached), as (scan position, name, type).
    fn local_keys(&self, mut keep: impl FnMut(&[u8], &'static str) -> bool) -> Vec<(u64, Bytes)> {
        let now = now_ms();
        let store = &self.cluster.inner.store;
        let mut out = Vec::new();
        for sid in store.ids() {
            let found = store.with(sid, |s| {
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
            });
            if let Some(Some((name, kind))) = found {
                if keep(&name, kind) && keyspace::session_id(&name) == sid {
                    out.push((scan_position(sid), name));
                }
            }
        }
        out
    }

    /// `SCAN`: keys whose scan position is at or after `cursor`, about `count` of them,
    /// and the next cursor (0: done). Positions are fixed per key (52 bits of its hash,
    /// safe in every client's number type), so a key present for the whole iteration is
    /// returned, as Redis guarantees.
    pub fn scan(
        &self,
        cursor: u64,
        pattern: Option<&[u8]>,
        count: usize,
        kind: Option<&[u8]>,
    ) -> Reply {
        let mut keys = self.local_keys(|name, t| {
            pattern.is_none_or(|p| keyspace::glob_match(p, name))
                && kind.is_none_or(|k| k == t.as_bytes())
        });
        keys.retain(|(pos, _)| *pos >= cursor);
        keys.sort_unstable();
        let mut next = 0;
        if keys.len() > count {
            let last = keys[count - 1].0;
            let end = keys.partition_point(|(p, _)| *p <= last);
            if end < keys.len() {
                next = last + 1;
            }
            keys.truncate(end);
        }
        Reply::Array(vec![
            Reply::bulk(next.to_string()),
            Reply::Array(keys.into_iter().map(|(_, k)| Reply::Bulk(k)).collect()),
        ])
    }

    /// `KEYS pattern`.
    pub fn keys(&self, pattern: &[u8]) -> Reply {
        let keys = self.local_keys(|name, _| keyspace::glob_match(pattern, name));
        Reply::Array(keys.into_iter().map(|(_, k)| Reply::Bulk(k)).collect())
    }

    /// `DBSIZE`.
    pub fn dbsize(&self) -> Reply {
        Reply::Int(self.local_keys(|_, _| true).len() as i64)
    }
}

/// A key's fixed `SCAN` position: the top 52 bits of its session id.
pub fn scan_position(sid: SessionId) -> u64 {
    ((sid as u128) >> 76) as u64
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
}

/// Per-connection state.
struct Conn {
    id: u64,
    authed: bool,
    protocol: u8,
}

/// Serves RESP on `listener` until `stop` is cancelled.
pub async fn serve(
    listener: TcpListener,
    cluster: Cluster,
    opts: Options,
    stop: CancellationToken,
) {
    let limit = Arc::new(Semaphore::new(opts.max_clients));
    let shared = Arc::new(Shared {
        keys: Keys::new(cluster),
        opts,
        next_id: AtomicU64::new(1),
        clients: AtomicUsize::new(0),
    });
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
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
        let shared = shared.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            shared.clients.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = connection(sock, peer, &shared, stop).await {
                tracing::debug!(%peer, error = %e, "resp connection ended");
            }
            shared.clients.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
        });
    }
}

async fn refuse(sock: TcpStream) {
    let mut f = Framed::new(sock, RespCodec::new(Limits::default()));
    let _ = f
        .send(Reply::err("ERR max number of clients reached"))
        .await;
}

async fn connection(
    sock: TcpStream,
    peer: SocketAddr,
    shared: &Shared,
    stop: CancellationToken,
) -> Result<(), CodecError> {
    let _ = sock.set_nodelay(true);
    let mut framed = Framed::new(sock, RespCodec::new(shared.opts.limits));
    let mut conn = Conn {
        id: shared.next_id.fetch_add(1, Ordering::Relaxed),
        authed: shared.opts.password.is_none(),
        protocol: 2,
    };
    loop {
        let next = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            n = framed.next() => n,
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

fn info(shared: &Shared) -> Reply {
    let keys = match shared.keys.dbsize() {
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
    let reply = match cmd {
        Command::Ping(None) => Reply::Simple("PONG"),
        Command::Ping(Some(m)) | Command::Echo(m) => Reply::Bulk(m),
        Command::Quit => return (Reply::OK, true),
        Command::Hello { protocol, password } => {
            if let Some(p) = password {
                if !password_ok(&p) {
                    return (wrongpass(shared), false);
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
                wrongpass(shared)
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
        Command::Info => info(shared),
        Command::CommandInfo(sub) => match sub.as_deref() {
            Some(b"COUNT") => Reply::Int(40),
            Some(b"DOCS") => Reply::Map(vec![]),
            _ => Reply::Array(vec![]),
        },
        Command::DbSize => keys.dbsize(),
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
        } => keys.scan(cursor, pattern.as_deref(), count, kind.as_deref()),
        Command::Keys(p) => keys.keys(&p),
    };
    (reply, false)
}

fn wrongpass(_: &Shared) -> Reply {
    Reply::err("WRONGPASS invalid username-password pair or user is disabled.")
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
