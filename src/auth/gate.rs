//! The one access decision for every message the broker writes on a
//! client's behalf: a PUBLISH, the client's will (at CONNECT and when it
//! fires), a reply to a history request's Response Topic, and the room
//! copy an `[[alerts]]` rule makes. Each of these asks `Gate::may_write`
//! with the same [`Principal`], so no path is more permissive than a direct
//! PUBLISH by that client.

use std::collections::HashSet;
use std::sync::Arc;

use crate::auth::acl::{Acl, Subject};
use crate::chat::{is_valid_room_name, ChatTopic, Classified, Membership};
use crate::protocol::PublishAckReason;

/// Who a client is, as far as access goes. Derived once at CONNECT (see
/// the identity rules in `auth/mod.rs`) and kept with its session, so that
/// a will firing after a restart is judged as its client was.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Principal {
    /// The verified username (password file, token `sub`, certificate CN),
    /// or the claimed one on a broker without an authenticator; `%u` in
    /// ACL rules.
    pub username: Option<Arc<str>>,
    /// `{sender}` / `{user}` in chat topics and the name room membership
    /// is checked against: the username, or on a broker without an
    /// authenticator the client id when there is no username. `None` for
    /// an anonymous client on a broker that verifies names: it may read
    /// open rooms but writes nothing that carries a name.
    pub identity: Option<Arc<str>>,
    /// The rooms a login token allows, exactly; `None` follows the room
    /// configuration.
    pub room_grant: Option<Arc<HashSet<String>>>,
    /// The rooms a login token names its user a moderator of (besides the
    /// configured moderators); she is a member of them too. Not stored
    /// with a session: a restored session reads with the configuration
    /// until its client logs in again.
    pub mod_grant: Option<Arc<HashSet<String>>>,
    /// The budget account that pays for what this client makes the broker
    /// keep (`budget::account_of`): its verified identity's, or, where
    /// names are claims or there is none, its address's, so that minting
    /// names buys no new budget and nobody can spend another's by
    /// claiming her name. Not part of the owner (`same_owner`).
    pub account: Arc<str>,
}

impl Principal {
    /// Whether `other` is the same client identity (ownership of a
    /// session): same username and chat identity. A token's room list is
    /// not part of it, so a fresh token with other rooms still resumes.
    pub fn same_owner(&self, other: &Principal) -> bool {
        self.username == other.username && self.identity == other.identity
    }

    /// Whether this principal may use `room` (publish, read, history): a
    /// moderator always, anyone else while a member and not banned.
    pub fn may_join(&self, membership: &Membership, room: &str) -> bool {
        self.moderates(membership, room)
            || membership.allows(self.identity.as_deref(), self.room_grant.as_deref(), room)
    }

    /// Whether this principal moderates `room` (by its token or the
    /// configuration): she may ban and mute there, and no ban or mute
    /// binds her.
    pub fn moderates(&self, membership: &Membership, room: &str) -> bool {
        membership.moderates(self.identity.as_deref(), self.mod_grant.as_deref(), room)
    }

    /// Whether this principal may post in `room` (publish, type): a
    /// member who is not muted there.
    pub fn may_post(&self, membership: &Membership, room: &str) -> bool {
        self.moderates(membership, room)
            || (membership.allows(self.identity.as_deref(), self.room_grant.as_deref(), room)
                && !membership.is_muted(self.identity.as_deref(), room))
    }
}

/// Whether `topic` is under `$SYS`, which only the broker writes.
pub fn is_sys_topic(topic: &str) -> bool {
    topic == "$SYS" || topic.starts_with("$SYS/")
}

/// The access decision; cheap to share, read by every connection.
pub struct Gate {
    /// An `Arc` because every session holds it too, to check the topic
    /// of each delivery its subscriptions need checked.
    pub acl: Arc<Acl>,
    pub membership: Arc<Membership>,
    /// `max_chat_name_length`: longest room and sender name in a chat
    /// topic (keys of the de-duplication and typing tables).
    pub max_name_length: usize,
}

