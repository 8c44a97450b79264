//! The whole product end to end on a real control plane with pods (`../shared/k8s` and
//! its podrunner; PODS.md): `helm install` the chart (the operator runs as a pod with the
//! chart's RBAC), `kubectl apply` two SessionClusters from `examples/` — one with
//! `membership: multicast`, one with `membership: dns` — and, for both at once, drive one
//! browser (one cookie jar, 300 sequential `POST /counter`) through the ingress stand-in
//! (127.0.0.1:18080) while `kubectl scale` goes 3 → 5 → 2, a pod is deleted and a spec
//! change rolls every pod. Asserted:
//!
//! - every answer is the previous counter + 1, and none is an error (no 5xx);
//! - every pod that starts after the session exists becomes Ready (Kubernetes) only with
//!   its state transfer done: at that moment its `/cluster` says ready and holds the
//!   session, and its `tribe_state_transfer_sessions` says the transfer delivered it;
//! - the ingress answers from exactly the expected pods after every step;
//! - the SessionCluster's status (and `kubectl get sessionclusters`) shows the members and
//!   sessions the nodes report themselves;
//! - deleting the SessionClusters and `helm uninstall` leave nothing behind.
//!
//! One control plane, one podrunner, one operator install for both clusters; the two
//! scenarios run in parallel and every wait is on an observed event (a pod watch, the
//! ingress answering, the status), bounded. Skipped (printed) without `../shared/k8s` or
//! without root. The operator and the nodes run from the images `scripts/images` builds out
//! of the binaries next to the operator's (`cargo build --workspace --bins`, as
//! `scripts/test` does): in their own root, as their non-root user.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufReader;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

/// The chart's release and namespace.
const RELEASE: &str = "tribe-operator";
const OPERATOR_NS: &str = "tribe-system";
/// Requests of the browser in each scenario.
const REQUESTS: i64 = 300;
/// Requests sent before the first change (the session exists before any pod joins).
const WARMUP: i64 = 10;
/// Requests at most while one change is under way; the rest go after the last change.
const PER_CHANGE: usize = 50;
/// Spacing of the requests while a change is under way (so they span it).
const PACE: Duration = Duration::from_millis(200);
/// Bound for one change (pods started, joined, ready, ingress updated).
const CHANGE: Duration = Duration::from_secs(150);
/// The node's admin port (`/cluster`, `/metrics`).
const ADMIN_PORT: u16 = 9090;

