//! Helpers of the room event tests (`chat_events.rs`,
//! `chat_events_mod.rs`): edit, delete and react payloads, acknowledged
//! publishes, room events, history with `events`.

use std::collections::{BTreeMap, HashMap};

use rmqtt_codec::types::Publish;
use rmqtt_codec::v5::{self, PublishAckReason};
use roomq::chat::payloads::{self, HistoryResponse, RoomEvent};
use serde::Serialize;

use super::chat::{ack_publish5, publish_with, send_and_ack, seq_of, user5};
use super::{opts, Got, Raw, QUIET};

/// `{seq, body}` for an edit.
#[derive(Serialize)]
struct Edit<'a> {
    seq: u64,
    #[serde(with = "serde_bytes_like")]
    body: &'a [u8],
}

mod serde_bytes_like {
    pub fn serialize<S: serde::Serializer>(bytes: &&[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(bytes)
    }
}

pub fn edit(seq: u64, body: &[u8]) -> Vec<u8> {
    payloads::to_cbor(&Edit { seq, body })
}

pub fn delete(seq: u64) -> Vec<u8> {
    payloads::to_cbor(&BTreeMap::from([("seq", seq)]))
}

pub fn react(seq: u64, emoji: &str, remove: bool) -> Vec<u8> {
    #[derive(Serialize)]
    struct React<'a> {
        seq: u64,
        emoji: &'a str,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        remove: bool,
    }
    payloads::to_cbor(&React { seq, emoji, remove })
}

/// Publishes at QoS 1 and returns the PUBACK reason.
pub async fn send(c: &mut Raw, topic: &str, payload: &[u8], id: u16) -> PublishAckReason {
    send_and_ack(c, publish_with(topic, payload, Some(id), &[]))
        .await
        .reason_code
}

/// The next PUBLISH `c` gets, acknowledged.
pub async fn next_publish(c: &mut Raw) -> Publish {
    let p = c.publish5().await;
    ack_publish5(c, &p).await;
    p
}

pub fn event_of(p: &Publish) -> RoomEvent {
    payloads::from_cbor(&p.payload).expect("a room-event")
}

/// Nothing more arrives on `c` for a while.
pub async fn quiet(c: &mut Raw) {
    match c.recv5_within(QUIET).await {
        Got::Nothing => {}
        other => panic!("expected nothing, got {other:?}"),
    }
}

/// The history of `room` as `asker` (a 5.0 client of that identity, which
/// takes the answer on `replies/{id}`).
pub async fn history_as(
    asker: &mut Raw,
    reply_to: &str,
    room: &str,
    events: bool,
    id: u16,
) -> HistoryResponse {
    let mut request: HashMap<&str, ciborium::Value> = HashMap::new();
    request.insert("limit", 100.into());
    if events {
        request.insert("events", true.into());
    }
    let mut p = publish_with(
        &format!("$history/rooms/{room}"),
        &payloads::to_cbor(&request),
        Some(id),
        &[],
    );
    if let Some(props) = p.properties.as_mut() {
        props.response_topic = Some(reply_to.into());
    }
    asker.send5(v5::Packet::Publish(Box::new(p))).await;
    let (mut acked, mut answer) = (false, None);
    while !acked || answer.is_none() {
        match asker.recv5().await.packet() {
            v5::Packet::Publish(reply) if reply.topic == reply_to => {
                ack_publish5(asker, &reply).await;
                answer = Some(payloads::from_cbor(&reply.payload).expect("history-response"));
            }
            v5::Packet::Publish(other) => ack_publish5(asker, &other).await,
            v5::Packet::PublishAck(ack) => {
                assert_eq!(ack.reason_code, PublishAckReason::Success);
                acked = true;
            }
            other => panic!("expected the history answer, got {other:?}"),
        }
    }
    answer.expect("an answer")
}

/// carol, watching everything of room `ops`: the witness of the room
/// event tests.
pub async fn ops_watcher(addr: std::net::SocketAddr) -> Raw {
    let mut watcher = user5(addr, "carol-1", "carol").await;
    watcher
        .subscribe5(1, &[("rooms/ops/#", opts(rmqtt_codec::types::QoS::AtLeastOnce))])
        .await;
    watcher
}

/// alice posts `body` (packet id 1) to room `ops`; returns its `seq` as
/// `watcher` (an [`ops_watcher`]) sees it.
pub async fn alice_posts(alice: &mut Raw, watcher: &mut Raw, body: &[u8]) -> u64 {
    assert_eq!(
        send(alice, "rooms/ops/msg/alice", body, 1).await,
        PublishAckReason::Success
    );
    seq_of(&next_publish(watcher).await)
}
