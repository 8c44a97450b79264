//! The SessionCluster controller: `reconcile` server-side applies every child, then
//! writes status from what it observes; `error_policy` backs off and counts failures.

use crate::crd::{Condition, Persistence, SessionCluster, SessionClusterSpec, DURATION_PATTERN};
use crate::metrics::Metrics;
use crate::ownership::{self, Conflict, Ownership};
use crate::policy::TemplatePolicy;
use crate::probe::Prober;
use crate::resources::{self, ADMIN_PORT, MANAGER};
use crate::status::{self, Failure, Observation, Workload};
use crate::{Error, Result};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ObjectReference, PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::NamespaceResourceScope;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashMap;
use std::fmt::Debug;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::{debug, info, warn};

/// Upper bound for one reconcile (API calls plus node polling).
pub const RECONCILE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the series and scrape targets of deleted SessionClusters are dropped.
const PRUNE_INTERVAL: Duration = Duration::from_secs(15);
/// Requeue interval of a healthy cluster (refreshes members and sessions).
const REQUEUE_READY: Duration = Duration::from_secs(30);
/// Requeue interval while a cluster is not ready yet.
const REQUEUE_PENDING: Duration = Duration::from_secs(5);
/// First retry delay after a failure; doubles up to [`MAX_BACKOFF`].
const BASE_BACKOFF: Duration = Duration::from_secs(5);
/// Longest retry delay after repeated failures.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Shared state of the reconciler.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// Publishes Events about SessionClusters.
    pub recorder: Recorder,
    /// Operator metrics.
    pub metrics: Metrics,
    /// Polls the nodes' `/cluster`.
    pub prober: Prober,
    /// Consecutive failures per SessionCluster (`ns/name`), for backoff. A std mutex:
    /// held for a map lookup only, never across an await.
    failures: Mutex<HashMap<String, u32>>,
    /// SessionClusters (`ns/name`) already warned that no PodMonitor kind is served.
    monitoring_warned: Mutex<std::collections::HashSet<String>>,
    /// The node image of SessionClusters without `spec.image` (`--node-image`).
    pub node_image: String,
    /// What `spec.template` may ask for (the operator's `--allow-*` flags).
    pub policy: TemplatePolicy,
}

impl Context {
    /// A context whose Events name `instance` as the reporting instance.
    pub fn new(client: Client, metrics: Metrics, instance: Option<String>) -> Self {
        let reporter = Reporter {
            controller: MANAGER.into(),
            instance,
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            prober: Prober::default(),
            failures: Mutex::default(),
            monitoring_warned: Mutex::default(),
            node_image: crate::crd::DEFAULT_IMAGE.to_string(),
            policy: TemplatePolicy::default(),
        }
    }

    /// The node image for SessionClusters that do not pin one.
    pub fn with_node_image(mut self, image: impl Into<String>) -> Self {
        self.node_image = image.into();
        self
    }

    /// This context with `policy` in place of the strict default.
    pub fn with_policy(mut self, policy: TemplatePolicy) -> Self {
        self.policy = policy;
        self
    }

    fn failure_count(&self, key: &str, bump: bool) -> u32 {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if bump {
            let n = map.entry(key.to_string()).or_insert(0);
            *n = n.saturating_add(1);
            *n
        } else {
            map.remove(key);
            0
        }
    }
}

/// Retry delay after `failures` consecutive failures: 5 s, 10 s, 20 s, … 5 min.
pub fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    BASE_BACKOFF.saturating_mul(1 << exp).min(MAX_BACKOFF)
}

