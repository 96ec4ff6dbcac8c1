//! Helpers of the cluster tests (`cluster.rs`, `cluster_faults.rs`):
//! nodes on one NATS cluster, cross-node routing.

use std::time::Duration;

use rmqtt_codec::types::{Publish, QoS};
use rmqtt_codec::v5::Packet;
use roomq::{Broker, BrokerHandle};

use super::chat::ack_publish5;
use super::nats::NatsCluster;
use super::{publish, Got, Raw, QUIET, WAIT};

/// Starts nodes `a`, `b`, `c` on `nats` (at once, as an operator would).
pub async fn three_nodes(nats: &NatsCluster) -> Vec<BrokerHandle> {
    start_nodes(nats, &["a", "b", "c"], |_| {}).await
}

/// Starts the nodes `names` on `nats` at once, each publishing `$SYS`
/// every second (`sys_count`).
pub async fn nodes_reporting_sys(nats: &NatsCluster, names: &[&str]) -> Vec<BrokerHandle> {
    start_nodes(nats, names, |config| config.sys_interval_secs = 1).await
}

/// Starts the nodes `names` on `nats` at once, each config changed by
/// `configure`.
pub async fn start_nodes(
    nats: &NatsCluster,
    names: &[&str],
    configure: impl Fn(&mut roomq::Config),
) -> Vec<BrokerHandle> {
    let starts = names.iter().map(|node| {
        let mut config = nats.node_config(node);
        configure(&mut config);
        Broker::new(config).start()
    });
    futures_util::future::join_all(starts)
        .await
        .into_iter()
        .map(|b| b.expect("cluster node starts"))
        .collect()
}

/// Publishes QoS 0 probes on `topic` through `publisher` until `subscriber`
/// gets one (its subscription has reached the other nodes), then drains
/// the probes.
pub async fn wait_until_routed(publisher: &mut Raw, subscriber: &mut Raw, topic: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{topic} never reached the other node"
        );
        publisher
            .send5(Packet::Publish(Box::new(publish(
                topic,
                b"probe",
                QoS::AtMostOnce,
                None,
            ))))
            .await;
        if let Got::Packet(Packet::Publish(_)) = subscriber.recv5_within(Duration::from_millis(200)).await {
            break;
        }
    }
    while let Got::Packet(_) = subscriber.recv5_within(QUIET).await {}
}

/// Receives `n` PUBLISHes (acknowledging QoS 1 ones), skipping probes.
pub async fn receive(c: &mut Raw, n: usize) -> Vec<Publish> {
    let mut got = Vec::new();
    while got.len() < n {
        match c.recv5().await {
            Got::Packet(Packet::Publish(p)) => {
                ack_publish5(c, &p).await;
                if &p.payload[..] != b"probe" {
                    got.push(*p);
                }
            }
            Got::Packet(_) => {}
            other => panic!("expected {n} messages, got {} then {other:?}", got.len()),
        }
    }
    got
}

/// A count node `addr` publishes on `$SYS` `topic`, asked as `asker`:
/// the update after the retained value, which may be one
/// `sys_interval_secs` old.
pub async fn sys_count(addr: std::net::SocketAddr, topic: &str, asker: &str) -> u64 {
    let mut c = Raw::client5(addr, asker).await;
    c.subscribe5(1, &[(topic, super::opts(QoS::AtMostOnce))]).await;
    let mut values = Vec::new();
    while values.len() < 2 {
        match c.recv5().await {
            Got::Packet(Packet::Publish(p)) => {
                values.push(std::str::from_utf8(&p.payload).unwrap().parse::<u64>().unwrap())
            }
            Got::Packet(_) => {}
            other => panic!("expected the $SYS count {topic}, got {other:?}"),
        }
    }
    values[1]
}
