//! Presence: the broker publishes a retained `$presence/{user}` when a
//! user's first connection opens ("online") and when the last one closes
//! ("offline", with `last_seen`); a user may set "away", "busy" or "online"
//! in between. A session takeover opens the new connection before the old
//! one closes, so it never shows the user offline.
//!
//! Only identities that use rooms are shown: one appears once it has
//! subscribed to a room filter, posted in a room or set its own presence
//! (or connects with a session that holds a room subscription, or with a
//! presence record left by an earlier visit). A plain MQTT client
//! (`mosquitto_pub -t demo/x`, with or without a username) is counted
//! while connected but never published: an IoT device does not flood a
//! room's members with "online" and "offline".
//!
//! The records are bounded: an identity that holds no persistent session
//! and never used a room leaves an "offline" record for
//! `presence_transient_secs` only (it carries that Message Expiry), the
//! others for `presence_retention_secs`; and at most
//! `max_presence_records` records (online and offline) are kept: beyond
//! it the longest-offline transient records go first, then the
//! longest-offline others (counted, logged). The offline records are
//! indexed by `last_seen`, so upkeep and eviction never scan them all.
//!
//! In a cluster, the devices of a user are counted on every node
//! (`cluster/presence.rs`): the node where a count changes publishes the
//! total, and the first alive node publishes for the users of a node that
//! died. A node tells the others only about users it shows; a user shown
//! on another node is shown here too.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::other_nodes::{DeviceCount, PresenceReplication};
use super::payloads::{to_cbor, Presence as PresencePayload};
use super::presence_charges::RecordCharges;
use super::presence_index::OfflineIndex;
use crate::protocol::QoS;
use crate::router::{Message, Router};
use crate::store::unix_ms_now;

/// The statuses a user may set.
pub const USER_STATUSES: [&str; 3] = ["online", "away", "busy"];

#[derive(Default)]
pub struct Presence {
    /// Online users here. Keyed by the connection's own identity `Arc`
    /// (no copy of the name per user).
    users: Mutex<HashMap<Arc<str>, UserPresence>>,
    /// Cluster mode: the other nodes' devices, by user then node.
    remote: Mutex<HashMap<String, HashMap<String, DeviceCount>>>,
    link: Option<Arc<dyn PresenceReplication>>,
    /// The retained "offline" records this node published (lock order:
    /// after `users`).
    offline: Mutex<OfflineIndex>,
    /// `max_presence_records` (0: no bound).
    max_records: usize,
    /// `presence_transient_secs`.
    transient: Duration,
    /// Offline records dropped by `max_presence_records`.
    pub evicted: crate::metrics::Counter,
    /// Who pays for each record (`max_presence_records_per_user`).
    charges: RecordCharges,
}

struct UserPresence {
    devices: u64,
    /// One of `USER_STATUSES`: a `&'static str`, so that no user's record
    /// holds a string of its own.
    status: &'static str,
    since: u64,
    /// Whether the user leaves a lasting "offline" record: a user that
    /// matters (a username, a persistent session, or room activity). An
    /// anonymous clean-session client that never joined a room leaves none.
    lasting: bool,
    /// Whether the client gave a username: not lasting, it leaves a
    /// transient record (`presence_transient_secs`).
    named: bool,
    /// Whether the user is shown in `$presence/`: it used a room or set
    /// its presence. Until then nothing of it is published or told to
    /// the other nodes.
    shown: bool,
}

/// What an "offline" presence leaves behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Keep {
    /// A record for `presence_retention_secs`.
    Lasting,
    /// A record for `presence_transient_secs`.
    Transient,
    /// No record: watchers see it go offline, nothing is kept.
    Nothing,
}

/// The topic of a user's presence.
pub fn presence_topic(user: &str) -> String {
    format!("$presence/{user}")
}

/// A retained presence message, as the broker publishes it.
pub fn presence_message(user: &str, payload: &PresencePayload) -> Message {
    let mut message = Message::new(presence_topic(user), to_cbor(payload), QoS::AtLeastOnce, true);
    // Only "offline" (with last_seen) needs to survive a restart.
    message.retain_in_memory = payload.status != "offline";
    message.last_value = true;
    message
}

impl Presence {
    /// Presence that, with `link`, counts the devices of every node; at
    /// most `max_records` records, transient ones kept for `transient`,
    /// each charged to an account of `budgets`.
    pub(crate) fn new(
        link: Option<Arc<dyn PresenceReplication>>,
        max_records: usize,
        transient: Duration,
        budgets: Option<Arc<crate::budget::Budgets>>,
    ) -> Presence {
        Presence {
            link,
            max_records,
            transient,
            charges: RecordCharges::new(budgets),
            ..Presence::default()
        }
    }

