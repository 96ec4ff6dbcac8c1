//! A subscription filter parsed once, where it enters (a SUBSCRIBE or
//! UNSUBSCRIBE, a session restored, taken over or ended): its
//! `$share/{group}/` prefix and the room it names. The session, the router
//! (given `text` and `shared`) and the chat layer read this value instead
//! of parsing the filter again.

use super::topics::{room_of, rooms_covered, RoomInterest};
use crate::protocol::validate::{parse_shared, InvalidSharedFilter, SharedFilter};

/// A subscription filter and its parts; it borrows the filter's text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Filter<'a> {
    /// As the client sent it: the key of its subscription.
    pub text: &'a str,
    /// Its `$share/{group}/` prefix, split off, if it has one.
    pub shared: Option<SharedFilter<'a>>,
    /// What it matches: `text` without `$share/{group}/`.
    pub plain: &'a str,
    /// The level after `rooms/` in `plain` (maybe `+`, `#` or empty).
    room_level: Option<&'a str>,
}

impl<'a> Filter<'a> {
    /// Parses a filter a client sends; a `$share/` one that is not a
    /// valid shared subscription is refused.
    pub(crate) fn parse(text: &'a str) -> Result<Filter<'a>, InvalidSharedFilter> {
        let shared = parse_shared(text)?;
        let plain = shared.as_ref().map_or(text, |s| s.filter);
        Ok(Filter {
            text,
            shared,
            plain,
            room_level: room_of(plain),
        })
    }

    /// Reads a filter the broker took before (a session's subscription):
    /// one that does not parse as a shared subscription is read as the
    /// plain filter it was subscribed as.
    pub(crate) fn read(text: &'a str) -> Filter<'a> {
        Filter::parse(text).unwrap_or(Filter {
            text,
            shared: None,
            plain: text,
            room_level: room_of(text),
        })
    }

    /// The level after `rooms/` (`rooms/{room}/...`), if the filter is
    /// under `rooms/`: a room's name, or `+`, `#`, or empty.
    pub(crate) fn room_level(&self) -> Option<&'a str> {
        self.room_level
    }

    /// The room the filter names by name: not `+`, `#` or empty.
    pub(crate) fn named_room(&self) -> Option<&'a str> {
        self.room_level
            .filter(|room| !room.is_empty() && *room != "+" && *room != "#")
    }

    /// Whether a subscription to the filter uses rooms (for presence):
    /// any `rooms/...` filter, one room or all of them, also shared.
    pub(crate) fn uses_rooms(&self) -> bool {
        self.room_level.is_some()
    }

    /// The rooms whose logs the filter can read: one, every room, or
    /// none (`topics::rooms_covered`).
    pub(crate) fn rooms_covered(&self) -> Option<RoomInterest> {
        rooms_covered(self.plain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_of_a_filter() {
        let shared = Filter::parse("$share/g/rooms/lobby/typing/+").unwrap();
        assert_eq!(shared.shared.map(|s| s.group), Some("g"));
        assert_eq!(shared.plain, "rooms/lobby/typing/+");
        assert_eq!(shared.named_room(), Some("lobby"));
        assert!(shared.uses_rooms());
        assert_eq!(shared.rooms_covered(), None, "typing is not in the log");

        let plain = Filter::parse("rooms/lobby/msg/+").unwrap();
        assert_eq!((plain.shared, plain.plain), (None, "rooms/lobby/msg/+"));
        assert_eq!(plain.rooms_covered(), Some(RoomInterest::One("lobby".into())));

        for (filter, level) in [
            ("rooms/+/msg/+", Some("+")),
            ("rooms/#", Some("#")),
            ("rooms//x", Some("")),
            ("a/#", None),
        ] {
            let parsed = Filter::parse(filter).unwrap();
            assert_eq!(parsed.room_level(), level, "{filter}");
            assert_eq!(parsed.named_room(), None, "{filter}");
        }
    }

    #[test]
    fn a_bad_shared_filter_is_refused_or_read_as_plain() {
        assert!(Filter::parse("$share/g").is_err());
        let read = Filter::read("$share/g");
        assert_eq!(
            (read.shared, read.plain, read.room_level()),
            (None, "$share/g", None)
        );
    }
}
