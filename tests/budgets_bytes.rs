//! Every byte counts (issue 23): each test is a way an attacker made the
//! broker hold bytes that no limit saw (a history answer, messages in
//! flight to a reader that never acknowledges, User Properties, retained
//! messages of one identity, topic aliases), and asserts the bound a client
//! can observe: a reason code, a count, `more` in an answer.

mod common;

use std::collections::HashMap;

use bytes::Bytes;
use common::chat::{post_many, publish_with, send_and_ack};
use common::*;
use rmqtt_codec::types::{Publish, QoS};
use rmqtt_codec::v5::{DisconnectReasonCode, Packet, PublishAckReason};
use roomq::chat::payloads::{self, HistoryResponse};
use roomq::config::{ChatConfig, Limits, PerUserLimits};
use roomq::Config;

/// A QoS 1 PUBLISH of `payload` with User Properties of `prop_bytes` in
/// all (a string is at most 64 KiB, so several).
fn with_big_property(topic: &str, payload: &[u8], prop_bytes: usize, id: u16, retain: bool) -> Publish {
    let chunk = "p".repeat(50_000);
    let mut props = Vec::new();
    let mut left = prop_bytes;
    while left > 0 {
        let n = left.min(chunk.len());
        props.push(("pad", &chunk[..n]));
        left -= n;
    }
    let mut p = publish_with(topic, payload, Some(id), &props);
    p.retain = retain;
    p
}

#[tokio::test]
async fn user_properties_count_against_max_retained_bytes() {
    let broker = start_with(Config {
        limits: Limits {
            max_retained_bytes: 1024 * 1024,
            ..test_config().limits
        },
        ..test_config()
    })
    .await;
    let mut c = Raw::client5(broker.local_addr(), "props").await;
    // One-byte payloads, 300 KB of properties each: the fourth goes over.
    for i in 0..4u16 {
        let p = with_big_property(&format!("big/{i}"), b"x", 300 * 1024, i + 1, true);
        let reason = send_and_ack(&mut c, p).await.reason_code;
        if i < 3 {
            // No subscriber: 0x10, a success.
            assert_eq!(reason, PublishAckReason::NoMatchingSubscribers, "retained #{i}");
        } else {
            assert_eq!(reason, PublishAckReason::QuotaExceeded, "retained #{i}");
        }
    }
}

#[tokio::test]
async fn user_properties_count_against_max_queued_bytes() {
    let broker = start_with(Config {
        limits: Limits {
            max_queued_bytes: 1024 * 1024,
            ..test_config().limits
        },
        ..test_config()
    })
    .await;
    let addr = broker.local_addr();
    let (mut away, _) = Raw::connect5(addr, persistent5("away")).await;
    away.subscribe5(1, &[("bulk", opts(QoS::AtLeastOnce))]).await;
    drop(away);
    let mut publisher = Raw::client5(addr, "pub").await;
    for i in 0..20u16 {
        send_and_ack(
            &mut publisher,
            with_big_property("bulk", b"x", 200 * 1024, i + 1, false),
        )
        .await;
    }
    let pending = broker.session_pending("away").expect("the session exists");
    assert!(pending <= 6, "{pending} messages queued for an offline session");
    assert!(broker.metrics().messages_dropped_queue_full.get() >= 14);
}

#[tokio::test]
async fn messages_in_flight_count_against_max_queued_bytes() {
    let broker = start_with(Config {
        limits: Limits {
            max_queued_bytes: 1024 * 1024,
            ..test_config().limits
        },
        ..test_config()
    })
    .await;
    let addr = broker.local_addr();
    // Reads every PUBLISH, acknowledges none.
    let mut reader = Raw::client5(addr, "never-acks").await;
    reader.subscribe5(1, &[("bulk", opts(QoS::AtLeastOnce))]).await;
    let mut publisher = Raw::client5(addr, "pub").await;
    for i in 0..20u16 {
        let mut p = publish("bulk", b"", QoS::AtLeastOnce, Some(i + 1));
        p.payload = Bytes::from(vec![7u8; 200 * 1024]);
        send_and_ack(&mut publisher, p).await;
    }
    let mut received = 0;
    while let Got::Packet(Packet::Publish(_)) = reader.recv5_within(QUIET).await {
        received += 1;
    }
    // 1 MiB holds five 200 KB messages, in flight or queued.
    assert!(
        received <= 6,
        "{received} messages held in flight for a reader that never acknowledges"
    );
    assert!(broker.metrics().messages_dropped_queue_full.get() >= 14);
    assert!(broker.session_pending("never-acks").unwrap_or(0) <= 6);
}

