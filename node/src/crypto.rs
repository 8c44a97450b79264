//! The cluster key and what is derived from it.
//!
//! Multicast heartbeats and version cookies carry an HMAC-SHA256 tag made with it. The
//! replication channel uses it only as the pre-shared key of its Noise handshake
//! ([`ClusterKey::psk`], see [`crate::handshake`]), which yields fresh per-connection
//! encryption keys.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Length of every HMAC tag (multicast heartbeats, version cookies).
pub const TAG_LEN: usize = 32;
/// Length of a key fingerprint (the key's public name in the handshake).
pub const FINGERPRINT_LEN: usize = 8;

type HmacSha256 = Hmac<Sha256>;

/// A secret shared by every node of one cluster (the operator's `<name>-key` Secret).
#[derive(Clone)]
pub struct ClusterKey {
    mac: HmacSha256,
    insecure: bool,
}

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterKey")
            .field("insecure", &self.insecure)
            .finish_non_exhaustive()
    }
}

impl ClusterKey {
    /// A key from secret bytes (surrounding whitespace of a key file is ignored by the caller).
    pub fn new(secret: &[u8]) -> Self {
        Self {
            mac: <HmacSha256 as KeyInit>::new_from_slice(secret)
                .expect("HMAC takes any key length"),
            insecure: false,
        }
    }

    /// The well-known key used with `--insecure`: frames are still checked for integrity,
    /// but anyone can forge them.
    pub fn insecure() -> Self {
        Self {
            insecure: true,
            ..Self::new(b"tribe-insecure")
        }
    }

    /// Whether this is the `--insecure` key.
    pub fn is_insecure(&self) -> bool {
        self.insecure
    }

    /// HMAC over the concatenation of `parts`.
    pub fn tag(&self, parts: &[&[u8]]) -> [u8; TAG_LEN] {
        let mut mac = self.mac.clone();
        for p in parts {
            mac.update(p);
        }
        mac.finalize().into_bytes().into()
    }

    /// Constant-time check of `tag` over `parts`.
    pub fn verify(&self, parts: &[&[u8]], tag: &[u8]) -> bool {
        let mut mac = self.mac.clone();
        for p in parts {
            mac.update(p);
        }
        mac.verify_slice(tag).is_ok()
    }

    /// The 32-byte pre-shared key of the replication handshake (derived, so the raw
    /// secret is never used directly by two constructions).
    pub fn psk(&self) -> [u8; 32] {
        self.tag(&[b"tribe-noise-psk-v1"])
    }

    /// A public name for this key: sent in the clear by a dialer so that the acceptor can
    /// pick the matching key during a rotation. Reveals nothing usable about the secret
    /// (a truncated HMAC output).
    pub fn fingerprint(&self) -> [u8; FINGERPRINT_LEN] {
        let t = self.tag(&[b"tribe-key-fingerprint-v1"]);
        let mut fp = [0u8; FINGERPRINT_LEN];
        fp.copy_from_slice(&t[..FINGERPRINT_LEN]);
        fp
    }

    /// A key derived for one purpose (e.g. one connection, or cookie signing).
    pub fn derive(&self, label: &[u8], context: &[&[u8]]) -> ClusterKey {
        let mut parts: Vec<&[u8]> = vec![label];
        parts.extend_from_slice(context);
        let secret = self.tag(&parts);
        ClusterKey {
            insecure: self.insecure,
            ..ClusterKey::new(&secret)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_verify_and_differ_by_key() {
        let a = ClusterKey::new(b"a");
        let b = ClusterKey::new(b"b");
        let t = a.tag(&[b"hello", b"world"]);
        assert!(a.verify(&[b"helloworld"], &t));
        assert!(!b.verify(&[b"helloworld"], &t));
        assert!(!a.verify(&[b"helloworld!"], &t));
        let d1 = a.derive(b"conn", &[b"n1"]);
        let d2 = a.derive(b"conn", &[b"n2"]);
        assert_ne!(d1.tag(&[b"x"]), d2.tag(&[b"x"]));
    }
}
