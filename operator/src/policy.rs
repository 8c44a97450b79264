//! What `spec.template` may ask of the node pods: the operator must not be a confused
//! deputy that gives whoever can create a SessionCluster more than a pod of their own in
//! that namespace would need.
//!
//! Three tiers, checked here for every reconcile (pure; the controller refuses a spec
//! that fails with `InvalidSpec`, and changes nothing):
//!
//! - **Always refused**, also by the CRD's CEL rules at `kubectl apply` time (a rule can
//!   say "never"; it cannot read the operator's flags): a container security context
//!   that loosens the restricted one (`privileged`, privilege escalation, added
//!   capabilities, root, a writable root filesystem, unconfined profiles, a Windows host
//!   process), `gitRepo` volumes (deprecated: the kubelet runs `git` on the node), and
//!   `Bidirectional` mount propagation (needs a privileged container).
//! - **Refused unless the operator runs with `--allow-node-level-pod-fields`** (chart
//!   value `templatePolicy.allowNodeLevelPodFields`): volumes that reach the node or
//!   its network storage directly, i.e. every volume source but the ones Pod Security
//!   "restricted" allows ([`POD_VOLUME_SOURCES`]): `hostPath`, `nfs`, `iscsi`, `rbd`,
//!   `flexVolume`, in-tree cloud disks… Storage through a PersistentVolumeClaim, a CSI
//!   driver or an ephemeral volume is the namespace's own and stays allowed.
//! - **Refused unless the operator runs with `--allow-template-service-account`**
//!   (`templatePolicy.allowServiceAccountName`): `serviceAccountName`, which would run
//!   the pods (the user's own image, with `spec.app`) with any ServiceAccount's
//!   permissions in the namespace. Without it the pods run as the namespace's `default`.
//!
//! The template has no pod-level host fields at all (`hostNetwork`, `hostPID`,
//! `hostIPC`, `hostUsers`, `shareProcessNamespace`, `nodeName`): the CRD's schema does not
//! carry them, so the API server prunes them (a test keeps it so).

use crate::crd::{PodTemplate, SessionClusterSpec};
use k8s_openapi::api::core::v1::{SecurityContext, Volume};

/// Volume sources any template may use: Pod Security "restricted"'s list.
pub const POD_VOLUME_SOURCES: [&str; 8] = [
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

/// Volume sources no flag unlocks.
pub const NEVER_VOLUME_SOURCES: [&str; 1] = ["gitRepo"];

/// CEL rule on `template.volumes`: no source of [`NEVER_VOLUME_SOURCES`].
pub const NO_GIT_REPO_RULE: &str = "self.all(v, !has(v.gitRepo))";
/// CEL rule on `template.volumeMounts`: no `Bidirectional` propagation.
pub const NO_BIDIRECTIONAL_RULE: &str =
    "self.all(m, !has(m.mountPropagation) || m.mountPropagation != 'Bidirectional')";

/// What the operator lets a template ask for beyond the always-allowed fields.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TemplatePolicy {
    /// Node-level volume sources (`hostPath`, `nfs`, …): `--allow-node-level-pod-fields`.
    pub allow_node_level_pod_fields: bool,
    /// `serviceAccountName`: `--allow-template-service-account`.
    pub allow_service_account_name: bool,
}

/// The volume sources `v` sets (its fields but `name`), as the API spells them.
pub fn volume_sources(v: &Volume) -> Vec<String> {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::Object(map)) => map
            .into_iter()
            .filter(|(k, val)| k != "name" && !val.is_null())
            .map(|(k, _)| k)
            .collect(),
        _ => Vec::new(),
    }
}

/// Why `spec` asks for more than `policy` allows, or `Ok`.
pub fn check(spec: &SessionClusterSpec, policy: &TemplatePolicy) -> Result<(), String> {
    let Some(t) = &spec.template else {
        return Ok(());
    };
    check_template(t, policy)
}

/// [`check`] for the template itself.
pub fn check_template(t: &PodTemplate, policy: &TemplatePolicy) -> Result<(), String> {
    for v in t.volumes.iter().flatten() {
        for source in volume_sources(v) {
            if NEVER_VOLUME_SOURCES.contains(&source.as_str()) {
                return Err(format!(
                    "template.volumes {:?}: {source} volumes are never allowed (deprecated; \
                     the kubelet runs git on the node)",
                    v.name
                ));
            }
            if !POD_VOLUME_SOURCES.contains(&source.as_str()) && !policy.allow_node_level_pod_fields
            {
                return Err(format!(
                    "template.volumes {:?}: {source} is a node-level volume; only {} are \
                     allowed unless the operator runs with --allow-node-level-pod-fields \
                     (chart value templatePolicy.allowNodeLevelPodFields)",
                    v.name,
                    POD_VOLUME_SOURCES.join(", ")
                ));
            }
        }
    }
    for m in t.volume_mounts.iter().flatten() {
        if m.mount_propagation.as_deref() == Some("Bidirectional") {
            return Err(format!(
                "template.volumeMounts {:?}: Bidirectional mount propagation needs a \
                 privileged container, which is never allowed",
                m.mount_path
            ));
        }
    }
    if t.service_account_name
        .as_deref()
        .is_some_and(|s| !s.is_empty())
        && !policy.allow_service_account_name
    {
        return Err(
            "template.serviceAccountName is not allowed unless the operator runs with \
             --allow-template-service-account (chart value \
             templatePolicy.allowServiceAccountName): the pods run as the namespace's \
             default ServiceAccount"
                .into(),
        );
    }
    if let Some(sc) = &t.security_context {
        check_security_context(sc)?;
    }
    Ok(())
}

