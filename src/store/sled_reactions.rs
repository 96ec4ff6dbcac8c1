//! Reactions in the sled store, apart from the messages they are on
//! (tree `reactions`), so that one reaction writes two small keys however
//! many the message holds:
//! - room + seq + 1 + emoji → how many reacted with it (u64, big endian);
//! - room + seq + 2 + reactor's length (u16) + reactor + emoji → nothing.
//!
//! Room + seq is the room log's key (`seq_key`), so a range of the log's
//! keys (trimming, forgetting a room) is the same range here.

use super::journal::seq_key;
use super::sled_keys::u64_of;
use super::{Reactions, StoreError};

const COUNT: u8 = 1;
const REACTOR: u8 = 2;

fn io(e: sled::Error) -> StoreError {
    StoreError::Io(e.to_string())
}

fn count_prefix(room: &str, seq: u64) -> Vec<u8> {
    let mut key = seq_key(room, seq);
    key.push(COUNT);
    key
}

/// The prefix of `reactor`'s reactions on message `seq`.
fn reactor_prefix(room: &str, seq: u64, reactor: &str) -> Vec<u8> {
    let mut key = seq_key(room, seq);
    key.push(REACTOR);
    // An identity longer than u16 cannot log in (MQTT strings); cut
    // anyway, the prefix only has to be unambiguous.
    let len = u16::try_from(reactor.len()).unwrap_or(u16::MAX);
    key.extend_from_slice(&len.to_be_bytes());
    key.extend_from_slice(&reactor.as_bytes()[..usize::from(len)]);
    key
}

/// The reactions of message `seq`: reads at most `max_reaction_emoji`
/// counts and the requester's own reactions.
pub(super) fn read(
    tree: &sled::Tree,
    room: &str,
    seq: u64,
    reactor: Option<&str>,
) -> Result<Reactions, StoreError> {
    let prefix = count_prefix(room, seq);
    let mut reactions = Reactions::default();
    for entry in tree.scan_prefix(&prefix) {
        let (key, value) = entry.map_err(io)?;
        let emoji = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
        reactions.counts.push((emoji, u64_of(&key, &value)?));
    }
    if let Some(reactor) = reactor {
        let prefix = reactor_prefix(room, seq, reactor);
        for key in tree.scan_prefix(&prefix).keys() {
            let key = key.map_err(io)?;
            reactions
                .mine
                .push(String::from_utf8_lossy(&key[prefix.len()..]).into_owned());
        }
    }
    Ok(reactions)
}

/// Adds (`on`) or takes back one reaction; whether anything changed, and
/// the bytes written. The caller holds the room's order, so the count is
/// not raced.
pub(super) fn set(
    tree: &sled::Tree,
    room: &str,
    seq: u64,
    emoji: &str,
    reactor: &str,
    on: bool,
) -> Result<usize, StoreError> {
    let mut key = reactor_prefix(room, seq, reactor);
    key.extend_from_slice(emoji.as_bytes());
    if tree.contains_key(&key).map_err(io)? == on {
        return Ok(0);
    }
    let mut count_key = count_prefix(room, seq);
    count_key.extend_from_slice(emoji.as_bytes());
    let count = match tree.get(&count_key).map_err(io)? {
        Some(v) => u64_of(&count_key, &v)?,
        None => 0,
    };
    let mut batch = sled::Batch::default();
    if on {
        batch.insert(key.as_slice(), &[][..]);
        batch.insert(count_key.as_slice(), &(count + 1).to_be_bytes()[..]);
    } else {
        batch.remove(key.as_slice());
        match count.saturating_sub(1) {
            0 => batch.remove(count_key.as_slice()),
            left => batch.insert(count_key.as_slice(), &left.to_be_bytes()[..]),
        }
    }
    tree.apply_batch(batch).map_err(io)?;
    Ok(key.len() + count_key.len() + 8)
}

/// Removes every key from `from` up to (not including) `to`.
pub(super) fn remove_range(tree: &sled::Tree, from: Vec<u8>, to: Vec<u8>) -> Result<(), StoreError> {
    let mut batch = sled::Batch::default();
    for key in tree.range(from..to).keys() {
        batch.remove(key.map_err(io)?);
    }
    tree.apply_batch(batch).map_err(io)
}

/// Removes the reactions of message `seq` (deleted).
pub(super) fn clear(tree: &sled::Tree, room: &str, seq: u64) -> Result<(), StoreError> {
    remove_range(tree, seq_key(room, seq), seq_key(room, seq.saturating_add(1)))
}
