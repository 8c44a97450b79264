//! Persistence through the store: flush, restart, swap-out, set-aside (the embedded
//! backend on a temporary directory).

use std::sync::Arc;

use bytes::Bytes;

use super::{embedded::Embedded, flusher, load, Backend};
use crate::metrics::Metrics;
use crate::model::{Delta, SessionId, Stamp};
use crate::replication::antientropy;
use crate::store::Store;

fn write(store: &Store, sid: SessionId, counter: u64, v: &str, expiry: u64) {
    store.apply_at(
        &Delta {
            sid,
            stamp: Stamp { counter, origin: 1 },
            base: counter - 1,
            set: vec![("a".into(), Bytes::copy_from_slice(v.as_bytes()))],
            removed: vec![],
            expiry: Some(expiry),
            invalidate: false,
        },
        1_000,
    );
}

fn metrics() -> Metrics {
    Metrics::new(&mut prometheus_client::registry::Registry::default())
}

fn open(dir: &std::path::Path) -> Arc<dyn Backend> {
    Arc::new(Embedded::open(dir).unwrap())
}

#[test]
fn a_restarted_store_holds_what_was_flushed_with_its_stamps() {
    let dir = tempfile::tempdir().unwrap();
    let far = crate::store::unix_now() + 3600;
    let fingerprints: Vec<u64>;
    {
        let b = open(dir.path());
        let store = super::store_over(&b);
        for sid in 0..50 {
            write(&store, sid, 1, "x", far);
            write(&store, sid, 2, "y", far);
        }
        write(&store, 99, 1, "old", 1); // expired
        assert_eq!(store.dirty().unwrap().len(), 51);
        flusher::flush(&store, &*b, &metrics()).unwrap();
        assert!(store.dirty().unwrap().is_empty());
        fingerprints = (0..50)
            .map(|s| store.with(s, |s| s.fingerprint()).unwrap())
            .collect();
        // Invalidated after the flush and flushed: gone from disk too.
        store.remove(7);
        flusher::flush(&store, &*b, &metrics()).unwrap();
    }
    let b = open(dir.path());
    let store = load(&b, 0, crate::store::unix_now()).unwrap();
    assert_eq!(store.len(), 49, "expired dropped, removed deleted");
    for sid in (0..50).filter(|s| *s != 7) {
        assert_eq!(
            store.with(sid, |s| s.fingerprint()),
            Some(fingerprints[sid as usize]),
            "same stamps, same fingerprint"
        );
    }
    assert_eq!(
        b.load_one(99).unwrap(),
        None,
        "the expired record was deleted at load"
    );
}

#[test]
fn swapped_out_sessions_are_read_back_and_still_in_the_digest() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path());
    let far = crate::store::unix_now() + 3600;
    let store = super::store_over(&b);
    let twin = Store::new();
    for sid in 0..100 {
        write(&store, sid, 1, "v", far);
        write(&twin, sid, 1, "v", far);
    }
    let now = crate::store::unix_now();
    let all = |_: SessionId| true;
    let digest = antientropy::digest(&store, now, 0, &all);
    // Nothing is swapped out while dirty.
    assert_eq!(store.swap_out(10), 0);
    flusher::flush(&store, &*b, &metrics()).unwrap();
    assert_eq!(store.swap_out(10), 90);
    assert_eq!(
        (store.resident(), store.swapped(), store.len(), store.live()),
        (10, 90, 100, 100)
    );
    // The digest is unchanged: a replica holding the same sessions sees no difference.
    assert_eq!(antientropy::digest(&store, now, 0, &all), digest);
    assert_eq!(digest, antientropy::digest(&twin, now, 0, &all));
    // A state for a peer is read from disk without bringing the session back.
    let out: Vec<SessionId> = (0..100)
        .filter(|s| store.peek(*s, |_| ()).is_none())
        .collect();
    let sid = out[0];
    assert_eq!(store.state(sid), twin.state(sid));
    assert_eq!(store.resident(), 10);
    // An access reads it back; a replicated write to another one applies on top.
    assert_eq!(
        store.with(sid, |s| s.get("a").cloned()),
        Some(Some(Bytes::from_static(b"v")))
    );
    write(&store, out[1], 2, "w", far);
    assert_eq!(store.with(out[1], |s| s.version), Some(2));
    assert_eq!((store.resident(), store.swapped()), (12, 88));
}

#[test]
fn unreadable_data_is_set_aside() {
    let dir = tempfile::tempdir().unwrap();
    let sessions = dir.path().join("sessions");
    std::fs::create_dir_all(&sessions).unwrap();
    let aside = super::set_aside(&sessions).unwrap();
    assert!(!sessions.exists() && aside.exists());
    let name = aside.file_name().unwrap().to_string_lossy().to_string();
    assert!(name.starts_with("sessions.corrupt-20"), "{name}");
}

/// Set-aside copies do not pile up: setting another aside keeps the newest
/// `KEEP_SET_ASIDE` and removes the older ones (and nothing else beside them).
#[test]
fn only_the_newest_set_aside_copies_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let sessions = dir.path().join("sessions");
    // Older copies, as earlier starts left them (names sort by time).
    for stamp in [
        "2024-01-01T000000Z",
        "2024-02-01T000000Z",
        "2024-03-01T000000Z",
        "2024-04-01T000000.5Z",
    ] {
        let old = dir.path().join(format!("sessions.corrupt-{stamp}"));
        std::fs::create_dir_all(old.join("keyspaces")).unwrap();
        std::fs::write(old.join("keyspaces/x"), b"data").unwrap();
    }
    std::fs::create_dir_all(dir.path().join("other")).unwrap();
    std::fs::create_dir_all(&sessions).unwrap();
    let newest = super::set_aside(&sessions).unwrap();
    let mut left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left.len(), super::KEEP_SET_ASIDE + 1, "{left:?}");
    assert!(left.contains(&"other".to_string()), "{left:?}");
    assert!(newest.exists());
    assert!(
        left.contains(&"sessions.corrupt-2024-03-01T000000Z".to_string()),
        "{left:?}"
    );
    assert!(
        left.contains(&"sessions.corrupt-2024-04-01T000000.5Z".to_string()),
        "{left:?}"
    );
    assert!(
        !left
            .iter()
            .any(|n| n.contains("2024-01") || n.contains("2024-02")),
        "{left:?}"
    );
}
