//! Cluster mode: before a packet that reads a room log is handled, this
//! node follows the room and has caught up with it (`Chat::rooms_ready`;
//! at once on one node, which holds every room).

use super::Shared;
use crate::chat::{ChatTopic, Classified, Filter, RoomInterest};
use crate::protocol::Subscribe;

/// Before a SUBSCRIBE is handled, this node follows the rooms its filters
/// cover and has caught up with them: a new subscription starts at the
/// room's head.
pub(crate) async fn rooms_ready_for_subscribe(shared: &Shared, subscribe: &Subscribe) {
    if shared.chat.replicated() {
        for rooms in subscribe
            .topic_filters
            .iter()
            .filter_map(|(filter, _)| Filter::read(filter).rooms_covered())
        {
            shared.chat.rooms_ready(&rooms).await;
        }
    }
}

/// Before a PUBLISH on `topic` (classified as `kind` where it entered,
/// after its topic alias was resolved) is handled, this node follows the
/// room it reads the log of and has caught up with it: a history request,
/// a read receipt (checked against the head), and a post, typing, a
/// change to a message or a moderator's request, whose sender a ban in
/// the room's stream may refuse (`cluster/sanctions.rs`; a post waits for
/// this catch-up anyway: its PUBACK waits until this node applied it).
pub(crate) async fn rooms_ready_for_publish(shared: &Shared, topic: &str, kind: Classified) {
    if !shared.chat.replicated() {
        return;
    }
    if let Some(
        ChatTopic::HistoryRequest { room }
        | ChatTopic::Receipt { room, .. }
        | ChatTopic::Message { room, .. }
        | ChatTopic::Typing { room, .. }
        | ChatTopic::Lifecycle { room, .. }
        | ChatTopic::ModRequest { room },
    ) = kind.chat(topic)
    {
        shared
            .chat
            .rooms_ready(&RoomInterest::One(room.to_string()))
            .await;
    }
}

/// Before a session's backlog is replayed, this node has caught up with
/// the rooms its subscriptions name (a session taken over from another
/// node brings rooms this node may not follow).
pub(crate) async fn rooms_ready_for_session(shared: &Shared, filters: Vec<String>) {
    if shared.chat.replicated() {
        let mut wanted: Vec<RoomInterest> = Vec::new();
        for filter in filters.iter().map(|filter| Filter::read(filter)) {
            if filter.shared.is_some() {
                continue;
            }
            if let Some(rooms) = filter.rooms_covered().filter(|r| !wanted.contains(r)) {
                wanted.push(rooms);
            }
        }
        for rooms in wanted {
            shared.chat.rooms_ready(&rooms).await;
        }
    }
}
