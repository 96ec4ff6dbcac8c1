//! Room messages that wait in a session's memory (queued behind the
//! client's Receive Maximum, or in flight and unacknowledged) when the
//! room changes: what reaches the member is the message's current state
//! (`topics.md`, *Edits, deletes and reactions*), and nothing of a room
//! reaches a user banned from it, not even a resend of a message she was
//! sent before the ban (*Moderation*). The offline and restart cases,
//! which replay from the room log, are pinned here too.

mod common;

use std::collections::HashMap;

use common::chat::{publish_with, send_and_ack, seq_of, user5, user_props};
use common::events::{delete, edit, send};
use common::*;
use rmqtt_codec::types::{Publish, QoS};
use rmqtt_codec::v3;
use rmqtt_codec::v5::{self, PublishAckReason};
use roomq::chat::payloads::{self, ModResponse};
use roomq::config::{ChatConfig, Limits, RoomConfig, RoomsDefault};
use roomq::Config;

/// Posts the three messages of `lobby` the tests change: returns nothing,
/// the member reads their `seq` off the first one.
async fn post_three(alice: &mut Raw) {
    for (i, body) in [&b"one"[..], b"two", b"three"].into_iter().enumerate() {
        assert_eq!(
            send(alice, "rooms/lobby/msg/alice", body, i as u16 + 1).await,
            PublishAckReason::Success
        );
    }
}

/// alice deletes the first two messages (`first`, `first + 1`) and edits
/// the third.
async fn delete_two_edit_one(alice: &mut Raw, first: u64) {
    for (seq, id) in [(first, 10), (first + 1, 11)] {
        assert_eq!(
            send(alice, "rooms/lobby/delete/alice", &delete(seq), id).await,
            PublishAckReason::Success
        );
    }
    assert_eq!(
        send(alice, "rooms/lobby/edit/alice", &edit(first + 2, b"three!"), 12).await,
        PublishAckReason::Success
    );
}

/// 5.0: bob's first copy is in flight (never acknowledged), the other
/// two wait behind his Receive Maximum of 1 when he drops; alice deletes
/// two and edits one; on his return he gets each in its current state:
/// tombstones, and the edited body.
#[tokio::test]
async fn queued_and_in_flight_room_messages_are_sent_as_they_are_now_5() {
    let broker = start().await;
    let addr = broker.local_addr();
    let mut alice = user5(addr, "alice-1", "alice").await;
    let mut connect = persistent5("bob-1");
    connect.username = Some("bob".into());
    connect.receive_max = std::num::NonZeroU16::new(1);
    let (mut bob, _) = Raw::connect5(addr, connect.clone()).await;
    bob.subscribe5(1, &[("rooms/lobby/msg/+", opts(QoS::AtLeastOnce))])
        .await;

    post_three(&mut alice).await;
    let first = bob.publish5().await;
    assert_eq!(first.payload.as_ref(), b"one");
    let s1 = seq_of(&first);
    // Not acknowledged: "two" and "three" stay queued in the broker.
    bob.send5(v5::Packet::Disconnect(v5::Disconnect::default())).await;
    drop(bob);
    delete_two_edit_one(&mut alice, s1).await;

    let (mut bob, ack) = Raw::connect5(addr, connect).await;
    assert!(ack.session_present);
    let mut got: HashMap<u64, Publish> = HashMap::new();
    while got.len() < 3 {
        let p = bob.publish5().await;
        assert!(
            !matches!(p.payload.as_ref(), b"one" | b"two" | b"three"),
            "a deleted or edited message came with its old body: {p:?}"
        );
        if let Some(id) = p.packet_id {
            bob.send5(v5::Packet::PublishAck(v5::PublishAck {
                packet_id: id,
                ..Default::default()
            }))
            .await;
        }
        got.insert(seq_of(&p), p);
    }
    for seq in [s1, s1 + 1] {
        let p = &got[&seq];
        assert!(p.payload.is_empty(), "a deleted message keeps no body");
        assert_eq!(user_props(p)["deleted"], "true");
    }
    let third = &got[&(s1 + 2)];
    assert_eq!(third.payload.as_ref(), b"three!");
    assert!(user_props(third).contains_key("edited"));
    assert!(matches!(bob.recv5_within(QUIET).await, Got::Nothing));
}

