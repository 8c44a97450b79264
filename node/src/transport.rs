//! TCP connections between peers: dialing, the authenticated handshake, and framed
//! halves ready for the cluster's read and write loops.
//!
//! The handshake is Noise `NNpsk0` with the cluster key as pre-shared key (see
//! [`crate::handshake`]): both sides contribute fresh randomness, and each connection gets
//! its own frame keys. The acceptor admits the dialer only once the dialer's first sealed
//! frame (its [`Hello`]) opens, so a replayed or reflected handshake never becomes a
//! member. Before that point only handshake-sized frames are read
//! ([`HANDSHAKE_MAX_FRAME`]) and the whole exchange must finish within
//! [`HANDSHAKE_TIMEOUT`].

use std::net::SocketAddr;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_util::codec::{FramedRead, FramedWrite};

use crate::crypto::FINGERPRINT_LEN;
use crate::handshake::{
    self, Initiator, Refusal, SessionKeys, HANDSHAKE_MAX_FRAME, INIT_TYPE, RESPONSE_TYPE,
};
use crate::keyring::Keys;
use crate::wire::{
    self, FrameDecoder, FrameEncoder, Hello, Message, Versions, WireError, HEADER_LEN,
};

/// Read half of a peer connection.
pub type Reader = FramedRead<OwnedReadHalf, FrameDecoder>;
/// Write half of a peer connection.
pub type Writer = FramedWrite<OwnedWriteHalf, FrameEncoder>;

/// How long a handshake may take, from TCP accept (or connect) to admission.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long an accepted connection may take to send the handshake's first message (a
/// dialer sends it as soon as TCP connects): an idle connection gives its handshake slot
/// back after this, not after the whole [`HANDSHAKE_TIMEOUT`].
pub const FIRST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(1);
/// Read buffer of an admitted connection.
const READ_BUFFER: usize = 64 * 1024;

/// An authenticated connection to a peer.
#[derive(Debug)]
pub struct Connection {
    /// The peer's hello.
    pub peer: Hello,
    /// Read half.
    pub rd: Reader,
    /// Write half.
    pub wr: Writer,
    /// Fingerprint of the cluster key the connection was made with: when the key file
    /// no longer holds it, the connection is closed (see [`Keys::dropped`]).
    pub key: [u8; FINGERPRINT_LEN],
    /// That key's id in the key file.
    pub key_id: String,
    /// The protocol version of the connection's frames (the highest both ends speak).
    pub version: u8,
}

/// Why a connection could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// TCP connect failed (the failure detector's confirmation).
    #[error("connect failed: {0}")]
    Connect(#[source] std::io::Error),
    /// The peer did not answer in time.
    #[error("handshake timed out")]
    Timeout,
    /// The peer closed the connection.
    #[error("peer closed the connection during the handshake")]
    Closed,
    /// A bad frame (garbage, oversized, a sealed frame that does not open...).
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The peer belongs to another cluster.
    #[error("peer is in cluster {0:?}")]
    OtherCluster(String),
    /// The first frame was not the expected handshake message.
    #[error("unexpected first message")]
    Unexpected,
    /// The handshake itself was refused (key, cluster, garbage).
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The two ends speak no common protocol version.
    #[error("no common protocol version: the peer speaks {theirs}, this node {ours}")]
    VersionSkew {
        /// The peer's range.
        theirs: Versions,
        /// This node's range.
        ours: Versions,
    },
}

impl HandshakeError {
    /// Whether this is a failed TCP connect (as opposed to a protocol problem).
    pub fn is_connect(&self) -> bool {
        matches!(self, HandshakeError::Connect(_) | HandshakeError::Timeout)
    }

