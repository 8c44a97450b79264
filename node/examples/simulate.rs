//! Runs the replication core's deterministic simulation over many seeds and prints the
//! seed of any failure, with its trace, so it can be replayed:
//!
//! ```text
//! cargo run --release -p tribe-node --example simulate -- [SEEDS] [FIRST_SEED]
//! cargo run --release -p tribe-node --example simulate -- 1 4711     # replay seed 4711
//! ```
//! Every seed runs under every scenario (async/sync, min members, 3 and 5 nodes, delta and
//! backup mode, with and without client reads).

use tribe_node::replication::sim;

fn main() {
    let mut args = std::env::args().skip(1);
    let seeds: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(1_000);
    let first: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let started = std::time::Instant::now();
    let mut failures = 0;
    let mut types = std::collections::BTreeSet::new();
    for (name, cfg) in sim::scenarios() {
        let mut acked = 0;
        let mut lost = 0;
        let mut faults = 0;
        let (mut reads, mut rollbacks, mut cut_off, mut stranded) = (0, 0, 0, 0);
        for seed in first..first + seeds {
            match sim::run(seed, &cfg) {
                Ok(r) => {
                    acked += r.acked;
                    lost += r.lost_to_crashes;
                    faults += r.faults;
                    reads += r.reads;
                    rollbacks += r.rollbacks;
                    cut_off += r.cut_off_rollbacks;
                    stranded += r.stranded;
                    types.extend(r.types);
                }
                Err(e) => {
                    failures += 1;
                    eprintln!("FAIL {name} {e}\n");
                }
            }
        }
        println!(
            "{name}: seeds {first}..{}: {acked} writes acknowledged, {faults} faults, {lost} lost with every holder crashed, {reads} reads ({rollbacks} rolled back after a loss, {cut_off} while cut off from every holder), {stranded} stranded on non-owners",
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
