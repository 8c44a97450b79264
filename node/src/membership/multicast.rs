//! Multicast membership (Tomcat's McastService): every node sends a signed heartbeat to
//! a UDP group every `--heartbeat-interval` and keeps a table of the members it hears.
//!
//! - Wire: `MAGIC` (4 bytes), `VERSION` (1 byte), a postcard [`Heartbeat`], then a
//!   32-byte HMAC-SHA256 tag (cluster key, domain-separated by [`TAG_LABEL`]) over
//!   everything before it. Anything else — short, long, wrong magic or version, bad tag,
//!   trailing bytes, another cluster, an unusable address — is dropped and counted in
//!   [`Stats::heartbeats_rejected`]; nothing from the network can panic this loop.
//! - Table ([`MemberTable`], pure, no I/O): keyed by replication address. A newer
//!   incarnation at the same address replaces the old member; an older one is ignored;
//!   a member silent for `--member-timeout` expires; a `leaving` heartbeat removes the
//!   member at once and leaves a tombstone so a late, reordered heartbeat of the same
//!   incarnation does not bring it back.
//! - Replay: a recorded heartbeat can at worst re-propose an address as a candidate; the
//!   transport admits a member only after its authenticated handshake, so heartbeats
//!   carry no timestamp or sequence number.
//! - Socket (socket2): `SO_REUSEADDR` + `SO_REUSEPORT` (several nodes on one host), bound
//!   to the group address and port (so unicast traffic to the port is not received),
//!   `IP_MULTICAST_ALL` off (only our group), joined on the chosen interface,
//!   `IP_MULTICAST_IF`, TTL, and `IP_MULTICAST_LOOP` on so nodes on one host hear each
//!   other.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::{Candidate, MembershipError, Merger, SelfInfo, SourceKind, Sources};
use crate::crypto::{ClusterKey, TAG_LEN};

/// First bytes of every heartbeat datagram.
pub const MAGIC: [u8; 4] = *b"TRHB";
/// Heartbeat format version.
pub const VERSION: u8 = 1;
/// Largest heartbeat accepted or sent (well under any MTU).
pub const MAX_DATAGRAM: usize = 1024;
/// Label mixed into the heartbeat MAC so it can never pass for another kind of tag.
pub const TAG_LABEL: &[u8] = b"tribe/heartbeat/v1";
/// Copies of the leaving heartbeat sent (UDP is lossy; duplicates are harmless).
const LEAVING_COPIES: usize = 3;

/// Discovery counters, exported as metrics by the node.
#[derive(Debug, Default)]
pub struct Stats {
    /// Heartbeats this node sent (including leaving ones).
    pub heartbeats_sent: AtomicU64,
    /// Valid heartbeats received from other members of this cluster.
    pub heartbeats_received: AtomicU64,
    /// Datagrams dropped: malformed, badly signed, or from another cluster.
    pub heartbeats_rejected: AtomicU64,
    /// DNS lookups of `--dns-name` that returned an answer (possibly empty).
    pub dns_lookups: AtomicU64,
    /// DNS lookups that failed transiently (the previous set was kept).
    pub dns_lookup_failures: AtomicU64,
}

impl Stats {
    fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// (name, help, value) of every counter, as exported.
    pub fn counters(&self) -> [(&'static str, &'static str, u64); 5] {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            (
                "heartbeats_sent",
                "Multicast heartbeats sent",
                get(&self.heartbeats_sent),
            ),
            (
                "heartbeats_received",
                "Valid multicast heartbeats received from members",
                get(&self.heartbeats_received),
            ),
            (
                "heartbeats_rejected",
                "Multicast datagrams dropped: malformed, badly signed or another cluster",
                get(&self.heartbeats_rejected),
            ),
            (
                "dns_lookups",
                "DNS lookups of the members name answered",
                get(&self.dns_lookups),
            ),
            (
                "dns_lookup_failures",
                "DNS lookups that failed (the last peer set was kept)",
                get(&self.dns_lookup_failures),
            ),
        ]
    }
}

/// Read at every scrape: `registry.register_collector(Box::new(discovery.stats.clone()))`
/// exports the counters as `heartbeats_sent_total`, … (prefixed like the registry).
impl prometheus_client::collector::Collector for Stats {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        for (name, help, value) in self.counters() {
            let counter = ConstCounter::new(value);
            let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric)?;
        }
        Ok(())
    }
}

