//! Joining a cluster (`[cluster]`): connects the router and the chat layer
//! of this broker to the other nodes (`cluster/`), and hands client ids
//! that connected on another node over to it.

use std::sync::{Arc, Weak};

use super::registry::give_up_to_other_node;
use super::Shared;
use crate::cluster::{Cluster, DeviceCount, PresenceSink, RoomSink};
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

/// This broker's presence, fed by the other nodes' counts.
struct PresenceOfChat {
    shared: Weak<Shared>,
    node: Arc<str>,
}

impl PresenceSink for PresenceOfChat {
    fn remote(&self, count: DeviceCount) {
        if let Some(shared) = self.shared.upgrade() {
            shared.chat.presence().remote_count(&shared.router, count);
        }
    }

    fn nodes_gone(&self, nodes: &[String], publish: bool) {
        if let Some(shared) = self.shared.upgrade() {
            shared.chat.presence().nodes_gone(&shared.router, nodes, publish);
        }
    }

    fn local_counts(&self) -> Vec<DeviceCount> {
        self.shared
            .upgrade()
            .map(|s| s.chat.presence().local_counts(&self.node))
            .unwrap_or_default()
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
    let presence = Arc::new(PresenceOfChat {
        shared: Arc::downgrade(shared),
        node: cluster.presence.node.clone(),
    });
    cluster.follow(sink, retained, presence).await;
}
