//! The operator never adopts what it did not create.
//!
//! Before writing a child, the controller looks at what already has the child's name:
//! nothing (create it), an object with an ownerReference to this SessionCluster
//! (update it), or anything else — a user's Service, another operator's Secret, a
//! leftover of a deleted SessionCluster of the same name. That last one is left
//! untouched (never patched, never deleted): it is reported in the `ChildrenOwned`
//! condition and a Warning Event, and the other children are reconciled as usual.
//! Pure: the decision and the condition; the controller does the I/O.

use crate::crd::{Condition, SessionCluster};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;
use std::fmt;

/// Type of the condition reporting children the operator does not own.
pub const CONDITION: &str = "ChildrenOwned";
/// Reason of the condition (and the Event) when a child's name is taken.
pub const CONFLICT_REASON: &str = "Conflict";

/// Who holds a child's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ownership {
    /// Nothing has the name: the operator creates its child.
    Absent,
    /// The object has an ownerReference to this SessionCluster: the operator updates it.
    Ours,
    /// Someone else's object: left alone.
    Foreign,
}

/// Who holds the name, from the existing object's metadata (`None`: nothing exists) and
/// the SessionCluster's uid. Only a *controller* reference (`controller: true`) of kind
/// `SessionCluster` in group `tribe.rs` with that exact uid makes an object ours: a
/// leftover child of a deleted SessionCluster of the same name is foreign until the
/// garbage collector removes it, and so is an object that merely lists the
/// SessionCluster as one non-controlling owner among others (anyone who can edit an
/// object can add such a reference: it must not hand the object to the operator).
pub fn ownership(existing: Option<&ObjectMeta>, owner_uid: &str) -> Ownership {
    let Some(meta) = existing else {
        return Ownership::Absent;
    };
    let ours = !owner_uid.is_empty()
        && meta
            .owner_references
            .iter()
            .flatten()
            .any(|o| controls(o, owner_uid));
    if ours {
        Ownership::Ours
    } else {
        Ownership::Foreign
    }
}

/// Whether `o` is the controller reference of the SessionCluster with uid `uid`.
fn controls(o: &OwnerReference, uid: &str) -> bool {
    let group = o.api_version.split_once('/').map_or("", |(g, _)| g);
    o.controller == Some(true)
        && o.uid == uid
        && o.kind == SessionCluster::kind(&())
        && group == SessionCluster::group(&())
}

/// A child whose name is held by an object the operator does not own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// Kind of the object, e.g. `Service`.
    pub kind: String,
    /// Its name.
    pub name: String,
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind, self.name)
    }
}

impl Conflict {
    /// The Event note about this conflict.
    pub fn note(&self) -> String {
        format!(
            "{} {} exists and is not owned by this SessionCluster: left untouched; delete or rename it and the operator creates its own",
            self.kind, self.name
        )
    }
}

/// The `ChildrenOwned` condition: True when every child is the operator's, False with
/// reason `Conflict` naming each `Kind/name` otherwise. `lastTransitionTime` is left
/// empty for the caller to fill.
pub fn condition(conflicts: &[Conflict], generation: Option<i64>) -> Condition {
    let (ok, reason, message) = if conflicts.is_empty() {
        (
            true,
            "AllOwned",
            "every child is owned by this SessionCluster".to_string(),
        )
    } else {
        let names: Vec<String> = conflicts.iter().map(Conflict::to_string).collect();
        (
            false,
            CONFLICT_REASON,
            format!(
                "not owned by this SessionCluster, left untouched: {}",
                names.join(", ")
            ),
        )
    };
    crate::status::condition(CONDITION, ok, reason, message, generation)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(owners: &[&str]) -> ObjectMeta {
        ObjectMeta {
            name: Some("shop".into()),
            owner_references: (!owners.is_empty()).then(|| {
                owners
                    .iter()
                    .map(|uid| OwnerReference {
                        api_version: "tribe.rs/v1alpha1".into(),
                        kind: "SessionCluster".into(),
                        name: "shop".into(),
                        uid: (*uid).into(),
                        controller: Some(true),
                        block_owner_deletion: Some(true),
                    })
                    .collect()
            }),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn absent_ours_and_foreign() {
        assert_eq!(ownership(None, "u1"), Ownership::Absent);
        assert_eq!(ownership(Some(&meta(&["u1"])), "u1"), Ownership::Ours);
        assert_eq!(
            ownership(Some(&meta(&["other", "u1"])), "u1"),
            Ownership::Ours
        );
        // No owner at all: a user's object.
        assert_eq!(ownership(Some(&meta(&[])), "u1"), Ownership::Foreign);
        // A leftover of a deleted SessionCluster with the same name (another uid).
        assert_eq!(ownership(Some(&meta(&["u0"])), "u1"), Ownership::Foreign);
        // Without a uid nothing can be ours.
        assert_eq!(ownership(Some(&meta(&[""])), ""), Ownership::Foreign);
    }

    /// The uid alone is not enough: the reference must be the controller reference of a
    /// `tribe.rs` SessionCluster (what the operator itself writes, `owner_reference`).
    #[test]
    fn only_a_controller_reference_of_a_session_cluster_counts() {
        let with = |f: &dyn Fn(&mut OwnerReference)| {
            let mut m = meta(&["u1"]);
            f(&mut m.owner_references.as_mut().unwrap()[0]);
            ownership(Some(&m), "u1")
        };
        assert_eq!(with(&|_| {}), Ownership::Ours);
        // Another API version of the same group is still ours.
        assert_eq!(
            with(&|o| o.api_version = "tribe.rs/v1".into()),
            Ownership::Ours
        );
        assert_eq!(with(&|o| o.controller = None), Ownership::Foreign);
        assert_eq!(with(&|o| o.controller = Some(false)), Ownership::Foreign);
        assert_eq!(with(&|o| o.kind = "Deployment".into()), Ownership::Foreign);
        assert_eq!(
            with(&|o| o.api_version = "example.com/v1alpha1".into()),
            Ownership::Foreign
        );
        assert_eq!(with(&|o| o.api_version = "v1".into()), Ownership::Foreign);
        // What the operator writes on its children is recognised as ours.
        let mut sc = crate::fixtures::cluster("shop", "web");
        sc.metadata.uid = Some("u1".into());
        let child = crate::resources::child_meta(&sc, "shop".into());
        assert_eq!(ownership(Some(&child), "u1"), Ownership::Ours);
    }

    #[test]
    fn condition_names_every_conflict() {
        let ok = condition(&[], Some(3));
        assert_eq!(
            (ok.type_.as_str(), ok.status.as_str(), ok.reason.as_str()),
            ("ChildrenOwned", "True", "AllOwned")
        );
        assert_eq!(ok.observed_generation, Some(3));
        let c = condition(
            &[
                Conflict {
                    kind: "Service".into(),
                    name: "shop".into(),
                },
                Conflict {
                    kind: "Secret".into(),
                    name: "shop-key".into(),
                },
            ],
            Some(3),
        );
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "Conflict")
        );
        assert!(c.message.contains("Service/shop"), "{}", c.message);
        assert!(c.message.contains("Secret/shop-key"), "{}", c.message);
    }
}
