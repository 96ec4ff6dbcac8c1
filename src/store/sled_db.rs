//! The rules for holding a `sled::Db` (0.34): how it is opened, and that
//! one which returned an I/O error is never flushed again: the store is
//! reopened instead, once the disk has room.
//!
//! Why: after a write hit a full disk sled cannot go on. An I/O error
//! while it writes its log is kept (`set_global_error`, in the `Db`'s
//! `Config`): every later write and flush of that `Db` fails with it, in
//! this process. (A value over its blob threshold, about 128 KiB, is
//! written to a file of its own while it holds a place in the log buffer;
//! when that write failed, sled 0.34.7 returned without giving the place
//! back, so every later flush waited forever, and so did dropping the
//! `Db`. `vendor/sled` fixes that: `vendor/sled/ROOMQ-PATCHES.md`.)
//!
//! So on an I/O error the store stops using that `Db` (`Broken`): writes
//! and flushes fail at once. The flusher keeps trying (`monitored.rs`):
//! once the disk has room again (the margin and the reserve of `space.rs`
//! and `reserve.rs`, and at least `REOPEN_MIN_FREE`), the old `Db` and
//! every tree handle are dropped (on a thread of their own: a broken
//! `Db` may take its time) and the directory is opened anew, in place,
//! behind the same `SledStore` (its users keep their `Arc<dyn Store>`).
//! What was written since the last flush that worked is lost (sled's
//! recovery may keep a part of it); none of it was acknowledged (PUBACK
//! after the flush) or delivered (room messages after their commit). The
//! group commit learns of the reopen (`Store::reopens`) and never reports
//! those writes durable (`group_commit.rs`: their acknowledgements are
//! refused); the chat drops their room messages, undoes their `prev`
//! links and forgets their msg-ids, or delivers one the new `Db` has after
//! all (`chat/commit.rs`); a room's `seq` goes on above them; the
//! journal of persistent sessions goes on from its memory (no body id is
//! reused, `journal.rs`), and connected sessions write their records
//! again (`broker/tasks.rs`). Not undone: other writes of that window
//! (a retained message, a room event's effect, an offline session's
//! record) stay as they are in memory until the next restart reads the
//! disk; none of them was acknowledged either.

use std::path::Path;

use std::sync::atomic::Ordering;

use parking_lot::Mutex;

use super::journal::Journal;
use super::{StoreError, FORMAT_VERSION};

/// The page cache of a store opened without a size (`store_cache_bytes`'s
/// default): enough for the pages of recent room logs and the session
/// records a busy broker reads again and again (everything else it needs
/// often is in roomq's own memory: room heads, retained messages, queues),
/// where sled's own default, 1 GiB, lets a client that reads old history
/// grow the process by up to that much, against the aim of a few KB per
/// connection.
pub const DEFAULT_CACHE_BYTES: u64 = 64 << 20;

/// The smallest page cache accepted: sled panics below 256 bytes, and a
/// cache smaller than a few of its 512 KiB segments reads nearly every
/// page from disk.
pub const MIN_CACHE_BYTES: u64 = 1 << 20;

