//! The chat layer's housekeeping: the periodic upkeep (age trimming,
//! forgetting empty rooms and what they held, expiring presence) and what
//! start-up restores (receipts read back, presence left online by the
//! previous run, declared rooms' member lists).

use tokio::time::Instant;

use super::{classify, payloads, presence, Chat, ChatTopic};
use crate::budget::Held;
use crate::router::Message;
use crate::store::unix_ms_now;

impl Chat {
    /// Periodic upkeep: age-based trimming, forgetting rooms with no
    /// message left, de-duplication pruning, and forgetting typing events
    /// older than `typing_interval` (nothing of a client's typing outlives
    /// it by more than a minute). Returns how many rooms were forgotten.
    pub fn upkeep(&self, typing_interval: std::time::Duration) -> usize {
        self.log.trim_by_age();
        let forgotten = self.forget_empty_rooms();
        self.dedup.prune();
        for room in self.membership.sanctions.prune() {
            self.members_changed(&room);
        }
        let now = Instant::now();
        self.typing
            .lock()
            .retain(|_, last| now.duration_since(*last) < typing_interval);
        forgotten
    }

    /// Forgets the rooms with no message left, except declared ones, and
    /// what they held: the opener's charge, the slot in `max_rooms`, the
    /// receipts. In a cluster the room logs are JetStream's: nothing is
    /// forgotten here.
    fn forget_empty_rooms(&self) -> usize {
        if self.replication.is_some() {
            return 0;
        }
        let declared: std::collections::HashSet<String> = self
            .membership
            .declared()
            .into_iter()
            .map(|(room, _)| room)
            .collect();
        let forgotten = self.log.forget_empty(|room| declared.contains(room));
        for room in &forgotten {
            if let Some(opener) = &room.opener {
                self.budgets.release(opener, Held::Rooms, 1);
            }
            for sender in self.receipts.forget_room(&room.name) {
                self.router
                    .clear_retained(&format!("rooms/{}/read/{sender}", room.name));
            }
        }
        if !forgotten.is_empty() {
            tracing::info!(rooms = forgotten.len(), "rooms with no message left forgotten");
        }
        forgotten.len()
    }

    /// At start-up, for each retained message read back from the store:
    /// a read receipt is counted and charged again, and marked as the
    /// broker's; one for a room without a log (kept before receipts were
    /// bounded) is dropped. Returns false for a message not to restore.
    pub fn restore_retained(&self, message: &mut Message) -> bool {
        let Some(ChatTopic::Receipt { room, sender }) = classify(&message.topic) else {
            return true;
        };
        let Some(receipt) = payloads::from_cbor::<payloads::Receipt>(&message.payload) else {
            return false;
        };
        if self.log.head(room) == 0 {
            return false;
        }
        self.receipts.restore(room, sender, receipt.seq);
        message.broker_owned = true;
        true
    }

    /// Forgets retained "offline" presence older than `retention` (a user
    /// away that long is gone from `$presence/+`), transient records after
    /// `presence_transient_secs`. Returns how many.
    pub fn expire_presence(&self, retention: std::time::Duration) -> usize {
        let expired = self.presence.expire(&self.router, retention);
        if self.replication.is_none() || retention.is_zero() {
            return expired;
        }
        // In a cluster, records published by other nodes are not in this
        // node's index: a scan finds them.
        let cutoff = unix_ms_now().saturating_sub(retention.as_millis() as u64);
        let mut expired = expired;
        for message in self.router.retained().matching("$presence/+") {
            let stale = payloads::from_cbor::<payloads::Presence>(&message.payload)
                .is_some_and(|p| p.status == "offline" && p.last_seen.unwrap_or(p.since) < cutoff);
            if stale {
                self.router.clear_retained(&message.topic);
                if let Some(user) = message.topic.strip_prefix("$presence/") {
                    self.presence.record_gone(user);
                }
                expired += 1;
            }
        }
        expired
    }

    /// At start-up: every presence left "online" by the previous run (a
    /// crash or a shutdown) becomes "offline" (with `reset_presence`: not
    /// in a cluster, where other nodes serve users), and declared rooms
    /// publish their member lists (`$rooms/{room}/members`; open rooms'
    /// follow from the restored subscriptions, `members.rs`).
    pub fn publish_startup_state(&self, reset_presence: bool) {
        let now = unix_ms_now();
        let stale_presence = if reset_presence {
            self.router.retained().matching("$presence/+")
        } else {
            Vec::new()
        };
        for message in stale_presence {
            let stale: Option<payloads::Presence> = payloads::from_cbor(&message.payload);
            let user = message
                .topic
                .strip_prefix("$presence/")
                .unwrap_or_default()
                .to_string();
            match stale {
                Some(p) if p.status == "offline" => {
                    // A transient record carries its Message Expiry.
                    let transient = message.expires_at.is_some();
                    let last_seen = p.last_seen.unwrap_or(p.since);
                    self.presence.restored_offline(&user, last_seen, transient);
                }
                _ => {
                    let offline = payloads::Presence {
                        status: "offline".into(),
                        devices: 0,
                        since: now,
                        last_seen: Some(now),
                    };
                    self.router.publish(presence::presence_message(&user, &offline));
                    self.presence.restored_offline(&user, now, false);
                }
            }
        }
        self.presence.evict_over_bound(&self.router);
        for (room, _) in self.membership.declared() {
            self.publish_members(&room);
        }
    }
}
