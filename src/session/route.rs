//! The one path of a message a client makes the broker write, once the
//! gate (`auth/gate.rs`) has allowed it: the chat layer for chat topics,
//! then the alert rules and the router for plain ones. What the chat layer
//! writes besides the message (a reply, an alert's room copy) is put to
//! the gate here too, before the chat layer, which never asks back up. A
//! direct PUBLISH and a will both take it, so a will into a room gets a
//! `seq` and is in the room log like any post.

use std::sync::Arc;

use super::Shared;
use crate::auth::gate::Principal;
use crate::chat::{AlertTarget, Classified, Handled, Publisher};
use crate::protocol::PublishAckReason;
use crate::router::Message;

/// Checks `topic` (classified as `kind` where its message entered)
/// against the gate for `principal`; a refusal is counted and logged and
/// gives the reason a 5.0 PUBACK carries.
pub(crate) fn gate_check(
    shared: &Shared,
    principal: &Principal,
    client_id: &str,
    topic: &str,
    kind: Classified,
) -> Result<(), PublishAckReason> {
    shared
        .gate
        .may_write(principal, client_id, topic, kind)
        .inspect_err(|reason| {
            shared.metrics.acl_denied.inc();
            if kind.is_chat() {
                shared.chat.counters.refused.inc();
            }
            tracing::info!(%topic, identity = principal.identity.as_deref(), ?reason, "publish refused by the access rules");
        })
}

/// Routes `message`, which `principal` (client `client_id`) makes the
/// broker write, the gate has allowed, and its entry classified as
/// `kind`. Returns the reason for the acknowledgement.
pub(crate) fn route_as(
    shared: &Shared,
    principal: &Principal,
    client_id: &Arc<str>,
    message: Message,
    kind: Classified,
) -> PublishAckReason {
    // What the chat layer would write besides the message is decided here,
    // above it, so that it never asks back up: a reply to a request's
    // Response Topic (history, moderation) ...
    let may_reply = kind.is_request()
        && message
            .properties
            .as_ref()
            .and_then(|p| p.response_topic.as_deref())
            .is_some_and(|reply_to| shared.gate.may_reply_to(principal, client_id, reply_to));
    let who = Publisher {
        identity: principal.identity.as_deref(),
        client_id,
        mod_grant: principal.mod_grant.as_deref(),
        may_reply,
        account: principal.account.clone(),
    };
    match shared.chat.on_publish(&who, message, kind) {
        Handled::Done(reason) => reason,
        Handled::Plain(message) => {
            if shared.chat.has_alert_rules() {
                // ... and the room copies of the alert rules.
                let copies = shared
                    .chat
                    .alert_targets(&who, &message)
                    .and_then(|targets| may_copy(shared, principal, client_id, &message, targets))
                    .and_then(|targets| shared.chat.alert_copies(&who, &message, targets));
                match copies {
                    Ok(copies) => shared.chat.post_alerts(&who, &message, copies),
                    Err(reason) => {
                        shared.metrics.acl_denied.inc();
                        return reason;
                    }
                }
            }
            let outcome = shared.router.publish(*message);
            if outcome.retain_refused {
                PublishAckReason::QuotaExceeded
            } else if outcome.matched == 0 && !shared.router.reaches_other_nodes() {
                // In a cluster, subscribers on other nodes are not known
                // here: plain Success.
                PublishAckReason::NoMatchingSubscribers
            } else if outcome.matched == 1 && outcome.dropped == 1 {
                PublishAckReason::QuotaExceeded
            } else {
                PublishAckReason::Success
            }
        }
    }
}

/// The alert targets, if the gate lets `principal` write each room copy as
/// a direct PUBLISH of its own (each copy's topic enters here).
fn may_copy<'m>(
    shared: &Shared,
    principal: &Principal,
    client_id: &str,
    message: &Message,
    targets: Vec<AlertTarget<'m>>,
) -> Result<Vec<AlertTarget<'m>>, PublishAckReason> {
    for target in &targets {
        let topic = target.topic();
        if shared
            .gate
            .may_write(principal, client_id, &topic, Classified::of(&topic))
            .is_err()
        {
            tracing::info!(topic = %message.topic, room = target.room(), sender = target.sender(), identity = principal.identity.as_deref(), "alert refused: not the publisher's own name, or not a member");
            return Err(PublishAckReason::NotAuthorized);
        }
    }
    Ok(targets)
}
