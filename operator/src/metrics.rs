//! Operator metrics (prometheus-client) and the admin HTTP server:
//! `/healthz` (alive), `/readyz` (API reachable at start-up), `/metrics`, and
//! `/sd/nodes` (Prometheus HTTP service discovery of the nodes, [`crate::sd`]).

use axum::{extract::State, http::StatusCode, response::IntoResponse, routing::get, Router};
use prometheus_client::encoding::{text::encode, EncodeLabelSet};
use prometheus_client::metrics::{
    counter::Counter, family::Family, gauge::Gauge, histogram::Histogram,
};
use prometheus_client::registry::Registry;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::net::TcpListener;

/// Label set of the failure counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// [`crate::Error::metric_label`].
    pub error: String,
}

/// Label set of the per-SessionCluster gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabels {
    /// Namespace of the SessionCluster.
    pub namespace: String,
    /// Its name (the `sessioncluster` label of the nodes' series, too).
    pub sessioncluster: String,
}

/// The operator's metrics.
#[derive(Clone)]
pub struct Metrics {
    /// Reconciles started.
    pub reconciles: Counter,
    /// Reconciles that failed, by error kind.
    pub failures: Family<ErrorLabels, Counter>,
    /// Reconcile duration in seconds.
    pub reconcile_duration: Histogram,
    /// 1 while this process holds the leader Lease.
    pub leader: Gauge,
    /// `spec.replicas` of each SessionCluster, as last reconciled.
    pub cluster_replicas: Family<ClusterLabels, Gauge>,
    /// Ready node pods of each SessionCluster.
    pub cluster_ready_replicas: Family<ClusterLabels, Gauge>,
    /// Cluster members the nodes report (the smallest view; absent when unknown).
    pub cluster_members: Family<ClusterLabels, Gauge>,
    /// Sessions the nodes report (absent when unknown).
    pub cluster_sessions: Family<ClusterLabels, Gauge>,
    /// The node pods to scrape, served as `/sd/nodes` (Prometheus HTTP service discovery).
    pub targets: crate::sd::Targets,
    /// The SessionClusters that have per-cluster series, by (namespace, name).
    clusters: Arc<std::sync::Mutex<std::collections::BTreeSet<(String, String)>>>,
    registry: Arc<Registry>,
}

impl Default for Metrics {
    fn default() -> Self {
        let reconciles = Counter::default();
        let failures = Family::<ErrorLabels, Counter>::default();
        let reconcile_duration =
            Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]);
        let leader = Gauge::default();
        let cluster_replicas = Family::<ClusterLabels, Gauge>::default();
        let cluster_ready_replicas = Family::<ClusterLabels, Gauge>::default();
        let cluster_members = Family::<ClusterLabels, Gauge>::default();
        let cluster_sessions = Family::<ClusterLabels, Gauge>::default();
        let mut root = Registry::default();
        // `tribe_build_info{version}`: the same series as a node's, so one query finds
        // the version of every Tribe process.
        root.sub_registry_with_prefix("tribe").register(
            "build",
            "This build: its version (always 1)",
            prometheus_client::metrics::info::Info::new(vec![(
                "version".to_string(),
                tribe_api::VERSION.to_string(),
            )]),
        );
        let registry = root.sub_registry_with_prefix("tribe_operator");
        registry.register("reconciles", "Reconciles started", reconciles.clone());
        registry.register(
            "reconcile_failures",
            "Reconciles that failed, by error kind",
            failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Reconcile duration",
            reconcile_duration.clone(),
        );
        registry.register(
            "leader",
            "1 while this process holds the leader Lease",
            leader.clone(),
        );
        registry.register(
            "cluster_replicas",
            "spec.replicas of each SessionCluster",
            cluster_replicas.clone(),
        );
        registry.register(
            "cluster_ready_replicas",
            "Ready node pods of each SessionCluster",
            cluster_ready_replicas.clone(),
        );
        registry.register(
            "cluster_members",
            "Cluster members as the nodes of each SessionCluster report them",
            cluster_members.clone(),
        );
        registry.register(
            "cluster_sessions",
            "Sessions as the nodes of each SessionCluster report them",
            cluster_sessions.clone(),
        );
        Self {
            reconciles,
            failures,
            reconcile_duration,
            leader,
            cluster_replicas,
            cluster_ready_replicas,
            cluster_members,
            cluster_sessions,
            targets: crate::sd::Targets::default(),
            clusters: Arc::default(),
            registry: Arc::new(root),
        }
    }
}

/// Observes a reconcile's duration when dropped.
pub struct ReconcileTimer {
    start: Instant,
    histogram: Histogram,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}

impl Metrics {
    /// Counts a reconcile and returns a guard that records its duration.
    pub fn reconcile_started(&self) -> ReconcileTimer {
        self.reconciles.inc();
        ReconcileTimer {
            start: Instant::now(),
            histogram: self.reconcile_duration.clone(),
        }
    }

    /// Counts a failed reconcile.
    pub fn reconcile_failed(&self, error: &crate::Error) {
        self.failures
            .get_or_create(&ErrorLabels {
                error: error.metric_label().to_string(),
            })
            .inc();
    }

