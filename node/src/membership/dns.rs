//! DNS membership (Tomcat's DNSMembershipProvider, chitchat's DNS refresh): re-resolve
//! `--dns-name` every `--dns-interval`; each A record is a peer at this node's
//! replication port.
//!
//! Why hickory-resolver and not `tokio::net::lookup_host` (getaddrinfo): we must tell an
//! authoritative "no such name / no records" (the set really is empty now: a headless
//! Service with no ready-or-not pods) from a transient failure (timeout, refused, server
//! failure), where the last set is kept so a DNS hiccup never wipes the membership.
//! getaddrinfo folds both into one opaque error. hickory reads the same system
//! configuration (`/etc/resolv.conf`: nameservers, search, ndots — what Kubernetes
//! writes) and `/etc/hosts`. Its cache is disabled (size 0, TTLs clamped to 0, and
//! cleared before every lookup) so each interval sees the current records.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::LookupIpStrategy;
use hickory_resolver::TokioResolver;
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::multicast::Stats;
use super::{Candidate, MembershipError, Merger, SourceKind, Sources};

/// Upper bound on one lookup (all nameservers and retries), so a dead DNS server cannot
/// stall the first round for long.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// The result of one lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The name has these addresses.
    Found(BTreeSet<IpAddr>),
    /// The name does not exist or has no A records: the set is now empty.
    NoRecords,
    /// A transient failure: keep the last set.
    Failed(String),
}

/// The peer set after a lookup: `None` keeps the previous one.
pub fn next_set(outcome: &Outcome, port: u16) -> Option<BTreeSet<SocketAddr>> {
    match outcome {
        Outcome::Found(ips) => Some(ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect()),
        Outcome::NoRecords => Some(BTreeSet::new()),
        Outcome::Failed(_) => None,
    }
}

/// A resolver from the system configuration with caching disabled.
pub fn system_resolver() -> Result<TokioResolver, MembershipError> {
    let mut builder =
        TokioResolver::builder_tokio().map_err(|e| MembershipError::Dns(e.to_string()))?;
    let opts = builder.options_mut();
    opts.ip_strategy = LookupIpStrategy::Ipv4Only;
    opts.cache_size = 0;
    opts.positive_max_ttl = Some(Duration::ZERO);
    opts.negative_max_ttl = Some(Duration::ZERO);
    builder
        .build()
        .map_err(|e| MembershipError::Dns(e.to_string()))
}

/// Resolves `name` once.
pub async fn lookup(resolver: &TokioResolver, name: &str) -> Outcome {
    resolver.clear_cache();
    match tokio::time::timeout(LOOKUP_TIMEOUT, resolver.lookup_ip(name)).await {
        Err(_) => Outcome::Failed(format!("timed out after {LOOKUP_TIMEOUT:?}")),
        Ok(Ok(found)) => {
            let ips: BTreeSet<IpAddr> = found.iter().filter(IpAddr::is_ipv4).collect();
            if ips.is_empty() {
                Outcome::NoRecords
            } else {
                Outcome::Found(ips)
            }
        }
        Ok(Err(e)) if e.is_nx_domain() || e.is_no_records_found() => Outcome::NoRecords,
        Ok(Err(e)) => Outcome::Failed(e.to_string()),
    }
}

/// The DNS source loop.
pub(crate) struct Task {
    pub resolver: TokioResolver,
    pub name: String,
    pub port: u16,
    pub interval: Duration,
    pub merger: Arc<Merger>,
    pub stats: Arc<Stats>,
    pub first_round: watch::Sender<bool>,
    pub shutdown: CancellationToken,
    /// This node's advertised address: the first round is complete once the name lists
    /// it (or after [`SELF_WAIT`]).
    pub own: SocketAddr,
}

/// Longest the first round waits for the name to list this node itself. Pods started
/// together resolve the headless Service before its records include them all; a node
/// that took an early, partial answer as the whole cluster would form a cluster of its
/// own (and take writes alone) until the next lookup. Once the answer lists the node
/// itself, it lists every pod that had an address before it.
pub const SELF_WAIT: Duration = Duration::from_secs(10);
/// Lookup period while waiting to appear in the name.
const SELF_POLL: Duration = Duration::from_millis(250);

impl Task {
    /// Re-resolves on the interval until shutdown.
    pub(crate) async fn run(self) {
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut current: Option<BTreeSet<SocketAddr>> = None;
        let mut failing = false;
        let started = tokio::time::Instant::now();
        let mut listed = self.own.ip().is_unspecified();
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let outcome = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                o = lookup(&self.resolver, &self.name) => o,
            };
            match &outcome {
                Outcome::Failed(e) => {
                    self.stats
                        .dns_lookup_failures
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if !failing {
                        tracing::warn!(name = %self.name, error = %e, "DNS lookup failed; keeping the last peer set");
                    }
                    failing = true;
                }
                _ => {
                    self.stats
                        .dns_lookups
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if std::mem::take(&mut failing) {
                        tracing::info!(name = %self.name, "DNS lookups succeed again");
                    }
                }
            }
            if let Some(set) = next_set(&outcome, self.port) {
                if current.as_ref() != Some(&set) {
                    tracing::info!(name = %self.name, peers = ?set, "DNS peer set changed");
                    self.merger.publish(
                        SourceKind::Dns,
                        candidates(
                            &set,
                            Sources {
                                dns: true,
                                ..Sources::default()
                            },
                        ),
                    );
                    current = Some(set);
                }
            }
            if !listed {
                listed = matches!(&outcome, Outcome::Found(ips) if ips.contains(&self.own.ip()));
                if !listed && started.elapsed() >= SELF_WAIT {
                    tracing::warn!(name = %self.name, own = %self.own.ip(), waited = ?SELF_WAIT,
                        "the DNS name does not list this node; joining with the peers it lists");
                    listed = true;
                }
            }
            if listed {
                self.first_round.send_replace(true);
            } else {
                // Not listed yet: look again soon.
                ticker.reset_at(tokio::time::Instant::now() + SELF_POLL.min(self.interval));
            }
        }
    }
}

/// Plain address candidates from one source.
pub(crate) fn candidates(set: &BTreeSet<SocketAddr>, sources: Sources) -> Vec<Candidate> {
    set.iter()
        .map(|addr| Candidate {
            addr: *addr,
            node_id: None,
            incarnation: None,
            sources,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_map_to_sets() {
        let ips: BTreeSet<IpAddr> =
            ["10.0.0.2".parse().unwrap(), "10.0.0.3".parse().unwrap()].into();
        let set = next_set(&Outcome::Found(ips), 4000).unwrap();
        assert_eq!(
            set.into_iter().collect::<Vec<_>>(),
            vec![
                "10.0.0.2:4000".parse::<SocketAddr>().unwrap(),
                "10.0.0.3:4000".parse().unwrap()
            ]
        );
        assert_eq!(next_set(&Outcome::NoRecords, 4000), Some(BTreeSet::new()));
        assert_eq!(next_set(&Outcome::Failed("timeout".into()), 4000), None);
    }

    #[tokio::test]
    async fn ip_literal_resolves_without_a_server() {
        let Ok(resolver) = system_resolver() else {
            // No usable /etc/resolv.conf on this machine: nothing to check here.
            return;
        };
        let outcome = lookup(&resolver, "127.0.0.9").await;
        assert_eq!(
            outcome,
            Outcome::Found(["127.0.0.9".parse().unwrap()].into())
        );
    }
}
