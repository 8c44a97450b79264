//! Membership: finds peer candidates by multicast, DNS or a static list and publishes
//! one set of them on a `watch` channel.
//!
//! Discovery only proposes *candidates* (replication addresses, with the member's id and
//! incarnation where the source knows them). The transport dials each candidate and
//! admits it as a member only after an authenticated handshake that names the same
//! cluster; a candidate that disappears is *suspected*, and dropped only when a TCP
//! connect to it fails (Tomcat's TcpFailureDetector). See `crate::cluster`.
//!
//! # Layout
//! - `multicast` — signed UDP heartbeats on a group (socket2: join, TTL, loop, interface).
//! - `dns` — re-resolves a name on an interval; every A record is a peer.
//! - `static_peers` — a fixed `host:port` list (names resolved once per interval).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, MembershipMode};
use crate::crypto::ClusterKey;

pub mod dns;
pub mod multicast;
pub mod static_peers;

pub use multicast::Stats;

/// Which mechanisms proposed a candidate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sources {
    /// From `--peers`.
    pub static_list: bool,
    /// From the DNS name.
    pub dns: bool,
    /// Heard on the multicast group.
    pub multicast: bool,
}

/// One peer a discovery mechanism proposes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The peer's replication address (what the transport dials).
    pub addr: SocketAddr,
    /// The peer's node id, when the source knows it (multicast).
    pub node_id: Option<String>,
    /// The peer's incarnation (start time, unix ms), when the source knows it.
    pub incarnation: Option<u64>,
    /// Who proposed it.
    pub sources: Sources,
}

/// All candidates, keyed by replication address; never contains this node itself.
pub type Candidates = BTreeMap<SocketAddr, Candidate>;

/// Who this node is, as announced to others.
#[derive(Debug, Clone)]
pub struct SelfInfo {
    /// Cluster name (members of another cluster are ignored).
    pub cluster: String,
    /// Node id.
    pub node_id: String,
    /// Start time in unix ms: a restarted node is a new member.
    pub incarnation: u64,
    /// The replication address peers dial.
    pub advertise: SocketAddr,
}

/// Errors starting discovery.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// The multicast socket could not be set up.
    #[error("multicast setup failed: {0}")]
    Multicast(#[source] std::io::Error),
    /// The multicast interface could not be found.
    #[error("multicast interface {0:?} not found or has no IPv4 address")]
    Interface(String),
    /// The DNS resolver could not be configured.
    #[error("DNS resolver setup failed: {0}")]
    Dns(String),
    /// A static peer is not `host:port`.
    #[error("invalid peer {0:?}: expected host:port")]
    Peer(String),
}

/// The discovery mechanisms, each with its own slot in the merged set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SourceKind {
    Static = 0,
    Dns = 1,
    Multicast = 2,
}

/// Merges the sources' sets into one candidate set: keyed by address, `Sources` flags
/// or-ed, node id and incarnation taken from whichever source knows them (multicast),
/// and this node itself left out.
pub fn merge<'a>(sets: impl IntoIterator<Item = &'a [Candidate]>, me: &SelfInfo) -> Candidates {
    let mut out = Candidates::new();
    for c in sets.into_iter().flatten() {
        if c.addr == me.advertise
            || (c.node_id.as_deref() == Some(me.node_id.as_str())
                && c.incarnation == Some(me.incarnation))
        {
            continue;
        }
        let e = out.entry(c.addr).or_insert_with(|| Candidate {
            sources: Sources::default(),
            ..c.clone()
        });
        e.sources.static_list |= c.sources.static_list;
        e.sources.dns |= c.sources.dns;
        e.sources.multicast |= c.sources.multicast;
        if c.node_id.is_some() {
            e.node_id.clone_from(&c.node_id);
        }
        if c.incarnation.is_some() {
            e.incarnation = c.incarnation;
        }
    }
    out
}

/// Holds each source's latest set and publishes the merged set when it changes.
#[derive(Debug)]
pub(crate) struct Merger {
    me: SelfInfo,
    /// One slot per [`SourceKind`]. A std mutex: held only to swap a vector and merge,
    /// never across an `.await`.
    sets: std::sync::Mutex<[Vec<Candidate>; 3]>,
    tx: watch::Sender<Candidates>,
}

impl Merger {
    fn new(me: SelfInfo) -> (Arc<Self>, watch::Receiver<Candidates>) {
        let (tx, rx) = watch::channel(Candidates::new());
        (
            Arc::new(Self {
                me,
                sets: std::sync::Mutex::new(Default::default()),
                tx,
            }),
            rx,
        )
    }

