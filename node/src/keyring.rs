//! The cluster keys a node holds, the key file format, and the watcher that reloads the
//! file without a restart (key rotation).
//!
//! # Key file
//! Either a single secret (the whole file, whitespace ignored — around it, and inside a
//! text key wrapped over lines —, at least 16 bytes) — its id is [`DEFAULT_KEY_ID`] — or
//! several keys with ids:
//!
//! ```text
//! tribe-keys v1
//! # comment lines and blank lines are ignored
//! primary k2
//! key k1 4f1c…(the old secret)
//! key k2 9a07…(the new secret)
//! ```
//! A node dials with the primary key and accepts a connection made with any key of the
//! file: the dialer names its key in the clear (a fingerprint derived from the key, see
//! [`ClusterKey::fingerprint`]) and the acceptor picks that key. Rotation is then: add the
//! new key, wait until every node has loaded it, make it primary, wait again, drop the old
//! one. Connections already set up keep their per-connection keys across a change.
//!
//! The watcher polls the file every few seconds (Kubernetes replaces a mounted Secret by
//! swapping a symlink, which a poll of the content sees). A file that no longer parses is
//! ignored with a warning: the keys in use stay.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::crypto::ClusterKey;

/// First line of the multi-key format.
pub const HEADER: &str = "tribe-keys v1";
/// Id of the key of a single-key file (and of the `--insecure` key).
pub const DEFAULT_KEY_ID: &str = "default";
/// Shortest secret accepted.
pub const MIN_SECRET_LEN: usize = 16;
/// How often the key file is checked for changes.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// A key file that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyFileError {
    /// The file holds no key.
    #[error("the file holds no key")]
    Empty,
    /// A secret shorter than [`MIN_SECRET_LEN`].
    #[error("key {0:?}: key must be at least 16 bytes")]
    Short(String),
    /// A line of the multi-key format that is neither `primary`, `key`, a comment nor blank.
    #[error("line {0}: expected `primary <id>` or `key <id> <secret>`")]
    Syntax(usize),
    /// An id with characters other than letters, digits, `.`, `_`, `-` (or over 64 long).
    #[error("line {0}: invalid key id {1:?} (letters, digits, '.', '_', '-'; at most 64)")]
    BadId(usize, String),
    /// The same id twice.
    #[error("key id {0:?} appears twice")]
    Duplicate(String),
    /// No `primary` line, or it names a key that is not in the file.
    #[error("the primary key {0:?} is not in the file")]
    NoPrimary(String),
}

/// One key and its id.
#[derive(Debug, Clone)]
pub struct KeyEntry {
    /// The id given in the file.
    pub id: String,
    /// The key.
    pub key: ClusterKey,
}

