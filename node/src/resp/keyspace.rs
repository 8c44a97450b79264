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
//! | `resp:pexp`    | the expiry, unix milliseconds, when the key has a TTL  |
//!
//! Each hash field is its own attribute, so concurrent `HSET`s of different fields on
//! different nodes merge (last writer wins per field), as attributes of a
//! tower-sessions session do. A key exists while it holds a string value or at least
//! one field and its `resp:pexp` has not passed. Deleting a key removes all its
//! attributes (rather than invalidating the session, whose tombstone would keep the same
//! key from being written again for minutes).
//!
//! The session's own expiry (whole seconds, and only ever extended, as replicas merge
//! it by maximum) is set to cover the key's: the replicas drop the session once both
//! have passed. A key without a TTL gets [`PERSISTENT_SECS`].

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
    if pexp.is_some_and(|e| e <= now_ms) {
        return None;
    }
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

/// The attributes that hold `entry` under `key` (empty for a deleted key).
pub fn encode(key: &[u8], entry: Option<&Entry>) -> HashMap<String, Bytes> {
    let mut out = HashMap::new();
    let Some(entry) = entry else {
        return out;
    };
    out.insert(KEY.to_string(), Bytes::copy_from_slice(key));
    if let Some(e) = entry.expires_at {
        out.insert(PEXP.to_string(), Bytes::from(e.to_string()));
    }
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
    out
}

/// The session expiry (unix seconds) that covers `entry` written at `now_ms`.
pub fn session_expiry(entry: Option<&Entry>, now_ms: u64) -> u64 {
    match entry.and_then(|e| e.expires_at) {
        Some(ms) => ms.div_ceil(1000) + 1,
        None => now_ms / 1000 + PERSISTENT_SECS,
    }
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
        let s = Entry {
            value: Value::Str(Bytes::from_static(b"{\"cookie\":1}")),
            expires_at: Some(5_000),
        };
        let enc = encode(b"sess:abc", Some(&s));
        assert_eq!(
            decode(attrs(&enc), 4_999),
            Some((Bytes::from_static(b"sess:abc"), s.clone()))
        );
        assert_eq!(decode(attrs(&enc), 5_000), None, "expired at its pexp");
        assert_eq!(
            live_key(attrs(&enc), 1),
            Some(Bytes::from_static(b"sess:abc"))
        );
        assert_eq!(live_key(attrs(&enc), 5_000), None);

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
        let enc = encode(b"spring:session:sessions:1", Some(&e));
        assert!(enc.contains_key("f:lastAccessedTime") && enc.contains_key("x:ff00"));
        assert_eq!(decode(attrs(&enc), u64::MAX).unwrap().1, e);
        assert!(encode(b"k", None).is_empty());
    }

    #[test]
    fn a_key_without_value_does_not_exist() {
        let mut enc = HashMap::new();
        enc.insert(KEY.to_string(), Bytes::from_static(b"k"));
        assert_eq!(decode(attrs(&enc), 0), None);
        assert_eq!(live_key(attrs(&enc), 0), None);
    }

    #[test]
    fn session_expiry_covers_the_key() {
        let e = Entry {
            value: Value::Str(Bytes::new()),
            expires_at: Some(10_001),
        };
        assert_eq!(session_expiry(Some(&e), 0), 12);
        assert!(session_expiry(None, 1_000_000) > 1_000 + 9 * 365 * 24 * 3600);
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
