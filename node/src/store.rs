//! The versioned, in-memory session table: a last-writer-wins map per session.
//!
//! Each attribute carries the [`Stamp`] of the write that set or removed it; a merge keeps
//! the higher stamp per attribute. Merging is commutative, associative and idempotent, so
//! deltas and state-transfer chunks may arrive in any order, twice, or interleaved, and
//! every replica that has seen the same writes holds the same session. Two writes to
//! *different* attributes of one session never overwrite each other. See REPLICATION.md.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use bytes::Bytes;
use compact_str::CompactString;
use dashmap::DashMap;

use crate::model::{AttrState, Delta, SessionId, SessionState, Stamp};
use crate::persist::dirty::Dirty;

pub use crate::clock::unix_now;

/// Where swapped-out sessions live (persistence's backend, whatever its format): the store
/// reads one back when it is accessed. The store never calls it while holding a lock of
/// its own, so a slow read (a database round trip) stalls only the access that needs it.
pub trait ColdTier: Send + Sync + std::fmt::Debug {
    /// The stored state of `sid`: `Ok(None)` when it is not stored; `Err` says why it
    /// cannot be read.
    fn read(&self, sid: SessionId) -> Result<Option<SessionState>, String>;
}

/// How many times an access reads a swapped-out session again when, between its read and
/// its insert, the session was faulted in, changed, flushed and swapped out once more by
/// others (each retry needs a whole such cycle to race it again).
const FAULT_IN_RETRIES: usize = 8;

/// How long an invalidated session is remembered, so late deltas cannot resurrect it.
pub const TOMBSTONE_SECS: u64 = 300;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Attr {
    stamp: Stamp,
    value: Option<Bytes>,
}

/// One session replica.
#[derive(Debug, Clone, Default)]
pub struct Session {
    /// Highest stamp counter seen: the session's version.
    pub version: u64,
    /// Expiry, unix seconds (extended by accesses; the max of all replicas wins).
    pub expiry: u64,
    /// Set once the session is invalidated.
    pub deleted: Option<Stamp>,
    /// Attributes sorted by name. Sessions hold a handful of attributes, so a sorted
    /// vector (names of up to 24 bytes inline, no hash table, exactly sized) costs ~70 B
    /// per attribute where a `HashMap<String, _>` costs ~350 B for the first one: at
    /// 100,000 sessions that is the difference between meeting the memory target or not.
    attrs: Vec<(CompactString, Attr)>,
    /// Last local access or replicated update (unix seconds): non-owned copies in backup
    /// mode are evicted only after a while without either.
    pub last_local_access: u64,
    /// When a write (local or replicated) last changed this copy (unix seconds, this
    /// node's clock): anti-entropy leaves sessions alone while deltas may be in flight.
    pub changed_at: u64,
    /// Every write counter up to this one has been seen (counters are dense: a write at
    /// version `v` is stamped `v + 1`, so a hole means a missed delta).
    contiguous: u64,
    /// Counters seen above `contiguous` (normally empty; briefly not when deltas from
    /// different links overtake each other).
    ahead: Vec<u64>,
}

/// What applying a delta did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// At least one attribute changed.
    Changed,
    /// Everything in it was already known (a duplicate or stale delta).
    Stale,
}

impl Session {
    /// Live attributes as (name, JSON bytes), by name.
    pub fn live_attrs(&self) -> impl Iterator<Item = (&str, &Bytes)> {
        self.attrs
            .iter()
            .filter_map(|(k, a)| a.value.as_ref().map(|v| (k.as_str(), v)))
    }

    fn find(&self, name: &str) -> Result<usize, usize> {
        self.attrs.binary_search_by(|(k, _)| k.as_str().cmp(name))
    }

    /// The JSON bytes of one live attribute.
    pub fn get(&self, name: &str) -> Option<&Bytes> {
        self.find(name)
            .ok()
            .and_then(|i| self.attrs[i].1.value.as_ref())
    }

    fn note_counter(&mut self, c: u64) {
        if c <= self.contiguous {
            return;
        }
        if c == self.contiguous.saturating_add(1) {
            self.contiguous = c;
            self.ahead.sort_unstable();
            while let Some(pos) = self
                .ahead
                .iter()
                .position(|&x| x <= self.contiguous.saturating_add(1))
            {
                let x = self.ahead.swap_remove(pos);
                self.contiguous = self.contiguous.max(x);
                self.ahead.sort_unstable();
            }
        } else if !self.ahead.contains(&c) {
            self.ahead.push(c);
        }
    }

    /// Every write up to this version has been applied here (`version`, unless a delta
    /// overtook an older one that has not arrived yet). What read-your-writes compares
    /// with the version a client saw: the newest write alone is not enough, the client
    /// also saw every earlier one.
    pub fn seen_through(&self) -> u64 {
        self.contiguous.min(self.version)
    }

    /// Whether some write below the current version has not been seen here.
    pub fn has_gap(&self) -> bool {
        self.contiguous < self.version
    }

    fn merge_attr(&mut self, name: &str, stamp: Stamp, value: Option<Bytes>) -> bool {
        if let Some(d) = self.deleted {
            if stamp <= d {
                return false;
            }
        }
        self.version = self.version.max(stamp.counter);
        match self.find(name) {
            Ok(i) if self.attrs[i].1.stamp >= stamp => false,
            Ok(i) => {
                self.attrs[i].1 = Attr { stamp, value };
                true
            }
            Err(i) => {
                // Grow by one while small (most sessions never have more than a few
                // attributes), geometrically beyond.
                if self.attrs.len() == self.attrs.capacity() {
                    self.attrs.reserve_exact((self.attrs.len() / 2).max(1));
                }
                self.attrs
                    .insert(i, (CompactString::from(name), Attr { stamp, value }));
                true
            }
        }
    }

