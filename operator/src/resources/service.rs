//! The app Service and the headless members Service.

use super::*;
use crate::crd::SessionCluster;
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// Name of the app Service's port for the nodes' `/metrics` (the admin port).
pub const METRICS_PORT_NAME: &str = "metrics";

fn service_port(name: &str, port: i32) -> ServicePort {
    named_port(name, port, name)
}

fn named_port(name: &str, port: i32, target: &str) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(IntOrString::String(target.into())),
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    }
}

/// The app Service (`<name>`, port 8080 → the nodes' `http` port, and `metrics` 9090 →
/// their admin port, for a ServiceMonitor or any scraper that selects Services).
pub fn service(sc: &SessionCluster) -> Service {
    Service {
        metadata: child_meta(sc, sc.name_any()),
        spec: Some(ServiceSpec {
            selector: Some(selector_labels(sc)),
            ports: Some(vec![
                service_port("http", HTTP_PORT),
                named_port(METRICS_PORT_NAME, ADMIN_PORT, "admin"),
            ]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// The headless members Service (`<name>-members`): one DNS A record per pod, ready
/// or not, for DNS membership.
pub fn headless_service(sc: &SessionCluster) -> Service {
    Service {
        metadata: child_meta(sc, headless_name(sc)),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(selector_labels(sc)),
            ports: Some(vec![
                service_port("replication", REPLICATION_PORT),
                service_port("admin", ADMIN_PORT),
            ]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::cluster;

    #[test]
    fn app_service() {
        let sc = cluster("shop", "web");
        let s = service(&sc);
        assert_eq!(s.metadata.name.as_deref(), Some("shop"));
        assert_eq!(
            s.metadata.owner_references.as_ref().unwrap()[0].controller,
            Some(true)
        );
        let spec = s.spec.unwrap();
        assert_eq!(spec.selector.unwrap(), selector_labels(&sc));
        let p = &spec.ports.as_ref().unwrap()[0];
        assert_eq!(
            (p.port, p.target_port.clone()),
            (8080, Some(IntOrString::String("http".into())))
        );
        assert_eq!(spec.cluster_ip, None);
        let m = &spec.ports.as_ref().unwrap()[1];
        assert_eq!(m.name.as_deref(), Some("metrics"));
        assert_eq!(
            (m.port, m.target_port.clone()),
            (9090, Some(IntOrString::String("admin".into())))
        );
    }

    #[test]
    fn headless_members_service() {
        let sc = cluster("shop", "web");
        let s = headless_service(&sc);
        assert_eq!(s.metadata.name.as_deref(), Some("shop-members"));
        assert_eq!(
            s.metadata.labels.as_ref().unwrap()["app.kubernetes.io/instance"],
            "shop"
        );
        let spec = s.spec.unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        assert_eq!(spec.publish_not_ready_addresses, Some(true));
        assert_eq!(spec.selector.unwrap(), selector_labels(&sc));
        assert_eq!(spec.ports.unwrap()[0].port, 4000);
    }
}
