//! The driver in-process: real clusters over loopback TCP (static peers, the insecure
//! key), no mocks. What is tested is what the driver adds to the `Replica`: admission
//! through real handshakes, sync waits released by the replica's verdicts, the count of
//! writes acknowledged alone, readiness, and owned tasks stopping at shutdown.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::Cluster;
use crate::config::Config;
use crate::keyring::{KeySet, Keys};
use crate::metrics::Metrics;

const BOUND: Duration = Duration::from_secs(15);

async fn start(
    name: &str,
    listener: TcpListener,
    peers: &[std::net::SocketAddr],
) -> (Cluster, CancellationToken) {
    let advertise = listener.local_addr().unwrap();
    let peers: Vec<String> = peers.iter().map(|a| a.to_string()).collect();
    let peers = peers.join(",");
    let mut flags = vec![
        "--node-id",
        name,
        "--membership",
        "static",
        "--send-mode",
        "sync",
        "--member-timeout",
        "1s",
    ];
    if !peers.is_empty() {
        flags.extend(["--peers", peers.as_str()]);
    }
    let cfg = Config::from_flags(&flags);
    let metrics = Arc::new(Metrics::new(
        &mut prometheus_client::registry::Registry::default(),
    ));
    let shutdown = CancellationToken::new();
    let c = Cluster::start(
        cfg,
        listener,
        advertise,
        Keys::new(KeySet::insecure()),
        metrics,
        shutdown.clone(),
    )
    .await
    .expect("cluster starts");
    (c, shutdown)
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + BOUND;
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn data(v: &str) -> HashMap<String, bytes::Bytes> {
    HashMap::from([("a".to_string(), bytes::Bytes::from(v.to_string()))])
}

fn expiry() -> u64 {
    crate::store::unix_now() + 600
}

#[tokio::test]
async fn a_node_alone_joins_acknowledges_alone_and_its_tasks_stop_at_shutdown() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (c, shutdown) = start("solo", l, &[]).await;
    tokio::time::timeout(BOUND, c.ready())
        .await
        .expect("a node with no peers joins");
    assert!(c.is_ready());
    assert_eq!(c.live_members(), ["solo"]);
    assert_eq!(c.write(1, &data("x"), expiry()).await, Ok(1));
    assert_eq!(
        c.metrics().sync_writes_alone.get(),
        1,
        "a sync write with no live peer is acknowledged alone"
    );
    c.stop_accepting();
    assert!(!c.is_ready(), "draining is not ready");
    shutdown.cancel();
    assert!(
        c.tasks_stopped(BOUND).await,
        "every task the cluster spawned ends after the shutdown token"
    );
}

#[tokio::test]
async fn a_sync_write_waits_for_the_peer_and_is_released_when_it_goes() {
    let la = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let lb = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (aa, ab) = (la.local_addr().unwrap(), lb.local_addr().unwrap());
    let (a, stop_a) = start("a", la, &[ab]).await;
    let (b, stop_b) = start("b", lb, &[aa]).await;
    tokio::time::timeout(BOUND, async { tokio::join!(a.ready(), b.ready()) })
        .await
        .expect("both join");
    eventually("a and b see each other", || {
        a.live_members().len() == 2 && b.live_members().len() == 2
    })
    .await;
    assert_eq!(a.write(7, &data("1"), expiry()).await, Ok(1));
    assert_eq!(
        b.store().version(7),
        Some(1),
        "a sync write is on the peer when it returns"
    );
    assert_eq!(a.metrics().sync_writes_alone.get(), 0, "b acked it");
    // b goes away: a suspects it and no longer waits for it.
    stop_b.cancel();
    assert!(b.tasks_stopped(BOUND).await);
    drop(b);
    eventually("a notices b is gone", || a.live_members() == ["a"]).await;
    assert_eq!(a.write(7, &data("2"), expiry()).await, Ok(2));
    assert_eq!(
        a.metrics().sync_writes_alone.get(),
        1,
        "the write nobody acked is counted as acknowledged alone"
    );
    assert_eq!(
        a.view().members.iter().filter(|m| m.node == "b").count(),
        a.view().members.len(),
        "b is listed (suspect) or removed, nobody else"
    );
    stop_a.cancel();
    assert!(a.tasks_stopped(BOUND).await);
}

#[tokio::test]
async fn a_joiner_is_ready_only_with_the_sessions_of_every_member() {
    // a and b do not know each other: each holds a session the other lacks (as after
    // async writes during a cut). c joins both: it is ready only with both sessions.
    let la = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let lb = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let lc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (aa, ab) = (la.local_addr().unwrap(), lb.local_addr().unwrap());
    let (a, stop_a) = start("a", la, &[]).await;
    let (b, stop_b) = start("b", lb, &[]).await;
    tokio::time::timeout(BOUND, async { tokio::join!(a.ready(), b.ready()) })
        .await
        .expect("both join alone");
    assert_eq!(a.write(1, &data("from a"), expiry()).await, Ok(1));
    // Many on b: its transfer takes longer than a's.
    for sid in 2..3_000 {
        assert_eq!(b.write(sid, &data("from b"), expiry()).await, Ok(1));
    }
    let (c, stop_c) = start("c", lc, &[aa, ab]).await;
    tokio::time::timeout(BOUND, c.ready())
        .await
        .expect("c joins");
    assert_eq!(c.live_members(), ["a", "b", "c"]);
    let held = (1..3_000)
        .filter(|s| c.store().version(*s) == Some(1))
        .count();
    assert_eq!(
        held, 2_999,
        "ready with a state transfer from every live member, not from one"
    );
    for (node, stop) in [(&a, &stop_a), (&b, &stop_b), (&c, &stop_c)] {
        stop.cancel();
        assert!(node.tasks_stopped(BOUND).await);
    }
}
