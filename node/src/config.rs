//! Node configuration: one table of settings, from which everything else is made.
//!
//! Each setting is declared once, in the `settings!` invocation below: its help (the doc
//! comment), its [`Config`] field and type, its environment variable (a name from
//! [`tribe_api::env`]), its default (as text, parsed like any other value), its kind
//! (a value, a switch, an optional value, a comma-separated list) and its parser. From
//! that one line come:
//!
//! - the [`Config`] field and its rustdoc;
//! - [`Config::default`] (every default parsed by the setting's own parser);
//! - [`Config::from_env`] (what an app embedding a node calls);
//! - the `tribe-node` binary's flags, `--help` text, env fallbacks and defaults
//!   ([`SETTINGS`] is what the binary builds its command line from; the library does not
//!   depend on clap).
//!
//! # Adding a setting
//! 1. Add its name to `tribe_api::env` (the operator may then set it).
//! 2. Add one entry here: doc comment, then `field: Type = ENV_NAME, kind[, default "text"]
//!    [, choices Enum][, requires other_field], parse parser;`.
//! 3. Add its row to README.md's `tribe-node` table (operator/tests/readme.rs checks).
//!
//! Nothing else changes: the flag is `--field-name`, the variable `TRIBE_FIELD_NAME`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

pub use tribe_api::{
    Durability, LogFormat, MembershipMode, ReplicationMode, SendMode, SessionAdapter,
};

/// How a setting takes its value on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `--flag <VALUE>`.
    Value,
    /// `--flag` alone turns it on; the variable is false when `0`, `false`, `no`, `n`,
    /// `f`, `off` or empty (any case), true otherwise.
    Switch,
    /// `--flag [<VALUE>]`: the flag alone means the given value.
    Optional(&'static str),
    /// `--flag a,b` (comma separated; the flag may repeat).
    List,
}

/// One setting of the table: everything the command line and [`Config::from_env`] need.
#[derive(Clone, Copy)]
pub struct Setting {
    /// The [`Config`] field; the flag is this with `-` for `_`.
    pub name: &'static str,
    /// The environment variable.
    pub env: &'static str,
    /// The help text (the field's doc comment, joined into one line).
    pub help: &'static str,
    /// The default, as text; `None`: unset (`None`, `false`, empty).
    pub default: Option<&'static str>,
    /// How it takes its value.
    pub kind: Kind,
    /// For enums: each value and its help.
    pub choices: &'static [(&'static str, &'static str)],
    /// Another setting that must be given with this one.
    pub requires: Option<&'static str>,
    apply: fn(&mut Config, &str) -> Result<(), String>,
}

impl Setting {
    /// The long flag, `--` excluded (`http-addr`).
    pub fn flag(&self) -> String {
        self.name.replace('_', "-")
    }

    /// Parses `value` into this setting's field of `cfg`. For a [`Kind::Switch`],
    /// `value` is `true`/`false`; for a [`Kind::List`], the comma-separated list.
    pub fn apply(&self, cfg: &mut Config, value: &str) -> Result<(), String> {
        (self.apply)(cfg, value)
    }

    /// Whether `value` parses (the command line checks each value with this).
    pub fn check(&self, value: &str) -> Result<(), String> {
        self.apply(&mut Config::default(), value)
    }
}

impl std::fmt::Debug for Setting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Setting")
            .field("name", &self.name)
            .field("env", &self.env)
            .field("default", &self.default)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// A configuration that could not be read from the environment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A variable's value does not parse.
    #[error("{var}={value:?}: {reason}")]
    Invalid {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// Why it was refused.
        reason: String,
    },
    /// A variable is not valid UTF-8.
    #[error("{var} is not valid UTF-8")]
    NotUnicode {
        /// The variable.
        var: &'static str,
    },
    /// A variable is set without another it needs.
    #[error("{var} is set, so {needs} must be set too")]
    Requires {
        /// The variable that is set.
        var: &'static str,
        /// The one it needs.
        needs: &'static str,
    },
}

