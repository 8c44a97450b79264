//! What `local` runs: the environment of each slot's `tribe-node`. Pure.
//!
//! The settings are the Deployment's ([`node_settings`]), with only what differs on
//! one machine replaced ([`LOCAL_OVERRIDES`]):
//! - the node's name is `<cluster>-<slot>` and its address `127.0.0.1`;
//! - every slot listens on its own three ports (`base + 10 * slot` and the next two);
//! - membership is `static`, with every other slot's replication address as a peer.
//!   Multicast is not used even when the spec asks for it: the loopback interface
//!   usually has no MULTICAST flag (and joining a group on it needs a route for
//!   239.0.0.0/8 through `lo`), and there is no headless Service to resolve.
//!   The cluster's membership, size and failure handling are the same;
//! - the key file is the local one in the work directory;
//! - a stopping node waits 1 s (not the pods' 5 s) before it leaves: the front door
//!   drops a node that is not ready within one supervision round;
//! - with persistence, a slot's data directory is `data/<node id>` next to the key file
//!   (a slot keeps its id, so a restart finds its data), and `TRIBE_POSTGRES_URL` is
//!   not read from a Secret: a node inherits it from `local`'s own environment.

use crate::crd::SessionCluster;
use crate::resources::{node_settings, SettingValue};
use kube::ResourceExt;
use std::net::SocketAddr;
use std::path::Path;

/// The settings `local` sets itself instead of taking them from the spec (or, for
/// `TRIBE_DNS_NAME` and `TRIBE_MULTICAST_GROUP`, leaves out: static membership uses
/// neither). Every other setting of [`node_settings`] reaches the node unchanged.
pub const LOCAL_OVERRIDES: &[&str] = &[
    tribe_api::env::NODE_ID,
    tribe_api::env::ADVERTISE_ADDR,
    tribe_api::env::HTTP_ADDR,
    tribe_api::env::ADMIN_ADDR,
    tribe_api::env::REPLICATION_ADDR,
    tribe_api::env::MEMBERSHIP,
    tribe_api::env::PEERS,
    tribe_api::env::MULTICAST_GROUP,
    tribe_api::env::DNS_NAME,
    tribe_api::env::CLUSTER_KEY_FILE,
    tribe_api::env::SHUTDOWN_DELAY,
    tribe_api::env::DATA_DIR,
    tribe_api::env::POSTGRES_URL,
];

/// Ports of slot `index`: http, admin, replication (three consecutive ports from
/// `base + 10 * index`).
pub fn ports(base: u16, index: usize) -> (u16, u16, u16) {
    let start = base + 10 * index as u16;
    (start, start + 1, start + 2)
}

/// The app (HTTP) address of slot `index`.
pub fn http_addr(base: u16, index: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], ports(base, index).0))
}

/// The admin address of slot `index`.
pub fn admin_addr(base: u16, index: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], ports(base, index).1))
}

/// The most slots `base` leaves room for below port 65535.
pub fn max_slots(base: u16) -> usize {
    usize::from((u16::MAX - base) / 10)
}

/// The node id of slot `index` (a pod would be `<name>-<hash>-<suffix>`).
pub fn node_id(sc: &SessionCluster, index: usize) -> String {
    format!("{}-{index}", sc.name_any())
}

