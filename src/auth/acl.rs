//! Topic rules for everything outside the chat topics (rooms follow
//! membership, see `chat/rooms.rs`): mosquitto-style patterns with `%u`
//! (username) and `%c` (client id), each `read`, `write`, `readwrite` or
//! `deny`. Rules are checked in file order; for a publish, the first rule
//! that matches the topic and speaks of writing (`write`, `readwrite`,
//! `deny`) decides; for a subscribe, the first that speaks of reading
//! (`read`, `readwrite`, `deny`). With no rule configured everything is
//! allowed; with any rule, what no rule decides is denied. So
//! `test/nosubscribe` = deny followed by `#` = readwrite refuses only that
//! topic.
//!
//! Reading is decided twice: at SUBSCRIBE, for the filter (the first read
//! or deny rule that covers every topic the filter can match), and again
//! for every message delivered, for its topic ([`Acl::may_read`]), since a
//! granted filter such as `#` can match topics that a deny rule protects.
//! [`Acl::needs_read_check`] says, once per subscription, whether the
//! second check can be skipped.

use crate::protocol::validate::topic_matches;

pub use crate::config::{Access, AclRule};

/// Whether a topic is owned by the chat layer (membership decides there).
pub fn is_chat_topic(topic: &str) -> bool {
    topic.starts_with("rooms/")
        || topic.starts_with("$presence/")
        || topic.starts_with("$history/")
        || topic.starts_with("$rooms/")
}

/// The rules, checked in order; the first that matches decides.
#[derive(Default)]
pub struct Acl {
    rules: Vec<AclRule>,
}

/// Who asks.
pub struct Subject<'a> {
    pub username: Option<&'a str>,
    pub client_id: &'a str,
}

impl Acl {
    pub fn new(rules: Vec<AclRule>) -> Self {
        Acl { rules }
    }

    fn expand(&self, rule: &AclRule, who: &Subject<'_>) -> Option<String> {
        if rule.topic.contains("%u") && who.username.is_none() {
            return None;
        }
        let username = who.username.unwrap_or_default();
        // A value with wildcards or separators must not widen the rule.
        let unsafe_value = |v: &str| v.contains(['+', '#', '/']);
        if (rule.topic.contains("%u") && unsafe_value(username))
            || (rule.topic.contains("%c") && unsafe_value(who.client_id))
        {
            return None;
        }
        Some(rule.topic.replace("%u", username).replace("%c", who.client_id))
    }

    /// Whether `who` may publish to `topic`: the first write or deny rule
    /// matching it decides.
    pub fn may_publish(&self, who: &Subject<'_>, topic: &str) -> bool {
        if self.rules.is_empty() || is_chat_topic(topic) {
            return true;
        }
        self.rules
            .iter()
            .filter(|r| r.access != Access::Read)
            .filter_map(|r| Some((r.access, self.expand(r, who)?)))
            .find(|(_, pattern)| topic_matches(pattern, topic))
            .is_some_and(|(access, _)| access != Access::Deny)
    }

    /// Whether the rules are empty (everything allowed): the fan-out then
    /// checks nothing per message.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether `who` may read a message on `topic`: the first read or deny
    /// rule matching it decides. Checked for each delivery through a
    /// subscription that [`Acl::needs_read_check`].
    pub fn may_read(&self, who: &Subject<'_>, topic: &str) -> bool {
        if self.rules.is_empty() || is_chat_topic(topic) {
            return true;
        }
        // `filter_within` with a topic is "the pattern matches it"; unlike
        // a subscription's match, a rule's `#` also covers `$` topics, as
        // it does at SUBSCRIBE.
        self.reading_rules(who)
            .find(|(_, pattern)| filter_within(pattern, topic))
            .is_some_and(|(access, _)| access != Access::Deny)
    }

    /// Whether deliveries through a subscription to `filter` must be
    /// checked one by one with [`Acl::may_read`]. Not when there are no
    /// rules, for chat topics (membership is checked per message anyway),
    /// or when the first rule that could decide any topic of the filter
    /// covers the whole filter and allows reading: it then decides every
    /// message alike. Asked once per subscription (at SUBSCRIBE, and when
    /// a stored one is restored), so the common case costs the fan-out
    /// nothing.
    pub fn needs_read_check(&self, who: &Subject<'_>, filter: &str) -> bool {
        if self.rules.is_empty() || is_chat_topic(filter) {
            return false;
        }
        self.reading_rules(who)
            .find(|(_, pattern)| filters_intersect(pattern, filter))
            .is_none_or(|(access, pattern)| access == Access::Deny || !filter_within(&pattern, filter))
    }

    /// The rules that speak of reading, expanded for `who`, in order.
    fn reading_rules<'a>(&'a self, who: &'a Subject<'_>) -> impl Iterator<Item = (Access, String)> + 'a {
        self.rules
            .iter()
            .filter(|r| r.access != Access::Write)
            .filter_map(move |r| Some((r.access, self.expand(r, who)?)))
    }

    /// Whether `who` may subscribe to `filter`: the first read or deny rule
    /// that covers every topic the filter can match decides (so `#` needs a
    /// rule `#`). A deny rule that covers only part of the filter does not
    /// decide at SUBSCRIBE (`#` is then granted by a later `#` rule), but
    /// it still refuses each message on its topics: every delivery is
    /// checked with [`Acl::may_read`] (Mosquitto checks each delivery too).
    pub fn may_subscribe(&self, who: &Subject<'_>, filter: &str) -> bool {
        if self.rules.is_empty() || is_chat_topic(filter) {
            return true;
        }
        self.reading_rules(who)
            .find(|(_, pattern)| filter_within(pattern, filter))
            .is_some_and(|(access, _)| access != Access::Deny)
    }
}

