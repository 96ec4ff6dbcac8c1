//! The message journal of persistent sessions, on sled.
//!
//! A record is a reference to a message body stored once (`bodies.rs`)
//! with what is particular to the session (QoS, packet id). A message
//! record costs one sled operation per *flush*, not per message:
//! new records of a session since the last flush are written together as one
//! block (`queue_blocks`: client + first seq → [(seq, record)]). An acknowledged
//! message is recorded in its block's acked set (`acked`: client + first seq
//! → [seq]); a block whose messages are all acknowledged is deleted. A
//! record added and removed between two flushes (its subscriber acknowledged
//! it before the group commit) is never written at all, nor is its body if
//! no other record names it. QoS 2 progress goes to `queue_updates`
//! (client + seq → record), which overrides the block's copy.
//!
//! Measured on the 2-core machine: sled costs about 5 µs per operation in
//! `apply_batch`; one operation per message made it the bottleneck of
//! durable delivery.

use std::collections::{BTreeMap, HashMap, VecDeque};

use bytes::Bytes;
use parking_lot::Mutex;

use super::bodies::{Bodies, Released};
use super::records::{decode, encode};
use super::{MessageRecord, QueuedRef, StoreError};

/// The trees of records that name their body (`roomq-store-4`); those of
/// `roomq-store-3`, with a copy of the message in each record, are
/// `journal_blocks` and `journal_updates` (`migrate.rs`).
pub(super) const BLOCKS: &str = "queue_blocks";
pub(super) const UPDATES: &str = "queue_updates";

fn io(e: sled::Error) -> StoreError {
    StoreError::Io(e.to_string())
}

pub(super) fn session_prefix(client_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(2 + client_id.len() + 8);
    key.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    key.extend_from_slice(client_id.as_bytes());
    key
}

