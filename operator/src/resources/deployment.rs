//! The Deployment of node pods.

use super::template::{container_security_context, pod_template, KEY_VOLUME};
use super::*;
use crate::crd::{Membership, PodTemplate, SessionCluster};
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Container, EnvVar, EnvVarSource, HTTPGetAction, ObjectFieldSelector, Probe, SecretKeySelector,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// How long a terminating node keeps serving while reporting not ready, before it hands
/// its sessions over and leaves: the time the endpoints and the ingress take to stop
/// sending to a pod that is being deleted (without it, requests already routed to the
/// pod meet a closed port or a vanished IP).
pub const SHUTDOWN_DELAY: &str = "5s";

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

/// An env var from a pod field. `apiVersion: v1` is spelled out: left to defaulting,
/// every server-side apply re-sets it and bumps the Deployment's resourceVersion.
fn env_field(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                api_version: Some("v1".into()),
            }),
            ..EnvVarSource::default()
        }),
    }
}

/// An env var from a Secret key (required: a missing Secret keeps the pod from starting,
/// with the reason in its events).
fn env_secret(name: &str, secret: String, key: String) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret,
                key,
                optional: None,
            }),
            ..EnvVarSource::default()
        }),
    }
}

fn http_probe(path: &str, period: i32, failures: i32, initial_delay: Option<i32>) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("admin".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(1),
        initial_delay_seconds: initial_delay,
        ..Probe::default()
    }
}

/// Where a node setting's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettingValue {
    /// The same literal value everywhere.
    Literal(String),
    /// The node's own name: the pod's `metadata.name` (local: `<cluster>-<slot>`).
    NodeName,
    /// The node's own address: the pod's `status.podIP` (local: `127.0.0.1:<port>`).
    NodeIp,
    /// A key of a Secret in the cluster's namespace (pods: a `secretKeyRef`; local
    /// passes its own environment's value on instead).
    SecretKey {
        /// The Secret.
        name: String,
        /// The key.
        key: String,
    },
}

/// One `TRIBE_*` setting of a node (names from `tribe_api::env`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSetting {
    /// The environment variable.
    pub name: &'static str,
    /// Its value.
    pub value: SettingValue,
}

impl NodeSetting {
    fn literal(name: &'static str, value: impl Into<String>) -> Self {
        NodeSetting {
            name,
            value: SettingValue::Literal(value.into()),
        }
    }
}

/// The node configuration a SessionCluster gives every node, as `TRIBE_*` settings.
/// The one source of truth for both the Deployment ([`node_env`]) and
/// `tribe-operator local` (which replaces only what differs on one machine:
/// addresses, membership, the key file's path).
pub fn node_settings(sc: &SessionCluster) -> Vec<NodeSetting> {
    let spec = &sc.spec;
    let mut settings = vec![
        NodeSetting {
            name: tribe_api::env::NODE_ID,
            value: SettingValue::NodeName,
        },
        NodeSetting::literal(tribe_api::env::CLUSTER, sc.cluster_id()),
        NodeSetting {
            name: tribe_api::env::ADVERTISE_ADDR,
            value: SettingValue::NodeIp,
        },
        NodeSetting::literal(tribe_api::env::MEMBERSHIP, spec.membership.as_str()),
        NodeSetting::literal(tribe_api::env::MULTICAST_GROUP, multicast_group(sc)),
    ];
    if spec.membership != Membership::Multicast {
        settings.push(NodeSetting::literal(tribe_api::env::DNS_NAME, dns_name(sc)));
    }
    settings.extend([
        NodeSetting::literal(tribe_api::env::REPLICATION, spec.replication.mode.as_str()),
        NodeSetting::literal(
            tribe_api::env::BACKUPS,
            spec.replication.backups.to_string(),
        ),
        NodeSetting::literal(
            tribe_api::env::SEND_MODE,
            spec.replication.send_mode.as_str(),
        ),
        NodeSetting::literal(
            tribe_api::env::SESSION_TIMEOUT,
            spec.session.timeout.clone(),
        ),
        NodeSetting::literal(
            tribe_api::env::COOKIE_NAME,
            spec.session.cookie_name.clone(),
        ),
    ]);
    if spec.cookie_secure() {
        settings.push(NodeSetting::literal(tribe_api::env::COOKIE_SECURE, "true"));
    }
    settings.extend([
        NodeSetting::literal(tribe_api::env::SHUTDOWN_DELAY, SHUTDOWN_DELAY),
        NodeSetting::literal(
            tribe_api::env::CLUSTER_KEY_FILE,
            format!("{KEY_DIR}/{KEY_FILE_NAME}"),
        ),
    ]);
    if spec.replication.min_members > 0 {
        settings.push(NodeSetting::literal(
            tribe_api::env::MIN_MEMBERS,
            spec.replication.min_members.to_string(),
        ));
    }
    settings.extend(super::persistence::settings(sc));
    settings
}

