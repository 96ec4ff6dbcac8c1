//! Message lifecycle as room events (`topics.md`, *Edits, deletes and
//! reactions*): a sender edits or deletes her own message, any poster
//! reacts, a moderator deletes any message, and moderation actions are
//! recorded. Each accepted change is a room event: appended to the room
//! log under its own `seq` (one order for all of a room's entries), then
//! applied to the message's record, which carries its current state (body
//! or tombstone, edit time, reactions), and delivered after its commit
//! like a message, on `rooms/{room}/event/{sender}`.
//!
//! A delete rewrites the message's record without its body, and the edit
//! events that carried a body of it too: no copy stays in the log.
//!
//! In a cluster the event goes through the room stream like a message;
//! every node applies it to its own copy of the log in the stream's order
//! (`apply_effect`), so every node makes the same change. A delete also
//! deletes the message and its edit events from the stream (after the
//! delete event is stored): a node that reads the room later finds no
//! copy of the body, and no tombstone either.

use std::sync::Arc;

use super::commit::Undo;

use bytes::Bytes;

use super::payloads::{DeleteRequest, EditRequest, ReactRequest};
use super::publish::Publisher;
use super::topics::Action;
use super::Chat;
use crate::budget::Rate;
use crate::protocol::{PublishAckReason, QoS};
use crate::router::Message;
use crate::store::{unix_ms_now, EventKind, EventRecord, RoomEntry, RoomRecord, StoreError};

/// Bytes of CBOR around an edit's body (map, keys, `seq`).
const EDIT_OVERHEAD: usize = 32;

/// What an event does, before it has a `seq`.
#[derive(Debug, Clone)]
pub(crate) enum Change {
    Edit {
        target: u64,
        body: Bytes,
    },
    Delete {
        target: u64,
    },
    React {
        target: u64,
        emoji: String,
        remove: bool,
    },
    /// A moderator's ban, unban, mute or unmute of `user`.
    Sanction {
        kind: EventKind,
        user: String,
        secs: Option<u64>,
    },
}

/// Why a change was not made.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The `seq` is not a message of the room (never was, aged out,
    /// deleted): 0x99.
    NoSuchMessage,
    /// Another's message: 0x87.
    NotYours,
    /// The message holds `max_reaction_emoji` emoji or
    /// `max_reactions_per_message` reactions, or took
    /// `room_max_edits_per_message` edits: 0x97.
    Full,
    /// The store could not write: 0x97 (retry later), as for a post.
    Store,
}

impl Refused {
    pub(crate) fn reason(&self) -> PublishAckReason {
        match self {
            Refused::NoSuchMessage => PublishAckReason::PayloadFormatInvalid,
            Refused::NotYours => PublishAckReason::NotAuthorized,
            Refused::Full | Refused::Store => PublishAckReason::QuotaExceeded,
        }
    }
}

impl Change {
    fn target(&self) -> Option<u64> {
        match self {
            Change::Edit { target, .. } | Change::Delete { target } | Change::React { target, .. } => {
                Some(*target)
            }
            Change::Sanction { .. } => None,
        }
    }

    /// The log record of this change by `sender`.
    fn into_record(self, sender: &str, qos: QoS) -> RoomRecord {
        let mut event = EventRecord {
            kind: EventKind::Edit,
            target: self.target(),
            emoji: None,
            remove: false,
            user: None,
            secs: None,
            last_message: 0,
        };
        let mut payload = Bytes::new();
        match self {
            Change::Edit { body, .. } => payload = body,
            Change::Delete { .. } => event.kind = EventKind::Delete,
            Change::React { emoji, remove, .. } => {
                event.kind = EventKind::React;
                event.emoji = Some(emoji);
                event.remove = remove;
            }
            Change::Sanction { kind, user, secs } => {
                event.kind = kind;
                event.user = Some(user);
                event.secs = secs;
            }
        }
        RoomRecord {
            ts_unix_ms: unix_ms_now(),
            sender: sender.to_string(),
            msg_id: None,
            qos: qos.value(),
            payload,
            user_properties: Vec::new(),
            prev: None,
            entry: Some(Box::new(RoomEntry::Event(event))),
        }
    }
}