    /// Replaces one source's set and republishes the merge if it changed.
    pub(crate) fn publish(&self, kind: SourceKind, set: Vec<Candidate>) {
        let merged = {
            let mut sets = self.sets.lock().unwrap_or_else(|p| p.into_inner());
            sets[kind as usize] = set;
            merge(sets.iter().map(Vec::as_slice), &self.me)
        };
        self.tx.send_if_modified(|current| {
            if *current == merged {
                false
            } else {
                *current = merged;
                true
            }
        });
    }
}

/// Running discovery: the merged candidate set and the handles to steer it.
#[derive(Debug)]
pub struct Discovery {
    /// All current candidates (never this node).
    pub candidates: watch::Receiver<Candidates>,
    /// Counters for metrics (heartbeats, DNS lookups); zero for disabled sources.
    pub stats: Arc<Stats>,
    /// Which sources run.
    pub enabled: Sources,
    first_rounds: Vec<watch::Receiver<bool>>,
    leave_tx: Option<mpsc::Sender<multicast::LeaveRequest>>,
}

/// Which sources the config enables: (static, dns, multicast).
pub fn enabled_sources(config: &Config) -> Sources {
    match config.membership {
        MembershipMode::Static => Sources {
            static_list: true,
            ..Sources::default()
        },
        MembershipMode::Dns => Sources {
            dns: true,
            ..Sources::default()
        },
        MembershipMode::Multicast => Sources {
            multicast: true,
            ..Sources::default()
        },
        MembershipMode::Auto => Sources {
            static_list: !config.peers.is_empty(),
            dns: config.dns_name.is_some(),
            multicast: true,
        },
    }
}

/// Starts the sources the config enables; they run until `shutdown`.
///
/// In `auto` mode a multicast setup failure is only a warning when DNS or a peer list
/// can still find peers (e.g. a pod network without multicast); otherwise it is fatal.
/// `key`: the cluster key, or the node's reloaded key set (heartbeats are then tagged
/// with the current primary and accepted under any key of the set, so a key rotation
/// needs no restart).
pub async fn start(
    config: &Config,
    me: SelfInfo,
    key: impl Into<crate::keyring::Keys>,
    shutdown: CancellationToken,
    tasks: &tokio_util::task::TaskTracker,
) -> Result<Discovery, MembershipError> {
    let keys: crate::keyring::Keys = key.into();
    let key: ClusterKey = keys.current().primary().key.clone();
    let mut enabled = enabled_sources(config);
    let (merger, candidates) = Merger::new(me.clone());
    let stats = Arc::new(Stats::default());
    let mut first_rounds = Vec::new();
    let mut leave_tx = None;

    // Check everything that can fail before spawning anything.
    let peers = if enabled.static_list {
        static_peers::parse_peers(&config.peers)?
    } else {
        Vec::new()
    };
    let dns = if enabled.dns {
        let name = config
            .dns_name
            .clone()
            .filter(|n| !n.trim().is_empty())
            .ok_or_else(|| MembershipError::Dns("--membership dns needs --dns-name".into()))?;
        Some((name, dns::system_resolver()?))
    } else {
        None
    };
    let multicast = if enabled.multicast {
        let setup = multicast::group_addr(config.multicast_group).and_then(|group| {
            let interface = multicast::resolve_interface(config.multicast_interface.as_deref())?;
            let socket = multicast::open_socket(group, interface, config.multicast_ttl)
                .map_err(MembershipError::Multicast)?;
            tracing::info!(%group, %interface, ttl = config.multicast_ttl, "multicast membership");
            Ok((group, socket))
        });
        match setup {
            Ok(s) => Some(s),
            Err(e)
                if config.membership == MembershipMode::Auto
                    && (enabled.dns || enabled.static_list) =>
            {
                tracing::warn!(error = %e, "multicast discovery unavailable; using DNS/static peers only");
                enabled.multicast = false;
                None
            }
            Err(e) => return Err(e),
        }
    } else {
        None
    };
    // Fail early on an identity too large for one heartbeat.
    let probe = multicast::Heartbeat {
        cluster: me.cluster.clone(),
        node_id: me.node_id.clone(),
        incarnation: me.incarnation,
        addr: me.advertise,
        leaving: false,
    };
    if multicast.is_some()
        && multicast::encode(&probe, &key).map_or(true, |b| b.len() > multicast::MAX_DATAGRAM)
    {
        return Err(MembershipError::Multicast(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "cluster name and node id too long for a heartbeat",
        )));
    }

    let mut first_round = || {
        let (tx, rx) = watch::channel(false);
        first_rounds.push(rx);
        tx
    };
    if enabled.static_list {
        tasks.spawn(
            static_peers::Task {
                peers,
                interval: config.dns_interval,
                merger: merger.clone(),
                first_round: first_round(),
                shutdown: shutdown.clone(),
            }
            .run(),
        );
    }
    if let Some((name, resolver)) = dns {
        tracing::info!(%name, interval = ?config.dns_interval, "DNS membership");
        tasks.spawn(
            dns::Task {
                resolver,
                name,
                port: me.advertise.port(),
                interval: config.dns_interval,
                merger: merger.clone(),
                stats: stats.clone(),
                first_round: first_round(),
                shutdown: shutdown.clone(),
                own: me.advertise,
            }
            .run(),
        );
    }
    if let Some((group, socket)) = multicast {
        let (tx, rx) = mpsc::channel(1);
        leave_tx = Some(tx);
        tasks.spawn(
            multicast::Task {
                socket,
                group,
                me,
                keys,
                timing: multicast::Timing {
                    interval: config.heartbeat_interval,
                    member_timeout: config.member_timeout,
                },
                merger: merger.clone(),
                stats: stats.clone(),
                first_round: first_round(),
                leave: rx,
                shutdown,
            }
            .run(),
        );
    }
    Ok(Discovery {
        candidates,
        stats,
        enabled,
        first_rounds,
        leave_tx,
    })
}