    /// Presence records kept now: online users here and offline records.
    pub fn records(&self) -> usize {
        let online = self.users.lock().len();
        online + self.offline.lock().len()
    }

    /// Users shown online with a device connected to this node.
    pub fn online_here(&self) -> usize {
        self.users
            .lock()
            .values()
            .filter(|u| u.devices > 0 && u.shown)
            .count()
    }

    /// Tells the other nodes this node's count for `user` (a user not
    /// shown counts as none).
    fn tell_others(&self, user: &str, entry: Option<&UserPresence>) {
        let entry = entry.filter(|e| e.shown);
        let Some(link) = &self.link else {
            return;
        };
        link.send(DeviceCount {
            node: link.node().to_string(),
            user: user.to_string(),
            devices: entry.map_or(0, |e| e.devices),
            status: entry.map_or_else(|| "offline".into(), |e| e.status.into()),
            since: entry.map_or_else(unix_ms_now, |e| e.since),
            lasting: entry.is_some_and(|e| e.lasting),
        });
    }

    /// The user's presence over every node: devices summed, the most
    /// recent status; `None` when no node has a device it shows.
    fn total(&self, user: &str, local: Option<&UserPresence>) -> Option<PresencePayload> {
        let local = local.filter(|e| e.shown);
        let remote = self.remote.lock();
        let others = remote.get(user).into_iter().flat_map(|m| m.values());
        let mut total: Option<PresencePayload> = local.map(|e| payload_of(e, None));
        for count in others.filter(|c| c.devices > 0) {
            let t = total.get_or_insert_with(|| PresencePayload {
                status: count.status.clone(),
                devices: 0,
                since: count.since,
                last_seen: None,
            });
            t.devices += count.devices;
            if count.since > t.since {
                t.status = count.status.clone();
                t.since = count.since;
            }
        }
        total.filter(|t| t.devices > 0)
    }

    /// A connection of `identity` opened, paying from `account`;
    /// `lasting` when the user matters (see `UserPresence::lasting`),
    /// `named` when it gave a username, `room_user` when its session holds
    /// a room subscription.
    pub fn connected(&self, router: &Router, identity: &Arc<str>, account: &str, flags: (bool, bool, bool)) {
        let (lasting, named, room_user) = flags;
        let user: &str = identity;
        let payload = {
            let mut users = self.users.lock();
            let entry = users.entry(identity.clone()).or_insert_with(|| UserPresence {
                devices: 0,
                status: "online",
                since: unix_ms_now(),
                lasting: false,
                named: false,
                shown: false,
            });
            entry.lasting |= lasting;
            entry.named |= named;
            // Its record is an online one now, counted with the users; a
            // record says an earlier visit used rooms.
            let had_record = {
                let mut offline = self.offline.lock();
                let had = offline.users.contains_key(user);
                offline.remove(user);
                had
            };
            // Other nodes tell only the counts of users they show.
            let shown_elsewhere = self
                .remote
                .lock()
                .get(user)
                .is_some_and(|nodes| nodes.values().any(|c| c.devices > 0));
            // A new record is charged to the account (one it had is paid
            // for); over its bound the user is not shown.
            if !entry.shown && (room_user || had_record || shown_elsewhere) {
                entry.shown = self.charges.charge(user, account);
            }
            entry.devices += 1;
            if entry.devices == 1 {
                entry.status = "online";
                entry.since = unix_ms_now();
            }
            if entry.shown {
                self.tell_others(user, Some(entry));
            }
            self.total(user, Some(entry))
        };
        if let Some(payload) = payload {
            router.publish(presence_message(user, &payload));
        }
        self.evict_over_bound(router);
    }

    /// The user used a room (subscribed to one, posted in one): it is
    /// shown from now on (its record charged to `account`, unless that is
    /// over its bound), and its presence lasts.
    pub fn used_rooms(&self, router: &Router, user: &str, account: &str) {
        let payload = {
            let mut users = self.users.lock();
            let Some(entry) = users.get_mut(user) else {
                return;
            };
            if entry.lasting && entry.shown {
                return;
            }
            if !entry.shown && !self.charges.charge(user, account) {
                return;
            }
            let newly_shown = !entry.shown;
            entry.lasting = true;
            entry.shown = true;
            self.tell_others(user, Some(entry));
            if !newly_shown {
                return;
            }
            self.total(user, Some(entry))
        };
        if let Some(payload) = payload {
            router.publish(presence_message(user, &payload));
        }
    }

