//! Persistent sessions' unacknowledged plain messages, kept in JetStream
//! as well as in the node's store, so that they outlive the node.
//!
//! Room messages need nothing of this (a session keeps cursors into the
//! room log). A plain QoS 1 or 2 message queued for a persistent session
//! is written to the stream `…_QUEUES`, one subject per message
//! (`{name}.queue.{client}.{node}.{seq}`, `seq` being the node's store
//! sequence), before the publisher's acknowledgement (the writer and the
//! group commit); a change (a packet id given) replaces it; its
//! acknowledgement removes it. A session taken over from a dead node is
//! read back from there (`load`); the new node clears the client's
//! messages and writes them again under its own name, so a node that
//! comes back later cannot remove them.
//!
//! The mirroring is done by `mirror.rs`, a store that passes every
//! session-queue write on to `Queues`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures_util::StreamExt;

use super::names::Names;
use super::writer::{Write, Writer};
use crate::store::QueuedRecord;

/// Longest a load waits for the next message of its consumer.
const LOAD_IDLE: Duration = Duration::from_secs(2);

pub(crate) struct Queues {
    names: Names,
    node: Arc<str>,
    stream: Arc<str>,
    js: jetstream::Context,
    writer: Arc<Writer>,
    writes: AtomicU64,
    boot: u64,
}

impl Queues {
    pub fn new(names: Names, node: Arc<str>, js: jetstream::Context, writer: Arc<Writer>) -> Queues {
        Queues {
            stream: names.queues_stream.as_str().into(),
            names,
            node,
            js,
            writer,
            writes: AtomicU64::new(0),
            boot: crate::store::unix_ms_now(),
        }
    }

    /// Writes (or replaces) message `seq` of `client_id`'s queue.
    pub fn put(&self, client_id: &str, seq: u64, message: &QueuedRecord) {
        let payload = match postcard::to_allocvec(message) {
            Ok(payload) => payload,
            Err(error) => {
                tracing::error!(%client_id, seq, %error, "cannot encode a queued message for the cluster");
                return;
            }
        };
        let n = self.writes.fetch_add(1, Ordering::Relaxed);
        let write = Write::publish(
            self.names.queued(client_id, &self.node, seq),
            format!("q-{}-{}-{n}", self.node, self.boot),
            payload.into(),
        );
        self.send(client_id, write);
    }

    /// Removes message `seq` of `client_id`'s queue (acknowledged).
    pub fn remove(&self, client_id: &str, seq: u64) {
        let filter = self.names.queued(client_id, &self.node, seq);
        self.send(client_id, Write::remove(self.stream.clone(), filter, false));
    }

    /// Removes what this node wrote of `client_id`'s queue (the session
    /// ended here, or moved to another node, which wrote its own).
    pub fn remove_session(&self, client_id: &str) {
        let filter = self.names.queue_of_node(client_id, &self.node);
        self.send(client_id, Write::remove(self.stream.clone(), filter, false));
    }

    /// Removes every node's messages of `client_id`'s queue before anything
    /// written after it (a session taken over writes its queue again).
    pub fn clear_before_adopting(&self, client_id: &str) {
        let filter = self.names.queue(client_id);
        self.send(client_id, Write::remove(self.stream.clone(), filter, true));
    }

    fn send(&self, client_id: &str, write: Write) {
        if self.writer.write(write).is_err() {
            tracing::error!(%client_id, "queued message not written to the cluster (cluster.write_buffer_bytes full)");
        }
    }

    /// `client_id`'s queued messages as the stream holds them, in queue
    /// order (the writing node's store sequence).
    pub async fn load(&self, client_id: &str) -> Result<Vec<(u64, QueuedRecord)>, String> {
        let stream = self
            .js
            .get_stream_no_info(&*self.stream)
            .await
            .map_err(|e| e.to_string())?;
        let consumer = stream
            .create_consumer(consumer::push::OrderedConfig {
                deliver_subject: self.js.client().new_inbox(),
                filter_subject: self.names.queue(client_id),
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        // As the consumer was made: it delivers at once, so asking later
        // would count only what is still on its way.
        let count = consumer.cached_info().num_pending;
        let mut out = Vec::new();
        if count == 0 {
            return Ok(out);
        }
        let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
        let mut read = 0u64;
        while read < count {
            let message = match tokio::time::timeout(LOAD_IDLE, messages.next()).await {
                Ok(Some(message)) => message.map_err(|e| e.to_string())?,
                Ok(None) => return Err("the consumer ended".into()),
                Err(_) => return Err(format!("{read} of {count} queued messages read")),
            };
            read += 1;
            let Some(seq) = Names::seq_of_queued(&message.subject) else {
                continue;
            };
            match postcard::from_bytes::<QueuedRecord>(&message.payload) {
                Ok(record) => out.push((seq, record)),
                Err(error) => {
                    tracing::error!(%client_id, subject = %message.subject, %error, "undecodable queued message skipped")
                }
            }
        }
        out.sort_by_key(|(seq, _)| *seq);
        Ok(out)
    }
}