/// Checks what the API server's schema should already have rejected; a spec that
/// slipped past (an older CRD, validation off) is refused here instead of crashing.
pub fn validate(spec: &SessionClusterSpec) -> Result<(), String> {
    if spec.replicas < 0 {
        return Err(format!("replicas must be >= 0, got {}", spec.replicas));
    }
    let backups = spec.replication.backups;
    if backups < 0 {
        return Err(format!("replication.backups must be >= 0, got {backups}"));
    }
    if !(backups < spec.replicas || (spec.replicas <= 1 && backups <= 1)) {
        return Err(format!(
            "replication.backups ({backups}) must be less than replicas ({})",
            spec.replicas
        ));
    }
    if !is_duration(&spec.session.timeout) {
        return Err(format!(
            "session.timeout {:?} does not match {DURATION_PATTERN}",
            spec.session.timeout
        ));
    }
    if spec.image.as_deref().is_some_and(|i| i.trim().is_empty()) {
        return Err("image must not be empty (leave it out for the operator's node image)".into());
    }
    if spec.session.cookie_name.is_empty() {
        return Err("session.cookieName must not be empty".into());
    }
    if let Some(t) = &spec.template {
        resources::check_template(t)?;
        if spec.resources.is_some() && t.resources.is_some() {
            return Err(
                "set the node's resources in spec.resources or in spec.template.resources, not both"
                    .into(),
            );
        }
    }
    if let Some(p) = &spec.persistence {
        validate_persistence(p)?;
    }
    Ok(())
}

/// The `spec.persistence` checks (the CEL rules' and the schema's, and what neither can
/// say on a 1.24 server: that the size is a positive quantity).
fn validate_persistence(p: &Persistence) -> Result<(), String> {
    if let Some(pg) = &p.postgres {
        if !p.enabled {
            return Err("persistence.postgres needs persistence.enabled: true".into());
        }
        if p.storage_class_name.is_some() {
            return Err("persistence.storageClassName is for node volumes; with persistence.postgres there are none".into());
        }
        if pg.secret_ref.name.is_empty() || pg.secret_ref.key.is_empty() {
            return Err("persistence.postgres.secretRef needs a Secret name and key".into());
        }
    }
    if p.storage_class_name.as_deref() == Some("") {
        return Err(
            "persistence.storageClassName must not be empty (leave it out for the default class)"
                .into(),
        );
    }
    if !crate::crd::quantity_value(&p.size.0).is_some_and(|v| v >= 1.0) {
        return Err(format!(
            "persistence.size {:?} is not a positive quantity such as 1Gi",
            p.size.0
        ));
    }
    if let Some(n) = p.max_active_sessions {
        if n < 1 {
            return Err(format!(
                "persistence.maxActiveSessions must be >= 1, got {n}"
            ));
        }
    }
    Ok(())
}

/// `^[0-9]+(ms|s|m|h)$` without a regex engine.
fn is_duration(s: &str) -> bool {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    digits > 0 && matches!(&s[digits..], "ms" | "s" | "m" | "h")
}

/// Reconciles one SessionCluster (bounded by [`RECONCILE_TIMEOUT`]).
pub async fn reconcile(sc: Arc<SessionCluster>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_started();
    let key = format!("{}/{}", sc.namespace().unwrap_or_default(), sc.name_any());
    // Every log line of the reconcile names its SessionCluster.
    let span = tracing::info_span!("reconcile", cluster = %key);
    let inner = tracing::Instrument::instrument(reconcile_inner(&sc, &ctx), span);
    let result = match tokio::time::timeout(RECONCILE_TIMEOUT, inner).await {
        Ok(r) => r,
        Err(_) => Err(Error::Timeout("reconcile")),
    };
    if result.is_ok() {
        ctx.failure_count(&key, false);
    }
    result
}