impl Gate {
    /// Whether `who` (with `client_id`, for `%c`) may make the broker write
    /// a message on `topic`, which its entry classified as `kind`; the
    /// refusal carries the reason code a 5.0 PUBACK gives.
    pub(crate) fn may_write(
        &self,
        who: &Principal,
        client_id: &str,
        topic: &str,
        kind: Classified,
    ) -> Result<(), PublishAckReason> {
        const DENIED: Result<(), PublishAckReason> = Err(PublishAckReason::NotAuthorized);
        if is_sys_topic(topic) {
            return DENIED;
        }
        let own_name = |name: &str| who.identity.as_deref() == Some(name);
        let too_long = |name: &str| name.len() > self.max_name_length;
        match kind.chat(topic) {
            Some(ChatTopic::Message { room, sender, .. })
            | Some(ChatTopic::Typing { room, sender })
            | Some(ChatTopic::Receipt { room, sender })
            | Some(ChatTopic::Lifecycle { room, sender, .. })
                if too_long(room) || too_long(sender) =>
            {
                Err(PublishAckReason::TopicNameInvalid)
            }
            Some(ChatTopic::HistoryRequest { room }) | Some(ChatTopic::ModRequest { room })
                if too_long(room) =>
            {
                Err(PublishAckReason::TopicNameInvalid)
            }
            Some(ChatTopic::Message { room, sender, .. })
            | Some(ChatTopic::Typing { room, sender })
            | Some(ChatTopic::Lifecycle { room, sender, .. }) => {
                // A muted member still reads, but does not post, type,
                // edit, delete or react.
                if own_name(sender) && who.may_post(&self.membership, room) {
                    Ok(())
                } else {
                    DENIED
                }
            }
            Some(ChatTopic::Receipt { room, sender }) => {
                if own_name(sender) && who.may_join(&self.membership, room) {
                    Ok(())
                } else {
                    DENIED
                }
            }
            Some(ChatTopic::Presence { user }) if own_name(user) => Ok(()),
            Some(ChatTopic::Presence { .. }) => DENIED,
            Some(ChatTopic::HistoryRequest { room }) if who.may_join(&self.membership, room) => Ok(()),
            Some(ChatTopic::HistoryRequest { .. }) => DENIED,
            // Anyone may ask; the chat layer answers a non-moderator
            // `ok: false` (and 0x87), so that she learns why.
            Some(ChatTopic::ModRequest { room }) if is_valid_room_name(room) => Ok(()),
            Some(ChatTopic::ModRequest { .. }) => DENIED,
            Some(ChatTopic::Reserved) => Err(PublishAckReason::TopicNameInvalid),
            None => match kind.room_level(topic) {
                // Any other topic under a room (`rooms/ops/pinned`,
                // `rooms/ops`): members only, like the chat topics.
                Some(room) if is_valid_room_name(room) && who.may_post(&self.membership, room) => Ok(()),
                Some(_) => DENIED,
                None => {
                    let subject = Subject {
                        username: who.username.as_deref(),
                        client_id,
                    };
                    if self.acl.may_publish(&subject, topic) {
                        Ok(())
                    } else {
                        DENIED
                    }
                }
            },
        }
    }

    /// Whether the broker may answer `who`'s request on `topic`, a Response
    /// Topic the requester chose: only a plain topic it may write itself.
    /// Chat topics and the broker's own prefixes (`$presence/`, `$rooms/`,
    /// `$history/`, `$SYS/`, any `$` topic) never are, since a reply there
    /// would carry content the requester chose under a name or a meaning it
    /// does not own.
    pub fn may_reply_to(&self, who: &Principal, client_id: &str, topic: &str) -> bool {
        // A reply's topic enters here: classified once.
        let kind = Classified::of(topic);
        !topic.starts_with('$')
            && !kind.is_under_rooms()
            && self.may_write(who, client_id, topic, kind).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ChatConfig, Config, RoomConfig, RoomsDefault};

