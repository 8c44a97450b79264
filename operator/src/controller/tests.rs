//! Reconcile against the mock API server: the request sequence, and the error paths a
//! real server cannot produce on demand (500s, hangs).

use super::*;
use crate::fixtures::{cluster, existing, fresh_server, mock_api, status_error, Reply, Seen};
use http::Method;
use serde_json::json;

const NS: &str = "web";

fn ctx(client: Client) -> Arc<Context> {
    Arc::new(Context::new(
        client,
        Metrics::default(),
        Some("test".into()),
    ))
}

/// Runs one reconcile of `sc` against `respond`; returns the result, the requests, the metrics.
async fn run_once<F>(sc: SessionCluster, respond: F) -> (Result<Action>, Vec<Seen>, Arc<Context>)
where
    F: FnMut(&Seen) -> Reply + Send + 'static,
{
    let (client, log) = mock_api(respond);
    let ctx = ctx(client);
    let res = reconcile(Arc::new(sc), ctx.clone()).await;
    let seen = log.lock().unwrap().clone();
    (res, seen, ctx)
}

fn lines(seen: &[Seen]) -> Vec<String> {
    seen.iter().map(Seen::line).collect()
}

fn find<'a>(seen: &'a [Seen], method: Method, path: &str) -> Option<&'a Seen> {
    seen.iter().find(|s| s.method == method && s.path == path)
}

fn status_patch(seen: &[Seen]) -> &Seen {
    find(
        seen,
        Method::PATCH,
        "/apis/tribe.rs/v1alpha1/namespaces/web/sessionclusters/shop/status",
    )
    .expect("status patch")
}

fn condition<'a>(patch: &'a Seen, type_: &str) -> &'a serde_json::Value {
    patch.body["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap()
}