/// Whether some topic matches both filters (ignoring the `$` rule, as
/// `filter_within` does).
pub fn filters_intersect(a: &str, b: &str) -> bool {
    let mut a = a.split('/');
    let mut b = b.split('/');
    loop {
        match (a.next(), b.next()) {
            (Some("#"), _) | (_, Some("#")) | (None, None) => return true,
            (Some("+"), Some(_)) | (Some(_), Some("+")) => {}
            (Some(x), Some(y)) if x == y => {}
            _ => return false,
        }
    }
}

/// Whether every topic matched by `filter` is matched by `pattern`.
pub fn filter_within(pattern: &str, filter: &str) -> bool {
    let mut p = pattern.split('/');
    let mut f = filter.split('/');
    loop {
        match (p.next(), f.next()) {
            (Some("#"), _) => return true,
            (None, None) => return true,
            (Some("+"), Some(level)) if level != "#" => {}
            (Some(a), Some(b)) if a == b && a != "+" && a != "#" => {}
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_within_patterns() {
        assert!(filter_within("#", "a/#"));
        assert!(filter_within("a/#", "a/b/+"));
        assert!(filter_within("a/+/c", "a/x/c"));
        assert!(filter_within("a/+/c", "a/+/c"));
        assert!(!filter_within("a/+/c", "a/#"));
        assert!(!filter_within("a/b", "a/+"));
        assert!(!filter_within("a/b", "#"));
    }

    #[test]
    fn filters_that_intersect() {
        assert!(filters_intersect("inbox/alice/#", "#"));
        assert!(filters_intersect("inbox/alice/#", "+/+/+"));
        assert!(filters_intersect("a/#", "a"));
        assert!(filters_intersect("a/+/c", "a/b/+"));
        assert!(!filters_intersect("a/b", "a/c"));
        assert!(!filters_intersect("a/b", "a/b/c"));
        assert!(!filters_intersect("a/+", "a"));
    }

    #[test]
    fn reads_are_checked_per_message_where_one_rule_does_not_decide_the_filter() {
        let rule = |topic: &str, access| AclRule {
            topic: topic.into(),
            access,
        };
        let acl = Acl::new(vec![
            rule("inbox/%u/#", Access::Read),
            rule("inbox/#", Access::Write),
            rule("inbox/#", Access::Deny),
            rule("#", Access::ReadWrite),
        ]);
        let mallory = Subject {
            username: Some("mallory"),
            client_id: "m",
        };
        for filter in ["#", "+/+/+", "+/alice/#"] {
            assert!(acl.may_subscribe(&mallory, filter), "{filter}");
            assert!(acl.needs_read_check(&mallory, filter), "{filter}");
        }
        assert!(!acl.may_subscribe(&mallory, "inbox/+/#"));
        assert!(!acl.may_read(&mallory, "inbox/alice/x"));
        assert!(acl.may_read(&mallory, "inbox/mallory/x"));
        assert!(acl.may_read(&mallory, "news/a"));
        // One rule decides everything these filters match: no check.
        assert!(!acl.needs_read_check(&mallory, "inbox/mallory/#"));
        assert!(!acl.needs_read_check(&mallory, "news/#"));
        assert!(!Acl::default().needs_read_check(&mallory, "#"));
        assert!(!acl.needs_read_check(&mallory, "rooms/ops/#"));
    }

    #[test]
    fn rules_with_username_and_client_id() {
        let acl = Acl::new(vec![
            AclRule {
                topic: "sensors/%u/#".into(),
                access: Access::ReadWrite,
            },
            AclRule {
                topic: "status/%c".into(),
                access: Access::Write,
            },
        ]);
        let alice = Subject {
            username: Some("alice"),
            client_id: "dev1",
        };
        assert!(acl.may_publish(&alice, "sensors/alice/t"));
        assert!(!acl.may_publish(&alice, "sensors/bob/t"));
        assert!(acl.may_publish(&alice, "status/dev1"));
        assert!(!acl.may_subscribe(&alice, "status/dev1"), "write-only");
        assert!(!acl.may_subscribe(&alice, "#"));
        let anon = Subject {
            username: None,
            client_id: "x",
        };
        assert!(!acl.may_publish(&anon, "sensors//t"));
        let sneaky = Subject {
            username: Some("+"),
            client_id: "x",
        };
        assert!(!acl.may_subscribe(&sneaky, "sensors/+/#"));
    }

    #[test]
    fn the_first_matching_rule_decides_and_deny_refuses() {
        let rule = |topic: &str, access| AclRule {
            topic: topic.into(),
            access,
        };
        let acl = Acl::new(vec![
            rule("test/nosubscribe", Access::Deny),
            rule("#", Access::ReadWrite),
        ]);
        let who = Subject {
            username: None,
            client_id: "c",
        };
        assert!(!acl.may_subscribe(&who, "test/nosubscribe"));
        assert!(!acl.may_publish(&who, "test/nosubscribe"));
        assert!(acl.may_subscribe(&who, "test/other"));
        assert!(acl.may_publish(&who, "test/other"));
        assert!(
            acl.may_subscribe(&who, "#"),
            "a deny covering part of a filter does not decide"
        );
        // A read-only rule first does not decide a publish.
        let acl = Acl::new(vec![rule("#", Access::Read), rule("out/%c", Access::Write)]);
        assert!(acl.may_publish(&who, "out/c"));
        assert!(!acl.may_publish(&who, "out/d"));
    }
}
