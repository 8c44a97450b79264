//! Node configuration: every flag has an environment variable (`TRIBE_*`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// How peers are found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MembershipMode {
    /// Multicast, and DNS too when `--dns-name` is given.
    Auto,
    /// UDP multicast heartbeats.
    Multicast,
    /// Re-resolve `--dns-name` on an interval; every A record is a peer.
    Dns,
    /// The fixed `--peers` list.
    Static,
}

/// Who holds a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReplicationMode {
    /// Every node holds every session (Tomcat DeltaManager).
    Delta,
    /// A primary and `--backups` backups per session, by rendezvous hashing (BackupManager).
    Backup,
}

/// When a write is acknowledged to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SendMode {
    /// The response goes out; the delta is queued.
    Async,
    /// The response waits for acks from the replicas, up to `--sync-timeout`.
    Sync,
}

/// When a write is answered, with `--data-dir`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Durability {
    /// Answered at once; persisted within `--flush-interval` (batched).
    WriteBehind,
    /// Answered once the local write is on disk (concurrent writes share one fsync).
    Sync,
}

/// Configuration of one node.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "tribe-node",
    version,
    about = "A Tribe node: replicated HTTP sessions"
)]
pub struct Config {
    /// This node's id (default: the hostname).
    #[arg(long, env = "TRIBE_NODE_ID")]
    pub node_id: Option<String>,
    /// Cluster name; members of another cluster are ignored.
    #[arg(long, env = "TRIBE_CLUSTER", default_value = "tribe")]
    pub cluster: String,
    /// Address of the application (demo app) HTTP listener.
    #[arg(long, env = "TRIBE_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,
    /// Address of the admin listener (health, metrics, cluster view).
    #[arg(long, env = "TRIBE_ADMIN_ADDR", default_value = "0.0.0.0:9090")]
    pub admin_addr: SocketAddr,
    /// Address of the peer-to-peer replication listener.
    #[arg(long, env = "TRIBE_REPLICATION_ADDR", default_value = "0.0.0.0:4000")]
    pub replication_addr: SocketAddr,
    /// Address peers dial: `host` or `host:port` (default: the replication address when it
    /// is a specific IP, else the IPv4 address of the default route's interface).
    #[arg(long, env = "TRIBE_ADVERTISE_ADDR")]
    pub advertise_addr: Option<String>,
    /// How peers are found.
    #[arg(long, env = "TRIBE_MEMBERSHIP", value_enum, default_value = "auto")]
    pub membership: MembershipMode,
    /// Multicast group and port.
    #[arg(long, env = "TRIBE_MULTICAST_GROUP", default_value = "228.0.0.4:45564")]
    pub multicast_group: SocketAddr,
    /// Interface for multicast: an interface name or one of its IPv4 addresses
    /// (default: the default route's).
    #[arg(long, env = "TRIBE_MULTICAST_INTERFACE")]
    pub multicast_interface: Option<String>,
    /// Multicast TTL.
    #[arg(long, env = "TRIBE_MULTICAST_TTL", default_value_t = 1)]
    pub multicast_ttl: u32,
    /// Heartbeat interval.
    #[arg(long, env = "TRIBE_HEARTBEAT_INTERVAL", default_value = "500ms", value_parser = parse_duration)]
    pub heartbeat_interval: Duration,
    /// A member silent this long is suspected (then checked by TCP connect).
    #[arg(long, env = "TRIBE_MEMBER_TIMEOUT", default_value = "3s", value_parser = parse_duration)]
    pub member_timeout: Duration,
    /// DNS name of the headless members Service.
    #[arg(long, env = "TRIBE_DNS_NAME")]
    pub dns_name: Option<String>,
    /// How often the DNS name is re-resolved.
    #[arg(long, env = "TRIBE_DNS_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    pub dns_interval: Duration,
    /// Static peers (`host:port`, comma separated).
    #[arg(long, env = "TRIBE_PEERS", value_delimiter = ',')]
    pub peers: Vec<String>,
    /// Replication mode.
    #[arg(long, env = "TRIBE_REPLICATION", value_enum, default_value = "delta")]
    pub replication: ReplicationMode,
    /// Backups per session in `backup` mode.
    #[arg(long, env = "TRIBE_BACKUPS", default_value_t = 1)]
    pub backups: usize,
    /// Send mode.
    #[arg(long, env = "TRIBE_SEND_MODE", value_enum, default_value = "async")]
    pub send_mode: SendMode,
    /// How long a sync write waits for acks.
    #[arg(long, env = "TRIBE_SYNC_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub sync_timeout: Duration,
    /// How long a request waits for a newer session version its client has seen.
    #[arg(long, env = "TRIBE_CONSISTENCY_WAIT", default_value = "50ms", value_parser = parse_duration)]
    pub consistency_wait: Duration,
    /// Session max-inactive interval.
    #[arg(long, env = "TRIBE_SESSION_TIMEOUT", default_value = "30m", value_parser = parse_duration)]
    pub session_timeout: Duration,
    /// Session cookie name.
    #[arg(long, env = "TRIBE_COOKIE_NAME", default_value = "SESSIONID")]
    pub cookie_name: String,
    /// Mark cookies `Secure` (serve the app over HTTPS).
    #[arg(long, env = "TRIBE_COOKIE_SECURE")]
    pub cookie_secure: bool,
    /// File holding the cluster key.
    #[arg(long, env = "TRIBE_CLUSTER_KEY_FILE")]
    pub cluster_key_file: Option<PathBuf>,
    /// Run without a cluster key, for labs only: the replication channel uses a well-known
    /// key, so anyone who can reach the port can read and forge sessions (warns at start).
    #[arg(long, env = "TRIBE_INSECURE")]
    pub insecure: bool,
    /// How often the key file is re-read (key rotation without a restart).
    #[arg(long, env = "TRIBE_KEY_POLL_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    pub key_poll_interval: Duration,
    /// Most replication connections that may be in their handshake at once; more are
    /// closed at accept (each must authenticate within 3 s).
    #[arg(long, env = "TRIBE_MAX_HANDSHAKES", default_value_t = 64)]
    pub max_handshakes: usize,
    /// Largest replication frame accepted.
    #[arg(long, env = "TRIBE_MAX_FRAME", default_value_t = 16 * 1024 * 1024)]
    pub max_frame: usize,
    /// Frames queued per peer before writers wait (backpressure).
    #[arg(long, env = "TRIBE_PEER_QUEUE", default_value_t = 8192)]
    pub peer_queue: usize,
    /// How long a leaving node may spend draining and handing sessions over.
    #[arg(long, env = "TRIBE_DRAIN_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// Threads of the async runtime (default: the CPUs this process may use, cgroup
    /// limits included). One per CPU the pod is given is right; more only adds context
    /// switches.
    #[arg(long, env = "TRIBE_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub worker_threads: Option<u16>,
    /// Split-brain protection: while this node sees fewer live members than this (itself
    /// included), it is not ready and refuses session writes with 503, so the load
    /// balancer retries elsewhere instead of the write being acknowledged by a minority.
    /// In sync mode a write is acknowledged only once this many members hold it.
    /// 0 or 1: off.
    #[arg(long, env = "TRIBE_MIN_MEMBERS", default_value_t = 0)]
    pub min_members: usize,
    /// How often each member compares its sessions with every other member
    /// (anti-entropy; also right after every (re)connection).
    #[arg(long, env = "TRIBE_ANTI_ENTROPY_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub anti_entropy_interval: Duration,
    /// After SIGTERM, how long the node keeps serving while reporting not ready, before it
    /// leaves: load balancers (Service endpoints, an ingress) stop sending first.
    #[arg(long, env = "TRIBE_SHUTDOWN_DELAY", default_value = "0s", value_parser = parse_duration)]
    pub shutdown_delay: Duration,
    /// Serve the Redis protocol (RESP2/RESP3) on this address, keys stored as replicated
    /// sessions: the session store for apps in any language. Default: off; the flag
    /// alone means `127.0.0.1:6379`. Keep it on loopback, next to the app.
    #[arg(long, env = "TRIBE_RESP_ADDR", num_args = 0..=1, default_missing_value = "127.0.0.1:6379")]
    pub resp_addr: Option<SocketAddr>,
    /// File holding the password Redis clients must give (`AUTH`); default: none.
    #[arg(long, env = "TRIBE_RESP_PASSWORD_FILE")]
    pub resp_password_file: Option<PathBuf>,
    /// Serve an HTTP front proxy for the app on this address (async mode: read-your-writes
    /// behind round-robin for any framework). Requires `--proxy-upstream`.
    #[arg(long, env = "TRIBE_PROXY_ADDR", requires = "proxy_upstream")]
    pub proxy_addr: Option<SocketAddr>,
    /// The app the proxy forwards to (`host:port`, plain HTTP).
    #[arg(long, env = "TRIBE_PROXY_UPSTREAM")]
    pub proxy_upstream: Option<String>,
    /// The app's session adapter: which cookie names the session and which store key
    /// holds it.
    #[arg(
        long,
        env = "TRIBE_PROXY_ADAPTER",
        value_enum,
        default_value = "connect-redis"
    )]
    pub proxy_adapter: crate::resp::proxy::Adapter,
    /// The app's session cookie name (default: the adapter's).
    #[arg(long, env = "TRIBE_PROXY_COOKIE")]
    pub proxy_cookie: Option<String>,
    /// The store key prefix of the app's sessions (default: the adapter's).
    #[arg(long, env = "TRIBE_PROXY_KEY_PREFIX")]
    pub proxy_key_prefix: Option<String>,
    // ---- persistence (one block) ----
    /// Persist sessions under this directory, and start from them (default: memory only).
    #[arg(long, env = "TRIBE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// With `--data-dir`: `write-behind` (answer at once, persist within
    /// `--flush-interval`) or `sync` (answer once the write is on the local disk).
    #[arg(long, env = "TRIBE_DURABILITY", value_enum, default_value = "write-behind")]
    pub durability: Durability,
    /// With `--data-dir`: the longest a change waits before it is written (write-behind).
    #[arg(long, env = "TRIBE_FLUSH_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub flush_interval: Duration,
    /// With `--data-dir`: sessions kept in memory; the least recently used beyond it live
    /// on disk only and are read back on access. 0: no limit.
    #[arg(long, env = "TRIBE_MAX_ACTIVE_SESSIONS", default_value_t = 0)]
    pub max_active_sessions: usize,
}

/// Parses `500ms`, `3s`, `30m`, `1h` (humantime syntax).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

impl Config {
    /// The defaults, as if no flag were given (handy in tests).
    pub fn default_for_test() -> Self {
        Config::parse_from(["tribe-node"])
    }

    /// This node's id: `--node-id`, else the hostname.
    pub fn node_id(&self) -> String {
        self.node_id.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|s| s.trim().to_string())
                .ok()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "tribe-node".to_string())
        })
    }
}

#[cfg(test)]
mod resp_flag_tests {
    use super::*;

    #[test]
    fn resp_is_off_by_default_and_loopback_6379_when_asked() {
        assert_eq!(Config::default_for_test().resp_addr, None);
        let c = Config::parse_from(["tribe-node", "--resp-addr"]);
        assert_eq!(c.resp_addr, Some("127.0.0.1:6379".parse().unwrap()));
        let c = Config::parse_from(["tribe-node", "--resp-addr", "127.0.0.1:7000"]);
        assert_eq!(c.resp_addr, Some("127.0.0.1:7000".parse().unwrap()));
        assert!(Config::try_parse_from(["tribe-node", "--proxy-addr", "127.0.0.1:1"]).is_err());
    }
}
