//! The HTTP front proxy of the sidecar: read-your-writes behind round-robin, in async
//! mode, for an app in any language.
//!
//! In `async` send mode a session write returns before the other nodes have it, so the
//! next request, sent by the load balancer to another pod, could read the older session.
//! The proxy sits in front of the app's port: after each response it sets a signed
//! version cookie (`<session cookie>_V`, as [`crate::ryw`] does for the built-in app)
//! with the version of the app's session on this node; before forwarding a request that
//! carries one, it waits (bounded by `--consistency-wait`, then fetches from the
//! replicas) until this node holds the session at that version. The app then reads its
//! own writes from the local node over RESP.
//!
//! The proxy must know which store key a request's session lives under: the
//! [`Adapter`] maps the session cookie to the key (cookie name → key prefix + id).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::header::{COOKIE, SET_COOKIE};
use http::{HeaderValue, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::keyspace;
use crate::cluster::Cluster;
use crate::crypto::ClusterKey;
use crate::ryw::VersionCookie;

pub use tribe_api::SessionAdapter as Adapter;

/// How an adapter's session cookie names a session.
pub trait SessionIdOf {
    /// The session id in a session cookie's value.
    fn session_id(self, cookie_value: &str) -> Option<String>;
}

impl SessionIdOf for Adapter {
    fn session_id(self, cookie_value: &str) -> Option<String> {
        let v = percent_decode(cookie_value)?;
        let id = match self {
            // express-session signs the id: `s:<id>.<base64 HMAC>`.
            Adapter::ConnectRedis => match v.strip_prefix("s:") {
                Some(signed) => signed.rsplit_once('.')?.0.to_string(),
                None => v,
            },
            // Flask-Session with SESSION_USE_SIGNER: `<id>.<signature>` (itsdangerous).
            Adapter::FlaskSession => v.split('.').next().unwrap_or_default().to_string(),
            Adapter::PhpRedis => v,
        };
        (!id.is_empty()).then_some(id)
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// How the proxy finds a request's session.
#[derive(Debug, Clone)]
pub struct Mapping {
    /// The adapter (id format).
    pub adapter: Adapter,
    /// Session cookie name.
    pub cookie: String,
    /// Store key prefix.
    pub prefix: String,
}

impl Mapping {
    /// The adapter's defaults, overridden where given.
    pub fn new(adapter: Adapter, cookie: Option<String>, prefix: Option<String>) -> Self {
        Mapping {
            adapter,
            cookie: cookie.unwrap_or_else(|| adapter.cookie().to_string()),
            prefix: prefix.unwrap_or_else(|| adapter.prefix().to_string()),
        }
    }

    /// The store key of a session cookie value.
    pub fn store_key(&self, cookie_value: &str) -> Option<String> {
        self.adapter
            .session_id(cookie_value)
            .map(|id| format!("{}{id}", self.prefix))
    }
}

/// The value of cookie `name` in `Cookie` headers.
pub fn request_cookie<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|h| h.to_str().ok())
        .flat_map(|h| h.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
}

/// The value a response sets for cookie `name` (`None`: not set or being removed).
pub fn response_cookie<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|h| h.to_str().ok())
        .filter_map(|h| h.split(';').next()?.trim().split_once('='))
        .filter(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
        .next_back()
        .filter(|v| !v.is_empty())
}

struct Proxy {
    cluster: Cluster,
    /// `--cookie-secure`: the version cookie is `Secure` too.
    secure: bool,
    mapping: Mapping,
    cookies: VersionCookie,
    upstream: http::uri::Authority,
    client: Client<HttpConnector, Body>,
}

/// Serves the proxy on `listener`, forwarding to `upstream` (`host:port`), until `stop`.
pub async fn serve(
    listener: TcpListener,
    upstream: &str,
    cluster: Cluster,
    key: &ClusterKey,
    mapping: Mapping,
    secure: bool,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let upstream: http::uri::Authority = upstream.parse().map_err(|e| {
        std::io::Error::other(format!("invalid --proxy-upstream {upstream:?}: {e}"))
    })?;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let proxy = Arc::new(Proxy {
        cookies: VersionCookie::new(key, &mapping.cookie, secure),
        secure,
        cluster,
        mapping,
        upstream,
        // Idle connections to the app are dropped after 1 s: app servers close idle
        // keep-alive connections after a few seconds (Node 5 s, gunicorn 2 s), and a
        // request sent on one the app is closing at that moment fails.
        client: Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE)
            .build(connector),
    });
    let app = axum::Router::new().fallback(handle).with_state(proxy);
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
}

