//! Reading a data directory of the previous format, `roomq-store-3`, whose
//! session queue records each held a copy of their message.
//!
//! Opening it converts the queue records once: each record's message
//! becomes a body of its own (copies made before cannot be told apart from
//! different messages, so they stay copies), the record a reference to it.
//! The new records go to new trees; the old ones are dropped only after the
//! format mark says `roomq-store-4` and is flushed, so a crash during the
//! conversion leaves the old trees as they were, and the next start
//! converts again from scratch.

use std::collections::HashMap;

use bytes::Bytes;

use super::bodies::{self, Bodies};
use super::journal::{BLOCKS, UPDATES};
use super::records::{decode, encode};
use super::{QueuedRecord, QueuedRef, FORMAT_VERSION};

pub(super) const PREVIOUS_FORMAT: &str = "roomq-store-3";
const OLD_BLOCKS: &str = "journal_blocks";
const OLD_UPDATES: &str = "journal_updates";

/// What can go wrong converting: sled, or a record that does not decode.
#[derive(Debug, thiserror::Error)]
pub(super) enum MigrateError {
    #[error("converting from {PREVIOUS_FORMAT}: {0}")]
    Sled(#[from] sled::Error),
    #[error("converting from {PREVIOUS_FORMAT}: {0}")]
    Store(#[from] super::StoreError),
}

/// Drops the trees of the previous format, if a conversion left them.
pub(super) fn drop_old_trees(db: &sled::Db) -> Result<(), sled::Error> {
    db.drop_tree(OLD_BLOCKS)?;
    db.drop_tree(OLD_UPDATES)?;
    Ok(())
}

/// Converts the queue records of a `roomq-store-3` directory and marks it
/// `roomq-store-4`. The acknowledged-record lists and packet-id tables
/// keep their trees and format.
pub(super) fn from_store_3(db: &sled::Db, meta: &sled::Tree, bodies: &Bodies) -> Result<(), MigrateError> {
    let new_blocks = db.open_tree(BLOCKS)?;
    let new_updates = db.open_tree(UPDATES)?;
    // Left by a conversion that a crash interrupted.
    new_blocks.clear()?;
    new_updates.clear()?;
    bodies.tree().clear()?;
    let old_blocks = db.open_tree(OLD_BLOCKS)?;
    let old_updates = db.open_tree(OLD_UPDATES)?;
    let acked_tree = db.open_tree("journal_acked")?;
    // Record key (client prefix + seq) → its body, for the updates.
    let mut body_of: HashMap<Vec<u8>, u64> = HashMap::new();
    let mut converted = 0usize;
    for entry in old_blocks.iter() {
        let (key, value) = entry?;
        let entries: Vec<(u64, Bytes)> = decode(&key, &value)?;
        let acked: Vec<u64> = match acked_tree.get(&key)? {
            Some(bytes) => decode(&key, &bytes)?,
            None => Vec::new(),
        };
        let prefix = key.get(..key.len().saturating_sub(8)).unwrap_or_default();
        let mut refs = Vec::with_capacity(entries.len());
        for (seq, bytes) in entries {
            let record: QueuedRecord = decode(&key, &bytes)?;
            // An acknowledged record is never read again: it names no body.
            let body = if acked.contains(&seq) {
                0
            } else {
                let id = bodies.new_id();
                bodies.tree().insert(bodies::key(id), encode(&record.message)?)?;
                body_of.insert([prefix, &seq.to_be_bytes()[..]].concat(), id);
                converted += 1;
                id
            };
            refs.push((seq, Bytes::from(encode(&QueuedRef::of(&record, body))?)));
        }
        new_blocks.insert(&key, encode(&refs)?)?;
    }
    for entry in old_updates.iter() {
        let (key, value) = entry?;
        let Some(body) = body_of.get(key.as_ref()) else {
            continue;
        };
        let record: QueuedRecord = decode(&key, &value)?;
        new_updates.insert(&key, encode(&QueuedRef::of(&record, *body))?)?;
    }
    meta.insert("format", FORMAT_VERSION.as_bytes())?;
    db.flush()?;
    drop((old_blocks, old_updates));
    drop_old_trees(db)?;
    db.flush()?;
    tracing::info!(
        messages = converted,
        "converted the data directory from {PREVIOUS_FORMAT} to {FORMAT_VERSION}"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::journal::seq_key;
    use crate::store::{MessageRecord, SessionRecord, SledStore, Store};

    fn queued(payload: &'static str, packet_id: Option<u16>) -> QueuedRecord {
        QueuedRecord {
            message: MessageRecord {
                topic: "t".into(),
                payload: Bytes::from_static(payload.as_bytes()),
                qos: 2,
                retain: false,
                properties: None,
                expires_at_unix_ms: None,
                publisher: None,
            },
            qos: 2,
            retain: false,
            subscription_ids: vec![4],
            packet_id,
            released: packet_id.is_some(),
        }
    }

    /// A directory as `roomq-store-3` left it: one session with three
    /// records in one block, the first acknowledged, the third with QoS 2
    /// progress in the updates tree.
    fn write_store_3(dir: &std::path::Path) {
        let db = sled::open(dir).unwrap();
        db.open_tree("meta")
            .unwrap()
            .insert("format", PREVIOUS_FORMAT)
            .unwrap();
        let session = SessionRecord {
            expiry_secs: 60,
            ..Default::default()
        };
        db.open_tree("sessions")
            .unwrap()
            .insert("old", encode(&session).unwrap())
            .unwrap();
        let block: Vec<(u64, Bytes)> = ["one", "two", "three"]
            .iter()
            .zip(1u64..)
            .map(|(p, seq)| (seq, Bytes::from(encode(&queued(p, None)).unwrap())))
            .collect();
        let key = seq_key("old", 1);
        db.open_tree(OLD_BLOCKS)
            .unwrap()
            .insert(&key, encode(&block).unwrap())
            .unwrap();
        db.open_tree("journal_acked")
            .unwrap()
            .insert(&key, encode(&vec![1u64]).unwrap())
            .unwrap();
        db.open_tree(OLD_UPDATES)
            .unwrap()
            .insert(seq_key("old", 3), encode(&queued("three", Some(5))).unwrap())
            .unwrap();
        db.flush().unwrap();
    }

    #[test]
    fn a_store_3_directory_opens_and_its_queues_deliver() {
        let dir = tempfile::tempdir().unwrap();
        write_store_3(dir.path());
        let store = SledStore::open(dir.path()).unwrap();
        let sessions = store.load_sessions().unwrap();
        let old = &sessions[0];
        let read: Vec<_> = old
            .messages
            .iter()
            .map(|(seq, r)| {
                let body = store.load_body(r.body).unwrap().expect("its body");
                (*seq, r.clone().with_body(body))
            })
            .collect();
        assert_eq!(
            read,
            vec![(2, queued("two", None)), (3, queued("three", Some(5)))]
        );
        let bodies: Vec<u64> = old.messages.iter().map(|(_, r)| r.body).collect();
        drop(sessions);
        drop(store);

        // Converted once: it opens as the current format (the same bodies,
        // not converted again), and the bodies go with the last
        // acknowledgement.
        let store = SledStore::open(dir.path()).unwrap();
        let again: Vec<u64> = store.load_sessions().unwrap()[0]
            .messages
            .iter()
            .map(|(_, r)| r.body)
            .collect();
        assert_eq!(again, bodies);
        store.remove_message("old", 2).unwrap();
        store.remove_message("old", 3).unwrap();
        store.flush().unwrap();
        for body in bodies {
            assert_eq!(store.load_body(body).unwrap(), None);
        }
    }
}
