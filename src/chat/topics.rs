//! The chat topics of `topics.md`, recognised by shape. Anything else is a
//! plain MQTT topic.

/// A topic with a chat meaning.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ChatTopic<'a> {
    /// `rooms/{room}/msg/{sender}` or `rooms/{room}/msg/{sender}/{msg-id}`.
    Message {
        room: &'a str,
        sender: &'a str,
        msg_id: Option<&'a str>,
    },
    /// `rooms/{room}/typing/{sender}`.
    Typing { room: &'a str, sender: &'a str },
    /// `rooms/{room}/read/{sender}`.
    Receipt { room: &'a str, sender: &'a str },
    /// `rooms/{room}/edit|delete|react/{sender}`: a change to a message,
    /// stored as a room event (`chat/lifecycle.rs`).
    Lifecycle {
        room: &'a str,
        sender: &'a str,
        action: Action,
    },
    /// `$presence/{user}`.
    Presence { user: &'a str },
    /// `$history/rooms/{room}`.
    HistoryRequest { room: &'a str },
    /// `$rooms/{room}/mod`: a moderator's ban, mute and their undoing.
    ModRequest { room: &'a str },
    /// Any other topic under a prefix that only the broker publishes to
    /// (`$presence/`, `$history/`, `$rooms/`, `rooms/{room}/event/`), or
    /// a `rooms/{room}/...` topic of the wrong shape: refused.
    Reserved,
}

/// What a sender does to a message on `rooms/{room}/{action}/{sender}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    Edit,
    Delete,
    React,
}

/// The chat meaning of a topic name, if it has one. A message entering
/// the broker is classified once, by [`Classified::of`], and that value
/// travels with it; this is for a topic that is looked at once (a
/// retained message read back, one from another node).
pub(crate) fn classify(topic: &str) -> Option<ChatTopic<'_>> {
    // The common case, a plain topic, costs one comparison.
    if !topic.starts_with("rooms/") && !topic.starts_with('$') {
        return None;
    }
    // The first six levels, without an allocation: no chat shape has more
    // than five, so a sixth only tells "more than five".
    let mut levels = [""; 6];
    let mut count = 0;
    for level in topic.split('/').take(levels.len()) {
        levels[count] = level;
        count += 1;
    }
    let nonempty = |s: &&str| !s.is_empty();
    match &levels[..count] {
        ["rooms", room, "msg", sender] if nonempty(room) && nonempty(sender) => Some(ChatTopic::Message {
            room,
            sender,
            msg_id: None,
        }),
        ["rooms", room, "msg", sender, msg_id] if nonempty(room) && nonempty(sender) && nonempty(msg_id) => {
            Some(ChatTopic::Message {
                room,
                sender,
                msg_id: Some(msg_id),
            })
        }
        ["rooms", room, "typing", sender] if nonempty(room) && nonempty(sender) => {
            Some(ChatTopic::Typing { room, sender })
        }
        ["rooms", room, "read", sender] if nonempty(room) && nonempty(sender) => {
            Some(ChatTopic::Receipt { room, sender })
        }
        ["rooms", room, kind @ ("edit" | "delete" | "react"), sender]
            if nonempty(room) && nonempty(sender) =>
        {
            let action = match *kind {
                "edit" => Action::Edit,
                "delete" => Action::Delete,
                _ => Action::React,
            };
            Some(ChatTopic::Lifecycle { room, sender, action })
        }
        ["rooms", _, "msg" | "typing" | "read" | "edit" | "delete" | "react" | "event", ..] => {
            Some(ChatTopic::Reserved)
        }
        ["$presence", user] if nonempty(user) => Some(ChatTopic::Presence { user }),
        ["$history", "rooms", room] if nonempty(room) => Some(ChatTopic::HistoryRequest { room }),
        ["$rooms", room, "mod"] if nonempty(room) => Some(ChatTopic::ModRequest { room }),
        ["$presence" | "$history" | "$rooms", ..] => Some(ChatTopic::Reserved),
        _ => None,
    }
}