pub(super) fn seq_key(client_id: &str, seq: u64) -> Vec<u8> {
    let mut key = session_prefix(client_id);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

pub(super) fn seq_of(key: &[u8]) -> Option<u64> {
    let len = usize::from(u16::from_be_bytes([*key.first()?, *key.get(1)?]));
    Some(u64::from_be_bytes(key.get(2 + len..)?.try_into().ok()?))
}

/// Writes not yet in sled.
#[derive(Default)]
struct Pending {
    /// New records per session, in seq order, not yet encoded: a record
    /// acknowledged before the flush (the common case) is never encoded at
    /// all, and a packet-id update only replaces it. Acknowledgements mostly
    /// take the oldest, so a deque removes them in O(1).
    new: HashMap<String, VecDeque<(u64, QueuedRef)>>,
    /// Bodies first named since the last flush, to write with it.
    new_bodies: Vec<u64>,
    /// Bodies on disk that lost their last reference since the last flush.
    unreferenced: Vec<u64>,
    /// QoS 2 progress of records already in a block.
    updates: HashMap<Vec<u8>, Bytes>,
    /// Acknowledged seqs of records already in a block.
    removed: HashMap<String, Vec<u64>>,
    /// Sessions whose packet-id table changed since the last flush.
    ids_changed: std::collections::HashSet<String>,
}

impl Pending {
    /// The record `seq` of `client_id` if it is not written yet. Entries
    /// are in seq order: a binary search, not a scan (a scan per send cost
    /// a third of persistent QoS 1 fan-in).
    fn unwritten(&mut self, client_id: &str, seq: u64) -> Option<&mut (u64, QueuedRef)> {
        let entries = self.new.get_mut(client_id)?;
        let at = entries.binary_search_by_key(&seq, |(s, _)| *s).ok()?;
        entries.get_mut(at)
    }

    /// Marks the packet-id table of `client_id` for the next flush.
    fn ids_changed_for(&mut self, client_id: &str) {
        if !self.ids_changed.contains(client_id) {
            self.ids_changed.insert(client_id.to_string());
        }
    }
}

/// A block on disk.
struct Block {
    last: u64,
    live: usize,
    acked: Vec<u64>,
    has_updates: bool,
    /// (seq, body) of its records not yet acknowledged, in seq order: what
    /// an acknowledgement or the session's removal lets go of.
    bodies: Vec<(u64, u64)>,
}

impl Block {
    /// Lets go of record `seq`'s body; returns it.
    fn take_body(&mut self, seq: u64) -> Option<u64> {
        let at = self.bodies.binary_search_by_key(&seq, |(s, _)| *s).ok()?;
        Some(self.bodies.remove(at).1)
    }
}

/// What a journal keeps in memory, carried across a reopen.
pub(super) struct JournalMemory {
    ids: HashMap<String, BTreeMap<u64, u16>>,
    pending: Pending,
    index: HashMap<String, BTreeMap<u64, Block>>,
    bodies: super::bodies::BodiesMemory,
}

pub(super) struct Journal {
    pub(super) bodies: Bodies,
    blocks: sled::Tree,
    acked: sled::Tree,
    updates: sled::Tree,
    /// Per session: the packet ids of its in-flight QoS 1 records already
    /// in a block (seq → id), one sled record per session, rewritten once
    /// per flush when it changed. A per-message update of a written
    /// record would cost a sled operation per send.
    packet_ids: sled::Tree,
    /// The same tables in memory.
    ids: Mutex<HashMap<String, BTreeMap<u64, u16>>>,
    pending: Mutex<Pending>,
    /// Per session: first seq → block. Only flush, load and removal touch it.
    index: Mutex<HashMap<String, BTreeMap<u64, Block>>>,
    /// One flush (or session removal) at a time.
    flushing: Mutex<()>,
}

impl Journal {
    pub(super) fn open(db: &sled::Db) -> Result<Journal, sled::Error> {
        Ok(Journal {
            bodies: Bodies::open(db)?,
            blocks: db.open_tree(BLOCKS)?,
            acked: db.open_tree("journal_acked")?,
            updates: db.open_tree(UPDATES)?,
            packet_ids: db.open_tree("journal_packet_ids")?,
            ids: Mutex::default(),
            pending: Mutex::default(),
            index: Mutex::default(),
            flushing: Mutex::default(),
        })
    }

    pub(super) fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// Before a reopen (`sled_db.rs`): what the journal keeps in memory
    /// (block index, packet ids, body counts, the next body id, writes not
    /// made yet), for the new `Db`'s journal to go on from (`restore`).
    pub(super) fn take_memory(&self) -> JournalMemory {
        JournalMemory {
            ids: std::mem::take(&mut *self.ids.lock()),
            pending: std::mem::take(&mut *self.pending.lock()),
            index: std::mem::take(&mut *self.index.lock()),
            bodies: self.bodies.take_memory(),
        }
    }

    /// After a reopen: goes on from `memory`, so the sessions' records go
    /// on where they were and no body id is handed out twice. What the old
    /// `Db` got since the last flush that worked is not on disk: no
    /// publisher was acknowledged for it.
    pub(super) fn restore(&self, memory: JournalMemory) {
        *self.ids.lock() = memory.ids;
        *self.pending.lock() = memory.pending;
        *self.index.lock() = memory.index;
        self.bodies.restore(memory.bodies);
    }

    /// A new record naming body `record.body`; `message` is that body,
    /// taken only if the store does not hold it yet.
    pub(super) fn put(
        &self,
        client_id: &str,
        seq: u64,
        record: QueuedRef,
        message: impl FnOnce() -> MessageRecord,
    ) -> Result<(), StoreError> {
        let mut pending = self.pending.lock();
        if self.bodies.refer(record.body, message) {
            pending.new_bodies.push(record.body);
        }
        // Look up before inserting: no String allocation per message.
        match pending.new.get_mut(client_id) {
            Some(entries) => entries.push_back((seq, record)),
            None => {
                pending
                    .new
                    .insert(client_id.to_string(), VecDeque::from([(seq, record)]));
            }
        }
        Ok(())
    }

    pub(super) fn update(&self, client_id: &str, seq: u64, record: QueuedRef) -> Result<(), StoreError> {
        let mut pending = self.pending.lock();
        if let Some(entry) = pending.unwritten(client_id, seq) {
            entry.1 = record;
        } else {
            let bytes = Bytes::from(encode(&record)?);
            pending.updates.insert(seq_key(client_id, seq), bytes);
        }
        Ok(())
    }

    /// Records the packet id of an in-flight record: one not yet written
    /// just gets it; a written one goes into its session's id table.
    pub(super) fn set_packet_id(&self, client_id: &str, seq: u64, packet_id: u16) -> Result<(), StoreError> {
        {
            let mut pending = self.pending.lock();
            if let Some((_, unwritten)) = pending.unwritten(client_id, seq) {
                unwritten.packet_id = Some(packet_id);
                return Ok(());
            }
            pending.ids_changed_for(client_id);
        }
        let mut ids = self.ids.lock();
        match ids.get_mut(client_id) {
            Some(table) => {
                table.insert(seq, packet_id);
            }
            None => {
                ids.insert(client_id.to_string(), BTreeMap::from([(seq, packet_id)]));
            }
        }
        Ok(())
    }

    pub(super) fn remove(&self, client_id: &str, seq: u64) {
        let mut pending = self.pending.lock();
        if let Some(entries) = pending.new.get_mut(client_id) {
            if let Ok(pos) = entries.binary_search_by_key(&seq, |(s, _)| *s) {
                if let Some((_, record)) = entries.remove(pos) {
                    if self.bodies.release(record.body) == Released::Unreferenced {
                        pending.unreferenced.push(record.body);
                    }
                }
                return;
            }
        }
        if !pending.updates.is_empty() {
            pending.updates.remove(&seq_key(client_id, seq));
        }
        if let Some(table) = self.ids.lock().get_mut(client_id) {
            if table.remove(&seq).is_some() {
                pending.ids_changed_for(client_id);
            }
        }
        match pending.removed.get_mut(client_id) {
            Some(seqs) => seqs.push(seq),
            None => {
                pending.removed.insert(client_id.to_string(), vec![seq]);
            }
        }
    }

    /// Writes everything pending as sled batches (the caller flushes sled).
    pub(super) fn write_pending(&self) -> Result<(), StoreError> {
        let _one_at_a_time = self.flushing.lock();
        let pending = std::mem::take(&mut *self.pending.lock());
        // Bodies go first: a crash after them leaves a body nothing names
        // (removed at the next start), never a record without its body.
        let mut new_bodies = sled::Batch::default();
        self.bodies.write(pending.new_bodies, &mut new_bodies)?;
        self.bodies.tree().apply_batch(new_bodies).map_err(io)?;
        let mut unreferenced = pending.unreferenced;
        let mut batches = RecordBatches::default();
        let mut index = self.index.lock();
        index_new_blocks(&mut index, pending.new, &mut batches.blocks)?;
        stage_updates(&mut index, pending.updates, &mut batches.updates);
        for (client_id, seqs) in pending.removed {
            let Some(session) = index.get_mut(&client_id) else {
                continue;
            };
            let touched = self.mark_acked(session, &client_id, seqs, &mut unreferenced, &mut batches.updates);
            rewrite_touched(session, &client_id, touched, &mut batches)?;
        }
        drop(index);
        let packet_ids = self.packet_id_batch(pending.ids_changed)?;
        self.packet_ids.apply_batch(packet_ids).map_err(io)?;
        self.blocks.apply_batch(batches.blocks).map_err(io)?;
        self.acked.apply_batch(batches.acked).map_err(io)?;
        self.updates.apply_batch(batches.updates).map_err(io)?;
        // Bodies last: the records that named them are gone first.
        let mut gone = sled::Batch::default();
        self.bodies.delete_unreferenced(unreferenced, &mut gone);
        self.bodies.tree().apply_batch(gone).map_err(io)
    }

    /// Marks acknowledged records in their blocks and lets go of their
    /// bodies (those no other session holds go to `unreferenced`);
    /// returns the first seqs of the blocks it changed.
    fn mark_acked(
        &self,
        session: &mut BTreeMap<u64, Block>,
        client_id: &str,
        seqs: Vec<u64>,
        unreferenced: &mut Vec<u64>,
        updates: &mut sled::Batch,
    ) -> Vec<u64> {
        let mut touched = Vec::new();
        for seq in seqs {
            let Some((&first, block)) = session.range_mut(..=seq).next_back() else {
                continue;
            };
            if seq > block.last || block.acked.contains(&seq) {
                continue;
            }
            block.acked.push(seq);
            block.live = block.live.saturating_sub(1);
            if let Some(body) = block.take_body(seq) {
                if self.bodies.release(body) == Released::Unreferenced {
                    unreferenced.push(body);
                }
            }
            if block.has_updates {
                updates.remove(seq_key(client_id, seq));
            }
            touched.push(first);
        }
        touched.sort_unstable();
        touched.dedup();
        touched
    }

    /// The packet-id tables of the sessions whose ids changed, as a batch
    /// (an empty table is removed).
    fn packet_id_batch(&self, changed: std::collections::HashSet<String>) -> Result<sled::Batch, StoreError> {
        let mut packet_ids = sled::Batch::default();
        let ids = self.ids.lock();
        for client_id in changed {
            let key = session_prefix(&client_id);
            match ids.get(&client_id).filter(|t| !t.is_empty()) {
                Some(table) => packet_ids.insert(key, encode(table)?),
                None => packet_ids.remove(key),
            }
        }
        Ok(packet_ids)
    }

    /// A session's unacknowledged records, in seq order, and its index.
    pub(super) fn load(&self, client_id: &str) -> Result<Vec<(u64, QueuedRef)>, StoreError> {
        let prefix = session_prefix(client_id);
        let mut updates: HashMap<u64, sled::IVec> = HashMap::new();
        for entry in self.updates.scan_prefix(&prefix) {
            let (key, value) = entry.map_err(io)?;
            if let Some(seq) = seq_of(&key) {
                updates.insert(seq, value);
            }
        }
        let mut out = Vec::new();
        let mut session = BTreeMap::new();
        for entry in self.blocks.scan_prefix(&prefix) {
            let (key, value) = entry.map_err(io)?;
            let entries: Vec<(u64, Bytes)> = decode(&key, &value)?;
            let acked: Vec<u64> = match self.acked.get(&key).map_err(io)? {
                Some(bytes) => decode(&key, &bytes)?,
                None => Vec::new(),
            };
            let (Some(first), Some(last)) = (entries.first().map(|e| e.0), entries.last().map(|e| e.0))
            else {
                continue;
            };
            let mut live = 0;
            let mut has_updates = false;
            let mut bodies = Vec::new();
            for (seq, bytes) in entries {
                if acked.contains(&seq) {
                    continue;
                }
                live += 1;
                let record: QueuedRef = match updates.get(&seq) {
                    Some(update) => {
                        has_updates = true;
                        decode(&key, update)?
                    }
                    None => decode(&key, &bytes)?,
                };
                bodies.push((seq, record.body));
                out.push((seq, record));
            }
            session.insert(
                first,
                Block {
                    last,
                    live,
                    acked,
                    has_updates,
                    bodies,
                },
            );
        }
        for (_, body) in session.values().flat_map(|b| &b.bodies) {
            self.bodies.count_stored(*body);
        }
        // Loaded again (the contract tests do): its earlier count goes.
        if let Some(earlier) = self.index.lock().insert(client_id.to_string(), session) {
            for (_, body) in earlier.values().flat_map(|b| &b.bodies) {
                self.bodies.release(*body);
            }
        }
        if let Some(bytes) = self.packet_ids.get(&prefix).map_err(io)? {
            let table: BTreeMap<u64, u16> = decode(&prefix, &bytes)?;
            for (seq, record) in &mut out {
                if let (None, Some(id)) = (record.packet_id, table.get(seq)) {
                    record.packet_id = Some(*id);
                }
            }
            self.ids.lock().insert(client_id.to_string(), table);
        }
        Ok(out)
    }

    /// Forgets everything of one session, pending and on disk.
    pub(super) fn remove_session(&self, client_id: &str) -> Result<(), StoreError> {
        let _one_at_a_time = self.flushing.lock();
        let mut unreferenced = Vec::new();
        let mut release = |body: u64| {
            if self.bodies.release(body) == Released::Unreferenced {
                unreferenced.push(body);
            }
        };
        {
            let mut pending = self.pending.lock();
            for (_, record) in pending.new.remove(client_id).into_iter().flatten() {
                release(record.body);
            }
            pending.removed.remove(client_id);
            let prefix = session_prefix(client_id);
            pending.updates.retain(|key, _| !key.starts_with(&prefix));
            pending.ids_changed.remove(client_id);
        }
        let removed = self.index.lock().remove(client_id);
        for (_, body) in removed.iter().flat_map(|s| s.values()).flat_map(|b| &b.bodies) {
            release(*body);
        }
        self.ids.lock().remove(client_id);
        self.packet_ids.remove(session_prefix(client_id)).map_err(io)?;
        let prefix = session_prefix(client_id);
        for tree in [&self.blocks, &self.acked, &self.updates] {
            let mut batch = sled::Batch::default();
            for key in tree.scan_prefix(&prefix).keys() {
                batch.remove(key.map_err(io)?);
            }
            tree.apply_batch(batch).map_err(io)?;
        }
        let mut gone = sled::Batch::default();
        self.bodies.delete_unreferenced(unreferenced, &mut gone);
        self.bodies.tree().apply_batch(gone).map_err(io)
    }
}

fn client_of(key: &[u8]) -> Option<String> {
    let len = usize::from(u16::from_be_bytes([*key.first()?, *key.get(1)?]));
    std::str::from_utf8(key.get(2..2 + len)?).ok().map(str::to_string)
}

fn block_of(session: &mut BTreeMap<u64, Block>, seq: u64) -> Option<&mut Block> {
    session
        .range_mut(..=seq)
        .next_back()
        .map(|(_, b)| b)
        .filter(|b| seq <= b.last)
}

/// The writes one flush makes to the record trees, applied at its end.
#[derive(Default)]
struct RecordBatches {
    blocks: sled::Batch,
    acked: sled::Batch,
    updates: sled::Batch,
}

/// Indexes each session's new records as one block, and stages the block.
fn index_new_blocks(
    index: &mut HashMap<String, BTreeMap<u64, Block>>,
    new: HashMap<String, VecDeque<(u64, QueuedRef)>>,
    blocks: &mut sled::Batch,
) -> Result<(), StoreError> {
    for (client_id, entries) in new {
        let (Some((first, _)), Some((last, _))) = (entries.front(), entries.back()) else {
            continue;
        };
        let (first, last) = (*first, *last);
        let live = entries.len();
        let bodies = entries.iter().map(|(seq, record)| (*seq, record.body)).collect();
        let encoded = entries
            .into_iter()
            .map(|(seq, record)| Ok((seq, Bytes::from(encode(&record)?))))
            .collect::<Result<Vec<(u64, Bytes)>, StoreError>>()?;
        blocks.insert(seq_key(&client_id, first), encode(&encoded)?);
        index.entry(client_id).or_default().insert(
            first,
            Block {
                last,
                live,
                acked: Vec::new(),
                has_updates: false,
                bodies,
            },
        );
    }
    Ok(())
}

/// Stages record updates of blocks still indexed (an update to a record
/// already gone is dropped), marking their blocks.
fn stage_updates(
    index: &mut HashMap<String, BTreeMap<u64, Block>>,
    pending: HashMap<Vec<u8>, Bytes>,
    updates: &mut sled::Batch,
) {
    for (key, value) in pending {
        if let (Some(seq), Some(client_id)) = (seq_of(&key), client_of(&key)) {
            if let Some(block) = index.get_mut(&client_id).and_then(|b| block_of(b, seq)) {
                block.has_updates = true;
                updates.insert(key, value.to_vec());
            }
        }
    }
}

/// Rewrites the blocks `mark_acked` changed: a block with nothing live is
/// removed with its acknowledgements and updates; another gets its sorted
/// list of acknowledged seqs.
fn rewrite_touched(
    session: &mut BTreeMap<u64, Block>,
    client_id: &str,
    touched: Vec<u64>,
    batches: &mut RecordBatches,
) -> Result<(), StoreError> {
    for first in touched {
        let key = seq_key(client_id, first);
        let done = session.get(&first).is_some_and(|b| b.live == 0);
        if done {
            if let Some(block) = session.remove(&first) {
                if block.has_updates {
                    for seq in first..=block.last {
                        batches.updates.remove(seq_key(client_id, seq));
                    }
                }
            }
            batches.blocks.remove(key.clone());
            batches.acked.remove(key);
        } else if let Some(block) = session.get_mut(&first) {
            block.acked.sort_unstable();
            batches.acked.insert(key, encode(&block.acked)?);
        }
    }
    Ok(())
}
