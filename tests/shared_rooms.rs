//! A room shared among the members of a `$share` group: a message posted
//! while every member is offline is queued for one of them, as MQTT 5.0
//! §4.8.2 queues any shared message for a disconnected persistent
//! session, and arrives once when that member comes back (also after a
//! restart). Room backlogs are otherwise replayed from the room log by
//! per-session cursors, which shared filters have not.

mod common;

use common::chat::{ack_publish5, seq_of, user5};
use common::events::{quiet, send};
use common::*;
use rmqtt_codec::types::QoS;
use rmqtt_codec::v3;
use rmqtt_codec::v5::{self, PublishAckReason};

const SHARED: &str = "$share/g/rooms/lobby/msg/+";

/// bob's persistent 5.0 session joins the group and goes offline.
async fn bob_joins_and_leaves(addr: std::net::SocketAddr) {
    let mut connect = persistent5("bob-1");
    connect.username = Some("bob".into());
    let (mut bob, _) = Raw::connect5(addr, connect).await;
    bob.subscribe5(1, &[(SHARED, opts(QoS::AtLeastOnce))]).await;
    bob.send5(v5::Packet::Disconnect(v5::Disconnect::default())).await;
    assert!(matches!(bob.recv5().await, Got::Closed));
}

/// bob comes back and gets `body` (with its `seq`), once.
async fn bob_gets_once(addr: std::net::SocketAddr, body: &[u8], seq: u64) {
    let mut connect = persistent5("bob-1");
    connect.username = Some("bob".into());
    let (mut bob, ack) = Raw::connect5(addr, connect).await;
    assert!(ack.session_present);
    let p = bob.publish5().await;
    assert_eq!((&*p.topic, &p.payload[..]), ("rooms/lobby/msg/alice", body));
    assert_eq!(seq_of(&p), seq);
    ack_publish5(&mut bob, &p).await;
    quiet(&mut bob).await;
}

/// alice posts one message; returns its `seq` as a plain subscriber of
/// the room (carol, online) saw it.
async fn alice_posts(addr: std::net::SocketAddr, body: &[u8]) -> u64 {
    let mut carol = user5(addr, "carol-1", "carol").await;
    carol
        .subscribe5(1, &[("rooms/lobby/msg/+", opts(QoS::AtLeastOnce))])
        .await;
    let mut alice = user5(addr, "alice-1", "alice").await;
    assert_eq!(
        send(&mut alice, "rooms/lobby/msg/alice", body, 1).await,
        PublishAckReason::Success
    );
    seq_of(&carol.publish5().await)
}

/// 5.0: the only member of the group is offline when alice posts; the
/// message waits for him and arrives once on his return.
#[tokio::test]
async fn a_shared_room_message_waits_for_the_offline_member_5() {
    let broker = start().await;
    let addr = broker.local_addr();
    bob_joins_and_leaves(addr).await;
    let seq = alice_posts(addr, b"while you were away").await;
    bob_gets_once(addr, b"while you were away", seq).await;
    broker.shutdown().await;
}

/// 5.0, with the sled store: the queued message survives a restart of the
/// broker, and still arrives once.
#[tokio::test]
async fn a_shared_room_message_for_an_offline_member_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_with(sled_config(dir.path())).await;
    bob_joins_and_leaves(broker.local_addr()).await;
    let seq = alice_posts(broker.local_addr(), b"kept").await;
    broker.shutdown().await;
    let broker = start_with(sled_config(dir.path())).await;
    bob_gets_once(broker.local_addr(), b"kept", seq).await;
    broker.shutdown().await;
}

/// 3.1.1: the same, with a clean-session-0 client.
#[tokio::test]
async fn a_shared_room_message_waits_for_the_offline_member_3() {
    let broker = start().await;
    let addr = broker.local_addr();
    let mut connect = connect3("bob-3", false);
    connect.username = Some("bob".into());
    let (mut bob, _) = Raw::connect3(addr, connect.clone()).await;
    bob.subscribe3(1, &[(SHARED, QoS::AtLeastOnce)]).await;
    bob.send3(v3::Packet::Disconnect).await;
    assert!(matches!(bob.recv3().await, Got::Closed));
    alice_posts(addr, b"hello, 3.1.1").await;
    let (mut bob, ack) = Raw::connect3(addr, connect).await;
    assert!(ack.session_present);
    let p = bob.publish3().await;
    assert_eq!(
        (&*p.topic, &p.payload[..]),
        ("rooms/lobby/msg/alice", &b"hello, 3.1.1"[..])
    );
    if let Some(packet_id) = p.packet_id {
        bob.send3(v3::Packet::PublishAck { packet_id }).await;
    }
    match bob.recv3_within(QUIET).await {
        Got::Nothing => {}
        other => panic!("expected nothing more, got {other:?}"),
    }
    broker.shutdown().await;
}

/// The queued copy names the room log, it holds no body of its own: a
/// message deleted while it waited arrives as a tombstone after a
/// restart (`deleted`, no body), as a replay from the log gives it.
#[tokio::test]
async fn a_shared_copy_deleted_while_it_waited_arrives_as_a_tombstone_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_with(sled_config(dir.path())).await;
    let addr = broker.local_addr();
    bob_joins_and_leaves(addr).await;
    let seq = alice_posts(addr, b"oops").await;
    let mut alice = user5(addr, "alice-2", "alice").await;
    assert_eq!(
        send(
            &mut alice,
            "rooms/lobby/delete/alice",
            &common::events::delete(seq),
            1
        )
        .await,
        PublishAckReason::Success
    );
    broker.shutdown().await;
    let broker = start_with(sled_config(dir.path())).await;
    let mut connect = persistent5("bob-1");
    connect.username = Some("bob".into());
    let (mut bob, _) = Raw::connect5(broker.local_addr(), connect).await;
    let p = bob.publish5().await;
    assert_eq!(seq_of(&p), seq);
    assert!(p.payload.is_empty(), "no body: {:?}", p.payload);
    assert_eq!(
        common::chat::user_props(&p).get("deleted").map(String::as_str),
        Some("true")
    );
    broker.shutdown().await;
}