/// What one heartbeat says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Cluster name (other clusters are ignored).
    pub cluster: String,
    /// Sender's node id.
    pub node_id: String,
    /// Sender's incarnation (start time, unix ms).
    pub incarnation: u64,
    /// Sender's replication address.
    pub addr: SocketAddr,
    /// The sender is shutting down: drop it now.
    pub leaving: bool,
}

/// Why a datagram was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// Shorter than a header plus a tag, or longer than [`MAX_DATAGRAM`].
    Size,
    /// Not our magic.
    Magic,
    /// Unknown format version.
    Version,
    /// The MAC does not verify (another key, or tampered).
    Tag,
    /// The body is not a heartbeat, or has trailing bytes.
    Body,
    /// Another cluster's heartbeat.
    Cluster,
    /// The advertised address cannot be dialled (unspecified or port 0).
    Addr,
}

/// Encodes and signs a heartbeat.
pub fn encode(hb: &Heartbeat, key: &ClusterKey) -> Result<Vec<u8>, postcard::Error> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    let out = postcard::to_extend(hb, out)?;
    let tag = key.tag(&[TAG_LABEL, &out]);
    let mut out = out;
    out.extend_from_slice(&tag);
    Ok(out)
}

/// Checks and decodes a datagram; `cluster` is this node's cluster name.
pub fn decode(datagram: &[u8], key: &ClusterKey, cluster: &str) -> Result<Heartbeat, Reject> {
    let header = MAGIC.len() + 1;
    if datagram.len() < header + TAG_LEN || datagram.len() > MAX_DATAGRAM {
        return Err(Reject::Size);
    }
    if datagram[..MAGIC.len()] != MAGIC {
        return Err(Reject::Magic);
    }
    if datagram[MAGIC.len()] != VERSION {
        return Err(Reject::Version);
    }
    let (signed, tag) = datagram.split_at(datagram.len() - TAG_LEN);
    if !key.verify(&[TAG_LABEL, signed], tag) {
        return Err(Reject::Tag);
    }
    let hb: Heartbeat = match postcard::take_from_bytes(&signed[header..]) {
        Ok((hb, [])) => hb,
        _ => return Err(Reject::Body),
    };
    if hb.cluster != cluster {
        return Err(Reject::Cluster);
    }
    if hb.addr.ip().is_unspecified() || hb.addr.port() == 0 || hb.addr.ip().is_multicast() {
        return Err(Reject::Addr);
    }
    Ok(hb)
}

/// What [`MemberTable::observe`] did with a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// Our own heartbeat (multicast loop), or one claiming our address.
    Own,
    /// An older incarnation than the member we know at that address, or a late
    /// heartbeat of a member that said it was leaving.
    Stale,
    /// A new member.
    Joined,
    /// A known member is still there.
    Refreshed,
    /// A new incarnation (or another node) at a known address.
    Replaced,
    /// The member is leaving and was removed.
    Left,
}

impl Observed {
    /// Whether the candidate set changed.
    pub fn changed(self) -> bool {
        matches!(self, Observed::Joined | Observed::Replaced | Observed::Left)
    }
}

#[derive(Debug, Clone)]
struct Member {
    node_id: String,
    incarnation: u64,
    last_seen: Instant,
}

/// The members heard on the group: pure bookkeeping, the caller supplies the time.
#[derive(Debug)]
pub struct MemberTable {
    me_node: String,
    me_incarnation: u64,
    me_addr: SocketAddr,
    timeout: Duration,
    members: BTreeMap<SocketAddr, Member>,
    /// Address → (incarnation that left, until when its heartbeats are ignored).
    left: BTreeMap<SocketAddr, (u64, Instant)>,
}

impl MemberTable {
    /// An empty table for this node; members silent for `timeout` expire.
    pub fn new(me: &SelfInfo, timeout: Duration) -> Self {
        Self {
            me_node: me.node_id.clone(),
            me_incarnation: me.incarnation,
            me_addr: me.advertise,
            timeout,
            members: BTreeMap::new(),
            left: BTreeMap::new(),
        }
    }

