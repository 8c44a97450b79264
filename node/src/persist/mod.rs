//! Persistence: a durable copy of the session table under the replicated one (Tomcat's
//! PersistentManager / FileStore / JDBCStore).
//!
//! Writes are applied in memory and replicated exactly as without persistence; the store
//! marks every session it changes ([`crate::store::Store`] keeps a dirty set), and a
//! flusher ([`flusher`]) writes the changed sessions to a [`Backend`] behind them:
//!
//! - `write-behind` (default): within `--flush-interval` (1 s) of the write, in one batch
//!   per interval. Writes that happened in the last interval before a crash of the node
//!   are lost *locally* (peers still hold them, unless every node crashed at once).
//! - `sync`: a write is answered only once the batch holding it is durable; concurrent
//!   writers share one batch and one fsync (group commit).
//!
//! What is stored per session is its whole replica state with the per-attribute stamps
//! ([`crate::model::SessionState`]), so a node that restarts from its own copy is, to the
//! replication protocol, a replica that missed some deltas: anti-entropy and the join's
//! state transfer bring it up to date with the same merges as ever.
//!
//! [`Backend`] is the plug point: [`embedded`] is the default (an embedded engine on a
//! local directory); a database backend implements the same trait.

pub mod dirty;
pub mod embedded;
pub mod flusher;
pub mod journal;
pub mod pg_tls;
pub mod postgres;
pub mod record;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, Durability};
use crate::metrics::PersistMetrics;
use crate::model::{SessionId, SessionState};
use crate::store::{ColdTier, Store};

/// One persisted session: its id, its expiry (unix seconds, so a backend can delete
/// expired rows without decoding them) and its encoded state ([`record::encode`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The session.
    pub sid: SessionId,
    /// Expiry, unix seconds (this node's clock when it was written).
    pub expiry: u64,
    /// The encoded state: opaque to the backend, stored and returned byte for byte.
    pub bytes: Vec<u8>,
}

/// A set of changes written atomically by [`Backend::write_batch`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Sessions to insert or replace (by `sid`).
    pub puts: Vec<Record>,
    /// Sessions to delete (absent ones are not an error).
    pub deletes: Vec<SessionId>,
}

impl Batch {
    /// Nothing to write.
    pub fn is_empty(&self) -> bool {
        self.puts.is_empty() && self.deletes.is_empty()
    }

    /// Bytes of the records put (keys and values), what the `persisted_bytes` metric counts.
    pub fn bytes(&self) -> u64 {
        self.puts
            .iter()
            .map(|r| r.bytes.len() as u64 + 16)
            .sum::<u64>()
            + self.deletes.len() as u64 * 16
    }
}

/// A backend failed. The message says what and where (file, table, connection).
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The stored data cannot be read back: corrupted or truncated files, a record that
    /// does not decode. The node sets the data aside and starts empty (peers refill it).
    #[error("persisted sessions are unreadable: {0}")]
    Corrupt(String),
    /// Any other failure (I/O, the database is unreachable, ...).
    #[error("persistence backend: {0}")]
    Io(String),
}

