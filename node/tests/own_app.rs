//! The public API end to end, in process: two nodes built with `Config` and
//! `Node::from_listeners` serve an app's own router (not the demo) over real TCP; a
//! session written through one node is read through the other, the admin port serves the
//! shared `/cluster` type, and `serve_with_shutdown` leaves and stops both listeners.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use reqwest::Method;
use support::{eventually, HttpClient};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tribe_node::axum::{extract::Path, routing::get, Json, Router};
use tribe_node::config::MembershipMode;
use tribe_node::tower_sessions::Session;
use tribe_node::tribe_api::ClusterView;
use tribe_node::{Config, Listeners, Node};

/// The app: a list in the session (`GET /items`, `POST /items/{item}`).
fn app() -> Router {
    async fn list(session: Session) -> Json<Vec<String>> {
        Json(session.get("items").await.unwrap().unwrap_or_default())
    }
    async fn add(session: Session, Path(item): Path<String>) -> Json<Vec<String>> {
        let mut items: Vec<String> = session.get("items").await.unwrap().unwrap_or_default();
        items.push(item);
        session.insert("items", &items).await.unwrap();
        Json(items)
    }
    Router::new()
        .route("/items", get(list))
        .route("/items/{item}", get(list).post(add))
}

async fn listeners() -> Listeners {
    let bind = || TcpListener::bind("127.0.0.1:0");
    Listeners {
        http: bind().await.unwrap(),
        admin: bind().await.unwrap(),
        replication: bind().await.unwrap(),
    }
}

/// A node named `name` with `peer` as its static peer, serving [`app`] until the sender
/// is dropped or fires; returns its http and admin addresses.
async fn start(
    name: &str,
    l: Listeners,
    peer: SocketAddr,
) -> (
    SocketAddr,
    SocketAddr,
    oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let cfg = Config {
        node_id: Some(name.into()),
        cluster: "own-app".into(),
        membership: MembershipMode::Static,
        peers: vec![peer.to_string()],
        insecure: true,
        drain_timeout: Duration::from_secs(2),
        ..Config::default()
    };
    let node = Node::from_listeners(cfg, l).await.unwrap();
    let (http, admin) = (node.http_addr(), node.admin_addr());
    assert_eq!(node.node_id(), name);
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        node.serve_with_shutdown(app(), async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    (http, admin, tx, task)
}

async fn view(admin: SocketAddr) -> Result<ClusterView, String> {
    let body = reqwest::get(format!("http://{admin}/cluster"))
        .await
        .map_err(|e| e.to_string())?
        .text()
        .await
        .map_err(|e| e.to_string())?;
    serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))
}

#[tokio::test]
async fn own_router_gets_replicated_sessions() {
    let (la, lb) = (listeners().await, listeners().await);
    let (ra, rb) = (
        la.replication.local_addr().unwrap(),
        lb.replication.local_addr().unwrap(),
    );
    let (http_a, admin_a, stop_a, task_a) = start("a", la, rb).await;
    let (http_b, admin_b, stop_b, task_b) = start("b", lb, ra).await;
    for admin in [admin_a, admin_b] {
        eventually(
            "both nodes ready with one member",
            Duration::from_secs(10),
            || async move {
                let v = view(admin).await?;
                (v.ready && v.member_ids() == ["a", "b"])
                    .then_some(())
                    .ok_or(format!("{v:?}"))
            },
        )
        .await;
    }

    let mut browser = HttpClient::new();
    let (status, body) = browser
        .request(Method::POST, http_a, "/items/milk", None)
        .await
        .unwrap();
    assert_eq!((status, body.as_str()), (200, r#"["milk"]"#));
    assert!(browser
        .request(Method::POST, http_a, "/items/eggs", None)
        .await
        .is_ok());
    // The version cookie makes node b wait for the write it has not applied yet.
    let (status, body) = browser
        .request(Method::GET, http_b, "/items", None)
        .await
        .unwrap();
    assert_eq!((status, body.as_str()), (200, r#"["milk","eggs"]"#));
    assert_eq!(view(admin_b).await.unwrap().sessions, 1);

    stop_a.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), task_a)
        .await
        .expect("node a shuts down in time")
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(http_a).await.is_err(),
        "app port closed"
    );
    assert!(
        tokio::net::TcpStream::connect(admin_a).await.is_err(),
        "admin port closed"
    );
    eventually("b sees a leave", Duration::from_secs(5), || async move {
        let v = view(admin_b).await?;
        (v.member_ids() == ["b"])
            .then_some(())
            .ok_or(format!("{v:?}"))
    })
    .await;
    let (_, body) = browser
        .request(Method::GET, http_b, "/items", None)
        .await
        .unwrap();
    assert_eq!(
        body, r#"["milk","eggs"]"#,
        "the session outlives the node that wrote it"
    );
    drop(stop_b);
    tokio::time::timeout(Duration::from_secs(10), task_b)
        .await
        .expect("node b shuts down in time")
        .unwrap();
}

#[test]
fn config_from_env_names_the_bad_variable() {
    let e = Config::from_vars([("TRIBE_MIN_MEMBERS", "many")]).unwrap_err();
    assert_eq!(
        e.to_string(),
        r#"TRIBE_MIN_MEMBERS="many": invalid digit found in string"#
    );
}