    /// A short label for `tribe_handshake_failures_total{reason}`.
    pub fn reason(&self) -> &'static str {
        match self {
            HandshakeError::Connect(_) => "connect",
            HandshakeError::Timeout => "timeout",
            HandshakeError::Closed => "closed",
            HandshakeError::Wire(w) => w.reason(),
            HandshakeError::OtherCluster(_) => "other_cluster",
            HandshakeError::Unexpected => "unexpected",
            HandshakeError::Refused(r) => r.reason(),
            HandshakeError::VersionSkew { .. } => "version_skew",
        }
    }

    /// Whether, seen from the dialer, the peer answered TCP but does not share our keys:
    /// it said so (an empty message 2), or its answer did not authenticate.
    pub fn is_key_refusal(&self) -> bool {
        matches!(self, HandshakeError::Refused(r) if r.is_key_mismatch())
    }
}

/// Kernel-level liveness under the application heartbeats: unacknowledged data for this
/// long fails the socket (`TCP_USER_TIMEOUT`), and idle connections are probed.
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(5);

/// No Nagle delay, TCP keepalive and `TCP_USER_TIMEOUT` on a peer connection.
fn tune(stream: &TcpStream) {
    let sock = socket2::SockRef::from(stream);
    let _ = sock.set_tcp_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(2))
        .with_interval(Duration::from_secs(1))
        .with_retries(3);
    let _ = sock.set_tcp_keepalive(&keepalive);
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let _ = sock.set_tcp_user_timeout(Some(TCP_USER_TIMEOUT));
}

/// A fresh random nonce (the hello's `nonce` field; freshness comes from the handshake).
pub fn nonce() -> [u8; 16] {
    rand::random()
}

/// Writes one cleartext handshake frame.
async fn write_handshake(stream: &mut TcpStream, ty: u8, body: &[u8]) -> Result<(), WireError> {
    let mut frame = Vec::with_capacity(HEADER_LEN + body.len());
    frame.extend_from_slice(&wire::handshake_header(ty, body.len()));
    frame.extend_from_slice(body);
    stream.write_all(&frame).await?;
    Ok(())
}

/// Reads one cleartext handshake frame of type `ty`: the header is checked before the
/// body is read, and no body over [`HANDSHAKE_MAX_FRAME`] is ever buffered.
async fn read_handshake(stream: &mut TcpStream, ty: u8) -> Result<Vec<u8>, HandshakeError> {
    let mut h = [0u8; HEADER_LEN];
    if let Err(e) = stream.read_exact(&mut h).await {
        return Err(if e.kind() == std::io::ErrorKind::UnexpectedEof {
            HandshakeError::Closed
        } else {
            HandshakeError::Wire(e.into())
        });
    }
    let len = wire::check_handshake_header(&h, ty, HANDSHAKE_MAX_FRAME)?;
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            HandshakeError::Wire(WireError::Io(e))
        } else {
            HandshakeError::Wire(e.into())
        }
    })?;
    Ok(body)
}

fn split(
    stream: TcpStream,
    keys: SessionKeys,
    version: u8,
    max_frame: usize,
    buffer: usize,
) -> (Reader, Writer) {
    let (r, w) = stream.into_split();
    let mut dec = FrameDecoder::new(keys.recv, max_frame);
    dec.set_version(version);
    let mut enc = FrameEncoder::new(keys.send);
    enc.set_version(version);
    (
        FramedRead::with_capacity(r, dec, buffer),
        FramedWrite::new(w, enc),
    )
}

