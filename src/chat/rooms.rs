//! The membership model: which identities may use which room. The security
//! layer's ACL calls [`Membership::may_join`] and nothing else.

use std::collections::{HashMap, HashSet};

use crate::config::{Config, RoomsDefault};

/// Declared rooms and the default for the others.
pub struct Membership {
    default_open: bool,
    rooms: HashMap<String, DeclaredRoom>,
}

struct DeclaredRoom {
    open: bool,
    members: HashSet<String>,
    /// In configuration order, for `$rooms/{room}/members`.
    listed: Vec<String>,
}

impl Membership {
    pub fn from_config(config: &Config) -> Self {
        let rooms = config
            .rooms
            .iter()
            .map(|r| {
                (
                    r.name.clone(),
                    DeclaredRoom {
                        open: r.open,
                        members: r.members.iter().cloned().collect(),
                        listed: r.members.clone(),
                    },
                )
            })
            .collect();
        Membership {
            default_open: config.rooms_default == RoomsDefault::Open,
            rooms,
        }
    }

    /// Whether `identity` may publish in, read from and ask the history of
    /// `room`.
    pub fn may_join(&self, identity: &str, room: &str) -> bool {
        match self.rooms.get(room) {
            Some(declared) => declared.open || declared.members.contains(identity),
            None => self.default_open,
        }
    }

    /// Declared rooms with their member lists.
    pub fn declared(&self) -> impl Iterator<Item = (&str, &[String])> {
        self.rooms
            .iter()
            .map(|(name, r)| (name.as_str(), r.listed.as_slice()))
    }
}
