//! Back-off for password logins, per address and username: attempts from
//! one address at one username are checked one delay apart, and the delay
//! doubles with every failure (from 100 ms after the third, at most
//! `login_backoff_max_ms`). The wait comes *before* the password is
//! hashed, and attempts that arrive together are queued behind each other,
//! so parallel guesses gain nothing and cost no hashing while they wait.
//!
//! Keyed by username too, so that guessing one account from an address
//! does not lock out the other users behind the same address (a NAT, or
//! loopback), whose correct logins stay fast; the bounded login pool caps
//! what guessing many accounts at once can cost. A success does not clear
//! anything but its own attempt: an attacker could otherwise interleave
//! logins of an account of its own. Failures are forgotten a minute after
//! the last one.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Failures before the back-off starts.
const FREE_FAILURES: u32 = 3;
/// Failures are forgotten this long after the last one.
const FORGET_AFTER: Duration = Duration::from_secs(60);
/// Most addresses tracked; the table is cleared of stale ones when full.
const MAX_TRACKED: usize = 100_000;

/// What one address has done lately.
struct Attempts {
    /// Failed attempts, plus attempts still being checked (each counts as
    /// a failure until it is known to be none, so that parallel guesses
    /// space each other out).
    failures: u32,
    /// When the last failure was recorded or the last attempt admitted.
    last: Instant,
    /// The earliest moment the next attempt may be checked.
    next_slot: Instant,
}

/// An address and a hash of the username: a fixed size whatever the
/// username's length (a collision only shares a back-off).
type Key = (IpAddr, u64);

pub struct LoginBackoff {
    max: Duration,
    hasher: RandomState,
    addresses: Mutex<HashMap<Key, Attempts>>,
}

impl LoginBackoff {
    pub fn new(max: Duration) -> Self {
        LoginBackoff {
            max,
            hasher: RandomState::new(),
            addresses: Mutex::default(),
        }
    }

    fn delay_after(&self, failures: u32) -> Duration {
        if failures < FREE_FAILURES {
            return Duration::ZERO;
        }
        let doublings = (failures - FREE_FAILURES).min(16);
        (Duration::from_millis(100) * 2u32.pow(doublings)).min(self.max)
    }

    fn key(&self, ip: IpAddr, username: &str) -> Key {
        (ip, self.hasher.hash_one(username))
    }

    /// Admits one password attempt from `ip` for `username`: returns how
    /// long it must wait before its password is checked. Must be followed
    /// by `attempt_done`.
    pub fn wait_before_attempt(&self, ip: IpAddr, username: &str) -> Duration {
        let key = self.key(ip, username);
        let now = Instant::now();
        let mut addresses = self.addresses.lock();
        if addresses.len() >= MAX_TRACKED {
            addresses.retain(|_, a| now.duration_since(a.last) < FORGET_AFTER);
        }
        let entry = addresses.entry(key).or_insert(Attempts {
            failures: 0,
            last: now,
            next_slot: now,
        });
        if now.duration_since(entry.last) >= FORGET_AFTER && entry.next_slot <= now {
            entry.failures = 0;
        }
        let slot = entry.next_slot.max(now);
        entry.next_slot = slot + self.delay_after(entry.failures);
        entry.failures += 1;
        entry.last = now;
        slot - now
    }

    /// Records that an admitted attempt was not checked after all (the
    /// login queue was full): it is no failure, so it builds no back-off.
    pub fn attempt_not_checked(&self, ip: IpAddr, username: &str) {
        self.attempt_done(ip, username, true);
    }

    /// Records the outcome of an admitted attempt.
    pub fn attempt_done(&self, ip: IpAddr, username: &str, succeeded: bool) {
        let key = self.key(ip, username);
        let mut addresses = self.addresses.lock();
        if let Some(entry) = addresses.get_mut(&key) {
            entry.last = Instant::now();
            if succeeded {
                // Not a failure after all; earlier failures stay.
                entry.failures = entry.failures.saturating_sub(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_attempts_queue_one_delay_apart_and_a_success_does_not_reset() {
        let b = LoginBackoff::new(Duration::from_secs(2));
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        // Eight guesses at once: the first three are free, then each waits
        // behind the one before it, the delay doubling.
        let waits: Vec<u128> = (0..8)
            .map(|_| b.wait_before_attempt(ip, "alice").as_millis())
            .collect();
        let expected = [0, 0, 0, 0, 100, 300, 700, 1500];
        for (got, want) in waits.iter().zip(expected) {
            assert!(got.abs_diff(want) <= 20, "{waits:?}");
        }
        for _ in 0..8 {
            b.attempt_done(ip, "alice", false);
        }
        // Another user behind the same address is not slowed down, and
        // its success does not clear alice's failures.
        assert_eq!(b.wait_before_attempt(ip, "bob"), Duration::ZERO);
        b.attempt_done(ip, "bob", true);
        let wait = b.wait_before_attempt(ip, "alice");
        b.attempt_done(ip, "alice", true);
        assert!(wait >= Duration::from_millis(1500), "{wait:?}");
        assert!(b.wait_before_attempt(ip, "alice") >= Duration::from_secs(2));
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(b.wait_before_attempt(other, "alice"), Duration::ZERO);
    }
}