/// Requeues with exponential backoff and counts the failure by kind.
pub fn error_policy(sc: Arc<SessionCluster>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = format!("{}/{}", sc.namespace().unwrap_or_default(), sc.name_any());
    ctx.metrics.reconcile_failed(error);
    let n = ctx.failure_count(&key, true);
    let delay = backoff(n);
    warn!(cluster = %key, error = %error, failures = n, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// `s` cut to at most `max` bytes at a character boundary.
fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

/// Publishes an Event about `sc`; `related` names the child it concerns (Events about
/// different children are then distinct rather than one series). Failures are logged.
async fn publish(
    ctx: &Context,
    sc: &SessionCluster,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
    related: Option<ObjectReference>,
) {
    // The API server refuses Event notes over 1 kB.
    let note = truncate(note, 1000);
    let ev = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: related,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &sc.object_ref(&())).await {
        warn!(error = %e, reason, "could not publish event");
    }
}

/// Reports a child whose name is held by an object the operator does not own: a
/// Warning Event naming it, and the conflict for the `ChildrenOwned` condition.
async fn report_conflict(
    ctx: &Context,
    sc: &SessionCluster,
    conflicts: &mut Vec<Conflict>,
    kind: String,
    name: String,
    related: ObjectReference,
) {
    let conflict = Conflict { kind, name };
    warn!(child = %conflict, "exists and is not ours: left untouched");
    publish(
        ctx,
        sc,
        EventType::Warning,
        ownership::CONFLICT_REASON,
        "Apply",
        conflict.note(),
        Some(related),
    )
    .await;
    conflicts.push(conflict);
}

/// Server-side applies `obj` (field manager [`MANAGER`], forced) and publishes a
/// Created/Updated Event when that changed the object. An object of that name the
/// SessionCluster does not own is left untouched: reported in `conflicts`, `None`.
async fn apply<K>(
    ctx: &Context,
    sc: &SessionCluster,
    obj: &K,
    conflicts: &mut Vec<Conflict>,
) -> Result<Option<K>>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Serialize
        + DeserializeOwned
        + Debug,
{
    let ns = sc
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &ns);
    let name = obj.name_any();
    let kind = K::kind(&()).into_owned();
    let apply_err = |source| Error::Apply {
        kind: kind.clone(),
        name: name.clone(),
        source,
    };
    let before = api.get_opt(&name).await.map_err(apply_err)?;
    let uid = sc.uid().unwrap_or_default();
    if let (Ownership::Foreign, Some(existing)) = (
        ownership::ownership(before.as_ref().map(|b| b.meta()), &uid),
        &before,
    ) {
        let related = existing.object_ref(&());
        report_conflict(ctx, sc, conflicts, kind, name, related).await;
        return Ok(None);
    }
    let params = PatchParams::apply(MANAGER).force();
    let applied = api
        .patch(&name, &params, &Patch::Apply(obj))
        .await
        .map_err(apply_err)?;
    let (reason, verb) = match &before {
        None => ("Created", "created"),
        Some(before) if changed_by_us(before, &applied) => ("Updated", "updated"),
        Some(_) => {
            debug!(%kind, %name, "unchanged");
            return Ok(Some(applied));
        }
    };
    info!(%kind, %name, "{verb}");
    let note = format!("{reason} {kind} {name}");
    let related = Some(applied.object_ref(&()));
    publish(ctx, sc, EventType::Normal, reason, "Apply", note, related).await;
    Ok(Some(applied))
}

/// Whether our apply changed `before` into `after`: anything but the resourceVersion,
/// managedFields and status differs (a status write by another controller between our
/// read and our apply moves only those).
fn changed_by_us<K: Resource + Serialize>(before: &K, after: &K) -> bool {
    if before.meta().resource_version == after.meta().resource_version {
        return false;
    }
    let strip = |o: &K| {
        let mut v = serde_json::to_value(o).unwrap_or_default();
        if let Some(meta) = v.get_mut("metadata").and_then(|m| m.as_object_mut()) {
            meta.remove("resourceVersion");
            meta.remove("managedFields");
        }
        if let Some(obj) = v.as_object_mut() {
            obj.remove("status");
        }
        v
    };
    strip(before) != strip(after)
}

