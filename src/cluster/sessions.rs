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
//!   restores it and answers Session Present = 1 (`holding.rs`);
//! - a node that let go of the id just then answers "released", or NATS
//!   routed the claim where nobody listens any more: the claim is sent
//!   again, to the nodes that serve the id now (`ask_holder`);
//! - nobody answers and the CONNECT continues a session: the node reads the
//!   session's record from the sessions stream (the holder died). Every
//!   persistent session's record (subscriptions, expiry, will, room
//!   cursors) is written there as it is to a node's store, and acknowledged
//!   before the CONNACK or SUBACK that promises it, and so are its plain
//!   QoS 1/2 messages (`queues.rs`), read back with it (room messages
//!   come back from the room log, after the cursors).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use tokio::time::Instant;

use super::holding::{Claim, HeldIds, Holding, RELEASED_HEADER};
use super::names::Names;
use super::queues::Queues;
use super::writer::{Write, Writer};
use crate::context::HandedOver;
use crate::store::{unix_ms_now, SessionRecord};

/// How long a CONNECT waits for the node holding its session.
pub(crate) const HANDOVER_WAIT: Duration = Duration::from_secs(5);
/// A claim without an answer this long is sent again (`ask_holder`).
const CLAIM_RESEND: Duration = Duration::from_millis(250);
/// Most times one CONNECT sends its claim.
const MAX_CLAIMS: usize = 32;
/// Longest a CONNACK waits for NATS to have this node's hold on the id.
const HOLD_WAIT: Duration = Duration::from_secs(2);

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
    held: HeldIds,
    give_up: std::sync::OnceLock<GiveUp>,
    /// Claims no holder answered in time (`unanswered_claims`).
    unanswered: std::sync::atomic::AtomicU64,
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
            held: HeldIds::default(),
            give_up: std::sync::OnceLock::new(),
            unanswered: std::sync::atomic::AtomicU64::new(0),
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
        // Decoded as the store does, so a record the previous version
        // wrote (before the owner's `account`) still reads.
        let record: SessionRecord = match crate::store::decode_session(client_id.as_bytes(), &message.payload)
        {
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
        let (entry, subscribed) = Holding {
            client: self.client.clone(),
            subject: self.names.client(client_id),
            client_id: client_id.to_string(),
            node: self.node.clone(),
            give_up: self.give_up.get().cloned()?,
            held: self.held.clone(),
        }
        .start();
        held.insert(client_id.to_string(), entry);
        Some(subscribed)
    }

    /// Stops answering for every client id (shutdown): the other nodes
    /// then read the sessions from the stream.
    pub fn stop(&self) {
        for (_, held) in self.held.lock().drain() {
            held.abort();
        }
    }

    /// This node no longer serves `client_id` (its task answers
    /// "released" until NATS confirms, `holding.rs`).
    pub fn release(&self, client_id: &str) {
        self.held.lock().remove(client_id);
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
        match self.ask_holder(client_id, payload).await {
            Answer::Session(bytes) => match postcard::from_bytes::<HandedOver>(&bytes) {
                Ok(handed) => Some(handed),
                Err(error) => {
                    tracing::error!(%client_id, %error, "undecodable session from another node; starting a new one");
                    None
                }
            },
            Answer::NothingToHand => None,
            Answer::NoHolder => {
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
            Answer::Failed(error) => {
                tracing::warn!(%client_id, %error, "no answer from the node holding this client id; going on without its session");
                None
            }
            Answer::TimedOut => {
                self.unanswered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(%client_id, "the node holding this client id did not answer in time; going on without its session");
                None
            }
        }
    }

    /// Sends the claim to the subject of `client_id` and waits for the
    /// holder's answer, on an inbox of its own, so an answer to an earlier
    /// send still counts. The claim is sent again at once after a
    /// "released" answer (a node that let go of the id just then,
    /// `holding.rs`), and every `CLAIM_RESEND` without an answer: a NATS
    /// server that had not yet heard that a node let go of the id may
    /// route the claim to that node's server, which drops it. A holder
    /// answers its claims in order, so its first answer (the session)
    /// comes before the empty ones to the sends after it.
    async fn ask_holder(&self, client_id: &str, claim: Bytes) -> Answer {
        let subject = self.names.client(client_id);
        let inbox = self.client.new_inbox();
        let mut answers = match self.client.subscribe(inbox.clone()).await {
            Ok(answers) => answers,
            Err(error) => return Answer::Failed(error.to_string()),
        };
        let until = Instant::now() + HANDOVER_WAIT;
        let mut sent = 0;
        let mut send_at = Instant::now();
        loop {
            if sent < MAX_CLAIMS && Instant::now() >= send_at {
                let published = self
                    .client
                    .publish_with_reply(subject.clone(), inbox.clone(), claim.clone())
                    .await;
                if let Err(error) = published {
                    return Answer::Failed(error.to_string());
                }
                sent += 1;
                send_at = Instant::now() + CLAIM_RESEND;
            }
            let wait_until = if sent < MAX_CLAIMS {
                send_at.min(until)
            } else {
                until
            };
            let answer = match tokio::time::timeout_at(wait_until, answers.next()).await {
                Ok(Some(answer)) => answer,
                Ok(None) => return Answer::Failed("the answer subscription ended".into()),
                Err(_) if Instant::now() >= until => return Answer::TimedOut,
                Err(_) => continue,
            };
            if answer.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
                return Answer::NoHolder;
            }
            let released = answer
                .headers
                .as_ref()
                .is_some_and(|h| h.get(RELEASED_HEADER).is_some());
            if released {
                send_at = Instant::now();
                continue;
            }
            return match answer.payload.is_empty() {
                true => Answer::NothingToHand,
                false => Answer::Session(answer.payload),
            };
        }
    }

    /// Claims of this node that the holder did not answer within
    /// `HANDOVER_WAIT` (`$SYS/broker/cluster/takeovers/unanswered`).
    pub fn unanswered_claims(&self) -> u64 {
        self.unanswered.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// What became of a claim.
enum Answer {
    /// The holder let go and sent the session (the CONNECT continues it).
    Session(Bytes),
    /// The holder let go; it had nothing to send.
    NothingToHand,
    /// No node serves the id.
    NoHolder,
    Failed(String),
    TimedOut,
}
