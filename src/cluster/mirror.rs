//! Cluster mode's store: the node's own store, with every write to a
//! persistent session's record (`sessions.rs`) and to its queue of plain
//! messages (`queues.rs`) passed on to JetStream, so the session outlives
//! the node.

use std::sync::Arc;

use super::queues::Queues;
use super::sessions::Sessions;
use crate::store::{
    DedupRecord, LoadedSession, MessageRecord, QueuedRecord, Reactions, RoomHead, RoomRecord, SanctionRecord,
    SessionRecord, Store, StoreError,
};

/// A store whose session writes (records and queues) are also made in
/// the cluster.
pub(crate) struct Mirrored {
    inner: Arc<dyn Store>,
    sessions: Arc<Sessions>,
    queues: Arc<Queues>,
}

impl Mirrored {
    pub fn new(inner: Arc<dyn Store>, sessions: Arc<Sessions>, queues: Arc<Queues>) -> Mirrored {
        Mirrored {
            inner,
            sessions,
            queues,
        }
    }
}

impl Store for Mirrored {
    fn put_message(
        &self,
        client_id: &str,
        seq: u64,
        body: u64,
        message: QueuedRecord,
    ) -> Result<(), StoreError> {
        self.queues.put(client_id, seq, &message);
        self.inner.put_message(client_id, seq, body, message)
    }

    fn update_message(
        &self,
        client_id: &str,
        seq: u64,
        body: u64,
        message: QueuedRecord,
    ) -> Result<(), StoreError> {
        self.queues.put(client_id, seq, &message);
        self.inner.update_message(client_id, seq, body, message)
    }

    fn set_packet_id(
        &self,
        client_id: &str,
        seq: u64,
        body: u64,
        packet_id: u16,
        record: &dyn Fn() -> QueuedRecord,
    ) -> Result<(), StoreError> {
        self.queues.put(client_id, seq, &record());
        self.inner.set_packet_id(client_id, seq, body, packet_id, record)
    }

    fn new_body_id(&self) -> u64 {
        self.inner.new_body_id()
    }

    fn load_body(&self, body: u64) -> Result<Option<MessageRecord>, StoreError> {
        self.inner.load_body(body)
    }

    fn remove_message(&self, client_id: &str, seq: u64) -> Result<(), StoreError> {
        self.queues.remove(client_id, seq);
        self.inner.remove_message(client_id, seq)
    }

    fn remove_session(&self, client_id: &str) -> Result<(), StoreError> {
        self.queues.remove_session(client_id);
        let removed = self.inner.remove_session(client_id);
        self.sessions.forget(client_id);
        removed
    }

    // The node that took the session over keeps its record in the
    // cluster: only this node's copy goes.
    fn remove_session_moved_away(&self, client_id: &str) -> Result<(), StoreError> {
        self.queues.remove_session(client_id);
        self.inner.remove_session(client_id)
    }

    // The acknowledgement that promises the record waits for JetStream's
    // too (the group commit's barrier).
    fn put_session(&self, client_id: &str, session: &SessionRecord) -> Result<(), StoreError> {
        let stored = self.inner.put_session(client_id, session);
        self.sessions.save(client_id, session);
        stored
    }

    // Everything else is the node's own.

    fn put_retained(&self, topic: &str, message: Option<&MessageRecord>) -> Result<(), StoreError> {
        self.inner.put_retained(topic, message)
    }

    fn load_retained(&self) -> Result<Vec<MessageRecord>, StoreError> {
        self.inner.load_retained()
    }

    fn load_sessions(&self) -> Result<Vec<LoadedSession>, StoreError> {
        self.inner.load_sessions()
    }

    fn put_incoming_qos2(&self, client_id: &str, packet_id: u16) -> Result<(), StoreError> {
        self.inner.put_incoming_qos2(client_id, packet_id)
    }

    fn remove_incoming_qos2(&self, client_id: &str, packet_id: u16) -> Result<(), StoreError> {
        self.inner.remove_incoming_qos2(client_id, packet_id)
    }

    fn append_room(&self, room: &str, seq: u64, record: &RoomRecord) -> Result<(), StoreError> {
        self.inner.append_room(room, seq, record)
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

    fn rewrite_room(&self, room: &str, seq: u64, record: &RoomRecord) -> Result<(), StoreError> {
        self.inner.rewrite_room(room, seq, record)
    }

    fn reserve_room_seqs(&self, room: &str, up_to: u64) -> Result<(), StoreError> {
        self.inner.reserve_room_seqs(room, up_to)
    }

    fn room_heads(&self) -> Result<Vec<RoomHead>, StoreError> {
        self.inner.room_heads()
    }

    fn trim_room(&self, room: &str, below: u64) -> Result<u64, StoreError> {
        self.inner.trim_room(room, below)
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
        self.inner.set_reaction(room, seq, emoji, reactor, on)
    }

    fn clear_reactions(&self, room: &str, seq: u64) -> Result<(), StoreError> {
        self.inner.clear_reactions(room, seq)
    }

    fn purge_reactions(&self, max_keys: usize) -> Result<usize, StoreError> {
        self.inner.purge_reactions(max_keys)
    }

    fn set_edit_purge(&self, room: &str, message: u64, edits: &[u64]) -> Result<(), StoreError> {
        self.inner.set_edit_purge(room, message, edits)
    }

    fn edit_purges(&self, max: usize) -> Result<Vec<crate::store::EditPurge>, StoreError> {
        self.inner.edit_purges(max)
    }

    fn set_room_opener(&self, room: &str, account: &str) -> Result<(), StoreError> {
        self.inner.set_room_opener(room, account)
    }

    fn forget_room(&self, room: &str, seq_floor: u64) -> Result<(), StoreError> {
        self.inner.forget_room(room, seq_floor)
    }

    fn room_seq_floor(&self) -> Result<u64, StoreError> {
        self.inner.room_seq_floor()
    }

    fn put_dedup(&self, key: &str, entry: Option<DedupRecord>) -> Result<(), StoreError> {
        self.inner.put_dedup(key, entry)
    }

    fn load_dedup(&self) -> Result<Vec<(String, DedupRecord)>, StoreError> {
        self.inner.load_dedup()
    }

    fn put_sanction(&self, key: &str, entry: Option<&SanctionRecord>) -> Result<(), StoreError> {
        self.inner.put_sanction(key, entry)
    }

    fn load_sanctions(&self) -> Result<Vec<(String, SanctionRecord)>, StoreError> {
        self.inner.load_sanctions()
    }

    // Kept by this node only: JetStream does not carry alert counters.
    fn put_alert_counter(&self, device: &str, counter: u64) -> Result<(), StoreError> {
        self.inner.put_alert_counter(device, counter)
    }

    fn remove_alert_counter(&self, device: &str) -> Result<(), StoreError> {
        self.inner.remove_alert_counter(device)
    }

    fn load_alert_counters(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.inner.load_alert_counters()
    }

    fn writes(&self) -> u64 {
        self.inner.writes()
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.inner.flush()
    }

    fn size_on_disk(&self) -> u64 {
        self.inner.size_on_disk()
    }

    fn close(&self) {
        self.inner.close()
    }
}
