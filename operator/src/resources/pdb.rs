//! The PodDisruptionBudget: voluntary disruptions take one node at a time.

use super::*;
use crate::crd::SessionCluster;
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// The PodDisruptionBudget `<name>` (maxUnavailable 1).
pub fn pdb(sc: &SessionCluster) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: child_meta(sc, sc.name_any()),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(sc)),
                match_expressions: None,
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::cluster;

    #[test]
    fn pdb_selects_cluster_pods() {
        let sc = cluster("shop", "web");
        let p = pdb(&sc);
        assert_eq!(p.metadata.name.as_deref(), Some("shop"));
        assert_eq!(
            p.metadata.owner_references.as_ref().unwrap()[0].kind,
            "SessionCluster"
        );
        let spec = p.spec.unwrap();
        assert_eq!(spec.max_unavailable, Some(IntOrString::Int(1)));
        assert_eq!(
            spec.selector.unwrap().match_labels.unwrap(),
            selector_labels(&sc)
        );
    }
}
