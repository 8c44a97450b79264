//! The admin port's session endpoints against real `tribe-node` processes: `GET
//! /sessions` pages through the sessions in id order without values, `GET
//! /sessions/{id}` shows values only when asked, `DELETE /sessions/{id}` expires a
//! session on every node, bad ids are a clear 400; and `/metrics` carries the reads,
//! writes, readiness and memory gauges.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::Method;
use serde_json::Value;
use support::*;

/// The admin token of the test nodes (they run `--insecure`: the well-known key).
fn token() -> String {
    tribe_node::http::sessions::admin_token(&tribe_node::ClusterKey::insecure())
}

async fn admin(node: &Node, method: Method, path: &str) -> (u16, Value) {
    admin_with(node, method, path, Some(&token())).await
}

async fn admin_with(node: &Node, method: Method, path: &str, token: Option<&str>) -> (u16, Value) {
    let url = format!("http://{}{path}", node.addrs.admin);
    let mut req = reqwest::Client::new().request(method, url);
    if let Some(t) = token {
        req = req.header("x-tribe-admin-token", t);
    }
    let resp = req
        .timeout(Duration::from_secs(3))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_can_be_listed_inspected_and_expired() {
    let mut nodes = static_cluster(2, &[]);
    wait_formed(&mut nodes).await;
    let (a, b) = (&nodes[0], &nodes[1]);

    // Five sessions on node a; one carries a secret attribute.
    let mut clients = vec![];
    let mut ids = BTreeSet::new();
    for i in 0..5 {
        let mut c = HttpClient::new();
        let v = c.post_counter(a).await.unwrap();
        ids.insert(v["session"].as_str().unwrap().to_string());
        if i == 0 {
            let (s, _) = c
                .request(
                    Method::PUT,
                    a.addrs.http,
                    "/attrs/card",
                    Some("\"4111-secret\"".into()),
                )
                .await
                .unwrap();
            assert!(s < 300, "PUT answered {s}");
        }
        clients.push(c);
    }
    let secret_id = clients[0].cookie("SESSIONID").unwrap().to_string();

    // Both nodes list all five (delta mode), in pages of two, never with values.
    for node in [a, b] {
        let mut seen = vec![];
        let pages = eventually("five sessions listed", Duration::from_secs(10), || async {
            let (s, first) = admin(node, Method::GET, "/sessions?limit=2").await;
            if s == 200 && first["total"] == 5 {
                Ok(first)
            } else {
                Err(format!("{s}: {first}"))
            }
        })
        .await;
        let mut page = pages;
        loop {
            let text = page.to_string();
            assert!(
                !text.contains("4111-secret"),
                "a listing shows no values: {text}"
            );
            let list = page["sessions"].as_array().unwrap();
            assert!(list.len() <= 2, "{text}");
            for s in list {
                assert_eq!(s["role"], "replica");
                let owners: BTreeSet<&str> = s["owners"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|o| o.as_str().unwrap())
                    .collect();
                let names: BTreeSet<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
                assert_eq!(owners, names, "{text}");
                assert!(s["attributes"].as_u64().unwrap() >= 1);
                assert!(s["size"].as_u64().unwrap() > 0);
                assert!(s["expires"].as_u64() > s["last_access"].as_u64());
                seen.push(s["id"].as_str().unwrap().to_string());
            }
            let Some(after) = page["next"].as_str() else {
                break;
            };
            let path = format!("/sessions?limit=2&after={after}");
            let (s, p) = admin(node, Method::GET, &path).await;
            assert_eq!(s, 200, "{p}");
            page = p;
        }
        assert_eq!(seen.len(), 5, "every session once: {seen:?}");
        assert_eq!(seen.iter().cloned().collect::<BTreeSet<_>>(), ids);
    }

    // Inspect: names always, values only on request.
    let (s, d) = admin(b, Method::GET, &format!("/sessions/{secret_id}")).await;
    assert_eq!(s, 200, "{d}");
    assert_eq!(d["attribute_names"], serde_json::json!(["card", "counter"]));
    assert!(d.get("values").is_none(), "{d}");
    assert!(!d.to_string().contains("4111-secret"));
    let (s, d) = admin(
        b,
        Method::GET,
        &format!("/sessions/{secret_id}?values=true"),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(d["values"]["card"], "4111-secret");
    assert_eq!(d["values"]["counter"], 1);

    // Without the token, or with another key's: 401 and nothing listed.
    let other = tribe_node::http::sessions::admin_token(&tribe_node::ClusterKey::new(
        b"another key, 16+ bytes",
    ));
    for t in [None, Some("zz"), Some(other.as_str())] {
        let (s, d) = admin_with(a, Method::GET, "/sessions", t).await;
        assert_eq!(s, 401, "{t:?}: {d}");
        assert!(!d.to_string().contains(&secret_id), "{d}");
        let (s, _) = admin_with(
            a,
            Method::GET,
            &format!("/sessions/{secret_id}?values=true"),
            t,
        )
        .await;
        assert_eq!(s, 401);
        let (s, _) = admin_with(a, Method::DELETE, &format!("/sessions/{secret_id}"), t).await;
        assert_eq!(s, 401);
    }

    // Bad and unknown ids.
    let (s, d) = admin(a, Method::GET, "/sessions/not-an-id").await;
    assert_eq!(s, 400, "{d}");
    assert!(d["error"].as_str().unwrap().contains("not a session id"));
    let (s, _) = admin(a, Method::GET, "/sessions?after=%%%").await;
    assert_eq!(s, 400);
    let unknown = "AAAAAAAAAAAAAAAAAAAAAA";
    assert_eq!(
        admin(a, Method::GET, &format!("/sessions/{unknown}"))
            .await
            .0,
        404
    );
    assert_eq!(
        admin(a, Method::DELETE, &format!("/sessions/{unknown}"))
            .await
            .0,
        404
    );
    // An oversized limit is clamped, not honoured.
    let (s, p) = admin(a, Method::GET, "/sessions?limit=1000000").await;
    assert_eq!(s, 200);
    assert_eq!(p["sessions"].as_array().unwrap().len(), 5);

    // Expire through node b: gone on both nodes, and the client starts afresh.
    let (s, d) = admin(b, Method::DELETE, &format!("/sessions/{secret_id}")).await;
    assert_eq!(s, 200, "{d}");
    for node in [a, b] {
        eventually(
            "the expired session gone",
            Duration::from_secs(10),
            || async {
                let (s, _) = admin(node, Method::GET, &format!("/sessions/{secret_id}")).await;
                if s == 404 {
                    Ok(())
                } else {
                    Err(format!("status {s}"))
                }
            },
        )
        .await;
    }
    let v = clients[0].post_counter(a).await.unwrap();
    assert_eq!(v["counter"], 1, "a fresh session after expiry: {v}");
    assert_ne!(v["session"].as_str().unwrap(), secret_id);

    // The day-two metrics are there and move.
    let text = a.get("/metrics", true).await.unwrap().1;
    for name in [
        "tribe_session_loads_total",
        "tribe_session_saves_total",
        "tribe_ready 1",
        "tribe_resident_memory_bytes",
        "tribe_memory_limit_bytes",
    ] {
        assert!(text.contains(name), "{name} missing:\n{text}");
    }
    assert!(
        a.metric("tribe_session_saves_total")
            .await
            .unwrap()
            .unwrap()
            >= 6.0
    );
    assert!(
        a.metric("tribe_resident_memory_bytes")
            .await
            .unwrap()
            .unwrap()
            > 1e6
    );
}

/// Operations (issue 22): the build version in `/cluster`, in `tribe_build_info` and in
/// `--version`; and with no `--log-format`, a node whose stderr is not a terminal (here a
/// file) logs one JSON object per line, no colour codes, each naming the node and its
/// cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_reports_its_version_and_logs_json_off_a_terminal() {
    let version = env!("CARGO_PKG_VERSION");
    let mut node = Node::spawn_env(
        "json1",
        Addrs::loopback(),
        None,
        &["--cluster", "logs", "--membership", "static"],
        // Unset (the harness removes a variable given empty): the node's own default,
        // and colour allowed as far as the environment goes.
        &[("TRIBE_LOG_FORMAT", ""), ("NO_COLOR", "")],
    );
    node.wait_ready(Duration::from_secs(30)).await;
    let view = node.cluster().await.unwrap();
    assert_eq!(view["version"], version, "/cluster: {view}");
    let (_, metrics) = node.get("/metrics", true).await.unwrap();
    assert!(
        metrics.contains(&format!("tribe_build_info{{version=\"{version}\"}} 1")),
        "{metrics}"
    );
    let out = std::process::Command::new(node_bin())
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("tribe-node {version}")
    );

    let log = node.log();
    assert!(!log.contains('\u{1b}'), "no colour codes in a file:\n{log}");
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.len() >= 2, "{log}");
    for line in &lines {
        assert!(
            line["timestamp"].is_string() && line["level"].is_string(),
            "{line}"
        );
        let span = &line["spans"][0];
        assert_eq!(
            (&span["node"], &span["cluster"]),
            (&"json1".into(), &"logs".into()),
            "{line}"
        );
    }
    assert!(
        lines
            .iter()
            .any(|l| l["message"] == "tribe-node starting" && l["version"] == version),
        "{log}"
    );
}
