//! The closed-loop load client: many connections, each one user (one session cookie jar)
//! sending requests one after another, as fast as answers come. All connections run on
//! the one runtime thread (no spawn, no locks); latency goes into one HDR histogram.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Result;
use hdrhistogram::Histogram;
use hyper::{Method, StatusCode};

use crate::http::{Conn, Seq, User};

/// What each request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `POST /counter`: in sequence when the answer is the previous value + 1.
    Write,
    /// `GET /counter`: in sequence when the answer is not below the last acknowledged write.
    Read,
    /// `POST /counter` against a front door that answers by itself: only the status counts.
    Ceiling,
}

/// One connection and the user on it.
pub struct Client {
    addr: SocketAddr,
    conn: Option<Conn>,
    user: User,
}

impl Client {
    /// A client of `addr` (connects on first use).
    pub fn new(addr: SocketAddr) -> Client {
        Client {
            addr,
            conn: None,
            user: User::default(),
        }
    }

    /// A client of `addr` that never sends the version cookie (no read-your-writes).
    pub fn without_version(addr: SocketAddr) -> Client {
        Client {
            user: User::without_version(),
            ..Client::new(addr)
        }
    }

    /// How many of this user's writes found its session gone back.
    pub fn resets(&self) -> u64 {
        self.user.resets
    }

    async fn once(&mut self, op: Op) -> Result<Seq> {
        if self.conn.is_none() {
            self.conn = Some(Conn::connect(self.addr).await?);
        }
        let conn = self.conn.as_mut().expect("connected");
        Ok(match op {
            Op::Write => self.user.write(conn).await?.1,
            Op::Read => self.user.read(conn).await?.1,
            Op::Ceiling => {
                let a = conn
                    .send(Method::POST, "/counter", None, bytes::Bytes::new())
                    .await?;
                anyhow::ensure!(a.status == StatusCode::OK, "{}", a.status);
                Seq::InOrder
            }
        })
    }
}

/// What one phase measured.
pub struct Phase {
    /// Requests answered (errors included).
    pub requests: u64,
    /// Requests that failed (connection error, timeout, status other than 200).
    pub errors: u64,
    /// Answers out of sequence.
    pub out_of_sequence: u64,
    /// Latency of every request, nanoseconds.
    pub latency: Histogram<u64>,
    /// From the start until the last request finished.
    pub seconds: f64,
    /// The first error seen, for the report.
    pub first_error: Option<String>,
}

impl Phase {
    /// Requests per second.
    pub fn rate(&self) -> f64 {
        self.requests as f64 / self.seconds
    }

    /// Latency quantile in milliseconds.
    pub fn ms(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1e6
    }
}

/// A latency histogram: 1 ns to 60 s, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

/// Every client sends `op` requests one after another until `duration` has passed.
pub async fn run(clients: &mut [Client], op: Op, duration: Duration) -> Phase {
    struct Totals {
        requests: u64,
        errors: u64,
        out_of_sequence: u64,
        latency: Histogram<u64>,
        first_error: Option<String>,
    }
    let totals = RefCell::new(Totals {
        requests: 0,
        errors: 0,
        out_of_sequence: 0,
        latency: histogram(),
        first_error: None,
    });
    let started = Instant::now();
    let deadline = started + duration;
    let totals_ref = &totals;
    futures::future::join_all(clients.iter_mut().map(|c| async move {
        while Instant::now() < deadline {
            let t0 = Instant::now();
            let result = c.once(op).await;
            let ns = t0.elapsed().as_nanos() as u64;
            let failed = {
                let mut t = totals_ref.borrow_mut();
                t.requests += 1;
                t.latency.saturating_record(ns.max(1));
                match result {
                    Ok(Seq::InOrder) => false,
                    Ok(Seq::OutOfSequence) => {
                        t.out_of_sequence += 1;
                        false
                    }
                    Err(e) => {
                        t.errors += 1;
                        t.first_error.get_or_insert_with(|| format!("{e:#}"));
                        true
                    }
                }
            };
            if failed {
                c.conn = None;
                // Do not spin while the front door is down.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }))
    .await;
    let seconds = started.elapsed().as_secs_f64();
    let t = totals.into_inner();
    Phase {
        requests: t.requests,
        errors: t.errors,
        out_of_sequence: t.out_of_sequence,
        latency: t.latency,
        seconds,
        first_error: t.first_error,
    }
}
