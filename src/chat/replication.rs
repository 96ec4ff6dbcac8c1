//! Bans and mutes beyond this node, through the hook cluster mode
//! implements (`store/replication.rs`, `cluster/sanctions.rs`), so that a
//! moderator's change binds every node and the core does not name the
//! cluster.
//!
//! On one node there is no hook: the change is in effect and on disk when
//! `moderation.rs` answers. With a hook, the change is in effect here at
//! once too, and the answer waits until the hook has committed it for
//! every node; the hook then publishes the answer.

use std::sync::Arc;

use super::history::{reply_message, send_reply};
use super::payloads::{to_cbor, ModResponse};
use super::sanctions::Kind;
use super::Chat;
use crate::protocol::PublishAckReason;
use crate::router::Message;
use crate::store::{SanctionChange, SanctionReplication};

impl Chat {
    /// Cluster mode: sends every moderator's change through `replication`
    /// (set once, before clients connect).
    pub(crate) fn replicate_sanctions_with(&self, replication: Arc<dyn SanctionReplication>) {
        if self.sanction_replication.set(replication).is_err() {
            tracing::error!("sanctions are already replicated");
        }
    }

    /// Cluster mode: a change committed in the cluster, taken in here.
    pub(crate) fn apply_replicated_sanction(&self, change: &SanctionChange) {
        self.membership
            .sanctions
            .replace(change.kind, &change.room, &change.user, change.until);
        if change.kind == Kind::Ban {
            // The room's member list changes, and the list's task learns
            // of a new ban end.
            self.members_changed(&change.room);
        }
        tracing::debug!(room = %change.room, user = %change.user, kind = ?change.kind, until = ?change.until, "ban or mute from the cluster applied");
    }

    /// Cluster mode: a ban or mute event read from the room's stream may
    /// come before the change itself reaches this node (its copy in the
    /// room, and `ROOMQ_SANCTIONS`, follow the moderator's answer): it is
    /// taken in before the event is delivered, so the banned user does not
    /// get it, nor anything after it. Only what makes the room stricter is
    /// taken early; a lift waits for the change itself.
    pub(crate) fn sanction_from_event(&self, room: &str, record: &crate::store::RoomRecord) {
        let Some(event) = record.event() else {
            return;
        };
        let kind = match event.kind {
            crate::store::EventKind::Ban => Kind::Ban,
            crate::store::EventKind::Mute => Kind::Mute,
            _ => return,
        };
        let Some(user) = event.user.as_deref() else {
            return;
        };
        let sanctions = &self.membership.sanctions;
        if sanctions.current(kind, room, user).is_none() {
            let until = event
                .secs
                .map(|secs| record.ts_unix_ms.saturating_add(secs.saturating_mul(1000)));
            sanctions.replace(kind, room, user, Some(until));
        }
    }

    /// Cluster mode: `seq` of `room` held no message (a sanction's record
    /// in the room's stream); the room's follower goes on after it.
    pub(crate) fn skip_replicated(&self, room: &str, seq: u64) {
        let state = self.log.room(room);
        let _in_order = state.order.lock();
        self.log.skip_at(&state, seq);
    }

    /// Answers a moderation request whose change (`kind` of `user` in
    /// `room`) is in effect here: at once on one node, once replicated in
    /// a cluster. Returns the PUBACK reason.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn answer_applied(
        &self,
        request: &Message,
        topic: String,
        kind: Kind,
        room: &str,
        user: &str,
        answer: ModResponse,
        reason: PublishAckReason,
    ) -> PublishAckReason {
        let Some(replication) = self.sanction_replication.get().filter(|_| answer.ok) else {
            send_reply(&self.router, request, topic, to_cbor(&answer));
            return reason;
        };
        let change = SanctionChange {
            kind,
            room: room.to_string(),
            user: user.to_string(),
            until: self.membership.sanctions.current(kind, room, user),
        };
        let reply = reply_message(request, topic.clone(), to_cbor(&answer));
        if replication.replicate(change, reply) {
            return reason;
        }
        // In effect on this node only; the next change of it, or this
        // node's restart, makes it the cluster's again.
        tracing::error!(%room, %user, "a ban or mute could not be sent to the cluster (cluster.write_buffer_bytes full)");
        let refusal = ModResponse {
            ok: false,
            error: Some("cluster".into()),
        };
        send_reply(&self.router, request, topic, to_cbor(&refusal));
        // As a post the cluster could not take: retry later (`topics.md`).
        PublishAckReason::QuotaExceeded
    }
}
