//! The embedded backend: [fjall], an LSM-tree storage engine, in `<data-dir>/sessions`.
//!
//! # Why fjall (and not redb)
//!
//! Measured on this workload (a put of a ~300-byte record per changed session, 50,000
//! sessions, 200,000 puts, in batches): fjall took 7.6 µs of CPU and wrote 420 bytes per
//! put with one fsync per 20 batches (write-behind), 14 µs and 625 bytes with an fsync per
//! batch of 20 (sync); redb, a copy-on-write B-tree, took 19 µs and 2,844 bytes, and 55 µs
//! and 7,940 bytes. An LSM tree appends each batch to a journal; a B-tree rewrites every
//! page on the path of every key it touches, and session ids are random, so every put
//! lands on a different leaf. What redb does better, a faster start (no journal to
//! replay), matters once per restart; the cost per write is paid on every request. The
//! journal is capped ([`MAX_JOURNAL`]) so a replay stays short.
//!
//! # Layout
//!
//! One keyspace, `sessions`; key: the session id (16 bytes, big-endian); value: the
//! record's expiry (8 bytes, little-endian), then its bytes ([`super::record`]).
//!
//! # Privacy and a damaged journal
//!
//! The directory is made 0700 and what is in it 0600 at every open (session data is not
//! for other users of the host; the `tribe-node` binary also runs with umask 077, so the
//! engine's later files are born private). A journal the engine truncates at open
//! (a torn or damaged tail) is logged as a WARN with the records kept and dropped and the
//! bytes dropped ([`super::journal`]), instead of going unsaid.

use std::path::{Path, PathBuf};

use super::{Backend, BackendError, Batch, Record};
use crate::model::SessionId;

/// The engine's directory under `--data-dir`.
pub const DIR: &str = "sessions";
/// Most journal bytes before memtables are flushed to tables (bounds the replay at start).
pub const MAX_JOURNAL: u64 = 64 * 1024 * 1024;
/// Block cache: reads of swapped-out sessions; kept small, memory is the point.
const CACHE: u64 = 16 * 1024 * 1024;
const KEYSPACE: &str = "sessions";

/// Sessions in a fjall database on a local directory.
pub struct Embedded {
    db: fjall::Database,
    ks: fjall::Keyspace,
    dir: PathBuf,
    dropped: super::journal::Dropped,
}

impl std::fmt::Debug for Embedded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedded").field("dir", &self.dir).finish()
    }
}

/// Unreadable files, or a failure to read them.
fn classify(dir: &Path, e: fjall::Error) -> BackendError {
    let msg = format!("{}: {e}", dir.display());
    match e {
        fjall::Error::Io(_) | fjall::Error::Poisoned => BackendError::Io(msg),
        _ => BackendError::Corrupt(msg),
    }
}

/// `dir` 0700, the directories under it 0700 and the files 0600 (owner only).
pub fn make_private(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            make_private(&e.path())?;
        } else {
            std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(0o600))?;
        }
    }
    Ok(())
}

fn key(sid: SessionId) -> [u8; 16] {
    sid.to_be_bytes()
}

fn record_of(k: &[u8], v: &[u8]) -> Result<Record, BackendError> {
    let sid: [u8; 16] = k
        .try_into()
        .map_err(|_| BackendError::Corrupt(format!("a key of {} bytes", k.len())))?;
    let sid = SessionId::from_be_bytes(sid);
    if v.len() < 8 {
        return Err(BackendError::Corrupt(format!(
            "session {sid:x}: value too short"
        )));
    }
    let (e, bytes) = v.split_at(8);
    Ok(Record {
        sid,
        expiry: u64::from_le_bytes(e.try_into().expect("8 bytes")),
        bytes: bytes.to_vec(),
    })
}

