//! Cluster mode: a node reads a room only while it has interest in it
//! (members subscribed there, a post, a history request), and then has
//! all of it.
#![cfg(feature = "cluster")]

mod common;

use bytes::Bytes;
use common::chat::{history, publish_with, send_and_ack, seq_of, user_props};
use common::cluster::{nodes_reporting_sys, receive, sys_count};
use common::nats::NatsCluster;
use common::{opts, Raw};
use rmqtt_codec::types::QoS;
use rmqtt_codec::v5::PublishAckReason;

/// The room messages node `addr` read from the cluster, from `$SYS`
/// (published every second in this test).
async fn room_messages_read(addr: std::net::SocketAddr, asker: &str) -> u64 {
    sys_count(addr, "$SYS/broker/cluster/room-messages/received", asker).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_is_read_only_by_nodes_with_interest_in_it() {
    let nats = NatsCluster::start(3);
    let nodes = nodes_reporting_sys(&nats, &["a", "b", "c"]).await;
    let (a, b, c) = (
        nodes[0].local_addr(),
        nodes[1].local_addr(),
        nodes[2].local_addr(),
    );
    let mut member_a = Raw::client5(a, "member-a").await;
    member_a
        .subscribe5(1, &[("rooms/quiet/msg/+", opts(QoS::AtLeastOnce))])
        .await;
    let mut poster = Raw::client5(a, "poster").await;
    for n in 1..=30u16 {
        let ack = send_and_ack(
            &mut poster,
            publish_with("rooms/quiet/msg/poster", format!("m{n}").as_bytes(), Some(n), &[]),
        )
        .await;
        assert_eq!(ack.reason_code, PublishAckReason::Success);
    }
    assert_eq!(receive(&mut member_a, 30).await.len(), 30);
    // Nodes b and c have no member in the room: they read none of it.
    assert!(room_messages_read(a, "sys-a").await >= 30);
    assert_eq!(
        room_messages_read(b, "sys-b").await,
        0,
        "node b read room messages without interest in the room"
    );
    assert_eq!(
        room_messages_read(c, "sys-c").await,
        0,
        "node c read room messages without interest in the room"
    );

    // A member joins on node c: once subscribed, history on c has the
    // room, and new messages arrive live after it, `prev` unbroken.
    let mut member_c = Raw::client5(c, "member-c").await;
    member_c
        .subscribe5(1, &[("rooms/quiet/msg/+", opts(QoS::AtLeastOnce))])
        .await;
    let earlier = history(c, "quiet").await;
    assert_eq!(earlier.messages.len(), 30, "history on node c after subscribing");
    for n in 31..=35u16 {
        send_and_ack(
            &mut poster,
            publish_with("rooms/quiet/msg/poster", format!("m{n}").as_bytes(), Some(n), &[]),
        )
        .await;
    }
    let live = receive(&mut member_c, 5).await;
    let mut prev = earlier.messages.last().unwrap().seq;
    for (p, n) in live.iter().zip(31..) {
        assert_eq!(&p.payload[..], format!("m{n}").as_bytes());
        assert_eq!(user_props(p)["prev"].parse::<u64>().unwrap(), prev);
        prev = seq_of(p);
    }
    // Node b, still without a member, answers history by reading the room
    // when asked.
    let answer = history(b, "quiet").await;
    let bodies: Vec<Bytes> = answer
        .messages
        .iter()
        .map(|m| Bytes::from(m.body.clone().unwrap_or_default()))
        .collect();
    let expected: Vec<Bytes> = (1..=35).map(|n| Bytes::from(format!("m{n}"))).collect();
    assert_eq!(bodies, expected, "history on node b");
    for node in nodes {
        node.shutdown().await;
    }
}