fn events(seen: &[Seen]) -> Vec<(String, String)> {
    seen.iter()
        .filter(|s| {
            s.method == Method::POST && s.path == "/apis/events.k8s.io/v1/namespaces/web/events"
        })
        .map(|s| {
            (
                s.body["type"].as_str().unwrap().to_string(),
                s.body["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn fresh_cluster_applies_every_child_with_one_manager() {
    let (res, seen, _) = run_once(cluster("shop", NS), fresh_server(0)).await;
    let action = res.expect("reconcile succeeds");
    assert_eq!(
        action,
        Action::requeue(Duration::from_secs(5)),
        "not ready yet: requeue soon"
    );

    let applied = [
        "/api/v1/namespaces/web/services/shop-members",
        "/api/v1/namespaces/web/services/shop",
        "/apis/apps/v1/namespaces/web/deployments/shop",
        "/apis/policy/v1/namespaces/web/poddisruptionbudgets/shop",
        "/apis/networking.k8s.io/v1/namespaces/web/networkpolicies/shop",
    ];
    for path in applied {
        let p = find(&seen, Method::PATCH, path)
            .unwrap_or_else(|| panic!("no apply of {path}: {:#?}", lines(&seen)));
        assert!(
            p.query.contains("fieldManager=tribe-operator"),
            "{}",
            p.query
        );
        assert!(p.query.contains("force=true"), "{}", p.query);
        assert_eq!(p.body["metadata"]["ownerReferences"][0]["uid"], "uid-shop");
    }
    // The key is created, not applied.
    let created =
        find(&seen, Method::POST, "/api/v1/namespaces/web/secrets").expect("secret created");
    assert_eq!(created.body["metadata"]["name"], "shop-key");
    assert!(created.body["data"]["cluster.key"].is_string());
    assert!(find(
        &seen,
        Method::PATCH,
        "/api/v1/namespaces/web/secrets/shop-key"
    )
    .is_none());
    // Ingress disabled: none applied, none deleted (it does not exist).
    assert!(!seen
        .iter()
        .any(|s| s.path.contains("ingresses") && s.method != Method::GET));

    // The writes, in order (Events aside): key first, Services before the Deployment
    // whose pods need them, status last.
    let writes: Vec<String> = seen
        .iter()
        .filter(|s| s.method != Method::GET && !s.path.contains("/events"))
        .map(Seen::line)
        .collect();
    assert_eq!(
        writes,
        [
            "POST /api/v1/namespaces/web/secrets",
            "PATCH /api/v1/namespaces/web/services/shop-members",
            "PATCH /api/v1/namespaces/web/services/shop",
            "PATCH /apis/apps/v1/namespaces/web/deployments/shop",
            "PATCH /apis/policy/v1/namespaces/web/poddisruptionbudgets/shop",
            "PATCH /apis/networking.k8s.io/v1/namespaces/web/networkpolicies/shop",
            "PATCH /apis/tribe.rs/v1alpha1/namespaces/web/sessionclusters/shop/status",
        ]
    );

    let ev = events(&seen);
    assert_eq!(
        ev.iter()
            .filter(|(t, r)| t == "Normal" && r == "Created")
            .count(),
        6,
        "{ev:?}"
    );

    let status = status_patch(&seen);
    assert!(status.query.contains("fieldManager=tribe-operator"));
    assert_eq!(status.body["status"]["observedGeneration"], 1);
    assert_eq!(status.body["status"]["readyReplicas"], 0);
    assert_eq!(
        status.body["status"]["selector"],
        "app.kubernetes.io/instance=shop,app.kubernetes.io/name=tribe-node"
    );
    assert!(
        status.body["status"].get("members").is_none(),
        "unknown, not guessed"
    );
    assert_eq!(condition(status, "Ready")["status"], "False");
    assert_eq!(condition(status, "Progressing")["status"], "True");
    assert_eq!(condition(status, "Degraded")["status"], "False");
}

#[tokio::test]
async fn existing_secret_is_never_rewritten() {
    let mut inner = fresh_server(3);
    let respond = move |s: &Seen| {
        if s.method == Method::GET && s.path.ends_with("/secrets/shop-key") {
            return Some((
                200,
                json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "shop-key", "namespace": "web", "resourceVersion": "5",
                  "ownerReferences": [{"apiVersion": "tribe.rs/v1alpha1", "kind": "SessionCluster",
                     "name": "shop", "uid": "uid-shop", "controller": true}]},
                "data": {"cluster.key": "b2xk"}}),
            ));
        }
        inner(s)
    };
    let (res, seen, _) = run_once(cluster("shop", NS), respond).await;
    res.unwrap();
    assert!(
        !seen
            .iter()
            .any(|s| s.path.contains("secrets") && s.method != Method::GET),
        "{:#?}",
        lines(&seen)
    );
}

/// A responder where `path` holds `kind`'s object of someone else (no ownerReference).
fn with_foreign(path: &'static str, kind: &'static str) -> impl FnMut(&Seen) -> Reply + Send {
    let mut inner = fresh_server(3);
    move |s: &Seen| {
        if s.method == Method::GET && s.path.ends_with(path) {
            let name = path.rsplit('/').next().unwrap();
            return Some((
                200,
                json!({"apiVersion": "v1", "kind": kind,
                "metadata": {"name": name, "namespace": "web", "resourceVersion": "5"}}),
            ));
        }
        inner(s)
    }
}

#[tokio::test]
async fn a_service_of_someone_else_is_left_alone_and_reported() {
    let (res, seen, _) = run_once(
        cluster("shop", NS),
        with_foreign("/services/shop", "Service"),
    )
    .await;
    res.unwrap();
    let touched: Vec<_> = seen
        .iter()
        .filter(|s| s.path.ends_with("/services/shop") && s.method != Method::GET)
        .map(Seen::line)
        .collect();
    assert!(touched.is_empty(), "{touched:?}");
    // The other children are applied as usual.
    for path in [
        "/api/v1/namespaces/web/services/shop-members",
        "/apis/apps/v1/namespaces/web/deployments/shop",
        "/apis/policy/v1/namespaces/web/poddisruptionbudgets/shop",
    ] {
        assert!(find(&seen, Method::PATCH, path).is_some(), "{path} applied");
    }
    let c = condition(status_patch(&seen), "ChildrenOwned");
    assert_eq!(c["status"], "False");
    assert_eq!(c["reason"], "Conflict");
    assert!(
        c["message"].as_str().unwrap().contains("Service/shop"),
        "{c}"
    );
    assert!(events(&seen).contains(&("Warning".into(), "Conflict".into())));
}

#[tokio::test]
async fn a_key_secret_of_someone_else_holds_the_deployment_back() {
    let (res, seen, _) = run_once(
        cluster("shop", NS),
        with_foreign("/secrets/shop-key", "Secret"),
    )
    .await;
    res.unwrap();
    assert!(
        !seen.iter().any(
            |s| (s.path.contains("/secrets") || s.path.contains("/deployments/"))
                && s.method != Method::GET
        ),
        "{:#?}",
        lines(&seen)
    );
    assert!(find(&seen, Method::PATCH, "/api/v1/namespaces/web/services/shop").is_some());
    let c = condition(status_patch(&seen), "ChildrenOwned");
    assert_eq!(c["status"], "False");
    assert!(
        c["message"].as_str().unwrap().contains("Secret/shop-key"),
        "{c}"
    );
}

#[tokio::test]
async fn a_fresh_cluster_owns_every_child() {
    let (res, seen, _) = run_once(cluster("shop", NS), fresh_server(3)).await;
    res.unwrap();
    let c = condition(status_patch(&seen), "ChildrenOwned");
    assert_eq!(c["status"], "True");
    assert!(!events(&seen).iter().any(|(_, r)| r == "Conflict"));
}

#[tokio::test]
async fn disabled_ingress_of_ours_is_deleted() {
    let mut inner = fresh_server(3);
    let respond = move |s: &Seen| {
        if s.method == Method::GET && s.path.ends_with("/ingresses/shop") {
            return Some((
                200,
                json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                "metadata": {"name": "shop", "namespace": "web", "resourceVersion": "9",
                  "ownerReferences": [{"apiVersion": "tribe.rs/v1alpha1", "kind": "SessionCluster",
                     "name": "shop", "uid": "uid-shop", "controller": true}]}}),
            ));
        }
        inner(s)
    };
    let (res, seen, _) = run_once(cluster("shop", NS), respond).await;
    res.unwrap();
    assert!(find(
        &seen,
        Method::DELETE,
        "/apis/networking.k8s.io/v1/namespaces/web/ingresses/shop"
    )
    .is_some());
    assert!(events(&seen).contains(&("Normal".into(), "Deleted".into())));
}