/// Creates the cluster key Secret if it does not exist. An existing one is left as it is,
/// except that a Secret of ours without the Redis-protocol password gets one added
/// (an update carrying the resourceVersion read) when the cluster runs `spec.app`.
/// Returns whether the Secret is the SessionCluster's (false: someone else's object has
/// its name, reported in `conflicts`).
async fn ensure_secret(
    ctx: &Context,
    sc: &SessionCluster,
    ns: &str,
    conflicts: &mut Vec<Conflict>,
) -> Result<bool> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let name = resources::secret_name(sc);
    let apply_err = |source| match source {
        kube::Error::Api(s) if s.code == 403 => Error::Forbidden(format!(
            "the operator has no access to Secret {name} in namespace {ns}: its Secret \
             access is granted per namespace (add {ns} to the chart value \
             rbac.secretNamespaces; operator/RBAC.md): {}",
            s.message
        )),
        source => Error::Apply {
            kind: "Secret".into(),
            name: name.clone(),
            source,
        },
    };
    if let Some(existing) = api.get_opt(&name).await.map_err(apply_err)? {
        let uid = sc.uid().unwrap_or_default();
        if ownership::ownership(Some(&existing.metadata), &uid) == Ownership::Foreign {
            let related = existing.object_ref(&());
            report_conflict(ctx, sc, conflicts, "Secret".into(), name.clone(), related).await;
            return Ok(false);
        }
        if resources::needs_password(sc, &existing) {
            let updated = resources::with_password(existing, &resources::random_key());
            let params = PostParams {
                field_manager: Some(MANAGER.into()),
                ..PostParams::default()
            };
            api.replace(&name, &params, &updated)
                .await
                .map_err(apply_err)?;
            info!(%name, "added the Redis-protocol password to the cluster key Secret");
        }
        return Ok(true);
    }
    let secret = resources::secret(sc, &resources::random_key(), &resources::random_key());
    match api
        .create(
            &PostParams {
                field_manager: Some(MANAGER.into()),
                ..PostParams::default()
            },
            &secret,
        )
        .await
    {
        Ok(created) => {
            info!(%name, "created cluster key");
            let note = format!("Created Secret {name}");
            publish(
                ctx,
                sc,
                EventType::Normal,
                "Created",
                "Create",
                note,
                Some(created.object_ref(&())),
            )
            .await;
            Ok(true)
        }
        // Created meanwhile (by another operator instance, or by someone else: the
        // next reconcile tells which).
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(apply_err(e)),
    }
}

/// Deletes the `K` called `name` if the SessionCluster controls it (one it does not own
/// is left alone), with a Deleted Event that says `why`. Absent: nothing to do.
async fn delete_owned<K>(
    ctx: &Context,
    sc: &SessionCluster,
    ns: &str,
    name: &str,
    why: &str,
) -> Result<()>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Debug,
{
    let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
    let kind = K::kind(&()).into_owned();
    let Some(existing) = api.get_opt(name).await? else {
        return Ok(());
    };
    let uid = sc.uid().unwrap_or_default();
    let ours = ownership::ownership(Some(existing.meta()), &uid) == Ownership::Ours;
    if !ours {
        return Ok(());
    }
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => {
            info!(%kind, %name, "deleted ({why})");
            let note = format!("Deleted {kind} {name} ({why})");
            publish(
                ctx,
                sc,
                EventType::Normal,
                "Deleted",
                "Delete",
                note,
                Some(existing.object_ref(&())),
            )
            .await;
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Applies (`spec.monitoring.podMonitor: true`) or deletes (`false`, if ours) the
/// cluster's PodMonitor. Without `spec.monitoring` nothing is asked of the API server.
/// When the Prometheus Operator's CRDs are not installed (API discovery finds no
/// `monitoring.coreos.com/v1` PodMonitor) the request is skipped with a warning Event:
/// the rest of the cluster is unaffected.
async fn reconcile_pod_monitor(
    ctx: &Context,
    sc: &SessionCluster,
    ns: &str,
    conflicts: &mut Vec<Conflict>,
) -> Result<()> {
    use kube::api::{DynamicObject, GroupVersionKind};
    let Some(monitoring) = &sc.spec.monitoring else {
        return Ok(());
    };
    let (group, version, kind) = resources::POD_MONITOR_GVK;
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let key = format!("{ns}/{}", sc.name_any());
    let ar = match kube::discovery::oneshot::pinned_kind(&ctx.client, &gvk).await {
        Ok((ar, _caps)) => {
            ctx.monitoring_warned
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key);
            ar
        }
        Err(e) => {
            let first = ctx
                .monitoring_warned
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key);
            if monitoring.pod_monitor && !first {
                debug!(error = %e, "no PodMonitor kind served (warned before)");
            } else if monitoring.pod_monitor {
                warn!(error = %e, "spec.monitoring.podMonitor is set but the API server serves no monitoring.coreos.com/v1 PodMonitor; skipped");
                publish(
                    ctx,
                    sc,
                    EventType::Warning,
                    "MonitoringUnavailable",
                    "Apply",
                    "spec.monitoring.podMonitor is set, but the Prometheus Operator's PodMonitor CRD (monitoring.coreos.com/v1) is not installed: no PodMonitor created".into(),
                    None,
                )
                .await;
            }
            return Ok(());
        }
    };
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), ns, &ar);
    let name = sc.name_any();
    let apply_err = |source| Error::Apply {
        kind: kind.into(),
        name: name.clone(),
        source,
    };
    if monitoring.pod_monitor {
        let before = api.get_opt(&name).await.map_err(apply_err)?;
        let uid = sc.uid().unwrap_or_default();
        if let (Ownership::Foreign, Some(existing)) = (
            ownership::ownership(before.as_ref().map(|b| &b.metadata), &uid),
            &before,
        ) {
            let related = existing.object_ref(&ar);
            report_conflict(ctx, sc, conflicts, kind.into(), name.clone(), related).await;
            return Ok(());
        }
        let obj = resources::pod_monitor(sc);
        let applied = api
            .patch(
                &name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&obj),
            )
            .await
            .map_err(apply_err)?;
        if before.is_none() {
            info!(%name, "created PodMonitor");
            let note = format!("Created PodMonitor {name}");
            let related = Some(applied.object_ref(&ar));
            publish(
                ctx,
                sc,
                EventType::Normal,
                "Created",
                "Apply",
                note,
                related,
            )
            .await;
        }
        return Ok(());
    }
    let Some(existing) = api.get_opt(&name).await.map_err(apply_err)? else {
        return Ok(());
    };
    let uid = sc.uid().unwrap_or_default();
    let ours = ownership::ownership(Some(existing.meta()), &uid) == Ownership::Ours;
    if ours {
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {
                let note = format!("Deleted PodMonitor {name} (monitoring.podMonitor is false)");
                let related = Some(existing.object_ref(&ar));
                publish(
                    ctx,
                    sc,
                    EventType::Normal,
                    "Deleted",
                    "Delete",
                    note,
                    related,
                )
                .await;
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(apply_err(e)),
        }
    }
    Ok(())
}

