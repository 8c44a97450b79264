//! Pod Security and ownership on a real control plane (`../shared/k8s`: kube-apiserver
//! with its PodSecurity admission, kube-controller-manager, etcd); no pods run, so no
//! podrunner: the Deployment controller creating the pods is what PodSecurity judges.
//!
//! - The node pods (with the app sidecar and a `spec.template`) are admitted in a
//!   namespace enforcing Pod Security "restricted", while a plain pod is refused there;
//!   the chart's operator pod is admitted there too; a `spec.template.securityContext`
//!   that loosens is refused by the CRD at apply time.
//! - A Service of someone else with a child's name is left untouched and reported (the
//!   `ChildrenOwned` condition, a `Conflict` Event); once it is deleted the operator
//!   creates its own.

mod support;

use serde_json::Value;
use std::time::Duration;
use support::*;

const LONG: Duration = Duration::from_secs(120);

/// Control plane + CRD, the operator's namespace and an app namespace; `None` when skipped.
fn setup(test: &str, app_ns: &str) -> Option<(ControlPlane, String, String)> {
    let plane = ControlPlane::start(test)?;
    plane.install_crd();
    let opns = plane.ns("tribe-system");
    plane.create_namespace(&opns);
    let ns = plane.ns(app_ns);
    plane.create_namespace(&ns);
    Some((plane, opns, ns))
}

fn session_cluster(name: &str, ns: &str, spec: &str) -> String {
    format!("apiVersion: tribe.rs/v1alpha1\nkind: SessionCluster\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n{spec}")
}

/// The items of `kubectl get <kind> -n ns -o json`.
fn items(plane: &ControlPlane, ns: &str, args: &[&str]) -> Result<Vec<Value>, String> {
    let mut a = vec!["-n", ns];
    a.extend_from_slice(args);
    let list = plane.get_json(&a)?;
    Ok(list["items"].as_array().cloned().unwrap_or_default())
}

fn condition(sc: &Value, type_: &str) -> Option<Value> {
    sc["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .cloned()
}

const RESTRICTED_SPEC: &str = r#"  replicas: 2
  app:
    image: shop:1
    port: 3000
  template:
    metadata:
      labels:
        team: web
    env:
    - name: SHOP_MODE
      value: restricted
    volumes:
    - name: cache
      emptyDir: {}
    volumeMounts:
    - name: cache
      mountPath: /var/cache/shop
    securityContext:
      runAsUser: 10001
"#;

#[test]
fn restricted_namespace_admits_the_node_pods_and_refuses_a_plain_one() {
    let Some((plane, opns, ns)) = setup("restricted", "restricted") else {
        return;
    };
    plane.enforce_restricted(&ns);

    // PodSecurity admission is on and enforcing here: a plain pod is refused.
    let plain = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: plain\n  namespace: {ns}\nspec:\n  containers:\n  - name: c\n    image: busybox\n"
    );
    let refused = plane
        .apply(&plain)
        .expect_err("a plain pod is refused in a restricted namespace");
    assert!(refused.contains("PodSecurity"), "{refused}");

    // The chart's operator pod is admitted (server-side dry run of its pod template).
    let chart = repo_root().join("charts/tribe-operator");
    let rendered = run(std::process::Command::new(require_tool("helm")).args([
        "template",
        "tribe",
        chart.to_str().unwrap(),
        "--namespace",
        &ns,
    ]))
    .unwrap_or_else(|e| panic!("helm template: {e}"));
    let dep = yaml_docs(&rendered)
        .into_iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("the chart renders the operator Deployment");
    let mut spec = dep["spec"]["template"]["spec"].clone();
    // Its ServiceAccount is not installed here; Pod Security does not look at it.
    spec.as_object_mut().unwrap().remove("serviceAccountName");
    let pod = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "operator-pod", "namespace": ns},
        "spec": spec,
    });
    plane
        .k_stdin(&["create", "--dry-run=server", "-f", "-"], &pod.to_string())
        .unwrap_or_else(|e| panic!("the chart's operator pod is refused by PodSecurity: {e}"));

    // A template that loosens the security context is refused by the CRD itself.
    for (loosen, says) in [
        ("privileged: true", "may not set privileged"),
        (
            "allowPrivilegeEscalation: true",
            "may not allow privilege escalation",
        ),
        (
            "capabilities: {add: [NET_ADMIN]}",
            "may not add capabilities",
        ),
        ("runAsNonRoot: false", "may not run as root"),
        (
            "readOnlyRootFilesystem: false",
            "may not make the root filesystem writable",
        ),
    ] {
        let spec = format!("  template:\n    securityContext:\n      {loosen}\n");
        let err = plane
            .apply(&session_cluster("loose", &ns, &spec))
            .expect_err(&format!("{loosen} is refused"));
        assert!(err.contains(says), "{loosen}: {err}");
    }

    let both = "  resources: {requests: {cpu: 100m}}\n  template:\n    resources: {requests: {cpu: 100m}}\n";
    let err = plane
        .apply(&session_cluster("both", &ns, both))
        .expect_err("resources in two places are refused");
    assert!(err.contains("not both"), "{err}");

    let _op = Operator::start("op-restricted", &plane.kubeconfig, &opns, &[]);
    plane
        .apply(&session_cluster("shop", &ns, RESTRICTED_SPEC))
        .unwrap();
    let selector = "app.kubernetes.io/instance=shop,app.kubernetes.io/name=tribe-node";
    let pods = wait_for("2 node pods created by the ReplicaSet", LONG, || {
        let failed = items(
            &plane,
            &ns,
            &["events", "--field-selector", "reason=FailedCreate"],
        )?;
        if let Some(e) = failed.first() {
            panic!("the ReplicaSet could not create a pod: {}", e["message"]);
        }
        let pods = items(&plane, &ns, &["pods", "-l", selector])?;
        if pods.len() == 2 {
            Ok(pods)
        } else {
            Err(format!("{} pods", pods.len()))
        }
    });
    let pod = &pods[0]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let containers = pod["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 2, "the node and the app");
    for c in containers {
        let sc = &c["securityContext"];
        assert_eq!(sc["runAsUser"], 10001, "{}", c["name"]);
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{}", c["name"]);
        assert!(
            c["env"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["name"] == "SHOP_MODE"),
            "{} has the template's env",
            c["name"]
        );
    }
    assert_eq!(pods[0]["metadata"]["labels"]["team"], "web");
}

