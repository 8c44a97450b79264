//! The replication channel under a stranger's flood, after a key removal, and across
//! protocol versions (issues 20 and 22), on real `tribe-node` processes over loopback:
//! - 64 idle connections from one address, renewed every 3 s, do not keep a restarting
//!   member out: it joins (never "ready and alone") and its writes reach the flooded node;
//! - a node whose peers answer TCP but close every handshake is not ready, and says why;
//! - a key removed from two nodes' key files evicts the third node that holds only it.

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use support::attrs::*;
use support::*;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tribe_node::keyring::KeySet;

/// The default `--member-timeout`.
const MEMBER_TIMEOUT: Duration = Duration::from_secs(3);

/// Keeps `n` idle TCP connections from `from` to `target`, all closed and opened anew
/// every `renew`, until `stop`. Returns how many connects succeeded.
fn flood(
    from: IpAddr,
    target: SocketAddr,
    n: usize,
    renew: Duration,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut opened = 0;
        while !stop.load(Ordering::Relaxed) {
            let mut held: Vec<TcpStream> = Vec::with_capacity(n);
            for _ in 0..n {
                let sock = TcpSocket::new_v4().unwrap();
                sock.bind(SocketAddr::new(from, 0)).unwrap();
                if let Ok(s) = sock.connect(target).await {
                    held.push(s);
                    opened += 1;
                }
            }
            tokio::time::sleep(renew).await;
            drop(held);
        }
        opened
    })
}

/// The flood of issue 20 (64 idle connections from one address, renewed every 3 s) on
/// n1 while n2 restarts: n2 is never ready and alone; once ready it holds n1 as a member
/// and its writes reach n1 within the member timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_one_address_does_not_keep_a_restarting_member_out() {
    let (a1, a2) = (Addrs::loopback(), Addrs::loopback());
    let mut n1 = spawn("n1", a1, &static_peers(&[a2.replication], &[]));
    let mut n2 = spawn("n2", a2, &static_peers(&[a1.replication], &[]));
    n1.wait_ready(READY_TIMEOUT).await;
    n2.wait_ready(READY_TIMEOUT).await;
    wait_converged(&[&n1, &n2], READY_TIMEOUT).await;

    // The stranger: another loopback address, so it is not a known peer's.
    let stranger = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    let stop = Arc::new(AtomicBool::new(false));
    let before = failures(&n1, "too_many_from_source").await;
    let flooder = flood(
        stranger,
        a1.replication,
        64,
        Duration::from_secs(3),
        stop.clone(),
    );
    eventually(
        "n1 to refuse the flood's surplus connections",
        Duration::from_secs(10),
        || async {
            let n = failures(&n1, "too_many_from_source").await;
            if n >= before + 40.0 {
                Ok(())
            } else {
                Err(format!("{n}"))
            }
        },
    )
    .await;

    // n2 restarts under the flood.
    n2.sigterm();
    assert!(n2.wait_exit(Duration::from_secs(30)).await, "n2 exits");
    let n2 = spawn("n2", a2, &static_peers(&[a1.replication], &[]));
    eventually(
        "the restarted n2 to be ready with n1 as a member",
        READY_TIMEOUT,
        || async {
            let view = n2.cluster().await?;
            let alive: Vec<String> = members(&view)
                .into_iter()
                .filter(|(_, s)| s == "alive")
                .map(|(n, _)| n)
                .collect();
            match (view["ready"].as_bool(), alive.is_empty()) {
                (Some(true), true) => panic!("n2 is ready and alone under the flood: {view}"),
                (Some(true), false) => Ok(()),
                _ => Err(format!("not ready yet: {view}")),
            }
        },
    )
    .await;
    let sid = put_attr(&n2, None, json!("after the restart")).await;
    wait_attr(&n1, &sid, &json!("after the restart"), MEMBER_TIMEOUT).await;
    let flood_failures = failures(&n1, "too_many_from_source").await - before;
    stop.store(true, Ordering::Relaxed);
    let opened = flooder.await.unwrap();
    eprintln!(
        "flood: {opened} connections opened from {stranger}, {flood_failures} refused at accept"
    );
    assert!(opened >= 64, "the flood ran ({opened} connections)");
    n1.check_running().unwrap();
}

