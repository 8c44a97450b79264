//! Day two, with the real parts:
//!
//! - `every_metric_of_the_dashboard_and_the_alerts_exists`: scrapes a running `tribe-node`
//!   and a running `tribe-operator` and checks that every `tribe_*` series the Grafana
//!   dashboard (`charts/tribe-operator/dashboards/tribe.json`) and the alerts
//!   (`alerts/tribe-rules.yaml`) use is one they export; `promtool` checks the rules.
//! - `prometheus_scrapes_every_node_and_kubectl_tribe_reaches_them`: on a control plane
//!   with pods, `helm install` the chart (the operator as a pod) and `helm test` it, run a
//!   SessionCluster (with `spec.monitoring.podMonitor` while the Prometheus Operator's CRDs
//!   are absent: harmless), start Debian's Prometheus with
//!   `examples/prometheus/prometheus.yml` (the operator's HTTP service discovery) and the
//!   alert rules, and wait until its query API returns `tribe_*` series for every pod and
//!   the operator's gauges; every dashboard query runs. Then `kubectl-tribe` status,
//!   sessions, inspect and expire through the pod proxy, with the admin's kubeconfig and
//!   with a ServiceAccount holding only the documented RBAC (without `get` on the key
//!   Secret the session commands say so; without `delete` on pods/proxy `expire` is
//!   refused); a node's admin port answers nothing about sessions without the token.
//!
//! Skipped (printed) without a control plane or without root, like the other suites.

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

const RELEASE: &str = "tribe-operator";
const OPERATOR_NS: &str = "tribe-system";
const NS: &str = "day2";
const NAME: &str = "shop";
const WAIT: Duration = Duration::from_secs(120);

fn chart_file(rel: &str) -> PathBuf {
    repo_root().join("charts/tribe-operator").join(rel)
}

/// Every `tribe_*` name in a PromQL expression.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = expr.as_bytes();
    let mut i = 0;
    while let Some(pos) = expr[i..].find("tribe_") {
        let start = i + pos;
        let boundary =
            start == 0 || !(b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'_');
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
            end += 1;
        }
        if boundary {
            out.insert(expr[start..end].to_string());
        }
        i = end;
    }
    out
}

/// The PromQL of every dashboard panel target.
fn dashboard_exprs() -> Vec<String> {
    let text = std::fs::read_to_string(chart_file("dashboards/tribe.json")).unwrap();
    let d: Value = serde_json::from_str(&text).expect("dashboard is JSON");
    let mut out = vec![];
    for p in d["panels"].as_array().expect("panels") {
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {} has no query", p["title"]);
        for t in targets {
            out.push(t["expr"].as_str().expect("expr").to_string());
        }
    }
    for v in d["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["definition"].as_str() {
            out.push(q.to_string());
        }
    }
    out
}

/// Where the alerts' `runbook_url`s point: docs/runbooks.md on the project's home.
const RUNBOOKS_URL: &str = "https://github.com/tribe-rs/tribe/blob/main/docs/runbooks.md";

/// The text of the section of docs/runbooks.md whose heading's anchor is `anchor`
/// (GitHub's: the heading lower-cased).
fn runbook_section(anchor: &str) -> Option<String> {
    let text = std::fs::read_to_string(repo_root().join("docs/runbooks.md")).unwrap();
    let mut sections = text.split("\n## ").skip(1);
    sections
        .find(|s| {
            s.lines()
                .next()
                .is_some_and(|h| h.trim().to_lowercase() == anchor)
        })
        .map(|s| {
            s.split_once('\n')
                .map_or("", |(_, body)| body)
                .trim()
                .to_string()
        })
}

