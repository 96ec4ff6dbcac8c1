//! The records the store keeps, encoded with postcard: compact and fast
//! (encoding was the largest per-message cost of durable delivery with CBOR:
//! about 4 µs of 9 µs), with a format that is stable across versions.

use std::sync::Arc;

use bytes::Bytes;
use bytestring::ByteString;
use serde::{Deserialize, Serialize};

use crate::protocol::{LastWill, PublishProperties};

/// One application message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRecord {
    /// Shared with the live message: building a record copies no bytes.
    pub topic: ByteString,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
    pub properties: Option<PublishProperties>,
    /// Message expiry as unix milliseconds; `None` for never.
    pub expires_at_unix_ms: Option<u64>,
    pub publisher: Option<Arc<str>>,
}

/// A message waiting for, or in flight to, one persistent session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedRecord {
    pub message: MessageRecord,
    pub qos: u8,
    pub retain: bool,
    pub subscription_ids: Vec<u32>,
    /// Set once sent as QoS 2: the packet id, and whether PUBREC came
    /// (then only PUBREL/PUBCOMP remain).
    pub packet_id: Option<u16>,
    pub released: bool,
}

/// A message queued for one persistent session, as the store keeps it: the
/// message itself (topic, payload, properties) is stored once under `body`
/// and shared by every session it was queued for, so one publish to N
/// offline sessions costs its size once, not N times.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedRef {
    /// The id of the stored body (`Store::load_body`).
    pub body: u64,
    pub qos: u8,
    pub retain: bool,
    pub subscription_ids: Vec<u32>,
    /// As in [`QueuedRecord`].
    pub packet_id: Option<u16>,
    pub released: bool,
}

impl QueuedRef {
    /// The per-session part of `record`, its message being body `body`.
    pub fn of(record: &QueuedRecord, body: u64) -> QueuedRef {
        QueuedRef {
            body,
            qos: record.qos,
            retain: record.retain,
            subscription_ids: record.subscription_ids.clone(),
            packet_id: record.packet_id,
            released: record.released,
        }
    }

    /// The whole record again, with its body.
    pub fn with_body(self, message: MessageRecord) -> QueuedRecord {
        QueuedRecord {
            message,
            qos: self.qos,
            retain: self.retain,
            subscription_ids: self.subscription_ids,
            packet_id: self.packet_id,
            released: self.released,
        }
    }
}

/// One subscription of a persistent session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionRecord {
    pub filter: String,
    pub qos: u8,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: u8,
    pub id: Option<u32>,
}

/// A will and its delay.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WillRecord {
    pub will: LastWill,
    pub delay_secs: u32,
}

/// A persistent session.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub expiry_secs: u32,
    pub subscriptions: Vec<SubscriptionRecord>,
    /// The will of the connection that serves (or last served) the session.
    pub will: Option<WillRecord>,
    /// When the session went offline (unix ms); `None` while connected.
    /// After a crash it stays `None`: start-up then counts from the restart.
    pub offline_since_unix_ms: Option<u64>,
    /// Per room: the `seq` up to which this session has everything it
    /// subscribed to. Its backlog is replayed from the room log after it.
    pub room_cursors: Vec<(String, u64)>,
    /// Who the session belongs to. Last, so that a record written before
    /// it existed still decodes (as `None`, see `decode_session`).
    pub owner: Option<OwnerRecord>,
}

/// The identity a persistent session is bound to (`auth::gate::Principal`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerRecord {
    pub username: Option<String>,
    pub identity: Option<String>,
    pub rooms: Option<Vec<String>>,
    /// The budget account the session is charged to (`Principal::account`,
    /// e.g. `anon:{address}` where names are claims), so that a restart
    /// charges it to the same account and not to the name it claimed.
    /// Last, so that an owner written before it still decodes (as `None`,
    /// see `decode_session`).
    pub account: Option<String>,
}

/// An owner as the previous version wrote it (format `roomq-store-4`,
/// before `account`).
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct OwnerRecordWithoutAccount {
    username: Option<String>,
    identity: Option<String>,
    rooms: Option<Vec<String>>,
}

/// A session record whose owner has no `account` yet.
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct SessionRecordWithoutAccount {
    expiry_secs: u32,
    subscriptions: Vec<SubscriptionRecord>,
    will: Option<WillRecord>,
    offline_since_unix_ms: Option<u64>,
    room_cursors: Vec<(String, u64)>,
    owner: Option<OwnerRecordWithoutAccount>,
}

/// A session record as `roomq-store-3` wrote it before sessions had an
/// owner: read once, its owner is unknown until its client comes back.
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct SessionRecordWithoutOwner {
    expiry_secs: u32,
    subscriptions: Vec<SubscriptionRecord>,
    will: Option<WillRecord>,
    offline_since_unix_ms: Option<u64>,
    room_cursors: Vec<(String, u64)>,
}