#[test]
fn e2e_sessions_survive_scaling_pod_loss_and_a_rolling_update() {
    let started = Instant::now();
    // The operator and node run from the images scripts/images builds (support/images.rs).
    let Some(plane) = plane_with_pods("e2e", |d| oci_images_file(d, &[])) else {
        return;
    };
    eprintln!(
        "[e2e] control plane and podrunner up at {:?}",
        started.elapsed()
    );
    let scenarios = [
        Scenario::new("multicast.yaml", "e2e-multicast"),
        Scenario::new("dns.yaml", "e2e-dns"),
    ];
    // The namespaces exist first: the chart grants Secrets in each by a Role of its own.
    for s in &scenarios {
        plane.create_namespace(&s.ns);
    }
    let secret_namespaces = format!(
        "rbac.secretNamespaces={{{}}}",
        scenarios
            .iter()
            .map(|s| s.ns.as_str())
            .collect::<Vec<_>>()
            .join(",")
    );
    helm_install(&plane, RELEASE, OPERATOR_NS, &[&secret_namespaces], true);
    eprintln!(
        "[e2e] operator installed (a pod) at {:?}",
        started.elapsed()
    );
    for s in &scenarios {
        assert_eq!(s.membership, s.file.file_stem().unwrap().to_str().unwrap());
    }
    std::thread::scope(|scope| {
        let runs: Vec<_> = scenarios
            .iter()
            .map(|s| (s, scope.spawn(|| s.run(&plane, started))))
            .collect();
        let mut failed = vec![];
        for (s, run) in runs {
            if let Err(panic) = run.join() {
                let msg = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|m| m.to_string()))
                    .unwrap_or_default();
                failed.push(format!("{} ({}): {msg}", s.name, s.membership));
            }
        }
        assert!(
            failed.is_empty(),
            "scenarios failed:\n{}",
            failed.join("\n")
        );
    });
    eprintln!("[e2e] both scenarios done at {:?}", started.elapsed());

    // Deleting the SessionClusters removes everything the operator made (owner references,
    // garbage collector) and the pods; `helm uninstall` removes the operator.
    for s in &scenarios {
        plane.k(&[
            "-n",
            &s.ns,
            "delete",
            "-f",
            s.file.to_str().unwrap(),
            "--wait=true",
            "--timeout=120s",
        ]);
    }
    for s in &scenarios {
        s.assert_nothing_left(&plane, started);
    }
    eprintln!(
        "[e2e] SessionClusters deleted, nothing of them left, at {:?}",
        started.elapsed()
    );
    helm_uninstall(&plane, RELEASE, OPERATOR_NS);
    eprintln!("[e2e] helm uninstall done at {:?}", started.elapsed());
    assert_release_gone(&plane, RELEASE, OPERATOR_NS, false);
    wait_for("the operator pod to be gone", CHANGE, || {
        let left = plane.try_k(&["-n", OPERATOR_NS, "get", "pods", "-o", "name"])?;
        if left.trim().is_empty() {
            Ok(())
        } else {
            Err(left)
        }
    });
    // Nothing of the release is left in its namespace but the leader Lease: the operator
    // creates it at run time (as client-go's leader election does), so no release owns it.
    wait_for(
        &format!("{OPERATOR_NS} to hold only the Lease"),
        CHANGE,
        || {
            let out = plane.try_k(&[
            "-n",
            OPERATOR_NS,
            "get",
            "deployments,replicasets,pods,services,serviceaccounts,roles,rolebindings,configmaps,secrets,leases",
            "-o",
            "name",
        ])?;
            let left: Vec<&str> = out
                .lines()
                .filter(|l| {
                    !matches!(*l, "serviceaccount/default" | "configmap/kube-root-ca.crt")
                        && !l.starts_with("secret/default-token-")
                })
                .collect();
            if left == ["lease.coordination.k8s.io/tribe-operator"] {
                Ok(())
            } else {
                Err(format!("left: {left:?}"))
            }
        },
    );
    let lease = plane
        .get_json(&["-n", OPERATOR_NS, "lease", "tribe-operator"])
        .unwrap();
    eprintln!(
        "[e2e] the leader Lease stays after the uninstall: holder {}, renewed {}",
        lease["spec"]["holderIdentity"], lease["spec"]["renewTime"]
    );
    // No pod sandbox is left on the node (the podrunner's network namespaces).
    wait_for("every pod network namespace to be gone", CHANGE, || {
        let out = run(Command::new("ip").args(["netns", "list"]))?;
        let left: Vec<&str> = out.lines().filter(|l| l.starts_with("lab-")).collect();
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("{left:?}"))
        }
    });
    eprintln!("[e2e] torn down, nothing left, at {:?}", started.elapsed());
}

/// One SessionCluster example driven through the whole story.
struct Scenario {
    /// `examples/<file>`.
    file: PathBuf,
    /// The namespace it is applied in.
    ns: String,
    /// Its metadata.name.
    name: String,
    /// Its spec.membership.
    membership: String,
    /// Its Ingress host.
    host: String,
}

impl Scenario {
    fn new(example: &str, ns: &str) -> Scenario {
        let file = repo_root().join("examples").join(example);
        let text =
            std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let sc = yaml_docs(&text).remove(0);
        let s = |v: &Value| {
            v.as_str()
                .unwrap_or_else(|| panic!("{example}: {v}"))
                .to_string()
        };
        assert_eq!(sc["spec"]["replicas"], 3, "{example} starts with 3 nodes");
        assert_eq!(
            sc["spec"]["replication"]["mode"], "delta",
            "{example}: every node holds every session (what the asserts rely on)"
        );
        assert_eq!(sc["spec"]["ingress"]["enabled"], true, "{example}: ingress");
        Scenario {
            file,
            ns: ns.to_string(),
            name: s(&sc["metadata"]["name"]),
            membership: s(&sc["spec"]["membership"]),
            host: s(&sc["spec"]["ingress"]["host"]),
        }
    }

