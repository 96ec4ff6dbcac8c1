//! Conversions between what the broker holds in memory (messages,
//! deliveries, subscription options) and the records the store keeps.
//! Deadlines become wall-clock unix milliseconds on the way in and
//! `Instant`s on the way out, so they keep counting while the broker is
//! down.

use std::num::{NonZeroU16, NonZeroU32};
use std::time::Duration;

use tokio::time::Instant;

use super::{unix_ms_now, MessageRecord, QueuedRecord, SubscriptionRecord};
use crate::message::{Delivery, Message};
use crate::protocol::{qos_from, RetainHandling, SubscriptionOptions};

impl MessageRecord {
    /// A message as stored; its expiry becomes a wall-clock time.
    pub fn from_message(m: &Message) -> MessageRecord {
        let now = Instant::now();
        let now_ms = unix_ms_now();
        MessageRecord {
            topic: m.topic.clone(),
            payload: m.payload.clone(),
            qos: m.qos.value(),
            retain: m.retain,
            properties: m.properties.clone(),
            expires_at_unix_ms: m
                .expires_at
                .map(|t| now_ms + t.saturating_duration_since(now).as_millis() as u64),
            publisher: m.publisher.clone(),
        }
    }

    /// The stored message back; an expiry that passed while the broker was
    /// down is already in the past.
    pub fn into_message(self) -> Message {
        let now = Instant::now();
        let now_ms = unix_ms_now();
        Message {
            topic: self.topic,
            payload: self.payload,
            qos: qos_from(self.qos),
            retain: self.retain,
            properties: self.properties,
            expires_at: self
                .expires_at_unix_ms
                .map(|ms| now + Duration::from_millis(ms.saturating_sub(now_ms))),
            publisher: self.publisher,
            owner: None,
            room: None,
            ephemeral: false,
            retain_in_memory: false,
            broker_owned: false,
            received_at: None,
            last_value: false,
            stored_body: std::sync::OnceLock::new(),
        }
    }
}

impl QueuedRecord {
    /// A session's delivery as stored, with its packet id once it is in
    /// flight and whether its PUBREL was sent (QoS 2).
    pub fn from_delivery(d: &Delivery, packet_id: Option<NonZeroU16>, released: bool) -> QueuedRecord {
        QueuedRecord {
            message: MessageRecord::from_message(&d.message),
            qos: d.qos.value(),
            retain: d.retain,
            subscription_ids: d.subscription_ids.iter().map(|i| i.get()).collect(),
            packet_id: packet_id.map(NonZeroU16::get),
            released,
        }
    }
}

impl SubscriptionRecord {
    pub fn from_options(
        filter: &str,
        options: &SubscriptionOptions,
        id: Option<NonZeroU32>,
    ) -> SubscriptionRecord {
        SubscriptionRecord {
            filter: filter.to_string(),
            qos: options.qos.value(),
            no_local: options.no_local,
            retain_as_published: options.retain_as_published,
            retain_handling: u8::from(options.retain_handling),
            id: id.map(NonZeroU32::get),
        }
    }

    /// The stored options and Subscription Identifier.
    pub fn options(&self) -> (SubscriptionOptions, Option<NonZeroU32>) {
        let options = SubscriptionOptions {
            qos: qos_from(self.qos),
            no_local: self.no_local,
            retain_as_published: self.retain_as_published,
            retain_handling: RetainHandling::try_from(self.retain_handling)
                .unwrap_or(RetainHandling::AtSubscribe),
        };
        (options, self.id.and_then(NonZeroU32::new))
    }
}