#[tokio::test]
async fn retained_messages_are_bounded_per_identity() {
    let broker = start_with(Config {
        per_user: PerUserLimits {
            max_retained_messages_per_user: 2,
            max_retained_bytes_per_user: 64 * 1024,
            ..test_config().per_user
        },
        ..test_config()
    })
    .await;
    let addr = broker.local_addr();
    let mut alice = Raw::client5(addr, "alice").await;
    let mut bob = Raw::client5(addr, "bob").await;
    let retained = |topic: &str, payload: &[u8], id: u16| {
        let mut p = publish_with(topic, payload, Some(id), &[]);
        p.retain = true;
        p
    };
    let mut live = Raw::client5(addr, "live").await;
    live.subscribe5(1, &[("a/#", opts(QoS::AtMostOnce))]).await;
    for i in 0..3u16 {
        let expected = if i < 2 {
            PublishAckReason::Success
        } else {
            PublishAckReason::QuotaExceeded
        };
        let ack = send_and_ack(&mut alice, retained(&format!("a/{i}"), b"v", i + 1)).await;
        assert_eq!(ack.reason_code, expected, "alice's retained #{i}");
        assert_eq!(
            live.publish5().await.topic,
            format!("a/{i}"),
            "delivered either way"
        );
    }
    // Replacing one of hers is not a new one.
    let ack = send_and_ack(&mut alice, retained("a/0", b"w", 4)).await;
    assert_eq!(ack.reason_code, PublishAckReason::Success);
    // Bob has an account of his own.
    for i in 0..2u16 {
        let ack = send_and_ack(&mut bob, retained(&format!("b/{i}"), b"v", i + 1)).await;
        // No subscriber: 0x10, a success.
        assert_eq!(
            ack.reason_code,
            PublishAckReason::NoMatchingSubscribers,
            "bob's retained #{i}"
        );
    }
    // Bob replaces alice's a/1: released from her account, charged to his
    // (over his bound: refused, and a/1 stays hers).
    let ack = send_and_ack(&mut bob, retained("a/1", b"bob", 3)).await;
    assert_eq!(ack.reason_code, PublishAckReason::QuotaExceeded);
    // Clearing gives her room for another.
    let ack = send_and_ack(&mut alice, retained("a/0", b"", 5)).await;
    assert_eq!(ack.reason_code, PublishAckReason::Success);
    let ack = send_and_ack(&mut alice, retained("a/2", b"v", 6)).await;
    assert_eq!(ack.reason_code, PublishAckReason::Success);
    // And in bytes: 64 KiB per identity.
    let mut carol = Raw::client5(addr, "carol").await;
    let mut big = publish("c/big", b"", QoS::AtLeastOnce, Some(1));
    big.payload = Bytes::from(vec![1u8; 70 * 1024]);
    big.retain = true;
    assert_eq!(
        send_and_ack(&mut carol, big).await.reason_code,
        PublishAckReason::QuotaExceeded
    );
}

#[tokio::test]
async fn topic_alias_bytes_are_bounded_per_connection() {
    let broker = start_with(Config {
        limits: Limits {
            max_topic_alias_bytes: 1024,
            ..test_config().limits
        },
        ..test_config()
    })
    .await;
    let mut c = Raw::client5(broker.local_addr(), "aliases").await;
    let aliased = |topic: String, alias: u16| {
        let mut p = publish("", b"x", QoS::AtMostOnce, None);
        p.topic = topic.into();
        if let Some(props) = p.properties.as_mut() {
            props.topic_alias = std::num::NonZeroU16::new(alias);
        }
        Packet::Publish(Box::new(p))
    };
    c.send5(aliased(format!("a/{}", "x".repeat(600)), 1)).await;
    // Re-registering alias 1 replaces its topic: still 600 bytes held.
    c.send5(aliased(format!("b/{}", "x".repeat(600)), 1)).await;
    assert!(matches!(c.recv5_within(QUIET).await, Got::Nothing));
    c.send5(aliased(format!("c/{}", "x".repeat(600)), 2)).await;
    assert_eq!(
        c.expect_disconnect5().await,
        DisconnectReasonCode::TopicAliasInvalid
    );
}

/// Asks `room`'s history (5.0, reply on `replies/{id}`) and returns the
/// PUBACK reason and the answer, if one came within `QUIET` of the PUBACK.
async fn ask(
    c: &mut Raw,
    room: &str,
    request: &HashMap<&str, u64>,
    id: u16,
) -> (PublishAckReason, Option<HistoryResponse>) {
    let mut p = publish_with(
        &format!("$history/rooms/{room}"),
        &payloads::to_cbor(request),
        Some(id),
        &[],
    );
    if let Some(props) = p.properties.as_mut() {
        props.response_topic = Some("replies/asker".into());
    }
    c.send5(Packet::Publish(Box::new(p))).await;
    let (mut reason, mut answer) = (None, None);
    loop {
        let within = if reason.is_some() { QUIET } else { WAIT };
        match c.recv5_within(within).await {
            Got::Packet(Packet::Publish(reply)) => {
                answer = Some(payloads::from_cbor(&reply.payload).expect("history-response"));
            }
            Got::Packet(Packet::PublishAck(ack)) => reason = Some(ack.reason_code),
            Got::Nothing if reason.is_some() => break,
            other => panic!("expected the history reply, got {other:?}"),
        }
        if reason.is_some() && answer.is_some() {
            break;
        }
    }
    (reason.expect("a PUBACK"), answer)
}

