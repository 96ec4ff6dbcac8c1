//! The store as the broker uses it: every write and flush goes through
//! here, so a failure anywhere (a full disk) marks the store unhealthy
//! (`health.rs`) instead of only being logged where it happened.

use std::sync::Arc;

use super::{
    DedupRecord, EditPurge, LoadedSession, MessageRecord, QueuedRecord, Reactions, RoomHead, RoomRecord,
    SanctionRecord, SessionRecord, Store, StoreError, StoreHealth,
};

/// A store whose outcomes are recorded in a [`StoreHealth`].
pub struct Monitored {
    inner: Arc<dyn Store>,
    health: Arc<StoreHealth>,
}

impl Monitored {
    pub fn new(inner: Arc<dyn Store>, health: Arc<StoreHealth>) -> Monitored {
        Monitored { inner, health }
    }

    /// Records a failed write; passes the result on.
    fn watch<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        self.health.wrote(self.inner.bytes_written());
        if let Err(error) = &result {
            if !matches!(error, StoreError::Closed) {
                self.health.failed(error);
            }
        }
        result
    }
}

impl Store for Monitored {
    fn put_retained(&self, topic: &str, message: Option<&MessageRecord>) -> Result<(), StoreError> {
        self.watch(self.inner.put_retained(topic, message))
    }

    fn load_retained(&self) -> Result<Vec<MessageRecord>, StoreError> {
        self.inner.load_retained()
    }

    fn put_session(&self, client_id: &str, session: &SessionRecord) -> Result<(), StoreError> {
        self.watch(self.inner.put_session(client_id, session))
    }

    fn remove_session(&self, client_id: &str) -> Result<(), StoreError> {
        self.watch(self.inner.remove_session(client_id))
    }

    fn load_sessions(&self) -> Result<Vec<LoadedSession>, StoreError> {
        self.inner.load_sessions()
    }

    fn new_body_id(&self) -> u64 {
        self.inner.new_body_id()
    }

    fn put_message(
        &self,
        client_id: &str,
        seq: u64,
        body: u64,
        message: QueuedRecord,
    ) -> Result<(), StoreError> {
        self.watch(self.inner.put_message(client_id, seq, body, message))
    }

    fn update_message(
        &self,
        client_id: &str,
        seq: u64,
        body: u64,
        message: QueuedRecord,
    ) -> Result<(), StoreError> {
        self.watch(self.inner.update_message(client_id, seq, body, message))
    }

    fn load_body(&self, body: u64) -> Result<Option<MessageRecord>, StoreError> {
        self.inner.load_body(body)
    }

    fn remove_message(&self, client_id: &str, seq: u64) -> Result<(), StoreError> {
        self.watch(self.inner.remove_message(client_id, seq))
    }

    fn put_incoming_qos2(&self, client_id: &str, packet_id: u16) -> Result<(), StoreError> {
        self.watch(self.inner.put_incoming_qos2(client_id, packet_id))
    }

    fn remove_incoming_qos2(&self, client_id: &str, packet_id: u16) -> Result<(), StoreError> {
        self.watch(self.inner.remove_incoming_qos2(client_id, packet_id))
    }

    fn append_room(&self, room: &str, seq: u64, record: &RoomRecord) -> Result<(), StoreError> {
        self.watch(self.inner.append_room(room, seq, record))
    }

    fn rewrite_room(&self, room: &str, seq: u64, record: &RoomRecord) -> Result<(), StoreError> {
        self.watch(self.inner.rewrite_room(room, seq, record))
    }

    fn reserve_room_seqs(&self, room: &str, up_to: u64) -> Result<(), StoreError> {
        self.watch(self.inner.reserve_room_seqs(room, up_to))
    }

    fn room_heads(&self) -> Result<Vec<RoomHead>, StoreError> {
        self.inner.room_heads()
    }

    fn trim_room(&self, room: &str, below: u64) -> Result<u64, StoreError> {
        self.watch(self.inner.trim_room(room, below))
    }

    fn room_len(&self, room: &str) -> Result<u64, StoreError> {
        self.inner.room_len(room)
    }

    fn reactions(&self, room: &str, seq: u64, reactor: Option<&str>) -> Result<Reactions, StoreError> {
        self.inner.reactions(room, seq, reactor)
    }

