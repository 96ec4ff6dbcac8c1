//! Routing: the subscription trie, retained messages, and fan-out of each
//! message to the sessions that subscribed to it.
//!
//! Fan-out runs on the publisher's own task: it reads the trie, then pushes a
//! [`Delivery`] (a pointer to the shared message plus a few bytes) onto each
//! matching session's bounded queue and wakes that session's connection.
//! Nothing here waits on a subscriber, so a slow consumer never slows the
//! publisher or anyone else.

#[cfg(test)]
mod probe;
mod retained;
mod trie;

use std::num::NonZeroU32;
use std::sync::Arc;

pub use crate::message::{Delivery, Message, RoomTag, SharedGroupKey};
pub use retained::RetainedStore;
pub use trie::SubEntry;

use crate::protocol::validate::SharedFilter;
use crate::protocol::{QoS, RetainHandling, SubscriptionOptions};
use crate::store::Store;
use trie::{Matches, Trie};

/// Retained-index nodes a SUBSCRIBE may visit on the connection's own
/// thread (a few microseconds); a filter that needs more is matched on a
/// blocking thread.
const INLINE_RETAINED_VISITS: usize = 1024;

/// A subscriber as the router sees it: sessions implement it. The router
/// matches and hands over; what a subscriber does with a delivery (queue,
/// store, wake its connection) is the session's business.
pub trait Subscriber: Send + Sync {
    fn client_id(&self) -> &str;
    /// Takes a delivery; false when it could not (queue full, or offline
    /// and the message is QoS 0).
    fn deliver(&self, delivery: Delivery) -> bool;
    /// Whether the subscriber may read `topic` now (room membership can
    /// change after it subscribed).
    fn may_read_topic(&self, topic: &str) -> bool;
    /// Whether the topic rules (`[[acl]]`) let the subscriber read
    /// `topic`: asked per message only for subscriptions whose filter the
    /// rules did not decide as a whole (`SubEntry::check_read`).
    fn may_read_acl(&self, topic: &str) -> bool;
    fn is_online(&self) -> bool;
}

/// Where messages go beyond this process (cluster mode): the router tells
/// it what this node subscribes to, and hands it every message published
/// here that is not a room message (those travel through the room log).
pub trait Outbound: Send + Sync {
    /// A message published on this node (room messages excepted); false
    /// when a retained message could not be kept in the cluster.
    fn forward(&self, message: &Arc<Message>) -> bool;
    /// A retained message was removed here (broker housekeeping).
    fn retained_cleared(&self, topic: &str);
    /// A subscription to `filter` (in shared `group`) was added or removed.
    fn interest(&self, filter: &str, group: Option<&str>, added: bool);
}

/// Which subscriptions a message from another node reaches on this one.
#[derive(Clone, Copy, Debug)]
pub enum RemoteScope<'a> {
    /// Every subscription but shared ones (the cluster hands a shared
    /// group's copy to one node: `Shared`).
    Plain,
    /// One member of this shared group.
    Shared(&'a SharedGroupKey),
}

/// Whether two handles are the same subscriber (by address: the vtable
/// part of a `dyn` pointer may differ between codegen units).
pub(crate) fn same_subscriber(a: &Arc<dyn Subscriber>, b: &Arc<dyn Subscriber>) -> bool {
    std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b))
}

/// What became of one published message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PublishOutcome {
    /// Sessions with a matching subscription.
    pub matched: usize,
    /// Of those, sessions that could not take it (queue full, or offline
    /// with QoS 0).
    pub dropped: usize,
    /// A retained message that was not retained: `max_retained_messages` or
    /// `max_retained_bytes` reached (it was still delivered).
    pub retain_refused: bool,
}

/// The shared routing state of one broker.
pub struct Router {
    trie: Trie,
    /// Shared with the blocking tasks that match wildcard subscriptions.
    retained: Arc<RetainedStore>,
    retain_available: bool,
    /// Where retained messages are kept durably, when the broker has a store.
    store: Option<Arc<dyn Store>>,
    /// The other nodes of a cluster, once connected.
    outbound: std::sync::OnceLock<Arc<dyn Outbound>>,
    /// Subscriptions in the trie (`roomq_subscriptions`).
    subscriptions: std::sync::atomic::AtomicUsize,
}

