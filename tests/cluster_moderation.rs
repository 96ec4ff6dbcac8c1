//! Bans in cluster mode (`topics.md`, *Moderation*; README, *Cluster*): a
//! ban set on node `a` binds node `b` from the moment the moderator has
//! her answer. Room `ops` is closed: alice, bob and mallory are members,
//! `mod` moderates it. mallory reads the room on `b` from two devices
//! (5.0 and 3.1.1) next to bob; alice posts and `mod` moderates on `a`.
//!
//! A message posted after the answer is the proof: it reaches bob on `b`
//! but not mallory (the ban goes into the room's stream before it, so `b`
//! applies the ban before it delivers the message), and from then on `b`
//! refuses her post, her SUBSCRIBE and her history request. Node `c`,
//! which does not follow the room, refuses them right after the answer
//! (it reads the room, the ban's copy included, before it handles them).
#![cfg(feature = "cluster")]

mod common;

use common::chat::{publish_with, send_and_ack, user5};
use common::nats::NatsCluster;
use common::*;
use rmqtt_codec::types::QoS;
use rmqtt_codec::v3;
use rmqtt_codec::v5::{self, PublishAckReason, SubscribeAckReason};
use roomq::chat::payloads::{self, ModResponse};
use roomq::config::{RoomConfig, RoomsDefault};
use roomq::{Broker, BrokerHandle};
use serde::Serialize;

async fn node(nats: &NatsCluster, name: &str) -> BrokerHandle {
    let mut config = nats.node_config(name);
    config.chat.rooms_default = RoomsDefault::Closed;
    config.rooms = vec![RoomConfig {
        name: "ops".into(),
        members: vec!["alice".into(), "bob".into(), "mallory".into()],
        open: false,
        moderators: vec!["mod".into()],
    }];
    Broker::new(config).start().await.expect("cluster node starts")
}

#[derive(Serialize)]
struct Request<'a> {
    op: &'a str,
    user: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    secs: Option<u64>,
}

/// Sends a `mod-request` for `ops` (answers on `replies/mod-1`); the
/// PUBACK reason and the answer.
async fn moderate(c: &mut Raw, request: Request<'_>, id: u16) -> (PublishAckReason, ModResponse) {
    let mut p = publish_with("$rooms/ops/mod", &payloads::to_cbor(&request), Some(id), &[]);
    if let Some(props) = p.properties.as_mut() {
        props.response_topic = Some("replies/mod-1".into());
    }
    c.send5(v5::Packet::Publish(Box::new(p))).await;
    let (mut ack, mut answer) = (None, None);
    while ack.is_none() || answer.is_none() {
        match c.recv5().await.packet() {
            v5::Packet::Publish(reply) => {
                answer = Some(payloads::from_cbor::<ModResponse>(&reply.payload).expect("mod-response"))
            }
            v5::Packet::PublishAck(a) => ack = Some(a.reason_code),
            other => panic!("expected the answer and PUBACK, got {other:?}"),
        }
    }
    (ack.unwrap(), answer.unwrap())
}

async fn ban(moderator: &mut Raw, op: &str, secs: Option<u64>, id: u16) {
    let (ack, answer) = moderate(
        moderator,
        Request {
            op,
            user: "mallory",
            secs,
        },
        id,
    )
    .await;
    assert_eq!(
        (ack, answer.ok, answer.error),
        (PublishAckReason::Success, true, None),
        "{op}"
    );
}

async fn post(c: &mut Raw, sender: &str, body: &[u8], id: u16) -> PublishAckReason {
    let topic = format!("rooms/ops/msg/{sender}");
    send_and_ack(c, publish_with(&topic, body, Some(id), &[]))
        .await
        .reason_code
}

async fn ask_history(c: &mut Raw, id: u16) -> PublishAckReason {
    let mut p = publish_with("$history/rooms/ops", b"", Some(id), &[]);
    if let Some(props) = p.properties.as_mut() {
        props.response_topic = Some("replies/mallory".into());
    }
    send_and_ack(c, p).await.reason_code
}

/// Waits for the PUBLISH with `body` (others, earlier ones, are skipped).
async fn receives5(c: &mut Raw, body: &[u8]) {
    while c.publish5().await.payload.as_ref() != body {}
}

async fn receives3(c: &mut Raw, body: &[u8]) {
    while c.publish3().await.payload.as_ref() != body {}
}

/// Nothing arrives within QUIET (after bob, on the same node, got the
/// message that would have come).
async fn quiet5(c: &mut Raw, what: &str) {
    if let Got::Packet(p) = c.recv5_within(QUIET).await {
        panic!("{what}: got {p:?}");
    }
}

async fn quiet3(c: &mut Raw, what: &str) {
    if let Got::Packet(p) = c.recv3_within(QUIET).await {
        panic!("{what}: got {p:?}");
    }
}

