//! Commands: parsing a request into a [`Command`], and the pure semantics of every
//! single-key command ([`apply`]): given the key's entry before, what to answer and what
//! to write. No I/O here; [`super::server`] loads, locks and writes.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::codec::Reply;
use super::keyspace::{Entry, Value};

/// How `SET`/`GETEX` change the TTL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ttl {
    /// Remove any TTL (`SET` without an option; `GETEX PERSIST`).
    Clear,
    /// Keep the current TTL (`SET ... KEEPTTL`; `GETEX` without an option).
    Keep,
    /// Expire this many ms from now.
    In(u64),
    /// Expire at this unix time in ms.
    At(u64),
}

/// `SET` conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cond {
    /// Always.
    Always,
    /// `NX`: only when the key does not exist.
    Nx,
    /// `XX`: only when it exists.
    Xx,
}

/// `EXPIRE` conditions (Redis 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpireCond {
    /// Always.
    Always,
    /// `NX`: only when the key has no TTL.
    Nx,
    /// `XX`: only when it has one.
    Xx,
    /// `GT`: only when the new expiry is later.
    Gt,
    /// `LT`: only when the new expiry is earlier.
    Lt,
}

/// What a command does to one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyOp {
    /// `GET`.
    Get,
    /// `GETDEL`.
    GetDel,
    /// `GETEX`.
    GetEx(Ttl),
    /// `SET`, `SETEX`, `PSETEX`, `SETNX`.
    Set {
        /// The value.
        value: Bytes,
        /// NX / XX.
        cond: Cond,
        /// EX / PX / EXAT / PXAT / KEEPTTL.
        ttl: Ttl,
        /// `GET`: answer the old value.
        get: bool,
        /// `SETNX` answers 1/0 instead of OK/nil.
        int_reply: bool,
    },
    /// `STRLEN`.
    Strlen,
    /// `EXPIRE`, `PEXPIRE`, `EXPIREAT`, `PEXPIREAT`: the new expiry.
    Expire(Ttl, ExpireCond),
    /// `PERSIST`.
    Persist,
    /// `TTL` (false) / `PTTL` (true).
    Ttl(bool),
    /// `TYPE`.
    Type,
    /// `HGET`.
    HGet(Bytes),
    /// `HMGET`.
    HMGet(Vec<Bytes>),
    /// `HGETALL`.
    HGetAll,
    /// `HKEYS`.
    HKeys,
    /// `HVALS`.
    HVals,
    /// `HLEN`.
    HLen,
    /// `HEXISTS`.
    HExists(Bytes),
    /// `HSET` (answers the number of new fields) / `HMSET` (answers OK).
    HSet(Vec<(Bytes, Bytes)>, bool),
    /// `HSETNX`.
    HSetNx(Bytes, Bytes),
    /// `HDEL`.
    HDel(Vec<Bytes>),
    /// `HINCRBY`.
    HIncrBy(Bytes, i64),
    /// `INCRBY` / `INCR` / `DECR` / `DECRBY`.
    IncrBy(i64),
}

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `PING [message]`.
    Ping(Option<Bytes>),
    /// `ECHO message`.
    Echo(Bytes),
    /// `QUIT`.
    Quit,
    /// `HELLO [protover [AUTH user pass] [SETNAME name]]`.
    Hello {
        /// Requested protocol.
        protocol: Option<i64>,
        /// The password of `AUTH`.
        password: Option<Bytes>,
    },
    /// `AUTH [user] password`.
    Auth(Bytes),
    /// `SELECT db`.
    Select(Bytes),
    /// `CLIENT ...`: answered without effect (`SETNAME`, `SETINFO`, `ID`, `GETNAME`, ...).
    Client(Bytes),
    /// `INFO [section]`.
    Info,
    /// `COMMAND [subcommand]`.
    CommandInfo(Option<Bytes>),
    /// `DBSIZE`.
    DbSize,
    /// `TIME`.
    Time,
    /// A single-key command.
    Key(Bytes, KeyOp),
    /// `DEL` / `UNLINK`.
    Del(Vec<Bytes>),
    /// `EXISTS`.
    Exists(Vec<Bytes>),
    /// `MGET`.
    MGet(Vec<Bytes>),
    /// `RENAME` (false) / `RENAMENX` (true).
    Rename(Bytes, Bytes, bool),
    /// `SCAN cursor [MATCH p] [COUNT n] [TYPE t]`.
    Scan {
        /// Where to continue.
        cursor: u64,
        /// MATCH.
        pattern: Option<Bytes>,
        /// COUNT (a hint).
        count: usize,
        /// TYPE.
        kind: Option<Bytes>,
    },
    /// `KEYS pattern`.
    Keys(Bytes),
}