/// The keys loaded from one version of the key file.
#[derive(Debug, Clone)]
pub struct KeySet {
    keys: Vec<KeyEntry>,
    primary: usize,
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl KeySet {
    /// One key, with id [`DEFAULT_KEY_ID`].
    pub fn single(key: ClusterKey) -> Self {
        KeySet {
            keys: vec![KeyEntry {
                id: DEFAULT_KEY_ID.into(),
                key,
            }],
            primary: 0,
        }
    }

    /// A set of `entries` dialing with the one whose id is `primary` (`None` when there
    /// is no such entry, or ids repeat): for embedders that do not use a key file.
    pub fn from_entries(entries: Vec<KeyEntry>, primary: &str) -> Option<Self> {
        let idx = entries.iter().position(|e| e.id == primary)?;
        let mut ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        (ids.len() == entries.len()).then_some(KeySet {
            keys: entries,
            primary: idx,
        })
    }

    /// The `--insecure` key set (a well-known key: no confidentiality, no authentication).
    pub fn insecure() -> Self {
        Self::single(ClusterKey::insecure())
    }

    /// Parses a key file (either format, see the module docs).
    pub fn parse(raw: &[u8]) -> Result<Self, KeyFileError> {
        let text = std::str::from_utf8(raw).ok();
        let multi = text.is_some_and(|t| t.lines().next().map(str::trim) == Some(HEADER));
        if !multi {
            // A text key: every ASCII whitespace character is dropped, inside too (a
            // base64 key wrapped over lines, a trailing newline), which is how the
            // operator reads it when it rewrites the file into the multi-key format for a
            // rotation: both derive the same key. A binary key (not UTF-8) is taken
            // as is, only trimmed.
            let secret: Vec<u8> = match text {
                Some(_) => raw
                    .iter()
                    .copied()
                    .filter(|b| !b.is_ascii_whitespace())
                    .collect(),
                None => raw.trim_ascii().to_vec(),
            };
            if secret.is_empty() {
                return Err(KeyFileError::Empty);
            }
            if secret.len() < MIN_SECRET_LEN {
                return Err(KeyFileError::Short(DEFAULT_KEY_ID.into()));
            }
            return Ok(Self::single(ClusterKey::new(&secret)));
        }
        let mut keys: Vec<KeyEntry> = Vec::new();
        let mut primary: Option<String> = None;
        for (i, line) in text.unwrap_or_default().lines().enumerate().skip(1) {
            let n = i + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut words = line.split_whitespace();
            match (words.next(), words.next(), words.next(), words.next()) {
                (Some("primary"), Some(id), None, None) => {
                    if !valid_id(id) {
                        return Err(KeyFileError::BadId(n, id.into()));
                    }
                    primary = Some(id.into());
                }
                (Some("key"), Some(id), Some(secret), None) => {
                    if !valid_id(id) {
                        return Err(KeyFileError::BadId(n, id.into()));
                    }
                    if secret.len() < MIN_SECRET_LEN {
                        return Err(KeyFileError::Short(id.into()));
                    }
                    if keys.iter().any(|k| k.id == id) {
                        return Err(KeyFileError::Duplicate(id.into()));
                    }
                    keys.push(KeyEntry {
                        id: id.into(),
                        key: ClusterKey::new(secret.as_bytes()),
                    });
                }
                _ => return Err(KeyFileError::Syntax(n)),
            }
        }
        if keys.is_empty() {
            return Err(KeyFileError::Empty);
        }
        // Without a `primary` line, a file of one key means that key.
        let primary = match primary {
            Some(p) => p,
            None if keys.len() == 1 => keys[0].id.clone(),
            None => return Err(KeyFileError::NoPrimary(String::new())),
        };
        let idx = keys
            .iter()
            .position(|k| k.id == primary)
            .ok_or(KeyFileError::NoPrimary(primary))?;
        Ok(KeySet { keys, primary: idx })
    }

    /// Renders the multi-key format (what the operator writes into the Secret).
    pub fn render(primary: &str, keys: &[(&str, &str)]) -> String {
        let mut out = format!("{HEADER}\nprimary {primary}\n");
        for (id, secret) in keys {
            out.push_str(&format!("key {id} {secret}\n"));
        }
        out
    }

    /// The key this node dials with.
    pub fn primary(&self) -> &KeyEntry {
        &self.keys[self.primary]
    }

    /// The key whose fingerprint is `fp`, if this node holds it.
    pub fn by_fingerprint(&self, fp: &[u8; crate::crypto::FINGERPRINT_LEN]) -> Option<&KeyEntry> {
        self.keys.iter().find(|k| &k.key.fingerprint() == fp)
    }

    /// Every key (primary included).
    pub fn entries(&self) -> &[KeyEntry] {
        &self.keys
    }

    /// The ids, primary first.
    pub fn ids(&self) -> Vec<String> {
        let mut ids = vec![self.primary().id.clone()];
        ids.extend(
            self.keys
                .iter()
                .filter(|k| k.id != self.primary().id)
                .map(|k| k.id.clone()),
        );
        ids
    }

    /// Whether these are the `--insecure` keys.
    pub fn is_insecure(&self) -> bool {
        self.primary().key.is_insecure()
    }

    /// Whether two sets hold the same keys with the same primary.
    pub fn same_as(&self, other: &KeySet) -> bool {
        self.primary().id == other.primary().id
            && self.keys.len() == other.keys.len()
            && self
                .keys
                .iter()
                .zip(&other.keys)
                .all(|(a, b)| a.id == b.id && a.key.fingerprint() == b.key.fingerprint())
    }
}

/// How long a peer's refusal of our keys is remembered (a later success clears it).
const REFUSAL_MEMORY: Duration = Duration::from_secs(30);

/// The node's current keys (shared, replaced by the watcher) and which peers refuse them.
#[derive(Debug, Clone)]
pub struct Keys {
    tx: Arc<watch::Sender<Arc<KeySet>>>,
    /// Peer addresses whose last handshake failed authentication, and when.
    refused: Arc<Mutex<HashMap<SocketAddr, Instant>>>,
    /// Successful authentications since start.
    authenticated: Arc<std::sync::atomic::AtomicU64>,
}

impl Keys {
    /// A handle holding `set`.
    pub fn new(set: KeySet) -> Self {
        let (tx, _) = watch::channel(Arc::new(set));
        Keys {
            tx: Arc::new(tx),
            refused: Default::default(),
            authenticated: Default::default(),
        }
    }