/// The environment of the node container: [`node_settings`] as env vars, the node's
/// own name and address from the pod.
pub fn node_env(sc: &SessionCluster) -> Vec<EnvVar> {
    node_settings(sc)
        .into_iter()
        .map(|s| match s.value {
            SettingValue::Literal(v) => env(s.name, v),
            SettingValue::NodeName => env_field(s.name, "metadata.name"),
            SettingValue::NodeIp => env_field(s.name, "status.podIP"),
            SettingValue::SecretKey { name, key } => env_secret(s.name, name, key),
        })
        .collect()
}

/// The node container (before [`pod_template`] merges `spec.template` into it).
pub(super) fn node_container(sc: &SessionCluster, t: &PodTemplate) -> Container {
    Container {
        name: "node".into(),
        image: Some(sc.spec.node_image().to_string()),
        env: Some([node_env(sc), sidecar_env(sc)].concat()),
        ports: Some(node_ports(sc)),
        readiness_probe: Some(http_probe("/readyz", 2, 3, None)),
        liveness_probe: Some(http_probe("/healthz", 10, 3, Some(10))),
        resources: sc.spec.resources.clone().or_else(|| t.resources.clone()),
        volume_mounts: Some(
            std::iter::once(VolumeMount {
                name: KEY_VOLUME.into(),
                mount_path: KEY_DIR.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            })
            .chain(super::persistence::data_mount(sc))
            .collect(),
        ),
        security_context: Some(container_security_context()),
        ..Container::default()
    }
}

