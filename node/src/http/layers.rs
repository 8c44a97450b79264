//! What a node puts on every app's router: tower-sessions over the replicated store,
//! the read-your-writes version cookie, and the `min_members` guard that answers 503
//! before a write reaches the app while the node sees too few members.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde_json::json;
use tower_sessions::cookie::SameSite;
use tower_sessions::{Expiry, SessionManagerLayer};

use crate::cluster::Cluster;
use crate::ryw::{ReadYourWritesLayer, VersionCookie};
use crate::session_store::ReplicatedStore;

/// A write refused for split-brain protection: 503 with `Retry-After`, so a proxy
/// retries elsewhere.
pub(crate) fn refused(msg: String) -> Response {
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
/// read-your-writes cookie and the `min_members` guard) to any router.
pub(crate) fn with_sessions<S: Clone + Send + Sync + 'static>(
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