/// A node whose only reachable peer closes every handshake (as a flooded node does when
/// its slots are taken) is not ready and says why in `/cluster`; it joins once a real
/// member appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_completes_no_handshake_is_not_ready_and_says_why() {
    // The "peer" answers TCP and closes every connection at once.
    let hostile = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hostile_addr = hostile.local_addr().unwrap();
    let closer = tokio::spawn(async move {
        while let Ok((s, _)) = hostile.accept().await {
            drop(s);
        }
    });
    let (a1, a2) = (Addrs::loopback(), Addrs::loopback());
    let mut n2 = spawn(
        "n2",
        a2,
        &static_peers(&[hostile_addr, a1.replication], &[]),
    );
    let why = |view: &Value| -> Result<(), String> {
        if view["ready"] != json!(false) {
            return Err(format!("n2 says ready: {view}"));
        }
        if view["not_ready_reason"] != json!("HandshakeFailed") {
            return Err(format!("reason: {}", view["not_ready_reason"]));
        }
        let listed = view["peer_problems"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|p| {
                p["addr"] == json!(hostile_addr.to_string()) && p["reason"] == json!("closed")
            });
        if !listed {
            return Err(format!("peer_problems: {}", view["peer_problems"]));
        }
        Ok(())
    };
    eventually(
        "n2 to report why it is not ready",
        READY_TIMEOUT,
        || async { why(&n2.cluster().await?) },
    )
    .await;
    // Past the join's settle time (3 s) it still does not declare itself alone.
    always(
        "n2 not ready, reason HandshakeFailed",
        Duration::from_secs(4),
        || async {
            let (status, _) = n2.get("/readyz", true).await?;
            if status != 503 {
                return Err(format!("/readyz answered {status}"));
            }
            why(&n2.cluster().await?)
        },
    )
    .await;
    // A real member appears: n2 joins it, and writes flow.
    let mut n1 = spawn("n1", a1, &static_peers(&[a2.replication], &[]));
    n1.wait_ready(READY_TIMEOUT).await;
    n2.wait_ready(READY_TIMEOUT).await;
    wait_converged(&[&n1, &n2], READY_TIMEOUT).await;
    let sid = put_attr(&n2, None, json!(1)).await;
    wait_attr(&n1, &sid, &json!(1), MEMBER_TIMEOUT).await;
    closer.abort();
}

