//! Inbound PUBLISH and PUBREL: topic aliases, limits, QoS 1/2 receipt and
//! hand-off to the router.

use std::num::{NonZeroU16, NonZeroU32};
use std::ops::ControlFlow;
use std::time::Duration;
use tokio::time::Instant;

use std::collections::VecDeque;

use super::connection::{Aliases, Close, Connection};
use super::route::{gate_check, route_as};
use crate::chat::Classified;
use crate::protocol::validate::is_valid_topic_name;
use crate::protocol::{
    DisconnectReasonCode, Packet, Publish, PublishAck, PublishAck2, PublishAck2Reason, PublishAckReason, QoS,
};
use crate::router::Message;
use bytestring::ByteString;

/// QoS 1 publishes remembered per session for de-duplication by packet
/// id. A DUP resend follows a lost PUBACK, so it is one of the client's
/// last messages in flight; clients keep 20 (Mosquitto) to 100 (rumqttc)
/// in flight. A ring, not a map: measured, a map of up to 65,535 packet ids
/// cost 18% of QoS 1 fan-in.
const RECENT_PUBLISHES: usize = 256;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a: cheap, and collisions only matter for a DUP resend with the
/// same packet id.
fn fnv1a(bytes: &[u8], mut hash: u64) -> u64 {
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// The PUBACK (QoS 1) or PUBREC (QoS 2) with `reason`; none for QoS 0.
fn publish_ack(packet_id: Option<NonZeroU16>, qos: QoS, reason: PublishAckReason) -> Option<Packet> {
    let ack = PublishAck {
        packet_id: packet_id?,
        reason_code: reason,
        ..Default::default()
    };
    Some(match qos {
        QoS::ExactlyOnce => Packet::PublishReceived(ack),
        _ => Packet::PublishAck(ack),
    })
}

impl Connection {
    /// Handles a PUBLISH (one node: nothing to wait for between its entry
    /// and the rest).
    pub(super) fn on_publish(&mut self, publish: Publish) -> Option<Close> {
        match self.enter_publish(publish) {
            Ok((publish, kind)) => self.on_entered_publish(publish, kind),
            Err(close) => Some(close),
        }
    }

    /// Where a PUBLISH enters: its topic alias is resolved, its topic
    /// checked against the limits, and then classified, once. Everything
    /// after (cluster mode's room catch-up, the gate, the store check,
    /// the route, the chat layer) reads the returned value; a topic sent
    /// as a Topic Alias alone is classified as the topic it stands for.
    pub(super) fn enter_publish(&mut self, mut publish: Publish) -> Result<(Publish, Classified), Close> {
        self.resolve_topic_alias(&mut publish)?;
        let config = &self.shared.config;
        if publish.topic.len() > config.limits.max_topic_length
            || topic_levels(&publish.topic) > config.limits.max_topic_levels
        {
            return Err(Close::ByServer(
                DisconnectReasonCode::TopicNameInvalid,
                "topic over max_topic_length or max_topic_levels".into(),
            ));
        }
        if publish.retain && !config.limits.retain_available {
            return Err(Close::ByServer(
                DisconnectReasonCode::RetainNotSupported,
                "retain is not available".into(),
            ));
        }
        let kind = Classified::of(&publish.topic);
        Ok((publish, kind))
    }

    /// The rest of a PUBLISH, after `enter_publish` (`kind` is its topic's
    /// classification): admitted, received at its QoS, then routed.
    pub(super) fn on_entered_publish(&mut self, publish: Publish, kind: Classified) -> Option<Close> {
        if let ControlFlow::Break(close) = self.admit_publish(&publish, kind) {
            return close;
        }
        if let ControlFlow::Break(close) = self.receive_at_qos(&publish) {
            return close;
        }
        self.route_publish(publish, kind);
        None
    }

    /// The checks a PUBLISH passes before anything is kept of it: the rate
    /// budget, the gate, the history rate and the store. `Break` ends the
    /// packet there, with the connection closed or not.
    fn admit_publish(&mut self, publish: &Publish, kind: Classified) -> ControlFlow<Option<Close>> {
        let (packet_id, qos) = (publish.packet_id, publish.qos);
        if !self.publish_budget.allow(publish.payload.len()) {
            self.shared.metrics.rate_limited.inc();
            return ControlFlow::Break(Some(Close::ByServer(
                DisconnectReasonCode::MessageRateTooHigh,
                "over max_publish_rate or max_publish_bytes_rate".into(),
            )));
        }
        if let Err(reason) = gate_check(
            &self.shared,
            &self.principal,
            &self.session.client_id,
            &publish.topic,
            kind,
        ) {
            // 5.0 learns why; 3.1.1 gets a plain acknowledgement and the
            // message is dropped, as that version allows.
            self.acknowledge(packet_id, qos, reason);
            return ControlFlow::Break(None);
        }

        if crate::chat::only_reads(&publish.topic) && !self.may_ask_history() {
            // Nothing was read or sent. 5.0 learns why (0x97: a PUBACK has
            // no 0x96, that code is for DISCONNECT); 3.1.1 gets a plain
            // acknowledgement and no answer, as for a refused publish.
            self.acknowledge(packet_id, qos, PublishAckReason::QuotaExceeded);
            return ControlFlow::Break(None);
        }

        if self.store_refuses(publish, kind) {
            // Not accepted, so nothing is promised: 5.0 learns why, 3.1.1
            // gets no acknowledgement and sends it again after reconnecting.
            self.shared.metrics.publishes_refused_store.inc();
            if self.agreed.version.is_v5() {
                self.acknowledge(packet_id, qos, PublishAckReason::QuotaExceeded);
            }
            return ControlFlow::Break(None);
        }
        ControlFlow::Continue(())
    }

    /// QoS 1 and 2 receipt: Receive Maximum, the QoS 2 packet id kept
    /// until PUBREL, and a resend of what is already held acknowledged
    /// again without being delivered twice.
    fn receive_at_qos(&mut self, publish: &Publish) -> ControlFlow<Option<Close>> {
        let (packet_id, qos) = (publish.packet_id, publish.qos);
        let receive_maximum = usize::from(self.shared.config.limits.receive_maximum);
        if qos == QoS::AtLeastOnce && self.agreed.version.is_v5() {
            // Receive Maximum counts QoS 1 and 2 ([MQTT-3.3.4-9]): a QoS 1
            // message is in flight until its PUBACK, which may wait for the
            // group commit.
            let in_flight = self.session.state.lock().incoming_qos2.len() + self.acks.qos1_waiting();
            if in_flight >= receive_maximum {
                return ControlFlow::Break(Some(Close::ByServer(
                    DisconnectReasonCode::ReceiveMaximumExceeded,
                    "more unacknowledged QoS 1 and 2 messages than Receive Maximum".into(),
                )));
            }
        }
        if qos == QoS::ExactlyOnce {
            return self.receive_qos2(packet_id);
        }
        if qos == QoS::AtLeastOnce {
            if let Some(id) = packet_id {
                if self.is_stored_resend(id.get(), publish) {
                    self.shared.chat.counters.duplicates.inc();
                    self.acknowledge(packet_id, qos, PublishAckReason::Success);
                    return ControlFlow::Break(None);
                }
            }
        }
        ControlFlow::Continue(())
    }

    /// A QoS 2 PUBLISH: its packet id is kept (and stored) until PUBREL; a
    /// resend of one already kept gets its PUBREC again and goes no further.
    fn receive_qos2(&mut self, packet_id: Option<NonZeroU16>) -> ControlFlow<Option<Close>> {
        let Some(id) = packet_id else {
            return ControlFlow::Break(Some(Close::ByServer(
                DisconnectReasonCode::ProtocolError,
                "QoS 2 without packet id".into(),
            )));
        };
        let receive_maximum = self.shared.config.limits.receive_maximum;
        let mut st = self.session.state.lock();
        if st.incoming_qos2.contains(&id) {
            // A resend of a QoS 2 message we already have: acknowledge
            // again, deliver nothing ([MQTT-4.3.3-10]).
            drop(st);
            self.send_ack(Packet::PublishReceived(PublishAck {
                packet_id: id,
                ..Default::default()
            }));
            return ControlFlow::Break(None);
        }
        if st.incoming_qos2.len() + self.acks.qos1_waiting() >= usize::from(receive_maximum) {
            if !self.agreed.version.is_v5() {
                // 3.1.1 has no Receive Maximum to announce and no
                // DISCONNECT to explain it: say it here.
                tracing::warn!(
                    limit = receive_maximum,
                    "3.1.1 client closed: more unreleased QoS 2 messages than receive_maximum"
                );
            }
            return ControlFlow::Break(Some(Close::ByServer(
                DisconnectReasonCode::ReceiveMaximumExceeded,
                "more unacknowledged QoS 2 messages than Receive Maximum".into(),
            )));
        }
        st.incoming_qos2.insert(id);
        self.session.record_incoming_qos2(&st, id, true);
        ControlFlow::Continue(())
    }

    /// Hands an admitted, received PUBLISH to the router and the chat
    /// layer, and acknowledges it with the reason they gave.
    fn route_publish(&mut self, publish: Publish, kind: Classified) {
        let (packet_id, qos) = (publish.packet_id, publish.qos);
        let message = self.to_message(publish);
        self.shared.metrics.messages_received[usize::from(qos.value())].inc();
        let room_post = kind.is_under_rooms();
        let bytes = message.payload.len();
        let only_reads = qos == QoS::AtLeastOnce && crate::chat::only_reads(&message.topic);
        let reason = route_as(
            &self.shared,
            &self.principal,
            &self.session.client_id,
            message,
            kind,
        );
        if room_post && u8::from(reason) < 0x80 {
            self.joined_a_room();
        } else if room_post && !self.agreed.version.is_v5() && !self.rooms.told_refused_post {
            // 3.1.1 has no reason code: without this line a user sees the
            // post vanish (an oversize one: `max_room_message_bytes`).
            self.rooms.told_refused_post = true;
            tracing::info!(
                client_id = %self.session.client_id,
                reason = %format_args!("{:#04x}", u8::from(reason)),
                bytes,
                max_room_message_bytes = self.shared.config.chat.max_room_message_bytes,
                "room post refused; a 3.1.1 client is not told why (logged once per connection; the 5.0 reason code says it)"
            );
        }
        match publish_ack(packet_id, qos, reason) {
            Some(ack) if only_reads => self.send_unstored_ack(ack),
            Some(ack) => self.send_ack(ack),
            None => {}
        }
    }

    /// Whether this publish needs the store (QoS 1/2, retained, or a room
    /// message; not a history request, which only reads) while the store
    /// refuses writes (a full disk; in a cluster, JetStream without
    /// quorum), or would take the disk below `min_free_disk_bytes`.
    fn store_refuses(&self, publish: &Publish, kind: Classified) -> bool {
        if self.shared.store.is_none() {
            return false;
        }
        let needs_store = publish.retain
            || match publish.qos {
                // A QoS 0 post still goes into the room log.
                QoS::AtMostOnce => kind.is_logged(),
                // A read: history stays readable while the store cannot
                // write (at QoS 2 its packet id is session state to store).
                qos if crate::chat::only_reads(&publish.topic) => {
                    qos == QoS::ExactlyOnce || !kind.is_history_request()
                }
                _ => true,
            };
        // While there is room: one atomic load and one comparison.
        needs_store
            && (self.shared.store_health.is_failing()
                || !self.shared.store_health.admits(stored_size(publish)))
    }

    /// Takes one history request from this identity's
    /// `history_requests_per_minute`: each answer reads the store and may
    /// be up to `history_max_bytes`, so an identity must not ask without
    /// bound. Logged (rate-limited) and counted when refused.
    fn may_ask_history(&self) -> bool {
        let Err(over) =
            self.shared
                .budgets
                .spend(&self.principal.account, crate::budget::Rate::HistoryRequests, 1)
        else {
            return true;
        };
        let refused = &self.shared.chat.counters.history_refused_rate;
        refused.inc();
        if refused.get().is_power_of_two() {
            tracing::warn!(account = %self.principal.account, bound = over.bound, refused = refused.get(), "history request refused: over {}", over.key);
        }
        false
    }

    /// PUBACK (QoS 1) or PUBREC (QoS 2) with `reason`; nothing for QoS 0.
    fn acknowledge(&mut self, packet_id: Option<NonZeroU16>, qos: QoS, reason: PublishAckReason) {
        if let Some(ack) = publish_ack(packet_id, qos, reason) {
            self.send_ack(ack);
        }
    }

    pub(super) fn on_pubrel(&mut self, ack: PublishAck2) -> Option<Close> {
        let (known, id_written) = {
            let mut st = self.session.state.lock();
            let known = st.incoming_qos2.remove(&ack.packet_id);
            let written = known && self.session.record_incoming_qos2(&st, ack.packet_id, false);
            (known, written)
        };
        let reason = if known {
            PublishAck2Reason::Success
        } else {
            PublishAck2Reason::PacketIdNotFound
        };
        let pubcomp = Packet::PublishComplete(PublishAck2 {
            packet_id: ack.packet_id,
            reason_code: reason,
            ..Default::default()
        });
        // PUBCOMP frees the packet id: after a crash the broker must not
        // still wait for this PUBREL, or it would take the client's next
        // message with this id for a resend and drop it.
        self.send_ack_if_stored(pubcomp, id_written);
        None
    }

    /// De-duplication by packet id: whether this QoS 1 PUBLISH is a DUP
    /// resend of one this session already stored (same packet id, topic and
    /// payload). The last `RECENT_PUBLISHES` QoS 1 publishes are
    /// remembered by packet id and a fingerprint of topic and payload.
    fn is_stored_resend(&self, packet_id: u16, publish: &Publish) -> bool {
        let fingerprint = fnv1a(
            publish.payload.as_ref(),
            fnv1a(publish.topic.as_bytes(), FNV_OFFSET),
        );
        let mut st = self.session.state.lock();
        remember_publish(&mut st.recent_publishes, packet_id, fingerprint, publish.dup)
    }

    /// Applies and records a 5.0 Topic Alias ([MQTT-3.3.2-7] to -12).
    fn resolve_topic_alias(&mut self, publish: &mut Publish) -> Result<(), Close> {
        let alias = publish.properties.as_mut().and_then(|p| p.topic_alias.take());
        match alias {
            Some(alias) => {
                let alias = alias.get();
                if alias > self.shared.config.limits.topic_alias_maximum {
                    return Err(Close::ByServer(
                        DisconnectReasonCode::TopicAliasInvalid,
                        format!("topic alias {alias} is over the maximum"),
                    ));
                }
                if publish.topic.is_empty() {
                    match self.aliases.as_ref().and_then(|a| a.inbound.get(&alias)) {
                        Some(topic) => publish.topic = topic.clone(),
                        None => {
                            return Err(Close::ByServer(
                                DisconnectReasonCode::ProtocolError,
                                format!("unknown topic alias {alias}"),
                            ))
                        }
                    }
                } else {
                    self.register_alias(alias, &publish.topic)?;
                }
                Ok(())
            }
            // [MQTT-3.3.2-8]: an empty topic needs a Topic Alias.
            None if publish.topic.is_empty() => Err(Close::ByServer(
                DisconnectReasonCode::ProtocolError,
                "empty topic without a topic alias".into(),
            )),
            None if !is_valid_topic_name(&publish.topic) => Err(Close::ByServer(
                DisconnectReasonCode::TopicNameInvalid,
                "invalid topic name".into(),
            )),
            None => Ok(()),
        }
    }

    /// Records (or replaces) an inbound alias within
    /// `max_topic_alias_bytes`: one that would go over closes the
    /// connection with 0x94 Topic Alias invalid, the code 5.0 gives to an
    /// alias the server will not take.
    fn register_alias(&mut self, alias: u16, topic: &ByteString) -> Result<(), Close> {
        let bound = self.shared.config.limits.max_topic_alias_bytes;
        let aliases = self.aliases.get_or_insert_with(Default::default);
        if !aliases.register(alias, topic, bound) {
            return Err(Close::ByServer(
                DisconnectReasonCode::TopicAliasInvalid,
                format!("topic alias {alias}: aliased topics over max_topic_alias_bytes ({bound})"),
            ));
        }
        Ok(())
    }

    fn to_message(&self, publish: Publish) -> Message {
        let mut properties = publish.properties;
        let expires_at = properties.as_mut().and_then(|p| {
            p.subscription_ids.clear();
            p.message_expiry_interval
                .take()
                .map(NonZeroU32::get)
                .map(|secs| Instant::now() + Duration::from_secs(u64::from(secs)))
        });
        // Keep properties only when there is something to pass on.
        let properties = properties.filter(|p| {
            !p.user_properties.is_empty()
                || p.content_type.is_some()
                || p.response_topic.is_some()
                || p.correlation_data.is_some()
                || p.is_utf8_payload
        });
        Message {
            topic: publish.topic,
            payload: publish.payload,
            qos: publish.qos,
            retain: publish.retain,
            properties,
            expires_at,
            publisher: Some(self.session.client_id.clone()),
            // Only a retained message is charged: no account name to build
            // on the common path.
            owner: publish.retain.then(|| self.principal.account.clone()),
            room: None,
            ephemeral: false,
            retain_in_memory: false,
            broker_owned: false,
            received_at: Some(tokio::time::Instant::now()),
            last_value: false,
            stored_body: std::sync::OnceLock::new(),
        }
    }
}

/// Remembers a QoS 1 PUBLISH (packet id, fingerprint of topic and
/// payload) in `recent`, the last `RECENT_PUBLISHES`; returns whether it is
/// a DUP resend of one remembered: the newest entry for its id (the client
/// may have reused the id for another message) has the same fingerprint.
fn remember_publish(recent: &mut VecDeque<(u16, u64)>, packet_id: u16, fingerprint: u64, dup: bool) -> bool {
    if dup {
        let known = recent.iter().rev().find(|(id, _)| *id == packet_id);
        if known.is_some_and(|(_, f)| *f == fingerprint) {
            return true;
        }
    }
    if recent.len() >= RECENT_PUBLISHES {
        recent.pop_front();
    }
    recent.push_back((packet_id, fingerprint));
    false
}

impl Aliases {
    /// Records (or replaces) the client's alias for `topic`, unless the
    /// aliased topics would then hold more than `bound` bytes: false, and
    /// nothing changed.
    fn register(&mut self, alias: u16, topic: &ByteString, bound: usize) -> bool {
        let replaced = self.inbound.get(&alias).map_or(0, |t| t.len());
        let bytes = self.inbound_bytes - replaced + topic.len();
        if bytes > bound {
            return false;
        }
        self.inbound_bytes = bytes;
        self.inbound.insert(alias, topic.clone());
        true
    }
}

/// About how many bytes storing `publish` writes: every byte a client
/// sends counts (topic, payload, properties), plus a record's overhead.
fn stored_size(publish: &Publish) -> u64 {
    let properties = publish.properties.as_ref().map_or(0, |p| {
        p.user_properties
            .iter()
            .map(|(k, v)| k.len() + v.len() + 4)
            .sum::<usize>()
            + p.correlation_data.as_ref().map_or(0, |c| c.len())
            + p.response_topic.as_ref().map_or(0, |t| t.len())
            + p.content_type.as_ref().map_or(0, |t| t.len())
    });
    (publish.topic.len() + publish.payload.len() + properties + 64) as u64
}

/// The levels of `topic` (its `/` separators plus one), counted over its
/// bytes: a `/` is one byte in UTF-8 and never part of another character.
fn topic_levels(topic: &str) -> usize {
    topic.bytes().filter(|&b| b == b'/').count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u16) -> NonZeroU16 {
        NonZeroU16::new(n).unwrap()
    }

    #[test]
    fn qos_decides_the_acknowledgement() {
        assert!(publish_ack(None, QoS::AtMostOnce, PublishAckReason::Success).is_none());
        let puback = publish_ack(Some(id(3)), QoS::AtLeastOnce, PublishAckReason::NotAuthorized);
        assert!(
            matches!(puback, Some(Packet::PublishAck(a)) if a.packet_id == id(3) && a.reason_code == PublishAckReason::NotAuthorized)
        );
        let pubrec = publish_ack(Some(id(4)), QoS::ExactlyOnce, PublishAckReason::Success);
        assert!(matches!(pubrec, Some(Packet::PublishReceived(a)) if a.packet_id == id(4)));
    }

    #[test]
    fn a_dup_resend_of_a_remembered_publish_is_recognised() {
        let mut recent = VecDeque::new();
        let (a, b) = (fnv1a(b"a", FNV_OFFSET), fnv1a(b"b", FNV_OFFSET));
        assert!(!remember_publish(&mut recent, 1, a, false));
        assert!(
            remember_publish(&mut recent, 1, a, true),
            "DUP, same id and content"
        );
        // Without DUP it is a new message that reuses the id.
        assert!(!remember_publish(&mut recent, 1, a, false));
        // The id reused for other content: the newest entry decides.
        assert!(!remember_publish(&mut recent, 1, b, false));
        assert!(!remember_publish(&mut recent, 1, a, true));
        assert!(!remember_publish(&mut recent, 2, a, true), "an id never seen");
    }

    #[test]
    fn only_the_last_publishes_are_remembered() {
        let mut recent = VecDeque::new();
        for n in 0..=RECENT_PUBLISHES as u16 {
            remember_publish(&mut recent, n, 7, false);
        }
        assert_eq!(recent.len(), RECENT_PUBLISHES);
        assert!(
            !remember_publish(&mut recent, 0, 7, true),
            "the oldest was forgotten"
        );
        assert!(remember_publish(&mut recent, RECENT_PUBLISHES as u16, 7, true));
    }

    #[test]
    fn aliases_are_bounded_in_bytes_and_a_replacement_counts_its_difference() {
        let mut aliases = Aliases::default();
        assert!(aliases.register(1, &ByteString::from("aaaa"), 10));
        assert!(aliases.register(2, &ByteString::from("bbbbbb"), 10));
        assert_eq!(aliases.inbound_bytes, 10);
        assert!(!aliases.register(3, &ByteString::from("c"), 10));
        assert_eq!(aliases.inbound.len(), 2, "a refused alias changes nothing");
        // Replacing alias 1 frees its 4 bytes first.
        assert!(aliases.register(1, &ByteString::from("dd"), 10));
        assert_eq!(aliases.inbound_bytes, 8);
        assert_eq!(aliases.inbound.get(&1).map(|t| &**t), Some("dd"));
    }

    #[test]
    fn a_stored_size_counts_every_byte_a_client_sends() {
        let mut publish = Publish {
            dup: false,
            retain: false,
            qos: QoS::AtLeastOnce,
            topic: ByteString::from("t/1"),
            packet_id: Some(id(1)),
            payload: bytes::Bytes::from_static(b"12345"),
            properties: None,
        };
        assert_eq!(stored_size(&publish), 3 + 5 + 64);
        publish.properties = Some(crate::protocol::PublishProperties {
            correlation_data: Some(bytes::Bytes::from_static(b"cd")),
            response_topic: Some(ByteString::from("r")),
            user_properties: vec![(ByteString::from("k"), ByteString::from("vv"))],
            ..Default::default()
        });
        assert_eq!(stored_size(&publish), 3 + 5 + 64 + 2 + 1 + (1 + 2 + 4));
    }

    #[test]
    fn topic_levels_are_counted_as_split_counts_them() {
        for topic in ["a", "", "/", "a/b/c", "a//b/", "é/ü/€", "rooms/lobby/msg/alice/1"] {
            assert_eq!(topic_levels(topic), topic.split('/').count(), "{topic}");
        }
    }
}
