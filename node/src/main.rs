//! `tribe-node`: the demo app on a node. Parses the flags into a [`Config`] (the command
//! line is built from the settings table, [`tribe_node::config::SETTINGS`]),
//! [`Node::bind`]s and serves the demo router until SIGTERM/SIGINT.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::builder::{PossibleValue, PossibleValuesParser};
use clap::{Arg, ArgAction, ArgMatches, Command};
use tribe_node::config::{Kind, Setting, SETTINGS};
use tribe_node::{Config, Node};

// The binary's allocator (a library user of `tribe-node` picks its own). A write allocates
// and frees a few dozen small buffers (the request, the session's attributes, the delta
// and its frames); measured with `tribe-bench --only throughput`, see README.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    // Files the node creates (its data directory, the engine's files) are its user's
    // only: 0700 directories, 0600 files, whatever the inherited umask.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    // `tribe-node serve` is the same as `tribe-node`.
    let args: Vec<String> = std::env::args()
        .enumerate()
        .filter(|(i, a)| !(*i == 1 && a == "serve"))
        .map(|(_, a)| a)
        .collect();
    let cfg = config(&command().get_matches_from(args));
    if let Err(e) = tribe_api::log::init(
        cfg.log_format,
        "info,tower_sessions=warn,tower_sessions_core=warn",
    ) {
        eprintln!("tribe-node: cannot set up logging: {e}");
    }
    // Every log line of this process names the node and its cluster: each runtime thread
    // (and the main thread, below) runs inside one `node` span.
    let span = tracing::info_span!("node", node = %cfg.node_id(), cluster = %cfg.cluster);
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    {
        let span = span.clone();
        runtime
            .on_thread_start(move || NODE_SPAN.set(Some(span.clone().entered())))
            .on_thread_stop(|| drop(NODE_SPAN.take()));
    }
    if let Some(n) = cfg.worker_threads {
        runtime.worker_threads(usize::from(n));
    }
    let _main = span.entered();
    match runtime.build() {
        Ok(rt) => rt.block_on(serve(cfg)),
        Err(e) => {
            eprintln!("tribe-node: cannot start the runtime: {e}");
            ExitCode::from(1)
        }
    }
}

thread_local! {
    /// The `node` span, entered on each runtime thread for its lifetime.
    static NODE_SPAN: std::cell::Cell<Option<tracing::span::EnteredSpan>> =
        const { std::cell::Cell::new(None) };
}

async fn serve(cfg: Config) -> ExitCode {
    tracing::info!(version = tribe_api::VERSION, "tribe-node starting");
    let node = match Node::bind(cfg).await {
        Ok(n) => n,
        Err(
            e @ (tribe_node::Error::NoKey
            | tribe_node::Error::KeyFile(..)
            | tribe_node::Error::RespUnprotected(_)),
        ) => {
            eprintln!("tribe-node: {e}");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("tribe-node: {e}");
            return ExitCode::from(1);
        }
    };
    let demo = tribe_node::http::app::router(node.cluster().clone());
    match node.serve(demo).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tribe-node: {e}");
            ExitCode::from(1)
        }
    }
}

/// The command line: one argument per setting, with its env var, default and help.
fn command() -> Command {
    Command::new("tribe-node")
        .version(tribe_api::VERSION)
        .about("A Tribe node: replicated HTTP sessions")
        .args(SETTINGS.iter().map(arg))
}

fn arg(s: &'static Setting) -> Arg {
    let help = s.help.trim();
    let mut a = Arg::new(s.name)
        .long(s.flag())
        .env(s.env)
        // `--help` names the variable, never its value (a database URL holds a password).
        .hide_env_values(true)
        .help(help.strip_suffix('.').unwrap_or(help));
    if let Some(d) = s.default {
        a = a.default_value(d);
    }
    if let Some(other) = s.requires {
        a = a.requires(other);
    }
    a = match s.kind {
        Kind::Switch => return a.action(ArgAction::SetTrue),
        Kind::Value => a,
        Kind::Optional(missing) => a.num_args(0..=1).default_missing_value(missing),
        Kind::List => a.value_delimiter(',').action(ArgAction::Append),
    };
    a = a.value_name(s.name.to_ascii_uppercase());
    if s.choices.is_empty() {
        a.value_parser(move |v: &str| s.check(v).map(|()| v.to_string()))
    } else {
        a.value_parser(PossibleValuesParser::new(s.choices.iter().map(|(v, h)| {
            PossibleValue::new(*v).help(h.strip_suffix('.').unwrap_or(h))
        })))
    }
}

/// The parsed flags (values already checked by each setting's parser) as a [`Config`].
fn config(m: &ArgMatches) -> Config {
    let mut cfg = Config::default();
    for s in SETTINGS {
        let value = match s.kind {
            Kind::Switch => m.get_flag(s.name).to_string(),
            _ => match m.get_many::<String>(s.name) {
                Some(values) => values.cloned().collect::<Vec<_>>().join(","),
                None => continue,
            },
        };
        if let Err(e) = s.apply(&mut cfg, &value) {
            command()
                .error(
                    clap::error::ErrorKind::InvalidValue,
                    format!("--{} {value:?}: {e}", s.flag()),
                )
                .exit();
        }
    }
    cfg
}
