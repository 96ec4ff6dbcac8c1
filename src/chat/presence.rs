//! Presence: the broker publishes a retained `$presence/{user}` when a
//! user's first connection opens ("online") and when the last one closes
//! ("offline", with `last_seen`); a user may set "away", "busy" or "online"
//! in between. A session takeover opens the new connection before the old
//! one closes, so it never shows the user offline.

use std::collections::HashMap;

use parking_lot::Mutex;

use super::payloads::{to_cbor, Presence as PresencePayload};
use crate::protocol::QoS;
use crate::router::{Message, Router};
use crate::store::unix_ms_now;

/// The statuses a user may set.
pub const USER_STATUSES: [&str; 3] = ["online", "away", "busy"];

#[derive(Default)]
pub struct Presence {
    users: Mutex<HashMap<String, UserPresence>>,
}

struct UserPresence {
    devices: u64,
    status: String,
    since: u64,
    /// Whether the user leaves a lasting "offline" record: a user that
    /// matters (a username, a persistent session, or room activity). An
    /// anonymous clean-session client that never joined a room leaves none.
    lasting: bool,
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
    message
}

impl Presence {
    /// A connection of `user` opened; `lasting` when the user matters
    /// (see `UserPresence::lasting`).
    pub fn connected(&self, router: &Router, user: &str, lasting: bool) {
        let payload = {
            let mut users = self.users.lock();
            let entry = users.entry(user.to_string()).or_insert_with(|| UserPresence {
                devices: 0,
                status: "online".into(),
                since: unix_ms_now(),
                lasting: false,
            });
            entry.lasting |= lasting;
            entry.devices += 1;
            if entry.devices == 1 {
                entry.status = "online".into();
                entry.since = unix_ms_now();
            }
            payload_of(entry, None)
        };
        router.publish(presence_message(user, &payload));
    }

    /// The user did something that makes it matter (joined a room).
    pub fn mark_lasting(&self, user: &str) {
        if let Some(entry) = self.users.lock().get_mut(user) {
            entry.lasting = true;
        }
    }

    /// A connection of `user` closed, for any reason.
    pub fn disconnected(&self, router: &Router, user: &str) {
        let (payload, lasting) = {
            let mut users = self.users.lock();
            let Some(entry) = users.get_mut(user) else {
                return;
            };
            entry.devices = entry.devices.saturating_sub(1);
            if entry.devices > 0 {
                (payload_of(entry, None), true)
            } else {
                let now = unix_ms_now();
                let lasting = entry.lasting;
                users.remove(user);
                let offline = PresencePayload {
                    status: "offline".into(),
                    devices: 0,
                    since: now,
                    last_seen: Some(now),
                };
                (offline, lasting)
            }
        };
        if lasting {
            router.publish(presence_message(user, &payload));
        } else {
            // Watchers see it go offline; nothing of it is kept.
            let mut message = presence_message(user, &payload);
            message.retain = false;
            router.clear_retained(&message.topic);
            router.publish(message);
        }
    }

    /// The user set a status; false when the user has no connection.
    pub fn set_status(&self, router: &Router, user: &str, status: &str) -> bool {
        let payload = {
            let mut users = self.users.lock();
            let Some(entry) = users.get_mut(user) else {
                return false;
            };
            if entry.status != status {
                entry.status = status.to_string();
                entry.since = unix_ms_now();
            }
            payload_of(entry, None)
        };
        router.publish(presence_message(user, &payload));
        true
    }
}

fn payload_of(entry: &UserPresence, last_seen: Option<u64>) -> PresencePayload {
    PresencePayload {
        status: entry.status.clone(),
        devices: entry.devices,
        since: entry.since,
        last_seen,
    }
}
