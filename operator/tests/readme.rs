//! The README tells the truth about the things it lists, so they cannot drift apart:
//!
//! - its `tribe-node` flag table against `tribe-node --help` (each flag exists with the
//!   env var the README gives it; each flag of the binary is in that table or in
//!   node/README.md's);
//! - its SessionCluster field table against the CRD schema (each row exists; each spec
//!   field has a row, or is named in its parent's row; the `status` row names exactly the
//!   status fields);
//! - its `kubectl get sessionclusters` example against the CRD's printer columns;
//! - the examples: each `examples/*.yaml` passes a server-side dry run on a real API
//!   server (`invalid.yaml` is refused) and refers only to objects it creates or names in
//!   its comments; the Prometheus configuration passes `promtool check config` beside
//!   its rules, and names the chart's metrics Service;
//! - its Benchmarks table: every figure names the `tribe-bench` command that produces it;
//! - its Quick start: every package `scripts/install-test-deps` installs, and every test
//!   file that needs a control plane;
//! - every Markdown file a document cites exists.
//!
//! Generic on purpose: a new flag or field fails here until its row is added.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use serde_json::Value;
use support::{repo_root, run, workspace_bin};

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo_root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The text of the section under `heading` (a line starting with it), up to the next
/// heading of the same or a higher level.
fn section<'a>(text: &'a str, heading: &str) -> &'a str {
    let start = text
        .find(&format!("\n{heading}"))
        .unwrap_or_else(|| panic!("README has no heading {heading:?}"))
        + 1;
    let level = heading.chars().take_while(|&c| c == '#').count();
    let rest = &text[start..];
    let body_start = rest.find('\n').map_or(rest.len(), |i| i + 1);
    let end = rest[body_start..]
        .lines()
        .scan(body_start, |pos, line| {
            let at = *pos;
            *pos += line.len() + 1;
            Some((at, line))
        })
        .find(|(_, line)| {
            let hashes = line.chars().take_while(|&c| c == '#').count();
            hashes > 0 && hashes <= level && line[hashes..].starts_with(' ')
        })
        .map_or(rest.len(), |(at, _)| at);
    &rest[..end]
}

/// The body rows of the first Markdown table in `text`, as cells.
fn table_rows(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .skip_while(|l| !l.trim_start().starts_with('|'))
        .take_while(|l| l.trim_start().starts_with('|'))
        .skip(2) // header and the |---| line
        .map(|l| {
            let l = l.trim().trim_start_matches('|').trim_end_matches('|');
            l.split('|').map(|c| c.trim().to_string()).collect()
        })
        .collect()
}

/// The `code` spans of a cell.
fn code_spans(cell: &str) -> Vec<String> {
    cell.split('`')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, s)| s.to_string())
        .collect()
}

/// `--flag` → its env var, from `tribe-node --help`.
fn help_flags() -> BTreeMap<String, Option<String>> {
    let bin = workspace_bin("tribe-node").unwrap_or_else(|e| panic!("{e}"));
    let help = run(Command::new(bin).arg("--help")).unwrap_or_else(|e| panic!("{e}"));
    let mut flags: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in help.lines() {
        let t = line.trim_start();
        let flag_line = t.starts_with("--") || (t.starts_with('-') && t.contains(", --"));
        if flag_line {
            let flag = t
                .split_whitespace()
                .find(|w| w.starts_with("--"))
                .unwrap()
                .trim_end_matches(',')
                .to_string();
            flags.insert(flag.clone(), None);
            current = Some(flag);
        } else if let (Some(f), Some(i)) = (&current, t.find("[env: ")) {
            // `[env: NAME]` (values hidden) or `[env: NAME=value]`.
            let env = t[i + 6..].split(['=', ']']).next().unwrap().to_string();
            flags.insert(f.clone(), Some(env));
        }
    }
    flags.remove("--help");
    flags.remove("--version");
    assert!(flags.len() > 10, "could not parse the help:\n{help}");
    flags
}