    fn set_reaction(
        &self,
        room: &str,
        seq: u64,
        emoji: &str,
        reactor: &str,
        on: bool,
    ) -> Result<(), StoreError> {
        self.watch(self.inner.set_reaction(room, seq, emoji, reactor, on))
    }

    fn clear_reactions(&self, room: &str, seq: u64) -> Result<(), StoreError> {
        self.watch(self.inner.clear_reactions(room, seq))
    }

    fn purge_reactions(&self, max_keys: usize) -> Result<usize, StoreError> {
        self.watch(self.inner.purge_reactions(max_keys))
    }

    fn set_edit_purge(&self, room: &str, message: u64, edits: &[u64]) -> Result<(), StoreError> {
        self.watch(self.inner.set_edit_purge(room, message, edits))
    }

    fn edit_purges(&self, max: usize) -> Result<Vec<EditPurge>, StoreError> {
        self.inner.edit_purges(max)
    }

    fn set_room_opener(&self, room: &str, account: &str) -> Result<(), StoreError> {
        self.watch(self.inner.set_room_opener(room, account))
    }

    fn forget_room(&self, room: &str, seq_floor: u64) -> Result<(), StoreError> {
        self.watch(self.inner.forget_room(room, seq_floor))
    }

    fn room_seq_floor(&self) -> Result<u64, StoreError> {
        self.inner.room_seq_floor()
    }

    fn put_dedup(&self, key: &str, entry: Option<DedupRecord>) -> Result<(), StoreError> {
        self.watch(self.inner.put_dedup(key, entry))
    }

    fn load_dedup(&self) -> Result<Vec<(String, DedupRecord)>, StoreError> {
        self.inner.load_dedup()
    }

    fn put_sanction(&self, key: &str, entry: Option<&SanctionRecord>) -> Result<(), StoreError> {
        self.watch(self.inner.put_sanction(key, entry))
    }

    fn load_sanctions(&self) -> Result<Vec<(String, SanctionRecord)>, StoreError> {
        self.inner.load_sanctions()
    }

    fn put_alert_counter(&self, device: &str, counter: u64) -> Result<(), StoreError> {
        self.watch(self.inner.put_alert_counter(device, counter))
    }

    fn remove_alert_counter(&self, device: &str) -> Result<(), StoreError> {
        self.watch(self.inner.remove_alert_counter(device))
    }

    fn load_alert_counters(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.inner.load_alert_counters()
    }

    fn set_packet_id(
        &self,
        client_id: &str,
        seq: u64,
        body: u64,
        packet_id: u16,
        record: &dyn Fn() -> QueuedRecord,
    ) -> Result<(), StoreError> {
        self.watch(self.inner.set_packet_id(client_id, seq, body, packet_id, record))
    }

    fn room_range(
        &self,
        room: &str,
        after: u64,
        before: u64,
        limit: usize,
        newest: bool,
    ) -> Result<Vec<(u64, RoomRecord)>, StoreError> {
        self.inner.room_range(room, after, before, limit, newest)
    }

    fn writes(&self) -> u64 {
        self.inner.writes()
    }

    /// A flush that works clears a failure; one that fails records it,
    /// and reopens a store that cannot go on once the disk has room
    /// (`sled_db.rs`). The flush still fails then: what it was to make
    /// durable is lost; the next one works.
    fn flush(&self) -> Result<(), StoreError> {
        let mark = self.inner.bytes_written();
        let result = self.watch(self.inner.flush());
        if result.is_ok() {
            self.health.flushed(mark);
            self.health.worked();
        } else if self.inner.needs_reopen() && self.health.room_to_reopen() {
            match self.inner.reopen() {
                Ok(true) => self.health.reopened(),
                Ok(false) => {}
                Err(error) => self.health.failed(&error),
            }
        }
        result
    }

    fn needs_reopen(&self) -> bool {
        self.inner.needs_reopen()
    }

    fn reopen(&self) -> Result<bool, StoreError> {
        self.inner.reopen()
    }

    fn reopens(&self) -> u64 {
        self.inner.reopens()
    }

    fn bytes_written(&self) -> u64 {
        self.inner.bytes_written()
    }

    fn size_on_disk(&self) -> u64 {
        self.inner.size_on_disk()
    }

    fn close(&self) {
        self.inner.close()
    }
}
