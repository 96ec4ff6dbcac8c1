//! Message bodies of persistent sessions' queues, each stored once on sled.
//!
//! A QoS 1/2 message queued for N offline sessions is one body (`bodies`
//! tree: id → `MessageRecord`) and N small queue records that name it
//! (`journal.rs`). Before, every session's record held a copy: one 15 MiB
//! publish to 60 sessions took 1.6 GiB of disk, and as much memory after a
//! restart.
//!
//! The reference counts live in memory only: they are rebuilt from the
//! queue records when the sessions are loaded, so no count is ever written
//! (a count on disk would cost a write per reference and could disagree
//! with the records after a crash). A flush writes new bodies before the
//! records that name them, and deletes bodies after the records that let
//! them go, so a crash can leave a body that nothing names (removed at the
//! next start, `remove_orphans`), never a record without its body.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use super::records::{decode, encode_sized};
use super::{MessageRecord, StoreError};

fn io(e: sled::Error) -> StoreError {
    StoreError::Io(e.to_string())
}

pub(super) fn key(id: u64) -> [u8; 8] {
    id.to_be_bytes()
}

struct Body {
    /// Queue records (written or not yet) that name it.
    refs: usize,
    /// The message until a flush writes it; `None` once on disk.
    unwritten: Option<MessageRecord>,
}

/// What letting go of a reference left.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Released {
    /// Other records still name it (or it was not known).
    InUse,
    /// That was the last reference to a body on disk: delete it with the
    /// next flush, unless something names it again before.
    Unreferenced,
}

/// What `Bodies` keeps in memory, carried across a reopen.
pub(super) struct BodiesMemory {
    table: HashMap<u64, Body>,
    next: u64,
}

pub(super) struct Bodies {
    tree: sled::Tree,
    /// The next id to hand out; starts above every id on disk.
    next: AtomicU64,
    /// Every body some record names, with its count. One lock: taken
    /// briefly per queued message, never while another lock is taken.
    table: Mutex<HashMap<u64, Body>>,
}

impl Bodies {
    pub(super) fn open(db: &sled::Db) -> Result<Bodies, sled::Error> {
        let tree = db.open_tree("bodies")?;
        let last = match tree.last()? {
            Some((k, _)) => k.as_ref().try_into().map(u64::from_be_bytes).unwrap_or(0),
            None => 0,
        };
        Ok(Bodies {
            tree,
            next: AtomicU64::new(last + 1),
            table: Mutex::default(),
        })
    }

    /// Its counts and next id, to carry across a reopen (`Journal::take_memory`).
    pub(super) fn take_memory(&self) -> BodiesMemory {
        BodiesMemory {
            table: std::mem::take(&mut *self.table.lock()),
            next: self.next.load(Ordering::Acquire),
        }
    }

    /// Goes on from `memory` (a reopen): no id is handed out twice.
    pub(super) fn restore(&self, memory: BodiesMemory) {
        *self.table.lock() = memory.table;
        self.next.fetch_max(memory.next, Ordering::AcqRel);
    }

    pub(super) fn tree(&self) -> &sled::Tree {
        &self.tree
    }

    pub(super) fn new_id(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// One more record names `id`; returns true when the body is new, so
    /// the caller lists it for the next flush to write.
    pub(super) fn refer(&self, id: u64, message: impl FnOnce() -> MessageRecord) -> bool {
        let mut table = self.table.lock();
        match table.get_mut(&id) {
            Some(body) => {
                body.refs += 1;
                false
            }
            None => {
                table.insert(
                    id,
                    Body {
                        refs: 1,
                        unwritten: Some(message()),
                    },
                );
                true
            }
        }
    }

    /// A record on disk names `id` (loading the sessions).
    pub(super) fn count_stored(&self, id: u64) {
        let mut table = self.table.lock();
        table
            .entry(id)
            .or_insert(Body {
                refs: 0,
                unwritten: None,
            })
            .refs += 1;
    }

    /// One record fewer names `id`. A body never written is forgotten at
    /// once; one on disk is left for the caller to delete.
    pub(super) fn release(&self, id: u64) -> Released {
        let mut table = self.table.lock();
        let Some(body) = table.get_mut(&id) else {
            return Released::InUse;
        };
        body.refs = body.refs.saturating_sub(1);
        if body.refs > 0 {
            return Released::InUse;
        }
        if body.unwritten.is_some() {
            table.remove(&id);
            return Released::InUse;
        }
        Released::Unreferenced
    }

    /// Adds the bodies among `ids` that are still unwritten and named to
    /// `batch`, and counts them as on disk.
    pub(super) fn write(&self, ids: Vec<u64>, batch: &mut sled::Batch) -> Result<(), StoreError> {
        let mut table = self.table.lock();
        for id in ids {
            let Some(body) = table.get_mut(&id) else {
                continue;
            };
            if let Some(message) = body.unwritten.take() {
                let hint = message.payload.len() + message.topic.len() + 64;
                batch.insert(&key(id), encode_sized(&message, hint)?);
            }
        }
        Ok(())
    }

    /// Adds the bodies among `ids` that nothing names any more to `batch`
    /// (as removals) and forgets them.
    pub(super) fn delete_unreferenced(&self, ids: impl IntoIterator<Item = u64>, batch: &mut sled::Batch) {
        let mut table = self.table.lock();
        for id in ids {
            if table
                .get(&id)
                .is_some_and(|b| b.refs == 0 && b.unwritten.is_none())
            {
                table.remove(&id);
                batch.remove(&key(id));
            }
        }
    }

    /// Body `id`: from memory while unwritten, else from disk.
    pub(super) fn load(&self, id: u64) -> Result<Option<MessageRecord>, StoreError> {
        if let Some(body) = self.table.lock().get(&id) {
            if let Some(message) = &body.unwritten {
                return Ok(Some(message.clone()));
            }
        }
        match self.tree.get(key(id)).map_err(io)? {
            Some(bytes) => decode(&key(id), &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Deletes the bodies on disk that no record names (left by a crash
    /// between a flush's writes). Called once the sessions are loaded.
    pub(super) fn remove_orphans(&self) -> Result<usize, StoreError> {
        let mut batch = sled::Batch::default();
        let mut orphans = 0;
        {
            let table = self.table.lock();
            for k in self.tree.iter().keys() {
                let k = k.map_err(io)?;
                let named = k
                    .as_ref()
                    .try_into()
                    .map(u64::from_be_bytes)
                    .is_ok_and(|id| table.contains_key(&id));
                if !named {
                    batch.remove(k);
                    orphans += 1;
                }
            }
        }
        self.tree.apply_batch(batch).map_err(io)?;
        Ok(orphans)
    }
}
