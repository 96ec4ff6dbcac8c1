//! Presence in cluster mode: a user's devices are counted over every node,
//! and the users of a node that dies go offline.
#![cfg(feature = "cluster")]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::cluster::three_nodes;
use common::nats::NatsCluster;
use common::{opts, Got, Raw, QUIET};
use rmqtt_codec::types::QoS;
use rmqtt_codec::v5::{self, Packet};
use roomq::chat::payloads::{self, Presence};
use roomq::Broker;

/// The retained presence of `user` as a new subscriber on `addr` sees it.
async fn presence_on(addr: SocketAddr, user: &str) -> Option<Presence> {
    let mut reader = Raw::client5(addr, &format!("reader-{user}")).await;
    reader
        .subscribe5(1, &[(&*format!("$presence/{user}"), opts(QoS::AtMostOnce))])
        .await;
    match reader.recv5_within(QUIET).await {
        Got::Packet(Packet::Publish(p)) => payloads::from_cbor(&p.payload),
        _ => None,
    }
}

/// Waits until `user`'s presence on `addr` has `status` and `devices`.
async fn until_presence(addr: SocketAddr, user: &str, status: &str, devices: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let seen = presence_on(addr, user).await;
        if seen
            .as_ref()
            .is_some_and(|p| p.status == status && p.devices == devices)
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "presence of {user} never became {status} with {devices} devices; last seen {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A device of a chat user: it joins a room, so presence shows it.
async fn device(addr: SocketAddr, id: &str, user: &str) -> Raw {
    let mut device = common::chat::user5(addr, id, user).await;
    device
        .subscribe5(1, &[("rooms/lobby/msg/+", opts(QoS::AtMostOnce))])
        .await;
    device
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_on_two_nodes_are_one_presence() {
    let nats = NatsCluster::start(3);
    let nodes = three_nodes(&nats).await;
    let addr = |i: usize| nodes[i].local_addr();
    let mut phone = device(addr(0), "phone", "ann").await;
    until_presence(addr(2), "ann", "online", 1).await;
    // A connection that uses no room counts too: ann is shown (on
    // another node).
    let mut laptop = common::chat::user5(addr(1), "laptop", "ann").await;
    until_presence(addr(2), "ann", "online", 2).await;
    until_presence(addr(0), "ann", "online", 2).await;
    phone.send5(Packet::Disconnect(v5::Disconnect::default())).await;
    until_presence(addr(2), "ann", "online", 1).await;
    laptop.send5(Packet::Disconnect(v5::Disconnect::default())).await;
    until_presence(addr(2), "ann", "offline", 0).await;
    until_presence(addr(0), "ann", "offline", 0).await;
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_users_of_a_dead_node_go_offline() {
    let nats = NatsCluster::start(3);
    let (mut doomed, x_addr, _dir) =
        common::nats::spawn_node(&nats, "x", "", "heartbeat_ms = 500\nnode_timeout_ms = 2000");
    let mut y_config = nats.node_config("y");
    if let Some(c) = y_config.cluster.as_mut() {
        c.heartbeat_ms = 500;
        c.node_timeout_ms = 2000;
    }
    let y = Broker::new(y_config).start().await.unwrap();
    let _on_x = device(x_addr, "tablet", "bob").await;
    let _also = device(y.local_addr(), "phone-b", "bob").await;
    let _only_x = device(x_addr, "sensor", "carl").await;
    until_presence(y.local_addr(), "bob", "online", 2).await;
    until_presence(y.local_addr(), "carl", "online", 1).await;
    doomed.kill().unwrap();
    doomed.wait().unwrap();
    // Within node_timeout_ms (2 s here): carl is offline, bob is online on
    // node y only.
    until_presence(y.local_addr(), "carl", "offline", 0).await;
    until_presence(y.local_addr(), "bob", "online", 1).await;
    y.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_shut_down_takes_its_users_offline_at_once() {
    let nats = NatsCluster::start(3);
    // A node timeout far beyond the test's patience: the shutdown itself
    // (its connections closing, its goodbye) must take the user offline.
    let config = |node: &str| {
        let mut config = nats.node_config(node);
        if let Some(c) = config.cluster.as_mut() {
            c.node_timeout_ms = 600_000;
        }
        config
    };
    let a = Broker::new(config("a")).start().await.unwrap();
    let b = Broker::new(config("b")).start().await.unwrap();
    let _device = device(b.local_addr(), "desk", "dora").await;
    until_presence(a.local_addr(), "dora", "online", 1).await;
    b.shutdown().await;
    until_presence(a.local_addr(), "dora", "offline", 0).await;
    a.shutdown().await;
}
