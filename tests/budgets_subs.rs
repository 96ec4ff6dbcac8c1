//! Per-identity bounds on what sessions keep (issue 23): the bytes of one
//! identity's subscriptions across all its sessions
//! (`max_subscription_bytes_per_user`), the global ceiling on sessions
//! (`max_sessions`), the queue bytes of all one identity's sessions
//! (`max_queued_bytes_per_user`), and history answers, which are never
//! queued for an offline session.

mod common;

use common::chat::*;
use common::*;
use rmqtt_codec::types::QoS;
use rmqtt_codec::v5::{self, Packet, SubscribeAckReason};
use roomq::chat::payloads;
use roomq::config::{Limits, PerUserLimits};
use roomq::Config;

fn persistent_as(id: &str, user: &str) -> v5::Connect {
    let mut connect = persistent5(id);
    connect.username = Some(user.into());
    connect
}

async fn leave(mut c: Raw) {
    c.send5(Packet::Disconnect(v5::Disconnect::default())).await;
    assert!(matches!(c.recv5().await, Got::Closed));
}

/// A filter of exactly `len` bytes, distinct per `n`.
fn long_filter(n: u32, len: usize) -> String {
    let head = format!("f/{n}/");
    format!("{head}{}", "x".repeat(len - head.len()))
}

