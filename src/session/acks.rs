//! Acknowledgements behind the group commit: a PUBACK, PUBREC (and a
//! persistent session's PUBREL/PUBCOMP, SUBACK, UNSUBACK) is sent only once
//! what it promises is on disk. A connection's acknowledgements wait in
//! batches, each behind one group-commit ticket, and go out in arrival
//! order ([MQTT-4.6.0-2]).
//!
//! While the store cannot write (a full disk), a batch that has waited
//! `store_stall_timeout_ms` is answered with a refusal instead: 5.0 PUBACK
//! or PUBREC 0x97 Quota exceeded, 3.1.1 no acknowledgement (the client
//! sends the message again after it reconnects). The connection stays
//! open, and the message was not acknowledged, so no promise is broken.

use std::time::Duration;

use tokio::time::Instant;

use super::connection::Connection;
use super::Shared;
use crate::protocol::{Packet, PublishAckReason};
use crate::store::GroupCommit;

impl Connection {
    /// Puts this batch's acknowledgements behind a group-commit ticket: one
    /// flush covers every PUBLISH read in the batch.
    pub(super) fn queue_acks(&mut self) {
        if !self.acks.has_pending() {
            return;
        }
        match self.shared.commit.as_ref() {
            Some(commit) => self.acks.seal(commit.ticket(), Instant::now()),
            None => {
                for ack in self.acks.take_pending() {
                    self.io.send(ack);
                }
            }
        }
    }

    /// Sends, in order, the acknowledgements whose messages are durable now.
    pub(super) fn send_durable_acks(&mut self) {
        let Some(durable) = self.shared.commit.as_ref().map(|c| c.durable()) else {
            return;
        };
        if self.acks.has_durable(durable) {
            // A room message goes out before the PUBACK that confirms it.
            self.shared.chat.deliver_committed();
        }
        while let Some((ticket, acks)) = self.acks.take_one_durable(durable) {
            if self.shared.commit.as_ref().is_some_and(|c| c.is_lost(ticket)) {
                // Its writes were lost with a reopen of the store.
                self.refuse(acks);
                continue;
            }
            for ack in acks {
                self.io.send(ack);
            }
        }
    }

    /// Before closing: waits for every queued acknowledgement and sends it
    /// (refused instead, if the store cannot write).
    pub(super) async fn release_acks(&mut self) {
        self.queue_acks();
        if let (Some(commit), Some(last)) = (self.shared.commit.clone(), self.acks.newest_ticket()) {
            if !wait_for_ticket(&self.shared, &commit, last).await {
                self.refuse_acks(None);
            }
        }
        self.send_durable_acks();
    }

    /// Sends a SUBACK/UNSUBACK: at once, or after the next group commit when
    /// `session_written` (the session record it promises was just written).
    pub(super) fn reply_when_durable(&mut self, reply: Packet, session_written: bool) {
        if session_written && self.shared.commit.is_some() {
            self.acks.reply_when_durable(reply);
        } else {
            self.io.send(reply);
        }
    }

    /// Waits for the commit that covers the session record, then sends the
    /// acknowledgements it made durable and the waiting replies, in the
    /// order their packets arrived. Subscribing is rare, so this connection
    /// stops reading for one flush.
    pub(super) async fn send_replies_when_durable(&mut self) {
        self.queue_acks();
        // While the store cannot write, the replies go out after the
        // stall timeout anyway: the subscription works, it is just not
        // on disk yet.
        wait_until_durable(&self.shared).await;
        self.send_durable_acks();
        for reply in self.acks.take_replies() {
            self.io.send(reply);
        }
    }

    /// `send_ack` when `store_written` (a persistent session's PUBREL or
    /// PUBCOMP promises the state it just stored), else at once.
    pub(super) fn send_ack_if_stored(&mut self, ack: Packet, store_written: bool) {
        if store_written {
            self.send_ack(ack);
        } else {
            self.io.send(ack);
        }
    }

    /// Queues an acknowledgement that promises what was just written to the
    /// store (PUBACK, PUBREC, and the PUBREL/PUBCOMP of a persistent
    /// session): at once without a durable store, else after the next group
    /// commit.
    pub(super) fn send_ack(&mut self, ack: Packet) {
        if self.shared.commit.is_some() {
            self.acks.push(ack);
        } else {
            self.io.send(ack);
        }
    }