    /// A connection of `user` closed, for any reason.
    pub fn disconnected(&self, router: &Router, user: &str) {
        let (payload, keep) = {
            let mut users = self.users.lock();
            let Some(entry) = users.get_mut(user) else {
                return;
            };
            entry.devices = entry.devices.saturating_sub(1);
            if !entry.shown {
                // Never shown: nothing to publish, nothing told.
                if entry.devices == 0 {
                    users.remove(user);
                }
                return;
            }
            if entry.devices > 0 {
                self.tell_others(user, Some(entry));
                (
                    self.total(user, Some(entry))
                        .unwrap_or_else(|| payload_of(entry, None)),
                    Keep::Lasting,
                )
            } else {
                let keep = if entry.lasting || self.lasting_elsewhere(user) {
                    Keep::Lasting
                } else if entry.named {
                    Keep::Transient
                } else {
                    Keep::Nothing
                };
                users.remove(user);
                self.tell_others(user, None);
                match self.total(user, None) {
                    Some(elsewhere) => {
                        // Shown by another node now: its record, not ours.
                        self.charges.release(user);
                        (elsewhere, Keep::Lasting)
                    }
                    None => (offline_now(), keep),
                }
            }
        };
        self.publish_total(router, user, payload, keep);
    }

    /// Whether another node counts the user as lasting.
    fn lasting_elsewhere(&self, user: &str) -> bool {
        self.remote
            .lock()
            .get(user)
            .is_some_and(|m| m.values().any(|c| c.lasting))
    }

    /// Publishes a user's presence; an offline one is kept as `keep` says
    /// (and indexed), or shown to watchers and not kept.
    fn publish_total(&self, router: &Router, user: &str, payload: PresencePayload, keep: Keep) {
        let offline = payload.devices == 0 && payload.status == "offline";
        let last_seen = payload.last_seen.unwrap_or(payload.since);
        let mut message = presence_message(user, &payload);
        match keep {
            Keep::Lasting | Keep::Transient => {
                if keep == Keep::Transient && !self.transient.is_zero() {
                    message.expires_at = Some(tokio::time::Instant::now() + self.transient);
                }
                router.publish(message);
                if offline {
                    self.offline
                        .lock()
                        .insert(user, last_seen, keep == Keep::Transient);
                    self.evict_over_bound(router);
                }
            }
            Keep::Nothing => {
                // Watchers see it go offline; nothing of it is kept.
                message.retain = false;
                self.offline.lock().remove(user);
                self.charges.release(user);
                router.clear_retained(&message.topic);
                router.publish(message);
            }
        }
    }

    /// A retained "offline" record read back at start-up (a transient one
    /// carries its Message Expiry): indexed and counted.
    pub(crate) fn restored_offline(&self, user: &str, last_seen: u64, transient: bool) {
        self.offline.lock().insert(user, last_seen, transient);
        self.charges.restored(user);
    }

    /// A record this node did not index went (cluster upkeep): whatever
    /// was charged for it is given back.
    pub(crate) fn record_gone(&self, user: &str) {
        self.charges.release(user);
    }

    /// Drops the longest-offline records while more than
    /// `max_presence_records` are kept: transient ones first.
    pub(crate) fn evict_over_bound(&self, router: &Router) {
        if self.max_records == 0 {
            return;
        }
        let mut evicted = 0u64;
        loop {
            let online = self.users.lock().len();
            let user = {
                let mut offline = self.offline.lock();
                if online + offline.len() <= self.max_records {
                    break;
                }
                match offline.pop_older(true, u64::MAX) {
                    Some(user) => user,
                    None => match offline.pop_older(false, u64::MAX) {
                        Some(user) => user,
                        // Only online users: they are not dropped.
                        None => break,
                    },
                }
            };
            router.clear_retained(&presence_topic(&user));
            self.charges.release(&user);
            evicted += 1;
        }
        if evicted > 0 {
            self.evicted.add(evicted);
            tracing::warn!(
                evicted,
                limit = self.max_records,
                "offline presence records dropped: max_presence_records reached"
            );
        }
    }

    /// Forgets the offline records older than their retention: transient
    /// ones after `presence_transient_secs`, the others after `retention`
    /// (0: kept). Returns how many.
    pub(crate) fn expire(&self, router: &Router, retention: Duration) -> usize {
        let now = unix_ms_now();
        let cutoff = |keep: Duration| now.saturating_sub(keep.as_millis() as u64);
        let transient = match (self.transient.is_zero(), retention.is_zero()) {
            (true, true) => None,
            (true, false) => Some(retention),
            (false, true) => Some(self.transient),
            (false, false) => Some(self.transient.min(retention)),
        };
        let mut expired = Vec::new();
        {
            let mut offline = self.offline.lock();
            if let Some(keep) = transient {
                while let Some(user) = offline.pop_older(true, cutoff(keep)) {
                    expired.push(user);
                }
            }
            if !retention.is_zero() {
                while let Some(user) = offline.pop_older(false, cutoff(retention)) {
                    expired.push(user);
                }
            }
        }
        for user in &expired {
            router.clear_retained(&presence_topic(user));
            self.charges.release(user);
        }
        expired.len()
    }

