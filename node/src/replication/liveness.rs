//! Link liveness: the failure detector of one connection, as a pure state machine.
//!
//! TCP alone cannot tell a healthy idle peer from a frozen one (a SIGSTOPped process, a
//! paused VM: its kernel still ACKs) or from one behind a silent cut (packets dropped, no
//! RST): writes pile up in socket buffers and nothing fails for minutes. So every link
//! carries application-level heartbeats: the sending side pings whenever it has written
//! nothing for `interval`, the peer's read loop answers each ping at once, and a link on
//! which nothing was *heard* for `timeout` is declared dead. A frozen process answers
//! nothing, whatever its kernel does.
//!
//! Time is passed in (milliseconds on any monotonic clock), so the simulation and the
//! driver run the same code.

/// What the driver should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing to do.
    Quiet,
    /// Send a ping (one is due every heartbeat interval).
    Ping,
    /// Nothing heard for the timeout: close the connection and suspect the peer.
    Dead,
}

/// The liveness of one connection.
#[derive(Debug, Clone)]
pub struct Liveness {
    interval: u64,
    timeout: u64,
    last_heard: u64,
    last_ping: u64,
    /// Pings go out (the outbound side); an inbound side only listens.
    pings: bool,
}

impl Liveness {
    /// A connection opened at `now` (ms). `timeout_ms`: the member timeout. Pings go out
    /// every `timeout / 4` (at least 50 ms) whatever else is sent — on a busy link the
    /// peer may have nothing to answer, and a ping is a few bytes — so three may be lost
    /// before the peer is declared dead.
    pub fn new(now: u64, timeout_ms: u64, pings: bool) -> Self {
        let timeout = timeout_ms.max(200);
        Liveness {
            interval: (timeout / 4).max(50),
            timeout,
            last_heard: now,
            last_ping: now,
            pings,
        }
    }

    /// A frame arrived.
    pub fn heard(&mut self, now: u64) {
        self.last_heard = self.last_heard.max(now);
    }

    /// Whether nothing was heard for the timeout.
    pub fn is_dead(&self, now: u64) -> bool {
        now.saturating_sub(self.last_heard) >= self.timeout
    }

    /// Whether a ping is due; if so, it counts as sent.
    pub fn ping_due(&mut self, now: u64) -> bool {
        if self.pings && now.saturating_sub(self.last_ping) >= self.interval {
            self.last_ping = now;
            return true;
        }
        false
    }

    /// What to do at `now`: [`Liveness::is_dead`], else [`Liveness::ping_due`].
    pub fn poll(&mut self, now: u64) -> Verdict {
        if self.is_dead(now) {
            Verdict::Dead
        } else if self.ping_due(now) {
            Verdict::Ping
        } else {
            Verdict::Quiet
        }
    }

    /// When the peer is declared dead unless something is heard (ms).
    pub fn dead_at(&self) -> u64 {
        self.last_heard + self.timeout
    }

    /// When [`Liveness::poll`] next has something to say (ms).
    pub fn next_deadline(&self) -> u64 {
        if self.pings {
            self.dead_at().min(self.last_ping + self.interval)
        } else {
            self.dead_at()
        }
    }

    /// The heartbeat interval (ms).
    pub fn interval(&self) -> u64 {
        self.interval
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_peer_is_dead_after_the_timeout_and_pinged_before() {
        let mut l = Liveness::new(0, 3_000, true);
        assert_eq!(l.poll(100), Verdict::Quiet);
        assert_eq!(l.poll(750), Verdict::Ping);
        assert_eq!(l.poll(800), Verdict::Quiet, "one ping per interval");
        assert_eq!(l.poll(1_500), Verdict::Ping);
        l.heard(1_600);
        assert_eq!(l.poll(4_000), Verdict::Ping);
        assert_eq!(l.poll(4_599), Verdict::Quiet);
        assert_eq!(l.dead_at(), 4_600);
        assert_eq!(l.poll(4_600), Verdict::Dead);
    }

    #[test]
    fn a_busy_link_still_pings_and_a_talking_peer_stays_alive() {
        let mut l = Liveness::new(0, 1_000, true);
        let mut pings = 0;
        for t in (0..10_000).step_by(50) {
            l.heard(t);
            if l.poll(t + 10) == Verdict::Ping {
                pings += 1;
            }
        }
        assert!((39..=41).contains(&pings), "{pings} pings in 10 s");
        assert!(!l.is_dead(10_000));
    }

    #[test]
    fn an_inbound_side_never_pings() {
        let mut l = Liveness::new(0, 1_000, false);
        assert_eq!(l.poll(999), Verdict::Quiet);
        assert_eq!(l.poll(1_000), Verdict::Dead);
    }
}