/// Decodes a session record, also one written before the `owner` field or
/// before its `account` (postcard has no field names: an older record is
/// one whose bytes end early, tried newest layout first).
pub(crate) fn decode_session(key: &[u8], bytes: &[u8]) -> Result<SessionRecord, super::StoreError> {
    decode::<SessionRecord>(key, bytes).or_else(|e| {
        if let Ok(old) = postcard::from_bytes::<SessionRecordWithoutAccount>(bytes) {
            return Ok(SessionRecord {
                expiry_secs: old.expiry_secs,
                subscriptions: old.subscriptions,
                will: old.will,
                offline_since_unix_ms: old.offline_since_unix_ms,
                room_cursors: old.room_cursors,
                owner: old.owner.map(|o| OwnerRecord {
                    username: o.username,
                    identity: o.identity,
                    rooms: o.rooms,
                    account: None,
                }),
            });
        }
        let old: SessionRecordWithoutOwner = postcard::from_bytes(bytes).map_err(|_| e)?;
        Ok(SessionRecord {
            expiry_secs: old.expiry_secs,
            subscriptions: old.subscriptions,
            will: old.will,
            offline_since_unix_ms: old.offline_since_unix_ms,
            room_cursors: old.room_cursors,
            owner: None,
        })
    })
}

/// One chat message in a room's log, stored once for every member.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomRecord {
    /// Server time of receipt, unix ms.
    pub ts_unix_ms: u64,
    pub sender: String,
    pub msg_id: Option<String>,
    pub qos: u8,
    pub payload: Bytes,
    /// The sender's User Properties other than `msg-id`, passed on.
    pub user_properties: Vec<(String, String)>,
    /// The `seq` of the room's message before this one (User Property
    /// `prev`), so a client can tell a gap from a missing message. Last
    /// field: records written before it was added have none.
    pub prev: Option<u64>,
    /// What the entry is beyond a message as posted: a room event, or a
    /// message changed since (edited, deleted, reacted to). `None` for a
    /// message as posted, which costs one byte. Last field: records
    /// written before it decode as `None` (`decode_room`).
    pub entry: Option<Box<RoomEntry>>,
}

impl RoomRecord {
    /// The event this entry is, if it is one (else a message).
    pub fn event(&self) -> Option<&EventRecord> {
        match self.entry.as_deref() {
            Some(RoomEntry::Event(event)) => Some(event),
            _ => None,
        }
    }

    /// The current state of a message (`None`: unchanged since posted, or
    /// an event).
    pub fn state(&self) -> Option<&MessageState> {
        match self.entry.as_deref() {
            Some(RoomEntry::Message(state)) => Some(state),
            _ => None,
        }
    }
}

/// What a room log entry is besides a message as posted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RoomEntry {
    /// A room event (`topics.md`, *Edits, deletes and reactions*): the
    /// record's `sender` acted, its `payload` is an edit's new body (empty
    /// once the message is deleted), its `prev` the room's entry before.
    Event(EventRecord),
    /// A message's state after edits, a delete or reactions; its record's
    /// `payload` is the current body (empty once deleted).
    Message(MessageState),
}

/// What a room event did. Variants are stored by index: only append.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    Edit,
    Delete,
    React,
    Ban,
    Unban,
    Mute,
    Unmute,
}

/// A room event as the log keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    pub kind: EventKind,
    /// Edit, delete, react: the message's `seq`.
    pub target: Option<u64>,
    /// React: the emoji (1 to 32 bytes).
    pub emoji: Option<String>,
    /// React: a reaction taken back.
    pub remove: bool,
    /// Ban, unban, mute, unmute: whom.
    pub user: Option<String>,
    /// Ban, mute: its length, when given.
    pub secs: Option<u64>,
    /// The `seq` of the room's last message when this event was appended:
    /// after a restart whose newest entry is an event, the next message's
    /// `prev` (messages skip events).
    pub last_message: u64,
}

/// A message's state after it was posted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageState {
    /// Unix ms of the last edit.
    pub edited: Option<u64>,
    /// A tombstone: the body is gone.
    pub deleted: bool,
    /// No longer written (empty): reactions are kept apart from the
    /// message (`Store::set_reaction`), so one does not rewrite it. Kept
    /// so records written before still decode.
    pub reactions: Vec<(String, Vec<String>)>,
    /// The `seq` of the edit events that carry a body of this message: a
    /// delete empties them too (no copy of a deleted body stays).
    pub edits: Vec<u64>,
}

/// A room record as `roomq-store-3` wrote it before `prev`.
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct RoomRecordWithoutPrev {
    ts_unix_ms: u64,
    sender: String,
    msg_id: Option<String>,
    qos: u8,
    payload: Bytes,
    user_properties: Vec<(String, String)>,
}

/// A room record as `roomq-store-4` wrote it before room events.
#[derive(Deserialize)]
struct RoomRecordWithoutEntry {
    ts_unix_ms: u64,
    sender: String,
    msg_id: Option<String>,
    qos: u8,
    payload: Bytes,
    user_properties: Vec<(String, String)>,
    prev: Option<u64>,
}