/// Redis' error for a wrong-typed key.
pub const WRONGTYPE: &str = "WRONGTYPE Operation against a key holding the wrong kind of value";
const NOT_INT: &str = "ERR value is not an integer or out of range";
const SYNTAX: &str = "ERR syntax error";

fn arity(name: &str) -> Reply {
    Reply::err(format!(
        "ERR wrong number of arguments for '{}' command",
        name.to_ascii_lowercase()
    ))
}

fn unknown(args: &[Bytes]) -> Reply {
    let mut msg = format!(
        "ERR unknown command '{}', with args beginning with: ",
        String::from_utf8_lossy(&args[0])
            .chars()
            .take(128)
            .collect::<String>()
    );
    for a in args.iter().skip(1).take(8) {
        msg.push_str(&format!(
            "'{}' ",
            String::from_utf8_lossy(a)
                .chars()
                .take(64)
                .collect::<String>()
        ));
    }
    Reply::Error(msg)
}

fn int(b: &[u8]) -> Result<i64, Reply> {
    std::str::from_utf8(b)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(|| Reply::err(NOT_INT))
}

fn upper(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_ascii_uppercase()
}

fn expire_error(cmd: &str) -> Reply {
    Reply::err(format!("ERR invalid expire time in '{cmd}' command"))
}

/// A positive TTL amount (`EX`/`PX`/...) in ms.
fn ttl_ms(b: &[u8], unit_ms: u64, cmd: &str) -> Result<u64, Reply> {
    let n = int(b)?;
    if n <= 0 {
        return Err(expire_error(cmd));
    }
    (n as u64)
        .checked_mul(unit_ms)
        .ok_or_else(|| expire_error(cmd))
}

