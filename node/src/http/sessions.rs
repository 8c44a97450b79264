//! Admin endpoints for looking at sessions (what `kubectl tribe` calls through the API
//! server's pod proxy):
//!
//! - `GET /sessions?limit=N&after=ID` — metadata of the sessions this node holds, in id
//!   order, at most `limit` (default [`DEFAULT_LIMIT`], at most [`MAX_LIMIT`]) per page;
//!   `next` is the `after` of the next page. Never attribute values.
//! - `GET /sessions/{id}` — one session's metadata and attribute names;
//!   `?values=true` adds the attribute values (JSON).
//! - `DELETE /sessions/{id}` — invalidates the session on every node (replicated like
//!   any invalidation); 404 when this node holds no live copy.
//!
//! A session id is a credential (whoever sends it as the cookie *is* that session), so
//! every one of these requests must carry [`TOKEN_HEADER`]: a token with a scope and an
//! expiry tagged under the cluster key ([`tribe_api::admin_token`]; `kubectl tribe` mints
//! one per request). Listing and inspecting need `read`, values (`?values=true`) need
//! `read-values`, `DELETE` needs `delete`. Reaching the admin port is not enough (probes
//! and Prometheus reach it); holding the cluster key (the Secret `<name>-key`) is. A
//! missing, forged or expired token: 401; one without the scope: 403; nothing listed.
//!
//! Ids are the cookie's form (tower-sessions `Id`: 22 characters of URL-safe base64).
//! A page costs one pass over this node's session ids (as `/metrics` does) and keeps only
//! `limit` of them: the reply is bounded whatever the store's size.

use std::collections::{BTreeMap, BinaryHeap};
use std::str::FromStr;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tower_sessions::session::Id;
use tribe_api::admin_token::Scope;

use crate::cluster::Cluster;
use crate::config::ReplicationMode;
use crate::store::{unix_now, Session};
use crate::wire::SessionId;

/// The header that carries the admin token.
pub const TOKEN_HEADER: &str = tribe_api::admin_token::HEADER;

/// Page size when `limit` is not given.
pub const DEFAULT_LIMIT: usize = 100;
/// The largest page.
pub const MAX_LIMIT: usize = 1000;

/// One session's metadata (never its attribute values).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SessionMeta {
    /// The id as in the session cookie.
    pub id: String,
    /// Version (the highest write counter seen).
    pub version: u64,
    /// Number of live attributes.
    pub attributes: usize,
    /// Bytes of attribute names and JSON values.
    pub size: usize,
    /// Last access, unix seconds: the expiry minus the session timeout.
    pub last_access: u64,
    /// Expiry, unix seconds.
    pub expires: u64,
    /// This node's role: `replica` (delta mode), `primary`, `backup` or `cached` (backup mode).
    pub role: String,
    /// The nodes that should hold it: its primary first, then its backups (backup
    /// mode); every live member (delta mode).
    pub owners: Vec<String>,
}

/// A page of `GET /sessions`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionPage {
    /// The node that answered.
    pub node: String,
    /// Live sessions this node holds in all.
    pub total: usize,
    /// This page, by id.
    pub sessions: Vec<SessionMeta>,
    /// `after` for the next page; absent on the last one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// `GET /sessions/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionDetail {
    /// The node that answered.
    pub node: String,
    /// The metadata.
    #[serde(flatten)]
    pub meta: SessionMeta,
    /// Attribute names, sorted.
    pub attribute_names: Vec<String>,
    /// Attribute values (only with `?values=true`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<BTreeMap<String, serde_json::Value>>,
}

#[derive(Debug, Deserialize)]
struct PageQuery {
    limit: Option<usize>,
    after: Option<String>,
}

#[derive(Debug, Deserialize)]
struct DetailQuery {
    #[serde(default)]
    values: bool,
}

/// The routes, to merge into the admin router.
pub fn router(cluster: Cluster) -> Router {
    Router::new()
        .route("/sessions", get(list))
        .route("/sessions/{id}", get(inspect).delete(expire))
        .with_state(cluster)
}

/// A refusal: a status and a message, answered as `{"error": "..."}`.
#[derive(Debug)]
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

fn error(status: StatusCode, msg: impl Into<String>) -> ApiError {
    ApiError(status, msg.into())
}

/// `Err(401)` unless the request carries a valid token of this cluster's key, `Err(403)`
/// when its scope does not cover `need`.
fn authorize(cluster: &Cluster, headers: &HeaderMap, need: Scope) -> Result<(), ApiError> {
    let header = headers.get(TOKEN_HEADER).and_then(|v| v.to_str().ok());
    // Any key of the current key file (during a rotation, old and new).
    crate::admin_token::verify(&cluster.keys().current(), header, need, unix_now())
        .map(|_| ())
        .map_err(|r| {
            let status = StatusCode::from_u16(r.status()).unwrap_or(StatusCode::UNAUTHORIZED);
            error(status, r.to_string())
        })
}

fn parse_id(s: &str) -> Result<SessionId, ApiError> {
    Id::from_str(s)
        .map(|id| id.0)
        .map_err(|_| error(StatusCode::BAD_REQUEST, format!("not a session id: {s:?}")))
}

/// The `limit` smallest ids above `after`, sorted: one pass, `limit` held at a time.
pub fn page_ids(
    ids: impl IntoIterator<Item = SessionId>,
    after: Option<SessionId>,
    limit: usize,
) -> Vec<SessionId> {
    let mut heap = BinaryHeap::with_capacity(limit + 1);
    for id in ids {
        if after.is_some_and(|a| id <= a) {
            continue;
        }
        if heap.len() < limit {
            heap.push(id);
        } else if heap.peek().is_some_and(|&max| id < max) {
            heap.pop();
            heap.push(id);
        }
    }
    heap.into_sorted_vec()
}

