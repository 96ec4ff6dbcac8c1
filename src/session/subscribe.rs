//! SUBSCRIBE and UNSUBSCRIBE: filter checks, shared subscriptions,
//! subscription identifiers, and the reason code for each filter.

use super::connection::{Close, Connection};
use super::SessionSubscription;
use crate::auth::acl::Subject;
use crate::budget::Held;
use crate::chat::Filter;
use crate::protocol::validate::is_valid_topic_filter;
use crate::protocol::{
    DisconnectReasonCode, Packet, QoS, Subscribe, SubscribeAck, SubscribeAckReason, Unsubscribe,
    UnsubscribeAck, UnsubscribeAckReason,
};

/// What one subscription keeps besides its filter's copies: its trie
/// node and subscriber entry, the session's map entry, allocator slack.
/// Measured (debug build, memory store, 5,000 subscriptions): about 900
/// bytes for a short filter, about 3.6 KiB for a 1000-byte one.
const SUBSCRIPTION_OVERHEAD: u64 = 1024;

/// How many times a filter's bytes are kept: the trie's levels, the
/// session's map key, the router's subscriber entry.
const FILTER_COPIES: u64 = 3;

/// What a subscription to `filter` costs its owner
/// (`Held::SubscriptionBytes`, `max_subscription_bytes_per_user`).
pub(crate) fn subscription_cost(filter: &str) -> u64 {
    filter.len() as u64 * FILTER_COPIES + SUBSCRIPTION_OVERHEAD
}

