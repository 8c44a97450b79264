//! The pod template of the node pods, shared by every workload builder.
//!
//! [`pod_template`] merges `spec.template` into what the operator needs, in this order
//! of precedence: the operator's own settings win (its `TRIBE_*` env and `REDIS_URL`,
//! its selector labels, its `cluster-key`/`tmp` volumes, the restricted security
//! context), then the container-specific spec (`spec.app.env`), then `spec.template`.
//! The pod passes Pod Security "restricted": non-root, RuntimeDefault seccomp, no
//! privilege escalation, every capability dropped, a read-only root filesystem with a
//! writable `emptyDir` on `/tmp`.

use super::deployment::node_container;
use super::*;
use crate::crd::{PodTemplate, SessionCluster};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, EnvVar, PodSecurityContext, PodSpec,
    PodTemplateSpec, SeccompProfile, SecretVolumeSource, SecurityContext, TopologySpreadConstraint,
    Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Group that may read the mounted cluster key (the node image's 65532).
pub const NODE_GROUP: i64 = 65532;
/// Seconds a node gets between SIGTERM and SIGKILL to hand its sessions over.
pub const TERMINATION_GRACE_SECONDS: i64 = 60;
/// The operator's volume holding the cluster key.
pub const KEY_VOLUME: &str = "cluster-key";
/// The operator's writable scratch volume (the root filesystem is read-only).
pub const TMP_VOLUME: &str = "tmp";
/// Where [`TMP_VOLUME`] is mounted in every container.
pub const TMP_DIR: &str = "/tmp";
/// Topology keys the pods spread over when `spec.template` names no constraint.
pub const SPREAD_KEYS: [&str; 2] = ["topology.kubernetes.io/zone", "kubernetes.io/hostname"];

/// The security context of every container: Pod Security "restricted" (no privilege
/// escalation, every capability dropped, non-root, RuntimeDefault seccomp) plus a
/// read-only root filesystem.
pub fn container_security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        }),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        ..SecurityContext::default()
    }
}

/// The restricted context with `user`'s settings on top, the restricted ones imposed
/// again: a template can add (`runAsUser`, `seLinuxOptions`, a Localhost seccomp
/// profile...) but never loosen, even if the CRD's CEL rules were bypassed.
pub fn merged_security_context(user: Option<&SecurityContext>) -> SecurityContext {
    let base = container_security_context();
    let Some(user) = user else {
        return base;
    };
    let mut out = user.clone();
    out.privileged = None;
    out.allow_privilege_escalation = base.allow_privilege_escalation;
    out.capabilities = base.capabilities;
    out.read_only_root_filesystem = base.read_only_root_filesystem;
    out.run_as_non_root = base.run_as_non_root;
    if out
        .seccomp_profile
        .as_ref()
        .is_some_and(|p| p.type_ == "Unconfined")
    {
        out.seccomp_profile = None;
    }
    out
}

/// Pod-level security context: non-root, RuntimeDefault seccomp, and the key file
/// group-readable through `fsGroup` (a supplementary group of every container process),
/// which also makes the node's data volume writable; that volume's ownership is fixed
/// once, not re-walked at every start.
fn pod_security_context(sc: &SessionCluster) -> PodSecurityContext {
    PodSecurityContext {
        fs_group: Some(NODE_GROUP),
        fs_group_change_policy: sc.spec.wants_volumes().then(|| "OnRootMismatch".into()),
        run_as_non_root: Some(true),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        }),
        ..PodSecurityContext::default()
    }
}

/// The default spread: one best-effort constraint per [`SPREAD_KEYS`] key over this
/// cluster's pods.
pub fn default_spread(sc: &SessionCluster) -> Vec<TopologySpreadConstraint> {
    SPREAD_KEYS
        .iter()
        .map(|key| TopologySpreadConstraint {
            max_skew: 1,
            topology_key: (*key).into(),
            when_unsatisfiable: "ScheduleAnyway".into(),
            label_selector: Some(LabelSelector {
                match_labels: Some(selector_labels(sc)),
                match_expressions: None,
            }),
            ..TopologySpreadConstraint::default()
        })
        .collect()
}

/// `ours` followed by every var of `extra` whose name `ours` does not set: the first
/// definition of a name wins.
pub fn merge_env(ours: Vec<EnvVar>, extra: &[EnvVar]) -> Vec<EnvVar> {
    let mut out = ours;
    for e in extra {
        if !out.iter().any(|o| o.name == e.name) {
            out.push(e.clone());
        }
    }
    out
}

