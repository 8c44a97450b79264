//! The benchmark binary end to end: a short real run (nodes on loopback) gives a report
//! whose figures hold together, an interrupt leaves no process behind, and bad input gets
//! a clear error. Needs `tribe-node` built next to this test's binaries
//! (`cargo build --workspace --bins`, as `scripts/test` does) or `$TRIBE_NODE_BIN`.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

fn bench() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tribe-bench"));
    c.env("TRIBE_NODE_BIN", node_bin()).stdin(Stdio::null());
    c
}

/// `$TRIBE_NODE_BIN`, else `tribe-node` in the same target dir as this test.
fn node_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("TRIBE_NODE_BIN") {
        return p.into();
    }
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_tribe-bench")).with_file_name("tribe-node");
    assert!(
        bin.is_file(),
        "{} not found: cargo build -p tribe-node first",
        bin.display()
    );
    bin
}

/// Every process below `pid` (children, grandchildren, ...).
fn descendants(pid: u32) -> Vec<u32> {
    let parent_of = |p: u32| -> Option<u32> {
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
        stat[stat.rfind(')')? + 1..]
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    let all: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let p = found[i];
        found.extend(all.iter().copied().filter(|&c| parent_of(c) == Some(p)));
        i += 1;
    }
    found.remove(0);
    found
}

/// Whether a process still runs (a zombie does not count).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s[s.rfind(')')? + 1..]
                .split_whitespace()
                .next()
                .map(|st| st != "Z")
        })
        .unwrap_or(false)
}

#[test]
fn quick_wire_run_reports_consistent_figures_as_json() {
    let out = bench()
        .args(["--quick", "--only", "wire", "--json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "tribe-bench failed: {stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(report["header"]["mode"], "quick");
    assert!(report["header"]["cores"].as_u64().unwrap() >= 1);
    let sections = report["sections"].as_array().unwrap();
    assert_eq!(sections.len(), 1, "{report}");
    let wire = &sections[0];
    assert_eq!(wire["section"], "wire");
    let row = &wire["rows"][0];
    // One delta per write, each a real frame: more than a header, far less than a KB.
    assert_eq!(row["deltas_sent"].as_f64(), row["writes"].as_f64(), "{row}");
    let per_delta = row["bytes_per_delta"].as_f64().unwrap();
    assert!((20.0..1000.0).contains(&per_delta), "{row}");
    let check = &wire["checks"][0];
    assert_eq!(check["met"].as_bool(), Some(per_delta <= 100.0), "{check}");
}

#[test]
fn an_interrupt_stops_every_process_it_started() {
    let mut child = bench()
        .args(["--quick", "--only", "throughput"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // Wait (bounded) until it runs nodes behind nginx: more than nginx's master and worker.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        let now = descendants(pid);
        if now.len() > seen.len() {
            seen = now;
        }
        if seen.len() >= 3 {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "tribe-bench exited early"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(seen.len() >= 3, "tribe-bench started only {seen:?}");
    kill(Pid::from_raw(pid as i32), Signal::SIGINT).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("tribe-bench still running 20 s after SIGINT");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success(), "an interrupted run must not exit 0");
    let left: Vec<u32> = seen.into_iter().filter(|&p| running(p)).collect();
    for &p in &left {
        let _ = kill(Pid::from_raw(p as i32), Signal::SIGKILL);
    }
    assert!(left.is_empty(), "processes left running: {left:?}");
}

#[test]
fn bad_input_gets_a_clear_error() {
    let out = bench().args(["--only", "nonsense"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid value 'nonsense'"));

    let out = bench()
        .env("TRIBE_NODE_BIN", "/nonexistent/tribe-node")
        .args(["--only", "wire"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("/nonexistent/tribe-node not found"),
        "{stderr}"
    );
}