    /// The keys in use now.
    pub fn current(&self) -> Arc<KeySet> {
        self.tx.borrow().clone()
    }

    /// Replaces the keys; returns whether they changed.
    pub fn replace(&self, set: KeySet) -> bool {
        self.tx.send_if_modified(|cur| {
            if cur.same_as(&set) {
                false
            } else {
                *cur = Arc::new(set);
                true
            }
        })
    }

    /// Notified on every change.
    pub fn subscribe(&self) -> watch::Receiver<Arc<KeySet>> {
        self.tx.subscribe()
    }

    /// Records that the peer at `addr` refused our keys (or we refused its).
    pub fn record_refusal(&self, addr: SocketAddr) {
        self.refused.lock().insert(addr, Instant::now());
    }

    /// Records a successful authentication with the peer at `addr`.
    pub fn record_success(&self, addr: SocketAddr) {
        self.refused.lock().remove(&addr);
        self.authenticated
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Forgets a refusal by `addr` (nothing answers TCP there any more).
    pub fn forget(&self, addr: SocketAddr) {
        self.refused.lock().remove(&addr);
    }

    /// Whether the key file (as last loaded) holds the key with fingerprint `fp`.
    pub fn holds(&self, fp: &[u8; crate::crypto::FINGERPRINT_LEN]) -> bool {
        self.current().by_fingerprint(fp).is_some()
    }

    /// Completes once the key file no longer holds the key with fingerprint `fp` (at
    /// once if it does not now): a connection made with that key closes then, so a key
    /// removed after a leak stops carrying sessions within one poll of the file.
    pub async fn dropped(&self, fp: [u8; crate::crypto::FINGERPRINT_LEN]) {
        let mut rx = self.tx.subscribe();
        loop {
            if rx.borrow_and_update().by_fingerprint(&fp).is_none() {
                return;
            }
            if rx.changed().await.is_err() {
                // The sender lives as long as any `Keys`: never dropped while we run.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Peers that refused our keys within the last [`REFUSAL_MEMORY`].
    pub fn refusing_peers(&self) -> Vec<SocketAddr> {
        let mut r = self.refused.lock();
        r.retain(|_, t| t.elapsed() < REFUSAL_MEMORY);
        let mut v: Vec<_> = r.keys().copied().collect();
        v.sort();
        v
    }

    /// The key ids held (primary first) and the peers refusing them (the `/cluster` view).
    pub fn status(&self) -> (Vec<String>, Vec<SocketAddr>) {
        (self.current().ids(), self.refusing_peers())
    }
}

impl From<ClusterKey> for Keys {
    fn from(key: ClusterKey) -> Self {
        Keys::new(KeySet::single(key))
    }
}

/// Reads and parses the key file at `path`.
pub fn load(path: &Path) -> Result<KeySet, String> {
    let raw = std::fs::read(path).map_err(|e| e.to_string())?;
    KeySet::parse(&raw).map_err(|e| e.to_string())
}

/// Polls `path` every `interval` and replaces `keys` when the file's keys change, until
/// `stop`. A missing or unparsable file keeps the keys in use (and warns once per change).
pub async fn watch_file(path: PathBuf, keys: Keys, interval: Duration, stop: CancellationToken) {
    let mut last_raw: Option<Vec<u8>> = std::fs::read(&path).ok();
    let mut last_error: Option<String> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.cancelled() => return,
        }
        let raw = match tokio::fs::read(&path).await {
            Ok(r) => r,
            Err(e) => {
                let msg = e.to_string();
                if last_error.as_deref() != Some(&msg) {
                    tracing::warn!(path = %path.display(), error = %msg, "cannot read the key file; keeping the keys in use");
                    last_error = Some(msg);
                }
                continue;
            }
        };
        if last_raw.as_deref() == Some(&raw[..]) {
            continue;
        }
        last_raw = Some(raw.clone());
        match KeySet::parse(&raw) {
            Ok(set) => {
                last_error = None;
                let ids = set.ids();
                if keys.replace(set) {
                    tracing::info!(primary = %ids[0], keys = ?ids, "cluster keys reloaded");
                }
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "the key file changed but cannot be used; keeping the keys in use");
                last_error = Some(e.to_string());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_key_files_still_load() {
        let s = KeySet::parse(b"  0123456789abcdef-legacy\n").unwrap();
        assert_eq!(s.ids(), vec![DEFAULT_KEY_ID]);
        assert_eq!(
            s.primary().key.fingerprint(),
            ClusterKey::new(b"0123456789abcdef-legacy").fingerprint()
        );
        assert_eq!(
            KeySet::parse(b"tiny\n").unwrap_err(),
            KeyFileError::Short(DEFAULT_KEY_ID.into())
        );
        assert_eq!(KeySet::parse(b" \n").unwrap_err(), KeyFileError::Empty);
    }

    /// A wrapped (or space-grouped) text key is one secret without its whitespace, the
    /// same key the operator writes into the multi-key file when a rotation starts
    /// (`key default <secret>`): nodes on either file agree on it.
    #[test]
    fn wrapped_single_keys_load_as_the_operator_rewrites_them() {
        let wrapped = b"  QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNk\n ZWZnaGlqa2xtbm9w\r\n\n";
        let unwrapped = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9w";
        let single = KeySet::parse(wrapped).unwrap();
        let fp = ClusterKey::new(unwrapped.as_bytes()).fingerprint();
        assert_eq!(single.primary().key.fingerprint(), fp);
        let rotated = KeySet::render(
            "default",
            &[(DEFAULT_KEY_ID, unwrapped), ("k1", "0123456789abcdef-new")],
        );
        let multi = KeySet::parse(rotated.as_bytes()).unwrap();
        assert_eq!(multi.primary().key.fingerprint(), fp);
        assert_eq!(
            KeySet::parse(b"0123 4567\t89ab cdef")
                .unwrap()
                .primary()
                .key
                .fingerprint(),
            ClusterKey::new(b"0123456789abcdef").fingerprint()
        );
        // Whitespace does not count toward the length.
        assert_eq!(
            KeySet::parse(b"0123 4567 89ab\n").unwrap_err(),
            KeyFileError::Short(DEFAULT_KEY_ID.into())
        );
        // A binary key keeps its inner bytes (only trimmed).
        let binary = b"\xff\xfe 0123456789abcdef \x80\n";
        assert_eq!(
            KeySet::parse(binary).unwrap().primary().key.fingerprint(),
            ClusterKey::new(&binary[..binary.len() - 1]).fingerprint()
        );
    }

    #[test]
    fn multi_key_files_name_a_primary() {
        let text = KeySet::render(
            "k2",
            &[
                ("k1", "0123456789abcdef-one"),
                ("k2", "0123456789abcdef-two"),
            ],
        );
        let s = KeySet::parse(text.as_bytes()).unwrap();
        assert_eq!(s.ids(), vec!["k2", "k1"]);
        let fp1 = ClusterKey::new(b"0123456789abcdef-one").fingerprint();
        assert_eq!(s.by_fingerprint(&fp1).unwrap().id, "k1");
        assert!(s.by_fingerprint(&[0; 8]).is_none());
        // One key and no primary line: that key.
        let one = KeySet::parse(b"tribe-keys v1\n# c\n\nkey a 0123456789abcdef\n").unwrap();
        assert_eq!(one.ids(), vec!["a"]);
    }

    #[test]
    fn bad_multi_key_files_are_refused() {
        let bad = |t: &str| KeySet::parse(t.as_bytes()).unwrap_err();
        assert_eq!(bad("tribe-keys v1\n"), KeyFileError::Empty);
        assert_eq!(
            bad("tribe-keys v1\nkey a 0123456789abcdef\nkey b 0123456789abcdef\n"),
            KeyFileError::NoPrimary(String::new())
        );
        assert_eq!(
            bad("tribe-keys v1\nprimary c\nkey a 0123456789abcdef\n"),
            KeyFileError::NoPrimary("c".into())
        );
        assert_eq!(
            bad("tribe-keys v1\nkey a short\n"),
            KeyFileError::Short("a".into())
        );
        assert_eq!(bad("tribe-keys v1\nfoo\n"), KeyFileError::Syntax(2));
        assert_eq!(
            bad("tribe-keys v1\nkey a/b 0123456789abcdef\n"),
            KeyFileError::BadId(2, "a/b".into())
        );
        assert_eq!(
            bad("tribe-keys v1\nkey a 0123456789abcdef\nkey a 0123456789abcdef\n"),
            KeyFileError::Duplicate("a".into())
        );
    }

    #[test]
    fn replace_reports_changes_only() {
        let keys = Keys::new(KeySet::parse(b"0123456789abcdef-legacy").unwrap());
        assert!(!keys.replace(KeySet::parse(b"0123456789abcdef-legacy\n").unwrap()));
        assert!(keys.replace(KeySet::parse(b"0123456789abcdef-other").unwrap()));
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        keys.record_refusal(a);
        assert_eq!(keys.refusing_peers(), vec![a]);
        keys.record_success(a);
        assert!(keys.refusing_peers().is_empty());
    }

    #[test]
    fn status_lists_the_keys_and_the_refusing_peers() {
        let keys = Keys::new(KeySet::parse(b"0123456789abcdef-legacy").unwrap());
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        keys.record_refusal(a);
        assert_eq!(keys.status(), (vec![DEFAULT_KEY_ID.to_string()], vec![a]));
        keys.record_success(a);
        assert!(keys.status().1.is_empty());
    }

    #[tokio::test]
    async fn the_watcher_picks_up_a_symlink_swap() {
        let dir = tempfile::tempdir().unwrap();
        let v1 = dir.path().join("v1");
        let v2 = dir.path().join("v2");
        std::fs::write(&v1, "0123456789abcdef-first").unwrap();
        std::fs::write(
            &v2,
            KeySet::render(
                "b",
                &[
                    ("a", "0123456789abcdef-first"),
                    ("b", "0123456789abcdef-second"),
                ],
            ),
        )
        .unwrap();
        let link = dir.path().join("cluster.key");
        std::os::unix::fs::symlink(&v1, &link).unwrap();
        let keys = Keys::new(load(&link).unwrap());
        let mut rx = keys.subscribe();
        let stop = CancellationToken::new();
        let task = tokio::spawn(watch_file(
            link.clone(),
            keys.clone(),
            Duration::from_millis(20),
            stop.clone(),
        ));
        // Garbage first: ignored, the keys stay.
        let tmp = dir.path().join("tmp");
        std::fs::write(dir.path().join("v0"), "tribe-keys v1\nnonsense\n").unwrap();
        std::os::unix::fs::symlink(dir.path().join("v0"), &tmp).unwrap();
        std::fs::rename(&tmp, &link).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(keys.current().ids(), vec![DEFAULT_KEY_ID]);
        std::os::unix::fs::symlink(&v2, &tmp).unwrap();
        std::fs::rename(&tmp, &link).unwrap();
        tokio::time::timeout(
            Duration::from_secs(5),
            rx.wait_for(|s| s.primary().id == "b"),
        )
        .await
        .expect("the watcher saw the new file")
        .unwrap();
        assert_eq!(keys.current().ids(), vec!["b", "a"]);
        stop.cancel();
        task.await.unwrap();
    }
}
