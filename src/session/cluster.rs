//! Joining a cluster (`[cluster]`): connects the router and the chat layer
//! of this broker to the other nodes (`cluster/`), and hands client ids
//! that connected on another node over to it.

use std::sync::{Arc, Weak};
use std::time::Duration;

use super::registry::give_up_to_other_node;
use super::Shared;
use crate::chat::{classify, rooms_covered, ChatTopic};
use crate::cluster::{Cluster, DeviceCount, PresenceSink, RoomInterest, RoomSink};
use crate::message::Message;
use crate::protocol::validate::parse_shared;
use crate::protocol::Packet;
use crate::router::{Outbound, RemoteScope};
use crate::store::RoomRecord;

/// Longest a packet that reads a room log waits for this node to catch up
/// with a room it did not follow (then it goes on with what it has).
const ROOMS_READY_WAIT: Duration = Duration::from_secs(10);

/// What the router tells the cluster: plain messages and subscriptions
/// go to `Plain`; a subscription that names rooms also makes this node
/// follow their logs (`cluster/rooms/`).
struct ClusterOutbound {
    cluster: Arc<Cluster>,
}

impl Outbound for ClusterOutbound {
    fn forward(&self, message: &Arc<Message>) -> bool {
        self.cluster.plain.forward(message)
    }

    fn retained_cleared(&self, topic: &str) {
        self.cluster.plain.retained_cleared(topic);
    }

    fn interest(&self, filter: &str, group: Option<&str>, added: bool) {
        self.cluster.plain.interest(filter, group, added);
        if let Some(rooms) = rooms_covered(filter) {
            self.cluster.rooms.interest(&rooms, added);
        }
    }
}

/// The rooms a packet reads the log of on this node: a SUBSCRIBE (a new
/// subscription starts at the room's head), a history request, a read
/// receipt (checked against the head).
fn rooms_read_by(packet: &Packet) -> Vec<RoomInterest> {
    match packet {
        Packet::Subscribe(subscribe) => subscribe
            .topic_filters
            .iter()
            .filter_map(|(filter, _)| {
                let plain = match parse_shared(filter) {
                    Ok(Some(shared)) => shared.filter,
                    _ => filter,
                };
                rooms_covered(plain)
            })
            .collect(),
        Packet::Publish(publish) => match classify(&publish.topic) {
            Some(ChatTopic::HistoryRequest { room } | ChatTopic::Receipt { room, .. }) => {
                vec![RoomInterest::One(room.to_string())]
            }
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

/// Cluster mode: before `packet` is handled, this node follows the rooms
/// it reads and has caught up with them (a room without interest here
/// was not read).
pub(crate) async fn rooms_ready_for(shared: &Shared, packet: &Packet) {
    if let Some(cluster) = &shared.cluster {
        for rooms in rooms_read_by(packet) {
            cluster.rooms.ready(&rooms, ROOMS_READY_WAIT).await;
        }
    }
}

/// Cluster mode: before a session's backlog is replayed, this node has
/// caught up with the rooms its subscriptions name (a session taken over
/// from another node brings rooms this node may not follow).
pub(crate) async fn rooms_ready_for_session(shared: &Shared, filters: Vec<String>) {
    if let Some(cluster) = &shared.cluster {
        let mut wanted: Vec<RoomInterest> = Vec::new();
        for filter in &filters {
            let plain = match parse_shared(filter) {
                Ok(Some(_)) => continue,
                _ => filter.as_str(),
            };
            if let Some(rooms) = rooms_covered(plain).filter(|r| !wanted.contains(r)) {
                wanted.push(rooms);
            }
        }
        for rooms in wanted {
            cluster.rooms.ready(&rooms, ROOMS_READY_WAIT).await;
        }
    }
}

/// The chat layer of this broker, fed by the room stream.
struct ChatSink {
    shared: Weak<Shared>,
}

impl RoomSink for ChatSink {
    fn last_applied(&self, room: &str) -> u64 {
        self.shared.upgrade().map_or(0, |s| s.chat.applied_seq(room))
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
    shared.router.connect_outbound(Arc::new(ClusterOutbound {
        cluster: cluster.clone(),
    }));
    let weak = Arc::downgrade(shared);
    let retained = Arc::new(move |mut message: crate::message::Message| {
        if let Some(shared) = weak.upgrade() {
            // A read receipt is the broker's state on every node, not a
            // client's retained message (`chat/receipts.rs`).
            message.broker_owned = matches!(
                crate::chat::classify(&message.topic),
                Some(crate::chat::ChatTopic::Receipt { .. })
            );
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
