//! The store on disk, in sled 0.34.
//!
//! Trees: `meta` (format version), `retained` (topic → message),
//! `sessions` (client id → session), the journal's trees (see `journal.rs`)
//! and `qos2_in` (client id + packet id). Keys of per-session
//! trees start with the client id's length (u16, big endian) and bytes, so a
//! prefix scan finds one session's records.
//!
//! sled's `flush` writes with `sync_file_range` on Linux: it survives a
//! crash of the process (SIGKILL), not necessarily a power loss.
//!
//! Message records of persistent sessions go through the [`Journal`]:
//! one sled write per session per flush, not one per message.

use std::path::Path;

use super::journal::{session_prefix, Journal};
use super::records::{decode, encode};
use super::{LoadedSession, MessageRecord, QueuedRecord, SessionRecord, Store, StoreError, FORMAT_VERSION};

/// A sled database in the data directory.
pub struct SledStore {
    /// `None` once closed. A read lock per call costs little next to sled.
    open: parking_lot::RwLock<Option<Trees>>,
}

struct Trees {
    journal: Journal,
    db: sled::Db,
    retained: sled::Tree,
    sessions: sled::Tree,
    qos2_in: sled::Tree,
}

fn io(e: sled::Error) -> StoreError {
    StoreError::Io(e.to_string())
}

fn qos2_key(client_id: &str, packet_id: u16) -> Vec<u8> {
    let mut key = session_prefix(client_id);
    key.extend_from_slice(&packet_id.to_be_bytes());
    key
}

/// Opens sled, waiting up to 2 s for a lock that a just-closed store (in
/// this process: sled releases it from a background thread) still holds.
fn open_db(dir: &Path) -> Result<sled::Db, sled::Error> {
    let mut tries = 0;
    loop {
        match sled::Config::new().path(dir).open() {
            // sled reports a held lock as ErrorKind::Other with this text.
            Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") && tries < 40 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            other => return other,
        }
    }
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
        let db = open_db(dir).map_err(|e| open_err(e.to_string()))?;
        let meta = db.open_tree("meta").map_err(|e| open_err(e.to_string()))?;
        let tree = |name: &str| db.open_tree(name).map_err(|e| open_err(e.to_string()));
        let store = Trees {
            journal: Journal::open(&db).map_err(|e| open_err(e.to_string()))?,
            retained: tree("retained")?,
            sessions: tree("sessions")?,
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
                    store.retained.is_empty() && store.sessions.is_empty() && store.journal.is_empty();
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
            t.journal.remove_session(client_id)?;
            let mut batch = sled::Batch::default();
            for key in t.qos2_in.scan_prefix(session_prefix(client_id)).keys() {
                batch.remove(key.map_err(io)?);
            }
            t.qos2_in.apply_batch(batch).map_err(io)
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
                let messages = t.journal.load(&client_id)?;
                let incoming_qos2 = t
                    .qos2_in
                    .scan_prefix(&prefix)
                    .keys()
                    .filter_map(|k| k.ok())
                    .filter_map(|k| {
                        k.get(prefix.len()..)
                            .and_then(|s| s.try_into().ok())
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
        self.with(|t| t.journal.put(client_id, seq, message))
    }

    fn update_message(&self, client_id: &str, seq: u64, message: &QueuedRecord) -> Result<(), StoreError> {
        self.with(|t| t.journal.update(client_id, seq, message))
    }

    fn remove_message(&self, client_id: &str, seq: u64) -> Result<(), StoreError> {
        self.with(|t| {
            t.journal.remove(client_id, seq);
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
            t.journal.write_pending()?;
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
