//! An operator upgrade rolls the nodes, on a real control plane with pods (`../shared/k8s`
//! and its podrunner; PODS.md), from the images `scripts/images` builds: `helm install`
//! the chart with a registry, a SessionCluster without `spec.image` (it runs the
//! operator's node image) and one that pins its image; then, while one browser sends
//! sequential `POST /counter` through the ingress stand-in, `helm upgrade --set
//! image.tag=<new>`. Two tags of each image are mapped (the same build under the old and
//! the new tag; an unmapped tag would never start). Asserted:
//!
//! - the operator pod and every node of the unpinned cluster end on the new tag, the
//!   cluster's status records it (`status.image`, `status.nodeImages`), and its spec still
//!   has no image (nothing was baked in);
//! - every answer during the roll is 200 with the previous counter + 1: the pods were
//!   replaced one at a time and handed their sessions over;
//! - the pinned cluster keeps its image and its pod.
//!
//! Skipped (printed) without `../shared/k8s` or without root.

mod support;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

const RELEASE: &str = "tribe-operator";
const OPERATOR_NS: &str = "tribe-system";
const NS: &str = "upgrade";
/// Where the chart says the images are (the podrunner maps them by name and tag).
const REGISTRY: &str = "registry.tribe.test/tribe";
const HOST: &str = "follow.upgrade.test";
/// Bound for one change (pods started, joined, ready, ingress updated).
const CHANGE: Duration = Duration::from_secs(150);
/// Spacing of the browser's requests (so they span the roll).
const PACE: Duration = Duration::from_millis(100);

#[test]
fn helm_upgrade_rolls_unpinned_clusters_to_the_new_node_image_without_losing_a_request() {
    let started = Instant::now();
    let log = |what: &str| eprintln!("[upgrade {:>6.1}s] {what}", started.elapsed().as_secs_f64());
    let old = workspace_version();
    let new = format!("{old}-next");
    let Some(plane) = plane_with_pods("upgrade", |dir| {
        // Exactly two tags of each image: a third would find no image and never start.
        let archives = oci_archives();
        let mut text = String::new();
        for tag in [&old, &new] {
            for name in ["tribe-operator", "tribe-node"] {
                text.push_str(&format!(
                    "\"{name}:{tag}\": {{oci: {}}}\n",
                    archives[name].display()
                ));
            }
        }
        let file = dir.join("images.yaml");
        std::fs::write(&file, text).unwrap();
        file
    }) else {
        return;
    };
    let image = |name: &str, tag: &str| format!("{REGISTRY}/{name}:{tag}");
    // The app namespace exists first: the chart grants Secrets there by a Role of its own.
    plane.create_namespace(NS);
    helm_install(
        &plane,
        RELEASE,
        OPERATOR_NS,
        &[
            &format!("image.registry={REGISTRY}"),
            &format!("rbac.secretNamespaces={{{NS}}}"),
        ],
        true,
    );
    assert_eq!(operator_images(&plane), [image("tribe-operator", &old)]);
    log("operator installed from the registry's old tag");

    plane
        .apply(&format!(
            "apiVersion: tribe.rs/v1alpha1\nkind: SessionCluster\nmetadata: {{name: follow, namespace: {NS}}}\n\
             spec:\n  replicas: 3\n  membership: dns\n  ingress: {{enabled: true, host: {HOST}, className: nginx}}\n\
             ---\n\
             apiVersion: tribe.rs/v1alpha1\nkind: SessionCluster\nmetadata: {{name: pinned, namespace: {NS}}}\n\
             spec:\n  replicas: 1\n  image: {}\n",
            image("tribe-node", &old)
        ))
        .unwrap_or_else(|e| panic!("{e}"));
    let before = wait_rolled(&plane, "follow", 3, &image("tribe-node", &old));
    let pinned = wait_rolled(&plane, "pinned", 1, &image("tribe-node", &old));
    log(&format!("on {old}: follow {before:?}, pinned {pinned:?}"));

    // One browser, one session, through the ingress the whole time.
    let mut browser = Browser::new(HOST);
    let (first, _) = browser.post_counter().expect("first request");
    assert_eq!(first, 1);
    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let stop = stop.clone();
        std::thread::spawn(move || drive(browser, &stop))
    };

    let mut cmd = std::process::Command::new(require_tool("helm"));
    cmd.args([
        "upgrade",
        RELEASE,
        repo_root().join("charts/tribe-operator").to_str().unwrap(),
        "--namespace",
        OPERATOR_NS,
        "--reuse-values",
        "--set",
        &format!("image.tag={new}"),
        "--wait",
        "--timeout",
        "180s",
    ])
    .env("KUBECONFIG", &plane.kubeconfig);
    run(&mut cmd).unwrap_or_else(|e| panic!("helm upgrade failed: {e}"));
    log(&format!("helm upgrade --set image.tag={new} done"));

    let after = wait_rolled(&plane, "follow", 3, &image("tribe-node", &new));
    assert!(
        after.is_disjoint(&before),
        "every node was replaced: before {before:?}, after {after:?}"
    );
    wait_ingress_answers_from(&after, CHANGE, || Browser::new(HOST).get_counter_node());
    log(&format!("follow rolled to {new}: {after:?}"));
    stop.store(true, Ordering::Relaxed);
    let (requests, served_by) = client
        .join()
        .expect("client thread")
        .unwrap_or_else(|e| panic!("during the upgrade: {e}"));
    log(&format!(
        "{requests} requests, each 200 with the next counter, served by {served_by:?}"
    ));
    assert!(
        served_by.intersection(&after).next().is_some()
            && served_by.intersection(&before).next().is_some(),
        "the browser was served by old and new nodes: {served_by:?}"
    );

    // The stored spec has no image: nothing was baked in at creation.
    let follow = plane
        .get_json(&["-n", NS, "sessionclusters", "follow"])
        .unwrap();
    assert!(follow["spec"].get("image").is_none(), "{}", follow["spec"]);
    assert_eq!(operator_images(&plane), [image("tribe-operator", &new)]);
    // The pinned cluster was left alone.
    let still = wait_rolled(&plane, "pinned", 1, &image("tribe-node", &old));
    assert_eq!(still, pinned, "the pinned cluster's pod was not replaced");
    log("pinned kept its image and its pod; operator on the new tag");
}

