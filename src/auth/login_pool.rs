//! Password checks before a client is known: at most
//! `max_concurrent_logins` argon2 hashes run at once (each takes ~19 MiB
//! and ~30 ms of a core), at most `max_pending_logins` wait for one, and a
//! login beyond that is refused at once (5.0 CONNACK 0x89 Server busy,
//! 3.1.1 code 3). So a flood of wrong passwords costs a fixed amount of
//! memory and threads, and leaves the runtime's threads free for
//! everyone's deliveries.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub struct LoginPool {
    hashing: Arc<Semaphore>,
    pending: AtomicUsize,
    max_pending: usize,
}

/// A login admitted to the queue; leaving it (drop) frees its place.
pub struct QueuedLogin<'a> {
    pool: &'a LoginPool,
}

impl Drop for QueuedLogin<'_> {
    fn drop(&mut self) {
        self.pool.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

impl LoginPool {
    pub fn new(max_concurrent: usize, max_pending: usize) -> Self {
        LoginPool {
            hashing: Arc::new(Semaphore::new(max_concurrent.max(1))),
            pending: AtomicUsize::new(0),
            max_pending,
        }
    }

    /// A place in the queue, or `None` when `max_pending_logins` logins
    /// already wait or are being checked.
    pub fn enter(&self) -> Option<QueuedLogin<'_>> {
        let admitted = self
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_pending).then_some(n + 1)
            })
            .is_ok();
        admitted.then_some(QueuedLogin { pool: self })
    }

    /// Waits for one of the hashing slots; held while the hash runs.
    pub async fn hashing_slot(&self, _queued: &QueuedLogin<'_>) -> Option<OwnedSemaphorePermit> {
        self.hashing.clone().acquire_owned().await.ok()
    }

    /// Logins queued or being checked now.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }
}