#[tokio::test]
async fn subscription_bytes_are_bounded_per_identity_across_sessions() {
    // A 1000-byte filter costs about 4 KiB (its copies and overhead): two
    // fit in 10000 bytes, a third does not.
    let broker = start_with(Config {
        per_user: PerUserLimits {
            max_subscription_bytes_per_user: 10_000,
            ..test_config().per_user
        },
        ..test_config()
    })
    .await;
    let addr = broker.local_addr();
    let (mut a, _) = Raw::connect5(addr, persistent_as("mal-a", "mal")).await;
    let first = long_filter(1, 1000);
    let second = long_filter(2, 1000);
    let third = long_filter(3, 1000);
    assert_eq!(
        a.subscribe5(
            1,
            &[
                (&first, opts(QoS::AtLeastOnce)),
                (&second, opts(QoS::AtLeastOnce))
            ]
        )
        .await,
        vec![SubscribeAckReason::GrantedQos1, SubscribeAckReason::GrantedQos1]
    );
    // Subscribing again to a filter it has replaces it: no new charge.
    assert_eq!(
        a.subscribe5(2, &[(&first, opts(QoS::AtMostOnce))]).await,
        vec![SubscribeAckReason::GrantedQos0]
    );
    leave(a).await;
    // Another session of the same identity pays from the same account.
    let (mut b, _) = Raw::connect5(addr, persistent_as("mal-b", "mal")).await;
    assert_eq!(
        b.subscribe5(1, &[(&third, opts(QoS::AtLeastOnce))]).await,
        vec![SubscribeAckReason::QuotaExceeded]
    );
    // A 3.1.1 session of the same identity gets 0x80 for it.
    let mut c3 = connect3("mal-c", false);
    c3.username = Some("mal".into());
    let (mut c, _) = Raw::connect3(addr, c3).await;
    assert_eq!(
        c.subscribe3(1, &[(&third, QoS::AtLeastOnce)]).await,
        vec![rmqtt_codec::v3::SubscribeReturnCode::Failure]
    );
    // Another identity is not affected.
    let (mut other, _) = Raw::connect5(addr, persistent_as("alice-1", "alice")).await;
    assert_eq!(
        other.subscribe5(1, &[(&third, opts(QoS::AtLeastOnce))]).await,
        vec![SubscribeAckReason::GrantedQos1]
    );
    // Unsubscribing gives the share back.
    let (mut a, _) = Raw::connect5(addr, persistent_as("mal-a", "mal")).await;
    a.send5(Packet::Unsubscribe(v5::Unsubscribe {
        packet_id: pid(3),
        user_properties: Vec::new(),
        topic_filters: vec![first.as_str().into()],
    }))
    .await;
    assert!(matches!(a.recv5().await.packet(), Packet::UnsubscribeAck(_)));
    assert_eq!(
        b.subscribe5(2, &[(&third, opts(QoS::AtLeastOnce))]).await,
        vec![SubscribeAckReason::GrantedQos1]
    );
    // Ending a session (clean start) gives all of its share back.
    leave(a).await;
    let mut ending = connect5("mal-a");
    ending.username = Some("mal".into());
    let (a, _) = Raw::connect5(addr, ending).await;
    assert_eq!(
        b.subscribe5(3, &[(&first, opts(QoS::AtLeastOnce))]).await,
        vec![SubscribeAckReason::GrantedQos1]
    );
    leave(a).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn subscriptions_restored_after_a_restart_are_charged_again() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = Config {
        per_user: PerUserLimits {
            max_subscription_bytes_per_user: 10_000,
            ..sled_config(dir.path()).per_user
        },
        ..sled_config(dir.path())
    };
    let broker = start_with(config.clone()).await;
    let (mut a, _) = Raw::connect5(broker.local_addr(), persistent_as("mal-a", "mal")).await;
    let filters = [long_filter(1, 1000), long_filter(2, 1000)];
    a.subscribe5(
        1,
        &[
            (&filters[0], opts(QoS::AtLeastOnce)),
            (&filters[1], opts(QoS::AtLeastOnce)),
        ],
    )
    .await;
    leave(a).await;
    broker.shutdown().await;

    let broker = start_with(config).await;
    let (mut b, _) = Raw::connect5(broker.local_addr(), persistent_as("mal-b", "mal")).await;
    assert_eq!(
        b.subscribe5(1, &[(&long_filter(3, 1000), opts(QoS::AtLeastOnce))])
            .await,
        vec![SubscribeAckReason::QuotaExceeded]
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn max_sessions_is_a_ceiling_on_new_persistent_sessions() {
    let broker = start_with(Config {
        limits: Limits {
            max_sessions: 2,
            ..test_config().limits
        },
        ..test_config()
    })
    .await;
    let addr = broker.local_addr();
    for (id, user) in [("a-1", "a"), ("b-1", "b")] {
        let (c, ack) = Raw::connect5(addr, persistent_as(id, user)).await;
        assert_eq!(ack.reason_code, v5::ConnectAckReason::Success);
        leave(c).await;
    }
    let (_, ack) = Raw::connect5(addr, persistent_as("c-1", "c")).await;
    assert_eq!(ack.reason_code, v5::ConnectAckReason::QuotaExceeded);
    // 3.1.1: code 3, Server unavailable.
    let mut c3 = connect3("c-2", false);
    c3.username = Some("c".into());
    let (_, ack) = Raw::connect3(addr, c3).await;
    assert_eq!(
        ack.return_code,
        rmqtt_codec::v3::ConnectAckReason::ServiceUnavailable
    );
    // A session kept already may be resumed, and a clean session (gone
    // when its connection closes) is bounded by max_connections instead.
    let (c, ack) = Raw::connect5(addr, persistent_as("a-1", "a")).await;
    assert_eq!(ack.reason_code, v5::ConnectAckReason::Success);
    leave(c).await;
    let mut clean = connect5("c-3");
    clean.username = Some("c".into());
    let (c, ack) = Raw::connect5(addr, clean).await;
    assert_eq!(ack.reason_code, v5::ConnectAckReason::Success);
    leave(c).await;
    broker.shutdown().await;
}

/// Asks for `room`'s history with the reply on `reply_to`, and waits for
/// the PUBACK (skipping anything else).
async fn ask_history(asker: &mut Raw, room: &str, reply_to: &str, id: u16) {
    let mut p = publish_with(&format!("$history/rooms/{room}"), &[0xa0], Some(id), &[]);
    if let Some(props) = p.properties.as_mut() {
        props.response_topic = Some(reply_to.into());
    }
    let ack = send_and_ack(asker, p).await;
    assert_eq!(ack.reason_code, v5::PublishAckReason::Success);
}

#[tokio::test]
async fn a_history_answer_is_never_queued_for_an_offline_session() {
    let broker = start().await;
    let addr = broker.local_addr();
    post_many(addr, "poster", "lobby", 3).await;
    // The only subscriber of the Response Topic is offline.
    let (mut away, _) = Raw::connect5(addr, persistent_as("away-1", "away")).await;
    away.subscribe5(1, &[("replies/shared", opts(QoS::AtLeastOnce))])
        .await;
    leave(away).await;
    let mut asker = user5(addr, "asker-1", "asker").await;
    ask_history(&mut asker, "lobby", "replies/shared", 1).await;
    let (mut away, ack) = Raw::connect5(addr, persistent_as("away-1", "away")).await;
    assert!(ack.session_present);
    match away.recv5_within(QUIET).await {
        Got::Nothing => {}
        other => panic!("a history answer was queued for an offline session: {other:?}"),
    }
    // A subscriber connected when the answer is sent gets it.
    ask_history(&mut asker, "lobby", "replies/shared", 2).await;
    let reply = away.publish5().await;
    let answer: payloads::HistoryResponse = payloads::from_cbor(&reply.payload).expect("history-response");
    assert_eq!(answer.messages.len(), 3);
    broker.shutdown().await;
}

#[tokio::test]
async fn queued_bytes_are_bounded_per_identity_across_sessions() {
    // Two sessions of one identity; each could hold every message alone
    // (per-session 16 MiB), together they hold at most 3500 bytes.
    let broker = start_with(Config {
        per_user: PerUserLimits {
            max_queued_bytes_per_user: 3500,
            ..test_config().per_user
        },
        ..test_config()
    })
    .await;
    let addr = broker.local_addr();
    for id in ["mal-1", "mal-2"] {
        let (mut c, _) = Raw::connect5(addr, persistent_as(id, "mal")).await;
        c.subscribe5(1, &[("t/#", opts(QoS::AtLeastOnce))]).await;
        leave(c).await;
    }
    let (mut bystander, _) = Raw::connect5(addr, persistent_as("ann-1", "ann")).await;
    bystander.subscribe5(1, &[("t/#", opts(QoS::AtLeastOnce))]).await;
    leave(bystander).await;
    let mut publisher = Raw::client5(addr, "pub").await;
    // Three messages: ann's one session holds them all (3 x ~1010 bytes);
    // mal's two would hold six without the bound.
    for i in 0..3u16 {
        let mut p = publish("t/x", b"", QoS::AtLeastOnce, Some(i + 1));
        p.payload = bytes::Bytes::from(vec![b'p'; 1000]);
        publisher.send5(Packet::Publish(Box::new(p))).await;
        assert!(matches!(publisher.recv5().await.packet(), Packet::PublishAck(_)));
    }
    let mut received = 0;
    for id in ["mal-1", "mal-2"] {
        let (mut c, _) = Raw::connect5(addr, persistent_as(id, "mal")).await;
        while let Got::Packet(Packet::Publish(p)) = c.recv5_within(QUIET).await {
            ack_publish5(&mut c, &p).await;
            received += 1;
        }
        leave(c).await;
    }
    assert!(
        received <= 3,
        "one identity's sessions held {received} messages of 1000 bytes within 3500 bytes"
    );
    // Another identity's session is not affected.
    let (mut ann, _) = Raw::connect5(addr, persistent_as("ann-1", "ann")).await;
    let mut got = 0;
    while let Got::Packet(Packet::Publish(p)) = ann.recv5_within(QUIET).await {
        ack_publish5(&mut ann, &p).await;
        got += 1;
    }
    assert_eq!(
        got, 3,
        "another identity's session lost messages (mal got {received})"
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn room_cursors_are_bounded_per_identity() {
    let broker = start_with(Config {
        per_user: PerUserLimits {
            max_room_cursors_per_user: 2,
            ..test_config().per_user
        },
        ..test_config()
    })
    .await;
    let addr = broker.local_addr();
    let (mut mal, _) = Raw::connect5(addr, persistent_as("mal-1", "mal")).await;
    mal.subscribe5(1, &[("rooms/#", opts(QoS::AtLeastOnce))]).await;
    leave(mal).await;
    // Four rooms open while she is away: a cursor for each would be kept.
    for room in ["r1", "r2", "r3", "r4"] {
        post_many(addr, "poster", room, 1).await;
    }
    let (mut mal, _) = Raw::connect5(addr, persistent_as("mal-1", "mal")).await;
    let mut replayed = 0;
    while let Got::Packet(Packet::Publish(p)) = mal.recv5_within(QUIET).await {
        ack_publish5(&mut mal, &p).await;
        replayed += 1;
    }
    assert_eq!(replayed, 2, "only the rooms with a cursor are replayed");
    // A room without a cursor still reaches her while she is connected.
    post_many(addr, "poster", "r4", 1).await;
    let p = mal.publish5().await;
    assert!(p.topic.starts_with("rooms/r4/"));
    broker.shutdown().await;
}

/// A clean 5.0 CONNECT of `user` (the session ends with its connection).
fn clean_as(id: &str, user: &str) -> v5::Connect {
    let mut connect = connect5(id);
    connect.username = Some(user.into());
    connect
}

/// A session that ends with its connection holds its subscriptions as
/// long as that connection: they are charged like a persistent session's
/// (the third attack pass opened 100 clean connections of one name with
/// 1,000 filters each, all granted).
#[tokio::test]
async fn clean_sessions_pay_for_their_subscriptions_too() {
    let broker = start_with(Config {
        per_user: PerUserLimits {
            max_subscription_bytes_per_user: 10_000,
            ..test_config().per_user
        },
        ..test_config()
    })
    .await;
    let addr = broker.local_addr();
    let (mut a, _) = Raw::connect5(addr, clean_as("mal-a", "mal")).await;
    let filters = [long_filter(1, 1000), long_filter(2, 1000), long_filter(3, 1000)];
    assert_eq!(
        a.subscribe5(
            1,
            &[
                (&filters[0], opts(QoS::AtLeastOnce)),
                (&filters[1], opts(QoS::AtLeastOnce))
            ]
        )
        .await,
        vec![SubscribeAckReason::GrantedQos1, SubscribeAckReason::GrantedQos1]
    );
    // A second clean connection of the same identity: same account.
    let (mut b, _) = Raw::connect5(addr, clean_as("mal-b", "mal")).await;
    assert_eq!(
        b.subscribe5(1, &[(&filters[2], opts(QoS::AtLeastOnce))]).await,
        vec![SubscribeAckReason::QuotaExceeded]
    );
    // 3.1.1, clean session: 0x80.
    let mut c3 = connect3("mal-c", true);
    c3.username = Some("mal".into());
    let (mut c, _) = Raw::connect3(addr, c3).await;
    assert_eq!(
        c.subscribe3(1, &[(&filters[2], QoS::AtLeastOnce)]).await,
        vec![rmqtt_codec::v3::SubscribeReturnCode::Failure]
    );
    // The first connection's end gives its share back.
    leave(a).await;
    assert_eq!(
        b.subscribe5(2, &[(&filters[2], opts(QoS::AtLeastOnce))]).await,
        vec![SubscribeAckReason::GrantedQos1]
    );
    broker.shutdown().await;
}

/// What waits for a connected clean session that does not read counts
/// for its identity's `max_queued_bytes_per_user` too (the attack: ten
/// clean connections of one identity that never read held 16 MiB each).
#[tokio::test]
async fn clean_sessions_queued_bytes_count_for_the_identity() {
    let broker = start_with(Config {
        per_user: PerUserLimits {
            max_queued_bytes_per_user: 3500,
            ..test_config().per_user
        },
        ..test_config()
    })
    .await;
    let addr = broker.local_addr();
    let mut readers = Vec::new();
    for id in ["mal-1", "mal-2"] {
        let mut connect = clean_as(id, "mal");
        // One message in flight; the rest waits in the broker.
        connect.receive_max = std::num::NonZeroU16::new(1);
        let (mut c, _) = Raw::connect5(addr, connect).await;
        c.subscribe5(1, &[("t/#", opts(QoS::AtLeastOnce))]).await;
        readers.push(c);
    }
    let mut publisher = Raw::client5(addr, "pub").await;
    for i in 0..3u16 {
        let mut p = publish("t/x", b"", QoS::AtLeastOnce, Some(i + 1));
        p.payload = bytes::Bytes::from(vec![b'p'; 1000]);
        publisher.send5(Packet::Publish(Box::new(p))).await;
        assert!(matches!(publisher.recv5().await.packet(), Packet::PublishAck(_)));
    }
    let mut received = 0;
    for c in &mut readers {
        while let Got::Packet(Packet::Publish(p)) = c.recv5_within(QUIET).await {
            ack_publish5(c, &p).await;
            received += 1;
        }
    }
    assert!(
        received <= 3,
        "one identity's clean sessions held {received} messages of 1000 bytes within 3500 bytes"
    );
    assert!(received >= 2, "each session gets what fits ({received})");
    broker.shutdown().await;
}
