//! The PostgreSQL backend (`--postgres-url`): sessions in a table of the team's own
//! database, Tomcat's JDBCStore.
//!
//! # Table
//!
//! ```sql
//! CREATE TABLE IF NOT EXISTS tribe_sessions (
//!     cluster    text        NOT NULL,  -- --cluster: several clusters share one database
//!     node       text        NOT NULL,  -- --node-id: every node persists its own replica
//!     sid        bytea       NOT NULL,  -- the session id, 16 bytes big-endian
//!     expiry     bigint      NOT NULL,  -- unix seconds (expired rows are deleted)
//!     state      bytea       NOT NULL,  -- the record (persist::record), opaque
//!     updated_at timestamptz NOT NULL DEFAULT now(),
//!     PRIMARY KEY (cluster, node, sid));
//! ```
//!
//! The node creates the table (and indexes on `(cluster, expiry)` for expiry and on
//! `(cluster, sid)` for reading one session back from any node's row) when it is missing, so
//! the database role needs `CREATE` on its schema the first time, then only `SELECT`,
//! `INSERT`, `UPDATE` and `DELETE`.
//!
//! # Which rows a node loads
//!
//! Its own (`node` = its id) when it has any: a restarted node is then a replica that
//! missed some deltas, as with the embedded backend. A node without rows of its own, a pod
//! with a new name after the whole cluster was restarted, loads the rows of *every* node of
//! its cluster instead, and the store merges them per attribute (last writer wins, the
//! tombstones of signed-out sessions included). The union is at least as complete as any
//! one node's copy. Rows of nodes that are gone stay until their sessions expire. Any
//! node deletes the expired rows of its cluster.
//!
//! Reading one session back (a swapped-out session accessed) takes the node's own row,
//! else the newest row of its cluster: a session loaded from the union and swapped out
//! before this node first wrote it is still found.
//!
//! # Threads and connection
//!
//! The [`Backend`] methods block; a session read back on access runs inline. Blocking a
//! tokio worker on a runtime of our own would panic, so one dedicated thread owns the
//! connection and its small single-threaded runtime. Callers send it a job and wait
//! for the answer, bounded by [`OP_TIMEOUT`]. A broken connection is dropped, and the next
//! job reconnects. A failed `write_batch` is an error that the flusher retries.
//!
//! Batches go in one transaction with array parameters (`unnest`): one round trip per
//! flush, whatever its size. The transaction commits with the database's default
//! `synchronous_commit`, so `Ok` means durable on the server.
//!
//! # TLS
//!
//! Required unless the URL says `sslmode=disable`: no `sslmode` means `require`, or
//! `verify-full` when `sslrootcert` names a CA; `prefer` and `allow` are refused (see
//! [`super::pg_tls`]). A server that declines TLS is refused before the password is sent.

use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_postgres::types::ToSql;

use super::{Backend, BackendError, Batch, Record};
use crate::model::SessionId;

/// Longest one database operation (connect included) may take before it is an error.
pub const OP_TIMEOUT: Duration = Duration::from_secs(15);
/// Rows handed to the loader at a time while loading.
const CHUNK: usize = 1024;

/// Created under a transaction-scoped advisory lock: nodes starting together would
/// otherwise race in `CREATE TABLE IF NOT EXISTS` (a unique violation in the catalog).
const SCHEMA: &str = "BEGIN;
SELECT pg_advisory_xact_lock(7426981);
CREATE TABLE IF NOT EXISTS tribe_sessions (
    cluster text NOT NULL,
    node text NOT NULL,
    sid bytea NOT NULL,
    expiry bigint NOT NULL,
    state bytea NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (cluster, node, sid));
CREATE INDEX IF NOT EXISTS tribe_sessions_expiry ON tribe_sessions (cluster, expiry);
CREATE INDEX IF NOT EXISTS tribe_sessions_sid ON tribe_sessions (cluster, sid);
COMMIT";

