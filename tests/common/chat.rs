//! Helpers of the chat tests (`chat.rs`, `chat_presence.rs`, the cluster
//! and full-disk tests): room messages with User Properties,
//! acknowledgements, `seq`, history requests.

use std::collections::HashMap;

use bytes::Bytes;
use rmqtt_codec::types::{Publish, QoS};
use rmqtt_codec::v5::{self, Packet, PublishAckReason};
use roomq::chat::payloads::{self, HistoryResponse};

use super::{connect5, opts, persistent5, publish, Got, Raw};

/// A 5.0 PUBLISH with User Properties.
pub fn publish_with(topic: &str, payload: &[u8], id: Option<u16>, props: &[(&str, &str)]) -> Publish {
    let mut p = publish(
        topic,
        b"",
        if id.is_some() {
            QoS::AtLeastOnce
        } else {
            QoS::AtMostOnce
        },
        id,
    );
    p.payload = Bytes::copy_from_slice(payload);
    p.properties = Some(v5::PublishProperties {
        user_properties: props.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect(),
        ..Default::default()
    });
    p
}

/// Sends a QoS 1 PUBLISH and returns its PUBACK, skipping PUBLISHes that
/// arrive in between (kept in `skipped`).
pub async fn send_and_ack(c: &mut Raw, p: Publish) -> v5::PublishAck {
    c.send5(Packet::Publish(Box::new(p))).await;
    loop {
        match c.recv5().await.packet() {
            Packet::PublishAck(ack) => return ack,
            Packet::Publish(_) => {}
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
}

/// A 5.0 client with a username (its chat identity).
pub async fn user5(addr: std::net::SocketAddr, client_id: &str, username: &str) -> Raw {
    let mut c = connect5(client_id);
    c.username = Some(username.into());
    Raw::connect5(addr, c).await.0
}

pub fn user_props(p: &Publish) -> HashMap<String, String> {
    p.properties
        .as_ref()
        .map(|p| {
            p.user_properties
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .unwrap_or_default()
}

pub fn seq_of(p: &Publish) -> u64 {
    user_props(p)["seq"].parse().expect("seq is decimal")
}

pub async fn ack_publish5(c: &mut Raw, p: &Publish) {
    if let Some(id) = p.packet_id {
        c.send5(Packet::PublishAck(v5::PublishAck {
            packet_id: id,
            ..Default::default()
        }))
        .await;
    }
}

/// Connects a persistent member, subscribes to the room and leaves.
pub async fn member_leaves(addr: std::net::SocketAddr, id: &str, filter: &str) {
    let (mut m, _) = Raw::connect5(addr, persistent5(id)).await;
    m.subscribe5(1, &[(filter, opts(QoS::AtLeastOnce))]).await;
    m.send5(Packet::Disconnect(v5::Disconnect::default())).await;
    assert!(matches!(m.recv5().await, Got::Closed));
}

/// Sends `n` room messages from `sender` (numbered payloads).
pub async fn post_many(addr: std::net::SocketAddr, sender: &str, room: &str, n: u32) {
    let mut c = Raw::client5(addr, sender).await;
    for i in 0..n {
        let topic = format!("rooms/{room}/msg/{sender}");
        let ack = send_and_ack(
            &mut c,
            publish_with(
                &topic,
                i.to_string().as_bytes(),
                Some((i % 60000 + 1) as u16),
                &[],
            ),
        )
        .await;
        assert_eq!(ack.reason_code, PublishAckReason::Success);
    }
}

/// The whole history of `room` (up to 500 messages), asked on the broker
/// (or cluster node) at `addr`. The request's PUBACK must be a success.
pub async fn history(addr: std::net::SocketAddr, room: &str) -> HistoryResponse {
    let mut asker = Raw::client5(addr, &format!("asker-{room}")).await;
    asker
        .subscribe5(1, &[("replies/asker", opts(QoS::AtLeastOnce))])
        .await;
    let request: HashMap<&str, u64> = [("limit", 500)].into();
    let mut p = publish_with(
        &format!("$history/rooms/{room}"),
        &payloads::to_cbor(&request),
        Some(2),
        &[],
    );
    if let Some(props) = p.properties.as_mut() {
        props.response_topic = Some("replies/asker".into());
    }
    asker.send5(Packet::Publish(Box::new(p))).await;
    // The PUBACK and the reply, in either order.
    let (mut acknowledged, mut answer) = (false, None);
    while !acknowledged || answer.is_none() {
        match asker.recv5().await.packet() {
            Packet::Publish(reply) => {
                ack_publish5(&mut asker, &reply).await;
                answer = Some(payloads::from_cbor(&reply.payload).expect("history-response"));
            }
            Packet::PublishAck(ack) => {
                assert_eq!(
                    ack.reason_code,
                    PublishAckReason::Success,
                    "the history request of {room} was refused"
                );
                acknowledged = true;
            }
            other => panic!("expected the history reply, got {other:?}"),
        }
    }
    answer.expect("the loop ends with an answer")
}
