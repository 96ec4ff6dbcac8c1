//! Outbound messages: moving queued deliveries into flight within the
//! client's Receive Maximum, encoding them for this client (expiry left,
//! subscription ids, topic alias), resending after reconnect, and the
//! client's acknowledgements.

use std::num::{NonZeroU16, NonZeroU32};
use std::sync::Arc;
use tokio::time::Instant;

use super::connection::{Close, Connection};
use super::inflight::Resend;
use super::{Inflight, Stage};
use crate::protocol::{
    EncodeError, Packet, Publish, PublishAck, PublishAck2, PublishProperties, PublishV3, QoS,
};
use crate::router::Delivery;

impl Connection {
    /// Encodes queued deliveries until the write buffer holds `budget`
    /// bytes, the in-flight window is full, or the queue is empty. Returns
    /// true when it stopped for the budget (more can be sent now).
    pub(super) fn fill_outbox(&mut self, budget: usize) -> bool {
        let more = self.fill_outbox_batch(budget);
        self.shared
            .metrics
            .publish_to_delivery
            .merge(&mut self.delivery_latency);
        more
    }

    fn fill_outbox_batch(&mut self, budget: usize) -> bool {
        let session = self.session.clone();
        let mut st = session.state.lock();
        if st.queue.front().is_none() {
            // Most wake-ups of a subscriber that acknowledges are for its
            // own PUBACKs: no clock read for them.
            return false;
        }
        let now = Instant::now();
        while let Some(front) = st.queue.front() {
            if self.io.out.len() >= budget {
                return true;
            }
            if front.qos != QoS::AtMostOnce && st.window_full(self.agreed.send_window) {
                break;
            }
            let Some(delivery) = st.queue.pop_front() else {
                break;
            };
            if delivery.message.is_expired(now) {
                self.shared.metrics.messages_expired.inc();
                session.forget_delivery(&delivery);
                session.room_message_done(&mut st, &delivery);
                continue;
            }
            // Membership was checked when this was queued; a ban since
            // then stops what is still waiting too.
            if !session.may_read(&st, &delivery.message.topic) {
                session.forget_delivery(&delivery);
                session.room_message_done(&mut st, &delivery);
                continue;
            }
            if delivery.qos == QoS::AtMostOnce {
                self.write_current(&delivery, None, false, now);
                session.room_message_done(&mut st, &delivery);
                continue;
            }
            let Some(packet_id) = st.allocate_packet_id() else {
                // Every id in flight: impossible within a window of at
                // most 65,535; the message waits, as for a full window.
                st.queue.push_front(delivery);
                break;
            };
            if self.write_current(&delivery, Some(packet_id), false, now) {
                let stage = if delivery.qos == QoS::ExactlyOnce {
                    Stage::Pubrec
                } else {
                    Stage::Puback
                };
                let inflight = Inflight {
                    packet_id,
                    delivery,
                    stage,
                };
                session.record_inflight(&st, &inflight);
                st.push_in_flight(inflight);
            } else {
                // Not sendable to this client (too large): treated as delivered.
                session.forget_delivery(&delivery);
                session.room_message_done(&mut st, &delivery);
            }
        }
        false
    }

    /// After a reconnect, resends every unacknowledged message with DUP set,
    /// and PUBREL for those past PUBREC, in the original order
    /// ([MQTT-4.4.0-1]). Two departures, both for the room promises
    /// (`topics.md`, *Moderation*; `docs/mqtt-support.md`): a message the
    /// client may no longer read (banned from its room, removed from its
    /// members) is dropped, not resent, and its packet id is free again
    /// (the client had the PUBLISH once; a PUBREL, which carries no
    /// content, is still sent); a room message edited or deleted since it
    /// was sent is resent in its current state (a tombstone once deleted).
    pub(super) fn resend_inflight(&mut self) {
        let session = self.session.clone();
        let mut st = session.state.lock();
        let now = Instant::now();
        let mut index = 0;
        while let Some(resend) = st.resend_at(index) {
            let (packet_id, topic) = match resend {
                Resend::Release(packet_id) => {
                    self.io.send(Packet::PublishRelease(PublishAck2 {
                        packet_id,
                        ..Default::default()
                    }));
                    index += 1;
                    continue;
                }
                Resend::Publish(packet_id, delivery) => (packet_id, delivery.message.topic.clone()),
            };
            if !session.may_read(&st, &topic) {
                if let Some(f) = st.inflight.remove(index) {
                    tracing::debug!(client_id = %session.client_id, %topic, "in-flight message no longer readable: dropped, not resent");
                    session.forget_delivery(&f.delivery);
                    session.room_message_done(&mut st, &f.delivery);
                }
                continue;
            }
            if let Some(f) = st.inflight.get(index) {
                self.write_current(&f.delivery, Some(packet_id), true, now);
            }
            index += 1;
        }
    }

