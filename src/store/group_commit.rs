//! Group commit: many writers, one flush.
//!
//! A writer that needs its writes on disk takes a ticket after writing and
//! waits for it. One flusher thread flushes whenever tickets are pending;
//! every ticket taken before a flush started is served by that flush, so N
//! concurrent publishers share one `fsync`-like call instead of making N.
//!
//! Under concurrent load the flusher waits `delay` after being woken before
//! it flushes (PostgreSQL's `commit_delay`): fewer flushes, fewer writes and
//! context switches, which on two cores, not the disk, were the limit when
//! it was chosen (sled then woke all seven I/O threads per flush and synced
//! every empty journal batch: `vendor/sled/ROOMQ-PATCHES.md`, 3 to 5; with
//! those fixed, 250 and 500 µs still cost 5–10 % more CPU under chat load
//! and gave no lower latency). Measured with 16 publishers (`fanin --persistent`):
//! no delay 174k msg/s, 1 ms 226k, 2 ms 254k, 5 ms 253k; latency fell too,
//! because the CPU it frees served the messages sooner. Room messages are
//! delivered after their commit, so under chat load the delay shows in every
//! message's latency: 200 rooms × 20 members at 1 msg/s gave p50 2.2 ms with
//! 2 ms and 1.5 ms with 1 ms, hence the default of 1 ms (saturated fan-in:
//! 296k msg/s instead of 332k). A flush that served a single ticket turns
//! the delay off, so a lone client is flushed at once.
//!
//! The flusher is a dedicated OS thread, so it can sleep for the delay
//! without holding a runtime worker.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use tokio::sync::watch;

use super::{Store, StoreError};

/// What a commit waits for besides the store's own flush: in cluster mode,
/// JetStream's acknowledgement of every write handed to it so far.
pub trait CommitBarrier: Send + Sync {
    /// Blocks until every write made before the call is acknowledged, or
    /// fails after a bounded wait (the flusher then tries again).
    fn settle(&self) -> Result<(), StoreError>;
}

/// Lost ranges kept (a reopen each: far more than ever wait at once).
const LOST_RANGES: usize = 16;

/// How long the flusher waits before it tries a failed flush again.
const RETRY_AFTER_FAILURE: Duration = Duration::from_millis(100);

/// The group-commit coordinator of one store.
pub struct GroupCommit {
    /// Waited for after each flush (cluster mode).
    barrier: Option<Arc<dyn CommitBarrier>>,
    /// Highest ticket handed out.
    requested: AtomicU64,
    /// Highest ticket known to be durable.
    durable: watch::Sender<u64>,
    /// Whether the last flush failed (a full disk): a shutdown does not
    /// wait for a commit that cannot come.
    failing: watch::Sender<bool>,
    /// Set (under the mutex) when tickets wait; the flusher sleeps on it.
    wake: (Mutex<bool>, Condvar),
    /// How long a flush waits for more tickets under concurrent load.
    delay: Duration,
    /// Tickets whose writes a reopen of the store lost (`sled_db.rs`):
    /// (after, up_to], newest last, at most `LOST_RANGES` (older ones were
    /// refused long before). Never durable, though `durable` passes them.
    lost: Mutex<std::collections::VecDeque<(u64, u64)>>,
    /// The highest lost ticket: the common check is one atomic load.
    lost_mark: AtomicU64,
    /// `Store::reopens` when last looked at.
    reopens: AtomicU64,
    /// Flushes done, for the benchmark and tests.
    pub flushes: AtomicU64,
    /// Where each flush's duration and size are observed (`/metrics`).
    metrics: std::sync::OnceLock<Arc<crate::metrics::Metrics>>,
}

impl GroupCommit {
    /// Starts the flusher thread for `store`. It ends when the last handle
    /// to the coordinator is dropped.
    pub fn start(store: Arc<dyn Store>, delay: Duration) -> Arc<GroupCommit> {
        GroupCommit::start_with_barrier(store, delay, None)
    }

    /// `start`, where a commit also waits for `barrier` after the flush.
    pub fn start_with_barrier(
        store: Arc<dyn Store>,
        delay: Duration,
        barrier: Option<Arc<dyn CommitBarrier>>,
    ) -> Arc<GroupCommit> {
        let (durable, _) = watch::channel(0);
        let (failing, _) = watch::channel(false);
        let gc = Arc::new(GroupCommit {
            barrier,
            requested: AtomicU64::new(0),
            durable,
            failing,
            wake: (Mutex::new(false), Condvar::new()),
            delay,
            lost: Mutex::default(),
            lost_mark: AtomicU64::new(0),
            reopens: AtomicU64::new(store.reopens()),
            flushes: AtomicU64::new(0),
            metrics: std::sync::OnceLock::new(),
        });
        let weak = Arc::downgrade(&gc);
        let spawned = std::thread::Builder::new()
            .name("roomq-flusher".into())
            .spawn(move || {
                let mut concurrent = false;
                while let Some(gc) = weak.upgrade() {
                    concurrent = gc.flush_once(&*store, concurrent);
                }
            });
        if let Err(error) = spawned {
            // Without a flusher no acknowledgement would ever be sent.
            tracing::error!(%error, "cannot start the group-commit flusher thread");
        }
        gc
    }

    /// Observes every flush in `metrics` from now on (set once).
    pub fn observe_in(&self, metrics: Arc<crate::metrics::Metrics>) {
        let _ = self.metrics.set(metrics);
    }

