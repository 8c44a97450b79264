//! Bad input on the replication port of real `tribe-node` processes (issue 2, test 8),
//! and the refusal to start without a cluster key.
//!
//! Each bad input goes over a fresh raw TCP connection to a node started with
//! `--cluster-key-file`: the node must close that connection, count it (before a
//! handshake completed in `tribe_handshake_failures_total{reason=…}` and
//! `tribe_handshakes_rejected_total`; after it in `tribe_frames_rejected_total{reason=…}`),
//! and keep serving and replicating.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{json, Value};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tribe_node::handshake::{FrameCipher, Initiator, INIT_TYPE};
use tribe_node::keyring::{KeySet, Keys};
use tribe_node::wire::{
    encode_frame, handshake_header, Delta, FrameEncoder, Hello, Message, Stamp,
};

const KEY: &[u8] = b"0123456789abcdef-test-cluster-key";

/// `tribe_frames_rejected_total{reason="<reason>"}` of a node (0 when absent).
async fn rejected(node: &Node, reason: &str) -> f64 {
    let (_, text) = node.get("/metrics", true).await.unwrap();
    let series = format!("tribe_frames_rejected_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

/// `tribe_handshake_failures_total{reason="<reason>"}` of a node (0 when absent).
async fn handshake_failures(node: &Node, reason: &str) -> f64 {
    let (_, text) = node.get("/metrics", true).await.unwrap();
    let series = format!("tribe_handshake_failures_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

/// A handshake message 1 made with `secret`, framed.
fn init_frame(secret: &[u8]) -> Vec<u8> {
    let (_, body) = Initiator::start(&KeySet::parse(secret).unwrap(), "tribe");
    let mut f = handshake_header(INIT_TYPE, body.len()).to_vec();
    f.extend_from_slice(&body);
    f
}

async fn handshakes_rejected(node: &Node) -> f64 {
    node.metric("tribe_handshakes_rejected")
        .await
        .unwrap()
        .unwrap_or(0.0)
}

/// Waits (bounded) until the node closes the connection: EOF or a reset.
async fn wait_closed(stream: &mut TcpStream, what: &str) {
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => panic!("{what}: the node kept the connection open for 5 s"),
            Ok(Ok(0)) | Ok(Err(_)) => return,
            // Nothing is owed to a peer that has not handshaken; anything else is read on.
            Ok(Ok(n)) => eprintln!("{what}: the node sent {n} bytes"),
        }
    }
}

/// Deterministic pseudo-random bytes (xorshift) that do not start with the magic.
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    if out[0] == b'T' {
        out[0] = b'X';
    }
    out
}

fn hello(addr: std::net::SocketAddr) -> Hello {
    Hello {
        cluster: "tribe".into(),
        node_id: "mallory".into(),
        incarnation: 1,
        addr,
        nonce: [7; 16],
        ready: true,
        versions: tribe_node::wire::Versions::CURRENT,
    }
}

fn sid_of(cookie: &str) -> i128 {
    cookie
        .parse::<tower_sessions::session::Id>()
        .unwrap_or_else(|e| panic!("session id {cookie:?}: {e}"))
        .0
}

/// `PUT /attrs/v` on `writer` with the session cookie only.
async fn put_v(http: &reqwest::Client, writer: &Node, sid: Option<&str>, v: Value) -> String {
    let mut req = http
        .put(format!("http://{}/attrs/v", writer.addrs.http))
        .header("content-type", "application/json")
        .body(v.to_string());
    if let Some(sid) = sid {
        req = req.header("cookie", format!("SESSIONID={sid}"));
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    body["session"].as_str().unwrap().to_string()
}

/// `GET /attrs/v` on `node` with the session cookie only: its own replica's value.
async fn get_v(http: &reqwest::Client, node: &Node, sid: &str) -> Result<Value, String> {
    let resp = http
        .get(format!("http://{}/attrs/v", node.addrs.http))
        .header("cookie", format!("SESSIONID={sid}"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if resp.status() != 200 {
        return Err(format!("{} answered {}", node.name, resp.status()));
    }
    resp.json().await.map_err(|e| e.to_string())
}

/// Issue 2, test 8: random bytes, a hello signed with the wrong key, a 4 GiB length
/// prefix, a truncated frame followed by close — and, after a genuine handshake, a
/// forged delta tagged with the cluster key instead of the connection key and plain
/// garbage. Each: connection closed by the node, counted by reason, nothing applied; the
/// node keeps serving and its writes keep reaching its peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_on_the_replication_port_is_refused_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("cluster.key");
    std::fs::write(&key_file, KEY).unwrap();
    let key_arg = key_file.to_str().unwrap();
    let all = [Addrs::loopback(), Addrs::loopback()];
    let mut nodes: Vec<Node> = (0..2)
        .map(|i| {
            let peer = all[1 - i].replication.to_string();
            Node::spawn(
                &format!("n{}", i + 1),
                all[i],
                None,
                &[
                    "--membership",
                    "static",
                    "--peers",
                    &peer,
                    "--cluster-key-file",
                    key_arg,
                ],
            )
        })
        .collect();
    for n in nodes.iter_mut() {
        n.wait_ready(READY_TIMEOUT).await;
    }
    for (i, n) in nodes.iter().enumerate() {
        let other = format!("n{}", 2 - i);
        eventually(
            &format!("{} to see {other}", n.name),
            READY_TIMEOUT,
            || async {
                let alive = n.alive_members().await?;
                if alive.contains(&other) {
                    Ok(())
                } else {
                    Err(format!("{alive:?}"))
                }
            },
        )
        .await;
    }
    let (n1, n2) = (&nodes[0], &nodes[1]);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let sid = put_v(&http, n1, None, json!(0)).await;
    let mut value = 0;

    // The node still serves and replicates: a new value written on n1 shows up in n2's
    // own replica (read without the version cookie), and n1 still has n2 as a member.
    let check_alive = |what: &'static str, value: i64| {
        let (http, sid) = (http.clone(), sid.clone());
        async move {
            let (status, _) = n1.get("/healthz", true).await.unwrap();
            assert_eq!(status, 200, "after {what}: /healthz");
            put_v(&http, n1, Some(&sid), json!(value)).await;
            eventually(
                &format!("after {what}: n1's write of {value} to reach n2"),
                Duration::from_secs(10),
                || async {
                    match get_v(&http, n2, &sid).await? {
                        v if v == json!(value) => Ok(()),
                        v => Err(format!("n2 has {v}")),
                    }
                },
            )
            .await;
            let alive = n1.alive_members().await.unwrap();
            assert_eq!(
                alive.into_iter().collect::<Vec<_>>(),
                vec!["n2".to_string()],
                "after {what}: n1's members"
            );
        }
    };
    check_alive("start", value).await;

    let repl = n1.addrs.replication;
    let mut big = Vec::from(&b"TB\x02\x01\xff\xff\xff\xff"[..]);
    big.extend_from_slice(&[0u8; 64]);
    let good_init = init_frame(KEY);
    let cases: Vec<(&str, Vec<u8>, bool, &str)> = vec![
        (
            "random bytes",
            noise(4096, 0x9e37_79b9_7f4a_7c15),
            false,
            "bad_magic",
        ),
        (
            "a handshake made with the wrong key",
            init_frame(b"not-the-cluster-key-at-all"),
            false,
            "unknown_key",
        ),
        ("a 4 GiB length prefix", big, false, "too_large"),
        (
            "a truncated frame, then close",
            good_init[..good_init.len() / 2].to_vec(),
            true,
            "io",
        ),
    ];
    for (what, bytes, close, reason) in cases {
        let before = handshake_failures(n1, reason).await;
        let hs_before = handshakes_rejected(n1).await;
        let mut s = TcpStream::connect(repl).await.unwrap();
        // The node may close while we are still writing: that is fine.
        let _ = s.write_all(&bytes).await;
        if close {
            s.shutdown().await.unwrap();
        }
        wait_closed(&mut s, what).await;
        eventually(
            &format!("{what} to be counted as {reason}"),
            Duration::from_secs(5),
            || async {
                let now = handshake_failures(n1, reason).await;
                let hs = handshakes_rejected(n1).await;
                if now >= before + 1.0 && hs >= hs_before + 1.0 {
                    Ok(())
                } else {
                    Err(format!(
                        "handshake_failures{{{reason}}} {before} → {now}, handshakes_rejected {hs_before} → {hs}"
                    ))
                }
            },
        )
        .await;
        value += 1;
        check_alive(what, value).await;
    }

    // After a genuine handshake (we hold the key): a delta sealed with a key other than
    // this connection's is refused and not applied; so is garbage.
    let unreachable: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let forged = Delta {
        sid: sid_of(&sid),
        stamp: Stamp {
            counter: 1_000_000,
            origin: 7,
        },
        base: 999_999,
        set: vec![("v".into(), Bytes::from_static(b"\"forged\""))],
        removed: vec![],
        expiry: None,
        invalidate: false,
    };
    let mut other_connection = FrameEncoder::new(FrameCipher::new(&[9; 32]));
    let after_handshake: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "a delta sealed with another connection's key after the handshake",
            encode_frame(
                &Message::Delta {
                    ack: 0,
                    delta: forged,
                },
                &mut other_connection,
            )
            .to_vec(),
            "bad_tag",
        ),
        (
            "garbage after the handshake",
            noise(512, 0x1234_5678),
            "bad_magic",
        ),
    ];
    for (what, bytes, reason) in after_handshake {
        let before = rejected(n1, reason).await;
        let hs_before = handshakes_rejected(n1).await;
        let tribe_node::transport::Connection {
            peer,
            mut rd,
            mut wr,
            ..
        } = tribe_node::transport::dial(
            repl,
            hello(unreachable),
            &Keys::new(KeySet::parse(KEY).unwrap()),
            1 << 20,
            Duration::from_secs(2),
        )
        .await
        .unwrap_or_else(|e| panic!("{what}: handshake with the right key failed: {e}"));
        assert_eq!(peer.node_id, "n1");
        let raw = wr.get_mut();
        let _ = raw.write_all(&bytes).await;
        let _ = raw.flush().await;
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            use futures::StreamExt;
            loop {
                match rd.next().await {
                    None | Some(Err(_)) => return,
                    Some(Ok(m)) => eprintln!("{what}: the node sent {m:?}"),
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "{what}: the node kept the connection open");
        eventually(
            &format!("{what} to be counted as {reason}"),
            Duration::from_secs(5),
            || async {
                let now = rejected(n1, reason).await;
                if now >= before + 1.0 {
                    Ok(())
                } else {
                    Err(format!("frames_rejected{{{reason}}} {before} → {now}"))
                }
            },
        )
        .await;
        assert_eq!(
            handshakes_rejected(n1).await,
            hs_before,
            "{what}: the handshake itself was fine"
        );
        value += 1;
        check_alive(what, value).await;
    }
    // The forged delta was never applied anywhere.
    for n in [n1, n2] {
        assert_eq!(
            get_v(&http, n, &sid).await.unwrap(),
            json!(value),
            "{}",
            n.name
        );
    }
    for n in nodes.iter_mut() {
        if let Err(e) = n.check_running() {
            panic!("a node did not survive the bad input: {e}");
        }
    }
}

/// Exit status and stderr of `tribe-node args…` with no `TRIBE_*` variable set; the
/// process must exit on its own within 10 s.
fn run_node(args: &[&str]) -> (Option<i32>, String) {
    let mut cmd = Command::new(node_bin());
    for (k, _) in std::env::vars() {
        if k.starts_with("TRIBE_") {
            cmd.env_remove(k);
        }
    }
    let free = |_| format!("127.0.0.1:{}", free_port());
    let (h, a, r) = (free(0), free(1), free(2));
    let mut child = cmd
        .args(["--node-id", "lonely", "--membership", "static"])
        .args([
            "--http-addr",
            &h,
            "--admin-addr",
            &a,
            "--replication-addr",
            &r,
        ])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tribe-node {args:?} did not exit within 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status.code(), err)
}

/// Issue 2: no cluster key and no `--insecure` → the node refuses to start, with exit
/// code 2 and a message naming both ways out; so does an unreadable or too-short key.
#[test]
fn node_refuses_to_start_without_a_key() {
    let (code, err) = run_node(&[]);
    assert_eq!(code, Some(2), "exit code; stderr: {err}");
    assert!(
        err.contains("no cluster key")
            && err.contains("--cluster-key-file")
            && err.contains("--insecure"),
        "stderr: {err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short.key");
    std::fs::write(&short, b"tiny\n").unwrap();
    let (code, err) = run_node(&["--cluster-key-file", short.to_str().unwrap()]);
    assert_eq!(code, Some(2), "short key; stderr: {err}");
    assert!(err.contains("at least 16 bytes"), "stderr: {err}");

    let missing = dir.path().join("missing.key");
    let (code, err) = run_node(&["--cluster-key-file", missing.to_str().unwrap()]);
    assert_eq!(code, Some(2), "missing key file; stderr: {err}");
    assert!(err.contains("missing.key"), "stderr: {err}");
}