/// The expression of every alert rule.
fn rule_exprs() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(chart_file("alerts/tribe-rules.yaml")).unwrap();
    let v: Value = serde_saphyr::from_str(&text).unwrap();
    let mut out = vec![];
    for g in v["groups"].as_array().unwrap() {
        for r in g["rules"].as_array().unwrap() {
            let name = r["alert"].as_str().unwrap().to_string();
            let url = r["annotations"]["runbook_url"].as_str().unwrap_or_default();
            let anchor = url
                .strip_prefix(RUNBOOKS_URL)
                .and_then(|a| a.strip_prefix('#'))
                .unwrap_or_else(|| panic!("{name}: runbook_url {url:?} is not {RUNBOOKS_URL}#…"));
            let section = runbook_section(anchor)
                .unwrap_or_else(|| panic!("{name}: no section #{anchor} in docs/runbooks.md"));
            assert!(
                section.len() > 100,
                "{name}: its runbook says little: {section}"
            );
            assert!(
                r["annotations"]["description"].is_string(),
                "{name} has a description"
            );
            if r["labels"]["severity"] == "critical" {
                assert!(r["for"].is_string(), "critical alert {name} has a `for`");
            }
            assert!(
                r["annotations"]["summary"].is_string(),
                "{name} has a summary"
            );
            out.push((name, r["expr"].as_str().unwrap().to_string()));
        }
    }
    out
}

/// The series names an exposition offers: each family's samples, also for families
/// that have no sample yet (labelled families before their first use).
fn exposed(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            match kind {
                "counter" => {
                    out.insert(format!("{name}_total"));
                }
                "histogram" => {
                    for s in ["_bucket", "_sum", "_count"] {
                        out.insert(format!("{name}{s}"));
                    }
                }
                _ => {
                    out.insert(name.to_string());
                }
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            out.insert(line[..end].to_string());
        }
    }
    out
}

/// A child process killed on drop.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            print_tail(&self.log, 40);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(cmd: &mut Command, log: &Path) -> Proc {
    let out = std::fs::File::create(log).unwrap();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    Proc {
        child,
        log: log.to_path_buf(),
    }
}

fn get_ok(addr: SocketAddr, path: &str) -> Result<String, String> {
    let r = http(addr, "GET", path, &[], "", Duration::from_secs(5))?;
    if r.status == 200 {
        Ok(r.body)
    } else {
        Err(format!("GET {path}: {} {}", r.status, r.body))
    }
}