impl Chat {
    /// `rooms/{room}/edit|delete|react/{sender}`. The gate let it through:
    /// `sender` is the publisher, a member who may post in `room`.
    pub(super) fn on_lifecycle(
        &self,
        who: &Publisher<'_>,
        room: &str,
        sender: &str,
        action: Action,
        message: &Message,
    ) -> PublishAckReason {
        let change = match self.parse_change(action, &message.payload) {
            Ok(change) => change,
            Err(reason) => return reason,
        };
        if let Err(reason) = self.spend_room_rate(who, room) {
            return reason;
        }
        // Every byte the request makes the store keep, as for a post.
        let bytes = message.topic.len() + message.payload.len() + super::STORED_RECORD_OVERHEAD;
        if let Err(over) = self
            .budgets
            .spend(&who.account, Rate::RoomPostBytes, bytes as u64)
        {
            tracing::info!(%room, account = %who.account, %over, "room event refused");
            return PublishAckReason::QuotaExceeded;
        }
        let own_only = !matches!(action, Action::React);
        match self.change(
            room,
            sender,
            change,
            own_only,
            message.qos,
            Some(who.client_id.clone()),
        ) {
            Ok(()) => PublishAckReason::Success,
            Err(refused) => refused.reason(),
        }
    }

    /// The change a request asks for; a payload that does not match its
    /// schema 0x99, an edit's body beyond `max_room_message_bytes` 0x97.
    fn parse_change(&self, action: Action, payload: &[u8]) -> Result<Change, PublishAckReason> {
        let invalid = PublishAckReason::PayloadFormatInvalid;
        match action {
            Action::Edit => {
                if payload.len() > self.limits.max_room_message_bytes.saturating_add(EDIT_OVERHEAD) {
                    return Err(PublishAckReason::QuotaExceeded);
                }
                let edit: EditRequest = super::payloads::from_request_cbor(payload).ok_or(invalid)?;
                if edit.body.len() > self.limits.max_room_message_bytes {
                    return Err(PublishAckReason::QuotaExceeded);
                }
                Ok(Change::Edit {
                    target: edit.seq,
                    body: edit.body.into(),
                })
            }
            Action::Delete => {
                let delete: DeleteRequest = super::payloads::from_client_cbor(payload).ok_or(invalid)?;
                Ok(Change::Delete { target: delete.seq })
            }
            Action::React => {
                let react: ReactRequest = super::payloads::from_client_cbor(payload).ok_or(invalid)?;
                if !super::reactions::valid_emoji(&react.emoji, self.limits.max_emoji_bytes) {
                    return Err(invalid);
                }
                Ok(Change::React {
                    target: react.seq,
                    emoji: react.emoji,
                    remove: react.remove,
                })
            }
        }
    }

    /// Makes `change` by `sender` in `room`: checks it against the
    /// message (`own_only`: only the sender's own), stores it as a room
    /// event, applies it to the message and delivers the event after its
    /// commit. A reaction that changes nothing (one already there, or a
    /// removal of one that is not) stores nothing and succeeds.
    pub(super) fn change(
        &self,
        room_name: &str,
        sender: &str,
        change: Change,
        own_only: bool,
        qos: QoS,
        publisher: Option<Arc<str>>,
    ) -> Result<(), Refused> {
        if let Some(replication) = &self.replication {
            // Checked against this node's copy of the log; every node
            // applies the event in the stream's order (`apply_effect`).
            if !self.check(room_name, sender, &change, own_only)? {
                return Ok(());
            }
            // A delete takes the body out of the stream too: the message
            // and the edits that carried a body of it.
            let from_stream = match change {
                Change::Delete { target } => {
                    let edits = self
                        .current_message(room_name, target)?
                        .state()
                        .map(|s| s.edits.clone());
                    std::iter::once(target).chain(edits.unwrap_or_default()).collect()
                }
                _ => Vec::new(),
            };
            let record = change.into_record(sender, qos);
            replication
                .post(room_name, record, None, publisher.as_deref())
                .map_err(|e| {
                    tracing::warn!(room = room_name, error = %e, "could not post a room event");
                    Refused::Store
                })?;
            replication.delete_posted(&from_stream);
            return Ok(());
        }
        if change.target().is_some() && self.log.head(room_name) == 0 {
            return Err(Refused::NoSuchMessage);
        }
        let room = self.log.room(room_name);
        let in_order = room.order.lock();
        if room.is_forgotten() {
            drop(in_order);
            return self.change(room_name, sender, change, own_only, qos, publisher);
        }
        if !self.check(room_name, sender, &change, own_only)? {
            return Ok(());
        }
        let kept = !matches!(change, Change::React { .. });
        let mut record = change.into_record(sender, qos);
        let links = room.links();
        // A reaction is state on its message, not history: it takes a
        // `seq` (live subscribers get it in order) and no log entry, so
        // reactions never push messages out of the log.
        let stored = if kept {
            self.log.append(&room, &mut record, |_| {})
        } else {
            self.log.pass(&room, &mut record)
        }
        .and_then(|seq| self.apply_effect(room_name, seq, &record).map(|()| seq));
        let seq = stored.map_err(|e| {
            tracing::warn!(room = room_name, error = %e, "could not store a room event");
            Refused::Store
        })?;
        tracing::debug!(room = room_name, seq, sender, "room event stored");
        let message = super::room_message(&room.name, seq, record, publisher);
        match &self.uncommitted {
            Some(queue) => queue.push(
                room.clone(),
                seq,
                message,
                Undo {
                    links,
                    dedup_key: None,
                },
            ),
            None => {
                room.reveal(seq);
                self.router.publish(message);
            }
        }
        Ok(())
    }