#[test]
fn a_service_of_someone_else_is_left_alone_until_it_is_gone() {
    let Some((plane, opns, ns)) = setup("foreign", "foreign") else {
        return;
    };
    // A user's Service with the name of the cluster's app Service.
    let theirs = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: shop\n  namespace: {ns}\n  labels:\n    owner: someone-else\nspec:\n  selector:\n    app: legacy\n  ports:\n  - name: web\n    port: 80\n    targetPort: 8000\n"
    );
    plane.apply(&theirs).unwrap();
    let before = plane.get_json(&["-n", &ns, "service", "shop"]).unwrap();

    let _op = Operator::start("op-foreign", &plane.kubeconfig, &opns, &[]);
    plane
        .apply(&session_cluster("shop", &ns, "  replicas: 1\n"))
        .unwrap();
    let cond = wait_for("ChildrenOwned=False", LONG, || {
        let sc = plane.get_json(&["-n", &ns, "sessioncluster", "shop"])?;
        match condition(&sc, "ChildrenOwned") {
            Some(c) if c["status"] == "False" => Ok(c),
            other => Err(format!("{other:?}")),
        }
    });
    assert_eq!(cond["reason"], "Conflict");
    assert!(
        cond["message"].as_str().unwrap().contains("Service/shop"),
        "{cond}"
    );
    let event = wait_for("a Conflict Event", LONG, || {
        let evs = items(&plane, &ns, &["events"])?;
        evs.into_iter()
            .find(|e| {
                e["reason"] == "Conflict"
                    && e["involvedObject"]["kind"] == "SessionCluster"
                    && e["related"]["name"] == "shop"
            })
            .ok_or_else(|| "none yet".to_string())
    });
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["related"]["kind"], "Service");
    // The other children are there (the reconcile went on).
    for (kind, name) in [
        ("deployment", "shop"),
        ("service", "shop-members"),
        ("secret", "shop-key"),
    ] {
        wait_for(&format!("{kind}/{name}"), LONG, || {
            plane.get_json(&["-n", &ns, kind, name]).map(|_| ())
        });
    }
    // Untouched: same resourceVersion, no owner, its own selector and ports.
    let now = plane.get_json(&["-n", &ns, "service", "shop"]).unwrap();
    assert_eq!(
        now["metadata"]["resourceVersion"], before["metadata"]["resourceVersion"],
        "the operator wrote to someone else's Service"
    );
    assert!(now["metadata"]["ownerReferences"].is_null());
    assert_eq!(now["spec"]["selector"], before["spec"]["selector"]);

    // Gone: the operator creates its own and the condition clears.
    plane.k(&["-n", &ns, "delete", "service", "shop", "--wait=true"]);
    let sc_uid = plane
        .get_json(&["-n", &ns, "sessioncluster", "shop"])
        .unwrap()["metadata"]["uid"]
        .clone();
    let ours = wait_for("the operator's own Service shop", LONG, || {
        let svc = plane.get_json(&["-n", &ns, "service", "shop"])?;
        let owned = svc["metadata"]["ownerReferences"]
            .as_array()
            .is_some_and(|o| o.iter().any(|r| r["uid"] == sc_uid));
        if owned {
            Ok(svc)
        } else {
            Err("not ours yet".into())
        }
    });
    assert_eq!(
        ours["spec"]["selector"]["app.kubernetes.io/instance"], "shop",
        "{ours}"
    );
    wait_for("ChildrenOwned=True", LONG, || {
        let sc = plane.get_json(&["-n", &ns, "sessioncluster", "shop"])?;
        match condition(&sc, "ChildrenOwned") {
            Some(c) if c["status"] == "True" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
}

/// The template policy on a real API server: what is always refused is refused by the
/// CRD's CEL rules at apply time; a hostPath volume or a ServiceAccount passes the API
/// server but the operator refuses it (`Degraded`, `InvalidSpec`) and creates no pods,
/// until it runs with its allow flag.
#[test]
fn template_policy_refuses_node_level_pods_unless_allowed() {
    let Some((plane, opns, ns)) = setup("tplpolicy", "tplpolicy") else {
        return;
    };
    for (spec, says) in [
        (
            "  template:\n    volumes:\n    - name: src\n      gitRepo: {repository: 'https://example.com/x.git'}\n",
            "may not use gitRepo",
        ),
        (
            "  template:\n    volumeMounts:\n    - {name: x, mountPath: /x, mountPropagation: Bidirectional}\n",
            "may not use Bidirectional",
        ),
    ] {
        let err = plane
            .apply(&session_cluster("never", &ns, spec))
            .expect_err(says);
        assert!(err.contains(says), "{says}: {err}");
    }

    let host_path = "  replicas: 1\n  template:\n    volumes:\n    - name: host\n      hostPath: {path: /var/lib}\n    volumeMounts:\n    - {name: host, mountPath: /host}\n";
    let account = "  replicas: 1\n  template:\n    serviceAccountName: builder\n";
    let degraded = |name: &str, says: &str| {
        wait_for(&format!("{name}: Degraded/InvalidSpec"), LONG, || {
            let sc = plane.get_json(&["-n", &ns, "sessioncluster", name])?;
            match condition(&sc, "Degraded") {
                Some(c) if c["status"] == "True" && c["reason"] == "InvalidSpec" => Ok(c),
                other => Err(format!("{other:?}")),
            }
        });
        let sc = plane
            .get_json(&["-n", &ns, "sessioncluster", name])
            .unwrap();
        let msg = condition(&sc, "Degraded").unwrap()["message"].to_string();
        assert!(msg.contains(says), "{name}: {msg}");
        assert!(
            plane.get_json(&["-n", &ns, "deployment", name]).is_err(),
            "{name}: no workload may be created"
        );
    };
    {
        let _op = Operator::start("op-strict", &plane.kubeconfig, &opns, &[]);
        plane
            .apply(&session_cluster("host", &ns, host_path))
            .unwrap();
        plane
            .apply(&session_cluster("account", &ns, account))
            .unwrap();
        degraded("host", "--allow-node-level-pod-fields");
        degraded("account", "--allow-template-service-account");
    }
    let _op = Operator::start(
        "op-allowing",
        &plane.kubeconfig,
        &opns,
        &[("TRIBE_OPERATOR_ALLOW_NODE_LEVEL_POD_FIELDS", "true")],
    );
    let dep = wait_for("the hostPath cluster's Deployment", LONG, || {
        plane.get_json(&["-n", &ns, "deployment", "host"])
    });
    let vols = dep["spec"]["template"]["spec"]["volumes"].to_string();
    assert!(vols.contains("hostPath"), "{vols}");
    // The ServiceAccount still needs its own flag.
    degraded("account", "--allow-template-service-account");
}
