//! Keys and values of the room trees of the sled store.

use std::collections::BTreeMap;

use super::{RoomHead, StoreError};

/// The head of `room` in `heads`, added when it is not there yet.
pub(super) fn room_head<'a>(heads: &'a mut BTreeMap<String, RoomHead>, room: &[u8]) -> &'a mut RoomHead {
    let room = String::from_utf8_lossy(room).into_owned();
    heads.entry(room.clone()).or_insert_with(|| RoomHead {
        room,
        ..RoomHead::default()
    })
}

/// A big-endian u64 as stored under `key`.
pub(super) fn u64_of(key: &[u8], value: &[u8]) -> Result<u64, StoreError> {
    value
        .try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| StoreError::Corrupt {
            key: String::from_utf8_lossy(key).into_owned(),
            reason: "not 8 bytes".into(),
        })
}

/// The key of a room's `seq` reservation in `room_heads`: the room name
/// and a NUL, which no room name contains.
pub(super) fn reservation_key(room: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(room.len() + 1);
    key.extend_from_slice(room.as_bytes());
    key.push(0);
    key
}