/// One request to the connection thread.
enum Job {
    LoadAll(std_mpsc::SyncSender<Result<Vec<Record>, BackendError>>),
    LoadOne(
        SessionId,
        std_mpsc::SyncSender<Result<Option<Record>, BackendError>>,
    ),
    Write(Batch, std_mpsc::SyncSender<Result<(), BackendError>>),
    DeleteExpired(u64, std_mpsc::SyncSender<Result<usize, BackendError>>),
    DiskBytes(std_mpsc::SyncSender<Result<u64, BackendError>>),
}

/// Sessions in a PostgreSQL table.
pub struct Postgres {
    jobs: mpsc::UnboundedSender<Job>,
    /// For messages: the URL without its password.
    target: String,
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Postgres")
            .field("target", &self.target)
            .finish()
    }
}

fn io(what: &str, e: impl std::fmt::Display) -> BackendError {
    BackendError::Io(format!("postgres {what}: {e}"))
}

/// A driver error with what the server said (the driver's own `Display` is only
/// "db error" for those).
fn pg(what: &str, e: tokio_postgres::Error) -> BackendError {
    match e.as_db_error() {
        Some(db) => io(
            what,
            format_args!("{} ({})", db.message(), db.code().code()),
        ),
        None => match std::error::Error::source(&e) {
            Some(cause) => io(what, format_args!("{e}: {cause}")),
            None => io(what, e),
        },
    }
}

/// A server that declines TLS, said plainly with what to do about it.
fn refused_tls(mode: super::pg_tls::SslMode, e: BackendError) -> BackendError {
    match e {
        BackendError::Io(m) if m.contains("does not support TLS") => BackendError::Io(format!(
            "{m}: refused (sslmode={}; the node sends nothing, password included, without TLS \
             unless --postgres-url says sslmode=disable)",
            mode.as_str()
        )),
        other => other,
    }
}

fn sid_bytes(sid: SessionId) -> Vec<u8> {
    sid.to_be_bytes().to_vec()
}

fn record_of(row: &tokio_postgres::Row) -> Result<Record, BackendError> {
    let corrupt = |why: String| BackendError::Corrupt(format!("postgres row: {why}"));
    let sid: &[u8] = row.try_get(0).map_err(|e| corrupt(e.to_string()))?;
    let sid: [u8; 16] = sid
        .try_into()
        .map_err(|_| corrupt(format!("a session id of {} bytes", sid.len())))?;
    let expiry: i64 = row.try_get(1).map_err(|e| corrupt(e.to_string()))?;
    let bytes: Vec<u8> = row.try_get(2).map_err(|e| corrupt(e.to_string()))?;
    Ok(Record {
        sid: SessionId::from_be_bytes(sid),
        expiry: u64::try_from(expiry).unwrap_or(0),
        bytes,
    })
}

/// The URL with its password replaced, for logs and errors.
fn redact(url: &str) -> String {
    match url.parse::<tokio_postgres::Config>() {
        Ok(c) => {
            let hosts: Vec<String> = c
                .get_hosts()
                .iter()
                .map(|h| match h {
                    tokio_postgres::config::Host::Tcp(h) => h.clone(),
                    tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
                })
                .collect();
            format!(
                "postgres://{}@{}/{}",
                c.get_user().unwrap_or(""),
                hosts.join(","),
                c.get_dbname().unwrap_or("")
            )
        }
        Err(_) => "postgres://(unparsable URL)".into(),
    }
}

