//! Plain MQTT messages between the nodes of a cluster, on core NATS.
//!
//! A node subscribes, on NATS, to the subjects of its local subscriptions'
//! filters (`names.rs`), so NATS sends a message only to nodes that have a
//! subscriber for it: the cost of a message does not grow with nodes that
//! do not want it. Every message published on a node (but room messages,
//! which travel through the room log, and `$SYS`) is delivered to the
//! node's own subscribers at once and forwarded on NATS; other nodes
//! deliver it to theirs (`Router::publish_remote`).
//!
//! Shared subscriptions: a node with members of `$share/{group}/{filter}`
//! joins a NATS queue group for it, so NATS hands each message to one node,
//! which hands it to one of its members. The publishing node's own members
//! get theirs the same way (NATS echoes to the publisher's connection).
//!
//! Overlapping filters give a node one NATS copy per subscription; each
//! copy carries its origin node and a counter, so the node delivers it
//! once. Retained messages also go to the retained stream (`retained.rs`),
//! and a client's PUBACK waits for JetStream to store them.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use futures_util::StreamExt;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use super::names::{token, Names};
use super::writer::{Write, Writer};
use crate::message::{Message, SharedGroupKey};
use crate::router::{Outbound, RemoteScope};
use crate::store::MessageRecord;

/// How many recent counters per origin node are remembered to drop the
/// extra copies of overlapping subscriptions.
const SEEN_WINDOW: u64 = 8192;

/// A plain message on the wire between nodes.
#[derive(Serialize, Deserialize)]
pub(crate) struct Wire {
    origin: String,
    counter: u64,
    record: MessageRecord,
    ephemeral: bool,
    retain_in_memory: bool,
}

impl Wire {
    fn into_message(self) -> Message {
        let mut message = self.record.into_message();
        message.ephemeral = self.ephemeral;
        message.retain_in_memory = self.retain_in_memory;
        message
    }
}

