//! The `SessionCluster` custom resource (`tribe.rs/v1alpha1`).
//!
//! The schema is generated from these types (kube's `KubeSchema` derive over schemars)
//! and committed as `crds/sessioncluster.yaml`. Validation the API server enforces at
//! apply time: `replicas >= 0`, the mode enums, the duration pattern of
//! `session.timeout`, and a CEL rule that `replication.backups < replicas`
//! (with 0 or 1 replicas only `backups <= 1`, the default, is accepted), and the
//! `persistence` rule: `postgres` only with `enabled` and without a StorageClass. (That
//! `size` and `storageClassName` stay fixed while a StatefulSet has them would be a
//! transition rule, which 1.24 servers do not compile: the operator refuses the change.)

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::{json_schema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};

mod template;
pub use template::*;

/// The operator's node image when none is configured (`--node-image`): `tribe-node:<version>`,
/// the release's own version (the chart's `appVersion`, checked by `operator/tests/chart.rs`).
/// The CRD bakes no default: a SessionCluster without `spec.image` runs the node image of
/// the operator that reconciles it, so upgrading the operator rolls its nodes too.
pub const DEFAULT_IMAGE: &str = concat!("tribe-node:", env!("CARGO_PKG_VERSION"));

/// The pattern every duration in the spec must match (`30m`, `90s`, `500ms`, `2h`).
pub const DURATION_PATTERN: &str = "^[0-9]+(ms|s|m|h)$";

/// The CEL rule tying `replication.backups` to `replicas`.
pub const BACKUPS_RULE: &str = "self.replication.backups < self.replicas || (self.replicas <= 1 && self.replication.backups <= 1)";

/// The CEL rule that `spec.resources` and `spec.template.resources` are not both set.
pub const RESOURCES_RULE: &str =
    "!has(self.resources) || !has(self.template) || !has(self.template.resources)";

/// Desired state of a replicated session cluster.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "tribe.rs",
    version = "v1alpha1",
    kind = "SessionCluster",
    plural = "sessionclusters",
    shortname = "tsc",
    namespaced,
    status = "SessionClusterStatus",
    doc = "A cluster of tribe-node pods that replicate HTTP sessions among themselves",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn = r#"{"name":"Replicas","type":"integer","jsonPath":".spec.replicas"}"#,
    printcolumn = r#"{"name":"Ready","type":"integer","jsonPath":".status.readyReplicas"}"#,
    printcolumn = r#"{"name":"Members","type":"integer","jsonPath":".status.members"}"#,
    printcolumn = r#"{"name":"Sessions","type":"integer","jsonPath":".status.sessions"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Image","type":"string","priority":1,"jsonPath":".status.image"}"#
)]
#[x_kube(
    validation = kube::core::Rule::new(BACKUPS_RULE).message("replication.backups must be less than replicas"),
    validation = kube::core::Rule::new(RESOURCES_RULE).message("set the node's resources in spec.resources or in spec.template.resources, not both")
)]
#[serde(rename_all = "camelCase")]
pub struct SessionClusterSpec {
    /// Number of nodes.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0))]
    pub replicas: i32,

    /// Node image. Leave it out to run the operator's node image (the chart's `nodeImage`,
    /// by default the operator's registry and version): an operator upgrade then rolls
    /// the nodes to the new version. Set it to pin an image (your app's, or a version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,

    /// How nodes find each other.
    #[serde(default)]
    pub membership: Membership,

    /// How sessions are replicated.
    #[serde(default)]
    pub replication: Replication,

    /// Session settings.
    #[serde(default)]
    pub session: SessionSettings,

    /// Ingress in front of the app Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<IngressSpec>,

    /// Compute resources of each node container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "resources_schema")]
    pub resources: Option<ResourceRequirements>,

    /// The user's app: when set, each pod runs it with tribe-node as a sidecar that
    /// stores its sessions over the Redis protocol on `127.0.0.1:6379`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<AppSpec>,
    /// Prometheus Operator integration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitoring: Option<MonitoringSpec>,
    /// What the node pods get besides the operator's own settings: labels, env,
    /// volumes, scheduling, a tighter security context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<PodTemplate>,
    /// Durable sessions (Tomcat's PersistentManager): a volume per node, or PostgreSQL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistence: Option<Persistence>,
}

fn default_replicas() -> i32 {
    3
}