    /// Records what one reconcile observed of a SessionCluster (`replicas` from its
    /// spec, the rest from the status just computed). Unknown members or sessions
    /// remove the series rather than report a stale value.
    pub fn observe_cluster(
        &self,
        namespace: &str,
        name: &str,
        replicas: i32,
        status: &crate::crd::SessionClusterStatus,
    ) {
        let labels = ClusterLabels {
            namespace: namespace.to_string(),
            sessioncluster: name.to_string(),
        };
        self.clusters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((namespace.to_string(), name.to_string()));
        self.cluster_replicas
            .get_or_create(&labels)
            .set(i64::from(replicas));
        self.cluster_ready_replicas
            .get_or_create(&labels)
            .set(i64::from(status.ready_replicas.unwrap_or(0)));
        match status.members {
            Some(m) => {
                self.cluster_members
                    .get_or_create(&labels)
                    .set(i64::from(m));
            }
            None => {
                self.cluster_members.remove(&labels);
            }
        }
        match status.sessions {
            Some(n) => {
                self.cluster_sessions.get_or_create(&labels).set(n);
            }
            None => {
                self.cluster_sessions.remove(&labels);
            }
        }
    }

    /// Forgets a SessionCluster that no longer exists.
    pub fn forget_cluster(&self, namespace: &str, name: &str) {
        let labels = ClusterLabels {
            namespace: namespace.to_string(),
            sessioncluster: name.to_string(),
        };
        self.cluster_replicas.remove(&labels);
        self.cluster_ready_replicas.remove(&labels);
        self.cluster_members.remove(&labels);
        self.cluster_sessions.remove(&labels);
        self.targets.remove(namespace, name);
        self.clusters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(namespace.to_string(), name.to_string()));
    }

    /// Forgets every SessionCluster not in `existing` (by namespace and name): a deleted
    /// one is never reconciled again, so its series and scrape targets go here.
    pub fn retain_clusters(&self, existing: &std::collections::BTreeSet<(String, String)>) {
        let gone: Vec<(String, String)> = self
            .clusters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|k| !existing.contains(*k))
            .cloned()
            .collect();
        for (ns, name) in gone {
            self.forget_cluster(&ns, &name);
        }
    }

    /// The metrics in Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// State of the admin server.
#[derive(Clone)]
pub struct AdminState {
    /// The metrics to serve.
    pub metrics: Metrics,
    /// Set once the operator has reached the API server.
    pub ready: Arc<AtomicBool>,
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(s): State<AdminState>) -> impl IntoResponse {
    if s.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

async fn metrics(State(s): State<AdminState>) -> impl IntoResponse {
    (
        [(
            http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(),
    )
}

async fn sd_nodes(State(s): State<AdminState>) -> impl IntoResponse {
    axum::Json(s.metrics.targets.document())
}

/// The admin router.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/sd/nodes", get(sd_nodes))
        .with_state(state)
}

/// Serves the admin endpoints on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    state: AdminState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_by_kind() {
        let m = Metrics::default();
        drop(m.reconcile_started());
        m.reconcile_failed(&crate::Error::Timeout("x"));
        m.reconcile_failed(&crate::Error::InvalidSpec("x".into()));
        m.reconcile_failed(&crate::Error::InvalidSpec("y".into()));
        let text = m.render();
        assert!(text.contains("tribe_operator_reconciles_total 1"), "{text}");
        let build = format!("tribe_build_info{{version=\"{}\"}} 1", tribe_api::VERSION);
        assert!(text.contains(&build), "{text}");
        assert!(
            text.contains(r#"tribe_operator_reconcile_failures_total{error="invalid_spec"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"tribe_operator_reconcile_failures_total{error="timeout"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("tribe_operator_reconcile_duration_seconds_count 1"),
            "{text}"
        );
    }

    #[test]
    fn deleted_clusters_are_forgotten() {
        use crate::crd::SessionClusterStatus;
        let m = Metrics::default();
        let st = SessionClusterStatus {
            members: Some(2),
            ..SessionClusterStatus::default()
        };
        m.observe_cluster("web", "shop", 2, &st);
        m.observe_cluster("web", "cart", 3, &st);
        m.targets.set("web", "cart", vec![]);
        let keep = std::collections::BTreeSet::from([("web".to_string(), "shop".to_string())]);
        m.retain_clusters(&keep);
        let text = m.render();
        assert!(text.contains(r#"sessioncluster="shop""#), "{text}");
        assert!(!text.contains(r#"sessioncluster="cart""#), "{text}");
        assert_eq!(m.targets.document(), serde_json::json!([]));
    }

    #[tokio::test]
    async fn admin_endpoints() {
        let state = AdminState {
            metrics: Metrics::default(),
            ready: Arc::default(),
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, state.clone(), async {
            let _ = rx.await;
        }));
        let get = |path: &'static str| async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(
                format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        assert!(get("/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(get("/readyz").await.starts_with("HTTP/1.1 503"));
        state.ready.store(true, Ordering::Relaxed);
        assert!(get("/readyz").await.starts_with("HTTP/1.1 200"));
        assert!(get("/metrics")
            .await
            .contains("tribe_operator_reconciles_total"));
        tx.send(()).unwrap();
        server.await.unwrap().unwrap();
    }
}