/// 3.1.1: the same, with the broker's in-flight window at 1
/// (`max_inflight_messages`); a tombstone is an empty payload.
#[tokio::test]
async fn queued_and_in_flight_room_messages_are_sent_as_they_are_now_311() {
    let broker = start_with(Config {
        limits: Limits {
            max_inflight_messages: 1,
            ..test_config().limits
        },
        ..test_config()
    })
    .await;
    let addr = broker.local_addr();
    let mut alice = user5(addr, "alice-1", "alice").await;
    let mut connect = connect3("bob-3", false);
    connect.username = Some("bob".into());
    let (mut bob, _) = Raw::connect3(addr, connect.clone()).await;
    bob.subscribe3(1, &[("rooms/lobby/msg/+", QoS::AtLeastOnce)])
        .await;

    // 3.1.1 carries no `seq`: a 5.0 member of the same identity reads it.
    let mut reader = user5(addr, "bob-5", "bob").await;
    reader
        .subscribe5(1, &[("rooms/lobby/msg/+", opts(QoS::AtMostOnce))])
        .await;
    post_three(&mut alice).await;
    let s1 = seq_of(&reader.publish5().await);
    assert_eq!(bob.publish3().await.payload.as_ref(), b"one");
    bob.send3(v3::Packet::Disconnect).await;
    drop(bob);
    delete_two_edit_one(&mut alice, s1).await;

    let (mut bob, ack) = Raw::connect3(addr, connect).await;
    assert!(ack.session_present);
    let mut bodies = Vec::new();
    while bodies.len() < 3 {
        let p = bob.publish3().await;
        if let Some(packet_id) = p.packet_id {
            bob.send3(v3::Packet::PublishAck { packet_id }).await;
        }
        bodies.push(p.payload.to_vec());
    }
    assert_eq!(bodies, [&b""[..], b"", b"three!"], "current state, in order");
    assert!(matches!(bob.recv3_within(QUIET).await, Got::Nothing));
}

/// After a restart the queue in memory is gone and the backlog comes from
/// the room log: the same current state.
#[tokio::test]
async fn after_a_restart_the_backlog_shows_the_current_state() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_with(sled_config(dir.path())).await;
    let addr = broker.local_addr();
    let mut alice = user5(addr, "alice-1", "alice").await;
    let mut connect = persistent5("bob-1");
    connect.username = Some("bob".into());
    connect.receive_max = std::num::NonZeroU16::new(1);
    let (mut bob, _) = Raw::connect5(addr, connect.clone()).await;
    bob.subscribe5(1, &[("rooms/lobby/msg/+", opts(QoS::AtLeastOnce))])
        .await;
    post_three(&mut alice).await;
    let s1 = seq_of(&bob.publish5().await);
    bob.send5(v5::Packet::Disconnect(v5::Disconnect::default())).await;
    drop(bob);
    delete_two_edit_one(&mut alice, s1).await;
    drop(alice);
    broker.shutdown().await;

    let broker = start_with(sled_config(dir.path())).await;
    let (mut bob, ack) = Raw::connect5(broker.local_addr(), connect).await;
    assert!(ack.session_present);
    let mut bodies = Vec::new();
    while bodies.len() < 3 {
        let p = bob.publish5().await;
        if let Some(id) = p.packet_id {
            bob.send5(v5::Packet::PublishAck(v5::PublishAck {
                packet_id: id,
                ..Default::default()
            }))
            .await;
        }
        bodies.push(p.payload.to_vec());
    }
    assert_eq!(bodies, [&b""[..], b"", b"three!"]);
}