    /// A ticket covering every write made before this call.
    pub fn ticket(&self) -> u64 {
        let t = self.requested.fetch_add(1, Ordering::AcqRel) + 1;
        let (pending, cvar) = &self.wake;
        let mut pending = pending.lock();
        if !*pending {
            *pending = true;
            cvar.notify_one();
        }
        t
    }

    /// The highest ticket known to be durable.
    pub fn durable(&self) -> u64 {
        *self.durable.borrow()
    }

    /// Notified with the highest durable ticket after every commit.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.durable.subscribe()
    }

    /// Whether the writes covered by `ticket` were lost with a reopen of
    /// the store: never durable.
    pub fn is_lost(&self, ticket: u64) -> bool {
        if ticket > self.lost_mark.load(Ordering::Acquire) {
            return false;
        }
        self.lost
            .lock()
            .iter()
            .any(|(after, up_to)| ticket > *after && ticket <= *up_to)
    }

    /// The highest lost ticket (0: none), to notice a new loss cheaply.
    pub fn lost_mark(&self) -> u64 {
        self.lost_mark.load(Ordering::Acquire)
    }

    /// Whether the writes covered by `ticket` are durable.
    pub fn is_durable(&self, ticket: u64) -> bool {
        ticket <= self.durable() && !self.is_lost(ticket)
    }

    /// Waits until the writes covered by `ticket` are durable, or known
    /// lost (`is_lost`) and later ones durable.
    pub async fn wait(&self, ticket: u64) {
        let mut rx = self.durable.subscribe();
        let _ = rx.wait_for(|d| *d >= ticket).await;
    }

    /// `wait`, but returns as soon as a flush failed (at once if the last
    /// one did). Returns whether `ticket` is durable.
    pub async fn wait_unless_failing(&self, ticket: u64) -> bool {
        let mut durable = self.durable.subscribe();
        let mut failing = self.failing.subscribe();
        tokio::select! {
            done = durable.wait_for(|d| *d >= ticket) => done.is_ok() && !self.is_lost(ticket),
            _ = failing.wait_for(|f| *f) => self.is_durable(ticket),
        }
    }

    /// Waits for pending tickets (at most 100 ms, so a dropped coordinator
    /// is noticed) and flushes once. `concurrent`: the previous flush served
    /// more than one ticket, so waiting `delay` will gather more. Returns
    /// whether this flush served more than one ticket.
    fn flush_once(&self, store: &dyn Store, concurrent: bool) -> bool {
        let durable = *self.durable.borrow();
        {
            let (pending, cvar) = &self.wake;
            let mut pending = pending.lock();
            if !*pending {
                cvar.wait_for(&mut pending, Duration::from_millis(100));
            }
            *pending = false;
        }
        if concurrent && !self.delay.is_zero() {
            std::thread::sleep(self.delay);
        }
        let target = self.requested.load(Ordering::Acquire);
        if target <= durable {
            return false;
        }
        let started = std::time::Instant::now();
        let flushed = store
            .flush()
            .and_then(|()| self.barrier.as_ref().map_or(Ok(()), |b| b.settle()));
        match flushed {
            Ok(()) => {
                if let Some(metrics) = self.metrics.get() {
                    metrics.store_flush_duration.observe_duration(started.elapsed());
                    // Tickets: the acknowledgements this flush releases.
                    metrics.store_flush_batch.observe_units(target - durable);
                }
                self.flushes.fetch_add(1, Ordering::Relaxed);
                self.failing.send_if_modified(|f| std::mem::replace(f, false));
                self.durable.send_replace(target);
                target - durable > 1
            }
            Err(_) => {
                self.note_reopen(store, durable);
                self.failing.send_if_modified(|f| !std::mem::replace(f, true));
                // Acknowledgements wait for a flush that works (and are
                // refused after `store_stall_timeout_ms`); retried until
                // the disk has room again. The store's health logs it.
                std::thread::sleep(RETRY_AFTER_FAILURE);
                let (pending, _) = &self.wake;
                *pending.lock() = true;
                concurrent
            }
        }
    }
}

impl GroupCommit {
    /// After a failed flush: if the store was reopened (`sled_db.rs`), every
    /// ticket after `durable` handed out so far covers writes that are lost
    /// (the store took no writes from the failure to the reopen).
    fn note_reopen(&self, store: &dyn Store, durable: u64) {
        let reopens = store.reopens();
        if self.reopens.swap(reopens, Ordering::AcqRel) == reopens {
            return;
        }
        let up_to = self.requested.load(Ordering::Acquire);
        let mut lost = self.lost.lock();
        if lost.len() == LOST_RANGES {
            lost.pop_front();
        }
        lost.push_back((durable, up_to));
        self.lost_mark.fetch_max(up_to, Ordering::AcqRel);
        tracing::warn!(
            tickets = up_to.saturating_sub(durable),
            "the writes of these commits were lost with the store's reopen: their acknowledgements are refused, their room messages never delivered"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_tickets_share_flushes_and_all_complete() {
        let gc = GroupCommit::start(Arc::new(MemoryStore::default()), Duration::from_millis(2));
        // A lone ticket is served (no delay: nothing concurrent yet).
        let first = gc.ticket();
        gc.wait(first).await;
        let writers: Vec<_> = (0..200)
            .map(|_| {
                let gc = gc.clone();
                tokio::spawn(async move {
                    let ticket = gc.ticket();
                    gc.wait(ticket).await;
                    ticket
                })
            })
            .collect();
        for writer in writers {
            let ticket = writer.await.expect("writer task");
            assert!(gc.durable() >= ticket);
        }
        let flushes = gc.flushes.load(Ordering::Relaxed);
        assert!(flushes < 200, "200 concurrent tickets took {flushes} flushes");
    }
}
