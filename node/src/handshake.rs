//! The replication handshake (pure: bytes in, bytes out, no I/O) and the per-connection
//! frame ciphers it yields.
//!
//! The handshake is the Noise protocol [`NOISE_PARAMS`]
//! (`Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s`, via the `snow` crate): both sides contribute
//! a fresh ephemeral X25519 key, and the pre-shared key is derived from the cluster key
//! ([`ClusterKey::psk`]). Without the cluster key no message of the handshake can be
//! produced or read; without both fresh ephemerals the connection keys cannot be derived.
//!
//! ```text
//! dialer → acceptor   frame type 1: Init { cluster, key fingerprint, noise: psk, e }
//! acceptor → dialer   frame type 2: noise: e, ee, payload = acceptor's Hello (encrypted)
//! dialer → acceptor   first sealed frame: Message::Hello (dialer's hello)
//! ```
//! The cluster name and the key fingerprint travel in the clear (so a node can tell "other
//! cluster" and "key I do not hold" apart, and pick the key during a rotation) and are
//! bound to the handshake through the Noise prologue. The dialer admits the acceptor once
//! message 2 decrypts: only a holder of the key could produce it, and it depends on the
//! dialer's fresh ephemeral. The acceptor admits the dialer only after the first sealed
//! frame decrypts (key confirmation): a recorded message 1 replayed by someone without
//! the key gets a message 2 it cannot use and is dropped at the handshake deadline.
//!
//! After the handshake every frame is sealed with ChaCha20-Poly1305 under a key per
//! direction from the Noise split, with the frame header as associated data and a
//! per-direction counter as nonce (never sent: TCP keeps order, so a replayed, dropped,
//! reordered or reflected frame fails to open).

use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, CHACHA20_POLY1305};
use serde::{Deserialize, Serialize};

use crate::crypto::{ClusterKey, FINGERPRINT_LEN};
use crate::keyring::KeySet;
use crate::wire::{Hello, Versions};

/// The Noise protocol name.
pub const NOISE_PARAMS: &str = "Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s";
/// Largest handshake frame body accepted (and largest frame before authentication).
pub const HANDSHAKE_MAX_FRAME: usize = 4096;
/// Bytes of the AEAD tag at the end of every sealed frame.
pub const AEAD_TAG_LEN: usize = 16;
/// Frame type of handshake message 1 (dialer → acceptor).
pub const INIT_TYPE: u8 = 1;
/// Frame type of handshake message 2 (acceptor → dialer).
pub const RESPONSE_TYPE: u8 = 2;
const PROLOGUE_LABEL: &[u8] = b"tribe-replication v2";

/// Seals or opens the frames of one direction of one connection (ChaCha20-Poly1305 from
/// `ring`, whose assembly is several times faster than a portable implementation on the
/// small frames replication sends).
pub struct FrameCipher {
    aead: LessSafeKey,
    counter: u64,
}

impl std::fmt::Debug for FrameCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameCipher")
            .field("counter", &self.counter)
            .finish_non_exhaustive()
    }
}

impl FrameCipher {
    /// A cipher with a 32-byte key, counter at 0.
    pub fn new(key: &[u8; 32]) -> Self {
        FrameCipher {
            aead: LessSafeKey::new(
                UnboundKey::new(&CHACHA20_POLY1305, key).expect("a 32-byte ChaCha20 key"),
            ),
            counter: 0,
        }
    }

    fn nonce(&self) -> Nonce {
        // As in Noise's ChaChaPoly: 32 bits of zeros, then the counter (little endian).
        // Each counter value is used once per key: the counter only grows.
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&self.counter.to_le_bytes());
        Nonce::assume_unique_for_key(n)
    }

    /// Encrypts `buf` in place, authenticating `aad` too; returns the tag.
    pub fn seal(&mut self, aad: &[u8], buf: &mut [u8]) -> [u8; AEAD_TAG_LEN] {
        let tag = self
            .aead
            .seal_in_place_separate_tag(self.nonce(), Aad::from(aad), buf)
            // Only fails past 2^38 bytes in one frame; frames are bounded far below.
            .expect("frame size within the AEAD's limit");
        self.counter += 1;
        let mut out = [0u8; AEAD_TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Decrypts `buf` in place; false (and `buf` unspecified) when it does not open.
    pub fn open(&mut self, aad: &[u8], buf: &mut [u8], tag: &[u8]) -> bool {
        let Ok(tag) = Tag::try_from(tag) else {
            return false;
        };
        let ok = self
            .aead
            .open_in_place_separate_tag(self.nonce(), Aad::from(aad), tag, buf, 0..)
            .is_ok();
        if ok {
            self.counter += 1;
        }
        ok
    }
}

/// The two frame ciphers of one connection.
#[derive(Debug)]
pub struct SessionKeys {
    /// For frames this side sends.
    pub send: FrameCipher,
    /// For frames this side receives.
    pub recv: FrameCipher,
}

/// Why a handshake was refused. Each is counted by [`Refusal::reason`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The peer belongs to another cluster.
    #[error("peer is in cluster {0:?}")]
    OtherCluster(String),
    /// The dialer used a key this node does not hold.
    #[error("peer dialed with a key this node does not hold (fingerprint {0})")]
    UnknownKey(String),
    /// A handshake message did not decrypt: another key, tampering, or a replay.
    #[error("handshake message did not authenticate (another cluster key, tampering or replay)")]
    BadHandshake,
    /// A handshake message that does not parse.
    #[error("malformed handshake message")]
    Malformed,
    /// The acceptor said it does not hold our key (an empty message 2).
    #[error("the peer refused our cluster key")]
    RefusedByPeer,
}