impl Postgres {
    /// Checks the URL, starts the connection thread, connects and creates the table if it
    /// is missing: an unreachable database or a role without rights is an error here, at
    /// start, not at the first flush.
    pub fn connect(url: &str, cluster: &str, node: &str) -> Result<Postgres, BackendError> {
        let invalid =
            |e: &dyn std::fmt::Display| BackendError::Io(format!("invalid --postgres-url: {e}"));
        let (rest, tls_settings) = super::pg_tls::split(url).map_err(|e| invalid(&e))?;
        let mut config: tokio_postgres::Config = rest.parse().map_err(|e| invalid(&e))?;
        config.ssl_mode(match tls_settings.mode {
            super::pg_tls::SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            _ => tokio_postgres::config::SslMode::Require,
        });
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        config.application_name("tribe-node");
        let target = redact(url);
        let (jobs, rx) = mpsc::unbounded_channel();
        let conn = Conn {
            config,
            tls: tls(&tls_settings)?,
            sslmode: tls_settings.mode,
            cluster: cluster.to_owned(),
            node: node.to_owned(),
            client: None,
        };
        std::thread::Builder::new()
            .name("tribe-postgres".into())
            .spawn(move || conn.run(rx))
            .map_err(|e| io("thread", e))?;
        let pg = Postgres { jobs, target };
        pg.disk_bytes_checked()
            .map_err(|e| BackendError::Io(format!("{}: {e}", pg.target)))?;
        tracing::info!(target = %pg.target, sslmode = tls_settings.mode.as_str(), "sessions persisted in PostgreSQL");
        Ok(pg)
    }

    /// Sends a job and waits for its answer.
    fn call<T>(
        &self,
        job: impl FnOnce(std_mpsc::SyncSender<Result<T, BackendError>>) -> Job,
    ) -> Result<T, BackendError> {
        let (tx, rx) = std_mpsc::sync_channel(1);
        self.jobs
            .send(job(tx))
            .map_err(|_| io("connection thread", "stopped"))?;
        rx.recv_timeout(OP_TIMEOUT + Duration::from_secs(1))
            .map_err(|_| io("operation", "no answer"))?
    }

    fn disk_bytes_checked(&self) -> Result<u64, BackendError> {
        self.call(Job::DiskBytes)
    }
}

impl Backend for Postgres {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn load_all(
        &self,
        each: &mut dyn FnMut(Record) -> Result<(), BackendError>,
    ) -> Result<(), BackendError> {
        let (tx, rx) = std_mpsc::sync_channel(4);
        self.jobs
            .send(Job::LoadAll(tx))
            .map_err(|_| io("connection thread", "stopped"))?;
        // Chunks until the sender is dropped; each wait is bounded.
        loop {
            match rx.recv_timeout(OP_TIMEOUT) {
                Ok(chunk) => {
                    for r in chunk? {
                        each(r)?;
                    }
                }
                Err(std_mpsc::RecvTimeoutError::Disconnected) => return Ok(()),
                Err(std_mpsc::RecvTimeoutError::Timeout) => {
                    return Err(io("load", "no rows for too long"))
                }
            }
        }
    }

    fn load_one(&self, sid: SessionId) -> Result<Option<Record>, BackendError> {
        self.call(|tx| Job::LoadOne(sid, tx))
    }

    fn write_batch(&self, batch: &Batch) -> Result<(), BackendError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.call(|tx| Job::Write(batch.clone(), tx))
    }

    fn delete_expired(&self, now: u64) -> Result<usize, BackendError> {
        self.call(|tx| Job::DeleteExpired(now, tx))
    }

    fn disk_bytes(&self) -> Option<u64> {
        self.disk_bytes_checked().ok()
    }
}