impl Default for SessionClusterSpec {
    fn default() -> Self {
        Self {
            replicas: default_replicas(),
            image: None,
            membership: Membership::default(),
            replication: Replication::default(),
            session: SessionSettings::default(),
            ingress: None,
            resources: None,
            app: None,
            monitoring: None,
            template: None,
            persistence: None,
        }
    }
}

/// Membership discovery mode.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Membership {
    /// Multicast, plus DNS of the headless Service.
    #[default]
    Auto,
    /// UDP multicast heartbeats only.
    Multicast,
    /// DNS of the headless Service only.
    Dns,
}

impl Membership {
    /// The node's membership mode (`TRIBE_MEMBERSHIP`).
    pub fn mode(self) -> tribe_api::MembershipMode {
        match self {
            Membership::Auto => tribe_api::MembershipMode::Auto,
            Membership::Multicast => tribe_api::MembershipMode::Multicast,
            Membership::Dns => tribe_api::MembershipMode::Dns,
        }
    }

    /// The value of `TRIBE_MEMBERSHIP`.
    pub fn as_str(self) -> &'static str {
        self.mode().as_str()
    }
}

/// Replication and send modes: the node's own enums (`delta`/`backup`,
/// `async`/`sync`), so the CRD and the node spell them the same.
pub use tribe_api::{ReplicationMode, SendMode};

/// Replication settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Replication {
    /// `delta` (every node) or `backup` (primary + backups).
    #[serde(default)]
    pub mode: ReplicationMode,
    /// Number of backup copies in `backup` mode.
    #[serde(default = "default_backups")]
    #[schemars(range(min = 0))]
    pub backups: i32,
    /// `async` or `sync`.
    #[serde(default)]
    pub send_mode: SendMode,
    /// Split-brain protection (Hazelcast's split-brain protection, Infinispan's partition
    /// handling): a node that sees fewer live members than this, itself included, is not
    /// Ready and refuses session writes with 503, so the Ingress retries elsewhere; in
    /// `sync` mode a write is acknowledged only once this many members hold it.
    /// 0 (default): off.
    #[serde(default, skip_serializing_if = "is_zero")]
    #[schemars(range(min = 0))]
    pub min_members: i32,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

fn default_backups() -> i32 {
    1
}

impl Default for Replication {
    fn default() -> Self {
        Self {
            mode: ReplicationMode::default(),
            backups: default_backups(),
            send_mode: SendMode::default(),
            min_members: 0,
        }
    }
}

/// Session settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionSettings {
    /// Idle time after which a session expires, e.g. `30m`.
    #[serde(default = "default_timeout")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub timeout: String,
    /// Name of the session cookie.
    #[serde(default = "default_cookie")]
    #[schemars(regex(pattern = "^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"))]
    pub cookie_name: String,
    /// Mark the cookies `Secure` (the app is served over HTTPS). Default: true when the
    /// Ingress is enabled with TLS, false otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie_secure: Option<bool>,
}

fn default_timeout() -> String {
    "30m".into()
}

fn default_cookie() -> String {
    "SESSIONID".into()
}

impl Default for SessionSettings {
    fn default() -> Self {
        Self {
            timeout: default_timeout(),
            cookie_name: default_cookie(),
            cookie_secure: None,
        }
    }
}

/// Ingress settings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IngressSpec {
    /// Create an Ingress for the app Service.
    #[serde(default)]
    pub enabled: bool,
    /// Host name the Ingress answers for (all hosts when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// IngressClass name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_name: Option<String>,
    /// TLS termination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<IngressTls>,
}

/// Prometheus Operator integration of a cluster.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MonitoringSpec {
    /// Create a PodMonitor (`monitoring.coreos.com/v1`) that scrapes every node's
    /// `/metrics`. Ignored, with a warning, while the Prometheus Operator's CRDs are not
    /// installed.
    #[serde(default)]
    pub pod_monitor: bool,
}

impl SessionClusterSpec {
    /// Whether the cookies are marked `Secure`: `session.cookieSecure` when set, else
    /// whether the Ingress is enabled and terminates TLS.
    pub fn cookie_secure(&self) -> bool {
        self.session.cookie_secure.unwrap_or_else(|| {
            self.ingress
                .as_ref()
                .is_some_and(|i| i.enabled && i.tls.is_some())
        })
    }

