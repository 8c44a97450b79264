//! Status from observation: the node workload's status (the Deployment's, or the
//! StatefulSet's with persistent volumes) and the nodes' `/cluster` reports become
//! `SessionClusterStatus`, with Ready/Progressing/Degraded conditions. Pure.

use crate::crd::{Condition, NodeImage, ReplicationMode, SessionCluster, SessionClusterStatus};
use crate::resources::{multicast_group, selector_string};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use std::collections::{BTreeMap, BTreeSet};
use tribe_api::ClusterView;

/// What the status needs of the node workload, whichever kind it is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Workload {
    /// `Deployment` or `StatefulSet`.
    pub kind: &'static str,
    /// Its metadata.generation.
    pub generation: Option<i64>,
    /// The generation its controller has seen.
    pub observed_generation: Option<i64>,
    /// Pods it has.
    pub replicas: i32,
    /// Pods that are ready.
    pub ready: i32,
    /// Pods of the current template.
    pub updated: i32,
    /// Pods available (ready for minReadySeconds).
    pub available: i32,
    /// Its selector's matchLabels.
    pub selector: Option<BTreeMap<String, String>>,
    /// A failure its controller reports: (reason, message).
    pub failure: Option<(String, String)>,
}

impl From<&Deployment> for Workload {
    fn from(d: &Deployment) -> Self {
        let st = d.status.clone().unwrap_or_default();
        let failure = st.conditions.as_ref().and_then(|cs| {
            cs.iter()
                .find(|c| {
                    let (t, s) = (c.type_.as_deref(), c.status.as_deref());
                    (t == Some("ReplicaFailure") && s == Some("True"))
                        || (t == Some("Progressing")
                            && s == Some("False")
                            && c.reason.as_deref() == Some("ProgressDeadlineExceeded"))
                })
                .map(|c| {
                    (
                        c.reason
                            .clone()
                            .unwrap_or_else(|| "DeploymentFailing".into()),
                        c.message.clone().unwrap_or_default(),
                    )
                })
        });
        Workload {
            kind: "Deployment",
            generation: d.metadata.generation,
            observed_generation: st.observed_generation,
            replicas: st.replicas.unwrap_or(0),
            ready: st.ready_replicas.unwrap_or(0),
            updated: st.updated_replicas.unwrap_or(0),
            available: st.available_replicas.unwrap_or(0),
            selector: d.spec.selector.match_labels.clone(),
            failure,
        }
    }
}

impl From<&StatefulSet> for Workload {
    fn from(s: &StatefulSet) -> Self {
        let st = s.status.clone().unwrap_or_default();
        let ready = st.ready_replicas.unwrap_or(0);
        // A rollout is done when every pod is at the update revision; `updatedReplicas`
        // counts those while one is under way, and may be absent once it is done.
        let updated = if st.current_revision.is_some() && st.current_revision == st.update_revision
        {
            st.replicas
        } else {
            st.updated_replicas.unwrap_or(0)
        };
        Workload {
            kind: "StatefulSet",
            generation: s.metadata.generation,
            observed_generation: st.observed_generation,
            replicas: st.replicas,
            ready,
            updated,
            // Servers before 1.22 do not report it; ready is then the best there is.
            available: st.available_replicas.unwrap_or(ready),
            selector: s.spec.selector.match_labels.clone(),
            failure: None,
        }
    }
}

/// What went wrong realising the spec, for the Degraded condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// CamelCase reason, e.g. `ApplyFailed`.
    pub reason: String,
    /// Human readable detail.
    pub message: String,
}

/// Everything the status is computed from.
pub struct Observation<'a> {
    /// The node workload as last returned by the API server (absent: not created yet).
    pub workload: Option<Workload>,
    /// Reports of the ready nodes that answered `/cluster`.
    pub reports: &'a [ClusterView],
    /// Why this reconcile could not realise the spec, if it could not.
    pub failure: Option<Failure>,
    /// The node volume claims that are not Bound yet (persistence with volumes).
    pub pending_claims: Vec<String>,
    /// (pod, image of its node container) of the cluster's pods, when they were listed.
    pub pod_images: Option<Vec<(String, String)>>,
    /// Current time, RFC 3339.
    pub now: String,
}