    /// Applies one delta (LWW per attribute).
    pub fn apply(&mut self, d: &Delta) -> Applied {
        let mut changed = false;
        self.note_counter(d.stamp.counter);
        if d.invalidate {
            if self.deleted.is_none_or(|s| s < d.stamp) {
                self.deleted = Some(d.stamp);
                self.attrs.retain(|(_, a)| a.stamp > d.stamp);
                changed = true;
            }
            self.version = self.version.max(d.stamp.counter);
        }
        for (k, v) in &d.set {
            changed |= self.merge_attr(k, d.stamp, Some(v.clone()));
        }
        for k in &d.removed {
            changed |= self.merge_attr(k, d.stamp, None);
        }
        if let Some(e) = d.expiry {
            if e > self.expiry {
                self.expiry = e;
                changed = true;
            }
        }
        if d.stamp.counter > self.version {
            self.version = d.stamp.counter;
            changed = true;
        }
        if changed {
            Applied::Changed
        } else {
            Applied::Stale
        }
    }

    /// Merges a whole copy from another replica.
    pub fn merge(&mut self, s: &SessionState) -> Applied {
        let mut changed = false;
        if let Some(d) = s.deleted {
            if self.deleted.is_none_or(|x| x < d) {
                self.deleted = Some(d);
                self.attrs.retain(|(_, a)| a.stamp > d);
                changed = true;
            }
        }
        for a in &s.attrs {
            changed |= self.merge_attr(&a.name, a.stamp, a.value.clone());
        }
        if s.expiry > self.expiry {
            self.expiry = s.expiry;
            changed = true;
        }
        if s.version > self.version {
            self.version = s.version;
            changed = true;
        }
        // A whole copy from a replica stands for everything it had seen.
        if s.version > self.contiguous {
            self.contiguous = s.version;
            self.ahead.retain(|&x| x > s.version);
        }
        if changed {
            Applied::Changed
        } else {
            Applied::Stale
        }
    }

    /// A whole copy for the wire.
    pub fn to_state(&self, sid: SessionId) -> SessionState {
        SessionState {
            sid,
            version: self.version,
            expiry: self.expiry,
            deleted: self.deleted,
            attrs: self
                .attrs
                .iter()
                .map(|(k, a)| AttrState {
                    name: k.to_string(),
                    stamp: a.stamp,
                    value: a.value.clone(),
                })
                .collect(),
        }
    }

    /// A hash of everything merging decides on: the version, the invalidation stamp and
    /// every attribute's name and stamp (values are determined by their stamps). Two
    /// replicas that have seen the same writes have the same fingerprint; the expiry is
    /// left out (a max-register each node keeps on its own clock, refreshed by touches).
    pub fn fingerprint(&self) -> u64 {
        use xxhash_rust::xxh3::Xxh3;
        let mut h = Xxh3::new();
        h.update(&self.version.to_le_bytes());
        if let Some(d) = self.deleted {
            h.update(&[1]);
            h.update(&d.counter.to_le_bytes());
            h.update(&d.origin.to_le_bytes());
        }
        for (name, a) in &self.attrs {
            h.update(&(name.len() as u32).to_le_bytes());
            h.update(name.as_bytes());
            h.update(&a.stamp.counter.to_le_bytes());
            h.update(&a.stamp.origin.to_le_bytes());
            h.update(&[a.value.is_some() as u8]);
        }
        h.digest()
    }

    /// Whether the session is gone (invalidated or expired at `now`).
    pub fn is_dead(&self, now: u64) -> bool {
        self.deleted.is_some() || self.expiry <= now
    }

    /// The delta that turns this replica's live attributes into `data` (JSON bytes per
    /// attribute), stamped `stamp`; `None` when nothing but possibly the expiry changed.
    pub fn diff(
        &self,
        sid: SessionId,
        data: &HashMap<String, Bytes>,
        stamp: Stamp,
    ) -> Option<Delta> {
        let mut set = Vec::new();
        let mut removed = Vec::new();
        for (k, v) in data {
            if self.get(k) != Some(v) {
                set.push((k.clone(), v.clone()));
            }
        }
        for (k, _) in self.live_attrs() {
            if !data.contains_key(k) {
                removed.push(k.to_string());
            }
        }
        self.delta(sid, stamp, set, removed)
    }

    /// The delta of a request that loaded the attributes `loaded` and now holds `data`,
    /// as a write on top of this replica: only what the request itself changed. An
    /// attribute the request did not touch is left alone even when this replica's value
    /// moved on after the load (a concurrent write from another node arrived meanwhile),
    /// so that write is not undone; diffing against the replica instead would send the
    /// stale loaded value back, or remove an attribute that arrived after the load.
    pub fn diff_from(
        &self,
        sid: SessionId,
        loaded: &HashMap<String, Bytes>,
        data: &HashMap<String, Bytes>,
        stamp: Stamp,
    ) -> Option<Delta> {
        let mut set = Vec::new();
        let mut removed = Vec::new();
        for (k, v) in data {
            if loaded.get(k) != Some(v) && self.get(k) != Some(v) {
                set.push((k.clone(), v.clone()));
            }
        }
        for k in loaded.keys() {
            if !data.contains_key(k) && self.get(k).is_some() {
                removed.push(k.clone());
            }
        }
        self.delta(sid, stamp, set, removed)
    }