    /// The persistence settings when persistence is on (`persistence.enabled`).
    pub fn persistence(&self) -> Option<&Persistence> {
        self.persistence.as_ref().filter(|p| p.enabled)
    }

    /// Whether each node gets a volume of its own (persistence on, no PostgreSQL): the
    /// nodes then run as a StatefulSet instead of a Deployment.
    pub fn wants_volumes(&self) -> bool {
        self.persistence().is_some_and(|p| p.postgres.is_none())
    }

    /// Whether a PodMonitor is asked for.
    pub fn wants_pod_monitor(&self) -> bool {
        self.monitoring.as_ref().is_some_and(|m| m.pod_monitor)
    }
}

/// The CEL rule that keeps `postgres` and the volume settings apart.
pub const PERSISTENCE_POSTGRES_RULE: &str =
    "!has(self.postgres) || (self.enabled && !has(self.storageClassName))";

/// The pattern of a Kubernetes quantity (`1Gi`, `500M`, `1e9`).
pub const QUANTITY_PATTERN: &str = "^(\\+|-)?(([0-9]+(\\.[0-9]*)?)|(\\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\\+|-)?(([0-9]+(\\.[0-9]*)?)|(\\.[0-9]+))))?$";

/// Durable sessions: each node persists its sessions behind the replicated store, so a
/// whole-cluster restart (scale to 0 and back, every pod lost at once) keeps them.
///
/// With a volume (the default store) every node gets a PersistentVolumeClaim of its own
/// and the nodes run as a StatefulSet (stable pod names: a restarted node finds its own
/// data under its own id). With `postgres` the sessions go to that database instead and
/// the nodes stay a Deployment.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(
    validation = kube::core::Rule::new(PERSISTENCE_POSTGRES_RULE).message("persistence.postgres needs persistence.enabled: true and takes no storageClassName (the sessions go to the database, no volume is made)")
)]
#[serde(rename_all = "camelCase")]
pub struct Persistence {
    /// Persist sessions.
    #[serde(default)]
    pub enabled: bool,
    /// StorageClass of the node volumes (the cluster's default class when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub storage_class_name: Option<String>,
    /// Size of each node volume.
    #[serde(default = "default_volume_size")]
    #[schemars(schema_with = "quantity_schema")]
    pub size: Quantity,
    /// `write-behind`: answered, then persisted within a bounded delay; `sync`: answered
    /// once the local write is durable.
    #[serde(default)]
    pub durability: Durability,
    /// Memory budget of each node in sessions: idle sessions beyond it live only in the
    /// store and are loaded on access. Unbounded when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_active_sessions: Option<i64>,
    /// What happens to the node volumes when the SessionCluster is deleted.
    #[serde(default)]
    pub retention: Retention,
    /// Keep the sessions in PostgreSQL instead of node volumes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PostgresStore>,
}

fn default_volume_size() -> Quantity {
    Quantity("1Gi".into())
}

impl Default for Persistence {
    fn default() -> Self {
        Self {
            enabled: false,
            storage_class_name: None,
            size: default_volume_size(),
            durability: Durability::default(),
            max_active_sessions: None,
            retention: Retention::default(),
            postgres: None,
        }
    }
}

/// When a session write is durable: the node's own values (`TRIBE_DURABILITY`).
pub use tribe_api::Durability;

/// What deleting the SessionCluster does to the node volumes.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
pub enum Retention {
    /// The PersistentVolumeClaims stay (a SessionCluster of the same name finds them).
    #[default]
    Retain,
    /// The PersistentVolumeClaims are deleted with the StatefulSet.
    Delete,
}

impl Retention {
    /// The StatefulSet's `persistentVolumeClaimRetentionPolicy.whenDeleted`.
    pub fn as_str(self) -> &'static str {
        match self {
            Retention::Retain => "Retain",
            Retention::Delete => "Delete",
        }
    }
}

/// Sessions in PostgreSQL (Tomcat's JDBCStore).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PostgresStore {
    /// The Secret key holding the connection URL (`postgres://user:pass@host/db`).
    pub secret_ref: SecretKeyRef,
}

/// A key of a Secret in the SessionCluster's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// The Secret's name.
    #[schemars(length(min = 1))]
    pub name: String,
    /// The key within it.
    #[serde(default = "default_url_key")]
    #[schemars(length(min = 1))]
    pub key: String,
}

fn default_url_key() -> String {
    "url".into()
}

