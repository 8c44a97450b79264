//! The flusher: writes changed sessions to the backend behind the writes, swaps idle
//! sessions out beyond the memory budget, and keeps the persistence gauges.
//!
//! One task per node. It wakes every `--flush-interval` (write-behind), or at once when a
//! `sync` writer waits ([`super::dirty::Dirty::durable`] kicks it); while one flush runs,
//! the writers that arrive wait together for the next: one fsync per batch of writers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::{record, Backend, BackendError, Batch, Persistence};
use crate::metrics::Metrics;
use crate::store::Store;

/// Most sessions in one batch (a state transfer can change every session at once).
const CHUNK: usize = 4096;
/// How often records no node holds any more are deleted from the backend.
const EXPIRE_EVERY: Duration = Duration::from_secs(600);

/// Writes every session marked dirty to `backend`, in batches of [`CHUNK`]; returns the
/// bytes written. Marks are cleared only for what was written (a session changed again
/// meanwhile stays dirty), and sync writers are released once everything they wait for
/// is durable.
pub fn flush(store: &Store, backend: &dyn Backend, metrics: &Metrics) -> Result<u64, BackendError> {
    let Some(dirty) = store.dirty() else {
        return Ok(0);
    };
    let snap = dirty.snapshot();
    let mut bytes = 0;
    let chunks: Vec<_> = snap.marks.chunks(CHUNK).collect();
    let last = chunks.len().saturating_sub(1);
    for (i, marks) in chunks.into_iter().enumerate() {
        let mut batch = Batch::default();
        for (sid, _) in marks {
            match store.persisted_state(*sid) {
                Ok(Some(s)) => batch.puts.push(record::encode(&s)),
                Ok(None) => batch.deletes.push(*sid),
                Err(()) => {} // swapped out: already on disk as it is
            }
        }
        let started = Instant::now();
        if let Err(e) = backend.write_batch(&batch) {
            dirty.failed();
            metrics.persist.errors.inc();
            return Err(e);
        }
        metrics
            .persist
            .flush_seconds
            .observe(started.elapsed().as_secs_f64());
        metrics.persist.bytes.inc_by(batch.bytes());
        metrics
            .persist
            .writes
            .inc_by((batch.puts.len() + batch.deletes.len()) as u64);
        bytes += batch.bytes();
        let part = super::dirty::Snapshot {
            marks: marks.to_vec(),
            through: if i == last { snap.through } else { 0 },
        };
        dirty.written(&part);
    }
    if snap.marks.is_empty() {
        dirty.written(&snap);
    }
    Ok(bytes)
}

/// Refreshes the persistence gauges.
pub fn gauges(store: &Store, backend: &dyn Backend, metrics: &Metrics) {
    let p = &metrics.persist;
    let pending = store.dirty().map_or(0, |d| d.len());
    p.sessions_resident.set(store.resident() as i64);
    p.sessions_swapped.set(store.swapped() as i64);
    p.sessions_on_disk
        .set(store.len().saturating_sub(pending) as i64);
    if let Some(b) = backend.disk_bytes() {
        p.disk_bytes.set(b as i64);
    }
}

/// Runs the flusher until `shutdown`, then flushes once more (a graceful stop loses
/// nothing).
pub async fn run(
    store: Arc<Store>,
    p: Persistence,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let Some(kick) = store.dirty().map(|d| &d.kick) else {
        return;
    };
    let mut last_expire = Instant::now();
    loop {
        let stop = tokio::select! {
            _ = tokio::time::sleep(p.flush_interval) => false,
            _ = kick.notified(), if p.sync => false,
            _ = shutdown.cancelled() => true,
        };
        let expire = last_expire.elapsed() >= EXPIRE_EVERY;
        if expire {
            last_expire = Instant::now();
        }
        let (s, b, m, budget) = (store.clone(), p.backend.clone(), metrics.clone(), p.max_active);
        let done = tokio::task::spawn_blocking(move || {
            if let Err(e) = flush(&s, &*b, &m) {
                tracing::error!(error = %e, "persisting sessions failed; retrying");
            }
            if budget > 0 {
                s.swap_out(budget);
            }
            if expire {
                if let Err(e) = b.delete_expired(crate::store::unix_now()) {
                    tracing::warn!(error = %e, "deleting expired persisted sessions failed");
                }
            }
            gauges(&s, &*b, &m);
        })
        .await;
        if let Err(e) = done {
            tracing::error!(error = %e, "the flusher failed");
        }
        if stop {
            break;
        }
    }
}