#[tokio::test]
async fn enabled_ingress_is_applied() {
    let mut sc = cluster("shop", NS);
    sc.spec.ingress = Some(crate::crd::IngressSpec {
        enabled: true,
        host: Some("shop.example.com".into()),
        ..Default::default()
    });
    let (res, seen, _) = run_once(sc, fresh_server(3)).await;
    res.unwrap();
    let p = find(
        &seen,
        Method::PATCH,
        "/apis/networking.k8s.io/v1/namespaces/web/ingresses/shop",
    )
    .expect("ingress applied");
    assert_eq!(p.body["spec"]["rules"][0]["host"], "shop.example.com");
}

#[tokio::test]
async fn server_error_on_apply_is_degraded_with_event_and_backoff() {
    let mut inner = fresh_server(0);
    let respond = move |s: &Seen| {
        if s.method == Method::PATCH && s.path.ends_with("/deployments/shop") {
            return Some(status_error(500, "InternalError", "etcd is on fire"));
        }
        inner(s)
    };
    let (res, seen, ctx) = run_once(cluster("shop", NS), respond).await;
    let err = res.expect_err("apply failure is an error");
    assert!(
        matches!(err, Error::Apply { ref kind, .. } if kind == "Deployment"),
        "{err:?}"
    );
    assert_eq!(err.metric_label(), "apply");

    let status = status_patch(&seen);
    let degraded = condition(status, "Degraded");
    assert_eq!(degraded["status"], "True");
    assert_eq!(degraded["reason"], "ApplyFailed");
    assert!(degraded["message"]
        .as_str()
        .unwrap()
        .contains("etcd is on fire"));
    assert!(events(&seen).contains(&("Warning".into(), "ApplyFailed".into())));
    // Nothing after the failed Deployment was applied.
    assert!(find(
        &seen,
        Method::PATCH,
        "/apis/policy/v1/namespaces/web/poddisruptionbudgets/shop"
    )
    .is_none());

    let sc = Arc::new(cluster("shop", NS));
    let first = error_policy(sc.clone(), &err, ctx.clone());
    let second = error_policy(sc.clone(), &err, ctx.clone());
    assert_eq!(first, Action::requeue(Duration::from_secs(5)));
    assert_eq!(second, Action::requeue(Duration::from_secs(10)));
    assert!(ctx
        .metrics
        .render()
        .contains(r#"tribe_operator_reconcile_failures_total{error="apply"} 2"#));
}

#[tokio::test]
async fn invalid_spec_is_refused_without_touching_children() {
    let mut sc = cluster("shop", NS);
    sc.spec.replicas = 2;
    sc.spec.replication.backups = 2;
    let (res, seen, _) = run_once(sc, fresh_server(0)).await;
    assert!(matches!(res, Err(Error::InvalidSpec(_))), "{res:?}");
    assert!(
        !seen
            .iter()
            .any(|s| s.method == Method::PATCH && !s.path.ends_with("/status")),
        "{:#?}",
        lines(&seen)
    );
    let status = status_patch(&seen);
    assert_eq!(condition(status, "Degraded")["reason"], "InvalidSpec");
    assert!(events(&seen).contains(&("Warning".into(), "InvalidSpec".into())));
}

/// A hostPath volume (or a ServiceAccount) in the template is refused like any invalid
/// spec: nothing applied, `Degraded`/`InvalidSpec`, a Warning Event; with the flag the
/// same spec is applied.
#[tokio::test]
async fn a_node_level_template_is_refused_unless_the_operator_allows_it() {
    use crate::crd::PodTemplate;
    let mut sc = cluster("shop", NS);
    sc.spec.template = Some(PodTemplate {
        volumes: Some(vec![serde_json::from_value(json!({
            "name": "host", "hostPath": {"path": "/"}
        }))
        .unwrap()]),
        ..PodTemplate::default()
    });
    let (res, seen, _) = run_once(sc.clone(), fresh_server(0)).await;
    let err = res.expect_err("refused");
    assert!(
        matches!(&err, Error::InvalidSpec(m) if m.contains("hostPath")),
        "{err:?}"
    );
    assert!(
        !seen
            .iter()
            .any(|s| s.method != Method::GET && s.path.contains("/deployments/")),
        "{:#?}",
        lines(&seen)
    );
    let status = status_patch(&seen);
    assert_eq!(condition(status, "Degraded")["reason"], "InvalidSpec");
    assert!(events(&seen).contains(&("Warning".into(), "InvalidSpec".into())));

    let (client, log) = mock_api(fresh_server(0));
    let allowed = Arc::new(Context::new(client, Metrics::default(), None).with_policy(
        TemplatePolicy {
            allow_node_level_pod_fields: true,
            ..TemplatePolicy::default()
        },
    ));
    reconcile(Arc::new(sc), allowed).await.expect("allowed");
    let seen = log.lock().unwrap().clone();
    let dep = find(
        &seen,
        Method::PATCH,
        "/apis/apps/v1/namespaces/web/deployments/shop",
    )
    .expect("deployment applied");
    let vols = dep.body["spec"]["template"]["spec"]["volumes"].to_string();
    assert!(vols.contains("hostPath"), "{vols}");
}

/// A cluster with `spec.app` whose key Secret predates the RESP password gets it added
/// (an update carrying the resourceVersion read; the key itself unchanged).
#[tokio::test]
async fn an_app_cluster_gets_the_password_added_to_an_old_secret() {
    let mut inner = fresh_server(3);
    let respond = move |s: &Seen| {
        if s.method == Method::GET && s.path.ends_with("/secrets/shop-key") {
            return Some((
                200,
                json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "shop-key", "namespace": "web", "resourceVersion": "5",
                  "ownerReferences": [{"apiVersion": "tribe.rs/v1alpha1", "kind": "SessionCluster",
                     "name": "shop", "uid": "uid-shop", "controller": true}]},
                "data": {"cluster.key": "b2xk"}}),
            ));
        }
        if s.method == Method::PUT && s.path.ends_with("/secrets/shop-key") {
            return Some((200, s.body.clone()));
        }
        inner(s)
    };
    let mut sc = cluster("shop", NS);
    sc.spec.app = Some(crate::crd::AppSpec {
        image: "shop:1".into(),
        port: 3000,
        command: None,
        args: None,
        env: Default::default(),
        readiness_path: "/".into(),
        proxy: None,
        resources: None,
    });
    let (res, seen, _) = run_once(sc, respond).await;
    res.unwrap();
    let put = find(
        &seen,
        Method::PUT,
        "/api/v1/namespaces/web/secrets/shop-key",
    )
    .unwrap_or_else(|| panic!("no update: {:#?}", lines(&seen)));
    assert_eq!(put.body["metadata"]["resourceVersion"], "5");
    assert_eq!(put.body["data"]["cluster.key"], "b2xk", "the key is kept");
    assert!(put.body["data"]["resp.password"]
        .as_str()
        .is_some_and(|p| p.len() > 20));
    // The update comes before the workload whose pods read the password.
    let put_at = seen.iter().position(|s| s.method == Method::PUT).unwrap();
    let dep_at = seen
        .iter()
        .position(|s| s.method == Method::PATCH && s.path.contains("/deployments/"))
        .unwrap();
    assert!(put_at < dep_at);
}

