//! Runs the replication core's deterministic simulation over many seeds and prints the
//! seed of any failure, with its trace, so it can be replayed:
//!
//! ```text
//! cargo run --release -p tribe-node --example simulate -- [SEEDS] [FIRST_SEED]
//! cargo run --release -p tribe-node --example simulate -- 1 4711     # replay seed 4711
//! TRIBE_SIM_SCENARIO=backup-3 TRIBE_SIM_TRACE=1 \
//!   cargo run -p tribe-node --example simulate -- 1 4711            # one scenario, verbose
//! ```
//! Every seed runs under every scenario (async/sync, min members, 3 and 5 nodes, delta and
//! backup mode, with and without client reads). The
//! seeds of a scenario are split into ranges run on all cores at once.

use std::collections::BTreeSet;

use tribe_node::replication::sim;

/// What one range of seeds of one scenario did.
#[derive(Default)]
struct Totals {
    acked: usize,
    lost: usize,
    faults: usize,
    failures: Vec<String>,
    types: BTreeSet<u8>,
}

fn run_range(cfg: &sim::SimConfig, seeds: std::ops::Range<u64>) -> Totals {
    let mut t = Totals::default();
    for seed in seeds {
        match sim::run(seed, cfg) {
            Ok(r) => {
                t.acked += r.acked;
                t.lost += r.lost_to_crashes;
                t.faults += r.faults;
                t.types.extend(r.types);
            }
            Err(e) => t.failures.push(e),
        }
    }
    t
}

fn main() {
    let mut args = std::env::args().skip(1);
    let seeds: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(1_000);
    let first: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let started = std::time::Instant::now();
    let mut failures = 0;
    let mut types = BTreeSet::new();
    let only = std::env::var("TRIBE_SIM_SCENARIO").ok();
    let scenarios = sim::scenarios()
        .into_iter()
        .filter(|(name, _)| only.as_deref().is_none_or(|o| o == *name));
    for (name, cfg) in scenarios {
        let per = seeds.div_ceil(cores).max(1);
        let ranges: Vec<std::ops::Range<u64>> = (0..cores)
            .map(|c| (first + c * per)..(first + ((c + 1) * per).min(seeds)))
            .filter(|r| !r.is_empty())
            .collect();
        let parts: Vec<Totals> = std::thread::scope(|s| {
            let handles: Vec<_> = ranges
                .into_iter()
                .map(|r| {
                    let cfg = &cfg;
                    s.spawn(move || run_range(cfg, r))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("a simulation thread panicked"))
                .collect()
        });
        let (mut acked, mut lost, mut faults) = (0, 0, 0);
        for t in parts {
            acked += t.acked;
            lost += t.lost;
            faults += t.faults;
            types.extend(t.types);
            for e in t.failures {
                failures += 1;
                eprintln!("FAIL {name} {e}\n");
            }
        }
        println!(
            "{name}: seeds {first}..{}: {acked} writes acknowledged, {faults} faults, {lost} lost with every holder crashed",
            first + seeds
        );
    }
    println!("{}", sim::coverage(&types));
    println!(
        "{failures} failed, in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    if failures > 0 {
        std::process::exit(1);
    }
}