impl Refusal {
    /// A short label for the metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::OtherCluster(_) => "other_cluster",
            Refusal::UnknownKey(_) => "unknown_key",
            Refusal::BadHandshake => "bad_handshake",
            Refusal::Malformed => "malformed",
            Refusal::RefusedByPeer => "refused_by_peer",
        }
    }

    /// Whether this says the peer holds other keys (as opposed to a cluster mismatch or
    /// garbage): such a peer makes this node "isolated by key".
    pub fn is_key_mismatch(&self) -> bool {
        matches!(
            self,
            Refusal::UnknownKey(_) | Refusal::BadHandshake | Refusal::RefusedByPeer
        )
    }
}

/// Body of handshake message 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Init {
    /// The dialer's cluster name.
    pub cluster: String,
    /// Fingerprint of the dialer's key.
    pub key: [u8; FINGERPRINT_LEN],
    /// Noise message 1 (`psk, e`).
    pub noise: Vec<u8>,
}

fn prologue(cluster: &str, fp: &[u8; FINGERPRINT_LEN]) -> Vec<u8> {
    let mut p = Vec::with_capacity(PROLOGUE_LABEL.len() + cluster.len() + 10);
    p.extend_from_slice(PROLOGUE_LABEL);
    p.push(0);
    p.extend_from_slice(cluster.as_bytes());
    p.push(0);
    p.extend_from_slice(fp);
    p
}

fn builder_state(key: &ClusterKey, cluster: &str, initiator: bool) -> snow::HandshakeState {
    let params: snow::params::NoiseParams = NOISE_PARAMS.parse().expect("valid Noise name");
    let psk = key.psk();
    let prologue = prologue(cluster, &key.fingerprint());
    let b = snow::Builder::new(params)
        .psk(0, &psk)
        .expect("psk0 is in the pattern")
        .prologue(&prologue)
        .expect("one prologue");
    if initiator {
        b.build_initiator()
    } else {
        b.build_responder()
    }
    .expect("the default resolver supports the pattern")
}

fn split(hs: &mut snow::HandshakeState, initiator: bool) -> SessionKeys {
    let (i2r, r2i) = hs.dangerously_get_raw_split();
    let (send, recv) = if initiator { (i2r, r2i) } else { (r2i, i2r) };
    SessionKeys {
        send: FrameCipher::new(&send),
        recv: FrameCipher::new(&recv),
    }
}

/// The dialer's side of a handshake in progress.
pub struct Initiator {
    hs: snow::HandshakeState,
    cluster: String,
}

impl std::fmt::Debug for Initiator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Initiator")
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

impl Initiator {
    /// Starts a handshake with the primary key, advertising [`Versions::CURRENT`];
    /// returns the state and message 1's body.
    pub fn start(keys: &KeySet, cluster: &str) -> (Self, Vec<u8>) {
        Self::start_with(keys, cluster, Versions::CURRENT)
    }