#[test]
fn every_metric_of_the_dashboard_and_the_alerts_exists() {
    let node_bin = workspace_bin("tribe-node").unwrap_or_else(|e| panic!("{e}"));
    let dir = scratch_dir("metric-names");
    let port = |p: u16| format!("127.0.0.1:{p}");
    let admin: SocketAddr = port(free_port()).parse().unwrap();
    let repl: SocketAddr = port(free_port()).parse().unwrap();
    let _node = spawn(
        Command::new(&node_bin).args([
            "--node-id",
            "n1",
            "--insecure",
            "--membership",
            "static",
            "--http-addr",
            &port(free_port()),
            "--admin-addr",
            &admin.to_string(),
            "--replication-addr",
            &repl.to_string(),
        ]),
        &dir.join("node.log"),
    );
    wait_for("the node's /metrics", Duration::from_secs(30), || {
        get_ok(admin, "/metrics")
    });
    // A labelled family appears with its first sample: a peer that sends garbage to the
    // replication port gets its frame rejected (`reason="bad_magic"`).
    {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(repl).unwrap();
        let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n0123456789abcdef0123456789");
    }
    let node_text = wait_for("a rejected frame counted", Duration::from_secs(30), || {
        let t = get_ok(admin, "/metrics")?;
        if t.contains("tribe_frames_rejected_total{") {
            Ok(t)
        } else {
            Err("not yet".into())
        }
    });
    // The operator serves /metrics while it retries an API server that is not there.
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: none, cluster: {{server: \"https://127.0.0.1:{}\"}}}}]\n\
             users: [{{name: none, user: {{token: x}}}}]\ncontexts: [{{name: none, context: {{cluster: none, user: none}}}}]\ncurrent-context: none\n",
            free_port()
        ),
    )
    .unwrap();
    let op = Operator::start("metric-names", &kubeconfig, "default", &[]);
    let op_text = op.admin_get("/metrics").unwrap();

    let mut have = exposed(&node_text);
    have.extend(exposed(&op_text));
    // The operator's labelled families get their first sample from a reconcile (the
    // per-SessionCluster gauges) or a failure: the same registry, in process, after one
    // of each. The test below sees them from a real operator through Prometheus.
    let m = tribe_operator::metrics::Metrics::default();
    m.observe_cluster(
        "ns",
        "c",
        3,
        &tribe_operator::crd::SessionClusterStatus {
            ready_replicas: Some(3),
            members: Some(3),
            sessions: Some(1),
            ..Default::default()
        },
    );
    m.reconcile_failed(&tribe_operator::Error::Timeout("reconcile"));
    let registered = exposed(&m.render());
    for name in exposed(&op_text) {
        assert!(
            registered.contains(&name),
            "the running operator's {name} is in the registry"
        );
    }
    have.extend(registered);
    let mut used = BTreeSet::new();
    for e in dashboard_exprs() {
        let names = metric_names(&e);
        assert!(
            !names.is_empty(),
            "a dashboard query without a tribe metric: {e}"
        );
        used.extend(names);
    }
    let rules = rule_exprs();
    assert!(rules.len() >= 6, "{rules:?}");
    for (name, e) in &rules {
        let names = metric_names(e);
        assert!(!names.is_empty(), "{name}: {e}");
        used.extend(names);
    }
    let missing: Vec<&String> = used.iter().filter(|n| !have.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "used by the dashboard or the alerts but exported by neither the node nor the operator: {missing:?}\nexported: {have:?}"
    );
    // The panels and alerts are all there.
    for want in [
        "tribe_session_saves_total",
        "tribe_session_loads_total",
        "tribe_sessions",
        "tribe_replication_lag_seconds_bucket",
        "tribe_deltas_sent_total",
        "tribe_bytes_sent_total",
        "tribe_remote_fetches_total",
        "tribe_forwards_sent_total",
        "tribe_sync_timeouts_total",
        "tribe_frames_rejected_total",
        "tribe_state_transfer_seconds",
        "tribe_operator_cluster_members",
        "tribe_operator_cluster_replicas",
        "tribe_ready",
        "tribe_resident_memory_bytes",
        "tribe_memory_limit_bytes",
    ] {
        assert!(used.contains(want), "{want} is not used: {used:?}");
    }
    eprintln!("[metric-names] {} names used, all exported", used.len());

    let promtool = require_tool("promtool");
    let out = run(Command::new(promtool)
        .args(["check", "rules"])
        .arg(chart_file("alerts/tribe-rules.yaml")))
    .unwrap_or_else(|e| panic!("promtool check rules: {e}"));
    assert!(out.contains("SUCCESS"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------

/// The Prometheus query API: the result vector of an instant query.
fn query(prom: SocketAddr, q: &str) -> Result<Vec<Value>, String> {
    let path = format!("/api/v1/query?query={}", urlencode(q));
    let body = get_ok(prom, &path)?;
    let v: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
    if v["status"] != "success" {
        return Err(format!("{q}: {body}"));
    }
    Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// (name, IP) of the SessionCluster's running pods.
fn node_pods(plane: &ControlPlane) -> Result<Vec<(String, String)>, String> {
    let pods = plane.get_json(&[
        "-n",
        NS,
        "pods",
        "-l",
        &format!("app.kubernetes.io/instance={NAME}"),
    ])?;
    let mut out = vec![];
    for p in pods["items"].as_array().cloned().unwrap_or_default() {
        if p["status"]["phase"] != "Running" || p["metadata"]["deletionTimestamp"].is_string() {
            continue;
        }
        let ip = p["status"]["podIP"].as_str().ok_or("no IP yet")?;
        out.push((
            p["metadata"]["name"].as_str().unwrap().to_string(),
            ip.to_string(),
        ));
    }
    out.sort();
    Ok(out)
}

/// A browser: a cookie jar over the raw HTTP helper.
#[derive(Default)]
struct Browser {
    cookies: Vec<(String, String)>,
}

impl Browser {
    fn send(&mut self, addr: SocketAddr, method: &str, path: &str, body: &str) -> HttpResponse {
        let cookie = self
            .cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        let mut headers = vec![("Content-Type", "application/json")];
        if !cookie.is_empty() {
            headers.push(("Cookie", cookie.as_str()));
        }
        let r = http(addr, method, path, &headers, body, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        for (n, v) in &r.headers {
            if n != "set-cookie" {
                continue;
            }
            let pair = v.split(';').next().unwrap_or("");
            if let Some((k, val)) = pair.split_once('=') {
                self.cookies.retain(|(ck, _)| ck != k.trim());
                if !val.is_empty() {
                    self.cookies
                        .push((k.trim().to_string(), val.trim().to_string()));
                }
            }
        }
        assert!(r.status < 300, "{method} {path}: {} {}", r.status, r.body);
        r
    }

    fn cookie(&self, name: &str) -> Option<&str> {
        self.cookies
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn tribe(kubeconfig: &Path, args: &[&str]) -> Result<String, String> {
    let bin = workspace_bin("kubectl-tribe").unwrap_or_else(|e| panic!("{e}"));
    run(Command::new(bin)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["-n", NS])
        .args(args))
}

#[test]
fn prometheus_scrapes_every_node_and_kubectl_tribe_reaches_them() {
    let started = Instant::now();
    let prometheus = require_tool("prometheus");
    // The operator and nodes run from the images (support/images.rs).
    let Some(plane) = plane_with_pods("day2", |d| oci_images_file(d, &[])) else {
        return;
    };
    let log = |what: &str| eprintln!("[day2] {what} at {:?}", started.elapsed());
    log("control plane and podrunner up");

    // The chart, with the operator as a pod, and its helm test. The app namespace
    // exists first: the chart grants the operator its Secrets by a Role there.
    plane.create_namespace(NS);
    let secret_namespaces = format!("rbac.secretNamespaces={{{NS}}}");
    helm_install(&plane, RELEASE, OPERATOR_NS, &[&secret_namespaces], true);
    let mut cmd = Command::new(require_tool("helm"));
    cmd.args([
        "test",
        RELEASE,
        "-n",
        OPERATOR_NS,
        "--timeout",
        "120s",
        "--logs",
    ])
    .env("KUBECONFIG", &plane.kubeconfig);
    let out = run(&mut cmd).unwrap_or_else(|e| panic!("helm test failed: {e}"));
    assert!(out.contains("Succeeded"), "{out}");
    log("operator installed, helm test passed");

    // A SessionCluster asking for a PodMonitor without the Prometheus Operator's CRDs.
    let sc = format!(
        "apiVersion: tribe.rs/v1alpha1\nkind: SessionCluster\nmetadata: {{name: {NAME}, namespace: {NS}}}\n\
         spec: {{replicas: 2, membership: dns, monitoring: {{podMonitor: true}}}}\n"
    );
    plane
        .k_stdin(&["apply", "-f", "-"], &sc)
        .unwrap_or_else(|e| panic!("{e}"));
    wait_for("the SessionCluster ready with 2 members", WAIT, || {
        let v = plane.get_json(&["-n", NS, "sessionclusters", NAME])?;
        let s = &v["status"];
        if s["readyReplicas"] == 2 && s["members"] == 2 {
            Ok(())
        } else {
            Err(s.to_string())
        }
    });
    let table = plane.k(&["-n", NS, "get", "sessionclusters"]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "REPLICAS", "READY", "MEMBERS", "SESSIONS", "AGE"]
    );
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row[..4], [NAME, "2", "2", "2"], "{table}");
    wait_for("the MonitoringUnavailable warning", WAIT, || {
        let ev = plane.try_k(&["-n", NS, "get", "events", "-o", "json"])?;
        if ev.contains("MonitoringUnavailable") {
            Ok(())
        } else {
            Err("no event yet".into())
        }
    });
    let pods = wait_for("two running node pods", WAIT, || {
        let p = node_pods(&plane)?;
        if p.len() == 2 {
            Ok(p)
        } else {
            Err(format!("{p:?}"))
        }
    });
    log("SessionCluster ready");

    // Sessions, through the pods' app port (pod IPs are reachable from the node).
    let app = |i: usize| -> SocketAddr { format!("{}:8080", pods[i].1).parse().unwrap() };
    let mut browser = Browser::default();
    for i in 0..3 {
        browser.send(app(i % 2), "POST", "/counter", "");
    }
    browser.send(app(1), "PUT", "/attrs/card", "\"4111-very-secret\"");
    let id = browser
        .cookie("SESSIONID")
        .expect("a session cookie")
        .to_string();
    let mut other = Browser::default();
    other.send(app(0), "POST", "/counter", "");
    let other_id = other.cookie("SESSIONID").unwrap().to_string();

    // Prometheus with the example configuration: the operator's HTTP SD for the nodes.
    let op_pod = plane
        .get_json(&[
            "-n",
            OPERATOR_NS,
            "pods",
            "-l",
            "app.kubernetes.io/name=tribe-operator",
        ])
        .unwrap();
    let op_ip = op_pod["items"][0]["status"]["podIP"]
        .as_str()
        .expect("operator pod IP")
        .to_string();
    let dir = scratch_dir("prometheus");
    let example =
        std::fs::read_to_string(repo_root().join("examples/prometheus/prometheus.yml")).unwrap();
    let config = example
        .replace(
            "tribe-tribe-operator-metrics.tribe-system.svc:8080",
            &format!("{op_ip}:8080"),
        )
        .replace("scrape_interval: 15s", "scrape_interval: 1s")
        .replace("evaluation_interval: 15s", "evaluation_interval: 1s")
        .replace("refresh_interval: 30s", "refresh_interval: 1s");
    assert_ne!(config, example);
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    std::fs::copy(
        chart_file("alerts/tribe-rules.yaml"),
        dir.join("tribe-rules.yaml"),
    )
    .unwrap();
    let prom: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let _prom = spawn(
        Command::new(prometheus)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={prom}"))
            .current_dir(&dir),
        &dir.join("prometheus.log"),
    );
    wait_for("Prometheus ready", Duration::from_secs(60), || {
        get_ok(prom, "/-/ready")
    });
    let want: BTreeSet<String> = pods.iter().map(|(p, _)| p.clone()).collect();
    wait_for("tribe_* series of every pod in Prometheus", WAIT, || {
        let sel = format!("{{namespace=\"{NS}\",sessioncluster=\"{NAME}\"}}");
        let got: BTreeSet<String> = query(prom, &format!("count by (pod) (tribe_members{sel})"))?
            .iter()
            .filter_map(|r| r["metric"]["pod"].as_str().map(String::from))
            .collect();
        if got != want {
            return Err(format!("pods with tribe_members: {got:?}, want {want:?}"));
        }
        for metric in ["tribe_session_saves_total", "tribe_sessions", "tribe_ready"] {
            let pods: BTreeSet<String> = query(prom, &format!("{metric}{sel}"))?
                .iter()
                .filter_map(|r| r["metric"]["pod"].as_str().map(String::from))
                .collect();
            if pods != want {
                return Err(format!("{metric}: {pods:?}"));
            }
        }
        let members = query(
            prom,
            &format!(
                "tribe_operator_cluster_members{{namespace=\"{NS}\",sessioncluster=\"{NAME}\"}}"
            ),
        )?;
        match members.first().and_then(|r| r["value"][1].as_str()) {
            Some("2") => Ok(()),
            other => Err(format!("tribe_operator_cluster_members: {other:?}")),
        }
    });
    log("Prometheus has every pod's tribe_* series and the operator's gauges");
    // Every dashboard query is valid PromQL for this Prometheus, and the node ones find data.
    for e in dashboard_exprs() {
        let q = e
            .replace("$__rate_interval", "1m")
            .replace("$namespace", ".*")
            .replace("$sessioncluster", ".*");
        if q.starts_with("label_values") {
            continue;
        }
        query(prom, &q).unwrap_or_else(|err| panic!("dashboard query fails: {err}"));
    }
    // The alert rules are loaded and evaluate without error.
    wait_for("the alert rules evaluated", Duration::from_secs(30), || {
        let body = get_ok(prom, "/api/v1/rules")?;
        let v: Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        let rules: Vec<Value> = v["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        if rules.len() < 6 {
            return Err(format!("{} rules", rules.len()));
        }
        let bad: Vec<&Value> = rules.iter().filter(|r| r["health"] != "ok").collect();
        if bad.is_empty() {
            Ok(())
        } else {
            Err(format!("rules not (yet) healthy: {bad:?}"))
        }
    });
    log("dashboard queries run, alert rules healthy");

    // kubectl tribe, with the admin kubeconfig.
    let kc = plane.kubeconfig.clone();
    let status = tribe(&kc, &["status", NAME]).unwrap_or_else(|e| panic!("{e}"));
    for (pod, _) in &pods {
        let line = status
            .lines()
            .find(|l| l.starts_with(pod.as_str()))
            .unwrap_or_else(|| panic!("no row for {pod}:\n{status}"));
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cols[2..5], ["true", "2", "0"], "{status}");
    }
    let list = tribe(&kc, &["sessions", NAME]).unwrap_or_else(|e| panic!("{e}"));
    for sid in [&id, &other_id] {
        let row = list
            .lines()
            .find(|l| l.starts_with(sid.as_str()))
            .unwrap_or_else(|| panic!("no row for {sid}:\n{list}"));
        for (pod, _) in &pods {
            assert!(row.contains(pod.as_str()), "held by both pods: {row}");
        }
    }
    assert!(
        !list.contains("4111-very-secret"),
        "values are never listed:\n{list}"
    );
    let one = tribe(&kc, &["sessions", NAME, "--node", &pods[0].0]).unwrap();
    let row = one
        .lines()
        .find(|l| l.starts_with(id.as_str()))
        .unwrap_or_else(|| panic!("{one}"));
    assert_eq!(
        row.split_whitespace().last(),
        Some(pods[0].0.as_str()),
        "HELD BY only the pod asked: {one}"
    );
    let with_values = tribe(&kc, &["sessions", NAME, "--show-values"]).unwrap();
    assert!(
        with_values.contains("card = \"4111-very-secret\""),
        "{with_values}"
    );
    assert!(with_values.contains("counter = 3"), "{with_values}");
    let inspect = tribe(&kc, &["inspect", NAME, &id]).unwrap();
    assert!(
        inspect.contains("attributes: 2 (card, counter)"),
        "{inspect}"
    );
    assert!(!inspect.contains("4111-very-secret"), "{inspect}");
    assert!(
        inspect.contains(&pods[0].0) && inspect.contains(&pods[1].0),
        "{inspect}"
    );
    let err = tribe(&kc, &["inspect", NAME, "../cluster"]).expect_err("a bad id is refused");
    assert!(err.contains("is not a session id"), "{err}");
    let err = tribe(&kc, &["status", "nosuch"]).expect_err("an unknown cluster");
    assert!(
        err.contains("no SessionCluster nosuch in namespace day2"),
        "{err}"
    );

    // A ServiceAccount with the documented read-only RBAC: reads work, expire is refused.
    // First without the key Secret: the session commands say what is missing.
    let role = |with_secret: bool| {
        let secret = if with_secret {
            format!("- {{apiGroups: [\"\"], resources: [secrets], resourceNames: [{NAME}-key], verbs: [get]}}\n")
        } else {
            String::new()
        };
        format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: tribe-viewer, namespace: {NS}}}\nrules:\n\
             - {{apiGroups: [tribe.rs], resources: [sessionclusters], verbs: [get]}}\n\
             - {{apiGroups: [\"\"], resources: [pods], verbs: [list]}}\n\
             - {{apiGroups: [\"\"], resources: [pods/proxy], verbs: [get]}}\n{secret}\
             ---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: tribe-viewer, namespace: {NS}}}\n\
             roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: tribe-viewer}}\n\
             subjects: [{{kind: ServiceAccount, name: viewer, namespace: {NS}}}]\n"
        )
    };
    plane.k(&["-n", NS, "create", "serviceaccount", "viewer"]);
    plane
        .k_stdin(&["apply", "-f", "-"], &role(false))
        .unwrap_or_else(|e| panic!("{e}"));
    let viewer = dir.join("viewer.kubeconfig");
    service_account_kubeconfig(&plane, NS, "viewer", &viewer);
    let status = wait_for(
        "the viewer's RBAC in effect",
        Duration::from_secs(30),
        || tribe(&viewer, &["status", NAME]),
    );
    assert!(status.contains(&pods[0].0), "{status}");
    let err = tribe(&viewer, &["sessions", NAME]).expect_err("sessions need the key Secret");
    assert!(err.contains("cannot read the cluster key Secret"), "{err}");
    plane
        .k_stdin(&["apply", "-f", "-"], &role(true))
        .unwrap_or_else(|e| panic!("{e}"));
    let seen = wait_for(
        "the viewer may read the key",
        Duration::from_secs(30),
        || tribe(&viewer, &["sessions", NAME]),
    );
    assert!(seen.contains(&id), "{seen}");
    let err =
        tribe(&viewer, &["expire", NAME, &id]).expect_err("expire needs delete on pods/proxy");
    assert!(err.contains("403"), "{err}");
    // Straight to a node's admin port, without the token: nothing.
    let admin: SocketAddr = format!("{}:9090", pods[0].1).parse().unwrap();
    let r = http(admin, "GET", "/sessions", &[], "", Duration::from_secs(5)).unwrap();
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(!r.body.contains(&id));

    // Expire with the admin's rights: gone from every node, and the browser starts afresh.
    let out = tribe(&kc, &["expire", NAME, &id]).unwrap_or_else(|e| panic!("{e}"));
    assert!(out.contains("expired"), "{out}");
    wait_for(
        "the session gone from every node",
        Duration::from_secs(30),
        || match tribe(&kc, &["inspect", NAME, &id]) {
            Err(e) if e.contains("no node holds session") => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    let r = browser.send(app(0), "POST", "/counter", "");
    let v: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["counter"], 1, "a new session after expire: {v}");
    let still = tribe(&kc, &["inspect", NAME, &other_id]).unwrap();
    assert!(
        still.contains("attributes: 1"),
        "other sessions stay: {still}"
    );
    log("kubectl tribe status/sessions/inspect/expire done");

    // Deleting the SessionCluster drops its scrape targets and its operator series.
    let op_admin: SocketAddr = format!("{op_ip}:8080").parse().unwrap();
    let sd: Value = serde_json::from_str(&get_ok(op_admin, "/sd/nodes").unwrap()).unwrap();
    assert_eq!(sd.as_array().unwrap().len(), 2, "{sd}");
    plane.k(&[
        "-n",
        NS,
        "delete",
        "sessioncluster",
        NAME,
        "--wait=true",
        "--timeout=60s",
    ]);
    wait_for(
        "the deleted cluster's targets and series gone",
        WAIT,
        || {
            let sd = get_ok(op_admin, "/sd/nodes")?;
            let metrics = get_ok(op_admin, "/metrics")?;
            if sd.trim() == "[]" && !metrics.contains("sessioncluster=\"shop\"") {
                Ok(())
            } else {
                Err(format!("sd: {sd}"))
            }
        },
    );
    log("deleted cluster forgotten by the operator");
    let _ = std::fs::remove_dir_all(&dir);
}
