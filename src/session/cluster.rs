//! Joining a cluster (`[cluster]`): connects the router and the chat layer
//! of this broker to the other nodes (`cluster/`), and hands client ids
//! that connected on another node over to it.

use std::sync::{Arc, Weak};

use super::registry::give_up_to_other_node;
use super::Shared;
use crate::cluster::{Cluster, RoomSink};
use crate::router::RemoteScope;
use crate::store::RoomRecord;

/// The chat layer of this broker, fed by the room stream.
struct ChatSink {
    shared: Weak<Shared>,
}

impl RoomSink for ChatSink {
    fn last_applied(&self) -> u64 {
        self.shared.upgrade().map_or(0, |s| s.chat.last_seq())
    }

    fn apply(&self, room: &str, seq: u64, record: RoomRecord, publisher: Option<Arc<str>>) {
        if let Some(shared) = self.shared.upgrade() {
            shared
                .chat
                .apply_replicated(&shared.router, room, seq, record, publisher);
        }
    }
}

/// Connects `shared` to `cluster`; returns once this node has loaded the
/// room logs and retained messages the cluster holds. Call before
/// sessions are restored and before clients connect.
pub(crate) async fn join(shared: &Arc<Shared>, cluster: &Arc<Cluster>) {
    let weak = Arc::downgrade(shared);
    cluster
        .plain
        .set_deliver(Arc::new(move |message, scope: RemoteScope<'_>| {
            if let Some(shared) = weak.upgrade() {
                shared.router.publish_remote(message, scope);
            }
        }));
    shared.router.connect_outbound(cluster.plain.clone());
    let weak = Arc::downgrade(shared);
    let retained = Arc::new(move |message| {
        if let Some(shared) = weak.upgrade() {
            shared.router.apply_retained(message);
        }
    });
    let weak = Arc::downgrade(shared);
    cluster
        .sessions
        .set_give_up(Arc::new(move |client_id: String, continues: bool| {
            let shared = weak.upgrade();
            Box::pin(async move {
                let shared = shared?;
                give_up_to_other_node(&shared, &client_id, continues).await
            })
        }));
    let sink = Arc::new(ChatSink {
        shared: Arc::downgrade(shared),
    });
    cluster.follow(sink, retained).await;
}
