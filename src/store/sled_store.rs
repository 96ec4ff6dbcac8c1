//! The store on disk, in sled 0.34.
//!
//! Trees: `meta` (format version), `retained` (topic → message),
//! `sessions` (client id → session), `messages` (client id + queue sequence
//! → message) and `qos2_in` (client id + packet id). Keys of per-session
//! trees start with the client id's length (u16, big endian) and bytes, so a
//! prefix scan finds one session's records.
//!
//! sled's `flush` writes with `sync_file_range` on Linux: it survives a
//! crash of the process (SIGKILL), not necessarily a power loss.
//!
//! Message records are coalesced before they reach sled: puts and removes
//! wait in memory until the next `flush`, which writes them as one batch. A
//! record written and removed between two flushes (a message its subscriber
//! acknowledged before the group commit) never touches sled. This is safe
//! because nothing is acknowledged to a publisher before that flush: by then
//! the message is either on disk or already delivered.

use std::path::Path;

use super::records::{decode, encode};
use super::{LoadedSession, MessageRecord, QueuedRecord, SessionRecord, Store, StoreError, FORMAT_VERSION};

/// A sled database in the data directory.
pub struct SledStore {
    /// `None` once closed. A read lock per call costs little next to sled.
    open: parking_lot::RwLock<Option<Trees>>,
}

/// A message-record operation waiting for the next flush.
struct PendingOp {
    /// `Some`: write this value; `None`: remove the key.
    value: Option<Vec<u8>>,
    /// The key is not in sled yet, so a remove can simply drop the put.
    fresh: bool,
}

struct Trees {
    pending: parking_lot::Mutex<std::collections::HashMap<Vec<u8>, PendingOp>>,
    db: sled::Db,
    retained: sled::Tree,
    sessions: sled::Tree,
    messages: sled::Tree,
    qos2_in: sled::Tree,
}

fn io(e: sled::Error) -> StoreError {
    StoreError::Io(e.to_string())
}

fn session_prefix(client_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(2 + client_id.len() + 8);
    key.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    key.extend_from_slice(client_id.as_bytes());
    key
}

