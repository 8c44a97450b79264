//! Rate limits for log lines a stranger can cause (pure: the caller passes the time).
//!
//! Every failed handshake is counted in `tribe_handshake_failures_total{reason}`, which
//! carries the totals; the WARN line is written at most once per [`WarnLimiter::every`]
//! per reason, and says how many like it were left out since the last one. So a flood of
//! bad connections cannot flood the log.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// How often a line of one kind may be written by default.
pub const DEFAULT_EVERY: Duration = Duration::from_secs(10);

/// Decides which lines of each kind are written.
#[derive(Debug)]
pub struct WarnLimiter {
    every: Duration,
    /// Per kind: when the last line was written, and lines left out since.
    state: Mutex<HashMap<&'static str, (Instant, u64)>>,
}

impl Default for WarnLimiter {
    fn default() -> Self {
        Self::new(DEFAULT_EVERY)
    }
}

impl WarnLimiter {
    /// A limiter allowing one line per kind per `every`.
    pub fn new(every: Duration) -> Self {
        WarnLimiter {
            every,
            state: Mutex::default(),
        }
    }

    /// The interval between two lines of one kind.
    pub fn every(&self) -> Duration {
        self.every
    }

    /// Whether a line of `kind` may be written at `now`: `Some(n)`, with `n` lines of
    /// that kind left out since the last one written; `None` to leave it out.
    pub fn check(&self, kind: &'static str, now: Instant) -> Option<u64> {
        let mut s = self.state.lock();
        match s.get_mut(kind) {
            Some((last, skipped)) if now.saturating_duration_since(*last) < self.every => {
                *skipped += 1;
                None
            }
            Some((last, skipped)) => {
                *last = now;
                Some(std::mem::take(skipped))
            }
            None => {
                s.insert(kind, (now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_kind_per_interval_with_the_count_left_out() {
        let l = WarnLimiter::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(l.check("timeout", t0), Some(0));
        // A flood of 1000 within the interval: none written.
        for i in 0..1000 {
            assert_eq!(l.check("timeout", t0 + Duration::from_millis(i)), None);
        }
        // Another kind is independent.
        assert_eq!(l.check("bad_handshake", t0), Some(0));
        // After the interval: one line, which reports the 1000 left out.
        assert_eq!(l.check("timeout", t0 + Duration::from_secs(10)), Some(1000));
        assert_eq!(l.check("timeout", t0 + Duration::from_secs(11)), None);
        assert_eq!(l.check("timeout", t0 + Duration::from_secs(20)), Some(1));
    }
}
