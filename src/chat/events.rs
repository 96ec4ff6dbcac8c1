//! What members get of a room log entry: a message on
//! `rooms/{room}/msg/{sender}` in its current state, or a room event on
//! `rooms/{room}/event/{sender}` as CBOR `room-event` (`topics.md`, *Edits,
//! deletes and reactions*). Live deliveries, replays and history all read
//! entries through here, so they agree.

use std::sync::Arc;

use bytestring::ByteString;

use super::payloads::{to_cbor, RoomEvent};
use super::topics::{event_topic, message_topic};
use crate::protocol::PublishProperties;
use crate::router::{Message, RoomTag};
use crate::store::{EventKind, EventRecord, RoomRecord};

/// The `type` of a room event.
pub(crate) fn kind_name(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Edit => "edit",
        EventKind::Delete => "delete",
        EventKind::React => "react",
        EventKind::Ban => "ban",
        EventKind::Unban => "unban",
        EventKind::Mute => "mute",
        EventKind::Unmute => "unmute",
    }
}

/// The `room-event` of an event entry. An edit whose message was deleted
/// since has no `body` (it was removed from the store).
pub(crate) fn room_event(seq: u64, record: &RoomRecord, event: &EventRecord) -> RoomEvent {
    RoomEvent {
        seq,
        prev: record.prev.unwrap_or(seq.saturating_sub(1)),
        ts: record.ts_unix_ms,
        sender: record.sender.clone(),
        kind: kind_name(event.kind).into(),
        target: event.target,
        body: (event.kind == EventKind::Edit && !record.payload.is_empty()).then(|| record.payload.to_vec()),
        emoji: event.emoji.clone(),
        remove: event.remove.then_some(true),
        user: event.user.clone(),
        secs: event.secs,
    }
}

/// The message subscribers get for a room log entry. A message: its
/// topic without the msg-id level, its current body, and the 5.0 User
/// Properties `seq`, `prev`, `ts`, `msg-id` (when the sender gave one),
/// and `edited` (unix ms) or `deleted` (`true`, no body) when it changed
/// before it was replayed. An event: its `room-event` on the event topic,
/// with `seq`, `prev` and `ts`.
pub(crate) fn room_message(
    room: &Arc<str>,
    seq: u64,
    record: RoomRecord,
    publisher: Option<Arc<str>>,
) -> Message {
    // Before `prev` was stored, `seq` had no gaps but trimming.
    let prev = record.prev.unwrap_or(seq.saturating_sub(1));
    let (topic, payload, mut user_properties) = match record.event() {
        Some(event) => {
            let payload = to_cbor(&room_event(seq, &record, event));
            (event_topic(room, &record.sender), payload.into(), Vec::new())
        }
        None => {
            let mut user_properties: Vec<(ByteString, ByteString)> = record
                .user_properties
                .iter()
                .map(|(k, v)| (k.as_str().into(), v.as_str().into()))
                .collect();
            if let Some(state) = record.state() {
                if state.deleted {
                    user_properties.push(("deleted".into(), "true".into()));
                } else if let Some(edited) = state.edited {
                    user_properties.push(("edited".into(), edited.to_string().into()));
                }
            }
            (
                message_topic(room, &record.sender),
                record.payload.clone(),
                user_properties,
            )
        }
    };
    user_properties.push(("seq".into(), seq.to_string().into()));
    user_properties.push(("prev".into(), prev.to_string().into()));
    user_properties.push(("ts".into(), record.ts_unix_ms.to_string().into()));
    if let Some(id) = record.msg_id {
        user_properties.push(("msg-id".into(), id.into()));
    }
    let mut message = Message::new(topic, payload, crate::protocol::qos_from(record.qos), false);
    message.properties = Some(PublishProperties {
        user_properties,
        ..Default::default()
    });
    message.publisher = publisher;
    message.room = Some(RoomTag {
        room: room.clone(),
        seq,
    });
    message
}

impl super::Chat {
    /// A room message or event as it is now, when the copy `queued` (made
    /// when it was posted or replayed) may be out of date: an edit or a
    /// delete of its room came after it (`RoomLog::last_change`). `None`
    /// when the copy is current (the common case: no store read) or the
    /// log no longer holds the entry (trimmed by retention: sent as it
    /// was). Sessions call it for every room message they are about to
    /// send or resend, so that what reaches a member is the entry's
    /// current state, as a replay from the log would give it: an edited
    /// message with its latest body, a deleted one as a tombstone, an
    /// edit event of a deleted message without its body.
    pub(crate) fn current(&self, queued: &Message) -> Option<Message> {
        let tag = queued.room.as_ref()?;
        if tag.seq >= self.log.last_change(&tag.room) {
            return None;
        }
        let record = match self.log.stored(&tag.room, tag.seq) {
            Ok(record) => record?,
            Err(e) => {
                // Rare (the store failing); the copy goes as it was, as
                // it would have gone a moment earlier.
                tracing::warn!(room = %tag.room, seq = tag.seq, error = %e, "cannot read a queued room message again; sent as queued");
                return None;
            }
        };
        let mut message = room_message(&tag.room, tag.seq, record, queued.publisher.clone());
        message.received_at = queued.received_at;
        message.expires_at = queued.expires_at;
        Some(message)
    }
}

impl super::Chat {
    /// A room message as a session's stored queue names it: a shared
    /// group's copy (`session/persist.rs`), stored with its topic and
    /// properties but no body, since the room log holds the body and a
    /// moderator's delete must remove its last copy. Rebuilt from the log
    /// in its current state, with its room tag. `None`: `stored` is not a
    /// room message; `Some(None)`: the log no longer has it (trimmed, or
    /// the store failing).
    pub(crate) fn queued_reference(&self, stored: &Message) -> Option<Option<Message>> {
        let room = match stored.topic.split('/').collect::<Vec<_>>().as_slice() {
            ["rooms", room, "msg" | "event", _] => Arc::<str>::from(*room),
            _ => return None,
        };
        let seq = stored
            .properties
            .as_ref()?
            .user_properties
            .iter()
            .find(|(k, _)| k == "seq")
            .and_then(|(_, v)| v.parse::<u64>().ok())?;
        let record = match self.log.stored(&room, seq) {
            Ok(record) => record,
            Err(e) => {
                tracing::warn!(%room, seq, error = %e, "cannot read a queued room message from the log; dropped");
                None
            }
        };
        Some(record.map(|record| {
            let mut message = room_message(&room, seq, record, stored.publisher.clone());
            message.expires_at = stored.expires_at;
            if let Some(body) = stored.stored_body.get() {
                let _ = message.stored_body.set(*body);
            }
            message
        }))
    }
}
