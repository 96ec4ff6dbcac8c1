//! The store on disk, in sled 0.34.
//!
//! Trees: `meta` (format version), `retained` (topic → message),
//! `sessions` (client id → session), the journal's trees (see `journal.rs`)
//! and `bodies` (the messages its records name, each once: `bodies.rs`),
//! `qos2_in` (client id + packet id), `room_log` (room + seq → message),
//! `room_heads` (room → last seq; room + NUL → the last `seq` handed
//! out without an entry, or reserved with `durability = "buffered"`),
//! `room_openers` (room → the account whose post opened it), `reactions`
//! (`sled_reactions.rs`), `edit_purges` (room + seq of a deleted message →
//! its edit bodies still to empty), `dedup` (room, sender, msg-id → seq), and in `meta`
//! the `seq` floor of rooms opened after others were forgotten, and
//! `sanctions` (kind, room, user → a ban or mute). Keys of per-session
//! trees start with the client id's length (u16, big endian) and bytes, so a
//! prefix scan finds one session's records.
//!
//! sled's `flush` writes with `sync_file_range` on Linux: it survives a
//! crash of the process (SIGKILL), not necessarily a power loss.
//!
//! Message records of persistent sessions go through the [`Journal`]:
//! one sled write per session per flush, not one per message, and one body
//! per message, not one per session.

use std::path::{Path, PathBuf};

use super::journal::{seq_key, session_prefix};
use super::records::{decode, encode, encode_sized};
use super::sled_db::{open_trees, Broken, Trees};
use super::sled_keys::{reservation_key, u64_of};
use super::sled_rooms::ROOM_SEQ_FLOOR;
use super::{
    DedupRecord, EditPurge, LoadedSession, MessageRecord, QueuedRecord, QueuedRef, Reactions, RoomHead,
    RoomRecord, SanctionRecord, SessionRecord, Store, StoreError,
};
use std::sync::atomic::{AtomicU64, Ordering};

/// A sled database in the data directory.
pub struct SledStore {
    /// `None` once closed. A read lock per call costs little next to sled.
    open: parking_lot::RwLock<Option<Trees>>,
    /// Write operations so far; journal writes count once per message.
    writes: AtomicU64,
    /// Bytes of keys and values written so far (`Store::bytes_written`).
    bytes: AtomicU64,
    /// Set by the first I/O error of a write: not flushed again until the
    /// store is reopened (`sled_db.rs`).
    broken: Broken,
    /// The data directory and the page cache size, to reopen it.
    dir: PathBuf,
    cache_bytes: u64,
    /// How many times the `Db` was reopened after an I/O error.
    reopens: AtomicU64,
    /// The old journal's memory while a reopen has not opened the new
    /// `Db` yet; held for the whole reopen.
    carried: parking_lot::Mutex<Option<super::journal::JournalMemory>>,
    /// Set by `close`: a reopen in progress does not open it again.
    closed: std::sync::atomic::AtomicBool,
}

fn io(e: sled::Error) -> StoreError {
    StoreError::Io(e.to_string())
}

/// About what a journal record of `client_id` takes (it is encoded when
/// the journal writes it, at the next flush).
fn queued_size(client_id: &str, message: &QueuedRecord) -> usize {
    client_id.len() + message.message.topic.len() + message.message.payload.len() + 64
}

fn qos2_key(client_id: &str, packet_id: u16) -> Vec<u8> {
    let mut key = session_prefix(client_id);
    key.extend_from_slice(&packet_id.to_be_bytes());
    key
}

impl SledStore {
    /// Opens (or creates) the store in `dir`, with the default page cache
    /// (`DEFAULT_CACHE_BYTES`, as `store_cache_bytes`). Refuses a directory
    /// that holds another format, or data without a format mark, without
    /// changing it.
    pub fn open(dir: &Path) -> Result<SledStore, StoreError> {
        Self::open_with_cache(dir, super::sled_db::DEFAULT_CACHE_BYTES)
    }

