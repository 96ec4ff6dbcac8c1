//! Where a client id is served beyond this process: the seam cluster mode
//! (`cluster/`) implements, so that a CONNECT on one node takes over the
//! connection, and the session with it, from another. One node has no
//! other: `OneNode` claims nothing and holds nothing.

use serde::{Deserialize, Serialize};

use crate::chat::Pending;
use crate::store::{LoadedSession, QueuedRecord, QueuedRef, SessionRecord};

/// The client ids this node serves, among the nodes of a cluster. Session
/// records and queued messages reach the other nodes through the store
/// (cluster mode wraps it), not through this trait.
pub(crate) trait SessionDirectory: Send + Sync {
    /// Before a CONNECT for `client_id` is served here: the node serving
    /// it closes its connection; with Clean Start 0, its session comes back.
    fn claim<'a>(&'a self, client_id: &'a str, clean_start: bool) -> Pending<'a, Option<HandedOver>>;
    /// A session taken over is this node's to keep now: what the cluster
    /// kept of its queue under the old node's name is cleared first (the
    /// writes that follow make it again under this node's).
    fn adopting(&self, client_id: &str);
    /// This node serves `client_id` now; resolves once other nodes can
    /// find it here (bounded).
    fn hold_now<'a>(&'a self, client_id: &'a str) -> Pending<'a, ()>;
    /// This node serves `client_id` now (a session restored at start-up).
    fn hold(&self, client_id: &str);
    /// This node no longer serves `client_id`.
    fn release(&self, client_id: &str);
    /// Why this node should not get clients now (`/readyz`), if it should
    /// not: the cluster cannot be reached.
    fn unready(&self) -> Option<String>;
}

/// One node: every client id is this node's.
pub(crate) struct OneNode;

impl SessionDirectory for OneNode {
    fn claim<'a>(&'a self, _: &'a str, _: bool) -> Pending<'a, Option<HandedOver>> {
        Box::pin(std::future::ready(None))
    }

    fn adopting(&self, _: &str) {}

    fn hold_now<'a>(&'a self, _: &'a str) -> Pending<'a, ()> {
        Box::pin(std::future::ready(()))
    }

    fn hold(&self, _: &str) {}

    fn release(&self, _: &str) {}

    fn unready(&self) -> Option<String> {
        None
    }
}

/// A session as it travels from the node that held it to the new one.
#[derive(Serialize, Deserialize)]
pub(crate) struct HandedOver {
    pub record: SessionRecord,
    pub messages: Vec<(u64, QueuedRecord)>,
    pub incoming_qos2: Vec<u16>,
}

impl HandedOver {
    /// The session to restore, its messages named by the body ids
    /// `new_body` gives; and the messages with their seqs and body ids.
    pub fn into_loaded(
        self,
        client_id: &str,
        new_body: &mut dyn FnMut() -> u64,
    ) -> (LoadedSession, Vec<(u64, u64, QueuedRecord)>) {
        let records: Vec<_> = self
            .messages
            .into_iter()
            .map(|(seq, record)| (seq, new_body(), record))
            .collect();
        let loaded = LoadedSession {
            client_id: client_id.to_string(),
            record: self.record,
            messages: records
                .iter()
                .map(|(seq, body, record)| (*seq, QueuedRef::of(record, *body)))
                .collect(),
            incoming_qos2: self.incoming_qos2,
        };
        (loaded, records)
    }
}