/// TLS settings of the Ingress.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IngressTls {
    /// Secret holding the certificate and key.
    pub secret_name: String,
}

/// Ports of a pod the app must not use: replication, admin, RESP, and the node's own
/// demo app moved to loopback.
pub const APP_RESERVED_PORTS: [i32; 4] = [
    crate::resources::REPLICATION_PORT,
    crate::resources::ADMIN_PORT,
    crate::resources::RESP_PORT,
    18080,
];

/// The CEL rule on `spec.app.port` (the proxy takes 8080 when enabled).
pub const APP_PORT_RULE: &str =
    "!(self.port in [4000, 9090, 6379, 18080]) && (!has(self.proxy) || self.port != 8080)";

/// The user's app container, run next to a tribe-node sidecar (sessions over RESP).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(validation = kube::core::Rule::new(APP_PORT_RULE).message("app.port must not be 4000, 9090, 6379 or 18080 (the sidecar's), nor 8080 with the proxy"))]
#[serde(rename_all = "camelCase")]
pub struct AppSpec {
    /// The app image.
    #[schemars(length(min = 1))]
    pub image: String,
    /// The app's HTTP port.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Entrypoint override.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    /// Extra environment (`REDIS_URL=redis://127.0.0.1:6379` is always set).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub env: std::collections::BTreeMap<String, String>,
    /// Path of the app's readiness check (HTTP GET on its port).
    #[serde(default = "default_readiness_path")]
    pub readiness_path: String,
    /// Route traffic through the sidecar's read-your-writes proxy (for async mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<AppProxy>,
    /// Compute resources of the app container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "resources_schema")]
    pub resources: Option<ResourceRequirements>,
}

fn default_readiness_path() -> String {
    "/".into()
}

/// The sidecar's read-your-writes proxy: which cookie and store key hold a session.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppProxy {
    /// The app's session adapter.
    pub adapter: SessionAdapter,
    /// Session cookie name (default: the adapter's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie_name: Option<String>,
    /// Store key prefix (default: the adapter's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_prefix: Option<String>,
}

/// Session adapters the proxy knows (cookie -> store key).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum SessionAdapter {
    /// express-session + connect-redis: `connect.sid` -> `sess:<id>`.
    ConnectRedis,
    /// Flask-Session: `session` -> `session:<id>`.
    FlaskSession,
    /// PHP redis sessions: `PHPSESSID` -> `PHPREDIS_SESSION:<id>`.
    PhpRedis,
}

impl SessionAdapter {
    /// The node's adapter (`TRIBE_PROXY_ADAPTER`).
    pub fn adapter(self) -> tribe_api::SessionAdapter {
        match self {
            SessionAdapter::ConnectRedis => tribe_api::SessionAdapter::ConnectRedis,
            SessionAdapter::FlaskSession => tribe_api::SessionAdapter::FlaskSession,
            SessionAdapter::PhpRedis => tribe_api::SessionAdapter::PhpRedis,
        }
    }

    /// The value of `TRIBE_PROXY_ADAPTER`.
    pub fn as_str(self) -> &'static str {
        self.adapter().as_str()
    }
}

/// Observed state of a SessionCluster (never what was merely requested).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionClusterStatus {
    /// Pods of the Deployment (for the scale subresource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Pods that pass their readiness probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// Label selector of the pods, as a string (for the scale subresource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Cluster members as reported by the nodes (absent when unknown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members: Option<i32>,
    /// Sessions as reported by the nodes (absent when unknown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions: Option<i64>,
    /// The multicast group of this cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multicast_group: Option<String>,
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The node image the operator applies: `spec.image`, else its own node image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The image each node runs (its pod's), by image: one entry when rolled out, the old
    /// and the new one during a rollout.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node_images: Vec<NodeImage>,
    /// Ready, Progressing, Degraded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// The nodes that run one image.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeImage {
    /// The image.
    pub image: String,
    /// The pods that run it.
    pub nodes: Vec<String>,
}

impl SessionClusterSpec {
    /// The node image when `spec.image` is unset and none was resolved: [`DEFAULT_IMAGE`].
    pub fn node_image(&self) -> &str {
        self.image.as_deref().unwrap_or(DEFAULT_IMAGE)
    }
}

