//! A client's PUBLISH to a chat topic: checks (sender, membership, payload)
//! and what the broker does with it, per `topics.md`. Also the alert rules
//! that turn plain device topics into room messages.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::classified::Classified;
use super::dedup::dedup_key;
use super::log::NotOpened;
use super::payloads::{from_cbor, from_client_cbor, to_cbor, PresenceUpdate, Receipt, Typing};
use super::presence::USER_STATUSES;
use super::topics::ChatTopic;
use super::{is_valid_room_name, message_topic, Chat, Post};
use crate::budget::{room_account, Held, Rate};
use crate::protocol::validate::topic_matches;
use crate::protocol::{PublishAckReason, QoS};
use crate::router::Message;
use crate::store::StoreError;

/// Typing events expire after this long (Message Expiry Interval, 5.0).
const TYPING_EXPIRY: Duration = Duration::from_secs(5);

/// Who published. The publish itself has passed the gate (`auth/gate.rs`)
/// before the chat layer sees it, and so has anything else the chat layer
/// would write on its behalf: the session decided it and hands down the
/// answer, so the chat layer never asks back up.
pub(crate) struct Publisher<'a> {
    /// Username when authenticated (else, without an authenticator, the
    /// client id); `None` for an anonymous client where names are verified.
    pub identity: Option<&'a str>,
    pub client_id: &'a Arc<str>,
    /// The rooms the publisher's login token names it a moderator of
    /// (`Principal::mod_grant`); the configuration's moderators are read
    /// here, in `Membership`.
    pub mod_grant: Option<&'a HashSet<String>>,
    /// Whether the gate lets an answer go to this publish's Response
    /// Topic (`Gate::may_reply_to`): asked by the session for a history or
    /// moderation request that names one, false otherwise.
    pub may_reply: bool,
    /// The account charged for what the publish makes the broker keep
    /// (`budget::account_of`).
    pub account: Arc<str>,
}

/// A room an alert rule would copy a plain message into, and as whom:
/// the session checks `topic()` against the gate before the copy is made.
pub(crate) struct AlertTarget<'m> {
    rule: usize,
    room: &'m str,
    sender: &'m str,
    /// Whose name the copy is written under as far as access goes: a
    /// listed publisher posts for others, but only into a room it may use
    /// itself; anyone else posts only as itself.
    posting_as: &'m str,
}

impl AlertTarget<'_> {
    /// The room topic the copy is a write on, for the gate.
    pub(crate) fn topic(&self) -> String {
        message_topic(self.room, self.posting_as)
    }

    /// The room, for a log line.
    pub(crate) fn room(&self) -> &str {
        self.room
    }

    /// The sender the copy is posted as, for a log line.
    pub(crate) fn sender(&self) -> &str {
        self.sender
    }
}

/// A room copy an alert rule makes of a plain message.
pub(crate) struct AlertCopy<'m> {
    room: &'m str,
    sender: String,
    /// The message's payload, or the body of a signed alert's envelope.
    payload: Bytes,
    /// Whether a signed rule made it: the room copy leaves out the `sig`
    /// and `ctr` User Properties, which are for the broker.
    signed: bool,
}

/// What the chat layer made of a PUBLISH.
#[derive(Debug)]
pub(crate) enum Handled {
    /// Not a chat topic: route it as plain MQTT.
    Plain(Box<Message>),
    /// Handled (or refused); acknowledge with this reason.
    Done(PublishAckReason),
}

impl Chat {
    /// Handles a PUBLISH on a chat topic (`kind`, as its entry classified
    /// it); gives back any other message as `Plain`.
    pub(crate) fn on_publish(&self, who: &Publisher<'_>, message: Message, kind: Classified) -> Handled {
        let Some(topic) = kind.chat(&message.topic) else {
            return Handled::Plain(Box::new(message));
        };
        let reason = match topic {
            ChatTopic::Message { room, sender, msg_id } => {
                let msg_id = msg_id.or_else(|| msg_id_property(&message));
                match self
                    .check_room_message(who, room, sender, msg_id, &message)
                    .and_then(|()| match self.is_repeat(room, sender, msg_id) {
                        true => Ok(()),
                        false => self.spend_room_rate(who, room),
                    }) {
                    Err(reason) => reason,
                    Ok(()) => self.on_room_message(who, room, sender, msg_id, &message),
                }
            }
            ChatTopic::Lifecycle { room, sender, action } => {
                self.on_lifecycle(who, room, sender, action, &message)
            }
            ChatTopic::Typing { room, sender } => self.on_typing(who, room, sender, &message),
            ChatTopic::Receipt { room, sender } => self.on_receipt(who, room, sender, &message),
            ChatTopic::Presence { user } => self.on_presence(who, user, &message),
            ChatTopic::HistoryRequest { room } => self.on_history_request(who, room, &message),
            ChatTopic::ModRequest { room } => self.on_mod_request(who, room, &message),
            ChatTopic::Reserved => PublishAckReason::TopicNameInvalid,
        };
        if u8::from(reason) >= 0x80 {
            self.counters.refused.inc();
            tracing::debug!(topic = %message.topic, identity = who.identity, ?reason, "chat publish refused");
        }
        Handled::Done(reason)
    }

