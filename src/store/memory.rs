//! The store in process memory: the reference implementation of the
//! [`Store`] contract, for tests. Nothing survives a restart.

use std::collections::{BTreeMap, BTreeSet};

use parking_lot::Mutex;

use super::{
    DedupRecord, EditPurge, LoadedSession, MessageRecord, QueuedRecord, QueuedRef, Reactions, RoomHead,
    RoomRecord, SanctionRecord, SessionRecord, Store, StoreError,
};

#[derive(Default)]
struct Inner {
    retained: BTreeMap<String, MessageRecord>,
    sessions: BTreeMap<String, SessionRecord>,
    messages: BTreeMap<(String, u64), QueuedRef>,
    /// Message bodies and how many records refer to each.
    bodies: BTreeMap<u64, (MessageRecord, usize)>,
    next_body: u64,
    qos2_in: BTreeSet<(String, u16)>,
    rooms: BTreeMap<String, Room>,
    dedup: BTreeMap<String, DedupRecord>,
    sanctions: BTreeMap<String, SanctionRecord>,
    /// `room_seq_floor`.
    room_seq_floor: u64,
    alert_counters: BTreeMap<String, u64>,
    /// `set_edit_purge`: (room, message) → its edits still to empty.
    edit_purges: BTreeMap<(String, u64), Vec<u64>>,
}

impl Inner {
    /// One reference fewer to `body`; the last one deletes it.
    fn release(&mut self, body: u64) {
        if let Some((_, refs)) = self.bodies.get_mut(&body) {
            *refs = refs.saturating_sub(1);
            if *refs == 0 {
                self.bodies.remove(&body);
            }
        }
    }
}

#[derive(Default)]
struct Room {
    head: u64,
    reserved: u64,
    opener: Option<String>,
    log: BTreeMap<u64, RoomRecord>,
    /// Per message: per emoji, who reacted with it.
    reactions: BTreeMap<u64, BTreeMap<String, BTreeSet<String>>>,
}

/// Keeps every record in memory.
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

impl Store for MemoryStore {
    fn put_retained(&self, topic: &str, message: Option<&MessageRecord>) -> Result<(), StoreError> {
        let mut inner = self.inner.lock();
        match message {
            Some(m) => inner.retained.insert(topic.to_string(), m.clone()),
            None => inner.retained.remove(topic),
        };
        Ok(())
    }

    fn load_retained(&self) -> Result<Vec<MessageRecord>, StoreError> {
        Ok(self.inner.lock().retained.values().cloned().collect())
    }

    fn put_session(&self, client_id: &str, session: &SessionRecord) -> Result<(), StoreError> {
        self.inner
            .lock()
            .sessions
            .insert(client_id.to_string(), session.clone());
        Ok(())
    }

    fn remove_session(&self, client_id: &str) -> Result<(), StoreError> {
        let mut inner = self.inner.lock();
        inner.sessions.remove(client_id);
        let bodies: Vec<u64> = inner
            .messages
            .iter()
            .filter(|((id, _), _)| id == client_id)
            .map(|(_, m)| m.body)
            .collect();
        inner.messages.retain(|(id, _), _| id != client_id);
        for body in bodies {
            inner.release(body);
        }
        inner.qos2_in.retain(|(id, _)| id != client_id);
        Ok(())
    }

    fn load_sessions(&self) -> Result<Vec<LoadedSession>, StoreError> {
        let inner = self.inner.lock();
        Ok(inner
            .sessions
            .iter()
            .map(|(id, record)| LoadedSession {
                client_id: id.clone(),
                record: record.clone(),
                messages: inner
                    .messages
                    .iter()
                    .filter(|((cid, _), _)| cid == id)
                    .map(|((_, seq), m)| (*seq, m.clone()))
                    .collect(),
                incoming_qos2: inner
                    .qos2_in
                    .iter()
                    .filter(|(cid, _)| cid == id)
                    .map(|(_, p)| *p)
                    .collect(),
            })
            .collect())
    }

    fn new_body_id(&self) -> u64 {
        let mut inner = self.inner.lock();
        inner.next_body += 1;
        inner.next_body
    }

    fn put_message(
        &self,
        client_id: &str,
        seq: u64,
        body: u64,
        message: QueuedRecord,
    ) -> Result<(), StoreError> {
        let mut inner = self.inner.lock();
        let entry = QueuedRef::of(&message, body);
        inner.bodies.entry(body).or_insert_with(|| (message.message, 0)).1 += 1;
        if let Some(old) = inner.messages.insert((client_id.to_string(), seq), entry) {
            inner.release(old.body);
        }
        Ok(())
    }