/// Rooms `ops` (moderated by `mod`) and `side`, both closed, alice and eve
/// members of both.
fn ban_config() -> Config {
    let room = |name: &str, moderators: Vec<String>| RoomConfig {
        name: name.into(),
        members: vec!["alice".into(), "eve".into()],
        open: false,
        moderators,
    };
    Config {
        rooms: vec![room("ops", vec!["mod".into()]), room("side", Vec::new())],
        chat: ChatConfig {
            rooms_default: RoomsDefault::Closed,
            ..test_config().chat
        },
        ..test_config()
    }
}

/// `mod` bans `user` from `ops`; the answer says it is in effect.
async fn ban(addr: std::net::SocketAddr, user: &str) {
    let mut m = user5(addr, "mod-1", "mod").await;
    m.subscribe5(1, &[("replies/mod-1", opts(QoS::AtMostOnce))]).await;
    let request: HashMap<&str, &str> = [("op", "ban"), ("user", user)].into();
    let mut p = publish_with("$rooms/ops/mod", &payloads::to_cbor(&request), Some(1), &[]);
    if let Some(props) = p.properties.as_mut() {
        props.response_topic = Some("replies/mod-1".into());
    }
    m.send5(v5::Packet::Publish(Box::new(p))).await;
    let (mut acked, mut answered) = (false, false);
    while !(acked && answered) {
        match m.recv5().await.packet() {
            v5::Packet::Publish(reply) => {
                let answer: ModResponse = payloads::from_cbor(&reply.payload).expect("mod-response");
                assert!(answer.ok, "the ban was refused: {:?}", answer.error);
                answered = true;
            }
            v5::Packet::PublishAck(ack) => {
                assert_eq!(ack.reason_code, PublishAckReason::Success);
                acked = true;
            }
            other => panic!("expected the answer, got {other:?}"),
        }
    }
}

async fn post(alice: &mut Raw, room: &str, body: &[u8], id: u16) {
    let topic = format!("rooms/{room}/msg/alice");
    let ack = send_and_ack(alice, publish_with(&topic, body, Some(id), &[])).await;
    assert_eq!(ack.reason_code, PublishAckReason::Success);
}

/// eve holds a message of `ops` in flight (sent, never acknowledged) and
/// one queued behind her Receive Maximum of 1 when she is banned; on her
/// return neither comes (not even as a resend), and her session works:
/// `side`'s messages arrive, the packet id of the dropped one is free.
#[tokio::test]
async fn a_banned_users_in_flight_room_message_is_not_resent() {
    let broker = start_with(ban_config()).await;
    let addr = broker.local_addr();
    let mut alice = user5(addr, "alice-1", "alice").await;
    let mut connect = persistent5("eve-phone");
    connect.username = Some("eve".into());
    connect.receive_max = std::num::NonZeroU16::new(1);
    let (mut eve, _) = Raw::connect5(addr, connect.clone()).await;
    let filters = [
        ("rooms/ops/msg/+", opts(QoS::AtLeastOnce)),
        ("rooms/side/msg/+", opts(QoS::AtLeastOnce)),
    ];
    eve.subscribe5(1, &filters).await;

    post(&mut alice, "ops", b"secret-1", 1).await;
    post(&mut alice, "ops", b"secret-2", 2).await;
    assert_eq!(eve.publish5().await.payload.as_ref(), b"secret-1");
    ban(addr, "eve").await;
    eve.send5(v5::Packet::Disconnect(v5::Disconnect::default())).await;
    drop(eve);

    let (mut eve, ack) = Raw::connect5(addr, connect).await;
    assert!(ack.session_present);
    for (i, body) in [&b"side-1"[..], b"side-2", b"side-3"].into_iter().enumerate() {
        post(&mut alice, "side", body, 10 + i as u16).await;
        let p = eve.publish5().await;
        assert_eq!(
            p.payload.as_ref(),
            body,
            "a banned user got a message of the room: {p:?}"
        );
        eve.send5(v5::Packet::PublishAck(v5::PublishAck {
            packet_id: p.packet_id.expect("QoS 1"),
            ..Default::default()
        }))
        .await;
    }
    assert!(matches!(eve.recv5_within(QUIET).await, Got::Nothing));
}