/// Delivers a message from another node to this node's subscribers.
pub(crate) type Deliver = Arc<dyn Fn(Message, RemoteScope<'_>) + Send + Sync>;

/// One NATS subscription this node holds, and how many local
/// subscriptions need it.
struct Interest {
    count: usize,
    task: AbortHandle,
}

/// Counters of one origin node recently delivered here.
#[derive(Default)]
struct Seen {
    high: u64,
    recent: BTreeSet<u64>,
}

impl Seen {
    /// Whether `counter` is new; remembers it.
    fn first_time(&mut self, counter: u64) -> bool {
        if counter + SEEN_WINDOW <= self.high || !self.recent.insert(counter) {
            return false;
        }
        self.high = self.high.max(counter);
        while self.recent.first().is_some_and(|c| c + SEEN_WINDOW <= self.high) {
            self.recent.pop_first();
        }
        true
    }
}

/// What `forward` hands to the sending task.
struct Outgoing {
    subject: String,
    message: Arc<Message>,
}

pub(crate) struct Plain {
    names: Names,
    node: Arc<str>,
    client: async_nats::Client,
    writer: Arc<Writer>,
    outgoing: mpsc::UnboundedSender<Outgoing>,
    /// Payload bytes waiting in `outgoing`, bounded by
    /// `cluster.forward_buffer_bytes`.
    buffered: Arc<AtomicUsize>,
    buffer_limit: usize,
    /// Messages not forwarded because the buffer was full.
    pub dropped: AtomicU64,
    interests: Mutex<HashMap<(String, Option<String>), Interest>>,
    seen: Arc<Mutex<HashMap<String, Seen>>>,
    deliver: OnceLock<Deliver>,
    /// Ids of retained writes.
    retained_writes: AtomicU64,
    boot: u64,
    sender: parking_lot::Mutex<Option<AbortHandle>>,
}

impl Plain {
    pub fn start(
        names: Names,
        node: Arc<str>,
        client: async_nats::Client,
        writer: Arc<Writer>,
        buffer_limit: usize,
    ) -> Arc<Plain> {
        let (outgoing, rx) = mpsc::unbounded_channel();
        let plain = Arc::new(Plain {
            names,
            node,
            client,
            writer,
            outgoing,
            buffered: Arc::new(AtomicUsize::new(0)),
            buffer_limit,
            dropped: AtomicU64::new(0),
            interests: Mutex::default(),
            seen: Arc::default(),
            deliver: OnceLock::new(),
            retained_writes: AtomicU64::new(0),
            boot: crate::store::unix_ms_now(),
            sender: parking_lot::Mutex::new(None),
        });
        let sender = tokio::spawn(send_loop(
            plain.client.clone(),
            plain.node.clone(),
            plain.buffered.clone(),
            rx,
        ));
        *plain.sender.lock() = Some(sender.abort_handle());
        plain
    }

    /// Stops forwarding and every NATS subscription (shutdown).
    pub fn stop(&self) {
        if let Some(sender) = self.sender.lock().take() {
            sender.abort();
        }
        for (_, interest) in self.interests.lock().drain() {
            interest.task.abort();
        }
    }

    /// Where messages from other nodes go (set once the router exists);
    /// also subscribes to the subject of over-long topics.
    pub fn set_deliver(&self, deliver: Deliver) {
        let _ = self.deliver.set(deliver);
        self.subscribe(self.names.long_messages(), None, None);
    }

    fn subscribe(&self, subject: String, queue: Option<String>, shared: Option<SharedGroupKey>) {
        let mut interests = self.interests.lock();
        let key = (subject.clone(), queue.clone());
        if let Some(interest) = interests.get_mut(&key) {
            interest.count += 1;
            return;
        }
        let Some(deliver) = self.deliver.get().cloned() else {
            return;
        };
        let (client, node, seen) = (self.client.clone(), self.node.clone(), self.seen.clone());
        let task = tokio::spawn(async move {
            let subscription = match &queue {
                Some(q) => client.queue_subscribe(subject.clone(), q.clone()).await,
                None => client.subscribe(subject.clone()).await,
            };
            let mut subscription = match subscription {
                Ok(s) => s,
                Err(error) => {
                    tracing::error!(%subject, %error, "cannot subscribe on NATS; messages from other nodes for this filter are missed");
                    return;
                }
            };
            while let Some(nats) = subscription.next().await {
                let Ok(wire) = postcard::from_bytes::<Wire>(&nats.payload) else {
                    tracing::warn!(subject = %nats.subject, "undecodable message from another node dropped");
                    continue;
                };
                match &shared {
                    Some(key) => deliver(wire.into_message(), RemoteScope::Shared(key)),
                    None => {
                        // This node delivered its own messages already;
                        // overlapping subscriptions bring extra copies.
                        if *wire.origin == *node {
                            continue;
                        }
                        let first = seen
                            .lock()
                            .entry(wire.origin.clone())
                            .or_default()
                            .first_time(wire.counter);
                        if first {
                            deliver(wire.into_message(), RemoteScope::Plain);
                        }
                    }
                }
            }
        });
        interests.insert(
            key,
            Interest {
                count: 1,
                task: task.abort_handle(),
            },
        );
    }

    fn unsubscribe(&self, subject: String, queue: Option<String>) {
        let mut interests = self.interests.lock();
        let key = (subject, queue);
        if let Some(interest) = interests.get_mut(&key) {
            interest.count -= 1;
            if interest.count == 0 {
                interest.task.abort();
                interests.remove(&key);
            }
        }
    }

    /// Writes a retained message (or, empty, its removal) to the retained
    /// stream; the publisher's acknowledgement waits for it.
    fn write_retained(&self, topic: &str, payload: Bytes) -> bool {
        let id = self.retained_writes.fetch_add(1, Ordering::Relaxed);
        self.writer
            .write(Write::publish(
                self.names.retained(topic),
                format!("r-{}-{}-{id}", self.node, self.boot),
                payload,
            ))
            .is_ok()
    }
}

impl Outbound for Plain {
    fn forward(&self, message: &Arc<Message>) -> bool {
        if message.topic.starts_with("$SYS/") {
            return true;
        }
        let mut retained_stored = true;
        if message.retain && !message.retain_in_memory {
            let payload = if message.payload.is_empty() {
                Bytes::new()
            } else {
                match postcard::to_allocvec(&MessageRecord::from_message(message)) {
                    Ok(bytes) => bytes.into(),
                    Err(error) => {
                        tracing::error!(topic = %message.topic, %error, "cannot encode a retained message for the cluster");
                        Bytes::new()
                    }
                }
            };
            retained_stored = self.write_retained(&message.topic, payload);
        }
        let size = message.footprint();
        if self.buffered.fetch_add(size, Ordering::AcqRel) + size > self.buffer_limit {
            self.buffered.fetch_sub(size, Ordering::AcqRel);
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed);
            if dropped.is_power_of_two() {
                tracing::warn!(topic = %message.topic, dropped = dropped + 1, "cluster.forward_buffer_bytes full: a message reached only this node's subscribers");
            }
            return retained_stored;
        }
        let outgoing = Outgoing {
            subject: self.names.message(&message.topic),
            message: message.clone(),
        };
        if self.outgoing.send(outgoing).is_err() {
            self.buffered.fetch_sub(size, Ordering::AcqRel);
        }
        retained_stored
    }

    fn retained_cleared(&self, topic: &str) {
        if !self.write_retained(topic, Bytes::new()) {
            tracing::warn!(%topic, "a retained message was removed here but not in the cluster");
        }
    }

    fn interest(&self, filter: &str, group: Option<&str>, added: bool) {
        let queue = group.map(|g| format!("share-{}", token(g)));
        for subject in self.names.filter(filter) {
            if added {
                let shared = group.map(|g| SharedGroupKey {
                    group: g.into(),
                    filter: filter.into(),
                });
                self.subscribe(subject, queue.clone(), shared);
            } else {
                self.unsubscribe(subject, queue.clone());
            }
        }
    }
}

/// Numbers and sends forwarded messages in order.
async fn send_loop(
    client: async_nats::Client,
    node: Arc<str>,
    buffered: Arc<AtomicUsize>,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
) {
    let mut counter = 0u64;
    while let Some(Outgoing { subject, message }) = rx.recv().await {
        counter += 1;
        buffered.fetch_sub(message.footprint(), Ordering::AcqRel);
        let wire = Wire {
            origin: node.to_string(),
            counter,
            record: MessageRecord::from_message(&message),
            ephemeral: message.ephemeral,
            retain_in_memory: message.retain_in_memory,
        };
        let bytes = match postcard::to_allocvec(&wire) {
            Ok(bytes) => bytes,
            Err(error) => {
                tracing::error!(topic = %message.topic, %error, "cannot encode a message for the cluster");
                continue;
            }
        };
        if let Err(error) = client.publish(subject, bytes.into()).await {
            tracing::warn!(topic = %message.topic, %error, "a message could not be forwarded to the other nodes");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Seen;

    #[test]
    fn a_counter_is_delivered_once_within_the_window() {
        let mut seen = Seen::default();
        assert!(seen.first_time(1));
        assert!(!seen.first_time(1));
        assert!(seen.first_time(3));
        assert!(seen.first_time(2));
        assert!(!seen.first_time(2));
    }
}