    fn log(&self, started: Instant, what: &str) {
        eprintln!(
            "[e2e {} {:>6.1}s] {what}",
            self.membership,
            started.elapsed().as_secs_f64()
        );
    }

    fn run(&self, plane: &ControlPlane, started: Instant) {
        let watch = PodWatch::start(plane, &self.ns, &self.name);
        plane.k(&["-n", &self.ns, "apply", "-f", self.file.to_str().unwrap()]);
        let first = self.wait_pods(&watch, 3, |_| true);
        self.log(started, &format!("3 nodes ready: {first:?}"));
        // A cold start is not what this test is about: nodes started together may each be
        // ready before they have found each other (DNS lists a pod only once its
        // EndpointSlice entry is published), so the first request waits for the cluster
        // to have formed.
        wait_for(
            &format!("{}: the 3 nodes to see each other", self.name),
            CHANGE,
            || {
                let views = node_views(&watch)?;
                if views.len() == 3 && views.iter().all(|v| v.members == 3) {
                    Ok(())
                } else {
                    Err(format!("{views:?}"))
                }
            },
        );
        self.log(started, "the 3 nodes formed one cluster");

        // The session exists (and is on every node) before any pod joins.
        let mut browser = Browser::new(&self.host);
        for expected in 1..=WARMUP {
            let (n, node) = browser.post_counter().expect("warm-up request");
            assert_eq!(n, expected, "counter from {node}");
        }
        assert!(browser.jar.contains_key("SESSIONID"), "{:?}", browser.jar);
        watch.session_started();
        let pace = Arc::new(Pace::default());
        let client = {
            let pace = pace.clone();
            std::thread::spawn(move || drive(browser, &pace))
        };

        // 3 -> 5 with `kubectl scale` (the scale subresource).
        plane.k(&[
            "-n",
            &self.ns,
            "scale",
            &format!("sessionclusters/{}", self.name),
            "--replicas=5",
        ]);
        let five = self.wait_pods(&watch, 5, |_| true);
        self.log(started, &format!("scaled to 5: {five:?}"));
        self.wait_status_matches_nodes(plane, &watch, 5);
        self.log(started, "status matches the 5 nodes");
        pace.next();

        // 5 -> 2.
        plane.k(&[
            "-n",
            &self.ns,
            "scale",
            &format!("sessionclusters/{}", self.name),
            "--replicas=2",
        ]);
        let two = self.wait_pods(&watch, 2, |_| true);
        self.log(started, &format!("scaled to 2: {two:?}"));
        pace.next();

        // A pod is lost: the Deployment replaces it.
        let victim = two.iter().next().unwrap().clone();
        plane.k(&["-n", &self.ns, "delete", "pod", &victim, "--wait=false"]);
        let replaced = self.wait_pods(&watch, 2, |p| p.name != victim);
        self.log(
            started,
            &format!("{victim} deleted and replaced: {replaced:?}"),
        );
        pace.next();

        // A spec change that changes the pod template: every pod is replaced, one at a
        // time (maxUnavailable 0, maxSurge 1).
        let timeout = "45m";
        plane.k(&[
            "-n",
            &self.ns,
            "patch",
            "sessioncluster",
            &self.name,
            "--type=merge",
            "-p",
            &format!(r#"{{"spec":{{"session":{{"timeout":"{timeout}"}}}}}}"#),
        ]);
        let rolled = self.wait_pods(&watch, 2, |p| p.session_timeout.as_deref() == Some(timeout));
        assert!(
            rolled.is_disjoint(&replaced),
            "the rollout replaced every pod: before {replaced:?}, after {rolled:?}"
        );
        self.log(started, &format!("rolled out: {rolled:?}"));
        pace.finish();

        let Drive { nodes, slowest } = client.join().expect("client thread").unwrap_or_else(|e| {
            panic!(
                "{} client: {e}\n{}",
                self.membership,
                ingress_trouble(plane)
            )
        });
        self.log(
            started,
            &format!(
                "{REQUESTS} requests counted 1..={REQUESTS}, answered by {} nodes; slowest: request {} in {:?}",
                nodes.len(),
                slowest.0,
                slowest.1
            ),
        );
        assert!(
            nodes.is_superset(&rolled),
            "the pods of the rollout served the browser: {nodes:?}, rolled {rolled:?}"
        );
        self.wait_status_matches_nodes(plane, &watch, 2);
        self.log(started, "status matches the 2 nodes");

        let checks = watch.stop();
        // 2 from the scale-up, 1 replacement, 2 from the rollout.
        assert_eq!(
            checks.len(),
            5,
            "every pod started after the session existed was checked when it became ready: {checks:#?}"
        );
        let bad: Vec<_> = checks.iter().filter(|c| c.result.is_err()).collect();
        assert!(
            bad.is_empty(),
            "pods that were Ready before their state transfer delivered the session: {bad:#?}"
        );
        for c in &checks {
            self.log(
                started,
                &format!(
                    "{}: ready after its transfer: {}",
                    c.pod,
                    c.result.as_ref().unwrap()
                ),
            );
        }
    }

    /// Waits until exactly `n` pods of the cluster exist, all ready, none terminating, all
    /// passing `want`, and the ingress answers from exactly those pods; their names.
    fn wait_pods(
        &self,
        watch: &PodWatch,
        n: usize,
        want: impl Fn(&PodInfo) -> bool,
    ) -> BTreeSet<String> {
        let pods = wait_for(
            &format!("{}: exactly {n} ready pods (none terminating)", self.name),
            CHANGE,
            || {
                let pods = watch.pods()?;
                let ok =
                    pods.len() == n && pods.iter().all(|p| p.ready && !p.terminating && want(p));
                if ok {
                    Ok(pods.into_iter().map(|p| p.name).collect::<BTreeSet<_>>())
                } else {
                    Err(format!("{pods:?}"))
                }
            },
        );
        wait_ingress_answers_from(&pods, CHANGE, || {
            Browser::new(&self.host).get_counter_node()
        });
        pods
    }

    /// Waits until the SessionCluster's status (and `kubectl get`) reports what the `n`
    /// nodes report themselves: `n` ready, `n` members, and the one session.
    fn wait_status_matches_nodes(&self, plane: &ControlPlane, watch: &PodWatch, n: i64) {
        wait_for(
            &format!(
                "{}: status = the nodes' own reports ({n} members, 1 session)",
                self.name
            ),
            Duration::from_secs(90),
            || {
                // What the nodes say.
                let views = node_views(watch)?;
                let nodes_agree = views.len() as i64 == n
                    && views
                        .iter()
                        .all(|v| v.ready && v.members == n && v.sessions == Some(1));
                if !nodes_agree {
                    return Err(format!("nodes: {views:?}"));
                }
                // What the operator wrote.
                let sc = plane.get_json(&["-n", &self.ns, "sessionclusters", &self.name])?;
                let st = &sc["status"];
                let ready_cond = st["conditions"]
                    .as_array()
                    .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
                    .map(|c| c["status"].clone());
                if st["replicas"] != n
                    || st["readyReplicas"] != n
                    || st["members"] != n
                    || st["sessions"] != 1
                    || ready_cond != Some(Value::from("True"))
                    || st["observedGeneration"] != sc["metadata"]["generation"]
                {
                    return Err(format!("status {st}; nodes {views:?}"));
                }
                if self.membership == "multicast" {
                    let group = st["multicastGroup"].as_str().unwrap_or("");
                    if !group.starts_with("239.") {
                        return Err(format!("multicast group {group:?}"));
                    }
                }
                // What `kubectl get sessionclusters` prints (the printer columns).
                let table = plane.try_k(&["-n", &self.ns, "get", "sessionclusters", &self.name])?;
                let row = printer_row(&table)?;
                let want = [
                    ("REPLICAS", n.to_string()),
                    ("READY", n.to_string()),
                    ("SESSIONS", "1".into()),
                ];
                for (col, value) in want {
                    if row.get(col) != Some(&value) {
                        return Err(format!(
                            "kubectl get: {col} {:?}, want {value}:\n{table}",
                            row.get(col)
                        ));
                    }
                }
                Ok(())
            },
        );
    }

    /// After the SessionCluster was deleted: nothing of it is left in its namespace, and
    /// the ingress no longer routes its host.
    fn assert_nothing_left(&self, plane: &ControlPlane, started: Instant) {
        wait_for(
            &format!("everything in {} to be gone", self.ns),
            CHANGE,
            || {
                let out = plane.try_k(&[
                    "-n",
                    &self.ns,
                    "get",
                    "sessionclusters,deployments,replicasets,pods,services,endpointslices,poddisruptionbudgets,networkpolicies,ingresses",
                    "-o",
                    "name",
                ])?;
                let secrets = plane.get_json(&["-n", &self.ns, "secrets"])?;
                let mut left: Vec<String> = out.lines().map(String::from).collect();
                left.extend(
                    secrets["items"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|s| s["type"] != "kubernetes.io/service-account-token")
                        .map(|s| {
                            format!("secret/{}", s["metadata"]["name"].as_str().unwrap_or(""))
                        }),
                );
                if left.is_empty() {
                    Ok(())
                } else {
                    Err(format!("left: {left:?}"))
                }
            },
        );
        self.log(started, "nothing of it left in its namespace");
        wait_for(
            &format!("the ingress to stop routing {}", self.host),
            CHANGE,
            || {
                let r = Browser::new(&self.host).request("GET", "/counter")?;
                if r.status == 404 {
                    Ok(())
                } else {
                    Err(format!("status {}", r.status))
                }
            },
        );
    }
}

/// What the ingress stand-in's nginx logged about failed requests (answers other than
/// 200, upstream errors), for a failure message.
fn ingress_trouble(plane: &ControlPlane) -> String {
    let logs = plane.dir.join("podrunner/nginx/logs");
    let read = |f: &str| std::fs::read_to_string(logs.join(f)).unwrap_or_default();
    let access = read("access.log");
    let errors = read("error.log");
    let failed: Vec<&str> = access.lines().filter(|l| !l.contains(" 200 ")).collect();
    let upstream: Vec<&str> = errors.lines().filter(|l| l.contains("[error]")).collect();
    format!(
        "ingress answers other than 200 (nginx access.log):\n{}\nupstream errors (nginx error.log):\n{}",
        failed[failed.len().saturating_sub(20)..].join("\n"),
        upstream[upstream.len().saturating_sub(20)..].join("\n")
    )
}

/// The cells of the one data row of a `kubectl get` table, by column header.
fn printer_row(table: &str) -> Result<BTreeMap<String, String>, String> {
    let mut lines = table.lines();
    let header = lines.next().ok_or("no header")?;
    let row = lines.next().ok_or(format!("no row: {table}"))?;
    Ok(header
        .split_whitespace()
        .map(String::from)
        .zip(row.split_whitespace().map(String::from))
        .collect())
}

/// One node's `/cluster`, in short.
#[derive(Debug)]
#[allow(dead_code)] // `node` is for the failure messages
struct NodeView {
    node: String,
    ready: bool,
    /// Alive members, itself included.
    members: i64,
    sessions: Option<i64>,
}

/// What every pod of the watch says of itself on `/cluster`.
fn node_views(watch: &PodWatch) -> Result<Vec<NodeView>, String> {
    let mut views = vec![];
    for p in watch.pods()? {
        let ip = p.ip.as_deref().ok_or(format!("{} has no IP", p.name))?;
        let v: Value = serde_json::from_str(&lab_get(ip, "/cluster")?)
            .map_err(|e| format!("/cluster of {}: {e}", p.name))?;
        let alive = v["members"]
            .as_array()
            .map(|m| m.iter().filter(|m| m["state"] == "alive").count())
            .unwrap_or(0) as i64;
        views.push(NodeView {
            node: p.name,
            ready: v["ready"] == true,
            members: alive + 1,
            sessions: v["sessions"].as_i64(),
        });
    }
    Ok(views)
}

/// `GET http://<pod ip>:9090<path>` from inside the lab network (pod addresses do not exist
/// in the root namespace); the body of a 2xx answer.
fn lab_get(ip: &str, path: &str) -> Result<String, String> {
    run(Command::new("ip").args([
        "netns",
        "exec",
        "lab",
        "curl",
        "-sSf",
        "--max-time",
        "3",
        &format!("http://{ip}:{ADMIN_PORT}{path}"),
    ]))
}

/// What the pod watch knows of one pod.
#[derive(Clone, Debug)]
struct PodInfo {
    name: String,
    ip: Option<String>,
    /// The Ready condition is True.
    ready: bool,
    /// It has a deletionTimestamp.
    terminating: bool,
    /// TRIBE_SESSION_TIMEOUT of its node container.
    session_timeout: Option<String>,
}

/// A pod that became Ready after the session existed, checked at that moment.
#[derive(Debug)]
struct ReadyCheck {
    pod: String,
    /// What its `/cluster` and `/metrics` said.
    result: Result<String, String>,
}

#[derive(Default)]
struct WatchState {
    /// By uid.
    pods: BTreeMap<String, PodInfo>,
    /// Uids of pods added after the session existed.
    joiners: BTreeSet<String>,
    session_started: bool,
    checks: Vec<ReadyCheck>,
    /// Why the watch stopped, if it did.
    ended: Option<String>,
}

/// `kubectl get pods --watch` on one SessionCluster's pods: the current set, and a check of
/// every joiner the moment Kubernetes marks it Ready.
struct PodWatch {
    child: Child,
    state: Arc<Mutex<WatchState>>,
    reader: Option<JoinHandle<()>>,
}

impl PodWatch {
    fn start(plane: &ControlPlane, ns: &str, name: &str) -> PodWatch {
        // No --request-timeout: it would end the watch.
        let mut child = Command::new(require_tool("kubectl"))
            .arg("--kubeconfig")
            .arg(&plane.kubeconfig)
            .args([
                "-n",
                ns,
                "get",
                "pods",
                "--watch",
                "--output-watch-events",
                "-o",
                "json",
            ])
            .arg(format!("--selector=app.kubernetes.io/instance={name}"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("kubectl get pods --watch");
        let stdout = child.stdout.take().unwrap();
        let state = Arc::new(Mutex::new(WatchState::default()));
        let reader = {
            let state = state.clone();
            std::thread::spawn(move || {
                let events = serde_json::Deserializer::from_reader(BufReader::new(stdout))
                    .into_iter::<Value>();
                for ev in events {
                    match ev {
                        Ok(ev) => on_event(&state, &ev),
                        Err(e) => {
                            state.lock().unwrap().ended = Some(format!("bad watch output: {e}"));
                            return;
                        }
                    }
                }
                state.lock().unwrap().ended = Some("kubectl get pods --watch ended".into());
            })
        };
        PodWatch {
            child,
            state,
            reader: Some(reader),
        }
    }

    /// From now on, added pods must receive the session by their state transfer.
    fn session_started(&self) {
        self.state.lock().unwrap().session_started = true;
    }

    /// The pods that exist now (terminating ones included).
    fn pods(&self) -> Result<Vec<PodInfo>, String> {
        let st = self.state.lock().unwrap();
        if let Some(why) = &st.ended {
            return Err(why.clone());
        }
        Ok(st.pods.values().cloned().collect())
    }

    /// Stops watching; the readiness checks made.
    fn stop(mut self) -> Vec<ReadyCheck> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        std::mem::take(&mut self.state.lock().unwrap().checks)
    }
}

impl Drop for PodWatch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn on_event(state: &Mutex<WatchState>, ev: &Value) {
    let pod = &ev["object"];
    let Some(uid) = pod["metadata"]["uid"].as_str() else {
        return;
    };
    let info = PodInfo {
        name: pod["metadata"]["name"].as_str().unwrap_or("").to_string(),
        ip: pod["status"]["podIP"].as_str().map(String::from),
        ready: pod["status"]["conditions"].as_array().is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        }),
        terminating: pod["metadata"]["deletionTimestamp"].is_string(),
        session_timeout: pod["spec"]["containers"][0]["env"]
            .as_array()
            .and_then(|env| env.iter().find(|e| e["name"] == "TRIBE_SESSION_TIMEOUT"))
            .and_then(|e| e["value"].as_str())
            .map(String::from),
    };
    let check = {
        let mut st = state.lock().unwrap();
        if ev["type"] == "DELETED" {
            st.pods.remove(uid);
            return;
        }
        if !st.pods.contains_key(uid) && st.session_started {
            st.joiners.insert(uid.to_string());
        }
        let was_ready = st.pods.get(uid).is_some_and(|p| p.ready);
        let check = info.ready && !was_ready && st.joiners.contains(uid);
        st.pods.insert(uid.to_string(), info.clone());
        check
    };
    if check {
        // Right after Kubernetes marked it Ready (the readiness probe got /readyz 200).
        let result = info
            .ip
            .as_deref()
            .ok_or_else(|| "no pod IP".to_string())
            .and_then(transfer_check);
        state.lock().unwrap().checks.push(ReadyCheck {
            pod: info.name,
            result,
        });
    }
}