/// Where persisted sessions live: an embedded engine on a local directory, or a database.
///
/// # Contract
///
/// - **Keys**: one record per [`SessionId`]; a put replaces the previous record of the
///   same session whole. `bytes` are opaque and returned byte for byte.
/// - **Several copies**: a backend shared by several nodes (a database) may hold one
///   record of a session per node; [`Backend::load_all`] then yields the records of one
///   session one after another, and the loader merges them (per attribute, as replicas
///   merge).
/// - **Atomic, durable batches**: [`Backend::write_batch`] applies all its puts and
///   deletes or none, and when it returns `Ok` they survive a crash of the process *and*
///   of the machine (fsync or a committed database transaction). One call per flush: the
///   caller batches, the backend must not add a per-record round trip.
/// - **Threads**: every method may block (disk, network); the node calls them from
///   blocking threads (the flusher's, `spawn_blocking`), never holding a lock of its own,
///   except [`Backend::load_one`], which the store calls inline (holding no lock of its
///   own, see [`crate::store::ColdTier`]) when a swapped-out session
///   is accessed: it should take well under a millisecond (an index lookup). Methods are
///   called concurrently from several threads (`&self`).
/// - **Errors**: nothing panics. Unreadable data is [`BackendError::Corrupt`], anything
///   else [`BackendError::Io`]. A failed `write_batch` is retried by the caller with the
///   same (or a newer) content, so it must be idempotent.
/// - **Several nodes, one database**: a shared database backend must keep each node's
///   records apart (e.g. a `node_id` column): every node persists its own replica.
pub trait Backend: Send + Sync + std::fmt::Debug + 'static {
    /// A short name for logs and metrics (`"fjall"`, `"postgres"`).
    fn name(&self) -> &'static str;

    /// Calls `each` with every record stored, in any order (start from disk). An `Err`
    /// returned by `each` stops the scan and is returned.
    fn load_all(
        &self,
        each: &mut dyn FnMut(Record) -> Result<(), BackendError>,
    ) -> Result<(), BackendError>;

    /// The record of one session, if stored (a swapped-out session being accessed).
    fn load_one(&self, sid: SessionId) -> Result<Option<Record>, BackendError>;

    /// Writes a batch of puts and deletes atomically and durably (see the contract).
    fn write_batch(&self, batch: &Batch) -> Result<(), BackendError>;

    /// Deletes every record whose `expiry` is at or before `now` (unix seconds); returns
    /// how many. The node deletes the sessions it expires itself through `write_batch`;
    /// this catches records no running node holds any more.
    fn delete_expired(&self, now: u64) -> Result<usize, BackendError>;

    /// Bytes the stored data takes (files, table size), for the `persist_disk_bytes`
    /// metric; `None` when unknown.
    fn disk_bytes(&self) -> Option<u64> {
        None
    }
}

/// A backend as the store's cold tier: its records, decoded ([`record::decode`]).
#[derive(Debug, Clone)]
pub struct Cold(pub Arc<dyn Backend>);

impl ColdTier for Cold {
    fn read(&self, sid: SessionId) -> Result<Option<SessionState>, String> {
        self.0
            .load_one(sid)
            .and_then(|r| r.map(|r| record::decode(&r)).transpose())
            .map_err(|e| e.to_string())
    }
}

/// An empty store persisted to `backend` (its swapped-out sessions read back from it).
pub fn store_over(backend: &Arc<dyn Backend>) -> Store {
    Store::persisted(Arc::new(Cold(backend.clone())))
}

/// Persistence of a running node: where, and how.
#[derive(Debug, Clone)]
pub struct Persistence {
    /// The backend.
    pub backend: Arc<dyn Backend>,
    /// `sync`: writers wait for their flush.
    pub sync: bool,
    /// Longest a change waits to be written.
    pub flush_interval: Duration,
    /// Sessions kept in memory (0: no limit).
    pub max_active: usize,
}

/// Persistence could not start: the data directory cannot be used (not an unreadable
/// data set, which is set aside: a directory that cannot be written to, say).
#[derive(Debug, thiserror::Error)]
#[error("{place}: {error}")]
pub struct StartError {
    /// `--data-dir DIR` or `--postgres-url URL` (without its password).
    place: String,
    error: BackendError,
}

