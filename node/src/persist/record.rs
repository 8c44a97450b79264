//! The on-disk form of one session: a format byte, the postcard encoding of its
//! [`SessionState`] (attributes with their stamps, the invalidation stamp, the expiry as
//! unix seconds) and an xxh3 checksum of both, so a corrupted record is detected whatever
//! the engine under it checks.

use super::{BackendError, Record};
use crate::model::SessionState;

/// The format byte of records written by this version.
const FORMAT: u8 = 1;
/// Bytes of the trailing checksum.
const SUM: usize = 8;

/// The record of a session state.
pub fn encode(s: &SessionState) -> Record {
    let mut bytes = vec![FORMAT];
    bytes = postcard::to_extend(s, bytes).expect("serialization to memory");
    let sum = xxhash_rust::xxh3::xxh3_64(&bytes);
    bytes.extend_from_slice(&sum.to_le_bytes());
    Record {
        sid: s.sid,
        expiry: s.expiry,
        bytes,
    }
}

/// The session state of a record; [`BackendError::Corrupt`] when the checksum, the format
/// byte or the encoding is wrong, or the record is filed under another session's key.
pub fn decode(r: &Record) -> Result<SessionState, BackendError> {
    let corrupt = |why: &str| BackendError::Corrupt(format!("session record {:x}: {why}", r.sid));
    if r.bytes.len() < 1 + SUM {
        return Err(corrupt("truncated"));
    }
    let (body, sum) = r.bytes.split_at(r.bytes.len() - SUM);
    if xxhash_rust::xxh3::xxh3_64(body).to_le_bytes() != sum {
        return Err(corrupt("checksum mismatch"));
    }
    if body[0] != FORMAT {
        return Err(corrupt(&format!("unknown format {}", body[0])));
    }
    let s: SessionState = postcard::from_bytes(&body[1..]).map_err(|e| corrupt(&e.to_string()))?;
    if s.sid != r.sid {
        return Err(corrupt("filed under another session id"));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AttrState, Stamp};

    fn state() -> SessionState {
        SessionState {
            sid: 0x1234,
            version: 7,
            expiry: 1_900_000_000,
            deleted: None,
            attrs: vec![AttrState {
                name: "counter".into(),
                stamp: Stamp {
                    counter: 7,
                    origin: 99,
                },
                value: Some(bytes::Bytes::from_static(b"42")),
            }],
        }
    }

    #[test]
    fn round_trips_with_stamps() {
        let r = encode(&state());
        assert_eq!(r.expiry, 1_900_000_000);
        assert_eq!(decode(&r).unwrap(), state());
    }

    #[test]
    fn every_flipped_byte_and_every_truncation_is_detected() {
        let r = encode(&state());
        for i in 0..r.bytes.len() {
            let mut bad = r.clone();
            bad.bytes[i] ^= 0x40;
            assert!(
                matches!(decode(&bad), Err(BackendError::Corrupt(_))),
                "byte {i}"
            );
            let mut short = r.clone();
            short.bytes.truncate(i);
            assert!(
                matches!(decode(&short), Err(BackendError::Corrupt(_))),
                "len {i}"
            );
        }
        let mut moved = r.clone();
        moved.sid = 1;
        assert!(decode(&moved).is_err());
    }
}
