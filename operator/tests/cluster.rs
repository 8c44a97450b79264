//! The operator against a real control plane (`../shared/k8s`: kube-apiserver,
//! kube-controller-manager, etcd), started and stopped by each test (or the cluster named
//! by `TRIBE_TEST_KUBECONFIG`; with neither, each test prints SKIPPED and passes).
//!
//! Tests that run pods (the podrunner: one per machine) take `POD_LOCK`, so they never
//! overlap; every other test runs the operator as a local process and needs no pods.
//! The end-to-end suite with node pods behind the ingress is `e2e.rs`.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;
use support::*;

/// Serializes the tests that run a podrunner (one per machine).
static POD_LOCK: Mutex<()> = Mutex::new(());

/// The namespace the operator's Lease lives in (its own namespace in a real install).
const OPERATOR_NS: &str = "tribe-system";
/// The field manager of every object the operator applies.
const MANAGER: &str = "tribe-operator";

const SHORT: Duration = Duration::from_secs(60);
const LONG: Duration = Duration::from_secs(120);

/// Control plane + CRD, or `None` when skipped.
fn plane_with_crd(test: &str) -> Option<ControlPlane> {
    let plane = ControlPlane::start(test)?;
    plane.install_crd();
    Some(plane)
}

/// A SessionCluster manifest.
fn session_cluster(name: &str, ns: &str, spec: &str) -> String {
    format!("apiVersion: tribe.rs/v1alpha1\nkind: SessionCluster\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n{spec}")
}

fn apply(plane: &ControlPlane, yaml: &str) {
    plane
        .apply(yaml)
        .unwrap_or_else(|e| panic!("apply failed: {e}\n{yaml}"));
}

/// Every child the operator creates for SessionCluster `name` (kind, name).
fn children(name: &str, ingress: bool) -> Vec<(&'static str, String)> {
    let mut c = vec![
        ("deployment", name.to_string()),
        ("service", name.to_string()),
        ("service", format!("{name}-members")),
        ("secret", format!("{name}-key")),
        ("poddisruptionbudget", name.to_string()),
        ("networkpolicy", name.to_string()),
    ];
    if ingress {
        c.push(("ingress", name.to_string()));
    }
    c
}

fn get(plane: &ControlPlane, ns: &str, kind: &str, name: &str) -> Result<Value, String> {
    plane.get_json(&["-n", ns, kind, name, "--show-managed-fields"])
}

fn wait_children(
    plane: &ControlPlane,
    ns: &str,
    name: &str,
    ingress: bool,
) -> BTreeMap<String, Value> {
    wait_for(&format!("every child of {ns}/{name}"), LONG, || {
        let mut all = BTreeMap::new();
        for (kind, child) in children(name, ingress) {
            let obj =
                get(plane, ns, kind, &child).map_err(|_| format!("{kind}/{child} missing"))?;
            all.insert(format!("{kind}/{child}"), obj);
        }
        Ok(all)
    })
}

