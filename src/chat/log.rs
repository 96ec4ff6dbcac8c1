//! Room logs: each room's messages stored once, under one increasing `seq`,
//! with retention by count (`room_max_messages`) and age
//! (`room_max_age_secs`). The heads are kept apart from the messages, so a
//! `seq` is never reused, also after every message was trimmed.
//!
//! A room has two heads: the last `seq` handed out (appended, perhaps not
//! yet on disk) and the last `seq` members may see (`head`). Replays,
//! history and new subscribers read only up to `head`, which moves when a
//! message is delivered (`chat/commit.rs`: after its group commit with
//! `durability = "flush"`). With `durability = "buffered"` a message is
//! delivered before it is on disk, so the log reserves `seq` values a block
//! at a time and makes the reservation durable before handing them out: a
//! crash may lose delivered messages, never reuse their `seq`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

use super::other_nodes::RoomReplication;
use crate::store::{unix_ms_now, EventKind, Reactions, RoomRecord, Store, StoreError};

pub use super::room_state::RoomState;

/// Trim by count every this many appends, not on every one.
const TRIM_EVERY: u64 = 64;

/// `seq` values reserved per durable write with `durability = "buffered"`:
/// one flush per this many messages of a room; a crash skips at most this
/// many `seq` values.
const SEQ_BLOCK: u64 = 1024;

pub struct RoomLog {
    store: Arc<dyn Store>,
    rooms: RwLock<HashMap<Arc<str>, Arc<RoomState>>>,
    max_messages: u64,
    max_age_ms: u64,
    /// Messages are delivered before their group commit (buffered mode):
    /// reserve `seq` values on disk ahead of handing them out.
    reserve_ahead: bool,
    /// Every `seq` a forgotten room handed out is at most this: a room
    /// opened (again) starts above it, so a `seq` is never given to two
    /// messages of a room.
    seq_floor: AtomicU64,
    /// Whether any room had an edit or delete since this process started:
    /// until then `last_change` answers without a lookup.
    any_change: AtomicBool,
    /// Cluster mode: where this node's trims go, so that the shared log
    /// keeps what the logs keep.
    shared: Option<Arc<dyn RoomReplication>>,
}

/// Why a post may not open a room.
#[derive(Debug, PartialEq, Eq)]
pub enum NotOpened {
    /// `max_rooms` rooms have a log.
    MaxRooms,
    /// The opener's account holds `max_rooms_per_user` rooms.
    OverBudget,
}

impl RoomLog {
    /// Loads every room's head. `reserve_ahead`: messages are delivered
    /// before they are durable (`durability = "buffered"`).
    pub fn load(
        store: Arc<dyn Store>,
        max_messages: u64,
        max_age_secs: u64,
        reserve_ahead: bool,
    ) -> Result<Self, StoreError> {
        let mut rooms = HashMap::new();
        let seq_floor = store.room_seq_floor()?;
        for head in store.room_heads()? {
            // A record and its head are two writes: a crash between them
            // (sled flushes in the background too) can keep the record and
            // lose the head. The newest record counts.
            // From just before `head.last`: also the time of its record.
            let after = head.last.saturating_sub(1);
            let newest = store.room_range(&head.room, after, u64::MAX, 1, true)?;
            let last = newest.first().map_or(head.last, |(seq, _)| head.last.max(*seq));
            let last_ts = newest.first().map_or(0, |(_, record)| record.ts_unix_ms);
            // The newest entry is an event: it names the last message.
            let last_message = match newest.first() {
                Some((_, record)) => record.event().map_or(last, |e| e.last_message),
                None => last,
            };
            let name: Arc<str> = head.room.into();
            let opener = head.opener.map(Arc::from);
            // A room opened again after it was forgotten, whose first post
            // was not stored, must still start above the floor.
            let reserved = if last == 0 {
                head.reserved.max(seq_floor)
            } else {
                head.reserved
            };
            // Read once per room: the log is trimmed by its count.
            let held = store.room_len(&name)?;
            rooms.insert(
                name.clone(),
                Arc::new(RoomState::new(
                    name,
                    (last, last_message),
                    reserved,
                    last_ts,
                    opener,
                    held,
                )),
            );
        }
        Ok(RoomLog {
            seq_floor: AtomicU64::new(seq_floor),
            any_change: AtomicBool::new(false),
            store,
            rooms: RwLock::new(rooms),
            max_messages,
            max_age_ms: max_age_secs.saturating_mul(1000),
            reserve_ahead,
            shared: None,
        })
    }

