//! The in-memory store: for `storage = "memory"` and for tests.

use std::collections::BTreeMap;

use parking_lot::Mutex;

use super::{Store, StoreError, StoredRetained};

/// Keeps everything in process memory; nothing survives a restart.
#[derive(Default)]
pub struct MemoryStore {
    retained: Mutex<BTreeMap<String, StoredRetained>>,
}

impl Store for MemoryStore {
    fn put_retained(&self, message: &StoredRetained) -> Result<(), StoreError> {
        let mut map = self.retained.lock();
        if message.payload.is_empty() {
            map.remove(&message.topic);
        } else {
            map.insert(message.topic.clone(), message.clone());
        }
        Ok(())
    }

    fn load_retained(&self) -> Result<Vec<StoredRetained>, StoreError> {
        Ok(self.retained.lock().values().cloned().collect())
    }

    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retained_set_replace_clear() {
        let store = MemoryStore::default();
        let msg = |p: &'static str| StoredRetained {
            topic: "a/b".into(),
            payload: bytes::Bytes::from_static(p.as_bytes()),
            qos: 1,
            expires_at_unix_ms: None,
        };
        store.put_retained(&msg("one")).unwrap();
        store.put_retained(&msg("two")).unwrap();
        assert_eq!(store.load_retained().unwrap(), vec![msg("two")]);
        store.put_retained(&msg("")).unwrap();
        assert!(store.load_retained().unwrap().is_empty());
    }
}
