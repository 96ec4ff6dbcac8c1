//! Cluster mode: before a packet that reads a room log is handled, this
//! node follows the room and has caught up with it (`Chat::rooms_ready`;
//! at once on one node, which holds every room).

use super::Shared;
use crate::chat::{classify, ChatTopic, Filter, RoomInterest};
use crate::protocol::Packet;

/// The rooms a packet reads the log of on this node: a SUBSCRIBE (a new
/// subscription starts at the room's head), a history request, a read
/// receipt (checked against the head); and a post or typing event, whose
/// sender a ban in the room's stream may refuse (`cluster/sanctions.rs`;
/// a post waits for this catch-up anyway: its PUBACK waits until this
/// node applied it).
fn rooms_read_by(packet: &Packet) -> Vec<RoomInterest> {
    match packet {
        Packet::Subscribe(subscribe) => subscribe
            .topic_filters
            .iter()
            .filter_map(|(filter, _)| Filter::read(filter).rooms_covered())
            .collect(),
        Packet::Publish(publish) => match classify(&publish.topic) {
            // A post, typing, a change to a message, or a moderator's
            // request is checked against this node's copy of the room log.
            Some(
                ChatTopic::HistoryRequest { room }
                | ChatTopic::Receipt { room, .. }
                | ChatTopic::Message { room, .. }
                | ChatTopic::Typing { room, .. }
                | ChatTopic::Lifecycle { room, .. }
                | ChatTopic::ModRequest { room },
            ) => {
                vec![RoomInterest::One(room.to_string())]
            }
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

/// Before `packet` is handled, this node follows the rooms it reads and
/// has caught up with them (a room without interest here was not read).
pub(crate) async fn rooms_ready_for(shared: &Shared, packet: &Packet) {
    if shared.chat.replicated() {
        for rooms in rooms_read_by(packet) {
            shared.chat.rooms_ready(&rooms).await;
        }
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
