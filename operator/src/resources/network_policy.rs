//! The NetworkPolicy: replication (TCP 4000, multicast UDP 45564) only from the
//! cluster's own pods; the app and admin ports open.

use super::*;
use crate::crd::SessionCluster;
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

fn np_port(protocol: &str, port: i32) -> NetworkPolicyPort {
    NetworkPolicyPort {
        protocol: Some(protocol.into()),
        port: Some(IntOrString::Int(port)),
        end_port: None,
    }
}

/// The NetworkPolicy `<name>`.
pub fn network_policy(sc: &SessionCluster) -> NetworkPolicy {
    let own_pods = LabelSelector {
        match_labels: Some(selector_labels(sc)),
        match_expressions: None,
    };
    NetworkPolicy {
        metadata: child_meta(sc, sc.name_any()),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(own_pods.clone()),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![
                NetworkPolicyIngressRule {
                    from: Some(vec![NetworkPolicyPeer {
                        pod_selector: Some(own_pods),
                        ..NetworkPolicyPeer::default()
                    }]),
                    ports: Some(vec![
                        np_port("TCP", REPLICATION_PORT),
                        np_port("UDP", MULTICAST_PORT.into()),
                    ]),
                },
                NetworkPolicyIngressRule {
                    from: None,
                    ports: Some(vec![
                        np_port("TCP", exposed_http_port(sc)),
                        np_port("TCP", ADMIN_PORT),
                    ]),
                },
            ]),
            egress: None,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::cluster;

    #[test]
    fn replication_only_from_own_pods() {
        let sc = cluster("shop", "web");
        let np = network_policy(&sc);
        assert_eq!(np.metadata.name.as_deref(), Some("shop"));
        assert_eq!(
            np.metadata.owner_references.as_ref().unwrap()[0].controller,
            Some(true)
        );
        let spec = np.spec.unwrap();
        assert_eq!(
            spec.pod_selector.unwrap().match_labels.unwrap(),
            selector_labels(&sc)
        );
        let rules = spec.ingress.unwrap();
        let repl = &rules[0];
        let from = repl.from.as_ref().unwrap();
        assert_eq!(from.len(), 1);
        assert_eq!(
            from[0]
                .pod_selector
                .as_ref()
                .unwrap()
                .match_labels
                .as_ref()
                .unwrap(),
            &selector_labels(&sc)
        );
        assert!(
            from[0].namespace_selector.is_none(),
            "only this namespace's pods"
        );
        let ports: Vec<_> = repl
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .map(|p| p.port.clone().unwrap())
            .collect();
        assert!(ports.contains(&IntOrString::Int(4000)));
        let open = &rules[1];
        assert!(open.from.is_none());
        let ports: Vec<_> = open
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .map(|p| p.port.clone().unwrap())
            .collect();
        assert_eq!(ports, vec![IntOrString::Int(8080), IntOrString::Int(9090)]);
        assert!(!ports.contains(&IntOrString::Int(4000)));
    }
}