    fn update_message(
        &self,
        client_id: &str,
        seq: u64,
        body: u64,
        message: QueuedRecord,
    ) -> Result<(), StoreError> {
        let mut inner = self.inner.lock();
        if let Some(entry) = inner.messages.get_mut(&(client_id.to_string(), seq)) {
            *entry = QueuedRef::of(&message, body);
        }
        Ok(())
    }

    fn remove_message(&self, client_id: &str, seq: u64) -> Result<(), StoreError> {
        let mut inner = self.inner.lock();
        if let Some(old) = inner.messages.remove(&(client_id.to_string(), seq)) {
            inner.release(old.body);
        }
        Ok(())
    }

    fn load_body(&self, body: u64) -> Result<Option<MessageRecord>, StoreError> {
        Ok(self.inner.lock().bodies.get(&body).map(|(m, _)| m.clone()))
    }

    fn put_incoming_qos2(&self, client_id: &str, packet_id: u16) -> Result<(), StoreError> {
        self.inner
            .lock()
            .qos2_in
            .insert((client_id.to_string(), packet_id));
        Ok(())
    }

    fn remove_incoming_qos2(&self, client_id: &str, packet_id: u16) -> Result<(), StoreError> {
        self.inner
            .lock()
            .qos2_in
            .remove(&(client_id.to_string(), packet_id));
        Ok(())
    }

    fn append_room(&self, room: &str, seq: u64, record: &RoomRecord) -> Result<(), StoreError> {
        let mut inner = self.inner.lock();
        let room = inner.rooms.entry(room.to_string()).or_default();
        room.head = room.head.max(seq);
        room.log.insert(seq, record.clone());
        Ok(())
    }

    fn rewrite_room(&self, room: &str, seq: u64, record: &RoomRecord) -> Result<(), StoreError> {
        let mut inner = self.inner.lock();
        if let Some(entry) = inner.rooms.get_mut(room).and_then(|r| r.log.get_mut(&seq)) {
            *entry = record.clone();
        }
        Ok(())
    }

    fn reserve_room_seqs(&self, room: &str, up_to: u64) -> Result<(), StoreError> {
        let mut inner = self.inner.lock();
        let room = inner.rooms.entry(room.to_string()).or_default();
        room.reserved = room.reserved.max(up_to);
        Ok(())
    }

    fn room_range(
        &self,
        room: &str,
        after: u64,
        before: u64,
        limit: usize,
        newest: bool,
    ) -> Result<Vec<(u64, RoomRecord)>, StoreError> {
        let inner = self.inner.lock();
        let Some(room) = inner.rooms.get(room) else {
            return Ok(Vec::new());
        };
        if after.saturating_add(1) >= before {
            return Ok(Vec::new());
        }
        let range = room.log.range(after + 1..before).map(|(s, r)| (*s, r.clone()));
        Ok(if newest {
            let mut out: Vec<_> = range.rev().take(limit).collect();
            out.reverse();
            out
        } else {
            range.take(limit).collect()
        })
    }

    fn room_heads(&self) -> Result<Vec<RoomHead>, StoreError> {
        Ok(self
            .inner
            .lock()
            .rooms
            .iter()
            .map(|(n, r)| RoomHead {
                room: n.clone(),
                last: r.head,
                reserved: r.reserved,
                opener: r.opener.clone(),
            })
            .collect())
    }

    fn trim_room(&self, room: &str, below: u64) -> Result<u64, StoreError> {
        let Some(room) = self.inner.lock().rooms.get_mut(room).map(|r| {
            let before = r.log.len();
            r.log = r.log.split_off(&below);
            r.reactions = r.reactions.split_off(&below);
            (before - r.log.len()) as u64
        }) else {
            return Ok(0);
        };
        Ok(room)
    }

    fn room_len(&self, room: &str) -> Result<u64, StoreError> {
        Ok(self
            .inner
            .lock()
            .rooms
            .get(room)
            .map_or(0, |r| r.log.len() as u64))
    }

    fn reactions(&self, room: &str, seq: u64, reactor: Option<&str>) -> Result<Reactions, StoreError> {
        let inner = self.inner.lock();
        let Some(on) = inner.rooms.get(room).and_then(|r| r.reactions.get(&seq)) else {
            return Ok(Reactions::default());
        };
        Ok(Reactions {
            counts: on.iter().map(|(e, who)| (e.clone(), who.len() as u64)).collect(),
            mine: on
                .iter()
                .filter(|(_, who)| reactor.is_some_and(|r| who.contains(r)))
                .map(|(e, _)| e.clone())
                .collect(),
        })
    }