#[test]
fn node_flag_tables_match_tribe_node_help() {
    let help = help_flags();
    let readme = read("README.md");
    let table = table_rows(section(&readme, "### tribe-node"));
    assert!(!table.is_empty(), "README's tribe-node section has a table");
    let mut documented = BTreeSet::new();
    for row in &table {
        let flags: Vec<String> = code_spans(&row[0])
            .into_iter()
            .filter(|s| s.starts_with("--"))
            .collect();
        let envs: Vec<String> = code_spans(&row[1])
            .into_iter()
            .filter(|s| s.starts_with("TRIBE_"))
            .collect();
        assert!(!flags.is_empty(), "a row without a flag: {row:?}");
        assert_eq!(flags.len(), envs.len(), "one env var per flag: {row:?}");
        for (flag, env) in flags.iter().zip(&envs) {
            let Some(want) = help.get(flag) else {
                panic!("README documents {flag}, which `tribe-node --help` does not have");
            };
            assert_eq!(
                want.as_deref(),
                Some(env.as_str()),
                "README gives {flag} the env var {env}"
            );
            documented.insert(flag.clone());
        }
    }
    // node/README.md's table holds the tuning flags; a row may name several flags and
    // their env vars in the same order.
    let node_readme = read("node/README.md");
    for row in table_rows(&node_readme) {
        let flags: Vec<String> = code_spans(&row[0])
            .into_iter()
            .filter(|s| s.starts_with("--"))
            .collect();
        let envs: Vec<String> = code_spans(row.get(1).map_or("", String::as_str))
            .into_iter()
            .filter(|s| s.starts_with("TRIBE_"))
            .collect();
        for (i, flag) in flags.into_iter().enumerate() {
            assert!(
                help.contains_key(&flag),
                "node/README.md documents {flag}, which `tribe-node --help` does not have"
            );
            if let Some(env) = envs.get(i).or(envs.first()) {
                assert_eq!(
                    help[&flag].as_deref(),
                    Some(env.as_str()),
                    "node/README.md: {flag}"
                );
            }
            documented.insert(flag);
        }
    }
    let missing: Vec<&String> = help.keys().filter(|f| !documented.contains(*f)).collect();
    assert!(
        missing.is_empty(),
        "flags of `tribe-node --help` in neither README.md's tribe-node table nor node/README.md's: {missing:?} (add a row)"
    );
}

/// Every property path under `schema` (`prefix.name`, recursively), with its schema.
fn paths(prefix: &str, schema: &Value, out: &mut BTreeMap<String, Value>) {
    if let Some(props) = schema["properties"].as_object() {
        for (name, sub) in props {
            let p = format!("{prefix}.{name}");
            out.insert(p.clone(), sub.clone());
            paths(&p, sub, out);
        }
    }
}

fn crd_json() -> Value {
    serde_json::to_value(tribe_operator::crd::crd()).unwrap()
}