/// A status condition (the `metav1.Condition` shape).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Ready`, `Progressing` or `Degraded`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    #[schemars(extend("enum" = ["True", "False", "Unknown"]))]
    pub status: String,
    /// A CamelCase reason.
    pub reason: String,
    /// Human readable detail.
    #[serde(default)]
    pub message: String,
    /// When the status last changed (RFC 3339).
    #[schemars(extend("format" = "date-time"))]
    pub last_transition_time: String,
    /// The generation this condition describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// The value of a quantity (`1Gi` → 1073741824, `500M` → 5e8, `1e3` → 1000), or `None`
/// when it is not one. Decimal and binary suffixes and exponents; enough to compare and
/// range-check sizes, not an exact arbitrary-precision parser.
pub fn quantity_value(q: &str) -> Option<f64> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        e if e.starts_with(['e', 'E']) => 10f64.powi(e[1..].parse().ok()?),
        _ => return None,
    };
    Some(number * factor)
}

/// Schema of a quantity: an int-or-string matching [`QUANTITY_PATTERN`].
fn quantity_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "description": "Size of each node volume (a quantity, e.g. 1Gi).",
        "default": "1Gi",
        "x-kubernetes-int-or-string": true,
        "anyOf": [{ "type": "integer" }, { "type": "string" }],
        "pattern": QUANTITY_PATTERN
    })
}

/// Schema of `spec.resources`: `limits`/`requests` maps of int-or-string quantities.
fn resources_schema(_: &mut SchemaGenerator) -> Schema {
    let quantity = json_schema!({
        "x-kubernetes-int-or-string": true,
        "anyOf": [{ "type": "integer" }, { "type": "string" }],
        "pattern": QUANTITY_PATTERN
    });
    json_schema!({
        "description": "Compute resources of each node container (core/v1 ResourceRequirements).",
        "type": "object",
        "properties": {
            "limits": { "type": "object", "additionalProperties": quantity.clone() },
            "requests": { "type": "object", "additionalProperties": quantity }
        }
    })
}

/// Rewrites what kube's structural-schema pass leaves in a shape API servers and
/// validators like less: int-or-string nodes get the canonical typed
/// `anyOf: [{type: integer}, {type: string}]`, integral `minimum`/`maximum` floats
/// become integers, and free-form objects of the core/v1 types (an object without
/// properties, e.g. `managedFields[].fieldsV1`) keep their fields instead of pruning them.
fn tidy_schema(v: &mut serde_json::Value) {
    use serde_json::{json, Value};
    match v {
        Value::Object(map) => {
            if map.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
                map.insert(
                    "anyOf".into(),
                    json!([{ "type": "integer" }, { "type": "string" }]),
                );
            }
            let free_form = map.get("type") == Some(&Value::String("object".into()))
                && !map.contains_key("properties")
                && !map.contains_key("additionalProperties");
            if free_form {
                map.insert(
                    "x-kubernetes-preserve-unknown-fields".into(),
                    Value::Bool(true),
                );
            }
            for key in ["minimum", "maximum"] {
                if let Some(f) = map.get(key).and_then(Value::as_f64) {
                    if f.fract() == 0.0 {
                        map.insert(key.into(), json!(f as i64));
                    }
                }
            }
            map.values_mut().for_each(tidy_schema);
        }
        Value::Array(items) => items.iter_mut().for_each(tidy_schema),
        _ => {}
    }
}

/// The SessionCluster CustomResourceDefinition.
pub fn crd() -> CustomResourceDefinition {
    let mut value = serde_json::to_value(SessionCluster::crd()).expect("CRD serializes");
    tidy_schema(&mut value);
    serde_json::from_value(value).expect("tidied CRD deserializes")
}

/// The CRD as YAML (what `tribe-operator crd` prints and `crds/sessioncluster.yaml` holds).
pub fn crd_yaml() -> String {
    // Typed, `minimum`/`maximum` are floats again: tidy once more for the YAML.
    let mut value = serde_json::to_value(crd()).expect("CRD serializes");
    tidy_schema(&mut value);
    let yaml = serde_saphyr::to_string(&value).expect("CRD serializes to YAML");
    format!("# Generated by `tribe-operator crd`; do not edit.\n---\n{yaml}")
}

impl SessionCluster {
    /// The cluster name the nodes use to ignore other clusters: `<namespace>.<name>`.
    pub fn cluster_id(&self) -> String {
        use kube::ResourceExt;
        format!(
            "{}.{}",
            self.namespace().unwrap_or_default(),
            self.name_any()
        )
    }
}
