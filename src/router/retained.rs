//! Retained messages: the last retained message of each topic, delivered to
//! new subscriptions that match it.
//!
//! Indexed by topic level, like the subscription trie, so that a SUBSCRIBE
//! costs what its filter can match: an exact filter O(levels), `a/+/c` the
//! children of `a`, `#` everything. Bounded by `max_retained_messages` and
//! `max_retained_bytes`: a retained PUBLISH to a new topic beyond them is
//! not retained (it is still delivered), counted and logged. The broker's
//! own `$` topics (presence, member lists, `$SYS`) and the state it keeps
//! on client topics (read receipts, `Message::broker_owned`) are not
//! counted: they have bounds of their own (`max_presence_records`, one per
//! declared room, `max_receipts_per_user`), and a client flood must not
//! crowd them out.
//!
//! Before the global limits, each identity's: a retained message a client
//! sets is charged (`Held::RetainedMessages`, `Held::RetainedBytes`) to the
//! account in its `owner`, and released from that account when it is
//! replaced, cleared or expires. Beyond either bound the answer is the
//! global limit's: delivered, not retained.

use std::collections::HashMap;
use std::sync::Arc;
use tokio::time::Instant;

use parking_lot::RwLock;

use crate::budget::{Budgets, Held};
use crate::message::Message;

/// Topic levels to retained message. A read lock serves every subscribe; a
/// write lock is taken only by a PUBLISH with the RETAIN flag.
pub struct RetainedStore {
    inner: RwLock<Inner>,
    max_messages: usize,
    max_bytes: usize,
    /// Per-identity accounts; `None` charges nobody (tests, the trusted
    /// in-process API).
    budgets: Option<Arc<Budgets>>,
}

#[derive(Default)]
struct Inner {
    root: Node,
    /// Every retained message.
    count: usize,
    /// Of those, the clients' (not under `$`), and their bytes: what the
    /// limits bound.
    client_count: usize,
    bytes: usize,
}

/// Whether a message counts against the limits (see the module doc).
fn counted(message: &Message) -> bool {
    !message.topic.starts_with('$') && !message.broker_owned
}

#[derive(Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    message: Option<Arc<Message>>,
}

/// What a retained message counts for: every byte of it, properties
/// included.
fn retained_bytes(m: &Message) -> usize {
    m.footprint()
}

impl Default for RetainedStore {
    /// Unbounded (for tests and the trusted in-process API).
    fn default() -> Self {
        RetainedStore::new(usize::MAX, usize::MAX)
    }
}

impl RetainedStore {
    pub fn new(max_messages: usize, max_bytes: usize) -> Self {
        RetainedStore {
            inner: RwLock::default(),
            max_messages,
            max_bytes,
            budgets: None,
        }
    }

    /// Charges the retained messages clients set to their owners' accounts.
    pub fn with_budgets(mut self, budgets: Arc<Budgets>) -> Self {
        self.budgets = Some(budgets);
        self
    }

    /// Charges `message` to its owner, or refuses (charging nothing).
    fn charge(&self, message: &Message, size: usize) -> bool {
        let (Some(budgets), Some(owner)) = (&self.budgets, &message.owner) else {
            return true;
        };
        if let Err(over) = budgets.charge(owner, Held::RetainedMessages, 1) {
            tracing::warn!(topic = %message.topic, account = %owner, bound = over.bound, "retained message not kept: over {}", over.key);
            return false;
        }
        if let Err(over) = budgets.charge(owner, Held::RetainedBytes, size as u64) {
            budgets.release(owner, Held::RetainedMessages, 1);
            tracing::warn!(topic = %message.topic, account = %owner, bound = over.bound, "retained message not kept: over {}", over.key);
            return false;
        }
        true
    }

    /// Gives back what `charge` took for a message that is no longer kept.
    fn release(&self, old: &Message) {
        if let (Some(budgets), Some(owner)) = (&self.budgets, &old.owner) {
            if counted(old) {
                budgets.release(owner, Held::RetainedMessages, 1);
                budgets.release(owner, Held::RetainedBytes, retained_bytes(old) as u64);
            }
        }
    }

    /// Charges a message kept all along back to its owner, without a bound
    /// check (after a release for a replacement that was refused).
    fn recharge(&self, kept: &Message) {
        if let (Some(budgets), Some(owner)) = (&self.budgets, &kept.owner) {
            if counted(kept) {
                budgets.charge_unchecked(owner, Held::RetainedMessages, 1);
                budgets.charge_unchecked(owner, Held::RetainedBytes, retained_bytes(kept) as u64);
            }
        }
    }

