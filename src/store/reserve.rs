//! The reserve file: `disk_reserve_bytes` really allocated in the data
//! directory while the disk has room, given back to the file system the
//! moment the store refuses writes (free space below the margin, a write
//! that would cross it, or a failed write), and allocated again when space
//! returns.
//!
//! Why: sled 0.34 cannot go on after one of its writes hit a full disk (it
//! keeps the error): the store is then reopened once the disk has room,
//! losing what was not flushed yet (`sled_db.rs`), so the margin should
//! hold. The
//! margin is kept by an estimate (`space.rs`); what sled writes that the
//! estimate did not foresee (segment cleaning, writes admitted just before
//! another program filled the disk) lands in the space the reserve gave
//! back. While the reserve is not in place, its size counts as used, so the
//! space it frees is for sled's writes in flight, not for new publishes.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

/// The file's name in the data directory.
pub const RESERVE_FILE: &str = "roomq.reserve";

/// The reserve of one data directory.
pub(super) struct DiskReserve {
    path: PathBuf,
    /// `disk_reserve_bytes`.
    bytes: u64,
    /// Whether the file is allocated, read without the lock by the
    /// free-space estimate.
    present: AtomicBool,
    /// Serializes creating and removing the file.
    io: Mutex<()>,
    /// Whether a failure to allocate it was logged (it is tried every
    /// second while there is room; logged once until it works).
    warned: AtomicBool,
}

impl DiskReserve {
    /// The reserve of `dir`, not allocated yet (`restore` allocates it).
    /// A reserve file left by an earlier run counts as in place.
    pub(super) fn new(dir: &std::path::Path, bytes: u64) -> DiskReserve {
        let path = dir.join(RESERVE_FILE);
        if bytes == 0 {
            // Turned off: a reserve left by an earlier run is given back.
            let _ = std::fs::remove_file(&path);
        }
        let present = bytes > 0 && std::fs::metadata(&path).is_ok_and(|m| m.len() >= bytes);
        DiskReserve {
            path,
            bytes,
            present: AtomicBool::new(present),
            io: Mutex::new(()),
            warned: AtomicBool::new(false),
        }
    }

    /// Bytes the reserve should hold but does not now: they count as used.
    pub(super) fn missing(&self) -> u64 {
        if self.present.load(Ordering::Acquire) {
            0
        } else {
            self.bytes
        }
    }

    /// Gives the reserve back to the file system (at once, on the path that
    /// refuses a write, so sled's writes in flight find room). Returns
    /// whether it was in place.
    pub(super) fn release(&self) -> bool {
        if !self.present.load(Ordering::Acquire) {
            return false;
        }
        let _io = self.io.lock();
        if !self.present.swap(false, Ordering::AcqRel) {
            return false;
        }
        match std::fs::remove_file(&self.path) {
            Ok(()) => {
                tracing::warn!(
                    bytes = self.bytes,
                    path = %self.path.display(),
                    "disk reserve released for the store's writes in flight"
                );
                true
            }
            Err(error) => {
                tracing::error!(%error, path = %self.path.display(), "cannot release the disk reserve");
                // Gone or not, it is no longer counted on.
                true
            }
        }
    }

    /// Allocates the reserve if it is not in place (the blocks, not a
    /// sparse file: `posix_fallocate`). Returns whether it is in place.
    pub(super) fn restore(&self) -> bool {
        if self.bytes == 0 || self.present.load(Ordering::Acquire) {
            return true;
        }
        let _io = self.io.lock();
        // No fsync: the reserve matters to this process's accounting; one
        // cut short by a crash is made again (`new` checks its length).
        let allocated =
            std::fs::File::create(&self.path).and_then(|file| fs2::FileExt::allocate(&file, self.bytes));
        match allocated {
            Ok(()) => {
                self.present.store(true, Ordering::Release);
                self.warned.store(false, Ordering::Relaxed);
                tracing::info!(bytes = self.bytes, path = %self.path.display(), "disk reserve in place");
                true
            }
            Err(error) => {
                // Tried again on the next measurement; its size counts as
                // used meanwhile.
                let _ = std::fs::remove_file(&self.path);
                if !self.warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!(%error, path = %self.path.display(), "cannot allocate the disk reserve");
                }
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_is_allocated_given_back_and_made_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let reserve = DiskReserve::new(dir.path(), 1 << 20);
        let file = dir.path().join(RESERVE_FILE);
        // Not made yet: its size counts as used.
        assert_eq!(reserve.missing(), 1 << 20);
        assert!(reserve.restore());
        assert_eq!(reserve.missing(), 0);
        let meta = std::fs::metadata(&file).expect("the reserve file");
        assert!(meta.len() >= 1 << 20);
        // Really allocated, not a sparse file.
        let file_handle = std::fs::File::open(&file).expect("open");
        assert!(fs2::FileExt::allocated_size(&file_handle).expect("size") >= 1 << 20);
        // A new run finds it in place.
        assert_eq!(DiskReserve::new(dir.path(), 1 << 20).missing(), 0);
        assert!(reserve.release());
        assert!(!file.exists());
        assert_eq!(reserve.missing(), 1 << 20);
        assert!(!reserve.release(), "released twice");
        assert!(reserve.restore());
        assert!(file.exists());
        // Turned off: a reserve left behind is given back.
        let off = DiskReserve::new(dir.path(), 0);
        assert_eq!(off.missing(), 0);
        assert!(!file.exists());
    }
}