/// The pods by the image they run, images and pods in name order.
pub fn node_images(pod_images: &[(String, String)]) -> Vec<NodeImage> {
    let mut by_image: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (pod, image) in pod_images {
        by_image.entry(image).or_default().push(pod.clone());
    }
    by_image
        .into_iter()
        .map(|(image, mut nodes)| {
            nodes.sort();
            NodeImage {
                image: image.to_string(),
                nodes,
            }
        })
        .collect()
}

/// Members and sessions from the nodes' reports; `None` when no node answered.
pub fn aggregate(reports: &[ClusterView], mode: ReplicationMode) -> (Option<i32>, Option<i64>) {
    if reports.is_empty() {
        return (None, None);
    }
    let members: BTreeSet<&str> = reports.iter().flat_map(ClusterView::member_ids).collect();
    let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    let sessions = match mode {
        // Every node holds every session: the most complete view.
        ReplicationMode::Delta => reports.iter().map(|r| count(r.sessions)).max().unwrap_or(0),
        // Each session has one primary.
        ReplicationMode::Backup => reports.iter().map(|r| count(r.primary)).sum(),
    };
    (
        Some(i32::try_from(members.len()).unwrap_or(i32::MAX)),
        Some(sessions),
    )
}

/// A condition of `type_`, `True` when `ok`, with no transition time yet.
pub(crate) fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
) -> Condition {
    Condition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message,
        last_transition_time: String::new(),
        observed_generation: generation,
    }
}

/// Keeps `lastTransitionTime` of a condition whose status did not change.
fn carry_transition_times(new: &mut [Condition], old: &[Condition], now: &str) {
    for c in new {
        c.last_transition_time = old
            .iter()
            .find(|o| {
                o.type_ == c.type_ && o.status == c.status && !o.last_transition_time.is_empty()
            })
            .map(|o| o.last_transition_time.clone())
            .unwrap_or_else(|| now.to_string());
    }
}

/// Whether the workload's controller has realised its current spec: `desired` pods, all
/// of the current template and available.
pub fn rolled_out(w: &Workload, desired: i32) -> bool {
    let desired = desired.max(0);
    w.observed_generation.is_some()
        && w.observed_generation >= w.generation
        && w.updated >= desired
        && w.replicas == desired
        && w.available >= desired
}