    fn set_reaction(
        &self,
        room: &str,
        seq: u64,
        emoji: &str,
        reactor: &str,
        on: bool,
    ) -> Result<(), StoreError> {
        let mut inner = self.inner.lock();
        let room = inner.rooms.entry(room.to_string()).or_default();
        let message = room.reactions.entry(seq).or_default();
        if on {
            message
                .entry(emoji.to_string())
                .or_default()
                .insert(reactor.to_string());
        } else if let Some(who) = message.get_mut(emoji) {
            who.remove(reactor);
            if who.is_empty() {
                message.remove(emoji);
            }
        }
        if message.is_empty() {
            room.reactions.remove(&seq);
        }
        Ok(())
    }

    fn clear_reactions(&self, room: &str, seq: u64) -> Result<(), StoreError> {
        if let Some(room) = self.inner.lock().rooms.get_mut(room) {
            room.reactions.remove(&seq);
        }
        Ok(())
    }

    fn set_edit_purge(&self, room: &str, message: u64, edits: &[u64]) -> Result<(), StoreError> {
        let mut inner = self.inner.lock();
        let key = (room.to_string(), message);
        if edits.is_empty() {
            inner.edit_purges.remove(&key);
        } else {
            inner.edit_purges.insert(key, edits.to_vec());
        }
        Ok(())
    }

    fn edit_purges(&self, max: usize) -> Result<Vec<EditPurge>, StoreError> {
        let inner = self.inner.lock();
        let entries = inner.edit_purges.iter().take(max);
        Ok(entries
            .map(|((room, message), edits)| EditPurge {
                room: room.clone(),
                message: *message,
                edits: edits.clone(),
            })
            .collect())
    }

    fn purge_reactions(&self, _max_keys: usize) -> Result<usize, StoreError> {
        // Removed with their message: this store holds no more than fits
        // in memory, and nothing of it outlives the process.
        Ok(0)
    }

    fn set_room_opener(&self, room: &str, account: &str) -> Result<(), StoreError> {
        let mut inner = self.inner.lock();
        inner.rooms.entry(room.to_string()).or_default().opener = Some(account.to_string());
        Ok(())
    }

    fn forget_room(&self, room: &str, seq_floor: u64) -> Result<(), StoreError> {
        let mut inner = self.inner.lock();
        inner.room_seq_floor = inner.room_seq_floor.max(seq_floor);
        inner.rooms.remove(room);
        Ok(())
    }

    fn room_seq_floor(&self) -> Result<u64, StoreError> {
        Ok(self.inner.lock().room_seq_floor)
    }

    fn put_dedup(&self, key: &str, entry: Option<DedupRecord>) -> Result<(), StoreError> {
        let mut inner = self.inner.lock();
        match entry {
            Some(e) => inner.dedup.insert(key.to_string(), e),
            None => inner.dedup.remove(key),
        };
        Ok(())
    }

    fn load_dedup(&self) -> Result<Vec<(String, DedupRecord)>, StoreError> {
        Ok(self
            .inner
            .lock()
            .dedup
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect())
    }

    fn put_sanction(&self, key: &str, entry: Option<&SanctionRecord>) -> Result<(), StoreError> {
        let mut inner = self.inner.lock();
        match entry {
            Some(e) => inner.sanctions.insert(key.to_string(), e.clone()),
            None => inner.sanctions.remove(key),
        };
        Ok(())
    }

    fn load_sanctions(&self) -> Result<Vec<(String, SanctionRecord)>, StoreError> {
        let inner = self.inner.lock();
        Ok(inner
            .sanctions
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn put_alert_counter(&self, device: &str, counter: u64) -> Result<(), StoreError> {
        self.inner
            .lock()
            .alert_counters
            .insert(device.to_string(), counter);
        Ok(())
    }

    fn remove_alert_counter(&self, device: &str) -> Result<(), StoreError> {
        self.inner.lock().alert_counters.remove(device);
        Ok(())
    }

    fn load_alert_counters(&self) -> Result<Vec<(String, u64)>, StoreError> {
        Ok(self
            .inner
            .lock()
            .alert_counters
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect())
    }

    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn size_on_disk(&self) -> u64 {
        0
    }
}
