//! A topic name classified once, where its message enters the broker (a
//! PUBLISH in `session/publish.rs`, a will, an alert rule's room copy), so
//! that the gate, the route and the chat layer all read the same answer
//! instead of parsing the topic again.
//!
//! The value holds byte ranges into the topic, not `&str`s: it travels
//! beside the message that owns the topic (a `Publish`, then a `Message`
//! moved from hand to hand) without a borrow that would pin it, and
//! without copying or allocating anything.

use super::topics::{classify, Action, ChatTopic};

/// A part of a topic name: its bytes `start..end`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Span {
    start: u32,
    end: u32,
}

impl Span {
    /// Where `part`, a slice of `topic`, sits in it.
    fn within(topic: &str, part: &str) -> Span {
        let start = part.as_ptr() as usize - topic.as_ptr() as usize;
        Span {
            start: start as u32,
            end: (start + part.len()) as u32,
        }
    }

    /// The part in `topic`; empty if `topic` is not the one it was made
    /// from (never a panic).
    fn of(self, topic: &str) -> &str {
        topic
            .get(self.start as usize..self.end as usize)
            .unwrap_or_default()
    }
}

/// Which [`ChatTopic`] a topic is, without its parts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    Plain,
    Message,
    Typing,
    Receipt,
    Lifecycle(Action),
    Presence,
    HistoryRequest,
    ModRequest,
    Reserved,
}

/// What a topic name is: a chat topic (with its room, sender, msg-id) or
/// a plain one, and for any topic under `rooms/` its room level. Made by
/// [`Classified::of`]; read back with the same topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Classified {
    shape: Shape,
    /// The level after `rooms/` (maybe empty), for any topic there: plain
    /// ones (`rooms/ops/pinned`) are for the room's members too.
    room_level: Option<Span>,
    /// The room, or the user of `$presence/{user}`.
    name: Span,
    sender: Span,
    msg_id: Option<Span>,
}

impl Classified {
    /// Classifies `topic`. A plain topic costs one comparison; nothing is
    /// allocated.
    pub(crate) fn of(topic: &str) -> Classified {
        let span = |part: &str| Span::within(topic, part);
        let room_level = topic
            .strip_prefix("rooms/")
            .map(|rest| span(rest.split('/').next().unwrap_or_default()));
        let plain = Classified {
            shape: Shape::Plain,
            room_level,
            name: Span::default(),
            sender: Span::default(),
            msg_id: None,
        };
        let Some(chat) = classify(topic) else {
            return plain;
        };
        let (shape, name, sender, msg_id) = match chat {
            ChatTopic::Message { room, sender, msg_id } => {
                (Shape::Message, span(room), span(sender), msg_id.map(span))
            }
            ChatTopic::Typing { room, sender } => (Shape::Typing, span(room), span(sender), None),
            ChatTopic::Receipt { room, sender } => (Shape::Receipt, span(room), span(sender), None),
            ChatTopic::Lifecycle { room, sender, action } => {
                (Shape::Lifecycle(action), span(room), span(sender), None)
            }
            ChatTopic::Presence { user } => (Shape::Presence, span(user), Span::default(), None),
            ChatTopic::HistoryRequest { room } => (Shape::HistoryRequest, span(room), Span::default(), None),
            ChatTopic::ModRequest { room } => (Shape::ModRequest, span(room), Span::default(), None),
            ChatTopic::Reserved => (Shape::Reserved, Span::default(), Span::default(), None),
        };
        Classified {
            shape,
            name,
            sender,
            msg_id,
            ..plain
        }
    }

