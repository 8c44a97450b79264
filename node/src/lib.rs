//! Tribe node: replicated HTTP sessions for axum/tower-sessions apps, the way Tomcat's
//! DeltaManager/BackupManager cluster replicates sessions for Java web apps.
//!
//! # Layout
//! - [`config`] — every flag and env var.
//! - [`crypto`] — the cluster key and HMAC tags.
//! - [`keyring`] — the key file (one or several keys), reloaded on change (rotation).
//! - [`handshake`] — the Noise handshake and the per-connection frame ciphers.
//! - [`wire`] — frames and messages (magic, version, type, length, tag; postcard bodies).
//! - [`store`] — the versioned session table (last-writer-wins per attribute).
//! - [`ownership`] — rendezvous hashing for backup mode.
//! - [`persist`] — the durable copy under the session table: backends, the flusher,
//!   start from disk, swap-out.
//! - [`membership`] — multicast, DNS and static discovery of peers.
//! - [`transport`] — TCP dial/accept with the authenticated handshake, pre-auth limits.
//! - [`replication`] — the replication core: liveness, message handling, anti-entropy,
//!   write stamping and sync acks as pure decisions, plus the deterministic simulation.
//! - [`cluster`] — the driver: sockets, links, timers and the flows that wait, performing
//!   the core's effects.
//! - [`session_store`] — [`session_store::ReplicatedStore`], a `tower_sessions::SessionStore`.
//! - [`ryw`] — read-your-writes: the signed version cookie and its layer.
//! - [`http`] — the demo app and the admin endpoints.
//! - [`metrics`] — Prometheus metrics.
//! - [`resp`] — the Redis-protocol endpoint (`--resp-addr`): sessions for any language.
//!
//! [`run`] takes already-bound listeners and a shutdown future; `main.rs` only parses
//! flags, binds sockets and calls it.
#![forbid(unsafe_code)]

pub mod cluster;
pub mod config;
pub mod crypto;
pub mod handshake;
pub mod http;
pub mod keyring;
pub mod membership;
pub mod metrics;
pub mod ownership;
pub mod persist;
pub mod replication;
pub mod resp;
pub mod ryw;
pub mod session_store;
pub mod store;
pub mod transport;
pub mod wire;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use cluster::Cluster;
pub use config::Config;
pub use crypto::ClusterKey;
pub use session_store::ReplicatedStore;

/// Errors that stop a node.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Neither a cluster key nor `--insecure`.
    #[error("no cluster key: set --cluster-key-file (TRIBE_CLUSTER_KEY_FILE), or pass --insecure to run without one")]
    NoKey,
    /// The key file could not be read or is empty.
    #[error("cluster key file {0}: {1}")]
    KeyFile(String, String),
    /// The advertise address is not usable.
    #[error("invalid --advertise-addr {0:?}: {1}")]
    Advertise(String, String),
    /// The cluster side failed to start.
    #[error(transparent)]
    Cluster(#[from] cluster::ClusterError),
    /// A listener failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The RESP password file could not be read.
    #[error("--resp-password-file {0}: {1}")]
    RespPasswordFile(String, String),
}

/// Loads the cluster keys per the config (`--cluster-key-file` or `--insecure`); see
/// [`keyring`] for the file format.
pub fn load_key(cfg: &Config) -> Result<keyring::KeySet, Error> {
    match (&cfg.cluster_key_file, cfg.insecure) {
        (Some(path), _) => {
            keyring::load(path).map_err(|e| Error::KeyFile(path.display().to_string(), e))
        }
        (None, true) => Ok(keyring::KeySet::insecure()),
        (None, false) => Err(Error::NoKey),
    }
}

/// The address peers dial: `--advertise-addr` (host or host:port), else the replication
/// listener's address when it is specific, else the default route's IPv4 address.
pub fn advertise_addr(cfg: &Config, replication: SocketAddr) -> Result<SocketAddr, Error> {
    let port = replication.port();
    if let Some(a) = &cfg.advertise_addr {
        if let Ok(sa) = a.parse::<SocketAddr>() {
            return Ok(sa);
        }
        if let Ok(ip) = a.parse::<std::net::IpAddr>() {
            return Ok(SocketAddr::new(ip, port));
        }
        use std::net::ToSocketAddrs;
        let resolved = (a.as_str(), port)
            .to_socket_addrs()
            .map_err(|e| Error::Advertise(a.clone(), e.to_string()))?;
        return resolved
            .into_iter()
            .find(|s| s.is_ipv4())
            .ok_or_else(|| Error::Advertise(a.clone(), "no IPv4 address".into()));
    }
    if !replication.ip().is_unspecified() {
        return Ok(replication);
    }
    let ip =
        membership::multicast::resolve_interface(None).unwrap_or(std::net::Ipv4Addr::LOCALHOST);
    Ok(SocketAddr::new(ip.into(), port))
}

