//! History requests: `$history/rooms/{room}` with a CBOR
//! `{ ? before, ? after, ? limit }`, answered on the request's Response
//! Topic (5.0, with its Correlation Data; only a plain topic the requester
//! may write itself) or on `users/{requester}/history/{room}` (3.1.1, or
//! 5.0 without one). Membership of the room was checked by the gate.

use std::collections::BTreeMap;

use super::events::room_event;
use super::limits::ChatLimits;
use super::payloads::{from_client_cbor, to_cbor, HistoryMessage, HistoryRequest, HistoryResponse};
use super::publish::Publisher;
use super::Chat;
use crate::protocol::{PublishAckReason, PublishProperties, QoS};
use crate::router::{Message, Router};
use crate::store::{Reactions, RoomRecord, StoreError};

/// Bytes of a history answer besides its messages: the CBOR map, the
/// PUBLISH's fixed header, topic length, packet id and properties length.
const ANSWER_OVERHEAD: usize = 64;

/// Bytes of CBOR around one message's strings: six keys, three integers of
/// up to 9 bytes, three string and byte-string headers, the map header.
const ENTRY_OVERHEAD: usize = 80;

/// The most bytes one answer may take: `history_max_bytes`, and never more
/// than a packet the broker allows (`max_packet_size`).
fn history_byte_cap(limits: &ChatLimits) -> usize {
    let packet = usize::try_from(limits.max_packet_size).unwrap_or(usize::MAX);
    limits.history_max_bytes.min(packet)
}

/// What one entry adds to an answer, counted from above: a message with
/// its reactions (each emoji and count, and in `mine`), an event with its
/// emoji or user.
fn entry_bytes(r: &RoomRecord, on: &Reactions) -> usize {
    let reactions = on
        .counts
        .iter()
        .map(|(emoji, _)| 2 * (emoji.len() + 9) + 16)
        .sum::<usize>();
    let event = r.event().map_or(0, |e| {
        e.emoji.as_ref().map_or(0, String::len) + e.user.as_ref().map_or(0, String::len) + 48
    });
    r.payload.len()
        + r.sender.len()
        + r.msg_id.as_ref().map_or(0, |m| m.len())
        + ENTRY_OVERHEAD
        + reactions
        + event
}

/// What a history request reads.
struct Scan<'a> {
    /// Whose reactions are `mine`.
    requester: Option<&'a str>,
    after: u64,
    before: u64,
    /// Messages at most.
    limit: usize,
    /// The newest messages of the range (paging back), else the oldest.
    newest: bool,
    /// Whether events go into the answer (and count in its bytes).
    events: bool,
    /// Bytes of the answer's entries at most.
    cap: usize,
    /// Entries read at most (`room_max_messages`: a log holds no more).
    most_entries: usize,
}

/// An entry of an answer: its `seq`, its record, a message's reactions.
type Entry = (u64, RoomRecord, Reactions);

/// Entries read from the log per step of a history scan.
const SCAN_PAGE: usize = 256;

/// A message of the log as history shows it: its current state, with the
/// reactions counted and the requester's own (`on`, read for it).
fn history_message(seq: u64, r: RoomRecord, on: Reactions) -> HistoryMessage {
    let state = r.state();
    let deleted = state.is_some_and(|s| s.deleted);
    let counts: BTreeMap<String, u64> = on.counts.into_iter().collect();
    let mine = on.mine;
    HistoryMessage {
        seq,
        prev: r.prev.unwrap_or(seq.saturating_sub(1)),
        ts: r.ts_unix_ms,
        edited: state.and_then(|s| s.edited).filter(|_| !deleted),
        deleted: deleted.then_some(true),
        reactions: (!counts.is_empty()).then_some(counts),
        mine: (!mine.is_empty()).then_some(mine),
        body: (!deleted).then(|| r.payload.to_vec()),
        sender: r.sender,
        msg_id: r.msg_id,
    }
}

impl Chat {
    pub(super) fn on_history_request(
        &self,
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
            .map_or(self.limits.history_default_limit, |l| {
                usize::try_from(l).unwrap_or(usize::MAX)
            })
            .min(self.limits.history_max_limit);
        let after = query.after.unwrap_or(0);
        let before = query.before.unwrap_or(u64::MAX);
        // With `after` only: page forward from it. Otherwise the newest
        // messages before `before` (or the newest of all).
        let newest = query.after.is_none();
        let properties = request.properties.as_ref();
        let reply_overhead = ANSWER_OVERHEAD
            + properties
                .and_then(|p| p.response_topic.as_ref())
                .map_or(64 + room.len(), |t| t.len())
            + properties
                .and_then(|p| p.correlation_data.as_ref())
                .map_or(0, |c| c.len());
        let cap = history_byte_cap(&self.limits).saturating_sub(reply_overhead);
        let scan = Scan {
            requester: who.identity,
            after,
            before,
            limit,
            newest,
            events: query.events,
            cap,
            most_entries: usize::try_from(self.limits.room_max_messages)
                .unwrap_or(usize::MAX)
                .max(SCAN_PAGE),
        };
        let (entries, more) = match self.scan_history(room, &scan) {
            Ok(found) => found,
            Err(e) => {
                tracing::error!(%room, error = %e, "could not read the room log for a history request");
                return PublishAckReason::UnspecifiedError;
            }
        };
        let mut messages = Vec::new();
        let mut events = Vec::new();
        for (seq, record, on) in entries {
            match record.event() {
                Some(event) => events.push(room_event(seq, &record, event)),
                None => messages.push(history_message(seq, record, on)),
            }
        }
        let answer = HistoryResponse {
            messages,
            more,
            events: query.events.then_some(events),
        };
        match reply_topic(who, request, "history", room) {
            Ok(topic) => {
                send_reply(&self.router, request, topic, to_cbor(&answer));
                PublishAckReason::Success
            }
            Err(reason) => reason,
        }
    }
}