/// Parses one request (command name and arguments; `args` is never empty).
pub fn parse(args: &[Bytes]) -> Result<Command, Reply> {
    let name = upper(&args[0]);
    let a = &args[1..];
    let n = a.len();
    let need = |ok: bool| if ok { Ok(()) } else { Err(arity(&name)) };
    let key = |op: KeyOp| Ok(Command::Key(a[0].clone(), op));
    match name.as_str() {
        "PING" => {
            need(n <= 1)?;
            Ok(Command::Ping(a.first().cloned()))
        }
        "ECHO" => {
            need(n == 1)?;
            Ok(Command::Echo(a[0].clone()))
        }
        "QUIT" => Ok(Command::Quit),
        "HELLO" => {
            let mut protocol = None;
            let mut password = None;
            let mut i = 0;
            if n > 0 {
                protocol = Some(int(&a[0]).map_err(|_| {
                    Reply::err("ERR Protocol version is not an integer or out of range")
                })?);
                i = 1;
            }
            while i < n {
                match upper(&a[i]).as_str() {
                    "AUTH" if i + 2 < n => {
                        password = Some(a[i + 2].clone());
                        i += 3;
                    }
                    "SETNAME" if i + 1 < n => i += 2,
                    _ => {
                        return Err(Reply::err(format!(
                            "ERR Syntax error in HELLO option '{}'",
                            String::from_utf8_lossy(&a[i])
                        )))
                    }
                }
            }
            Ok(Command::Hello { protocol, password })
        }
        "AUTH" => {
            need(n == 1 || n == 2)?;
            Ok(Command::Auth(a[n - 1].clone()))
        }
        "SELECT" => {
            need(n == 1)?;
            Ok(Command::Select(a[0].clone()))
        }
        "CLIENT" => {
            need(n >= 1)?;
            Ok(Command::Client(Bytes::from(upper(&a[0]))))
        }
        "INFO" => Ok(Command::Info),
        "COMMAND" => Ok(Command::CommandInfo(
            a.first().map(|s| Bytes::from(upper(s))),
        )),
        "DBSIZE" => {
            need(n == 0)?;
            Ok(Command::DbSize)
        }
        "TIME" => Ok(Command::Time),
        "GET" | "GETDEL" | "STRLEN" | "PERSIST" | "TTL" | "PTTL" | "TYPE" | "HGETALL" | "HKEYS"
        | "HVALS" | "HLEN" | "INCR" | "DECR" => {
            need(n == 1)?;
            key(match name.as_str() {
                "GET" => KeyOp::Get,
                "GETDEL" => KeyOp::GetDel,
                "STRLEN" => KeyOp::Strlen,
                "PERSIST" => KeyOp::Persist,
                "TTL" => KeyOp::Ttl(false),
                "PTTL" => KeyOp::Ttl(true),
                "TYPE" => KeyOp::Type,
                "HGETALL" => KeyOp::HGetAll,
                "HKEYS" => KeyOp::HKeys,
                "HVALS" => KeyOp::HVals,
                "HLEN" => KeyOp::HLen,
                "INCR" => KeyOp::IncrBy(1),
                _ => KeyOp::IncrBy(-1),
            })
        }
        "INCRBY" | "DECRBY" => {
            need(n == 2)?;
            let by = int(&a[1])?;
            key(KeyOp::IncrBy(if name == "INCRBY" {
                by
            } else {
                by.checked_neg().ok_or_else(|| Reply::err(NOT_INT))?
            }))
        }
        "GETEX" => {
            need(n >= 1)?;
            let ttl = match (n, a.get(1).map(|o| upper(o))) {
                (1, _) => Ttl::Keep,
                (2, Some(o)) if o == "PERSIST" => Ttl::Clear,
                (3, Some(o)) => match o.as_str() {
                    "EX" => Ttl::In(ttl_ms(&a[2], 1000, "getex")?),
                    "PX" => Ttl::In(ttl_ms(&a[2], 1, "getex")?),
                    "EXAT" => Ttl::At(ttl_ms(&a[2], 1000, "getex")?),
                    "PXAT" => Ttl::At(ttl_ms(&a[2], 1, "getex")?),
                    _ => return Err(Reply::err(SYNTAX)),
                },
                _ => return Err(Reply::err(SYNTAX)),
            };
            key(KeyOp::GetEx(ttl))
        }
        "SET" => {
            need(n >= 2)?;
            let (mut cond, mut ttl, mut get) = (Cond::Always, Ttl::Clear, false);
            let mut ttl_set = false;
            let mut i = 2;
            while i < n {
                let o = upper(&a[i]);
                let arg = a.get(i + 1);
                match o.as_str() {
                    "NX" if cond == Cond::Always => cond = Cond::Nx,
                    "XX" if cond == Cond::Always => cond = Cond::Xx,
                    "GET" => get = true,
                    "KEEPTTL" if !ttl_set => {
                        ttl = Ttl::Keep;
                        ttl_set = true;
                    }
                    "EX" | "PX" | "EXAT" | "PXAT" if !ttl_set && arg.is_some() => {
                        let arg = arg.map(|b| b.as_ref()).unwrap_or_default();
                        ttl = match o.as_str() {
                            "EX" => Ttl::In(ttl_ms(arg, 1000, "set")?),
                            "PX" => Ttl::In(ttl_ms(arg, 1, "set")?),
                            "EXAT" => Ttl::At(ttl_ms(arg, 1000, "set")?),
                            _ => Ttl::At(ttl_ms(arg, 1, "set")?),
                        };
                        ttl_set = true;
                        i += 1;
                    }
                    _ => return Err(Reply::err(SYNTAX)),
                }
                i += 1;
            }
            key(KeyOp::Set {
                value: a[1].clone(),
                cond,
                ttl,
                get,
                int_reply: false,
            })
        }
        "SETEX" | "PSETEX" => {
            need(n == 3)?;
            let unit = if name == "SETEX" { 1000 } else { 1 };
            let ms = ttl_ms(&a[1], unit, &name.to_ascii_lowercase())?;
            key(KeyOp::Set {
                value: a[2].clone(),
                cond: Cond::Always,
                ttl: Ttl::In(ms),
                get: false,
                int_reply: false,
            })
        }
        "SETNX" => {
            need(n == 2)?;
            key(KeyOp::Set {
                value: a[1].clone(),
                cond: Cond::Nx,
                ttl: Ttl::Clear,
                get: false,
                int_reply: true,
            })
        }
        "EXPIRE" | "PEXPIRE" | "EXPIREAT" | "PEXPIREAT" => {
            need(n == 2 || n == 3)?;
            let cmd = name.to_ascii_lowercase();
            let t = int(&a[1])?;
            let unit: i64 = if name.starts_with('P') { 1 } else { 1000 };
            let ms = t.checked_mul(unit).ok_or_else(|| expire_error(&cmd))?;
            let ttl = match (name.ends_with("AT"), ms) {
                (_, ms) if ms <= 0 => Ttl::At(0),
                (true, ms) => Ttl::At(ms as u64),
                (false, ms) => Ttl::In(ms as u64),
            };
            let cond = match a.get(2).map(|c| upper(c)).as_deref() {
                None => ExpireCond::Always,
                Some("NX") => ExpireCond::Nx,
                Some("XX") => ExpireCond::Xx,
                Some("GT") => ExpireCond::Gt,
                Some("LT") => ExpireCond::Lt,
                Some(o) => return Err(Reply::err(format!("ERR Unsupported option {o}"))),
            };
            key(KeyOp::Expire(ttl, cond))
        }
        "HGET" | "HEXISTS" => {
            need(n == 2)?;
            key(if name == "HGET" {
                KeyOp::HGet(a[1].clone())
            } else {
                KeyOp::HExists(a[1].clone())
            })
        }
        "HMGET" | "HDEL" => {
            need(n >= 2)?;
            let fields = a[1..].to_vec();
            key(if name == "HMGET" {
                KeyOp::HMGet(fields)
            } else {
                KeyOp::HDel(fields)
            })
        }
        "HSET" | "HMSET" => {
            need(n >= 3 && n % 2 == 1)?;
            let pairs = a[1..]
                .chunks(2)
                .map(|c| (c[0].clone(), c[1].clone()))
                .collect();
            key(KeyOp::HSet(pairs, name == "HMSET"))
        }
        "HSETNX" => {
            need(n == 3)?;
            key(KeyOp::HSetNx(a[1].clone(), a[2].clone()))
        }
        "HINCRBY" => {
            need(n == 3)?;
            key(KeyOp::HIncrBy(a[1].clone(), int(&a[2])?))
        }
        "DEL" | "UNLINK" | "EXISTS" | "MGET" => {
            need(n >= 1)?;
            Ok(match name.as_str() {
                "EXISTS" => Command::Exists(a.to_vec()),
                "MGET" => Command::MGet(a.to_vec()),
                _ => Command::Del(a.to_vec()),
            })
        }
        "RENAME" | "RENAMENX" => {
            need(n == 2)?;
            Ok(Command::Rename(
                a[0].clone(),
                a[1].clone(),
                name == "RENAMENX",
            ))
        }
        "KEYS" => {
            need(n == 1)?;
            Ok(Command::Keys(a[0].clone()))
        }
        "SCAN" => {
            need(n >= 1)?;
            let cursor = std::str::from_utf8(&a[0])
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| Reply::err("ERR invalid cursor"))?;
            let (mut pattern, mut count, mut kind) = (None, 10usize, None);
            let mut i = 1;
            while i < n {
                let v = a.get(i + 1).ok_or_else(|| Reply::err(SYNTAX))?;
                match upper(&a[i]).as_str() {
                    "MATCH" => pattern = Some(v.clone()),
                    "COUNT" => {
                        let c = int(v)?;
                        if c < 1 {
                            return Err(Reply::err(SYNTAX));
                        }
                        count = c.min(100_000) as usize;
                    }
                    "TYPE" => {
                        kind = Some(Bytes::from(String::from_utf8_lossy(v).to_ascii_lowercase()))
                    }
                    _ => return Err(Reply::err(SYNTAX)),
                }
                i += 2;
            }
            Ok(Command::Scan {
                cursor,
                pattern,
                count,
                kind,
            })
        }
        _ => Err(unknown(args)),
    }
}

