//! `spec.template`: what the node pods get besides the operator's own settings.
//!
//! The fields are the core/v1 types (schemas from k8s-openapi), so the API server
//! validates them as it would a pod. The container security context may only tighten
//! the operator's restricted default: the CEL rules on `securityContext` make
//! `kubectl apply` refuse `privileged`, privilege escalation, added capabilities,
//! running as root, a writable root filesystem and unconfined profiles; the rules on
//! `volumes` and `volumeMounts`, gitRepo volumes and Bidirectional propagation. What the
//! operator's flags decide (node-level volumes, `serviceAccountName`) it checks itself
//! (`crate::policy`).

use k8s_openapi::api::core::v1::{
    Affinity, EnvFromSource, EnvVar, LocalObjectReference, ResourceRequirements, SecurityContext,
    Toleration, TopologySpreadConstraint, Volume, VolumeMount,
};
use kube::KubeSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// CEL rule: no privileged container.
pub const NOT_PRIVILEGED_RULE: &str = "!has(self.privileged) || !self.privileged";
/// CEL rule: no privilege escalation.
pub const NO_ESCALATION_RULE: &str =
    "!has(self.allowPrivilegeEscalation) || !self.allowPrivilegeEscalation";
/// CEL rule: no added capabilities (every capability stays dropped).
pub const NO_CAPABILITIES_RULE: &str =
    "!has(self.capabilities) || !has(self.capabilities.add) || size(self.capabilities.add) == 0";
/// CEL rule: never as root.
pub const NON_ROOT_RULE: &str = "(!has(self.runAsNonRoot) || self.runAsNonRoot) && (!has(self.runAsUser) || self.runAsUser != 0)";
/// CEL rule: the root filesystem stays read-only.
pub const READ_ONLY_ROOT_RULE: &str =
    "!has(self.readOnlyRootFilesystem) || self.readOnlyRootFilesystem";
/// CEL rule: no unconfined seccomp or AppArmor profile, default `/proc` mount only.
pub const CONFINED_RULE: &str = "(!has(self.seccompProfile) || self.seccompProfile.type != 'Unconfined') && (!has(self.appArmorProfile) || self.appArmorProfile.type != 'Unconfined') && (!has(self.procMount) || self.procMount == 'Default')";
/// CEL rule: SELinux options only as Pod Security "baseline" allows them.
pub const SELINUX_RULE: &str = "!has(self.seLinuxOptions) || (!has(self.seLinuxOptions.user) && !has(self.seLinuxOptions.role) && (!has(self.seLinuxOptions.type) || self.seLinuxOptions.type in ['', 'container_t', 'container_init_t', 'container_kvm_t']))";
/// CEL rule: no Windows host process.
pub const NO_HOST_PROCESS_RULE: &str = "!has(self.windowsOptions) || !has(self.windowsOptions.hostProcess) || !self.windowsOptions.hostProcess";

/// The pod template of a SessionCluster's nodes (`spec.template`). Everything is
/// optional; what the operator sets itself (its `TRIBE_*` env, its labels, the key
/// volume, the restricted security context) wins over what is given here.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodTemplate {
    /// Labels and annotations added to every node pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<TemplateMetadata>,
    /// Environment of every container (the node and, with `spec.app`, the app). The
    /// operator's own variables (`TRIBE_*` it sets, `REDIS_URL`) win over these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<EnvVar>>,
    /// Environment from ConfigMaps and Secrets for every container (`env` wins over it,
    /// as in any pod).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_from: Option<Vec<EnvFromSource>>,
    /// Extra volumes of the pod (`cluster-key` and `tmp` are the operator's). The
    /// sources Pod Security "restricted" allows (configMap, csi, downwardAPI, emptyDir,
    /// ephemeral, persistentVolumeClaim, projected, secret); node-level ones (hostPath,
    /// nfs, ...) only when the operator runs with `--allow-node-level-pod-fields`;
    /// gitRepo never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(
        validation = kube::core::Rule::new(crate::policy::NO_GIT_REPO_RULE).message("template.volumes may not use gitRepo (deprecated: the kubelet runs git on the node)")
    )]
    pub volumes: Option<Vec<Volume>>,
    /// Mounts of `volumes` in every container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(
        validation = kube::core::Rule::new(crate::policy::NO_BIDIRECTIONAL_RULE).message("template.volumeMounts may not use Bidirectional mount propagation (it needs a privileged container)")
    )]
    pub volume_mounts: Option<Vec<VolumeMount>>,
    /// Secrets to pull the images with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_secrets: Option<Vec<LocalObjectReference>>,
    /// ServiceAccount the pods run as (default: the namespace's `default`); only when
    /// the operator runs with `--allow-template-service-account`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// Compute resources of the node container (or use `spec.resources`, not both).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::resources_schema")]
    pub resources: Option<ResourceRequirements>,
    /// Node labels the pods must be scheduled on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Tolerations of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    /// Affinity and anti-affinity of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// How the pods spread. Unset: across zones and hosts, best effort
    /// (`ScheduleAnyway`); an empty list: no constraint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology_spread_constraints: Option<Vec<TopologySpreadConstraint>>,
    /// PriorityClass of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// Container security context, merged over the operator's restricted one: it may
    /// add settings (e.g. `runAsUser`) but never loosen them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(
        validation = kube::core::Rule::new(NOT_PRIVILEGED_RULE).message("template.securityContext may not set privileged"),
        validation = kube::core::Rule::new(NO_ESCALATION_RULE).message("template.securityContext may not allow privilege escalation"),
        validation = kube::core::Rule::new(NO_CAPABILITIES_RULE).message("template.securityContext may not add capabilities"),
        validation = kube::core::Rule::new(NON_ROOT_RULE).message("template.securityContext may not run as root (runAsNonRoot false or runAsUser 0)"),
        validation = kube::core::Rule::new(READ_ONLY_ROOT_RULE).message("template.securityContext may not make the root filesystem writable (mount a volume instead)"),
        validation = kube::core::Rule::new(CONFINED_RULE).message("template.securityContext may not set an Unconfined profile or a non-default procMount"),
        validation = kube::core::Rule::new(SELINUX_RULE).message("template.securityContext.seLinuxOptions may only set a container type"),
        validation = kube::core::Rule::new(NO_HOST_PROCESS_RULE).message("template.securityContext may not run a Windows host process")
    )]
    pub security_context: Option<SecurityContext>,
}

/// Labels and annotations of the node pods.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateMetadata {
    /// Pod labels (the operator's `app.kubernetes.io/*` labels win).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Pod annotations (the operator's scrape annotations win).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}
