//! Cluster mode: a client id moves between nodes. A client that
//! disconnects from one node and connects to another at once finds its id
//! free: the node it left answers the new node's claim even in the moment
//! it lets go of the id, so no CONNECT waits for an answer that never
//! comes (`$SYS/broker/cluster/takeovers/unanswered` counts those).
#![cfg(feature = "cluster")]

mod common;

use common::cluster::{nodes_reporting_sys, sys_count};
use common::nats::NatsCluster;
use common::{Got, Raw};
use rmqtt_codec::v5::{self, Packet};

/// Connect-and-leave rounds, alternating nodes. Before the fix 1 or 2 of
/// these CONNECTs waited 5 s for a claim nobody answered (3 runs of 3).
const ROUNDS: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_moves_between_nodes_is_never_left_waiting_for_its_id() {
    let nats = NatsCluster::start(3);
    let nodes = nodes_reporting_sys(&nats, &["a", "b"]).await;
    for round in 0..ROUNDS {
        let node = nodes[round % 2].local_addr();
        let mut client = Raw::client5(node, "mover").await;
        client.send5(Packet::Disconnect(v5::Disconnect::default())).await;
        assert!(
            matches!(client.recv5().await, Got::Closed),
            "round {round}: the connection closes after DISCONNECT"
        );
    }
    for (node, name) in nodes.iter().zip(["a", "b"]) {
        let unanswered = sys_count(
            node.local_addr(),
            "$SYS/broker/cluster/takeovers/unanswered",
            &format!("sys-{name}"),
        )
        .await;
        assert_eq!(
            unanswered, 0,
            "node {name}: CONNECTs waited for an unanswered claim"
        );
    }
    for node in nodes {
        node.shutdown().await;
    }
}
