//! Whether the store can write: a full disk (or any I/O error) is a
//! condition the broker rides out, not a crash. Two things make the store
//! refuse writes:
//!
//! - free space on the data directory's file system below
//!   `min_free_disk_bytes` (checked every second). sled cannot recover from
//!   a write that hit a full disk (its flush never returns again), so the
//!   broker stops storing new messages before the disk is full;
//! - a write or flush that failed (`monitored.rs`), until a flush works.
//!
//! The log gets one line when this starts, one per `REPEAT_LOG` while it
//! lasts, and one when it ends. The broker publishes the state as
//! `$SYS/broker/store/status`; publishes that need the store are refused
//! (`session/publish.rs`), and acknowledgements already waiting are answered
//! after `store_stall_timeout_ms` (`session/acks.rs`).

use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

use super::StoreError;

/// While the store keeps failing, the error is logged again this often.
const REPEAT_LOG: Duration = Duration::from_secs(10);

/// A failure that has not cleared yet.
#[derive(Clone, Debug)]
pub struct StoreFailure {
    /// When the first failed flush of this run of failures happened.
    pub since: Instant,
    /// The same, as unix milliseconds (for `$SYS/broker/store/status`).
    pub since_unix_ms: u64,
    /// The last error, as text (it names the path or key at fault).
    pub error: String,
}

/// One reason to refuse writes, while it lasts, and when it was last
/// logged.
#[derive(Default)]
struct Condition {
    current: Option<StoreFailure>,
    last_logged: Option<Instant>,
}

impl Condition {
    /// The condition holds, for `error`; keeps the time it began. Returns
    /// since when it holds if it is time to log it (the first time, then
    /// every `REPEAT_LOG`).
    fn holds(&mut self, error: String) -> Option<Instant> {
        let now = Instant::now();
        let (since, since_unix_ms) = self
            .current
            .as_ref()
            .map_or((now, super::unix_ms_now()), |f| (f.since, f.since_unix_ms));
        self.current = Some(StoreFailure {
            since,
            since_unix_ms,
            error,
        });
        let log = self
            .last_logged
            .is_none_or(|at| now.duration_since(at) >= REPEAT_LOG);
        log.then(|| {
            self.last_logged = Some(now);
            since
        })
    }

    /// The condition is over; returns it if it held.
    fn clear(&mut self) -> Option<StoreFailure> {
        self.last_logged = None;
        self.current.take()
    }
}

#[derive(Default)]
struct State {
    /// A write or flush failed, until a flush works.
    failure: Condition,
    /// Free space below `min_free_disk_bytes`.
    low_disk: Condition,
}

/// The store's write health, shared by the flusher and the broker.
#[derive(Default)]
pub struct StoreHealth {
    state: Mutex<State>,
    /// Whether writes are refused, read on every PUBLISH without the lock;
    /// written under it.
    failing: AtomicBool,
}

impl StoreHealth {
    /// Keeps the lock-free flag in step with `state` (called under its lock).
    fn set_flag(&self, state: &State) {
        let failing = state.low_disk.current.is_some() || state.failure.current.is_some();
        self.failing.store(failing, Ordering::Release);
    }

    /// A write or flush failed with `error`.
    pub fn failed(&self, error: &StoreError) {
        let mut state = self.state.lock();
        let log = state.failure.holds(error.to_string());
        self.set_flag(&state);
        if let Some(since) = log {
            tracing::error!(
                %error,
                failing_for_secs = since.elapsed().as_secs(),
                "store cannot write (disk full?): acknowledgements that need the store wait, then are refused; retrying"
            );
        }
    }

    /// A flush worked.
    pub fn worked(&self) {
        if !self.failing.load(Ordering::Acquire) {
            // The common case, once per flush: nothing to clear.
            return;
        }
        let mut state = self.state.lock();
        if let Some(failure) = state.failure.clear() {
            self.set_flag(&state);
            tracing::warn!(
                failed_for_secs = failure.since.elapsed().as_secs(),
                "store writes again; acknowledgements resume"
            );
        }
    }

    /// The free space on the data directory's file system was measured:
    /// below `min_free` bytes the store refuses new writes.
    pub fn disk_space(&self, free: u64, min_free: u64) {
        let mut state = self.state.lock();
        if free >= min_free {
            if state.low_disk.clear().is_some() {
                self.set_flag(&state);
                tracing::warn!(
                    free,
                    min_free_disk_bytes = min_free,
                    "disk space is back; the store takes writes again"
                );
            }
            return;
        }
        let log = state.low_disk.holds(format!(
            "{free} bytes free on the data directory's file system, below min_free_disk_bytes {min_free}"
        ));
        self.set_flag(&state);
        if log.is_some() {
            tracing::error!(
                free,
                min_free_disk_bytes = min_free,
                "disk almost full: publishes that need the store are refused until space returns"
            );
        }
    }

    /// Why the store refuses writes now, if it does.
    pub fn failure(&self) -> Option<StoreFailure> {
        let state = self.state.lock();
        state
            .low_disk
            .current
            .clone()
            .or_else(|| state.failure.current.clone())
    }

    /// Whether the store refuses writes (low disk, or a failed write).
    pub fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Acquire)
    }
}
