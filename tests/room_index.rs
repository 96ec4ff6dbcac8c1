//! Room cursors and replay plans are found through the filters, not by
//! visiting every room: a SUBSCRIBE (or a reconnect) costs what its filters
//! name, however many rooms the broker holds (issue 23, item 6).
//! `roomq_subscribe_rooms_scanned` counts the rooms visited; the tests
//! count work, never time.

mod common;

use common::chat::{publish_with, seq_of, user_props};
use common::{opts, persistent5, start_with, test_config, Got, Raw, QUIET};
use rmqtt_codec::v5::{self, Packet, PublishAckReason, QoS};
use roomq::config::PerUserLimits;
use roomq::{BrokerHandle, Config};

const ROOMS: usize = 5_000;

fn config() -> Config {
    Config {
        per_user: PerUserLimits {
            // One test client opens every room.
            max_rooms_per_user: 0,
            ..test_config().per_user
        },
        ..test_config()
    }
}

/// Opens rooms `r0`..`r{n-1}` with one message each, pipelined in
/// batches within the broker's Receive Maximum.
async fn open_rooms(broker: &BrokerHandle, n: usize) {
    let mut c = Raw::client5(broker.local_addr(), "opener").await;
    for batch in (0..n).collect::<Vec<_>>().chunks(500) {
        for (i, room) in batch.iter().enumerate() {
            let p = publish_with(
                &format!("rooms/r{room}/msg/opener"),
                b"old",
                Some(i as u16 + 1),
                &[],
            );
            c.send5(Packet::Publish(Box::new(p))).await;
        }
        for _ in batch {
            match c.recv5().await.packet() {
                Packet::PublishAck(ack) => assert_eq!(ack.reason_code, PublishAckReason::Success),
                other => panic!("expected PUBACK, got {other:?}"),
            }
        }
    }
    assert_eq!(broker.chat_counters().rooms_scanned.get(), 0);
}

async fn post(broker: &BrokerHandle, room: &str, payload: &[u8]) {
    let mut c = Raw::client5(broker.local_addr(), "poster").await;
    let p = publish_with(&format!("rooms/{room}/msg/poster"), payload, Some(1), &[]);
    c.send5(Packet::Publish(Box::new(p))).await;
    match c.recv5().await.packet() {
        Packet::PublishAck(ack) => assert_eq!(ack.reason_code, PublishAckReason::Success),
        other => panic!("expected PUBACK, got {other:?}"),
    }
}

async fn leave(mut c: Raw) {
    c.send5(Packet::Disconnect(v5::Disconnect::default())).await;
    assert!(matches!(c.recv5().await, Got::Closed));
}

#[tokio::test]
async fn subscribe_and_reconnect_visit_only_the_rooms_the_filters_name() {
    let broker = start_with(config()).await;
    let addr = broker.local_addr();
    open_rooms(&broker, ROOMS).await;
    let scanned = || broker.chat_counters().rooms_scanned.get();

    let (mut c, _) = Raw::connect5(addr, persistent5("watcher")).await;
    let filters: Vec<String> = (0..200).map(|i| format!("sensors/{i}/#")).collect();
    let with_opts: Vec<_> = filters
        .iter()
        .map(|f| (f.as_str(), opts(QoS::AtLeastOnce)))
        .collect();
    let before = scanned();
    let codes = c.subscribe5(1, &with_opts).await;
    assert!(codes.iter().all(|c| *c == v5::SubscribeAckReason::GrantedQos1));
    assert_eq!(scanned() - before, 0, "200 filters that match no room");

    let before = scanned();
    c.subscribe5(2, &[("rooms/r7/#", opts(QoS::AtLeastOnce))]).await;
    assert!(scanned() - before <= 1, "one named room: {}", scanned() - before);
    leave(c).await;

    // Offline: a message in r7; the reconnect's replay plans only r7.
    post(&broker, "r7", b"new").await;
    let before = scanned();
    let (mut c, _) = Raw::connect5(addr, persistent5("watcher")).await;
    let p = c.publish5().await;
    assert_eq!(&p.payload[..], b"new");
    assert_eq!(seq_of(&p), 2);
    assert!(
        scanned() - before <= 4,
        "replay of one room: {}",
        scanned() - before
    );
    broker.shutdown().await;
}

