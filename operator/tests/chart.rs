//! The Helm chart (`charts/tribe-operator`), checked with the real tools: `helm lint`,
//! `helm template`, and the official Kubernetes schemas through `kubernetes-validate`
//! (all installed by `scripts/install-test-deps`). No cluster needed; the chart against a
//! real API server is in `cluster.rs`.

mod support;

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;
use support::{repo_root, require_tool, run, scratch_dir, yaml_docs};

/// The Kubernetes version whose schemas every rendered object must satisfy.
const K8S_VERSION: &str = "1.30";

fn chart_dir() -> PathBuf {
    repo_root().join("charts/tribe-operator")
}

/// The value sets the chart is checked with: defaults, and everything optional turned on.
const VALUE_SETS: &[(&str, &[&str])] = &[
    ("default", &[]),
    (
        "namespaced+example",
        &[
            "rbac.namespaced=true",
            "example.enabled=true",
            "example.ingress.enabled=true",
            "replicaCount=2",
        ],
    ),
    (
        "monitoring+scheduling",
        &[
            "metrics.serviceMonitor.enabled=true",
            "metrics.serviceMonitor.labels.release=prom",
            "metrics.prometheusRule.enabled=true",
            "metrics.dashboard.enabled=true",
            "priorityClassName=system-cluster-critical",
            "topologySpreadConstraints[0].maxSkew=1",
            "topologySpreadConstraints[0].topologyKey=topology.kubernetes.io/zone",
            "topologySpreadConstraints[0].whenUnsatisfiable=ScheduleAnyway",
        ],
    ),
];

fn helm(args: &[&str]) -> Result<String, String> {
    run(Command::new(require_tool("helm")).args(args))
}

/// `helm template` with `--set` values, CRDs included; the rendered stream.
fn template(sets: &[&str]) -> String {
    let chart = chart_dir();
    let mut args = vec![
        "template",
        "tribe",
        chart.to_str().unwrap(),
        "--namespace",
        "tribe-system",
        "--include-crds",
    ];
    for s in sets {
        args.push("--set");
        args.push(s);
    }
    helm(&args).unwrap_or_else(|e| panic!("helm template failed: {e}"))
}

fn kinds(docs: &[Value]) -> Vec<String> {
    let mut k: Vec<String> = docs
        .iter()
        .map(|d| d["kind"].as_str().unwrap_or("?").to_string())
        .collect();
    k.sort();
    k
}

fn find<'a>(docs: &'a [Value], kind: &str, name_suffix: &str) -> &'a Value {
    docs.iter()
        .find(|d| {
            d["kind"] == kind
                && d["metadata"]["name"]
                    .as_str()
                    .unwrap_or("")
                    .ends_with(name_suffix)
        })
        .unwrap_or_else(|| panic!("no {kind} *{name_suffix} in {:?}", kinds(docs)))
}

#[test]
fn chart_crd_is_the_repository_crd() {
    let repo = repo_root().join("crds/sessioncluster.yaml");
    let chart = chart_dir().join("crds/sessioncluster.yaml");
    let a = std::fs::read_to_string(&repo).unwrap_or_else(|e| panic!("{}: {e}", repo.display()));
    let b = std::fs::read_to_string(&chart).unwrap_or_else(|e| panic!("{}: {e}", chart.display()));
    assert!(
        a == b,
        "{} differs from {}: copy it (`cp crds/sessioncluster.yaml charts/tribe-operator/crds/`)",
        chart.display(),
        repo.display()
    );
    // And it is the CRD (not, say, an empty file).
    let docs = yaml_docs(&b);
    assert_eq!(docs.len(), 1, "one CRD document");
    assert_eq!(docs[0]["kind"], "CustomResourceDefinition");
    assert_eq!(docs[0]["metadata"]["name"], "sessionclusters.tribe.rs");
}

#[test]
fn chart_versions_follow_the_workspace() {
    let text = std::fs::read_to_string(chart_dir().join("Chart.yaml")).unwrap();
    let chart: Value = serde_saphyr::from_str(&text).unwrap();
    assert_eq!(
        chart["appVersion"],
        env!("CARGO_PKG_VERSION"),
        "Chart.yaml appVersion = the crate version"
    );
    assert_eq!(
        chart["version"],
        env!("CARGO_PKG_VERSION"),
        "Chart.yaml version = the crate version"
    );
}

