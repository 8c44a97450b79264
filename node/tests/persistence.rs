//! Persistence between real `tribe-node` processes on 127.0.0.1 (issue 15): sessions
//! survive a SIGKILL of every node, a node killed during writes restarts from its disk
//! and converges, unreadable files are set aside (the node starts from its peers), and
//! idle sessions beyond `--max-active-sessions` leave memory yet stay readable.
//!
//! Each node's data directory outlives its process (a `TempDir` per node slot), so a
//! restarted node finds what the killed one persisted.

mod support;

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use support::*;

/// How long replication-visible state may take to converge on loopback.
const CONVERGE: Duration = Duration::from_secs(15);
/// Short anti-entropy rounds keep the tests fast.
const FAST: &[&str] = &["--anti-entropy-interval", "1s"];
/// Short flushes, unless a test sets its own.
const FLUSH: &[&str] = &["--flush-interval", "100ms"];

/// One node slot of a static cluster: fixed ports and a data directory that outlive
/// the process.
struct Slot {
    all: Vec<Addrs>,
    i: usize,
    data: tempfile::TempDir,
    extra: Vec<String>,
}

impl Slot {
    fn cluster(n: usize, extra: &[&str]) -> Vec<Slot> {
        let all: Vec<Addrs> = (0..n).map(|_| Addrs::loopback()).collect();
        (0..n)
            .map(|i| Slot {
                all: all.clone(),
                i,
                data: tempfile::tempdir().unwrap(),
                extra: FAST
                    .iter()
                    .chain(if extra.contains(&"--flush-interval") {
                        &[]
                    } else {
                        FLUSH
                    })
                    .chain(extra)
                    .map(|s| s.to_string())
                    .collect(),
            })
            .collect()
    }

    fn start(&self) -> Node {
        let mut extra = vec![
            "--data-dir".to_string(),
            self.data.path().display().to_string(),
        ];
        extra.extend(self.extra.iter().cloned());
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        spawn_static(self.i, &self.all, &extra)
    }