/// Adds the template's env, envFrom, volume mounts and security context to a container
/// the operator built, plus the `/tmp` scratch mount unless the template mounts there.
fn apply_to_container(c: &mut Container, t: &PodTemplate) {
    let env = merge_env(
        c.env.take().unwrap_or_default(),
        t.env.as_deref().unwrap_or_default(),
    );
    c.env = (!env.is_empty()).then_some(env);
    if let Some(from) = &t.env_from {
        c.env_from = Some(from.clone());
    }
    let mut mounts = c.volume_mounts.take().unwrap_or_default();
    let user_mounts = t.volume_mounts.as_deref().unwrap_or_default();
    if !user_mounts.iter().any(|m| m.mount_path == TMP_DIR) {
        mounts.push(VolumeMount {
            name: TMP_VOLUME.into(),
            mount_path: TMP_DIR.into(),
            ..VolumeMount::default()
        });
    }
    mounts.extend(
        user_mounts
            .iter()
            .filter(|m| !mounts.iter().any(|o| o.mount_path == m.mount_path))
            .cloned()
            .collect::<Vec<_>>(),
    );
    c.volume_mounts = Some(mounts);
    c.security_context = Some(merged_security_context(t.security_context.as_ref()));
}

/// Why `spec.template` cannot be merged, or `Ok`: a volume may not take the operator's
/// names, a mount may not shadow the cluster key. Checked by the controller (the schema
/// cannot express it cheaply).
pub fn check_template(t: &PodTemplate) -> Result<(), String> {
    for v in t.volumes.as_deref().unwrap_or_default() {
        if v.name == KEY_VOLUME || v.name == TMP_VOLUME {
            return Err(format!(
                "template.volumes: the name {:?} is the operator's",
                v.name
            ));
        }
    }
    for m in t.volume_mounts.as_deref().unwrap_or_default() {
        if m.mount_path.trim_end_matches('/') == KEY_DIR {
            return Err(format!(
                "template.volumeMounts: {KEY_DIR} holds the cluster key"
            ));
        }
    }
    Ok(())
}

