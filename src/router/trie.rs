//! The subscription index: a trie of topic levels, split into shards by the
//! first level so that publishers never share one lock.
//!
//! A filter whose first level is a literal (`rooms/...`, `sensors/...`) lives
//! in the shard its first level hashes to; a filter that starts with `+` or
//! `#` lives in the wildcard shard. A PUBLISH reads two shards: the one of
//! its first level and the wildcard shard. Publishers take read locks only,
//! so they run in parallel; SUBSCRIBE and UNSUBSCRIBE take one shard's write
//! lock.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

use super::{same_subscriber, Subscriber};
use crate::message::SharedGroupKey;
use crate::protocol::SubscriptionOptions;

const LITERAL_SHARDS: usize = 16;

/// One subscription of one session.
#[derive(Clone)]
pub struct SubEntry {
    pub subscriber: Arc<dyn Subscriber>,
    pub options: SubscriptionOptions,
    pub id: Option<NonZeroU32>,
    /// Whether each message must pass the subscriber's read check
    /// (`Subscriber::may_read_acl`) before delivery: set when the topic
    /// rules did not decide the whole filter at SUBSCRIBE
    /// (`auth::acl::Acl::needs_read_check`). False in the common case, so
    /// the fan-out checks nothing.
    pub check_read: bool,
}

impl SubEntry {
    /// Whether this subscription may carry a message on `topic` to its
    /// subscriber (the per-message half of the read decision).
    pub fn may_carry(&self, topic: &str) -> bool {
        !self.check_read || self.subscriber.may_read_acl(topic)
    }
}

/// A subscription that matched a topic, before merging overlaps.
pub struct Matched {
    pub entry: SubEntry,
    pub shared: Option<Arc<SharedGroupKey>>,
}

/// Everything that matched a topic, and how many filters the plain (not
/// shared) subscriptions among them came from. A session holds one
/// subscription per filter, so matches from one filter never overlap and
/// need no merging (the sort that finds overlaps was 2 % of a fan-out's
/// time, perf, 1 -> 100 at 5 in flight).
#[derive(Default)]
pub struct Matches {
    pub list: Vec<Matched>,
    pub plain_filters: u32,
}

struct SharedGroup {
    key: Arc<SharedGroupKey>,
    members: Vec<SubEntry>,
    /// Round-robin position; atomic so that publishers under a read lock can
    /// advance it.
    next: AtomicUsize,
}

#[derive(Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    subs: Vec<SubEntry>,
    shared: Vec<SharedGroup>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.subs.is_empty() && self.shared.is_empty()
    }

    fn collect(&self, topic: &str, levels: &[&str], dollar_topic: bool, out: &mut Matches) {
        let Some((level, rest)) = levels.split_first() else {
            self.take_all(topic, out);
            // "a/#" also matches "a" ([MQTT-4.7.1-2]).
            if let Some(hash) = self.children.get("#") {
                hash.take_all(topic, out);
            }
            return;
        };
        if let Some(child) = self.children.get(*level) {
            child.collect(topic, rest, false, out);
        }
        // A leading wildcard never matches a topic starting with '$'.
        if !dollar_topic {
            if let Some(plus) = self.children.get("+") {
                plus.collect(topic, rest, false, out);
            }
            if let Some(hash) = self.children.get("#") {
                hash.take_all(topic, out);
            }
        }
    }

    fn take_all(&self, topic: &str, out: &mut Matches) {
        if !self.subs.is_empty() {
            out.plain_filters += 1;
        }
        out.list.extend(self.subs.iter().map(|e| Matched {
            entry: e.clone(),
            shared: None,
        }));
        for group in &self.shared {
            if let Some(entry) = pick_member(group, topic) {
                out.list.push(Matched {
                    entry,
                    shared: Some(group.key.clone()),
                });
            }
        }
    }
}

