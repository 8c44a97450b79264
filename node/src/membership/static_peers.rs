//! Static membership (Tomcat's StaticMembership): a fixed `host:port` list.
//!
//! Addresses given as IP literals are final. Names are resolved with the system resolver
//! (`tokio::net::lookup_host`, i.e. getaddrinfo: `/etc/hosts` first, as docker-compose
//! style name lists expect) at start and again every `--dns-interval`; a name that fails
//! to resolve keeps its last addresses.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::dns::candidates;
use super::{MembershipError, Merger, SourceKind, Sources};

/// One entry of `--peers`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Peer {
    /// An IP literal with a port.
    Addr(SocketAddr),
    /// A name to resolve, with a port.
    Name(String, u16),
}

/// Parses `host:port` (IPv6 literals in brackets: `[::1]:4000`).
pub fn parse_peer(s: &str) -> Result<Peer, MembershipError> {
    let s = s.trim();
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(Peer::Addr(addr));
    }
    let bad = || MembershipError::Peer(s.to_string());
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let valid_name = !host.is_empty()
        && port != 0
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_');
    if !valid_name {
        return Err(bad());
    }
    Ok(Peer::Name(host.to_string(), port))
}

/// Parses the whole list; empty entries (a trailing comma) are skipped.
pub fn parse_peers(list: &[String]) -> Result<Vec<Peer>, MembershipError> {
    list.iter()
        .filter(|s| !s.trim().is_empty())
        .map(|s| parse_peer(s))
        .collect()
}

/// The static source: resolves its names each interval until shutdown.
pub(crate) struct Task {
    pub peers: Vec<Peer>,
    pub interval: Duration,
    pub merger: Arc<Merger>,
    pub first_round: watch::Sender<bool>,
    pub shutdown: CancellationToken,
}

impl Task {
    /// Publishes the list (resolving names) and re-resolves names every interval.
    pub(crate) async fn run(self) {
        let sources = Sources {
            static_list: true,
            ..Sources::default()
        };
        let mut by_name: BTreeMap<Peer, BTreeSet<SocketAddr>> = BTreeMap::new();
        let has_names = self.peers.iter().any(|p| matches!(p, Peer::Name(..)));
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut published: Option<BTreeSet<SocketAddr>> = None;
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            for peer in &self.peers {
                match peer {
                    Peer::Addr(a) => {
                        by_name.insert(peer.clone(), [*a].into());
                    }
                    Peer::Name(host, port) => {
                        let resolved = tokio::select! {
                            _ = self.shutdown.cancelled() => return,
                            r = tokio::net::lookup_host((host.as_str(), *port)) => r,
                        };
                        match resolved {
                            Ok(addrs) => {
                                by_name.insert(peer.clone(), addrs.collect());
                            }
                            Err(e) => {
                                tracing::warn!(peer = %host, error = %e, "cannot resolve static peer; keeping its last addresses")
                            }
                        }
                    }
                }
            }
            let all: BTreeSet<SocketAddr> = by_name.values().flatten().copied().collect();
            if published.as_ref() != Some(&all) {
                self.merger
                    .publish(SourceKind::Static, candidates(&all, sources));
                published = Some(all);
            }
            self.first_round.send_replace(true);
            if !has_names {
                // Nothing will ever change; keep the task alive only as long as needed.
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse() {
        assert_eq!(
            parse_peer("10.0.0.1:4000").unwrap(),
            Peer::Addr("10.0.0.1:4000".parse().unwrap())
        );
        assert_eq!(
            parse_peer(" [::1]:4000 ").unwrap(),
            Peer::Addr("[::1]:4000".parse().unwrap())
        );
        assert_eq!(
            parse_peer("node-1.svc:4000").unwrap(),
            Peer::Name("node-1.svc".into(), 4000)
        );
        for bad in [
            "node-1",
            "node:port",
            ":4000",
            "a b:4000",
            "host:70000",
            "host:0",
            "::1:4000x",
        ] {
            assert!(parse_peer(bad).is_err(), "{bad} should be rejected");
        }
        let list = vec![
            "10.0.0.1:4000".to_string(),
            "".to_string(),
            "h:1".to_string(),
        ];
        assert_eq!(parse_peers(&list).unwrap().len(), 2);
    }
}