    /// Records a (valid, same-cluster) heartbeat heard at `now`.
    pub fn observe(&mut self, hb: &Heartbeat, now: Instant) -> Observed {
        if (hb.node_id == self.me_node && hb.incarnation == self.me_incarnation)
            || hb.addr == self.me_addr
        {
            return Observed::Own;
        }
        if let Some(&(incarnation, until)) = self.left.get(&hb.addr) {
            if now < until && hb.incarnation <= incarnation {
                return Observed::Stale;
            }
        }
        if hb.leaving {
            self.left
                .insert(hb.addr, (hb.incarnation, now + self.timeout));
            return match self.members.get(&hb.addr) {
                Some(m) if m.incarnation <= hb.incarnation => {
                    self.members.remove(&hb.addr);
                    Observed::Left
                }
                _ => Observed::Stale,
            };
        }
        match self.members.get_mut(&hb.addr) {
            Some(m) if hb.incarnation < m.incarnation => Observed::Stale,
            Some(m) if hb.incarnation == m.incarnation && hb.node_id == m.node_id => {
                m.last_seen = now;
                Observed::Refreshed
            }
            Some(m) => {
                *m = Member {
                    node_id: hb.node_id.clone(),
                    incarnation: hb.incarnation,
                    last_seen: now,
                };
                Observed::Replaced
            }
            None => {
                let member = Member {
                    node_id: hb.node_id.clone(),
                    incarnation: hb.incarnation,
                    last_seen: now,
                };
                self.members.insert(hb.addr, member);
                Observed::Joined
            }
        }
    }

    /// Removes members silent for the timeout (and old tombstones); returns the removed
    /// members' addresses.
    pub fn expire(&mut self, now: Instant) -> Vec<SocketAddr> {
        let timeout = self.timeout;
        let gone: Vec<SocketAddr> = self
            .members
            .iter()
            .filter(|(_, m)| now.saturating_duration_since(m.last_seen) >= timeout)
            .map(|(a, _)| *a)
            .collect();
        for a in &gone {
            self.members.remove(a);
        }
        self.left.retain(|_, (_, until)| now < *until);
        gone
    }

    /// When the next member expires, if any.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.members
            .values()
            .map(|m| m.last_seen + self.timeout)
            .min()
    }

    /// The members as discovery candidates.
    pub fn candidates(&self) -> Vec<Candidate> {
        self.members
            .iter()
            .map(|(addr, m)| Candidate {
                addr: *addr,
                node_id: Some(m.node_id.clone()),
                incarnation: Some(m.incarnation),
                sources: Sources {
                    multicast: true,
                    ..Sources::default()
                },
            })
            .collect()
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether no member is known.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }
}

/// The interface to use: an IPv4 address as given, an interface name's first IPv4
/// address, or (no spec) the address of the default route's interface.
pub fn resolve_interface(spec: Option<&str>) -> Result<Ipv4Addr, MembershipError> {
    let name = match spec.map(str::trim) {
        Some(s) => {
            if let Ok(ip) = s.parse::<Ipv4Addr>() {
                return Ok(ip);
            }
            s.to_string()
        }
        None => {
            let routes = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
            default_route_interface(&routes)
                .ok_or_else(|| MembershipError::Interface("<default route>".into()))?
        }
    };
    let addrs = if_addrs::get_if_addrs().map_err(MembershipError::Multicast)?;
    addrs
        .iter()
        .filter(|i| i.name == name)
        .find_map(|i| match i.addr.ip() {
            IpAddr::V4(ip) => Some(ip),
            IpAddr::V6(_) => None,
        })
        .ok_or(MembershipError::Interface(name))
}

/// The interface of the default IPv4 route (lowest metric) in `/proc/net/route` text.
pub fn default_route_interface(route_table: &str) -> Option<String> {
    const RTF_UP: u32 = 0x1;
    route_table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 {
                return None;
            }
            let flags = u32::from_str_radix(f[3], 16).ok()?;
            let metric: u32 = f[6].parse().ok()?;
            (f[1] == "00000000" && f[7] == "00000000" && flags & RTF_UP != 0)
                .then(|| (metric, f[0].to_string()))
        })
        .min()
        .map(|(_, name)| name)
}

/// Opens the group socket: bound to `group`, joined on `interface`.
pub fn open_socket(
    group: SocketAddrV4,
    interface: Ipv4Addr,
    ttl: u32,
) -> std::io::Result<UdpSocket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_multicast_all_v4(false)?;
    socket.bind(&SocketAddr::V4(group).into())?;
    socket.join_multicast_v4(group.ip(), &interface)?;
    socket.set_multicast_if_v4(&interface)?;
    socket.set_multicast_ttl_v4(ttl)?;
    socket.set_multicast_loop_v4(true)?;
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket.into())
}