/// Round robin over the members that may read `topic` (room membership,
/// topic rules),
/// preferring those online; when none is online the message is queued for
/// the next reader in turn. A member that may not read is skipped, so the
/// message is never handed to one that would drop it.
fn pick_member(group: &SharedGroup, topic: &str) -> Option<SubEntry> {
    let n = group.members.len();
    if n == 0 {
        return None;
    }
    let start = group.next.fetch_add(1, Ordering::Relaxed);
    let mut first_reader = None;
    for member in (0..n).map(|i| &group.members[(start + i) % n]) {
        if !member.subscriber.may_read_topic(topic) || !member.may_carry(topic) {
            continue;
        }
        if member.subscriber.is_online() {
            return Some(member.clone());
        }
        first_reader.get_or_insert(member);
    }
    first_reader.cloned()
}

/// The sharded subscription trie.
pub struct Trie {
    wildcard: RwLock<Node>,
    literal: Vec<RwLock<Node>>,
}

impl Default for Trie {
    fn default() -> Self {
        Trie {
            wildcard: RwLock::default(),
            literal: (0..LITERAL_SHARDS).map(|_| RwLock::default()).collect(),
        }
    }
}

impl Trie {
    fn shard_for_first_level(&self, first: &str) -> &RwLock<Node> {
        let mut h = DefaultHasher::new();
        first.hash(&mut h);
        &self.literal[(h.finish() as usize) % LITERAL_SHARDS]
    }

    fn shard_for_filter(&self, filter: &str) -> &RwLock<Node> {
        let first = filter.split('/').next().unwrap_or("");
        if first == "+" || first == "#" {
            &self.wildcard
        } else {
            self.shard_for_first_level(first)
        }
    }

    /// Adds or replaces the subscription of `entry.subscriber` to `filter`
    /// (or to the shared group, when `group` is set). Returns true when it
    /// replaced an existing one.
    pub fn insert(&self, filter: &str, group: Option<&str>, entry: SubEntry) -> bool {
        let mut root = self.shard_for_filter(filter).write();
        let mut node = &mut *root;
        for level in filter.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        let members = match group {
            None => &mut node.subs,
            Some(group) => {
                let idx = match node.shared.iter().position(|g| &*g.key.group == group) {
                    Some(i) => i,
                    None => {
                        node.shared.push(SharedGroup {
                            key: Arc::new(SharedGroupKey {
                                group: group.into(),
                                filter: filter.into(),
                            }),
                            members: Vec::new(),
                            next: AtomicUsize::new(0),
                        });
                        node.shared.len() - 1
                    }
                };
                &mut node.shared[idx].members
            }
        };
        match members
            .iter_mut()
            .find(|e| same_subscriber(&e.subscriber, &entry.subscriber))
        {
            Some(existing) => {
                *existing = entry;
                true
            }
            None => {
                members.push(entry);
                false
            }
        }
    }

    /// Removes the subscription of `session` to `filter`; returns whether
    /// one existed.
    pub fn remove(&self, filter: &str, group: Option<&str>, session: &Arc<dyn Subscriber>) -> bool {
        let mut root = self.shard_for_filter(filter).write();
        let levels: Vec<&str> = filter.split('/').collect();
        remove_at(&mut root, &levels, group, session)
    }

    /// Every subscription matching `topic`, shared groups resolved to one
    /// member each.
    pub fn matches(&self, topic: &str) -> Matches {
        let levels: Vec<&str> = topic.split('/').collect();
        let dollar = topic.starts_with('$');
        let mut out = Matches::default();
        self.shard_for_first_level(levels[0])
            .read()
            .collect(topic, &levels, dollar, &mut out);
        self.wildcard.read().collect(topic, &levels, dollar, &mut out);
        out
    }

