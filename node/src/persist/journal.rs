//! What the engine's journal recovery dropped, so that a truncated journal is a WARN with
//! counts rather than a silent loss.
//!
//! fjall replays its journal (`*.jnl`) at open and, when it meets an entry it cannot
//! decode, truncates the file there without saying so. Its journals are preallocated
//! with zeros, so a clean journal also "ends" at its first zero byte. The node therefore
//! walks each journal before the open (entry offsets; the extent of the non-zero data,
//! resynchronising after a damaged entry on the batch trailer) and again after it (where
//! the readable entries now end): data that was there before and is gone after was
//! dropped.
//!
//! The walk reads fjall 3's journal layout (entries tagged 1 start, 2 item, 3 end, 4
//! clear; an end entry closes with the trailer `FJL\x03`). It only counts: if the
//! layout ever changes, the counts are wrong, never the data (the embedded backend's
//! tests corrupt a real journal and check them).

use std::io::Read;
use std::path::{Path, PathBuf};

const TRAILER: &[u8] = b"FJL\x03";
/// How far past a journal's first undecodable entry non-zero bytes are looked for before
/// the rest is taken as preallocated zeros.
const PEEK: usize = 64 * 1024;
/// The most of one journal file read (fjall preallocates 64 MiB per file): a bigger file
/// is counted up to there.
const MAX_SCAN: u64 = 256 * 1024 * 1024;

/// One journal file before the open.
#[derive(Debug, Clone)]
struct Before {
    path: PathBuf,
    /// Offsets of item entries (one per record written).
    items: Vec<u64>,
    /// End of the non-zero data.
    data_end: u64,
}

/// The journals before the open.
#[derive(Debug, Default)]
pub struct Snapshot(Vec<Before>);

/// What recovery dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dropped {
    /// Records (journal items) still in the journals.
    pub records_kept: u64,
    /// Records that were in the dropped part (at least this many: items inside a damaged
    /// entry cannot be counted).
    pub records_dropped: u64,
    /// Bytes of journal data dropped.
    pub bytes: u64,
}

fn journals(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            journals(&p, out);
        } else if p.extension().is_some_and(|x| x == "jnl") {
            out.push(p);
        }
    }
}

/// The length of the decodable entry at the start of `b`, whether it is an item, or
/// `None` (undecodable, or cut short).
fn entry(b: &[u8]) -> Option<(usize, bool)> {
    let le = |at: usize, n: usize| -> Option<u64> {
        let s = b.get(at..at + n)?;
        Some(s.iter().rev().fold(0u64, |v, &x| (v << 8) | u64::from(x)))
    };
    let len = match *b.first()? {
        1 => 13,
        2 => {
            // tag, value type, compression, keyspace u64, key u16, value u32, on-disk u32
            let key = le(11, 2)? as usize;
            let on_disk = le(17, 4)? as usize;
            if b[2] > 1 {
                return None;
            }
            21 + key + on_disk
        }
        3 => {
            if b.get(9..13)? != TRAILER {
                return None;
            }
            13
        }
        4 => 9,
        _ => return None,
    };
    (b.len() >= len).then_some((len, b[0] == 2))
}

/// [`entry`] at offset `at` of `b` (tests corrupt real journals with it).
#[cfg(test)]
pub(crate) fn entry_at(b: &[u8], at: usize) -> Option<(usize, bool)> {
    entry(b.get(at..)?)
}

/// Walks `b` from `at`: item offsets pushed, returns where decoding stopped.
fn walk(b: &[u8], mut at: usize, items: &mut Vec<u64>) -> usize {
    while let Some((len, item)) = entry(&b[at..]) {
        if item {
            items.push(at as u64);
        }
        at += len;
    }
    at
}

/// Reads `path` as far as needed: its decodable entries and [`PEEK`] bytes past them, or
/// the whole file when those are not all zeros. Returns the bytes, where decoding stopped,
/// and the item offsets up to there.
fn read(path: &Path) -> Option<(Vec<u8>, usize, Vec<u64>)> {
    let mut f = std::fs::File::open(path).ok()?.take(MAX_SCAN);
    let mut b = Vec::new();
    let mut items = Vec::new();
    let mut at = 0;
    let mut chunk = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut chunk).ok()?;
        b.extend_from_slice(&chunk[..n]);
        at = walk(&b, at, &mut items);
        let clean_past = b.len() >= at + PEEK && b[at..at + PEEK].iter().all(|&x| x == 0);
        if n == 0 || clean_past {
            return Some((b, at, items));
        }
        if b.len() >= at + PEEK {
            // Not zeros after the last decodable entry: damage; read it all.
            f.read_to_end(&mut b).ok()?;
            at = walk(&b, at, &mut items);
            return Some((b, at, items));
        }
    }
}

/// Walks the journals under `dir` (before the engine opens it).
pub fn before_open(dir: &Path) -> Snapshot {
    let mut paths = Vec::new();
    journals(dir, &mut paths);
    let mut out = Vec::new();
    for path in paths {
        let Some((b, brk, mut items)) = read(&path) else {
            continue;
        };
        let data_end = if b[brk..].iter().take(PEEK).all(|&x| x == 0) {
            brk
        } else {
            // Damage followed by more data: everything up to the last non-zero byte
            // counts, and the entries after each later batch trailer are walked.
            let end = b.iter().rposition(|&x| x != 0).map_or(brk, |i| i + 1);
            let mut at = brk;
            while let Some(i) = b[at..end].windows(TRAILER.len()).position(|w| w == TRAILER) {
                let next = at + i + TRAILER.len();
                at = walk(&b, next, &mut items).max(next);
            }
            end
        };
        out.push(Before {
            path,
            items,
            data_end: data_end as u64,
        });
    }
    Snapshot(out)
}

impl Snapshot {
    /// Compares with the journals after the open.
    pub fn after_open(&self) -> Dropped {
        let mut d = Dropped::default();
        for j in &self.0 {
            let Some((_, end, _)) = read(&j.path) else {
                // Gone: recovered into tables and removed, not dropped.
                d.records_kept += j.items.len() as u64;
                continue;
            };
            let end = end as u64;
            let dropped = j.items.iter().filter(|&&o| o >= end).count() as u64;
            d.records_dropped += dropped;
            d.records_kept += j.items.len() as u64 - dropped;
            d.bytes += j.data_end.saturating_sub(end);
        }
        d
    }
}
