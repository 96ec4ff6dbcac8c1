//! Whether the store can write: a full disk (or any I/O error) is a
//! condition the broker rides out, not a crash. Two things make the store
//! refuse writes:
//!
//! - a write that would take the free space on the data directory's file
//!   system below `min_free_disk_bytes`: measured every second and, between
//!   measurements, estimated from the bytes the store wrote (`space.rs`),
//!   so no write rate goes through the margin: after a write that hit a
//!   full disk sled's database must be reopened (`sled_db.rs`). The
//!   condition ends when the write that was refused fits again;
//! - a write or flush that failed (`monitored.rs`), until a flush works
//!   (after sled itself failed: once the store was reopened,
//!   `room_to_reopen`, `reopened`).
//!
//! The moment either begins, the reserve file (`disk_reserve_bytes`,
//! `reserve.rs`) is given back, so that what sled still writes finds room;
//! it is allocated again when the free space is above the margin again.
//!
//! The log gets one line when this starts, one per `REPEAT_LOG` while it
//! lasts, and one when it ends. The broker publishes the state as
//! `$SYS/broker/store/status`; publishes that need the store are refused
//! (`session/publish.rs`), and acknowledgements already waiting are answered
//! after `store_stall_timeout_ms` (`session/acks.rs`).

use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

use super::space::DiskSpace;
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
    /// Free space below `min_free_disk_bytes`, or a write refused that
    /// would have gone below it.
    low_disk: Condition,
    /// The size of the write that was refused: the condition ends when it
    /// fits (0: when the free space is above the margin again).
    needed: u64,
}

/// The store's write health, shared by the flusher and the broker.
#[derive(Default)]
pub struct StoreHealth {
    state: Mutex<State>,
    /// Whether writes are refused, read on every PUBLISH without the lock;
    /// written under it.
    failing: AtomicBool,
    /// The free-space estimate the writes are admitted against.
    space: DiskSpace,
}

impl StoreHealth {
    /// Keeps the lock-free flag in step with `state` (called under its lock).
    fn set_flag(&self, state: &State) {
        let failing = state.low_disk.current.is_some() || state.failure.current.is_some();
        self.failing.store(failing, Ordering::Release);
    }

    /// A write or flush failed with `error`.
    pub fn failed(&self, error: &StoreError) {
        self.release_reserve();
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

    /// Whether the disk has room to reopen the store (`sled_db.rs`): the
    /// free space is above the margin with the reserve in place (made
    /// again here). Always, when the disk is not watched.
    pub fn room_to_reopen(&self) -> bool {
        let Some(min_free) = self.space.min_free() else {
            return true;
        };
        let free = self.space.measure(Duration::ZERO);
        let room =
            free.is_some_and(|free| free >= min_free) && self.space.reserve().is_none_or(|r| r.restore());
        if !room {
            let mut state = self.state.lock();
            let log = state.failure.holds(format!(
                "sled cannot write again after an I/O error; the store is reopened once {min_free} bytes (min_free_disk_bytes) are free and the disk reserve is in place"
            ));
            if log.is_some() {
                tracing::warn!("the store waits for disk space to reopen");
            }
        }
        room
    }

    /// The store was reopened: it takes writes again once a flush works.
    pub fn reopened(&self) {
        let mut state = self.state.lock();
        state
            .failure
            .holds("the store was reopened after an I/O error; waiting for a flush that works".into());
        tracing::warn!(
            "the store was reopened after an I/O error (the disk has room again); what was written since the last flush that worked is lost, none of it was acknowledged"
        );
    }

    /// Keeps `min_free` bytes free on `dir`'s file system from now on
    /// (measured at once, then by `measure_disk` and `admits`), and a
    /// reserve file of `reserve` bytes in `dir` while there is room.
    pub fn watch_disk(&self, dir: std::path::PathBuf, min_free: u64, reserve: u64) {
        self.space.watch(dir, min_free, reserve);
        self.measure_disk();
    }

    /// Gives the reserve file back to the file system, if it is in place.
    fn release_reserve(&self) {
        if let Some(reserve) = self.space.reserve() {
            if reserve.release() {
                // Its size counts as used from now on.
                self.space.measure(Duration::ZERO);
            }
        }
    }

    /// Measures the free space (every second): below the margin the store
    /// refuses new writes; the condition ends when the refused write fits.
    pub fn measure_disk(&self) {
        let (Some(free), Some(min_free)) = (self.space.measure(Duration::ZERO), self.space.min_free()) else {
            return;
        };
        if free >= min_free && !self.is_failing() {
            // Space is back (the reserve's size was counted as used while
            // it was away): the reserve first, then writes.
            if let Some(reserve) = self.space.reserve() {
                reserve.restore();
            }
        }
        let mut state = self.state.lock();
        if free >= min_free {
            if state.low_disk.current.is_some() && self.space.fits(state.needed) {
                state.low_disk.clear();
                state.needed = 0;
                self.set_flag(&state);
                tracing::warn!(
                    free,
                    min_free_disk_bytes = min_free,
                    "disk space is back; the store takes writes again"
                );
            }
            return;
        }
        state.needed = 0;
        self.low_disk(
            &mut state,
            format!(
                "{free} bytes free on the data directory's file system, below min_free_disk_bytes {min_free}"
            ),
        );
        drop(state);
        self.release_reserve();
    }

    /// Whether a write of about `bytes` fits above the margin; if it does
    /// not (after measuring again), the store refuses writes until it does.
    /// One atomic comparison while there is room, and a `statvfs` before
    /// a large write (`space.rs`).
    pub fn admits(&self, bytes: u64) -> bool {
        if bytes < super::space::MEASURE_BEFORE_WRITES_OF && self.space.fits(bytes) {
            return true;
        }
        let free = self.space.remeasure(bytes);
        if self.space.fits(bytes) {
            return true;
        }
        let Some(min_free) = self.space.min_free() else {
            return true;
        };
        let mut state = self.state.lock();
        state.needed = state.needed.max(bytes);
        let free = free.map_or("too few".into(), |f| f.to_string());
        self.low_disk(
            &mut state,
            format!("{free} bytes free on the data directory's file system: a write of {bytes} bytes would go below min_free_disk_bytes {min_free}"),
        );
        drop(state);
        self.release_reserve();
        false
    }

    /// The low-disk condition holds for `why`.
    fn low_disk(&self, state: &mut State, why: String) {
        let log = state.low_disk.holds(why.clone());
        self.set_flag(state);
        if log.is_some() {
            tracing::error!(
                why,
                "disk almost full: publishes that need the store are refused until space returns"
            );
        }
    }

    /// The store's count of bytes written (`Store::bytes_written`) is now
    /// `total`.
    pub fn wrote(&self, total: u64) {
        self.space.wrote(total);
    }

    /// A flush that began when the store's count of bytes written read
    /// `mark` worked: those bytes are on disk.
    pub fn flushed(&self, mark: u64) {
        self.space.flushed(mark);
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
