//! Checks that MQTT requires of every packet and that the codec leaves to us:
//! topic names and filters (no wildcards in a name, no U+0000, wildcard
//! placement), and the PUBLISH DUP flag.

use super::frame::DecodeError;
use super::{Packet, QoS, Version};

/// Checks a decoded packet against the rules the codec does not enforce.
pub(super) fn inbound_packet(first_byte: u8, packet: &Packet, version: Version) -> Result<(), DecodeError> {
    // [MQTT-1.5.4-2]: a string containing U+0000 closes the connection.
    const NUL: DecodeError = DecodeError::Malformed("U+0000 in a string");
    // [MQTT-3.3.2-14]: a Response Topic is a topic name, never a filter.
    const WILDCARD_RESPONSE_TOPIC: DecodeError =
        DecodeError::Protocol("Response Topic with a wildcard or empty");
    let nul = |s: &str| s.contains('\0');
    let nul_props = |props: &[(bytestring::ByteString, bytestring::ByteString)]| {
        props.iter().any(|(k, v)| nul(k) || nul(v))
    };
    match packet {
        Packet::Connect(c) => {
            let will_nul = c.last_will.as_ref().is_some_and(|w| {
                nul(&w.topic)
                    || nul_props(&w.user_properties)
                    || w.content_type.as_deref().is_some_and(nul)
                    || w.response_topic.as_deref().is_some_and(nul)
            });
            if nul(&c.client_id)
                || c.username.as_deref().is_some_and(nul)
                || nul_props(&c.user_properties)
                || will_nul
            {
                return Err(NUL);
            }
            if c.last_will
                .as_ref()
                .and_then(|w| w.response_topic.as_deref())
                .is_some_and(|t| !is_valid_topic_name(t))
            {
                return Err(WILDCARD_RESPONSE_TOPIC);
            }
        }
        Packet::Publish(p) => {
            // Checked before the topic's other rules: U+0000 makes the
            // packet malformed (0x81), not merely a topic refused (0x90).
            if nul(&p.topic) {
                return Err(NUL);
            }
            if let Some(props) = &p.properties {
                if nul_props(&props.user_properties)
                    || props.content_type.as_deref().is_some_and(nul)
                    || props.response_topic.as_deref().is_some_and(nul)
                {
                    return Err(NUL);
                }
                if props
                    .response_topic
                    .as_deref()
                    .is_some_and(|t| !is_valid_topic_name(t))
                {
                    return Err(WILDCARD_RESPONSE_TOPIC);
                }
            }
        }
        // A filter is a UTF-8 string like any other: U+0000 in it is a
        // malformed packet, not a filter the SUBACK may refuse.
        Packet::Subscribe(s)
            if s.topic_filters.iter().any(|(f, _)| nul(f)) || nul_props(&s.user_properties) =>
        {
            return Err(NUL);
        }
        Packet::Unsubscribe(u) if u.topic_filters.iter().any(|f| nul(f)) || nul_props(&u.user_properties) => {
            return Err(NUL);
        }
        _ => {}
    }
    if let Packet::Publish(p) = packet {
        // [MQTT-3.3.1-2] DUP must be 0 for QoS 0.
        if p.qos == QoS::AtMostOnce && first_byte & 0b1000 != 0 {
            return Err(DecodeError::Malformed("DUP flag set on a QoS 0 PUBLISH"));
        }
        // 5.0 allows an empty topic when a Topic Alias is present; the
        // session resolves and checks that.
        let alias_only = p.topic.is_empty() && version.is_v5();
        if !alias_only && !is_valid_topic_name(&p.topic) {
            return Err(DecodeError::TopicNameInvalid);
        }
    }
    Ok(())
}

/// A topic name as a publisher may use it: not empty, no `+` or `#`, no U+0000.
pub fn is_valid_topic_name(topic: &str) -> bool {
    !topic.is_empty() && !topic.contains(['+', '#', '\0'])
}

/// A topic filter as a subscriber may use it: `#` only as the whole last
/// level, `+` only as a whole level, no U+0000, not empty.
pub fn is_valid_topic_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.contains('\0') {
        return false;
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        match level {
            "#" => return levels.peek().is_none(),
            "+" => {}
            other if other.contains(['+', '#']) => return false,
            _ => {}
        }
    }
    true
}

/// A `$share/{group}/{filter}` subscription, split into its parts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SharedFilter<'a> {
    pub group: &'a str,
    pub filter: &'a str,
}

/// A filter that starts with `$share/` but is not a valid shared
/// subscription.
#[derive(Debug, PartialEq, Eq)]
pub struct InvalidSharedFilter;

/// Splits a shared subscription filter. `Ok(None)` means the filter is not a
/// shared one.
pub fn parse_shared(filter: &str) -> Result<Option<SharedFilter<'_>>, InvalidSharedFilter> {
    let Some(rest) = filter.strip_prefix("$share/") else {
        return Ok(None);
    };
    let (group, filter) = rest.split_once('/').ok_or(InvalidSharedFilter)?;
    if group.is_empty() || group.contains(['+', '#']) || !is_valid_topic_filter(filter) {
        return Err(InvalidSharedFilter);
    }
    Ok(Some(SharedFilter { group, filter }))
}

/// Whether `topic` matches `filter`, including the rule that a filter
/// starting with a wildcard does not match a topic starting with `$`.
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether `name` can be a room (`rooms/{name}/...`): one non-empty topic
/// level, no wildcards. The chat layer and the configuration both check it.
pub fn is_valid_room_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(['/', '+', '#', '\0'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names() {
        assert!(is_valid_topic_name("a/b"));
        assert!(is_valid_topic_name("/"));
        assert!(!is_valid_topic_name(""));
        assert!(!is_valid_topic_name("a/+"));
        assert!(!is_valid_topic_name("a/#"));
        assert!(!is_valid_topic_name("a\0b"));
    }

    #[test]
    fn topic_filters() {
        for ok in ["#", "+", "a/#", "a/+/b", "+/+", "/", "a//b", "$SYS/#"] {
            assert!(is_valid_topic_filter(ok), "{ok}");
        }
        for bad in ["", "a#", "a/#/b", "a+/b", "#/a", "a/b#", "a\0"] {
            assert!(!is_valid_topic_filter(bad), "{bad}");
        }
    }

    #[test]
    fn shared_filters() {
        assert_eq!(
            parse_shared("$share/g/a/+"),
            Ok(Some(SharedFilter {
                group: "g",
                filter: "a/+"
            }))
        );
        assert_eq!(parse_shared("a/b"), Ok(None));
        assert!(parse_shared("$share/g").is_err());
        assert!(parse_shared("$share//a").is_err());
        assert!(parse_shared("$share/g+/a").is_err());
    }

    #[test]
    fn matching() {
        assert!(topic_matches("a/+/c", "a/b/c"));
        assert!(topic_matches("a/#", "a"));
        assert!(topic_matches("a/#", "a/b/c"));
        assert!(topic_matches("#", "a/b"));
        assert!(!topic_matches("#", "$SYS/x"));
        assert!(!topic_matches("+/x", "$SYS/x"));
        assert!(topic_matches("$SYS/#", "$SYS/x"));
        assert!(!topic_matches("a/+", "a/b/c"));
        assert!(topic_matches("+/+", "/x"));
        assert!(!topic_matches("a/b", "a"));
    }
}