/// Whether a PUBLISH to `topic` only reads: a history request (or a
/// malformed one, refused). It stores nothing, so it needs no store write
/// and its PUBACK promises nothing on disk. One comparison, for every
/// publish.
pub(crate) fn only_reads(topic: &str) -> bool {
    topic.starts_with("$history/")
}

/// Whether `topic` is broker state of which only the newest copy is of
/// use (`Message::last_value`): `$rooms/{room}/members` or
/// `$presence/{user}`. For messages read back from the store, which
/// does not keep the flag.
pub(crate) fn is_last_value(topic: &str) -> bool {
    if matches!(classify(topic), Some(ChatTopic::Presence { .. })) {
        return true;
    }
    let mut parts = topic.split('/');
    matches!(
        (parts.next(), parts.next(), parts.next(), parts.next()),
        (Some("$rooms"), Some(room), Some("members"), None) if !room.is_empty()
    )
}

/// The room a `rooms/{room}/...` topic or filter names (possibly `+` or
/// `#` in a filter); `None` for any other topic.
pub(crate) fn room_of(topic: &str) -> Option<&str> {
    topic
        .strip_prefix("rooms/")
        .and_then(|rest| rest.split('/').next())
}

/// Whether `topic` may be one that [`room_read_by`] or [`answer_owner`]
/// restricts (under `rooms/`, `$rooms/` or `users/`): one byte answers
/// for most topics, and this is asked twice per delivered message.
pub(crate) fn may_be_restricted(topic: &str) -> bool {
    matches!(topic.as_bytes().first(), Some(b'r' | b'$' | b'u'))
}

/// The room whose members alone may read `topic`: a room topic
/// (`rooms/{room}/...`) or the broker's data about a room
/// (`$rooms/{room}/members`); `None` for any other topic.
pub(crate) fn room_read_by(topic: &str) -> Option<&str> {
    room_of(topic).or_else(|| {
        topic
            .strip_prefix("$rooms/")
            .and_then(|rest| rest.split('/').next())
    })
}

/// Whose a broker answer topic is: `users/{user}/history/...` and
/// `users/{user}/mod/...` carry history and moderation answers for
/// `{user}` alone (they hold a room's messages), so only sessions of that
/// identity receive them, whatever their filters (`#`, `users/+/#`).
pub(crate) fn answer_owner(topic: &str) -> Option<&str> {
    let rest = topic.strip_prefix("users/")?;
    let (user, rest) = rest.split_once('/')?;
    (rest.starts_with("history/") || rest.starts_with("mod/")).then_some(user)
}

/// The topic subscribers see for a room message (the msg-id level, if the
/// sender used one, is stripped).
pub(crate) fn message_topic(room: &str, sender: &str) -> String {
    format!("rooms/{room}/msg/{sender}")
}

/// The topic members get a room event on.
pub(crate) fn event_topic(room: &str, sender: &str) -> String {
    format!("rooms/{room}/event/{sender}")
}

/// Whether a subscription filter can match entries of `room`'s log:
/// `rooms/{room}/msg/{sender}` or `rooms/{room}/event/{sender}` for some
/// sender.
pub(crate) fn filter_covers_room(filter: &str, room: &str) -> bool {
    let mut levels = filter.split('/');
    for want in ["rooms", room] {
        match levels.next() {
            Some("#") => return true,
            Some("+") => {}
            Some(level) if level == want => {}
            _ => return false,
        }
    }
    match levels.next() {
        Some("#") => return true,
        Some("+" | "msg" | "event") => {}
        _ => return false,
    }
    // The sender level: anything, then nothing more unless it is `#`.
    match (levels.next(), levels.next()) {
        (Some(_), None) => true,
        (Some(_), Some("#")) => true,
        (None, _) => false,
        _ => false,
    }
}

/// Which rooms a subscription names (or a packet reads): a node of a
/// cluster follows their logs (`chat/room_replication.rs`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum RoomInterest {
    One(String),
    Every,
}

