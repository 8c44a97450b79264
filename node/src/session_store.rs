//! `ReplicatedStore`: a `tower_sessions::SessionStore` backed by the cluster.
//!
//! `save` diffs the record against the local replica and ships only the changed
//! attributes as a delta; `load` honours the version the client has already seen
//! (read-your-writes, see [`crate::ryw`]).

use std::collections::HashMap;

use async_trait::async_trait;
use bytes::Bytes;
use time::OffsetDateTime;
use tower_sessions::session::{Id, Record};
use tower_sessions::session_store::{Error, Result, SessionStore};

use crate::cluster::Cluster;
use crate::ryw;

/// A session store whose sessions are replicated across the cluster.
#[derive(Debug, Clone)]
pub struct ReplicatedStore {
    cluster: Cluster,
}

impl ReplicatedStore {
    /// A store over a started cluster.
    pub fn new(cluster: Cluster) -> Self {
        Self { cluster }
    }

    /// The cluster behind the store.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }
}

fn encode(record: &Record) -> Result<HashMap<String, Bytes>> {
    thread_local! {
        /// Where values are encoded before being copied out at their exact size: the
        /// encoder grows its buffer by doubling, and `Bytes` would keep the whole
        /// allocation (a 1 KB attribute holding 2 KB on the node that wrote it).
        static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    SCRATCH.with(|scratch| {
        let mut buf = scratch.borrow_mut();
        let mut out = HashMap::with_capacity(record.data.len());
        for (k, v) in &record.data {
            buf.clear();
            serde_json::to_writer(&mut *buf, v).map_err(|e| Error::Encode(e.to_string()))?;
            out.insert(k.clone(), Bytes::copy_from_slice(&buf));
        }
        // A huge attribute once must not pin its buffer on this thread for good.
        if buf.capacity() > 64 * 1024 {
            *buf = Vec::new();
        }
        Ok(out)
    })
}

fn expiry_secs(t: OffsetDateTime) -> u64 {
    t.unix_timestamp().max(0) as u64
}

#[async_trait]
impl SessionStore for ReplicatedStore {
    async fn create(&self, record: &mut Record) -> Result<()> {
        // Ids are 128 random bits, not held here; in backup mode, one this node is the
        // primary of (see `Cluster::new_session_id`).
        record.id = Id(self.cluster.new_session_id());
        self.save(record).await
    }

    async fn save(&self, record: &Record) -> Result<()> {
        self.cluster.metrics().session_saves.inc();
        let data = encode(record)?;
        // Diff against what this request loaded (not the replica, which a concurrent
        // write from another node may have changed since): only the request's changes
        // are written.
        let loaded = ryw::take_loaded(record.id.0);
        // `--min-members`: a write the cluster may not acknowledge is an error (503).
        let written = self
            .cluster
            .write_changes(
                record.id.0,
                loaded.as_ref(),
                &data,
                expiry_secs(record.expiry_date),
            )
            .await;
        let version = match written {
            Ok(v) => v,
            Err(e) => {
                if let Some(loaded) = loaded {
                    ryw::set_loaded(record.id.0, loaded);
                }
                return Err(Error::Backend(e.to_string()));
            }
        };
        ryw::saw(record.id.0, version);
        // tower-sessions saves again after the handler when the session was modified:
        // that save diffs against this one.
        ryw::set_loaded(record.id.0, data);
        Ok(())
    }

    async fn load(&self, id: &Id) -> Result<Option<Record>> {
        self.cluster.metrics().session_loads.inc();
        let min = ryw::min_version(id.0);
        // A replica that did not answer is an error (the request fails, the client keeps
        // its cookie and may retry), never "no session" (which would drop the cookie).
        let loaded = self
            .cluster
            .load(id.0, min)
            .await
            .map_err(|e| Error::Backend(e.to_string()))?;
        let Some(loaded) = loaded else {
            return Ok(None);
        };
        self.cluster.touch(id.0);
        if loaded.rolled_back {
            ryw::rolled_back(id.0);
        }
        ryw::saw(id.0, loaded.session.version);
        let mut data = HashMap::new();
        // What this request loaded, as stored (the JSON `encode` wrote): the save diffs
        // against it, without encoding the record a second time.
        let mut raw = HashMap::new();
        for (k, v) in loaded.session.live_attrs() {
            let value = serde_json::from_slice(v)
                .map_err(|e| Error::Decode(format!("attribute {k:?}: {e}")))?;
            data.insert(k.to_string(), value);
            raw.insert(k.to_string(), v.clone());
        }
        let expiry = self
            .cluster
            .store()
            .with(id.0, |s| s.expiry)
            .unwrap_or(loaded.session.expiry);
        let expiry_date = OffsetDateTime::from_unix_timestamp(expiry as i64)
            .map_err(|e| Error::Decode(format!("expiry: {e}")))?;
        let record = Record {
            id: *id,
            data,
            expiry_date,
        };
        ryw::set_loaded(id.0, raw);
        Ok(Some(record))
    }

    async fn delete(&self, id: &Id) -> Result<()> {
        self.cluster.invalidate(id.0).await;
        Ok(())
    }
}
