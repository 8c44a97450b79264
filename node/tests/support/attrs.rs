//! Static-peer arguments, one session attribute (`/attrs/v`) written and read over HTTP,
//! the handshake-failure counter, and key files written as Kubernetes writes a Secret
//! volume: the helpers the channel suites (`secure_channel`, `channel_hardening`) share.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use super::{eventually, Addrs, Node};

/// Spawns a node on loopback with owned arguments.
pub fn spawn(name: &str, addrs: Addrs, args: &[String]) -> Node {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Node::spawn(name, addrs, None, &args)
}

/// `--membership static --peers <peers>` and `extra`.
pub fn static_peers(peers: &[SocketAddr], extra: &[&str]) -> Vec<String> {
    let peers: Vec<String> = peers.iter().map(|p| p.to_string()).collect();
    let mut v: Vec<String> = vec![
        "--membership".into(),
        "static".into(),
        "--peers".into(),
        peers.join(","),
    ];
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

/// Writes `value` as the session's attribute `v` on `node` (a new session when `sid` is
/// `None`); returns the session id. Panics unless the node answers 200.
pub async fn put_attr(node: &Node, sid: Option<&str>, value: Value) -> String {
    let mut req = reqwest::Client::new()
        .put(format!("http://{}/attrs/v", node.addrs.http))
        .header("content-type", "application/json")
        .body(value.to_string());
    if let Some(sid) = sid {
        req = req.header("cookie", format!("SESSIONID={sid}"));
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200, "write on {}", node.name);
    let body: Value = resp.json().await.unwrap();
    body["session"].as_str().unwrap().to_string()
}

/// The session's attribute `v` as `node` serves it (bounded by 2 s).
pub async fn get_attr(node: &Node, sid: &str) -> Result<Value, String> {
    let resp = reqwest::Client::new()
        .get(format!("http://{}/attrs/v", node.addrs.http))
        .header("cookie", format!("SESSIONID={sid}"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if resp.status() != 200 {
        return Err(format!("{} answered {}", node.name, resp.status()));
    }
    resp.json().await.map_err(|e| e.to_string())
}

/// Waits (bounded by `within`) until `node` serves `want` as the session's attribute.
pub async fn wait_attr(node: &Node, sid: &str, want: &Value, within: Duration) {
    eventually(&format!("{} to hold {want}", node.name), within, || async {
        match get_attr(node, sid).await? {
            v if &v == want => Ok(()),
            v => Err(format!("has {v}")),
        }
    })
    .await;
}

/// `tribe_handshake_failures_total{reason}` on `node` (0 when the series is absent).
pub async fn failures(node: &Node, reason: &str) -> f64 {
    let (_, text) = node.get("/metrics", true).await.unwrap();
    let series = format!("tribe_handshake_failures_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

/// Replaces a key file atomically, as Kubernetes does for a Secret volume.
pub fn write_key_file(path: &Path, content: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}
