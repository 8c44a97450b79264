//! Polls each ready node's admin `GET /cluster` with a short timeout. A node that does
//! not answer in time, or answers something unparsable, counts as unknown.

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use std::time::Duration;

/// How long one node gets to answer.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Largest `/cluster` body read.
const MAX_BODY: usize = 1 << 20;

/// One node's view of the cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeReport {
    /// The reporting node's id, when it says.
    pub node: Option<String>,
    /// Ids (or addresses) of the members it sees as live.
    pub members: Vec<String>,
    /// Sessions it holds.
    pub sessions: i64,
    /// Sessions it holds as primary owner (backup mode), when it says.
    pub primary: Option<i64>,
}

fn ident(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(m) => ["node", "id", "node_id", "nodeId", "name", "addr", "address"]
            .iter()
            .find_map(|k| m.get(*k))
            .and_then(ident),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn is_gone(v: &Value) -> bool {
    let state = v
        .get("state")
        .or_else(|| v.get("status"))
        .and_then(Value::as_str)
        .unwrap_or("");
    matches!(
        state.to_ascii_lowercase().as_str(),
        "dead" | "left" | "gone" | "down"
    )
}

/// Parses a `/cluster` body: at least `{"members": [...], "sessions": N}`; members may
/// be strings or objects with an `id`. `None` when it does not have that shape.
pub fn parse_report(body: &[u8]) -> Option<NodeReport> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let members = v.get("members")?.as_array()?;
    let sessions = v.get("sessions")?;
    let sessions = sessions
        .as_i64()
        .or_else(|| sessions.as_array().map(|a| a.len() as i64))?;
    let node = ["node", "node_id", "nodeId", "id"]
        .iter()
        .find_map(|k| v.get(*k))
        .and_then(ident);
    Some(NodeReport {
        node,
        members: members
            .iter()
            .filter(|m| !is_gone(m))
            .filter_map(ident)
            .collect(),
        sessions: sessions.max(0),
        primary: v.get("primary").and_then(Value::as_i64).map(|p| p.max(0)),
    })
}

/// An HTTP client for the nodes' admin ports.
#[derive(Clone)]
pub struct Prober {
    client: Client<HttpConnector, Empty<Bytes>>,
    timeout: Duration,
}

impl Default for Prober {
    fn default() -> Self {
        Self::new(PROBE_TIMEOUT)
    }
}

impl Prober {
    /// A prober that gives each node `timeout`.
    pub fn new(timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Self { client, timeout }
    }

    /// `GET http://<addr>/cluster`; `None` on timeout, error or a body of another shape.
    pub async fn report(&self, addr: &str) -> Option<NodeReport> {
        parse_report(&self.fetch(addr, "/cluster").await?)
    }

    /// `GET http://<addr><path>`: the body of a 2xx answer (at most 1 MiB), `None` on
    /// timeout, error or another status.
    pub async fn fetch(&self, addr: &str, path: &str) -> Option<Bytes> {
        let uri: http::Uri = format!("http://{addr}{path}").parse().ok()?;
        let fetch = async {
            let resp = self.client.get(uri).await.ok()?;
            if !resp.status().is_success() {
                return None;
            }
            Limited::new(resp.into_body(), MAX_BODY)
                .collect()
                .await
                .ok()
                .map(|b| b.to_bytes())
        };
        match tokio::time::timeout(self.timeout, fetch).await {
            Ok(r) => r,
            Err(_) => {
                tracing::debug!(addr, "node /cluster timed out");
                None
            }
        }
    }

    /// Polls all `addrs` concurrently; returns the reports that came back.
    pub async fn reports(&self, addrs: &[String]) -> Vec<NodeReport> {
        futures::future::join_all(addrs.iter().map(|a| self.report(a)))
            .await
            .into_iter()
            .flatten()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    #[test]
    fn parses_string_and_object_members() {
        let r = parse_report(br#"{"node":"a","members":["a","b"],"sessions":7}"#).unwrap();
        assert_eq!(
            r,
            NodeReport {
                node: Some("a".into()),
                members: vec!["a".into(), "b".into()],
                sessions: 7,
                primary: None,
            }
        );
        let r = parse_report(
            br#"{"node":{"id":"a"},"members":[{"id":"b","state":"alive"},{"id":"c","state":"dead"}],"sessions":3,"x":1}"#,
        )
        .unwrap();
        assert_eq!(r.node.as_deref(), Some("a"));
        assert_eq!(r.members, vec!["b".to_string()]);
    }

    #[test]
    fn parses_the_nodes_cluster_view() {
        // The shape tribe-node serves (node/src/cluster/mod.rs ClusterView).
        let body = br#"{"node":"shop-1","cluster":"web.shop","incarnation":1,"replication":"backup","backups":1,
            "send_mode":"async","ready":true,"sessions":12,"primary":6,"backup":6,"rereplication_backlog":0,
            "members":[{"node":"shop-2","addr":"10.0.0.2:4000","state":"alive","incarnation":3},
                       {"node":"shop-3","addr":"10.0.0.3:4000","state":"suspect","incarnation":4}]}"#;
        let r = parse_report(body).unwrap();
        assert_eq!(r.node.as_deref(), Some("shop-1"));
        assert_eq!(r.members, vec!["shop-2".to_string(), "shop-3".to_string()]);
        assert_eq!((r.sessions, r.primary), (12, Some(6)));
    }

    #[test]
    fn unparsable_is_unknown() {
        assert_eq!(parse_report(b"not json"), None);
        assert_eq!(parse_report(br#"{"members":3}"#), None);
        assert_eq!(parse_report(br#"{"sessions":3}"#), None);
    }

    async fn serve_once(reply: Option<&'static str>) -> String {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            match reply {
                Some(body) => {
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    s.write_all(resp.as_bytes()).await.unwrap();
                }
                // Hold the connection open and never answer.
                None => tokio::time::sleep(Duration::from_secs(30)).await,
            }
        });
        addr
    }

    #[tokio::test]
    async fn real_socket_report() {
        let addr = serve_once(Some(r#"{"members":["a","b","c"],"sessions":5}"#)).await;
        let r = Prober::default().report(&addr).await.unwrap();
        assert_eq!(r.members.len(), 3);
        assert_eq!(r.sessions, 5);
    }

    #[tokio::test]
    async fn silent_node_times_out_quickly() {
        let addr = serve_once(None).await;
        let start = std::time::Instant::now();
        let r = Prober::new(Duration::from_millis(200)).report(&addr).await;
        assert_eq!(r, None);
        assert!(start.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn refused_connection_is_unknown() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        drop(l);
        assert_eq!(Prober::default().reports(&[addr]).await, vec![]);
    }
}