/// Without Secret access in the namespace (the chart grants it per namespace) the
/// cluster is Degraded with reason `Forbidden` and a message that says what to do.
#[tokio::test]
async fn no_secret_access_says_which_chart_value_grants_it() {
    let mut inner = fresh_server(0);
    let respond = move |s: &Seen| {
        if s.path.contains("/secrets") {
            return Some(status_error(
                403,
                "Forbidden",
                r#"secrets "shop-key" is forbidden: User "system:serviceaccount:tribe-system:tribe-operator" cannot get resource "secrets" in API group "" in the namespace "web""#,
            ));
        }
        inner(s)
    };
    let (res, seen, ctx) = run_once(cluster("shop", NS), respond).await;
    let err = res.expect_err("forbidden");
    assert!(matches!(err, Error::Forbidden(_)), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("rbac.secretNamespaces") && msg.contains("namespace web"),
        "{msg}"
    );
    let status = status_patch(&seen);
    assert_eq!(condition(status, "Degraded")["reason"], "Forbidden");
    assert!(events(&seen).contains(&("Warning".into(), "Forbidden".into())));
    assert!(find(
        &seen,
        Method::PATCH,
        "/apis/apps/v1/namespaces/web/deployments/shop"
    )
    .is_none());
    let _ = ctx;
}

