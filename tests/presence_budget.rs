//! Presence records are charged to the account that caused them
//! (`max_presence_records_per_user`): one address that invents names
//! cannot evict everyone else's `$presence/{user}` from the shared
//! `max_presence_records`.

mod common;

use std::net::IpAddr;

use common::*;
use rmqtt_codec::types::QoS;
use rmqtt_codec::v5;
use roomq::config::{ChatConfig, PerUserLimits};
use roomq::Config;

/// Retained topics matching `filter`, sorted.
fn retained(broker: &roomq::BrokerHandle, filter: &str) -> Vec<String> {
    let sub = broker
        .subscribe(filter, roomq::QoS::AtMostOnce)
        .expect("subscribes");
    let mut topics = Vec::new();
    while let Some(m) = sub.try_recv() {
        if m.retain {
            topics.push(m.topic.to_string());
        }
    }
    topics.sort();
    topics
}

/// `user` connects from `from`, joins the lobby (which shows its
/// presence) and leaves; returns once the broker has seen it go.
async fn visit_lobby(broker: &roomq::BrokerHandle, from: IpAddr, user: &str) {
    let mut raw = Raw::tcp_from(broker.local_addr(), from, true).await;
    let mut c = connect5(user);
    c.username = Some(user.into());
    raw.send5(v5::Packet::Connect(Box::new(c))).await;
    match raw.recv5().await.packet() {
        v5::Packet::ConnectAck(ack) => assert_eq!(ack.reason_code, v5::ConnectAckReason::Success),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    raw.subscribe5(1, &[("rooms/lobby/msg/+", opts(QoS::AtLeastOnce))])
        .await;
    raw.send5(v5::Packet::Disconnect(Default::default())).await;
    // The broker closes the connection after a DISCONNECT: once closed,
    // presence has counted the connection's end.
    tokio::time::timeout(WAIT, async {
        while broker.open_connections() > 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("connection closed");
}

/// An address that mints names pays for their presence records: beyond
/// `max_presence_records_per_user` its names are not shown, and the
/// records of other accounts (carol's) are never evicted for them.
#[tokio::test]
async fn invented_names_pay_from_their_address_and_evict_nobody() {
    let broker = start_with(Config {
        per_user: PerUserLimits {
            claimed_names_budget_on_loopback: false,
            max_presence_records_per_user: 5,
            ..test_config().per_user
        },
        chat: ChatConfig {
            max_presence_records: 10,
            ..test_config().chat
        },
        ..test_config()
    })
    .await;
    let carol_ip: IpAddr = "127.0.0.2".parse().unwrap();
    let attacker: IpAddr = "127.0.0.1".parse().unwrap();
    visit_lobby(&broker, carol_ip, "carol").await;
    assert_eq!(retained(&broker, "$presence/+"), ["$presence/carol"]);
    for n in 0..20 {
        visit_lobby(&broker, attacker, &format!("{n:0>128}")).await;
    }
    let records = retained(&broker, "$presence/+");
    assert!(
        records.contains(&"$presence/carol".to_string()),
        "carol's record was evicted by another address's names: {} records",
        records.len()
    );
    assert_eq!(records.len(), 1 + 5, "the address paid for 5 records, no more");
    broker.shutdown().await;
}

/// A record's charge is given back when it goes: after the transient
/// records expire, the same address may show new names again.
#[tokio::test]
async fn an_expired_record_gives_its_charge_back() {
    let broker = start_with(Config {
        per_user: PerUserLimits {
            claimed_names_budget_on_loopback: false,
            max_presence_records_per_user: 2,
            ..test_config().per_user
        },
        chat: ChatConfig {
            presence_retention_secs: 1,
            ..test_config().chat
        },
        ..test_config()
    })
    .await;
    let from: IpAddr = "127.0.0.3".parse().unwrap();
    for user in ["a1", "a2", "a3"] {
        visit_lobby(&broker, from, user).await;
    }
    assert_eq!(
        retained(&broker, "$presence/+"),
        ["$presence/a1", "$presence/a2"],
        "the third name is over the bound"
    );
    // Records last `presence_retention_secs`; upkeep removes them. The
    // wait is for the records to age, not a stand-in for an event.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    broker.run_upkeep();
    assert!(retained(&broker, "$presence/+").is_empty());
    visit_lobby(&broker, from, "a4").await;
    assert_eq!(retained(&broker, "$presence/+"), ["$presence/a4"]);
    broker.shutdown().await;
}