#[test]
fn session_cluster_field_table_matches_the_crd() {
    let crd = crd_json();
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"];
    let mut spec = BTreeMap::new();
    paths("spec", &schema["spec"], &mut spec);
    let readme = read("README.md");
    let rows = table_rows(section(&readme, "### SessionCluster"));
    let mut row_paths = BTreeMap::new();
    let mut status_row = None;
    for row in &rows {
        let Some(first) = code_spans(&row[0]).into_iter().next() else {
            panic!("a row without a field: {row:?}");
        };
        if first == "status" {
            status_row = Some(row.clone());
            continue;
        }
        assert!(
            spec.contains_key(&first),
            "README documents {first}, which the CRD does not have"
        );
        row_paths.insert(first, row.last().cloned().unwrap_or_default());
    }
    for path in spec.keys() {
        // The fields of core/v1 types in `spec.template` are Kubernetes' own
        // (documented upstream): its row names the template's fields, not theirs.
        if let Some(rest) = path.strip_prefix("spec.template.") {
            if rest.contains('.') && !rest.starts_with("metadata.") {
                continue;
            }
        }
        // A row of its own, or an object whose fields have rows.
        if row_paths.contains_key(path)
            || row_paths.keys().any(|p| p.starts_with(&format!("{path}.")))
        {
            continue;
        }
        // A field without a row of its own is named in its nearest documented ancestor's row.
        let parent = row_paths
            .iter()
            .filter(|(p, _)| path.starts_with(&format!("{p}.")))
            .max_by_key(|(p, _)| p.len());
        let Some((parent, what)) = parent else {
            panic!("the CRD's {path} has no row in README's SessionCluster table (add one)");
        };
        let rel = &path[parent.len() + 1..];
        let named = code_spans(what);
        let is_prefix_of_named = named
            .iter()
            .any(|n| n == rel || n.starts_with(&format!("{rel}.")));
        assert!(
            is_prefix_of_named,
            "the CRD's {path} is neither a row nor named (`{rel}`) in the row of {parent}: {what:?}"
        );
    }
    let status_row = status_row.expect("a status row");
    let named: BTreeSet<String> = code_spans(status_row.last().unwrap()).into_iter().collect();
    let status: BTreeSet<String> = schema["status"]["properties"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(
        named, status,
        "README's status row names exactly the status fields"
    );
}

#[test]
fn get_sessionclusters_example_has_the_printer_columns() {
    let crd = crd_json();
    let cols: Vec<String> = crd["spec"]["versions"][0]["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_ascii_uppercase())
        .collect();
    let mut want = vec!["NAME".to_string()];
    want.extend(cols);
    let readme = read("README.md");
    let header = readme
        .lines()
        .find(|l| l.starts_with("NAME "))
        .expect("README shows `kubectl get sessionclusters` output");
    let got: Vec<String> = header.split_whitespace().map(String::from).collect();
    assert_eq!(got, want, "README's example vs the CRD's printer columns");
}

#[test]
fn the_parsers_see_what_they_should() {
    let text = "# A\n\n## B\n| a | b |\n|---|---|\n| `x` | y |\n| `--f`, `--g` | `TRIBE_F`, `TRIBE_G` |\n\n## C\nz\n";
    let b = section(text, "## B");
    assert!(b.contains("`x`") && !b.contains('z'), "{b:?}");
    let rows = table_rows(b);
    assert_eq!(rows.len(), 2);
    assert_eq!(code_spans(&rows[1][0]), ["--f", "--g"]);
    assert_eq!(code_spans(&rows[1][1]), ["TRIBE_F", "TRIBE_G"]);
}

// ---------------------------------------------------------------------------------------
// The examples

/// `examples/*.yaml` and the shop's manifest (paths from the repository root).
fn example_files() -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(repo_root().join("examples"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .map(|n| format!("examples/{n}"))
        .collect();
    files.sort();
    files.push("examples/shop/k8s.yaml".into());
    assert!(files.len() >= 8, "{files:?}");
    files
}

/// The objects a SessionCluster refers to by name, as `Kind/name`.
fn references(sc: &Value) -> BTreeSet<String> {
    let spec = &sc["spec"];
    let t = &spec["template"];
    let mut refs = BTreeSet::new();
    let mut add = |kind: &str, name: &Value| {
        if let Some(n) = name.as_str() {
            refs.insert(format!("{kind}/{n}"));
        }
    };
    add("ServiceAccount", &t["serviceAccountName"]);
    add("PriorityClass", &t["priorityClassName"]);
    add("StorageClass", &spec["persistence"]["storageClassName"]);
    add("Secret", &spec["ingress"]["tls"]["secretName"]);
    add(
        "Secret",
        &spec["persistence"]["postgres"]["secretRef"]["name"],
    );
    for s in t["imagePullSecrets"].as_array().into_iter().flatten() {
        add("Secret", &s["name"]);
    }
    for e in t["envFrom"].as_array().into_iter().flatten() {
        add("ConfigMap", &e["configMapRef"]["name"]);
        add("Secret", &e["secretRef"]["name"]);
    }
    for v in t["volumes"].as_array().into_iter().flatten() {
        add("ConfigMap", &v["configMap"]["name"]);
        add("Secret", &v["secret"]["secretName"]);
        add(
            "PersistentVolumeClaim",
            &v["persistentVolumeClaim"]["claimName"],
        );
    }
    for e in t["env"].as_array().into_iter().flatten() {
        add("ConfigMap", &e["valueFrom"]["configMapKeyRef"]["name"]);
        add("Secret", &e["valueFrom"]["secretKeyRef"]["name"]);
    }
    refs
}

/// `Kind/name` mentioned in the comments of a manifest: what it documents as needed.
fn documented(text: &str) -> BTreeSet<String> {
    let kinds = [
        "Secret/",
        "ConfigMap/",
        "StorageClass/",
        "ServiceAccount/",
        "PriorityClass/",
        "PersistentVolumeClaim/",
    ];
    let mut out = BTreeSet::new();
    for line in text.lines().filter(|l| l.trim_start().starts_with('#')) {
        for word in line.split(|c: char| c.is_whitespace() || c == '`' || c == ',') {
            if kinds.iter().any(|k| word.starts_with(k)) {
                out.insert(word.trim_end_matches(['.', ')', ':']).to_string());
            }
        }
    }
    out
}

#[test]
fn examples_refer_only_to_objects_they_create_or_document() {
    for file in example_files() {
        if file.ends_with("invalid.yaml") {
            continue;
        }
        let text = read(&file);
        let docs = support::yaml_docs(&text);
        let created: BTreeSet<String> = docs
            .iter()
            .map(|d| {
                format!(
                    "{}/{}",
                    d["kind"].as_str().unwrap(),
                    d["metadata"]["name"].as_str().unwrap()
                )
            })
            .collect();
        let documented = documented(&text);
        let clusters: Vec<&Value> = docs
            .iter()
            .filter(|d| d["kind"] == "SessionCluster")
            .collect();
        assert!(!clusters.is_empty(), "{file} has a SessionCluster");
        for sc in clusters {
            for r in references(sc) {
                assert!(
                    created.contains(&r) || documented.contains(&r),
                    "{file} refers to {r}, which it neither creates nor names in a comment \
                     (created: {created:?}, documented: {documented:?})"
                );
            }
        }
    }
}

#[test]
fn the_reference_finder_sees_what_it_should() {
    let sc: Value = serde_json::json!({"spec": {
        "ingress": {"tls": {"secretName": "tls"}},
        "persistence": {"storageClassName": "fast"},
        "template": {"serviceAccountName": "sa", "imagePullSecrets": [{"name": "pull"}],
            "envFrom": [{"configMapRef": {"name": "cm"}}]}}});
    let want: BTreeSet<String> = [
        "Secret/tls",
        "StorageClass/fast",
        "ServiceAccount/sa",
        "Secret/pull",
        "ConfigMap/cm",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(references(&sc), want);
    assert_eq!(
        documented("# Needs: Secret/a, `ConfigMap/b`.\nkind: Secret/c\n"),
        ["ConfigMap/b", "Secret/a"]
            .into_iter()
            .map(String::from)
            .collect()
    );
}

/// Each example is accepted by a real API server (server-side dry run, the repository's
/// CRD installed): the schema, the CEL rules and every other object's own validation.
/// `invalid.yaml` must be refused.
#[test]
fn examples_pass_a_server_side_dry_run() {
    let Some(plane) = support::ControlPlane::start("examples") else {
        return;
    };
    plane.install_crd();
    let ns = plane.ns("examples");
    plane.create_namespace(&ns);
    for file in example_files() {
        let path = repo_root().join(&file);
        let result = plane.try_k(&[
            "-n",
            &ns,
            "apply",
            "--server-side",
            "--field-manager=tribe-test",
            "--dry-run=server",
            "--validate=false",
            "-f",
            path.to_str().unwrap(),
        ]);
        if file.ends_with("invalid.yaml") {
            let err = result.expect_err("examples/invalid.yaml must be refused");
            assert!(err.contains("is invalid"), "{err}");
        } else {
            result.unwrap_or_else(|e| panic!("{file} must pass a server-side dry run: {e}"));
        }
    }
}

// ---------------------------------------------------------------------------------------
// The Prometheus examples

/// The Prometheus configuration loads, with the rules beside it (`promtool check
/// config` reads `rule_files` relative to the file); and prometheus.yml names the metrics
/// Service that `helm install tribe charts/tribe-operator -n tribe-system` (README's
/// command) creates.
#[test]
fn prometheus_examples_pass_promtool_and_name_the_charts_service() {
    let promtool = support::require_tool("promtool");
    for file in ["examples/prometheus/prometheus.yml"] {
        let out = run(Command::new(&promtool)
            .args(["check", "config"])
            .arg(repo_root().join(file)))
        .unwrap_or_else(|e| panic!("promtool check config {file}: {e}"));
        assert!(
            out.contains("SUCCESS") && out.contains("rule"),
            "{file}: {out}"
        );
    }

    let readme = read("README.md");
    assert!(
        readme.contains("helm install tribe charts/tribe-operator -n tribe-system"),
        "README installs release `tribe` in `tribe-system`"
    );
    let rendered = run(Command::new(support::require_tool("helm")).args([
        "template",
        "tribe",
        repo_root().join("charts/tribe-operator").to_str().unwrap(),
        "--namespace",
        "tribe-system",
    ]))
    .unwrap_or_else(|e| panic!("{e}"));
    let service = support::yaml_docs(&rendered)
        .into_iter()
        .find(|d| {
            d["kind"] == "Service"
                && d["metadata"]["labels"]["app.kubernetes.io/component"] == "metrics"
        })
        .expect("the chart renders a metrics Service");
    let target = format!(
        "{}.tribe-system.svc:{}",
        service["metadata"]["name"].as_str().unwrap(),
        service["spec"]["ports"][0]["port"]
    );
    let config = read("examples/prometheus/prometheus.yml");
    assert!(
        config.contains(&format!("http://{target}/sd/nodes"))
            && config.contains(&format!("[{target}]")),
        "prometheus.yml scrapes the chart's metrics Service {target}:\n{config}"
    );
}

// ---------------------------------------------------------------------------------------
// Figures and commands

/// Every figure of the Benchmarks table names the command that produces it, and that
/// command's section exists in `tribe-bench`.
#[test]
fn benchmark_figures_name_their_commands() {
    let readme = read("README.md");
    let rows = table_rows(section(&readme, "## Benchmarks"));
    assert!(rows.len() >= 10, "{rows:?}");
    let bench = read("bench/src/main.rs");
    let sections = bench
        .lines()
        .find(|l| l.contains("[--only "))
        .expect("tribe-bench's usage line names its sections");
    for row in rows {
        let command = code_spans(row.last().unwrap())
            .into_iter()
            .find(|c| c.starts_with("tribe-bench"))
            .unwrap_or_else(|| panic!("a figure without its command: {row:?}"));
        if let Some(only) = command.split("--only ").nth(1) {
            for s in only.split_whitespace().next().unwrap().split(',') {
                assert!(
                    sections.contains(s) || bench.contains(&format!("--only {s}")),
                    "{command}: tribe-bench has no section {s}"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// What the tests need

/// README's list of what `scripts/test` installs names every package
/// `scripts/install-test-deps` installs.
#[test]
fn readme_names_every_package_the_tests_install() {
    let script = read("scripts/install-test-deps");
    let mut packages = BTreeSet::new();
    for line in script.lines().filter(|l| !l.trim_start().starts_with('#')) {
        for part in line.split("need+=(").skip(1) {
            packages.extend(
                part.split(')')
                    .next()
                    .unwrap()
                    .split_whitespace()
                    .map(String::from),
            );
        }
        if let Some(rest) = line.split("apt-get install").nth(1) {
            packages.extend(
                rest.split(['>', ';', '|', '&', ')'])
                    .next()
                    .unwrap()
                    .split_whitespace()
                    .filter(|w| !w.starts_with('-') && !w.starts_with('"'))
                    .map(String::from),
            );
        }
    }
    assert!(packages.len() >= 10, "{packages:?}");
    let readme = read("README.md");
    let quick = section(&readme, "## Quick start");
    let named: BTreeSet<String> = code_spans(&quick.replace('\n', " ")).into_iter().collect();
    let missing: Vec<&String> = packages.iter().filter(|p| !named.contains(*p)).collect();
    assert!(
        missing.is_empty(),
        "README's Quick start does not name these packages of scripts/install-test-deps: {missing:?}"
    );
}

/// README's list of the Kubernetes suites is exactly the test files that start a control
/// plane.
#[test]
fn readme_names_every_suite_that_needs_a_control_plane() {
    let mut suites = BTreeSet::new();
    for e in std::fs::read_dir(repo_root().join("operator/tests"))
        .unwrap()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".rs") {
            continue;
        }
        let text = std::fs::read_to_string(e.path()).unwrap();
        if text.contains("ControlPlane::start(") || text.contains("plane_with_pods(") {
            suites.insert(name);
        }
    }
    let readme = read("README.md");
    let start = readme
        .find("The Kubernetes suites (")
        .expect("README lists the Kubernetes suites");
    let list = &readme[start..start + readme[start..].find(") need").unwrap()];
    let named: BTreeSet<String> = code_spans(list)
        .into_iter()
        .map(|s| s.trim_start_matches("operator/tests/").to_string())
        .collect();
    assert_eq!(
        named, suites,
        "README's Kubernetes suites vs the tests that start a control plane"
    );
}

/// Every Markdown file a document of the repository names exists.
#[test]
fn cited_markdown_files_exist() {
    let docs = [
        "README.md",
        "operator/README.md",
        "node/README.md",
        "node/REPLICATION.md",
        "operator/RBAC.md",
        "charts/tribe-operator/README.md",
        "docs/architecture.md",
        "examples/README.md",
        "bench/README.md",
    ];
    for doc in docs {
        let text = read(doc);
        let dir = repo_root().join(doc).parent().unwrap().to_path_buf();
        for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || "._/-".contains(c))) {
            let Some(stem) = word.strip_suffix(".md") else {
                continue;
            };
            if stem.is_empty() || word.starts_with("http") {
                continue;
            }
            let found = dir.join(word).is_file()
                || repo_root().join(word).is_file()
                || (!word.contains('/') && walk_has(&repo_root(), word));
            assert!(found, "{doc} cites {word}, which is not in the repository");
        }
    }
}

/// Whether a file named `name` is anywhere in the repository (outside target/ and .git).
fn walk_has(dir: &std::path::Path, name: &str) -> bool {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| {
            let n = e.file_name();
            let p = e.path();
            if p.is_dir() {
                !matches!(
                    n.to_str(),
                    Some("target" | ".git" | ".tools" | "node_modules")
                ) && walk_has(&p, name)
            } else {
                n == name
            }
        })
}

/// LICENSE holds the licence the crates declare (Apache-2.0, the full text), and the
/// changelog has a section for the crates' version.
#[test]
fn license_and_changelog_match_the_crates() {
    let cargo = read("Cargo.toml");
    assert!(
        cargo.contains("license = \"Apache-2.0\""),
        "the workspace declares Apache-2.0"
    );
    let license = read("LICENSE");
    for phrase in [
        "Apache License",
        "Version 2.0, January 2004",
        "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION",
        "END OF TERMS AND CONDITIONS",
        "APPENDIX: How to apply the Apache License to your work.",
    ] {
        assert!(
            license.contains(phrase),
            "LICENSE is the full Apache-2.0 text: no {phrase:?}"
        );
    }
    let changelog = read("CHANGELOG.md");
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        changelog.contains(&format!("\n## [{version}]")),
        "CHANGELOG.md has a section for {version}"
    );
}