    fn gate() -> Gate {
        let config = Config {
            rooms: vec![RoomConfig {
                name: "ops".into(),
                members: vec!["alice".into(), "bob".into()],
                open: false,
                moderators: vec![],
            }],
            chat: ChatConfig {
                rooms_default: RoomsDefault::Open,
                ..Default::default()
            },
            ..Config::default()
        };
        Gate {
            acl: Arc::default(),
            membership: Arc::new(Membership::from_config(&config)),
            max_name_length: 128,
        }
    }

    /// The decision for `topic`, classified as its entry would.
    fn may_write(gate: &Gate, who: &Principal, client_id: &str, topic: &str) -> Result<(), PublishAckReason> {
        gate.may_write(who, client_id, topic, Classified::of(topic))
    }

    fn named(name: &str) -> Principal {
        Principal {
            username: Some(name.into()),
            identity: Some(name.into()),
            room_grant: None,
            mod_grant: None,
            account: crate::budget::account_of(Some(name), None),
        }
    }

    #[test]
    fn every_topic_under_a_closed_room_needs_membership() {
        let gate = gate();
        let (alice, mallory) = (named("alice"), named("mallory"));
        for topic in [
            "rooms/ops/msg/alice",
            "rooms/ops/pinned",
            "rooms/ops",
            "rooms/ops/a/b",
        ] {
            assert!(may_write(&gate, &alice, "a", topic).is_ok(), "{topic}");
        }
        for topic in [
            "rooms/ops/msg/mallory",
            "rooms/ops/pinned",
            "rooms/ops",
            "rooms/ops/announcements",
            "rooms//x",
            "$history/rooms/ops",
        ] {
            assert!(may_write(&gate, &mallory, "m", topic).is_err(), "{topic}");
        }
        assert!(may_write(&gate, &mallory, "m", "rooms/lobby/msg/mallory").is_ok());
        let long_room = format!("rooms/{}/msg/mallory", "r".repeat(129));
        assert_eq!(
            may_write(&gate, &mallory, "m", &long_room),
            Err(PublishAckReason::TopicNameInvalid)
        );
        assert!(may_write(&gate, &mallory, "m", "rooms/lobby/msg/alice").is_err());
    }

    #[test]
    fn names_and_broker_topics() {
        let gate = gate();
        let alice = named("alice");
        let anonymous = Principal::default();
        assert!(may_write(&gate, &alice, "a", "$presence/alice").is_ok());
        assert!(may_write(&gate, &alice, "a", "$presence/bob").is_err());
        assert!(may_write(&gate, &anonymous, "alice", "$presence/alice").is_err());
        assert!(may_write(&gate, &anonymous, "alice", "rooms/lobby/msg/alice").is_err());
        assert!(may_write(&gate, &alice, "a", "$SYS/broker/version").is_err());
        assert!(may_write(&gate, &alice, "a", "$SYS").is_err());
        assert_eq!(
            may_write(&gate, &alice, "a", "$rooms/ops/members"),
            Err(PublishAckReason::TopicNameInvalid)
        );
        assert!(may_write(&gate, &anonymous, "x", "sensors/1").is_ok());
    }

    #[test]
    fn replies_only_to_plain_writable_topics() {
        let gate = gate();
        let alice = named("alice");
        assert!(gate.may_reply_to(&alice, "a", "replies/alice"));
        for topic in [
            "rooms/ops/msg/alice",
            "rooms/lobby/typing/alice",
            "$presence/alice",
            "$SYS/x",
            "$history/rooms/ops",
            "$rooms/ops/members",
            "$custom/x",
        ] {
            assert!(!gate.may_reply_to(&alice, "a", topic), "{topic}");
        }
    }
}