async fn handle(State(p): State<Arc<Proxy>>, mut req: Request) -> Response {
    // The app reads its session from this node: not before it is ready (it would find
    // none and start a fresh one), nor once it is shutting down.
    if !super::ready::ready_within(&p.cluster, super::server::READY_WAIT).await {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(http::header::RETRY_AFTER, "1")],
            "tribe node not ready\n",
        )
            .into_response();
    }
    let before =
        request_cookie(req.headers(), &p.mapping.cookie).and_then(|v| p.mapping.store_key(v));
    if let Some(key) = &before {
        let sid = keyspace::session_id(key.as_bytes());
        let seen = request_cookie(req.headers(), &format!("{}_V", p.mapping.cookie))
            .and_then(|v| p.cookies.verify(sid, v));
        if let Some(v) = seen.filter(|v| *v > 0) {
            // Bounded: waits up to --consistency-wait, then asks the replicas.
            if p.cluster.load(sid, v).await.is_err() {
                tracing::warn!(
                    session = %crate::model::log_tag(sid),
                    "proxy: no replica answered with the session the client saw"
                );
            }
        }
    }
    let path = req
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let uri = Uri::builder()
        .scheme("http")
        .authority(p.upstream.clone())
        .path_and_query(path)
        .build();
    let Ok(uri) = uri else {
        return (StatusCode::BAD_REQUEST, "bad request target").into_response();
    };
    *req.uri_mut() = uri;
    let resp = match p.client.request(req).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "proxy: the app did not answer");
            return (StatusCode::BAD_GATEWAY, "the app did not answer").into_response();
        }
    };
    let (mut parts, mut body) = resp.into_parts();
    // The app may send its headers before it has written the session (express-session
    // does): read the version once the whole body has arrived. Bodies up to
    // BUFFER_LIMIT are held for that; a larger one streams on without a new cookie.
    let mut held: Vec<Bytes> = Vec::new();
    let mut size = 0usize;
    let complete = loop {
        match body.frame().await {
            None => break true,
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    size += data.len();
                    held.push(data);
                }
                if size > BUFFER_LIMIT {
                    break false;
                }
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "proxy: the app's response broke off");
                return (StatusCode::BAD_GATEWAY, "the app's response broke off").into_response();
            }
        }
    };
    if !complete {
        use futures::StreamExt;
        let head = futures::stream::iter(held.into_iter().map(Ok::<_, hyper::Error>));
        let rest = http_body_util::BodyStream::new(body)
            .filter_map(|f| async move { f.map(|f| f.into_data().ok()).transpose() });
        return Response::from_parts(parts, Body::from_stream(head.chain(rest)));
    }
    let after = response_cookie(&parts.headers, &p.mapping.cookie)
        .and_then(|v| p.mapping.store_key(v))
        .or(before);
    if let Some(key) = after {
        let sid = keyspace::session_id(key.as_bytes());
        let version = p.cluster.store().seen_through(sid).unwrap_or(0);
        if version > 0 {
            let cookie = format!(
                "{}_V={}; Path=/; HttpOnly; SameSite=Lax{}",
                p.mapping.cookie,
                p.cookies.value(sid, version),
                if p.secure { "; Secure" } else { "" }
            );
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                parts.headers.append(SET_COOKIE, v);
            }
        }
    }
    let whole: Bytes = match held.len() {
        0 => Bytes::new(),
        1 => held.pop().unwrap_or_default(),
        _ => held.concat().into(),
    };
    Response::from_parts(parts, Body::from(whole))
}