    fn sessions_dir(&self) -> std::path::PathBuf {
        self.data.path().join("sessions")
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// `POST /counter` on `node` with only the session cookie (none: a new session) →
/// (session id, counter).
async fn post_counter(
    http: &reqwest::Client,
    node: &Node,
    sid: Option<&str>,
) -> Result<(String, i64), String> {
    let mut req = http.post(format!("http://{}/counter", node.addrs.http));
    if let Some(s) = sid {
        req = req.header(reqwest::header::COOKIE, format!("SESSIONID={s}"));
    }
    let resp = req.send().await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let v: Value = resp.json().await.map_err(|e| e.to_string())?;
    if status != 200 {
        return Err(format!("POST /counter on {}: {status} {v}", node.name));
    }
    Ok((
        v["session"].as_str().ok_or("no session")?.to_string(),
        v["counter"].as_i64().ok_or("no counter")?,
    ))
}

/// `sessions` of a node's `/cluster`.
async fn held(node: &Node) -> Result<u64, String> {
    node.cluster().await?["sessions"]
        .as_u64()
        .ok_or_else(|| "no sessions in /cluster".into())
}

async fn metric(node: &Node, name: &str) -> f64 {
    node.metric(name)
        .await
        .unwrap_or_else(|e| panic!("/metrics of {}: {e}", node.name))
        .unwrap_or(0.0)
}

/// Waits until every change `node` holds is on its disk.
async fn wait_persisted(node: &Node, sessions: usize) {
    eventually(
        &format!("{} to have {sessions} sessions on disk", node.name),
        CONVERGE,
        || async {
            match metric(node, "tribe_persist_sessions_on_disk").await as usize {
                n if n == sessions => Ok(()),
                n => Err(format!("{n} on disk")),
            }
        },
    )
    .await;
}

/// `count` sessions, each with its counter at `writes`, spread over `nodes` (the writes
/// of one session on one node: without the version cookie, the next write on another
/// node could run before the previous one reached it).
async fn write_sessions(nodes: &[Node], count: usize, writes: i64) -> Vec<String> {
    let http = client();
    let mut ids = Vec::new();
    for i in 0..count {
        let (sid, _) = post_counter(&http, &nodes[i % nodes.len()], None)
            .await
            .unwrap();
        for w in 2..=writes {
            let (_, c) = post_counter(&http, &nodes[i % nodes.len()], Some(&sid))
                .await
                .unwrap();
            assert_eq!(c, w);
        }
        ids.push(sid);
    }
    ids
}

/// Every node serves every session at `counter` from its own replica, and holds exactly
/// `ids.len()` sessions.
async fn assert_every_session(nodes: &[Node], ids: &[String], counter: i64) {
    for node in nodes {
        eventually(
            &format!("{} to hold every session", node.name),
            CONVERGE,
            || async {
                match held(node).await? as usize {
                    n if n == ids.len() => Ok(()),
                    n => Err(format!("{n} sessions")),
                }
            },
        )
        .await;
        for sid in ids {
            wait_replica_counter(node, sid, counter, CONVERGE).await;
        }
    }
}

fn log_says(node: &Node, what: &str) -> bool {
    node.log().contains(what)
}

/// Issue 15, test 1: 40 sessions written to a 3-node cluster with data directories;
/// every node SIGKILLed at once; all restarted: every session is there on every node,
/// loaded from disk, and its counter continues.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_session_survives_a_sigkill_of_the_whole_cluster() {
    let slots = Slot::cluster(3, &[]);
    let mut nodes: Vec<Node> = slots.iter().map(Slot::start).collect();
    wait_formed(&mut nodes).await;
    let ids = write_sessions(&nodes, 40, 3).await;
    for node in &nodes {
        wait_persisted(node, ids.len()).await;
    }
    for node in &mut nodes {
        node.kill();
    }
    drop(nodes);
    let mut nodes: Vec<Node> = slots.iter().map(Slot::start).collect();
    wait_formed(&mut nodes).await;
    assert_restored(&nodes, &ids).await;
}

/// After a restart of the whole cluster: every node loaded every session (`ids`, each
/// at counter 3) from what was persisted, holds them all, and each counter continues.
async fn assert_restored(nodes: &[Node], ids: &[String]) {
    for node in nodes {
        assert_eq!(
            metric(node, "tribe_persist_loaded_sessions").await as usize,
            ids.len(),
            "{} loaded every session from what was persisted",
            node.name
        );
    }
    assert_every_session(nodes, ids, 3).await;
    let http = client();
    for (i, sid) in ids.iter().enumerate() {
        let (_, c) = post_counter(&http, &nodes[i % nodes.len()], Some(sid))
            .await
            .unwrap();
        assert_eq!(c, 4, "the counter of {sid} continues");
    }
}

/// Issue 15, test 1 in `--durability sync`: a write is answered only once it is on the
/// local disk, so a SIGKILL right after the answer loses nothing, even with a flush
/// interval far longer than the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_durability_loses_nothing_answered_to_a_sigkill() {
    let slots = Slot::cluster(1, &["--durability", "sync", "--flush-interval", "1h"]);
    let mut node = slots[0].start();
    node.wait_ready(READY_TIMEOUT).await;
    let ids = write_sessions(std::slice::from_ref(&node), 20, 2).await;
    node.kill();
    let mut node = slots[0].start();
    node.wait_ready(READY_TIMEOUT).await;
    assert_eq!(held(&node).await.unwrap() as usize, ids.len());
    for sid in &ids {
        wait_replica_counter(&node, sid, 2, CONVERGE).await;
    }
}

