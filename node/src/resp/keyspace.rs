//! How Redis keys live in replicated sessions. Pure: no I/O.
//!
//! A Redis key is one session: its id is the 128-bit xxh3 hash of the key's bytes
//! ([`session_id`]), so every node finds the same session for the same key without a
//! lookup. The session's attributes hold the value:
//!
//! | attribute      | holds                                                  |
//! |----------------|--------------------------------------------------------|
//! | `resp:key`     | the key's name (so `SCAN`/`KEYS` can list it)          |
//! | `resp:str`     | a string value                                         |
//! | `f:<field>`    | one hash field (`x:<hex>` when the name is not UTF-8)  |
//! | `resp:pexp`    | an expiry below the session's, unix ms (see below)     |
//!
//! Each hash field is its own attribute, so concurrent `HSET`s of different fields on
//! different nodes merge (last writer wins per field), as attributes of a
//! tower-sessions session do. A key exists while it holds a string value or at least
//! one field and its `resp:pexp` has not passed. Deleting a key removes all its
//! attributes (rather than invalidating the session, whose tombstone would keep the same
//! key from being written again for minutes).
//!
//! A key's TTL is its session's expiry (whole seconds; the key lives until the second
//! its TTL ends in has passed). Extending it — `EXPIRE`, `GETEX`, a `SET … EX` — needs
//! no attribute write: the new expiry travels in the session's batched touches (or with
//! the write's delta), so the `EXPIRE` a session store sends on every request costs no
//! synchronous replication. Replicas merge the session expiry by maximum, so it can
//! only grow; a *shorter* TTL than the session's (or one beyond [`PERSISTENT_AFTER`]) is
//! kept in `resp:pexp` instead, which then wins. A key without a TTL has a session
//! expiry [`PERSISTENT_SECS`] ahead (anything beyond [`PERSISTENT_AFTER`] reads as "no
//! TTL").

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;

use crate::wire::SessionId;

/// Attribute holding the key's name.
pub const KEY: &str = "resp:key";
/// Attribute holding a string value.
pub const STR: &str = "resp:str";
/// Attribute holding the expiry in unix milliseconds.
pub const PEXP: &str = "resp:pexp";
/// How long a key without a TTL is kept: ten years.
pub const PERSISTENT_SECS: u64 = 10 * 365 * 24 * 3600;
/// A session expiry further ahead than this (five years) means "no TTL".
pub const PERSISTENT_AFTER: u64 = 5 * 365 * 24 * 3600;

/// The session that holds `key`.
pub fn session_id(key: &[u8]) -> SessionId {
    xxhash_rust::xxh3::xxh3_128(key) as i128
}

/// A key's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// A string.
    Str(Bytes),
    /// A hash: field → value (never empty).
    Hash(BTreeMap<Bytes, Bytes>),
}

/// A live key: its value and expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The value.
    pub value: Value,
    /// Expiry in unix milliseconds; `None`: no TTL.
    pub expires_at: Option<u64>,
}

impl Entry {
    /// A key without a TTL.
    pub fn persistent(value: Value) -> Self {
        Entry {
            value,
            expires_at: None,
        }
    }
}

/// The attribute name of a hash field.
pub fn field_attr(field: &[u8]) -> String {
    match std::str::from_utf8(field) {
        Ok(s) => format!("f:{s}"),
        Err(_) => format!("x:{}", hex::encode(field)),
    }
}

fn attr_field(name: &str) -> Option<Bytes> {
    if let Some(f) = name.strip_prefix("f:") {
        return Some(Bytes::copy_from_slice(f.as_bytes()));
    }
    name.strip_prefix("x:")
        .and_then(|h| hex::decode(h).ok())
        .map(Bytes::from)
}

/// Reads the key held by a session's live attributes at `now_ms`: its name and entry,
/// or `None` when the session holds no live key (never written, deleted, or expired).
/// A session holding both a string and fields (a `SET` and an `HSET` racing on two
/// nodes) reads as the string.
pub fn decode<'a>(
    attrs: impl IntoIterator<Item = (&'a str, &'a Bytes)>,
    session_expiry: u64,
    now_ms: u64,
) -> Option<(Bytes, Entry)> {
    let mut key = None;
    let mut string = None;
    let mut pexp = None;
    let mut fields = BTreeMap::new();
    for (name, v) in attrs {
        match name {
            KEY => key = Some(v.clone()),
            STR => string = Some(v.clone()),
            PEXP => {
                pexp = std::str::from_utf8(v)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
            }
            _ => {
                if let Some(f) = attr_field(name) {
                    fields.insert(f, v.clone());
                }
            }
        }
    }
    let key = key?;
    if pexp.is_some_and(|e| e <= now_ms) || session_expiry.saturating_mul(1000) <= now_ms {
        return None;
    }
    let pexp = pexp.or_else(|| {
        (session_expiry.saturating_sub(now_ms / 1000) <= PERSISTENT_AFTER)
            .then(|| session_expiry * 1000)
    });
    let value = match string {
        Some(s) => Value::Str(s),
        None if !fields.is_empty() => Value::Hash(fields),
        None => return None,
    };
    Some((
        key,
        Entry {
            value,
            expires_at: pexp,
        },
    ))
}

