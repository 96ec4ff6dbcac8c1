//! Moderation requests: `$rooms/{room}/mod` with a CBOR `mod-request`
//! (ban, unban, mute, unmute, delete), answered like a history request
//! (`history.rs`: the Response Topic with its Correlation Data, or
//! `users/{requester}/mod/{room}`) with `{ ok, ? error }`. The change is in
//! effect, and on disk, before the answer is sent: every room access reads
//! it through `Membership` (`sanctions.rs`). Each action is also a room
//! event (`lifecycle.rs`), with the moderator as its sender.

use super::history::{reply_topic, send_reply};
use super::lifecycle::{Change, Refused};
use super::payloads::{from_client_cbor, to_cbor, ModRequest, ModResponse};
use super::publish::Publisher;
use super::sanctions::{Kind, SetError};
use super::{is_valid_room_name, Chat};
use crate::protocol::PublishAckReason;
use crate::protocol::QoS;
use crate::router::Message;
use crate::store::{unix_ms_now, EventKind, SanctionRecord};

/// What a request asks for.
enum Op {
    Set(Kind),
    Lift(Kind),
    /// Delete message `seq` of the room.
    Delete(u64),
}

fn op_of(request: &ModRequest) -> Option<Op> {
    let set = request.secs.is_some() || request.reason.is_some();
    // A user for a sanction, a `seq` for a delete: never both.
    match (request.op.as_str(), &request.user, request.seq) {
        ("delete", None, Some(seq)) if !set => Some(Op::Delete(seq)),
        (_, None, _) | (_, _, Some(_)) => None,
        ("ban", ..) => Some(Op::Set(Kind::Ban)),
        ("mute", ..) => Some(Op::Set(Kind::Mute)),
        // `secs` and `reason` mean nothing to a lift: a malformed request.
        ("unban", ..) if !set => Some(Op::Lift(Kind::Ban)),
        ("unmute", ..) if !set => Some(Op::Lift(Kind::Mute)),
        _ => None,
    }
}

/// The room event of a sanction set or lifted.
fn event_kind(op: &Op) -> Option<EventKind> {
    match op {
        Op::Set(Kind::Ban) => Some(EventKind::Ban),
        Op::Set(Kind::Mute) => Some(EventKind::Mute),
        Op::Lift(Kind::Ban) => Some(EventKind::Unban),
        Op::Lift(Kind::Mute) => Some(EventKind::Unmute),
        Op::Delete(_) => None,
    }
}

fn refusal(error: &str) -> ModResponse {
    ModResponse {
        ok: false,
        error: Some(error.into()),
    }
}

impl Chat {
    pub(super) fn on_mod_request(
        &self,
        who: &Publisher<'_>,
        room: &str,
        request: &Message,
    ) -> PublishAckReason {
        // The payload is at most MAX_CONTROL_PAYLOAD bytes, which bounds
        // the user name and the reason kept with a sanction.
        let Some(query) = from_client_cbor::<ModRequest>(&request.payload) else {
            return PublishAckReason::PayloadFormatInvalid;
        };
        let Some(op) = op_of(&query) else {
            return PublishAckReason::PayloadFormatInvalid;
        };
        let user = query.user.as_deref().unwrap_or_default();
        if !matches!(op, Op::Delete(_))
            && (!is_valid_room_name(user) || user.len() > self.limits.max_chat_name_length)
        {
            return PublishAckReason::PayloadFormatInvalid;
        }
        // Where the answer goes is settled first: a request that cannot be
        // answered changes nothing.
        let topic = match reply_topic(who, request, "mod", room) {
            Ok(topic) => topic,
            Err(reason) => return reason,
        };
        let kind = match op {
            Op::Set(kind) | Op::Lift(kind) => Some(kind),
            Op::Delete(_) => None,
        };
        let (answer, reason) = self.apply_mod_request(who, room, &query, op);
        match kind {
            // In a cluster the answer to a ban or mute waits until every
            // node has the change (`replication.rs`).
            Some(kind) => self.answer_applied(request, topic, kind, room, user, answer, reason),
            None => {
                send_reply(&self.router, request, topic, to_cbor(&answer));
                reason
            }
        }
    }

    /// Applies a well-formed request; the answer and the PUBACK reason.
    fn apply_mod_request(
        &self,
        who: &Publisher<'_>,
        room: &str,
        query: &ModRequest,
        op: Op,
    ) -> (ModResponse, PublishAckReason) {
        let user = query.user.as_deref().unwrap_or_default();
        let by = who.identity.unwrap_or_default();
        if !self.membership.moderates(who.identity, who.mod_grant, room) {
            tracing::info!(%room, identity = who.identity, op = %query.op, %user, "moderation refused: not a moderator");
            return (refusal("not a moderator"), PublishAckReason::NotAuthorized);
        }
        let sanctions = &self.membership.sanctions;
        let event = event_kind(&op);
        // Moderation events reach members at QoS 1, like the broker's
        // other records (presence, member lists).
        let request_qos = QoS::AtLeastOnce;
        let done = match op {
            Op::Delete(target) => {
                let change = Change::Delete { target };
                self.change(room, by, change, false, request_qos, Some(who.client_id.clone()))
                    .map_err(|refused| match refused {
                        Refused::Store => ("store", refused.reason()),
                        _ => ("no such message", refused.reason()),
                    })
            }
            Op::Set(_) if self.membership.is_moderator(Some(user), room) => {
                return (refusal("moderator"), PublishAckReason::NotAuthorized);
            }
            Op::Set(kind) => {
                let now = unix_ms_now();
                let record = SanctionRecord {
                    until_unix_ms: query.secs.map(|s| now.saturating_add(s.saturating_mul(1000))),
                    by: by.to_string(),
                    at_unix_ms: now,
                    reason: query.reason.clone(),
                };
                sanctions
                    .set(kind, room, user, record, self.limits.max_bans_per_room)
                    .map_err(|e| match e {
                        SetError::Full => {
                            tracing::warn!(%room, max_bans_per_room = self.limits.max_bans_per_room, "ban or mute refused: max_bans_per_room");
                            ("full", PublishAckReason::QuotaExceeded)
                        }
                        SetError::Store(e) => {
                            tracing::error!(%room, error = %e, "could not store a ban or mute");
                            ("store", PublishAckReason::QuotaExceeded)
                        }
                    })
            }
            Op::Lift(kind) => sanctions.lift(kind, room, user).map_err(|e| {
                tracing::error!(%room, error = %e, "could not store the end of a ban or mute");
                ("store", PublishAckReason::QuotaExceeded)
            }),
        };
        match done {
            Ok(()) => {
                tracing::info!(%room, moderator = by, op = %query.op, %user, secs = query.secs, seq = query.seq, "moderation applied");
                if matches!(op, Op::Set(Kind::Ban) | Op::Lift(Kind::Ban)) {
                    // A banned user is not listed in `$rooms/{room}/members`.
                    self.members_changed(room);
                }
                if let Some(kind) = event {
                    let change = Change::Sanction {
                        kind,
                        user: user.to_string(),
                        secs: query.secs,
                    };
                    // In effect already: a record that could not be stored
                    // is logged, the sanction stays.
                    let recorded =
                        self.change(room, by, change, false, request_qos, Some(who.client_id.clone()));
                    if let Err(refused) = recorded {
                        tracing::warn!(%room, ?refused, "could not record a moderation action as a room event");
                    }
                }
                (
                    ModResponse {
                        ok: true,
                        error: None,
                    },
                    PublishAckReason::Success,
                )
            }
            Err((error, reason)) => (refusal(error), reason),
        }
    }
}
