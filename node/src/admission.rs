//! Admission of inbound connections to the handshake (pure: no I/O).
//!
//! Before a dialer authenticates, all a node knows is its source address. Handshake slots
//! are handed out so that one address cannot take them all:
//! - at most [`Limits::total`] handshakes are in progress at once;
//! - at most [`Limits::per_source`] of them come from one IP address;
//! - [`Limits::reserved`] slots are kept for addresses this node already knows as peers
//!   (discovered candidates and members): a stranger, even many strangers, can use at
//!   most `total - reserved`.
//!
//! A connection that gets no slot is closed at once (and counted by the caller). A slot
//! is held for the handshake only, which is bounded by the handshake deadline; it is
//! given back when its [`Slot`] is dropped.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use parking_lot::Mutex;

/// The limits of [`Admission`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Handshakes in progress at once, from anyone.
    pub total: usize,
    /// Handshakes in progress at once from one IP address.
    pub per_source: usize,
    /// Slots only known peer addresses may use.
    pub reserved: usize,
}

impl Limits {
    /// Limits for `--max-handshakes total` and `--max-handshakes-per-source per_source`:
    /// a quarter of the slots (at least one) is reserved for known peers.
    pub fn new(total: usize, per_source: usize) -> Self {
        let total = total.max(2);
        Limits {
            total,
            per_source: per_source.clamp(1, total),
            reserved: (total / 4).max(1),
        }
    }
}

/// Why a connection got no handshake slot (the `reason` label of the failures counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Every slot is taken.
    Full,
    /// This address has [`Limits::per_source`] handshakes in progress.
    PerSource,
    /// Only reserved slots are left, and the address is not a known peer.
    Stranger,
}

impl Refused {
    /// A short label for `tribe_handshake_failures_total{reason}`.
    pub fn reason(self) -> &'static str {
        match self {
            Refused::Full => "too_many_handshakes",
            Refused::PerSource => "too_many_from_source",
            Refused::Stranger => "stranger_limit",
        }
    }
}

#[derive(Debug, Default)]
struct State {
    total: usize,
    strangers: usize,
    by_source: HashMap<IpAddr, usize>,
}

/// Hands out handshake slots (see the module docs).
#[derive(Debug)]
pub struct Admission {
    limits: Limits,
    state: Mutex<State>,
}

/// One handshake slot; given back on drop.
#[derive(Debug)]
pub struct Slot {
    owner: Arc<Admission>,
    ip: IpAddr,
    stranger: bool,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = self.owner.state.lock();
        s.total -= 1;
        if self.stranger {
            s.strangers -= 1;
        }
        if let Some(n) = s.by_source.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                s.by_source.remove(&self.ip);
            }
        }
    }
}

impl Admission {
    /// A limiter with `limits`.
    pub fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Admission {
            limits,
            state: Mutex::default(),
        })
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// A slot for a connection from `ip`; `known` says whether `ip` is the address of a
    /// discovered candidate or a member.
    pub fn try_admit(self: &Arc<Self>, ip: IpAddr, known: bool) -> Result<Slot, Refused> {
        let l = self.limits;
        let mut s = self.state.lock();
        if s.total >= l.total {
            return Err(Refused::Full);
        }
        if s.by_source.get(&ip).copied().unwrap_or(0) >= l.per_source {
            return Err(Refused::PerSource);
        }
        if !known && s.strangers >= l.total - l.reserved {
            return Err(Refused::Stranger);
        }
        s.total += 1;
        if !known {
            s.strangers += 1;
        }
        *s.by_source.entry(ip).or_default() += 1;
        Ok(Slot {
            owner: self.clone(),
            ip,
            stranger: !known,
        })
    }

    /// Handshakes in progress.
    pub fn in_progress(&self) -> usize {
        self.state.lock().total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn one_address_cannot_take_every_slot() {
        let a = Admission::new(Limits::new(64, 8));
        let flood = ip("10.0.0.66");
        let held: Vec<Slot> = (0..8).map(|_| a.try_admit(flood, false).unwrap()).collect();
        // The 64 connections of the flood: the rest are refused at once.
        for _ in 8..64 {
            assert_eq!(a.try_admit(flood, false).unwrap_err(), Refused::PerSource);
        }
        // A member still gets in.
        let member = a.try_admit(ip("10.0.0.2"), true).unwrap();
        assert_eq!(a.in_progress(), 9);
        drop(member);
        drop(held);
        assert_eq!(a.in_progress(), 0);
        assert!(a.try_admit(flood, false).is_ok());
    }

    #[test]
    fn strangers_cannot_take_the_reserved_slots() {
        let a = Admission::new(Limits::new(8, 1));
        assert_eq!(a.limits().reserved, 2);
        // Six strangers from six addresses take the unreserved slots.
        let strangers: Vec<Slot> = (1..=6)
            .map(|i| a.try_admit(ip(&format!("192.0.2.{i}")), false).unwrap())
            .collect();
        assert_eq!(
            a.try_admit(ip("192.0.2.7"), false).unwrap_err(),
            Refused::Stranger
        );
        // Known peers use the reserved ones, then everything is full.
        let p1 = a.try_admit(ip("10.0.0.1"), true).unwrap();
        let _p2 = a.try_admit(ip("10.0.0.2"), true).unwrap();
        assert_eq!(
            a.try_admit(ip("10.0.0.3"), true).unwrap_err(),
            Refused::Full
        );
        // A slot given back is free again; a stranger's slot freed is a stranger's again.
        drop(p1);
        assert_eq!(
            a.try_admit(ip("192.0.2.8"), false).unwrap_err(),
            Refused::Stranger
        );
        drop(strangers);
        assert!(a.try_admit(ip("192.0.2.8"), false).is_ok());
    }

    #[test]
    fn limits_are_sane_for_any_flag_value() {
        let l = Limits::new(0, 0);
        assert_eq!((l.total, l.per_source, l.reserved), (2, 1, 1));
        let l = Limits::new(64, 1000);
        assert_eq!((l.total, l.per_source, l.reserved), (64, 64, 16));
    }
}