#[tokio::test(start_paused = true)]
async fn hanging_api_server_times_out() {
    // The server accepts every request and never answers.
    let (res, _seen, _) = run_once(cluster("shop", NS), |_s: &Seen| None).await;
    let err = res.expect_err("times out");
    assert!(matches!(err, Error::Timeout(_)), "{err:?}");
    assert_eq!(err.metric_label(), "timeout");
}

#[tokio::test]
async fn second_reconcile_with_same_status_writes_nothing_new() {
    let (_, seen, _) = run_once(cluster("shop", NS), fresh_server(3)).await;
    let status: crate::crd::SessionClusterStatus =
        serde_json::from_value(status_patch(&seen).body["status"].clone()).unwrap();
    let mut sc = cluster("shop", NS);
    sc.status = Some(status);
    // Everything exists now and applying changes nothing.
    let respond = |s: &Seen| -> Reply {
        let mut r = fresh_server(3)(s);
        // Everything but the ingress (disabled) and the other workload kind (no
        // persistence: no StatefulSet).
        if s.method == Method::GET
            && !s.path.ends_with("/pods")
            && !s.path.contains("ingresses")
            && !s.path.contains("statefulsets")
        {
            r = Some((200, existing(&s.path)));
        }
        r
    };
    let (res, seen, _) = run_once(sc, respond).await;
    res.unwrap();
    assert!(
        events(&seen).is_empty(),
        "no Created/Updated events: {:?}",
        events(&seen)
    );
    assert!(
        find(
            &seen,
            Method::PATCH,
            "/apis/tribe.rs/v1alpha1/namespaces/web/sessionclusters/shop/status"
        )
        .is_none(),
        "unchanged status is not rewritten"
    );
}

#[test]
fn backoff_doubles_and_caps() {
    assert_eq!(backoff(1), Duration::from_secs(5));
    assert_eq!(backoff(2), Duration::from_secs(10));
    assert_eq!(backoff(3), Duration::from_secs(20));
    assert_eq!(backoff(100), Duration::from_secs(300));
}

#[test]
fn validation_mirrors_the_schema() {
    let ok = SessionClusterSpec::default();
    assert_eq!(validate(&ok), Ok(()));
    let single = SessionClusterSpec {
        replicas: 1,
        ..ok.clone()
    };
    assert_eq!(
        validate(&single),
        Ok(()),
        "one node with the default backups is fine"
    );
    let zero = SessionClusterSpec {
        replicas: 0,
        ..ok.clone()
    };
    assert_eq!(validate(&zero), Ok(()), "scaled to zero");
    let mut bad = ok.clone();
    bad.replicas = -1;
    assert!(validate(&bad).is_err());
    let mut bad = ok.clone();
    bad.replication.backups = 3;
    assert!(validate(&bad).is_err());
    for t in ["30", "m", "1.5m", "10d", "", "5 m"] {
        let mut bad = ok.clone();
        bad.session.timeout = t.into();
        assert!(validate(&bad).is_err(), "{t:?}");
    }
    for t in ["500ms", "90s", "30m", "2h"] {
        let mut good = ok.clone();
        good.session.timeout = t.into();
        assert_eq!(validate(&good), Ok(()), "{t:?}");
    }
}