/// What applying the children found.
struct Applied {
    /// The node workload as the API server has it (`None`: not ours, or not applied).
    workload: Option<Workload>,
    /// Children whose names are held by objects the SessionCluster does not own.
    conflicts: Vec<Conflict>,
}

impl Applied {
    /// Whether the cluster key Secret is someone else's.
    fn foreign_secret(&self) -> bool {
        self.conflicts.iter().any(|c| c.kind == "Secret")
    }
}

/// Applies every child the SessionCluster owns; a name held by someone else's object
/// is reported and skipped, the other children are applied as usual. The node workload
/// waits while its key Secret is someone else's (its pods would mount it).
async fn apply_children(ctx: &Context, sc: &SessionCluster, ns: &str) -> Result<Applied> {
    let mut conflicts = Vec::new();
    let key_is_ours = ensure_secret(ctx, sc, ns, &mut conflicts).await?;
    apply(ctx, sc, &resources::headless_service(sc), &mut conflicts).await?;
    apply(ctx, sc, &resources::service(sc), &mut conflicts).await?;
    let workload = if key_is_ours {
        apply_workload(ctx, sc, ns, &mut conflicts).await?
    } else {
        None
    };
    apply(ctx, sc, &resources::pdb(sc), &mut conflicts).await?;
    apply(ctx, sc, &resources::network_policy(sc), &mut conflicts).await?;
    match resources::ingress(sc) {
        Some(ing) => {
            apply(ctx, sc, &ing, &mut conflicts).await?;
        }
        None => delete_owned::<Ingress>(ctx, sc, ns, &sc.name_any(), "ingress disabled").await?,
    }
    reconcile_pod_monitor(ctx, sc, ns, &mut conflicts).await?;
    Ok(Applied {
        workload,
        conflicts,
    })
}