impl Connection {
    pub(super) fn on_subscribe(&mut self, subscribe: Subscribe) -> Option<Close> {
        let mut status = Vec::with_capacity(subscribe.topic_filters.len());
        for (text, options) in &subscribe.topic_filters {
            // Parsed here, once: what follows reads this value.
            let valid = |filter: &Filter<'_>| {
                self.filter_within_limits(text) && (filter.shared.is_some() || is_valid_topic_filter(text))
            };
            let Some(filter) = Filter::parse(text).ok().filter(valid) else {
                if !self.agreed.version.is_v5() {
                    // 3.1.1 has no per-filter error for a malformed filter:
                    // it is a protocol violation ([MQTT-4.7.1-1]).
                    return Some(Close::ByServer(
                        DisconnectReasonCode::TopicFilterInvalid,
                        "invalid topic filter".into(),
                    ));
                }
                status.push(SubscribeAckReason::TopicFilterInvalid);
                continue;
            };
            if filter.shared.is_some() && options.no_local {
                return Some(Close::ByServer(
                    DisconnectReasonCode::ProtocolError,
                    "No Local on a shared subscription".into(),
                ));
            }
            if let Some(reason) = self.subscribe_refusal(&filter) {
                status.push(reason);
                continue;
            }
            if !self.charge_subscription(text) {
                status.push(SubscribeAckReason::QuotaExceeded);
                continue;
            }
            if filter.uses_rooms() {
                self.joined_a_room();
            }
            self.session.start_room_cursors(&self.shared.chat, &filter);
            if filter.plain.starts_with("$SYS") {
                // Before the retained messages go out: the values of now.
                self.shared.publish_sys(false);
            }
            let check_read = self
                .session
                .needs_read_check(&self.session.state.lock(), filter.plain);
            self.shared.router.subscribe(
                &self.session.subscriber(),
                text,
                filter.shared.as_ref(),
                *options,
                subscribe.id,
                check_read,
            );
            let replaced = self.session.state.lock().subscriptions.insert(
                text.to_string(),
                SessionSubscription {
                    options: *options,
                    id: subscribe.id,
                },
            );
            if replaced.is_none() {
                self.shared.chat.subscribed(
                    self.principal.identity.as_deref(),
                    &self.principal.account,
                    &filter,
                    Some(&self.principal.account),
                );
            }
            status.push(match options.qos {
                QoS::AtMostOnce => SubscribeAckReason::GrantedQos0,
                QoS::AtLeastOnce => SubscribeAckReason::GrantedQos1,
                QoS::ExactlyOnce => SubscribeAckReason::GrantedQos2,
            });
        }
        let session_written = self.session.save(&self.session.state.lock(), None);
        let reply = Packet::SubscribeAck(SubscribeAck {
            packet_id: subscribe.packet_id,
            properties: Vec::new(),
            reason_string: None,
            status,
        });
        self.reply_when_durable(reply, session_written);
        None
    }

    /// Why this filter may not be subscribed to, if it may not: its length
    /// (`max_filter_length`, 5.0 0x8F), the session's subscription quota,
    /// room membership (a filter naming a room), or the ACL. Counted and
    /// logged.
    fn subscribe_refusal(&self, parsed: &Filter<'_>) -> Option<SubscribeAckReason> {
        let filter = parsed.text;
        let max_length = self.shared.config.limits.max_filter_length;
        if filter.len() > max_length {
            tracing::info!(
                length = filter.len(),
                max_length,
                "subscription refused: max_filter_length"
            );
            return Some(SubscribeAckReason::TopicFilterInvalid);
        }
        let max = self.shared.config.limits.max_subscriptions_per_session;
        if max > 0 {
            let st = self.session.state.lock();
            if st.subscriptions.len() >= max && !st.subscriptions.contains_key(filter) {
                tracing::info!(%filter, max, "subscription refused: max_subscriptions_per_session");
                return Some(SubscribeAckReason::QuotaExceeded);
            }
        }
        let named_room = parsed.room_level().filter(|room| *room != "+" && *room != "#");
        let room_ok =
            named_room.is_none_or(|room| self.principal.may_join(&self.shared.chat.membership, room));
        let subject = Subject {
            username: self.principal.username.as_deref(),
            client_id: &self.session.client_id,
        };
        if room_ok && self.shared.gate.acl.may_subscribe(&subject, parsed.plain) {
            return None;
        }
        self.shared.metrics.acl_denied.inc();
        tracing::info!(%filter, identity = self.principal.identity.as_deref(), "subscription denied (room membership or ACL)");
        Some(SubscribeAckReason::NotAuthorized)
    }

    /// Charges a new subscription to `filter` to the session's owner
    /// (`max_subscription_bytes_per_user`, over all its sessions); false
    /// when that would go over. Replacing a subscription the session has
    /// costs nothing more.
    fn charge_subscription(&self, filter: &str) -> bool {
        let mut st = self.session.state.lock();
        if st.subscriptions.contains_key(filter) {
            return true;
        }
        let Some(account) = st.charged_to.clone() else {
            return true;
        };
        let cost = subscription_cost(filter);
        match self
            .shared
            .budgets
            .charge(&account, Held::SubscriptionBytes, cost)
        {
            Ok(()) => {
                st.subscription_bytes += cost;
                true
            }
            Err(over) => {
                tracing::info!(%filter, %account, "{over}: subscription refused");
                false
            }
        }
    }

    pub(super) fn on_unsubscribe(&mut self, unsubscribe: Unsubscribe) -> Option<Close> {
        let mut status = Vec::with_capacity(unsubscribe.topic_filters.len());
        for text in &unsubscribe.topic_filters {
            let filter = Filter::read(text);
            let existed = self.session.state.lock().subscriptions.remove(&**text).is_some();
            if existed {
                self.shared
                    .router
                    .unsubscribe(&self.session.subscriber(), text, filter.shared.as_ref());
                self.shared.chat.unsubscribed(
                    self.principal.identity.as_deref(),
                    &filter,
                    Some(&self.principal.account),
                );
                let mut st = self.session.state.lock();
                if let Some(account) = st.charged_to.clone() {
                    let cost = subscription_cost(text).min(st.subscription_bytes);
                    st.subscription_bytes -= cost;
                    self.shared
                        .budgets
                        .release(&account, Held::SubscriptionBytes, cost);
                }
            }
            status.push(if existed {
                UnsubscribeAckReason::Success
            } else {
                UnsubscribeAckReason::NoSubscriptionExisted
            });
        }
        let session_written = self.session.save(&self.session.state.lock(), None);
        let reply = Packet::UnsubscribeAck(UnsubscribeAck {
            packet_id: unsubscribe.packet_id,
            properties: Vec::new(),
            reason_string: None,
            status,
        });
        self.reply_when_durable(reply, session_written);
        None
    }

    fn filter_within_limits(&self, filter: &str) -> bool {
        filter.len() <= self.shared.config.limits.max_topic_length
            && filter.split('/').count() <= self.shared.config.limits.max_topic_levels
    }
}