/// The three listeners of a node.
#[derive(Debug)]
pub struct Listeners {
    /// The app.
    pub http: TcpListener,
    /// Health, metrics, cluster view.
    pub admin: TcpListener,
    /// Peer replication.
    pub replication: TcpListener,
}

/// Runs a node until `shutdown` resolves, then leaves the cluster gracefully.
pub async fn run(
    cfg: Config,
    listeners: Listeners,
    keys: keyring::KeySet,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Error> {
    let advertise = advertise_addr(&cfg, listeners.replication.local_addr()?)?;
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Arc::new(metrics::Metrics::new(&mut registry));
    let cancel = CancellationToken::new();
    let insecure = keys.is_insecure();
    if insecure {
        for line in [
            "**************************************************************************",
            "RUNNING WITH --insecure: the replication channel uses a WELL-KNOWN key.",
            "Anyone who can reach the replication port can join, read every session",
            "and forge writes. For labs only; never in production.",
            "**************************************************************************",
        ] {
            tracing::warn!("{line}");
        }
    }
    let keys = keyring::Keys::new(keys);
    if let Some(path) = &cfg.cluster_key_file {
        tokio::spawn(keyring::watch_file(
            path.clone(),
            keys.clone(),
            cfg.key_poll_interval,
            cancel.clone(),
        ));
    }
    let key = keys.current().primary().key.clone();
    let cluster = Cluster::start(
        cfg.clone(),
        listeners.replication,
        advertise,
        keys.clone(),
        metrics,
        cancel.clone(),
    )
    .await?;
    tracing::info!(
        node = cluster.node_id(),
        cluster = %cfg.cluster,
        %advertise,
        http = %listeners.http.local_addr()?,
        admin = %listeners.admin.local_addr()?,
        replication = ?cfg.replication,
        send_mode = ?cfg.send_mode,
        "node started"
    );
    if insecure {
        tracing::warn!(
            "running with --insecure: anyone who can reach the replication port can read and forge sessions"
        );
    }
    if let Some(d) = cluster.inner.discovery.lock().as_ref() {
        registry.register_collector(Box::new(d.stats.clone()));
    }
    let app = http::app::router(cluster.clone(), &key);
    let admin = http::admin::router(cluster.clone(), Arc::new(registry));
    let stop_http = CancellationToken::new();
    let app_task = {
        let stop = stop_http.clone();
        tokio::spawn(async move {
            axum::serve(listeners.http, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
        })
    };
    let admin_task = {
        let stop = cancel.clone();
        tokio::spawn(async move {
            axum::serve(listeners.admin, admin)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
        })
    };
    let resp_task = match &cfg.resp_addr {
        Some(addr) => Some(spawn_resp(&cfg, *addr, cluster.clone(), stop_http.clone()).await?),
        None => None,
    };
    let proxy_task = resp::proxy::spawn(&cfg, cluster.clone(), &key, stop_http.clone()).await?;
    shutdown.await;
    tracing::info!("shutting down: not ready, draining, handing over, leaving");
    // Not ready first (load balancers stop sending), then hand-off and goodbye while
    // in-flight requests finish.
    cluster.stop_accepting();
    tokio::time::sleep(cfg.shutdown_delay).await;
    cluster.leave().await;
    stop_http.cancel();
    let _ = tokio::time::timeout(cfg.drain_timeout, app_task).await;
    if let Some(t) = proxy_task {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), t).await;
    }
    if let Some(t) = resp_task {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), t).await;
    }
    cancel.cancel();
    // The flusher's last flush: a graceful stop persists every change.
    let _ = tokio::time::timeout(cfg.drain_timeout, cluster.persistence_stopped()).await;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), admin_task).await;
    Ok(())
}

/// Binds `--resp-addr` and serves the Redis protocol until `stop`.
async fn spawn_resp(
    cfg: &Config,
    addr: SocketAddr,
    cluster: Cluster,
    stop: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, Error> {
    let password = match &cfg.resp_password_file {
        Some(path) => {
            let raw = std::fs::read(path)
                .map_err(|e| Error::RespPasswordFile(path.display().to_string(), e.to_string()))?;
            Some(bytes::Bytes::copy_from_slice(raw.trim_ascii()))
        }
        None => None,
    };
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(resp = %listener.local_addr()?, auth = password.is_some(), "serving the Redis protocol");
    let opts = resp::Options {
        password,
        ..resp::Options::default()
    };
    Ok(tokio::spawn(resp::serve(listener, cluster, opts, stop)))
}
