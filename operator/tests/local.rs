//! `tribe-operator local FILE` end to end with real `tribe-node` processes: sessions
//! survive round-robin through the front door, the file's replicas are followed, a
//! killed node comes back. Skipped (loudly) when `tribe-node` has not been built into
//! the same target directory (`cargo build --workspace --bins`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn node_bin() -> Option<PathBuf> {
    let op = PathBuf::from(env!("CARGO_BIN_EXE_tribe-operator"));
    let node = op.parent()?.join("tribe-node");
    node.is_file().then_some(node)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A free block of 10 * n ports starting at a multiple of 10, below the kernel's
/// ephemeral range (20000..32000), so outgoing connections of other processes on a busy
/// machine cannot sit in it.
fn free_base(n: usize) -> u16 {
    let seed = std::process::id() as usize;
    'outer: for attempt in 0..200usize {
        let base = 20_000 + ((seed.wrapping_mul(7919) + attempt * 104_729) % 1_100) as u16 * 10;
        for i in 0..(10 * n) as u16 {
            if TcpListener::bind(("127.0.0.1", base + i)).is_err() {
                continue 'outer;
            }
        }
        return base;
    }
    panic!("no free port block");
}

/// A tiny cookie jar: name → value, sent back as one `cookie` header.
#[derive(Default)]
struct Jar(std::collections::BTreeMap<String, String>);

impl Jar {
    fn header(&self) -> String {
        self.0
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn update(&mut self, set_cookies: &[String]) {
        for c in set_cookies {
            if let Some((k, v)) = c.split(';').next().and_then(|kv| kv.split_once('=')) {
                self.0.insert(k.trim().to_string(), v.trim().to_string());
            }
        }
    }
}

/// POST /counter with `cookie`; returns (status, body, every set-cookie).
fn post_counter(front: SocketAddr, cookie: &str) -> Result<(u16, String, Vec<String>), String> {
    let mut s =
        TcpStream::connect_timeout(&front, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let cookie_line = if cookie.is_empty() {
        String::new()
    } else {
        format!("cookie: {cookie}\r\n")
    };
    write!(s, "POST /counter HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n{cookie_line}connection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    let status = out
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .ok_or(format!("bad response {out:?}"))?;
    let head = out.split("\r\n\r\n").next().unwrap_or("");
    let set_cookie = head
        .lines()
        .filter(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .filter_map(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .collect();
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Ok((status, body, set_cookie))
}

fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let start = Instant::now();
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if start.elapsed() > timeout => panic!("timed out waiting for {what}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

struct Local {
    child: Child,
    log: PathBuf,
}

impl Drop for Local {
    fn drop(&mut self) {
        // SIGTERM via kill(1) so the runner stops its nodes; then reap.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(40);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn manifest(replicas: usize) -> String {
    format!("apiVersion: tribe.rs/v1alpha1\nkind: SessionCluster\nmetadata: {{name: demo}}\nspec: {{replicas: {replicas}}}\n")
}

fn nodes_seen(
    front: SocketAddr,
    jar: &mut Jar,
    n: usize,
    last: &mut i64,
) -> std::collections::BTreeSet<String> {
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..n {
        let (status, body, set) = post_counter(front, &jar.header()).unwrap();
        assert_eq!(status, 200, "{body}");
        jar.update(&set);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let counter = v["counter"].as_i64().unwrap();
        assert_eq!(
            counter,
            *last + 1,
            "the session's counter carries over between nodes: {body}"
        );
        *last = counter;
        seen.insert(v["node"].as_str().unwrap().to_string());
    }
    seen
}

#[test]
fn local_cluster_follows_the_file_and_keeps_sessions() {
    let Some(node) = node_bin() else {
        eprintln!("SKIPPED: tribe-node is not built next to tribe-operator (cargo build --workspace --bins)");
        return;
    };
    let dir = std::env::temp_dir().join(format!("tribe-local-it-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("demo.yaml");
    std::fs::write(&file, manifest(2)).unwrap();
    let front: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let base = free_base(3);
    let log = dir.join("local.log");
    let out = std::fs::File::create(&log).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_tribe-operator"))
        .args([
            "local",
            file.to_str().unwrap(),
            "--listen",
            &front.to_string(),
            "--base-port",
            &base.to_string(),
        ])
        .args([
            "--node-bin",
            node.to_str().unwrap(),
            "--work-dir",
            dir.join("work").to_str().unwrap(),
        ])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let local = Local { child, log };
    let log_text = || std::fs::read_to_string(&local.log).unwrap_or_default();

    // Two nodes answer through the front door and share the session.
    let mut cookie = Jar::default();
    let mut last = 0;
    wait_for("the front door to answer", Duration::from_secs(30), || {
        let (status, body, set) = post_counter(front, "")?;
        if status != 200 {
            return Err(format!("{status} {body}"));
        }
        if set.is_empty() {
            return Err("no session cookie".into());
        }
        cookie.update(&set);
        last = serde_json::from_str::<serde_json::Value>(&body).unwrap()["counter"]
            .as_i64()
            .unwrap();
        Ok(())
    });
    wait_for("both nodes ready", Duration::from_secs(30), || {
        let seen = nodes_seen(front, &mut cookie, 4, &mut last);
        if seen.len() == 2 {
            Ok(())
        } else {
            Err(format!("{seen:?}\n{}", log_text()))
        }
    });

    // Scale to three by editing the file.
    std::thread::sleep(Duration::from_millis(1100)); // a distinct mtime
    std::fs::write(&file, manifest(3)).unwrap();
    wait_for("three nodes", Duration::from_secs(60), || {
        let seen = nodes_seen(front, &mut cookie, 6, &mut last);
        if seen.len() == 3 {
            Ok(())
        } else {
            Err(format!("{seen:?}"))
        }
    });
    assert!(log_text().contains("started node node=2"), "{}", log_text());

    // A node that dies is restarted, and the session is still there.
    let pid = log_text()
        .lines()
        .rev()
        .find(|l| l.contains("started node node=1 "))
        .and_then(|l| l.split("pid=").nth(1))
        .and_then(|p| p.split_whitespace().next())
        .map(str::to_string)
        .expect("pid of node 1 in the log");
    let starts = |t: &str| {
        t.lines()
            .filter(|l| l.contains("started node node=1 "))
            .count()
    };
    let before = starts(&log_text());
    assert!(Command::new("kill")
        .args(["-KILL", &pid])
        .status()
        .unwrap()
        .success());
    wait_for("node 1 restarted", Duration::from_secs(30), || {
        let text = log_text();
        if text.contains("node exited") && starts(&text) > before {
            Ok(())
        } else {
            Err("not yet".into())
        }
    });
    wait_for("three nodes again", Duration::from_secs(60), || {
        let seen = nodes_seen(front, &mut cookie, 6, &mut last);
        if seen.len() == 3 {
            Ok(())
        } else {
            Err(format!("{seen:?}"))
        }
    });
    drop(local);
    let _ = std::fs::remove_dir_all(&dir);
}