/// The session store of a node: memory only without `--data-dir`; else the sessions
/// persisted under it, loaded (expired ones dropped and deleted), and the persistence the
/// flusher then runs. Unreadable persisted data (corrupted or truncated files, a record
/// that does not decode, a panic in the engine) is logged, renamed aside with a timestamp
/// and replaced by an empty data set: the node starts empty and its peers fill it, rather
/// than failing at every start.
pub fn start(
    cfg: &Config,
    metrics: &PersistMetrics,
) -> Result<(Arc<Store>, Option<Persistence>), StartError> {
    let started = std::time::Instant::now();
    let budget = cfg.max_active_sessions;
    if let (Some(_), Some(dir)) = (&cfg.postgres_url, &cfg.data_dir) {
        return Err(StartError {
            place: format!("--data-dir {}", dir.display()),
            error: BackendError::Io(
                "set --data-dir or --postgres-url, not both (one backend per node)".into(),
            ),
        });
    }
    let (backend, store, place) = if let Some(url) = &cfg.postgres_url {
        from_database(cfg, url, budget)?
    } else if let Some(root) = &cfg.data_dir {
        from_directory(root, budget, metrics)?
    } else {
        return Ok((Arc::new(Store::new()), None));
    };
    let secs = started.elapsed().as_secs_f64();
    metrics.load_seconds.set(secs);
    metrics.loaded.set(store.len() as i64);
    flusher::gauges(&store, &*backend, metrics);
    tracing::info!(
        from = %place,
        engine = backend.name(),
        sessions = store.len(),
        swapped_out = store.swapped(),
        seconds = secs,
        "loaded persisted sessions"
    );
    Ok((
        Arc::new(store),
        Some(Persistence {
            backend,
            sync: cfg.durability == Durability::Sync,
            flush_interval: cfg.flush_interval,
            max_active: budget,
        }),
    ))
}

/// The embedded engine under `root`; unreadable data is set aside (see [`start`]).
fn from_directory(
    root: &std::path::Path,
    budget: usize,
    metrics: &PersistMetrics,
) -> Result<(Arc<dyn Backend>, Store, String), StartError> {
    let dir = root.join(embedded::DIR);
    let place = format!("--data-dir {}", root.display());
    let fail = |error| StartError {
        place: place.clone(),
        error,
    };
    let opened = guarded(|| {
        let backend: Arc<dyn Backend> = Arc::new(embedded::Embedded::open(&dir)?);
        let store = load(&backend, budget, crate::store::unix_now())?;
        Ok((backend, store))
    });
    let (backend, store) = match opened {
        Ok(ok) => ok,
        Err(e) => {
            let aside = set_aside(&dir).map_err(|io| {
                fail(BackendError::Io(format!(
                    "{e}; and it cannot be set aside: {io}"
                )))
            })?;
            metrics.set_aside.inc();
            tracing::error!(
                error = %e,
                moved_to = %aside.display(),
                "persisted sessions are unreadable: set aside; starting empty, peers will fill this node"
            );
            let backend: Arc<dyn Backend> =
                Arc::new(guarded(|| embedded::Embedded::open(&dir)).map_err(fail)?);
            let store = store_over(&backend);
            (backend, store)
        }
    };
    Ok((backend, store, place))
}

/// The PostgreSQL backend. A database that cannot be reached is an error (the node exits
/// and is restarted); unreadable rows are logged and the node starts empty, its peers
/// fill it, and its rows are rewritten as it persists again.
fn from_database(
    cfg: &Config,
    url: &str,
    budget: usize,
) -> Result<(Arc<dyn Backend>, Store, String), StartError> {
    let pg = postgres::Postgres::connect(url, &cfg.cluster, &cfg.node_id());
    let place = "--postgres-url".to_string(); // the error names the database
    let fail = |error| StartError {
        place: place.clone(),
        error,
    };
    let backend: Arc<dyn Backend> = Arc::new(pg.map_err(fail)?);
    let store = match load(&backend, budget, crate::store::unix_now()) {
        Ok(store) => store,
        Err(e @ BackendError::Corrupt(_)) => {
            tracing::error!(
                error = %e,
                "persisted sessions are unreadable: starting empty, peers will fill this node"
            );
            store_over(&backend)
        }
        Err(e) => return Err(fail(e)),
    };
    Ok((backend, store, place))
}

