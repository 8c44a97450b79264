//! The replication channel's security (issue 11), on real `tribe-node` processes over
//! real TCP on loopback:
//! - a marker written into a session never appears in the bytes between two nodes (a
//!   forwarding proxy in the test captures them);
//! - a recorded handshake replayed to a node is refused and counted; so are a replayed
//!   first message and a reflected answer;
//! - a node with another key never becomes a member, and reports not ready;
//! - 500 unauthenticated connections leave the node's RSS within a few MB, and
//!   replication keeps working meanwhile;
//! - a key rotation (add, switch primary, drop the old key) through the watched key file,
//!   under a write loop, with restarts that force new handshakes: 0 errors, 0 lost writes.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use support::attrs::*;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tribe_node::keyring::{KeySet, Keys};
use tribe_node::wire::{Hello, HEADER_LEN};

const KEY: &str = "0123456789abcdef-secure-channel-key";
const OTHER_KEY: &str = "fedcba9876543210-a-different-key";

/// Bytes seen by the proxy on one connection: (dialer → acceptor, acceptor → dialer).
type Capture = Arc<parking_lot::Mutex<Vec<(Vec<u8>, Vec<u8>)>>>;

/// A TCP forwarder to `target` that records every byte of every connection.
async fn proxy(target: SocketAddr) -> (SocketAddr, Capture) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let capture: Capture = Default::default();
    let cap = capture.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = TcpStream::connect(target).await else {
                continue;
            };
            let idx = {
                let mut c = cap.lock();
                c.push((Vec::new(), Vec::new()));
                c.len() - 1
            };
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            let cap1 = cap.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n) = cr.read(&mut buf).await {
                    if n == 0 || sw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    cap1.lock()[idx].0.extend_from_slice(&buf[..n]);
                }
                let _ = sw.shutdown().await;
            });
            let cap2 = cap.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n) = sr.read(&mut buf).await {
                    if n == 0 || cw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    cap2.lock()[idx].1.extend_from_slice(&buf[..n]);
                }
                let _ = cw.shutdown().await;
            });
        }
    });
    (addr, capture)
}

async fn wait_failures(node: &Node, reason: &str, at_least: f64) {
    eventually(
        &format!(
            "{}: handshake_failures{{{reason}}} >= {at_least}",
            node.name
        ),
        Duration::from_secs(10),
        || async {
            let n = failures(node, reason).await;
            if n >= at_least {
                Ok(())
            } else {
                Err(format!("{n}"))
            }
        },
    )
    .await;
}

/// Writes `bytes` on a fresh connection to `addr`; returns what the node sent back
/// before it closed (panics if it keeps the connection open for 10 s).
async fn send_and_wait_close(addr: SocketAddr, bytes: &[u8], what: &str) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(bytes).await;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => panic!("{what}: the node kept the connection open for 10 s"),
            Ok(Ok(0)) | Ok(Err(_)) => return got,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Length of the first frame in `bytes` (header + body; handshake frames have no tag).
fn first_frame_len(bytes: &[u8]) -> usize {
    HEADER_LEN + u32::from_be_bytes(bytes[4..8].try_into().unwrap()) as usize
}

