//! De-duplication by application msg-id: a (room, sender, msg-id) seen
//! within `dedup_window_secs` is not stored or delivered again, also after a
//! reconnect or a broker restart (entries are stored).
//!
//! Bounded: at most `dedup_max_entries` entries and `dedup_max_bytes` of
//! keys in memory and on disk, the oldest going first; entries older than
//! the window are pruned periodically.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::store::{unix_ms_now, DedupRecord, Store};

pub struct DedupIndex {
    window_ms: u64,
    max_entries: usize,
    max_bytes: usize,
    store: Arc<dyn Store>,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    seen: HashMap<String, DedupRecord>,
    /// Keys in the order they were seen, for pruning oldest first.
    order: VecDeque<(u64, String)>,
    /// Memory the entries hold (see `entry_bytes`).
    bytes: usize,
}

/// What one entry costs in memory: its key twice (map and order) plus the
/// bookkeeping of both.
fn entry_bytes(key: &str) -> usize {
    2 * key.len() + 96
}

/// The key of one (room, sender, msg-id). Topic levels and MQTT strings
/// cannot contain U+0000, so it separates them unambiguously.
pub fn dedup_key(room: &str, sender: &str, msg_id: &str) -> String {
    format!("{room}\0{sender}\0{msg_id}")
}

impl DedupIndex {
    /// Loads the stored entries still inside the window. `room_last`
    /// gives a room's last stored `seq`: an entry is written just before
    /// its message, so after a crash between the two it names a message
    /// that is not there, and is dropped (the sender's retry is then
    /// stored, not acknowledged as a duplicate of nothing).
    pub fn load(
        store: Arc<dyn Store>,
        window_ms: u64,
        max_entries: usize,
        max_bytes: usize,
        room_last: impl Fn(&str) -> u64,
    ) -> Result<Self, crate::store::StoreError> {
        let now = unix_ms_now();
        let mut entries: Vec<(String, DedupRecord)> = store.load_dedup()?;
        entries.sort_by_key(|(_, r)| r.seen_unix_ms);
        let mut inner = Inner::default();
        for (key, record) in entries {
            let room = key.split('\0').next().unwrap_or_default();
            let stored = record.seq <= room_last(room);
            if stored && now.saturating_sub(record.seen_unix_ms) <= window_ms {
                inner.bytes += entry_bytes(&key);
                inner.order.push_back((record.seen_unix_ms, key.clone()));
                inner.seen.insert(key, record);
            } else {
                let _ = store.put_dedup(&key, None);
            }
        }
        let index = DedupIndex {
            window_ms,
            max_entries,
            max_bytes,
            store,
            inner: Mutex::new(inner),
        };
        // A smaller limit than the last run's: trim at once.
        index.trim(&mut index.inner.lock());
        Ok(index)
    }

    /// The `seq` under which this key was stored, if seen within the window.
    pub fn seen(&self, key: &str) -> Option<u64> {
        let now = unix_ms_now();
        let inner = self.inner.lock();
        inner
            .seen
            .get(key)
            .filter(|r| now.saturating_sub(r.seen_unix_ms) <= self.window_ms)
            .map(|r| r.seq)
    }

    /// Remembers a key (called under the room's lock, after the message was
    /// appended to the log).
    pub fn insert(&self, key: String, seq: u64) {
        let record = DedupRecord {
            seq,
            seen_unix_ms: unix_ms_now(),
        };
        if let Err(e) = self.store.put_dedup(&key, Some(record)) {
            tracing::error!(error = %e, "could not store a de-duplication entry");
        }
        let mut inner = self.inner.lock();
        let key_len = key.len();
        inner.bytes += entry_bytes(&key);
        inner.order.push_back((record.seen_unix_ms, key.clone()));
        if inner.seen.insert(key, record).is_some() {
            // A key past its window seen again: one map entry, not two.
            inner.bytes = inner.bytes.saturating_sub(key_len + 48);
        }
        self.trim(&mut inner);
    }

    /// Removes the entry of a message that could not be stored after all
    /// (its order entry ages out as usual).
    pub fn forget(&self, key: &str) {
        let mut inner = self.inner.lock();
        if inner.seen.remove(key).is_some() {
            inner.bytes = inner.bytes.saturating_sub(key.len() + 48);
            if let Err(e) = self.store.put_dedup(key, None) {
                tracing::warn!(error = %e, "could not remove a de-duplication entry");
            }
        }
    }

    /// Drops the oldest entries while over `max_entries` or `max_bytes`.
    fn trim(&self, inner: &mut Inner) {
        while inner.seen.len() > self.max_entries || inner.bytes > self.max_bytes {
            if !self.pop_oldest(inner) {
                break;
            }
        }
    }

    /// Memory the entries hold now, in bytes.
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.inner.lock().bytes
    }

    /// Forgets entries older than the window.
    pub fn prune(&self) {
        let cutoff = unix_ms_now().saturating_sub(self.window_ms);
        let mut inner = self.inner.lock();
        while inner.order.front().is_some_and(|(seen, _)| *seen < cutoff) {
            if !self.pop_oldest(&mut inner) {
                break;
            }
        }
    }

    fn pop_oldest(&self, inner: &mut Inner) -> bool {
        let Some((seen, key)) = inner.order.pop_front() else {
            return false;
        };
        // The order entry goes either way; the map entry only if current.
        inner.bytes = inner.bytes.saturating_sub(key.len() + 48);
        // A key seen again later has a newer entry in `order`; only the
        // entry matching the stored time removes it.
        if inner.seen.get(&key).is_some_and(|r| r.seen_unix_ms == seen) {
            inner.seen.remove(&key);
            inner.bytes = inner.bytes.saturating_sub(key.len() + 48);
            if let Err(e) = self.store.put_dedup(&key, None) {
                tracing::warn!(error = %e, "could not remove a de-duplication entry");
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_bounded_in_bytes_oldest_first() {
        let store: Arc<dyn Store> = Arc::new(crate::store::MemoryStore::default());
        let index = DedupIndex::load(store, 60_000, 1_000_000, 10_000, |_| u64::MAX).unwrap();
        for i in 0..1000u64 {
            index.insert(dedup_key("room", "sender", &format!("{i:0>100}")), i);
        }
        assert!(index.bytes() <= 10_000, "{}", index.bytes());
        // The newest are kept, the oldest went.
        assert_eq!(
            index.seen(&dedup_key("room", "sender", &format!("{:0>100}", 999))),
            Some(999)
        );
        assert_eq!(
            index.seen(&dedup_key("room", "sender", &format!("{:0>100}", 0))),
            None
        );
    }

    #[test]
    fn an_entry_whose_message_was_not_stored_is_dropped_at_load() {
        let store: Arc<dyn Store> = Arc::new(crate::store::MemoryStore::default());
        let index = DedupIndex::load(store.clone(), 60_000, 100, 1_000_000, |_| 0).unwrap();
        index.insert(dedup_key("ops", "alice", "stored"), 7);
        index.insert(dedup_key("ops", "alice", "lost"), 8);
        // After a crash the room's last stored message is 7.
        let reloaded = DedupIndex::load(
            store,
            60_000,
            100,
            1_000_000,
            |room| if room == "ops" { 7 } else { 0 },
        )
        .unwrap();
        assert_eq!(reloaded.seen(&dedup_key("ops", "alice", "stored")), Some(7));
        assert_eq!(reloaded.seen(&dedup_key("ops", "alice", "lost")), None);
    }
}