/// The name of the key a session holds, if it holds a live one at `now_ms` (for listing:
/// does not build the value).
pub fn live_key<'a>(
    attrs: impl IntoIterator<Item = (&'a str, &'a Bytes)>,
    now_ms: u64,
) -> Option<Bytes> {
    let mut key = None;
    let mut has_value = false;
    for (name, v) in attrs {
        match name {
            KEY => key = Some(v.clone()),
            PEXP => {
                let e = std::str::from_utf8(v)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok());
                if e.is_some_and(|e| e <= now_ms) {
                    return None;
                }
            }
            STR => has_value = true,
            n if n.starts_with("f:") || n.starts_with("x:") => has_value = true,
            _ => {}
        }
    }
    key.filter(|_| has_value)
}

/// The attributes that hold `entry` under `key` (empty for a deleted key) and the
/// session expiry to write, given the session's current expiry (unix seconds).
pub fn encode(
    key: &[u8],
    entry: Option<&Entry>,
    session_expiry: u64,
    now_ms: u64,
) -> (HashMap<String, Bytes>, u64) {
    let mut out = HashMap::new();
    let Some(entry) = entry else {
        // Deleted: keep the session's expiry; it is dropped when that passes.
        return (out, 0);
    };
    out.insert(KEY.to_string(), Bytes::copy_from_slice(key));
    let now = now_ms / 1000;
    let expiry = match entry.expires_at {
        None => now + PERSISTENT_SECS,
        Some(ms) => {
            let secs = ms.div_ceil(1000);
            if secs < session_expiry || secs.saturating_sub(now) > PERSISTENT_AFTER {
                out.insert(PEXP.to_string(), Bytes::from(ms.to_string()));
                session_expiry.max(secs)
            } else {
                secs
            }
        }
    };
    match &entry.value {
        Value::Str(s) => {
            out.insert(STR.to_string(), s.clone());
        }
        Value::Hash(h) => {
            for (f, v) in h {
                out.insert(field_attr(f), v.clone());
            }
        }
    }
    (out, expiry)
}

/// Redis glob matching (`*`, `?`, `[abc]`, `[^a-z]`, `\x`), as `KEYS` and `SCAN MATCH`
/// use it. Iterative with backtracking to the last `*`: linear-ish, no recursion.
pub fn glob_match(pattern: &[u8], s: &[u8]) -> bool {
    let (mut p, mut i) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    star = Some((p, i));
                    p += 1;
                    continue;
                }
                b'?' => {
                    p += 1;
                    i += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, next)) = class_match(pattern, p, s[i]) {
                        if matched {
                            p = next;
                            i += 1;
                            continue;
                        }
                    } else if s[i] == b'[' {
                        p += 1;
                        i += 1;
                        continue;
                    }
                }
                b'\\' if p + 1 < pattern.len() => {
                    if pattern[p + 1] == s[i] {
                        p += 2;
                        i += 1;
                        continue;
                    }
                }
                c => {
                    if c == s[i] {
                        p += 1;
                        i += 1;
                        continue;
                    }
                }
            }
        }
        match star {
            Some((sp, si)) => {
                p = sp + 1;
                i = si + 1;
                star = Some((sp, si + 1));
            }
            None => return false,
        }
    }
    while p < pattern.len() && pattern[p] == b'*' {
        p += 1;
    }
    p == pattern.len()
}

