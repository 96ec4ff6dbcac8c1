//! Moderation requests: `$rooms/{room}/mod` with a CBOR `mod-request`
//! (ban, unban, mute, unmute), answered like a history request
//! (`history.rs`: the Response Topic with its Correlation Data, or
//! `users/{requester}/mod/{room}`) with `{ ok, ? error }`. The change is in
//! effect, and on disk, before the answer is sent: every room access reads
//! it through `Membership` (`sanctions.rs`).

use super::history::reply_topic;
use super::payloads::{from_client_cbor, ModRequest, ModResponse};
use super::publish::Publisher;
use super::sanctions::{Kind, SetError};
use super::{is_valid_room_name, Chat};
use crate::config::Config;
use crate::protocol::PublishAckReason;
use crate::router::{Message, Router};
use crate::store::{unix_ms_now, SanctionRecord};

/// What a request asks for.
enum Op {
    Set(Kind),
    Lift(Kind),
}

fn op_of(request: &ModRequest) -> Option<Op> {
    let set = request.secs.is_some() || request.reason.is_some();
    match request.op.as_str() {
        "ban" => Some(Op::Set(Kind::Ban)),
        "mute" => Some(Op::Set(Kind::Mute)),
        // `secs` and `reason` mean nothing to a lift: a malformed request.
        "unban" if !set => Some(Op::Lift(Kind::Ban)),
        "unmute" if !set => Some(Op::Lift(Kind::Mute)),
        _ => None,
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
        router: &Router,
        config: &Config,
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
        if !is_valid_room_name(&query.user) || query.user.len() > config.max_chat_name_length {
            return PublishAckReason::PayloadFormatInvalid;
        }
        // Where the answer goes is settled first: a request that cannot be
        // answered changes nothing.
        let topic = match reply_topic(who, request, "mod", room) {
            Ok(topic) => topic,
            Err(reason) => return reason,
        };
        let kind = match op {
            Op::Set(kind) | Op::Lift(kind) => kind,
        };
        let (answer, reason) = self.apply_mod_request(config, who, room, &query, op);
        // In a cluster the answer waits until every node has the change
        // (`replication.rs`).
        self.answer_applied(router, request, topic, kind, room, &query.user, answer, reason)
    }

    /// Applies a well-formed request; the answer and the PUBACK reason.
    fn apply_mod_request(
        &self,
        config: &Config,
        who: &Publisher<'_>,
        room: &str,
        query: &ModRequest,
        op: Op,
    ) -> (ModResponse, PublishAckReason) {
        let user = query.user.as_str();
        let by = who.identity.unwrap_or_default();
        if !who.gate.moderates(room) {
            tracing::info!(%room, identity = who.identity, op = %query.op, %user, "moderation refused: not a moderator");
            return (refusal("not a moderator"), PublishAckReason::NotAuthorized);
        }
        let sanctions = &self.membership.sanctions;
        let done = match op {
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
                    .set(kind, room, user, record, config.max_bans_per_room)
                    .map_err(|e| match e {
                        SetError::Full => {
                            tracing::warn!(%room, max_bans_per_room = config.max_bans_per_room, "ban or mute refused: max_bans_per_room");
                            ("full", PublishAckReason::QuotaExceeded)
                        }
                        SetError::Store(e) => {
                            tracing::error!(%room, error = %e, "could not store a ban or mute");
                            ("store", PublishAckReason::UnspecifiedError)
                        }
                    })
            }
            Op::Lift(kind) => sanctions.lift(kind, room, user).map_err(|e| {
                tracing::error!(%room, error = %e, "could not store the end of a ban or mute");
                ("store", PublishAckReason::UnspecifiedError)
            }),
        };
        match done {
            Ok(()) => {
                tracing::info!(%room, moderator = by, op = %query.op, %user, secs = query.secs, "moderation applied");
                if matches!(op, Op::Set(Kind::Ban) | Op::Lift(Kind::Ban)) {
                    // A banned user is not listed in `$rooms/{room}/members`.
                    self.members_changed(room);
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
