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

    /// Whether `who` may subscribe to `filter`: the first read or deny rule
    /// that covers every topic the filter can match decides (so `#` needs a
    /// rule `#`). A deny rule that covers only part of the filter does not
    /// decide (as in Mosquitto, `#` is then allowed by a later `#` rule: the
    /// rules are checked at SUBSCRIBE and PUBLISH, not per delivery).
    pub fn may_subscribe(&self, who: &Subject<'_>, filter: &str) -> bool {
        if self.rules.is_empty() || is_chat_topic(filter) {
            return true;
        }
        self.rules
            .iter()
            .filter(|r| r.access != Access::Write)
            .filter_map(|r| Some((r.access, self.expand(r, who)?)))
            .find(|(_, pattern)| filter_within(pattern, filter))
            .is_some_and(|(access, _)| access != Access::Deny)
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