/// The status a SessionCluster should show for `obs`.
pub fn compute(sc: &SessionCluster, obs: &Observation<'_>) -> SessionClusterStatus {
    let generation = sc.metadata.generation;
    let desired = sc.spec.replicas.max(0);
    let w = obs.workload.clone().unwrap_or_default();
    let (replicas, ready, updated, available) = (w.replicas, w.ready, w.updated, w.available);
    let selector = w.selector.as_ref().map(selector_string);
    let (members, sessions) = aggregate(obs.reports, sc.spec.replication.mode);

    let rolled_out = obs.workload.is_some() && rolled_out(&w, desired);
    let progressing = obs.failure.is_none() && !rolled_out;
    let ready_ok = obs.failure.is_none() && rolled_out && ready >= desired;

    let ready_cond = if let Some(f) = &obs.failure {
        condition("Ready", false, &f.reason, f.message.clone(), generation)
    } else if ready_ok {
        let msg = match members {
            Some(m) => format!("{ready}/{desired} nodes ready, {m} members"),
            None => format!("{ready}/{desired} nodes ready"),
        };
        let reason = if desired == 0 {
            "ScaledToZero"
        } else {
            "AllNodesReady"
        };
        condition("Ready", true, reason, msg, generation)
    } else if obs.workload.is_none() {
        condition(
            "Ready",
            false,
            "DeploymentMissing",
            "the node workload (Deployment or StatefulSet) does not exist yet".into(),
            generation,
        )
    } else if !obs.pending_claims.is_empty() {
        // Pods wait for their volumes: say which, as the pods' own events would.
        condition(
            "Ready",
            false,
            "ClaimsPending",
            format!(
                "{ready}/{desired} nodes ready; volume claims not bound yet: {} (check persistence.storageClassName and the provisioner)",
                obs.pending_claims.join(", ")
            ),
            generation,
        )
    } else {
        condition(
            "Ready",
            false,
            "NodesNotReady",
            format!("{ready}/{desired} nodes ready"),
            generation,
        )
    };

    let progressing_cond = if progressing {
        condition(
            "Progressing",
            true,
            "RollingOut",
            format!("{updated}/{desired} nodes updated, {available} available"),
            generation,
        )
    } else if obs.failure.is_some() {
        condition(
            "Progressing",
            false,
            "Blocked",
            "the spec could not be applied".into(),
            generation,
        )
    } else {
        condition(
            "Progressing",
            false,
            "RolloutComplete",
            format!("{desired} nodes up to date"),
            generation,
        )
    };

    let degraded_cond = if let Some(f) = &obs.failure {
        condition("Degraded", true, &f.reason, f.message.clone(), generation)
    } else if let Some((reason, message)) = &w.failure {
        condition("Degraded", true, reason, message.clone(), generation)
    } else {
        condition("Degraded", false, "AsExpected", String::new(), generation)
    };

    let mut conditions = vec![ready_cond, progressing_cond, degraded_cond];
    let old = sc
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    carry_transition_times(&mut conditions, old, &obs.now);

    let previous = sc.status.clone().unwrap_or_default();
    SessionClusterStatus {
        replicas: Some(if obs.workload.is_some() {
            replicas
        } else {
            previous.replicas.unwrap_or(0)
        }),
        ready_replicas: Some(if obs.workload.is_some() {
            ready
        } else {
            previous.ready_replicas.unwrap_or(0)
        }),
        selector: selector.or(previous.selector),
        members,
        sessions,
        multicast_group: Some(multicast_group(sc)),
        observed_generation: generation,
        image: Some(sc.spec.node_image().to_string()),
        // Pods not listed this time (none ready): what was last seen.
        node_images: match &obs.pod_images {
            Some(p) => node_images(p),
            None => previous.node_images,
        },
        conditions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{cluster, observed_deployment};

    fn obs<'a>(d: Option<&Deployment>, reports: &'a [ClusterView]) -> Observation<'a> {
        Observation {
            workload: d.map(Workload::from),
            reports,
            failure: None,
            pending_claims: Vec::new(),
            pod_images: None,
            now: "2026-01-01T00:00:00Z".into(),
        }
    }

    fn cond<'a>(s: &'a SessionClusterStatus, t: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == t).unwrap()
    }

    fn report(node: &str, members: &[&str], sessions: usize) -> ClusterView {
        ClusterView {
            node: node.into(),
            members: members
                .iter()
                .filter(|m| **m != node)
                .map(|m| tribe_api::MemberView {
                    node: m.to_string(),
                    addr: String::new(),
                    state: tribe_api::MemberState::Alive,
                    incarnation: 1,
                })
                .collect(),
            sessions,
            ..ClusterView::default()
        }
    }

    #[test]
    fn all_ready() {
        let sc = cluster("shop", "web");
        let d = observed_deployment(&sc, 3, 3);
        let reports = [
            report("a", &["a", "b", "c"], 10),
            report("b", &["a", "b", "c"], 12),
        ];
        let s = compute(&sc, &obs(Some(&d), &reports));
        assert_eq!(s.replicas, Some(3));
        assert_eq!(s.ready_replicas, Some(3));
        assert_eq!(s.members, Some(3));
        assert_eq!(s.sessions, Some(12));
        assert_eq!(s.observed_generation, Some(1));
        assert_eq!(
            s.selector.as_deref(),
            Some("app.kubernetes.io/instance=shop,app.kubernetes.io/name=tribe-node")
        );
        assert!(s.multicast_group.clone().unwrap().starts_with("239."));
        assert_eq!(cond(&s, "Ready").status, "True");
        assert_eq!(cond(&s, "Progressing").status, "False");
        assert_eq!(cond(&s, "Degraded").status, "False");
    }

    #[test]
    fn not_ready_while_rolling_out() {
        let sc = cluster("shop", "web");
        let d = observed_deployment(&sc, 3, 1);
        let s = compute(&sc, &obs(Some(&d), &[]));
        assert_eq!(s.ready_replicas, Some(1));
        assert_eq!(s.members, None, "unknown without reports");
        assert_eq!(s.sessions, None);
        assert_eq!(cond(&s, "Ready").status, "False");
        assert_eq!(cond(&s, "Ready").reason, "NodesNotReady");
        assert_eq!(cond(&s, "Progressing").status, "True");
    }

    #[test]
    fn pending_claims_are_named_while_not_ready() {
        let sc = cluster("shop", "web");
        let d = observed_deployment(&sc, 3, 1);
        let mut o = obs(Some(&d), &[]);
        o.pending_claims = vec!["data-shop-2".into()];
        let s = compute(&sc, &o);
        let ready = cond(&s, "Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "ClaimsPending")
        );
        assert!(ready.message.contains("data-shop-2"), "{}", ready.message);
        assert_eq!(
            cond(&s, "Degraded").status,
            "False",
            "pending is not a failure"
        );
    }

    #[test]
    fn statefulset_rollout() {
        use k8s_openapi::api::apps::v1::StatefulSetStatus;
        let mut set = StatefulSet::default();
        set.metadata.generation = Some(2);
        set.status = Some(StatefulSetStatus {
            observed_generation: Some(2),
            replicas: 3,
            ready_replicas: Some(3),
            available_replicas: Some(3),
            current_revision: Some("r1".into()),
            update_revision: Some("r2".into()),
            updated_replicas: Some(1),
            ..StatefulSetStatus::default()
        });
        let w = Workload::from(&set);
        assert_eq!((w.kind, w.updated), ("StatefulSet", 1));
        assert!(!rolled_out(&w, 3), "two pods still at the old revision");
        let st = set.status.as_mut().unwrap();
        st.current_revision = Some("r2".into());
        st.updated_replicas = None;
        let w = Workload::from(&set);
        assert!(rolled_out(&w, 3));
        assert!(!rolled_out(&w, 4));
    }

    #[test]
    fn failure_is_degraded() {
        let sc = cluster("shop", "web");
        let mut o = obs(None, &[]);
        o.failure = Some(Failure {
            reason: "ApplyFailed".into(),
            message: "nope".into(),
        });
        let s = compute(&sc, &o);
        assert_eq!(cond(&s, "Degraded").status, "True");
        assert_eq!(cond(&s, "Degraded").reason, "ApplyFailed");
        assert_eq!(cond(&s, "Ready").status, "False");
    }

    #[test]
    fn transition_time_kept_when_status_unchanged() {
        let mut sc = cluster("shop", "web");
        let d = observed_deployment(&sc, 3, 3);
        let first = compute(&sc, &obs(Some(&d), &[]));
        sc.status = Some(first.clone());
        let mut later = obs(Some(&d), &[]);
        later.now = "2026-01-02T00:00:00Z".into();
        let second = compute(&sc, &later);
        assert_eq!(first, second, "a second reconcile changes nothing");
    }

    #[test]
    fn backup_mode_counts_each_session_once() {
        let mut reports = [report("a", &["a", "b"], 10), report("b", &["a", "b"], 10)];
        assert_eq!(
            aggregate(&reports, ReplicationMode::Delta),
            (Some(2), Some(10))
        );
        assert_eq!(aggregate(&[], ReplicationMode::Delta), (None, None));
        reports[0].primary = 4;
        reports[1].primary = 7;
        assert_eq!(
            aggregate(&reports, ReplicationMode::Backup),
            (Some(2), Some(11)),
            "sum of primaries"
        );
    }

    #[test]
    fn status_records_the_applied_image_and_the_image_each_node_runs() {
        let mut sc = cluster("shop", "web");
        sc.spec.image = Some("reg.example/tribe-node:0.2.0".into());
        let d = observed_deployment(&sc, 3, 3);
        let mut o = obs(Some(&d), &[]);
        let pod = |p: &str, i: &str| (p.to_string(), i.to_string());
        o.pod_images = Some(vec![
            pod("shop-b", "reg.example/tribe-node:0.2.0"),
            pod("shop-c", "reg.example/tribe-node:0.1.0"),
            pod("shop-a", "reg.example/tribe-node:0.2.0"),
        ]);
        let st = compute(&sc, &o);
        assert_eq!(st.image.as_deref(), Some("reg.example/tribe-node:0.2.0"));
        let images: Vec<(&str, Vec<&str>)> = st
            .node_images
            .iter()
            .map(|n| {
                (
                    n.image.as_str(),
                    n.nodes.iter().map(String::as_str).collect(),
                )
            })
            .collect();
        assert_eq!(
            images,
            [
                ("reg.example/tribe-node:0.1.0", vec!["shop-c"]),
                ("reg.example/tribe-node:0.2.0", vec!["shop-a", "shop-b"]),
            ],
            "mid-rollout: the old and the new image, each with its pods"
        );
        // A reconcile that listed no pod keeps what was seen.
        sc.status = Some(st.clone());
        let again = compute(&sc, &obs(Some(&d), &[]));
        assert_eq!(again.node_images, st.node_images);
        // Without spec.image (and unresolved), the built-in default.
        sc.spec.image = None;
        assert_eq!(
            compute(&sc, &o).image.as_deref(),
            Some(crate::crd::DEFAULT_IMAGE)
        );
    }
}
