//! Scraping the nodes: the Prometheus annotations on the pods and, when a SessionCluster
//! asks for it (`spec.monitoring.podMonitor`), a Prometheus Operator PodMonitor.
//!
//! The PodMonitor is built as a [`DynamicObject`]: the Prometheus Operator's CRDs are
//! optional, so the operator finds them by API discovery at run time
//! ([`POD_MONITOR_GVK`]) instead of compiling their types in.

use super::*;
use crate::crd::SessionCluster;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::json;

/// API group of the Prometheus Operator.
pub const MONITORING_GROUP: &str = "monitoring.coreos.com";
/// Kind, group and version of a PodMonitor.
pub const POD_MONITOR_GVK: (&str, &str, &str) = (MONITORING_GROUP, "v1", "PodMonitor");
/// Path of the nodes' metrics on the admin port.
pub const METRICS_PATH: &str = "/metrics";
/// The label that carries the SessionCluster's name on every scraped node series.
pub const CLUSTER_LABEL: &str = "sessioncluster";

/// The PodMonitor's API resource (group, version, kind, plural).
pub fn pod_monitor_resource() -> ApiResource {
    let (group, version, kind) = POD_MONITOR_GVK;
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), "podmonitors")
}

/// The annotations of a node pod that the common `kubernetes_sd_configs` pod-role
/// scrape config (`prometheus.io/scrape`, `/port`, `/path`) turns into a target.
pub fn scrape_annotations() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("prometheus.io/scrape".to_string(), "true".to_string()),
        ("prometheus.io/port".to_string(), ADMIN_PORT.to_string()),
        ("prometheus.io/path".to_string(), METRICS_PATH.to_string()),
    ])
}

/// The PodMonitor `<name>`: every node pod's admin port, `/metrics`, with the
/// SessionCluster's name as the `sessioncluster` label.
pub fn pod_monitor(sc: &SessionCluster) -> DynamicObject {
    let ar = pod_monitor_resource();
    let mut obj = DynamicObject::new(&sc.name_any(), &ar).data(json!({
        "spec": {
            "selector": { "matchLabels": selector_labels(sc) },
            "podMetricsEndpoints": [{
                "port": "admin",
                "path": METRICS_PATH,
                "relabelings": [{
                    "sourceLabels": ["__meta_kubernetes_pod_label_app_kubernetes_io_instance"],
                    "targetLabel": CLUSTER_LABEL,
                }],
            }],
        }
    }));
    obj.metadata = child_meta(sc, sc.name_any());
    obj
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::cluster;

    #[test]
    fn pod_monitor_selects_the_nodes_admin_port() {
        let sc = cluster("shop", "web");
        let pm = pod_monitor(&sc);
        let v = serde_json::to_value(&pm).unwrap();
        assert_eq!(v["apiVersion"], "monitoring.coreos.com/v1");
        assert_eq!(v["kind"], "PodMonitor");
        assert_eq!(v["metadata"]["name"], "shop");
        assert_eq!(v["metadata"]["namespace"], "web");
        assert_eq!(
            v["metadata"]["ownerReferences"][0]["kind"],
            "SessionCluster"
        );
        assert_eq!(
            v["spec"]["selector"]["matchLabels"],
            serde_json::to_value(selector_labels(&sc)).unwrap()
        );
        let ep = &v["spec"]["podMetricsEndpoints"][0];
        assert_eq!(ep["port"], "admin");
        assert_eq!(ep["path"], "/metrics");
        assert_eq!(ep["relabelings"][0]["targetLabel"], "sessioncluster");
        let ar = pod_monitor_resource();
        assert_eq!(
            (ar.group.as_str(), ar.plural.as_str()),
            ("monitoring.coreos.com", "podmonitors")
        );
    }

    #[test]
    fn annotations_name_the_admin_port() {
        let a = scrape_annotations();
        assert_eq!(a["prometheus.io/scrape"], "true");
        assert_eq!(a["prometheus.io/port"], "9090");
        assert_eq!(a["prometheus.io/path"], "/metrics");
    }
}