    /// Members of a shared group other than `except`, for handing over the
    /// messages of a member that left.
    pub fn shared_members(&self, key: &SharedGroupKey, except: &Arc<dyn Subscriber>) -> Vec<SubEntry> {
        let root = self.shard_for_filter(&key.filter).read();
        let mut node = &*root;
        for level in key.filter.split('/') {
            match node.children.get(level) {
                Some(n) => node = n,
                None => return Vec::new(),
            }
        }
        node.shared
            .iter()
            .find(|g| g.key.group == key.group)
            .map(|g| {
                g.members
                    .iter()
                    .filter(|m| !same_subscriber(&m.subscriber, except))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn remove_at(node: &mut Node, levels: &[&str], group: Option<&str>, session: &Arc<dyn Subscriber>) -> bool {
    match levels.split_first() {
        None => {
            let members = match group {
                None => &mut node.subs,
                Some(group) => match node.shared.iter_mut().find(|g| &*g.key.group == group) {
                    Some(g) => &mut g.members,
                    None => return false,
                },
            };
            let before = members.len();
            members.retain(|e| !same_subscriber(&e.subscriber, session));
            let removed = members.len() != before;
            node.shared.retain(|g| !g.members.is_empty());
            removed
        }
        Some((level, rest)) => {
            let Some(child) = node.children.get_mut(*level) else {
                return false;
            };
            let removed = remove_at(child, rest, group, session);
            if child.is_empty() {
                node.children.remove(*level);
            }
            removed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::probe::{handle, Probe};
    use super::*;

    fn entry(probe: &Arc<Probe>) -> SubEntry {
        SubEntry {
            subscriber: handle(probe),
            options: SubscriptionOptions::default(),
            id: None,
            check_read: false,
        }
    }

    /// The client ids `topic` reaches, sorted.
    fn reached(trie: &Trie, topic: &str) -> Vec<String> {
        let mut ids: Vec<String> = trie
            .matches(topic)
            .list
            .iter()
            .map(|m| m.entry.subscriber.client_id().to_string())
            .collect();
        ids.sort();
        ids
    }

    #[test]
    fn plus_matches_one_level_and_hash_the_rest() {
        let trie = Trie::default();
        for (id, filter) in [
            ("exact", "a/b/c"),
            ("plus", "a/+/c"),
            ("hash", "a/#"),
            ("lead", "+/b/#"),
            ("all", "#"),
        ] {
            trie.insert(filter, None, entry(&Probe::new(id)));
        }
        assert_eq!(reached(&trie, "a/b/c"), ["all", "exact", "hash", "lead", "plus"]);
        assert_eq!(reached(&trie, "a/x/c"), ["all", "hash", "plus"]);
        assert_eq!(reached(&trie, "a/b/c/d"), ["all", "hash", "lead"]);
        // "a/#" matches its parent "a" too ([MQTT-4.7.1-2]); "+" needs a level.
        assert_eq!(reached(&trie, "a"), ["all", "hash"]);
        assert_eq!(reached(&trie, "b"), ["all"]);
        // An empty level is a level.
        assert_eq!(reached(&trie, "a//c"), ["all", "hash", "plus"]);
    }

    #[test]
    fn wildcards_at_the_start_do_not_match_dollar_topics() {
        let trie = Trie::default();
        trie.insert("#", None, entry(&Probe::new("all")));
        trie.insert("+/broker/#", None, entry(&Probe::new("plus")));
        trie.insert("$SYS/#", None, entry(&Probe::new("sys")));
        trie.insert("$SYS/+/x", None, entry(&Probe::new("sys-plus")));
        assert_eq!(reached(&trie, "$SYS/broker/x"), ["sys", "sys-plus"]);
        assert_eq!(reached(&trie, "SYS/broker/x"), ["all", "plus"]);
    }

    #[test]
    fn a_second_subscription_to_one_filter_replaces_the_first() {
        let trie = Trie::default();
        let p = Probe::new("p");
        assert!(!trie.insert("a/+", None, entry(&p)));
        let mut again = entry(&p);
        again.id = NonZeroU32::new(7);
        assert!(trie.insert("a/+", None, again));
        let matched = trie.matches("a/b").list;
        assert_eq!(matched.len(), 1);
        assert_eq!(matched[0].entry.id, NonZeroU32::new(7));
    }

    #[test]
    fn matches_count_the_filters_their_plain_subscriptions_came_from() {
        // The router merges overlaps only when a topic matched plain
        // subscriptions of more than one filter: one session may then be
        // there twice.
        let trie = Trie::default();
        let (a, b, c) = (Probe::new("a"), Probe::new("b"), Probe::new("c"));
        for p in [&a, &b, &c] {
            trie.insert("a/b", None, entry(p));
        }
        trie.insert("a/+", None, entry(&a));
        trie.insert("a/#", Some("g"), entry(&b));
        let both = trie.matches("a/b");
        assert_eq!((both.list.len(), both.plain_filters), (5, 2));
        let one = trie.matches("a/c");
        assert_eq!((one.list.len(), one.plain_filters), (2, 1));
        let shared_only = trie.matches("a/c/d");
        assert_eq!((shared_only.list.len(), shared_only.plain_filters), (1, 0));
    }

    #[test]
    fn a_shared_group_hands_each_message_to_one_member_in_turn() {
        let trie = Trie::default();
        let (a, b) = (Probe::new("a"), Probe::new("b"));
        trie.insert("t/+", Some("g"), entry(&a));
        trie.insert("t/+", Some("g"), entry(&b));
        trie.insert("t/+", Some("h"), entry(&Probe::new("c")));
        let mut firsts = Vec::new();
        for _ in 0..4 {
            let matched = trie.matches("t/1").list;
            // One member of each group.
            assert_eq!(matched.len(), 2);
            let g = matched
                .iter()
                .find(|m| m.shared.as_ref().is_some_and(|k| &*k.group == "g"))
                .map(|m| m.entry.subscriber.client_id().to_string());
            firsts.extend(g);
        }
        assert_eq!(firsts, ["a", "b", "a", "b"]);
    }

    #[test]
    fn a_shared_group_prefers_online_members_that_may_read() {
        let trie = Trie::default();
        let (off, denied, on) = (
            Probe::new("off"),
            Probe::denying("denied", &["t/1"]),
            Probe::new("on"),
        );
        off.set_online(false);
        for p in [&off, &denied, &on] {
            trie.insert("t/1", Some("g"), entry(p));
        }
        for _ in 0..3 {
            assert_eq!(reached(&trie, "t/1"), ["on"]);
        }
        on.set_online(false);
        // No reader online: queued for an offline one that may read.
        assert_eq!(reached(&trie, "t/1"), ["off"]);
        let others = trie.shared_members(
            &trie.matches("t/1").list[0].shared.clone().unwrap(),
            &handle(&off),
        );
        assert_eq!(others.len(), 2);
    }

    #[test]
    fn unsubscribe_leaves_no_empty_nodes() {
        let trie = Trie::default();
        let (p, q) = (Probe::new("p"), Probe::new("q"));
        trie.insert("a/b/c", None, entry(&p));
        trie.insert("a/b", None, entry(&q));
        trie.insert("+/x", Some("g"), entry(&p));
        trie.insert("#", None, entry(&q));
        assert!(!trie.remove("a/b/c", None, &handle(&q)), "not q's");
        assert!(trie.remove("a/b/c", None, &handle(&p)));
        assert!(!trie.remove("a/b/c", None, &handle(&p)), "already gone");
        assert!(trie.remove("a/b", None, &handle(&q)));
        assert!(trie.remove("+/x", Some("g"), &handle(&p)));
        assert!(trie.remove("#", None, &handle(&q)));
        assert!(trie.wildcard.read().is_empty());
        assert!(trie.literal.iter().all(|shard| shard.read().is_empty()));
    }

    #[test]
    fn removing_one_subscriber_keeps_the_others_and_their_path() {
        let trie = Trie::default();
        let (p, q) = (Probe::new("p"), Probe::new("q"));
        trie.insert("a/b/c", None, entry(&p));
        trie.insert("a/b/c", None, entry(&q));
        trie.insert("a/b/c/d", None, entry(&p));
        assert!(trie.remove("a/b/c", None, &handle(&p)));
        assert_eq!(reached(&trie, "a/b/c"), ["q"]);
        assert_eq!(reached(&trie, "a/b/c/d"), ["p"]);
    }
}
