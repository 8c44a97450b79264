//! Persistence end to end on a real control plane with pods (`../shared/k8s` and its
//! podrunner, which provisions PersistentVolumeClaims local-path style): `helm install`
//! the chart (the operator runs as a pod with the chart's RBAC), apply a SessionCluster
//! with `spec.persistence.enabled`, and write sessions through the ingress stand-in
//! (127.0.0.1:18080), each a counter. Then:
//!
//! 1. `kubectl scale sessioncluster --replicas=0`, wait until no pod exists: the three
//!    claims are Bound and still there; scale back to 3: every session is there and its
//!    counter continues (the nodes started from their own disks: no pod was left to
//!    transfer anything);
//! 2. delete every pod at once: the same;
//! 3. delete the SessionCluster (`retention: Retain`): the StatefulSet and the pods go,
//!    the claims (same uids as at the start) stay.
//!
//! Every wait is on an observed state, bounded. Skipped (printed) without `../shared/k8s`
//! or without root. The pods run from the images `scripts/images` packages out of the
//! binaries next to the operator's (`cargo build --workspace --bins`). Run alone on a machine: `flock /tmp/tribe-podrunner.lock cargo
//! test -p tribe-operator --test persistence`.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use support::*;
use support::{wait_ingress_answers_from, Browser, Counter};

const RELEASE: &str = "tribe-operator";
const OPERATOR_NS: &str = "tribe-system";
const NAME: &str = "carts";
const HOST: &str = "carts.persist.test";
/// Sessions (browsers) written before the restarts.
const SESSIONS: usize = 12;
/// Bound of one step (pods stopped or started, ready, ingress updated).
const STEP: Duration = Duration::from_secs(150);

fn cluster_yaml() -> String {
    format!(
        r#"apiVersion: tribe.rs/v1alpha1
kind: SessionCluster
metadata:
  name: {NAME}
spec:
  replicas: 3
  ingress:
    enabled: true
    host: {HOST}
  persistence:
    enabled: true
    size: 64Mi
    retention: Retain
"#
    )
}

#[test]
fn sessions_survive_scale_to_zero_and_losing_every_pod() {
    let started = Instant::now();
    let log = |what: &str| eprintln!("[persistence] {what} at {:?}", started.elapsed());
    // The operator and nodes run from the images (support/images.rs): the node writes its
    // volume as 65532 in its own read-only root.
    let Some(plane) = plane_with_pods("persistence", |d| oci_images_file(d, &[])) else {
        return;
    };
    // The app namespace exists first: the chart grants Secrets there by a Role of its own.
    let ns = plane.ns("persist");
    let ns = ns.as_str();
    plane.create_namespace(ns);
    let secret_namespaces = format!("rbac.secretNamespaces={{{ns}}}");
    helm_install(&plane, RELEASE, OPERATOR_NS, &[&secret_namespaces], true);
    plane
        .k_stdin(&["-n", ns, "apply", "-f", "-"], &cluster_yaml())
        .unwrap();
    let all = wait_ready_pods(&plane, ns, &BTreeSet::new());
    log("3 nodes of the StatefulSet ready");
    let set = plane.get_json(&["-n", ns, "statefulset", NAME]).unwrap();
    assert_eq!(set["spec"]["podManagementPolicy"], "Parallel");
    assert!(
        plane.try_k(&["-n", ns, "get", "deployment", NAME]).is_err(),
        "no Deployment besides the StatefulSet"
    );

    // Sessions, each a counter at 2.
    let mut browsers: Vec<Browser> = (0..SESSIONS).map(|_| Browser::new(HOST)).collect();
    for (i, b) in browsers.iter_mut().enumerate() {
        for want in 1..=2 {
            let (n, node) = b
                .post_counter()
                .unwrap_or_else(|e| panic!("session {i}: {e}"));
            assert_eq!(n, want, "session {i} from {node}");
        }
    }
    let claims = bound_claims(&plane, ns);
    assert_eq!(
        claims.keys().cloned().collect::<Vec<_>>(),
        [
            format!("data-{NAME}-0"),
            format!("data-{NAME}-1"),
            format!("data-{NAME}-2")
        ],
        "one Bound claim per node"
    );
    log(&format!("{SESSIONS} sessions written"));

    // 1. Scale to zero (the scale subresource) and back.
    plane.k(&["-n", ns, "scale", "sessioncluster", NAME, "--replicas=0"]);
    wait_for("no pod of the cluster left", STEP, || {
        let pods = pods(&plane, ns)?;
        if pods.is_empty() {
            Ok(())
        } else {
            Err(format!("{pods:?}"))
        }
    });
    assert_eq!(
        bound_claims(&plane, ns),
        claims,
        "the claims survive the scale to 0"
    );
    log("scaled to 0: no pod, the claims Bound");
    plane.k(&["-n", ns, "scale", "sessioncluster", NAME, "--replicas=3"]);
    let all = wait_ready_pods(&plane, ns, &all);
    log("scaled back to 3: ready");
    check_sessions(&mut browsers, 3);
    log("every session there, counters continue");

    // 2. Every pod deleted at once.
    plane.k(&[
        "-n",
        ns,
        "delete",
        "pods",
        &format!("--selector=app.kubernetes.io/instance={NAME}"),
        "--wait=false",
    ]);
    let _ = wait_ready_pods(&plane, ns, &all);
    log("every pod deleted at once: 3 new ones ready");
    check_sessions(&mut browsers, 4);
    assert_eq!(bound_claims(&plane, ns), claims, "the same claims");
    wait_for(
        "the status to show 3 ready nodes and the sessions",
        STEP,
        || {
            let sc = plane.get_json(&["-n", ns, "sessioncluster", NAME])?;
            let st = &sc["status"];
            let ok = st["replicas"] == 3
                && st["readyReplicas"] == 3
                && st["sessions"].as_i64().unwrap_or(0) >= SESSIONS as i64;
            if ok {
                Ok(())
            } else {
                Err(format!("{st}"))
            }
        },
    );
    log("every session there, counters continue; status Ready");

    // 3. Deleting the SessionCluster (retention Retain) leaves the claims.
    plane.k(&[
        "-n",
        ns,
        "delete",
        "sessioncluster",
        NAME,
        "--wait=true",
        "--timeout=120s",
    ]);
    wait_for("the StatefulSet and its pods to be gone", STEP, || {
        let left = plane.try_k(&["-n", ns, "get", "statefulsets,pods", "-o", "name"])?;
        if left.trim().is_empty() {
            Ok(())
        } else {
            Err(left)
        }
    });
    assert_eq!(
        bound_claims(&plane, ns),
        claims,
        "retention Retain: the claims stay"
    );
    log("SessionCluster deleted: the claims stay");
    helm_uninstall(&plane, RELEASE, OPERATOR_NS);
}