    /// Whether any `[[alerts]]` rule is configured (else a plain message
    /// is not looked at for room copies).
    pub(crate) fn has_alert_rules(&self) -> bool {
        !self.alerts.is_empty()
    }

    /// The rooms the alert rules would copy a plain message into, or the
    /// refusal of the whole publish when the publisher is anonymous (no
    /// name to post under) or a rule would post under a name that is not
    /// a valid one. The session then asks the gate about each target, as
    /// for a direct PUBLISH, before `alert_copies` makes them.
    pub(crate) fn alert_targets<'m>(
        &'m self,
        who: &Publisher<'m>,
        message: &'m Message,
    ) -> Result<Vec<AlertTarget<'m>>, PublishAckReason> {
        let mut targets = Vec::new();
        for (rule_index, rule) in self
            .alerts
            .iter()
            .enumerate()
            .filter(|(_, r)| topic_matches(&r.topic, &message.topic))
        {
            let Some(identity) = who.identity else {
                tracing::info!(topic = %message.topic, room = %rule.room, "alert refused: an anonymous publisher has no name to post under");
                return Err(PublishAckReason::NotAuthorized);
            };
            let sender = rule
                .topic
                .split('/')
                .zip(message.topic.split('/'))
                .find(|(f, _)| *f == "+")
                .map_or(identity, |(_, level)| level);
            if !is_valid_room_name(sender) {
                tracing::info!(topic = %message.topic, room = %rule.room, %sender, identity, "alert refused: not a valid sender name");
                return Err(PublishAckReason::NotAuthorized);
            }
            let trusted = rule.publishers.iter().any(|p| p == identity);
            targets.push(AlertTarget {
                rule: rule_index,
                room: rule.room.as_str(),
                sender,
                posting_as: if trusted { identity } else { sender },
            });
        }
        Ok(targets)
    }

    /// The room copies the alert rules make of a plain message, for the
    /// `targets` the gate allowed, or the refusal of the whole publish
    /// when one of them breaks a room limit, or a signed rule finds no
    /// valid signature or a counter that did not grow.
    pub(crate) fn alert_copies<'m>(
        &self,
        who: &Publisher<'_>,
        message: &'m Message,
        targets: Vec<AlertTarget<'m>>,
    ) -> Result<Vec<AlertCopy<'m>>, PublishAckReason> {
        let mut copies = Vec::new();
        let mut counters = Vec::new();
        for AlertTarget {
            rule: index,
            room,
            sender,
            ..
        } in targets
        {
            self.check_room_message(who, room, sender, msg_id_property(message), message)?;
            let signed = self.signed.is_signed(index);
            let payload = if signed {
                let verified = self.signed.verify(index, message).map_err(|refusal| {
                    self.counters.alerts_refused.inc();
                    tracing::info!(topic = %message.topic, %room, %sender, ?refusal, "signed alert refused");
                    refusal.reason()
                })?;
                counters.push((verified.key_id, sender, verified.counter));
                verified.body
            } else {
                message.payload.clone()
            };
            if !self.is_repeat(room, sender, msg_id_property(message)) {
                self.spend_room_rate(who, room)?;
            }
            copies.push(AlertCopy {
                room,
                sender: sender.to_string(),
                payload,
                signed,
            });
        }
        // Last, once every check passed: a refused publish leaves the
        // device's counter as it was.
        counters.dedup();
        for (key_id, device, counter) in counters {
            self.signed.accept(&key_id, device, counter).map_err(|refusal| {
                self.counters.alerts_refused.inc();
                tracing::info!(topic = %message.topic, %device, counter, ?refusal, "signed alert refused");
                refusal.reason()
            })?;
        }
        Ok(copies)
    }

    /// Posts the room copies found by `alert_copies`.
    pub(crate) fn post_alerts(&self, who: &Publisher<'_>, message: &Message, copies: Vec<AlertCopy<'_>>) {
        for copy in copies {
            let mut user_properties = other_user_properties(message);
            if copy.signed {
                user_properties.retain(|(k, _)| k != "sig" && k != "ctr");
            }
            let post = Post {
                room: copy.room,
                sender: &copy.sender,
                msg_id: msg_id_property(message),
                payload: copy.payload,
                qos: message.qos,
                user_properties,
                publisher: Some(who.client_id.clone()),
                received_at: message.received_at,
            };
            if let Err(e) = self.post(post) {
                tracing::error!(room = copy.room, error = %e, "could not store an alert in its room");
            }
        }
    }

    /// Whether `room` has this (sender, msg-id) already: the post will be
    /// acknowledged again and stores nothing, so it spends no budget (a
    /// device retrying after a lost PUBACK pays once).
    fn is_repeat(&self, room: &str, sender: &str, msg_id: Option<&str>) -> bool {
        msg_id.is_some_and(|id| self.dedup.seen(&dedup_key(room, sender, id)).is_some())
    }

    /// Takes one post from the publisher's `room_max_messages_per_minute`
    /// in `room`; beyond it 0x97 (5.0 allows 0x96 Message rate too high
    /// in a DISCONNECT only, not in a PUBACK), counted and logged.
    pub(super) fn spend_room_rate(&self, who: &Publisher<'_>, room: &str) -> Result<(), PublishAckReason> {
        // Anonymous clients cannot post into rooms where names are
        // verified: the gate refused them before.
        let Some(identity) = who.identity else {
            return Ok(());
        };
        let account = room_account(&who.account, room);
        let Err(over) = self.budgets.spend(&account, Rate::RoomMessages, 1) else {
            return Ok(());
        };
        let refused = &self.counters.room_rate_refused;
        refused.inc();
        if refused.get().is_power_of_two() {
            tracing::warn!(
                identity,
                room,
                bound = over.bound,
                refused = refused.get(),
                "room post refused: over {}",
                over.key
            );
        }
        Err(PublishAckReason::QuotaExceeded)
    }

    fn on_room_message(
        &self,
        who: &Publisher<'_>,
        room: &str,
        sender: &str,
        msg_id: Option<&str>,
        message: &Message,
    ) -> PublishAckReason {
        let post = Post {
            room,
            sender,
            msg_id,
            payload: message.payload.clone(),
            qos: message.qos,
            user_properties: other_user_properties(message),
            publisher: Some(who.client_id.clone()),
            received_at: message.received_at,
        };
        match self.post(post) {
            Ok(_) => PublishAckReason::Success,
            // The store could not write it (a full disk): refused like
            // every publish while the store cannot write, with 0x97, so a
            // client tells "retry later" from a broken broker.
            Err(e @ (StoreError::Io(_) | StoreError::Closed)) => {
                tracing::warn!(%room, error = %e, "could not store a room message");
                PublishAckReason::QuotaExceeded
            }
            Err(e) => {
                tracing::error!(%room, error = %e, "could not store a room message");
                PublishAckReason::UnspecifiedError
            }
        }
    }

    fn on_typing(
        &self,
        who: &Publisher<'_>,
        room: &str,
        sender: &str,
        message: &Message,
    ) -> PublishAckReason {
        if from_client_cbor::<Typing>(&message.payload).is_none() {
            return PublishAckReason::PayloadFormatInvalid;
        }
        let now = Instant::now();
        {
            let mut typing = self.typing.lock();
            let key = (room.to_string(), sender.to_string());
            let interval = Duration::from_millis(self.limits.typing_min_interval_ms);
            if typing
                .get(&key)
                .is_some_and(|last| now.duration_since(*last) < interval)
            {
                self.counters.typing_dropped.inc();
                return PublishAckReason::Success;
            }
            if typing.len() >= self.limits.typing_max_entries && !typing.contains_key(&key) {
                typing.retain(|_, last| now.duration_since(*last) < interval);
                if typing.len() >= self.limits.typing_max_entries {
                    // Nothing is queued or stored for typing: dropping the
                    // event is all a full table costs.
                    self.counters.typing_dropped.inc();
                    tracing::warn!(
                        limit = self.limits.typing_max_entries,
                        "typing table full (typing_max_entries), event dropped"
                    );
                    return PublishAckReason::Success;
                }
            }
            typing.insert(key, now);
        }
        let mut typing = Message::new(
            message.topic.clone(),
            message.payload.clone(),
            QoS::AtMostOnce,
            false,
        );
        typing.expires_at = Some(now + TYPING_EXPIRY);
        typing.ephemeral = true;
        typing.publisher = Some(who.client_id.clone());
        self.router.publish(typing);
        PublishAckReason::Success
    }

    fn on_receipt(
        &self,
        who: &Publisher<'_>,
        room: &str,
        sender: &str,
        message: &Message,
    ) -> PublishAckReason {
        let Some(receipt) = from_client_cbor::<Receipt>(&message.payload) else {
            return PublishAckReason::PayloadFormatInvalid;
        };
        // Receipts are kept only for rooms with a log: the broker would
        // otherwise keep one for every name a client makes up.
        let head = self.log.head(room);
        if head == 0 {
            return PublishAckReason::TopicNameInvalid;
        }
        // A receipt can only be for a message the room has: one beyond the
        // head would hide every real receipt of this sender until then.
        if receipt.seq > head {
            return PublishAckReason::PayloadFormatInvalid;
        }
        // After a restart the retained receipt is the highest known; in
        // a cluster it also carries receipts sent through other nodes.
        let retained = || {
            self.router
                .retained()
                .matching(&message.topic)
                .first()
                .and_then(|m| from_cbor::<Receipt>(&m.payload))
                .map_or(0, |r| r.seq)
        };
        match self.receipts.raise(
            room,
            sender,
            &who.account,
            receipt.seq,
            self.replication.is_some(),
            retained,
        ) {
            Ok(true) => {}
            Ok(false) => return PublishAckReason::Success,
            Err(reason) => return reason,
        }
        let mut stored = Message::new(message.topic.clone(), to_cbor(&receipt), QoS::AtLeastOnce, true);
        stored.publisher = Some(who.client_id.clone());
        stored.broker_owned = true;
        self.router.publish(stored);
        PublishAckReason::Success
    }

    fn on_presence(&self, who: &Publisher, user: &str, message: &Message) -> PublishAckReason {
        let Some(update) = from_client_cbor::<PresenceUpdate>(&message.payload) else {
            return PublishAckReason::PayloadFormatInvalid;
        };
        if !USER_STATUSES.contains(&update.status.as_str()) {
            return PublishAckReason::PayloadFormatInvalid;
        }
        if !self
            .presence()
            .set_status(&self.router, user, &who.account, &update.status)
        {
            // Over `max_presence_records_per_user`: not shown.
            return PublishAckReason::QuotaExceeded;
        }
        PublishAckReason::Success
    }
}