/// A ready joiner's own account: ready, holding the session, and the session came with
/// the join's state transfer.
fn transfer_check(ip: &str) -> Result<String, String> {
    let view: Value = serde_json::from_str(&lab_get(ip, "/cluster")?).map_err(|e| e.to_string())?;
    let metrics = lab_get(ip, "/metrics")?;
    let transferred = sum_metric(&metrics, "tribe_state_transfer_sessions", None);
    let seconds = sum_metric(&metrics, "tribe_state_transfer_seconds", None);
    let summary = format!(
        "ready {}, sessions {}, state transfer delivered {transferred} in {seconds:.3} s",
        view["ready"], view["sessions"]
    );
    if view["ready"] == true && view["sessions"].as_i64().unwrap_or(0) >= 1 && transferred >= 1.0 {
        Ok(summary)
    } else {
        Err(summary)
    }
}

/// Spreads the browser's requests over the changes: at most [`PER_CHANGE`] per change,
/// [`PACE`] apart, and the rest at full speed once the last change is done.
#[derive(Default)]
struct Pace {
    /// (change number, all changes done).
    state: Mutex<(usize, bool)>,
    changed: Condvar,
}

impl Pace {
    /// The current change is done; the next begins.
    fn next(&self) {
        self.state.lock().unwrap().0 += 1;
        self.changed.notify_all();
    }