/// Runs `f`, turning a panic (an engine tripping over bad files) into a corruption error.
fn guarded<T>(f: impl FnOnce() -> Result<T, BackendError>) -> Result<T, BackendError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let what = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic".into());
        Err(BackendError::Corrupt(format!(
            "the engine failed reading it: {what}"
        )))
    })
}

/// A store holding every unexpired session of `backend` (the first `budget` in memory,
/// the rest swapped out; 0: all in memory). Expired records are deleted.
pub fn load(backend: &Arc<dyn Backend>, budget: usize, now: u64) -> Result<Store, BackendError> {
    let store = store_over(&backend);
    let mut expired = Vec::new();
    let mut n = 0usize;
    let mut restore = |s: &SessionState| {
        store.restore(s, budget == 0 || n < budget, now);
        n += 1;
    };
    // A shared database may hold a session once per node (see `Backend::load_all`):
    // consecutive records of one session are merged before it is restored.
    let mut pending: Option<crate::store::Session> = None;
    let mut pending_sid = 0;
    backend.load_all(&mut |r| {
        if r.expiry <= now {
            expired.push(r.sid);
            return Ok(());
        }
        let s = record::decode(&r)?;
        match pending.as_mut() {
            Some(p) if pending_sid == s.sid => {
                p.merge(&s);
            }
            _ => {
                if let Some(p) = pending.take() {
                    restore(&p.to_state(pending_sid));
                }
                let mut p = crate::store::Session::default();
                p.merge(&s);
                pending = Some(p);
                pending_sid = s.sid;
            }
        }
        Ok(())
    })?;
    if let Some(p) = pending {
        restore(&p.to_state(pending_sid));
    }
    if !expired.is_empty() {
        tracing::info!(
            expired = expired.len(),
            "deleting expired persisted sessions"
        );
        backend.write_batch(&Batch {
            puts: vec![],
            deletes: expired,
        })?;
    }
    Ok(store)
}

/// Set-aside copies kept beside the data directory (the newest); older ones are removed
/// when another is set aside, so a node that keeps hitting bad data cannot fill its disk.
pub const KEEP_SET_ASIDE: usize = 3;

/// Renames `dir` to `<dir>.corrupt-<UTC time>` (kept for inspection), then removes all
/// but the newest [`KEEP_SET_ASIDE`] such copies.
pub fn set_aside(dir: &std::path::Path) -> std::io::Result<std::path::PathBuf> {
    let stamp = humantime::format_rfc3339_millis(crate::clock::wall())
        .to_string()
        .replace(':', "");
    let base = dir
        .file_name()
        .map_or("data".into(), |n| n.to_string_lossy().into_owned());
    let to = dir.with_file_name(format!("{base}.corrupt-{stamp}"));
    std::fs::rename(dir, &to)?;
    prune_set_aside(dir, KEEP_SET_ASIDE);
    Ok(to)
}

/// Removes all but the newest `keep` set-aside copies of `dir` (`<dir>.corrupt-<time>`;
/// the names sort by time). Failures are logged, not fatal: the node starts regardless.
pub fn prune_set_aside(dir: &std::path::Path, keep: usize) {
    let (Some(parent), Some(base)) = (dir.parent(), dir.file_name()) else {
        return;
    };
    let prefix = format!("{}.corrupt-", base.to_string_lossy());
    let Ok(rd) = std::fs::read_dir(parent) else {
        return;
    };
    let mut copies: Vec<std::path::PathBuf> = rd
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect();
    copies.sort();
    let old = copies.len().saturating_sub(keep);
    for p in &copies[..old] {
        match std::fs::remove_dir_all(p).or_else(|_| std::fs::remove_file(p)) {
            Ok(()) => tracing::info!(removed = %p.display(), keep, "removed an old set-aside copy"),
            Err(e) => {
                tracing::warn!(path = %p.display(), error = %e, "cannot remove an old set-aside copy")
            }
        }
    }
}
