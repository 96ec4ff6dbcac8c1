//! The room trees of the sled store (`room_log`, `room_heads`,
//! `room_openers`, and `reactions`: `sled_reactions.rs`): reading a range
//! of a log, the heads at start-up, trimming and forgetting a room.

use std::collections::BTreeMap;

use super::journal::{seq_key, seq_of};
use super::records::decode_room;
use super::sled_db::Trees;
use super::sled_keys::{reservation_key, room_head, u64_of};
use super::sled_reactions::queue_purge;
use super::{RoomHead, RoomRecord, StoreError};

/// The key in `meta` of `room_seq_floor`.
pub(super) const ROOM_SEQ_FLOOR: &str = "room_seq_floor";

fn io(e: sled::Error) -> StoreError {
    StoreError::Io(e.to_string())
}

impl Trees {
    pub(super) fn room_range(
        &self,
        room: &str,
        after: u64,
        before: u64,
        limit: usize,
        newest: bool,
    ) -> Result<Vec<(u64, RoomRecord)>, StoreError> {
        if after.saturating_add(1) >= before {
            return Ok(Vec::new());
        }
        let range = self
            .room_log
            .range(seq_key(room, after + 1)..seq_key(room, before));
        let decode_entry = |entry: sled::Result<(sled::IVec, sled::IVec)>| {
            let (key, value) = entry.map_err(io)?;
            let seq = seq_of(&key).ok_or_else(|| StoreError::Corrupt {
                key: String::from_utf8_lossy(&key).into_owned(),
                reason: "room log key without seq".into(),
            })?;
            Ok((seq, decode_room(&key, &value)?))
        };
        if newest {
            let mut out = range
                .rev()
                .take(limit)
                .map(decode_entry)
                .collect::<Result<Vec<_>, _>>()?;
            out.reverse();
            Ok(out)
        } else {
            range.take(limit).map(decode_entry).collect()
        }
    }

    pub(super) fn room_heads(&self) -> Result<Vec<RoomHead>, StoreError> {
        let mut heads: BTreeMap<String, RoomHead> = BTreeMap::new();
        for entry in self.room_heads.iter() {
            let (key, value) = entry.map_err(io)?;
            let seq = u64_of(&key, &value)?;
            // `room` holds the last appended seq, `room\0` the
            // reservation.
            let (room, reservation) = match key.strip_suffix(b"\0") {
                Some(room) => (room, true),
                None => (&key[..], false),
            };
            let head = room_head(&mut heads, room);
            if reservation {
                head.reserved = seq;
            } else {
                head.last = seq;
            }
        }
        // A room opened by a post that was not stored has an opener and
        // no head: it is loaded too, so upkeep forgets it.
        for entry in self.room_openers.iter() {
            let (key, value) = entry.map_err(io)?;
            room_head(&mut heads, &key).opener = Some(String::from_utf8_lossy(&value).into_owned());
        }
        Ok(heads.into_values().collect())
    }

    /// Removes the entries below `below` and queues their reactions'
    /// removal; how many entries.
    pub(super) fn trim_room(&self, room: &str, below: u64) -> Result<u64, StoreError> {
        let mut batch = sled::Batch::default();
        let mut removed = 0;
        for key in self.room_log.range(seq_key(room, 0)..seq_key(room, below)).keys() {
            batch.remove(key.map_err(io)?);
            removed += 1;
        }
        if removed == 0 {
            return Ok(0);
        }
        // Queued first: a crash between the two writes purges reactions
        // of messages being trimmed anyway, never leaves orphans.
        queue_purge(&self.reaction_purges, room, 0, below)?;
        self.room_log.apply_batch(batch).map_err(io)?;
        Ok(removed)
    }

    pub(super) fn room_len(&self, room: &str) -> Result<u64, StoreError> {
        let mut len = 0;
        for key in self
            .room_log
            .range(seq_key(room, 0)..=seq_key(room, u64::MAX))
            .keys()
        {
            key.map_err(io)?;
            len += 1;
        }
        Ok(len)
    }

    pub(super) fn forget_room(&self, room: &str, seq_floor: u64) -> Result<(), StoreError> {
        // The floor first: a crash after it and before the removal
        // keeps the room, never loses the floor.
        let floor = match self.meta.get(ROOM_SEQ_FLOOR).map_err(io)? {
            Some(v) => u64_of(ROOM_SEQ_FLOOR.as_bytes(), &v)?,
            None => 0,
        };
        if seq_floor > floor {
            self.meta
                .insert(ROOM_SEQ_FLOOR, &seq_floor.to_be_bytes())
                .map_err(io)?;
        }
        // Every reaction is on a `seq` at most the floor; a room opened
        // again starts above it, so the queued range never reaches its
        // reactions.
        queue_purge(&self.reaction_purges, room, 0, seq_floor.saturating_add(1))?;
        let mut batch = sled::Batch::default();
        for key in self
            .room_log
            .range(seq_key(room, 0)..=seq_key(room, u64::MAX))
            .keys()
        {
            batch.remove(key.map_err(io)?);
        }
        self.room_log.apply_batch(batch).map_err(io)?;
        self.room_heads.remove(room.as_bytes()).map_err(io)?;
        self.room_heads.remove(reservation_key(room)).map_err(io)?;
        self.room_openers.remove(room.as_bytes()).map(drop).map_err(io)
    }
}
