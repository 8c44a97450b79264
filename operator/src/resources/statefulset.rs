//! The StatefulSet of node pods, used instead of the Deployment when
//! `spec.persistence` asks for volumes.
//!
//! Why a StatefulSet: a node restarting from disk must find *its own* data, and its
//! data is stamped with its node id (the pod name). A StatefulSet gives each pod a
//! stable name (`<cluster>-0`, `-1`, ...) and a claim of its own (`data-<cluster>-<i>`)
//! that follows that name through deletions, rescheduling and a scale to 0 and back; a
//! Deployment's pods get fresh names and would need a claim-assignment scheme of our own.
//!
//! `podManagementPolicy: Parallel`: nodes do not depend on each other's start order
//! (membership and state transfer work in any order), and the default `OrderedReady`
//! would start a whole cluster one pod at a time, each waiting for the previous one's
//! readiness, and stall every start behind a pod that cannot get Ready. Rolling updates
//! still replace one pod at a time (the policy only affects scaling).
//!
//! Claims are kept when the cluster scales down (`whenScaled: Retain`: a later scale-up
//! finds the data) and follow `persistence.retention` when the SessionCluster (and with
//! it the StatefulSet) is deleted (`whenDeleted`).

use super::persistence::DATA_VOLUME;
use super::*;
use crate::crd::SessionCluster;
use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
};
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimSpec, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// The StatefulSet running the cluster's nodes (persistence with volumes). `None` when
/// the spec asks for no volumes.
pub fn statefulset(sc: &SessionCluster) -> Option<StatefulSet> {
    let p = sc.spec.persistence().filter(|_| sc.spec.wants_volumes())?;
    let claim = PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(DATA_VOLUME.into()),
            labels: Some(selector_labels(sc)),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: p.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".into(), p.size.clone())])),
                limits: None,
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        status: None,
    };
    Some(StatefulSet {
        metadata: child_meta(sc, sc.name_any()),
        spec: StatefulSetSpec {
            replicas: Some(sc.spec.replicas),
            selector: LabelSelector {
                match_labels: Some(selector_labels(sc)),
                match_expressions: None,
            },
            service_name: Some(headless_name(sc)),
            pod_management_policy: Some("Parallel".into()),
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some(p.retention.as_str().into()),
                    when_scaled: Some("Retain".into()),
                },
            ),
            template: pod_template(sc),
            volume_claim_templates: Some(vec![claim]),
            ..StatefulSetSpec::default()
        },
        status: None,
    })
}