fn node_args(peers: &[SocketAddr], key_file: &Path, extra: &[&str]) -> Vec<String> {
    let key_file = key_file.display().to_string();
    let mut args = static_peers(peers, &["--cluster-key-file", &key_file]);
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Marker privacy, replayed and reflected handshakes, a node with another key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_channel_is_sealed_and_refuses_replays_and_strangers() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("cluster.key");
    std::fs::write(&key_file, KEY).unwrap();
    let (a1, a2) = (Addrs::loopback(), Addrs::loopback());
    // n2 reaches n1 only through the recording proxy: n1 advertises the proxy too, so
    // n2 never learns a direct address of n1 (from n1's own hello) to dial instead.
    let (via_proxy, capture) = proxy(a1.replication).await;
    let advertise = via_proxy.to_string();
    let mut n1 = spawn(
        "n1",
        a1,
        &node_args(
            &[a2.replication],
            &key_file,
            &["--advertise-addr", &advertise],
        ),
    );
    let mut n2 = spawn("n2", a2, &node_args(&[via_proxy], &key_file, &[]));
    n1.wait_ready(READY_TIMEOUT).await;
    n2.wait_ready(READY_TIMEOUT).await;
    wait_converged(&[&n1, &n2], READY_TIMEOUT).await;

    // A marker written on n2 reaches n1 (over the proxied link) but never in the clear.
    let marker = "MARKER-5f1b0c7e-card-4111111111111111";
    let sid = put_attr(&n2, None, json!(marker)).await;
    wait_attr(&n1, &sid, &json!(marker), Duration::from_secs(10)).await;
    for i in 0..20 {
        put_attr(&n2, Some(&sid), json!(format!("{marker}-{i}"))).await;
    }
    wait_attr(
        &n1,
        &sid,
        &json!(format!("{marker}-19")),
        Duration::from_secs(10),
    )
    .await;
    let recorded = capture.lock().clone();
    let (c2s, s2c): (usize, usize) = recorded
        .iter()
        .fold((0, 0), |(a, b), (x, y)| (a + x.len(), b + y.len()));
    eprintln!(
        "proxy captured {} connection(s): {c2s} bytes n2→n1, {s2c} bytes n1→n2",
        recorded.len()
    );
    assert!(
        c2s > 21 * 40,
        "the writes went through the proxy ({c2s} bytes)"
    );
    for (up, down) in &recorded {
        for bytes in [up, down] {
            assert!(
                !bytes.windows(12).any(|w| w == &marker.as_bytes()[..12]),
                "the marker appeared on the wire"
            );
            assert!(
                !bytes.windows(7).any(|w| w == b"SESSION"),
                "cleartext on the wire"
            );
        }
    }

    // Replays of the recorded connection, straight to n1.
    let (rec_up, rec_down) = recorded[0].clone();
    let m1_len = first_frame_len(&rec_up);
    let cases: [(&str, Vec<u8>, &str); 3] = [
        (
            "the whole recorded dialer stream replayed",
            rec_up.clone(),
            "bad_tag",
        ),
        (
            "the recorded first message alone (no key confirmation follows)",
            rec_up[..m1_len].to_vec(),
            "timeout",
        ),
        (
            "n1's own answer reflected back to it",
            rec_down[..first_frame_len(&rec_down)].to_vec(),
            "unknown_type",
        ),
    ];
    for (what, bytes, reason) in cases {
        let before = failures(&n1, reason).await;
        let answered = send_and_wait_close(a1.replication, &bytes, what).await;
        eprintln!("{what}: n1 answered {} bytes, then closed", answered.len());
        wait_failures(&n1, reason, before + 1.0).await;
        eprintln!(
            "{what}: counted as handshake_failures{{reason=\"{reason}\"}} {before} → {}",
            failures(&n1, reason).await
        );
        assert_eq!(
            n1.alive_members()
                .await
                .unwrap()
                .into_iter()
                .collect::<Vec<_>>(),
            vec!["n2".to_string()],
            "{what}: n1's members"
        );
    }

    // A node with another key: never a member, not ready, and says why.
    let other_file = dir.path().join("other.key");
    std::fs::write(&other_file, OTHER_KEY).unwrap();
    let a3 = Addrs::loopback();
    let mut n3 = spawn(
        "n3",
        a3,
        &node_args(
            &[a1.replication, a2.replication],
            &other_file,
            &["--key-poll-interval", "200ms"],
        ),
    );
    let before = failures(&n1, "unknown_key").await;
    wait_failures(&n1, "unknown_key", before + 1.0).await;
    eventually(
        "n3 to report peers refusing its key",
        READY_TIMEOUT,
        || async {
            let v = n3.cluster().await?;
            match v["refusing_peers"].as_array() {
                Some(a) if !a.is_empty() => Ok(()),
                _ => Err(format!("{v}")),
            }
        },
    )
    .await;
    always(
        "n3 stays outside the cluster and not ready",
        Duration::from_secs(3),
        || async {
            for n in [&n1, &n2] {
                let alive = n.alive_members().await?;
                if alive.contains("n3") {
                    return Err(format!("{} lists n3: {alive:?}", n.name));
                }
            }
            let (status, _) = n3.get("/readyz", true).await?;
            if status == 200 {
                return Err("n3 reports ready with no peer it can authenticate".into());
            }
            let alive = n3.alive_members().await?;
            if !alive.is_empty() {
                return Err(format!("n3 lists {alive:?}"));
            }
            Ok(())
        },
    )
    .await;
    eprintln!(
        "another key: n1 handshake_failures{{unknown_key}} = {}, n3 /readyz = 503",
        failures(&n1, "unknown_key").await
    );
    // Replication between n1 and n2 is unaffected.
    put_attr(&n2, Some(&sid), json!("after")).await;
    wait_attr(&n1, &sid, &json!("after"), Duration::from_secs(10)).await;

    // n3 gets the cluster's key (a recreated Secret reaching every pod): it joins, with
    // the state transfer it had put off, so it serves the session written before.
    write_key_file(&other_file, KEY);
    n3.wait_ready(READY_TIMEOUT).await;
    wait_converged(&[&n1, &n2, &n3], READY_TIMEOUT).await;
    assert_eq!(
        n3.cluster().await.unwrap()["sessions"].as_u64(),
        Some(1),
        "n3 transferred the state when it joined"
    );
    assert_eq!(get_attr(&n3, &sid).await.unwrap(), json!("after"));
    n1.check_running().unwrap();
    n2.check_running().unwrap();
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// 500 connections that never authenticate: capped, bounded memory, replication goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_connections_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("cluster.key");
    std::fs::write(&key_file, KEY).unwrap();
    let (a1, a2) = (Addrs::loopback(), Addrs::loopback());
    let mut n1 = spawn("n1", a1, &node_args(&[a2.replication], &key_file, &[]));
    let mut n2 = spawn("n2", a2, &node_args(&[a1.replication], &key_file, &[]));
    n1.wait_ready(READY_TIMEOUT).await;
    n2.wait_ready(READY_TIMEOUT).await;
    wait_converged(&[&n1, &n2], READY_TIMEOUT).await;
    let sid = put_attr(&n1, None, json!(0)).await;
    wait_attr(&n2, &sid, &json!(0), Duration::from_secs(10)).await;
    let pid = n1.pid().unwrap();
    let before = rss_kib(pid);
    let capped_before = failures(&n1, "too_many_from_source").await;
    // Each announces a 16 MiB handshake frame and sends nothing more.
    let mut held = Vec::new();
    for _ in 0..500 {
        let mut s = TcpStream::connect(a1.replication).await.unwrap();
        let _ = s.write_all(b"TB\x02\x01\x00\x00\x10").await;
        held.push(s);
    }
    // All come from one address: at most an eighth of --max-handshakes (8) wait for their
    // deadline; the rest are closed at once.
    wait_failures(&n1, "too_many_from_source", capped_before + 400.0).await;
    let during = rss_kib(pid);
    // Replication is unaffected while they are held.
    for v in 1..=5 {
        put_attr(&n1, Some(&sid), json!(v)).await;
    }
    wait_attr(&n2, &sid, &json!(5), Duration::from_secs(10)).await;
    // The partial headers never complete: every admitted one ends at the deadline.
    wait_failures(&n1, "timeout", 8.0).await;
    drop(held);
    let after = rss_kib(pid);
    eprintln!(
        "500 unauthenticated connections: n1 RSS {before} KiB before, {during} KiB while held, {after} KiB after; \
         capped at accept: {}, timed out: {}",
        failures(&n1, "too_many_from_source").await - capped_before,
        failures(&n1, "timeout").await
    );
    assert!(
        during.saturating_sub(before) < 4 * 1024,
        "RSS grew by {} KiB",
        during.saturating_sub(before)
    );
    put_attr(&n1, Some(&sid), json!(6)).await;
    wait_attr(&n2, &sid, &json!(6), Duration::from_secs(10)).await;

    // Amplification: random session ids with no version cookie are answered by n1 alone
    // (delta mode: every node holds every session), without asking n2.
    let fetches = n1
        .metric("tribe_remote_fetches")
        .await
        .unwrap()
        .unwrap_or(0.0);
    let http = reqwest::Client::new();
    for i in 0..50u32 {
        let fake = tower_sessions::session::Id(0x5eed_0000_0000 + i128::from(i)).to_string();
        let resp = http
            .get(format!("http://{}/counter", a1.http))
            .header("cookie", format!("SESSIONID={fake}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    assert_eq!(
        n1.metric("tribe_remote_fetches")
            .await
            .unwrap()
            .unwrap_or(0.0),
        fetches,
        "unknown session ids made n1 ask its peers"
    );
    assert_eq!(
        n1.alive_members()
            .await
            .unwrap()
            .into_iter()
            .collect::<Vec<_>>(),
        vec!["n2".to_string()]
    );
}

/// Waits until every node reports `ids` (primary first) as its keys.
async fn wait_keys(nodes: &[&Node], ids: &[&str]) {
    for n in nodes {
        eventually(
            &format!("{} to load keys {ids:?}", n.name),
            Duration::from_secs(10),
            || async {
                let v = n.cluster().await?;
                let got: Vec<String> = v["keys"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|x| x.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default();
                if got == ids {
                    Ok(())
                } else {
                    Err(format!("{got:?}"))
                }
            },
        )
        .await;
    }
}

/// Rotation through the watched key file under a write loop, with a restart at each
/// step (so new handshakes use the new keys): 0 errors, 0 lost writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_under_writes_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("cluster.key");
    let old = "0123456789abcdef-the-old-cluster-key";
    let new = "0123456789abcdef-the-new-cluster-key";
    std::fs::write(&key_file, old).unwrap();
    let all = [Addrs::loopback(), Addrs::loopback(), Addrs::loopback()];
    let args = |i: usize| {
        let peers: Vec<SocketAddr> = (0..3)
            .filter(|j| *j != i)
            .map(|j| all[j].replication)
            .collect();
        node_args(&peers, &key_file, &["--key-poll-interval", "200ms"])
    };
    let mut nodes: Vec<Node> = (0..3)
        .map(|i| spawn(&format!("n{}", i + 1), all[i], &args(i)))
        .collect();
    wait_formed(&mut nodes).await;

    // Two users write in a loop, alternating between n1 and n2; each checks that every
    // answer is its previous counter + 1.
    let stop = Arc::new(AtomicBool::new(false));
    let targets: Vec<(SocketAddr, String)> = nodes[..2]
        .iter()
        .map(|n| (n.addrs.http, n.name.clone()))
        .collect();
    let mut loops = Vec::new();
    for user in 0..2 {
        let (stop, targets) = (stop.clone(), targets.clone());
        loops.push(tokio::spawn(async move {
            let mut client = HttpClient::new();
            let (mut writes, mut errors, mut lost, mut last) = (0u64, Vec::new(), 0u64, 0i64);
            let mut i = user;
            while !stop.load(Ordering::Relaxed) {
                let (addr, name) = &targets[i % targets.len()];
                i += 1;
                match client
                    .request(reqwest::Method::POST, *addr, "/counter", None)
                    .await
                {
                    Ok((200, body)) => match parse_counter(&body) {
                        Ok((c, _)) => {
                            if c != last + 1 {
                                lost += 1;
                                eprintln!("user {user}: {name} answered {c} after {last}");
                            }
                            last = c;
                            writes += 1;
                        }
                        Err(e) => errors.push(e),
                    },
                    Ok((s, body)) => errors.push(format!("{name}: {s} {body}")),
                    Err(e) => errors.push(format!("{name}: {e}")),
                }
            }
            (writes, errors, lost, last, client)
        }));
    }

    let steps: [(&str, String, Vec<&str>); 3] = [
        (
            "add the new key",
            KeySet::render("k1", &[("k1", old), ("k2", new)]),
            vec!["k1", "k2"],
        ),
        (
            "make the new key primary",
            KeySet::render("k2", &[("k1", old), ("k2", new)]),
            vec!["k2", "k1"],
        ),
        (
            "drop the old key",
            KeySet::render("k2", &[("k2", new)]),
            vec!["k2"],
        ),
    ];
    for (what, content, ids) in steps {
        eprintln!("rotation step: {what}");
        write_key_file(&key_file, &content);
        {
            let refs: Vec<&Node> = nodes.iter().collect();
            wait_keys(&refs, &ids).await;
        }
        // A restarted node handshakes anew with the file's keys.
        nodes[2].sigterm();
        assert!(
            nodes[2].wait_exit(Duration::from_secs(30)).await,
            "n3 exits"
        );
        nodes[2] = spawn("n3", all[2], &args(2));
        nodes[2].wait_ready(READY_TIMEOUT).await;
        let refs: Vec<&Node> = nodes.iter().collect();
        wait_converged(&refs, READY_TIMEOUT).await;
    }
    // The old key is refused now.
    let me = Hello {
        cluster: "tribe".into(),
        node_id: "old-key-holder".into(),
        incarnation: 1,
        addr: "127.0.0.1:9".parse().unwrap(),
        nonce: [0; 16],
        ready: true,
        versions: tribe_node::wire::Versions::CURRENT,
    };
    let refused = tribe_node::transport::dial(
        all[0].replication,
        me,
        &Keys::new(KeySet::parse(old.as_bytes()).unwrap()),
        1 << 20,
        Duration::from_secs(2),
    )
    .await;
    assert!(
        refused.is_err(),
        "a dialer with the dropped key was admitted"
    );

    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for (user, l) in loops.into_iter().enumerate() {
        let (writes, errors, lost, last, mut client) = l.await.unwrap();
        eprintln!(
            "user {user}: {writes} writes, {} errors, {lost} lost",
            errors.len()
        );
        assert!(errors.is_empty(), "user {user}: errors {errors:?}");
        assert_eq!(lost, 0, "user {user}: lost or stale writes");
        assert!(writes > 10, "user {user}: the loop ran ({writes} writes)");
        total += writes;
        // The restarted n3 holds the last value too.
        let v = client.get_counter(&nodes[2]).await.unwrap();
        assert_eq!(v["counter"].as_i64(), Some(last), "user {user} on n3");
    }
    eprintln!("rotation under {total} writes: 0 errors, 0 lost");
}