impl Embedded {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Embedded, BackendError> {
        let io = |e: std::io::Error| BackendError::Io(format!("{}: {e}", dir.display()));
        std::fs::create_dir_all(dir).map_err(io)?;
        if let Err(e) = make_private(dir) {
            // A file of another user (a pod whose user changed) cannot be changed; the
            // open then finds out whether it can still read it.
            tracing::warn!(dir = %dir.display(), error = %e, "cannot make the data directory private (0700/0600)");
        }
        let journals = super::journal::before_open(dir);
        let db = fjall::Database::builder(dir)
            .cache_size(CACHE)
            .max_journaling_size(MAX_JOURNAL)
            .open()
            .map_err(|e| classify(dir, e))?;
        let dropped = journals.after_open();
        if dropped.bytes > 0 {
            tracing::warn!(
                dir = %dir.display(),
                records_kept = dropped.records_kept,
                records_dropped = dropped.records_dropped,
                bytes_dropped = dropped.bytes,
                "the journal had a torn or damaged tail, which the engine truncated: the \
                 dropped records were the last writes before the stop; peers fill them in"
            );
        }
        let ks = db
            .keyspace(KEYSPACE, fjall::KeyspaceCreateOptions::default)
            .map_err(|e| classify(dir, e))?;
        Ok(Embedded {
            db,
            ks,
            dir: dir.to_path_buf(),
            dropped,
        })
    }

    /// What the engine's journal recovery dropped at open.
    pub fn journal_dropped(&self) -> super::journal::Dropped {
        self.dropped
    }

    fn err(&self, e: fjall::Error) -> BackendError {
        classify(&self.dir, e)
    }
}

