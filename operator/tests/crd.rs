//! The committed CRD is what `tribe-operator crd` prints, and it is a structural schema
//! with the validation the contract promises.

use serde_json::Value;
use std::path::Path;
use tribe_operator::crd::{crd, crd_yaml};

fn committed() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds/sessioncluster.yaml");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn committed_crd_is_current() {
    assert!(
        committed() == crd_yaml(),
        "crds/sessioncluster.yaml is stale: run `cargo run -p tribe-operator -- crd > crds/sessioncluster.yaml`"
    );
}

#[test]
fn binary_prints_the_crd() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tribe-operator"))
        .arg("crd")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap(), crd_yaml());
}

fn schema() -> Value {
    let crd = serde_json::to_value(crd()).unwrap();
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

/// Walks every schema node, checking the structural-schema rules of
/// apiextensions.k8s.io/v1 (what a real API server enforces on a CRD).
fn walk(node: &Value, path: &str, problems: &mut Vec<String>) {
    let obj = node
        .as_object()
        .unwrap_or_else(|| panic!("{path}: schema node is not an object"));
    let int_or_string = obj.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    let preserve = obj.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    if !obj.contains_key("type") && !int_or_string && !preserve {
        problems.push(format!("{path}: no type"));
    }
    for key in [
        "oneOf",
        "allOf",
        "not",
        "$ref",
        "definitions",
        "$schema",
        "additionalItems",
        "patternProperties",
    ] {
        if obj.contains_key(key) {
            problems.push(format!("{path}: {key} is not allowed here"));
        }
    }
    if let Some(any) = obj.get("anyOf") {
        if !int_or_string {
            problems.push(format!("{path}: anyOf outside an int-or-string node"));
        }
        for (i, alt) in any.as_array().unwrap().iter().enumerate() {
            let t = alt.get("type").and_then(Value::as_str);
            if !matches!(t, Some("integer") | Some("string")) {
                problems.push(format!(
                    "{path}.anyOf[{i}]: untyped or unexpected alternative {alt}"
                ));
            }
        }
    }
    if obj.get("type").and_then(Value::as_str) == Some("object") {
        let props = obj.get("properties");
        let additional = obj.get("additionalProperties");
        if props.is_some() && additional.is_some() {
            problems.push(format!(
                "{path}: properties and additionalProperties together"
            ));
        }
        if props.is_none() && additional.is_none() && !preserve {
            problems.push(format!(
                "{path}: object without properties (would prune everything)"
            ));
        }
        if let Some(Value::Object(ps)) = props {
            for (k, v) in ps {
                walk(v, &format!("{path}.{k}"), problems);
            }
        }
        if let Some(a @ Value::Object(_)) = additional {
            walk(a, &format!("{path}[*]"), problems);
        }
    }
    if obj.get("type").and_then(Value::as_str) == Some("array") {
        match obj.get("items") {
            Some(items) => walk(items, &format!("{path}[]"), problems),
            None => problems.push(format!("{path}: array without items")),
        }
    }
}

#[test]
fn schema_is_structural() {
    let mut problems = Vec::new();
    walk(&schema(), "", &mut problems);
    assert!(
        problems.is_empty(),
        "not structural:\n{}",
        problems.join("\n")
    );
}

#[test]
fn schema_validates_at_apply_time() {
    let s = schema();
    let spec = &s["properties"]["spec"];
    let p = &spec["properties"];
    assert_eq!(p["replicas"]["type"], "integer");
    assert_eq!(p["replicas"]["minimum"].as_f64(), Some(0.0));
    assert_eq!(
        p["membership"]["enum"],
        serde_json::json!(["auto", "multicast", "dns"])
    );
    assert_eq!(
        p["replication"]["properties"]["mode"]["enum"],
        serde_json::json!(["delta", "backup"])
    );
    assert_eq!(
        p["replication"]["properties"]["sendMode"]["enum"],
        serde_json::json!(["async", "sync"])
    );
    assert_eq!(
        p["session"]["properties"]["timeout"]["pattern"],
        "^[0-9]+(ms|s|m|h)$"
    );
    // No baked-in node image: a SessionCluster without one runs the operator's (and
    // follows it across operator upgrades); a default here would be stored in each object.
    assert!(p["image"].get("default").is_none(), "{}", p["image"]);
    assert_eq!(p["image"]["minLength"], 1);
    let rules = spec["x-kubernetes-validations"]
        .as_array()
        .expect("CEL rules on spec");
    assert!(rules.iter().any(|r| r["rule"]
        .as_str()
        .unwrap()
        .contains("self.replication.backups < self.replicas")));
    // Quantities are int-or-string.
    let q = &p["resources"]["properties"]["limits"]["additionalProperties"];
    assert_eq!(q["x-kubernetes-int-or-string"], true);
    // Conditions merge by type under server-side apply.
    let conds = &s["properties"]["status"]["properties"]["conditions"];
    assert_eq!(conds["x-kubernetes-list-type"], "map");
    assert_eq!(
        conds["x-kubernetes-list-map-keys"],
        serde_json::json!(["type"])
    );
}

#[test]
fn subresources_and_printer_columns() {
    let crd = serde_json::to_value(crd()).unwrap();
    let v = &crd["spec"]["versions"][0];
    assert_eq!(crd["spec"]["group"], "tribe.rs");
    assert_eq!(crd["spec"]["names"]["plural"], "sessionclusters");
    assert_eq!(v["name"], "v1alpha1");
    assert!(v["subresources"]["status"].is_object());
    let scale = &v["subresources"]["scale"];
    assert_eq!(scale["specReplicasPath"], ".spec.replicas");
    assert_eq!(scale["statusReplicasPath"], ".status.replicas");
    assert_eq!(scale["labelSelectorPath"], ".status.selector");
    let cols: Vec<_> = v["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        cols,
        ["Replicas", "Ready", "Members", "Sessions", "Age", "Image"]
    );
    // The image (status.image, what the operator applies) with `-o wide` only.
    let image = &v["additionalPrinterColumns"][5];
    assert_eq!(image["jsonPath"], ".status.image");
    assert_eq!(image["priority"], 1);
}

/// Integer bounds are integers in the YAML the chart and `kubectl apply` use (`0`, not
/// `0.0`): some validators and diff tools treat `0.0` as a number that is not an integer.
#[test]
fn integer_bounds_are_integers_in_the_yaml() {
    let yaml = tribe_operator::crd::crd_yaml();
    for line in yaml.lines() {
        let t = line.trim();
        if t.starts_with("minimum:") || t.starts_with("maximum:") {
            let v = t.split_once(':').unwrap().1.trim();
            assert!(v.parse::<i64>().is_ok(), "not an integer bound: {line}");
        }
    }
    assert!(yaml.contains("minimum: 0"), "{yaml}");
}

#[test]
fn examples_parse_as_session_clusters() {
    use tribe_operator::crd::SessionCluster;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    for name in [
        "minimal.yaml",
        "full.yaml",
        "postgres.yaml",
        "sidecar-express.yaml",
        "sidecar-async-proxy.yaml",
        "sidecar-php.yaml",
    ] {
        let path = dir.join(name);
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        // A file may also create what its SessionCluster refers to (full.yaml: a
        // ServiceAccount, a PriorityClass, a ConfigMap): each SessionCluster in it parses.
        let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut found = 0;
        for doc in docs.into_iter().filter(|d| d["kind"] == "SessionCluster") {
            let sc: SessionCluster =
                serde_json::from_value(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            tribe_operator::controller::validate(&sc.spec)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            found += 1;
        }
        assert_eq!(found, 1, "{name} holds one SessionCluster");
    }
}