/// Declares the settings: the [`Config`] struct, its `Default`, and [`SETTINGS`].
macro_rules! settings {
    ($(
        $(#[doc = $doc:literal])*
        $field:ident : $ty:ty = $env:ident, $kind:expr
            $(, default $default:literal)?
            $(, choices $choices:ident)?
            $(, requires $requires:ident)?
            , parse $parse:expr;
    )*) => {
        /// Configuration of one node. Build it with [`Config::from_env`] (the `TRIBE_*`
        /// variables), [`Config::default`] plus field updates, or the `tribe-node`
        /// command line; every field is a setting of [`SETTINGS`].
        #[derive(Debug, Clone, PartialEq)]
        pub struct Config {
            $( $(#[doc = $doc])* pub $field: $ty, )*
        }

        impl Default for Config {
            /// Every setting's default (as `tribe-node` with no flag and no variable).
            fn default() -> Self {
                Config {
                    $( $field: settings!(@default $parse, $($default)?), )*
                }
            }
        }

        /// Every setting, in `--help` order.
        pub static SETTINGS: &[Setting] = &[$(
            Setting {
                name: stringify!($field),
                env: tribe_api::env::$env,
                help: concat!($($doc),*),
                default: settings!(@opt $($default)?),
                kind: $kind,
                choices: settings!(@choices $($choices)?),
                requires: settings!(@opt $(stringify!($requires))?),
                apply: |cfg, value| {
                    cfg.$field = ($parse)(value)?;
                    Ok(())
                },
            },
        )*];
    };
    (@default $parse:expr, $default:literal) => {
        ($parse)($default).expect(concat!("the default ", stringify!($default), " parses"))
    };
    (@default $parse:expr,) => { Default::default() };
    (@opt $value:expr) => { Some($value) };
    (@opt) => { None };
    (@choices $choices:ident) => { $choices::CHOICES };
    (@choices) => { &[] };
}

settings! {
    /// This node's id (default: the hostname).
    node_id: Option<String> = NODE_ID, Kind::Value, parse some(text);
    /// Cluster name; members of another cluster are ignored.
    cluster: String = CLUSTER, Kind::Value, default "tribe", parse text;
    /// Address of the application HTTP listener (the app, or the demo app).
    http_addr: SocketAddr = HTTP_ADDR, Kind::Value, default "0.0.0.0:8080", parse from_str::<SocketAddr>;
    /// Address of the admin listener (health, metrics, cluster view).
    admin_addr: SocketAddr = ADMIN_ADDR, Kind::Value, default "0.0.0.0:9090", parse from_str::<SocketAddr>;
    /// Address of the peer-to-peer replication listener.
    replication_addr: SocketAddr = REPLICATION_ADDR, Kind::Value, default "0.0.0.0:4000", parse from_str::<SocketAddr>;
    /// Address peers dial: `host` or `host:port` (default: the replication address when it
    /// is a specific IP, else the IPv4 address of the default route's interface).
    advertise_addr: Option<String> = ADVERTISE_ADDR, Kind::Value, parse some(text);
    /// How peers are found.
    membership: MembershipMode = MEMBERSHIP, Kind::Value, default "auto", choices MembershipMode, parse from_str::<MembershipMode>;
    /// Multicast group and port.
    multicast_group: SocketAddr = MULTICAST_GROUP, Kind::Value, default "228.0.0.4:45564", parse from_str::<SocketAddr>;
    /// Interface for multicast: an interface name or one of its IPv4 addresses
    /// (default: the default route's).
    multicast_interface: Option<String> = MULTICAST_INTERFACE, Kind::Value, parse some(text);
    /// Multicast TTL.
    multicast_ttl: u32 = MULTICAST_TTL, Kind::Value, default "1", parse from_str::<u32>;
    /// Heartbeat interval.
    heartbeat_interval: Duration = HEARTBEAT_INTERVAL, Kind::Value, default "500ms", parse parse_duration;
    /// A member silent this long is suspected (then checked by TCP connect).
    member_timeout: Duration = MEMBER_TIMEOUT, Kind::Value, default "3s", parse parse_duration;
    /// DNS name of the headless members Service.
    dns_name: Option<String> = DNS_NAME, Kind::Value, parse some(text);
    /// How often the DNS name is re-resolved.
    dns_interval: Duration = DNS_INTERVAL, Kind::Value, default "2s", parse parse_duration;
    /// Static peers (`host:port`, comma separated).
    peers: Vec<String> = PEERS, Kind::List, parse list;
    /// Replication mode.
    replication: ReplicationMode = REPLICATION, Kind::Value, default "delta", choices ReplicationMode, parse from_str::<ReplicationMode>;
    /// Backups per session in `backup` mode.
    backups: usize = BACKUPS, Kind::Value, default "1", parse from_str::<usize>;
    /// Send mode.
    send_mode: SendMode = SEND_MODE, Kind::Value, default "async", choices SendMode, parse from_str::<SendMode>;
    /// How long a sync write waits for acks.
    sync_timeout: Duration = SYNC_TIMEOUT, Kind::Value, default "2s", parse parse_duration;
    /// How long a request waits for a newer session version its client has seen.
    consistency_wait: Duration = CONSISTENCY_WAIT, Kind::Value, default "50ms", parse parse_duration;
    /// Session max-inactive interval.
    session_timeout: Duration = SESSION_TIMEOUT, Kind::Value, default "30m", parse parse_duration;
    /// Session cookie name.
    cookie_name: String = COOKIE_NAME, Kind::Value, default "SESSIONID", parse text;
    /// Mark cookies `Secure` (serve the app over HTTPS).
    cookie_secure: bool = COOKIE_SECURE, Kind::Switch, parse switch;
    /// File holding the cluster key.
    cluster_key_file: Option<PathBuf> = CLUSTER_KEY_FILE, Kind::Value, parse some(from_str::<PathBuf>);
    /// Run without a cluster key, for labs only: the replication channel uses a well-known
    /// key, so anyone who can reach the port can read and forge sessions (warns at start).
    insecure: bool = INSECURE, Kind::Switch, parse switch;
    /// How often the key file is re-read (key rotation without a restart).
    key_poll_interval: Duration = KEY_POLL_INTERVAL, Kind::Value, default "2s", parse parse_duration;
    /// Most replication connections that may be in their handshake at once; more are
    /// closed at accept (each must authenticate within 3 s).
    max_handshakes: usize = MAX_HANDSHAKES, Kind::Value, default "64", parse from_str::<usize>;
    /// Largest replication frame accepted.
    max_frame: usize = MAX_FRAME, Kind::Value, default "16777216", parse from_str::<usize>;
    /// Frames queued per peer before writers wait (backpressure).
    peer_queue: usize = PEER_QUEUE, Kind::Value, default "8192", parse from_str::<usize>;
    /// How long a leaving node may spend draining and handing sessions over.
    drain_timeout: Duration = DRAIN_TIMEOUT, Kind::Value, default "20s", parse parse_duration;
    /// Threads of the async runtime (default: the CPUs this process may use, cgroup
    /// limits included). One per CPU the pod is given is right; more only adds context
    /// switches.
    worker_threads: Option<u16> = WORKER_THREADS, Kind::Value, parse some(in_range::<u16>(1, 1024));
    /// Split-brain protection: while this node sees fewer live members than this (itself
    /// included), it is not ready and refuses session writes with 503, so the load
    /// balancer retries elsewhere instead of the write being acknowledged by a minority.
    /// In sync mode a write is acknowledged only once this many members hold it.
    /// 0 or 1: off.
    min_members: usize = MIN_MEMBERS, Kind::Value, default "0", parse from_str::<usize>;
    /// How often each member compares its sessions with every other member
    /// (anti-entropy; also right after every (re)connection).
    anti_entropy_interval: Duration = ANTI_ENTROPY_INTERVAL, Kind::Value, default "5s", parse parse_duration;
    /// After SIGTERM, how long the node keeps serving while reporting not ready, before it
    /// leaves: load balancers (Service endpoints, an ingress) stop sending first.
    shutdown_delay: Duration = SHUTDOWN_DELAY, Kind::Value, default "0s", parse parse_duration;
    /// Serve the Redis protocol (RESP2/RESP3) on this address, keys stored as replicated
    /// sessions: the session store for apps in any language. Default: off; the flag
    /// alone means `127.0.0.1:6379`. Keep it on loopback, next to the app.
    resp_addr: Option<SocketAddr> = RESP_ADDR, Kind::Optional("127.0.0.1:6379"), parse some(from_str::<SocketAddr>);
    /// File holding the password Redis clients must give (`AUTH`); default: none. A
    /// `--resp-addr` other than loopback requires one (or `--resp-insecure`).
    resp_password_file: Option<PathBuf> = RESP_PASSWORD_FILE, Kind::Value, parse some(from_str::<PathBuf>);
    /// Serve the Redis protocol on a non-loopback `--resp-addr` without a password (every
    /// key of the cluster readable and writable by anyone who reaches it; labs only).
    resp_insecure: bool = RESP_INSECURE, Kind::Switch, parse switch;
    /// Most concurrent Redis clients (Redis' `maxclients`); with a password, 32 of them
    /// are kept for authenticated clients.
    resp_max_clients: usize = RESP_MAX_CLIENTS, Kind::Value, default "10000", parse in_range::<usize>(64, 1_000_000);
    /// Largest Redis request in bytes, headers included (before `AUTH`: 16 KiB and 10
    /// arguments).
    resp_max_request: usize = RESP_MAX_REQUEST, Kind::Value, default "16777216", parse in_range::<usize>(1024, 1 << 30);
    /// With a password: a Redis client that has not authenticated this long after
    /// connecting is closed.
    resp_auth_timeout: Duration = RESP_AUTH_TIMEOUT, Kind::Value, default "10s", parse parse_duration;
    /// Close an authenticated Redis client idle this long (Redis' `timeout`); 0s: never.
    resp_idle_timeout: Duration = RESP_IDLE_TIMEOUT, Kind::Value, default "0s", parse parse_duration;
    /// Serve an HTTP front proxy for the app on this address (async mode: read-your-writes
    /// behind round-robin for any framework). Requires `--proxy-upstream`.
    proxy_addr: Option<SocketAddr> = PROXY_ADDR, Kind::Value, requires proxy_upstream, parse some(from_str::<SocketAddr>);
    /// The app the proxy forwards to (`host:port`, plain HTTP).
    proxy_upstream: Option<String> = PROXY_UPSTREAM, Kind::Value, parse some(text);
    /// The app's session adapter: which cookie names the session and which store key
    /// holds it.
    proxy_adapter: SessionAdapter = PROXY_ADAPTER, Kind::Value, default "connect-redis", choices SessionAdapter, parse from_str::<SessionAdapter>;
    /// The app's session cookie name (default: the adapter's).
    proxy_cookie: Option<String> = PROXY_COOKIE, Kind::Value, parse some(text);
    /// The store key prefix of the app's sessions (default: the adapter's).
    proxy_key_prefix: Option<String> = PROXY_KEY_PREFIX, Kind::Value, parse some(text);
    /// Persist sessions under this directory, and start from them (default: memory only).
    data_dir: Option<PathBuf> = DATA_DIR, Kind::Value, parse some(from_str::<PathBuf>);
    /// With persistence: `write-behind` (answer at once, persist within
    /// `--flush-interval`) or `sync` (answer once the write is durable locally).
    durability: Durability = DURABILITY, Kind::Value, default "write-behind", choices Durability, parse from_str::<Durability>;
    /// With persistence: longest a change waits to be persisted (write-behind batches).
    flush_interval: Duration = FLUSH_INTERVAL, Kind::Value, default "1s", parse parse_duration;
    /// With persistence: sessions kept in memory; the least recently used beyond it live
    /// on disk only and are read back on access. 0: no limit.
    max_active_sessions: usize = MAX_ACTIVE_SESSIONS, Kind::Value, default "0", parse from_str::<usize>;
    /// Persist sessions in this PostgreSQL database instead of `--data-dir`
    /// (`postgres://user:password@host/db?sslmode=require`; the table `tribe_sessions` is
    /// created if missing).
    postgres_url: Option<String> = POSTGRES_URL, Kind::Value, parse some(text);
    /// Log format of the `tribe-node` binary, to stderr (default: `text` on a terminal,
    /// `json` otherwise; an app embedding a node sets up its own logging).
    log_format: Option<LogFormat> = LOG_FORMAT, Kind::Value, choices LogFormat, parse some(from_str::<LogFormat>);
}

// ------------------------------------------------------------------ parsers

fn text(s: &str) -> Result<String, String> {
    Ok(s.to_string())
}

fn from_str<T: FromStr>(s: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    s.parse::<T>().map_err(|e| e.to_string())
}

fn some<T>(p: impl Fn(&str) -> Result<T, String>) -> impl Fn(&str) -> Result<Option<T>, String> {
    move |s| p(s).map(Some)
}

fn in_range<T>(min: T, max: T) -> impl Fn(&str) -> Result<T, String>
where
    T: FromStr + PartialOrd + std::fmt::Display + Copy,
    T::Err: std::fmt::Display,
{
    move |s| {
        let v = from_str::<T>(s)?;
        if v < min || v > max {
            return Err(format!("{v} is not in {min}..={max}"));
        }
        Ok(v)
    }
}

fn list(s: &str) -> Result<Vec<String>, String> {
    Ok(s.split(',').map(str::to_string).collect())
}

/// A switch's value: false for `0`, `false`, `no`, `n`, `f`, `off` and empty (any case),
/// true for anything else.
fn switch(s: &str) -> Result<bool, String> {
    let falsey = ["", "0", "false", "no", "n", "f", "off"];
    Ok(!falsey.contains(&s.trim().to_ascii_lowercase().as_str()))
}

/// Parses `500ms`, `3s`, `30m`, `1h` (humantime syntax).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

// ------------------------------------------------------------------ reading

impl Config {
    /// Reads the `TRIBE_*` environment variables (each setting's [`Setting::env`]); an
    /// unset or empty variable keeps the default. The error names the variable and its
    /// value.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_lookup(|var| match std::env::var(var) {
            Ok(v) => Ok(Some(v)),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => Err(()),
        })
    }

    /// Like [`Config::from_env`], from the given `(variable, value)` pairs instead of the
    /// process environment (variables of other names are ignored).
    pub fn from_vars<K, V>(vars: impl IntoIterator<Item = (K, V)>) -> Result<Config, ConfigError>
    where
        K: AsRef<str>,
        V: Into<String>,
    {
        let vars: std::collections::HashMap<String, String> = vars
            .into_iter()
            .map(|(k, v)| (k.as_ref().to_string(), v.into()))
            .collect();
        Config::from_lookup(|var| Ok(vars.get(var).cloned()))
    }

    fn from_lookup(
        lookup: impl Fn(&str) -> Result<Option<String>, ()>,
    ) -> Result<Config, ConfigError> {
        let mut cfg = Config::default();
        let mut given = BTreeSet::new();
        for s in SETTINGS {
            let value = lookup(s.env).map_err(|()| ConfigError::NotUnicode { var: s.env })?;
            let Some(value) = value.filter(|v| !v.is_empty()) else {
                continue;
            };
            s.apply(&mut cfg, &value)
                .map_err(|reason| ConfigError::Invalid {
                    var: s.env,
                    value,
                    reason,
                })?;
            given.insert(s.name);
        }
        for s in SETTINGS {
            if let Some(needs) = s.requires {
                if given.contains(s.name) && !given.contains(needs) {
                    let needs = SETTINGS
                        .iter()
                        .find(|o| o.name == needs)
                        .map_or(needs, |o| o.env);
                    return Err(ConfigError::Requires { var: s.env, needs });
                }
            }
        }
        Ok(cfg)
    }

    /// This node's id: `node_id`, else the hostname.
    pub fn node_id(&self) -> String {
        self.node_id.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|s| s.trim().to_string())
                .ok()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "tribe-node".to_string())
        })
    }

    /// Test helper: `--flag value` pairs (switches alone) over the defaults.
    #[cfg(test)]
    pub(crate) fn from_flags(args: &[&str]) -> Config {
        let mut cfg = Config::default();
        let mut args = args.iter();
        while let Some(a) = args.next() {
            let s = SETTINGS
                .iter()
                .find(|s| a.strip_prefix("--") == Some(s.flag().as_str()))
                .unwrap_or_else(|| panic!("no flag {a}"));
            let v = match s.kind {
                Kind::Switch => "true",
                _ => args.next().expect("a value"),
            };
            s.apply(&mut cfg, v).unwrap();
        }
        cfg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_todays() {
        let c = Config::default();
        assert_eq!(c.http_addr, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(c.http_addr.port(), tribe_api::ports::HTTP);
        assert_eq!(c.admin_addr.port(), tribe_api::ports::ADMIN);
        assert_eq!(c.replication_addr.port(), tribe_api::ports::REPLICATION);
        assert_eq!(c.heartbeat_interval, Duration::from_millis(500));
        assert_eq!(
            (c.membership, c.replication),
            (MembershipMode::Auto, ReplicationMode::Delta)
        );
        assert_eq!(
            (c.max_frame, c.resp_addr, c.insecure),
            (16 << 20, None, false)
        );
        assert!(c.peers.is_empty());
    }

    #[test]
    fn env_overrides_defaults() {
        let c = Config::from_vars([
            ("TRIBE_PEERS", "a:1,b:2"),
            ("TRIBE_INSECURE", "true"),
            ("TRIBE_COOKIE_SECURE", "off"),
            ("TRIBE_SEND_MODE", "sync"),
            ("TRIBE_SHUTDOWN_DELAY", "1s"),
            ("TRIBE_RESP_ADDR", "127.0.0.1:7000"),
            ("TRIBE_NODE_ID", ""),
            ("OTHER", "x"),
        ])
        .unwrap();
        assert_eq!(c.peers, ["a:1", "b:2"]);
        assert!(c.insecure && !c.cookie_secure);
        assert_eq!(c.send_mode, SendMode::Sync);
        assert_eq!(c.shutdown_delay, Duration::from_secs(1));
        assert_eq!(c.resp_addr, Some("127.0.0.1:7000".parse().unwrap()));
        assert_eq!(c.node_id, None, "empty is unset");
    }

    #[test]
    fn bad_values_name_the_variable_and_the_value() {
        let e = Config::from_vars([("TRIBE_HEARTBEAT_INTERVAL", "soon")]).unwrap_err();
        assert!(
            matches!(&e, ConfigError::Invalid { var: "TRIBE_HEARTBEAT_INTERVAL", value, .. } if value == "soon"),
            "{e:?}"
        );
        let e = Config::from_vars([("TRIBE_REPLICATION", "both")])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(r#"TRIBE_REPLICATION="both": "#) && e.contains("delta, backup"),
            "{e}"
        );
        let e = Config::from_vars([("TRIBE_WORKER_THREADS", "0")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("TRIBE_WORKER_THREADS") && e.contains("1..=1024"),
            "{e}"
        );
        let e = Config::from_vars([("TRIBE_PROXY_ADDR", "127.0.0.1:1")]).unwrap_err();
        assert_eq!(
            e,
            ConfigError::Requires {
                var: "TRIBE_PROXY_ADDR",
                needs: "TRIBE_PROXY_UPSTREAM"
            }
        );
    }

    #[test]
    fn every_setting_has_its_variable_and_one_flag() {
        let mut flags = BTreeSet::new();
        for s in SETTINGS {
            assert_eq!(
                s.env,
                format!("TRIBE_{}", s.name.to_ascii_uppercase()),
                "{s:?}"
            );
            assert!(flags.insert(s.flag()), "{s:?}");
            assert!(!s.help.trim().is_empty(), "{s:?}");
            if let Some(d) = s.default {
                s.check(d).unwrap();
            }
        }
        assert_eq!(SETTINGS.len(), tribe_api::env::ALL.len());
    }
}