    /// [`Initiator::start`] advertising `versions`: the range travels as message 1's
    /// Noise payload (encrypted and authenticated under the cluster key; a release
    /// before negotiation reads and ignores it). A legacy range sends none, as such a
    /// release did.
    pub fn start_with(keys: &KeySet, cluster: &str, versions: Versions) -> (Self, Vec<u8>) {
        let key = &keys.primary().key;
        let mut hs = builder_state(key, cluster, true);
        let payload = if versions.is_legacy() {
            Vec::new()
        } else {
            postcard::to_extend(&versions, Vec::new()).expect("serialization to memory")
        };
        let mut buf = vec![0u8; 256];
        let n = hs
            .write_message(&payload, &mut buf)
            .expect("message 1 fits its buffer");
        buf.truncate(n);
        let init = Init {
            cluster: cluster.to_string(),
            key: key.fingerprint(),
            noise: buf,
        };
        let body = postcard::to_extend(&init, Vec::new()).expect("serialization to memory");
        (
            Initiator {
                hs,
                cluster: cluster.to_string(),
            },
            body,
        )
    }

    /// Reads message 2; on success the acceptor is authenticated and fresh.
    pub fn finish(mut self, msg2: &[u8]) -> Result<(Hello, SessionKeys), Refusal> {
        if msg2.is_empty() {
            return Err(Refusal::RefusedByPeer);
        }
        if msg2.len() > HANDSHAKE_MAX_FRAME {
            return Err(Refusal::Malformed);
        }
        let mut payload = vec![0u8; msg2.len()];
        let n = self
            .hs
            .read_message(msg2, &mut payload)
            .map_err(|_| Refusal::BadHandshake)?;
        let hello = Hello::decode(&payload[..n]).map_err(|_| Refusal::Malformed)?;
        if hello.cluster != self.cluster {
            return Err(Refusal::OtherCluster(hello.cluster));
        }
        Ok((hello, split(&mut self.hs, true)))
    }
}

/// The acceptor's side: reads message 1, answers with message 2 carrying `me`. Returns
/// message 2, the connection's ciphers and the id of the key the dialer used. The dialer
/// is not authenticated yet: its first sealed frame must open (see the module docs).
pub fn respond(
    keys: &KeySet,
    cluster: &str,
    init_body: &[u8],
    me: &Hello,
) -> Result<(Vec<u8>, SessionKeys, String), Refusal> {
    respond_with_versions(keys, cluster, init_body, me).map(|r| (r.message, r.keys, r.key_id))
}

/// What [`respond_with_versions`] yields.
#[derive(Debug)]
pub struct Response {
    /// Message 2's body.
    pub message: Vec<u8>,
    /// The connection's ciphers.
    pub keys: SessionKeys,
    /// The id of the key the dialer used.
    pub key_id: String,
    /// The protocol versions the dialer speaks ([`Versions::LEGACY`] when it sent none).
    pub versions: Versions,
}