/// Three nodes share key k1; n1 and n2 rotate to k2 and drop k1; n3 keeps only k1. Within
/// a poll interval of the file n3's connections are closed, it is not readmitted, it
/// reports not ready, and it stops receiving writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_key_evicts_the_node_that_holds_only_it() {
    let old = "0123456789abcdef-the-leaked-key";
    let new = "0123456789abcdef-the-fresh-key";
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<_> = (1..=3)
        .map(|i| dir.path().join(format!("n{i}.key")))
        .collect();
    for f in &files {
        write_key_file(f, &KeySet::render("k1", &[("k1", old)]));
    }
    let all = [Addrs::loopback(), Addrs::loopback(), Addrs::loopback()];
    let poll = "200ms";
    let mut nodes: Vec<Node> = (0..3)
        .map(|i| {
            let peers: Vec<SocketAddr> = (0..3)
                .filter(|j| *j != i)
                .map(|j| all[j].replication)
                .collect();
            let key = files[i].display().to_string();
            spawn(
                &format!("n{}", i + 1),
                all[i],
                &static_peers(
                    &peers,
                    &["--cluster-key-file", &key, "--key-poll-interval", poll],
                ),
            )
        })
        .collect();
    wait_formed(&mut nodes).await;
    let sid = put_attr(&nodes[0], None, json!("before")).await;
    wait_attr(&nodes[2], &sid, &json!("before"), MEMBER_TIMEOUT).await;

    // n1 and n2: add k2, make it primary, drop k1 (each step loaded by both).
    for content in [
        KeySet::render("k2", &[("k1", old), ("k2", new)]),
        KeySet::render("k2", &[("k2", new)]),
    ] {
        write_key_file(&files[0], &content);
        write_key_file(&files[1], &content);
    }
    // Within a poll interval (plus the reconnection), n3 is out: no one lists it, it
    // lists no one, and it is not ready.
    let evicted_within = Duration::from_secs(10);
    for n in &nodes[..2] {
        eventually(
            &format!("{} to drop n3", n.name),
            evicted_within,
            || async {
                let alive = n.alive_members().await?;
                if alive.contains("n3") {
                    Err(format!("{alive:?}"))
                } else if alive.len() != 1 {
                    Err(format!("lost its other peer too: {alive:?}"))
                } else {
                    Ok(())
                }
            },
        )
        .await;
        let evicted = n.metric("tribe_connections_evicted").await.unwrap();
        assert!(
            evicted.unwrap_or(0.0) >= 1.0,
            "{}: evictions counted: {evicted:?}",
            n.name
        );
    }
    eventually("n3 to be cut off", evicted_within, || async {
        let view = nodes[2].cluster().await?;
        let alive = nodes[2].alive_members().await?;
        if !alive.is_empty() {
            return Err(format!("n3 still sees {alive:?}"));
        }
        if view["ready"] != json!(false) || view["not_ready_reason"] != json!("KeyRefused") {
            return Err(format!("n3: {view}"));
        }
        Ok(())
    })
    .await;
    // A write on n1 reaches n2, never n3 (which is not readmitted meanwhile).
    put_attr(&nodes[0], Some(&sid), json!("after")).await;
    wait_attr(&nodes[1], &sid, &json!("after"), MEMBER_TIMEOUT).await;
    always(
        "n3 not readmitted, without the new write",
        MEMBER_TIMEOUT,
        || async {
            let alive = nodes[2].alive_members().await?;
            if !alive.is_empty() {
                return Err(format!("n3 readmitted: {alive:?}"));
            }
            match get_attr(&nodes[2], &sid).await {
                Ok(v) if v == json!("after") => Err("n3 received the write".into()),
                _ => Ok(()),
            }
        },
    )
    .await;
}

/// 200 connections sending garbage before any authentication: every one is counted, but
/// the log gets at most one WARN line per reason per 10 s (a stranger cannot flood it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_auth_failures_are_counted_but_their_warnings_rate_limited() {
    use tokio::io::AsyncWriteExt;
    let a = Addrs::loopback();
    let mut n = spawn("n1", a, &static_peers(&[], &[]));
    n.wait_ready(READY_TIMEOUT).await;
    // Refused as garbage, or (past 8 at once from this address) without a slot.
    let reasons = ["bad_magic", "too_many_from_source"];
    let refused = || async {
        let mut sum = 0.0;
        for r in reasons {
            sum += failures(&n, r).await;
        }
        sum
    };
    let before = refused().await;
    for _ in 0..200 {
        let mut s = TcpStream::connect(a.replication).await.unwrap();
        let _ = s.write_all(b"GET / HTTP/1.1\r\n\r\n").await;
    }
    eventually("200 refusals counted", Duration::from_secs(10), || async {
        let got = refused().await - before;
        if got >= 200.0 {
            Ok(())
        } else {
            Err(format!("{got}"))
        }
    })
    .await;
    assert!(failures(&n, "bad_magic").await >= 1.0);
    let log = n.log();
    for r in reasons {
        let lines = log
            .lines()
            .filter(|l| l.contains("inbound handshake refused") && l.contains(r))
            .count();
        assert!(lines <= 2, "{lines} WARN lines for {r}:\n{log}");
    }
    let all = log
        .lines()
        .filter(|l| l.contains("inbound handshake refused"))
        .count();
    assert!(all >= 1, "no WARN line at all:\n{log}");
}

