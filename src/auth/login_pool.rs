//! Password checks before a client is known: at most
//! `max_concurrent_logins` argon2 hashes run at once (each takes ~19 MiB
//! and ~30 ms of a core), at most `max_pending_logins` wait for one, of
//! which at most `max_pending_logins_per_ip` come from one address, and a
//! login beyond either is refused at once (5.0 CONNACK 0x89 Server busy,
//! 3.1.1 code 3). So a flood of wrong passwords costs a fixed amount of
//! memory and threads, leaves the runtime's threads free for everyone's
//! deliveries, and one address (guessing random usernames, which no
//! per-username back-off slows) takes only its share of the queue: the
//! logins from other addresses keep their places.
//!
//! Many addresses together (a /29, any IPv6 host) could still fill the
//! whole queue with guesses. So half of it is kept for addresses that
//! logged in successfully within the last day: a flood from addresses
//! that never did takes at most the other half, and the users who come
//! back from where they logged in before keep their places (the third
//! attack pass: 8 addresses × 12 guessers left alice 0 of 30 logins).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub struct LoginPool {
    hashing: Arc<Semaphore>,
    /// Logins queued or being checked: in all, and per address (an entry
    /// only while the address has one, so at most `max_pending` entries).
    /// A `parking_lot` mutex: held for two counter updates, never across
    /// an `.await`.
    pending: Mutex<Pending>,
    max_pending: usize,
    max_pending_per_ip: usize,
    /// Addresses with a successful password login within `TRUSTED_FOR`,
    /// and when; at most `MAX_TRUSTED` (stale ones are dropped when full,
    /// then the oldest half).
    trusted: Mutex<HashMap<IpAddr, Instant>>,
}

/// How long a successful login keeps its address in the reserved half.
const TRUSTED_FOR: Duration = Duration::from_secs(24 * 3600);
/// Most addresses remembered as trusted.
const MAX_TRUSTED: usize = 100_000;

#[derive(Default)]
struct Pending {
    total: usize,
    /// Of `total`, the logins from addresses not trusted.
    untrusted: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// A login admitted to the queue; leaving it (drop) frees its place.
pub struct QueuedLogin<'a> {
    pool: &'a LoginPool,
    ip: IpAddr,
    trusted: bool,
}

impl Drop for QueuedLogin<'_> {
    fn drop(&mut self) {
        let mut pending = self.pool.pending.lock();
        pending.total = pending.total.saturating_sub(1);
        if !self.trusted {
            pending.untrusted = pending.untrusted.saturating_sub(1);
        }
        if let Some(n) = pending.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                pending.per_ip.remove(&self.ip);
            }
        }
    }
}

impl LoginPool {
    /// `max_pending_per_ip` 0 means no per-address share.
    pub fn new(max_concurrent: usize, max_pending: usize, max_pending_per_ip: usize) -> Self {
        LoginPool {
            hashing: Arc::new(Semaphore::new(max_concurrent.max(1))),
            pending: Mutex::default(),
            max_pending,
            max_pending_per_ip,
            trusted: Mutex::default(),
        }
    }

    /// Whether `ip` logged in successfully within `TRUSTED_FOR`.
    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted
            .lock()
            .get(&ip)
            .is_some_and(|at| at.elapsed() < TRUSTED_FOR)
    }

    /// A password login from `ip` succeeded: its address may use the
    /// reserved half of the queue from now on.
    pub fn succeeded(&self, ip: IpAddr) {
        let now = Instant::now();
        let mut trusted = self.trusted.lock();
        if trusted.len() >= MAX_TRUSTED && !trusted.contains_key(&ip) {
            trusted.retain(|_, at| now.duration_since(*at) < TRUSTED_FOR);
            if trusted.len() >= MAX_TRUSTED {
                let mut ages: Vec<Instant> = trusted.values().copied().collect();
                ages.sort_unstable();
                let cut = ages[ages.len() / 2];
                trusted.retain(|_, at| *at > cut);
            }
        }
        trusted.insert(ip, now);
    }

    fn has_room(&self, pending: &Pending, ip: IpAddr, trusted: bool) -> bool {
        let of_ip = pending.per_ip.get(&ip).copied().unwrap_or(0);
        // Half of the queue (at least one place) is kept for trusted
        // addresses; they may also use the other half.
        let reserved = (self.max_pending / 2).min(self.max_pending.saturating_sub(1));
        pending.total < self.max_pending
            && (trusted || pending.untrusted < self.max_pending - reserved)
            && (self.max_pending_per_ip == 0 || of_ip < self.max_pending_per_ip)
    }

    /// Whether a login from `ip` would get a place now: a login that would
    /// not is refused before it waits out its back-off.
    pub fn has_place_for(&self, ip: IpAddr) -> bool {
        let trusted = self.is_trusted(ip);
        self.has_room(&self.pending.lock(), ip, trusted)
    }

    /// A place in the queue, or `None` when `max_pending_logins` logins
    /// already wait or are being checked, or `max_pending_logins_per_ip`
    /// of them from `ip`.
    pub fn enter(&self, ip: IpAddr) -> Option<QueuedLogin<'_>> {
        let trusted = self.is_trusted(ip);
        let mut pending = self.pending.lock();
        if !self.has_room(&pending, ip, trusted) {
            return None;
        }
        pending.total += 1;
        if !trusted {
            pending.untrusted += 1;
        }
        *pending.per_ip.entry(ip).or_insert(0) += 1;
        Some(QueuedLogin {
            pool: self,
            ip,
            trusted,
        })
    }

    /// Waits for one of the hashing slots; held while the hash runs.
    pub async fn hashing_slot(&self, _queued: &QueuedLogin<'_>) -> Option<OwnedSemaphorePermit> {
        self.hashing.clone().acquire_owned().await.ok()
    }

    /// Logins queued or being checked now.
    pub fn pending(&self) -> usize {
        self.pending.lock().total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_that_never_logged_in_take_at_most_half_of_the_queue() {
        let pool = LoginPool::new(1, 8, 1);
        let ip = |n: u8| -> IpAddr { IpAddr::from([10, 0, 1, n]) };
        let alice = ip(100);
        pool.succeeded(alice);
        // Many flooding addresses, one place each: half the queue.
        let flood: Vec<_> = (1..=20).filter_map(|n| pool.enter(ip(n))).collect();
        assert_eq!(flood.len(), 4);
        assert!(!pool.has_place_for(ip(50)));
        // Alice comes back from where she logged in before.
        assert!(pool.has_place_for(alice));
        let _alice = pool.enter(alice).expect("a trusted address finds a place");
        drop(flood);
        assert_eq!(pool.pending(), 1);
    }

    #[test]
    fn one_address_gets_its_share_and_the_others_the_rest() {
        let pool = LoginPool::new(1, 3, 2);
        // Only trusted addresses here: the untrusted half is tested above.
        for n in [1, 2] {
            pool.succeeded(IpAddr::from([10, 0, 0, n]));
        }
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let first = pool.enter(a).unwrap();
        let _second = pool.enter(a).unwrap();
        assert!(pool.enter(a).is_none());
        assert!(!pool.has_place_for(a));
        let _other = pool.enter(b).unwrap();
        // The queue is full for everyone now.
        assert!(pool.enter(b).is_none());
        drop(first);
        let _again = pool.enter(a).expect("a place given back is free again");
        assert_eq!(pool.pending(), 3);
    }
}
