//! MQTT 5.0 message flow, with raw packets so that reason codes and
//! properties can be checked exactly, and with rumqttc's v5 client:
//! acknowledgement reasons, subscription options, properties, message
//! expiry, topic aliases, Receive Maximum, Maximum Packet Size, shared
//! subscriptions, quotas.

mod common;

use roomq::config::Limits;
use std::num::{NonZeroU16, NonZeroU32};

use common::*;
use rmqtt_codec::types::QoS;
use rmqtt_codec::v5::{self, DisconnectReasonCode, Packet, SubscribeAckReason};

#[tokio::test]
async fn ack_reason_codes() {
    let broker = start().await;
    let mut raw = Raw::client5(broker.local_addr(), "acks").await;
    let ack = raw.publish1_5(1, "nobody/listens", b"x").await;
    assert_eq!(ack.reason_code, v5::PublishAckReason::NoMatchingSubscribers);
    raw.send5(Packet::Unsubscribe(v5::Unsubscribe {
        packet_id: pid(2),
        user_properties: Vec::new(),
        topic_filters: vec!["never/subscribed".into()],
    }))
    .await;
    match raw.recv5().await.packet() {
        Packet::UnsubscribeAck(u) => {
            assert_eq!(u.status, vec![v5::UnsubscribeAckReason::NoSubscriptionExisted])
        }
        other => panic!("{other:?}"),
    }
    let status = raw
        .subscribe5(
            3,
            &[("a/#/b", opts(QoS::AtMostOnce)), ("ok/+", opts(QoS::AtLeastOnce))],
        )
        .await;
    assert_eq!(
        status,
        vec![
            SubscribeAckReason::TopicFilterInvalid,
            SubscribeAckReason::GrantedQos1
        ]
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn overlapping_subscriptions_one_copy_max_qos_all_ids() {
    let broker = start().await;
    let mut sub = Raw::client5(broker.local_addr(), "overlap").await;
    for (id, filter, qos) in [(1u32, "o/+", QoS::AtMostOnce), (2, "o/#", QoS::AtLeastOnce)] {
        sub.send5(Packet::Subscribe(v5::Subscribe {
            packet_id: pid(id as u16),
            id: NonZeroU32::new(id),
            user_properties: Vec::new(),
            topic_filters: vec![(filter.into(), opts(qos))],
        }))
        .await;
        assert!(matches!(sub.recv5().await.packet(), Packet::SubscribeAck(_)));
    }
    broker.publish("o/x", "once", QoS::ExactlyOnce, false);
    let p = sub.publish5().await;
    assert_eq!(p.qos, QoS::AtLeastOnce, "highest granted QoS");
    let mut ids: Vec<u32> = p
        .properties
        .unwrap()
        .subscription_ids
        .iter()
        .map(|i| i.get())
        .collect();
    ids.sort();
    assert_eq!(ids, vec![1, 2], "every matching subscription identifier");
    assert!(
        matches!(sub.recv5_within(QUIET).await, Got::Nothing),
        "a second copy was sent"
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn no_local_retain_as_published_retain_handling() {
    let broker = start().await;
    let addr = broker.local_addr();
    let mut me = Raw::client5(addr, "me").await;
    let no_local = v5::SubscriptionOptions {
        no_local: true,
        ..opts(QoS::AtMostOnce)
    };
    me.subscribe5(1, &[("nl", no_local)]).await;
    me.publish0_5("nl", b"mine").await;
    assert!(
        matches!(me.recv5_within(QUIET).await, Got::Nothing),
        "No Local: own message came back"
    );

    broker.publish("rap", "kept", QoS::AtMostOnce, true);
    let rap = v5::SubscriptionOptions {
        retain_as_published: true,
        ..opts(QoS::AtMostOnce)
    };
    let plain = opts(QoS::AtMostOnce);
    let mut a = Raw::client5(addr, "rap-yes").await;
    let mut b = Raw::client5(addr, "rap-no").await;
    a.subscribe5(1, &[("rap", rap)]).await;
    b.subscribe5(1, &[("rap", plain)]).await;
    assert!(
        a.publish5().await.retain && b.publish5().await.retain,
        "retained on subscribe"
    );
    broker.publish("rap", "live", QoS::AtMostOnce, true);
    assert!(a.publish5().await.retain, "Retain As Published keeps the flag");
    assert!(!b.publish5().await.retain, "without it the flag is cleared");

    let mut c = Raw::client5(addr, "rh").await;
    let rh1 = v5::SubscriptionOptions {
        retain_handling: v5::RetainHandling::AtSubscribeNew,
        ..plain
    };
    c.subscribe5(1, &[("rap", rh1)]).await;
    assert_eq!(&c.publish5().await.payload[..], b"live");
    c.subscribe5(2, &[("rap", rh1)]).await;
    assert!(
        matches!(c.recv5_within(QUIET).await, Got::Nothing),
        "Retain Handling 1 resent on re-subscribe"
    );
    let rh2 = v5::SubscriptionOptions {
        retain_handling: v5::RetainHandling::NoAtSubscribe,
        ..plain
    };
    let mut d = Raw::client5(addr, "rh2").await;
    d.subscribe5(1, &[("rap", rh2)]).await;
    assert!(
        matches!(d.recv5_within(QUIET).await, Got::Nothing),
        "Retain Handling 2 sent retained"
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn properties_pass_through_unchanged() {
    let broker = start().await;
    let addr = broker.local_addr();
    let mut sub = Raw::client5(addr, "props-sub").await;
    sub.subscribe5(1, &[("props", opts(QoS::AtLeastOnce))]).await;
    let mut publisher = Raw::client5(addr, "props-pub").await;
    let mut p = publish("props", b"{}", QoS::AtLeastOnce, Some(1));
    p.properties = Some(v5::PublishProperties {
        user_properties: vec![("k".into(), "v".into()), ("k".into(), "w".into())],
        content_type: Some("application/json".into()),
        response_topic: Some("reply/here".into()),
        correlation_data: Some(bytes::Bytes::from_static(b"corr")),
        is_utf8_payload: true,
        ..Default::default()
    });
    publisher.send5(Packet::Publish(Box::new(p))).await;
    let got = sub.publish5().await.properties.unwrap();
    assert_eq!(
        got.user_properties,
        vec![("k".into(), "v".into()), ("k".into(), "w".into())]
    );
    assert_eq!(got.content_type.as_deref(), Some("application/json"));
    assert_eq!(got.response_topic.as_deref(), Some("reply/here"));
    assert_eq!(got.correlation_data.as_deref(), Some(&b"corr"[..]));
    assert!(got.is_utf8_payload);
    broker.shutdown().await;
}

#[tokio::test]
async fn message_expiry_forwards_remaining_time() {
    let broker = start().await;
    let addr = broker.local_addr();
    let mut sub = Raw::client5(addr, "exp-sub").await;
    sub.subscribe5(1, &[("exp", opts(QoS::AtMostOnce))]).await;
    let mut publisher = Raw::client5(addr, "exp-pub").await;
    let mut p = publish("exp", b"x", QoS::AtMostOnce, None);
    p.properties = Some(v5::PublishProperties {
        message_expiry_interval: NonZeroU32::new(100),
        ..Default::default()
    });
    publisher.send5(Packet::Publish(Box::new(p))).await;
    let left = sub
        .publish5()
        .await
        .properties
        .unwrap()
        .message_expiry_interval
        .expect("expiry forwarded");
    assert!(left.get() <= 100 && left.get() >= 98, "remaining time {left}");
    broker.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn expired_message_is_not_delivered_to_returning_session() {
    let broker = start().await;
    let addr = broker.local_addr();
    let mut c = connect5("exp-away");
    c.clean_start = false;
    c.session_expiry_interval_secs = 3600;
    let (mut sub, _) = Raw::connect5(addr, c.clone()).await;
    sub.subscribe5(1, &[("away/+", opts(QoS::AtLeastOnce))]).await;
    sub.send5(Packet::Disconnect(v5::Disconnect::default())).await;
    drop(sub);
    tokio::time::sleep(QUIET).await;
    let mut publisher = Raw::client5(addr, "exp-pub2").await;
    let mut short = publish("away/short", b"short", QoS::AtLeastOnce, Some(1));
    short.properties = Some(v5::PublishProperties {
        message_expiry_interval: NonZeroU32::new(2),
        ..Default::default()
    });
    publisher.send5(Packet::Publish(Box::new(short))).await;
    publisher.recv5().await.packet();
    let mut long = publish("away/long", b"long", QoS::AtLeastOnce, Some(2));
    long.properties = Some(v5::PublishProperties {
        message_expiry_interval: NonZeroU32::new(60),
        ..Default::default()
    });
    publisher.send5(Packet::Publish(Box::new(long))).await;
    publisher.recv5().await.packet();
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    let (mut sub, ack) = Raw::connect5(addr, c).await;
    assert!(ack.session_present);
    let p = sub.publish5().await;
    assert_eq!(
        &p.payload[..],
        b"long",
        "the expired message must not be delivered"
    );
    let left = p.properties.unwrap().message_expiry_interval.unwrap().get();
    assert!(left <= 55, "expiry counts down while offline: {left}");
    broker.shutdown().await;
}

#[tokio::test]
async fn inbound_topic_alias() {
    let broker = start_with(roomq::Config {
        limits: Limits {
            topic_alias_maximum: 2,
            ..test_config().limits
        },
        ..test_config()
    })
    .await;
    let addr = broker.local_addr();
    let mut sub = Raw::client5(addr, "alias-sub").await;
    sub.subscribe5(1, &[("alias/#", opts(QoS::AtMostOnce))]).await;
    let mut publisher = Raw::client5(addr, "alias-pub").await;
    let mut first = publish("alias/long/topic", b"1", QoS::AtMostOnce, None);
    first.properties = Some(v5::PublishProperties {
        topic_alias: NonZeroU16::new(1),
        ..Default::default()
    });
    publisher.send5(Packet::Publish(Box::new(first))).await;
    let mut second = publish("", b"2", QoS::AtMostOnce, None);
    second.properties = Some(v5::PublishProperties {
        topic_alias: NonZeroU16::new(1),
        ..Default::default()
    });
    publisher.send5(Packet::Publish(Box::new(second))).await;
    assert_eq!(sub.publish5().await.topic, "alias/long/topic");
    assert_eq!(sub.publish5().await.topic, "alias/long/topic");
    let mut bad = publish("alias/x", b"3", QoS::AtMostOnce, None);
    bad.properties = Some(v5::PublishProperties {
        topic_alias: NonZeroU16::new(3),
        ..Default::default()
    });
    publisher.send5(Packet::Publish(Box::new(bad))).await;
    assert_eq!(
        publisher.expect_disconnect5().await,
        DisconnectReasonCode::TopicAliasInvalid
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn outbound_topic_alias_when_client_allows() {
    let broker = start().await;
    let mut c = connect5("alias-out");
    c.topic_alias_max = 4;
    let (mut sub, _) = Raw::connect5(broker.local_addr(), c).await;
    sub.subscribe5(1, &[("out/#", opts(QoS::AtMostOnce))]).await;
    broker.publish("out/a", "1", QoS::AtMostOnce, false);
    broker.publish("out/a", "2", QoS::AtMostOnce, false);
    let first = sub.publish5().await;
    let alias = first.properties.unwrap().topic_alias.expect("alias set up");
    assert_eq!(first.topic, "out/a");
    let second = sub.publish5().await;
    assert_eq!(second.topic, "", "alias used instead of the topic");
    assert_eq!(second.properties.unwrap().topic_alias, Some(alias));
    broker.shutdown().await;
}

#[tokio::test]
async fn client_receive_maximum_limits_inflight() {
    let broker = start().await;
    let mut c = connect5("slow");
    c.receive_max = NonZeroU16::new(2);
    let (mut sub, _) = Raw::connect5(broker.local_addr(), c).await;
    sub.subscribe5(1, &[("rm", opts(QoS::AtLeastOnce))]).await;
    for i in 0..5 {
        broker.publish("rm", format!("{i}"), QoS::AtLeastOnce, false);
    }
    let a = sub.publish5().await;
    let _b = sub.publish5().await;
    assert!(
        matches!(sub.recv5_within(QUIET).await, Got::Nothing),
        "more in flight than Receive Maximum"
    );
    sub.send5(Packet::PublishAck(v5::PublishAck {
        packet_id: a.packet_id.unwrap(),
        ..Default::default()
    }))
    .await;
    assert_eq!(&sub.publish5().await.payload[..], b"2");
    assert!(matches!(sub.recv5_within(QUIET).await, Got::Nothing));
    broker.shutdown().await;
}

#[tokio::test]
async fn exceeding_broker_receive_maximum_disconnects_0x93() {
    let broker = start_with(roomq::Config {
        limits: Limits {
            receive_maximum: 2,
            ..test_config().limits
        },
        ..test_config()
    })
    .await;
    let mut raw = Raw::client5(broker.local_addr(), "flood").await;
    for id in 1..=3 {
        raw.send5(Packet::Publish(Box::new(publish(
            "q2",
            b"x",
            QoS::ExactlyOnce,
            Some(id),
        ))))
        .await;
    }
    let mut reason = None;
    for _ in 0..3 {
        match raw.recv5().await {
            Got::Packet(Packet::Disconnect(d)) => {
                reason = Some(d.reason_code);
                break;
            }
            Got::Packet(_) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(reason, Some(DisconnectReasonCode::ReceiveMaximumExceeded));
    broker.shutdown().await;
}

#[tokio::test]
async fn message_over_client_maximum_packet_size_is_not_sent() {
    let broker = start().await;
    let mut c = connect5("small");
    c.max_packet_size = NonZeroU32::new(128);
    let (mut sub, _) = Raw::connect5(broker.local_addr(), c).await;
    sub.subscribe5(1, &[("size", opts(QoS::AtLeastOnce))]).await;
    broker.publish("size", vec![b'x'; 500], QoS::AtLeastOnce, false);
    broker.publish("size", "small", QoS::AtLeastOnce, false);
    assert_eq!(&sub.publish5().await.payload[..], b"small");
    assert_eq!(broker.metrics().messages_dropped_too_large.get(), 1);
    broker.shutdown().await;
}

#[tokio::test]
async fn inbound_packet_over_maximum_disconnects_0x95() {
    let broker = start_with(roomq::Config {
        limits: Limits {
            max_packet_size: 1024,
            ..test_config().limits
        },
        ..test_config()
    })
    .await;
    let mut raw = Raw::client5(broker.local_addr(), "big").await;
    raw.send5(Packet::Publish(Box::new(publish(
        "big",
        &[0u8; 2048],
        QoS::AtMostOnce,
        None,
    ))))
    .await;
    assert_eq!(
        raw.expect_disconnect5().await,
        DisconnectReasonCode::PacketTooLarge
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn shared_subscription_round_robin_and_handover() {
    let broker = start().await;
    let addr = broker.local_addr();
    let mut a = Raw::client5(addr, "member-a").await;
    let mut b = Raw::client5(addr, "member-b").await;
    a.subscribe5(1, &[("$share/g/jobs/#", opts(QoS::AtLeastOnce))])
        .await;
    b.subscribe5(1, &[("$share/g/jobs/#", opts(QoS::AtLeastOnce))])
        .await;
    for i in 0..4 {
        broker.publish("jobs/x", format!("{i}"), QoS::AtLeastOnce, false);
    }
    let mut got_a = Vec::new();
    let mut got_b = Vec::new();
    for _ in 0..2 {
        let p = a.publish5().await;
        got_a.push(p.payload.clone());
        a.send5(Packet::PublishAck(v5::PublishAck {
            packet_id: p.packet_id.unwrap(),
            ..Default::default()
        }))
        .await;
        got_b.push(b.publish5().await.payload);
    }
    assert_eq!(got_a.len() + got_b.len(), 4);
    assert!(matches!(a.recv5_within(QUIET).await, Got::Nothing));

    // b holds two unacknowledged messages and leaves: a gets them.
    drop(b);
    let mut handed: Vec<_> = vec![a.publish5().await.payload, a.publish5().await.payload];
    handed.sort();
    got_b.sort();
    assert_eq!(
        handed, got_b,
        "unacknowledged messages of a leaving member go to another member"
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn quota_exceeded_when_single_subscriber_queue_is_full() {
    let broker = start_with(roomq::Config {
        limits: Limits {
            max_queued_messages: 2,
            ..test_config().limits
        },
        ..test_config()
    })
    .await;
    let addr = broker.local_addr();
    let mut c = connect5("full");
    c.clean_start = false;
    c.session_expiry_interval_secs = 600;
    let (mut sub, _) = Raw::connect5(addr, c).await;
    sub.subscribe5(1, &[("quota", opts(QoS::AtLeastOnce))]).await;
    sub.send5(Packet::Disconnect(v5::Disconnect::default())).await;
    drop(sub);
    tokio::time::sleep(QUIET).await;
    let mut publisher = Raw::client5(addr, "quota-pub").await;
    assert_eq!(
        publisher.publish1_5(1, "quota", b"1").await.reason_code,
        v5::PublishAckReason::Success
    );
    assert_eq!(
        publisher.publish1_5(2, "quota", b"2").await.reason_code,
        v5::PublishAckReason::Success
    );
    assert_eq!(
        publisher.publish1_5(3, "quota", b"3").await.reason_code,
        v5::PublishAckReason::QuotaExceeded
    );
    assert_eq!(broker.metrics().messages_dropped_queue_full.get(), 1);
    broker.shutdown().await;
}

#[tokio::test]
async fn rumqttc_v5_round_trip_with_user_properties() {
    use rumqttc::v5::mqttbytes::v5::PublishProperties;
    use rumqttc::v5::mqttbytes::QoS as RQoS;
    let broker = start().await;
    let addr = broker.local_addr();
    let (sub, mut rx) = rumqttc_v5(v5_options(addr, "rv5-sub")).await;
    sub.subscribe("chat/+", RQoS::AtLeastOnce).await.unwrap();
    rx.subacks(1).await;
    let (publisher, _) = rumqttc_v5(v5_options(addr, "rv5-pub")).await;
    let props = PublishProperties {
        user_properties: vec![("msg-id".into(), "42".into())],
        ..Default::default()
    };
    publisher
        .publish_with_properties("chat/room", RQoS::AtLeastOnce, false, "hi", props)
        .await
        .unwrap();
    let p = next(&mut rx).await;
    assert_eq!(&p.payload[..], b"hi");
    assert_eq!(
        p.properties.unwrap().user_properties,
        vec![("msg-id".to_string(), "42".to_string())]
    );
    broker.shutdown().await;
}

/// [MQTT-3.1.2-24], [MQTT-3.1.2-25]: only a packet that exceeds the
/// client's Maximum Packet Size is withheld (and counted); one of exactly
/// that size is sent, at QoS 0 and at QoS 1 (issue 27, item 6; Mosquitto's
/// 12-prop-maximum-packet-size-publish*).
#[tokio::test]
async fn packet_of_exactly_the_client_maximum_packet_size_is_sent() {
    let broker = start().await;
    let addr = broker.local_addr();
    let mut publisher = Raw::client5(addr, "exact-pub").await;
    // A PUBLISH on "t" with no properties: fixed header 2, topic 3,
    // property length 1, packet id 2 at QoS 1; the rest is payload.
    let cases: [(QoS, u32, &'static [u8], &'static [u8]); 2] = [
        (QoS::AtMostOnce, 20, b"0123456789abcd", b"0123456789abcde"),
        (QoS::AtLeastOnce, 21, b"0123456789abc", b"0123456789abcd"),
    ];
    for (n, (qos, max, fits, over)) in cases.into_iter().enumerate() {
        let mut c = connect5("exact-sub");
        c.max_packet_size = NonZeroU32::new(max);
        let (mut sub, _) = Raw::connect5(addr, c).await;
        sub.subscribe5(1, &[("t", opts(qos))]).await;
        let id = 2 * n as u16 + 1;
        publisher.publish1_5(id, "t", over).await;
        publisher.publish1_5(id + 1, "t", fits).await;
        let got = sub.publish5().await;
        assert_eq!(&got.payload[..], fits, "{max}-byte maximum at {qos:?}");
        assert_eq!(got.qos, qos);
    }
    assert_eq!(broker.metrics().messages_dropped_too_large.get(), 2);
    broker.shutdown().await;
}

/// A Maximum Packet Size no CONNACK fits in: nothing is sent (not a CONNACK,
/// not a later DISCONNECT), and the connection closes at once (issue 27,
/// item 7; Mosquitto's 12-prop-maximum-packet-size-connect).
#[tokio::test]
async fn maximum_packet_size_below_any_connack_closes_at_once() {
    let broker = start().await;
    let mut c = connect5("tiny");
    c.keep_alive = 5;
    c.max_packet_size = NonZeroU32::new(2);
    let mut raw = Raw::tcp(broker.local_addr(), true).await;
    raw.send5(Packet::Connect(Box::new(c))).await;
    let got = raw.recv5_within(std::time::Duration::from_secs(5)).await;
    assert!(matches!(got, Got::Closed), "got {got:?}");
    broker.shutdown().await;
}
