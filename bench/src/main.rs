//! `tribe-bench`: Tribe's performance table. Starts its own `tribe-node` processes (static
//! peers on loopback, a generated cluster key file) and nginx (round-robin, keepalive),
//! drives load with a Rust client (one session cookie jar per connection, sequential
//! requests per connection), and prints Markdown tables (or `--json`). See bench/README.md.
//!
//! ```text
//! cargo build --release -p tribe-node -p tribe-bench
//! target/release/tribe-bench [--quick] [--json] [--only throughput,lag,wire,transfer,scaling,convergence,persistence,gray]
//! ```
#![forbid(unsafe_code)]

mod http;
mod load;
mod metrics;
mod procs;
mod report;
mod resp;
mod sections;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, ValueEnum};

use report::{Header, Report, Table};
use sections::Env;

/// Command line.
#[derive(Debug, Parser)]
#[command(
    name = "tribe-bench",
    version,
    about = "Tribe's benchmark: nodes and nginx on loopback, a load client, one table per section"
)]
struct Args {
    /// Short runs (under a minute): 1.5 s load phases, 10,000-session transfer,
    /// N = 2, 4 for scaling, fewer lag samples and writes.
    #[arg(long)]
    quick: bool,
    /// Print one JSON document instead of Markdown.
    #[arg(long)]
    json: bool,
    /// Run only these sections (comma separated; default all, in this order).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Section>,
    /// The node binary (default: `tribe-node` next to this executable).
    #[arg(long, env = "TRIBE_NODE_BIN")]
    node_bin: Option<PathBuf>,
    /// The nginx binary (default: /usr/sbin/nginx or `nginx` on the PATH).
    #[arg(long, env = "TRIBE_NGINX_BIN")]
    nginx: Option<PathBuf>,
    /// Cluster sizes for the scaling section (default 2,4,8,16; with --quick 2,4).
    #[arg(long, value_delimiter = ',')]
    scaling_nodes: Option<Vec<usize>>,
    /// Runtime threads per node (the node's `--worker-threads`). The nodes, nginx and the
    /// client share this machine's cores, so each node runs as a pod limited to one CPU
    /// would; more threads per node only add context switches here.
    #[arg(long, env = "TRIBE_WORKER_THREADS", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    node_threads: u16,
}

/// A section of the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Section {
    /// Requests/s, latency and CPU per 1,000 requests through nginx round-robin (1 and 3
    /// nodes, async and sync).
    Throughput,
    /// Replication lag: write on one node, observe on another.
    Lag,
    /// Bytes on the wire per one-attribute delta.
    Wire,
    /// State transfer of many 1 KB sessions to a joining node; RSS per session.
    Transfer,
    /// CPU and bytes per write at N = 2..16, delta vs backup.
    Scaling,
    /// Anti-entropy: sessions written while a node was frozen reach it after SIGCONT;
    /// time, bytes, and the idle cost of digest rounds.
    Convergence,
    /// Persistence (`--data-dir`): CPU and bytes per write off / write-behind / sync,
    /// restart time from a large data set, RSS under a `--max-active-sessions` budget.
    Persistence,
    /// Writes/s and latency while a peer is frozen (SIGSTOP): before, during the member
    /// timeout, and once it is suspected (async and sync).
    Gray,
    /// An Express app (express-session + connect-redis) behind nginx with its sessions in
    /// one redis-server vs the Tribe sidecar (RESP): needs node and
    /// examples/apps/express/node_modules (scripts/install-test-deps). Not in the
    /// default run; ask for it with `--only sidecar`.
    Sidecar,
    /// Replicated writes on the Redis protocol, no app: one redis-server, Redis with two
    /// replicas (async, and sync with `WAIT 2`), three Tribe nodes (sync, async); store
    /// CPU per write at 1 and 8 clients. Needs redis-server.
    Replicated,
}

const ALL: [Section; 9] = [
    Section::Throughput,
    Section::Lag,
    Section::Wire,
    Section::Transfer,
    Section::Scaling,
    Section::Convergence,
    Section::Persistence,
    Section::Gray,
    Section::Replicated,
];