    /// The chat meaning of `topic` (the one this was made from), if any.
    pub(crate) fn chat(self, topic: &str) -> Option<ChatTopic<'_>> {
        if self.shape == Shape::Plain {
            // Most topics: nothing to slice.
            return None;
        }
        let (room, sender) = (self.name.of(topic), self.sender.of(topic));
        Some(match self.shape {
            Shape::Plain => return None,
            Shape::Message => ChatTopic::Message {
                room,
                sender,
                msg_id: self.msg_id.map(|id| id.of(topic)),
            },
            Shape::Typing => ChatTopic::Typing { room, sender },
            Shape::Receipt => ChatTopic::Receipt { room, sender },
            Shape::Lifecycle(action) => ChatTopic::Lifecycle { room, sender, action },
            Shape::Presence => ChatTopic::Presence { user: room },
            Shape::HistoryRequest => ChatTopic::HistoryRequest { room },
            Shape::ModRequest => ChatTopic::ModRequest { room },
            Shape::Reserved => ChatTopic::Reserved,
        })
    }

    /// Whether the topic has a chat meaning (refused ones included).
    pub(crate) fn is_chat(self) -> bool {
        self.shape != Shape::Plain
    }

    /// Whether the topic is under `rooms/`: a post, a room event, or a
    /// plain topic of a room.
    pub(crate) fn is_under_rooms(self) -> bool {
        self.room_level.is_some()
    }

    /// The room a `rooms/{room}/...` topic names (maybe empty), for a chat
    /// topic or a plain one; `None` for any other topic.
    pub(crate) fn room_level(self, topic: &str) -> Option<&str> {
        self.room_level.map(|room| room.of(topic))
    }

    /// Whether the message is a post or a change to one: it goes into the
    /// room log, so it needs the store whatever its QoS.
    pub(crate) fn is_logged(self) -> bool {
        matches!(self.shape, Shape::Message | Shape::Lifecycle(_))
    }

    /// Whether the message is a history request (a read).
    pub(crate) fn is_history_request(self) -> bool {
        self.shape == Shape::HistoryRequest
    }

    /// Whether an answer goes to the request's Response Topic: a history
    /// or moderation request.
    pub(crate) fn is_request(self) -> bool {
        matches!(self.shape, Shape::HistoryRequest | Shape::ModRequest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::topics::room_of;

    const TOPICS: &[&str] = &[
        "rooms/ops/msg/alice",
        "rooms/ops/msg/boiler-7/a1",
        "rooms/ops/msg/a/b/c",
        "rooms/ops/msg/a/b/c/d/e/f/g",
        "rooms/ops/msg/",
        "rooms//msg/alice",
        "rooms/ops/typing/bob",
        "rooms/ops/read/bob",
        "rooms/ops/edit/bob",
        "rooms/ops/delete/bob",
        "rooms/ops/react/bob",
        "rooms/ops/event/bob",
        "rooms/ops/topic",
        "rooms/ops",
        "rooms/",
        "rooms//x",
        "$presence/bob",
        "$presence",
        "$presence/",
        "$history/rooms/ops",
        "$history/rooms/",
        "$rooms/ops/mod",
        "$rooms/ops/members",
        "$SYS/broker/version",
        "$custom/x",
        "sensors/1",
        "roomsx/ops/msg/a",
        "",
    ];

    #[test]
    fn reads_back_what_classify_finds() {
        for topic in TOPICS {
            let classified = Classified::of(topic);
            assert_eq!(classified.chat(topic), classify(topic), "{topic}");
            assert_eq!(classified.is_chat(), classify(topic).is_some(), "{topic}");
            assert_eq!(classified.room_level(topic), room_of(topic), "{topic}");
            assert_eq!(
                classified.is_under_rooms(),
                topic.starts_with("rooms/"),
                "{topic}"
            );
        }
    }

    #[test]
    fn what_the_path_asks() {
        let of = Classified::of;
        assert!(of("rooms/ops/msg/alice").is_logged());
        assert!(of("rooms/ops/react/alice").is_logged());
        assert!(!of("rooms/ops/typing/alice").is_logged());
        assert!(!of("rooms/ops/msg/a/b/c").is_logged(), "refused, never stored");
        assert!(of("$history/rooms/ops").is_history_request());
        assert!(!of("$history/ops").is_history_request());
        assert!(of("$history/rooms/ops").is_request());
        assert!(of("$rooms/ops/mod").is_request());
        assert!(!of("$rooms/ops/members").is_request());
    }

    #[test]
    fn another_topic_reads_as_empty_parts_not_a_panic() {
        let classified = Classified::of("rooms/operations/msg/alice");
        assert_eq!(
            classified.chat("rooms/x"),
            Some(ChatTopic::Message {
                room: "",
                sender: "",
                msg_id: None
            })
        );
    }
}