/// Each browser's next `POST /counter` answers `want`: its session is there.
fn check_sessions(browsers: &mut [Browser], want: i64) {
    for (i, b) in browsers.iter_mut().enumerate() {
        let (n, node) = b
            .post_counter()
            .unwrap_or_else(|e| panic!("session {i}: {e}"));
        assert_eq!(n, want, "session {i} (answered by {node})");
    }
}

/// The cluster's pods: name → (uid, ready, terminating).
fn pods(plane: &ControlPlane, ns: &str) -> Result<BTreeMap<String, (String, bool, bool)>, String> {
    let list = plane.get_json(&[
        "-n",
        ns,
        "pods",
        &format!("--selector=app.kubernetes.io/instance={NAME}"),
    ])?;
    Ok(list["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|p| {
            let ready = p["status"]["conditions"].as_array().is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            });
            (
                p["metadata"]["name"].as_str().unwrap_or("").to_string(),
                (
                    p["metadata"]["uid"].as_str().unwrap_or("").to_string(),
                    ready,
                    p["metadata"]["deletionTimestamp"].is_string(),
                ),
            )
        })
        .collect())
}

/// Waits for the three nodes `<name>-0..2`, ready, none terminating and none of
/// `before` (uids), and for the ingress to answer from them; their uids.
fn wait_ready_pods(plane: &ControlPlane, ns: &str, before: &BTreeSet<String>) -> BTreeSet<String> {
    let want: BTreeSet<String> = (0..3).map(|i| format!("{NAME}-{i}")).collect();
    let uids = wait_for("3 new ready pods with stable names", STEP, || {
        let pods = pods(plane, ns)?;
        let names: BTreeSet<String> = pods.keys().cloned().collect();
        let ok = names == want
            && pods
                .values()
                .all(|(uid, ready, terminating)| *ready && !terminating && !before.contains(uid));
        if ok {
            Ok(pods.values().map(|p| p.0.clone()).collect())
        } else {
            Err(format!("{pods:?}"))
        }
    });
    wait_ingress_answers_from(&want, STEP, || Browser::new(HOST).get_counter_node());
    uids
}

/// The cluster's claims (by label), each Bound: name → uid.
fn bound_claims(plane: &ControlPlane, ns: &str) -> BTreeMap<String, String> {
    wait_for("the claims Bound", STEP, || {
        let list = plane.get_json(&[
            "-n",
            ns,
            "pvc",
            &format!("--selector=app.kubernetes.io/instance={NAME}"),
        ])?;
        let items = list["items"].as_array().cloned().unwrap_or_default();
        let mut claims = BTreeMap::new();
        for c in &items {
            let name = c["metadata"]["name"].as_str().unwrap_or("").to_string();
            if c["status"]["phase"] != "Bound" {
                return Err(format!("{name}: {}", c["status"]));
            }
            claims.insert(
                name,
                c["metadata"]["uid"].as_str().unwrap_or("").to_string(),
            );
        }
        if claims.is_empty() {
            Err("no claim".into())
        } else {
            Ok(claims)
        }
    })
}