fn meta(cluster: &Cluster, sid: SessionId, s: &Session, live: &[String]) -> SessionMeta {
    let cfg = cluster.config();
    let (attributes, size) = s
        .live_attrs()
        .fold((0, 0), |(n, b), (k, v)| (n + 1, b + k.len() + v.len()));
    let (role, owners) = match cfg.replication {
        ReplicationMode::Delta => ("replica".to_string(), live.to_vec()),
        ReplicationMode::Backup => {
            let owners: Vec<String> = crate::ownership::owners(sid, live, cfg.backups)
                .into_iter()
                .map(String::from)
                .collect();
            let role = match owners.iter().position(|o| o == cluster.node_id()) {
                Some(0) => "primary",
                Some(_) => "backup",
                None => "cached",
            };
            (role.to_string(), owners)
        }
    };
    SessionMeta {
        id: Id(sid).to_string(),
        version: s.version,
        attributes,
        size,
        last_access: s.expiry.saturating_sub(cfg.session_timeout.as_secs()),
        expires: s.expiry,
        role,
        owners,
    }
}

async fn list(
    State(cluster): State<Cluster>,
    headers: HeaderMap,
    Query(q): Query<PageQuery>,
) -> Response {
    if let Err(r) = authorize(&cluster, &headers, Scope::Read) {
        return r.into_response();
    }
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    let after = match q.after.as_deref().map(parse_id).transpose() {
        Ok(a) => a,
        Err(r) => return r.into_response(),
    };
    let store = &cluster.store();
    let now = unix_now();
    let live = cluster.live_members();
    let mut total = 0;
    // One pass: count the live sessions and keep the page's ids (one more, to know
    // whether another page follows).
    let ids = store.ids().into_iter().filter(|&sid| {
        let alive = store.is_dead(sid, now) == Some(false);
        total += usize::from(alive);
        alive
    });
    let mut page = page_ids(ids, after, limit + 1);
    let more = page.len() > limit;
    page.truncate(limit);
    let sessions: Vec<SessionMeta> = page
        .iter()
        .filter_map(|&sid| store.with(sid, |s| meta(&cluster, sid, s, &live)))
        .collect();
    let next = more
        .then(|| page.last().map(|&sid| Id(sid).to_string()))
        .flatten();
    Json(SessionPage {
        node: cluster.node_id().to_string(),
        total,
        sessions,
        next,
    })
    .into_response()
}

async fn inspect(
    State(cluster): State<Cluster>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<DetailQuery>,
) -> Response {
    if let Err(r) = authorize(&cluster, &headers, Scope::needed(false, q.values)) {
        return r.into_response();
    }
    let sid = match parse_id(&id) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let live = cluster.live_members();
    let now = unix_now();
    let detail = cluster.store().with(sid, |s| {
        if s.is_dead(now) {
            return None;
        }
        let names = s.live_attrs().map(|(k, _)| k.to_string()).collect();
        let values = q.values.then(|| {
            s.live_attrs()
                .map(|(k, v)| {
                    let value = serde_json::from_slice(v).unwrap_or_else(|_| {
                        serde_json::Value::String(String::from_utf8_lossy(v).into_owned())
                    });
                    (k.to_string(), value)
                })
                .collect()
        });
        Some(SessionDetail {
            node: cluster.node_id().to_string(),
            meta: meta(&cluster, sid, s, &live),
            attribute_names: names,
            values,
        })
    });
    match detail.flatten() {
        Some(d) => Json(d).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("no session {id} on this node"),
        )
        .into_response(),
    }
}

async fn expire(
    State(cluster): State<Cluster>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = authorize(&cluster, &headers, Scope::Delete) {
        return r.into_response();
    }
    let sid = match parse_id(&id) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let now = unix_now();
    let held = cluster
        .store()
        .with(sid, |s| !s.is_dead(now))
        .unwrap_or(false);
    if !held {
        return error(
            StatusCode::NOT_FOUND,
            format!("no session {id} on this node"),
        )
        .into_response();
    }
    cluster.invalidate(sid).await;
    tracing::info!(
        session = %crate::model::log_tag(sid),
        "session expired through the admin API"
    );
    Json(serde_json::json!({ "expired": id, "node": cluster.node_id() })).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_sorted_bounded_and_resume_after_the_cursor() {
        let ids: Vec<SessionId> = vec![50, -3, 7, 1000, 8, 9, i128::MAX, i128::MIN];
        assert_eq!(page_ids(ids.clone(), None, 3), vec![i128::MIN, -3, 7]);
        assert_eq!(page_ids(ids.clone(), Some(7), 3), vec![8, 9, 50]);
        assert_eq!(page_ids(ids.clone(), Some(50), 10), vec![1000, i128::MAX]);
        assert!(page_ids(ids.clone(), Some(i128::MAX), 10).is_empty());
        // Walking every page visits every id once.
        let mut seen = vec![];
        let mut after = None;
        loop {
            let p = page_ids(ids.clone(), after, 2);
            if p.is_empty() {
                break;
            }
            after = p.last().copied();
            seen.extend(p);
        }
        let mut all = ids;
        all.sort();
        assert_eq!(seen, all);
    }

    #[test]
    fn ids_round_trip_through_the_cookie_form() {
        let sid: SessionId = -123456789012345678901234567890;
        let s = Id(sid).to_string();
        assert_eq!(s.len(), 22);
        assert_eq!(parse_id(&s).unwrap(), sid);
        assert!(parse_id("not-an-id").is_err());
        assert!(parse_id("").is_err());
    }
}
