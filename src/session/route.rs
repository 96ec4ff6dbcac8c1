//! The one path of a message a client makes the broker write, once the
//! gate (`auth/gate.rs`) has allowed it: the chat layer for chat topics,
//! then the alert rules and the router for plain ones. A direct PUBLISH
//! and a will both take it, so a will into a room gets a `seq` and is in
//! the room log like any post.

use std::sync::Arc;

use super::Shared;
use crate::auth::gate::Principal;
use crate::chat::{Handled, Publisher, WriteGate};
use crate::protocol::PublishAckReason;
use crate::router::Message;

/// The gate as the chat layer asks it, for one client.
struct ClientGate<'a> {
    shared: &'a Shared,
    principal: &'a Principal,
    client_id: &'a str,
}

impl WriteGate for ClientGate<'_> {
    fn may_write(&self, topic: &str) -> bool {
        self.shared
            .gate
            .may_write(self.principal, self.client_id, topic)
            .is_ok()
    }

    fn may_reply_to(&self, topic: &str) -> bool {
        self.shared
            .gate
            .may_reply_to(self.principal, self.client_id, topic)
    }

    fn moderates(&self, room: &str) -> bool {
        self.principal.moderates(&self.shared.chat.membership, room)
    }
}

/// Checks `message` against the gate for `principal`; a refusal is
/// counted and logged and gives the reason a 5.0 PUBACK carries.
pub(crate) fn gate_check(
    shared: &Shared,
    principal: &Principal,
    client_id: &str,
    topic: &str,
) -> Result<(), PublishAckReason> {
    shared
        .gate
        .may_write(principal, client_id, topic)
        .inspect_err(|reason| {
            shared.metrics.acl_denied.inc();
            if crate::chat::classify(topic).is_some() {
                shared.chat.counters.refused.inc();
            }
            tracing::info!(%topic, identity = principal.identity.as_deref(), ?reason, "publish refused by the access rules");
        })
}

/// Routes `message`, which `principal` (client `client_id`) makes the
/// broker write and the gate has allowed. Returns the reason for the
/// acknowledgement.
pub(crate) fn route_as(
    shared: &Shared,
    principal: &Principal,
    client_id: &Arc<str>,
    message: Message,
) -> PublishAckReason {
    let gate = ClientGate {
        shared,
        principal,
        client_id,
    };
    let who = Publisher {
        identity: principal.identity.as_deref(),
        client_id,
        gate: &gate,
        account: principal.account.clone(),
    };
    let config = &shared.config;
    match shared.chat.on_publish(&who, message) {
        Handled::Done(reason) => reason,
        Handled::Plain(message) => {
            if !config.alerts.is_empty() {
                match shared.chat.alert_copies(config, &who, &message) {
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
