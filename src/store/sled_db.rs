//! The rules for holding a `sled::Db` (0.34): how it is opened, and that
//! one which returned an I/O error is never flushed again.
//!
//! Why the second: after a write hit a full disk sled cannot go on, in
//! one of two ways (read in sled 0.34.7's `pagecache`). An I/O error while
//! it writes its log is kept (`set_global_error`): every later write and
//! flush fails with it, in this process. A value over its blob threshold
//! (about 128 KiB, a quarter of its 512 KiB segment) is written to a file
//! of its own while it holds a place in the log buffer
//! (`Log::reserve_inner` → `IoBufs::encapsulate` → `write_blob`); when that
//! write fails, the error returns without giving the place back, so the
//! buffer is never written and every flush from then on waits for it
//! forever (`make_stable_inner`), and so would dropping the `Db`. Either
//! way, what was written since the last flush that worked is not on disk,
//! and only a new process can open the directory again (the file lock
//! stays with the stuck `Db`). So the store does not call sled's flush
//! again: it answers every flush with the error, and the broker refuses
//! what needs the store (`health.rs`) until it is restarted. The margin and
//! the reserve file (`space.rs`, `reserve.rs`) exist so that this does not
//! happen.

use std::path::Path;

use parking_lot::Mutex;

use super::StoreError;

/// Opens sled, waiting up to 2 s for a lock that a just-closed store (in
/// this process: sled releases it from a background thread) still holds.
pub(super) fn open_db(dir: &Path) -> Result<sled::Db, String> {
    for _ in 0..40 {
        match sled::Config::new().path(dir).open() {
            // sled reports a held lock as ErrorKind::Other with this text.
            Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            other => return other.map_err(|e| e.to_string()),
        }
    }
    // Held longer than a just-closed store in this process holds it: it
    // is another roomq's (not sled's `WouldBlock`).
    Err("another roomq is using this data_dir (sled holds a lock on it); stop it, or give this one another `data_dir` (`--data-dir`), or `--memory`".into())
}

/// Whether the `Db` returned an I/O error on a write: then it is not
/// flushed again.
#[derive(Default)]
pub(super) struct Broken(Mutex<Option<String>>);

impl Broken {
    /// Records `result`'s I/O error, if any; passes it on.
    pub(super) fn note<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(StoreError::Io(error)) = &result {
            let mut broken = self.0.lock();
            if broken.is_none() {
                tracing::error!(
                    %error,
                    "sled returned an I/O error: it cannot write again in this process; restart the broker once the disk has room"
                );
                *broken = Some(error.clone());
            }
        }
        result
    }

    /// Drops `trees` (sled's trees), unless the `Db` is broken: dropping a
    /// tree flushes it, which never returns on a broken `Db`, and holds
    /// sled's lock against batches, which is global, so every sled batch in
    /// the process would wait forever. Then they are left to the process's
    /// end.
    pub(super) fn drop_unless_broken<T>(&self, trees: T) {
        if self.0.lock().is_some() {
            std::mem::forget(trees);
        }
    }

    /// The error that broke the `Db`, as the answer to a flush.
    pub(super) fn check(&self) -> Result<(), StoreError> {
        match self.0.lock().as_ref() {
            None => Ok(()),
            Some(error) => Err(StoreError::Io(format!(
                "{error} (sled cannot write again after this error: restart the broker once the disk has room)"
            ))),
        }
    }
}