    fn delta(
        &self,
        sid: SessionId,
        stamp: Stamp,
        mut set: Vec<(String, Bytes)>,
        mut removed: Vec<String>,
    ) -> Option<Delta> {
        if set.is_empty() && removed.is_empty() {
            return None;
        }
        set.sort_by(|a, b| a.0.cmp(&b.0));
        removed.sort();
        Some(Delta {
            sid,
            stamp,
            base: self.version,
            set,
            removed,
            expiry: None,
            invalidate: false,
        })
    }
}

/// All sessions this node holds.
#[derive(Debug, Default)]
pub struct Store {
    sessions: DashMap<SessionId, Session>,
    /// Sessions held and not invalidated, kept up to date on every insert, change and
    /// removal, so that counting them never scans the table (`GET /`, `/cluster`).
    live: std::sync::atomic::AtomicIsize,
    /// Bumped whenever a session is added to or removed from the table.
    generation: std::sync::atomic::AtomicU64,
    /// The last role counts computed by a scan, when, and for which key (see
    /// [`Store::cached`]).
    role_cache: parking_lot::Mutex<Option<(std::time::Instant, u64, [usize; 4])>>,
    /// Persistence: what changed since the last flush (`None`: memory only).
    dirty: Option<Dirty>,
    /// Where swapped-out sessions are read back from.
    cold: Option<Arc<dyn ColdTier>>,
    /// Swapped-out sessions: on disk only, with what anti-entropy and the sweeper need
    /// (a digest counts them without reading them back).
    swapped: DashMap<SessionId, Stub>,
    /// `swapped.len()`, without locking every shard (the fast path of every access).
    swapped_count: std::sync::atomic::AtomicUsize,
}

/// What stays in memory of a swapped-out session: ~40 bytes instead of the whole session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stub {
    fingerprint: u64,
    expiry: u64,
    changed_at: u64,
}

/// What anti-entropy and scans look at of a session, resident or swapped out, without
/// reading a swapped-out one back from disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// [`Session::fingerprint`].
    pub fingerprint: u64,
    /// [`Session::expiry`].
    pub expiry: u64,
    /// [`Session::changed_at`].
    pub changed_at: u64,
    /// Invalidated (a tombstone; never swapped out).
    pub deleted: bool,
}

impl Summary {
    /// [`Session::is_dead`].
    pub fn is_dead(&self, now: u64) -> bool {
        self.deleted || self.expiry <= now
    }
}

impl Session {
    /// This session's [`Summary`].
    pub fn summary(&self) -> Summary {
        Summary {
            fingerprint: self.fingerprint(),
            expiry: self.expiry,
            changed_at: self.changed_at,
            deleted: self.deleted.is_some(),
        }
    }
}

impl Store {
    /// An empty store, memory only.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store whose changes are tracked for persistence, and whose swapped-out
    /// sessions are read back from `cold`.
    pub fn persisted(cold: Arc<dyn ColdTier>) -> Self {
        Store {
            dirty: Some(Dirty::default()),
            cold: Some(cold),
            ..Self::default()
        }
    }

    /// The dirty set, when persistence is on.
    pub fn dirty(&self) -> Option<&Dirty> {
        self.dirty.as_ref()
    }

    fn mark(&self, sid: SessionId) {
        if let Some(d) = &self.dirty {
            d.mark(sid);
        }
    }

    /// Number of sessions held (live ones and recent tombstones), swapped out or not.
    pub fn len(&self) -> usize {
        self.sessions.len() + self.swapped_count.load(Relaxed)
    }

    /// Number of sessions held in memory.
    pub fn resident(&self) -> usize {
        self.sessions.len()
    }

    /// Number of sessions swapped out (on disk only).
    pub fn swapped(&self) -> usize {
        self.swapped_count.load(Relaxed)
    }

    /// Number of sessions held that are not invalidated, without a scan (an expired one
    /// counts until the next sweep, within a second or so).
    pub fn live(&self) -> usize {
        self.live.load(std::sync::atomic::Ordering::Relaxed).max(0) as usize
    }

    /// Counts computed by `scan`, reused while neither the table's set of sessions nor
    /// `key` (what else they depend on, e.g. the member view) changed, for at most `ttl`
    /// (expiry changes them too): however often the counts are asked for, a scan runs
    /// only after a change, and at least `ttl` apart when nothing changes.
    pub fn cached(
        &self,
        ttl: std::time::Duration,
        key: u64,
        scan: impl FnOnce() -> [usize; 4],
    ) -> [usize; 4] {
        let key = key ^ self.generation.load(std::sync::atomic::Ordering::Relaxed);
        let mut cache = self.role_cache.lock();
        if let Some((at, k, counts)) = *cache {
            if k == key && at.elapsed() < ttl {
                return counts;
            }
        }
        let counts = scan();
        *cache = Some((std::time::Instant::now(), key, counts));
        counts
    }

    fn adjust_live(&self, was_live: bool, is_live: bool) {
        use std::sync::atomic::Ordering::Relaxed;
        match (was_live, is_live) {
            (true, false) => {
                self.live.fetch_sub(1, Relaxed);
            }
            (false, true) => {
                self.live.fetch_add(1, Relaxed);
            }
            _ => {}
        }
    }