/// The pod template of the node pods: the node container, the app container with
/// `spec.app`, and `spec.template` merged in (see the module header for precedence).
/// Pure; the Deployment (and any other workload) embeds it as is.
pub fn pod_template(sc: &SessionCluster) -> PodTemplateSpec {
    let t = sc.spec.template.clone().unwrap_or_default();
    let mut containers: Vec<Container> = std::iter::once(node_container(sc, &t))
        .chain(app_container(sc))
        .collect();
    for c in &mut containers {
        apply_to_container(c, &t);
    }
    let mut volumes = vec![
        Volume {
            name: KEY_VOLUME.into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret_name(sc)),
                default_mode: Some(0o440),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: TMP_VOLUME.into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        },
    ];
    volumes.extend(
        t.volumes
            .iter()
            .flatten()
            .filter(|v| v.name != KEY_VOLUME && v.name != TMP_VOLUME)
            .cloned(),
    );
    let meta = t.metadata.clone().unwrap_or_default();
    let mut pod_labels = meta.labels;
    pod_labels.extend(labels(sc));
    let mut annotations = meta.annotations;
    annotations.extend(scrape_annotations());
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(pod_labels),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            containers,
            termination_grace_period_seconds: Some(TERMINATION_GRACE_SECONDS),
            security_context: Some(pod_security_context(sc)),
            volumes: Some(volumes),
            image_pull_secrets: t.image_pull_secrets,
            service_account_name: t.service_account_name,
            node_selector: t.node_selector,
            tolerations: t.tolerations,
            affinity: t.affinity,
            topology_spread_constraints: Some(
                t.topology_spread_constraints
                    .unwrap_or_else(|| default_spread(sc)),
            )
            .filter(|c| !c.is_empty()),
            priority_class_name: t.priority_class_name,
            ..PodSpec::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{AppSpec, IngressSpec, IngressTls, TemplateMetadata};
    use crate::fixtures::cluster;
    use k8s_openapi::api::core::v1::{
        Affinity, ConfigMapEnvSource, EnvFromSource, LocalObjectReference, NodeAffinity,
        NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Toleration,
    };

    fn env(name: &str, value: &str) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: Some(value.into()),
            value_from: None,
        }
    }

    fn value(c: &Container, name: &str) -> Option<String> {
        let vars: Vec<_> = c.env.iter().flatten().filter(|e| e.name == name).collect();
        assert!(vars.len() <= 1, "{name} is set {} times", vars.len());
        vars.first().and_then(|e| e.value.clone())
    }

    fn pod(sc: &SessionCluster) -> PodSpec {
        pod_template(sc).spec.unwrap()
    }

    fn with_app(sc: &mut SessionCluster) {
        sc.spec.app = Some(AppSpec {
            image: "shop:1".into(),
            port: 3000,
            command: None,
            args: None,
            env: [("MODE".to_string(), "app".to_string())].into(),
            readiness_path: "/".into(),
            proxy: None,
            resources: None,
        });
    }

    /// Without `spec.template` the pod passes Pod Security "restricted" and spreads.
    #[test]
    fn default_pod_is_restricted_and_spread() {
        let mut sc = cluster("shop", "web");
        with_app(&mut sc);
        let pod = pod(&sc);
        let psc = pod.security_context.as_ref().unwrap();
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(
            psc.seccomp_profile.as_ref().unwrap().type_,
            "RuntimeDefault"
        );
        assert_eq!(pod.containers.len(), 2);
        for c in &pod.containers {
            let sc = c.security_context.as_ref().unwrap();
            assert_eq!(sc.allow_privilege_escalation, Some(false), "{}", c.name);
            assert_eq!(sc.read_only_root_filesystem, Some(true), "{}", c.name);
            assert_eq!(sc.privileged, None, "{}", c.name);
            let caps = sc.capabilities.as_ref().unwrap();
            assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
            assert_eq!(caps.add, None);
            let tmp = c
                .volume_mounts
                .iter()
                .flatten()
                .find(|m| m.mount_path == TMP_DIR)
                .unwrap_or_else(|| panic!("{} has no writable /tmp", c.name));
            assert_eq!(tmp.name, TMP_VOLUME);
        }
        let vols = pod.volumes.as_ref().unwrap();
        let tmp = vols.iter().find(|v| v.name == TMP_VOLUME).unwrap();
        assert!(tmp.empty_dir.is_some());
        let spread = pod.topology_spread_constraints.as_ref().unwrap();
        let keys: Vec<_> = spread.iter().map(|c| c.topology_key.as_str()).collect();
        assert_eq!(keys, SPREAD_KEYS);
        for c in spread {
            assert_eq!(c.when_unsatisfiable, "ScheduleAnyway");
            assert_eq!(c.max_skew, 1);
            let sel = c.label_selector.as_ref().unwrap().match_labels.as_ref();
            assert_eq!(sel, Some(&selector_labels(&sc)));
        }
        assert_eq!(pod.service_account_name, None);
    }

    #[test]
    fn template_fields_reach_the_pod() {
        let mut sc = cluster("shop", "web");
        let toleration = Toleration {
            key: Some("dedicated".into()),
            operator: Some("Equal".into()),
            value: Some("web".into()),
            effect: Some("NoSchedule".into()),
            ..Toleration::default()
        };
        let affinity = Affinity {
            node_affinity: Some(NodeAffinity {
                required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                    node_selector_terms: vec![NodeSelectorTerm {
                        match_expressions: Some(vec![NodeSelectorRequirement {
                            key: "kubernetes.io/arch".into(),
                            operator: "In".into(),
                            values: Some(vec!["amd64".into()]),
                        }]),
                        match_fields: None,
                    }],
                }),
                ..NodeAffinity::default()
            }),
            ..Affinity::default()
        };
        let from = EnvFromSource {
            config_map_ref: Some(ConfigMapEnvSource {
                name: "shop-config".into(),
                optional: None,
            }),
            ..EnvFromSource::default()
        };
        let config = Volume {
            name: "config".into(),
            config_map: Some(k8s_openapi::api::core::v1::ConfigMapVolumeSource {
                name: "shop-config".into(),
                ..Default::default()
            }),
            ..Volume::default()
        };
        let mount = VolumeMount {
            name: "config".into(),
            mount_path: "/etc/shop".into(),
            read_only: Some(true),
            ..VolumeMount::default()
        };
        sc.spec.template = Some(PodTemplate {
            metadata: Some(TemplateMetadata {
                labels: [
                    ("team".to_string(), "web".to_string()),
                    (
                        "app.kubernetes.io/instance".to_string(),
                        "hijack".to_string(),
                    ),
                ]
                .into(),
                annotations: [("owner".to_string(), "web-team".to_string())].into(),
            }),
            env: Some(vec![env("LOG", "debug")]),
            env_from: Some(vec![from.clone()]),
            volumes: Some(vec![config.clone()]),
            volume_mounts: Some(vec![mount.clone()]),
            image_pull_secrets: Some(vec![LocalObjectReference {
                name: "registry".into(),
            }]),
            service_account_name: Some("shop".into()),
            node_selector: Some([("disk".to_string(), "ssd".to_string())].into()),
            tolerations: Some(vec![toleration.clone()]),
            affinity: Some(affinity.clone()),
            topology_spread_constraints: Some(Vec::new()),
            priority_class_name: Some("high".into()),
            ..PodTemplate::default()
        });
        let tpl = pod_template(&sc);
        let meta = tpl.metadata.unwrap();
        let labels = meta.labels.unwrap();
        assert_eq!(labels["team"], "web");
        // The selector labels are the operator's: a template cannot move pods out.
        assert_eq!(labels["app.kubernetes.io/instance"], "shop");
        let annotations = meta.annotations.unwrap();
        assert_eq!(annotations["owner"], "web-team");
        assert!(annotations.contains_key("prometheus.io/scrape"));
        let pod = tpl.spec.unwrap();
        let node = &pod.containers[0];
        assert_eq!(value(node, "LOG").as_deref(), Some("debug"));
        assert_eq!(node.env_from.as_deref(), Some(&[from][..]));
        let mounts = node.volume_mounts.as_ref().unwrap();
        assert!(mounts.contains(&mount));
        assert!(mounts.iter().any(|m| m.mount_path == KEY_DIR));
        let vols = pod.volumes.as_ref().unwrap();
        assert!(vols.contains(&config));
        assert!(vols.iter().any(|v| v.name == KEY_VOLUME));
        assert_eq!(pod.image_pull_secrets.unwrap()[0].name, "registry");
        assert_eq!(pod.service_account_name.as_deref(), Some("shop"));
        assert_eq!(pod.node_selector.unwrap()["disk"], "ssd");
        assert_eq!(pod.tolerations, Some(vec![toleration]));
        assert_eq!(pod.affinity, Some(affinity));
        assert_eq!(pod.priority_class_name.as_deref(), Some("high"));
        // An explicit empty list: no spread constraint at all.
        assert_eq!(pod.topology_spread_constraints, None);
    }

    /// The operator's `TRIBE_*` settings win over the template's env; other names pass.
    #[test]
    fn operator_env_wins_over_template_env() {
        let mut sc = cluster("shop", "web");
        sc.spec.template = Some(PodTemplate {
            env: Some(vec![
                env("TRIBE_CLUSTER", "other.cluster"),
                env("TRIBE_REPLICATION", "backup"),
                env("TRIBE_LOG_FORMAT", "json"),
            ]),
            ..PodTemplate::default()
        });
        let pod = pod(&sc);
        let node = &pod.containers[0];
        assert_eq!(value(node, "TRIBE_CLUSTER").as_deref(), Some("web.shop"));
        assert_eq!(value(node, "TRIBE_REPLICATION").as_deref(), Some("delta"));
        assert_eq!(value(node, "TRIBE_LOG_FORMAT").as_deref(), Some("json"));
    }

    /// With `spec.app` the app container gets the template's env, envFrom and mounts;
    /// `REDIS_URL` and `spec.app.env` win over the template.
    #[test]
    fn app_container_gets_the_template_too() {
        let mut sc = cluster("shop", "web");
        with_app(&mut sc);
        let mount = VolumeMount {
            name: "data".into(),
            mount_path: "/data".into(),
            ..VolumeMount::default()
        };
        sc.spec.template = Some(PodTemplate {
            env: Some(vec![
                env("REDIS_URL", "redis://elsewhere:6379"),
                env("MODE", "template"),
                env("SHARED", "yes"),
            ]),
            env_from: Some(vec![EnvFromSource::default()]),
            volume_mounts: Some(vec![mount.clone()]),
            ..PodTemplate::default()
        });
        let pod = pod(&sc);
        let app = pod.containers.iter().find(|c| c.name == "app").unwrap();
        assert_eq!(
            value(app, "REDIS_URL").as_deref(),
            Some("redis://:$(REDIS_PASSWORD)@127.0.0.1:6379")
        );
        assert_eq!(value(app, "MODE").as_deref(), Some("app"));
        assert_eq!(value(app, "SHARED").as_deref(), Some("yes"));
        assert!(app.env_from.is_some());
        assert!(app.volume_mounts.as_ref().unwrap().contains(&mount));
        // The app does not get the cluster key.
        assert!(!app
            .volume_mounts
            .iter()
            .flatten()
            .any(|m| m.mount_path == KEY_DIR));
    }

    /// The template's security context adds settings but never loosens.
    #[test]
    fn security_context_only_tightens() {
        let tighter = SecurityContext {
            run_as_user: Some(1000),
            run_as_group: Some(1000),
            ..SecurityContext::default()
        };
        let m = merged_security_context(Some(&tighter));
        assert_eq!(m.run_as_user, Some(1000));
        assert_eq!(m.run_as_group, Some(1000));
        assert_eq!(m.allow_privilege_escalation, Some(false));
        let looser = SecurityContext {
            privileged: Some(true),
            allow_privilege_escalation: Some(true),
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_ADMIN".into()]),
                drop: None,
            }),
            read_only_root_filesystem: Some(false),
            run_as_non_root: Some(false),
            seccomp_profile: Some(SeccompProfile {
                type_: "Unconfined".into(),
                localhost_profile: None,
            }),
            ..SecurityContext::default()
        };
        let m = merged_security_context(Some(&looser));
        let mut restricted = container_security_context();
        restricted.privileged = None;
        assert_eq!(m, restricted);
        // In the pod too, for every container.
        let mut sc = cluster("shop", "web");
        sc.spec.template = Some(PodTemplate {
            security_context: Some(looser),
            ..PodTemplate::default()
        });
        assert_eq!(pod(&sc).containers[0].security_context, Some(restricted));
    }

    #[test]
    fn template_may_not_take_the_operators_volumes() {
        let named = |n: &str| PodTemplate {
            volumes: Some(vec![Volume {
                name: n.into(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Volume::default()
            }]),
            ..PodTemplate::default()
        };
        assert!(check_template(&named("data")).is_ok());
        for n in [KEY_VOLUME, TMP_VOLUME] {
            let e = check_template(&named(n)).unwrap_err();
            assert!(e.contains(n), "{e}");
        }
        let shadow = PodTemplate {
            volume_mounts: Some(vec![VolumeMount {
                name: "data".into(),
                mount_path: "/etc/tribe/".into(),
                ..VolumeMount::default()
            }]),
            ..PodTemplate::default()
        };
        assert!(check_template(&shadow).unwrap_err().contains(KEY_DIR));
    }

    /// A template that mounts its own volume on `/tmp` replaces the scratch mount.
    #[test]
    fn own_tmp_mount_replaces_the_scratch_one() {
        let mut sc = cluster("shop", "web");
        sc.spec.template = Some(PodTemplate {
            volume_mounts: Some(vec![VolumeMount {
                name: "big".into(),
                mount_path: TMP_DIR.into(),
                ..VolumeMount::default()
            }]),
            ..PodTemplate::default()
        });
        let mounts = pod(&sc).containers[0].volume_mounts.clone().unwrap();
        let tmp: Vec<_> = mounts.iter().filter(|m| m.mount_path == TMP_DIR).collect();
        assert_eq!(tmp.len(), 1);
        assert_eq!(tmp[0].name, "big");
    }

    #[test]
    fn template_resources_apply_to_the_node() {
        use k8s_openapi::api::core::v1::ResourceRequirements;
        use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
        let res = ResourceRequirements {
            requests: Some([("cpu".to_string(), Quantity("100m".into()))].into()),
            ..ResourceRequirements::default()
        };
        let mut sc = cluster("shop", "web");
        sc.spec.template = Some(PodTemplate {
            resources: Some(res.clone()),
            ..PodTemplate::default()
        });
        assert_eq!(pod(&sc).containers[0].resources, Some(res));
    }

    /// `session.cookieSecure` defaults to true exactly when the Ingress terminates TLS.
    #[test]
    fn cookie_secure_follows_ingress_tls() {
        let secure = |sc: &SessionCluster| {
            crate::resources::node_env(sc)
                .iter()
                .any(|e| e.name == "TRIBE_COOKIE_SECURE" && e.value.as_deref() == Some("true"))
        };
        let mut sc = cluster("shop", "web");
        assert!(!secure(&sc));
        sc.spec.ingress = Some(IngressSpec {
            enabled: true,
            tls: Some(IngressTls {
                secret_name: "shop-tls".into(),
            }),
            ..IngressSpec::default()
        });
        assert!(secure(&sc), "TLS ingress: Secure by default");
        sc.spec.session.cookie_secure = Some(false);
        assert!(!secure(&sc), "an explicit false wins");
        sc.spec.session.cookie_secure = None;
        sc.spec.ingress.as_mut().unwrap().enabled = false;
        assert!(!secure(&sc), "a disabled ingress serves nothing over TLS");
        sc.spec.session.cookie_secure = Some(true);
        assert!(secure(&sc));
    }
}
