//! The wall clock, in one place: every "now" of the node in Unix time comes from here.
//!
//! Expiries and session ages are Unix seconds on this node's clock ([`unix_now`]); they
//! travel between nodes as seconds remaining, so clocks need not agree (see
//! [`crate::wire`]). Durations and deadlines use the monotonic clock (`Instant`, tokio's
//! timers), never these.

use std::time::{SystemTime, UNIX_EPOCH};

/// The wall clock now (for formatting a date; arithmetic uses the functions below).
pub fn wall() -> SystemTime {
    SystemTime::now()
}

fn since_epoch() -> std::time::Duration {
    // A clock set before 1970 reads as the epoch rather than failing.
    wall().duration_since(UNIX_EPOCH).unwrap_or_default()
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    since_epoch().as_secs()
}

/// Milliseconds since the Unix epoch.
pub fn unix_millis() -> u64 {
    since_epoch().as_millis() as u64
}

/// Microseconds since the Unix epoch.
pub fn unix_micros() -> u128 {
    since_epoch().as_micros()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_units_agree() {
        let (s, ms, us) = (unix_now(), unix_millis(), unix_micros());
        // Taken one after another: each finer reading is at or after the coarser one.
        assert!(ms / 1000 >= s && ms / 1000 <= s + 1);
        assert!((us / 1000) as u64 >= ms);
        assert!(s > 1_600_000_000, "a clock after 2020");
    }
}