    /// Sends a PUBACK that promises nothing stored (a history request's):
    /// at once, unless acknowledgements of earlier packets still wait for
    /// the group commit, which it may not overtake ([MQTT-4.6.0-2]).
    /// While the store cannot write, a request read first is answered.
    pub(super) fn send_unstored_ack(&mut self, ack: Packet) {
        if self.acks.is_empty() {
            self.io.send(ack);
        } else {
            self.send_ack(ack);
        }
    }

    /// When the oldest waiting batch has waited `store_stall_timeout_ms`.
    pub(super) fn ack_stall_deadline(&self) -> Option<Instant> {
        self.acks.stall_deadline(stall_timeout(&self.shared))
    }

    /// The oldest batch waited `store_stall_timeout_ms`: refuse what waited
    /// that long if the store is failing; otherwise (a slow disk) wait on.
    pub(super) fn on_ack_stall(&mut self) {
        if self.shared.store_health.is_failing() {
            self.refuse_acks(Some(Instant::now() - stall_timeout(&self.shared)));
        } else {
            self.acks.restart_stall_clock(Instant::now());
        }
    }

    /// Answers the batches that began waiting before `waited_since` (all
    /// with `None`) with refusals: the store could not make them durable.
    fn refuse_acks(&mut self, waited_since: Option<Instant>) {
        let stalled = self.acks.take_stalled(waited_since);
        self.refuse(stalled);
    }

    /// Answers `acks` with refusals: their writes are not durable.
    fn refuse(&mut self, acks: Vec<Packet>) {
        let is_v5 = self.agreed.version.is_v5();
        for ack in acks {
            match ack {
                Packet::PublishAck(mut ack) => {
                    self.shared.metrics.publishes_refused_store.inc();
                    if is_v5 {
                        ack.reason_code = refusal(ack.reason_code);
                        self.io.send(Packet::PublishAck(ack));
                    }
                }
                Packet::PublishReceived(mut ack) => {
                    // The exchange ends here: a resend with this id is a
                    // new message.
                    self.session.state.lock().incoming_qos2.remove(&ack.packet_id);
                    self.shared.metrics.publishes_refused_store.inc();
                    if is_v5 {
                        ack.reason_code = refusal(ack.reason_code);
                        self.io.send(Packet::PublishReceived(ack));
                    }
                }
                // PUBREL/PUBCOMP: the session's progress is right in
                // memory, only not on disk yet.
                other => self.io.send(other),
            }
        }
    }
}

/// The reason a refused acknowledgement carries: 0x97, unless it already
/// was a refusal.
fn refusal(reason: PublishAckReason) -> PublishAckReason {
    if u8::from(reason) >= 0x80 {
        reason
    } else {
        PublishAckReason::QuotaExceeded
    }
}

fn stall_timeout(shared: &Shared) -> Duration {
    Duration::from_millis(shared.config.store.store_stall_timeout_ms.max(1))
}

/// Waits until `ticket` is durable, or until the store has failed for the
/// stall timeout. Returns whether it is durable.
async fn wait_for_ticket(shared: &Shared, commit: &GroupCommit, ticket: u64) -> bool {
    loop {
        if tokio::time::timeout(stall_timeout(shared), commit.wait(ticket))
            .await
            .is_ok()
        {
            return !commit.is_lost(ticket);
        }
        if shared.store_health.is_failing() {
            return false;
        }
    }
}

/// Waits until everything written to the store so far is on disk (at once
/// without a durable store: `--memory`, `durability = "buffered"`), or
/// until the store has failed for the stall timeout. Returns whether it is
/// durable.
pub(crate) async fn wait_until_durable(shared: &Shared) -> bool {
    match shared.commit.as_ref() {
        Some(commit) => wait_for_ticket(shared, commit, commit.ticket()).await,
        None => true,
    }
}

/// Resolves when `ticket` is durable; never when there is nothing to wait for.
pub(super) async fn wait_durable(commit: Option<std::sync::Arc<GroupCommit>>, ticket: Option<u64>) {
    match (commit, ticket) {
        // Boxed: allocated only while acknowledgements wait, instead of
        // sizing every idle connection's task.
        (Some(commit), Some(ticket)) => Box::pin(commit.wait(ticket)).await,
        _ => std::future::pending().await,
    }
}