    /// Whether `change` may be made now, and whether it changes anything.
    fn check(&self, room: &str, sender: &str, change: &Change, own_only: bool) -> Result<bool, Refused> {
        let Some(target) = change.target() else {
            return Ok(true);
        };
        let record = self.current_message(room, target)?;
        if own_only && record.sender != sender {
            return Err(Refused::NotYours);
        }
        if matches!(change, Change::Edit { .. }) && self.edits_full(&record) {
            return Err(Refused::Full);
        }
        let Change::React { emoji, remove, .. } = change else {
            return Ok(true);
        };
        let reactions = self.log.reactions(room, target, Some(sender)).map_err(|e| {
            tracing::warn!(%room, seq = target, error = %e, "could not read reactions");
            Refused::Store
        })?;
        match super::reactions::decide(&reactions, emoji, *remove, &self.reaction_bounds) {
            super::reactions::Decision::Change => Ok(true),
            super::reactions::Decision::Nothing => Ok(false),
            super::reactions::Decision::Full => Err(Refused::Full),
        }
    }

    /// Whether `message` took `room_max_edits_per_message` edits.
    fn edits_full(&self, message: &RoomRecord) -> bool {
        message.state().map_or(0, |s| s.edits.len()) >= self.max_edits
    }

    /// Message `seq` of `room` as it is now: a message the log holds, not
    /// deleted.
    fn current_message(&self, room: &str, seq: u64) -> Result<RoomRecord, Refused> {
        let record = self.log.entry(room, seq).map_err(|e| {
            tracing::warn!(%room, seq, error = %e, "could not read the room log");
            Refused::Store
        })?;
        match record {
            Some(r) if r.event().is_none() && !r.state().is_some_and(|s| s.deleted) => Ok(r),
            _ => Err(Refused::NoSuchMessage),
        }
    }

    /// Applies the event `record` (stored under `seq`) to the message it
    /// names. Every node of a cluster calls it in the same order, so the
    /// same state results; a message gone meanwhile (trimmed, deleted) or
    /// a reaction beyond the bounds changes nothing. The caller holds the
    /// room's `order`.
    pub(super) fn apply_effect(&self, room: &str, seq: u64, record: &RoomRecord) -> Result<(), StoreError> {
        let Some(event) = record.event() else {
            return Ok(());
        };
        let Some(target) = event.target else {
            return Ok(());
        };
        let Ok(mut message) = self.current_message(room, target) else {
            return Ok(());
        };
        let mut state = message.state().cloned().unwrap_or_default();
        match event.kind {
            // Not checked against `room_max_edits_per_message` here: in a
            // cluster two nodes may each let through an edit that fills
            // the message, and both are applied (the bound is exceeded by
            // at most one per node), so that every edit's body is listed
            // and a delete empties it too.
            EventKind::Edit => {
                message.payload = record.payload.clone();
                state.edited = Some(record.ts_unix_ms);
                state.edits.push(seq);
            }
            EventKind::Delete => {
                message.payload = Bytes::new();
                state.deleted = true;
                state.reactions.clear();
                self.log.clear_reactions(room, target)?;
                // The bodies of its edits go too: at most
                // `room_max_edits_per_message` now, the rest queued
                // before the tombstone is written (`edit_purges.rs`).
                self.empty_edits(room, target, std::mem::take(&mut state.edits))?;
            }
            EventKind::React => {
                // Kept apart from the message (`Store::set_reaction`): the
                // message's record is not rewritten.
                let Some(emoji) = event.emoji.as_deref() else {
                    return Ok(());
                };
                let reactions = self.log.reactions(room, target, Some(&record.sender))?;
                let decision =
                    super::reactions::decide(&reactions, emoji, event.remove, &self.reaction_bounds);
                if decision == super::reactions::Decision::Change {
                    self.log
                        .set_reaction(room, target, emoji, &record.sender, !event.remove)?;
                }
                return Ok(());
            }
            _ => return Ok(()),
        }
        message.entry = Some(Box::new(RoomEntry::Message(state)));
        self.log.rewrite(room, target, &message)?;
        if matches!(event.kind, EventKind::Edit | EventKind::Delete) {
            // After the rewrite: copies waiting in sessions' queues are
            // read again before they are sent (`Chat::current`).
            self.log.changed(room, seq);
        }
        Ok(())
    }
}