/// Issue 15, test 2: a node SIGKILLed while the others take writes restarts from its
/// disk (what it had persisted), then converges with the writes it missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_during_writes_restarts_from_disk_and_converges() {
    let slots = Slot::cluster(3, &[]);
    let mut nodes: Vec<Node> = slots.iter().map(Slot::start).collect();
    wait_formed(&mut nodes).await;
    let ids = write_sessions(&nodes, 30, 1).await;
    wait_persisted(&nodes[0], ids.len()).await;
    // Writes to every session keep going on n2 and n3 while n1 dies.
    let http = client();
    let writer = {
        let targets: Vec<(String, Addrs)> = nodes[1..]
            .iter()
            .map(|n| (n.name.clone(), n.addrs))
            .collect();
        let (http, ids) = (http.clone(), ids.clone());
        tokio::spawn(async move {
            for round in 0..4 {
                for (i, sid) in ids.iter().enumerate() {
                    let at = targets[(i + round) % targets.len()].1.http;
                    let resp = http
                        .post(format!("http://{at}/counter"))
                        .header(reqwest::header::COOKIE, format!("SESSIONID={sid}"))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(resp.status().as_u16(), 200);
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(30)).await;
    nodes[0].kill();
    writer.await.unwrap();
    nodes[0] = slots[0].start();
    nodes[0].wait_ready(READY_TIMEOUT).await;
    assert!(
        metric(&nodes[0], "tribe_persist_loaded_sessions").await as usize == ids.len(),
        "n1 started from its disk"
    );
    assert_every_session(&nodes, &ids, 5).await;
}

/// Overwrites the middle of every file under `dir` with garbage.
fn corrupt(dir: &Path) {
    for e in walk(dir) {
        let len = std::fs::metadata(&e).unwrap().len() as usize;
        if len == 0 {
            continue;
        }
        let mut bytes = std::fs::read(&e).unwrap();
        for b in &mut bytes[len / 4..len * 3 / 4] {
            *b = 0xA5;
        }
        std::fs::write(&e, bytes).unwrap();
    }
}

/// Truncates every file under `dir` to a third of its length.
fn truncate(dir: &Path) {
    for e in walk(dir) {
        let len = std::fs::metadata(&e).unwrap().len();
        let f = std::fs::OpenOptions::new().write(true).open(&e).unwrap();
        f.set_len(len / 3).unwrap();
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else if p.file_name().is_some_and(|n| n != "lock") {
            out.push(p);
        }
    }
    out
}

/// Issue 15, test 5 (bad disk state): n1's files are damaged while it is down; it starts
/// anyway, logs the error, keeps the damaged files aside (renamed, not deleted), and its
/// peer fills it; a second restart finds a clean data set (no crash loop).
async fn damaged_files_are_set_aside(damage: fn(&Path)) {
    let slots = Slot::cluster(2, &[]);
    let mut nodes: Vec<Node> = slots.iter().map(Slot::start).collect();
    wait_formed(&mut nodes).await;
    let ids = write_sessions(&nodes, 40, 2).await;
    wait_persisted(&nodes[0], ids.len()).await;
    nodes[0].sigterm();
    assert!(nodes[0].wait_exit(CONVERGE).await, "n1 stops cleanly");
    damage(&slots[0].sessions_dir());
    nodes[0] = slots[0].start();
    nodes[0].wait_ready(READY_TIMEOUT).await;
    let n1 = &nodes[0];
    assert_every_session(&nodes, &ids, 2).await;
    let aside: Vec<String> = std::fs::read_dir(slots[0].data.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("sessions.corrupt-"))
        .collect();
    assert_eq!(
        metric(n1, "tribe_persist_set_aside").await,
        1.0,
        "the damage is detected"
    );
    assert_eq!(
        aside.len(),
        1,
        "the damaged files are kept aside: {aside:?}"
    );
    assert!(
        log_says(n1, "persisted sessions are unreadable"),
        "a clear error is logged"
    );
    // Restarting again loads the refilled data set, with nothing set aside.
    wait_persisted(&nodes[0], ids.len()).await;
    nodes[0].sigterm();
    assert!(nodes[0].wait_exit(CONVERGE).await);
    nodes[0] = slots[0].start();
    nodes[0].wait_ready(READY_TIMEOUT).await;
    assert_eq!(metric(&nodes[0], "tribe_persist_set_aside").await, 0.0);
    assert_eq!(
        metric(&nodes[0], "tribe_persist_loaded_sessions").await as usize,
        ids.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_files_are_set_aside_and_the_node_fills_from_its_peer() {
    damaged_files_are_set_aside(corrupt).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_files_are_set_aside_and_the_node_fills_from_its_peer() {
    damaged_files_are_set_aside(truncate).await;
}

/// Whether `node` keeps at most 100 of its 1,000 sessions in memory.
async fn bounded(node: &Node) -> Result<(), String> {
    let resident = metric(node, "tribe_persist_sessions_resident").await;
    let swapped = metric(node, "tribe_persist_sessions_swapped").await;
    if resident <= 100.0 && resident + swapped == 1000.0 {
        Ok(())
    } else {
        Err(format!(
            "{}: {resident} resident, {swapped} swapped",
            node.name
        ))
    }
}

/// Issue 15, test 4 (swap-out): with `--max-active-sessions 100`, 1,000 sessions leave
/// at most 100 in memory, every one stays readable (and writable), memory stays bounded
/// after reading them all, and anti-entropy between the two nodes finds nothing to
/// repair although they hold different sessions in memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_beyond_the_budget_live_on_disk_and_stay_readable() {
    let slots = Slot::cluster(2, &["--max-active-sessions", "100"]);
    let mut nodes: Vec<Node> = slots.iter().map(Slot::start).collect();
    wait_formed(&mut nodes).await;
    let http = client();
    let mut ids = Vec::new();
    for i in 0..1000 {
        ids.push(post_counter(&http, &nodes[i % 2], None).await.unwrap().0);
    }
    for node in &nodes {
        eventually("the budget to be met", CONVERGE, || bounded(node)).await;
    }
    // Anti-entropy rounds (every second) compare swapped-out sessions without a repair.
    // Rounds leave out sessions changed in the last 2 s (each node by its own apply time,
    // so a round at that boundary may push a session once): the baseline is taken once
    // three rounds have passed.
    let rounds = |n: f64| {
        let node = &nodes[0];
        async move {
            let start = metric(node, "tribe_anti_entropy_rounds").await;
            eventually("anti-entropy rounds", CONVERGE, || async {
                match metric(node, "tribe_anti_entropy_rounds").await {
                    r if r >= start + n => Ok(()),
                    r => Err(format!("{r} rounds")),
                }
            })
            .await;
        }
    };
    rounds(3.0).await;
    let repaired = metric(&nodes[0], "tribe_anti_entropy_sessions_repaired").await;
    rounds(3.0).await;
    assert_eq!(
        metric(&nodes[0], "tribe_anti_entropy_sessions_repaired").await,
        repaired,
        "no session repaired because it is on disk only"
    );
    // Every session reads back from either node, and takes a write.
    for (i, sid) in ids.iter().enumerate() {
        let node = &nodes[(i + 1) % 2];
        let (_, c) = post_counter(&http, node, Some(sid)).await.unwrap();
        assert_eq!(c, 2, "{sid} on {}", node.name);
    }
    for node in &nodes {
        eventually("the budget to be met again", CONVERGE, || bounded(node)).await;
    }
    for sid in ids.iter().step_by(97) {
        wait_replica_counter(&nodes[0], sid, 2, CONVERGE).await;
    }
}

/// `--postgres-url` (a real PostgreSQL server): a 3-node cluster persists in one table;
/// every node is SIGKILLed; three nodes with *new* ids start (Deployment pods after a
/// full restart: no rows of their own), each loads the union of the cluster's rows, and
/// every session is there with its counter continuing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_restarted_under_new_names_finds_every_session_in_postgres() {
    let pg = support::postgres::Postgres::start();
    let all: Vec<Addrs> = (0..3).map(|_| Addrs::loopback()).collect();
    let spawn = |i: usize, name: String| {
        let mut extra: Vec<&str> = vec!["--postgres-url", &pg.url];
        extra.extend(FAST);
        extra.extend(FLUSH);
        let args = static_args(i, &all, &extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Node::spawn(&name, all[i], None, &args)
    };
    let mut nodes: Vec<Node> = (0..3).map(|i| spawn(i, format!("old-{i}"))).collect();
    wait_formed(&mut nodes).await;
    let ids = write_sessions(&nodes, 30, 3).await;
    for node in &nodes {
        wait_persisted(node, ids.len()).await;
    }
    for node in &mut nodes {
        node.kill();
    }
    drop(nodes);
    let rows = pg.psql("SELECT count(*) FROM tribe_sessions");
    assert_eq!(rows.trim(), "90", "one row per node and session");

    let mut nodes: Vec<Node> = (0..3).map(|i| spawn(i, format!("new-{i}"))).collect();
    wait_formed(&mut nodes).await;
    assert_restored(&nodes, &ids).await;
}

/// A node whose `--postgres-url` (no `sslmode`) points at a server that declines TLS
/// exits at start with the reason, never printing the password, and sends the server
/// nothing after asking for TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refuses_a_database_that_declines_tls() {
    let fake = support::postgres::DecliningTls::start();
    let url = format!("postgres://app:s3cret@{}/shop?connect_timeout=2", fake.addr);
    let mut node = Node::spawn("n1", Addrs::loopback(), None, &["--postgres-url", &url]);
    assert!(
        !node.wait_exit(Duration::from_secs(20)).await,
        "the node must exit with an error"
    );
    let log = node.log();
    assert!(log.contains("does not support TLS"), "{log}");
    assert!(log.contains("sslmode=disable"), "{log}");
    assert!(
        !log.contains("s3cret"),
        "the password leaked into the log:\n{log}"
    );
    assert!(fake.ssl_requests() >= 1);
    assert!(fake.received_after_ssl_request().is_empty());
}

/// Session data is private to the node's user: the data directory it creates and every
/// directory under it are 0700, every file 0600 (the engine's files included, created
/// after the start), even under a permissive umask.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_directory_and_its_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let data_arg = data.display().to_string();
    let all = vec![Addrs::loopback()];
    let mut extra: Vec<&str> = vec!["--data-dir", &data_arg];
    extra.extend(FLUSH);
    let args = static_args(0, &all, &extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // The node inherits the test runner's umask (typically 022: files 0644).
    let mut node = Node::spawn("n1", all[0], None, &args);
    node.wait_ready(READY_TIMEOUT).await;
    let nodes = [node];
    let ids = write_sessions(&nodes, 20, 2).await;
    wait_persisted(&nodes[0], ids.len()).await;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700, "{}", data.display());
    let mut dirs = vec![data.clone()];
    let mut files = 0;
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                assert_eq!(mode(&p), 0o700, "{}", p.display());
                dirs.push(p);
            } else {
                assert_eq!(mode(&p), 0o600, "{}", p.display());
                files += 1;
            }
        }
    }
    assert!(files > 0, "the engine wrote files");
}