/// Applies the node workload the spec asks for: a StatefulSet with persistent volumes,
/// else a Deployment. A switch between them (persistence turned on or off) is rolling:
/// the old kind, if ours, is deleted only once the new one is rolled out and ready,
/// so its pods have joined the cluster and received the sessions before the old pods
/// hand theirs over and leave.
async fn apply_workload(
    ctx: &Context,
    sc: &SessionCluster,
    ns: &str,
    conflicts: &mut Vec<Conflict>,
) -> Result<Option<Workload>> {
    let name = sc.name_any();
    let (workload, why) = match resources::statefulset(sc) {
        Some(set) => {
            // The API server refuses any change of a StatefulSet's claim template: say
            // which field and what to do instead of relaying its generic refusal.
            let api: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), ns);
            if let Some(existing) = api.get_opt(&name).await? {
                if let Some(msg) = resources::claim_template_change(&existing, &set) {
                    return Err(Error::InvalidSpec(msg));
                }
            }
            let Some(applied) = apply(ctx, sc, &set, conflicts).await? else {
                return Ok(None);
            };
            (
                Workload::from(&applied),
                "replaced by a StatefulSet: persistence with volumes",
            )
        }
        None => {
            let Some(applied) = apply(ctx, sc, &resources::deployment(sc), conflicts).await? else {
                return Ok(None);
            };
            (
                Workload::from(&applied),
                "replaced by a Deployment: no persistent volumes",
            )
        }
    };
    if status::rolled_out(&workload, sc.spec.replicas) && workload.ready >= sc.spec.replicas {
        if workload.kind == "StatefulSet" {
            delete_owned::<Deployment>(ctx, sc, ns, &name, why).await?;
        } else {
            delete_owned::<StatefulSet>(ctx, sc, ns, &name, why).await?;
        }
    }
    Ok(Some(workload))
}

/// The node workload of the kind the spec asks for, if it exists (best effort, for the
/// status of a reconcile that failed).
async fn existing_workload(ctx: &Context, sc: &SessionCluster, ns: &str) -> Option<Workload> {
    async fn get<K>(ctx: &Context, ns: &str, name: &str) -> Option<Workload>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
            + Clone
            + DeserializeOwned
            + Debug,
        for<'a> Workload: From<&'a K>,
    {
        let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
        let found = api.get_opt(name).await.ok().flatten();
        found.as_ref().map(Workload::from)
    }
    let name = sc.name_any();
    if sc.spec.wants_volumes() {
        get::<StatefulSet>(ctx, ns, &name).await
    } else {
        get::<Deployment>(ctx, ns, &name).await
    }
}

/// `sc` with `spec.image` filled in: its own, else the operator's node image (a pure
/// decision: the children are built from the result, the stored object keeps no image).
pub fn with_node_image(sc: &SessionCluster, node_image: &str) -> SessionCluster {
    let mut resolved = sc.clone();
    resolved
        .spec
        .image
        .get_or_insert_with(|| node_image.to_string());
    resolved
}

/// The cluster's pods: the admin addresses (`podIP:9090`) of the ready ones, and (pod,
/// node image) of each; records every running pod as a scrape target on the way.
async fn list_pods(
    ctx: &Context,
    sc: &SessionCluster,
    ns: &str,
) -> Result<(Vec<String>, Vec<(String, String)>)> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let selector = resources::selector_string(&resources::selector_labels(sc));
    let list = pods.list(&ListParams::default().labels(&selector)).await?;
    // The same listing feeds the scrape targets (`/sd/nodes`): every running pod, ready or not.
    ctx.metrics
        .targets
        .set(ns, &sc.name_any(), crate::sd::node_targets(&list.items));
    let images = list
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| {
            let spec = p.spec.as_ref()?;
            let node = spec.containers.iter().find(|c| c.name == "node")?;
            Some((p.name_any(), node.image.clone()?))
        })
        .collect();
    let addrs = list
        .items
        .iter()
        .filter_map(|p| {
            let status = p.status.as_ref()?;
            let ready = status
                .conditions
                .as_ref()?
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            let ip = status.pod_ip.as_ref()?;
            (ready && p.metadata.deletion_timestamp.is_none()).then(|| format!("{ip}:{ADMIN_PORT}"))
        })
        .collect();
    Ok((addrs, images))
}

