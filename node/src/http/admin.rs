//! Admin endpoints: `/healthz`, `/readyz`, `/metrics`, `/cluster`, and the session
//! endpoints of [`super::sessions`] (`/sessions`, `/sessions/{id}`).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use prometheus_client::registry::Registry;

use crate::cluster::Cluster;

#[derive(Clone)]
struct AdminState {
    cluster: Cluster,
    registry: Arc<Registry>,
}

/// The admin router.
pub fn router(cluster: Cluster, registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/cluster", get(cluster_view))
        .with_state(AdminState {
            cluster: cluster.clone(),
            registry,
        })
        .merge(super::sessions::router(cluster))
}

async fn readyz(State(s): State<AdminState>) -> impl IntoResponse {
    if s.cluster.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn metrics(State(s): State<AdminState>) -> impl IntoResponse {
    s.cluster.refresh_gauges();
    let m = s.cluster.metrics();
    m.ready.set(i64::from(s.cluster.is_ready()));
    let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    m.resident_memory_bytes
        .set(super::process::resident_bytes().map_or(0, clamp));
    m.memory_limit_bytes
        .set(super::process::memory_limit_bytes().map_or(0, clamp));
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &s.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn cluster_view(State(s): State<AdminState>) -> impl IntoResponse {
    Json(s.cluster.view())
}
