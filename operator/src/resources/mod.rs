//! Pure builders for every object a SessionCluster owns. No I/O: each function takes
//! the SessionCluster and returns the object to server-side apply.

mod deployment;
mod ingress;
mod monitor;
mod network_policy;
mod pdb;
mod persistence;
mod secret;
mod service;
mod sidecar;
mod statefulset;
mod template;

pub use deployment::{deployment, node_env, node_settings, NodeSetting, SettingValue};
pub use ingress::ingress;
pub use monitor::{
    pod_monitor, pod_monitor_resource, scrape_annotations, CLUSTER_LABEL, METRICS_PATH,
    MONITORING_GROUP, POD_MONITOR_GVK,
};
pub use network_policy::network_policy;
pub use pdb::pdb;
pub use persistence::{DATA_DIR, DATA_VOLUME};
pub use secret::{needs_password, random_key, secret, with_password};
pub use service::{headless_service, service, METRICS_PORT_NAME};
pub use sidecar::{app_container, exposed_http_port, node_ports, sidecar_env};
pub use statefulset::{claim_template_change, statefulset};
pub use template::{
    check_template, container_security_context, default_spread, merge_env, merged_security_context,
    pod_template, KEY_VOLUME, NODE_GROUP, SPREAD_KEYS, TERMINATION_GRACE_SECONDS, TMP_DIR,
    TMP_VOLUME,
};

use crate::crd::SessionCluster;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// The field manager of every server-side apply.
pub const MANAGER: &str = "tribe-operator";
/// The app (HTTP) port of a node.
pub const HTTP_PORT: i32 = tribe_api::ports::HTTP as i32;
/// The admin port of a node (health, metrics, `/cluster`).
pub const ADMIN_PORT: i32 = tribe_api::ports::ADMIN as i32;
/// The replication (peer TCP) port of a node.
pub const REPLICATION_PORT: i32 = tribe_api::ports::REPLICATION as i32;
/// The Redis-protocol port of a node (on loopback, for an app next to it).
pub const RESP_PORT: i32 = tribe_api::ports::RESP as i32;
/// The UDP port of the multicast group.
pub const MULTICAST_PORT: u16 = 45564;
/// Key of the cluster key inside the Secret.
pub const KEY_FILE_NAME: &str = "cluster.key";
/// Key of the Redis-protocol password inside the Secret (`spec.app` sidecars: the node
/// reads it as its `--resp-password-file`, the app gets it as `REDIS_PASSWORD`).
pub const RESP_PASSWORD_KEY: &str = "resp.password";
/// Directory the Secret is mounted at.
pub const KEY_DIR: &str = "/etc/tribe";
/// `app.kubernetes.io/name` of every node pod.
pub const APP_NAME: &str = "tribe-node";

/// Name of the headless members Service.
pub fn headless_name(sc: &SessionCluster) -> String {
    format!("{}-members", sc.name_any())
}

/// Name of the cluster key Secret.
pub fn secret_name(sc: &SessionCluster) -> String {
    format!("{}-key", sc.name_any())
}

/// The labels that select a cluster's pods (stable: part of the Deployment's and the
/// StatefulSet's selector, and the labels of the StatefulSet's claims).
pub fn selector_labels(sc: &SessionCluster) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), APP_NAME.to_string()),
        ("app.kubernetes.io/instance".to_string(), sc.name_any()),
    ])
}

/// The selector labels as a label-selector string (`k=v,k=v`).
pub fn selector_string(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Labels on every object the operator creates.
pub fn labels(sc: &SessionCluster) -> BTreeMap<String, String> {
    let mut l = selector_labels(sc);
    l.insert(
        "app.kubernetes.io/managed-by".to_string(),
        MANAGER.to_string(),
    );
    l
}

/// The controller owner reference pointing at the SessionCluster.
pub fn owner_reference(sc: &SessionCluster) -> OwnerReference {
    // controller_owner_ref is only None without a name or uid; stored objects have both.
    sc.controller_owner_ref(&())
        .unwrap_or_else(|| OwnerReference {
            api_version: SessionCluster::api_version(&()).into_owned(),
            kind: SessionCluster::kind(&()).into_owned(),
            name: sc.name_any(),
            uid: sc.uid().unwrap_or_default(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        })
}

/// Metadata for a child called `name`: namespace, labels, owner reference.
pub fn child_meta(sc: &SessionCluster, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: sc.namespace(),
        labels: Some(labels(sc)),
        owner_references: Some(vec![owner_reference(sc)]),
        ..ObjectMeta::default()
    }
}

/// The cluster's own multicast group `239.a.b.c:45564`, derived from its namespace
/// and name (SHA-256), so every cluster hears only its own heartbeats.
pub fn multicast_group(sc: &SessionCluster) -> String {
    multicast_group_for(&sc.namespace().unwrap_or_default(), &sc.name_any())
}

/// [`multicast_group`] for a namespace and name. The second octet avoids 0 and 255
/// (239.0.0.0/16 and 239.255.0.0/16 are conventionally reserved), the last avoids 0 and 255.
pub fn multicast_group_for(namespace: &str, name: &str) -> String {
    let digest = Sha256::digest(format!("tribe.rs/{namespace}/{name}").as_bytes());
    let a = 1 + digest[0] % 254;
    let b = digest[1];
    let c = 1 + digest[2] % 254;
    format!("239.{a}.{b}.{c}:{MULTICAST_PORT}")
}

/// The DNS name of the headless members Service.
pub fn dns_name(sc: &SessionCluster) -> String {
    format!(
        "{}.{}.svc.cluster.local",
        headless_name(sc),
        sc.namespace().unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::cluster;

    #[test]
    fn multicast_groups_of_two_clusters_differ() {
        let a = multicast_group(&cluster("shop", "default"));
        let b = multicast_group(&cluster("cart", "default"));
        let c = multicast_group(&cluster("shop", "other"));
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            a,
            multicast_group(&cluster("shop", "default")),
            "deterministic"
        );
        for g in [a, b, c] {
            let (ip, port) = g.split_once(':').unwrap();
            let ip: std::net::Ipv4Addr = ip.parse().unwrap();
            assert_eq!(ip.octets()[0], 239, "{g}");
            assert!(ip.is_multicast());
            assert_eq!(port, "45564");
        }
    }

    #[test]
    fn multicast_groups_spread() {
        let groups: std::collections::HashSet<_> = (0..200)
            .map(|i| multicast_group_for("ns", &format!("c{i}")))
            .collect();
        assert!(
            groups.len() >= 199,
            "few collisions expected, got {}",
            groups.len()
        );
    }

    #[test]
    fn labels_and_selector() {
        let sc = cluster("shop", "default");
        let sel = selector_labels(&sc);
        assert_eq!(sel["app.kubernetes.io/name"], "tribe-node");
        assert_eq!(sel["app.kubernetes.io/instance"], "shop");
        assert!(!sel.contains_key("app.kubernetes.io/managed-by"));
        assert_eq!(
            labels(&sc)["app.kubernetes.io/managed-by"],
            "tribe-operator"
        );
        assert_eq!(
            selector_string(&sel),
            "app.kubernetes.io/instance=shop,app.kubernetes.io/name=tribe-node"
        );
        assert_eq!(dns_name(&sc), "shop-members.default.svc.cluster.local");
    }
}