/// Opens sled with a page cache of `cache_bytes`, waiting up to 2 s for a
/// lock that a just-closed store (in this process: sled releases it from a
/// background thread) still holds.
pub(super) fn open_db(dir: &Path, cache_bytes: u64) -> Result<sled::Db, String> {
    if cache_bytes < MIN_CACHE_BYTES {
        return Err(format!(
            "`store_cache_bytes` is {cache_bytes}: it must be at least {MIN_CACHE_BYTES} (1 MiB)"
        ));
    }
    for _ in 0..40 {
        match sled::Config::new().path(dir).cache_capacity(cache_bytes).open() {
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
pub(super) struct Broken {
    error: Mutex<Option<String>>,
    /// `error.is_some()`, read on every write without the lock.
    flag: std::sync::atomic::AtomicBool,
}

impl Broken {
    /// Records `result`'s I/O error, if any; passes it on.
    pub(super) fn note<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(StoreError::Io(error)) = &result {
            let mut broken = self.error.lock();
            if broken.is_none() {
                self.flag.store(true, Ordering::Release);
                tracing::error!(
                    %error,
                    "sled returned an I/O error: this database cannot write again; the store is reopened once the disk has room (what was written since the last flush that worked is lost: it was not acknowledged)"
                );
                *broken = Some(error.clone());
            }
        }
        result
    }

    /// Whether the `Db` returned an I/O error (it is to be reopened).
    pub(super) fn is_broken(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }

    /// The `Db` was replaced by a new one.
    pub(super) fn clear(&self) {
        let mut broken = self.error.lock();
        *broken = None;
        self.flag.store(false, Ordering::Release);
    }

    /// Drops `trees` (sled's trees): at once, or, when the `Db` is
    /// broken, on a thread of its own, so that a close or a reopen never
    /// waits for what sled does on drop (it flushes).
    pub(super) fn drop_trees<T: Send + 'static>(&self, trees: T) {
        if !self.is_broken() {
            drop(trees);
            return;
        }
        let spawned = std::thread::Builder::new()
            .name("roomq-sled-drop".into())
            .spawn(move || drop(trees));
        if let Err(error) = spawned {
            // The trees were dropped with the closure that owned them.
            tracing::warn!(%error, "cannot start a thread to drop the broken sled database");
        }
    }

    /// The error that broke the `Db`, as the answer to a flush.
    pub(super) fn check(&self) -> Result<(), StoreError> {
        if !self.is_broken() {
            return Ok(());
        }
        match self.error.lock().as_ref() {
            None => Ok(()),
            Some(error) => Err(StoreError::Io(format!(
                "{error} (sled cannot write again after this error: reopening the store once the disk has room)"
            ))),
        }
    }
}

/// Free bytes a reopen waits for besides the margin: two of sled's 512 KiB
/// segments (opening may start a new one, and the first writes need one).
pub(super) const REOPEN_MIN_FREE: u64 = 1 << 20;

/// Whether `dir`'s file system has room to reopen the store; if not, why.
pub(super) fn room_to_reopen(dir: &Path) -> Result<(), StoreError> {
    match fs2::available_space(dir) {
        Ok(free) if free >= REOPEN_MIN_FREE => Ok(()),
        Ok(free) => Err(StoreError::Io(format!(
            "{free} bytes free on the data directory's file system: waiting for {REOPEN_MIN_FREE} to reopen the store"
        ))),
        Err(e) => Err(StoreError::Io(format!("cannot read the free disk space to reopen the store: {e}"))),
    }
}

/// The handles of one open `Db`: all dropped before it is opened again.
pub(super) struct Trees {
    pub(super) journal: Journal,
    pub(super) db: sled::Db,
    pub(super) retained: sled::Tree,
    pub(super) sessions: sled::Tree,
    pub(super) qos2_in: sled::Tree,
    pub(super) room_log: sled::Tree,
    pub(super) room_heads: sled::Tree,
    pub(super) room_openers: sled::Tree,
    /// Reactions apart from their messages (`sled_reactions.rs`).
    pub(super) reactions: sled::Tree,
    /// Ranges of reactions whose messages were removed, to remove in
    /// chunks (`sled_reactions.rs`).
    pub(super) reaction_purges: sled::Tree,
    /// Edit bodies of deleted messages still to empty, a step at a time
    /// (`Store::set_edit_purge`): room + message seq → `EditPurge`.
    pub(super) edit_purges: sled::Tree,
    pub(super) dedup: sled::Tree,
    pub(super) sanctions: sled::Tree,
    pub(super) alert_counters: sled::Tree,
    pub(super) meta: sled::Tree,
}

/// Opens (or creates) the trees in `dir`, with a page cache of
/// `cache_bytes`. Refuses a directory that holds another format, or data
/// without a format mark, without changing it.
pub(super) fn open_trees(dir: &Path, cache_bytes: u64) -> Result<Trees, StoreError> {
    let path = dir.display().to_string();
    let open_err = |reason: String| StoreError::Open {
        path: path.clone(),
        reason,
    };
    std::fs::create_dir_all(dir).map_err(|e| open_err(e.to_string()))?;
    let db = open_db(dir, cache_bytes).map_err(open_err)?;
    let meta = db.open_tree("meta").map_err(|e| open_err(e.to_string()))?;
    let tree = |name: &str| db.open_tree(name).map_err(|e| open_err(e.to_string()));
    let store = Trees {
        journal: Journal::open(&db).map_err(|e| open_err(e.to_string()))?,
        retained: tree("retained")?,
        sessions: tree("sessions")?,
        qos2_in: tree("qos2_in")?,
        room_log: tree("room_log")?,
        room_heads: tree("room_heads")?,
        room_openers: tree("room_openers")?,
        reactions: tree("reactions")?,
        reaction_purges: tree("reaction_purges")?,
        edit_purges: tree("edit_purges")?,
        dedup: tree("dedup")?,
        sanctions: tree("sanctions")?,
        meta: meta.clone(),
        alert_counters: tree("alert_counters")?,
        db,
    };
    match meta.get("format").map_err(|e| open_err(e.to_string()))? {
        Some(found) if found.as_ref() == FORMAT_VERSION.as_bytes() => {
            super::migrate::drop_old_trees(&store.db).map_err(|e| open_err(e.to_string()))?;
        }
        Some(found) if found.as_ref() == super::migrate::PREVIOUS_FORMAT.as_bytes() => {
            super::migrate::from_store_3(&store.db, &meta, &store.journal.bodies)
                .map_err(|e| open_err(e.to_string()))?;
        }
        Some(found) => {
            return Err(StoreError::WrongFormat {
                path,
                found: String::from_utf8_lossy(&found).into_owned(),
            })
        }
        None => {
            let empty = store.retained.is_empty() && store.sessions.is_empty() && store.journal.is_empty();
            if !empty {
                return Err(StoreError::WrongFormat {
                    path,
                    found: "no format mark".into(),
                });
            }
            meta.insert("format", FORMAT_VERSION.as_bytes())
                .map_err(|e| open_err(e.to_string()))?;
            store.db.flush().map_err(|e| open_err(e.to_string()))?;
        }
    }
    Ok(store)
}
