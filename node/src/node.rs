//! [`Node`]: one running member of a Tribe cluster, serving an app's router.
//!
//! [`Node::bind`] does everything that can fail at start (the key, the listeners, the
//! cluster, the metrics), so an app learns about a bad port or key before it serves;
//! [`Node::serve`] then runs the app's router with the node's sessions until SIGTERM or
//! SIGINT, and shuts down in the order a rolling update needs: not ready first (load
//! balancers stop sending), `shutdown_delay`, hand the sessions over and leave, let
//! in-flight requests finish (`drain_timeout`), then stop the admin port.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::{cluster::Cluster, keyring, membership, metrics, resp, ClusterKey, Config, Error};

/// The three listeners every node has, bound by the caller (tests bind port 0).
#[derive(Debug)]
pub struct Listeners {
    /// The app.
    pub http: TcpListener,
    /// Health, readiness, metrics, `/cluster`, sessions.
    pub admin: TcpListener,
    /// Peer replication.
    pub replication: TcpListener,
}

impl Listeners {
    /// Binds the addresses of `cfg`.
    pub async fn bind(cfg: &Config) -> Result<Listeners, Error> {
        Ok(Listeners {
            http: bind(cfg.http_addr).await?,
            admin: bind(cfg.admin_addr).await?,
            replication: bind(cfg.replication_addr).await?,
        })
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, Error> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Bind(addr, e))
}

/// A node that has joined (or is joining) its cluster; serve an app with
/// [`Node::serve`]. Dropped without serving, it stops its cluster tasks.
pub struct Node {
    cfg: Config,
    cluster: Cluster,
    key: ClusterKey,
    registry: Registry,
    http: TcpListener,
    admin: TcpListener,
    replication: SocketAddr,
    advertise: SocketAddr,
    resp: Option<(TcpListener, Option<bytes::Bytes>)>,
    proxy: Option<TcpListener>,
    cancel: CancellationToken,
    _stop_on_drop: DropGuard,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("node", &self.cluster.node_id())
            .field("http", &self.http_addr())
            .field("admin", &self.admin_addr())
            .field("advertise", &self.advertise)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Loads the cluster key (`cluster_key_file`, or the well-known key when
    /// `insecure`), binds the http, admin and replication listeners and the optional
    /// RESP and proxy ones, and starts the cluster (discovery, links, state transfer).
    pub async fn bind(cfg: Config) -> Result<Node, Error> {
        let listeners = Listeners::bind(&cfg).await?;
        Node::from_listeners(cfg, listeners).await
    }

    /// [`Node::bind`] with the three main listeners already bound (their addresses win
    /// over the config's); the RESP and proxy listeners are bound from the config.
    pub async fn from_listeners(cfg: Config, listeners: Listeners) -> Result<Node, Error> {
        let keys = load_key(&cfg)?;
        let resp = match cfg.resp_addr {
            Some(addr) => {
                let password = resp_password(&cfg)?;
                if password.is_none() && !addr.ip().is_loopback() {
                    if !cfg.resp_insecure {
                        return Err(Error::RespUnprotected(addr));
                    }
                    tracing::warn!(resp = %addr, "--resp-insecure: serving the Redis protocol beyond loopback WITHOUT a password; anyone who reaches it can read and write every session");
                }
                Some((bind(addr).await?, password))
            }
            None => None,
        };
        let proxy = match (cfg.proxy_addr, &cfg.proxy_upstream) {
            (Some(addr), Some(_)) => Some(bind(addr).await?),
            _ => None,
        };
        let advertise = advertise_addr(&cfg, listeners.replication.local_addr()?)?;
        let mut registry = Registry::default();
        let metrics = Arc::new(metrics::Metrics::new(&mut registry));
        let cancel = CancellationToken::new();
        if keys.is_insecure() {
            warn_insecure();
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
        let replication = listeners.replication.local_addr()?;
        let cluster = Cluster::start(
            cfg.clone(),
            listeners.replication,
            advertise,
            keys,
            metrics,
            cancel.clone(),
        )
        .await?;
        if let Some(d) = cluster.discovery() {
            registry.register_collector(Box::new(d.stats.clone()));
        }
        tracing::info!(
            node = cluster.node_id(),
            cluster = %cfg.cluster,
            %advertise,
            http = %listeners.http.local_addr()?,
            admin = %listeners.admin.local_addr()?,
            %replication,
            replication_mode = %cfg.replication,
            send_mode = %cfg.send_mode,
            "node started"
        );
        Ok(Node {
            _stop_on_drop: cancel.clone().drop_guard(),
            cfg,
            cluster,
            key,
            registry,
            http: listeners.http,
            admin: listeners.admin,
            replication,
            advertise,
            resp,
            proxy,
            cancel,
        })
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The cluster: members, readiness, the `/cluster` view.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        self.cluster.node_id()
    }

    /// Where the app is served.
    pub fn http_addr(&self) -> SocketAddr {
        local(&self.http)
    }

    /// Where health, readiness, metrics and `/cluster` are served.
    pub fn admin_addr(&self) -> SocketAddr {
        local(&self.admin)
    }

    /// Where peers connect (the replication listener).
    pub fn replication_addr(&self) -> SocketAddr {
        self.replication
    }

    /// The address peers dial.
    pub fn advertise_addr(&self) -> SocketAddr {
        self.advertise
    }

    /// Where the Redis protocol is served, when enabled.
    pub fn resp_addr(&self) -> Option<SocketAddr> {
        self.resp.as_ref().map(|(l, _)| local(l))
    }

    /// Where the read-your-writes proxy listens, when enabled.
    pub fn proxy_addr(&self) -> Option<SocketAddr> {
        self.proxy.as_ref().map(local)
    }

    /// The Prometheus registry behind the admin `/metrics`: register the app's own
    /// metrics here before serving.
    pub fn metrics_registry(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// Adds the node's session layers to `router` without serving it: tower-sessions
    /// over the [`crate::ReplicatedStore`], the read-your-writes cookie and the
    /// `min_members` 503 guard. [`Node::serve`] does this itself.
    pub fn with_sessions<S: Clone + Send + Sync + 'static>(&self, router: Router<S>) -> Router<S> {
        crate::http::layers::with_sessions(router, &self.cluster, &self.key)
    }

    /// Serves `app` (with the session layers of [`Node::with_sessions`]) until SIGTERM
    /// or SIGINT, then shuts down gracefully.
    pub async fn serve(self, app: Router) -> Result<(), Error> {
        self.serve_with_shutdown(app, shutdown_signal()).await
    }

    /// [`Node::serve`] until `shutdown` resolves.
    pub async fn serve_with_shutdown(
        self,
        app: Router,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), Error> {
        let Node {
            cfg,
            cluster,
            key,
            registry,
            http,
            admin,
            resp,
            proxy,
            cancel,
            _stop_on_drop,
            ..
        } = self;
        let app = crate::http::layers::with_sessions(app, &cluster, &key);
        let admin_router = crate::http::admin::router(cluster.clone(), Arc::new(registry));
        let stop_http = CancellationToken::new();
        let app_task = serve_until(http, app, stop_http.clone());
        let admin_task = serve_until(admin, admin_router, cancel.clone());
        let resp_task = resp.map(|(listener, password)| {
            tracing::info!(resp = %local(&listener), auth = password.is_some(), "serving the Redis protocol");
            let opts = resp::Options {
                password,
                limits: resp::codec::Limits {
                    max_request: cfg.resp_max_request,
                    ..Default::default()
                },
                max_clients: cfg.resp_max_clients,
                auth_timeout: cfg.resp_auth_timeout,
                idle_timeout: (!cfg.resp_idle_timeout.is_zero()).then_some(cfg.resp_idle_timeout),
                ..resp::Options::default()
            };
            tokio::spawn(resp::serve(listener, cluster.clone(), opts, stop_http.clone()))
        });
        let proxy_task = proxy.and_then(|listener| {
            resp::proxy::spawn(listener, &cfg, cluster.clone(), &key, stop_http.clone())
        });
        shutdown.await;
        tracing::info!("shutting down: not ready, draining, handing over, leaving");
        // Not ready first (load balancers stop sending), then hand-off and goodbye while
        // in-flight requests finish.
        cluster.stop_accepting();
        tokio::time::sleep(cfg.shutdown_delay).await;
        cluster.leave().await;
        stop_http.cancel();
        let _ = tokio::time::timeout(cfg.drain_timeout, app_task).await;
        for task in [proxy_task, resp_task].into_iter().flatten() {
            let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
        }
        cancel.cancel();
        // The flusher's last flush: a graceful stop persists every change.
        let _ = tokio::time::timeout(cfg.drain_timeout, cluster.persistence_stopped()).await;
        // Every task the cluster spawned (links, connections, requests in flight,
        // discovery, maintenance) ends on the cancelled token; bounded.
        cluster.tasks_stopped(cfg.drain_timeout).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), admin_task).await;
        Ok(())
    }
}