/// Matches `c` against the class starting at `pattern[start] == '['`: `(matched, index
/// after the class)`, or `None` when the class is not closed.
fn class_match(pattern: &[u8], start: usize, c: u8) -> Option<(bool, usize)> {
    let mut j = start + 1;
    let negate = pattern.get(j) == Some(&b'^');
    if negate {
        j += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let b = *pattern.get(j)?;
        if b == b']' && !first {
            break;
        }
        first = false;
        if b == b'\\' {
            let e = *pattern.get(j + 1)?;
            matched |= e == c;
            j += 2;
        } else if pattern.get(j + 1) == Some(&b'-')
            && pattern.get(j + 2).is_some_and(|&e| e != b']')
        {
            let (lo, hi) = (b.min(pattern[j + 2]), b.max(pattern[j + 2]));
            matched |= (lo..=hi).contains(&c);
            j += 3;
        } else {
            matched |= b == c;
            j += 1;
        }
    }
    Some((matched != negate, j + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(m: &HashMap<String, Bytes>) -> Vec<(&str, &Bytes)> {
        m.iter().map(|(k, v)| (k.as_str(), v)).collect()
    }

    #[test]
    fn strings_and_hashes_round_trip() {
        let now = 1_000_000;
        let s = Entry {
            value: Value::Str(Bytes::from_static(b"{\"cookie\":1}")),
            expires_at: Some(now + 5_000),
        };
        let (enc, exp) = encode(b"sess:abc", Some(&s), 0, now);
        assert_eq!(exp, 1_005, "the TTL is the session expiry");
        assert!(
            !enc.contains_key(PEXP),
            "no attribute for a TTL the session covers"
        );
        let back = decode(attrs(&enc), exp, now).unwrap();
        assert_eq!(back.0, Bytes::from_static(b"sess:abc"));
        assert_eq!(back.1.expires_at, Some(1_005_000));
        assert_eq!(decode(attrs(&enc), exp, 1_005_000), None, "expired");
        assert_eq!(
            live_key(attrs(&enc), now),
            Some(Bytes::from_static(b"sess:abc"))
        );

        let mut h = BTreeMap::new();
        h.insert(
            Bytes::from_static(b"lastAccessedTime"),
            Bytes::from_static(b"1"),
        );
        h.insert(
            Bytes::from_static(&[0xff, 0x00]),
            Bytes::from_static(b"bin"),
        );
        let e = Entry::persistent(Value::Hash(h));
        let (enc, exp) = encode(b"spring:session:sessions:1", Some(&e), 0, now);
        assert!(enc.contains_key("f:lastAccessedTime") && enc.contains_key("x:ff00"));
        assert!(exp > 1_000 + PERSISTENT_AFTER);
        assert_eq!(decode(attrs(&enc), exp, now).unwrap().1, e);
        assert_eq!(encode(b"k", None, 5, now), (HashMap::new(), 0));
    }

    #[test]
    fn a_shorter_ttl_than_the_session_is_an_attribute() {
        let now = 1_000_000;
        let e = Entry {
            value: Value::Str(Bytes::from_static(b"v")),
            expires_at: Some(now + 1_500),
        };
        // The session already lives until 2,000 s (an earlier, longer TTL).
        let (enc, exp) = encode(b"k", Some(&e), 2_000, now);
        assert_eq!(exp, 2_000);
        assert_eq!(enc[PEXP], Bytes::from("1001500"));
        assert_eq!(
            decode(attrs(&enc), exp, now).unwrap().1.expires_at,
            Some(1_001_500)
        );
        assert_eq!(decode(attrs(&enc), exp, 1_001_500), None);
        assert_eq!(live_key(attrs(&enc), 1_001_500), None);
        // A persistent key's session (10 years) and then a TTL: the attribute again.
        let (enc, _) = encode(b"k", Some(&e), now / 1000 + PERSISTENT_SECS, now);
        assert!(enc.contains_key(PEXP));
    }

    #[test]
    fn a_key_without_value_does_not_exist() {
        let mut enc = HashMap::new();
        enc.insert(KEY.to_string(), Bytes::from_static(b"k"));
        assert_eq!(decode(attrs(&enc), u64::MAX / 2000, 0), None);
        assert_eq!(live_key(attrs(&enc), 0), None);
    }

    #[test]
    fn glob() {
        let yes: &[(&str, &str)] = &[
            ("*", ""),
            ("*", "anything"),
            ("sess:*", "sess:abc"),
            ("session:*", "session:"),
            ("PHPREDIS_SESSION:*", "PHPREDIS_SESSION:x1"),
            ("h?llo", "hello"),
            ("h[ae]llo", "hallo"),
            ("h[^e]llo", "hallo"),
            ("h[a-b]llo", "hbllo"),
            ("a*b*c", "aXXbYYc"),
            ("a\\*b", "a*b"),
            ("*:*:*", "a:b:c"),
        ];
        for (p, s) in yes {
            assert!(glob_match(p.as_bytes(), s.as_bytes()), "{p} ~ {s}");
        }
        let no: &[(&str, &str)] = &[
            ("sess:*", "session:abc"),
            ("h?llo", "hllo"),
            ("h[^e]llo", "hello"),
            ("h[a-b]llo", "hcllo"),
            ("a*b*c", "aXXbYY"),
            ("a\\*b", "aXb"),
            ("", "x"),
        ];
        for (p, s) in no {
            assert!(!glob_match(p.as_bytes(), s.as_bytes()), "{p} !~ {s}");
        }
        // No blow-up on adversarial patterns.
        let p = "*a".repeat(100);
        assert!(!glob_match(p.as_bytes(), "a".repeat(50).as_bytes()));
    }
}
