//! Key rotation against a real control plane (`../shared/k8s`; skipped without one): the
//! operator, run as a local process with no node pods, takes the first step of a requested
//! rotation (adds a key, the old one stays primary) and then waits, because no node has
//! confirmed loading it. The later steps (promote, drop) are decided by the same code once
//! nodes report their keys (`rotation::decide`, unit-tested), and the node side of a full
//! rotation under writes is `node/tests/secure_channel.rs`.

mod support;

use std::time::Duration;

use std::collections::BTreeMap;
use support::*;

const OPERATOR_NS: &str = "tribe-system";

/// The Secret's key file and annotations, from one read (two reads could straddle a write).
fn key_file(plane: &ControlPlane, ns: &str) -> Result<(String, BTreeMap<String, String>), String> {
    let out = plane.try_k(&[
        "-n",
        ns,
        "get",
        "secret",
        "shop-key",
        "-o",
        "go-template={{range $k, $v := .metadata.annotations}}{{$k}}={{$v}}\n{{end}}---\n{{index .data \"cluster.key\" | base64decode}}",
    ])?;
    let (ann, text) = out
        .split_once("---\n")
        .ok_or(format!("unexpected output {out:?}"))?;
    let ann = ann
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Ok((text.to_string(), ann))
}

#[test]
fn a_requested_rotation_adds_a_key_and_waits_for_the_nodes() {
    let Some(plane) = ControlPlane::start("rotation") else {
        return;
    };
    plane.install_crd();
    let opns = plane.ns(OPERATOR_NS);
    plane.create_namespace(&opns);
    let ns = plane.ns("shop");
    let ns = ns.as_str();
    plane.create_namespace(ns);
    let _op = Operator::start("op-rot", &plane.kubeconfig, &opns, &[]);
    let manifest = format!(
        "apiVersion: tribe.rs/v1alpha1\nkind: SessionCluster\nmetadata:\n  name: shop\n  namespace: {ns}\nspec:\n  replicas: 2\n"
    );
    plane
        .k_stdin(
            &[
                "apply",
                "--server-side",
                "--field-manager=tribe-test",
                "-f",
                "-",
            ],
            &manifest,
        )
        .unwrap();
    let (original, _) = wait_for("the key Secret", Duration::from_secs(60), || {
        key_file(&plane, ns)
    });
    assert!(
        !original.starts_with("tribe-keys"),
        "a new cluster gets one key"
    );

    plane.k(&[
        "-n",
        ns,
        "annotate",
        "sessioncluster",
        "shop",
        "tribe.rs/rotate-key=r1",
    ]);
    let (rotated, ann) = wait_for("the new key in the Secret", Duration::from_secs(60), || {
        let (text, ann) = key_file(&plane, ns)?;
        if text.starts_with("tribe-keys v1") {
            Ok((text, ann))
        } else {
            Err(format!("still {} bytes, single key", text.len()))
        }
    });
    let lines: Vec<&str> = rotated.lines().collect();
    assert_eq!(
        lines[1], "primary default",
        "the old key stays primary: {rotated}"
    );
    assert_eq!(
        lines[2],
        format!("key default {}", original.trim()),
        "the old key is kept"
    );
    assert!(
        lines[3].starts_with("key k1 ") && lines[3].len() > 20,
        "{rotated}"
    );
    assert_eq!(ann["tribe.rs/rotation-phase"], "added", "{ann:?}");
    assert_eq!(ann["tribe.rs/rotation-request"], "r1");
    assert_eq!(ann["tribe.rs/rotation-new-key"], "k1");

    // No node confirmed it (there are no pods here): the next step must not happen.
    for _ in 0..12 {
        std::thread::sleep(Duration::from_millis(500));
        let (text, ann) = key_file(&plane, ns).unwrap();
        assert_eq!(
            text, rotated,
            "the operator promoted a key no node confirmed"
        );
        assert_eq!(ann["tribe.rs/rotation-phase"], "added");
    }
}