fn serve_until(
    listener: TcpListener,
    router: Router,
    stop: CancellationToken,
) -> JoinHandle<std::io::Result<()>> {
    tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
    })
}

fn local(l: &TcpListener) -> SocketAddr {
    l.local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

fn warn_insecure() {
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

/// Loads the cluster keys per the config (`cluster_key_file` or `insecure`); see
/// [`keyring`] for the file format.
fn load_key(cfg: &Config) -> Result<keyring::KeySet, Error> {
    match (&cfg.cluster_key_file, cfg.insecure) {
        (Some(path), _) => {
            keyring::load(path).map_err(|e| Error::KeyFile(path.display().to_string(), e))
        }
        (None, true) => Ok(keyring::KeySet::insecure()),
        (None, false) => Err(Error::NoKey),
    }
}

fn resp_password(cfg: &Config) -> Result<Option<bytes::Bytes>, Error> {
    let Some(path) = &cfg.resp_password_file else {
        return Ok(None);
    };
    let raw = std::fs::read(path)
        .map_err(|e| Error::RespPasswordFile(path.display().to_string(), e.to_string()))?;
    Ok(Some(bytes::Bytes::copy_from_slice(raw.trim_ascii())))
}

/// The address peers dial: `advertise_addr` (host or host:port), else the replication
/// listener's address when it is specific, else the default route's IPv4 address.
fn advertise_addr(cfg: &Config, replication: SocketAddr) -> Result<SocketAddr, Error> {
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
