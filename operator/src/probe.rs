//! Polls each ready node's admin `GET /cluster` with a short timeout. A node that does
//! not answer in time, or answers something unparsable, counts as unknown.

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use std::time::Duration;
use tribe_api::ClusterView;

/// How long one node gets to answer.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Largest `/cluster` body read.
const MAX_BODY: usize = 1 << 20;

/// Parses a node's `/cluster` body (the shared [`ClusterView`]); `None` when it does not
/// have that shape.
pub fn parse_report(body: &[u8]) -> Option<ClusterView> {
    serde_json::from_slice(body).ok()
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
    pub async fn report(&self, addr: &str) -> Option<ClusterView> {
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
    pub async fn reports(&self, addrs: &[String]) -> Vec<ClusterView> {
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
    fn parses_the_nodes_cluster_view() {
        let view = ClusterView {
            node: "shop-1".into(),
            sessions: 12,
            primary: 6,
            ..ClusterView::default()
        };
        let body = serde_json::to_vec(&view).unwrap();
        assert_eq!(parse_report(&body), Some(view));
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
        let addr = serve_once(Some(
            r#"{"node":"a","cluster":"c","replication":"delta","send_mode":"async","ready":true,
                "sessions":5,"members":[{"node":"b","addr":"10.0.0.2:4000","state":"alive","incarnation":1}]}"#,
        ))
        .await;
        let r = Prober::default().report(&addr).await.unwrap();
        assert_eq!(r.member_ids(), ["a", "b"]);
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