#[test]
fn status_only_changes_are_not_ours() {
    let sc = cluster("shop", NS);
    let mut before = crate::fixtures::observed_deployment(&sc, 3, 1);
    let mut after = before.clone();
    after.metadata.resource_version = Some("8".into());
    after.status.as_mut().unwrap().ready_replicas = Some(3);
    assert!(
        !changed_by_us(&before, &after),
        "status moved, spec did not"
    );
    after.spec.replicas = Some(5);
    assert!(changed_by_us(&before, &after));
    before.metadata.resource_version = Some("8".into());
    assert!(
        !changed_by_us(&before, &after),
        "same resourceVersion: nothing changed"
    );
}

#[test]
fn long_notes_are_cut_at_a_char_boundary() {
    let s = truncate("é".repeat(1000), 1000);
    assert!(s.len() <= 1003);
    assert!(s.ends_with('…'));
    assert_eq!(truncate("short".into(), 1000), "short");
}

/// `spec.monitoring.podMonitor` while the API server serves no monitoring.coreos.com:
/// one discovery request, a Warning Event, and the cluster is reconciled as usual.
#[tokio::test]
async fn pod_monitor_without_the_prometheus_operator_is_skipped_with_a_warning() {
    let mut sc = cluster("shop", NS);
    sc.spec.monitoring = Some(crate::crd::MonitoringSpec { pod_monitor: true });
    let (res, seen, _) = run_once(sc, fresh_server(3)).await;
    res.unwrap();
    assert!(
        find(&seen, Method::GET, "/apis/monitoring.coreos.com/v1").is_some(),
        "{:#?}",
        lines(&seen)
    );
    assert!(!seen.iter().any(|s| s.path.contains("podmonitors")));
    assert!(events(&seen).contains(&("Warning".into(), "MonitoringUnavailable".into())));
    assert!(find(
        &seen,
        Method::PATCH,
        "/apis/apps/v1/namespaces/web/deployments/shop"
    )
    .is_some());
}

/// Without `spec.monitoring` nothing about monitoring is asked of the API server.
#[tokio::test]
async fn no_monitoring_spec_no_discovery() {
    let (res, seen, ctx) = run_once(cluster("shop", NS), fresh_server(3)).await;
    res.unwrap();
    assert!(!seen
        .iter()
        .any(|s| s.path.contains("monitoring.coreos.com")));
    // The per-cluster gauges are set from the reconcile.
    let text = ctx.metrics.render();
    assert!(
        text.contains(
            r#"tribe_operator_cluster_replicas{namespace="web",sessioncluster="shop"} 3"#
        ),
        "{text}"
    );
}

/// With the PodMonitor kind served, the PodMonitor is applied with the operator's field
/// manager; with `podMonitor: false` ours is deleted.
#[tokio::test]
async fn pod_monitor_is_applied_and_removed_when_the_kind_exists() {
    fn with_monitoring(
        mut inner: impl FnMut(&Seen) -> Reply + Send + 'static,
        existing_uid: Option<&'static str>,
    ) -> impl FnMut(&Seen) -> Reply + Send + 'static {
        move |s: &Seen| {
            if s.method == Method::GET && s.path == "/apis/monitoring.coreos.com/v1" {
                return Some((
                    200,
                    json!({
                        "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "monitoring.coreos.com/v1",
                        "resources": [{"name": "podmonitors", "singularName": "podmonitor", "namespaced": true,
                                       "kind": "PodMonitor", "verbs": ["get", "list", "watch", "create", "patch", "delete"]}]
                    }),
                ));
            }
            if s.method == Method::GET && s.path.ends_with("/podmonitors/shop") {
                if let Some(uid) = existing_uid {
                    return Some((
                        200,
                        json!({"apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor",
                        "metadata": {"name": "shop", "namespace": "web", "resourceVersion": "1",
                                     "ownerReferences": [{"apiVersion": "tribe.rs/v1alpha1", "kind": "SessionCluster",
                                                          "name": "shop", "uid": uid, "controller": true}]},
                        "spec": {}}),
                    ));
                }
            }
            inner(s)
        }
    }
    let path = "/apis/monitoring.coreos.com/v1/namespaces/web/podmonitors/shop";
    let mut sc = cluster("shop", NS);
    sc.spec.monitoring = Some(crate::crd::MonitoringSpec { pod_monitor: true });
    let (res, seen, _) = run_once(sc.clone(), with_monitoring(fresh_server(3), None)).await;
    res.unwrap();
    let p = find(&seen, Method::PATCH, path).unwrap_or_else(|| panic!("{:#?}", lines(&seen)));
    assert!(
        p.query.contains("fieldManager=tribe-operator"),
        "{}",
        p.query
    );
    assert_eq!(p.body["kind"], "PodMonitor");
    assert_eq!(p.body["spec"]["podMetricsEndpoints"][0]["port"], "admin");

    sc.spec.monitoring = Some(crate::crd::MonitoringSpec { pod_monitor: false });
    let (res, seen, _) = run_once(
        sc.clone(),
        with_monitoring(fresh_server(3), Some("uid-shop")),
    )
    .await;
    res.unwrap();
    assert!(
        find(&seen, Method::DELETE, path).is_some(),
        "{:#?}",
        lines(&seen)
    );
    // Someone else's PodMonitor of that name is left alone.
    let (res, seen, _) = run_once(sc, with_monitoring(fresh_server(3), Some("someone-else"))).await;
    res.unwrap();
    assert!(find(&seen, Method::DELETE, path).is_none());
}