/// Names of the cluster's volume claims that are not Bound (by the selector labels the
/// StatefulSet's claim template gives them).
async fn pending_claims(ctx: &Context, sc: &SessionCluster, ns: &str) -> Result<Vec<String>> {
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), ns);
    let selector = resources::selector_string(&resources::selector_labels(sc));
    let list = api.list(&ListParams::default().labels(&selector)).await?;
    Ok(list
        .items
        .iter()
        .filter(|c| c.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Bound"))
        .map(|c| c.name_any())
        .collect())
}

async fn reconcile_inner(sc: &SessionCluster, ctx: &Context) -> Result<Action> {
    let ns = sc
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let name = sc.name_any();
    if sc.uid().is_none() {
        return Err(Error::MissingField("metadata.uid"));
    }
    if sc.metadata.deletion_timestamp.is_some() {
        // Children go with it through their owner references.
        ctx.metrics.forget_cluster(&ns, &name);
        return Ok(Action::await_change());
    }
    debug!(cluster = %format!("{ns}/{name}"), "reconciling");
    // Without spec.image, the nodes run the operator's node image: every child and the
    // status are made from the resolved spec.
    let resolved;
    let sc = if sc.spec.image.is_none() {
        resolved = with_node_image(sc, &ctx.node_image);
        &resolved
    } else {
        sc
    };

    let checked = validate(&sc.spec).and_then(|()| crate::policy::check(&sc.spec, &ctx.policy));
    let outcome = match checked {
        Err(msg) => Err(Error::InvalidSpec(msg)),
        Ok(()) => apply_children(ctx, sc, &ns).await,
    };
    let (workload, failure) = match &outcome {
        Ok(a) => (a.workload.clone(), None),
        Err(e) => {
            let reason = match e {
                Error::InvalidSpec(_) => "InvalidSpec",
                Error::Forbidden(_) => "Forbidden",
                _ => "ApplyFailed",
            };
            // Best effort: show what exists while reporting the failure.
            (
                existing_workload(ctx, sc, &ns).await,
                Some(Failure {
                    reason: reason.into(),
                    message: e.to_string(),
                }),
            )
        }
    };

    let ready = workload.as_ref().map_or(0, |w| w.ready);
    let pending_claims = if sc.spec.wants_volumes() && ready < sc.spec.replicas {
        pending_claims(ctx, sc, &ns).await.unwrap_or_else(|e| {
            warn!(error = %e, "could not list the volume claims");
            Vec::new()
        })
    } else {
        Vec::new()
    };
    let (reports, pod_images) = if ready > 0 {
        match list_pods(ctx, sc, &ns).await {
            Ok((addrs, images)) => (ctx.prober.reports(&addrs).await, Some(images)),
            Err(e) => {
                warn!(error = %e, "could not list pods; members and sessions unknown");
                (Vec::new(), None)
            }
        }
    } else {
        (Vec::new(), None)
    };

    // Key rotation on request, and whether every pod authenticates with its peers
    // (never on a key Secret that is someone else's).
    let key_is_ours = outcome.as_ref().is_ok_and(|a| !a.foreign_secret());
    let (key_nodes, probed) = if key_is_ours {
        crate::rotation::probe(&ctx.client, &ctx.prober, sc, &ns).await
    } else {
        (Vec::new(), 0)
    };
    let (rotating, rotation_note) = if key_is_ours {
        crate::rotation::step(&ctx.client, sc, &ns, &key_nodes, probed)
            .await
            .unwrap_or_else(|e| {
                warn!(error = %e, "key rotation step failed; retrying");
                (Some(format!("last step failed: {e}")), None)
            })
    } else {
        (None, None)
    };
    if let Some(note) = rotation_note {
        publish(
            ctx,
            sc,
            EventType::Normal,
            "KeyRotation",
            "Rotate",
            note,
            None,
        )
        .await;
    }

    let now = jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .unwrap_or_else(|_| jiff::Timestamp::now());
    let obs = Observation {
        workload,
        reports: &reports,
        failure,
        pending_claims,
        pod_images,
        now: now.to_string(),
    };
    let mut new_status = status::compute(sc, &obs);
    let carry_time = |mut c: Condition| {
        c.last_transition_time = sc
            .status
            .as_ref()
            .and_then(|s| {
                s.conditions
                    .iter()
                    .find(|o| o.type_ == c.type_ && o.status == c.status)
            })
            .map(|o| o.last_transition_time.clone())
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| now.to_string());
        c
    };
    if let Some(c) = crate::rotation::condition(
        &key_nodes,
        rotating.as_deref(),
        &resources::secret_name(sc),
        sc.metadata.generation,
    ) {
        new_status.conditions.push(carry_time(c));
    }
    if let Some(c) = crate::skew::condition(&key_nodes, sc.metadata.generation) {
        new_status.conditions.push(carry_time(c));
    }
    if let Ok(applied) = &outcome {
        let c = ownership::condition(&applied.conflicts, sc.metadata.generation);
        new_status.conditions.push(carry_time(c));
    }
    ctx.metrics
        .observe_cluster(&ns, &name, sc.spec.replicas, &new_status);
    if sc.status.as_ref() != Some(&new_status) {
        let api: Api<SessionCluster> = Api::namespaced(ctx.client.clone(), &ns);
        let patch = serde_json::json!({
            "apiVersion": SessionCluster::api_version(&()),
            "kind": SessionCluster::kind(&()),
            "status": new_status,
        });
        let res = api
            .patch_status(
                &name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await;
        if let Err(e) = res {
            if outcome.is_ok() {
                return Err(e.into());
            }
            warn!(error = %e, "could not write status");
        }
    }

    match outcome {
        Ok(_) => {
            let all_ready = new_status
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            // After a scale or a rollout the workload settles before the nodes' views
            // do: look again soon while the members seen differ from the ready pods.
            let settled = new_status.members == new_status.ready_replicas
                && new_status.ready_replicas == new_status.replicas;
            Ok(Action::requeue(
                if all_ready && settled && rotating.is_none() {
                    REQUEUE_READY
                } else {
                    REQUEUE_PENDING
                },
            ))
        }
        Err(e) => {
            let reason = match e {
                Error::InvalidSpec(_) => "InvalidSpec",
                Error::Forbidden(_) => "Forbidden",
                _ => "ApplyFailed",
            };
            publish(
                ctx,
                sc,
                EventType::Warning,
                reason,
                "Reconcile",
                e.to_string(),
                None,
            )
            .await;
            Err(e)
        }
    }
}