/// The CRD's CEL rules on `template.securityContext`, for a server that did not run
/// them (1.24 without the feature gate, an older CRD).
fn check_security_context(sc: &SecurityContext) -> Result<(), String> {
    let refuse = |what: &str| Err(format!("template.securityContext may not {what}"));
    if sc.privileged == Some(true) {
        return refuse("set privileged");
    }
    if sc.allow_privilege_escalation == Some(true) {
        return refuse("allow privilege escalation");
    }
    if sc
        .capabilities
        .as_ref()
        .and_then(|c| c.add.as_ref())
        .is_some_and(|a| !a.is_empty())
    {
        return refuse("add capabilities");
    }
    if sc.run_as_non_root == Some(false) || sc.run_as_user == Some(0) {
        return refuse("run as root (runAsNonRoot false or runAsUser 0)");
    }
    if sc.read_only_root_filesystem == Some(false) {
        return refuse("make the root filesystem writable (mount a volume instead)");
    }
    let unconfined = sc
        .seccomp_profile
        .as_ref()
        .is_some_and(|p| p.type_ == "Unconfined")
        || sc
            .app_armor_profile
            .as_ref()
            .is_some_and(|p| p.type_ == "Unconfined")
        || sc.proc_mount.as_deref().is_some_and(|p| p != "Default");
    if unconfined {
        return refuse("set an Unconfined profile or a non-default procMount");
    }
    if sc
        .windows_options
        .as_ref()
        .and_then(|w| w.host_process)
        .unwrap_or(false)
    {
        return refuse("run a Windows host process");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        EmptyDirVolumeSource, HostPathVolumeSource, NFSVolumeSource,
        PersistentVolumeClaimVolumeSource, VolumeMount,
    };

    fn with_volume(v: Volume) -> PodTemplate {
        PodTemplate {
            volumes: Some(vec![v]),
            ..PodTemplate::default()
        }
    }

    fn host_path() -> Volume {
        Volume {
            name: "host".into(),
            host_path: Some(HostPathVolumeSource {
                path: "/var/lib/kubelet".into(),
                type_: None,
            }),
            ..Volume::default()
        }
    }

    const ALLOW_ALL: TemplatePolicy = TemplatePolicy {
        allow_node_level_pod_fields: true,
        allow_service_account_name: true,
    };

    /// hostPath (and every other node-level source) is refused by default, allowed with
    /// the flag; the namespace's own storage is always fine.
    #[test]
    fn node_level_volumes_need_the_flag() {
        let strict = TemplatePolicy::default();
        let err = check_template(&with_volume(host_path()), &strict).unwrap_err();
        assert!(
            err.contains("hostPath") && err.contains("--allow-node-level-pod-fields"),
            "{err}"
        );
        let nfs = Volume {
            name: "share".into(),
            nfs: Some(NFSVolumeSource {
                server: "10.0.0.1".into(),
                path: "/export".into(),
                read_only: None,
            }),
            ..Volume::default()
        };
        assert!(check_template(&with_volume(nfs.clone()), &strict)
            .unwrap_err()
            .contains("nfs"));
        let node_level = TemplatePolicy {
            allow_node_level_pod_fields: true,
            ..TemplatePolicy::default()
        };
        assert_eq!(
            check_template(&with_volume(host_path()), &node_level),
            Ok(())
        );
        assert_eq!(check_template(&with_volume(nfs), &node_level), Ok(()));
        for ok in [
            Volume {
                name: "cache".into(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Volume::default()
            },
            Volume {
                name: "data".into(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: "data".into(),
                    read_only: None,
                }),
                ..Volume::default()
            },
            // No source at all: the API server defaults it to an emptyDir.
            Volume {
                name: "bare".into(),
                ..Volume::default()
            },
        ] {
            assert_eq!(check_template(&with_volume(ok), &strict), Ok(()));
        }
    }

    /// Every source the Volume type knows is either in the allowed list or node-level:
    /// a new k8s-openapi with a new source is refused until someone decides otherwise.
    #[test]
    fn every_volume_source_is_classified() {
        let schema = serde_json::to_value(schemars::schema_for!(Volume)).unwrap();
        let props: Vec<String> = schema["properties"]
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| *k != "name")
            .cloned()
            .collect();
        for p in POD_VOLUME_SOURCES.iter().chain(&NEVER_VOLUME_SOURCES) {
            assert!(
                props.contains(&p.to_string()),
                "{p} is not a Volume field: {props:?}"
            );
        }
        assert!(props.contains(&"hostPath".to_string()));
        assert!(props.len() > POD_VOLUME_SOURCES.len() + 10, "{props:?}");
    }

    /// `spec.template` carries no pod-level host field, so the API server prunes them;
    /// a new template field must pass this list (and this policy) on purpose.
    #[test]
    fn the_template_schema_has_no_host_fields() {
        let crd = serde_json::to_value(crate::crd::crd()).unwrap();
        let template = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
            ["spec"]["properties"]["template"]["properties"];
        let mut fields: Vec<&str> = template
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        fields.sort_unstable();
        assert_eq!(
            fields,
            [
                "affinity",
                "env",
                "envFrom",
                "imagePullSecrets",
                "metadata",
                "nodeSelector",
                "priorityClassName",
                "resources",
                "securityContext",
                "serviceAccountName",
                "tolerations",
                "topologySpreadConstraints",
                "volumeMounts",
                "volumes"
            ]
        );
        for host in [
            "hostNetwork",
            "hostPID",
            "hostIPC",
            "hostUsers",
            "shareProcessNamespace",
            "nodeName",
        ] {
            assert!(template.get(host).is_none(), "{host}");
        }
        // The always-refused rules are in the CRD for the API server to run.
        let rules = |f: &str| template[f]["x-kubernetes-validations"].to_string();
        assert!(rules("volumes").contains("gitRepo"));
        assert!(rules("volumeMounts").contains("Bidirectional"));
        assert!(rules("securityContext").contains("privileged"));
    }

    #[test]
    fn git_repo_and_bidirectional_mounts_are_never_allowed() {
        let git: Volume = serde_json::from_value(serde_json::json!({
            "name": "src", "gitRepo": {"repository": "https://example.com/x.git"}
        }))
        .unwrap();
        assert!(check_template(&with_volume(git), &ALLOW_ALL)
            .unwrap_err()
            .contains("gitRepo"));
        let t = PodTemplate {
            volume_mounts: Some(vec![VolumeMount {
                name: "x".into(),
                mount_path: "/x".into(),
                mount_propagation: Some("Bidirectional".into()),
                ..VolumeMount::default()
            }]),
            ..PodTemplate::default()
        };
        assert!(check_template(&t, &ALLOW_ALL)
            .unwrap_err()
            .contains("Bidirectional"));
    }

    #[test]
    fn service_account_needs_its_flag() {
        let t = PodTemplate {
            service_account_name: Some("shop".into()),
            ..PodTemplate::default()
        };
        let err = check_template(&t, &TemplatePolicy::default()).unwrap_err();
        assert!(err.contains("--allow-template-service-account"), "{err}");
        let node_level_only = TemplatePolicy {
            allow_node_level_pod_fields: true,
            ..TemplatePolicy::default()
        };
        assert!(check_template(&t, &node_level_only).is_err());
        let sa = TemplatePolicy {
            allow_service_account_name: true,
            ..TemplatePolicy::default()
        };
        assert_eq!(check_template(&t, &sa), Ok(()));
    }

    /// The security context checks hold even with every flag on.
    #[test]
    fn a_loosening_security_context_is_always_refused() {
        use k8s_openapi::api::core::v1::{
            Capabilities, SeccompProfile, WindowsSecurityContextOptions,
        };
        let loosen: Vec<(&str, SecurityContext)> = vec![
            (
                "privileged",
                SecurityContext {
                    privileged: Some(true),
                    ..Default::default()
                },
            ),
            (
                "escalation",
                SecurityContext {
                    allow_privilege_escalation: Some(true),
                    ..Default::default()
                },
            ),
            (
                "capabilities",
                SecurityContext {
                    capabilities: Some(Capabilities {
                        add: Some(vec!["SYS_ADMIN".into()]),
                        drop: None,
                    }),
                    ..Default::default()
                },
            ),
            (
                "root",
                SecurityContext {
                    run_as_user: Some(0),
                    ..Default::default()
                },
            ),
            (
                "root",
                SecurityContext {
                    run_as_non_root: Some(false),
                    ..Default::default()
                },
            ),
            (
                "writable",
                SecurityContext {
                    read_only_root_filesystem: Some(false),
                    ..Default::default()
                },
            ),
            (
                "Unconfined",
                SecurityContext {
                    seccomp_profile: Some(SeccompProfile {
                        type_: "Unconfined".into(),
                        localhost_profile: None,
                    }),
                    ..Default::default()
                },
            ),
            (
                "procMount",
                SecurityContext {
                    proc_mount: Some("Unmasked".into()),
                    ..Default::default()
                },
            ),
            (
                "Windows",
                SecurityContext {
                    windows_options: Some(WindowsSecurityContextOptions {
                        host_process: Some(true),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ),
        ];
        for (what, sc) in loosen {
            let t = PodTemplate {
                security_context: Some(sc),
                ..PodTemplate::default()
            };
            assert!(check_template(&t, &ALLOW_ALL).is_err(), "{what} passed");
        }
        let tighter = PodTemplate {
            security_context: Some(SecurityContext {
                run_as_user: Some(1000),
                ..Default::default()
            }),
            ..PodTemplate::default()
        };
        assert_eq!(check_template(&tighter, &TemplatePolicy::default()), Ok(()));
    }
}
