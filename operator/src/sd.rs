//! Prometheus HTTP service discovery of the nodes: the operator's admin server answers
//! `GET /sd/nodes` with every running node pod of every SessionCluster it reconciles, in
//! the `http_sd_configs` format, labelled `namespace`, `pod` and `sessioncluster` (what
//! the dashboard and the alerts use). For a Prometheus without Kubernetes service
//! discovery, or that may not list pods; with the Prometheus Operator use a PodMonitor
//! (`spec.monitoring.podMonitor`) instead.

use crate::resources::{ADMIN_PORT, CLUSTER_LABEL, METRICS_PATH};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// One node pod to scrape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeTarget {
    /// Pod name.
    pub pod: String,
    /// Pod IP.
    pub ip: String,
}

/// The running pods (with an IP, not being deleted) among `pods`, by name.
pub fn node_targets(pods: &[Pod]) -> Vec<NodeTarget> {
    let mut t: Vec<NodeTarget> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| {
            let status = p.status.as_ref()?;
            if status.phase.as_deref() != Some("Running") {
                return None;
            }
            Some(NodeTarget {
                pod: p.name_any(),
                ip: status.pod_ip.clone()?,
            })
        })
        .collect();
    t.sort_by(|a, b| a.pod.cmp(&b.pod));
    t
}

/// Node targets by (namespace, SessionCluster name).
type ByCluster = BTreeMap<(String, String), Vec<NodeTarget>>;

/// The targets of every SessionCluster, by (namespace, name). Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Targets {
    inner: Arc<Mutex<ByCluster>>,
}

impl Targets {
    /// Replaces the targets of one SessionCluster.
    pub fn set(&self, namespace: &str, name: &str, targets: Vec<NodeTarget>) {
        let mut m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        m.insert((namespace.into(), name.into()), targets);
    }

    /// Forgets a SessionCluster.
    pub fn remove(&self, namespace: &str, name: &str) {
        let mut m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        m.remove(&(namespace.to_string(), name.to_string()));
    }

    /// The `http_sd_configs` document: one target group per node pod.
    pub fn document(&self) -> Value {
        let m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let groups: Vec<Value> = m
            .iter()
            .flat_map(|((ns, name), targets)| {
                targets.iter().map(move |t| {
                    let host = if t.ip.contains(':') {
                        format!("[{}]:{ADMIN_PORT}", t.ip)
                    } else {
                        format!("{}:{ADMIN_PORT}", t.ip)
                    };
                    json!({
                        "targets": [host],
                        "labels": {
                            "namespace": ns,
                            "pod": t.pod,
                            CLUSTER_LABEL: name,
                            "__metrics_path__": METRICS_PATH,
                        }
                    })
                })
            })
            .collect();
        Value::Array(groups)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodStatus;

    fn pod(name: &str, phase: &str, ip: Option<&str>) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some(name.into());
        p.status = Some(PodStatus {
            phase: Some(phase.into()),
            pod_ip: ip.map(String::from),
            ..PodStatus::default()
        });
        p
    }

    #[test]
    fn running_pods_with_an_ip_become_labelled_targets() {
        let pods = [
            pod("shop-b", "Running", Some("10.0.0.2")),
            pod("shop-a", "Running", Some("10.0.0.1")),
            pod("shop-c", "Pending", None),
            pod("shop-d", "Running", None),
        ];
        let t = node_targets(&pods);
        assert_eq!(
            t.iter().map(|t| t.pod.as_str()).collect::<Vec<_>>(),
            ["shop-a", "shop-b"]
        );
        let targets = Targets::default();
        targets.set("web", "shop", t);
        targets.set(
            "web",
            "cart",
            vec![NodeTarget {
                pod: "cart-a".into(),
                ip: "fd00::1".into(),
            }],
        );
        let doc = targets.document();
        assert_eq!(doc.as_array().unwrap().len(), 3);
        assert_eq!(doc[0]["targets"][0], "[fd00::1]:9090");
        assert_eq!(doc[1]["targets"][0], "10.0.0.1:9090");
        assert_eq!(doc[1]["labels"]["namespace"], "web");
        assert_eq!(doc[1]["labels"]["pod"], "shop-a");
        assert_eq!(doc[1]["labels"]["sessioncluster"], "shop");
        assert_eq!(doc[1]["labels"]["__metrics_path__"], "/metrics");
        targets.remove("web", "shop");
        assert_eq!(targets.document().as_array().unwrap().len(), 1);
    }
}