/// The Deployment running the cluster's nodes.
pub fn deployment(sc: &SessionCluster) -> Deployment {
    Deployment {
        metadata: child_meta(sc, sc.name_any()),
        spec: DeploymentSpec {
            replicas: Some(sc.spec.replicas),
            selector: LabelSelector {
                match_labels: Some(selector_labels(sc)),
                match_expressions: None,
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_unavailable: Some(IntOrString::Int(0)),
                    max_surge: Some(IntOrString::Int(1)),
                }),
            }),
            template: pod_template(sc),
            ..DeploymentSpec::default()
        },
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{ReplicationMode, SendMode};
    use crate::fixtures::cluster;

    fn env_map(d: &Deployment) -> BTreeMap<String, EnvVar> {
        let c = &d.spec.template.spec.as_ref().unwrap().containers[0];
        c.env
            .clone()
            .unwrap()
            .into_iter()
            .map(|e| (e.name.clone(), e))
            .collect()
    }

    fn value(env: &BTreeMap<String, EnvVar>, name: &str) -> String {
        env[name]
            .value
            .clone()
            .unwrap_or_else(|| panic!("{name} has no value"))
    }

    fn field(env: &BTreeMap<String, EnvVar>, name: &str) -> String {
        env[name]
            .value_from
            .as_ref()
            .unwrap()
            .field_ref
            .as_ref()
            .unwrap()
            .field_path
            .clone()
    }

    #[test]
    fn names_labels_selector_owner() {
        let sc = cluster("shop", "web");
        let d = deployment(&sc);
        assert_eq!(d.metadata.name.as_deref(), Some("shop"));
        assert_eq!(d.metadata.namespace.as_deref(), Some("web"));
        assert_eq!(
            d.metadata.labels.as_ref().unwrap()["app.kubernetes.io/managed-by"],
            "tribe-operator"
        );
        let owner = &d.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(owner.kind, "SessionCluster");
        assert_eq!(owner.api_version, "tribe.rs/v1alpha1");
        assert_eq!(owner.name, "shop");
        assert_eq!(owner.uid, "uid-shop");
        assert_eq!(owner.controller, Some(true));
        let spec = d.spec;
        assert_eq!(spec.replicas, Some(3));
        let sel = spec.selector.match_labels.unwrap();
        assert_eq!(sel, selector_labels(&sc));
        let pod_labels = spec.template.metadata.unwrap().labels.unwrap();
        for (k, v) in &sel {
            assert_eq!(&pod_labels[k], v, "template carries selector label {k}");
        }
    }

    #[test]
    fn ports_probes_strategy_grace() {
        let d = deployment(&cluster("shop", "web"));
        let spec = d.spec;
        let ru = spec.strategy.unwrap().rolling_update.unwrap();
        assert_eq!(ru.max_unavailable, Some(IntOrString::Int(0)));
        assert_eq!(ru.max_surge, Some(IntOrString::Int(1)));
        let pod = spec.template.spec.unwrap();
        assert!(pod.termination_grace_period_seconds.unwrap() >= 30);
        let c = &pod.containers[0];
        assert_eq!(
            c.image.as_deref(),
            Some(concat!("tribe-node:", env!("CARGO_PKG_VERSION")))
        );
        let ports: Vec<_> = c
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .map(|p| (p.name.clone().unwrap(), p.container_port))
            .collect();
        assert_eq!(
            ports,
            vec![
                ("http".into(), 8080),
                ("admin".into(), 9090),
                ("replication".into(), 4000)
            ]
        );
        let ready = c
            .readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap();
        assert_eq!(ready.path.as_deref(), Some("/readyz"));
        assert_eq!(ready.port, IntOrString::String("admin".into()));
        let live = c
            .liveness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap();
        assert_eq!(live.path.as_deref(), Some("/healthz"));
        let mount = &c.volume_mounts.as_ref().unwrap()[0];
        assert_eq!(mount.mount_path, "/etc/tribe");
        assert_eq!(mount.read_only, Some(true));
        let vol = &pod.volumes.unwrap()[0];
        assert_eq!(
            vol.secret.as_ref().unwrap().secret_name.as_deref(),
            Some("shop-key")
        );
    }

    #[test]
    fn env_from_spec() {
        let mut sc = cluster("shop", "web");
        sc.spec.replicas = 4;
        sc.spec.replication.mode = ReplicationMode::Backup;
        sc.spec.replication.backups = 2;
        sc.spec.replication.send_mode = SendMode::Sync;
        sc.spec.session.timeout = "15m".into();
        sc.spec.session.cookie_name = "JSESSIONID".into();
        let env = env_map(&deployment(&sc));
        assert_eq!(field(&env, tribe_api::env::NODE_ID), "metadata.name");
        assert_eq!(field(&env, tribe_api::env::ADVERTISE_ADDR), "status.podIP");
        assert_eq!(value(&env, tribe_api::env::CLUSTER), "web.shop");
        assert_eq!(value(&env, tribe_api::env::MEMBERSHIP), "auto");
        assert_eq!(
            value(&env, tribe_api::env::MULTICAST_GROUP),
            multicast_group(&sc)
        );
        assert_eq!(
            value(&env, tribe_api::env::DNS_NAME),
            "shop-members.web.svc.cluster.local"
        );
        assert_eq!(value(&env, tribe_api::env::REPLICATION), "backup");
        assert_eq!(value(&env, tribe_api::env::BACKUPS), "2");
        assert_eq!(value(&env, tribe_api::env::SEND_MODE), "sync");
        assert_eq!(value(&env, tribe_api::env::SESSION_TIMEOUT), "15m");
        assert_eq!(value(&env, tribe_api::env::COOKIE_NAME), "JSESSIONID");
        assert_eq!(
            value(&env, tribe_api::env::CLUSTER_KEY_FILE),
            "/etc/tribe/cluster.key"
        );
    }

    /// The container env is exactly `node_settings`: same names, same order, literals
    /// as values and the node's own name/address from the pod.
    #[test]
    fn env_is_the_node_settings() {
        let postgres = crate::fixtures::persistence(true);
        for (membership, persistence) in [
            (Membership::Auto, None),
            (Membership::Multicast, None),
            (Membership::Dns, Some(postgres)),
        ] {
            let mut sc = cluster("shop", "web");
            sc.spec.membership = membership;
            sc.spec.persistence = persistence;
            let settings = node_settings(&sc);
            let env = node_env(&sc);
            assert_eq!(settings.len(), env.len());
            for (s, e) in settings.iter().zip(&env) {
                assert_eq!(s.name, e.name);
                let field = e
                    .value_from
                    .as_ref()
                    .and_then(|f| f.field_ref.as_ref())
                    .map(|f| f.field_path.as_str());
                match &s.value {
                    SettingValue::Literal(v) => {
                        assert_eq!(e.value.as_ref(), Some(v), "{}", s.name);
                        assert!(field.is_none());
                    }
                    SettingValue::NodeName => assert_eq!(field, Some("metadata.name")),
                    SettingValue::NodeIp => assert_eq!(field, Some("status.podIP")),
                    SettingValue::SecretKey { name, key } => {
                        let r = e.value_from.as_ref().unwrap().secret_key_ref.as_ref();
                        let r = r.expect("a secretKeyRef");
                        assert_eq!((&r.name, &r.key), (name, key));
                    }
                }
            }
        }
    }

    #[test]
    fn multicast_only_has_no_dns_name() {
        let mut sc = cluster("shop", "web");
        sc.spec.membership = Membership::Multicast;
        assert!(!env_map(&deployment(&sc)).contains_key(tribe_api::env::DNS_NAME));
        sc.spec.membership = Membership::Dns;
        assert_eq!(
            value(&env_map(&deployment(&sc)), tribe_api::env::MEMBERSHIP),
            "dns"
        );
    }

    #[test]
    fn resources_pass_through() {
        use k8s_openapi::api::core::v1::ResourceRequirements;
        use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
        let mut sc = cluster("shop", "web");
        let res = ResourceRequirements {
            limits: Some(BTreeMap::from([(
                "memory".to_string(),
                Quantity("256Mi".into()),
            )])),
            ..ResourceRequirements::default()
        };
        sc.spec.resources = Some(res.clone());
        let d = deployment(&sc);
        assert_eq!(
            d.spec.template.spec.unwrap().containers[0].resources,
            Some(res)
        );
    }
}