    /// Stores `message` as the topic's retained message, or clears it when
    /// the payload is empty ([MQTT-3.3.1-10]). Returns false when it was
    /// not stored because the limits are reached.
    pub fn set(&self, message: &Arc<Message>) -> bool {
        if message.payload.is_empty() {
            self.remove(&message.topic);
            return true;
        }
        let mut inner = self.inner.write();
        let is_counted = counted(message);
        let size = if is_counted { retained_bytes(message) } else { 0 };
        let old = find(&inner.root, &message.topic).cloned();
        if is_counted {
            // Replacing a message the limits did not count (the broker's)
            // takes nothing back.
            let (count, bytes) = match old.as_ref().filter(|old| counted(old)) {
                Some(old) => (
                    inner.client_count,
                    inner.bytes.saturating_sub(retained_bytes(old)) + size,
                ),
                None => (inner.client_count + 1, inner.bytes + size),
            };
            if count > self.max_messages || bytes > self.max_bytes {
                return false;
            }
            // The one it replaces is released first: replacing one's own
            // is not a new one; replacing another's moves the charge.
            if let Some(old) = &old {
                self.release(old);
            }
            if !self.charge(message, size) {
                if let Some(old) = &old {
                    // Still kept: charged back as it was.
                    self.recharge(old);
                }
                return false;
            }
        }
        if let Some(old) = &old {
            inner.forget(old);
        }
        let mut node = &mut inner.root;
        for level in message.topic.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        node.message = Some(message.clone());
        inner.count += 1;
        if is_counted {
            inner.client_count += 1;
            inner.bytes += size;
        }
        true
    }

    /// Removes a topic's retained message and returns it.
    pub fn remove(&self, topic: &str) -> Option<Arc<Message>> {
        let mut inner = self.inner.write();
        let old = remove(&mut inner.root, &mut topic.split('/'))?;
        inner.forget(&old);
        self.release(&old);
        Some(old)
    }

    /// Every unexpired retained message whose topic matches `filter`;
    /// expired ones are dropped on the way.
    pub fn matching(&self, filter: &str) -> Vec<Arc<Message>> {
        self.matching_within(filter, usize::MAX).unwrap_or_default()
    }

    /// `matching`, unless answering would visit more than `budget` index
    /// nodes: then `None`, and the caller runs `matching` where a long walk
    /// stalls nobody.
    pub fn matching_within(&self, filter: &str, budget: usize) -> Option<Vec<Arc<Message>>> {
        let now = Instant::now();
        let levels: Vec<&str> = filter.split('/').collect();
        let mut found = Vec::new();
        let mut left = budget;
        collect(&self.inner.read().root, &levels, true, &mut found, &mut left)?;
        let (live, expired): (Vec<_>, Vec<_>) = found.into_iter().partition(|m| !m.is_expired(now));
        if !expired.is_empty() {
            let mut inner = self.inner.write();
            for message in expired {
                let still = find(&inner.root, &message.topic).is_some_and(|m| m.is_expired(now));
                if still {
                    if let Some(old) = remove(&mut inner.root, &mut message.topic.split('/')) {
                        inner.forget(&old);
                        self.release(&old);
                    }
                }
            }
        }
        Some(live)
    }

    pub fn len(&self) -> usize {
        self.inner.read().count
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes (`Message::footprint`) of the clients' retained messages.
    pub fn bytes(&self) -> usize {
        self.inner.read().bytes
    }
}

impl Inner {
    /// Takes a removed message out of the counts.
    fn forget(&mut self, old: &Message) {
        self.count -= 1;
        if counted(old) {
            self.client_count -= 1;
            self.bytes = self.bytes.saturating_sub(retained_bytes(old));
        }
    }
}

fn find<'a>(root: &'a Node, topic: &str) -> Option<&'a Arc<Message>> {
    let mut node = root;
    for level in topic.split('/') {
        node = node.children.get(level)?;
    }
    node.message.as_ref()
}

/// Removes the message at `levels`, and the nodes it leaves empty.
fn remove<'a>(node: &mut Node, levels: &mut impl Iterator<Item = &'a str>) -> Option<Arc<Message>> {
    match levels.next() {
        None => node.message.take(),
        Some(level) => {
            let child = node.children.get_mut(level)?;
            let removed = remove(child, levels);
            if child.message.is_none() && child.children.is_empty() {
                node.children.remove(level);
            }
            removed
        }
    }
}