    /// Every change is done.
    fn finish(&self) {
        let mut st = self.state.lock().unwrap();
        st.0 += 1;
        st.1 = true;
        self.changed.notify_all();
    }
}

/// What the browser saw.
struct Drive {
    /// Nodes that answered.
    nodes: BTreeSet<String>,
    /// The slowest answer: (request number, time).
    slowest: (i64, Duration),
}

/// The browser's part: the remaining requests, each answer the previous + 1.
fn drive(mut browser: Browser, pace: &Pace) -> Result<Drive, String> {
    let mut nodes = BTreeSet::new();
    let mut slowest = (0, Duration::ZERO);
    let (mut change, mut used) = (0, 0);
    for expected in WARMUP + 1..=REQUESTS {
        // Wait for budget: the current change's, or the next change's.
        {
            let mut st = pace.state.lock().unwrap();
            loop {
                if st.0 != change {
                    (change, used) = (st.0, 0);
                }
                if st.1 || used < PER_CHANGE {
                    break;
                }
                st = pace
                    .changed
                    .wait_timeout(st, CHANGE)
                    .map(|(g, _)| g)
                    .unwrap();
            }
        }
        let sent = Instant::now();
        let (n, node) = browser
            .post_counter()
            .map_err(|e| format!("request {expected}: {e}"))?;
        if sent.elapsed() > slowest.1 {
            slowest = (expected, sent.elapsed());
        }
        if n != expected {
            return Err(format!("request {expected}: counter {n} from {node}"));
        }
        nodes.insert(node);
        used += 1;
        // Spread the budget over the change (a change that ends wakes us at once).
        let st = pace.state.lock().unwrap();
        if !st.1 && st.0 == change {
            drop(pace.changed.wait_timeout(st, PACE).unwrap());
        }
    }
    Ok(Drive { nodes, slowest })
}