    /// Cluster mode: every trim of this node's copy of a room is made in
    /// the shared log too (`RoomReplication::trimmed`).
    pub fn trims_shared_with(&mut self, shared: Option<Arc<dyn RoomReplication>>) {
        self.shared = shared;
    }

    /// Removes `room`'s entries below `below`, here and, in a cluster, in
    /// the shared log.
    fn trim(&self, room: &str, below: u64) -> Result<u64, StoreError> {
        let removed = self.store.trim_room(room, below)?;
        if let Some(shared) = self.shared.as_ref().filter(|_| removed > 0) {
            shared.trimmed(room, below);
        }
        Ok(removed)
    }

    /// The accounts that opened the rooms held now, one per room (to
    /// charge them again at start-up).
    pub fn openers(&self) -> Vec<Arc<str>> {
        self.rooms
            .read()
            .values()
            .filter_map(|r| r.opener.clone())
            .collect()
    }

    /// A new room's state: its `seq` values start above the floor.
    fn fresh(&self, name: &str, opener: Option<Arc<str>>) -> Arc<RoomState> {
        let floor = self.seq_floor.load(Ordering::Acquire);
        Arc::new(RoomState::new(name.into(), (0, 0), floor, 0, opener, 0))
    }

    /// Opens `name` for a post by `opener`, unless it is open already:
    /// refused while `max_rooms` rooms have a log, or when `charge` (the
    /// opener's `max_rooms_per_user`) refuses. The opener is stored, so the
    /// charge is made again after a restart.
    pub fn open(
        &self,
        name: &str,
        opener: &Arc<str>,
        max_rooms: usize,
        charge: impl FnOnce() -> bool,
    ) -> Result<(), NotOpened> {
        if let Some(room) = self.rooms.read().get(name) {
            room.post_pending.store(true, Ordering::Release);
            return Ok(());
        }
        let mut rooms = self.rooms.write();
        if let Some(room) = rooms.get(name) {
            room.post_pending.store(true, Ordering::Release);
            return Ok(());
        }
        if rooms.len() >= max_rooms {
            return Err(NotOpened::MaxRooms);
        }
        if !charge() {
            return Err(NotOpened::OverBudget);
        }
        if let Err(e) = self.store.set_room_opener(name, opener) {
            // The post that follows fails on the same store; the room is
            // empty and upkeep forgets it, releasing the charge.
            tracing::warn!(room = name, error = %e, "could not store who opened the room");
        }
        let room = self.fresh(name, Some(opener.clone()));
        room.post_pending.store(true, Ordering::Release);
        rooms.insert(name.into(), room);
        Ok(())
    }

