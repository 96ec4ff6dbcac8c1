//! History requests: `$history/rooms/{room}` with a CBOR
//! `{ ? before, ? after, ? limit }`, answered on the request's Response
//! Topic (5.0, with its Correlation Data; only a plain topic the requester
//! may write itself) or on `users/{requester}/history/{room}` (3.1.1, or
//! 5.0 without one). Membership of the room was checked by the gate.

use super::payloads::{from_client_cbor, to_cbor, HistoryMessage, HistoryRequest, HistoryResponse};
use super::publish::Publisher;
use super::Chat;
use crate::config::Config;
use crate::protocol::{PublishAckReason, PublishProperties, QoS};
use crate::router::{Message, Router};

/// Bytes of a history answer besides its messages: the CBOR map, the
/// PUBLISH's fixed header, topic length, packet id and properties length.
const ANSWER_OVERHEAD: usize = 64;

/// Bytes of CBOR around one message's strings: six keys, three integers of
/// up to 9 bytes, three string and byte-string headers, the map header.
const ENTRY_OVERHEAD: usize = 80;

/// The most bytes one answer may take: `history_max_bytes`, and never more
/// than a packet the broker allows (`max_packet_size`).
fn history_byte_cap(config: &Config) -> usize {
    let packet = usize::try_from(config.max_packet_size).unwrap_or(usize::MAX);
    config.history_max_bytes.min(packet)
}

/// What one message adds to an answer, counted from above.
fn entry_bytes(r: &crate::store::RoomRecord) -> usize {
    r.payload.len() + r.sender.len() + r.msg_id.as_ref().map_or(0, |m| m.len()) + ENTRY_OVERHEAD
}

/// How many of `sizes` fit in `cap`, taken from the end when `from_end`
/// (the newest) or from the start; at least one, so that a message larger
/// than the cap (a lowered `history_max_bytes`) cannot stop paging for ever.
fn fitting(sizes: impl DoubleEndedIterator<Item = usize>, cap: usize, from_end: bool) -> usize {
    let sizes: Box<dyn Iterator<Item = usize>> = if from_end {
        Box::new(sizes.rev())
    } else {
        Box::new(sizes)
    };
    let mut total = 0usize;
    let mut n = 0;
    for size in sizes {
        total = total.saturating_add(size);
        if total > cap && n > 0 {
            break;
        }
        n += 1;
    }
    n
}

impl Chat {
    pub(super) fn on_history_request(
        &self,
        router: &Router,
        config: &Config,
        who: &Publisher<'_>,
        room: &str,
        request: &Message,
    ) -> PublishAckReason {
        self.counters.history_requests.inc();
        let query: HistoryRequest = if request.payload.is_empty() {
            HistoryRequest::default()
        } else {
            match from_client_cbor(&request.payload) {
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
        let mut more = page.len() > limit;
        if more {
            if newest {
                page.remove(0);
            } else {
                page.truncate(limit);
            }
        }
        // The byte cap cuts the same way as the count: the newest that fit
        // (paging back) or the oldest (paging forward), with `more` set, so
        // the client asks for the rest with `before`/`after` as usual.
        let properties = request.properties.as_ref();
        let reply_overhead = ANSWER_OVERHEAD
            + properties
                .and_then(|p| p.response_topic.as_ref())
                .map_or(64 + room.len(), |t| t.len())
            + properties
                .and_then(|p| p.correlation_data.as_ref())
                .map_or(0, |c| c.len());
        let cap = history_byte_cap(config).saturating_sub(reply_overhead);
        let fits = fitting(page.iter().map(|(_, r)| entry_bytes(r)), cap, newest);
        if fits < page.len() {
            more = true;
            if newest {
                page.drain(..page.len() - fits);
            } else {
                page.truncate(fits);
            }
        }
        let answer = HistoryResponse {
            messages: page
                .into_iter()
                .map(|(seq, r)| HistoryMessage {
                    seq,
                    prev: r.prev.unwrap_or(seq.saturating_sub(1)),
                    ts: r.ts_unix_ms,
                    sender: r.sender,
                    msg_id: r.msg_id,
                    body: r.payload.to_vec(),
                })
                .collect(),
            more,
        };
        match reply_topic(who, request, "history", room) {
            Ok(topic) => {
                send_reply(router, request, topic, to_cbor(&answer));
                PublishAckReason::Success
            }
            Err(reason) => reason,
        }
    }
}

/// Where the answer to `request` (a `kind` request: `history`, `mod`)
/// goes. The requester chooses a Response Topic, so the reply is a write
/// on its behalf: only where it may write itself. Without one, the
/// broker's own per-identity topic `users/{identity}/{kind}/{room}`.
pub(super) fn reply_topic(
    who: &Publisher<'_>,
    request: &Message,
    kind: &str,
    room: &str,
) -> Result<String, PublishAckReason> {
    let properties = request.properties.as_ref();
    match (properties.and_then(|p| p.response_topic.as_ref()), who.identity) {
        (Some(reply_to), _) if who.gate.may_reply_to(reply_to) => Ok(reply_to.to_string()),
        (Some(reply_to), _) => {
            tracing::info!(%room, %reply_to, kind, "reply refused: not a topic the requester may write");
            Err(PublishAckReason::NotAuthorized)
        }
        (None, Some(identity)) => Ok(format!("users/{identity}/{kind}/{room}")),
        // An anonymous client has no topic of its own: it must name one.
        (None, None) => Err(PublishAckReason::NotAuthorized),
    }
}

/// Publishes an answer to `request` on `topic`: the request's QoS (at most
/// 1), its Correlation Data, no retain. Delivered only to sessions
/// connected now (`ephemeral`, as typing events): an answer is for the
/// requester who waits for it, and queued for offline sessions (any
/// subscriber of a Response Topic) it would let a few small requests fill
/// other queues and the disk. A requester that went away asks again.
pub(super) fn send_reply(router: &Router, request: &Message, topic: String, payload: Vec<u8>) {
    let qos = if request.qos == QoS::AtMostOnce {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    };
    let mut response = Message::new(topic, payload, qos, false);
    response.ephemeral = true;
    if let Some(correlation) = request
        .properties
        .as_ref()
        .and_then(|p| p.correlation_data.clone())
    {
        response.properties = Some(PublishProperties {
            correlation_data: Some(correlation),
            ..Default::default()
        });
    }
    router.publish(response);
}