#[test]
fn validation_checks_the_template() {
    use crate::crd::PodTemplate;
    use k8s_openapi::api::core::v1::{ResourceRequirements, Volume};
    let mut spec = SessionClusterSpec {
        template: Some(PodTemplate {
            volumes: Some(vec![Volume {
                name: "cluster-key".into(),
                ..Volume::default()
            }]),
            ..PodTemplate::default()
        }),
        ..SessionClusterSpec::default()
    };
    assert!(validate(&spec).unwrap_err().contains("cluster-key"));
    spec.template = Some(PodTemplate {
        resources: Some(ResourceRequirements::default()),
        ..PodTemplate::default()
    });
    assert!(validate(&spec).is_ok());
    spec.resources = Some(ResourceRequirements::default());
    assert!(validate(&spec).unwrap_err().contains("not both"));
}

fn persistent(name: &str) -> SessionCluster {
    let mut sc = cluster(name, NS);
    sc.spec.persistence = Some(crate::fixtures::persistence(false));
    sc
}

/// A responder where `kind` (`deployments`/`statefulsets`) `shop` exists, controlled by
/// `owner_uid`, on top of `fresh_server(ready)`.
fn with_existing(
    ready: i32,
    plural: &'static str,
    owner_uid: &'static str,
) -> impl FnMut(&Seen) -> Reply + Send + 'static {
    let mut inner = fresh_server(ready);
    move |s: &Seen| {
        if s.method == Method::GET && s.path.ends_with(&format!("/{plural}/shop")) {
            let mut v = existing(&s.path);
            v["metadata"]["ownerReferences"] = json!([{"apiVersion": "tribe.rs/v1alpha1",
                "kind": "SessionCluster", "name": "shop", "uid": owner_uid, "controller": true}]);
            return Some((200, v));
        }
        inner(s)
    }
}

#[tokio::test]
async fn persistence_with_volumes_applies_a_statefulset_not_a_deployment() {
    let (res, seen, _) = run_once(persistent("shop"), fresh_server(0)).await;
    res.unwrap();
    let p = find(
        &seen,
        Method::PATCH,
        "/apis/apps/v1/namespaces/web/statefulsets/shop",
    )
    .unwrap_or_else(|| panic!("no StatefulSet applied: {:#?}", lines(&seen)));
    assert!(p.query.contains("fieldManager=tribe-operator"));
    assert_eq!(
        p.body["spec"]["volumeClaimTemplates"][0]["metadata"]["name"],
        "data"
    );
    assert!(!seen
        .iter()
        .any(|s| s.path.contains("/deployments/") && s.method != Method::GET));
    // Not ready yet: the status says so, from the StatefulSet, naming the pending claim.
    let status = status_patch(&seen);
    assert_eq!(condition(status, "Ready")["status"], "False");
    assert_eq!(condition(status, "Ready")["reason"], "ClaimsPending");
    let message = condition(status, "Ready")["message"].as_str().unwrap();
    assert!(message.contains("data-shop-2"), "{message}");
    assert_eq!(
        status.body["status"]["selector"],
        "app.kubernetes.io/instance=shop,app.kubernetes.io/name=tribe-node"
    );
}