impl Chat {
    /// The entries a history answer holds, in `seq` order, and `more`.
    /// Messages count for `limit`; the byte cap holds at least one
    /// message. The answer covers the range up to its last message in
    /// the direction read (up to the range's end when nothing more is
    /// left): the events it lists are those of that range, so the next
    /// page (`before` its lowest message, `after` its highest) lists the
    /// rest.
    fn scan_history(&self, room: &str, scan: &Scan) -> Result<(Vec<Entry>, bool), StoreError> {
        let (mut after, mut before) = (scan.after, scan.before);
        let mut kept: Vec<Entry> = Vec::new();
        let mut pending: Vec<Entry> = Vec::new();
        let (mut bytes, mut pending_bytes, mut messages, mut read) = (0usize, 0usize, 0usize, 0usize);
        let mut more = false;
        'scan: while read < scan.most_entries {
            let page = self.log.range(room, after, before, SCAN_PAGE, scan.newest)?;
            let Some((&(first, _), &(last, _))) = page.first().zip(page.last()) else {
                break;
            };
            read += page.len();
            let exhausted = page.len() < SCAN_PAGE;
            if scan.newest {
                before = first;
            } else {
                after = last;
            }
            let ordered: Box<dyn Iterator<Item = (u64, RoomRecord)>> = if scan.newest {
                Box::new(page.into_iter().rev())
            } else {
                Box::new(page.into_iter())
            };
            for (seq, record) in ordered {
                if record.event().is_some() {
                    if scan.events {
                        let size = entry_bytes(&record, &Reactions::default());
                        // Events count for the byte cap as messages do: an
                        // answer of events only (a run of reactions) stops
                        // at the cap too, with what fits, and says `more`.
                        if bytes + pending_bytes + size > scan.cap && (messages > 0 || !pending.is_empty()) {
                            more = true;
                            kept.append(&mut pending);
                            break 'scan;
                        }
                        pending_bytes += size;
                        pending.push((seq, record, Reactions::default()));
                    }
                    continue;
                }
                // At most `max_reaction_emoji` counts and the requester's
                // own: bounded, however many reactions the message holds.
                // A deleted message's reactions are removed in the
                // background (`Store::purge_reactions`): none shows meanwhile.
                let on = if record.state().is_some_and(|s| s.deleted) {
                    Reactions::default()
                } else {
                    self.log.reactions(room, seq, scan.requester)?
                };
                let size = entry_bytes(&record, &on);
                if messages == scan.limit || (messages > 0 && bytes + pending_bytes + size > scan.cap) {
                    more = true;
                    pending.clear();
                    break 'scan;
                }
                bytes += pending_bytes + size;
                pending_bytes = 0;
                kept.append(&mut pending);
                kept.push((seq, record, on));
                messages += 1;
            }
            if exhausted {
                break;
            }
        }
        // Events after the last message, up to the range's end: listed when
        // they fit, else left for the next page.
        if !pending.is_empty() {
            if bytes + pending_bytes <= scan.cap || (messages == 0 && pending.len() == 1) {
                kept.append(&mut pending);
            } else {
                more = true;
            }
        }
        if scan.newest {
            kept.reverse();
        }
        Ok((kept, more))
    }
}

/// Where the answer to `request` (a `kind` request: `history`, `mod`)
/// goes. The requester chooses a Response Topic, so the reply is a write
/// on its behalf: only where it may write itself (the session asked the
/// gate before the chat layer: `Publisher::may_reply`). Without one, the
/// broker's own per-identity topic `users/{identity}/{kind}/{room}`.
pub(super) fn reply_topic(
    who: &Publisher<'_>,
    request: &Message,
    kind: &str,
    room: &str,
) -> Result<String, PublishAckReason> {
    let properties = request.properties.as_ref();
    match (properties.and_then(|p| p.response_topic.as_ref()), who.identity) {
        (Some(reply_to), _) if who.may_reply => Ok(reply_to.to_string()),
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
    router.publish(reply_message(request, topic, payload));
}

/// The answer to `request` on `topic`, with its Correlation Data.
pub(super) fn reply_message(request: &Message, topic: String, payload: Vec<u8>) -> Message {
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
    response
}