/// The rooms whose messages a subscription filter (without `$share/`)
/// can match: one named room, every room, or none.
pub(crate) fn rooms_covered(filter: &str) -> Option<RoomInterest> {
    let mut levels = filter.split('/');
    match levels.next()? {
        "#" => return Some(RoomInterest::Every),
        "rooms" | "+" => {}
        _ => return None,
    }
    let room = match levels.next()? {
        "#" => return Some(RoomInterest::Every),
        "+" => None,
        room => Some(room),
    };
    match room {
        None => filter_covers_room(filter, "+").then_some(RoomInterest::Every),
        Some(room) => filter_covers_room(filter, room).then(|| RoomInterest::One(room.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_restricted_topic_passes_the_one_byte_test() {
        for topic in [
            "rooms/ops/msg/alice",
            "rooms/ops/event/alice",
            "$rooms/ops/members",
            "users/alice/history/1",
            "users/alice/mod/ops",
            "sensors/1",
            "$SYS/broker/uptime",
            "",
        ] {
            let restricted = room_read_by(topic).is_some() || answer_owner(topic).is_some();
            assert!(!restricted || may_be_restricted(topic), "{topic}");
        }
        assert!(!may_be_restricted("sensors/1"));
        assert!(!may_be_restricted("alerts/boiler"));
    }

    #[test]
    fn shapes() {
        assert_eq!(
            classify("rooms/ops/msg/alice"),
            Some(ChatTopic::Message {
                room: "ops",
                sender: "alice",
                msg_id: None
            })
        );
        assert_eq!(
            classify("rooms/ops/msg/boiler-7/a1"),
            Some(ChatTopic::Message {
                room: "ops",
                sender: "boiler-7",
                msg_id: Some("a1")
            })
        );
        assert_eq!(classify("rooms/ops/msg/a/b/c"), Some(ChatTopic::Reserved));
        assert_eq!(classify("rooms/ops/topic"), None);
        assert_eq!(
            classify("$presence/bob"),
            Some(ChatTopic::Presence { user: "bob" })
        );
        assert_eq!(classify("$rooms/ops/members"), Some(ChatTopic::Reserved));
        assert_eq!(classify("sensors/1"), None);
    }

    #[test]
    fn last_value_topics() {
        for yes in ["$rooms/ops/members", "$presence/bob"] {
            assert!(is_last_value(yes), "{yes}");
        }
        for no in [
            "$rooms/ops/mod",
            "$rooms//members",
            "$rooms/ops/members/x",
            "rooms/ops/msg/a",
        ] {
            assert!(!is_last_value(no), "{no}");
        }
    }

    #[test]
    fn filters_covering_a_room() {
        for yes in [
            "#",
            "rooms/#",
            "rooms/+/msg/+",
            "rooms/ops/msg/+",
            "rooms/ops/msg/alice",
            "+/+/+/+",
            "rooms/ops/#",
            "rooms/ops/event/+",
        ] {
            assert!(filter_covers_room(yes, "ops"), "{yes}");
        }
        for no in [
            "rooms/dev/msg/+",
            "rooms/ops/typing/+",
            "rooms/ops/msg",
            "rooms/+/msg/+/x",
            "a/#",
        ] {
            assert!(!filter_covers_room(no, "ops"), "{no}");
        }
    }

    #[test]
    fn rooms_a_filter_covers() {
        use super::RoomInterest::{Every, One};
        assert_eq!(rooms_covered("rooms/ops/msg/+"), Some(One("ops".into())));
        assert_eq!(rooms_covered("rooms/ops/#"), Some(One("ops".into())));
        assert_eq!(rooms_covered("+/ops/msg/#"), Some(One("ops".into())));
        for every in ["#", "rooms/#", "rooms/+/msg/+", "+/+/+/+", "+/#"] {
            assert_eq!(rooms_covered(every), Some(Every), "{every}");
        }
        for none in ["rooms/ops/typing/+", "rooms/+/read/+", "a/#", "sensors/+"] {
            assert_eq!(rooms_covered(none), None, "{none}");
        }
    }
}