#[tokio::test]
async fn a_history_answer_is_bounded_in_bytes_and_says_more() {
    let broker = start_with(Config {
        chat: ChatConfig {
            history_max_bytes: 64 * 1024,
            ..test_config().chat
        },
        ..test_config()
    })
    .await;
    let addr = broker.local_addr();
    let mut poster = Raw::client5(addr, "poster").await;
    for i in 0..10u16 {
        let mut p = publish_with("rooms/big/msg/poster", b"", Some(i + 1), &[]);
        p.payload = Bytes::from(vec![b'a' + i as u8; 20 * 1024]);
        assert_eq!(
            send_and_ack(&mut poster, p).await.reason_code,
            PublishAckReason::Success
        );
    }
    let mut asker = Raw::client5(addr, "asker").await;
    asker
        .subscribe5(1, &[("replies/asker", opts(QoS::AtMostOnce))])
        .await;
    // The newest first: 3 × 20 KB fit in 64 KiB, not 10.
    let (reason, answer) = ask(&mut asker, "big", &[("limit", 10)].into(), 2).await;
    assert_eq!(reason, PublishAckReason::Success);
    let answer = answer.expect("an answer");
    let seqs: Vec<u64> = answer.messages.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, vec![8, 9, 10]);
    assert!(answer.more, "the answer says it was cut");
    // The rest, asked as for the count limit: `before` the oldest received.
    let (_, page) = ask(&mut asker, "big", &[("limit", 10), ("before", 8)].into(), 3).await;
    let seqs: Vec<u64> = page.expect("an answer").messages.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, vec![5, 6, 7]);
    // Forward: the oldest after `after`.
    let (_, page) = ask(&mut asker, "big", &[("limit", 10), ("after", 0)].into(), 4).await;
    let page = page.expect("an answer");
    let seqs: Vec<u64> = page.messages.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, vec![1, 2, 3]);
    assert!(page.more);
}

#[tokio::test]
async fn history_requests_are_rate_limited_per_identity() {
    let broker = start_with(Config {
        per_user: PerUserLimits {
            history_requests_per_minute: 2,
            ..test_config().per_user
        },
        ..test_config()
    })
    .await;
    let addr = broker.local_addr();
    post_many(addr, "poster", "rate", 3).await;
    let mut asker = Raw::client5(addr, "asker").await;
    asker
        .subscribe5(1, &[("replies/asker", opts(QoS::AtMostOnce))])
        .await;
    let request: HashMap<&str, u64> = [("limit", 5)].into();
    for id in 2..4 {
        let (reason, answer) = ask(&mut asker, "rate", &request, id).await;
        assert_eq!(reason, PublishAckReason::Success);
        assert_eq!(answer.expect("an answer").messages.len(), 3);
    }
    let (reason, answer) = ask(&mut asker, "rate", &request, 4).await;
    // 0x97: 5.0 has no 0x96 in a PUBACK (3.4.2.1), only in a DISCONNECT.
    assert_eq!(reason, PublishAckReason::QuotaExceeded);
    assert!(answer.is_none(), "no answer beyond the rate");
    // Another identity has its own bucket.
    let mut other = Raw::client5(addr, "other").await;
    let (reason, _) = ask(&mut other, "rate", &request, 1).await;
    assert_eq!(reason, PublishAckReason::Success);
    // 3.1.1: acknowledged, not answered, counted.
    let (mut old, _) = Raw::connect3(addr, connect3("asker", true)).await;
    old.subscribe3(1, &[("users/asker/history/#", QoS::AtLeastOnce)])
        .await;
    let mut p = publish("$history/rooms/rate", b"", QoS::AtLeastOnce, Some(2));
    p.payload = Bytes::from(payloads::to_cbor(&request));
    old.send3(rmqtt_codec::v3::Packet::Publish(Box::new(p))).await;
    assert!(matches!(
        old.recv3().await.packet(),
        rmqtt_codec::v3::Packet::PublishAck { .. }
    ));
    assert!(matches!(old.recv3_within(QUIET).await, Got::Nothing));
    assert_eq!(broker.chat_counters().history_refused_rate.get(), 2);
}