/// Dials `addr`, handshakes, and returns the authenticated connection.
pub async fn dial(
    addr: SocketAddr,
    mut me: Hello,
    keys: &Keys,
    max_frame: usize,
    connect_timeout: Duration,
) -> Result<Connection, HandshakeError> {
    // A connect that times out is a failed connect (nothing answers); a handshake that
    // times out once TCP is up is [`HandshakeError::Timeout`].
    let mut stream = tokio::time::timeout(connect_timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| {
            HandshakeError::Connect(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "TCP connect timed out",
            ))
        })?
        .map_err(HandshakeError::Connect)?;
    tune(&stream);
    me.nonce = nonce();
    let set = keys.current();
    let key = set.primary().key.fingerprint();
    let key_id = set.primary().id.clone();
    let exchange = async {
        let (initiator, m1) = Initiator::start_with(&set, &me.cluster, me.versions);
        write_handshake(&mut stream, INIT_TYPE, &m1).await?;
        let m2 = read_handshake(&mut stream, RESPONSE_TYPE).await?;
        let (peer, session) = initiator.finish(&m2)?;
        let Some(version) = me.versions.negotiate(peer.versions) else {
            return Err(HandshakeError::VersionSkew {
                theirs: peer.versions,
                ours: me.versions,
            });
        };
        let (rd, mut wr) = split(stream, session, version, max_frame, READ_BUFFER);
        // Key confirmation: our hello, sealed, is what admits us on the other side.
        wr.send(Message::Hello(me).outgoing()).await?;
        Ok::<_, HandshakeError>(Connection {
            peer,
            rd,
            wr,
            key,
            key_id,
            version,
        })
    };
    let res = tokio::time::timeout(HANDSHAKE_TIMEOUT, exchange)
        .await
        .map_err(|_| HandshakeError::Timeout)
        .and_then(|r| r);
    match &res {
        Ok(_) => keys.record_success(addr),
        Err(e) if e.is_key_refusal() => keys.record_refusal(addr),
        // Nothing listens there any more: it refuses nothing.
        Err(HandshakeError::Connect(_)) => keys.forget(addr),
        Err(_) => {}
    }
    res
}

/// Handshakes an accepted connection; returns the authenticated connection.
pub async fn accept(
    mut stream: TcpStream,
    mut me: Hello,
    keys: &Keys,
    max_frame: usize,
) -> Result<Connection, HandshakeError> {
    tune(&stream);
    me.nonce = nonce();
    let set = keys.current();
    let exchange = async {
        let m1 = tokio::time::timeout(
            FIRST_MESSAGE_TIMEOUT,
            read_handshake(&mut stream, INIT_TYPE),
        )
        .await
        .map_err(|_| HandshakeError::Timeout)??;
        let resp = match handshake::respond_with_versions(&set, &me.cluster, &m1, &me) {
            Ok(x) => x,
            Err(e) => {
                if e.is_key_mismatch() {
                    // Tell the dialer (an empty message 2) so that a node holding another
                    // key knows it is cut off, rather than guessing from a closed socket.
                    let _ = tokio::time::timeout(
                        Duration::from_millis(200),
                        write_handshake(&mut stream, RESPONSE_TYPE, &[]),
                    )
                    .await;
                }
                return Err(e.into());
            }
        };
        // Message 2 carries our range: a dialer we cannot talk with learns why, too.
        write_handshake(&mut stream, RESPONSE_TYPE, &resp.message).await?;
        let Some(version) = me.versions.negotiate(resp.versions) else {
            return Err(HandshakeError::VersionSkew {
                theirs: resp.versions,
                ours: me.versions,
            });
        };
        let key_id = resp.key_id;
        // Not admitted yet: only a handshake-sized sealed hello is read.
        let (mut rd, wr) = split(stream, resp.keys, version, HANDSHAKE_MAX_FRAME, 512);
        let peer = match rd.next().await {
            Some(Ok(Message::Hello(h))) => h,
            Some(Ok(_)) => return Err(HandshakeError::Unexpected),
            Some(Err(e)) => return Err(e.into()),
            None => return Err(HandshakeError::Closed),
        };
        if peer.cluster != me.cluster {
            return Err(HandshakeError::OtherCluster(peer.cluster));
        }
        rd.decoder_mut().set_max_frame(max_frame);
        rd.read_buffer_mut().reserve(READ_BUFFER);
        let key = set
            .entries()
            .iter()
            .find(|e| e.id == key_id)
            .map(|e| e.key.fingerprint())
            .unwrap_or_default();
        Ok(Connection {
            peer,
            rd,
            wr,
            key,
            key_id,
            version,
        })
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, exchange)
        .await
        .map_err(|_| HandshakeError::Timeout)?
}

/// The failure detector's check: can a TCP connection to `addr` be opened?
pub async fn tcp_check(addr: SocketAddr, timeout: Duration) -> bool {
    matches!(
        tokio::time::timeout(timeout, TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}
