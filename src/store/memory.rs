//! The store in process memory: the reference implementation of the
//! [`Store`] contract, for tests. Nothing survives a restart.

use std::collections::{BTreeMap, BTreeSet};

use parking_lot::Mutex;

use super::{LoadedSession, MessageRecord, QueuedRecord, SessionRecord, Store, StoreError};

#[derive(Default)]
struct Inner {
    retained: BTreeMap<String, MessageRecord>,
    sessions: BTreeMap<String, SessionRecord>,
    messages: BTreeMap<(String, u64), QueuedRecord>,
    qos2_in: BTreeSet<(String, u16)>,
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
        inner.messages.retain(|(id, _), _| id != client_id);
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

    fn put_message(&self, client_id: &str, seq: u64, message: &QueuedRecord) -> Result<(), StoreError> {
        self.inner
            .lock()
            .messages
            .insert((client_id.to_string(), seq), message.clone());
        Ok(())
    }

    fn update_message(&self, client_id: &str, seq: u64, message: &QueuedRecord) -> Result<(), StoreError> {
        self.put_message(client_id, seq, message)
    }

    fn remove_message(&self, client_id: &str, seq: u64) -> Result<(), StoreError> {
        self.inner.lock().messages.remove(&(client_id.to_string(), seq));
        Ok(())
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

    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn size_on_disk(&self) -> u64 {
        0
    }
}