impl Router {
    pub fn new(retain_available: bool, store: Option<Arc<dyn Store>>, retained: RetainedStore) -> Self {
        Router {
            trie: Trie::default(),
            retained: Arc::new(retained),
            retain_available,
            store,
            outbound: std::sync::OnceLock::new(),
            subscriptions: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Subscriptions held now (every session's, shared ones included).
    pub fn subscription_count(&self) -> usize {
        self.subscriptions.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Connects the router to the other nodes of a cluster (once).
    pub fn connect_outbound(&self, outbound: Arc<dyn Outbound>) {
        if self.outbound.set(outbound).is_err() {
            tracing::error!("the router is already connected to a cluster");
        }
    }

    /// Whether messages also go to other nodes (cluster mode), whose
    /// subscribers this router does not know.
    pub fn reaches_other_nodes(&self) -> bool {
        self.outbound.get().is_some()
    }

    pub fn retained(&self) -> &RetainedStore {
        &self.retained
    }

    /// Routes one message: stores it as retained when flagged, then hands it
    /// to every matching subscription.
    pub fn publish(&self, message: Message) -> PublishOutcome {
        let message = Arc::new(message);
        let mut retain_refused = false;
        if message.retain && self.retain_available {
            retain_refused = !self.keep_retained(&message);
        }
        // In a cluster, room messages reach every node through the room
        // log; anything else is forwarded, and a shared group's copy is
        // chosen among all nodes (`RemoteScope::Shared`).
        let outbound = self.outbound.get().filter(|_| message.room.is_none());
        if let Some(outbound) = outbound {
            retain_refused |= !outbound.forward(&message);
        }
        let mut matched = self.trie.matches(&message.topic);
        if outbound.is_some() {
            matched.list.retain(|m| m.shared.is_none());
        }
        self.deliver(&message, matched, retain_refused)
    }

    /// Sets (or clears) a retained message here and in the store; false
    /// when a limit refused it.
    fn keep_retained(&self, message: &Arc<Message>) -> bool {
        if !self.retained.set(message) {
            tracing::warn!(topic = %message.topic, retained = self.retained.len(), "retained message not kept: max_retained_messages or max_retained_bytes reached");
            return false;
        }
        if let Some(store) = self.store.as_ref().filter(|_| !message.retain_in_memory) {
            let record =
                (!message.payload.is_empty()).then(|| crate::store::MessageRecord::from_message(message));
            if let Err(e) = store.put_retained(&message.topic, record.as_ref()) {
                tracing::error!(topic = %message.topic, error = %e, "could not store the retained message");
            }
        }
        true
    }

    /// Delivers a message published on another node of the cluster to the
    /// subscriptions `scope` names; not forwarded again. Retained state
    /// comes separately (`apply_retained`), except what is kept in memory
    /// only (a live presence).
    pub fn publish_remote(&self, message: Message, scope: RemoteScope<'_>) -> PublishOutcome {
        let message = Arc::new(message);
        if message.retain && message.retain_in_memory && self.retain_available {
            self.retained.set(&message);
        }
        let mut matched = self.trie.matches(&message.topic);
        match scope {
            RemoteScope::Plain => matched.list.retain(|m| m.shared.is_none()),
            RemoteScope::Shared(key) => matched.list.retain(|m| m.shared.as_deref() == Some(key)),
        }
        self.deliver(&message, matched, false)
    }

    /// Sets a retained message (or clears it, with an empty payload) as the
    /// cluster's retained stream says, without delivering it.
    pub fn apply_retained(&self, message: Message) {
        if !self.retain_available {
            return;
        }
        if message.payload.is_empty() {
            if self.retained.remove(&message.topic).is_some() {
                if let Some(store) = &self.store {
                    if let Err(e) = store.put_retained(&message.topic, None) {
                        tracing::error!(topic = %message.topic, error = %e, "could not remove a retained message from the store");
                    }
                }
            }
            return;
        }
        self.keep_retained(&Arc::new(message));
    }

    fn deliver(&self, message: &Arc<Message>, mut matched: Matches, retain_refused: bool) -> PublishOutcome {
        if matched.list.is_empty() {
            return PublishOutcome {
                retain_refused,
                ..PublishOutcome::default()
            };
        }
        // Shared members were checked when picked (`trie::pick_member`).
        matched
            .list
            .retain(|m| m.shared.is_some() || m.entry.may_carry(&message.topic));
        let deliveries = merge_overlaps(message, matched);
        let mut outcome = PublishOutcome {
            matched: deliveries.len(),
            dropped: 0,
            retain_refused,
        };
        for (session, delivery) in deliveries {
            if !session.deliver(delivery) {
                outcome.dropped += 1;
            }
        }
        outcome
    }

    /// Removes a topic's retained message, here and (when it was written
    /// there) in the store, without delivering anything (broker
    /// housekeeping, not a client's PUBLISH). A message kept in memory only,
    /// like a live presence, costs no store write.
    pub fn clear_retained(&self, topic: &str) {
        let Some(removed) = self.retained.remove(topic) else {
            return;
        };
        if let Some(outbound) = self.outbound.get().filter(|_| !removed.retain_in_memory) {
            outbound.retained_cleared(topic);
        }
        if let Some(store) = self.store.as_ref().filter(|_| !removed.retain_in_memory) {
            if let Err(e) = store.put_retained(topic, None) {
                tracing::error!(%topic, error = %e, "could not remove a retained message from the store");
            }
        }
    }

    /// Adds a subscription and sends the matching retained messages as the
    /// Retain Handling option asks. Returns whether it replaced an existing
    /// subscription of the same session to the same filter. With
    /// `check_read`, every message (retained ones too) must pass the
    /// subscriber's `may_read_acl`.
    pub fn subscribe(
        &self,
        session: &Arc<dyn Subscriber>,
        filter: &str,
        shared: Option<&SharedFilter<'_>>,
        options: SubscriptionOptions,
        id: Option<NonZeroU32>,
        check_read: bool,
    ) -> bool {
        let existed = self.insert(session, filter, shared, options, id, check_read);
        // Retained messages are not sent for shared subscriptions
        // ([MQTT-3.8.4-4] in 5.0, and as Mosquitto does for 3.1.1).
        let send_retained = shared.is_none()
            && match options.retain_handling {
                RetainHandling::AtSubscribe => true,
                RetainHandling::AtSubscribeNew => !existed,
                RetainHandling::NoAtSubscribe => false,
            };
        if send_retained {
            let deliver = move |session: &dyn Subscriber, messages: Vec<Arc<Message>>| {
                for message in messages {
                    if check_read && !session.may_read_acl(&message.topic) {
                        continue;
                    }
                    let qos = message.qos.less_value(options.qos);
                    session.deliver(Delivery {
                        message,
                        qos,
                        retain: true,
                        subscription_ids: id.into_iter().collect(),
                        shared: None,
                        store_seq: None,
                    });
                }
            };
            // An exact filter costs O(levels); a wildcard costs what it can
            // match, which can be everything. A walk that fits a small
            // budget runs here; a longer one on a blocking thread, never on
            // the threads that deliver other clients' messages. Either way
            // the deliveries are queued behind the SUBACK (the connection
            // writes its queue after its replies).
            match self.retained.matching_within(filter, INLINE_RETAINED_VISITS) {
                Some(messages) => deliver(&**session, messages),
                None => {
                    let (retained, session, filter) =
                        (self.retained.clone(), session.clone(), filter.to_string());
                    let walk = move || deliver(&*session, retained.matching(&filter));
                    match tokio::runtime::Handle::try_current() {
                        Ok(runtime) => drop(runtime.spawn_blocking(walk)),
                        Err(_) => walk(),
                    }
                }
            }
        }
        existed
    }

    /// Puts back a retained message loaded from the store.
    pub fn restore_retained(&self, message: Message) {
        if !message.is_expired(tokio::time::Instant::now()) {
            self.retained.set(&Arc::new(message));
        }
    }

    /// Puts back a subscription loaded from the store, without sending
    /// retained messages (the session already had them).
    pub(crate) fn restore_subscription(
        &self,
        session: &Arc<dyn Subscriber>,
        filter: &str,
        shared: Option<&SharedFilter<'_>>,
        options: SubscriptionOptions,
        id: Option<NonZeroU32>,
        check_read: bool,
    ) {
        self.insert(session, filter, shared, options, id, check_read);
    }

    /// Adds a subscription to the trie; true when it replaced one.
    fn insert(
        &self,
        session: &Arc<dyn Subscriber>,
        filter: &str,
        shared: Option<&SharedFilter<'_>>,
        options: SubscriptionOptions,
        id: Option<NonZeroU32>,
        check_read: bool,
    ) -> bool {
        let entry = SubEntry {
            subscriber: session.clone(),
            options,
            id,
            check_read,
        };
        let replaced = match shared {
            Some(s) => self.trie.insert(s.filter, Some(s.group), entry),
            None => self.trie.insert(filter, None, entry),
        };
        if !replaced {
            self.subscriptions
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        if let (false, Some(outbound)) = (replaced, self.outbound.get()) {
            match shared {
                Some(s) => outbound.interest(s.filter, Some(s.group), true),
                None => outbound.interest(filter, None, true),
            }
        }
        replaced
    }

    /// Removes a subscription; returns whether it existed.
    pub fn unsubscribe(
        &self,
        session: &Arc<dyn Subscriber>,
        filter: &str,
        shared: Option<&SharedFilter<'_>>,
    ) -> bool {
        let removed = match shared {
            Some(s) => self.trie.remove(s.filter, Some(s.group), session),
            None => self.trie.remove(filter, None, session),
        };
        if removed {
            self.subscriptions
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
        if let (true, Some(outbound)) = (removed, self.outbound.get()) {
            match shared {
                Some(s) => outbound.interest(s.filter, Some(s.group), false),
                None => outbound.interest(filter, None, false),
            }
        }
        removed
    }

    /// Hands a message that `from` received through a shared subscription,
    /// and will not acknowledge, to another member of the group (an online
    /// one if there is one). Returns false when no other member exists.
    pub fn redeliver_shared(&self, from: &Arc<dyn Subscriber>, mut delivery: Delivery) -> bool {
        let Some(key) = delivery.shared.clone() else {
            return false;
        };
        let topic = &delivery.message.topic;
        let mut members = self.trie.shared_members(&key, from);
        members.retain(|m| m.subscriber.may_read_topic(topic) && m.may_carry(topic));
        let Some(target) = members
            .iter()
            .find(|m| m.subscriber.is_online())
            .or(members.first())
        else {
            return false;
        };
        delivery.qos = delivery.message.qos.less_value(target.options.qos);
        delivery.store_seq = None;
        delivery.subscription_ids = target.id.into_iter().collect();
        target.subscriber.deliver(delivery);
        true
    }
}

/// Turns the raw matches into one delivery per session: where several
/// subscriptions of one session match ([MQTT-3.3.4-3] to -5), it gets one
/// copy at the highest granted QoS carrying every Subscription Identifier.
/// Subscriptions with No Local do not count for the publisher's own session.
/// Shared-subscription matches stay separate deliveries.
fn merge_overlaps(message: &Arc<Message>, matches: Matches) -> Vec<(Arc<dyn Subscriber>, Delivery)> {
    let Matches {
        list: mut matched,
        plain_filters,
    } = matches;
    matched.retain(|m| {
        !(m.entry.options.no_local
            && message
                .publisher
                .as_deref()
                .is_some_and(|p| p == m.entry.subscriber.client_id()))
    });
    if plain_filters > 1 {
        // Brings a session's subscriptions from several filters together.
        matched.sort_by_key(|m| {
            (
                Arc::as_ptr(&m.entry.subscriber) as *const () as usize,
                m.shared.is_some(),
            )
        });
    }
    let mut out: Vec<(Arc<dyn Subscriber>, Delivery)> = Vec::with_capacity(matched.len());
    for m in matched {
        let granted = m.entry.options.qos;
        let retain = message.retain && m.entry.options.retain_as_published;
        if m.shared.is_none() {
            if let Some((session, d)) = out.last_mut() {
                if d.shared.is_none() && same_subscriber(session, &m.entry.subscriber) {
                    d.qos = d.qos.max(message.qos.less_value(granted));
                    d.retain |= retain;
                    d.subscription_ids.extend(m.entry.id);
                    continue;
                }
            }
        }
        out.push((
            m.entry.subscriber.clone(),
            Delivery {
                message: message.clone(),
                qos: message.qos.less_value(granted),
                retain,
                subscription_ids: m.entry.id.into_iter().collect(),
                shared: m.shared,
                store_seq: None,
            },
        ));
    }
    out
}

/// The highest QoS a broker grants.
pub const MAX_QOS: QoS = QoS::ExactlyOnce;

#[cfg(test)]
mod tests;
