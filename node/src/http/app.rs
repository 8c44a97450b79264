//! The demo application the default node image serves: a counter and free-form
//! attributes in a replicated session. One user of the public API, like any app.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tower_sessions::Session;

use crate::cluster::Cluster;

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
            return super::layers::refused(msg);
        }
        tracing::error!(error = %msg, "session error");
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": msg})),
        )
            .into_response()
    }
}

/// The demo app's router (without sessions: [`crate::Node::serve`] adds them).
pub fn router(cluster: Cluster) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/counter", post(increment).get(read_counter))
        .route(
            "/attrs/{key}",
            get(get_attr).put(put_attr).delete(delete_attr),
        )
        .with_state(AppState { cluster })
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