    /// Brings a swapped-out session back into memory (an access). The cold tier is read
    /// with no lock held; the copy is then inserted only if the session is still swapped
    /// out with the same content (its stub's fingerprint), so two accesses never both
    /// insert it and a newer copy is never replaced by an older one. When the stub changed
    /// meanwhile (faulted in, written, flushed and swapped out again by others), it is
    /// read again.
    fn fault_in(&self, sid: SessionId) {
        for attempt in 0.. {
            if self.swapped_count.load(Relaxed) == 0 {
                return;
            }
            let Some(expected) = self.swapped.get(&sid).map(|st| *st) else {
                return;
            };
            let read = self.read_back(sid).map(|state| {
                let mut s = Session::default();
                s.merge(&state);
                s
            });
            let stale = read
                .as_ref()
                .is_some_and(|s| s.fingerprint() != expected.fingerprint);
            // Under the session's shard lock from here on, without touching the cold tier.
            let dashmap::mapref::entry::Entry::Vacant(slot) = self.sessions.entry(sid) else {
                return;
            };
            let current = self.swapped.get(&sid).map(|st| *st);
            if current != Some(expected) || (stale && attempt < FAULT_IN_RETRIES) {
                if current.is_none() {
                    return; // faulted in and removed, or expired, meanwhile
                }
                drop(slot);
                continue;
            }
            self.swapped.remove(&sid);
            self.swapped_count.fetch_sub(1, Relaxed);
            match read {
                Some(mut s) => {
                    s.changed_at = expected.changed_at;
                    s.last_local_access = unix_now();
                    slot.insert(s);
                }
                None => {
                    // Lost from disk: forget it here (peers still hold it; anti-entropy
                    // brings it back, since this node's digest no longer lists it).
                    drop(slot);
                    self.adjust_live(true, false);
                    self.generation.fetch_add(1, Relaxed);
                    self.mark(sid);
                }
            }
            return;
        }
    }

    /// A swapped-out session's state, read from the cold tier (`None`, logged, when it is
    /// not there or cannot be read). Called with no lock held.
    fn read_back(&self, sid: SessionId) -> Option<SessionState> {
        let cold = self.cold.as_ref()?;
        match cold.read(sid) {
            Ok(Some(s)) => Some(s),
            Ok(None) => {
                tracing::error!(
                    session = %crate::model::log_tag(sid),
                    "a swapped-out session is missing from disk"
                );
                None
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot read a swapped-out session back");
                None
            }
        }
    }