#[test]
fn helm_lint_passes() {
    let chart = chart_dir();
    for (name, sets) in VALUE_SETS {
        let mut args = vec!["lint", "--strict", chart.to_str().unwrap()];
        for s in *sets {
            args.push("--set");
            args.push(s);
        }
        let out = helm(&args).unwrap_or_else(|e| panic!("helm lint ({name}) failed: {e}"));
        assert!(
            out.contains("0 chart(s) failed"),
            "helm lint ({name}): {out}"
        );
    }
}

#[test]
fn values_schema_rejects_bad_values() {
    let chart = chart_dir();
    for bad in [
        "rbac.namespaced=maybe",
        "admin.port=0",
        "image.pullPolicy=Sometimes",
        "example.membership=carrier-pigeon",
        "replicaCount=-1",
        "unknownTopLevel=1",
        "templatePolicy.allowNodeLevelPodFields=yes",
        "rbac.secretNamespaces={Not_A_Namespace}",
    ] {
        let r = helm(&["template", "tribe", chart.to_str().unwrap(), "--set", bad]);
        let err = r
            .err()
            .unwrap_or_else(|| panic!("helm template accepted --set {bad}"));
        assert!(
            err.contains("schema"),
            "--set {bad} should fail the values schema, got: {err}"
        );
    }
}

