//! History requests: `$history/rooms/{room}` with a CBOR
//! `{ ? before, ? after, ? limit }`, answered on the request's Response
//! Topic (5.0, with its Correlation Data) or on
//! `users/{requester}/history/{room}` (3.1.1, or 5.0 without one).

use super::payloads::{from_cbor, to_cbor, HistoryMessage, HistoryRequest, HistoryResponse};
use super::publish::Publisher;
use super::Chat;
use crate::config::Config;
use crate::protocol::validate::is_valid_topic_name;
use crate::protocol::{PublishAckReason, PublishProperties, QoS};
use crate::router::{Message, Router};

impl Chat {
    pub(super) fn on_history_request(
        &self,
        router: &Router,
        config: &Config,
        who: &Publisher<'_>,
        room: &str,
        request: &Message,
    ) -> PublishAckReason {
        if !who.may_join(self, room) {
            return PublishAckReason::NotAuthorized;
        }
        let query: HistoryRequest = if request.payload.is_empty() {
            HistoryRequest::default()
        } else {
            match from_cbor(&request.payload) {
                Some(q) => q,
                None => return PublishAckReason::PayloadFormatInvalid,
            }
        };
        let limit = query
            .limit
            .map_or(config.history_default_limit, |l| {
                usize::try_from(l).unwrap_or(usize::MAX)
            })
            .min(config.history_max_limit);
        let after = query.after.unwrap_or(0);
        let before = query.before.unwrap_or(u64::MAX);
        // With `after` only: page forward from it. Otherwise the newest
        // messages before `before` (or the newest of all).
        let newest = query.after.is_none();
        let mut page = match self
            .log
            .range(room, after, before, limit.saturating_add(1), newest)
        {
            Ok(page) => page,
            Err(e) => {
                tracing::error!(%room, error = %e, "could not read the room log for a history request");
                return PublishAckReason::UnspecifiedError;
            }
        };
        let more = page.len() > limit;
        if more {
            if newest {
                page.remove(0);
            } else {
                page.truncate(limit);
            }
        }
        let answer = HistoryResponse {
            messages: page
                .into_iter()
                .map(|(seq, r)| HistoryMessage {
                    seq,
                    ts: r.ts_unix_ms,
                    sender: r.sender,
                    msg_id: r.msg_id,
                    body: r.payload.to_vec(),
                })
                .collect(),
            more,
        };
        let properties = request.properties.as_ref();
        let topic = properties
            .and_then(|p| p.response_topic.as_ref())
            .filter(|t| is_valid_topic_name(t))
            .map(|t| t.to_string())
            .unwrap_or_else(|| format!("users/{}/history/{room}", who.identity));
        let qos = if request.qos == QoS::AtMostOnce {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        };
        let mut response = Message::new(topic, to_cbor(&answer), qos, false);
        if let Some(correlation) = properties.and_then(|p| p.correlation_data.clone()) {
            response.properties = Some(PublishProperties {
                correlation_data: Some(correlation),
                ..Default::default()
            });
        }
        router.publish(response);
        PublishAckReason::Success
    }
}