impl Backend for Embedded {
    fn name(&self) -> &'static str {
        "fjall"
    }

    fn load_all(
        &self,
        each: &mut dyn FnMut(Record) -> Result<(), BackendError>,
    ) -> Result<(), BackendError> {
        for kv in self.ks.iter() {
            let (k, v) = kv.into_inner().map_err(|e| self.err(e))?;
            each(record_of(&k, &v)?)?;
        }
        Ok(())
    }

    fn load_one(&self, sid: SessionId) -> Result<Option<Record>, BackendError> {
        let k = key(sid);
        match self.ks.get(k).map_err(|e| self.err(e))? {
            Some(v) => record_of(&k, &v).map(Some),
            None => Ok(None),
        }
    }

    fn write_batch(&self, batch: &Batch) -> Result<(), BackendError> {
        let mut b = self.db.batch();
        for r in &batch.puts {
            let mut v = Vec::with_capacity(8 + r.bytes.len());
            v.extend_from_slice(&r.expiry.to_le_bytes());
            v.extend_from_slice(&r.bytes);
            b.insert(&self.ks, key(r.sid), v);
        }
        for sid in &batch.deletes {
            b.remove(&self.ks, key(*sid));
        }
        b.commit().map_err(|e| self.err(e))?;
        self.db
            .persist(fjall::PersistMode::SyncData)
            .map_err(|e| self.err(e))
    }

    fn delete_expired(&self, now: u64) -> Result<usize, BackendError> {
        let mut batch = Batch::default();
        for kv in self.ks.iter() {
            let (k, v) = kv.into_inner().map_err(|e| self.err(e))?;
            if let Ok(r) = record_of(&k, &v) {
                if r.expiry <= now {
                    batch.deletes.push(r.sid);
                }
            }
        }
        let n = batch.deletes.len();
        if n > 0 {
            self.write_batch(&batch)?;
        }
        Ok(n)
    }

    fn disk_bytes(&self) -> Option<u64> {
        Some(self.db.disk_space().unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn journal_files(dir: &Path) -> Vec<PathBuf> {
        let mut v = vec![];
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            if e.path().is_dir() {
                v.extend(journal_files(&e.path()));
            } else if e.path().extension().is_some_and(|x| x == "jnl") {
                v.push(e.path());
            }
        }
        v
    }

    /// A journal whose middle is damaged is truncated by the engine at open: the node
    /// counts what was kept and dropped (records, bytes) instead of saying nothing; a
    /// clean reopen drops nothing.
    #[test]
    fn a_truncated_journal_is_counted() {
        let dir = tempfile::tempdir().unwrap();
        {
            let b = Embedded::open(dir.path()).unwrap();
            for i in 0..10 {
                b.write_batch(&Batch {
                    puts: vec![rec(i, 1000 + i as u64)],
                    deletes: vec![],
                })
                .unwrap();
            }
        }
        // A clean reopen: nothing dropped, every record kept.
        {
            let b = Embedded::open(dir.path()).unwrap();
            assert_eq!(b.journal_dropped().bytes, 0);
            assert_eq!(b.journal_dropped().records_dropped, 0);
            assert_eq!(all(&b).len(), 10);
        }
        // Damage the 7th batch's start entry (tag 1 → 0xEE): the engine keeps 6 batches.
        let files = journal_files(dir.path());
        let mut damaged = false;
        for f in &files {
            let mut bytes = std::fs::read(f).unwrap();
            let mut starts = vec![];
            let mut at = 0;
            while let Some((len, _)) = super::super::journal::entry_at(&bytes, at) {
                if bytes[at] == 1 {
                    starts.push(at);
                }
                at += len;
            }
            if starts.len() >= 10 {
                bytes[starts[6]] = 0xEE;
                std::fs::write(f, &bytes).unwrap();
                damaged = true;
            }
        }
        assert!(damaged, "no journal with the ten batches in {files:?}");
        let b = Embedded::open(dir.path()).unwrap();
        let d = b.journal_dropped();
        assert_eq!(
            all(&b).len(),
            6,
            "the engine kept the batches before the damage"
        );
        assert!(d.bytes > 0, "{d:?}");
        assert!(d.records_kept >= 6, "{d:?}");
        assert!(
            d.records_dropped >= 3,
            "the three intact batches after the damaged one are counted: {d:?}"
        );
    }

    #[test]
    fn the_data_directory_is_private() {
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let set = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
        };
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("sub")).unwrap();
        std::fs::write(tree.join("sub/f"), b"x").unwrap();
        std::fs::write(tree.join("g"), b"x").unwrap();
        for (p, m) in [("", 0o755), ("sub", 0o775), ("sub/f", 0o644), ("g", 0o666)] {
            set(&tree.join(p), m);
        }
        make_private(&tree).unwrap();
        for (p, m) in [("", 0o700), ("sub", 0o700), ("sub/f", 0o600), ("g", 0o600)] {
            assert_eq!(mode(&tree.join(p)), m, "{p}");
        }
        // The engine's directory, at open.
        let sessions = dir.path().join("sessions");
        std::fs::create_dir_all(&sessions).unwrap();
        set(&sessions, 0o755);
        Embedded::open(&sessions).unwrap();
        assert_eq!(mode(&sessions), 0o700);
        // (Files the engine creates later are private through the binary's umask:
        // checked against a running node in tests/persistence.rs.)
    }

    fn rec(sid: SessionId, expiry: u64) -> Record {
        Record {
            sid,
            expiry,
            bytes: vec![sid as u8; 40],
        }
    }

    fn all(b: &Embedded) -> Vec<Record> {
        let mut v = Vec::new();
        b.load_all(&mut |r| {
            v.push(r);
            Ok(())
        })
        .unwrap();
        v.sort_by_key(|r| r.sid);
        v
    }

    #[test]
    fn batches_survive_a_reopen_and_expired_records_go() {
        let dir = tempfile::tempdir().unwrap();
        {
            let b = Embedded::open(dir.path()).unwrap();
            b.write_batch(&Batch {
                puts: vec![rec(1, 100), rec(-5, 200), rec(3, 300)],
                deletes: vec![],
            })
            .unwrap();
            b.write_batch(&Batch {
                puts: vec![rec(1, 150)],
                deletes: vec![3, 77],
            })
            .unwrap();
        }
        let b = Embedded::open(dir.path()).unwrap();
        assert_eq!(all(&b), vec![rec(-5, 200), rec(1, 150)]);
        assert_eq!(b.load_one(1).unwrap(), Some(rec(1, 150)));
        assert_eq!(b.load_one(3).unwrap(), None);
        assert_eq!(b.delete_expired(160).unwrap(), 1);
        assert_eq!(all(&b), vec![rec(-5, 200)]);
    }
}
