//! Test helpers: SessionCluster builders and a mock API server (tower-test) that
//! answers each request through a closure and records what was asked.

use crate::crd::{Persistence, PostgresStore, SecretKeyRef, SessionCluster, SessionClusterSpec};
use crate::resources;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentStatus};
use kube::client::Body;
use kube::Client;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use tokio::task::JoinHandle;
use tower_test::mock;

/// A stored-looking SessionCluster (uid, generation 1) with the default spec.
pub fn cluster(name: &str, ns: &str) -> SessionCluster {
    let mut sc = SessionCluster::new(name, SessionClusterSpec::default());
    sc.metadata.namespace = Some(ns.into());
    sc.metadata.uid = Some(format!("uid-{name}"));
    sc.metadata.generation = Some(1);
    sc.metadata.resource_version = Some("100".into());
    sc
}

/// `spec.persistence` turned on: with node volumes, or (`postgres`) in PostgreSQL with the
/// URL in the Secret `db`, key `url`.
pub fn persistence(postgres: bool) -> Persistence {
    Persistence {
        enabled: true,
        postgres: postgres.then(|| PostgresStore {
            secret_ref: SecretKeyRef {
                name: "db".into(),
                key: "url".into(),
            },
        }),
        ..Persistence::default()
    }
}

/// The Deployment of `sc` as the API server would report it after a rollout.
pub fn observed_deployment(sc: &SessionCluster, replicas: i32, ready: i32) -> Deployment {
    let mut d = resources::deployment(sc);
    d.metadata.generation = Some(1);
    d.metadata.resource_version = Some("7".into());
    d.status = Some(DeploymentStatus {
        observed_generation: Some(1),
        replicas: Some(replicas),
        ready_replicas: Some(ready),
        updated_replicas: Some(replicas),
        available_replicas: Some(ready),
        ..DeploymentStatus::default()
    });
    d
}

/// One request the mock API server saw.
#[derive(Clone, Debug)]
pub struct Seen {
    /// HTTP method.
    pub method: Method,
    /// Path without the query.
    pub path: String,
    /// The query string.
    pub query: String,
    /// The JSON body (Null when empty).
    pub body: Value,
}

impl Seen {
    /// `"PATCH /apis/apps/v1/namespaces/web/deployments/shop"`.
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// What the mock answers: a status code and a JSON body; `None` never answers.
pub type Reply = Option<(u16, Value)>;

/// A `kube::Status` error body.
pub fn status_error(code: u16, reason: &str, message: &str) -> (u16, Value) {
    (
        code,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": message, "reason": reason, "code": code}),
    )
}

/// The requests a mock API server saw, in order (recorded before it answers).
pub type SeenLog = Arc<Mutex<Vec<Seen>>>;

/// A mock client and the log of what it was asked; a task serves it with `respond`
/// until every client clone is dropped.
pub fn mock_api<F>(mut respond: F) -> (Client, SeenLog)
where
    F: FnMut(&Seen) -> Reply + Send + 'static,
{
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let log = SeenLog::default();
    let seen = log.clone();
    let _task: JoinHandle<()> = tokio::spawn(async move {
        let mut handle = handle;
        let mut held = Vec::new();
        while let Some((req, send)) = handle.next_request().await {
            let (parts, body) = req.into_parts();
            let bytes = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let s = Seen {
                method: parts.method.clone(),
                path: parts.uri.path().to_string(),
                query: parts.uri.query().unwrap_or_default().to_string(),
                body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            };
            let reply = respond(&s);
            seen.lock().unwrap().push(s);
            match reply {
                Some((code, value)) => send.send_response(
                    Response::builder()
                        .status(StatusCode::from_u16(code).unwrap())
                        .header("content-type", "application/json")
                        .body(Body::from(serde_json::to_vec(&value).unwrap()))
                        .unwrap(),
                ),
                None => held.push(send),
            }
        }
        drop(held);
    });
    (client, log)
}

/// A responder for a fresh namespace: GETs are 404, writes echo their body with a
/// resourceVersion, the Deployment (or StatefulSet) comes back with `ready` ready replicas,
/// pod lists are empty, the one volume claim `data-shop-2` is Pending.
pub fn fresh_server(ready: i32) -> impl FnMut(&Seen) -> Reply + Send + 'static {
    move |s: &Seen| {
        let not_found = status_error(404, "NotFound", "not found");
        match s.method {
            Method::GET if s.path.ends_with("/pods") => Some((
                200,
                json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": []}),
            )),
            Method::GET if s.path.ends_with("/persistentvolumeclaims") => Some((
                200,
                json!({"kind": "PersistentVolumeClaimList", "apiVersion": "v1", "metadata": {},
                       "items": [{"metadata": {"name": "data-shop-2"}, "status": {"phase": "Pending"}}]}),
            )),
            Method::GET => Some(not_found),
            Method::PATCH | Method::POST | Method::PUT => {
                let mut body = s.body.clone();
                if s.path.ends_with("/status") {
                    body = json!({"apiVersion": "tribe.rs/v1alpha1", "kind": "SessionCluster",
                                  "metadata": {"name": "echo", "resourceVersion": "2"}, "spec": {}, "status": body["status"]});
                }
                if body.get("metadata").is_some() {
                    body["metadata"]["resourceVersion"] = json!("1");
                }
                if s.path.contains("/deployments/") || s.path.contains("/statefulsets/") {
                    body["status"] = json!({"observedGeneration": 1, "replicas": 3, "readyReplicas": ready,
                                            "updatedReplicas": 3, "availableReplicas": ready});
                    body["metadata"]["generation"] = json!(1);
                }
                Some((if s.method == Method::POST { 201 } else { 200 }, body))
            }
            Method::DELETE => Some((
                200,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
            )),
            _ => Some(not_found),
        }
    }
}

/// A minimal stored object for a GET of `path` (`.../<plural>/<name>`), resourceVersion "1",
/// owned by the SessionCluster `shop` (uid `uid-shop`).
pub fn existing(path: &str) -> Value {
    let mut parts = path.rsplit('/');
    let name = parts.next().unwrap_or_default();
    let plural = parts.next().unwrap_or_default();
    let (api_version, kind) = match plural {
        "deployments" => ("apps/v1", "Deployment"),
        "statefulsets" => ("apps/v1", "StatefulSet"),
        "services" => ("v1", "Service"),
        "secrets" => ("v1", "Secret"),
        "ingresses" => ("networking.k8s.io/v1", "Ingress"),
        "networkpolicies" => ("networking.k8s.io/v1", "NetworkPolicy"),
        "poddisruptionbudgets" => ("policy/v1", "PodDisruptionBudget"),
        other => panic!("no fixture for {other}"),
    };
    let mut v = json!({"apiVersion": api_version, "kind": kind,
                       "metadata": {"name": name, "namespace": "web", "resourceVersion": "1",
                         "ownerReferences": [{"apiVersion": "tribe.rs/v1alpha1", "kind": "SessionCluster",
                           "name": "shop", "uid": "uid-shop", "controller": true}]}});
    if kind == "Deployment" || kind == "StatefulSet" {
        v["spec"] = json!({"selector": {}, "template": {}});
    }
    v
}
