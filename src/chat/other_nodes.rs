//! What the chat layer needs from the other nodes of a cluster, as traits
//! that cluster mode (`cluster/`) implements: room messages posted into a
//! shared log, this node catching up with a room before it reads it, and
//! device counts for presence. Without a cluster there is none of them
//! (`Chat::open` gets `None`) and the chat layer keeps every room itself.
//! What comes back (room messages in the log's order, other nodes'
//! counts) is applied through `Chat::apply_replicated` and
//! `Presence::remote_count`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::RoomInterest;
use crate::store::{RoomRecord, StoreError};

/// A future a trait object can return.
pub(crate) type Pending<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the chat layer shares with the other nodes of a cluster
/// (`Chat::open`); the default, nothing: one node.
#[derive(Default)]
pub(crate) struct Replication {
    pub rooms: Option<Arc<dyn RoomReplication>>,
    pub presence: Option<Arc<dyn PresenceReplication>>,
}

/// Room logs shared by the nodes of a cluster: a post goes to the shared
/// log (which gives its `seq`), and comes back to every node following
/// the room in the log's order.
pub(crate) trait RoomReplication: Send + Sync {
    /// Writes `record` to `room`'s shared log; `dedup_key` makes a
    /// client's retry one message, `publisher` is the publishing client.
    fn post(
        &self,
        room: &str,
        record: RoomRecord,
        dedup_key: Option<&str>,
        publisher: Option<&str>,
    ) -> Result<(), StoreError>;

    /// Takes these `seq`s (a deleted message and its edits) out of the
    /// shared log, after the writes queued before them.
    fn delete_posted(&self, seqs: &[u64]);

    /// This node trimmed its copy of `room` below `below`
    /// (`room_max_messages`, `room_max_age_secs`): the shared log drops
    /// what it holds of the room below it too. Trims count the entries a
    /// log keeps, so reactions (not kept) never push messages out.
    fn trimmed(&self, room: &str, below: u64);

    /// Resolves once this node follows `rooms` and has caught up with
    /// their logs (or after a bound: then it goes on with what it has).
    fn ready<'a>(&'a self, rooms: &'a RoomInterest) -> Pending<'a, ()>;
}

/// One node's devices for one user (cluster mode: what nodes tell each
/// other).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct DeviceCount {
    pub node: String,
    pub user: String,
    pub devices: u64,
    /// The status the user set on that node, and since when.
    pub status: String,
    pub since: u64,
    /// Whether the user leaves a lasting "offline" record.
    pub lasting: bool,
}

/// Where this node's device counts go beyond it (cluster mode implements
/// it; one node has none). Counts from other nodes come back through
/// `remote_count` and `nodes_gone`.
pub(crate) trait PresenceReplication: Send + Sync {
    /// This node's count for a user changed (sent in order).
    fn send(&self, count: DeviceCount);
    /// This node's name among the others.
    fn node(&self) -> &str;
}

impl super::Chat {
    /// Whether room logs are shared with other nodes (cluster mode).
    pub(crate) fn replicated(&self) -> bool {
        self.replication.is_some()
    }

    /// Cluster mode: resolves once this node has caught up with `rooms`
    /// (at once on one node, which holds every room).
    pub(crate) async fn rooms_ready(&self, rooms: &RoomInterest) {
        if let Some(replication) = &self.replication {
            replication.ready(rooms).await;
        }
    }
}