/// A filter covering every room starts no cursor per room: a room gets
/// its cursor with its first message after the subscription, also while
/// the session is offline. The replay then gives what arrived after the
/// subscription, in rooms old and new, and no older history.
#[tokio::test]
async fn a_wildcard_subscription_replays_only_what_came_after_it() {
    let broker = start_with(config()).await;
    let addr = broker.local_addr();
    open_rooms(&broker, ROOMS).await;
    let scanned = || broker.chat_counters().rooms_scanned.get();

    let (mut c, _) = Raw::connect5(addr, persistent5("wild")).await;
    let before = scanned();
    c.subscribe5(1, &[("rooms/+/msg/+", opts(QoS::AtLeastOnce))])
        .await;
    assert_eq!(scanned() - before, 0, "no cursor per room at SUBSCRIBE");
    leave(c).await;

    post(&broker, "r3", b"after-r3").await;
    post(&broker, "fresh", b"after-fresh").await;
    let before = scanned();
    let (mut c, _) = Raw::connect5(addr, persistent5("wild")).await;
    let mut got = Vec::new();
    for _ in 0..2 {
        let p = c.publish5().await;
        got.push((p.topic.to_string(), seq_of(&p), user_props(&p)["ts"].is_empty()));
        common::chat::ack_publish5(&mut c, &p).await;
    }
    got.sort();
    assert_eq!(
        got,
        vec![
            ("rooms/fresh/msg/poster".to_string(), 1, false),
            ("rooms/r3/msg/poster".to_string(), 2, false),
        ]
    );
    assert!(
        matches!(c.recv5_within(QUIET).await, Got::Nothing),
        "no older history"
    );
    assert!(
        scanned() - before <= 8,
        "replay of two rooms: {}",
        scanned() - before
    );
    broker.shutdown().await;
}

/// Cursors a wildcard subscriber started while offline are not saved at
/// once; after a restart its first replay finds the rooms written since
/// its record was saved, so nothing it missed is lost, and a room quiet
/// since before the subscription replays nothing.
/// (A room first written after the save replays from its start: see
/// `session/replay.rs`.)
#[tokio::test]
async fn a_wildcard_subscriber_misses_nothing_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let sled = || Config {
        per_user: PerUserLimits {
            max_rooms_per_user: 0,
            ..common::sled_config(dir.path()).per_user
        },
        ..common::sled_config(dir.path())
    };
    let broker = start_with(sled()).await;
    let addr = broker.local_addr();
    post(&broker, "quiet", b"before").await;
    post(&broker, "busy", b"before").await;
    let (mut c, _) = Raw::connect5(addr, persistent5("wild")).await;
    c.subscribe5(1, &[("rooms/+/msg/+", opts(QoS::AtLeastOnce))])
        .await;
    leave(c).await;
    post(&broker, "busy", b"missed-busy").await;
    post(&broker, "fresh", b"missed-fresh").await;
    broker.shutdown().await;

    let broker = start_with(sled()).await;
    let (mut c, _) = Raw::connect5(broker.local_addr(), persistent5("wild")).await;
    let mut got = Vec::new();
    while let Got::Packet(Packet::Publish(p)) = c.recv5_within(QUIET).await {
        got.push((p.topic.to_string(), p.payload.to_vec()));
        common::chat::ack_publish5(&mut c, &p).await;
    }
    // Nothing missed, nothing from the quiet room. A room first written
    // after the record's save replays from its start (at least once).
    for missed in [("busy", "missed-busy"), ("fresh", "missed-fresh")] {
        let want = (
            format!("rooms/{}/msg/poster", missed.0),
            missed.1.as_bytes().to_vec(),
        );
        assert!(got.contains(&want), "{missed:?} in {got:?}");
    }
    assert!(got.iter().all(|(topic, _)| !topic.contains("quiet")), "{got:?}");
    broker.shutdown().await;
}