/// How long an idle connection to the app is kept for reuse.
const POOL_IDLE: std::time::Duration = std::time::Duration::from_secs(1);

/// Largest response body the proxy holds to read the session version after it.
const BUFFER_LIMIT: usize = 1024 * 1024;

/// Binds and spawns the proxy per the config (`--proxy-addr`), if configured.
/// Serves the proxy on `listener` (bound to `--proxy-addr`) until `stop`, forwarding to
/// `--proxy-upstream`; `None` when the proxy is not configured.
pub fn spawn(
    listener: TcpListener,
    cfg: &crate::Config,
    cluster: Cluster,
    key: &ClusterKey,
    stop: CancellationToken,
) -> Option<tokio::task::JoinHandle<()>> {
    let upstream = cfg.proxy_upstream.clone()?;
    let mapping = Mapping::new(
        cfg.proxy_adapter,
        cfg.proxy_cookie.clone(),
        cfg.proxy_key_prefix.clone(),
    );
    let addr = listener.local_addr().ok();
    tracing::info!(proxy = ?addr, %upstream, cookie = %mapping.cookie, prefix = %mapping.prefix, "serving the read-your-writes proxy");
    let key = key.clone();
    let secure = cfg.cookie_secure;
    Some(tokio::spawn(async move {
        if let Err(e) = serve(listener, &upstream, cluster, &key, mapping, secure, stop).await {
            tracing::error!(error = %e, "proxy failed");
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adapters_map_cookies_to_store_keys() {
        let m = Mapping::new(Adapter::ConnectRedis, None, None);
        assert_eq!(
            m.store_key("s%3AAbC-1_x.Zm9vYmFy%2Bsig").as_deref(),
            Some("sess:AbC-1_x")
        );
        assert_eq!(m.store_key("plain").as_deref(), Some("sess:plain"));
        assert_eq!(m.store_key("s%3Anodot"), None);
        assert_eq!(m.store_key("%zz"), None);
        let f = Mapping::new(Adapter::FlaskSession, None, None);
        assert_eq!(f.store_key("abc").as_deref(), Some("session:abc"));
        assert_eq!(f.store_key("abc.sig").as_deref(), Some("session:abc"));
        let p = Mapping::new(Adapter::PhpRedis, Some("SID".into()), None);
        assert_eq!(p.cookie, "SID");
        assert_eq!(
            p.store_key("q1w2").as_deref(),
            Some("PHPREDIS_SESSION:q1w2")
        );
    }

    #[test]
    fn cookies_from_headers() {
        let mut h = http::HeaderMap::new();
        h.append(COOKIE, HeaderValue::from_static("a=1; connect.sid=s%3Ax.y"));
        h.append(COOKIE, HeaderValue::from_static("b=2"));
        assert_eq!(request_cookie(&h, "connect.sid"), Some("s%3Ax.y"));
        assert_eq!(request_cookie(&h, "b"), Some("2"));
        assert_eq!(request_cookie(&h, "c"), None);
        let mut r = http::HeaderMap::new();
        r.append(
            SET_COOKIE,
            HeaderValue::from_static("PHPSESSID=old; path=/"),
        );
        r.append(
            SET_COOKIE,
            HeaderValue::from_static("PHPSESSID=new; path=/"),
        );
        assert_eq!(response_cookie(&r, "PHPSESSID"), Some("new"));
        r.append(
            SET_COOKIE,
            HeaderValue::from_static("PHPSESSID=; Max-Age=0"),
        );
        assert_eq!(response_cookie(&r, "PHPSESSID"), None);
    }
}