    /// [`Connection::write_publish`] of `d`'s message in its current state:
    /// a room message edited or deleted since it was queued goes as it is
    /// now (a tombstone once deleted). The current state is only encoded,
    /// never kept: the queue and the in-flight window hold the copy they
    /// were charged for, so an edit that makes a waiting message larger
    /// cannot make the session hold more than its bounds (it is read again
    /// from the log for a resend).
    #[inline(always)]
    fn write_current(
        &mut self,
        d: &Delivery,
        packet_id: Option<NonZeroU16>,
        dup: bool,
        now: Instant,
    ) -> bool {
        if d.message.room.is_none() {
            // Not a room message: nothing to edit or delete.
            return self.write_publish(d, packet_id, dup, now);
        }
        match self.shared.chat.current(&d.message) {
            Some(current) => {
                let current = Delivery {
                    message: Arc::new(current),
                    ..d.clone()
                };
                self.write_publish(&current, packet_id, dup, now)
            }
            None => self.write_publish(d, packet_id, dup, now),
        }
    }

    /// Encodes one PUBLISH for this client. Returns false when it was not
    /// sent: larger than the client's Maximum Packet Size, which the spec
    /// says to treat as delivered and drop ([MQTT-3.1.2-25]).
    fn write_publish(
        &mut self,
        d: &Delivery,
        packet_id: Option<NonZeroU16>,
        dup: bool,
        now: Instant,
    ) -> bool {
        let publish = PublishV3 {
            dup,
            retain: d.retain,
            qos: d.qos,
            topic: &d.message.topic,
            packet_id,
            payload: &d.message.payload,
        };
        // The codec knows the connection's version: a 5.0 PUBLISH (with
        // properties, aliases) is built only where it has no 3.1.1 form.
        let written = match self.io.encode_publish_v3(&publish) {
            Some(written) => written,
            None => self.encode_publish_v5(d, packet_id, dup, now),
        };
        match written {
            Ok(()) => {
                let metrics = &self.shared.metrics;
                metrics.messages_sent[usize::from(d.qos.value())].inc();
                // `now` is this batch's: written with it, at the flush;
                // added to the shared histogram once per batch.
                if let Some(received) = d.message.received_at {
                    metrics.publish_to_delivery.observe_locally(
                        &mut self.delivery_latency,
                        now.saturating_duration_since(received),
                    );
                }
                if let Some(tag) = &d.message.room {
                    tracing::debug!(client_id = %self.session.client_id, room = %tag.room, seq = tag.seq, "room message sent");
                }
                true
            }
            Err(EncodeError::TooLarge) => {
                self.shared.metrics.messages_dropped_too_large.inc();
                tracing::debug!(topic = %d.message.topic, "message over the client's Maximum Packet Size, not sent");
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not encode PUBLISH");
                false
            }
        }
    }