async fn subscriber5(addr: std::net::SocketAddr, client_id: &str, user: &str, filter: &str) -> Raw {
    let mut c = user5(addr, client_id, user).await;
    let status = c.subscribe5(1, &[(filter, opts(QoS::AtMostOnce))]).await;
    assert_eq!(status, [SubscribeAckReason::GrantedQos0]);
    c
}

/// mallory's 3.1.1 laptop, subscribed to the room's messages.
async fn laptop3(addr: std::net::SocketAddr) -> Raw {
    let mut connect = connect3("mallory-laptop", true);
    connect.username = Some("mallory".into());
    let (mut c, ack) = Raw::connect3(addr, connect).await;
    assert_eq!(ack.return_code, v3::ConnectAckReason::ConnectionAccepted);
    let status = c.subscribe3(1, &[("rooms/ops/msg/+", QoS::AtMostOnce)]).await;
    assert_eq!(status, [v3::SubscribeReturnCode::Success(QoS::AtMostOnce)]);
    c
}

/// mallory may neither post, subscribe nor read history on `addr`.
async fn refused_everything(addr: std::net::SocketAddr, client_id: &str) {
    let mut c = user5(addr, client_id, "mallory").await;
    assert_eq!(
        post(&mut c, "mallory", b"let me in", 1).await,
        PublishAckReason::NotAuthorized
    );
    let status = c
        .subscribe5(2, &[("rooms/ops/msg/+", opts(QoS::AtMostOnce))])
        .await;
    assert_eq!(status, [SubscribeAckReason::NotAuthorized]);
    assert_eq!(ask_history(&mut c, 3).await, PublishAckReason::NotAuthorized);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ban_on_one_node_binds_the_other_from_the_answer_on() {
    let nats = NatsCluster::start(1);
    let a = node(&nats, "a").await;
    let mut b = node(&nats, "b").await;
    // Node `c` does not follow the room: it reads it before it handles a
    // packet for it.
    let c = node(&nats, "c").await;
    let mut moderator = user5(a.local_addr(), "mod-1", "mod").await;
    moderator
        .subscribe5(1, &[("replies/mod-1", opts(QoS::AtMostOnce))])
        .await;
    let mut alice = user5(a.local_addr(), "alice-1", "alice").await;
    let mut bob = subscriber5(b.local_addr(), "bob-1", "bob", "rooms/ops/msg/+").await;
    let mut phone = subscriber5(b.local_addr(), "mallory-phone", "mallory", "rooms/ops/#").await;
    let mut laptop = laptop3(b.local_addr()).await;

    assert_eq!(
        post(&mut alice, "alice", b"before", 1).await,
        PublishAckReason::Success
    );
    receives5(&mut bob, b"before").await;
    receives5(&mut phone, b"before").await;
    receives3(&mut laptop, b"before").await;

    ban(&mut moderator, "ban", None, 1).await;
    refused_everything(c.local_addr(), "mallory-tablet").await;
    assert_eq!(
        post(&mut alice, "alice", b"after", 2).await,
        PublishAckReason::Success
    );
    receives5(&mut bob, b"after").await;
    quiet5(
        &mut phone,
        "a banned 5.0 device on the other node still receives the room",
    )
    .await;
    quiet3(
        &mut laptop,
        "a banned 3.1.1 device on the other node still receives the room",
    )
    .await;
    assert_eq!(
        post(&mut phone, "mallory", b"let me in", 2).await,
        PublishAckReason::NotAuthorized
    );
    let status = phone
        .subscribe5(3, &[("rooms/ops/msg/+", opts(QoS::AtMostOnce))])
        .await;
    assert_eq!(status, [SubscribeAckReason::NotAuthorized]);
    let status = laptop.subscribe3(2, &[("rooms/ops/#", QoS::AtMostOnce)]).await;
    assert_eq!(status, [v3::SubscribeReturnCode::Failure]);
    assert_eq!(ask_history(&mut phone, 4).await, PublishAckReason::NotAuthorized);

    // Unbanned on `a`: her subscriptions on `b` get the room again.
    ban(&mut moderator, "unban", None, 2).await;
    assert_eq!(
        post(&mut alice, "alice", b"welcome back", 3).await,
        PublishAckReason::Success
    );
    receives5(&mut phone, b"welcome back").await;
    receives3(&mut laptop, b"welcome back").await;
    assert_eq!(
        post(&mut phone, "mallory", b"thanks", 5).await,
        PublishAckReason::Success
    );

    // A mute set on `a`: on `b` she reads, but may not post.
    ban(&mut moderator, "mute", None, 5).await;
    assert_eq!(
        post(&mut alice, "alice", b"muted", 6).await,
        PublishAckReason::Success
    );
    receives5(&mut phone, b"muted").await;
    assert_eq!(
        post(&mut phone, "mallory", b"hello?", 6).await,
        PublishAckReason::NotAuthorized
    );
    ban(&mut moderator, "unmute", None, 6).await;
    assert_eq!(
        post(&mut alice, "alice", b"unmuted", 7).await,
        PublishAckReason::Success
    );
    receives5(&mut phone, b"unmuted").await;
    assert_eq!(
        post(&mut phone, "mallory", b"hello!", 7).await,
        PublishAckReason::Success
    );

    // A ban of a second ends by itself on `b` as well.
    ban(&mut moderator, "ban", Some(1), 3).await;
    assert_eq!(
        post(&mut alice, "alice", b"for a second", 4).await,
        PublishAckReason::Success
    );
    receives5(&mut bob, b"for a second").await;
    let mut id = 6;
    let deadline = tokio::time::Instant::now() + WAIT;
    assert_eq!(
        post(&mut phone, "mallory", b"now?", id).await,
        PublishAckReason::NotAuthorized
    );
    while post(&mut phone, "mallory", b"now?", id).await != PublishAckReason::Success {
        assert!(tokio::time::Instant::now() < deadline, "the ban did not end on b");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        id += 1;
    }

    // Banned again; node `b` restarts and knows the ban before it serves,
    // and so does a node that was never there.
    ban(&mut moderator, "ban", None, 4).await;
    assert_eq!(
        post(&mut alice, "alice", b"goodbye", 5).await,
        PublishAckReason::Success
    );
    receives5(&mut bob, b"goodbye").await;
    drop((phone, laptop, bob));
    b.shutdown().await;
    b = node(&nats, "b").await;
    refused_everything(b.local_addr(), "mallory-phone").await;
    let d = node(&nats, "d").await;
    refused_everything(d.local_addr(), "mallory-tablet").await;
    for n in [a, b, c, d] {
        n.shutdown().await;
    }
}

/// The moderator's node is SIGKILLed right after her answer: the ban was
/// in JetStream before the answer, so a node started afterwards holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answered_ban_outlives_its_node_killed() {
    let nats = NatsCluster::start(3);
    let rooms = "rooms_default = \"closed\"\n[[rooms]]\nname = \"ops\"\n\
                 members = [\"alice\", \"bob\", \"mallory\"]\nmoderators = [\"mod\"]";
    let (mut doomed, x_addr, _dir) = common::nats::spawn_node(&nats, "x", rooms, "");
    let mut moderator = user5(x_addr, "mod-1", "mod").await;
    moderator
        .subscribe5(1, &[("replies/mod-1", opts(QoS::AtMostOnce))])
        .await;
    ban(&mut moderator, "ban", None, 1).await;
    doomed.kill().expect("SIGKILL the moderator's node");
    let _ = doomed.wait();
    let y = node(&nats, "y").await;
    refused_everything(y.local_addr(), "mallory-phone").await;
    y.shutdown().await;
}

