//! What `local` runs: one `tribe-node` command line per slot, derived from the spec. Pure.

use crate::crd::SessionCluster;
use kube::ResourceExt;
use std::net::SocketAddr;
use std::path::Path;

/// Ports of slot `index`: http, admin, replication (three consecutive ports from
/// `base + 10 * index`).
pub fn ports(base: u16, index: usize) -> (u16, u16, u16) {
    let start = base + 10 * index as u16;
    (start, start + 1, start + 2)
}

/// The app (HTTP) address of slot `index`.
pub fn http_addr(base: u16, index: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], ports(base, index).0))
}

/// The admin address of slot `index`.
pub fn admin_addr(base: u16, index: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], ports(base, index).1))
}

/// The most slots `base` leaves room for below port 65535.
pub fn max_slots(base: u16) -> usize {
    usize::from((u16::MAX - base) / 10)
}

/// `tribe-node` flags for slot `index` of a cluster of `replicas` (static peers: every
/// other slot's replication address on 127.0.0.1).
pub fn node_args(
    sc: &SessionCluster,
    base: u16,
    index: usize,
    replicas: usize,
    key_file: &Path,
) -> Vec<String> {
    let spec = &sc.spec;
    let (http, admin, repl) = ports(base, index);
    let peers: Vec<String> = (0..replicas)
        .filter(|i| *i != index)
        .map(|i| format!("127.0.0.1:{}", ports(base, i).2))
        .collect();
    let mut args = vec![
        format!("--node-id={}-{index}", sc.name_any()),
        format!("--cluster=local.{}", sc.name_any()),
        format!("--http-addr=127.0.0.1:{http}"),
        format!("--admin-addr=127.0.0.1:{admin}"),
        format!("--replication-addr=127.0.0.1:{repl}"),
        format!("--advertise-addr=127.0.0.1:{repl}"),
        "--membership=static".to_string(),
        format!("--replication={}", spec.replication.mode.as_str()),
        format!("--backups={}", spec.replication.backups),
        format!("--send-mode={}", spec.replication.send_mode.as_str()),
        format!("--session-timeout={}", spec.session.timeout),
        format!("--cookie-name={}", spec.session.cookie_name),
        format!("--cluster-key-file={}", key_file.display()),
    ];
    if !peers.is_empty() {
        args.push(format!("--peers={}", peers.join(",")));
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{ReplicationMode, SessionClusterSpec};

    fn sc() -> SessionCluster {
        let mut spec = SessionClusterSpec::default();
        spec.replication.mode = ReplicationMode::Backup;
        spec.session.timeout = "5m".into();
        SessionCluster::new("shop", spec)
    }

    #[test]
    fn slots_get_distinct_ports() {
        assert_eq!(ports(18100, 0), (18100, 18101, 18102));
        assert_eq!(ports(18100, 2), (18120, 18121, 18122));
        assert_eq!(http_addr(18100, 1).to_string(), "127.0.0.1:18110");
        assert!(max_slots(18100) > 4000);
    }

    #[test]
    fn static_peers_are_the_other_slots() {
        let args = node_args(&sc(), 18100, 1, 3, Path::new("/tmp/k"));
        assert!(
            args.contains(&"--peers=127.0.0.1:18102,127.0.0.1:18122".to_string()),
            "{args:?}"
        );
        assert!(args.contains(&"--membership=static".to_string()));
        assert!(args.contains(&"--advertise-addr=127.0.0.1:18112".to_string()));
        assert!(args.contains(&"--replication=backup".to_string()));
        assert!(args.contains(&"--session-timeout=5m".to_string()));
        assert!(args.contains(&"--cluster-key-file=/tmp/k".to_string()));
        assert!(args.contains(&"--node-id=shop-1".to_string()));
    }

    #[test]
    fn a_single_node_has_no_peers() {
        let args = node_args(&sc(), 18100, 0, 1, Path::new("/tmp/k"));
        assert!(!args.iter().any(|a| a.starts_with("--peers")));
    }
}