    /// Forgets every room that has no message left (all trimmed by age,
    /// or opened by a post that was not stored), except those `keep`
    /// names (declared rooms). Returns the forgotten rooms' states (their
    /// openers are to be released).
    pub fn forget_empty(&self, keep: impl Fn(&str) -> bool) -> Vec<Arc<RoomState>> {
        let candidates: Vec<Arc<RoomState>> = self
            .rooms
            .read()
            .values()
            .filter(|r| !keep(&r.name))
            .cloned()
            .collect();
        let mut forgotten = Vec::new();
        for room in candidates {
            let _in_order = room.order.lock();
            // Under `order` no message is appended meanwhile. A post that
            // opened or found the room and is not appended yet keeps it
            // one more upkeep (a post that failed leaves it for the next).
            if room.post_pending.swap(false, Ordering::AcqRel) {
                continue;
            }
            match self.store.room_range(&room.name, 0, u64::MAX, 1, false) {
                Ok(page) if page.is_empty() => {}
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(room = %room.name, error = %e, "could not read the room log to forget it");
                    continue;
                }
            }
            let floor = room
                .assigned
                .load(Ordering::Acquire)
                .max(room.reserved.load(Ordering::Acquire));
            let floor = self.seq_floor.fetch_max(floor, Ordering::AcqRel).max(floor);
            if let Err(e) = self.store.forget_room(&room.name, floor) {
                tracing::warn!(room = %room.name, error = %e, "could not forget the room");
                continue;
            }
            room.forgotten.store(true, Ordering::Release);
            self.rooms.write().remove(&room.name);
            forgotten.push(room.clone());
        }
        forgotten
    }

    /// The room's state, created on first use.
    pub fn room(&self, name: &str) -> Arc<RoomState> {
        if let Some(room) = self.rooms.read().get(name) {
            return room.clone();
        }
        let mut rooms = self.rooms.write();
        if let Some(room) = rooms.get(name) {
            return room.clone();
        }
        let room = self.fresh(name, None);
        rooms.insert(name.into(), room.clone());
        room
    }

    /// Rooms this broker holds a log of.
    pub fn len(&self) -> usize {
        self.rooms.read().len()
    }

    /// The last `seq` of a room members may see (0 when it has none).
    pub fn head(&self, name: &str) -> u64 {
        self.rooms.read().get(name).map_or(0, |r| r.head())
    }

    /// The `seq` of the last edit or delete of a message of `name` since
    /// this process started (0: none).
    pub fn last_change(&self, name: &str) -> u64 {
        if !self.any_change.load(Ordering::Acquire) {
            return 0;
        }
        self.rooms
            .read()
            .get(name)
            .map_or(0, |r| r.last_change.load(Ordering::Acquire))
    }

    /// The edit or delete `seq` was applied to a message of `name` (its
    /// record is rewritten already).
    pub(crate) fn changed(&self, name: &str, seq: u64) {
        if let Some(room) = self.rooms.read().get(name) {
            room.last_change.fetch_max(seq, Ordering::AcqRel);
            self.any_change.store(true, Ordering::Release);
        }
    }

    /// Every room with at least one message, and its head.
    pub fn heads(&self) -> Vec<(Arc<str>, u64)> {
        self.rooms
            .read()
            .values()
            .map(|r| (r.name.clone(), r.head()))
            .filter(|(_, head)| *head > 0)
            .collect()
    }

    /// Rooms with a message stored at or after `since_unix_ms`. Visits
    /// every room: only for the one pass a session with a filter covering
    /// every room makes after a restart (`session/replay.rs`).
    pub fn changed_since(&self, since_unix_ms: u64) -> Vec<Arc<str>> {
        self.rooms
            .read()
            .values()
            .filter(|r| r.head() > 0 && r.last_ts_ms.load(Ordering::Acquire) >= since_unix_ms)
            .map(|r| r.name.clone())
            .collect()
    }

    /// Appends the next message of `room` and sets its `prev`; the caller
    /// holds `room.order` and calls `reveal` when the message is delivered.
    /// `before_write` runs with the new `seq` just before the record is
    /// written (for the de-dup entry, which must not be written after it).
    pub fn append(
        &self,
        room: &RoomState,
        record: &mut RoomRecord,
        before_write: impl FnOnce(u64),
    ) -> Result<u64, StoreError> {
        let seq = room.assigned.load(Ordering::Acquire) + 1;
        if self.reserve_ahead && seq > room.reserved.load(Ordering::Acquire) {
            let up_to = seq + SEQ_BLOCK - 1;
            self.store.reserve_room_seqs(&room.name, up_to)?;
            self.store.flush()?;
            room.reserved.store(up_to, Ordering::Release);
        }
        link(room, seq, record);
        before_write(seq);
        self.store.append_room(&room.name, seq, record)?;
        room.assigned.store(seq, Ordering::Release);
        room.post_pending.store(false, Ordering::Release);
        moved(room, seq, record);
        room.last_ts_ms.fetch_max(record.ts_unix_ms, Ordering::AcqRel);
        if let Err(e) = self.trim_by_count(room) {
            tracing::warn!(room = %room.name, error = %e, "could not trim the room log");
        }
        Ok(seq)
    }

    /// Hands out the next `seq` of `room` to an entry the log does not
    /// keep (a reaction event: state on its message, not history) and
    /// sets its `prev` (the last kept entry: the entry after it has the
    /// same one). The `seq` is recorded durably, so it never comes back;
    /// the caller holds `room.order` and calls `reveal` when it is
    /// delivered.
    pub fn pass(&self, room: &RoomState, record: &mut RoomRecord) -> Result<u64, StoreError> {
        let seq = room.assigned.load(Ordering::Acquire) + 1;
        if !self.reserve_ahead {
            self.store.reserve_room_seqs(&room.name, seq)?;
        } else if seq > room.reserved.load(Ordering::Acquire) {
            let up_to = seq + SEQ_BLOCK - 1;
            self.store.reserve_room_seqs(&room.name, up_to)?;
            self.store.flush()?;
            room.reserved.store(up_to, Ordering::Release);
        }
        link(room, seq, record);
        room.assigned.store(seq, Ordering::Release);
        Ok(seq)
    }

    /// Counts an appended entry; every `TRIM_EVERY` entries held, removes
    /// the oldest beyond `room_max_messages` (so a log holds fewer than
    /// `TRIM_EVERY` more).
    fn trim_by_count(&self, room: &RoomState) -> Result<(), StoreError> {
        let held = room.held.fetch_add(1, Ordering::AcqRel) + 1;
        if held <= self.max_messages || held % TRIM_EVERY != 0 {
            return Ok(());
        }
        let excess = usize::try_from(held - self.max_messages).unwrap_or(usize::MAX);
        let oldest = self.store.room_range(&room.name, 0, u64::MAX, excess, false)?;
        if let Some((last_removed, _)) = oldest.last() {
            let removed = self.trim(&room.name, last_removed + 1)?;
            room.held.fetch_sub(removed.min(held), Ordering::AcqRel);
        }
        Ok(())
    }

    /// Cluster mode: the highest stream sequence this node's copy of
    /// `name` has taken in (appended, or skipped as a duplicate).
    pub fn applied(&self, name: &str) -> u64 {
        self.rooms
            .read()
            .get(name)
            .map_or(0, |r| r.assigned.load(Ordering::Acquire))
    }

    /// Cluster mode: `seq` was taken in without being appended (a
    /// duplicate shown before); the room's follower goes on after it.
    pub fn skip_at(&self, room: &RoomState, seq: u64) {
        room.assigned.fetch_max(seq, Ordering::AcqRel);
    }

    /// Appends a message whose `seq` was given elsewhere (cluster mode: the
    /// JetStream sequence, larger than any before it in the room) and
    /// sets its `prev`; the caller holds `room.order`. Returns false for a
    /// `seq` the room already took in. Trims by count without assuming
    /// `seq` values are contiguous.
    pub fn append_at(&self, room: &RoomState, seq: u64, record: &mut RoomRecord) -> Result<bool, StoreError> {
        if seq <= room.assigned.load(Ordering::Acquire) {
            return Ok(false);
        }
        if record.event().is_some_and(|e| e.kind == EventKind::React) {
            // Not kept, as on one node (`pass`): its `seq` is recorded.
            link(room, seq, record);
            self.store.reserve_room_seqs(&room.name, seq)?;
            room.assigned.fetch_max(seq, Ordering::AcqRel);
            return Ok(true);
        }
        link(room, seq, record);
        self.store.append_room(&room.name, seq, record)?;
        room.assigned.fetch_max(seq, Ordering::AcqRel);
        moved(room, seq, record);
        room.last_ts_ms.fetch_max(record.ts_unix_ms, Ordering::AcqRel);
        self.trim_by_count(room)?;
        Ok(true)
    }

    /// The entry `seq` of `room`, if the log holds it and members may see
    /// it.
    pub fn entry(&self, room: &str, seq: u64) -> Result<Option<RoomRecord>, StoreError> {
        if seq > self.head(room) {
            return Ok(None);
        }
        self.stored(room, seq)
    }

    /// The entry `seq` of `room` if the log holds it, also one not yet
    /// delivered (an edit whose commit is pending, when its message is
    /// deleted).
    pub fn stored(&self, room: &str, seq: u64) -> Result<Option<RoomRecord>, StoreError> {
        if seq == 0 {
            return Ok(None);
        }
        let found = self
            .store
            .room_range(room, seq - 1, seq.saturating_add(1), 1, false)?;
        Ok(found.into_iter().next().map(|(_, record)| record))
    }

    /// The reactions on message `seq` of `room`, with `reactor`'s own.
    pub fn reactions(&self, room: &str, seq: u64, reactor: Option<&str>) -> Result<Reactions, StoreError> {
        self.store.reactions(room, seq, reactor)
    }

    /// See `Store::set_reaction`; the caller holds the room's `order`.
    pub fn set_reaction(
        &self,
        room: &str,
        seq: u64,
        emoji: &str,
        reactor: &str,
        on: bool,
    ) -> Result<(), StoreError> {
        self.store.set_reaction(room, seq, emoji, reactor, on)
    }

    /// Removes the reactions on a deleted message; the caller holds the
    /// room's `order`.
    pub fn clear_reactions(&self, room: &str, seq: u64) -> Result<(), StoreError> {
        self.store.clear_reactions(room, seq)
    }

    /// The room's state if this broker holds its log (never made here).
    pub fn existing(&self, name: &str) -> Option<Arc<RoomState>> {
        self.rooms.read().get(name).cloned()
    }

    /// The store, for a part of the chat layer that keeps its own records
    /// there (`edit_purges.rs`).
    pub(super) fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Replaces an entry the log holds (see `Store::rewrite_room`); the
    /// caller holds the room's `order`.
    pub fn rewrite(&self, room: &str, seq: u64, record: &RoomRecord) -> Result<(), StoreError> {
        self.store.rewrite_room(room, seq, record)
    }

    /// Messages with `after < seq < before` that members may see (up to
    /// the head), oldest first (or the newest `limit` of them).
    pub fn range(
        &self,
        room: &str,
        after: u64,
        before: u64,
        limit: usize,
        newest: bool,
    ) -> Result<Vec<(u64, RoomRecord)>, StoreError> {
        let before = before.min(self.head(room).saturating_add(1));
        self.store.room_range(room, after, before, limit, newest)
    }

    /// Removes messages older than `room_max_age_secs` from every room.
    pub fn trim_by_age(&self) {
        if self.max_age_ms == 0 {
            return;
        }
        let cutoff = unix_ms_now().saturating_sub(self.max_age_ms);
        for (room, head) in self.heads() {
            // At most `TRIM_EVERY` entries per store batch, as the trim by
            // count: one batch never holds a whole room's log.
            loop {
                let page = match self
                    .store
                    .room_range(&room, 0, u64::MAX, TRIM_EVERY as usize, false)
                {
                    Ok(page) => page,
                    Err(e) => {
                        tracing::warn!(%room, error = %e, "could not read the room log for trimming");
                        break;
                    }
                };
                let Some(last) = page.last().map(|(seq, _)| *seq) else {
                    break;
                };
                let first_kept = page.iter().find(|(_, r)| r.ts_unix_ms >= cutoff).map(|(s, _)| *s);
                let below = first_kept.unwrap_or((last + 1).min(head + 1));
                match self.trim(&room, below) {
                    Ok(removed) => {
                        if let Some(state) = self.rooms.read().get(&room) {
                            let held = state.held.load(Ordering::Acquire);
                            state.held.fetch_sub(removed.min(held), Ordering::AcqRel);
                        }
                        if first_kept.is_some() || removed == 0 {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(%room, error = %e, "could not trim the room log");
                        break;
                    }
                }
            }
        }
    }
}

/// Sets `record`'s `prev`: a message's is the room's last message, an
/// event's the room's last entry (and it names the last message, for a
/// restart). The caller holds the room's `order`.
fn link(room: &RoomState, seq: u64, record: &mut RoomRecord) {
    let last_message = room.last_message.load(Ordering::Acquire);
    if let Some(crate::store::RoomEntry::Event(event)) = record.entry.as_deref_mut() {
        record.prev = Some(room.last.load(Ordering::Acquire));
        event.last_message = last_message;
    } else {
        record.prev = Some(last_message);
    }
    debug_assert!(record.prev < Some(seq));
}

/// Moves the room's heads past an appended entry.
fn moved(room: &RoomState, seq: u64, record: &RoomRecord) {
    room.last.store(seq, Ordering::Release);
    if record.event().is_none() {
        room.last_message.store(seq, Ordering::Release);
    }
}