/// Runs the controller until `shutdown` resolves. `namespace`: watch only that one.
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<String>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    fn api<K>(client: &Client, ns: &Option<String>) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
    {
        match ns {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
    let owned =
        watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={MANAGER}"));
    // No watch on Secrets: it would need list/watch on every Secret the role reaches
    // (RBAC cannot narrow a list by label). The key Secret is read by name in each
    // reconcile (at least every 30 s), so a deleted one is recreated then.
    let controller = Controller::new(
        api::<SessionCluster>(&client, &namespace),
        watcher::Config::default(),
    );
    // A deleted SessionCluster is never reconciled again: drop its series and scrape
    // targets once a listing no longer has it (names only: one cheap list per interval).
    let lister = api::<SessionCluster>(&client, &namespace);
    let metrics = ctx.metrics.clone();
    let pruner = tokio::spawn(async move {
        loop {
            tokio::time::sleep(PRUNE_INTERVAL).await;
            match lister.list_metadata(&ListParams::default()).await {
                Ok(list) => {
                    let existing = list
                        .items
                        .iter()
                        .map(|m| (m.namespace().unwrap_or_default(), m.name_any()))
                        .collect();
                    metrics.retain_clusters(&existing);
                }
                Err(e) => debug!(error = %e, "cannot list SessionClusters to prune metrics"),
            }
        }
    });
    controller
        .owns(api::<Deployment>(&client, &namespace), owned.clone())
        .owns(api::<StatefulSet>(&client, &namespace), owned.clone())
        .owns(api::<Service>(&client, &namespace), owned.clone())
        .owns(api::<Ingress>(&client, &namespace), owned.clone())
        .owns(
            api::<PodDisruptionBudget>(&client, &namespace),
            owned.clone(),
        )
        .owns(api::<NetworkPolicy>(&client, &namespace), owned)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => debug!(object = %obj.name, "reconciled"),
                Err(e) => debug!(error = %e, "reconcile error"),
            }
        })
        .await;
    pruner.abort();
}

#[cfg(test)]
mod tests;