/// The messages under `node` matching the filter `levels`. At the first
/// level a wildcard does not match a topic starting with `$` ([MQTT-4.7.2-1]).
/// Each node visited costs one of `left`; `None` when they run out.
fn collect(
    node: &Node,
    levels: &[&str],
    first: bool,
    out: &mut Vec<Arc<Message>>,
    left: &mut usize,
) -> Option<()> {
    *left = left.checked_sub(1)?;
    let visible = |name: &str| !(first && name.starts_with('$'));
    match levels.split_first() {
        None => out.extend(node.message.iter().cloned()),
        Some((&"#", _)) => {
            // "a/#" also matches "a" ([MQTT-4.7.1-2]).
            out.extend(node.message.iter().cloned());
            for (_, child) in node.children.iter().filter(|(n, _)| visible(n)) {
                collect_all(child, out, left)?;
            }
        }
        Some((&"+", rest)) => {
            for (_, child) in node.children.iter().filter(|(n, _)| visible(n)) {
                collect(child, rest, false, out, left)?;
            }
        }
        Some((level, rest)) => {
            if let Some(child) = node.children.get(*level) {
                collect(child, rest, false, out, left)?;
            }
        }
    }
    Some(())
}

fn collect_all(node: &Node, out: &mut Vec<Arc<Message>>, left: &mut usize) -> Option<()> {
    *left = left.checked_sub(1)?;
    out.extend(node.message.iter().cloned());
    for child in node.children.values() {
        collect_all(child, out, left)?;
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::validate::topic_matches;
    use crate::protocol::QoS;

    fn msg(topic: &str) -> Arc<Message> {
        Arc::new(Message::new(
            topic,
            bytes::Bytes::from_static(b"x"),
            QoS::AtMostOnce,
            true,
        ))
    }

    /// The index answers exactly what a scan with `topic_matches` would.
    #[test]
    fn index_results_equal_the_scan() {
        let store = RetainedStore::default();
        let topics = [
            "a",
            "a/b",
            "a/b/c",
            "a/c",
            "a//c",
            "/a",
            "/",
            "b/b",
            "$SYS/x",
            "$SYS",
            "$presence/u",
            "a/b/c/d",
        ];
        for t in topics {
            assert!(store.set(&msg(t)));
        }
        for filter in [
            "#",
            "a/#",
            "a/+",
            "+/b",
            "+/+",
            "/#",
            "+",
            "a/+/c",
            "a//c",
            "$SYS/#",
            "$SYS",
            "+/x",
            "$presence/+",
            "a/b/c",
            "nomatch/+/x",
            "+/#",
            "a/b/#",
        ] {
            let mut got: Vec<String> = store
                .matching(filter)
                .iter()
                .map(|m| m.topic.to_string())
                .collect();
            let mut want: Vec<String> = topics
                .iter()
                .filter(|t| topic_matches(filter, t))
                .map(|t| t.to_string())
                .collect();
            got.sort();
            want.sort();
            assert_eq!(got, want, "{filter}");
        }
        // Within a budget: an exact filter fits, `#` over everything not.
        assert!(store.matching_within("a/b/c", 8).is_some());
        assert!(store.matching_within("#", 8).is_none());
    }

    fn big_sys() -> Arc<Message> {
        Arc::new(Message::new(
            "$SYS/big",
            bytes::Bytes::from(vec![0u8; 2000]),
            QoS::AtMostOnce,
            true,
        ))
    }

    #[test]
    fn bounded_in_count_and_bytes_and_clearing_frees() {
        let store = RetainedStore::new(2, 1000);
        assert!(store.set(&msg("a")));
        assert!(store.set(&msg("b")));
        assert!(!store.set(&msg("c")), "over the count");
        assert!(store.set(&msg("a")), "replacing is not a new one");
        let empty = Arc::new(Message::new("a", bytes::Bytes::new(), QoS::AtMostOnce, true));
        assert!(store.set(&empty));
        assert_eq!(store.len(), 1);
        assert!(store.set(&msg("c")));
        let big = Arc::new(Message::new(
            "d",
            bytes::Bytes::from(vec![0u8; 2000]),
            QoS::AtMostOnce,
            true,
        ));
        let store = RetainedStore::new(10, 1000);
        assert!(!store.set(&big), "over the bytes");
        assert_eq!(store.bytes(), 0);
        // The broker's own `$` topics are not held to the clients' limits.
        let store = RetainedStore::new(1, 1000);
        assert!(store.set(&msg("a")));
        assert!(store.set(&msg("$presence/ann")));
        assert!(store.set(&big_sys()));
        assert!(!store.set(&msg("b")));
        assert_eq!(store.len(), 3);
    }
}
