//! How much the store may still write before the free space of the data
//! directory's file system goes below `min_free_disk_bytes`.
//!
//! Measuring once a second is not enough: a client posting 255 KiB QoS 1
//! messages 32 at a time wrote through a 64 MiB margin between two
//! measurements, and after a write hit a full disk sled's database must be
//! reopened, losing what was not flushed yet (`sled_db.rs`). So
//! every publish that needs the store is admitted against a running
//! estimate: the free space last measured, minus `WRITE_AMPLIFICATION`
//! times the bytes the store wrote since (counted from the last flush that
//! worked before the measurement, as later writes may not be on disk yet).
//! When a write would take the estimate below the margin, the space is
//! measured again (at most every `REMEASURE_AFTER`, a `statvfs` call) and
//! the write is refused if it still does not fit. A write of
//! `MEASURE_BEFORE_WRITES_OF` bytes or more is measured before, always:
//! sled writes such a value to a file of its own at once, and another
//! program may have filled the disk since the last measurement.
//!
//! The reserve file (`reserve.rs`) counts as used while it is not in place.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::reserve::DiskReserve;

/// What the file system loses per byte the store writes. sled writes a
/// record to its log and again when it rewrites a segment, plus headers:
/// the report that led here saw about 2; on an 8 MiB tmpfs, 14 posts of
/// 200 KiB (2.9 MB) took at most 4.8 MB with sled's own files
/// (`tests/full_disk.rs`). 3 leaves room for segment cleaning.
pub const WRITE_AMPLIFICATION: u64 = 3;

/// On the publish path the free space is measured at most this often (a
/// refused write does not cost a system call every time).
const REMEASURE_AFTER: Duration = Duration::from_millis(10);

/// Writes of at least this many bytes are admitted against a measurement
/// made for them: half of sled's blob threshold (a quarter of its 512 KiB
/// segment), so that every value sled writes as a blob is. A `statvfs` is
/// small next to writing 64 KiB.
pub(super) const MEASURE_BEFORE_WRITES_OF: u64 = 64 * 1024;

/// What is watched: the data directory, `min_free_disk_bytes`, the reserve.
struct Watched {
    dir: PathBuf,
    min_free: u64,
    reserve: DiskReserve,
}

/// The running estimate.
pub(super) struct DiskSpace {
    /// Unset: not watched (memory storage, or the check and the reserve
    /// are off), every write fits.
    watched: OnceLock<Watched>,
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
    /// Watches `dir` from now on, keeping `min_free` bytes free, and a
    /// reserve file of `reserve` bytes in it while there is room.
    pub(super) fn watch(&self, dir: PathBuf, min_free: u64, reserve: u64) {
        let reserve = DiskReserve::new(&dir, reserve);
        let _ = self.watched.set(Watched {
            dir,
            min_free,
            reserve,
        });
    }

    /// `min_free_disk_bytes`, if watched.
    pub(super) fn min_free(&self) -> Option<u64> {
        self.watched.get().map(|w| w.min_free)
    }

    /// The reserve file, if watched.
    pub(super) fn reserve(&self) -> Option<&DiskReserve> {
        self.watched.get().map(|w| &w.reserve)
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
    /// and sets the estimate from it. Returns the free bytes measured,
    /// less the reserve if it is not in place.
    pub(super) fn measure(&self, gap: Duration) -> Option<u64> {
        let Watched {
            dir,
            min_free,
            reserve,
        } = self.watched.get()?;
        {
            let mut at = self.measured_at.lock();
            if at.is_some_and(|t| t.elapsed() < gap) {
                return None;
            }
            *at = Some(Instant::now());
        }
        // Read before measuring: what was flushed by then is in `free`.
        let base = self.flushed.load(Ordering::Acquire);
        // Read on both sides: a reserve made or released meanwhile is not
        // counted as free.
        let missing = reserve.missing();
        let free = match fs2::available_space(dir) {
            Ok(free) => free.saturating_sub(missing.max(reserve.missing())),
            Err(error) => {
                tracing::debug!(%error, dir = %dir.display(), "cannot read the free disk space");
                return None;
            }
        };
        let room = free.saturating_sub(*min_free) / WRITE_AMPLIFICATION;
        self.limit.store(base.saturating_add(room), Ordering::Release);
        Some(free)
    }

    /// `measure` on the publish path, before a write of `bytes`.
    pub(super) fn remeasure(&self, bytes: u64) -> Option<u64> {
        if bytes >= MEASURE_BEFORE_WRITES_OF {
            self.measure(Duration::ZERO)
        } else {
            self.measure(REMEASURE_AFTER)
        }
    }
}
