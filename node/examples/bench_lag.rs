//! End-to-end replication lag in async mode: how long after node A answers a write does
//! node B serve it from its own replica?
//!
//! One session; each sample writes `POST /counter` on A, then polls `GET /counter` on B
//! with the session cookie alone (no version cookie, so B answers from its replica at
//! once, without a read-your-writes wait or fetch) until B shows the new value. The lag is
//! the time from A's answer to B's first up-to-date answer; its resolution is one GET
//! (tens of microseconds on loopback). Prints p50/p90/p99/max.
//!
//! ```text
//! cargo build --release -p tribe-node --example bench_lag
//! target/release/examples/bench_lag <A http addr> <B http addr> [samples]
//! ```
//! `bench/replication.sh` starts the nodes and runs it.

use std::time::{Duration, Instant};

use reqwest::header::{COOKIE, SET_COOKIE};

fn counter(body: &str) -> Option<i64> {
    serde_json::from_str::<serde_json::Value>(body).ok()?["counter"].as_i64()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: bench_lag <A host:port> <B host:port> [samples]");
        std::process::exit(2);
    }
    let (a, b) = (&args[1], &args[2]);
    let samples: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(1000);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("http client");

    // Create the session on A.
    let resp = http
        .post(format!("http://{a}/counter"))
        .send()
        .await
        .expect("POST on A");
    let session = resp
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.split(';').next()?.strip_prefix("SESSIONID="))
        .expect("a SESSIONID cookie")
        .to_string();
    let cookie = format!("SESSIONID={session}");

    let mut lags = Vec::with_capacity(samples);
    let mut polls = 0usize;
    for _ in 0..samples {
        let body = http
            .post(format!("http://{a}/counter"))
            .header(COOKIE, &cookie)
            .send()
            .await
            .expect("POST on A")
            .text()
            .await
            .expect("body");
        let answered = Instant::now();
        let want = counter(&body).expect("counter in A's answer");
        loop {
            polls += 1;
            let body = http
                .get(format!("http://{b}/counter"))
                .header(COOKIE, &cookie)
                .send()
                .await
                .expect("GET on B")
                .text()
                .await
                .expect("body");
            if counter(&body).is_some_and(|n| n >= want) {
                break;
            }
            assert!(
                answered.elapsed() < Duration::from_secs(5),
                "B never served {want}"
            );
        }
        lags.push(answered.elapsed());
    }
    lags.sort();
    let q = |p: f64| lags[((lags.len() as f64 * p) as usize).min(lags.len() - 1)];
    println!(
        "end-to-end lag over {samples} writes (A answered -> B serves it): p50 {:?}, p90 {:?}, p99 {:?}, max {:?}; {:.2} polls of B per write",
        q(0.50),
        q(0.90),
        q(0.99),
        lags[lags.len() - 1],
        polls as f64 / samples as f64
    );
}