fn message_key(client_id: &str, seq: u64) -> Vec<u8> {
    let mut key = session_prefix(client_id);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

fn qos2_key(client_id: &str, packet_id: u16) -> Vec<u8> {
    let mut key = session_prefix(client_id);
    key.extend_from_slice(&packet_id.to_be_bytes());
    key
}

/// Splits a per-session key into the client id and the suffix.
fn split_key(key: &[u8]) -> Option<(&str, &[u8])> {
    let len = usize::from(u16::from_be_bytes([*key.first()?, *key.get(1)?]));
    let id = std::str::from_utf8(key.get(2..2 + len)?).ok()?;
    Some((id, key.get(2 + len..)?))
}

impl SledStore {
    /// Opens (or creates) the store in `dir`. Refuses a directory that holds
    /// another format, or data without a format mark, without changing it.
    pub fn open(dir: &Path) -> Result<SledStore, StoreError> {
        let path = dir.display().to_string();
        let open_err = |reason: String| StoreError::Open {
            path: path.clone(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|e| open_err(e.to_string()))?;
        let db = sled::Config::new()
            .path(dir)
            .open()
            .map_err(|e| open_err(e.to_string()))?;
        let meta = db.open_tree("meta").map_err(|e| open_err(e.to_string()))?;
        let tree = |name: &str| db.open_tree(name).map_err(|e| open_err(e.to_string()));
        let store = Trees {
            pending: parking_lot::Mutex::default(),
            retained: tree("retained")?,
            sessions: tree("sessions")?,
            messages: tree("messages")?,
            qos2_in: tree("qos2_in")?,
            db,
        };
        match meta.get("format").map_err(|e| open_err(e.to_string()))? {
            Some(found) if found.as_ref() == FORMAT_VERSION.as_bytes() => {}
            Some(found) => {
                return Err(StoreError::WrongFormat {
                    path,
                    found: String::from_utf8_lossy(&found).into_owned(),
                })
            }
            None => {
                let empty =
                    store.retained.is_empty() && store.sessions.is_empty() && store.messages.is_empty();
                if !empty {
                    return Err(StoreError::WrongFormat {
                        path,
                        found: "no format mark".into(),
                    });
                }
                meta.insert("format", FORMAT_VERSION.as_bytes())
                    .map_err(|e| open_err(e.to_string()))?;
                store.db.flush().map_err(|e| open_err(e.to_string()))?;
            }
        }
        Ok(SledStore {
            open: parking_lot::RwLock::new(Some(store)),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&Trees) -> Result<T, StoreError>) -> Result<T, StoreError> {
        match self.open.read().as_ref() {
            Some(trees) => f(trees),
            None => Err(StoreError::Closed),
        }
    }
}

impl Store for SledStore {
    fn put_retained(&self, topic: &str, message: Option<&MessageRecord>) -> Result<(), StoreError> {
        self.with(|t| match message {
            Some(m) => t
                .retained
                .insert(topic.as_bytes(), encode(m)?)
                .map(drop)
                .map_err(io),
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
        self.with(|t| {
            t.sessions
                .insert(client_id.as_bytes(), encode(session)?)
                .map(drop)
                .map_err(io)
        })
    }

    fn remove_session(&self, client_id: &str) -> Result<(), StoreError> {
        self.with(|t| {
            t.sessions.remove(client_id.as_bytes()).map_err(io)?;
            let prefix = session_prefix(client_id);
            t.pending.lock().retain(|key, _| !key.starts_with(&prefix));
            for tree in [&t.messages, &t.qos2_in] {
                let mut batch = sled::Batch::default();
                for key in tree.scan_prefix(&prefix).keys() {
                    batch.remove(key.map_err(io)?);
                }
                tree.apply_batch(batch).map_err(io)?;
            }
            Ok(())
        })
    }

    fn load_sessions(&self) -> Result<Vec<LoadedSession>, StoreError> {
        self.with(|t| {
            let mut out = Vec::new();
            for entry in t.sessions.iter() {
                let (key, value) = entry.map_err(io)?;
                let client_id = String::from_utf8_lossy(&key).into_owned();
                let record: SessionRecord = decode(&key, &value)?;
                let prefix = session_prefix(&client_id);
                let mut messages = Vec::new();
                for m in t.messages.scan_prefix(&prefix) {
                    let (k, v) = m.map_err(io)?;
                    let seq = split_key(&k)
                        .and_then(|(_, s)| s.try_into().ok())
                        .map(u64::from_be_bytes)
                        .ok_or_else(|| StoreError::Corrupt {
                            key: client_id.clone(),
                            reason: "bad message key".into(),
                        })?;
                    messages.push((seq, decode::<QueuedRecord>(&k, &v)?));
                }
                let incoming_qos2 = t
                    .qos2_in
                    .scan_prefix(&prefix)
                    .keys()
                    .filter_map(|k| k.ok())
                    .filter_map(|k| {
                        split_key(&k)
                            .and_then(|(_, s)| s.try_into().ok())
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
            Ok(out)
        })
    }

    fn put_message(&self, client_id: &str, seq: u64, message: &QueuedRecord) -> Result<(), StoreError> {
        self.with(|t| {
            let key = message_key(client_id, seq);
            let value = encode(message)?;
            let mut pending = t.pending.lock();
            let fresh = match pending.get(&key) {
                Some(op) => op.fresh,
                None => !t.messages.contains_key(&key).map_err(io)?,
            };
            pending.insert(
                key,
                PendingOp {
                    value: Some(value),
                    fresh,
                },
            );
            Ok(())
        })
    }

    fn remove_message(&self, client_id: &str, seq: u64) -> Result<(), StoreError> {
        self.with(|t| {
            let key = message_key(client_id, seq);
            let mut pending = t.pending.lock();
            match pending.get(&key) {
                Some(op) if op.fresh => {
                    pending.remove(&key);
                }
                _ => {
                    pending.insert(
                        key,
                        PendingOp {
                            value: None,
                            fresh: false,
                        },
                    );
                }
            }
            Ok(())
        })
    }

    fn put_incoming_qos2(&self, client_id: &str, packet_id: u16) -> Result<(), StoreError> {
        self.with(|t| {
            t.qos2_in
                .insert(qos2_key(client_id, packet_id), &[])
                .map(drop)
                .map_err(io)
        })
    }

    fn remove_incoming_qos2(&self, client_id: &str, packet_id: u16) -> Result<(), StoreError> {
        self.with(|t| {
            t.qos2_in
                .remove(qos2_key(client_id, packet_id))
                .map(drop)
                .map_err(io)
        })
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.with(|t| {
            let ops = std::mem::take(&mut *t.pending.lock());
            if !ops.is_empty() {
                let mut batch = sled::Batch::default();
                for (key, op) in ops {
                    match op.value {
                        Some(value) => batch.insert(key, value),
                        None => batch.remove(key),
                    }
                }
                t.messages.apply_batch(batch).map_err(io)?;
            }
            t.db.flush().map(drop).map_err(io)
        })
    }

    fn size_on_disk(&self) -> u64 {
        self.with(|t| Ok(t.db.size_on_disk().unwrap_or(0))).unwrap_or(0)
    }

    fn close(&self) {
        let _ = self.flush();
        self.open.write().take();
    }
}
