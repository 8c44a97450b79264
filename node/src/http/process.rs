//! The node process's memory as the kernel sees it: resident set size and the cgroup
//! memory limit, for the `tribe_resident_memory_bytes` and `tribe_memory_limit_bytes`
//! gauges (an alert compares the two before the pod is OOM-killed).

/// Above this a cgroup v1 limit means "unlimited" (the kernel reports ~2^63 rounded to a page).
const UNLIMITED_V1: u64 = 1 << 60;

/// `VmRSS` of a `/proc/<pid>/status` text, in bytes.
pub fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut parts = line["VmRSS:".len()..].split_whitespace();
    let value: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") | None => value.checked_mul(1024),
        _ => None,
    }
}

/// A cgroup memory limit file's content (v2 `memory.max` or v1
/// `memory.limit_in_bytes`); `None` when unlimited or unreadable.
pub fn parse_limit(text: &str) -> Option<u64> {
    let t = text.trim();
    if t == "max" {
        return None;
    }
    t.parse::<u64>().ok().filter(|&v| v > 0 && v < UNLIMITED_V1)
}

/// Resident memory of this process, bytes.
pub fn resident_bytes() -> Option<u64> {
    parse_vm_rss(&std::fs::read_to_string("/proc/self/status").ok()?)
}

/// The memory limit of this process's cgroup, bytes (`None`: none or unknown).
pub fn memory_limit_bytes() -> Option<u64> {
    [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .find_map(|p| std::fs::read_to_string(p).ok())
    .and_then(|t| parse_limit(&t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_from_proc_status() {
        let s = "Name:\ttribe-node\nVmPeak:\t  9000 kB\nVmRSS:\t    1234 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss(s), Some(1234 * 1024));
        assert_eq!(parse_vm_rss("Name: x\n"), None);
        assert_eq!(parse_vm_rss("VmRSS: lots kB\n"), None);
        assert!(
            resident_bytes().unwrap() > 0,
            "this process has a resident set"
        );
    }

    #[test]
    fn limits_v1_and_v2() {
        assert_eq!(parse_limit("max\n"), None);
        assert_eq!(parse_limit("268435456\n"), Some(268_435_456));
        assert_eq!(parse_limit("9223372036854771712\n"), None);
        assert_eq!(parse_limit("garbage"), None);
        assert_eq!(parse_limit("0"), None);
    }
}