/// The TLS connector for the URL's settings (unused with `sslmode=disable`).
fn tls(
    settings: &super::pg_tls::TlsSettings,
) -> Result<tokio_postgres_rustls::MakeRustlsConnect, BackendError> {
    let config = super::pg_tls::client_config(settings).map_err(|e| io("tls", e))?;
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// The connection thread's state.
struct Conn {
    config: tokio_postgres::Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    /// For the message when a server declines TLS.
    sslmode: super::pg_tls::SslMode,
    cluster: String,
    node: String,
    client: Option<tokio_postgres::Client>,
}

impl Conn {
    fn run(mut self, mut rx: mpsc::UnboundedReceiver<Job>) {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "postgres: cannot start the connection runtime");
                return;
            }
        };
        rt.block_on(async move {
            while let Some(job) = rx.recv().await {
                self.serve(job).await;
            }
        });
    }

    /// Runs one job and answers it; a failure that broke the connection drops it.
    async fn serve(&mut self, job: Job) {
        macro_rules! answer {
            ($tx:expr, $what:literal, $fut:expr) => {{
                let r = match tokio::time::timeout(OP_TIMEOUT, $fut).await {
                    Ok(r) => r,
                    Err(_) => Err(io($what, "timed out")),
                };
                self.forget_if_broken();
                let _ = $tx.send(r);
            }};
        }
        match job {
            Job::LoadAll(tx) => {
                let r = tokio::time::timeout(OP_TIMEOUT * 4, self.load_all(&tx)).await;
                let r = r.unwrap_or_else(|_| Err(io("load", "timed out")));
                self.forget_if_broken();
                if let Err(e) = r {
                    let _ = tx.send(Err(e));
                }
            }
            Job::LoadOne(sid, tx) => answer!(tx, "read", self.load_one(sid)),
            Job::Write(batch, tx) => answer!(tx, "write", self.write(batch)),
            Job::DeleteExpired(now, tx) => answer!(tx, "expiry", self.delete_expired(now)),
            Job::DiskBytes(tx) => answer!(tx, "size", self.disk_bytes()),
        }
    }

    fn forget_if_broken(&mut self) {
        if self.client.as_ref().is_some_and(|c| c.is_closed()) {
            self.client = None;
        }
    }

    /// The connection, opened (and the table created) when there is none.
    async fn client(&mut self) -> Result<&mut tokio_postgres::Client, BackendError> {
        if self.client.is_none() {
            let (client, connection) = self
                .config
                .connect(self.tls.clone())
                .await
                .map_err(|e| refused_tls(self.sslmode, pg("connect", e)))?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::warn!(error = %e, "postgres connection closed");
                }
            });
            client
                .batch_execute(SCHEMA)
                .await
                .map_err(|e| pg("create table", e))?;
            self.client = Some(client);
        }
        Ok(self.client.as_mut().expect("connected above"))
    }

    async fn load_all(
        &mut self,
        tx: &std_mpsc::SyncSender<Result<Vec<Record>, BackendError>>,
    ) -> Result<(), BackendError> {
        use futures::TryStreamExt;
        let (cluster, node) = (self.cluster.clone(), self.node.clone());
        let client = self.client().await?;
        let own: bool = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM tribe_sessions WHERE cluster = $1 AND node = $2)",
                &[&cluster, &node],
            )
            .await
            .map_err(|e| pg("load", e))?
            .get(0);
        if !own {
            tracing::info!(
                "no sessions of this node in PostgreSQL: loading every node's of the cluster"
            );
        }
        let params: Vec<&(dyn ToSql + Sync)> = if own {
            vec![&cluster, &node]
        } else {
            vec![&cluster]
        };
        let sql = if own {
            "SELECT sid, expiry, state FROM tribe_sessions WHERE cluster = $1 AND node = $2"
        } else {
            // One session's rows one after another: the loader merges them.
            "SELECT sid, expiry, state FROM tribe_sessions WHERE cluster = $1 ORDER BY sid"
        };
        let rows = client
            .query_raw(sql, params)
            .await
            .map_err(|e| pg("load", e))?;
        futures::pin_mut!(rows);
        let mut chunk = Vec::with_capacity(CHUNK);
        while let Some(row) = rows.try_next().await.map_err(|e| pg("load", e))? {
            chunk.push(record_of(&row)?);
            if chunk.len() == CHUNK {
                let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK));
                // The loader may block on the node's side; do not hold the runtime.
                let tx = tx.clone();
                let sent = tokio::task::spawn_blocking(move || tx.send(Ok(full)).is_ok())
                    .await
                    .unwrap_or(false);
                if !sent {
                    return Ok(()); // the loader stopped (its callback failed)
                }
            }
        }
        if !chunk.is_empty() {
            let _ = tx.send(Ok(chunk));
        }
        Ok(())
    }

    async fn load_one(&mut self, sid: SessionId) -> Result<Option<Record>, BackendError> {
        let (cluster, node) = (self.cluster.clone(), self.node.clone());
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT sid, expiry, state FROM tribe_sessions
                 WHERE cluster = $1 AND sid = $3
                 ORDER BY node = $2 DESC, updated_at DESC LIMIT 1",
                &[&cluster, &node, &sid_bytes(sid)],
            )
            .await
            .map_err(|e| pg("read", e))?;
        row.as_ref().map(record_of).transpose()
    }

    async fn write(&mut self, batch: Batch) -> Result<(), BackendError> {
        let (cluster, node) = (self.cluster.clone(), self.node.clone());
        // One row per session (the last put wins), so the upsert never touches a row twice.
        let mut puts = std::collections::HashMap::with_capacity(batch.puts.len());
        for r in batch.puts {
            puts.insert(r.sid, r);
        }
        let (mut sids, mut expiries, mut states) = (Vec::new(), Vec::new(), Vec::new());
        for r in puts.into_values() {
            sids.push(sid_bytes(r.sid));
            expiries.push(i64::try_from(r.expiry).unwrap_or(i64::MAX));
            states.push(r.bytes);
        }
        let deletes: Vec<Vec<u8>> = batch.deletes.iter().map(|s| sid_bytes(*s)).collect();
        let client = self.client().await?;
        let tx = client.transaction().await.map_err(|e| pg("write", e))?;
        if !deletes.is_empty() {
            tx.execute(
                "DELETE FROM tribe_sessions
                 WHERE cluster = $1 AND node = $2 AND sid = ANY($3::bytea[])",
                &[&cluster, &node, &deletes],
            )
            .await
            .map_err(|e| pg("write", e))?;
        }
        if !sids.is_empty() {
            tx.execute(
                "INSERT INTO tribe_sessions (cluster, node, sid, expiry, state)
                 SELECT $1, $2, s, e, v
                 FROM unnest($3::bytea[], $4::bigint[], $5::bytea[]) AS t(s, e, v)
                 ON CONFLICT (cluster, node, sid)
                 DO UPDATE SET expiry = EXCLUDED.expiry, state = EXCLUDED.state, updated_at = now()",
                &[&cluster, &node, &sids, &expiries, &states],
            )
            .await
            .map_err(|e| pg("write", e))?;
        }
        tx.commit().await.map_err(|e| pg("commit", e))
    }

    async fn delete_expired(&mut self, now: u64) -> Result<usize, BackendError> {
        let cluster = self.cluster.clone();
        let now = i64::try_from(now).unwrap_or(i64::MAX);
        let client = self.client().await?;
        let n = client
            .execute(
                "DELETE FROM tribe_sessions WHERE cluster = $1 AND expiry <= $2",
                &[&cluster, &now],
            )
            .await
            .map_err(|e| pg("expiry", e))?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    async fn disk_bytes(&mut self) -> Result<u64, BackendError> {
        let client = self.client().await?;
        let n: i64 = client
            .query_one("SELECT pg_total_relation_size('tribe_sessions')", &[])
            .await
            .map_err(|e| pg("size", e))?
            .get(0);
        Ok(u64::try_from(n).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_never_reaches_a_message() {
        let r = redact("postgres://app:s3cret@db.example:5432/shop?sslmode=require");
        assert_eq!(r, "postgres://app@db.example/shop");
        assert!(!r.contains("s3cret"));
        let r = redact("host=/run/postgresql user=app password=s3cret dbname=shop");
        assert!(!r.contains("s3cret"), "{r}");
    }

    #[test]
    fn a_bad_url_is_a_clear_error_at_start() {
        let e = Postgres::connect("postgres://[::1", "c", "n").unwrap_err();
        assert!(e.to_string().contains("invalid --postgres-url"), "{e}");
    }
}