/// [`respond`], also returning the dialer's protocol versions.
pub fn respond_with_versions(
    keys: &KeySet,
    cluster: &str,
    init_body: &[u8],
    me: &Hello,
) -> Result<Response, Refusal> {
    if init_body.len() > HANDSHAKE_MAX_FRAME {
        return Err(Refusal::Malformed);
    }
    let init: Init = postcard::from_bytes(init_body).map_err(|_| Refusal::Malformed)?;
    if init.cluster != cluster {
        return Err(Refusal::OtherCluster(init.cluster));
    }
    let entry = keys
        .by_fingerprint(&init.key)
        .ok_or_else(|| Refusal::UnknownKey(hex::encode(init.key)))?;
    let mut hs = builder_state(&entry.key, cluster, false);
    let mut scratch = vec![0u8; init.noise.len()];
    let n = hs
        .read_message(&init.noise, &mut scratch)
        .map_err(|_| Refusal::BadHandshake)?;
    let versions = if n == 0 {
        Versions::LEGACY
    } else {
        postcard::from_bytes(&scratch[..n]).map_err(|_| Refusal::Malformed)?
    };
    let payload = me.encode();
    let mut out = vec![0u8; payload.len() + 128];
    let n = hs
        .write_message(&payload, &mut out)
        .map_err(|_| Refusal::Malformed)?;
    out.truncate(n);
    Ok(Response {
        message: out,
        keys: split(&mut hs, false),
        key_id: entry.id.clone(),
        versions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(node: &str, cluster: &str) -> Hello {
        Hello {
            cluster: cluster.into(),
            node_id: node.into(),
            incarnation: 1,
            addr: "127.0.0.1:4000".parse().unwrap(),
            nonce: [0; 16],
            ready: true,
            versions: Versions::CURRENT,
        }
    }

    fn keys(secret: &str) -> KeySet {
        KeySet::parse(secret.as_bytes()).unwrap()
    }

    fn roundtrip(sender: &mut FrameCipher, receiver: &mut FrameCipher, msg: &[u8]) -> bool {
        let mut buf = msg.to_vec();
        let tag = sender.seal(b"hdr", &mut buf);
        assert_ne!(buf, msg, "sealed bytes differ from the plaintext");
        receiver.open(b"hdr", &mut buf, &tag) && buf == msg
    }

    #[test]
    fn a_handshake_yields_matching_ciphers() {
        let k = keys("0123456789abcdef-cluster");
        let (ini, m1) = Initiator::start(&k, "tribe");
        let (m2, mut acc, id) = respond(&k, "tribe", &m1, &hello("b", "tribe")).unwrap();
        assert_eq!(id, "default");
        let (peer, mut dia) = ini.finish(&m2).unwrap();
        assert_eq!(peer.node_id, "b");
        assert!(roundtrip(&mut dia.send, &mut acc.recv, b"first"));
        assert!(roundtrip(&mut acc.send, &mut dia.recv, b"answer"));
        assert!(roundtrip(&mut dia.send, &mut acc.recv, b"second"));
        // Reflection: the dialer's own frame sent back to it does not open.
        let mut buf = b"reflected".to_vec();
        let tag = dia.send.seal(b"hdr", &mut buf);
        assert!(!dia.recv.open(b"hdr", &mut buf, &tag));
        // Another header (associated data) does not open either.
        let mut buf = b"x".to_vec();
        let tag = acc.send.seal(b"hdr", &mut buf);
        assert!(!dia.recv.open(b"HDR", &mut buf, &tag));
    }

    #[test]
    fn every_connection_gets_fresh_keys() {
        let k = keys("0123456789abcdef-cluster");
        let (ini1, m1) = Initiator::start(&k, "tribe");
        let (ini2, m1b) = Initiator::start(&k, "tribe");
        assert_ne!(m1, m1b, "fresh ephemeral per dial");
        let (m2, mut a1, _) = respond(&k, "tribe", &m1, &hello("b", "tribe")).unwrap();
        let (m2b, _a2, _) = respond(&k, "tribe", &m1b, &hello("b", "tribe")).unwrap();
        let (_, mut d1) = ini1.finish(&m2).unwrap();
        let (_, mut d2) = ini2.finish(&m2b).unwrap();
        let mut x = b"same plaintext".to_vec();
        let mut y = x.clone();
        let t1 = d1.send.seal(b"", &mut x);
        let t2 = d2.send.seal(b"", &mut y);
        assert_ne!((x.clone(), t1), (y, t2));
        assert!(a1.recv.open(b"", &mut x, &t1));
    }

    #[test]
    fn a_replayed_message_one_gets_an_unusable_answer() {
        let k = keys("0123456789abcdef-cluster");
        let (ini, m1) = Initiator::start(&k, "tribe");
        let (m2, _acc, _) = respond(&k, "tribe", &m1, &hello("b", "tribe")).unwrap();
        ini.finish(&m2).unwrap();
        // An eavesdropper replays m1: the acceptor answers (it cannot know), but with a
        // fresh ephemeral, so its receive key differs from any key the replayer can know;
        // the replayer's only sealed frames (recorded from the original connection) do
        // not open.
        let (_m2_again, mut acc2, _) = respond(&k, "tribe", &m1, &hello("b", "tribe")).unwrap();
        let (ini3, m1c) = Initiator::start(&k, "tribe");
        let (m2c, _, _) = respond(&k, "tribe", &m1c, &hello("b", "tribe")).unwrap();
        let (_, mut other) = ini3.finish(&m2c).unwrap();
        let mut rec = b"recorded hello".to_vec();
        let tag = other.send.seal(b"", &mut rec);
        assert!(!acc2.recv.open(b"", &mut rec, &tag));
        // A replayed message 2 is refused by a fresh dialer.
        let (ini4, _) = Initiator::start(&k, "tribe");
        assert_eq!(ini4.finish(&m2).unwrap_err(), Refusal::BadHandshake);
    }

    #[test]
    fn other_keys_and_clusters_are_refused() {
        let k = keys("0123456789abcdef-cluster");
        let other = keys("0123456789abcdef-someone-else");
        let (_, m1) = Initiator::start(&other, "tribe");
        assert!(matches!(
            respond(&k, "tribe", &m1, &hello("b", "tribe")),
            Err(Refusal::UnknownKey(_))
        ));
        let (_, m1) = Initiator::start(&k, "shop");
        assert_eq!(
            respond(&k, "tribe", &m1, &hello("b", "tribe")).unwrap_err(),
            Refusal::OtherCluster("shop".into())
        );
        // The fingerprint of our key with another secret's Noise message: the Noise
        // message does not authenticate.
        let (_, m1) = Initiator::start(&other, "tribe");
        let mut init: Init = postcard::from_bytes(&m1).unwrap();
        init.key = k.primary().key.fingerprint();
        let forged = postcard::to_extend(&init, Vec::new()).unwrap();
        assert_eq!(
            respond(&k, "tribe", &forged, &hello("b", "tribe")).unwrap_err(),
            Refusal::BadHandshake
        );
        // An answer made with another key does not authenticate to the dialer.
        let (ini, _) = Initiator::start(&k, "tribe");
        let (_, m1o) = Initiator::start(&other, "tribe");
        let (m2o, _, _) = respond(&other, "tribe", &m1o, &hello("b", "tribe")).unwrap();
        assert_eq!(ini.finish(&m2o).unwrap_err(), Refusal::BadHandshake);
    }

    #[test]
    fn a_key_rotation_accepts_old_and_new() {
        let old = keys("0123456789abcdef-old");
        let both = KeySet::parse(
            KeySet::render(
                "new",
                &[
                    ("old", "0123456789abcdef-old"),
                    ("new", "0123456789abcdef-new"),
                ],
            )
            .as_bytes(),
        )
        .unwrap();
        // A node still on the old key dials one that has both (old primary or new).
        let (ini, m1) = Initiator::start(&old, "tribe");
        let (m2, _, id) = respond(&both, "tribe", &m1, &hello("b", "tribe")).unwrap();
        assert_eq!(id, "old");
        ini.finish(&m2).unwrap();
        // A node with the new primary dials one that has both.
        let (ini, m1) = Initiator::start(&both, "tribe");
        let (m2, _, id) = respond(&both, "tribe", &m1, &hello("b", "tribe")).unwrap();
        assert_eq!(id, "new");
        ini.finish(&m2).unwrap();
    }

    /// The range travels in message 1 (dialer's) and in message 2's hello (acceptor's);
    /// a legacy dialer sends none and reads a current acceptor's hello.
    #[test]
    fn version_ranges_are_exchanged_and_legacy_peers_understood() {
        let k = keys("0123456789abcdef-cluster");
        let (ini, m1) = Initiator::start(&k, "tribe");
        let r = respond_with_versions(&k, "tribe", &m1, &hello("b", "tribe")).unwrap();
        assert_eq!(r.versions, Versions::CURRENT);
        let (peer, _) = ini.finish(&r.message).unwrap();
        assert_eq!(peer.versions, Versions::CURRENT);
        // A legacy dialer and a legacy acceptor.
        let (ini, m1) = Initiator::start_with(&k, "tribe", Versions::LEGACY);
        let mut old = hello("b", "tribe");
        old.versions = Versions::LEGACY;
        let r = respond_with_versions(&k, "tribe", &m1, &old).unwrap();
        assert_eq!(r.versions, Versions::LEGACY);
        let (peer, _) = ini.finish(&r.message).unwrap();
        assert_eq!(peer.versions, Versions::LEGACY);
        // What a legacy node decodes from a current hello: the same fields.
        let current = hello("c", "tribe");
        let bytes = current.encode();
        let decoded = Hello::decode(&bytes).unwrap();
        assert_eq!(decoded, current);
    }

    /// Seeded random input to both handshake parsers: never a panic, always a refusal.
    #[test]
    fn random_handshake_bytes_are_refused_without_panic() {
        let k = keys("0123456789abcdef-cluster");
        let me = hello("b", "tribe");
        let (_, genuine) = Initiator::start(&k, "tribe");
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..400u32 {
            let len = (next() % 300) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if round % 2 == 1 && !genuine.is_empty() {
                // Mutate a genuine message 1: flip a few bytes, maybe truncate.
                bytes = genuine.clone();
                for _ in 0..=(next() % 4) {
                    let i = (next() as usize) % bytes.len();
                    bytes[i] ^= (next() as u8) | 1;
                }
                if next() % 3 == 0 {
                    bytes.truncate((next() as usize) % bytes.len());
                }
            }
            assert!(
                respond(&k, "tribe", &bytes, &me).is_err(),
                "round {round}: random bytes were accepted"
            );
            let (ini, _) = Initiator::start(&k, "tribe");
            assert!(ini.finish(&bytes).is_err(), "round {round}: message 2");
        }
        let huge = vec![0u8; HANDSHAKE_MAX_FRAME + 1];
        assert_eq!(
            respond(&k, "tribe", &huge, &me).unwrap_err(),
            Refusal::Malformed
        );
    }
}
