//! `tribe-operator`: `run` (default) the controller, print the `crd`, or run a
//! SessionCluster `local`ly as node processes.
#![forbid(unsafe_code)]

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser, Subcommand};
use kube::api::{Api, ListParams};
use kube::Client;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{error, info, warn};
use tribe_api::LogFormat;
use tribe_operator::controller::{self, Context};
use tribe_operator::crd::{crd_yaml, SessionCluster};
use tribe_operator::lease::{Elector, Timing};
use tribe_operator::metrics::{AdminState, Metrics};
use tribe_operator::{local, metrics};

/// Kubernetes operator for Tribe SessionClusters.
#[derive(Parser, Debug)]
#[command(name = "tribe-operator", version = tribe_api::VERSION, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Log format, to stderr (default: `text` on a terminal, `json` otherwise).
    #[arg(
        long,
        global = true,
        env = "TRIBE_OPERATOR_LOG_FORMAT",
        value_parser = PossibleValuesParser::new(LogFormat::VALUES)
            .try_map(|s| s.parse::<LogFormat>()),
    )]
    log_format: Option<LogFormat>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the controller (the default).
    Run(RunArgs),
    /// Print the SessionCluster CustomResourceDefinition as YAML.
    Crd,
    /// Run the SessionCluster in FILE on this machine as tribe-node processes.
    ///
    /// Starts spec.replicas nodes on 127.0.0.1 with the settings the Deployment gives its
    /// pods (but static membership and local ports) behind a round-robin front door on
    /// --listen. Edits to FILE are followed: nodes are added, drained, or restarted one at a
    /// time; a node that dies is restarted. A table of the nodes (state, sessions,
    /// requests) is redrawn on a terminal, or printed as plain lines when it changes.
    /// Ctrl-C stops every node (SIGTERM, then SIGKILL after --grace); a second Ctrl-C kills
    /// them at once.
    Local(local::LocalArgs),
    /// GET each URL; exit 0 only when every one answers 200 (the chart's `helm test`).
    Check {
        /// Plain http:// URLs.
        #[arg(required = true)]
        urls: Vec<String>,
    },
}

#[derive(Args, Debug, Clone)]
struct RunArgs {
    /// Address of the admin server (/healthz, /readyz, /metrics).
    #[arg(
        long,
        env = "TRIBE_OPERATOR_ADMIN_ADDR",
        default_value = "0.0.0.0:8080"
    )]
    admin_addr: SocketAddr,
    /// Watch only this namespace (default: all namespaces; `WATCH_NAMESPACE` is read too).
    #[arg(long, env = "TRIBE_OPERATOR_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// Take part in leader election (only the Lease holder reconciles).
    #[arg(long, env = "TRIBE_OPERATOR_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// Namespace of the leader Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// Name of the leader Lease.
    #[arg(
        long,
        env = "TRIBE_OPERATOR_LEASE_NAME",
        default_value = "tribe-operator"
    )]
    lease_name: String,
    /// Seconds a Lease record stays valid without renewal.
    #[arg(long, default_value_t = 15)]
    lease_duration: u64,
    /// Seconds without renewal after which the holder steps down.
    #[arg(long, default_value_t = 10)]
    renew_deadline: u64,
    /// Seconds between election rounds.
    #[arg(long, default_value_t = 2)]
    retry_period: u64,
    /// This process's identity in the Lease and in Events (default: pod name + random suffix).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// The node image of SessionClusters that do not set `spec.image` (the chart sets it
    /// from `nodeImage`: the operator's registry and version by default).
    #[arg(long, env = "TRIBE_OPERATOR_NODE_IMAGE", default_value = tribe_operator::crd::DEFAULT_IMAGE)]
    node_image: String,
    /// Let `spec.template.volumes` use node-level sources (`hostPath`, `nfs`, `iscsi`,
    /// in-tree disks...), not only those Pod Security "restricted" allows. Whoever may
    /// create a SessionCluster then gets pods with access to the node.
    #[arg(long, env = "TRIBE_OPERATOR_ALLOW_NODE_LEVEL_POD_FIELDS", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    allow_node_level_pod_fields: bool,
    /// Let `spec.template.serviceAccountName` run the pods as any ServiceAccount of
    /// their namespace (default: refused; the pods run as `default`).
    #[arg(long, env = "TRIBE_OPERATOR_ALLOW_TEMPLATE_SERVICE_ACCOUNT", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    allow_template_service_account: bool,
}

fn init_tracing(format: Option<LogFormat>) {
    if let Err(e) = tribe_api::log::init(format, "info,kube=warn") {
        eprintln!("tribe-operator: cannot set up logging: {e}");
    }
    info!(version = tribe_api::VERSION, "tribe-operator starting");
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    warn!(error = %e, "cannot listen for SIGTERM");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// A future that resolves once `rx` holds `want` (or its sender is gone).
async fn when(mut rx: watch::Receiver<bool>, want: bool) {
    let _ = rx.wait_for(|v| *v == want).await;
}

fn identity(args: &RunArgs) -> String {
    let base = args
        .identity
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "tribe-operator".into())
        });
    let suffix = &tribe_operator::resources::random_key()[..6];
    format!("{base}-{suffix}")
}

