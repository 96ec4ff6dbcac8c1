//! Serving a client id on NATS: the node that serves it (connected, or a
//! persistent session waiting offline) answers other nodes' claims for it
//! (`sessions.rs` says what a claim is), and keeps answering "released"
//! for a moment after it let go of the id.
//!
//! Why the moment after: NATS routes a claim by the subscriptions it
//! knows. A claim that reached this node's client after it dropped the
//! subscription would get no answer, and the claiming node would wait
//! `HANDOVER_WAIT` for nothing: measured, 8 of 100 CONNECTs right after a
//! clean DISCONNECT on another node did. So a node that lets go drains the
//! subscription (NATS confirms the unsubscription with a PONG) and answers
//! what still comes "released": the claiming node asks again, and only the
//! nodes that serve the id now hear it. (A claim that another NATS server
//! routed here after this server forgot the subscription is dropped by
//! the server; the claiming node sends it again after `CLAIM_RESEND`.)

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::sessions::{GiveUp, HANDOVER_WAIT};

/// The header on the answer of a node that let go of the client id just
/// before the claim reached it.
pub(crate) const RELEASED_HEADER: &str = "Roomq-Released";

/// What the node claiming a client id asks for.
#[derive(Serialize, Deserialize)]
pub(crate) struct Claim {
    pub node: String,
    pub clean_start: bool,
}

/// One client id this node serves.
pub(crate) struct Held {
    task: AbortHandle,
    /// Dropped when this node lets go of the id: the task then answers
    /// "released" until NATS confirms the unsubscription.
    _serving: oneshot::Sender<()>,
}

impl Held {
    /// Stops answering at once (shutdown: the other nodes then read the
    /// session from the stream).
    pub fn abort(self) {
        self.task.abort();
    }
}

/// The client ids this node serves.
pub(crate) type HeldIds = Arc<Mutex<HashMap<String, Held>>>;

/// The task answering claims for one client id.
pub(crate) struct Holding {
    pub client: async_nats::Client,
    pub subject: String,
    pub client_id: String,
    pub node: Arc<str>,
    pub give_up: GiveUp,
    pub held: HeldIds,
}

impl Holding {
    /// Starts answering; returns the entry for `held` and a receiver that
    /// resolves once the NATS server has the subscription.
    pub fn start(self) -> (Held, oneshot::Receiver<()>) {
        let (subscribed_tx, subscribed) = oneshot::channel();
        let (serving, let_go) = oneshot::channel();
        let task = tokio::spawn(self.run(subscribed_tx, let_go));
        (
            Held {
                task: task.abort_handle(),
                _serving: serving,
            },
            subscribed,
        )
    }

    async fn run(self, subscribed_tx: oneshot::Sender<()>, mut let_go: oneshot::Receiver<()>) {
        let mut subscription = match self.client.subscribe(self.subject.clone()).await {
            Ok(s) => s,
            Err(error) => {
                tracing::error!(client_id = %self.client_id, %error, "cannot hold a client id on NATS: a connection on another node will not take it over");
                return;
            }
        };
        // An empty message (no claim: every holder ignores it) comes back
        // once the server has the subscription.
        let mut subscribed_tx = Some(subscribed_tx);
        let _ = self.client.publish(self.subject.clone(), Bytes::new()).await;
        loop {
            let request = tokio::select! {
                request = subscription.next() => match request {
                    Some(request) => request,
                    None => return,
                },
                _ = &mut let_go => break,
            };
            if request.payload.is_empty() {
                if let Some(subscribed) = subscribed_tx.take() {
                    let _ = subscribed.send(());
                }
                continue;
            }
            let Some(claim) = self.claim_of(&request) else {
                continue;
            };
            let handed = (self.give_up)(self.client_id.clone(), !claim.clean_start).await;
            let reply = handed
                .and_then(|h| postcard::to_allocvec(&h).ok())
                .unwrap_or_default();
            if let Some(to) = request.reply {
                if let Err(error) = self.client.publish(to, reply.into()).await {
                    tracing::warn!(client_id = %self.client_id, %error, "could not send a session to the node that took it over");
                }
            }
            tracing::info!(client_id = %self.client_id, to = %claim.node, "client connected on another node: connection closed here");
        }
        self.answer_released(subscription).await;
    }

    /// After this node let go of the id: unsubscribes, and answers the
    /// claims NATS still routes here "released", until the server confirms
    /// (at most `HANDOVER_WAIT`, if NATS is unreachable). A claim that
    /// comes while this node serves the id again is left to the new
    /// holder's subscription.
    async fn answer_released(&self, mut subscription: async_nats::Subscriber) {
        if subscription.drain().await.is_err() {
            return;
        }
        let until = Instant::now() + HANDOVER_WAIT;
        while let Ok(Some(request)) = tokio::time::timeout_at(until, subscription.next()).await {
            if self.claim_of(&request).is_none() || self.held.lock().contains_key(&self.client_id) {
                continue;
            }
            let Some(to) = request.reply else {
                continue;
            };
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(RELEASED_HEADER, "1");
            let _ = self.client.publish_with_headers(to, headers, Bytes::new()).await;
        }
    }

    /// The claim another node sent (not this node's own, not the probe).
    fn claim_of(&self, request: &async_nats::Message) -> Option<Claim> {
        if request.payload.is_empty() {
            return None;
        }
        let claim = postcard::from_bytes::<Claim>(&request.payload).ok()?;
        (*claim.node != *self.node).then_some(claim)
    }
}