/// What a single-key command writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Nothing.
    None,
    /// The key's new entry (`None`: delete it).
    Put(Option<Entry>),
}

fn resolve(ttl: Ttl, old: Option<u64>, now_ms: u64) -> Option<u64> {
    match ttl {
        Ttl::Clear => None,
        Ttl::Keep => old,
        Ttl::In(ms) => Some(now_ms.saturating_add(ms)),
        Ttl::At(ms) => Some(ms),
    }
}

/// The type name `TYPE` answers.
pub fn type_name(e: Option<&Entry>) -> &'static str {
    match e.map(|e| &e.value) {
        None => "none",
        Some(Value::Str(_)) => "string",
        Some(Value::Hash(_)) => "hash",
    }
}

/// The semantics of a single-key command on the key's entry at `now_ms` (`None`: no
/// such key): the reply and the write.
pub fn apply(op: &KeyOp, entry: Option<Entry>, now_ms: u64) -> (Reply, Write) {
    let string = |e: &Option<Entry>| -> Result<Option<Bytes>, Reply> {
        match e.as_ref().map(|e| &e.value) {
            None => Ok(None),
            Some(Value::Str(s)) => Ok(Some(s.clone())),
            Some(Value::Hash(_)) => Err(Reply::err(WRONGTYPE)),
        }
    };
    let hash = |e: &Option<Entry>| -> Result<BTreeMap<Bytes, Bytes>, Reply> {
        match e.as_ref().map(|e| &e.value) {
            None => Ok(BTreeMap::new()),
            Some(Value::Hash(h)) => Ok(h.clone()),
            Some(Value::Str(_)) => Err(Reply::err(WRONGTYPE)),
        }
    };
    let read = |r: Result<Reply, Reply>| (r.unwrap_or_else(|e| e), Write::None);
    let expires = entry.as_ref().and_then(|e| e.expires_at);
    match op {
        KeyOp::Get => read(string(&entry).map(Reply::opt_bulk)),
        KeyOp::Strlen => read(string(&entry).map(|s| Reply::Int(s.map_or(0, |s| s.len() as i64)))),
        KeyOp::GetDel => match string(&entry) {
            Err(e) => (e, Write::None),
            Ok(None) => (Reply::Null, Write::None),
            Ok(Some(s)) => (Reply::Bulk(s), Write::Put(None)),
        },
        KeyOp::GetEx(ttl) => match string(&entry) {
            Err(e) => (e, Write::None),
            Ok(None) => (Reply::Null, Write::None),
            Ok(Some(s)) => {
                let at = resolve(*ttl, expires, now_ms);
                if at == expires {
                    return (Reply::Bulk(s), Write::None);
                }
                let write = if at.is_some_and(|t| t <= now_ms) {
                    None
                } else {
                    Some(Entry {
                        value: Value::Str(s.clone()),
                        expires_at: at,
                    })
                };
                (Reply::Bulk(s), Write::Put(write))
            }
        },
        KeyOp::Set {
            value,
            cond,
            ttl,
            get,
            int_reply,
        } => {
            let old = if *get {
                match string(&entry) {
                    Ok(o) => o,
                    Err(e) => return (e, Write::None),
                }
            } else {
                None
            };
            let ok = match cond {
                Cond::Always => true,
                Cond::Nx => entry.is_none(),
                Cond::Xx => entry.is_some(),
            };
            let reply = |done: bool| match (int_reply, get) {
                (true, _) => Reply::Int(done as i64),
                (false, true) => Reply::opt_bulk(old.clone()),
                (false, false) if done => Reply::OK,
                (false, false) => Reply::Null,
            };
            if !ok {
                return (reply(false), Write::None);
            }
            let at = resolve(*ttl, expires, now_ms);
            let write = if at.is_some_and(|t| t <= now_ms) {
                None
            } else {
                Some(Entry {
                    value: Value::Str(value.clone()),
                    expires_at: at,
                })
            };
            (reply(true), Write::Put(write))
        }
        KeyOp::IncrBy(by) => {
            let cur = match string(&entry) {
                Ok(c) => c,
                Err(e) => return (e, Write::None),
            };
            let n = match cur.as_deref().map(int).transpose() {
                Ok(n) => n.unwrap_or(0),
                Err(e) => return (e, Write::None),
            };
            let Some(next) = n.checked_add(*by) else {
                return (
                    Reply::err("ERR increment or decrement would overflow"),
                    Write::None,
                );
            };
            (
                Reply::Int(next),
                Write::Put(Some(Entry {
                    value: Value::Str(Bytes::from(next.to_string())),
                    expires_at: expires,
                })),
            )
        }
        KeyOp::Expire(ttl, cond) => {
            let Some(e) = entry else {
                return (Reply::Int(0), Write::None);
            };
            let at = resolve(*ttl, expires, now_ms);
            let ok = match cond {
                ExpireCond::Always => true,
                ExpireCond::Nx => expires.is_none(),
                ExpireCond::Xx => expires.is_some(),
                // A key without a TTL counts as expiring never (infinitely late).
                ExpireCond::Gt => expires.is_some_and(|old| at.is_some_and(|new| new > old)),
                ExpireCond::Lt => at.is_some_and(|new| expires.is_none_or(|old| new < old)),
            };
            if !ok {
                return (Reply::Int(0), Write::None);
            }
            if at.is_some_and(|t| t <= now_ms) {
                return (Reply::Int(1), Write::Put(None));
            }
            (
                Reply::Int(1),
                Write::Put(Some(Entry {
                    expires_at: at,
                    ..e
                })),
            )
        }
        KeyOp::Persist => match entry {
            Some(e) if e.expires_at.is_some() => (
                Reply::Int(1),
                Write::Put(Some(Entry {
                    expires_at: None,
                    ..e
                })),
            ),
            _ => (Reply::Int(0), Write::None),
        },
        KeyOp::Ttl(ms) => {
            let r = match (&entry, expires) {
                (None, _) => -2,
                (Some(_), None) => -1,
                (Some(_), Some(at)) => {
                    let left = at.saturating_sub(now_ms);
                    if *ms {
                        left as i64
                    } else {
                        ((left + 500) / 1000) as i64
                    }
                }
            };
            (Reply::Int(r), Write::None)
        }
        KeyOp::Type => (Reply::Simple(type_name(entry.as_ref())), Write::None),
        KeyOp::HGet(f) => read(hash(&entry).map(|h| Reply::opt_bulk(h.get(f).cloned()))),
        KeyOp::HMGet(fs) => read(hash(&entry).map(|h| {
            Reply::Array(
                fs.iter()
                    .map(|f| Reply::opt_bulk(h.get(f).cloned()))
                    .collect(),
            )
        })),
        KeyOp::HGetAll => read(hash(&entry).map(|h| {
            Reply::Map(
                h.into_iter()
                    .map(|(k, v)| (Reply::Bulk(k), Reply::Bulk(v)))
                    .collect(),
            )
        })),
        KeyOp::HKeys => {
            read(hash(&entry).map(|h| Reply::Array(h.into_keys().map(Reply::Bulk).collect())))
        }
        KeyOp::HVals => {
            read(hash(&entry).map(|h| Reply::Array(h.into_values().map(Reply::Bulk).collect())))
        }
        KeyOp::HLen => read(hash(&entry).map(|h| Reply::Int(h.len() as i64))),
        KeyOp::HExists(f) => read(hash(&entry).map(|h| Reply::Int(h.contains_key(f) as i64))),
        KeyOp::HSet(pairs, legacy) => {
            let mut h = match hash(&entry) {
                Ok(h) => h,
                Err(e) => return (e, Write::None),
            };
            let mut added = 0;
            for (f, v) in pairs {
                if h.insert(f.clone(), v.clone()).is_none() {
                    added += 1;
                }
            }
            let reply = if *legacy {
                Reply::OK
            } else {
                Reply::Int(added)
            };
            (
                reply,
                Write::Put(Some(Entry {
                    value: Value::Hash(h),
                    expires_at: expires,
                })),
            )
        }
        KeyOp::HSetNx(f, v) => {
            let mut h = match hash(&entry) {
                Ok(h) => h,
                Err(e) => return (e, Write::None),
            };
            if h.contains_key(f) {
                return (Reply::Int(0), Write::None);
            }
            h.insert(f.clone(), v.clone());
            (
                Reply::Int(1),
                Write::Put(Some(Entry {
                    value: Value::Hash(h),
                    expires_at: expires,
                })),
            )
        }
        KeyOp::HIncrBy(f, by) => {
            let mut h = match hash(&entry) {
                Ok(h) => h,
                Err(e) => return (e, Write::None),
            };
            let cur = match h.get(f).map(|v| int(v)).transpose() {
                Ok(c) => c.unwrap_or(0),
                Err(_) => return (Reply::err("ERR hash value is not an integer"), Write::None),
            };
            let Some(next) = cur.checked_add(*by) else {
                return (
                    Reply::err("ERR increment or decrement would overflow"),
                    Write::None,
                );
            };
            h.insert(f.clone(), Bytes::from(next.to_string()));
            (
                Reply::Int(next),
                Write::Put(Some(Entry {
                    value: Value::Hash(h),
                    expires_at: expires,
                })),
            )
        }
        KeyOp::HDel(fs) => {
            let mut h = match hash(&entry) {
                Ok(h) => h,
                Err(e) => return (e, Write::None),
            };
            let removed = fs.iter().filter(|f| h.remove(*f).is_some()).count() as i64;
            if removed == 0 {
                return (Reply::Int(0), Write::None);
            }
            let write = if h.is_empty() {
                None
            } else {
                Some(Entry {
                    value: Value::Hash(h),
                    expires_at: expires,
                })
            };
            (Reply::Int(removed), Write::Put(write))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(s: &str) -> Result<Command, Reply> {
        let args: Vec<Bytes> = s
            .split(' ')
            .map(|a| Bytes::copy_from_slice(a.as_bytes()))
            .collect();
        parse(&args)
    }

    fn op(s: &str) -> KeyOp {
        match cmd(s).unwrap() {
            Command::Key(_, op) => op,
            c => panic!("not a key command: {c:?}"),
        }
    }

    fn s(v: &str, at: Option<u64>) -> Option<Entry> {
        Some(Entry {
            value: Value::Str(Bytes::copy_from_slice(v.as_bytes())),
            expires_at: at,
        })
    }

    #[test]
    fn parse_errors_are_redis_errors() {
        assert_eq!(
            cmd("FOO a b").unwrap_err(),
            Reply::err("ERR unknown command 'FOO', with args beginning with: 'a' 'b' ")
        );
        assert_eq!(
            cmd("get").unwrap_err(),
            Reply::err("ERR wrong number of arguments for 'get' command")
        );
        assert_eq!(
            cmd("SET k v EX 0").unwrap_err(),
            Reply::err("ERR invalid expire time in 'set' command")
        );
        assert_eq!(cmd("SET k v EX x").unwrap_err(), Reply::err(NOT_INT));
        assert_eq!(cmd("SET k v NX XX").unwrap_err(), Reply::err(SYNTAX));
        assert_eq!(cmd("SET k v EX 1 PX 1").unwrap_err(), Reply::err(SYNTAX));
        assert_eq!(
            cmd("HSET k f").unwrap_err(),
            Reply::err("ERR wrong number of arguments for 'hset' command")
        );
        assert!(cmd("SCAN x").is_err());
        assert!(
            cmd("EXPIRE k 9223372036854775807").is_err(),
            "overflow in ms"
        );
    }

    #[test]
    fn set_variants() {
        assert_eq!(
            op("set k v ex 10 nx"),
            KeyOp::Set {
                value: Bytes::from("v"),
                cond: Cond::Nx,
                ttl: Ttl::In(10_000),
                get: false,
                int_reply: false
            }
        );
        assert_eq!(
            op("SETEX k 5 v"),
            KeyOp::Set {
                value: Bytes::from("v"),
                cond: Cond::Always,
                ttl: Ttl::In(5_000),
                get: false,
                int_reply: false
            }
        );
        let now = 1_000;
        // SET EX on a fresh key.
        let (r, w) = apply(&op("SET k v PX 500"), None, now);
        assert_eq!(r, Reply::OK);
        assert_eq!(w, Write::Put(s("v", Some(1_500))));
        // NX on an existing key: nil, nothing written. XX on a missing one: same.
        assert_eq!(
            apply(&op("SET k v NX"), s("old", None), now),
            (Reply::Null, Write::None)
        );
        assert_eq!(
            apply(&op("SET k v XX"), None, now),
            (Reply::Null, Write::None)
        );
        // Plain SET clears the TTL; KEEPTTL keeps it; GET answers the old value.
        assert_eq!(
            apply(&op("SET k v"), s("o", Some(9_000)), now).1,
            Write::Put(s("v", None))
        );
        assert_eq!(
            apply(&op("SET k v KEEPTTL"), s("o", Some(9_000)), now).1,
            Write::Put(s("v", Some(9_000)))
        );
        assert_eq!(
            apply(&op("SET k v GET"), s("o", None), now).0,
            Reply::bulk("o")
        );
        // SET over a hash replaces it; SET GET on a hash is WRONGTYPE.
        let h = Some(Entry::persistent(Value::Hash(
            [(Bytes::from("f"), Bytes::from("1"))].into(),
        )));
        assert_eq!(
            apply(&op("SET k v"), h.clone(), now).1,
            Write::Put(s("v", None))
        );
        assert_eq!(apply(&op("SET k v GET"), h, now).0, Reply::err(WRONGTYPE));
        assert_eq!(apply(&op("SETNX k v"), None, now).0, Reply::Int(1));
        assert_eq!(apply(&op("SETNX k v"), s("x", None), now).0, Reply::Int(0));
    }

    #[test]
    fn ttl_and_expire() {
        let now = 10_000;
        assert_eq!(apply(&op("TTL k"), None, now).0, Reply::Int(-2));
        assert_eq!(apply(&op("TTL k"), s("v", None), now).0, Reply::Int(-1));
        assert_eq!(
            apply(&op("TTL k"), s("v", Some(12_001)), now).0,
            Reply::Int(2)
        );
        assert_eq!(
            apply(&op("TTL k"), s("v", Some(12_500)), now).0,
            Reply::Int(3)
        );
        assert_eq!(
            apply(&op("PTTL k"), s("v", Some(12_001)), now).0,
            Reply::Int(2_001)
        );
        assert_eq!(
            apply(&op("EXPIRE k 5"), None, now),
            (Reply::Int(0), Write::None)
        );
        assert_eq!(
            apply(&op("EXPIRE k 5"), s("v", None), now),
            (Reply::Int(1), Write::Put(s("v", Some(15_000))))
        );
        assert_eq!(
            apply(&op("PEXPIRE k 5"), s("v", None), now).1,
            Write::Put(s("v", Some(10_005)))
        );
        assert_eq!(
            apply(&op("EXPIRE k 0"), s("v", None), now),
            (Reply::Int(1), Write::Put(None))
        );
        assert_eq!(
            apply(&op("EXPIRE k -1"), s("v", None), now).1,
            Write::Put(None)
        );
        assert_eq!(
            apply(&op("EXPIRE k 5 NX"), s("v", Some(20_000)), now).0,
            Reply::Int(0)
        );
        assert_eq!(
            apply(&op("EXPIRE k 5 GT"), s("v", Some(20_000)), now).0,
            Reply::Int(0)
        );
        assert_eq!(
            apply(&op("EXPIRE k 5 LT"), s("v", Some(20_000)), now).0,
            Reply::Int(1)
        );
        assert_eq!(
            apply(&op("PERSIST k"), s("v", Some(20_000)), now),
            (Reply::Int(1), Write::Put(s("v", None)))
        );
        assert_eq!(
            apply(&op("GETEX k EX 1"), s("v", None), now),
            (Reply::bulk("v"), Write::Put(s("v", Some(11_000))))
        );
        assert_eq!(
            apply(&op("GETEX k"), s("v", Some(1)), now),
            (Reply::bulk("v"), Write::None)
        );
        assert_eq!(
            apply(&op("GETDEL k"), s("v", None), now),
            (Reply::bulk("v"), Write::Put(None))
        );
    }

    #[test]
    fn hashes() {
        let now = 0;
        let (r, w) = apply(&op("HSET k a 1 b 2"), None, now);
        assert_eq!(r, Reply::Int(2));
        let Write::Put(Some(e)) = w else { panic!() };
        assert_eq!(
            apply(&op("HSET k a 9 c 3"), Some(e.clone()), now).0,
            Reply::Int(1)
        );
        assert_eq!(apply(&op("HMSET k a 9"), Some(e.clone()), now).0, Reply::OK);
        assert_eq!(
            apply(&op("HGET k a"), Some(e.clone()), now).0,
            Reply::bulk("1")
        );
        assert_eq!(apply(&op("HGET k z"), Some(e.clone()), now).0, Reply::Null);
        assert_eq!(
            apply(&op("HEXISTS k b"), Some(e.clone()), now).0,
            Reply::Int(1)
        );
        assert_eq!(
            apply(&op("HGETALL k"), Some(e.clone()), now).0,
            Reply::Map(vec![
                (Reply::bulk("a"), Reply::bulk("1")),
                (Reply::bulk("b"), Reply::bulk("2"))
            ])
        );
        assert_eq!(apply(&op("HGETALL k"), None, now).0, Reply::Map(vec![]));
        assert_eq!(
            apply(&op("HDEL k a z"), Some(e.clone()), now).0,
            Reply::Int(1)
        );
        // Removing the last field deletes the key.
        let one = Some(Entry::persistent(Value::Hash(
            [(Bytes::from("a"), Bytes::from("1"))].into(),
        )));
        assert_eq!(
            apply(&op("HDEL k a"), one, now),
            (Reply::Int(1), Write::Put(None))
        );
        assert_eq!(
            apply(&op("HGET k a"), s("v", None), now).0,
            Reply::err(WRONGTYPE)
        );
        assert_eq!(
            apply(&op("GET k"), Some(e.clone()), now).0,
            Reply::err(WRONGTYPE)
        );
        assert_eq!(apply(&op("HINCRBY k a 5"), Some(e), now).0, Reply::Int(6));
        assert_eq!(apply(&op("INCR k"), None, now).0, Reply::Int(1));
        assert_eq!(
            apply(&op("INCR k"), s("x", None), now).0,
            Reply::err(NOT_INT)
        );
    }
}
