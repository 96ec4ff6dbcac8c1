//! Client ids and sessions across nodes.
//!
//! The node that serves a client id (connected, or a persistent session
//! waiting offline) listens on that id's NATS subject. A node accepting a
//! CONNECT for the id first asks that subject:
//! - nobody listens: NATS answers "no responders" at once, and the node
//!   goes on as a single broker would;
//! - the holder answers: it closes its connection (5.0 DISCONNECT 0x8E
//!   Session taken over), and, when the new CONNECT continues the session
//!   (Clean Start 0), sends the session over (subscriptions, room cursors,
//!   unacknowledged messages, QoS 2 ids) and forgets it. The new node
//!   restores it and answers Session Present = 1.
//!
//! - nobody answers and the CONNECT continues a session: the node reads the
//!   session's record from the sessions stream (the holder died). Every
//!   persistent session's record (subscriptions, expiry, will, room
//!   cursors) is written there as it is to a node's store, and acknowledged
//!   before the CONNACK or SUBACK that promises it, and so are its plain
//!   QoS 1/2 messages (`queues.rs`), read back with it (room messages
//!   come back from the room log, after the cursors).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::task::AbortHandle;

use super::names::Names;
use super::queues::Queues;
use super::writer::{Write, Writer};
use crate::store::{unix_ms_now, LoadedSession, QueuedRecord, SessionRecord};

/// How long a CONNECT waits for the node holding its session.
const HANDOVER_WAIT: Duration = Duration::from_secs(5);
/// Longest a CONNACK waits for NATS to have this node's hold on the id.
const HOLD_WAIT: Duration = Duration::from_secs(2);

/// A session as it travels from the node that held it to the new one.
#[derive(Serialize, Deserialize)]
pub(crate) struct HandedOver {
    pub record: SessionRecord,
    pub messages: Vec<(u64, QueuedRecord)>,
    pub incoming_qos2: Vec<u16>,
}

impl HandedOver {
    pub fn into_loaded(self, client_id: &str) -> LoadedSession {
        LoadedSession {
            client_id: client_id.to_string(),
            record: self.record,
            messages: self.messages,
            incoming_qos2: self.incoming_qos2,
        }
    }
}

/// What the new node asks for.
#[derive(Serialize, Deserialize)]
struct Claim {
    node: String,
    clean_start: bool,
}

/// Gives up the client id here for another node: closes the connection,
/// and with `continues` returns the session to send over.
pub(crate) type GiveUp = Arc<dyn Fn(String, bool) -> BoxFuture<'static, Option<HandedOver>> + Send + Sync>;

pub(crate) struct Sessions {
    names: Names,
    node: Arc<str>,
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
    writer: Arc<Writer>,
    /// Where a dead node's sessions' plain messages are read back.
    queues: Arc<Queues>,
    held: Mutex<HashMap<String, AbortHandle>>,
    give_up: std::sync::OnceLock<GiveUp>,
    /// Ids of session writes (JetStream de-duplicates a writer's retry).
    writes: std::sync::atomic::AtomicU64,
    boot: u64,
}

impl Sessions {
    pub fn new(
        names: Names,
        node: Arc<str>,
        js: async_nats::jetstream::Context,
        writer: Arc<Writer>,
        queues: Arc<Queues>,
    ) -> Sessions {
        Sessions {
            names,
            node,
            client: js.client(),
            js,
            writer,
            queues,
            held: Mutex::default(),
            give_up: std::sync::OnceLock::new(),
            writes: std::sync::atomic::AtomicU64::new(0),
            boot: unix_ms_now(),
        }
    }

    /// Writes a persistent session's record to the sessions stream (the
    /// acknowledgement that promises it waits for JetStream).
    pub fn save(&self, client_id: &str, record: &SessionRecord) {
        match postcard::to_allocvec(record) {
            Ok(bytes) => self.write(client_id, bytes.into()),
            Err(error) => {
                tracing::error!(%client_id, %error, "cannot encode a session record for the cluster")
            }
        }
    }

    /// Removes a session's record (the session ended).
    pub fn forget(&self, client_id: &str) {
        self.write(client_id, Bytes::new());
    }

    fn write(&self, client_id: &str, payload: Bytes) {
        let n = self.writes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let written = self.writer.write(Write::publish(
            self.names.session(client_id),
            format!("s-{}-{}-{n}", self.node, self.boot),
            payload,
        ));
        if written.is_err() {
            tracing::error!(%client_id, "session record not written to the cluster (write buffer full)");
        }
    }

    /// The stored record of `client_id`'s session, unless it expired.
    async fn stored(&self, client_id: &str) -> Option<HandedOver> {
        let stream = self.js.get_stream(&self.names.sessions_stream).await.ok()?;
        let message = stream
            .get_last_raw_message_by_subject(&self.names.session(client_id))
            .await
            .ok()?;
        if message.payload.is_empty() {
            return None;
        }
        let record: SessionRecord = match postcard::from_bytes(&message.payload) {
            Ok(record) => record,
            Err(error) => {
                tracing::error!(%client_id, %error, "undecodable session record in the sessions stream; starting a new session");
                return None;
            }
        };
        let expired = record.offline_since_unix_ms.is_some_and(|since| {
            record.expiry_secs != u32::MAX
                && since.saturating_add(u64::from(record.expiry_secs) * 1000) < unix_ms_now()
        });
        if expired {
            return None;
        }
        let messages = match self.queues.load(client_id).await {
            Ok(messages) => messages,
            Err(error) => {
                tracing::error!(%client_id, %error, "could not read the session's queued messages from the cluster; resuming without them");
                Vec::new()
            }
        };
        Some(HandedOver {
            record,
            messages,
            incoming_qos2: Vec::new(),
        })
    }

