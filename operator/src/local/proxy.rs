//! The round-robin front door of `local`: every request goes to the next ready node;
//! a node that refuses the connection is skipped (the request is retried on the next).

use axum::body::Body;
use axum::extract::State;
use axum::http::{Request, Response, StatusCode, Uri};
use axum::Router;
use http_body_util::BodyExt;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::net::TcpListener;

/// Largest request body the front door buffers (to retry it on another node).
const MAX_BODY: usize = 16 << 20;

/// The set of nodes the front door spreads requests over.
#[derive(Clone, Default)]
pub struct Backends {
    /// A std RwLock: read per request, written once per supervision tick, never held
    /// across an await.
    addrs: Arc<RwLock<Vec<SocketAddr>>>,
    next: Arc<AtomicUsize>,
    /// Responses each backend gave (kept when it leaves the set).
    served: Arc<Mutex<HashMap<SocketAddr, u64>>>,
}

impl Backends {
    /// Replaces the set.
    pub fn set(&self, addrs: Vec<SocketAddr>) {
        *self.addrs.write().unwrap_or_else(|p| p.into_inner()) = addrs;
    }

    /// The current set.
    pub fn get(&self) -> Vec<SocketAddr> {
        self.addrs.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// How many responses `addr` has given through the front door.
    pub fn served(&self, addr: SocketAddr) -> u64 {
        let served = self.served.lock().unwrap_or_else(|p| p.into_inner());
        served.get(&addr).copied().unwrap_or(0)
    }

    fn count(&self, addr: SocketAddr) {
        let mut served = self.served.lock().unwrap_or_else(|p| p.into_inner());
        *served.entry(addr).or_default() += 1;
    }

    /// The backends in the order to try for the next request (round robin).
    pub fn rotation(&self) -> Vec<SocketAddr> {
        let addrs = self.get();
        if addrs.is_empty() {
            return addrs;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % addrs.len();
        addrs[start..]
            .iter()
            .chain(&addrs[..start])
            .copied()
            .collect()
    }
}

#[derive(Clone)]
struct Proxy {
    backends: Backends,
    client: Client<HttpConnector, Body>,
}

async fn forward(State(p): State<Proxy>, req: Request<Body>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let body = match http_body_util::Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return plain(StatusCode::PAYLOAD_TOO_LARGE, "request body too large"),
    };
    let path = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/")
        .to_string();
    let order = p.backends.rotation();
    if order.is_empty() {
        return plain(StatusCode::SERVICE_UNAVAILABLE, "no ready node");
    }
    for addr in order {
        let Ok(uri) = format!("http://{addr}{path}").parse::<Uri>() else {
            return plain(StatusCode::BAD_REQUEST, "bad request URI");
        };
        let mut out = Request::builder()
            .method(parts.method.clone())
            .uri(uri)
            .version(http::Version::HTTP_11);
        for (k, v) in &parts.headers {
            if k != http::header::CONNECTION {
                out = out.header(k, v);
            }
        }
        let Ok(out) = out.body(Body::from(body.clone())) else {
            return plain(StatusCode::BAD_REQUEST, "bad request");
        };
        match p.client.request(out).await {
            Ok(resp) => {
                p.backends.count(addr);
                return resp.map(Body::new);
            }
            Err(e) if e.is_connect() => {
                tracing::debug!(%addr, error = %e, "node refused; trying the next");
            }
            Err(e) => {
                tracing::warn!(%addr, error = %e, "node failed mid-request");
                return plain(StatusCode::BAD_GATEWAY, "node failed");
            }
        }
    }
    plain(StatusCode::BAD_GATEWAY, "no node answered")
}

fn plain(status: StatusCode, msg: &'static str) -> Response<Body> {
    let mut r = Response::new(Body::from(msg));
    *r.status_mut() = status;
    r
}

/// Serves the front door on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    backends: Backends,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(Duration::from_secs(1)));
    let client = Client::builder(TokioExecutor::new()).build(connector);
    let app = Router::new()
        .fallback(forward)
        .with_state(Proxy { backends, client });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;

    async fn backend(name: &'static str) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let app = Router::new().route("/who", get(move || async move { name }));
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        addr
    }

    async fn get_body(addr: SocketAddr, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        let code = out[9..12].parse().unwrap();
        (code, out.rsplit("\r\n\r\n").next().unwrap().to_string())
    }

    #[tokio::test]
    async fn round_robin_and_skips_dead_nodes() {
        let a = backend("a").await;
        let b = backend("b").await;
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let backends = Backends::default();
        backends.set(vec![a, dead, b]);
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let front = l.local_addr().unwrap();
        tokio::spawn(serve(l, backends.clone(), std::future::pending()));
        let mut seen = Vec::new();
        for _ in 0..6 {
            let (code, body) = get_body(front, "/who").await;
            assert_eq!(code, 200);
            seen.push(body);
        }
        assert!(
            seen.contains(&"a".to_string()) && seen.contains(&"b".to_string()),
            "{seen:?}"
        );
        assert_eq!(backends.served(a) + backends.served(b), 6);
        assert_eq!(backends.served(dead), 0);

        backends.set(vec![]);
        assert_eq!(get_body(front, "/who").await.0, 503);
    }
}
