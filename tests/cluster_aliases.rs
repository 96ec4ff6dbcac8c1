//! Cluster mode: a 5.0 client that names its room topics by Topic Alias
//! (the topic once, then the alias alone) gets what one that spells the
//! topic out gets: its posts reach members on other nodes in the room's
//! one order, and its node catches up with the room before the packet is
//! handled, also after that node stopped following the room.
#![cfg(feature = "cluster")]

mod common;

use std::num::NonZeroU16;
use std::time::Duration;

use bytes::Bytes;
use common::chat::{publish_with, send_and_ack, seq_of, user_props};
use common::cluster::{receive, start_nodes, sys_count, three_nodes};
use common::nats::NatsCluster;
use common::{opts, Raw};
use rmqtt_codec::types::{Publish, QoS};
use rmqtt_codec::v5::PublishAckReason;
use roomq::chat::payloads;

/// A QoS 1 PUBLISH that names its topic by `alias`: the first one of an
/// alias carries the topic too (`Some`), the next ones the alias alone
/// (`None`, an empty topic name).
fn aliased(topic: Option<&str>, alias: u16, payload: &[u8], id: u16) -> Publish {
    let mut p = publish_with(topic.unwrap_or(""), payload, Some(id), &[]);
    if let Some(props) = p.properties.as_mut() {
        props.topic_alias = NonZeroU16::new(alias);
    }
    p
}

/// Alice posts `a{n}` on her node, then Bob `b{n}` on his, by alias 1
/// (`rooms/talk/msg/bob`, spelled out when `n` is 1); both must be
/// acknowledged with Success. Returns the payloads, in posting order.
async fn round(alice: &mut Raw, bob: &mut Raw, n: u16) -> [String; 2] {
    let (a, b) = (format!("a{n}"), format!("b{n}"));
    let ack = send_and_ack(
        alice,
        publish_with("rooms/talk/msg/alice", a.as_bytes(), Some(n), &[]),
    )
    .await;
    assert_eq!(ack.reason_code, PublishAckReason::Success, "alice's {a}");
    let topic = (n == 1).then_some("rooms/talk/msg/bob");
    let ack = send_and_ack(bob, aliased(topic, 1, b.as_bytes(), n)).await;
    assert_eq!(ack.reason_code, PublishAckReason::Success, "bob's {b}, by alias");
    [a, b]
}