/// The group address from the config, checked to be IPv4 multicast.
pub fn group_addr(addr: SocketAddr) -> Result<SocketAddrV4, MembershipError> {
    match addr {
        SocketAddr::V4(v4) if v4.ip().is_multicast() => Ok(v4),
        other => Err(MembershipError::Multicast(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{other} is not an IPv4 multicast group"),
        ))),
    }
}

/// Heartbeat timing.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Between two heartbeats.
    pub interval: Duration,
    /// Silence after which a member expires.
    pub member_timeout: Duration,
}

/// Asks the multicast task to announce that this node leaves; resolves when sent.
pub(crate) type LeaveRequest = oneshot::Sender<()>;

/// Everything the multicast loop needs.
pub(crate) struct Task {
    pub socket: UdpSocket,
    pub group: SocketAddrV4,
    pub me: SelfInfo,
    pub keys: crate::keyring::Keys,
    pub timing: Timing,
    pub merger: Arc<Merger>,
    pub stats: Arc<Stats>,
    pub first_round: watch::Sender<bool>,
    pub leave: mpsc::Receiver<LeaveRequest>,
    pub shutdown: CancellationToken,
}

impl Task {
    /// Heartbeats, listens and expires members until shutdown.
    pub(crate) async fn run(mut self) {
        let hb = Heartbeat {
            cluster: self.me.cluster.clone(),
            node_id: self.me.node_id.clone(),
            incarnation: self.me.incarnation,
            addr: self.me.advertise,
            leaving: false,
        };
        // Both heartbeats, tagged with the current primary key; re-encoded when the key
        // file changes.
        let encode_both = |key: &ClusterKey| match (
            encode(&hb, key),
            encode(
                &Heartbeat {
                    leaving: true,
                    ..hb.clone()
                },
                key,
            ),
        ) {
            (Ok(a), Ok(l)) => Some((a, l)),
            _ => None,
        };
        let mut key_set = self.keys.current();
        let Some((mut alive, mut leaving)) = encode_both(&key_set.primary().key) else {
            tracing::error!("cannot encode a heartbeat; multicast discovery stopped");
            return;
        };
        let mut table = MemberTable::new(&self.me, self.timing.member_timeout);
        let mut ticker = tokio::time::interval(self.timing.interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let first_round_at = Instant::now() + self.timing.interval * 2 + Duration::from_millis(50);
        let mut heartbeating = true;
        let mut leave_open = true;
        let mut send_failing = false;
        let mut buf = vec![0u8; MAX_DATAGRAM + 1];
        let far_future = Instant::now() + Duration::from_secs(86400 * 365);
        loop {
            let next_expiry = table.next_expiry().unwrap_or(far_future);
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                _ = ticker.tick(), if heartbeating => {
                    let now = self.keys.current();
                    if !Arc::ptr_eq(&now, &key_set) {
                        if let Some((a, l)) = encode_both(&now.primary().key) {
                            (alive, leaving) = (a, l);
                        }
                        key_set = now;
                    }
                    self.send(&alive, &mut send_failing).await;
                }
                _ = tokio::time::sleep_until(first_round_at), if !*self.first_round.borrow() => {
                    self.first_round.send_replace(true);
                }
                _ = tokio::time::sleep_until(next_expiry) => {
                    let gone = table.expire(Instant::now());
                    if !gone.is_empty() {
                        tracing::info!(?gone, "multicast members silent for {:?}: no longer candidates", self.timing.member_timeout);
                        self.merger.publish(SourceKind::Multicast, table.candidates());
                    }
                }
                req = self.leave.recv(), if leave_open => match req {
                    Some(done) => {
                        if std::mem::take(&mut heartbeating) {
                            for _ in 0..LEAVING_COPIES {
                                self.send(&leaving, &mut send_failing).await;
                            }
                        }
                        let _ = done.send(());
                    }
                    // Discovery dropped: nobody can ask any more.
                    None => leave_open = false,
                },
                r = self.socket.recv_from(&mut buf) => match r {
                    Ok((n, from)) => self.receive(&buf[..n], from, &mut table),
                    Err(e) => {
                        tracing::warn!(error = %e, "multicast receive failed");
                        // Do not spin on a persistent error.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        if heartbeating {
            for _ in 0..LEAVING_COPIES {
                self.send(&leaving, &mut send_failing).await;
            }
        }
    }

    fn receive(&self, datagram: &[u8], from: SocketAddr, table: &mut MemberTable) {
        let set = self.keys.current();
        let mut res = decode(datagram, &set.primary().key, &self.me.cluster);
        if res == Err(Reject::Tag) {
            // During a key rotation: any key of the file.
            if let Some(ok) = set
                .entries()
                .iter()
                .filter(|e| e.id != set.primary().id)
                .map(|e| decode(datagram, &e.key, &self.me.cluster))
                .find(Result::is_ok)
            {
                res = ok;
            }
        }
        match res {
            Ok(hb) => match table.observe(&hb, Instant::now()) {
                Observed::Own => {}
                observed => {
                    Stats::inc(&self.stats.heartbeats_received);
                    if observed.changed() {
                        tracing::info!(node = %hb.node_id, addr = %hb.addr, incarnation = hb.incarnation, ?observed, "multicast member");
                        self.merger
                            .publish(SourceKind::Multicast, table.candidates());
                    }
                }
            },
            Err(reason) => {
                Stats::inc(&self.stats.heartbeats_rejected);
                tracing::debug!(%from, ?reason, len = datagram.len(), "heartbeat rejected");
            }
        }
    }

    async fn send(&self, datagram: &[u8], failing: &mut bool) {
        match self
            .socket
            .send_to(datagram, SocketAddr::V4(self.group))
            .await
        {
            Ok(_) => {
                Stats::inc(&self.stats.heartbeats_sent);
                if std::mem::take(failing) {
                    tracing::info!(group = %self.group, "multicast heartbeats are being sent again");
                }
            }
            Err(e) if !*failing => {
                *failing = true;
                tracing::warn!(group = %self.group, error = %e, "multicast heartbeat send failed");
            }
            Err(e) => tracing::debug!(error = %e, "multicast heartbeat send failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> SelfInfo {
        SelfInfo {
            cluster: "tribe".into(),
            node_id: "n1".into(),
            incarnation: 100,
            advertise: "10.0.0.1:4000".parse().unwrap(),
        }
    }

    fn hb(node: &str, incarnation: u64, addr: &str) -> Heartbeat {
        Heartbeat {
            cluster: "tribe".into(),
            node_id: node.into(),
            incarnation,
            addr: addr.parse().unwrap(),
            leaving: false,
        }
    }

    #[test]
    fn heartbeat_roundtrip_and_size() {
        let key = ClusterKey::new(b"secret");
        let h = hb("node-a", 1_700_000_000_000, "10.1.2.3:4000");
        let bytes = encode(&h, &key).unwrap();
        // 5 header + 1+5 cluster + 1+6 node + 6 varint incarnation + 1+4+2 addr + 1 flag + 32 tag.
        assert!(bytes.len() <= 80, "heartbeat is {} bytes", bytes.len());
        assert_eq!(decode(&bytes, &key, "tribe"), Ok(h));
    }

    #[test]
    fn bad_datagrams_are_rejected() {
        let key = ClusterKey::new(b"secret");
        let good = encode(&hb("a", 1, "10.0.0.2:4000"), &key).unwrap();
        assert_eq!(decode(&good[..10], &key, "tribe"), Err(Reject::Size));
        assert_eq!(
            decode(&[0u8; MAX_DATAGRAM + 1], &key, "tribe"),
            Err(Reject::Size)
        );
        let mut m = good.clone();
        m[0] = b'X';
        assert_eq!(decode(&m, &key, "tribe"), Err(Reject::Magic));
        let mut v = good.clone();
        v[4] = 9;
        assert_eq!(decode(&v, &key, "tribe"), Err(Reject::Version));
        let mut t = good.clone();
        let last = t.len() - 1;
        t[last] ^= 1;
        assert_eq!(decode(&t, &key, "tribe"), Err(Reject::Tag));
        assert_eq!(
            decode(&good, &ClusterKey::new(b"other"), "tribe"),
            Err(Reject::Tag)
        );
        assert_eq!(decode(&good, &key, "other-cluster"), Err(Reject::Cluster));
        // Garbage body with a valid MAC (a key holder sending nonsense).
        let mut g = MAGIC.to_vec();
        g.push(VERSION);
        g.extend_from_slice(&[0xff; 20]);
        let tag = key.tag(&[TAG_LABEL, &g]);
        g.extend_from_slice(&tag);
        assert_eq!(decode(&g, &key, "tribe"), Err(Reject::Body));
        let bad_addr = encode(&hb("a", 1, "0.0.0.0:4000"), &key).unwrap();
        assert_eq!(decode(&bad_addr, &key, "tribe"), Err(Reject::Addr));
        // Random junk of every length never panics.
        let mut x: u32 = 12345;
        for len in 0..(MAX_DATAGRAM + 8) {
            let junk: Vec<u8> = (0..len)
                .map(|_| {
                    x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    (x >> 16) as u8
                })
                .collect();
            assert!(decode(&junk, &key, "tribe").is_err());
        }
    }

    #[test]
    fn stats_export_as_prometheus_counters() {
        let stats = Arc::new(Stats::default());
        stats.heartbeats_rejected.fetch_add(3, Ordering::Relaxed);
        stats.dns_lookups.fetch_add(2, Ordering::Relaxed);
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(stats.clone()));
        stats.heartbeats_rejected.fetch_add(1, Ordering::Relaxed); // read at scrape time
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains("heartbeats_rejected_total 4"), "{text}");
        assert!(text.contains("dns_lookups_total 2"), "{text}");
        assert!(text.contains("heartbeats_sent_total 0"), "{text}");
        assert!(
            text.contains("# TYPE dns_lookup_failures counter"),
            "{text}"
        );
    }

    #[test]
    fn tag_is_domain_separated() {
        let key = ClusterKey::new(b"secret");
        let good = encode(&hb("a", 1, "10.0.0.2:4000"), &key).unwrap();
        let (signed, tag) = good.split_at(good.len() - TAG_LEN);
        assert!(
            !key.verify(&[signed], tag),
            "tag must include the heartbeat label"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn table_join_refresh_expire() {
        let mut t = MemberTable::new(&me(), Duration::from_secs(3));
        let t0 = Instant::now();
        assert_eq!(
            t.observe(&hb("n2", 1, "10.0.0.2:4000"), t0),
            Observed::Joined
        );
        assert_eq!(
            t.observe(&hb("n3", 1, "10.0.0.3:4000"), t0),
            Observed::Joined
        );
        assert_eq!(t.next_expiry(), Some(t0 + Duration::from_secs(3)));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(
            t.observe(&hb("n2", 1, "10.0.0.2:4000"), Instant::now()),
            Observed::Refreshed
        );
        assert!(t.expire(Instant::now()).is_empty());
        tokio::time::advance(Duration::from_millis(1000)).await;
        assert_eq!(
            t.expire(Instant::now()),
            vec!["10.0.0.3:4000".parse().unwrap()]
        );
        assert_eq!(t.len(), 1);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(
            t.expire(Instant::now()),
            vec!["10.0.0.2:4000".parse().unwrap()]
        );
        assert!(t.is_empty());
        assert_eq!(t.next_expiry(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn table_ignores_self_and_stale_incarnations() {
        let mut t = MemberTable::new(&me(), Duration::from_secs(3));
        let now = Instant::now();
        assert_eq!(
            t.observe(&hb("n1", 100, "10.0.0.9:4000"), now),
            Observed::Own
        );
        assert_eq!(t.observe(&hb("zz", 5, "10.0.0.1:4000"), now), Observed::Own);
        assert_eq!(
            t.observe(&hb("n2", 7, "10.0.0.2:4000"), now),
            Observed::Joined
        );
        assert_eq!(
            t.observe(&hb("n2", 6, "10.0.0.2:4000"), now),
            Observed::Stale
        );
        assert_eq!(
            t.observe(&hb("n2", 8, "10.0.0.2:4000"), now),
            Observed::Replaced
        );
        let c = t.candidates();
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].incarnation, Some(8));
        assert_eq!(c[0].node_id.as_deref(), Some("n2"));
        assert!(c[0].sources.multicast && !c[0].sources.dns && !c[0].sources.static_list);
    }

    #[tokio::test(start_paused = true)]
    async fn leaving_removes_at_once_and_late_heartbeats_stay_out() {
        let mut t = MemberTable::new(&me(), Duration::from_secs(3));
        let now = Instant::now();
        t.observe(&hb("n2", 7, "10.0.0.2:4000"), now);
        let leave = Heartbeat {
            leaving: true,
            ..hb("n2", 7, "10.0.0.2:4000")
        };
        assert_eq!(t.observe(&leave, now), Observed::Left);
        assert!(t.is_empty());
        assert_eq!(t.observe(&leave, now), Observed::Stale);
        // A reordered heartbeat of the leaver does not resurrect it...
        assert_eq!(
            t.observe(&hb("n2", 7, "10.0.0.2:4000"), now),
            Observed::Stale
        );
        // ...but a restarted node (new incarnation) at the same address is a new member.
        assert_eq!(
            t.observe(&hb("n2", 9, "10.0.0.2:4000"), now),
            Observed::Joined
        );
        // Tombstones expire.
        let mut t = MemberTable::new(&me(), Duration::from_secs(3));
        t.observe(&leave, now);
        tokio::time::advance(Duration::from_secs(3)).await;
        t.expire(Instant::now());
        assert_eq!(
            t.observe(&hb("n2", 7, "10.0.0.2:4000"), Instant::now()),
            Observed::Joined
        );
    }

    #[test]
    fn default_route_is_parsed() {
        let table =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
            eth1\t0000A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
            eth0\t00000000\t0101A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0\n\
            wlan0\t00000000\t0101A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n\
            down0\t00000000\t0101A8C0\t0000\t0\t0\t1\t00000000\t0\t0\t0\n";
        assert_eq!(default_route_interface(table).as_deref(), Some("wlan0"));
        assert_eq!(default_route_interface("Iface\tDestination\n"), None);
        assert_eq!(default_route_interface("garbage\nx y z\n"), None);
    }

    #[test]
    fn interface_spec_resolution() {
        assert_eq!(
            resolve_interface(Some("10.9.8.7")).unwrap(),
            Ipv4Addr::new(10, 9, 8, 7)
        );
        assert_eq!(resolve_interface(Some("lo")).unwrap(), Ipv4Addr::LOCALHOST);
        assert!(
            matches!(resolve_interface(Some("no-such-if0")), Err(MembershipError::Interface(n)) if n == "no-such-if0")
        );
        assert!(group_addr("10.0.0.1:45564".parse().unwrap()).is_err());
        assert!(group_addr("239.1.2.3:45564".parse().unwrap()).is_ok());
    }

    /// Set in the child process that runs inside the test's own network namespace.
    const IN_NETNS: &str = "TRIBE_TEST_IN_NETNS";

    fn ip(args: &[&str]) {
        let out = std::process::Command::new("ip")
            .args(args)
            .output()
            .expect("run ip (iproute2)");
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    struct NetnsGuard(String);
    impl Drop for NetnsGuard {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &self.0])
                .status();
        }
    }

    /// Real sockets: runs [`discovery_in_netns`] in a fresh network namespace whose only
    /// interface is its own loopback with multicast switched on, so no datagram can leave.
    #[test]
    fn multicast_discovery_on_netns_loopback() {
        if std::env::var_os(IN_NETNS).is_some() {
            return tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(discovery_in_netns());
        }
        let ns = format!("tribe-unit-mc-{}", std::process::id());
        ip(&["netns", "add", &ns]);
        let _guard = NetnsGuard(ns.clone());
        ip(&["-n", &ns, "link", "set", "lo", "up", "multicast", "on"]);
        let exe = std::env::current_exe().unwrap();
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &ns])
            .arg(exe)
            .args([
                "--exact",
                "membership::multicast::tests::multicast_discovery_on_netns_loopback",
                "--nocapture",
            ])
            .env(IN_NETNS, "1")
            .output()
            .unwrap();
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "in-netns run failed:\n{log}");
        assert!(
            log.contains("1 passed"),
            "the in-netns test did not run:\n{log}"
        );
    }

    async fn discovery_in_netns() {
        use crate::config::Config;
        use std::sync::atomic::Ordering::Relaxed;
        let key = ClusterKey::new(b"k1");
        let stop = CancellationToken::new();
        let wait = Duration::from_secs(3);
        async fn start(
            cluster: &str,
            node: &str,
            inc: u64,
            port: u16,
            key: impl Into<crate::keyring::Keys>,
            stop: &CancellationToken,
        ) -> super::super::Discovery {
            let config = Config::from_flags(&[
                "--membership",
                "multicast",
                "--cluster",
                cluster,
                "--multicast-interface",
                "lo",
                "--multicast-group",
                "239.255.77.1:45999",
                "--heartbeat-interval",
                "100ms",
                "--member-timeout",
                "5s",
            ]);
            let me = SelfInfo {
                cluster: cluster.into(),
                node_id: node.into(),
                incarnation: inc,
                advertise: SocketAddr::from(([127, 0, 0, 1], port)),
            };
            super::super::start(&config, me, key, stop.child_token(), &Default::default())
                .await
                .unwrap()
        }
        let d1 = start("tribe", "n1", 1, 4001, key.clone(), &stop).await;
        let d2 = start("tribe", "n2", 1, 4002, key.clone(), &stop).await;
        let other_cluster = start("other", "x1", 1, 4003, key.clone(), &stop).await;
        let other_key = start("tribe", "x2", 1, 4004, ClusterKey::new(b"k2"), &stop).await;
        // Mid-rotation: sends with a key nobody else has yet, still accepts k1.
        let entry = |id: &str, k: &ClusterKey| crate::keyring::KeyEntry {
            id: id.into(),
            key: k.clone(),
        };
        let rotating = crate::keyring::KeySet::from_entries(
            vec![entry("old", &key), entry("new", &ClusterKey::new(b"k3"))],
            "new",
        )
        .unwrap();
        let rotating = start(
            "tribe",
            "x3",
            1,
            4005,
            crate::keyring::Keys::new(rotating),
            &stop,
        )
        .await;

        let t0 = Instant::now();
        tokio::time::timeout(wait, d1.initial_round())
            .await
            .expect("initial round");
        assert!(
            t0.elapsed() >= Duration::from_millis(200),
            "first round waits ~2 heartbeats"
        );

        let addr = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        let mut c1 = d1.candidates.clone();
        let mut c2 = d2.candidates.clone();
        tokio::time::timeout(wait, c1.wait_for(|c| c.contains_key(&addr(4002))))
            .await
            .expect("n1 hears n2")
            .unwrap();
        tokio::time::timeout(wait, c2.wait_for(|c| c.contains_key(&addr(4001))))
            .await
            .expect("n2 hears n1")
            .unwrap();
        // Both foreign senders were heard and refused by n1.
        let deadline = Instant::now() + wait;
        while d1.stats.heartbeats_rejected.load(Relaxed) < 2 {
            assert!(
                Instant::now() < deadline,
                "n1 never rejected the foreign heartbeats"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let seen = d1.candidates.borrow().clone();
        assert_eq!(
            seen.keys().copied().collect::<Vec<_>>(),
            vec![addr(4002)],
            "only n2 admitted"
        );
        let n2 = &seen[&addr(4002)];
        assert_eq!(
            (n2.node_id.as_deref(), n2.incarnation, n2.sources.multicast),
            (Some("n2"), Some(1), true)
        );
        assert!(
            other_cluster.candidates.borrow().is_empty()
                && other_key.candidates.borrow().is_empty()
        );
        // The rotating node hears the k1 nodes (old key still accepted).
        let mut c3 = rotating.candidates.clone();
        tokio::time::timeout(wait, c3.wait_for(|c| c.contains_key(&addr(4001))))
            .await
            .expect("a node mid-rotation hears a node on the old key")
            .unwrap();
        assert!(
            d1.stats.heartbeats_sent.load(Relaxed) >= 2
                && d1.stats.heartbeats_received.load(Relaxed) >= 1
        );

        // n2 leaves: gone from n1 at once (the member timeout is 5 s).
        let t_leave = Instant::now();
        d2.leave().await;
        tokio::time::timeout(Duration::from_secs(1), d2.leave())
            .await
            .expect("a second leave returns at once");
        tokio::time::timeout(
            Duration::from_secs(1),
            c1.wait_for(|c| !c.contains_key(&addr(4002))),
        )
        .await
        .expect("leaving member removed at once")
        .unwrap();
        assert!(t_leave.elapsed() < Duration::from_secs(1));

        // n2 restarts at the same address: a new incarnation is a member again.
        let d2b = start("tribe", "n2", 2, 4002, key.clone(), &stop).await;
        tokio::time::timeout(
            wait,
            c1.wait_for(|c| c.get(&addr(4002)).is_some_and(|m| m.incarnation == Some(2))),
        )
        .await
        .expect("restarted n2 seen")
        .unwrap();
        drop(d2b);
        stop.cancel();
    }
}