    fn entry(&self, sid: SessionId) -> dashmap::mapref::one::RefMut<'_, SessionId, Session> {
        self.fault_in(sid);
        self.sessions.entry(sid).or_insert_with(|| {
            // A new, empty session is live until invalidated.
            self.live.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.generation
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Session::default()
        })
    }

    /// Whether no session is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Runs `f` on the session, if held (reading a swapped-out one back into memory).
    pub fn with<R>(&self, sid: SessionId, f: impl FnOnce(&Session) -> R) -> Option<R> {
        self.fault_in(sid);
        self.sessions.get(&sid).map(|s| f(&s))
    }

    /// Runs `f` on the session if it is in memory (`None` when swapped out or not held):
    /// for scans that must not read every swapped-out session back.
    pub fn peek<R>(&self, sid: SessionId, f: impl FnOnce(&Session) -> R) -> Option<R> {
        self.sessions.get(&sid).map(|s| f(&s))
    }

    /// Runs `f` on the session, creating an empty one if absent.
    pub fn with_mut<R>(&self, sid: SessionId, f: impl FnOnce(&mut Session) -> R) -> R {
        let mut e = self.entry(sid);
        let was = e.deleted.is_none();
        let r = f(&mut e);
        self.adjust_live(was, e.deleted.is_none());
        self.mark(sid);
        r
    }

    /// Version of the session, if held.
    pub fn version(&self, sid: SessionId) -> Option<u64> {
        self.with(sid, |s| s.version)
    }

    /// [`Session::seen_through`] of the session, if held.
    pub fn seen_through(&self, sid: SessionId) -> Option<u64> {
        self.with(sid, |s| s.seen_through())
    }

    /// Whether a session with this id is held (live or tombstoned, swapped out or not).
    pub fn contains(&self, sid: SessionId) -> bool {
        self.sessions.contains_key(&sid)
            || (self.swapped_count.load(Relaxed) > 0 && self.swapped.contains_key(&sid))
    }

    /// The session's [`Summary`], without reading a swapped-out session back.
    pub fn summary(&self, sid: SessionId) -> Option<Summary> {
        if let Some(s) = self.sessions.get(&sid) {
            return Some(s.summary());
        }
        self.swapped.get(&sid).map(|st| Summary {
            fingerprint: st.fingerprint,
            expiry: st.expiry,
            changed_at: st.changed_at,
            deleted: false,
        })
    }

    /// Whether the session is held and dead at `now` (`None`: not held); a scan's test
    /// that does not read swapped-out sessions back.
    pub fn is_dead(&self, sid: SessionId, now: u64) -> Option<bool> {
        self.summary(sid).map(|s| s.is_dead(now))
    }

    /// Applies a delta; `gap` is true when the writer had seen a version we have not.
    pub fn apply(&self, d: &Delta) -> (Applied, bool) {
        self.apply_at(d, unix_now())
    }

    /// [`Store::apply`] at `now` (unix seconds, this node's clock).
    pub fn apply_at(&self, d: &Delta, now: u64) -> (Applied, bool) {
        let mut e = self.entry(d.sid);
        e.last_local_access = now;
        let was = e.deleted.is_none();
        let applied = e.apply(d);
        self.adjust_live(was, e.deleted.is_none());
        if applied == Applied::Changed {
            e.changed_at = now;
            self.mark(d.sid);
        }
        (applied, e.has_gap())
    }

    /// Merges a whole copy.
    pub fn merge(&self, s: &SessionState) -> Applied {
        self.merge_at(s, unix_now())
    }

    /// [`Store::merge`] at `now` (unix seconds, this node's clock).
    pub fn merge_at(&self, s: &SessionState, now: u64) -> Applied {
        let mut e = self.entry(s.sid);
        e.last_local_access = now;
        let was = e.deleted.is_none();
        let applied = e.merge(s);
        self.adjust_live(was, e.deleted.is_none());
        if applied == Applied::Changed {
            e.changed_at = now;
            self.mark(s.sid);
        }
        applied
    }

    /// Adds a session read from this node's disk at start: in memory, or (`resident`
    /// false, a memory budget is full) swapped out. Not marked dirty (it is on disk), and
    /// compared by the next anti-entropy round at once (`changed_at` 0).
    pub fn restore(&self, s: &SessionState, resident: bool, now: u64) {
        let mut session = Session::default();
        session.merge(s);
        session.last_local_access = now;
        let live = session.deleted.is_none();
        if resident || !live {
            if self.sessions.insert(s.sid, session).is_none() {
                self.adjust_live(false, live);
            }
        } else if self
            .swapped
            .insert(
                s.sid,
                Stub {
                    fingerprint: session.fingerprint(),
                    expiry: session.expiry,
                    changed_at: 0,
                },
            )
            .is_none()
        {
            self.swapped_count.fetch_add(1, Relaxed);
            self.adjust_live(false, true);
        }
        self.generation.fetch_add(1, Relaxed);
    }

    /// A whole copy of one session (a swapped-out one is read from disk, and stays out).
    pub fn state(&self, sid: SessionId) -> Option<SessionState> {
        if let Some(s) = self.sessions.get(&sid) {
            return Some(s.to_state(sid));
        }
        if self.swapped_count.load(Relaxed) > 0 && self.swapped.contains_key(&sid) {
            return self.read_back(sid);
        }
        None
    }

    /// What a flush writes for a session: `Some(state)` to put, `None` to delete (no
    /// longer held); a swapped-out session is already on disk (`Err`).
    pub fn persisted_state(&self, sid: SessionId) -> Result<Option<SessionState>, ()> {
        if let Some(s) = self.sessions.get(&sid) {
            return Ok(Some(s.to_state(sid)));
        }
        if self.swapped.contains_key(&sid) {
            return Err(());
        }
        Ok(None)
    }

    /// Extends the expiry (a touch); returns whether it grew.
    pub fn touch(&self, sid: SessionId, expiry: u64) -> bool {
        self.fault_in(sid);
        match self.sessions.get_mut(&sid) {
            Some(mut s) if s.expiry < expiry => {
                s.expiry = expiry;
                self.mark(sid);
                true
            }
            _ => false,
        }
    }

    /// Removes sessions that expired, and tombstones older than [`TOMBSTONE_SECS`];
    /// returns how many live sessions expired.
    pub fn sweep(&self, now: u64) -> usize {
        let mut expired = 0;
        let mut gone = Vec::new();
        self.sessions.retain(|sid, s| {
            let keep = if s.deleted.is_some() {
                s.expiry.max(s.last_local_access) + TOMBSTONE_SECS > now
            } else if s.expiry <= now {
                expired += 1;
                false
            } else {
                true
            };
            if !keep {
                gone.push(*sid);
            }
            keep
        });
        if self.swapped_count.load(Relaxed) > 0 {
            self.swapped.retain(|sid, st| {
                if st.expiry <= now {
                    expired += 1;
                    gone.push(*sid);
                    self.swapped_count.fetch_sub(1, Relaxed);
                    return false;
                }
                true
            });
        }
        for sid in gone {
            self.mark(sid);
        }
        self.live
            .fetch_sub(expired as isize, std::sync::atomic::Ordering::Relaxed);
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        expired
    }

    /// Removes one session outright (eviction of a non-owned copy).
    pub fn remove(&self, sid: SessionId) {
        let removed = match self.sessions.remove(&sid) {
            Some((_, s)) => Some(s.deleted.is_none()),
            None => self.swapped.remove(&sid).map(|_| {
                self.swapped_count.fetch_sub(1, Relaxed);
                true
            }),
        };
        if let Some(was_live) = removed {
            self.adjust_live(was_live, false);
            self.generation
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.mark(sid);
        }
    }

    /// Swaps out the least recently accessed sessions until at most `budget` are in
    /// memory: only live ones whose latest state is on disk (not dirty). Returns how many
    /// left memory. A no-op without persistence.
    pub fn swap_out(&self, budget: usize) -> usize {
        let Some(dirty) = &self.dirty else { return 0 };
        let over = self.sessions.len().saturating_sub(budget);
        if over == 0 {
            return 0;
        }
        let mut idle: Vec<(u64, SessionId)> = Vec::with_capacity(self.sessions.len());
        for e in self.sessions.iter() {
            if e.deleted.is_none() && !dirty.contains(*e.key()) {
                idle.push((e.last_local_access, *e.key()));
            }
        }
        if idle.len() > over {
            idle.select_nth_unstable(over);
            idle.truncate(over);
        }
        let mut out = 0;
        for (_, sid) in idle {
            let evicted = self.sessions.remove_if(&sid, |_, s| {
                if s.deleted.is_some() || dirty.contains(sid) {
                    return false;
                }
                let stub = Stub {
                    fingerprint: s.fingerprint(),
                    expiry: s.expiry,
                    changed_at: s.changed_at,
                };
                if self.swapped.insert(sid, stub).is_none() {
                    self.swapped_count.fetch_add(1, Relaxed);
                }
                true
            });
            out += evicted.is_some() as usize;
        }
        out
    }

    /// Runs `f` on every session held in memory (shard by shard, under each shard's read
    /// lock: `f` must be quick and must not touch the store). Swapped-out sessions are
    /// not visited: see [`Store::for_each_summary`].
    pub fn for_each(&self, mut f: impl FnMut(SessionId, &Session)) {
        for e in self.sessions.iter() {
            f(*e.key(), e.value());
        }
    }

    /// Runs `f` on the [`Summary`] of every session held, swapped-out ones included
    /// (same locking rules as [`Store::for_each`]).
    pub fn for_each_summary(&self, mut f: impl FnMut(SessionId, Summary)) {
        for e in self.sessions.iter() {
            f(*e.key(), e.value().summary());
        }
        if self.swapped_count.load(Relaxed) > 0 {
            for e in self.swapped.iter() {
                let st = e.value();
                f(
                    *e.key(),
                    Summary {
                        fingerprint: st.fingerprint,
                        expiry: st.expiry,
                        changed_at: st.changed_at,
                        deleted: false,
                    },
                );
            }
        }
    }

    /// Snapshot of the ids held, swapped-out ones included (for scans that must not hold
    /// shard locks).
    pub fn ids(&self) -> Vec<SessionId> {
        let mut ids: Vec<SessionId> = self.sessions.iter().map(|e| *e.key()).collect();
        if self.swapped_count.load(Relaxed) > 0 {
            ids.extend(self.swapped.iter().map(|e| *e.key()));
        }
        ids
    }

    /// Whole copies of the sessions for which `keep` is true, in chunks of about
    /// `chunk_bytes`, passed to `emit` (swapped-out ones are read from disk and stay out).
    pub fn for_each_chunk(
        &self,
        chunk_bytes: usize,
        mut keep: impl FnMut(SessionId) -> bool,
        mut emit: impl FnMut(Vec<SessionState>),
    ) {
        let mut chunk = Vec::new();
        let mut size = 0;
        for sid in self.ids() {
            if !keep(sid) {
                continue;
            }
            if let Some(s) = self.state(sid) {
                size += 32
                    + s.attrs
                        .iter()
                        .map(|a| a.name.len() + a.value.as_ref().map_or(0, |v| v.len()) + 12)
                        .sum::<usize>();
                chunk.push(s);
                if size >= chunk_bytes {
                    emit(std::mem::take(&mut chunk));
                    size = 0;
                }
            }
        }
        if !chunk.is_empty() {
            emit(chunk);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(c: u64, o: u32) -> Stamp {
        Stamp {
            counter: c,
            origin: o,
        }
    }

    fn delta(c: u64, o: u32, base: u64, set: &[(&str, &str)], removed: &[&str]) -> Delta {
        Delta {
            sid: 1,
            stamp: st(c, o),
            base,
            set: set
                .iter()
                .map(|(k, v)| (k.to_string(), Bytes::copy_from_slice(v.as_bytes())))
                .collect(),
            removed: removed.iter().map(|s| s.to_string()).collect(),
            expiry: Some(100 + c),
            invalidate: false,
        }
    }

    #[test]
    fn attributes_stay_sorted_and_exactly_sized() {
        let mut s = Session::default();
        for (i, name) in ["m", "a", "z", "c"].iter().enumerate() {
            let stamp = Stamp {
                counter: i as u64 + 1,
                origin: 1,
            };
            assert!(s.merge_attr(name, stamp, Some(Bytes::from_static(b"1"))));
        }
        let names: Vec<&str> = s.live_attrs().map(|(k, _)| k).collect();
        assert_eq!(names, ["a", "c", "m", "z"]);
        assert!(s.attrs.capacity() <= 4, "capacity {}", s.attrs.capacity());
        // A stale write to an existing attribute changes nothing; a newer one replaces it.
        let old = Stamp {
            counter: 1,
            origin: 1,
        };
        assert!(!s.merge_attr("c", old, None));
        assert_eq!(s.get("c"), Some(&Bytes::from_static(b"1")));
        let new = Stamp {
            counter: 9,
            origin: 1,
        };
        assert!(s.merge_attr("c", new, None));
        assert_eq!(s.get("c"), None);
        assert_eq!(s.get("nope"), None);
    }

    fn view(s: &Session) -> Vec<(String, String)> {
        let mut v: Vec<_> = s
            .live_attrs()
            .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v).into()))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_request_diff_keeps_writes_that_arrived_after_its_load() {
        let map = |kv: &[(&str, &str)]| -> HashMap<String, Bytes> {
            kv.iter()
                .map(|(k, v)| (k.to_string(), Bytes::copy_from_slice(v.as_bytes())))
                .collect()
        };
        let mut s = Session::default();
        s.apply(&delta(1, 1, 0, &[("x", "1"), ("y", "1")], &[]));
        // A request loads {x=1, y=1}; then a write from node 2 sets x=2 and adds z.
        let loaded = map(&[("x", "1"), ("y", "1")]);
        s.apply(&delta(2, 2, 1, &[("x", "2"), ("z", "1")], &[]));
        // The request sets y=5 and removes nothing it did not load.
        let data = map(&[("x", "1"), ("y", "5")]);
        let d = s.diff_from(1, &loaded, &data, st(3, 1)).unwrap();
        assert_eq!(d.set, vec![("y".to_string(), Bytes::from_static(b"5"))]);
        assert!(d.removed.is_empty(), "{:?}", d.removed);
        // Diffing against the replica would have undone node 2's write.
        let naive = s.diff(1, &data, st(3, 1)).unwrap();
        assert_eq!(naive.removed, vec!["z".to_string()]);
        // A request that removes what it loaded removes it; nothing changed → no delta.
        let d = s
            .diff_from(1, &loaded, &map(&[("x", "1")]), st(3, 1))
            .unwrap();
        assert_eq!(d.removed, vec!["y".to_string()]);
        assert!(d.set.is_empty());
        assert!(s.diff_from(1, &loaded, &loaded, st(3, 1)).is_none());
    }

    #[test]
    fn deltas_commute_and_are_idempotent() {
        let ds = [
            delta(1, 1, 0, &[("a", "1")], &[]),
            delta(2, 1, 1, &[("b", "2")], &[]),
            delta(2, 2, 1, &[("c", "3")], &[]),
            delta(3, 2, 2, &[("a", "4")], &["b"]),
        ];
        let mut reference = Session::default();
        for d in &ds {
            reference.apply(d);
        }
        // Every order, each delta possibly twice, gives the same session.
        for perm in [[0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1], [1, 3, 0, 2]] {
            let mut s = Session::default();
            for i in perm {
                s.apply(&ds[i]);
                assert_eq!(s.apply(&ds[i]), Applied::Stale, "duplicate is stale");
            }
            assert_eq!(view(&s), view(&reference));
            assert_eq!(s.version, 3);
            assert_eq!(s.expiry, 103);
        }
        assert_eq!(
            view(&reference),
            vec![("a".into(), "4".into()), ("c".into(), "3".into())]
        );
    }

    #[test]
    fn concurrent_writes_to_different_attributes_both_survive() {
        let x = delta(6, 1, 5, &[("x", "1")], &[]);
        let y = delta(6, 2, 5, &[("y", "2")], &[]);
        let mut a = Session::default();
        let mut b = Session::default();
        a.apply(&x);
        a.apply(&y);
        b.apply(&y);
        b.apply(&x);
        assert_eq!(view(&a), view(&b));
        assert_eq!(view(&a).len(), 2);
    }

    #[test]
    fn concurrent_writes_to_one_attribute_pick_the_same_winner() {
        let x = delta(6, 1, 5, &[("x", "from-1")], &[]);
        let y = delta(6, 2, 5, &[("x", "from-2")], &[]);
        let mut a = Session::default();
        let mut b = Session::default();
        a.apply(&x);
        a.apply(&y);
        b.apply(&y);
        b.apply(&x);
        assert_eq!(view(&a), vec![("x".into(), "from-2".into())]);
        assert_eq!(view(&a), view(&b));
    }

    #[test]
    fn full_state_merge_equals_delta_replay() {
        let mut a = Session::default();
        a.apply(&delta(1, 1, 0, &[("a", "1")], &[]));
        a.apply(&delta(2, 1, 1, &[], &["a"]));
        a.apply(&delta(3, 1, 2, &[("b", "1")], &[]));
        let mut b = Session::default();
        b.apply(&delta(1, 1, 0, &[("a", "1")], &[]));
        b.merge(&a.to_state(1));
        assert_eq!(view(&a), view(&b));
        assert_eq!(b.version, 3);
        // The tombstone travelled: a late delta setting "a" at counter 1 changes nothing.
        assert_eq!(b.apply(&delta(1, 1, 0, &[("a", "1")], &[])), Applied::Stale);
    }

    #[test]
    fn invalidation_wins_over_older_writes() {
        let store = Store::new();
        store.apply(&delta(1, 1, 0, &[("a", "1")], &[]));
        let mut inv = delta(2, 1, 1, &[], &[]);
        inv.invalidate = true;
        store.apply(&inv);
        store.apply(&delta(1, 2, 0, &[("z", "1")], &[]));
        assert!(store
            .with(1, |s| s.deleted.is_some() && s.live_attrs().count() == 0)
            .unwrap());
    }

    #[test]
    fn seen_through_stops_below_an_overtaken_delta() {
        let store = Store::new();
        store.apply(&delta(1, 1, 0, &[("a", "1")], &[]));
        // Write 3 (attribute b) arrives before write 2 (attribute a): the version is 3,
        // but a client that saw 3 also saw 2, which this copy lacks.
        store.apply(&delta(3, 2, 2, &[("b", "3")], &[]));
        assert_eq!(store.version(1), Some(3));
        assert_eq!(store.seen_through(1), Some(1));
        store.apply(&delta(2, 1, 1, &[("a", "2")], &[]));
        assert_eq!(store.seen_through(1), Some(3));
    }

    #[test]
    fn gaps_are_detected() {
        let store = Store::new();
        let (_, gap) = store.apply(&delta(1, 1, 0, &[("a", "1")], &[]));
        assert!(!gap);
        let (_, gap) = store.apply(&delta(3, 1, 2, &[("a", "3")], &[]));
        assert!(gap, "counter 2 is missing");
        let (_, gap) = store.apply(&delta(2, 2, 1, &[("b", "2")], &[]));
        assert!(!gap, "the overtaken delta arrived");
        let (_, gap) = store.apply(&delta(5, 1, 4, &[("a", "5")], &[]));
        assert!(gap);
        let full = store.state(1).map(|mut s| {
            s.version = 5;
            s
        });
        store.merge(&full.unwrap());
        assert!(
            !store.with(1, |s| s.has_gap()).unwrap(),
            "a whole copy fills the hole"
        );
    }

    #[test]
    fn diff_ships_only_changes() {
        let mut s = Session::default();
        s.apply(&delta(1, 1, 0, &[("a", "1"), ("b", "2")], &[]));
        let mut data = HashMap::new();
        data.insert("a".to_string(), Bytes::from_static(b"1"));
        data.insert("c".to_string(), Bytes::from_static(b"3"));
        let d = s.diff(1, &data, st(2, 1)).unwrap();
        assert_eq!(d.set, vec![("c".to_string(), Bytes::from_static(b"3"))]);
        assert_eq!(d.removed, vec!["b".to_string()]);
        assert_eq!(d.base, 1);
        data.remove("c");
        data.insert("b".to_string(), Bytes::from_static(b"2"));
        assert!(s.diff(1, &data, st(2, 1)).is_none());
    }

    #[test]
    fn sweep_expires_and_forgets_tombstones() {
        let store = Store::new();
        store.apply(&delta(1, 1, 0, &[("a", "1")], &[])); // expiry 101
        let mut d2 = delta(1, 1, 0, &[("a", "1")], &[]);
        d2.sid = 2;
        d2.expiry = Some(1000);
        store.apply(&d2);
        assert_eq!(store.sweep(102), 1);
        assert!(!store.contains(1) && store.contains(2));
    }

    #[test]
    fn the_live_count_follows_every_change() {
        let store = Store::new();
        let live_by_scan = |store: &Store| {
            store
                .ids()
                .into_iter()
                .filter(|&sid| store.with(sid, |s| s.deleted.is_none()).unwrap())
                .count()
        };
        store.apply(&delta(1, 1, 0, &[("a", "1")], &[]));
        let mut d2 = delta(1, 1, 0, &[("a", "1")], &[]);
        d2.sid = 2;
        store.apply(&d2);
        store.with_mut(3, |s| s.expiry = 1);
        assert_eq!((store.live(), live_by_scan(&store)), (3, 3));
        // Invalidated: no longer live (a tombstone stays held).
        let mut inv = delta(2, 1, 1, &[], &[]);
        inv.invalidate = true;
        store.apply(&inv);
        assert_eq!((store.live(), live_by_scan(&store)), (2, 2));
        // A duplicate of the invalidation changes nothing.
        store.apply(&inv);
        assert_eq!(store.live(), 2);
        // Removal and expiry.
        store.remove(2);
        store.remove(2);
        assert_eq!(store.live(), 1);
        assert_eq!(store.sweep(10), 1);
        assert_eq!((store.live(), live_by_scan(&store)), (0, 0));
    }
}