async fn run_section(s: Section, env: &Env) -> Result<Table> {
    match s {
        Section::Throughput => sections::throughput::run(env).await,
        Section::Lag => sections::lag::run(env).await,
        Section::Wire => sections::wire::run(env).await,
        Section::Transfer => sections::transfer::run(env).await,
        Section::Scaling => sections::scaling::run(env).await,
        Section::Convergence => sections::convergence::run(env).await,
        Section::Persistence => sections::persistence::run(env).await,
        Section::Gray => sections::gray::run(env).await,
        Section::Sidecar => sections::sidecar::run(env).await,
        Section::Replicated => sections::replicated::run(env).await,
    }
}

/// Runs the chosen sections; a section that fails is reported (and makes the exit
/// status 1) without stopping the others.
async fn run(args: &Args) -> Result<(Report, bool)> {
    if args.scaling_nodes.iter().flatten().any(|&n| n == 0) {
        anyhow::bail!("--scaling-nodes: a cluster has at least 1 node");
    }
    procs::set_node_threads(args.node_threads);
    let env = Env {
        node_bin: procs::find_node_bin(args.node_bin.clone())?,
        nginx: procs::find_nginx(args.nginx.clone()),
        quick: args.quick,
        scaling_nodes: args.scaling_nodes.clone(),
    };
    let header = Header {
        date: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        load_average: report::load_average(),
        commit: git_commit(),
        mode: if args.quick { "quick" } else { "full" },
        node_threads: args.node_threads,
    };
    let mut chosen: Vec<Section> = ALL
        .into_iter()
        .filter(|s| args.only.is_empty() || args.only.contains(s))
        .collect();
    if args.only.contains(&Section::Sidecar) {
        chosen.push(Section::Sidecar);
    }
    let mut tables = Vec::new();
    let mut failed = false;
    for s in chosen {
        let started = std::time::Instant::now();
        match run_section(s, &env).await {
            Ok(mut t) => {
                let took = started.elapsed().as_secs_f64();
                sections::progress(format!("{s:?} took {took:.1} s"));
                t.note(format!("section took {took:.0} s"));
                tables.push(t);
            }
            Err(e) => {
                failed = true;
                sections::progress(format!("{s:?} failed: {e:#}"));
                let name = match s {
                    Section::Throughput => "throughput",
                    Section::Lag => "lag",
                    Section::Wire => "wire",
                    Section::Transfer => "transfer",
                    Section::Scaling => "scaling",
                    Section::Convergence => "convergence",
                    Section::Persistence => "persistence",
                    Section::Gray => "gray",
                    Section::Sidecar => "sidecar",
                    Section::Replicated => "replicated",
                };
                let mut t = Table::new(name, format!("{name}: failed"), &[]);
                t.note(format!("error: {e:#}"));
                tables.push(t);
            }
        }
    }
    Ok((
        Report {
            header,
            sections: tables,
        },
        failed,
    ))
}

/// `git describe --always --dirty` of the tree this binary was built from.
fn git_commit() -> String {
    std::process::Command::new("git")
        .args(["describe", "--always", "--dirty"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// Ctrl-C or SIGTERM.
async fn interrupted() -> &'static str {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "interrupted",
        _ = term.recv() => "terminated",
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    // One thread: the client shares the cores with nginx and the nodes it measures.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tribe-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // When a signal wins, the run future is dropped: every process guard in it kills its
    // process and removes its temp dir.
    let outcome = rt.block_on(async {
        tokio::select! {
            r = run(&args) => r,
            why = interrupted() => Err(anyhow::anyhow!(why)),
        }
    });
    match outcome {
        Ok((report, failed)) => {
            if args.json {
                match serde_json::to_string_pretty(&report) {
                    Ok(s) => println!("{s}"),
                    Err(e) => {
                        eprintln!("tribe-bench: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                print!("{}", report.markdown());
            }
            if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("tribe-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