#[tokio::test]
async fn switching_kind_deletes_our_old_workload_only_once_the_new_one_is_ready() {
    let deployment = "/apis/apps/v1/namespaces/web/deployments/shop";
    // The StatefulSet is not ready yet: our Deployment stays.
    let (res, seen, _) = run_once(
        persistent("shop"),
        with_existing(1, "deployments", "uid-shop"),
    )
    .await;
    res.unwrap();
    assert!(
        find(&seen, Method::DELETE, deployment).is_none(),
        "{:#?}",
        lines(&seen)
    );
    // Ready: it goes, with an Event.
    let (res, seen, _) = run_once(
        persistent("shop"),
        with_existing(3, "deployments", "uid-shop"),
    )
    .await;
    res.unwrap();
    assert!(
        find(&seen, Method::DELETE, deployment).is_some(),
        "{:#?}",
        lines(&seen)
    );
    assert!(events(&seen).contains(&("Normal".into(), "Deleted".into())));
    // Someone else's Deployment of that name is left alone.
    let (res, seen, _) = run_once(
        persistent("shop"),
        with_existing(3, "deployments", "uid-other"),
    )
    .await;
    res.unwrap();
    assert!(find(&seen, Method::DELETE, deployment).is_none());
    // And back: persistence off deletes our StatefulSet once the Deployment is ready.
    let (res, seen, _) = run_once(
        cluster("shop", NS),
        with_existing(3, "statefulsets", "uid-shop"),
    )
    .await;
    res.unwrap();
    assert!(find(&seen, Method::PATCH, deployment).is_some());
    assert!(find(
        &seen,
        Method::DELETE,
        "/apis/apps/v1/namespaces/web/statefulsets/shop"
    )
    .is_some());
}

#[test]
fn persistence_validation() {
    use crate::crd::Persistence;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    let check = |p: Persistence| {
        let mut spec = SessionClusterSpec::default();
        spec.persistence = Some(p);
        validate(&spec)
    };
    let on = crate::fixtures::persistence(false);
    assert_eq!(check(on.clone()), Ok(()));
    assert_eq!(check(Persistence::default()), Ok(()), "off");
    for size in ["1Gi", "500M", "2", "1.5Gi", "10k"] {
        let p = Persistence {
            size: Quantity(size.into()),
            ..on.clone()
        };
        assert_eq!(check(p), Ok(()), "{size}");
    }
    for size in ["0", "0Gi", "", "1GB", "-1Gi", "Gi"] {
        let p = Persistence {
            size: Quantity(size.into()),
            ..on.clone()
        };
        let e = check(p).unwrap_err();
        assert!(e.contains("persistence.size"), "{size}: {e}");
    }
    let p = Persistence {
        max_active_sessions: Some(0),
        ..on.clone()
    };
    assert!(check(p).unwrap_err().contains("maxActiveSessions"));
    let p = Persistence {
        storage_class_name: Some(String::new()),
        ..on.clone()
    };
    assert!(check(p).unwrap_err().contains("storageClassName"));
    let pg = crate::fixtures::persistence(true);
    assert_eq!(check(pg.clone()), Ok(()));
    let p = Persistence {
        enabled: false,
        ..pg.clone()
    };
    assert!(check(p).unwrap_err().contains("enabled"));
    let p = Persistence {
        storage_class_name: Some("fast".into()),
        ..pg
    };
    assert!(check(p).unwrap_err().contains("storageClassName"));
}

/// Without `spec.image` the Deployment runs the operator's node image and the status says
/// so; a pinned image wins over it. The stored spec is never given an image.
#[tokio::test]
async fn unpinned_clusters_run_the_operators_node_image() {
    let deployment = "/apis/apps/v1/namespaces/web/deployments/shop";
    let node_image = |seen: &[Seen]| {
        find(seen, Method::PATCH, deployment)
            .expect("deployment applied")
            .body["spec"]["template"]["spec"]["containers"][0]["image"]
            .clone()
    };
    let run = |sc: SessionCluster| async move {
        let (client, log) = mock_api(fresh_server(0));
        let ctx = Arc::new(
            Context::new(client, Metrics::default(), Some("test".into()))
                .with_node_image("registry.example.com/tribe/tribe-node:0.2.0"),
        );
        reconcile(Arc::new(sc), ctx).await.expect("reconcile");
        let seen = log.lock().unwrap().clone();
        seen
    };
    let sc = cluster("shop", NS);
    assert_eq!(sc.spec.image, None);
    let seen = run(sc).await;
    assert_eq!(
        node_image(&seen),
        "registry.example.com/tribe/tribe-node:0.2.0"
    );
    assert_eq!(
        status_patch(&seen).body["status"]["image"],
        "registry.example.com/tribe/tribe-node:0.2.0"
    );
    assert!(
        !seen
            .iter()
            .any(|s| s.path.ends_with("/sessionclusters/shop") && s.method != Method::GET),
        "the spec is not written: {:#?}",
        lines(&seen)
    );

    let mut pinned = cluster("shop", NS);
    pinned.spec.image = Some("shop:1.4".into());
    let seen = run(pinned).await;
    assert_eq!(node_image(&seen), "shop:1.4");
    assert_eq!(status_patch(&seen).body["status"]["image"], "shop:1.4");
}