impl Discovery {
    /// Resolves once every enabled source has done its first round (static: names
    /// resolved; DNS: first lookup attempted; multicast: ~2 heartbeat intervals heard).
    pub async fn initial_round(&self) {
        for rx in &self.first_rounds {
            let mut rx = rx.clone();
            // An error means the source's task ended: nothing more to wait for.
            let _ = rx.wait_for(|done| *done).await;
        }
    }

    /// Announces (multicast, best effort) that this node leaves, then stops heartbeating.
    pub async fn leave(&self) {
        if let Some(tx) = &self.leave_tx {
            let (done_tx, done_rx) = oneshot::channel();
            if tx.send(done_tx).await.is_ok() {
                let _ = done_rx.await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> SelfInfo {
        SelfInfo {
            cluster: "tribe".into(),
            node_id: "me".into(),
            incarnation: 42,
            advertise: "10.0.0.1:4000".parse().unwrap(),
        }
    }

    fn plain(addr: &str, sources: Sources) -> Candidate {
        Candidate {
            addr: addr.parse().unwrap(),
            node_id: None,
            incarnation: None,
            sources,
        }
    }

    const STATIC: Sources = Sources {
        static_list: true,
        dns: false,
        multicast: false,
    };
    const DNS: Sources = Sources {
        static_list: false,
        dns: true,
        multicast: false,
    };
    const MCAST: Sources = Sources {
        static_list: false,
        dns: false,
        multicast: true,
    };

    #[test]
    fn merge_unions_and_flags_sources() {
        let s = vec![
            plain("10.0.0.2:4000", STATIC),
            plain("10.0.0.1:4000", STATIC),
        ];
        let d = vec![plain("10.0.0.2:4000", DNS), plain("10.0.0.3:4000", DNS)];
        let m = vec![Candidate {
            addr: "10.0.0.3:4000".parse().unwrap(),
            node_id: Some("n3".into()),
            incarnation: Some(7),
            sources: MCAST,
        }];
        let merged = merge([s.as_slice(), d.as_slice(), m.as_slice()], &me());
        assert_eq!(merged.len(), 2, "self excluded by address: {merged:?}");
        let c2 = &merged[&"10.0.0.2:4000".parse().unwrap()];
        assert_eq!(
            c2.sources,
            Sources {
                static_list: true,
                dns: true,
                multicast: false
            }
        );
        assert_eq!(c2.node_id, None);
        let c3 = &merged[&"10.0.0.3:4000".parse().unwrap()];
        assert_eq!(
            c3.sources,
            Sources {
                static_list: false,
                dns: true,
                multicast: true
            }
        );
        assert_eq!(
            (c3.node_id.as_deref(), c3.incarnation),
            (Some("n3"), Some(7))
        );
    }

    #[test]
    fn merge_excludes_own_identity_at_another_address() {
        let m = vec![Candidate {
            addr: "10.0.0.9:4000".parse().unwrap(),
            node_id: Some("me".into()),
            incarnation: Some(42),
            sources: MCAST,
        }];
        assert!(merge([m.as_slice()], &me()).is_empty());
        // An older incarnation of this node id is someone else (a previous run) — kept.
        let old = vec![Candidate {
            incarnation: Some(41),
            ..m[0].clone()
        }];
        assert_eq!(merge([old.as_slice()], &me()).len(), 1);
    }

    #[tokio::test]
    async fn merger_publishes_only_changes_and_keeps_other_sources() {
        let (merger, mut rx) = Merger::new(me());
        rx.mark_unchanged();
        merger.publish(SourceKind::Dns, vec![plain("10.0.0.2:4000", DNS)]);
        assert!(rx.has_changed().unwrap());
        rx.mark_unchanged();
        merger.publish(SourceKind::Dns, vec![plain("10.0.0.2:4000", DNS)]);
        assert!(
            !rx.has_changed().unwrap(),
            "same set must not wake watchers"
        );
        merger.publish(SourceKind::Static, vec![plain("10.0.0.3:4000", STATIC)]);
        merger.publish(SourceKind::Dns, vec![]);
        let now = rx.borrow_and_update().clone();
        assert_eq!(
            now.keys().copied().collect::<Vec<_>>(),
            vec!["10.0.0.3:4000".parse().unwrap()]
        );
    }

    fn config(args: &[&str]) -> Config {
        Config::from_flags(args)
    }

    #[test]
    fn modes_enable_sources() {
        assert_eq!(
            enabled_sources(&config(&["--membership", "static"])),
            STATIC
        );
        assert_eq!(
            enabled_sources(&config(&["--membership", "dns", "--dns-name", "x"])),
            DNS
        );
        assert_eq!(
            enabled_sources(&config(&["--membership", "multicast", "--peers", "a:1"])),
            MCAST
        );
        assert_eq!(enabled_sources(&config(&[])), MCAST);
        assert_eq!(
            enabled_sources(&config(&["--dns-name", "x", "--peers", "a:1"])),
            Sources {
                static_list: true,
                dns: true,
                multicast: true
            }
        );
    }

    #[tokio::test]
    async fn static_discovery_resolves_and_excludes_self() {
        let c = config(&[
            "--membership",
            "static",
            "--peers",
            "127.0.0.1:4001,10.0.0.1:4000,localhost:4002",
        ]);
        let shutdown = CancellationToken::new();
        let d = start(
            &c,
            me(),
            ClusterKey::insecure(),
            shutdown.clone(),
            &Default::default(),
        )
        .await
        .unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), d.initial_round())
            .await
            .expect("first round");
        let set = d.candidates.borrow().clone();
        assert!(
            set.contains_key(&"127.0.0.1:4001".parse().unwrap()),
            "{set:?}"
        );
        assert!(
            set.contains_key(&"127.0.0.1:4002".parse().unwrap()),
            "localhost resolved: {set:?}"
        );
        assert!(
            !set.contains_key(&"10.0.0.1:4000".parse().unwrap()),
            "self excluded"
        );
        assert!(set.values().all(|c| c.sources == STATIC));
        d.leave().await; // no multicast: a no-op that returns
        shutdown.cancel();
    }

    #[tokio::test]
    async fn bad_config_is_an_error() {
        let key = ClusterKey::insecure;
        let s = CancellationToken::new();
        let bad_peer = config(&["--membership", "static", "--peers", "nonsense"]);
        assert!(matches!(
            start(&bad_peer, me(), key(), s.clone(), &Default::default()).await,
            Err(MembershipError::Peer(_))
        ));
        let no_name = config(&["--membership", "dns"]);
        assert!(matches!(
            start(&no_name, me(), key(), s.clone(), &Default::default()).await,
            Err(MembershipError::Dns(_))
        ));
        let bad_if = config(&[
            "--membership",
            "multicast",
            "--multicast-interface",
            "no-such-if0",
        ]);
        assert!(matches!(
            start(&bad_if, me(), key(), s.clone(), &Default::default()).await,
            Err(MembershipError::Interface(_))
        ));
        let bad_group = config(&[
            "--membership",
            "multicast",
            "--multicast-group",
            "10.0.0.1:1",
            "--multicast-interface",
            "lo",
        ]);
        assert!(matches!(
            start(&bad_group, me(), key(), s.clone(), &Default::default()).await,
            Err(MembershipError::Multicast(_))
        ));
    }
}