/// What the spec would change in `existing`'s claim template (size, StorageClass), as a
/// message for the user: the API server refuses any such change to a StatefulSet.
pub fn claim_template_change(existing: &StatefulSet, desired: &StatefulSet) -> Option<String> {
    let claim = |s: &StatefulSet| {
        let spec = s
            .spec
            .volume_claim_templates
            .as_ref()?
            .iter()
            .find(|c| c.metadata.name.as_deref() == Some(DATA_VOLUME))?
            .spec
            .clone()?;
        let size = spec
            .resources
            .and_then(|r| r.requests)
            .and_then(|r| r.get("storage").map(|q| q.0.clone()));
        Some((size, spec.storage_class_name))
    };
    let (had, want) = (claim(existing)?, claim(desired)?);
    let value = |q: &Option<String>| q.as_deref().and_then(crate::crd::quantity_value);
    let mut changed = Vec::new();
    if value(&had.0) != value(&want.0) {
        changed.push(format!(
            "size {} -> {}",
            had.0.as_deref().unwrap_or("none"),
            want.0.as_deref().unwrap_or("none")
        ));
    }
    if had.1 != want.1 {
        changed.push(format!(
            "storageClassName {} -> {}",
            had.1.as_deref().unwrap_or("(default)"),
            want.1.as_deref().unwrap_or("(default)")
        ));
    }
    (!changed.is_empty()).then(|| {
        format!(
            "persistence: {} cannot be applied to the StatefulSet {} (its volumeClaimTemplates are immutable): put the old value back, resize the PersistentVolumeClaims themselves, or turn persistence off and on again",
            changed.join(", "),
            existing.metadata.name.as_deref().unwrap_or_default()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{Persistence, Retention};
    use crate::fixtures::cluster;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    fn persistent(name: &str) -> SessionCluster {
        let mut sc = cluster(name, "web");
        sc.spec.persistence = Some(crate::fixtures::persistence(false));
        sc
    }

    #[test]
    fn only_with_volumes() {
        let mut sc = cluster("shop", "web");
        assert!(statefulset(&sc).is_none());
        sc.spec.persistence = Some(Persistence::default());
        assert!(statefulset(&sc).is_none(), "disabled");
        let mut sc = persistent("shop");
        assert!(statefulset(&sc).is_some());
        sc.spec.persistence = Some(crate::fixtures::persistence(true));
        assert!(statefulset(&sc).is_none(), "PostgreSQL: no volumes");
    }

    #[test]
    fn claims_names_and_policies() {
        let mut sc = persistent("shop");
        {
            let p = sc.spec.persistence.as_mut().unwrap();
            p.storage_class_name = Some("fast".into());
            p.size = Quantity("5Gi".into());
        }
        let s = statefulset(&sc).unwrap();
        assert_eq!(s.metadata.name.as_deref(), Some("shop"));
        assert_eq!(s.metadata.owner_references.unwrap()[0].uid, "uid-shop");
        let spec = s.spec;
        assert_eq!(spec.replicas, Some(3));
        assert_eq!(spec.service_name.as_deref(), Some("shop-members"));
        assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"));
        assert_eq!(spec.selector.match_labels, Some(selector_labels(&sc)));
        let policy = spec.persistent_volume_claim_retention_policy.unwrap();
        assert_eq!(policy.when_scaled.as_deref(), Some("Retain"));
        assert_eq!(policy.when_deleted.as_deref(), Some("Retain"));
        let claims = spec.volume_claim_templates.unwrap();
        assert_eq!(claims.len(), 1);
        assert_eq!(claims[0].metadata.name.as_deref(), Some("data"));
        assert!(claims[0].metadata.owner_references.is_none());
        let cs = claims[0].spec.as_ref().unwrap();
        assert_eq!(cs.storage_class_name.as_deref(), Some("fast"));
        assert_eq!(
            cs.resources.as_ref().unwrap().requests.as_ref().unwrap()["storage"],
            Quantity("5Gi".into())
        );
        // The claim is mounted where TRIBE_DATA_DIR points, writable through fsGroup.
        let pod = spec.template.spec.unwrap();
        let c = &pod.containers[0];
        let mount = c
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.name == "data")
            .expect("data mount");
        assert_eq!(mount.mount_path, "/var/lib/tribe");
        let dir = c
            .env
            .as_ref()
            .unwrap()
            .iter()
            .find(|e| e.name == "TRIBE_DATA_DIR")
            .unwrap();
        assert_eq!(dir.value.as_deref(), Some("/var/lib/tribe"));
        let security = pod.security_context.unwrap();
        assert_eq!(security.fs_group, Some(65532));
        assert_eq!(
            security.fs_group_change_policy.as_deref(),
            Some("OnRootMismatch")
        );
    }

    #[test]
    fn retention_delete() {
        let mut sc = persistent("shop");
        sc.spec.persistence.as_mut().unwrap().retention = Retention::Delete;
        let policy = statefulset(&sc)
            .unwrap()
            .spec
            .persistent_volume_claim_retention_policy
            .unwrap();
        assert_eq!(policy.when_deleted.as_deref(), Some("Delete"));
        assert_eq!(policy.when_scaled.as_deref(), Some("Retain"));
    }

    #[test]
    fn claim_template_changes_are_named() {
        let sc = persistent("shop");
        let before = statefulset(&sc).unwrap();
        assert_eq!(claim_template_change(&before, &before), None);
        let mut same = sc.clone();
        same.spec.persistence.as_mut().unwrap().size = Quantity("1024Mi".into());
        assert_eq!(
            claim_template_change(&before, &statefulset(&same).unwrap()),
            None,
            "the same size spelled differently"
        );
        let mut bigger = sc.clone();
        {
            let p = bigger.spec.persistence.as_mut().unwrap();
            p.size = Quantity("2Gi".into());
            p.storage_class_name = Some("fast".into());
        }
        let msg = claim_template_change(&before, &statefulset(&bigger).unwrap()).unwrap();
        assert!(msg.contains("size 1Gi -> 2Gi"), "{msg}");
        assert!(msg.contains("storageClassName (default) -> fast"), "{msg}");
    }

    /// The StatefulSet's pods are the Deployment's pods plus the volume mount and its
    /// persistence settings: one template, no drift.
    #[test]
    fn same_pod_template_as_the_deployment() {
        let sc = persistent("shop");
        let s = statefulset(&sc).unwrap().spec.template;
        let d = deployment(&sc).spec.template;
        assert_eq!(s, d);
        // Without persistence the Deployment's pods are unchanged: no mount, no setting.
        let plain = deployment(&cluster("shop", "web")).spec.template;
        let pod = plain.spec.unwrap();
        assert!(!pod.containers[0]
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .any(|m| m.name == DATA_VOLUME));
        assert!(pod
            .security_context
            .unwrap()
            .fs_group_change_policy
            .is_none());
        assert!(!pod.containers[0]
            .env
            .as_ref()
            .unwrap()
            .iter()
            .any(|e| e.name.starts_with("TRIBE_DATA") || e.name == "TRIBE_DURABILITY"));
    }
}
