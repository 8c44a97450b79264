//! Status from observation: the Deployment's status and the nodes' `/cluster` reports
//! become `SessionClusterStatus`, with Ready/Progressing/Degraded conditions. Pure.

use crate::crd::{Condition, ReplicationMode, SessionCluster, SessionClusterStatus};
use tribe_api::ClusterView;
use crate::resources::{multicast_group, selector_string};
use k8s_openapi::api::apps::v1::Deployment;
use std::collections::BTreeSet;

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
    /// The Deployment as last returned by the API server (absent: not created yet).
    pub deployment: Option<&'a Deployment>,
    /// Reports of the ready nodes that answered `/cluster`.
    pub reports: &'a [ClusterView],
    /// Why this reconcile could not realise the spec, if it could not.
    pub failure: Option<Failure>,
    /// Current time, RFC 3339.
    pub now: String,
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

fn condition(
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

/// The status a SessionCluster should show for `obs`.
pub fn compute(sc: &SessionCluster, obs: &Observation<'_>) -> SessionClusterStatus {
    let generation = sc.metadata.generation;
    let desired = sc.spec.replicas.max(0);
    let dep_status = obs
        .deployment
        .and_then(|d| d.status.clone())
        .unwrap_or_default();
    let dep_generation = obs.deployment.and_then(|d| d.metadata.generation);
    let replicas = dep_status.replicas.unwrap_or(0);
    let ready = dep_status.ready_replicas.unwrap_or(0);
    let updated = dep_status.updated_replicas.unwrap_or(0);
    let available = dep_status.available_replicas.unwrap_or(0);
    let dep_observed = dep_status.observed_generation.is_some()
        && dep_status.observed_generation >= dep_generation;
    let selector = obs
        .deployment
        .and_then(|d| d.spec.selector.match_labels.as_ref())
        .map(selector_string);
    let (members, sessions) = aggregate(obs.reports, sc.spec.replication.mode);

    let rolled_out = obs.deployment.is_some()
        && dep_observed
        && updated >= desired
        && replicas == desired
        && available >= desired;
    let progressing = obs.failure.is_none() && !rolled_out;
    let ready_ok = obs.failure.is_none() && rolled_out && ready >= desired;

    let dep_failure = obs
        .deployment
        .and_then(|d| d.status.as_ref())
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| {
            cs.iter().find(|c| {
                let (t, st) = (c.type_.as_deref(), c.status.as_deref());
                (t == Some("ReplicaFailure") && st == Some("True"))
                    || (t == Some("Progressing")
                        && st == Some("False")
                        && c.reason.as_deref() == Some("ProgressDeadlineExceeded"))
            })
        });

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
    } else if obs.deployment.is_none() {
        condition(
            "Ready",
            false,
            "DeploymentMissing",
            "the Deployment does not exist yet".into(),
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
    } else if let Some(c) = dep_failure {
        condition(
            "Degraded",
            true,
            c.reason.as_deref().unwrap_or("DeploymentFailing"),
            c.message.clone().unwrap_or_default(),
            generation,
        )
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
        replicas: Some(if obs.deployment.is_some() {
            replicas
        } else {
            previous.replicas.unwrap_or(0)
        }),
        ready_replicas: Some(if obs.deployment.is_some() {
            ready
        } else {
            previous.ready_replicas.unwrap_or(0)
        }),
        selector: selector.or(previous.selector),
        members,
        sessions,
        multicast_group: Some(multicast_group(sc)),
        observed_generation: generation,
        conditions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{cluster, observed_deployment};

    fn obs<'a>(d: Option<&'a Deployment>, reports: &'a [ClusterView]) -> Observation<'a> {
        Observation {
            deployment: d,
            reports,
            failure: None,
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
}