    pub fn set_give_up(&self, give_up: GiveUp) {
        let _ = self.give_up.set(give_up);
    }

    /// This node serves `client_id` now: answer other nodes' claims, from
    /// the moment the server has the subscription (waited for at most
    /// `HOLD_WAIT`, so that a CONNECT on another node right after this
    /// one's CONNACK finds it).
    pub async fn hold_now(&self, client_id: &str) {
        if let Some(subscribed) = self.hold_with_signal(client_id) {
            let _ = tokio::time::timeout(HOLD_WAIT, subscribed).await;
        }
    }

    /// This node serves `client_id` now: answer other nodes' claims.
    pub fn hold(&self, client_id: &str) {
        let _ = self.hold_with_signal(client_id);
    }

    /// Starts holding `client_id`; the receiver resolves once the NATS
    /// server has the subscription. `None` when it was held already.
    fn hold_with_signal(&self, client_id: &str) -> Option<tokio::sync::oneshot::Receiver<()>> {
        let mut held = self.held.lock();
        if held.contains_key(client_id) {
            return None;
        }
        let give_up = self.give_up.get().cloned()?;
        let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
        let (client, subject, id) = (
            self.client.clone(),
            self.names.client(client_id),
            client_id.to_string(),
        );
        let node = self.node.clone();
        let task = tokio::spawn(async move {
            let subject_of_probe = subject.clone();
            let mut subscription = match client.subscribe(subject).await {
                Ok(s) => s,
                Err(error) => {
                    tracing::error!(client_id = %id, %error, "cannot hold a client id on NATS: a connection on another node will not take it over");
                    return;
                }
            };
            // An empty message (no claim: every holder ignores it) comes
            // back once the server has the subscription.
            let mut subscribed_tx = Some(subscribed_tx);
            let _ = client.publish(subject_of_probe, Bytes::new()).await;
            while let Some(request) = subscription.next().await {
                if request.payload.is_empty() {
                    if let Some(subscribed) = subscribed_tx.take() {
                        let _ = subscribed.send(());
                    }
                    continue;
                }
                let Ok(claim) = postcard::from_bytes::<Claim>(&request.payload) else {
                    continue;
                };
                if *claim.node == *node {
                    continue;
                }
                let handed = give_up(id.clone(), !claim.clean_start).await;
                let reply = handed
                    .and_then(|h| postcard::to_allocvec(&h).ok())
                    .unwrap_or_default();
                if let Some(to) = request.reply {
                    if let Err(error) = client.publish(to, reply.into()).await {
                        tracing::warn!(client_id = %id, %error, "could not send a session to the node that took it over");
                    }
                }
                tracing::info!(client_id = %id, to = %claim.node, "client connected on another node: connection closed here");
            }
        });
        held.insert(client_id.to_string(), task.abort_handle());
        Some(subscribed)
    }

    /// Stops answering for every client id (shutdown): the other nodes
    /// then read the sessions from the stream.
    pub fn stop(&self) {
        for (_, task) in self.held.lock().drain() {
            task.abort();
        }
    }

    /// This node no longer serves `client_id`.
    pub fn release(&self, client_id: &str) {
        if let Some(task) = self.held.lock().remove(client_id) {
            task.abort();
        }
    }

    /// Asks the node holding `client_id` (if any) to let go of it; returns
    /// its session when the CONNECT continues it.
    pub async fn claim(&self, client_id: &str, clean_start: bool) -> Option<HandedOver> {
        if self.held.lock().contains_key(client_id) {
            // This node holds it: a local takeover.
            return None;
        }
        let claim = Claim {
            node: self.node.to_string(),
            clean_start,
        };
        let payload: Bytes = postcard::to_allocvec(&claim).ok()?.into();
        let request = self.client.request(self.names.client(client_id), payload);
        match tokio::time::timeout(HANDOVER_WAIT, request).await {
            Ok(Ok(reply)) if !reply.payload.is_empty() => {
                match postcard::from_bytes::<HandedOver>(&reply.payload) {
                    Ok(handed) => Some(handed),
                    Err(error) => {
                        tracing::error!(%client_id, %error, "undecodable session from another node; starting a new one");
                        None
                    }
                }
            }
            Ok(Ok(_)) => None,
            Ok(Err(error)) if error.kind() == async_nats::RequestErrorKind::NoResponders => {
                // No node holds it (it died, or the session was never
                // here): the last record written, if any.
                if clean_start {
                    return None;
                }
                let stored = self.stored(client_id).await;
                if stored.is_some() {
                    tracing::info!(%client_id, "session restored from the sessions stream (its node is gone)");
                }
                stored
            }
            Ok(Err(error)) => {
                tracing::warn!(%client_id, %error, "no answer from the node holding this client id; going on without its session");
                None
            }
            Err(_) => {
                tracing::warn!(%client_id, "the node holding this client id did not answer in time; going on without its session");
                None
            }
        }
    }
}