/// Issue 22: a node that speaks only the previous protocol version (the test fixture
/// `TRIBE_TEST_PROTOCOL_VERSIONS=2-2`: on the wire exactly a release before version
/// negotiation) joins a current cluster and sessions flow both ways; a node speaking only
/// a version this build does not is refused, and both sides say why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_previous_protocol_version_interoperates_and_an_unsupported_one_is_refused() {
    use tribe_node::wire::VERSIONS_ENV;
    let all = [
        Addrs::loopback(),
        Addrs::loopback(),
        Addrs::loopback(),
        Addrs::loopback(),
    ];
    let peers = |i: usize| -> Vec<String> {
        let others: Vec<SocketAddr> = (0..4)
            .filter(|j| *j != i)
            .map(|j| all[j].replication)
            .collect();
        static_peers(&others, &[])
    };
    let start = |i: usize, versions: Option<&str>| {
        let args = peers(i);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = versions.map(|v| (VERSIONS_ENV, v)).into_iter().collect();
        Node::spawn_env(&format!("n{}", i + 1), all[i], None, &args, &env)
    };
    let mut nodes = vec![start(0, None), start(1, None), start(2, Some("2-2"))];
    wait_formed(&mut nodes).await;
    let view = nodes[2].cluster().await.unwrap();
    assert_eq!(
        (view["protocol_min"].clone(), view["protocol_max"].clone()),
        (json!(2), json!(2)),
        "the fixture speaks version 2 only: {view}"
    );
    let current = nodes[0].cluster().await.unwrap();
    assert_eq!(
        current["protocol_max"],
        json!(tribe_node::wire::PROTOCOL_MAX)
    );
    // Sessions flow both ways between versions 2 and 3.
    let sid = put_attr(&nodes[2], None, json!("from the old node")).await;
    wait_attr(&nodes[0], &sid, &json!("from the old node"), MEMBER_TIMEOUT).await;
    put_attr(&nodes[1], Some(&sid), json!("from a new node")).await;
    wait_attr(&nodes[2], &sid, &json!("from a new node"), MEMBER_TIMEOUT).await;

    // A node that speaks only version 4.
    let n4 = start(3, Some("4-4"));
    let n4_addr = all[3].replication.to_string();
    eventually(
        "n4 to be refused for version skew, and say so",
        READY_TIMEOUT,
        || async {
            let v = n4.cluster().await?;
            let skewed = v["peer_problems"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["reason"] == json!("version_skew"))
                .count();
            if v["ready"] == json!(false)
                && v["not_ready_reason"] == json!("VersionSkew")
                && skewed == 3
            {
                Ok(())
            } else {
                Err(format!("n4: {v}"))
            }
        },
    )
    .await;
    let n1 = &nodes[0];
    eventually("n1 to report n4's version skew", READY_TIMEOUT, || async {
        let v = n1.cluster().await?;
        let listed = v["peer_problems"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|p| {
                p["addr"] == json!(n4_addr)
                    && p["reason"] == json!("version_skew")
                    && p["detail"].as_str().is_some_and(|d| d.contains("4..=4"))
            });
        if listed && failures(n1, "version_skew").await >= 1.0 {
            Ok(())
        } else {
            Err(format!("n1: {v}"))
        }
    })
    .await;
    // n1 stays ready with its compatible members, without n4.
    let view = n1.cluster().await.unwrap();
    assert_eq!(view["ready"], json!(true), "{view}");
    assert_eq!(
        n1.alive_members().await.unwrap(),
        ["n2", "n3"].iter().map(|s| s.to_string()).collect()
    );
}
