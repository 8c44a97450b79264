//! `tribe-node`: parse flags, bind sockets, run until SIGTERM/SIGINT.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use tokio::net::TcpListener;
use tribe_node::{load_key, run, Config, Listeners};

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

fn main() -> ExitCode {
    // `tribe-node serve` is the same as `tribe-node`.
    let args: Vec<String> = std::env::args()
        .enumerate()
        .filter(|(i, a)| !(*i == 1 && a == "serve"))
        .map(|(_, a)| a)
        .collect();
    let cfg = Config::parse_from(args);
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(n) = cfg.worker_threads {
        runtime.worker_threads(usize::from(n));
    }
    match runtime.build() {
        Ok(rt) => rt.block_on(serve(cfg)),
        Err(e) => {
            eprintln!("tribe-node: cannot start the runtime: {e}");
            ExitCode::from(1)
        }
    }
}

async fn serve(cfg: Config) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,tower_sessions=warn,tower_sessions_core=warn".into()),
        )
        .init();
    let key = match load_key(&cfg) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("tribe-node: {e}");
            return ExitCode::from(2);
        }
    };
    let bind = |addr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot bind {addr}: {e}"))
    };
    let listeners = match async {
        Ok::<_, String>(Listeners {
            http: bind(cfg.http_addr).await?,
            admin: bind(cfg.admin_addr).await?,
            replication: bind(cfg.replication_addr).await?,
        })
    }
    .await
    {
        Ok(l) => l,
        Err(e) => {
            eprintln!("tribe-node: {e}");
            return ExitCode::from(1);
        }
    };
    match run(cfg, listeners, key, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tribe-node: {e}");
            ExitCode::from(1)
        }
    }
}
