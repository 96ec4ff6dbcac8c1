//! What travels through the router: one [`Message`] per PUBLISH, shared by
//! every subscriber, and one small [`Delivery`] per subscriber.

use std::num::NonZeroU32;
use std::sync::Arc;
use tokio::time::Instant;

use bytes::Bytes;
use bytestring::ByteString;

use crate::protocol::{PublishProperties, QoS};

/// One application message as the broker received it. The payload is a
/// single `Bytes`, shared (never copied) by every subscriber's queue.
#[derive(Debug)]
pub struct Message {
    pub topic: ByteString,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// 5.0 properties passed through unchanged (user properties, content
    /// type, response topic, correlation data, payload format). The topic
    /// alias, subscription identifiers and expiry interval are stripped:
    /// they are set per subscriber on the way out.
    pub properties: Option<PublishProperties>,
    /// When the Message Expiry Interval runs out; `None` means never.
    pub expires_at: Option<Instant>,
    /// Client id of the publisher, for the No Local subscription option.
    pub publisher: Option<Arc<str>>,
    /// The account (`budget::account_of`) that pays for this message while
    /// it is retained; set only for a client's retained PUBLISH or will,
    /// `None` for what the broker owns (and for retained messages read
    /// back from the store, whose owner is not stored).
    pub owner: Option<Arc<str>>,
    /// Set for a chat message stored in a room's log: persistent sessions
    /// that are offline do not queue it, they replay it from the log.
    pub room: Option<RoomTag>,
    /// Never queued for an offline session (typing events).
    pub ephemeral: bool,
    /// Retained in memory only, not written to the store ("online"
    /// presence: a restart marks everyone offline anyway, and one store
    /// write per connection cost about 800 bytes of sled cache each).
    pub retain_in_memory: bool,
    /// State the broker keeps for itself on a client-visible topic (read
    /// receipts): bounded by its own per-identity limits, so it does not
    /// count against the clients' retained limits (`max_retained_*`).
    pub broker_owned: bool,
    /// State of which only the newest copy is of use (a room's member
    /// list, a user's presence): a session's queue keeps one copy per
    /// topic, a newer one replacing the copy still waiting there, so a
    /// reader that does not read holds one list per room, not one per
    /// change.
    pub last_value: bool,
    /// When its PUBLISH was read (for `roomq_publish_to_delivery_seconds`);
    /// `None` for messages the broker makes itself.
    pub received_at: Option<Instant>,
    /// The id the store keeps this message under for persistent sessions'
    /// queues, set by the first session that queues it: every other
    /// session's record names the same stored body, so one publish to N
    /// offline sessions is stored once (`Store::new_body_id`).
    pub(crate) stored_body: std::sync::OnceLock<u64>,
}

/// Where a chat message sits in its room's log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomTag {
    pub room: Arc<str>,
    pub seq: u64,
}

impl Message {
    /// A message with no 5.0 properties, as `mosquitto_pub` or the
    /// in-process API would send it.
    pub fn new(topic: impl Into<ByteString>, payload: impl Into<Bytes>, qos: QoS, retain: bool) -> Self {
        Message {
            topic: topic.into(),
            payload: payload.into(),
            qos,
            retain,
            properties: None,
            expires_at: None,
            publisher: None,
            owner: None,
            room: None,
            ephemeral: false,
            retain_in_memory: false,
            broker_owned: false,
            last_value: false,
            received_at: None,
            stored_body: std::sync::OnceLock::new(),
        }
    }

    /// Every byte this message makes the broker hold: topic, payload and
    /// every property a client can fill (User Property keys and values,
    /// Correlation Data, Response Topic, Content Type). The one measure
    /// that the queues, the retained index and the per-identity budgets
    /// count, so that no part of a message escapes a byte limit.
    pub fn footprint(&self) -> usize {
        let properties = self.properties.as_ref().map_or(0, |p| {
            let user: usize = p.user_properties.iter().map(|(k, v)| k.len() + v.len()).sum();
            user + p.correlation_data.as_ref().map_or(0, |c| c.len())
                + p.response_topic.as_ref().map_or(0, |t| t.len())
                + p.content_type.as_ref().map_or(0, |t| t.len())
        });
        self.topic.len() + self.payload.len() + properties
    }

    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|t| t <= now)
    }

    /// Seconds left before expiry, rounded up, for the outgoing Message
    /// Expiry Interval; `None` when the message never expires.
    pub fn remaining_expiry_secs(&self, now: Instant) -> Option<u32> {
        self.expires_at.map(|t| {
            let left = t.saturating_duration_since(now);
            let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            u32::try_from(secs.max(1)).unwrap_or(u32::MAX)
        })
    }
}

/// Identifies one shared subscription group: `$share/{group}/{filter}`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SharedGroupKey {
    pub group: Arc<str>,
    pub filter: Arc<str>,
}

/// One message on its way to one subscriber.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub message: Arc<Message>,
    /// min(publish QoS, granted QoS).
    pub qos: QoS,
    /// The RETAIN flag to send: set for retained messages sent on
    /// subscribe, and with Retain As Published.
    pub retain: bool,
    /// Identifiers of every subscription of this session that matched.
    pub subscription_ids: Vec<NonZeroU32>,
    /// Set when the message came through a shared subscription, so that it
    /// can go to another member if this one leaves before acknowledging it.
    pub shared: Option<Arc<SharedGroupKey>>,
    /// Where a persistent session stored this delivery, so the record can be
    /// removed once the client acknowledges it.
    pub store_seq: Option<u64>,
}