/// A ban set on `a` takes the same drop path on `b` (`topics.md`,
/// *Moderation*): mallory's message of the room in flight on `b` (sent,
/// never acknowledged) when she is banned is not resent when her
/// persistent session reconnects there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ban_from_another_node_drops_what_is_in_flight_to_her() {
    let nats = NatsCluster::start(1);
    let a = node(&nats, "a").await;
    let b = node(&nats, "b").await;
    let mut moderator = user5(a.local_addr(), "mod-1", "mod").await;
    moderator
        .subscribe5(1, &[("replies/mod-1", opts(QoS::AtMostOnce))])
        .await;
    let mut alice = user5(a.local_addr(), "alice-1", "alice").await;
    let mut bob = subscriber5(b.local_addr(), "bob-1", "bob", "rooms/ops/msg/+").await;
    let mut connect = persistent5("mallory-phone");
    connect.username = Some("mallory".into());
    connect.receive_max = std::num::NonZeroU16::new(1);
    let (mut phone, _) = Raw::connect5(b.local_addr(), connect.clone()).await;
    phone
        .subscribe5(1, &[("rooms/ops/msg/+", opts(QoS::AtLeastOnce))])
        .await;

    assert_eq!(
        post(&mut alice, "alice", b"in flight", 1).await,
        PublishAckReason::Success
    );
    receives5(&mut bob, b"in flight").await;
    // Received, not acknowledged.
    assert_eq!(phone.publish5().await.payload.as_ref(), b"in flight");
    ban(&mut moderator, "ban", None, 1).await;
    // Once bob has this, `b` has applied the ban (module doc).
    assert_eq!(
        post(&mut alice, "alice", b"after", 2).await,
        PublishAckReason::Success
    );
    receives5(&mut bob, b"after").await;
    phone
        .send5(v5::Packet::Disconnect(v5::Disconnect::default()))
        .await;
    drop(phone);

    let (mut phone, ack) = Raw::connect5(b.local_addr(), connect).await;
    assert!(ack.session_present);
    quiet5(&mut phone, "a banned user's in-flight message was resent").await;
}