/// Decodes a room record, also one written before `entry` or `prev` was
/// added.
pub(super) fn decode_room(key: &[u8], bytes: &[u8]) -> Result<RoomRecord, super::StoreError> {
    decode::<RoomRecord>(key, bytes).or_else(|e| {
        if let Ok(old) = postcard::from_bytes::<RoomRecordWithoutEntry>(bytes) {
            return Ok(RoomRecord {
                ts_unix_ms: old.ts_unix_ms,
                sender: old.sender,
                msg_id: old.msg_id,
                qos: old.qos,
                payload: old.payload,
                user_properties: old.user_properties,
                prev: old.prev,
                entry: None,
            });
        }
        let old: RoomRecordWithoutPrev = postcard::from_bytes(bytes).map_err(|_| e)?;
        Ok(RoomRecord {
            ts_unix_ms: old.ts_unix_ms,
            sender: old.sender,
            msg_id: old.msg_id,
            qos: old.qos,
            payload: old.payload,
            user_properties: old.user_properties,
            prev: None,
            entry: None,
        })
    })
}

/// The edit events of a deleted message whose bodies are still to be
/// emptied (`Store::set_edit_purge`): a message may carry more edits than
/// one step empties (edited before `room_max_edits_per_message`, or
/// with the bound lowered since).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EditPurge {
    pub room: String,
    /// The deleted message's `seq`.
    pub message: u64,
    /// The `seq` of its edit events still to empty, in order.
    pub edits: Vec<u64>,
}

/// A ban or a mute in a room, kept under a key that names its kind, room
/// and user (`chat/sanctions.rs`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SanctionRecord {
    /// Unix ms after which it no longer applies; `None` until lifted.
    pub until_unix_ms: Option<u64>,
    /// The moderator who set it.
    pub by: String,
    pub at_unix_ms: u64,
    pub reason: Option<String>,
}

/// A (room, sender, msg-id) seen recently, for de-duplication.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DedupRecord {
    pub seq: u64,
    pub seen_unix_ms: u64,
}

pub(super) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, super::StoreError> {
    encode_sized(value, 64)
}

/// Encodes into a buffer sized for the record up front, so that a message
/// record costs one allocation.
pub(super) fn encode_sized<T: Serialize>(value: &T, size_hint: usize) -> Result<Vec<u8>, super::StoreError> {
    postcard::to_extend(value, Vec::with_capacity(size_hint))
        .map_err(|e| super::StoreError::Io(e.to_string()))
}

pub(super) fn decode<T: for<'de> Deserialize<'de>>(key: &[u8], bytes: &[u8]) -> Result<T, super::StoreError> {
    postcard::from_bytes(bytes).map_err(|e| super::StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: e.to_string(),
    })
}

/// Unix milliseconds now.
pub fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes exactly as the previous version encoded them: its owner had
    /// no `account`, and the version before had no owner.
    #[test]
    fn a_session_record_from_before_the_account_still_reads() {
        let cursors = vec![("lobby".to_string(), 7)];
        let old = SessionRecordWithoutAccount {
            expiry_secs: 60,
            subscriptions: Vec::new(),
            will: None,
            offline_since_unix_ms: Some(5),
            room_cursors: cursors.clone(),
            owner: Some(OwnerRecordWithoutAccount {
                username: Some("bob".into()),
                identity: Some("bob".into()),
                rooms: None,
            }),
        };
        let read = decode_session(b"s", &encode(&old).unwrap()).unwrap();
        let owner = read.owner.clone().unwrap();
        assert_eq!(
            (owner.identity.as_deref(), owner.account, read.room_cursors),
            (Some("bob"), None, cursors.clone())
        );
        let older = SessionRecordWithoutOwner {
            expiry_secs: 60,
            subscriptions: Vec::new(),
            will: None,
            offline_since_unix_ms: None,
            room_cursors: cursors.clone(),
        };
        let read = decode_session(b"s", &encode(&older).unwrap()).unwrap();
        assert_eq!((&read.owner, &read.room_cursors), (&None, &cursors));
        let new = SessionRecord {
            owner: Some(OwnerRecord {
                account: Some("anon:10.0.0.1".into()),
                ..owner
            }),
            ..read
        };
        assert_eq!(decode_session(b"s", &encode(&new).unwrap()).unwrap(), new);
    }

    #[test]
    fn a_room_record_from_before_prev_still_reads() {
        let old = RoomRecordWithoutPrev {
            ts_unix_ms: 7,
            sender: "alice".into(),
            msg_id: Some("m1".into()),
            qos: 1,
            payload: Bytes::from_static(b"hi"),
            user_properties: vec![("k".into(), "v".into())],
        };
        let bytes = encode(&old).unwrap();
        let read = decode_room(b"room", &bytes).unwrap();
        assert_eq!(
            (read.sender.as_str(), read.prev, &read.payload[..]),
            ("alice", None, &b"hi"[..])
        );
        let new = RoomRecord {
            prev: Some(6),
            ..read
        };
        // Written before room events: no `entry` byte at the end.
        let mut without_entry = encode(&new).unwrap();
        without_entry.pop();
        assert_eq!(decode_room(b"room", &without_entry).unwrap(), new);
        assert_eq!(decode_room(b"room", &encode(&new).unwrap()).unwrap(), new);
    }
}