/// The environment (`TRIBE_*`, sorted by name) of slot `index` in a cluster of
/// `replicas`: the Deployment's settings with [`LOCAL_OVERRIDES`] applied.
pub fn node_env(
    sc: &SessionCluster,
    base: u16,
    index: usize,
    replicas: usize,
    key_file: &Path,
) -> Vec<(String, String)> {
    let (http, admin, repl) = ports(base, index);
    let mut env = std::collections::BTreeMap::new();
    for s in node_settings(sc) {
        let value = match s.value {
            SettingValue::Literal(v) => v,
            SettingValue::NodeName => node_id(sc, index),
            SettingValue::NodeIp => format!("127.0.0.1:{repl}"),
            SettingValue::SecretKey { .. } => continue,
        };
        env.insert(s.name.to_string(), value);
    }
    if env.contains_key(tribe_api::env::DATA_DIR) {
        let work = key_file.parent().unwrap_or(Path::new("."));
        let dir = work.join("data").join(node_id(sc, index));
        env.insert(tribe_api::env::DATA_DIR.into(), dir.display().to_string());
    }
    env.remove(tribe_api::env::DNS_NAME);
    env.remove(tribe_api::env::MULTICAST_GROUP);
    let peers: Vec<String> = (0..replicas)
        .filter(|i| *i != index)
        .map(|i| format!("127.0.0.1:{}", ports(base, i).2))
        .collect();
    for (k, v) in [
        (tribe_api::env::HTTP_ADDR, format!("127.0.0.1:{http}")),
        (tribe_api::env::ADMIN_ADDR, format!("127.0.0.1:{admin}")),
        (
            tribe_api::env::REPLICATION_ADDR,
            format!("127.0.0.1:{repl}"),
        ),
        (tribe_api::env::MEMBERSHIP, "static".to_string()),
        (
            tribe_api::env::CLUSTER_KEY_FILE,
            key_file.display().to_string(),
        ),
        // The front door follows /readyz every supervision round (0.5 s).
        (tribe_api::env::SHUTDOWN_DELAY, "1s".to_string()),
    ] {
        env.insert(k.to_string(), v);
    }
    if !peers.is_empty() {
        env.insert(tribe_api::env::PEERS.to_string(), peers.join(","));
    }
    env.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{Membership, ReplicationMode, SendMode};
    use crate::fixtures::cluster;
    use crate::resources::deployment;
    use std::collections::BTreeMap;

    fn sc() -> SessionCluster {
        let mut sc = cluster("shop", "default");
        sc.spec.replication.mode = ReplicationMode::Backup;
        sc.spec.session.timeout = "5m".into();
        sc
    }

    fn env_of(sc: &SessionCluster, index: usize, replicas: usize) -> BTreeMap<String, String> {
        node_env(sc, 18100, index, replicas, Path::new("/tmp/k"))
            .into_iter()
            .collect()
    }

    /// The Deployment's container env: name → literal value (None for pod fields).
    fn deployment_env(sc: &SessionCluster) -> BTreeMap<String, Option<String>> {
        let d = deployment(sc);
        let c = &d.spec.template.spec.unwrap().containers[0];
        c.env
            .clone()
            .unwrap()
            .into_iter()
            .map(|e| (e.name, e.value))
            .collect()
    }

    #[test]
    fn slots_get_distinct_ports() {
        assert_eq!(ports(18100, 0), (18100, 18101, 18102));
        assert_eq!(ports(18100, 2), (18120, 18121, 18122));
        assert_eq!(http_addr(18100, 1).to_string(), "127.0.0.1:18110");
        assert!(max_slots(18100) > 4000);
    }

    #[test]
    fn static_peers_are_the_other_slots() {
        let env = env_of(&sc(), 1, 3);
        assert_eq!(
            env[tribe_api::env::PEERS],
            "127.0.0.1:18102,127.0.0.1:18122"
        );
        assert_eq!(env[tribe_api::env::MEMBERSHIP], "static");
        assert_eq!(env[tribe_api::env::ADVERTISE_ADDR], "127.0.0.1:18112");
        assert_eq!(env[tribe_api::env::REPLICATION_ADDR], "127.0.0.1:18112");
        assert_eq!(env[tribe_api::env::HTTP_ADDR], "127.0.0.1:18110");
        assert_eq!(env[tribe_api::env::ADMIN_ADDR], "127.0.0.1:18111");
        assert_eq!(env[tribe_api::env::CLUSTER_KEY_FILE], "/tmp/k");
        assert_eq!(env[tribe_api::env::NODE_ID], "shop-1");
        assert!(!env.contains_key(tribe_api::env::DNS_NAME));
        assert!(!env.contains_key(tribe_api::env::MULTICAST_GROUP));
    }

    #[test]
    fn a_single_node_has_no_peers() {
        assert!(!env_of(&sc(), 0, 1).contains_key(tribe_api::env::PEERS));
    }

    /// Every setting the Deployment gives a pod reaches a local node with the same
    /// value, unless it is one of the few documented local overrides; and local sets
    /// nothing else. Walked over specs that vary every field.
    #[test]
    fn local_nodes_get_the_deployments_settings() {
        let mut specs = Vec::new();
        for membership in [Membership::Auto, Membership::Multicast, Membership::Dns] {
            for mode in [ReplicationMode::Delta, ReplicationMode::Backup] {
                for send in [SendMode::Async, SendMode::Sync] {
                    let mut sc = cluster("shop", "web");
                    sc.spec.replicas = 4;
                    sc.spec.membership = membership;
                    sc.spec.replication.mode = mode;
                    sc.spec.replication.backups = 2;
                    sc.spec.replication.send_mode = send;
                    sc.spec.session.timeout = "15m".into();
                    sc.spec.session.cookie_name = "JSESSIONID".into();
                    specs.push(sc);
                }
            }
        }
        for sc in &specs {
            let pod = deployment_env(sc);
            let local = env_of(sc, 2, 4);
            let mut compared = 0;
            for (name, value) in &pod {
                if LOCAL_OVERRIDES.contains(&name.as_str()) {
                    continue;
                }
                let value = value
                    .as_ref()
                    .unwrap_or_else(|| panic!("{name} is a pod field but not a local override"));
                assert_eq!(local.get(name), Some(value), "{name}");
                compared += 1;
            }
            assert!(compared >= 6, "{compared} settings compared");
            for name in local.keys() {
                assert!(
                    pod.contains_key(name) || LOCAL_OVERRIDES.contains(&name.as_str()),
                    "local sets {name}, which the Deployment does not"
                );
            }
        }
        // The settings a user tunes in the spec, by name.
        let sc = &specs[specs.len() - 1];
        let local = env_of(sc, 0, 4);
        for (name, want) in [
            (tribe_api::env::CLUSTER, "web.shop"),
            (tribe_api::env::REPLICATION, "backup"),
            (tribe_api::env::BACKUPS, "2"),
            (tribe_api::env::SEND_MODE, "sync"),
            (tribe_api::env::SESSION_TIMEOUT, "15m"),
            (tribe_api::env::COOKIE_NAME, "JSESSIONID"),
        ] {
            assert_eq!(local[name], want, "{name}");
            assert_eq!(deployment_env(sc)[name].as_deref(), Some(want), "{name}");
        }
    }
}
