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

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

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
}

#[derive(Default)]
struct Pending {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// A login admitted to the queue; leaving it (drop) frees its place.
pub struct QueuedLogin<'a> {
    pool: &'a LoginPool,
    ip: IpAddr,
}

impl Drop for QueuedLogin<'_> {
    fn drop(&mut self) {
        let mut pending = self.pool.pending.lock();
        pending.total = pending.total.saturating_sub(1);
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
        }
    }

    fn has_room(&self, pending: &Pending, ip: IpAddr) -> bool {
        let of_ip = pending.per_ip.get(&ip).copied().unwrap_or(0);
        pending.total < self.max_pending && (self.max_pending_per_ip == 0 || of_ip < self.max_pending_per_ip)
    }

    /// Whether a login from `ip` would get a place now: a login that would
    /// not is refused before it waits out its back-off.
    pub fn has_place_for(&self, ip: IpAddr) -> bool {
        self.has_room(&self.pending.lock(), ip)
    }

    /// A place in the queue, or `None` when `max_pending_logins` logins
    /// already wait or are being checked, or `max_pending_logins_per_ip`
    /// of them from `ip`.
    pub fn enter(&self, ip: IpAddr) -> Option<QueuedLogin<'_>> {
        let mut pending = self.pending.lock();
        if !self.has_room(&pending, ip) {
            return None;
        }
        pending.total += 1;
        *pending.per_ip.entry(ip).or_insert(0) += 1;
        Some(QueuedLogin { pool: self, ip })
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
    fn one_address_gets_its_share_and_the_others_the_rest() {
        let pool = LoginPool::new(1, 3, 2);
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
