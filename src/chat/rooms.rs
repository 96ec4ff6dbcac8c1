//! The membership model: which identities may use which room. Every room
//! access (publishing, reading, history, and the ACL of the security layer)
//! goes through [`Membership::allows`], which also says no to a user banned
//! from the room (`sanctions.rs`).

use std::collections::{HashMap, HashSet};

use parking_lot::RwLock;

use super::sanctions::{Kind, Sanctions};
use crate::config::{Config, RoomConfig, RoomsDefault};

/// Declared rooms and the default for the others. Changes (`set_room`,
/// `replace`) apply at once, also to existing subscriptions: membership is
/// checked for every delivered room message.
pub struct Membership {
    default_open: RwLock<bool>,
    rooms: RwLock<HashMap<String, DeclaredRoom>>,
    /// Bans and mutes set by moderators; outlive a configuration reload.
    pub(crate) sanctions: Sanctions,
}

struct DeclaredRoom {
    open: bool,
    members: HashSet<String>,
    /// May ban and mute; members too.
    moderators: HashSet<String>,
    /// Members and moderators, sorted, for `$rooms/{room}/members`.
    listed: Vec<String>,
}

fn declared(r: &RoomConfig) -> DeclaredRoom {
    DeclaredRoom {
        open: r.open,
        members: r.members.iter().chain(&r.moderators).cloned().collect(),
        moderators: r.moderators.iter().cloned().collect(),
        listed: {
            let all: std::collections::BTreeSet<&String> = r.members.iter().chain(&r.moderators).collect();
            all.into_iter().cloned().collect()
        },
    }
}

impl Membership {
    pub fn from_config(config: &Config) -> Self {
        Self::with_sanctions(config, Sanctions::default())
    }

    /// The configuration's rooms, with the bans and mutes the store kept.
    pub(crate) fn with_sanctions(config: &Config, sanctions: Sanctions) -> Self {
        let membership = Membership {
            default_open: RwLock::new(true),
            rooms: RwLock::default(),
            sanctions,
        };
        membership.replace(config.chat.rooms_default, &config.rooms);
        membership
    }

    /// Replaces every declared room and the default (a configuration reload).
    pub fn replace(&self, default: RoomsDefault, rooms: &[RoomConfig]) {
        *self.default_open.write() = default == RoomsDefault::Open;
        *self.rooms.write() = rooms.iter().map(|r| (r.name.clone(), declared(r))).collect();
    }

    /// Declares or redeclares one room.
    pub fn set_room(&self, room: &RoomConfig) {
        self.rooms.write().insert(room.name.clone(), declared(room));
    }

    /// Whether `identity` may publish in, read from and ask the history of
    /// `room`, by the configuration. A client without an identity (anonymous
    /// on a broker that verifies names) may use open rooms only.
    pub fn may_join(&self, identity: Option<&str>, room: &str) -> bool {
        match self.rooms.read().get(room) {
            Some(declared) => declared.open || identity.is_some_and(|i| declared.members.contains(i)),
            None => *self.default_open.read(),
        }
    }

    /// The check every room access goes through: a token's room list when
    /// the client logged in with one, else the configuration; and never a
    /// user banned from the room.
    pub fn allows(&self, identity: Option<&str>, grant: Option<&HashSet<String>>, room: &str) -> bool {
        let member = match grant {
            Some(rooms) => rooms.contains(room),
            None => self.may_join(identity, room),
        };
        member && !identity.is_some_and(|user| self.sanctions.applies(Kind::Ban, room, user))
    }

    /// Whether `identity` moderates `room`: its login token's `mod_grant`
    /// names the room, or the configuration does. The one definition, read
    /// by the gate (`Principal::moderates`) and by the chat layer, which is
    /// handed the grant rather than asking back up.
    pub fn moderates(&self, identity: Option<&str>, mod_grant: Option<&HashSet<String>>, room: &str) -> bool {
        mod_grant.is_some_and(|rooms| rooms.contains(room)) || self.is_moderator(identity, room)
    }

    /// Whether the configuration names `identity` a moderator of `room`.
    pub fn is_moderator(&self, identity: Option<&str>, room: &str) -> bool {
        let Some(identity) = identity else {
            return false;
        };
        self.rooms
            .read()
            .get(room)
            .is_some_and(|r| r.moderators.contains(identity))
    }

    /// Whether `identity` is muted in `room` (may read, not post or type).
    pub fn is_muted(&self, identity: Option<&str>, room: &str) -> bool {
        identity.is_some_and(|user| self.sanctions.applies(Kind::Mute, room, user))
    }

    /// What `$rooms/{room}/members` shows for a declared room: its members
    /// and moderators, sorted, without the users banned from it; `None`
    /// for a room that is not declared.
    pub fn declared_members(&self, room: &str) -> Option<Vec<String>> {
        let rooms = self.rooms.read();
        let listed = &rooms.get(room)?.listed;
        Some(
            listed
                .iter()
                .filter(|user| !self.sanctions.applies(Kind::Ban, room, user))
                .cloned()
                .collect(),
        )
    }

    /// Whether `$rooms/{room}/members` lists the room's subscribers: an
    /// open room, declared (with `open = true`) or not.
    pub fn lists_subscribers(&self, room: &str) -> bool {
        self.rooms.read().get(room).is_none_or(|r| r.open)
    }

    /// Whether `room` is declared in the configuration.
    pub fn is_declared(&self, room: &str) -> bool {
        self.rooms.read().contains_key(room)
    }

    /// Declared rooms with their member lists (members and moderators).
    pub fn declared(&self) -> Vec<(String, Vec<String>)> {
        self.rooms
            .read()
            .iter()
            .map(|(name, r)| (name.clone(), r.listed.clone()))
            .collect()
    }
}
