//! TCP connections between peers: dialing, the authenticated handshake, and framed
//! halves ready for the cluster's read and write loops.
//!
//! Handshake: the dialer sends `Hello` (fresh nonce) tagged with the cluster key; the
//! acceptor checks the tag and the cluster name and answers `HelloAck` (its nonce); both
//! then switch to a connection key `HMAC(cluster key, "tribe-conn" | nonce_d | nonce_a)`.

use std::net::SocketAddr;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_util::codec::{FramedRead, FramedWrite};

use crate::crypto::ClusterKey;
use crate::wire::{FrameDecoder, FrameEncoder, Hello, Message, Side, WireError};

/// Read half of a peer connection.
pub type Reader = FramedRead<OwnedReadHalf, FrameDecoder>;
/// Write half of a peer connection.
pub type Writer = FramedWrite<OwnedWriteHalf, FrameEncoder>;

/// How long a handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);

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
    /// A bad frame (wrong key, garbage...).
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The peer belongs to another cluster.
    #[error("peer is in cluster {0:?}")]
    OtherCluster(String),
    /// The first frame was not a hello.
    #[error("unexpected first message")]
    Unexpected,
}

impl HandshakeError {
    /// Whether this is a failed TCP connect (as opposed to a protocol problem).
    pub fn is_connect(&self) -> bool {
        matches!(self, HandshakeError::Connect(_) | HandshakeError::Timeout)
    }
}

fn connection_key(
    key: &ClusterKey,
    dialer_nonce: &[u8; 16],
    acceptor_nonce: &[u8; 16],
) -> ClusterKey {
    key.derive(b"tribe-conn", &[dialer_nonce, acceptor_nonce])
}

/// Kernel-level liveness under the application heartbeats: unacknowledged data for this
/// long fails the socket (`TCP_USER_TIMEOUT`), and idle connections are probed.
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(5);

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

fn split(stream: TcpStream, key: &ClusterKey, side: Side, max_frame: usize) -> (Reader, Writer) {
    tune(&stream);
    let (r, w) = stream.into_split();
    (
        FramedRead::with_capacity(
            r,
            FrameDecoder::new(key.clone(), side, max_frame),
            64 * 1024,
        ),
        FramedWrite::new(w, FrameEncoder::new(key.clone(), side)),
    )
}

/// A fresh random nonce.
pub fn nonce() -> [u8; 16] {
    rand::random()
}

/// Dials `addr`, handshakes, and returns the peer's hello and the framed halves.
pub async fn dial(
    addr: SocketAddr,
    mut me: Hello,
    key: &ClusterKey,
    max_frame: usize,
    connect_timeout: Duration,
) -> Result<(Hello, Reader, Writer), HandshakeError> {
    let stream = tokio::time::timeout(connect_timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| HandshakeError::Timeout)?
        .map_err(HandshakeError::Connect)?;
    let (mut rd, mut wr) = split(stream, key, Side::Dialer, max_frame);
    me.nonce = nonce();
    let cluster = me.cluster.clone();
    let my_nonce = me.nonce;
    let exchange = async {
        wr.send(Message::Hello(me).outgoing()).await?;
        match rd.next().await {
            Some(Ok(Message::HelloAck(peer))) => Ok(peer),
            Some(Ok(_)) => Err(HandshakeError::Unexpected),
            Some(Err(e)) => Err(e.into()),
            None => Err(HandshakeError::Closed),
        }
    };
    let peer = tokio::time::timeout(HANDSHAKE_TIMEOUT, exchange)
        .await
        .map_err(|_| HandshakeError::Timeout)??;
    if peer.cluster != cluster {
        return Err(HandshakeError::OtherCluster(peer.cluster));
    }
    let k = connection_key(key, &my_nonce, &peer.nonce);
    rd.decoder_mut().rekey(k.clone());
    wr.encoder_mut().rekey(k);
    Ok((peer, rd, wr))
}

/// Handshakes an accepted connection; returns the peer's hello and the framed halves.
pub async fn accept(
    stream: TcpStream,
    mut me: Hello,
    key: &ClusterKey,
    max_frame: usize,
) -> Result<(Hello, Reader, Writer), HandshakeError> {
    let (mut rd, mut wr) = split(stream, key, Side::Acceptor, max_frame);
    let peer = tokio::time::timeout(HANDSHAKE_TIMEOUT, rd.next())
        .await
        .map_err(|_| HandshakeError::Timeout)?;
    let peer = match peer {
        Some(Ok(Message::Hello(h))) => h,
        Some(Ok(_)) => return Err(HandshakeError::Unexpected),
        Some(Err(e)) => return Err(e.into()),
        None => return Err(HandshakeError::Closed),
    };
    if peer.cluster != me.cluster {
        return Err(HandshakeError::OtherCluster(peer.cluster));
    }
    me.nonce = nonce();
    let k = connection_key(key, &peer.nonce, &me.nonce);
    tokio::time::timeout(HANDSHAKE_TIMEOUT, wr.send(Message::HelloAck(me).outgoing()))
        .await
        .map_err(|_| HandshakeError::Timeout)??;
    rd.decoder_mut().rekey(k.clone());
    wr.encoder_mut().rekey(k);
    Ok((peer, rd, wr))
}

/// The failure detector's check: can a TCP connection to `addr` be opened?
pub async fn tcp_check(addr: SocketAddr, timeout: Duration) -> bool {
    matches!(
        tokio::time::timeout(timeout, TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}