/// Checks what a member saw: exactly `expected` (payloads, in order, each
/// on its sender's topic), `seq` strictly increasing from `after`, each
/// message's `prev` the `seq` before it (no gap, no duplicate). Returns
/// the `seq`s.
fn assert_one_order(got: &[Publish], expected: &[String], mut after: Option<u64>) -> Vec<u64> {
    let payloads: Vec<Bytes> = got.iter().map(|p| p.payload.clone()).collect();
    let wanted: Vec<Bytes> = expected.iter().map(|e| Bytes::from(e.clone())).collect();
    assert_eq!(payloads, wanted, "what the member saw, in order");
    let mut seqs = Vec::new();
    for p in got {
        let sender = if p.payload.starts_with(b"a") {
            "alice"
        } else {
            "bob"
        };
        assert_eq!(p.topic, format!("rooms/talk/msg/{sender}"));
        let seq = seq_of(p);
        if let Some(before) = after {
            let prev: u64 = user_props(p)["prev"].parse().unwrap();
            assert!(seq > before, "seq {seq} after {before}");
            assert_eq!(prev, before, "prev of {seq} is not the seq before it");
        }
        after = Some(seq);
        seqs.push(seq);
    }
    seqs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alias_posts_on_one_node_interleave_with_posts_on_another() {
    let nats = NatsCluster::start(3);
    let nodes = three_nodes(&nats).await;
    let mut member = Raw::client5(nodes[2].local_addr(), "member").await;
    member
        .subscribe5(1, &[("rooms/talk/msg/+", opts(QoS::AtLeastOnce))])
        .await;
    let mut alice = Raw::client5(nodes[0].local_addr(), "alice").await;
    let mut bob = Raw::client5(nodes[1].local_addr(), "bob").await;
    let mut expected = Vec::new();
    for n in 1..=20 {
        expected.extend(round(&mut alice, &mut bob, n).await);
    }
    let got = receive(&mut member, expected.len()).await;
    assert_one_order(&got, &expected, None);
    for node in nodes {
        node.shutdown().await;
    }
}

/// The room messages node `addr` read from the cluster (`$SYS`).
async fn room_messages_read(addr: std::net::SocketAddr) -> u64 {
    sys_count(addr, "$SYS/broker/cluster/room-messages/received", "sys-reader").await
}

/// A node stops following a room that nothing there used for a while
/// (`cluster.room_linger_secs`, 2 s here). A PUBLISH by alias alone then
/// still makes the node catch up with the room before it is handled: a
/// read receipt for the room's newest message is taken, not refused as
/// beyond the room's head (0x99) by the node's stale copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alias_alone_catches_its_node_up_with_a_room_it_stopped_following() {
    let nats = NatsCluster::start(3);
    let nodes = start_nodes(&nats, &["a", "b", "c"], |config| {
        config.sys_interval_secs = 1;
        if let Some(cluster) = config.cluster.as_mut() {
            cluster.room_linger_secs = 2;
        }
    })
    .await;
    let (a, b, c) = (
        nodes[0].local_addr(),
        nodes[1].local_addr(),
        nodes[2].local_addr(),
    );
    let mut member = Raw::client5(c, "member").await;
    member
        .subscribe5(1, &[("rooms/talk/msg/+", opts(QoS::AtLeastOnce))])
        .await;
    let mut alice = Raw::client5(a, "alice").await;
    let mut bob = Raw::client5(b, "bob").await;
    let expected = round(&mut alice, &mut bob, 1).await;
    let got = receive(&mut member, 2).await;
    let seqs = assert_one_order(&got, &expected, None);
    // Bob reads up to his own message; alias 2 names his receipts.
    let receipt = |seq| payloads::to_cbor(&payloads::Receipt { seq });
    let ack = send_and_ack(
        &mut bob,
        aliased(Some("rooms/talk/read/bob"), 2, &receipt(seqs[1]), 100),
    )
    .await;
    assert_eq!(ack.reason_code, PublishAckReason::Success, "bob's first receipt");

    // Alice posts until node b no longer reads her messages: it stopped
    // following the room. Bob's connection, and his aliases, stay.
    let mut probes = Vec::new();
    let mut read = room_messages_read(b).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "node b kept following a room that nothing there used"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        let probe = format!("a-probe-{}", probes.len() + 1);
        let id = 200 + probes.len() as u16;
        let ack = send_and_ack(
            &mut alice,
            publish_with("rooms/talk/msg/alice", probe.as_bytes(), Some(id), &[]),
        )
        .await;
        assert_eq!(ack.reason_code, PublishAckReason::Success);
        probes.push(probe);
        // Node b applies a message of a room it follows at once; two
        // seconds on, `$SYS` (every second) counts it.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = room_messages_read(b).await;
        if now == read {
            break;
        }
        read = now;
    }
    let got = receive(&mut member, probes.len()).await;
    let seqs = assert_one_order(&got, &probes, seqs.last().copied());

    // Bob, by alias alone, reads up to alice's newest message, which
    // node b did not read; then the two post in turn again.
    let newest = *seqs.last().unwrap();
    let ack = send_and_ack(&mut bob, aliased(None, 2, &receipt(newest), 101)).await;
    assert_eq!(
        ack.reason_code,
        PublishAckReason::Success,
        "bob's receipt for seq {newest}, by alias alone, after node b stopped following the room"
    );
    let mut expected = Vec::new();
    for n in 2..=4 {
        expected.extend(round(&mut alice, &mut bob, n).await);
    }
    let got = receive(&mut member, expected.len()).await;
    assert_one_order(&got, &expected, Some(newest));
    for node in nodes {
        node.shutdown().await;
    }
}