impl Chat {
    /// What a room log keeps of a message is bounded: the msg-id (a key of
    /// the de-duplication table) by `max_msg_id_length` (0x99), payload and
    /// User Properties by `max_room_message_bytes` (0x97), a post that
    /// would open a new room by `max_rooms` and the publisher's
    /// `max_rooms_per_user` (0x97), and the bytes one identity stores by
    /// `room_post_bytes_per_hour` (0x97). A repeat of a message the room
    /// has (its msg-id seen) stores nothing and is charged nothing: it is
    /// acknowledged again by the post that follows.
    fn check_room_message(
        &self,
        who: &Publisher<'_>,
        room: &str,
        sender: &str,
        msg_id: Option<&str>,
        message: &Message,
    ) -> Result<(), PublishAckReason> {
        if msg_id.is_some_and(|id| id.len() > self.limits.max_msg_id_length) {
            return Err(PublishAckReason::PayloadFormatInvalid);
        }
        if self.is_repeat(room, sender, msg_id) {
            return Ok(());
        }
        let properties: usize = message.properties.as_ref().map_or(0, |p| {
            p.user_properties.iter().map(|(k, v)| k.len() + v.len()).sum()
        });
        if message.payload.len() + properties > self.limits.max_room_message_bytes {
            return Err(PublishAckReason::QuotaExceeded);
        }
        let charge = || match self.budgets.charge(&who.account, Held::Rooms, 1) {
            Ok(()) => true,
            Err(over) => {
                tracing::info!(%room, account = %who.account, %over, "room not opened");
                false
            }
        };
        match self.log.open(room, &who.account, self.limits.max_rooms, charge) {
            Ok(()) => {}
            Err(NotOpened::MaxRooms) => {
                tracing::warn!(%room, max_rooms = self.limits.max_rooms, "room not opened: max_rooms reached");
                return Err(PublishAckReason::QuotaExceeded);
            }
            Err(NotOpened::OverBudget) => return Err(PublishAckReason::QuotaExceeded),
        }
        // Every byte the log keeps of it: topic, payload, properties, and
        // what the store writes around them.
        let bytes = message.topic.len()
            + message.payload.len()
            + properties
            + msg_id.map_or(0, str::len)
            + super::STORED_RECORD_OVERHEAD;
        if let Err(over) = self
            .budgets
            .spend(&who.account, Rate::RoomPostBytes, bytes as u64)
        {
            tracing::info!(%room, account = %who.account, %over, "room message refused");
            return Err(PublishAckReason::QuotaExceeded);
        }
        Ok(())
    }
}

/// The `msg-id` User Property, if the sender set one.
fn msg_id_property(message: &Message) -> Option<&str> {
    message
        .properties
        .as_ref()?
        .user_properties
        .iter()
        .find(|(k, _)| k == "msg-id")
        .map(|(_, v)| &**v)
        .filter(|v| !v.is_empty())
}

/// The sender's User Properties, without the ones the broker sets.
fn other_user_properties(message: &Message) -> Vec<(String, String)> {
    let Some(p) = message.properties.as_ref() else {
        return Vec::new();
    };
    p.user_properties
        .iter()
        .filter(|(k, _)| !matches!(&**k, "msg-id" | "seq" | "prev" | "ts"))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}
