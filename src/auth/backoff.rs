//! Per-IP back-off after failed logins: the refusal of each further attempt
//! from an address waits longer (doubling from 100 ms after the third
//! failure, at most `login_backoff_max_ms`), so guessing passwords is slow.
//! Failures are forgotten a minute after the last one.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Failures before the back-off starts.
const FREE_FAILURES: u32 = 3;
/// Failures are forgotten this long after the last one.
const FORGET_AFTER: Duration = Duration::from_secs(60);
/// Most addresses tracked; the table is cleared of stale ones when full.
const MAX_TRACKED: usize = 100_000;

pub struct LoginBackoff {
    max: Duration,
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl LoginBackoff {
    pub fn new(max: Duration) -> Self {
        LoginBackoff {
            max,
            failures: Mutex::default(),
        }
    }

    /// Records a failure; returns how long to wait before answering.
    pub fn failed(&self, ip: IpAddr) -> Duration {
        let now = Instant::now();
        let mut failures = self.failures.lock();
        if failures.len() >= MAX_TRACKED {
            failures.retain(|_, (_, last)| now.duration_since(*last) < FORGET_AFTER);
        }
        let entry = failures.entry(ip).or_insert((0, now));
        if now.duration_since(entry.1) >= FORGET_AFTER {
            *entry = (0, now);
        }
        entry.0 += 1;
        entry.1 = now;
        if entry.0 <= FREE_FAILURES {
            return Duration::ZERO;
        }
        let doublings = (entry.0 - FREE_FAILURES - 1).min(16);
        (Duration::from_millis(100) * 2u32.pow(doublings)).min(self.max)
    }

    /// A successful login clears the address.
    pub fn succeeded(&self, ip: IpAddr) {
        self.failures.lock().remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_after_free_failures_and_is_capped() {
        let b = LoginBackoff::new(Duration::from_secs(2));
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let waits: Vec<_> = (0..8).map(|_| b.failed(ip).as_millis()).collect();
        assert_eq!(waits, vec![0, 0, 0, 100, 200, 400, 800, 1600]);
        assert_eq!(b.failed(ip), Duration::from_secs(2));
        b.succeeded(ip);
        assert_eq!(b.failed(ip), Duration::ZERO);
    }
}
