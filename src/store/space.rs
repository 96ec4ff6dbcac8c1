//! How much the store may still write before the free space of the data
//! directory's file system goes below `min_free_disk_bytes`.
//!
//! Measuring once a second is not enough: a client posting 255 KiB QoS 1
//! messages 32 at a time wrote through a 64 MiB margin between two
//! measurements, and sled cannot go on after a write hit a full disk. So
//! every publish that needs the store is admitted against a running
//! estimate: the free space last measured, minus `WRITE_AMPLIFICATION`
//! times the bytes the store wrote since (counted from the last flush that
//! worked before the measurement, as later writes may not be on disk yet).
//! When a write would take the estimate below the margin, the space is
//! measured again (at most every `REMEASURE_AFTER`, a `statvfs` call) and
//! the write is refused if it still does not fit.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// What the file system loses per byte the store writes. sled writes a
/// record to its log and again when it rewrites a segment, plus headers:
/// the report that led here saw about 2; on an 8 MiB tmpfs, 14 posts of
/// 200 KiB (2.9 MB) took at most 4.8 MB with sled's own files
/// (`tests/full_disk.rs`). 3 leaves room for segment cleaning.
pub const WRITE_AMPLIFICATION: u64 = 3;

/// On the publish path the free space is measured at most this often (a
/// refused write does not cost a system call every time).
const REMEASURE_AFTER: Duration = Duration::from_millis(10);

/// The running estimate.
pub(super) struct DiskSpace {
    /// The data directory and `min_free_disk_bytes`; unset: not watched
    /// (memory storage, or the check is off), every write fits.
    watched: OnceLock<(PathBuf, u64)>,
    /// Bytes the store wrote so far (`Store::bytes_written`).
    written: AtomicU64,
    /// `written` when the last flush that worked began: on disk.
    flushed: AtomicU64,
    /// Writes fit while `written` stays at or below this.
    limit: AtomicU64,
    /// When the free space was last measured.
    measured_at: Mutex<Option<Instant>>,
}

impl Default for DiskSpace {
    fn default() -> Self {
        DiskSpace {
            watched: OnceLock::new(),
            written: AtomicU64::new(0),
            flushed: AtomicU64::new(0),
            limit: AtomicU64::new(u64::MAX),
            measured_at: Mutex::new(None),
        }
    }
}

impl DiskSpace {
    /// Watches `dir` from now on, keeping `min_free` bytes free.
    pub(super) fn watch(&self, dir: PathBuf, min_free: u64) {
        let _ = self.watched.set((dir, min_free));
    }

    /// `min_free_disk_bytes`, if watched.
    pub(super) fn min_free(&self) -> Option<u64> {
        self.watched.get().map(|(_, min)| *min)
    }

    /// The store's byte counter moved to `total`.
    pub(super) fn wrote(&self, total: u64) {
        self.written.fetch_max(total, Ordering::AcqRel);
    }

    /// A flush that began when the store's byte counter read `mark` worked.
    pub(super) fn flushed(&self, mark: u64) {
        self.flushed.fetch_max(mark, Ordering::AcqRel);
    }

    /// Bytes that still fit before the margin (by the estimate).
    pub(super) fn headroom(&self) -> u64 {
        self.limit
            .load(Ordering::Acquire)
            .saturating_sub(self.written.load(Ordering::Acquire))
    }

    /// Whether `bytes` more fit (by the estimate).
    pub(super) fn fits(&self, bytes: u64) -> bool {
        self.headroom() >= bytes
    }

    /// Measures the free space now (unless it was measured within `gap`),
    /// and sets the estimate from it. Returns the free bytes measured.
    pub(super) fn measure(&self, gap: Duration) -> Option<u64> {
        let (dir, min_free) = self.watched.get()?;
        {
            let mut at = self.measured_at.lock();
            if at.is_some_and(|t| t.elapsed() < gap) {
                return None;
            }
            *at = Some(Instant::now());
        }
        // Read before measuring: what was flushed by then is in `free`.
        let base = self.flushed.load(Ordering::Acquire);
        let free = match fs2::available_space(dir) {
            Ok(free) => free,
            Err(error) => {
                tracing::debug!(%error, dir = %dir.display(), "cannot read the free disk space");
                return None;
            }
        };
        let room = free.saturating_sub(*min_free) / WRITE_AMPLIFICATION;
        self.limit.store(base.saturating_add(room), Ordering::Release);
        Some(free)
    }

    /// `measure` on the publish path.
    pub(super) fn remeasure(&self) -> Option<u64> {
        self.measure(REMEASURE_AFTER)
    }
}