    /// Encodes a 5.0 PUBLISH: the message's properties with this
    /// delivery's expiry, subscription identifiers and topic alias.
    fn encode_publish_v5(
        &mut self,
        d: &Delivery,
        packet_id: Option<NonZeroU16>,
        dup: bool,
        now: Instant,
    ) -> Result<(), EncodeError> {
        let mut topic = d.message.topic.clone();
        let mut new_alias = None;
        let mut p = d.message.properties.clone().unwrap_or_default();
        p.message_expiry_interval = d.message.remaining_expiry_secs(now).and_then(NonZeroU32::new);
        p.subscription_ids = d.subscription_ids.clone();
        self.apply_outbound_alias(&mut topic, &mut p, &mut new_alias);
        let publish = Publish {
            dup,
            retain: d.retain,
            qos: d.qos,
            topic,
            packet_id,
            payload: d.message.payload.clone(),
            properties: Some(p),
        };
        let written = self.io.encode(Packet::Publish(Box::new(publish)));
        if let (Err(EncodeError::TooLarge), Some(topic), Some(aliases)) =
            (&written, new_alias, &mut self.aliases)
        {
            // Not sent: the alias was not set on the client's side.
            aliases.outbound.remove(&topic);
        }
        written
    }

    /// Uses a topic alias towards a 5.0 client that allows them: the first
    /// message on a topic sets the alias, later ones send only the alias.
    /// When all aliases are taken, further topics go without one.
    fn apply_outbound_alias(
        &mut self,
        topic: &mut bytestring::ByteString,
        p: &mut PublishProperties,
        new_alias: &mut Option<bytestring::ByteString>,
    ) {
        if self.agreed.client_alias_max == 0 {
            return;
        }
        let aliases = self.aliases.get_or_insert_with(Default::default);
        if let Some(&alias) = aliases.outbound.get(topic) {
            p.topic_alias = NonZeroU16::new(alias);
            *topic = bytestring::ByteString::new();
        } else if aliases.outbound.len() < usize::from(self.agreed.client_alias_max) {
            let alias = aliases.outbound.len() as u16 + 1;
            aliases.outbound.insert(topic.clone(), alias);
            p.topic_alias = NonZeroU16::new(alias);
            *new_alias = Some(topic.clone());
        }
    }

    pub(super) fn on_puback(&mut self, ack: PublishAck) -> Option<Close> {
        self.complete(ack.packet_id, Stage::Puback);
        None
    }

    pub(super) fn on_pubrec(&mut self, ack: PublishAck) -> Option<Close> {
        let id = ack.packet_id;
        let failed = u8::from(ack.reason_code) >= 0x80;
        let mut st = self.session.state.lock();
        let released = if failed {
            // A PUBREC with an error code ends the flow ([MQTT-4.3.3-4]).
            if let Some(f) = st.acknowledged(id, Stage::Pubrec) {
                self.session.forget_delivery(&f.delivery);
                self.session.room_message_done(&mut st, &f.delivery);
                return None;
            }
            None
        } else {
            st.received(id)
        };
        let Some(pos) = released else {
            drop(st);
            // Unknown id: answer so the client can finish its own state.
            self.io.send(Packet::PublishRelease(PublishAck2 {
                packet_id: id,
                reason_code: crate::protocol::PublishAck2Reason::PacketIdNotFound,
                ..Default::default()
            }));
            return None;
        };
        let stage_written = st
            .inflight
            .get(pos)
            .is_some_and(|f| self.session.record_inflight(&st, f));
        drop(st);
        let pubrel = Packet::PublishRelease(PublishAck2 {
            packet_id: id,
            ..Default::default()
        });
        // After a PUBREL the client may free the packet id; a crash must not
        // bring the message back as a PUBLISH (it would be a new message to
        // the client), so the stage is on disk first.
        self.send_ack_if_stored(pubrel, stage_written);
        None
    }

    pub(super) fn on_pubcomp(&mut self, ack: PublishAck2) -> Option<Close> {
        self.complete(ack.packet_id, Stage::Pubcomp);
        None
    }

    fn complete(&mut self, id: NonZeroU16, stage: Stage) {
        let mut st = self.session.state.lock();
        if let Some(f) = st.acknowledged(id, stage) {
            self.session.forget_delivery(&f.delivery);
            self.session.room_message_done(&mut st, &f.delivery);
        }
    }
}