#[test]
fn rendered_objects_are_valid_kubernetes_objects() {
    let validator = require_tool("kubernetes-validate");
    let dir = scratch_dir("chart-validate");
    for (name, sets) in VALUE_SETS {
        let rendered = template(sets);
        let docs = yaml_docs(&rendered);
        let builtin: Vec<&Value> = docs
            .iter()
            // Custom resources have no schema in kubernetes-validate: the SessionCluster is
            // checked against the CRD by the API server (cluster.rs), the Prometheus
            // Operator's objects below.
            .filter(|d| {
                d["apiVersion"] != "tribe.rs/v1alpha1"
                    && !d["apiVersion"]
                        .as_str()
                        .unwrap_or("")
                        .starts_with("monitoring.coreos.com/")
            })
            .collect();
        assert!(
            builtin.len() >= 6,
            "{name}: too few objects rendered: {:?}",
            kinds(&docs)
        );
        // One object per file, so that each one is checked and named on failure.
        for (i, doc) in builtin.iter().enumerate() {
            let file = dir.join(format!(
                "{}-{i}-{}.json",
                name.replace('+', "-"),
                doc["kind"].as_str().unwrap()
            ));
            std::fs::write(&file, serde_json::to_string_pretty(doc).unwrap()).unwrap();
            let out = run(Command::new(&validator)
                .args(["-k", K8S_VERSION, "--strict"])
                .arg(&file))
            .unwrap_or_else(|e| {
                panic!(
                    "{name}: {} is not a valid {K8S_VERSION} object: {e}",
                    doc["kind"]
                )
            });
            assert!(
                out.contains("passed"),
                "{name}: kubernetes-validate did not check {} (no schema?): {out}",
                file.display()
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn default_render_has_cluster_rbac_and_a_hardened_operator() {
    let docs = yaml_docs(&template(&[]));
    let k = kinds(&docs);
    for want in [
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "Deployment",
        "ServiceAccount",
    ] {
        assert!(k.iter().any(|x| x == want), "no {want} in {k:?}");
    }
    assert!(
        !k.iter().any(|x| x == "SessionCluster"),
        "the example is off by default: {k:?}"
    );

    let dep = find(&docs, "Deployment", "tribe-operator");
    let pod = &dep["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(
        c["image"],
        format!("tribe-operator:{}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert_ne!(pod["securityContext"]["runAsUser"], 0);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["capabilities"]["drop"][0], "ALL");
    let sa = find(&docs, "ServiceAccount", "tribe-operator");
    assert_eq!(pod["serviceAccountName"], sa["metadata"]["name"]);

    // Probes on the admin port.
    let admin_port = &c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "admin")
        .expect("admin port")["containerPort"];
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        assert_eq!(c[probe]["httpGet"]["path"], path, "{probe}");
        assert_eq!(c[probe]["httpGet"]["port"], "admin", "{probe}");
    }
    let env = c["env"].as_array().unwrap();
    let var = |n: &str| env.iter().find(|e| e["name"] == n).cloned();
    assert_eq!(
        var("POD_NAMESPACE").expect("POD_NAMESPACE")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    assert_eq!(
        var("TRIBE_OPERATOR_ADMIN_ADDR").expect("admin addr")["value"],
        format!("0.0.0.0:{}", admin_port.as_i64().unwrap())
    );
    assert!(var("WATCH_NAMESPACE").is_none(), "cluster-wide by default");

    // The ClusterRole never grants wildcards, nor anything on RBAC itself.
    let role = find(&docs, "ClusterRole", "tribe-operator");
    for rule in role["rules"].as_array().unwrap() {
        for field in ["apiGroups", "resources", "verbs"] {
            assert!(
                !rule[field].as_array().unwrap().iter().any(|v| v == "*"),
                "wildcard in {rule}"
            );
        }
        assert!(!rule["apiGroups"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g == "rbac.authorization.k8s.io"));
        assert!(!rule["verbs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v == "escalate" || v == "bind"));
    }
    let binding = find(&docs, "ClusterRoleBinding", "tribe-operator");
    assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
    assert_eq!(binding["subjects"][0]["name"], sa["metadata"]["name"]);
    assert_eq!(binding["subjects"][0]["namespace"], "tribe-system");
}

#[test]
fn namespaced_render_has_only_roles_and_the_example() {
    let docs = yaml_docs(&template(VALUE_SETS[1].1));
    let k = kinds(&docs);
    assert!(
        !k.iter()
            .any(|x| x == "ClusterRole" || x == "ClusterRoleBinding"),
        "namespaced: {k:?}"
    );
    for d in docs
        .iter()
        .filter(|d| d["kind"] != "CustomResourceDefinition")
    {
        assert_eq!(
            d["metadata"]["namespace"], "tribe-system",
            "{} in the release namespace",
            d["kind"]
        );
    }
    let dep = find(&docs, "Deployment", "tribe-operator");
    assert_eq!(dep["spec"]["replicas"], 2);
    let env = dep["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap();
    let watch = env
        .iter()
        .find(|e| e["name"] == "WATCH_NAMESPACE")
        .expect("watch namespace");
    assert_eq!(
        watch["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );

    let ex = find(&docs, "SessionCluster", "example");
    assert_eq!(ex["spec"]["replicas"], 3);
    assert_eq!(ex["spec"]["ingress"]["enabled"], true);
}

/// Day two: the operator's metrics Service (default), the ServiceMonitor, the
/// PrometheusRule built from alerts/tribe-rules.yaml, the dashboard ConfigMap for the
/// Grafana sidecar, version labels, scheduling values and the helm test pod.
#[test]
fn monitoring_and_scheduling_values_render() {
    let docs = yaml_docs(&template(&[]));
    let k = kinds(&docs);
    assert!(
        !k.iter()
            .any(|x| x == "ServiceMonitor" || x == "PrometheusRule" || x == "ConfigMap"),
        "monitoring objects are opt-in: {k:?}"
    );
    let svc = find(&docs, "Service", "-metrics");
    let dep = find(&docs, "Deployment", "tribe-operator");
    let tmpl = &dep["spec"]["template"];
    for (key, v) in svc["spec"]["selector"].as_object().unwrap() {
        assert_eq!(
            &tmpl["metadata"]["labels"][key], v,
            "the Service selects the pods"
        );
    }
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "admin");
    assert_eq!(
        tmpl["metadata"]["labels"]["app.kubernetes.io/version"],
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(
        tmpl["metadata"]["annotations"]["prometheus.io/scrape"],
        "true"
    );
    assert_eq!(
        tmpl["metadata"]["annotations"]["prometheus.io/port"],
        "8080"
    );
    assert!(tmpl["spec"].get("priorityClassName").is_none());
    assert!(tmpl["spec"].get("topologySpreadConstraints").is_none());
    let test_pod = docs
        .iter()
        .find(|d| d["kind"] == "Pod")
        .expect("a helm test pod");
    assert_eq!(test_pod["metadata"]["annotations"]["helm.sh/hook"], "test");
    let args = test_pod["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap();
    assert_eq!(args[0], "check");
    assert_eq!(
        args[1],
        "http://tribe-tribe-operator-metrics.tribe-system.svc:8080/readyz"
    );
    assert_eq!(
        test_pod["spec"]["containers"][0]["image"],
        dep["spec"]["template"]["spec"]["containers"][0]["image"]
    );

    let docs = yaml_docs(&template(VALUE_SETS[2].1));
    let sm = find(&docs, "ServiceMonitor", "tribe-operator");
    assert_eq!(sm["metadata"]["labels"]["release"], "prom");
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "admin");
    assert_eq!(
        sm["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"],
        "metrics"
    );
    let rule = find(&docs, "PrometheusRule", "tribe-operator");
    let file = std::fs::read_to_string(chart_dir().join("alerts/tribe-rules.yaml")).unwrap();
    let file: Value = serde_saphyr::from_str(&file).unwrap();
    assert_eq!(rule["spec"], file, "the PrometheusRule is the rule file");
    let cm = find(&docs, "ConfigMap", "-dashboard");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    let dashboard: Value = serde_json::from_str(cm["data"]["tribe.json"].as_str().unwrap())
        .expect("the ConfigMap holds the dashboard JSON");
    let file = std::fs::read_to_string(chart_dir().join("dashboards/tribe.json")).unwrap();
    assert_eq!(dashboard, serde_json::from_str::<Value>(&file).unwrap());
    let pod = &find(&docs, "Deployment", "tribe-operator")["spec"]["template"]["spec"];
    assert_eq!(pod["priorityClassName"], "system-cluster-critical");
    let tsc = &pod["topologySpreadConstraints"][0];
    assert_eq!(tsc["topologyKey"], "topology.kubernetes.io/zone");
    assert_eq!(
        tsc["labelSelector"]["matchLabels"]["app.kubernetes.io/name"], "tribe-operator",
        "the selector labels are filled in"
    );
    // PodMonitors are within the role (spec.monitoring.podMonitor), nothing else of the group.
    let role = find(&docs, "ClusterRole", "tribe-operator");
    let monitoring: Vec<&Value> = role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["apiGroups"][0] == "monitoring.coreos.com")
        .collect();
    assert_eq!(monitoring.len(), 1);
    assert_eq!(
        monitoring[0]["resources"],
        serde_json::json!(["podmonitors"])
    );

    // A ServiceMonitor without the Service it selects is refused.
    let chart = chart_dir();
    let err = helm(&[
        "template",
        "t",
        chart.to_str().unwrap(),
        "--set",
        "metrics.serviceMonitor.enabled=true",
        "--set",
        "metrics.service.enabled=false",
    ])
    .expect_err("a ServiceMonitor needs the metrics Service");
    assert!(err.contains("metrics.service.enabled"), "{err}");
}

/// Chart.yaml says where the project lives.
#[test]
fn chart_has_home_and_sources() {
    let text = std::fs::read_to_string(chart_dir().join("Chart.yaml")).unwrap();
    let chart: Value = serde_saphyr::from_str(&text).unwrap();
    assert!(chart["home"].as_str().unwrap().starts_with("https://"));
    assert!(!chart["sources"].as_array().unwrap().is_empty());
}

#[test]
fn chart_supports_kubernetes_1_24_and_newer_only() {
    let chart = chart_dir();
    let chart = chart.to_str().unwrap();
    for ok in ["1.24.0", "1.30.0", "1.35.0"] {
        helm(&["template", "t", chart, "--kube-version", ok])
            .unwrap_or_else(|e| panic!("the chart must render for Kubernetes {ok}: {e}"));
    }
    let err = helm(&["template", "t", chart, "--kube-version", "1.23.0"])
        .expect_err("Chart.yaml kubeVersion refuses Kubernetes 1.23");
    assert!(
        err.contains("kubeVersion") || err.contains("incompatible"),
        "{err}"
    );
}

/// The two image builds: multi-stage, the final stage small and non-root, running the
/// binary that the workspace builds. (`scripts/images` builds them with buildah;
/// `operator/tests/images.rs` checks what it builds.)
#[test]
fn dockerfiles_are_multi_stage_and_non_root() {
    for (file, bin) in [
        ("operator/Dockerfile", "tribe-operator"),
        ("node/Dockerfile", "tribe-node"),
        ("examples/shop/Dockerfile", "tribe-shop"),
    ] {
        let text = std::fs::read_to_string(repo_root().join(file)).unwrap();
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .collect();
        let froms: Vec<usize> = (0..lines.len())
            .filter(|&i| lines[i].starts_with("FROM "))
            .collect();
        assert!(froms.len() >= 2, "{file}: multi-stage");
        let last = &lines[*froms.last().unwrap()..];
        // `FROM ${RUNTIME_BASE}`: the ARG's default (scripts/images passes its own base).
        let base = match last[0]
            .strip_prefix("FROM ${")
            .and_then(|a| a.strip_suffix('}'))
        {
            Some(arg) => lines
                .iter()
                .find_map(|l| l.strip_prefix(&format!("ARG {arg}=")))
                .unwrap_or_else(|| panic!("{file}: ARG {arg} has a default")),
            None => last[0],
        };
        assert!(
            base.contains("distroless") || base.contains("-slim"),
            "{file}: a small runtime base: {base}"
        );
        let user = last
            .iter()
            .rev()
            .find(|l| l.starts_with("USER "))
            .unwrap_or_else(|| panic!("{file}: the runtime stage sets USER"));
        let uid = user[5..].split(':').next().unwrap().trim();
        assert!(
            uid != "0" && uid != "root",
            "{file}: non-root user, got {user}"
        );
        assert!(
            last.iter()
                .any(|l| l.starts_with("COPY --from=") && l.contains(bin)),
            "{file}: the runtime stage copies {bin} from the build stage"
        );
        assert!(
            last.iter()
                .any(|l| l.starts_with("ENTRYPOINT") && l.contains(bin)),
            "{file}: ENTRYPOINT runs {bin}"
        );
        let build = &lines[froms[0]..froms[1]];
        assert!(
            build.iter().any(|l| l.contains("cargo build")
                && l.contains("--release")
                && l.contains("--locked")
                && l.contains(&format!("--bin {bin}"))),
            "{file}: a locked release build of {bin}"
        );
    }
    let ignore = std::fs::read_to_string(repo_root().join(".dockerignore")).unwrap();
    for must in ["target", ".git", ".tools"] {
        assert!(
            ignore.lines().any(|l| l.trim() == must),
            ".dockerignore keeps {must} out of the build context"
        );
    }
}

/// NOTES.txt's example pastes into a shell as printed: its heredoc ends (the terminator
/// at the start of a line) and what it feeds `kubectl apply` is a SessionCluster.
#[test]
fn notes_heredoc_pastes_into_a_shell() {
    let notes = std::fs::read_to_string(chart_dir().join("templates/NOTES.txt")).unwrap();
    let start = notes
        .lines()
        .position(|l| l.starts_with("kubectl apply -f - <<'YAML'"))
        .expect("NOTES.txt has a `kubectl apply -f - <<'YAML'` line at the start of a line");
    let lines: Vec<&str> = notes.lines().skip(start).collect();
    let end = lines
        .iter()
        .position(|l| *l == "YAML")
        .expect("the heredoc's terminator `YAML` alone on a line");
    // The same shell text, with `cat` standing in for kubectl.
    let script = lines[..=end]
        .join("\n")
        .replacen("kubectl apply -f -", "cat", 1);
    assert!(
        !script.contains("{{"),
        "no template in the example: {script}"
    );
    let out = run(std::process::Command::new("bash").args(["-c", &script]))
        .unwrap_or_else(|e| panic!("{e}"));
    let docs = yaml_docs(&out);
    assert_eq!(docs.len(), 1, "{out}");
    assert_eq!(docs[0]["kind"], "SessionCluster", "{out}");
    assert_eq!(docs[0]["apiVersion"], "tribe.rs/v1alpha1", "{out}");
}

/// The node image the operator gets (TRIBE_OPERATOR_NODE_IMAGE) follows the operator image:
/// same registry, same tag, unless `nodeImage` says otherwise.
#[test]
fn node_image_follows_the_operator_image() {
    let version = env!("CARGO_PKG_VERSION");
    let images = |sets: &[&str]| -> (String, String) {
        let docs = yaml_docs(&template(sets));
        let c = &find(&docs, "Deployment", "tribe-operator")["spec"]["template"]["spec"]
            ["containers"][0];
        let node = c["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "TRIBE_OPERATOR_NODE_IMAGE")
            .unwrap_or_else(|| panic!("no TRIBE_OPERATOR_NODE_IMAGE in {}", c["env"]));
        (
            c["image"].as_str().unwrap().to_string(),
            node["value"].as_str().unwrap().to_string(),
        )
    };
    let cases: [(&[&str], String, String); 5] = [
        (
            &[],
            format!("tribe-operator:{version}"),
            format!("tribe-node:{version}"),
        ),
        (
            &["image.registry=registry.example.com/tribe"],
            format!("registry.example.com/tribe/tribe-operator:{version}"),
            format!("registry.example.com/tribe/tribe-node:{version}"),
        ),
        (
            &[
                "image.registry=registry.example.com/tribe",
                "image.tag=0.9.0",
            ],
            "registry.example.com/tribe/tribe-operator:0.9.0".into(),
            "registry.example.com/tribe/tribe-node:0.9.0".into(),
        ),
        (
            &["image.repository=registry.example.com/ops/tribe-operator"],
            format!("registry.example.com/ops/tribe-operator:{version}"),
            format!("registry.example.com/ops/tribe-node:{version}"),
        ),
        (
            &[
                "image.registry=registry.example.com/tribe",
                "nodeImage.registry=apps.example.com",
                "nodeImage.repository=shop",
                "nodeImage.tag=2.1",
            ],
            format!("registry.example.com/tribe/tribe-operator:{version}"),
            "apps.example.com/shop:2.1".into(),
        ),
    ];
    for (sets, operator, node) in cases {
        assert_eq!(images(sets), (operator, node), "--set {sets:?}");
    }
}

/// (API group, resource, verb) of every rule of every Role and ClusterRole in `docs`.
fn granted(docs: &[Value]) -> std::collections::BTreeSet<(String, String, String)> {
    let mut out = std::collections::BTreeSet::new();
    for d in docs
        .iter()
        .filter(|d| d["kind"] == "Role" || d["kind"] == "ClusterRole")
    {
        for rule in d["rules"].as_array().into_iter().flatten() {
            let list = |f: &str| -> Vec<String> {
                rule[f]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|v| v.as_str().unwrap().to_string())
                    .collect()
            };
            for g in list("apiGroups") {
                for r in list("resources") {
                    for v in list("verbs") {
                        out.insert((g.clone(), r.clone(), v));
                    }
                }
            }
        }
    }
    out
}

/// (API group, resource, verb) of every row of the first Markdown table in `md` whose
/// header starts with `| API group | resource | verbs |`: the group is the cell's first
/// `code` span (`""` is the core group), the resources every `code` span of the second
/// cell, the verbs the comma-separated words of the third (up to a parenthesis).
fn documented(md: &str, what: &str) -> std::collections::BTreeSet<(String, String, String)> {
    let code = |cell: &str| -> Vec<String> {
        cell.split('`')
            .skip(1)
            .step_by(2)
            .map(|c| c.replace("\"\"", ""))
            .collect()
    };
    let mut out = std::collections::BTreeSet::new();
    let mut lines = md
        .lines()
        .skip_while(|l| !l.starts_with("| API group | resource | verbs |"));
    assert!(lines.next().is_some(), "{what}: no RBAC table");
    for line in lines.skip(1).take_while(|l| l.starts_with('|')) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let group = code(cells[1]).into_iter().next().unwrap_or_default();
        let verbs = cells[3].split('(').next().unwrap();
        for r in code(cells[2]) {
            for v in verbs.split(',').map(str::trim).filter(|v| !v.is_empty()) {
                out.insert((group.clone(), r.clone(), v.to_string()));
            }
        }
    }
    assert!(!out.is_empty(), "{what}: empty RBAC table");
    out
}

/// `operator/RBAC.md` and the chart README list exactly what `templates/rbac.yaml` grants
/// in any of its shapes (cluster-wide with Secret Roles, namespaced): no verb missing
/// from the docs, none documented but not granted.
#[test]
fn rbac_docs_match_the_charts_roles() {
    let mut rendered = std::collections::BTreeSet::new();
    for sets in [
        &["rbac.secretNamespaces={apps}"][..],
        &["rbac.namespaced=true"][..],
    ] {
        rendered.extend(granted(&yaml_docs(&template(sets))));
    }
    for (what, path) in [
        ("operator/RBAC.md", repo_root().join("operator/RBAC.md")),
        ("chart README", chart_dir().join("README.md")),
    ] {
        let docs = documented(&std::fs::read_to_string(&path).unwrap(), what);
        let undocumented: Vec<_> = rendered.difference(&docs).collect();
        let not_granted: Vec<_> = docs.difference(&rendered).collect();
        assert!(
            undocumented.is_empty() && not_granted.is_empty(),
            "{what} and templates/rbac.yaml differ:\n granted, not in {what}: {undocumented:?}\n in {what}, not granted: {not_granted:?}"
        );
    }
}

/// No Secret is readable cluster-wide: the ClusterRole has no rule on Secrets, and the
/// Secret Roles (get, create, update; never list or watch) exist only in the namespaces
/// named by `rbac.secretNamespaces` (plus the release namespace for the example).
#[test]
fn secrets_are_granted_per_namespace_only() {
    let secret_rules = |d: &Value| -> Vec<Value> {
        d["rules"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| {
                r["resources"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|x| x == "secrets")
            })
            .cloned()
            .collect()
    };
    let docs = yaml_docs(&template(&[]));
    let role = find(&docs, "ClusterRole", "tribe-operator");
    assert!(secret_rules(role).is_empty(), "{role}");
    assert!(
        !docs
            .iter()
            .any(|d| d["kind"] == "Role" && !secret_rules(d).is_empty()),
        "no namespaces listed: no Secret access at all"
    );

    let docs = yaml_docs(&template(&["rbac.secretNamespaces={apps,shop}"]));
    let mut namespaces = Vec::new();
    for d in docs.iter().filter(|d| d["kind"] == "Role") {
        for r in secret_rules(d) {
            assert_eq!(
                r["verbs"],
                serde_json::json!(["get", "create", "update"]),
                "{d}"
            );
            assert_eq!(r["resources"], serde_json::json!(["secrets"]), "{d}");
            namespaces.push(d["metadata"]["namespace"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(namespaces, ["apps", "shop"]);
    for ns in ["apps", "shop"] {
        let binding = docs
            .iter()
            .find(|d| d["kind"] == "RoleBinding" && d["metadata"]["namespace"] == ns)
            .unwrap_or_else(|| panic!("no RoleBinding in {ns}"));
        assert_eq!(binding["roleRef"]["name"], "tribe-tribe-operator-secrets");
        assert_eq!(binding["subjects"][0]["namespace"], "tribe-system");
        assert_eq!(binding["subjects"][0]["name"], "tribe-tribe-operator");
    }
    assert!(secret_rules(find(&docs, "ClusterRole", "tribe-operator")).is_empty());

    // The example lives in the release namespace: its Secrets are granted there.
    let docs = yaml_docs(&template(&["example.enabled=true"]));
    assert!(docs.iter().any(|d| d["kind"] == "Role"
        && d["metadata"]["namespace"] == "tribe-system"
        && !secret_rules(d).is_empty()));
}

/// The template policy flags reach the operator, off by default.
#[test]
fn template_policy_values_reach_the_operator() {
    let env = |sets: &[&str]| -> Vec<(String, String)> {
        let docs = yaml_docs(&template(sets));
        let dep = find(&docs, "Deployment", "tribe-operator");
        dep["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| {
                e["name"]
                    .as_str()
                    .unwrap()
                    .starts_with("TRIBE_OPERATOR_ALLOW_")
            })
            .map(|e| {
                (
                    e["name"].as_str().unwrap().to_string(),
                    e["value"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let pairs = |a: &str, b: &str| {
        vec![
            (
                "TRIBE_OPERATOR_ALLOW_NODE_LEVEL_POD_FIELDS".to_string(),
                a.to_string(),
            ),
            (
                "TRIBE_OPERATOR_ALLOW_TEMPLATE_SERVICE_ACCOUNT".to_string(),
                b.to_string(),
            ),
        ]
    };
    assert_eq!(env(&[]), pairs("false", "false"));
    assert_eq!(
        env(&[
            "templatePolicy.allowNodeLevelPodFields=true",
            "templatePolicy.allowServiceAccountName=true"
        ]),
        pairs("true", "true")
    );
}
