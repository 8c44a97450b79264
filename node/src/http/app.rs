//! The demo application the default node image serves: a counter and free-form
//! attributes in a replicated session.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tower_sessions::cookie::SameSite;
use tower_sessions::{Expiry, Session, SessionManagerLayer};

use crate::cluster::Cluster;
use crate::ryw::{ReadYourWritesLayer, VersionCookie};
use crate::session_store::ReplicatedStore;

/// Shared state of the demo handlers.
#[derive(Clone, Debug)]
pub struct AppState {
    cluster: Cluster,
}

/// An error from the session layer, as a 500 with a JSON body.
pub struct AppError(tower_sessions::session::Error);

impl From<tower_sessions::session::Error> for AppError {
    fn from(e: tower_sessions::session::Error) -> Self {
        AppError(e)
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let msg = self.0.to_string();
        // Refused for split-brain protection: 503, so the proxy retries elsewhere.
        if msg.contains(crate::cluster::REFUSED) {
            tracing::warn!(error = %msg, "write refused");
            return refused(msg);
        }
        tracing::error!(error = %msg, "session error");
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": msg})),
        )
            .into_response()
    }
}

fn refused(msg: String) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(axum::http::header::RETRY_AFTER, "1")],
        Json(json!({"error": msg})),
    )
        .into_response()
}

/// `--min-members`: while this node sees too few members, requests that may write
/// (anything but GET, HEAD, OPTIONS) are refused with 503 before they run.
async fn refuse_without_quorum(
    State(cluster): State<Cluster>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if !req.method().is_safe() && !cluster.has_quorum() {
        cluster.metrics().writes_refused.inc();
        let live = cluster.live_members().len();
        let min = cluster.config().min_members;
        return refused(format!(
            "{}: {live} live members, {min} required",
            crate::cluster::REFUSED
        ));
    }
    next.run(req).await
}

/// Adds replicated sessions (tower-sessions over [`ReplicatedStore`], plus the
/// read-your-writes cookie) to any router: this is how a user's own axum app uses Tribe.
pub fn with_sessions<S: Clone + Send + Sync + 'static>(
    router: Router<S>,
    cluster: &Cluster,
    key: &crate::crypto::ClusterKey,
) -> Router<S> {
    let cfg = cluster.config();
    let timeout =
        time::Duration::try_from(cfg.session_timeout).unwrap_or(time::Duration::minutes(30));
    let sessions = SessionManagerLayer::new(ReplicatedStore::new(cluster.clone()))
        .with_name(cfg.cookie_name.clone())
        .with_http_only(true)
        .with_same_site(SameSite::Lax)
        .with_secure(cfg.cookie_secure)
        .with_path("/")
        .with_expiry(Expiry::OnInactivity(timeout));
    let ryw = ReadYourWritesLayer::new(
        VersionCookie::new(key, &cfg.cookie_name, cfg.cookie_secure)
            .with_rotation(cluster.keys().clone()),
    );
    router
        .layer(sessions)
        .layer(ryw)
        .layer(axum::middleware::from_fn_with_state(
            cluster.clone(),
            refuse_without_quorum,
        ))
}

/// The demo app's router.
pub fn router(cluster: Cluster, key: &crate::crypto::ClusterKey) -> Router {
    let r = Router::new()
        .route("/", get(index))
        .route("/counter", post(increment).get(read_counter))
        .route(
            "/attrs/{key}",
            get(get_attr).put(put_attr).delete(delete_attr),
        )
        .with_state(AppState {
            cluster: cluster.clone(),
        });
    with_sessions(r, &cluster, key)
}

async fn counter_body(state: &AppState, session: &Session, n: i64) -> Json<Value> {
    Json(json!({
        "counter": n,
        "node": state.cluster.node_id(),
        "session": session.id().map(|id| id.to_string()),
    }))
}

async fn increment(
    State(state): State<AppState>,
    session: Session,
) -> Result<Json<Value>, AppError> {
    let n: i64 = session.get("counter").await?.unwrap_or(0) + 1;
    session.insert("counter", n).await?;
    // Save now (not after the handler) so the new session has its id for the reply;
    // in sync mode this is also where the replicas' acks are awaited.
    session.save().await?;
    Ok(counter_body(&state, &session, n).await)
}

async fn read_counter(
    State(state): State<AppState>,
    session: Session,
) -> Result<Json<Value>, AppError> {
    let n: i64 = session.get("counter").await?.unwrap_or(0);
    Ok(counter_body(&state, &session, n).await)
}

async fn get_attr(Path(key): Path<String>, session: Session) -> Result<Response, AppError> {
    Ok(match session.get::<Value>(&key).await? {
        Some(v) => Json(v).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": format!("no attribute {key:?}")})),
        )
            .into_response(),
    })
}

async fn put_attr(
    Path(key): Path<String>,
    session: Session,
    Json(value): Json<Value>,
) -> Result<Response, AppError> {
    session.insert(&key, value.clone()).await?;
    session.save().await?;
    Ok(
        Json(json!({"key": key, "value": value, "session": session.id().map(|id| id.to_string())}))
            .into_response(),
    )
}

async fn delete_attr(Path(key): Path<String>, session: Session) -> Result<StatusCode, AppError> {
    session.remove::<Value>(&key).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

async fn index(State(state): State<AppState>, session: Session) -> Result<Html<String>, AppError> {
    let n: i64 = session.get("counter").await?.unwrap_or(0);
    let view = state.cluster.view();
    let members: String = view
        .members
        .iter()
        .map(|m| {
            format!(
                "<li>{} ({}) — {:?}</li>",
                escape(&m.node),
                escape(&m.addr),
                m.state
            )
        })
        .collect();
    let sid = session
        .id()
        .map(|i| i.to_string())
        .unwrap_or_else(|| "(none yet)".into());
    Ok(Html(format!(
        r#"<!doctype html><html><head><meta charset="utf-8"><title>Tribe</title></head><body>
<h1>Tribe demo</h1>
<p>Served by node <b>{node}</b> of cluster <b>{cluster}</b> ({mode}, {send}).</p>
<p>Session: <code>{sid}</code></p>
<p>Counter: <b id="counter">{n}</b></p>
<form method="post" action="/counter" onsubmit="fetch('/counter',{{method:'POST'}}).then(r=>r.json()).then(j=>document.getElementById('counter').textContent=j.counter);return false;">
<button>Increment</button></form>
<h2>Members</h2><ul><li>{node} (this node)</li>{members}</ul>
</body></html>"#,
        node = escape(&view.node),
        cluster = escape(&view.cluster),
        mode = view.replication,
        send = view.send_mode,
        sid = escape(&sid),
    )))
}