/// The images of the operator's pods (none terminating).
fn operator_images(plane: &ControlPlane) -> Vec<String> {
    let pods = plane.get_json(&["-n", OPERATOR_NS, "pods"]).unwrap();
    pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .map(|p| {
            p["spec"]["containers"][0]["image"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

/// Waits until SessionCluster `name` has exactly `n` pods, all ready, none terminating,
/// all running `image`, and its status says so (`status.image`, `status.nodeImages`,
/// `n` members); their names.
fn wait_rolled(plane: &ControlPlane, name: &str, n: usize, image: &str) -> BTreeSet<String> {
    wait_for(
        &format!("{name}: {n} ready pods on {image}, and the status recording it"),
        CHANGE,
        || {
            let pods = plane.get_json(&[
                "-n",
                NS,
                "pods",
                &format!("--selector=app.kubernetes.io/instance={name}"),
            ])?;
            let items = pods["items"].as_array().cloned().unwrap_or_default();
            let mut names = BTreeSet::new();
            for p in &items {
                let pod = p["metadata"]["name"].as_str().unwrap_or("?");
                let ready = p["status"]["conditions"].as_array().is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                });
                let img = p["spec"]["containers"]
                    .as_array()
                    .and_then(|cs| cs.iter().find(|c| c["name"] == "node"))
                    .map(|c| c["image"].clone())
                    .unwrap_or(Value::Null);
                if !p["metadata"]["deletionTimestamp"].is_null() || !ready || img != image {
                    return Err(format!(
                        "{pod}: ready {ready}, image {img}, terminating {}",
                        !p["metadata"]["deletionTimestamp"].is_null()
                    ));
                }
                names.insert(pod.to_string());
            }
            if names.len() != n {
                return Err(format!("pods {names:?}"));
            }
            let sc = plane.get_json(&["-n", NS, "sessionclusters", name])?;
            let st = &sc["status"];
            let want_images = serde_json::json!([{"image": image, "nodes": names}]);
            if st["image"] != image || st["nodeImages"] != want_images || st["members"] != n as i64
            {
                return Err(format!("status {st}"));
            }
            Ok(names)
        },
    )
}

/// Sequential `POST /counter` until `stop`: each must answer 200 with the previous
/// counter + 1. (requests sent, the pods that answered).
fn drive(mut browser: Browser, stop: &AtomicBool) -> Result<(i64, BTreeSet<String>), String> {
    let mut expected = 2;
    let mut nodes = BTreeSet::new();
    while !stop.load(Ordering::Relaxed) {
        let (n, node) = browser
            .post_counter()
            .map_err(|e| format!("request {expected}: {e}"))?;
        if n != expected {
            return Err(format!("request {expected}: counter {n} from {node}"));
        }
        nodes.insert(node);
        expected += 1;
        std::thread::sleep(PACE);
    }
    Ok((expected - 1, nodes))
}
