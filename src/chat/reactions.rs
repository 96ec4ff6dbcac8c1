//! Reactions (`topics.md`, *Edits, deletes and reactions*): what an emoji
//! may be, and whether a reaction changes a message's reactions. They are
//! kept apart from the message (`Store::set_reaction`), so one costs the
//! same however many the message holds, and a reaction event takes a
//! `seq` but no entry of the room log (`RoomLog::pass`).

use crate::store::Reactions;

/// `max_reaction_emoji`, `max_reactions_per_message` and
/// `room_max_reactions_per_user_per_message`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ReactionBounds {
    pub emoji: usize,
    pub total: usize,
    /// Distinct emoji one reactor may use on one message, so that one
    /// identity cannot take every one of the message's `emoji` slots.
    pub per_reactor: usize,
}

/// What a reaction (or with `remove` its taking back) does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    Change,
    /// Already there, or not there to take back.
    Nothing,
    /// Beyond `max_reaction_emoji`, `max_reactions_per_message` or
    /// `room_max_reactions_per_user_per_message`.
    Full,
}

/// What `emoji` by the reactor whose own reactions `now.mine` lists does
/// to a message that holds `now`.
pub(crate) fn decide(now: &Reactions, emoji: &str, remove: bool, bounds: &ReactionBounds) -> Decision {
    let reacted = now.mine.iter().any(|e| e == emoji);
    if remove || reacted {
        return if remove == reacted {
            Decision::Change
        } else {
            Decision::Nothing
        };
    }
    let total = usize::try_from(now.total()).unwrap_or(usize::MAX);
    let known = now.counts.iter().any(|(e, _)| e == emoji);
    if total >= bounds.total
        || now.mine.len() >= bounds.per_reactor
        || (!known && now.counts.len() >= bounds.emoji)
    {
        return Decision::Full;
    }
    Decision::Change
}

/// Whether `emoji` may be a reaction: 1 to `max_bytes` bytes of UTF-8,
/// no control or other non-printing character that would hide or
/// reorder text around it (C0 and C1 controls, bidi embeddings,
/// overrides, isolates and marks, zero-width spaces, U+FEFF, line and
/// paragraph separators), and at least one character a page shows: not
/// whitespace alone, nor joiners or variation selectors alone (which
/// emoji sequences use between visible characters).
pub(crate) fn valid_emoji(emoji: &str, max_bytes: usize) -> bool {
    if emoji.is_empty() || emoji.len() > max_bytes {
        return false;
    }
    if emoji.chars().any(refused) {
        return false;
    }
    emoji.chars().any(|c| !c.is_whitespace() && !joiner(c))
}

/// A character no emoji may hold.
fn refused(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061C}'
                | '\u{200B}'
                | '\u{200E}'
                | '\u{200F}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{2069}'
                | '\u{FEFF}'
                | '\u{FFF9}'..='\u{FFFB}'
        )
}

/// A character emoji sequences use between visible ones, invisible alone:
/// zero-width (non-)joiner, variation selectors, tag characters.
fn joiner(c: char) -> bool {
    matches!(
        c,
        '\u{200C}' | '\u{200D}' | '\u{FE00}'..='\u{FE0F}' | '\u{E0020}'..='\u{E007F}' | '\u{E0100}'..='\u{E01EF}'
    )
}

#[cfg(test)]
mod tests {
    use super::valid_emoji;

    #[test]
    fn emoji_that_show() {
        for ok in [
            "👍",
            "❤\u{fe0f}",
            "👨\u{200d}👩\u{200d}👧",
            "+1",
            "🇫🇷",
            "🏴\u{e0067}\u{e0062}\u{e007f}",
        ] {
            assert!(valid_emoji(ok, 32), "{ok:?}");
        }
        for bad in [
            "",
            " ",
            "\u{0}",
            "a\u{7f}",
            "\u{85}",
            "\u{202e}👍",
            "\u{feff}",
            "\u{200d}\u{fe0f}",
            "\u{2068}x",
        ] {
            assert!(!valid_emoji(bad, 32), "{bad:?}");
        }
        assert!(!valid_emoji(&"x".repeat(33), 32));
    }
}
