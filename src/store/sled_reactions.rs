//! Reactions in the sled store, apart from the messages they are on
//! (tree `reactions`), so that one reaction writes two small keys however
//! many the message holds:
//! - room + seq + 1 + emoji → how many reacted with it (u64, big endian);
//! - room + seq + 2 + reactor's length (u16) + reactor + emoji → nothing.
//!
//! Room + seq is the room log's key (`seq_key`), so a range of the log's
//! keys (trimming, forgetting a room) is the same range here.
//!
//! Removing a message does not remove its reactions at once: a message
//! may hold `max_reactions_per_message` of them, and a trim removes up to
//! 64 messages, an age-out or a forgotten room more, so one batch would
//! hold millions of keys (seconds of sled's time, every key in memory,
//! every other room's commit waiting behind it). Instead the range is
//! queued in tree `reaction_purges` (room + first seq → the seq after
//! the last, the key is `seq_key`), in the same order as the removal of
//! the log entries, and `purge` removes at most `reaction_purge_chunk`
//! keys per call, from a task of its own (`broker/tasks.rs`). The queue is
//! on disk, so a crash in the middle leaves no orphan: the next run goes
//! on with it.

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

/// Queues the removal of the reactions of `room`'s messages with
/// `from <= seq < to`; a range already queued from `from` grows to the
/// larger end (trims remove from the start of a room up).
pub(super) fn queue_purge(purges: &sled::Tree, room: &str, from: u64, to: u64) -> Result<(), StoreError> {
    if to <= from {
        return Ok(());
    }
    purges
        .fetch_and_update(seq_key(room, from), |old| {
            let old = old
                .and_then(|v| <[u8; 8]>::try_from(v).ok())
                .map_or(0, u64::from_be_bytes);
            Some(old.max(to).to_be_bytes().to_vec())
        })
        .map(drop)
        .map_err(io)
}

/// Removes at most `max_keys` reaction keys of the queued ranges (oldest
/// room key first); a range found empty leaves the queue. Returns how
/// many keys it removed: fewer than `max_keys` when the queue is empty.
pub(super) fn purge(
    reactions: &sled::Tree,
    purges: &sled::Tree,
    max_keys: usize,
) -> Result<usize, StoreError> {
    let max_keys = max_keys.max(1);
    let mut removed = 0;
    for entry in purges.iter() {
        let (start, end) = entry.map_err(io)?;
        // The key is `seq_key(room, from)`; the range ends at the same
        // room prefix with the value's seq.
        let (Some(prefix_len), Ok(to)) = (start.len().checked_sub(8), <[u8; 8]>::try_from(end.as_ref()))
        else {
            // Not written by `queue_purge`: nothing to remove by it.
            purges.remove(&start).map_err(io)?;
            continue;
        };
        let mut stop = start[..prefix_len].to_vec();
        stop.extend_from_slice(&to);
        let want = max_keys - removed;
        // One chunk in memory at a time, never the whole range.
        let mut batch = sled::Batch::default();
        let mut found = 0;
        for key in reactions.range(start.as_ref()..stop.as_slice()).keys().take(want) {
            batch.remove(key.map_err(io)?);
            found += 1;
        }
        reactions.apply_batch(batch).map_err(io)?;
        removed += found;
        if found < want {
            // The range is empty; a trim that grew it meanwhile changed
            // the value, and then it stays queued.
            let _ = purges
                .compare_and_swap(&start, Some(&end), None::<&[u8]>)
                .map_err(io)?;
        }
        if removed >= max_keys {
            break;
        }
    }
    Ok(removed)
}