    /// The user set a status, paying from `account`; false when it is not
    /// shown because its record would be over the account's bound
    /// (`max_presence_records_per_user`).
    pub fn set_status(&self, router: &Router, user: &str, account: &str, status: &str) -> bool {
        let payload = {
            let mut users = self.users.lock();
            let Some(entry) = users.get_mut(user) else {
                // No connection (the gate lets only the user's own
                // connections set it): nothing to show.
                return true;
            };
            let Some(status) = USER_STATUSES.into_iter().find(|s| *s == status) else {
                // Not a status a user may set (the caller checks first).
                return false;
            };
            if !entry.shown && !self.charges.charge(user, account) {
                return false;
            }
            if entry.status != status {
                entry.status = status;
                entry.since = unix_ms_now();
            }
            // Setting one's presence is using it: shown from now on.
            entry.shown = true;
            self.tell_others(user, Some(entry));
            self.total(user, Some(entry))
                .unwrap_or_else(|| payload_of(entry, None))
        };
        router.publish(presence_message(user, &payload));
        true
    }

    /// Cluster mode: another node's count for a user. The retained
    /// `$presence/{user}` here follows it (an online presence is kept in
    /// memory, not in the retained stream); watchers here get the message
    /// the other node publishes.
    pub(crate) fn remote_count(&self, router: &Router, count: DeviceCount) {
        let user = count.user.clone();
        let shown_remotely = count.devices > 0;
        {
            let mut remote = self.remote.lock();
            let nodes = remote.entry(user.clone()).or_default();
            if count.devices == 0 {
                nodes.remove(&count.node);
                if nodes.is_empty() {
                    remote.remove(&user);
                }
            } else {
                nodes.insert(count.node.clone(), count);
            }
        }
        // A user shown on another node is shown here too: this node's
        // devices join the count, and this node publishes the new total.
        let (total, newly_shown) = {
            let mut users = self.users.lock();
            let mut newly_shown = false;
            if let Some(entry) = users
                .get_mut(user.as_str())
                .filter(|e| shown_remotely && !e.shown)
            {
                entry.shown = true;
                newly_shown = true;
                self.tell_others(&user, Some(entry));
            }
            (self.total(&user, users.get(user.as_str())), newly_shown)
        };
        match total {
            Some(payload) if newly_shown => {
                router.publish(presence_message(&user, &payload));
            }
            Some(payload) => router.apply_retained(presence_message(&user, &payload)),
            None => {}
        }
    }

    /// Cluster mode: `nodes` are gone; with `publish`, publishes the
    /// presence of their users (offline when no node has a device left).
    pub(crate) fn nodes_gone(&self, router: &Router, nodes: &[String], publish: bool) {
        let mut affected = Vec::new();
        {
            let mut remote = self.remote.lock();
            for (user, by_node) in remote.iter_mut() {
                let lasting = by_node.values().any(|c| c.lasting);
                let before = by_node.len();
                by_node.retain(|node, _| !nodes.contains(node));
                if by_node.len() != before {
                    affected.push((user.clone(), lasting));
                }
            }
            remote.retain(|_, by_node| !by_node.is_empty());
        }
        if !publish {
            return;
        }
        for (user, lasting) in affected {
            let total = {
                let users = self.users.lock();
                self.total(&user, users.get(user.as_str()))
            };
            match total {
                Some(payload) => {
                    router.publish(presence_message(&user, &payload));
                }
                None => {
                    // Whether the user gave a username is not told across
                    // nodes: a short record rather than none.
                    let keep = if lasting { Keep::Lasting } else { Keep::Transient };
                    self.publish_total(router, &user, offline_now(), keep)
                }
            }
        }
    }

    /// Cluster mode: this node's counts, for a node that just started.
    pub(crate) fn local_counts(&self, node: &str) -> Vec<DeviceCount> {
        self.users
            .lock()
            .iter()
            .filter(|(_, e)| e.shown)
            .map(|(user, e)| DeviceCount {
                node: node.to_string(),
                user: user.to_string(),
                devices: e.devices,
                status: e.status.into(),
                since: e.since,
                lasting: e.lasting,
            })
            .collect()
    }
}

/// "offline" as of now.
fn offline_now() -> PresencePayload {
    let now = unix_ms_now();
    PresencePayload {
        status: "offline".into(),
        devices: 0,
        since: now,
        last_seen: Some(now),
    }
}

fn payload_of(entry: &UserPresence, last_seen: Option<u64>) -> PresencePayload {
    PresencePayload {
        status: entry.status.into(),
        devices: entry.devices,
        since: entry.since,
        last_seen,
    }
}