#[cfg(test)]
mod cold_tier_tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{OnceLock, Weak};

    use super::*;

    /// A cold tier that holds one session's state and checks, on every read, that the
    /// store does not hold that session's shard lock.
    #[derive(Debug)]
    struct Probe {
        store: OnceLock<Weak<Store>>,
        state: SessionState,
        reads: AtomicUsize,
        read_under_lock: AtomicBool,
    }

    impl ColdTier for Probe {
        fn read(&self, sid: SessionId) -> Result<Option<SessionState>, String> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            let store = self.store.get().and_then(Weak::upgrade).expect("store");
            if store.sessions.try_get_mut(&sid).is_locked() {
                self.read_under_lock.store(true, Ordering::SeqCst);
            }
            Ok((sid == self.state.sid).then(|| self.state.clone()))
        }
    }

    #[test]
    fn a_swapped_out_session_is_read_back_once_and_without_a_shard_lock() {
        let mut s = Session::default();
        s.apply(&Delta {
            sid: 7,
            stamp: Stamp {
                counter: 3,
                origin: 1,
            },
            base: 2,
            set: vec![("a".into(), Bytes::from_static(b"1"))],
            removed: vec![],
            expiry: Some(u64::MAX / 2),
            invalidate: false,
        });
        let probe = Arc::new(Probe {
            store: OnceLock::new(),
            state: s.to_state(7),
            reads: AtomicUsize::new(0),
            read_under_lock: AtomicBool::new(false),
        });
        let store = Arc::new(Store::persisted(probe.clone()));
        probe.store.set(Arc::downgrade(&store)).unwrap();
        store.restore(&s.to_state(7), false, 1_000);
        assert_eq!((store.resident(), store.swapped()), (0, 1));

        assert_eq!(store.version(7), Some(3));
        assert_eq!(
            store.with(7, |s| s.get("a").cloned()),
            Some(Some(Bytes::from_static(b"1")))
        );
        assert_eq!((store.resident(), store.swapped()), (1, 0));
        assert_eq!(
            probe.reads.load(Ordering::SeqCst),
            1,
            "read back once, then resident"
        );
        assert!(!probe.read_under_lock.load(Ordering::SeqCst));
        assert_eq!(store.live(), 1);
    }
}
