//! Joining a cluster (`[cluster]`): connects the router and the chat layer
//! of this broker to the other nodes, and hands client ids that connected
//! on another node over to it. The core's seams, implemented here:
//! `chat::RoomReplication` (posts, catching up with a room),
//! `chat::PresenceReplication` (`presence.rs`), `session::SessionDirectory`
//! (claims and holds of client ids; records and queues go through the
//! store, `mirror.rs`) and `router::Outbound`.

use std::sync::{Arc, Weak};
use std::time::Duration;

use super::{ApplySanction, Cluster, PresenceSink, PublishAnswer, RoomSink};
use crate::chat::{rooms_covered, DeviceCount, Pending, RoomInterest, RoomReplication};
use crate::context::Shared;
use crate::context::{HandedOver, SessionDirectory};
use crate::message::Message;
use crate::router::{Outbound, RemoteScope};
use crate::session::{give_up_to_other_node, Registry};
use crate::store::{RoomRecord, SanctionChange, StoreError};

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

/// The chat layer of this broker, fed by the room stream.
struct ChatSink {
    shared: Weak<Shared<Registry>>,
}

impl RoomSink for ChatSink {
    fn last_applied(&self, room: &str) -> u64 {
        self.shared.upgrade().map_or(0, |s| s.chat.applied_seq(room))
    }

    fn apply(&self, room: &str, seq: u64, record: RoomRecord, publisher: Option<Arc<str>>) {
        if let Some(shared) = self.shared.upgrade() {
            shared.chat.apply_replicated(room, seq, record, publisher);
        }
    }

    fn skip(&self, room: &str, seq: u64) {
        if let Some(shared) = self.shared.upgrade() {
            shared.chat.skip_replicated(room, seq);
        }
    }
}

/// This broker's presence, fed by the other nodes' counts.
struct PresenceOfChat {
    shared: Weak<Shared<Registry>>,
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
pub(crate) async fn join(shared: &Arc<Shared<Registry>>, cluster: &Arc<Cluster>) {
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
    // Bans and mutes: changes committed in the cluster are applied to the
    // chat layer; moderators' answers wait for the commit.
    let weak = Arc::downgrade(shared);
    let apply: ApplySanction = Arc::new(move |change: &SanctionChange| {
        if let Some(shared) = weak.upgrade() {
            shared.chat.apply_replicated_sanction(change);
        }
    });
    let weak = Arc::downgrade(shared);
    let answer: PublishAnswer = Arc::new(move |message: Message| {
        if let Some(shared) = weak.upgrade() {
            shared.router.publish(message);
        }
    });
    cluster.sanctions.connect(apply, answer);
    shared.chat.replicate_sanctions_with(cluster.sanctions.clone());
    let sink = Arc::new(ChatSink {
        shared: Arc::downgrade(shared),
    });
    let presence = Arc::new(PresenceOfChat {
        shared: Arc::downgrade(shared),
        node: cluster.presence.node.clone(),
    });
    cluster.follow(sink, retained, presence).await;
}

impl RoomReplication for Cluster {
    fn post(
        &self,
        room: &str,
        record: RoomRecord,
        dedup_key: Option<&str>,
        publisher: Option<&str>,
    ) -> Result<(), StoreError> {
        self.rooms.post(room, record, dedup_key, publisher)
    }

    fn delete_posted(&self, seqs: &[u64]) {
        self.rooms.delete_from_stream(seqs);
    }

    fn trimmed(&self, room: &str, below: u64) {
        self.rooms.purge_below(room, below);
    }

    fn ready<'a>(&'a self, rooms: &'a RoomInterest) -> Pending<'a, ()> {
        Box::pin(self.rooms.ready(rooms, ROOMS_READY_WAIT))
    }
}

impl SessionDirectory for Cluster {
    fn claim<'a>(&'a self, client_id: &'a str, clean_start: bool) -> Pending<'a, Option<HandedOver>> {
        Box::pin(self.sessions.claim(client_id, clean_start))
    }

    fn adopting(&self, client_id: &str) {
        self.adopting_queue_of(client_id);
    }

    fn hold_now<'a>(&'a self, client_id: &'a str) -> Pending<'a, ()> {
        Box::pin(self.sessions.hold_now(client_id))
    }

    fn hold(&self, client_id: &str) {
        self.sessions.hold(client_id);
    }

    fn release(&self, client_id: &str) {
        self.sessions.release(client_id);
    }

    fn unready(&self) -> Option<String> {
        (!self.nats_connected()).then(|| "NATS is unreachable".into())
    }
}