fn resource_versions(
    plane: &ControlPlane,
    ns: &str,
    name: &str,
    ingress: bool,
) -> BTreeMap<String, String> {
    children(name, ingress)
        .into_iter()
        .map(|(kind, child)| {
            let obj = get(plane, ns, kind, &child).unwrap_or_else(|e| panic!("{e}"));
            (
                format!("{kind}/{child}"),
                obj["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            )
        })
        .collect()
}

/// Waits until the children's resourceVersions stay the same for 3 s (the controllers'
/// status writes are done) and returns them.
fn settled_versions(
    plane: &ControlPlane,
    ns: &str,
    name: &str,
    ingress: bool,
) -> BTreeMap<String, String> {
    let mut last = resource_versions(plane, ns, name, ingress);
    let mut since = std::time::Instant::now();
    wait_for("children to settle", LONG, || {
        let now = resource_versions(plane, ns, name, ingress);
        if now != last {
            last = now;
            since = std::time::Instant::now();
            return Err(format!("still changing: {last:?}"));
        }
        if since.elapsed() < Duration::from_secs(3) {
            return Err("stable for less than 3 s".into());
        }
        Ok(last.clone())
    })
}

fn condition<'a>(sc: &'a Value, type_: &str) -> Option<&'a Value> {
    sc["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

fn env_of(deployment: &Value, var: &str) -> Option<String> {
    deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == var)
        .and_then(|e| e["value"].as_str().map(String::from))
}

/// Checks the owner reference and the field managers of one child.
fn owned_and_applied(key: &str, obj: &Value, sc_uid: &str) -> Result<(), String> {
    let owners = obj["metadata"]["ownerReferences"]
        .as_array()
        .ok_or(format!("{key}: no ownerReferences"))?;
    let ok = owners.len() == 1
        && owners[0]["apiVersion"] == "tribe.rs/v1alpha1"
        && owners[0]["kind"] == "SessionCluster"
        && owners[0]["uid"] == sc_uid
        && owners[0]["controller"] == true;
    if !ok {
        return Err(format!(
            "{key}: want one controller owner SessionCluster {sc_uid}, have {owners:?}"
        ));
    }
    let fields = obj["metadata"]["managedFields"]
        .as_array()
        .ok_or(format!("{key}: no managedFields"))?;
    // Everything but status subresource writes (the controllers) is the operator's, and it
    // uses server-side apply (the Secret is created once and never applied again).
    let writers: BTreeSet<(String, String)> = fields
        .iter()
        .filter(|f| f["subresource"] != "status")
        .map(|f| {
            (
                f["manager"].as_str().unwrap_or("").to_string(),
                f["operation"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let want_op = if key.starts_with("secret/") {
        "Update"
    } else {
        "Apply"
    };
    let want: BTreeSet<(String, String)> = [(MANAGER.to_string(), want_op.to_string())].into();
    if writers != want {
        return Err(format!(
            "{key}: managedFields (manager, operation) outside status: {writers:?}, want {want:?}"
        ));
    }
    Ok(())
}

#[test]
fn api_server_accepts_the_crd_and_the_examples_and_rejects_the_invalid_one() {
    let Some(plane) = plane_with_crd("crd") else {
        return;
    };
    let crd = plane
        .get_json(&["crd", "sessionclusters.tribe.rs"])
        .unwrap();
    let version = &crd["spec"]["versions"][0];
    assert_eq!(
        version["subresources"]["scale"]["specReplicasPath"],
        ".spec.replicas"
    );
    assert_eq!(
        version["subresources"]["scale"]["labelSelectorPath"],
        ".status.selector"
    );
    assert!(
        version["subresources"]["status"].is_object(),
        "status subresource"
    );
    let columns: Vec<&str> = version["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    for want in ["Replicas", "Ready", "Sessions", "Age"] {
        assert!(
            columns.contains(&want),
            "printer column {want} in {columns:?}"
        );
    }

    let ns = plane.ns("examples");
    let ns = ns.as_str();
    plane.create_namespace(ns);
    let examples = repo_root().join("examples");
    for file in [
        "minimal.yaml",
        "full.yaml",
        "postgres.yaml",
        "sidecar-express.yaml",
        "sidecar-async-proxy.yaml",
        "sidecar-php.yaml",
    ] {
        let path = examples.join(file);
        plane
            .try_k(&[
                "-n",
                ns,
                "apply",
                "--validate=false",
                "-f",
                path.to_str().unwrap(),
            ])
            .unwrap_or_else(|e| panic!("{file} must be accepted: {e}"));
    }
    // Defaults are filled in by the API server (structural schema defaults).
    let minimal = plane
        .get_json(&["-n", ns, "sessioncluster", "minimal"])
        .unwrap();
    assert_eq!(minimal["spec"]["replicas"], 3);
    let full = plane
        .get_json(&["-n", ns, "sessionclusters", "shop"])
        .unwrap();
    let want_full: Value = yaml_docs(&std::fs::read_to_string(examples.join("full.yaml")).unwrap())
        .into_iter()
        .find(|d| d["kind"] == "SessionCluster")
        .expect("full.yaml has a SessionCluster");
    assert_eq!(
        full["spec"], want_full["spec"],
        "full.yaml round-trips unchanged (no field pruned)"
    );

    // The chart's example SessionCluster is valid too (server-side dry run).
    let chart = repo_root().join("charts/tribe-operator");
    let helm = require_tool("helm");
    let rendered = run(std::process::Command::new(helm).args([
        "template",
        "t",
        chart.to_str().unwrap(),
        "--set",
        "example.enabled=true,example.ingress.enabled=true",
        "--show-only",
        "templates/example-sessioncluster.yaml",
        "--namespace",
        ns,
    ]))
    .unwrap();
    plane
        .k_stdin(
            &["apply", "--dry-run=server", "--validate=false", "-f", "-"],
            &rendered,
        )
        .unwrap_or_else(|e| panic!("the chart's example must be accepted: {e}"));

    // The invalid example: rejected by the API server itself (no client-side validation).
    let invalid = examples.join("invalid.yaml");
    let err = plane
        .try_k(&[
            "-n",
            ns,
            "apply",
            "--validate=false",
            "-f",
            invalid.to_str().unwrap(),
        ])
        .expect_err("examples/invalid.yaml must be rejected");
    assert!(
        err.contains("is invalid"),
        "rejected by the API server's validation: {err}"
    );
    for field in [
        "spec.replicas",
        "spec.membership",
        "spec.replication.mode",
        "spec.session.timeout",
    ] {
        assert!(err.contains(field), "the rejection names {field}: {err}");
    }
    assert!(
        plane
            .try_k(&["-n", ns, "get", "sessionclusters", "invalid"])
            .is_err(),
        "nothing was stored"
    );

    // backups >= replicas (a CEL rule) is rejected too.
    let err = plane
        .k_stdin(
            &["apply", "--validate=false", "-f", "-"],
            &session_cluster(
                "toomany",
                ns,
                "  replicas: 2\n  replication: {mode: backup, backups: 2}\n",
            ),
        )
        .expect_err("backups >= replicas must be rejected");
    assert!(err.contains("backups"), "{err}");

    // spec.persistence: postgres only with enabled and without a StorageClass (CEL) ...
    for (name, persistence) in [
        ("pg-off", "{postgres: {secretRef: {name: db}}}"),
        (
            "pg-class",
            "{enabled: true, storageClassName: fast, postgres: {secretRef: {name: db}}}",
        ),
    ] {
        let err = plane
            .k_stdin(
                &["apply", "--validate=false", "-f", "-"],
                &session_cluster(name, ns, &format!("  persistence: {persistence}\n")),
            )
            .expect_err("an inconsistent persistence spec must be rejected");
        assert!(err.contains("persistence.postgres needs"), "{name}: {err}");
    }
    // Defaults are filled in.
    apply(
        &plane,
        &session_cluster("vols", ns, "  persistence: {enabled: true}\n"),
    );
    let vols = plane
        .get_json(&["-n", ns, "sessionclusters", "vols"])
        .unwrap();
    assert_eq!(vols["spec"]["persistence"]["size"], "1Gi");
    assert_eq!(vols["spec"]["persistence"]["durability"], "write-behind");
    assert_eq!(
        vols["spec"]["persistence"]["retention"], "Retain",
        "defaulted"
    );
}

#[test]
fn operator_reconciles_a_session_cluster_into_every_child() {
    let Some(plane) = plane_with_crd("reconcile") else {
        return;
    };
    let opns = plane.ns(OPERATOR_NS);
    let opns = opns.as_str();
    plane.create_namespace(opns);
    let ns = plane.ns("shop");
    let ns = ns.as_str();
    plane.create_namespace(ns);
    let mut op = Operator::start("op-a", &plane.kubeconfig, opns, &[]);

    apply(
        &plane,
        &session_cluster(
            "shop",
            ns,
            "  replicas: 3\n  ingress: {enabled: true, host: shop.example.com, className: nginx}\n",
        ),
    );
    let sc = plane
        .get_json(&["-n", ns, "sessionclusters", "shop"])
        .unwrap();
    let uid = sc["metadata"]["uid"].as_str().unwrap().to_string();

    // Every child, owned by the SessionCluster, written by server-side apply under one manager.
    let all = wait_children(&plane, ns, "shop", true);
    // The manager entries may lag the first create by a reconcile; wait for the final shape.
    wait_for(
        "children applied by one field manager with owner references",
        SHORT,
        || {
            for key in all.keys() {
                let (kind, name) = key.split_once('/').unwrap();
                let obj = get(&plane, ns, kind, name)?;
                owned_and_applied(key, &obj, &uid)?;
            }
            Ok(())
        },
    );
    let headless = &all["service/shop-members"];
    assert_eq!(headless["spec"]["clusterIP"], "None");
    assert_eq!(headless["spec"]["publishNotReadyAddresses"], true);
    let deployment = &all["deployment/shop"];
    assert_eq!(deployment["spec"]["replicas"], 3);
    assert_eq!(
        deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"],
        0
    );
    assert!(
        all["secret/shop-key"]["data"]
            .as_object()
            .is_some_and(|d| !d.is_empty()),
        "the key Secret has a key"
    );
    assert_eq!(
        all["ingress/shop"]["spec"]["rules"][0]["host"],
        "shop.example.com"
    );

    // Status: from observation, with observedGeneration, the selector and the conditions.
    let sc = wait_for(
        "status with observedGeneration, selector and conditions",
        LONG,
        || {
            let sc = plane.get_json(&["-n", ns, "sessionclusters", "shop"])?;
            let st = &sc["status"];
            if st["observedGeneration"] != sc["metadata"]["generation"] {
                return Err(format!(
                    "observedGeneration {} vs generation {}",
                    st["observedGeneration"], sc["metadata"]["generation"]
                ));
            }
            for t in ["Ready", "Progressing", "Degraded"] {
                condition(&sc, t).ok_or(format!("no {t} condition in {st}"))?;
            }
            Ok(sc)
        },
    );
    let selector = sc["status"]["selector"].as_str().expect("status.selector");
    assert!(
        selector.contains("app.kubernetes.io/instance=shop"),
        "selector {selector}"
    );
    // No pods run in this test (no podrunner): not ready, and the status says so.
    assert_eq!(
        condition(&sc, "Ready").unwrap()["status"],
        "False",
        "{}",
        sc["status"]
    );
    assert_ne!(sc["status"]["readyReplicas"], 3);
    let selected = plane.k(&["-n", ns, "get", "pods", "-l", selector, "-o", "name"]);
    assert_eq!(
        selected.lines().count(),
        3,
        "the status selector selects the Deployment's pods: {selected}"
    );

    // A second reconcile (a fresh operator process reconciles everything at start-up)
    // changes nothing: every child keeps its resourceVersion.
    let before = settled_versions(&plane, ns, "shop", true);
    assert!(
        op.stop(Duration::from_secs(20)),
        "operator exits on SIGTERM within 20 s:\n{}",
        op.log_text()
    );
    let op = Operator::start("op-b", &plane.kubeconfig, opns, &[]);
    wait_for("op-b to complete a reconcile", LONG, || {
        let done = op.metric_sum("tribe_operator_reconcile_duration_seconds_count", None)?;
        if done >= 1.0 {
            Ok(())
        } else {
            Err(format!("{done} reconciles done"))
        }
    });
    let after = resource_versions(&plane, ns, "shop", true);
    assert_eq!(before, after, "a second reconcile must not write any child");

    // A hand-edit of a field the operator owns is put back.
    let cluster_env = env_of(&all["deployment/shop"], "TRIBE_CLUSTER").expect("TRIBE_CLUSTER env");
    plane.k(&[
        "-n",
        ns,
        "set",
        "env",
        "deployment/shop",
        "TRIBE_CLUSTER=hijacked",
    ]);
    plane.k(&[
        "-n",
        ns,
        "patch",
        "service",
        "shop-members",
        "--type=merge",
        "-p",
        r#"{"spec":{"publishNotReadyAddresses":false}}"#,
    ]);
    wait_for("the operator to undo the hand-edits", SHORT, || {
        let d = get(&plane, ns, "deployment", "shop")?;
        let h = get(&plane, ns, "service", "shop-members")?;
        let env = env_of(&d, "TRIBE_CLUSTER");
        if env.as_deref() != Some(cluster_env.as_str()) {
            return Err(format!("TRIBE_CLUSTER={env:?}"));
        }
        if h["spec"]["publishNotReadyAddresses"] != true {
            return Err("publishNotReadyAddresses still false".into());
        }
        Ok(())
    });

    // `kubectl scale` goes through the scale subresource and reaches the Deployment.
    plane.k(&["-n", ns, "scale", "sessioncluster/shop", "--replicas=5"]);
    wait_for(
        "Deployment replicas 5 and observedGeneration caught up",
        SHORT,
        || {
            let d = get(&plane, ns, "deployment", "shop")?;
            let sc = plane.get_json(&["-n", ns, "sessionclusters", "shop"])?;
            if d["spec"]["replicas"] != 5 {
                return Err(format!("deployment replicas {}", d["spec"]["replicas"]));
            }
            if sc["status"]["observedGeneration"] != sc["metadata"]["generation"] {
                return Err(format!("status {}", sc["status"]));
            }
            Ok(())
        },
    );
    let scale = plane
        .get_json(&["-n", ns, "sessionclusters", "shop", "--subresource=scale"])
        .unwrap();
    assert_eq!(scale["spec"]["replicas"], 5);

    // Disabling the ingress removes it.
    apply(
        &plane,
        &session_cluster("shop", ns, "  replicas: 5\n  ingress: {enabled: false}\n"),
    );
    wait_for("the Ingress to go", SHORT, || {
        match get(&plane, ns, "ingress", "shop") {
            Ok(_) => Err("still there".into()),
            Err(_) => Ok(()),
        }
    });

    // Deleting the SessionCluster removes every child (the garbage collector, by owner refs).
    plane.k(&[
        "-n",
        ns,
        "delete",
        "sessionclusters",
        "shop",
        "--wait=true",
        "--timeout=60s",
    ]);
    wait_for("every child to be garbage-collected", LONG, || {
        let left: Vec<String> = children("shop", false)
            .into_iter()
            .filter(|(kind, name)| get(&plane, ns, kind, name).is_ok())
            .map(|(k, n)| format!("{k}/{n}"))
            .collect();
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("left: {left:?}"))
        }
    });
    let failures = op
        .metric_sum("tribe_operator_reconcile_failures", None)
        .unwrap();
    assert_eq!(failures, 0.0, "no reconcile failed:\n{}", op.log_text());
}

#[test]
fn unrealisable_spec_gives_degraded_and_an_event_without_crash_looping() {
    let Some(plane) = plane_with_crd("degraded") else {
        return;
    };
    let opns = plane.ns(OPERATOR_NS);
    let opns = opns.as_str();
    plane.create_namespace(opns);
    let ns = plane.ns("bad");
    let ns = ns.as_str();
    plane.create_namespace(ns);
    let mut op = Operator::start("op-a", &plane.kubeconfig, opns, &[]);

    // The CRD accepts any host string, but no Ingress may have this host: the API server
    // refuses the child, so the operator cannot realise the spec.
    apply(
        &plane,
        &session_cluster(
            "bad",
            ns,
            "  replicas: 1\n  ingress: {enabled: true, host: Not_A_Host}\n",
        ),
    );
    let sc = wait_for("Degraded=True", LONG, || {
        let sc = plane.get_json(&["-n", ns, "sessionclusters", "bad"])?;
        match condition(&sc, "Degraded") {
            Some(c) if c["status"] == "True" => Ok(sc),
            other => Err(format!("Degraded: {other:?}")),
        }
    });
    let degraded = condition(&sc, "Degraded").unwrap();
    assert!(
        !degraded["reason"].as_str().unwrap_or("").is_empty(),
        "a reason: {degraded}"
    );
    assert!(
        degraded["message"]
            .as_str()
            .unwrap_or("")
            .contains("ngress"),
        "the message names the Ingress: {degraded}"
    );

    let event = wait_for("a Warning Event about the SessionCluster", SHORT, || {
        let events = plane.get_json(&["-n", ns, "events"])?;
        events["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| {
                e["involvedObject"]["name"] == "bad"
                    && e["involvedObject"]["kind"] == "SessionCluster"
                    && e["type"] == "Warning"
            })
            .cloned()
            .ok_or(format!("events: {}", events["items"]))
    });
    eprintln!("event: {} {}", event["reason"], event["message"]);

    // It retries with back-off, and stays up.
    wait_for("two failed reconciles", LONG, || {
        let n = op.metric_sum("tribe_operator_reconcile_failures", None)?;
        if n >= 2.0 {
            Ok(())
        } else {
            Err(format!("{n} failures"))
        }
    });
    assert!(
        op.running(),
        "the operator is still running:\n{}",
        op.log_text()
    );
    assert_eq!(op.admin_get("/healthz").map(|_| ()), Ok(()));

    // Fixing the spec heals it.
    apply(
        &plane,
        &session_cluster(
            "bad",
            ns,
            "  replicas: 1\n  ingress: {enabled: true, host: good.example.com}\n",
        ),
    );
    wait_for("Degraded=False and the Ingress created", LONG, || {
        let sc = plane.get_json(&["-n", ns, "sessionclusters", "bad"])?;
        get(&plane, ns, "ingress", "bad")?;
        match condition(&sc, "Degraded") {
            Some(c) if c["status"] == "False" => Ok(()),
            other => Err(format!("Degraded: {other:?}")),
        }
    });
}

fn is_leader(op: &Operator) -> Result<bool, String> {
    Ok(op.metric_sum("tribe_operator_leader", None)? >= 1.0)
}

#[test]
fn only_the_lease_holder_writes() {
    let Some(plane) = plane_with_crd("leader") else {
        return;
    };
    let opns = plane.ns(OPERATOR_NS);
    let opns = opns.as_str();
    plane.create_namespace(opns);
    let ns = plane.ns("apps");
    let ns = ns.as_str();
    plane.create_namespace(ns);
    let mut a = Operator::start("op-a", &plane.kubeconfig, opns, &[]);
    wait_for("op-a to lead", SHORT, || {
        if is_leader(&a)? {
            Ok(())
        } else {
            Err("not leader".into())
        }
    });
    let b = Operator::start("op-b", &plane.kubeconfig, opns, &[]);
    let (holder, lease) = wait_for("the Lease to name op-a", SHORT, || {
        lease_holder(&plane, opns)
    });
    assert!(holder.contains("op-a"), "holder {holder} of Lease {lease}");

    apply(&plane, &session_cluster("one", ns, "  replicas: 2\n"));
    wait_children(&plane, ns, "one", false);
    wait_for("op-a to complete a reconcile", SHORT, || {
        let n = a.metric_sum("tribe_operator_reconcile_duration_seconds_count", None)?;
        if n >= 1.0 {
            Ok(())
        } else {
            Err(format!("{n}"))
        }
    });
    assert!(
        !is_leader(&b).unwrap(),
        "op-b does not lead while op-a holds the Lease"
    );
    assert_eq!(
        b.metric_sum("tribe_operator_reconciles", None).unwrap(),
        0.0,
        "op-b never reconciled:\n{}",
        b.log_text()
    );
    assert_eq!(
        lease_holder(&plane, opns).unwrap().0,
        holder,
        "the Lease stays with op-a"
    );

    // op-a crashes (no chance to release): op-b takes over once the Lease expires, and writes.
    a.kill();
    wait_for("op-b to take the Lease", LONG, || {
        let (h, _) = lease_holder(&plane, opns)?;
        if h.contains("op-b") && is_leader(&b)? {
            Ok(())
        } else {
            Err(format!("holder {h}"))
        }
    });
    plane.k(&["-n", ns, "scale", "sessionclusters/one", "--replicas=4"]);
    wait_for("op-b to scale the Deployment", SHORT, || {
        let d = get(&plane, ns, "deployment", "one")?;
        if d["spec"]["replicas"] == 4 {
            Ok(())
        } else {
            Err(format!("replicas {}", d["spec"]["replicas"]))
        }
    });
}

#[test]
fn operator_works_with_exactly_the_charts_rbac() {
    let Some(plane) = ControlPlane::start("rbac") else {
        return;
    };
    let opns = plane.ns(OPERATOR_NS);
    let opns = opns.as_str();
    plane.create_namespace(opns);
    // The app namespace exists first: the chart grants Secrets there by a Role of its own.
    let ns = plane.ns("apps");
    let ns = ns.as_str();
    plane.create_namespace(ns);
    let secret_namespaces = format!("rbac.secretNamespaces={{{ns}}}");
    // The chart installs the CRD (crds/) and the RBAC; its operator pod stays Pending here
    // (no podrunner), so the operator runs locally with the chart ServiceAccount's token.
    helm_install(&plane, "tribe-operator", opns, &[&secret_namespaces], false);
    plane.wait_condition("crd/sessionclusters.tribe.rs", "Established", SHORT_WAIT);
    let sa = "tribe-operator";
    let dir = scratch_dir("rbac");
    let sa_kubeconfig = dir.join("sa.kubeconfig");
    service_account_kubeconfig(&plane, opns, sa, &sa_kubeconfig);
    let who = run(std::process::Command::new(require_tool("kubectl")).args([
        "--kubeconfig",
        sa_kubeconfig.to_str().unwrap(),
        "auth",
        "whoami",
        "-o",
        "jsonpath={.status.userInfo.username}",
    ]));
    if let Ok(who) = who {
        assert_eq!(who.trim(), format!("system:serviceaccount:{opns}:{sa}"));
    }

    // What the chart must not allow.
    let as_sa = format!("--as=system:serviceaccount:{opns}:{sa}");
    let can = |verb: &str, what: &str, ns: &str| {
        let out = plane
            .try_k(&["auth", "can-i", verb, what, "-n", ns, &as_sa])
            .unwrap_or_else(|e| e);
        !(out.trim_start().starts_with("no") || out.contains("\nno"))
    };
    for (verb, what, ns) in [
        ("delete", "sessionclusters.tribe.rs", ns),
        ("create", "pods", ns),
        ("get", "configmaps", ns),
        // Claims are the StatefulSet controller's to create and delete, never the operator's.
        ("delete", "persistentvolumeclaims", ns),
        ("create", "persistentvolumeclaims", ns),
        ("create", "clusterroles.rbac.authorization.k8s.io", ns),
        ("update", "leases.coordination.k8s.io", ns),
        ("delete", "secrets", ns),
        ("patch", "secrets", ns),
        // Secrets are read by name only, and only in the listed namespaces.
        ("list", "secrets", ns),
        ("watch", "secrets", ns),
        ("get", "secrets", opns),
        ("get", "secrets", "kube-system"),
        ("get", "pods", ns),
        ("update", "sessionclusters.tribe.rs", ns),
    ] {
        assert!(
            !can(verb, what, ns),
            "the chart must not allow {verb} {what} in {ns}"
        );
    }
    for verb in ["get", "create", "update"] {
        assert!(
            can(verb, "secrets", ns),
            "{verb} secrets in {ns}: the listed namespace"
        );
    }

    let op = Operator::start(
        "rbac-op",
        &sa_kubeconfig,
        opns,
        &[("TRIBE_OPERATOR_LEASE_NAME", "tribe-operator")],
    );
    apply(
        &plane,
        &session_cluster(
            "shop",
            ns,
            "  replicas: 2\n  ingress: {enabled: true, host: shop.example.com}\n",
        ),
    );
    wait_children(&plane, ns, "shop", true);
    wait_for("status written by the ServiceAccount", LONG, || {
        let sc = plane.get_json(&["-n", ns, "sessionclusters", "shop"])?;
        if sc["status"]["observedGeneration"] == sc["metadata"]["generation"] {
            Ok(())
        } else {
            Err(format!("{}", sc["status"]))
        }
    });
    let (holder, lease) = wait_for("the Lease", SHORT, || lease_holder(&plane, opns));
    assert_eq!(
        lease, "tribe-operator",
        "the Lease the chart's Role names (holder {holder})"
    );
    wait_for("an Event by the operator", SHORT, || {
        let ev = plane.get_json(&["-n", ns, "events"])?;
        if ev["items"]
            .as_array()
            .is_some_and(|i| i.iter().any(|e| e["involvedObject"]["name"] == "shop"))
        {
            Ok(())
        } else {
            Err("no event".into())
        }
    });
    // Turning the ingress off needs delete on ingresses.
    apply(&plane, &session_cluster("shop", ns, "  replicas: 2\n"));
    wait_for("the Ingress to go", SHORT, || {
        match get(&plane, ns, "ingress", "shop") {
            Ok(_) => Err("still there".into()),
            Err(_) => Ok(()),
        }
    });
    // Persistence with volumes switches the nodes to a StatefulSet, and back: the old kind
    // is deleted once the new one is rolled out (at 0 replicas at once, no pods here).
    let workloads = |want: &'static str| {
        wait_for(&format!("the workload to be only {want}"), LONG, || {
            let out = plane.try_k(&["-n", ns, "get", "deployments,statefulsets", "-o", "name"])?;
            let got: Vec<&str> = out.lines().collect();
            if got == [want] {
                Ok(())
            } else {
                Err(format!("{got:?}"))
            }
        })
    };
    apply(
        &plane,
        &session_cluster(
            "shop",
            ns,
            "  replicas: 0\n  persistence: {enabled: true}\n",
        ),
    );
    workloads("statefulset.apps/shop");
    let set = get(&plane, ns, "statefulset", "shop").unwrap();
    assert_eq!(
        set["spec"]["volumeClaimTemplates"][0]["metadata"]["name"],
        "data"
    );
    apply(&plane, &session_cluster("shop", ns, "  replicas: 0\n"));
    workloads("deployment.apps/shop");
    let log = op.log_text();
    assert!(
        !log.contains("forbidden"),
        "the operator hit a permission it lacks:\n{log}"
    );
    drop(op);

    // The namespaced variant: a Role in its own namespace only, and it watches only that one.
    let team = plane.ns("team");
    let team = team.as_str();
    plane.create_namespace(team);
    helm_install(&plane, "tribe-team", team, &["rbac.namespaced=true"], false);
    let team_kubeconfig = dir.join("team.kubeconfig");
    service_account_kubeconfig(&plane, team, "tribe-team-tribe-operator", &team_kubeconfig);
    let op = Operator::start(
        "team-op",
        &team_kubeconfig,
        team,
        &[
            ("TRIBE_OPERATOR_LEASE_NAME", "tribe-team-tribe-operator"),
            ("WATCH_NAMESPACE", team),
        ],
    );
    apply(&plane, &session_cluster("cart", team, "  replicas: 1\n"));
    wait_children(&plane, team, "cart", false);
    wait_for("status in the team namespace", LONG, || {
        let sc = plane.get_json(&["-n", team, "sessionclusters", "cart"])?;
        if sc["status"]["observedGeneration"] == sc["metadata"]["generation"] {
            Ok(())
        } else {
            Err(format!("{}", sc["status"]))
        }
    });
    let log = op.log_text();
    assert!(
        !log.contains("forbidden"),
        "the namespaced operator hit a permission it lacks:\n{log}"
    );
    drop(op);

    helm_uninstall(&plane, "tribe-team", team);
    assert_release_gone(&plane, "tribe-team", team, true);
    helm_uninstall(&plane, "tribe-operator", opns);
    assert_release_gone(&plane, "tribe-operator", opns, false);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn helm_installed_operator_runs_as_a_pod_with_its_service_account() {
    let _pods = POD_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    // The operator runs from its image (support/images.rs); node images stay unmapped.
    let Some(plane) = plane_with_pods("operator-pod", |d| {
        oci_images_file_of(d, &["tribe-operator"], &[])
    }) else {
        return;
    };
    // The app namespace exists first: the chart grants Secrets there by a Role of its own.
    let ns = "apps";
    plane.create_namespace(ns);
    helm_install(
        &plane,
        "tribe-operator",
        OPERATOR_NS,
        &[
            "replicaCount=2",
            "example.enabled=true",
            &format!("rbac.secretNamespaces={{{ns}}}"),
        ],
        // Not `--wait`: helm 4 waits for the example SessionCluster's Ready condition
        // too (kstatus), and its nodes have no image here.
        false,
    );
    wait_for(
        "both operator pods ready (probes on the admin port)",
        LONG,
        || {
            let ready = plane.try_k(&[
                "-n",
                OPERATOR_NS,
                "get",
                "deploy",
                "tribe-operator",
                "-o",
                "jsonpath={.status.readyReplicas}",
            ])?;
            if ready.trim() == "2" {
                Ok(())
            } else {
                Err(format!("ready {ready:?}"))
            }
        },
    );

    // One of the two pods holds the Lease, under its pod name.
    let pods = plane.k(&[
        "-n",
        OPERATOR_NS,
        "get",
        "pods",
        "-l",
        "app.kubernetes.io/instance=tribe-operator",
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ]);
    let pods: Vec<&str> = pods.split_whitespace().collect();
    let (holder, _) = wait_for("a pod to hold the Lease", LONG, || {
        lease_holder(&plane, OPERATOR_NS)
    });
    assert!(
        pods.iter().any(|p| holder.contains(p)),
        "holder {holder} is one of {pods:?}"
    );

    // It reconciles with the in-cluster config and the ServiceAccount token. The node image
    // is not mapped here, so the nodes wait for their image; the children appear all the same.
    apply(
        &plane,
        &session_cluster(
            "shop",
            ns,
            "  replicas: 2\n  image: tribe-node-not-here:0\n",
        ),
    );
    wait_children(&plane, ns, "shop", false);
    wait_for("status from the in-pod operator", LONG, || {
        let sc = plane.get_json(&["-n", ns, "sessionclusters", "shop"])?;
        if sc["status"]["observedGeneration"] == sc["metadata"]["generation"]
            && sc["status"]["replicas"] == 2
        {
            Ok(())
        } else {
            Err(format!("{}", sc["status"]))
        }
    });
    // The chart's example SessionCluster (installed after the CRD in crds/) is reconciled too.
    wait_children(&plane, OPERATOR_NS, "example", false);
    let logs = plane.k(&[
        "-n",
        OPERATOR_NS,
        "logs",
        "-l",
        "app.kubernetes.io/instance=tribe-operator",
        "--tail=-1",
    ]);
    assert!(
        !logs.contains("forbidden"),
        "the in-pod operator hit a permission it lacks:\n{logs}"
    );

    helm_uninstall(&plane, "tribe-operator", OPERATOR_NS);
    assert_release_gone(&plane, "tribe-operator", OPERATOR_NS, false);
    // The uninstall deleted the example SessionCluster; the garbage collector its children.
    wait_for("the example's children to be gone", LONG, || {
        let left: Vec<String> = children("example", false)
            .into_iter()
            .filter(|(kind, name)| get(&plane, OPERATOR_NS, kind, name).is_ok())
            .map(|(k, n)| format!("{k}/{n}"))
            .collect();
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("left: {left:?}"))
        }
    });
    wait_for(
        "every pod (operator and example nodes) to be gone",
        LONG,
        || {
            let left = plane.try_k(&["-n", OPERATOR_NS, "get", "pods", "-o", "name"])?;
            if left.trim().is_empty() {
                Ok(())
            } else {
                Err(left)
            }
        },
    );
}
