//! Limits: slow consumers, queue bounds, topic length and depth.

mod common;

use common::*;
use rmqtt_codec::types::QoS;
use rmqtt_codec::v5::{DisconnectReasonCode, SubscribeAckReason};
use roomq::config::Limits;

/// A subscriber that stops reading fills its socket and then its bounded
/// queue; the publisher and the other subscribers carry on, and the drops
/// are counted.
#[tokio::test]
async fn slow_consumer_does_not_block_others() {
    let broker = start_with(roomq::Config {
        limits: Limits {
            max_queued_messages: 50,
            ..test_config().limits
        },
        ..test_config()
    })
    .await;
    let addr = broker.local_addr();
    let mut stuck = Raw::client5(addr, "never-reads").await;
    stuck.subscribe5(1, &[("bulk", opts(QoS::AtMostOnce))]).await;
    let mut reader = Raw::client5(addr, "reads").await;
    reader.subscribe5(1, &[("bulk", opts(QoS::AtMostOnce))]).await;

    let payload = vec![7u8; 64 * 1024];
    for i in 0..400u32 {
        let mut p = payload.clone();
        p[..4].copy_from_slice(&i.to_be_bytes());
        assert_eq!(
            broker.publish("bulk", p, QoS::AtMostOnce, false),
            2,
            "both still subscribed"
        );
        let got = reader.publish5().await;
        assert_eq!(&got.payload[..4], &i.to_be_bytes(), "in order, nothing skipped");
    }
    assert!(
        broker.metrics().messages_dropped_queue_full.get() > 0,
        "the stuck subscriber's queue overflowed and the drops were counted"
    );
    assert!(
        broker.session_pending("never-reads").unwrap() <= 50,
        "queue stays bounded"
    );
    drop(stuck);
    broker.shutdown().await;
}

#[tokio::test]
async fn topic_length_and_levels_are_limited() {
    let config = roomq::Config {
        limits: Limits {
            max_topic_levels: 3,
            max_topic_length: 20,
            ..test_config().limits
        },
        ..test_config()
    };
    let broker = start_with(config).await;
    let addr = broker.local_addr();
    let mut sub = Raw::client5(addr, "deep").await;
    let status = sub
        .subscribe5(
            1,
            &[
                ("a/b/c/d", opts(QoS::AtMostOnce)),
                ("a/b/c", opts(QoS::AtMostOnce)),
                ("this/filter/is/far/too/long", opts(QoS::AtMostOnce)),
            ],
        )
        .await;
    assert_eq!(
        status,
        vec![
            SubscribeAckReason::TopicFilterInvalid,
            SubscribeAckReason::GrantedQos0,
            SubscribeAckReason::TopicFilterInvalid
        ]
    );
    let mut publisher = Raw::client5(addr, "deep-pub").await;
    publisher.publish0_5("a/b/c/d", b"x").await;
    assert_eq!(
        publisher.expect_disconnect5().await,
        DisconnectReasonCode::TopicNameInvalid
    );
    broker.shutdown().await;
}