async fn run(mut args: RunArgs) -> tribe_operator::Result<()> {
    if args.watch_namespace.is_none() {
        args.watch_namespace = std::env::var("WATCH_NAMESPACE")
            .ok()
            .filter(|s| !s.is_empty());
    }
    let args = args;
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        info!("shutting down");
        stop_tx.send_replace(true);
    });

    let metrics = Metrics::default();
    let admin = AdminState {
        metrics: metrics.clone(),
        ready: Arc::default(),
    };
    let listener = tokio::net::TcpListener::bind(args.admin_addr).await?;
    info!(addr = %listener.local_addr()?, "admin server listening");
    let admin_task = tokio::spawn(metrics::serve(
        listener,
        admin.clone(),
        when(stop_rx.clone(), true),
    ));

    let client = Client::try_default()
        .await
        .map_err(tribe_operator::Error::Kube)?;
    // Wait until the CRD is queryable: ready only then.
    let probe: Api<SessionCluster> = match &args.watch_namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    loop {
        match probe.list(&ListParams::default().limit(1)).await {
            Ok(_) => break,
            Err(e) => {
                error!(error = %e, "cannot list SessionClusters (is the CRD installed?); retrying")
            }
        }
        tokio::select! {
            _ = when(stop_rx.clone(), true) => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
    admin.ready.store(true, Ordering::Relaxed);

    let id = identity(&args);
    info!(node_image = %args.node_image, "SessionClusters without spec.image run this node image");
    let policy = tribe_operator::policy::TemplatePolicy {
        allow_node_level_pod_fields: args.allow_node_level_pod_fields,
        allow_service_account_name: args.allow_template_service_account,
    };
    if policy != tribe_operator::policy::TemplatePolicy::default() {
        warn!(
            ?policy,
            "spec.template may ask for more than Pod Security \"restricted\" allows"
        );
    }
    let ctx = Arc::new(
        Context::new(client.clone(), metrics.clone(), Some(id.clone()))
            .with_node_image(args.node_image.clone())
            .with_policy(policy),
    );
    let (leader_tx, leader_rx) = watch::channel(!args.leader_elect);
    let elector_task = if args.leader_elect {
        let timing = Timing {
            lease_duration: Duration::from_secs(args.lease_duration),
            renew_deadline: Duration::from_secs(args.renew_deadline),
            retry_period: Duration::from_secs(args.retry_period),
        };
        info!(identity = %id, lease = %format!("{}/{}", args.lease_namespace, args.lease_name), "leader election on");
        let elector = Elector::new(
            client.clone(),
            &args.lease_namespace,
            &args.lease_name,
            &id,
            timing,
        );
        Some(tokio::spawn(
            elector.run(leader_tx, when(stop_rx.clone(), true)),
        ))
    } else {
        None
    };

    loop {
        tokio::select! {
            _ = when(stop_rx.clone(), true) => break,
            _ = when(leader_rx.clone(), true) => {}
        }
        if *stop_rx.borrow() {
            break;
        }
        info!("leading: starting the controller");
        metrics.leader.set(1);
        let mut stop = stop_rx.clone();
        let mut lead = leader_rx.clone();
        let trigger = async move {
            tokio::select! {
                _ = stop.wait_for(|v| *v) => {},
                _ = lead.wait_for(|v| !*v) => {},
            }
        };
        controller::run(ctx.clone(), args.watch_namespace.clone(), trigger).await;
        metrics.leader.set(0);
        info!("controller stopped");
    }

    if let Some(task) = elector_task {
        let _ = task.await;
    }
    let _ = admin_task.await;
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or_else(|| {
        // `tribe-operator` alone means `run` with flags from the environment.
        match Cli::parse_from(["tribe-operator", "run"]).command {
            Some(c) => c,
            None => unreachable!("run parses"),
        }
    });
    let result = match command {
        Command::Crd => {
            print!("{}", crd_yaml());
            Ok(())
        }
        Command::Run(args) => {
            init_tracing(cli.log_format);
            run(args).await
        }
        // Sets up its own logging: the live table may own the terminal.
        Command::Local(args) => local::main(args, cli.log_format).await,
        Command::Check { urls } => {
            let mut failed = false;
            for url in &urls {
                match tribe_operator::check::check_url(url).await {
                    Ok(()) => println!("ok: {url}"),
                    Err(e) => {
                        eprintln!("FAILED: {e}");
                        failed = true;
                    }
                }
            }
            return if failed {
                std::process::ExitCode::FAILURE
            } else {
                std::process::ExitCode::SUCCESS
            };
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            error!(error = %e, "tribe-operator failed");
            eprintln!("tribe-operator: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn subcommands_parse() {
        let cli = Cli::parse_from([
            "tribe-operator",
            "run",
            "--admin-addr",
            "127.0.0.1:9",
            "--leader-elect",
            "false",
        ]);
        match cli.command {
            Some(Command::Run(a)) => {
                assert_eq!(a.admin_addr.to_string(), "127.0.0.1:9");
                assert!(!a.leader_elect);
                assert_eq!(a.lease_name, "tribe-operator");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            Cli::parse_from(["tribe-operator", "crd"]).command,
            Some(Command::Crd)
        ));
        for (args, want) in [
            (
                &["tribe-operator", "run", "--log-format", "json"][..],
                Some(LogFormat::Json),
            ),
            (
                &["tribe-operator", "--log-format", "text", "local", "x.yaml"][..],
                Some(LogFormat::Text),
            ),
            (
                &["tribe-operator", "local", "x.yaml", "--log-format", "text"][..],
                Some(LogFormat::Text),
            ),
        ] {
            assert_eq!(Cli::parse_from(args).log_format, want, "{args:?}");
        }
        assert!(Cli::try_parse_from(["tribe-operator", "run", "--log-format", "xml"]).is_err());
        match Cli::parse_from([
            "tribe-operator",
            "local",
            "x.yaml",
            "--listen",
            "127.0.0.1:8001",
        ])
        .command
        {
            Some(Command::Local(a)) => {
                assert_eq!(a.file, std::path::PathBuf::from("x.yaml"));
                assert_eq!(a.listen.port(), 8001);
            }
            other => panic!("{other:?}"),
        }
        assert!(
            Cli::parse_from(["tribe-operator"]).command.is_none(),
            "no subcommand means run"
        );
    }
}