    /// [`SledStore::open`] with a page cache of `cache_bytes`
    /// (`store_cache_bytes`, at least 1 MiB).
    pub fn open_with_cache(dir: &Path, cache_bytes: u64) -> Result<SledStore, StoreError> {
        let store = open_trees(dir, cache_bytes)?;
        Ok(SledStore {
            open: parking_lot::RwLock::new(Some(store)),
            writes: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            broken: Broken::default(),
            dir: dir.to_path_buf(),
            cache_bytes,
            reopens: AtomicU64::new(0),
            carried: parking_lot::Mutex::default(),
            closed: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The page cache sled was opened with, as sled itself holds it (its
    /// running configuration, read through `Db::context`, which sled 0.34
    /// leaves public but undocumented); `None` while closed.
    pub fn cache_capacity(&self) -> Option<u64> {
        self.with(|t| Ok(t.db.context.cache_capacity)).ok()
    }

    /// Counts `bytes` written (keys and values).
    fn count_bytes(&self, bytes: usize) {
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    fn count_write(&self) {
        self.writes.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn with<T>(&self, f: impl FnOnce(&Trees) -> Result<T, StoreError>) -> Result<T, StoreError> {
        match self.open.read().as_ref() {
            Some(trees) => f(trees),
            None => Err(StoreError::Closed),
        }
    }

    /// `with` for a write: an I/O error breaks the `Db` (`sled_db.rs`).
    /// A broken `Db` takes no more writes: they would be lost with it.
    fn write<T>(&self, f: impl FnOnce(&Trees) -> Result<T, StoreError>) -> Result<T, StoreError> {
        self.broken.check()?;
        self.broken.note(self.with(f))
    }
}

impl Store for SledStore {
    fn put_retained(&self, topic: &str, message: Option<&MessageRecord>) -> Result<(), StoreError> {
        self.count_write();
        self.write(|t| match message {
            Some(m) => {
                let value = encode(m)?;
                self.count_bytes(topic.len() + value.len());
                t.retained.insert(topic.as_bytes(), value).map(drop).map_err(io)
            }
            None => t.retained.remove(topic.as_bytes()).map(drop).map_err(io),
        })
    }

    fn load_retained(&self) -> Result<Vec<MessageRecord>, StoreError> {
        self.with(|t| {
            t.retained
                .iter()
                .map(|r| {
                    let (k, v) = r.map_err(io)?;
                    decode(&k, &v)
                })
                .collect()
        })
    }

    fn put_session(&self, client_id: &str, session: &SessionRecord) -> Result<(), StoreError> {
        self.count_write();
        self.write(|t| {
            let value = encode(session)?;
            self.count_bytes(client_id.len() + value.len());
            t.sessions
                .insert(client_id.as_bytes(), value)
                .map(drop)
                .map_err(io)
        })
    }

    fn remove_session(&self, client_id: &str) -> Result<(), StoreError> {
        self.write(|t| {
            t.sessions.remove(client_id.as_bytes()).map_err(io)?;
            t.journal.remove_session(client_id)?;
            let mut batch = sled::Batch::default();
            for key in t.qos2_in.scan_prefix(session_prefix(client_id)).keys() {
                batch.remove(key.map_err(io)?);
            }
            t.qos2_in.apply_batch(batch).map_err(io)
        })
    }

    fn load_sessions(&self) -> Result<Vec<LoadedSession>, StoreError> {
        self.with(|t| {
            let mut out = Vec::new();
            for entry in t.sessions.iter() {
                let (key, value) = entry.map_err(io)?;
                let client_id = String::from_utf8_lossy(&key).into_owned();
                let record = super::records::decode_session(&key, &value)?;
                let prefix = session_prefix(&client_id);
                let messages = t.journal.load(&client_id)?;
                let incoming_qos2 = t
                    .qos2_in
                    .scan_prefix(&prefix)
                    .keys()
                    .filter_map(|k| k.ok())
                    .filter_map(|k| {
                        k.get(prefix.len()..)
                            .and_then(|s| s.try_into().ok())
                            .map(u16::from_be_bytes)
                    })
                    .collect();
                out.push(LoadedSession {
                    client_id,
                    record,
                    messages,
                    incoming_qos2,
                });
            }
            let orphans = t.journal.bodies.remove_orphans()?;
            if orphans > 0 {
                tracing::info!(orphans, "removed message bodies no queued message refers to");
            }
            Ok(out)
        })
    }

    fn new_body_id(&self) -> u64 {
        self.with(|t| Ok(t.journal.bodies.new_id())).unwrap_or(0)
    }

    fn put_message(
        &self,
        client_id: &str,
        seq: u64,
        body: u64,
        message: QueuedRecord,
    ) -> Result<(), StoreError> {
        self.count_write();
        self.count_bytes(queued_size(client_id, &message));
        let entry = QueuedRef::of(&message, body);
        self.write(|t| t.journal.put(client_id, seq, entry, || message.message))
    }

    fn update_message(
        &self,
        client_id: &str,
        seq: u64,
        body: u64,
        message: QueuedRecord,
    ) -> Result<(), StoreError> {
        self.count_write();
        self.count_bytes(queued_size(client_id, &message));
        self.write(|t| t.journal.update(client_id, seq, QueuedRef::of(&message, body)))
    }

    fn set_packet_id(
        &self,
        client_id: &str,
        seq: u64,
        _body: u64,
        packet_id: u16,
        _record: &dyn Fn() -> QueuedRecord,
    ) -> Result<(), StoreError> {
        self.write(|t| t.journal.set_packet_id(client_id, seq, packet_id))
    }

    fn load_body(&self, body: u64) -> Result<Option<MessageRecord>, StoreError> {
        self.with(|t| t.journal.bodies.load(body))
    }

    fn remove_message(&self, client_id: &str, seq: u64) -> Result<(), StoreError> {
        self.write(|t| {
            t.journal.remove(client_id, seq);
            Ok(())
        })
    }

    fn put_incoming_qos2(&self, client_id: &str, packet_id: u16) -> Result<(), StoreError> {
        self.count_write();
        self.write(|t| {
            t.qos2_in
                .insert(qos2_key(client_id, packet_id), &[])
                .map(drop)
                .map_err(io)
        })
    }

    fn remove_incoming_qos2(&self, client_id: &str, packet_id: u16) -> Result<(), StoreError> {
        self.write(|t| {
            t.qos2_in
                .remove(qos2_key(client_id, packet_id))
                .map(drop)
                .map_err(io)
        })
    }

    fn append_room(&self, room: &str, seq: u64, record: &RoomRecord) -> Result<(), StoreError> {
        self.count_write();
        let hint = record.payload.len() + record.sender.len() + 48;
        self.write(|t| {
            let value = encode_sized(record, hint)?;
            self.count_bytes(2 * room.len() + value.len() + 24);
            t.room_log.insert(seq_key(room, seq), value).map_err(io)?;
            t.room_heads
                .insert(room.as_bytes(), &seq.to_be_bytes())
                .map(drop)
                .map_err(io)
        })
    }

    fn rewrite_room(&self, room: &str, seq: u64, record: &RoomRecord) -> Result<(), StoreError> {
        self.count_write();
        self.with(|t| {
            let value = encode_sized(record, record.payload.len() + record.sender.len() + 48)?;
            self.count_bytes(room.len() + value.len() + 8);
            // Only while the entry is there: a trimmed one stays gone.
            t.room_log
                .fetch_and_update(seq_key(room, seq), |old| old.map(|_| value.clone()))
                .map(drop)
                .map_err(io)
        })
    }

    fn room_range(
        &self,
        room: &str,
        after: u64,
        before: u64,
        limit: usize,
        newest: bool,
    ) -> Result<Vec<(u64, RoomRecord)>, StoreError> {
        self.with(|t| t.room_range(room, after, before, limit, newest))
    }

    fn reserve_room_seqs(&self, room: &str, up_to: u64) -> Result<(), StoreError> {
        self.count_write();
        self.write(|t| {
            t.room_heads
                .insert(reservation_key(room), &up_to.to_be_bytes())
                .map(drop)
                .map_err(io)
        })
    }

    fn room_heads(&self) -> Result<Vec<RoomHead>, StoreError> {
        self.with(|t| t.room_heads())
    }

    fn trim_room(&self, room: &str, below: u64) -> Result<u64, StoreError> {
        self.count_write();
        self.write(|t| t.trim_room(room, below))
    }

    fn room_len(&self, room: &str) -> Result<u64, StoreError> {
        self.with(|t| t.room_len(room))
    }

    fn reactions(&self, room: &str, seq: u64, reactor: Option<&str>) -> Result<Reactions, StoreError> {
        self.with(|t| super::sled_reactions::read(&t.reactions, room, seq, reactor))
    }

    fn set_reaction(
        &self,
        room: &str,
        seq: u64,
        emoji: &str,
        reactor: &str,
        on: bool,
    ) -> Result<(), StoreError> {
        self.count_write();
        self.write(|t| {
            let bytes = super::sled_reactions::set(&t.reactions, room, seq, emoji, reactor, on)?;
            self.count_bytes(bytes);
            Ok(())
        })
    }

    fn clear_reactions(&self, room: &str, seq: u64) -> Result<(), StoreError> {
        self.count_write();
        self.write(|t| {
            super::sled_reactions::queue_purge(&t.reaction_purges, room, seq, seq.saturating_add(1))
        })
    }

    fn purge_reactions(&self, max_keys: usize) -> Result<usize, StoreError> {
        let removed =
            self.write(|t| super::sled_reactions::purge(&t.reactions, &t.reaction_purges, max_keys))?;
        // Counted only when it wrote: it is called every second.
        if removed > 0 {
            self.count_write();
        }
        Ok(removed)
    }

    fn set_edit_purge(&self, room: &str, message: u64, edits: &[u64]) -> Result<(), StoreError> {
        self.count_write();
        self.write(|t| {
            let key = seq_key(room, message);
            if edits.is_empty() {
                return t.edit_purges.remove(key).map(drop).map_err(io);
            }
            let entry = EditPurge {
                room: room.to_string(),
                message,
                edits: edits.to_vec(),
            };
            let value = encode_sized(&entry, room.len() + 9 * edits.len() + 16)?;
            self.count_bytes(key.len() + value.len());
            t.edit_purges.insert(key, value).map(drop).map_err(io)
        })
    }

    fn edit_purges(&self, max: usize) -> Result<Vec<EditPurge>, StoreError> {
        self.with(|t| {
            t.edit_purges
                .iter()
                .take(max)
                .map(|entry| {
                    let (key, value) = entry.map_err(io)?;
                    decode(&key, &value)
                })
                .collect()
        })
    }

    fn set_room_opener(&self, room: &str, account: &str) -> Result<(), StoreError> {
        self.count_write();
        self.write(|t| {
            t.room_openers
                .insert(room.as_bytes(), account.as_bytes())
                .map(drop)
                .map_err(io)
        })
    }

    fn forget_room(&self, room: &str, seq_floor: u64) -> Result<(), StoreError> {
        self.count_write();
        self.write(|t| t.forget_room(room, seq_floor))
    }

    fn room_seq_floor(&self) -> Result<u64, StoreError> {
        self.with(|t| match t.meta.get(ROOM_SEQ_FLOOR).map_err(io)? {
            Some(v) => u64_of(ROOM_SEQ_FLOOR.as_bytes(), &v),
            None => Ok(0),
        })
    }

    fn put_dedup(&self, key: &str, entry: Option<DedupRecord>) -> Result<(), StoreError> {
        self.count_write();
        self.write(|t| match entry {
            Some(e) => {
                let value = encode(&e)?;
                self.count_bytes(key.len() + value.len());
                t.dedup.insert(key.as_bytes(), value).map(drop).map_err(io)
            }
            None => t.dedup.remove(key.as_bytes()).map(drop).map_err(io),
        })
    }

    fn load_dedup(&self) -> Result<Vec<(String, DedupRecord)>, StoreError> {
        self.with(|t| {
            t.dedup
                .iter()
                .map(|entry| {
                    let (key, value) = entry.map_err(io)?;
                    Ok((String::from_utf8_lossy(&key).into_owned(), decode(&key, &value)?))
                })
                .collect()
        })
    }

    fn put_sanction(&self, key: &str, entry: Option<&SanctionRecord>) -> Result<(), StoreError> {
        self.count_write();
        self.write(|t| match entry {
            Some(e) => t
                .sanctions
                .insert(key.as_bytes(), encode(e)?)
                .map(drop)
                .map_err(io),
            None => t.sanctions.remove(key.as_bytes()).map(drop).map_err(io),
        })
    }

    fn load_sanctions(&self) -> Result<Vec<(String, SanctionRecord)>, StoreError> {
        self.with(|t| {
            t.sanctions
                .iter()
                .map(|entry| {
                    let (key, value) = entry.map_err(io)?;
                    Ok((String::from_utf8_lossy(&key).into_owned(), decode(&key, &value)?))
                })
                .collect()
        })
    }

    fn put_alert_counter(&self, device: &str, counter: u64) -> Result<(), StoreError> {
        self.count_write();
        self.write(|t| {
            t.alert_counters
                .insert(device.as_bytes(), &counter.to_be_bytes())
                .map(drop)
                .map_err(io)
        })
    }

    fn remove_alert_counter(&self, device: &str) -> Result<(), StoreError> {
        self.count_write();
        self.write(|t| t.alert_counters.remove(device.as_bytes()).map(drop).map_err(io))
    }

    fn load_alert_counters(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.with(|t| {
            t.alert_counters
                .iter()
                .map(|entry| {
                    let (key, value) = entry.map_err(io)?;
                    let counter = <[u8; 8]>::try_from(value.as_ref()).map_err(|_| StoreError::Corrupt {
                        key: String::from_utf8_lossy(&key).into_owned(),
                        reason: "an alert counter is not 8 bytes".into(),
                    })?;
                    Ok((
                        String::from_utf8_lossy(&key).into_owned(),
                        u64::from_be_bytes(counter),
                    ))
                })
                .collect()
        })
    }

    fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.broken.check()?;
        let db = self.write(|t| {
            t.journal.write_pending()?;
            Ok(t.db.clone())
        })?;
        // Outside the lock: a close never waits for a flush.
        self.broken.note(db.flush().map(drop).map_err(io))
    }

    fn size_on_disk(&self) -> u64 {
        self.with(|t| Ok(t.db.size_on_disk().unwrap_or(0))).unwrap_or(0)
    }

    fn bytes_written(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    fn close(&self) {
        let _ = self.flush();
        let trees = {
            let mut open = self.open.write();
            self.closed.store(true, Ordering::Release);
            open.take()
        };
        self.broken.drop_trees(trees);
    }

    fn needs_reopen(&self) -> bool {
        self.broken.is_broken()
    }

    fn reopen(&self) -> Result<bool, StoreError> {
        // One reopen at a time (the flusher, or a flush of `durability =
        // "buffered"`); it holds the old journal's memory meanwhile.
        let Some(mut carried) = self.carried.try_lock() else {
            return Ok(false);
        };
        if !self.broken.is_broken() {
            return Ok(false);
        }
        super::sled_db::room_to_reopen(&self.dir)?;
        // Calls made meanwhile fail with `Closed` (publishes are refused
        // anyway); none waits for the opening.
        if let Some(old) = self.open.write().take() {
            *carried = Some(old.journal.take_memory());
            // Every handle of the old `Db` goes before the directory is
            // opened again: sled releases its lock when the last one does.
            self.broken.drop_trees(old);
        }
        // `open_db` waits for the lock the old `Db` releases.
        let trees = open_trees(&self.dir, self.cache_bytes)?;
        if let Some(memory) = carried.take() {
            trees.journal.restore(memory);
        }
        let mut open = self.open.write();
        if self.closed.load(Ordering::Acquire) {
            // Closed meanwhile (a shutdown): the new `Db` goes too.
            drop(open);
            drop(trees);
            return Err(StoreError::Closed);
        }
        *open = Some(trees);
        self.broken.clear();
        self.reopens.fetch_add(1, Ordering::AcqRel);
        Ok(true)
    }

    fn reopens(&self) -> u64 {
        self.reopens.load(Ordering::Acquire)
    }
}
