//! MQTT 3.1.1 behaviour, with rumqttc's v4 client and raw packets.

mod common;

use common::*;
use rmqtt_codec::types::QoS;
use rmqtt_codec::v3;
use roomq::config::Limits;
use rumqttc::QoS as RQoS;

#[tokio::test]
async fn publish_reaches_subscriber_at_min_qos() {
    let broker = start().await;
    let addr = broker.local_addr();
    let (sub, mut rx) = rumqttc_v4(v4_options(addr, "sub")).await;
    sub.subscribe("t/q0", RQoS::AtMostOnce).await.unwrap();
    sub.subscribe("t/q1", RQoS::AtLeastOnce).await.unwrap();
    sub.subscribe("t/q2", RQoS::ExactlyOnce).await.unwrap();
    rx.subacks(3).await;
    let (publisher, _prx) = rumqttc_v4(v4_options(addr, "pub")).await;
    publisher
        .publish("t/q0", RQoS::ExactlyOnce, false, "a")
        .await
        .unwrap();
    publisher
        .publish("t/q1", RQoS::ExactlyOnce, false, "b")
        .await
        .unwrap();
    publisher
        .publish("t/q2", RQoS::AtLeastOnce, false, "c")
        .await
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..3 {
        let p = next(&mut rx).await;
        got.push((p.topic.to_string(), p.qos));
    }
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        got,
        vec![
            ("t/q0".to_string(), RQoS::AtMostOnce),
            ("t/q1".to_string(), RQoS::AtLeastOnce),
            ("t/q2".to_string(), RQoS::AtLeastOnce),
        ]
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn wildcards_and_dollar_topics() {
    let broker = start().await;
    let addr = broker.local_addr();
    let (mut sub, _) = Raw::connect3(addr, connect3("wild", true)).await;
    sub.subscribe3(1, &[("#", QoS::AtMostOnce)]).await;
    let (mut sub2, _) = Raw::connect3(addr, connect3("plus", true)).await;
    sub2.subscribe3(1, &[("a/+/c", QoS::AtMostOnce)]).await;
    broker.publish("$SYS/private", "x", QoS::AtMostOnce, false);
    broker.publish("a/b/c", "y", QoS::AtMostOnce, false);
    broker.publish("a/b/d", "z", QoS::AtMostOnce, false);
    let p = sub.publish3().await;
    assert_eq!(&*p.topic, "a/b/c", "'#' must not match $SYS topics");
    assert_eq!(&*sub2.publish3().await.topic, "a/b/c");
    assert_eq!(&*sub.publish3().await.topic, "a/b/d");
    assert!(matches!(sub2.recv3_within(QUIET).await, Got::Nothing));
    broker.shutdown().await;
}

#[tokio::test]
async fn retained_set_replace_clear_and_flag() {
    let broker = start().await;
    let addr = broker.local_addr();
    let (publisher, mut acks) = rumqttc_v4(v4_options(addr, "p")).await;
    publisher
        .publish("r/1", RQoS::AtLeastOnce, true, "first")
        .await
        .unwrap();
    publisher
        .publish("r/1", RQoS::AtLeastOnce, true, "second")
        .await
        .unwrap();
    publisher
        .publish("r/2", RQoS::AtLeastOnce, true, "gone")
        .await
        .unwrap();
    publisher
        .publish("r/2", RQoS::AtLeastOnce, true, "")
        .await
        .unwrap();
    acks.pubacks(4).await;

    let (mut sub, _) = Raw::connect3(addr, connect3("s", true)).await;
    sub.subscribe3(1, &[("r/#", QoS::AtLeastOnce)]).await;
    let p = sub.publish3().await;
    assert_eq!(
        (&*p.topic, &p.payload[..], p.retain),
        ("r/1", &b"second"[..], true)
    );
    assert!(
        matches!(sub.recv3_within(QUIET).await, Got::Nothing),
        "cleared retained message was sent"
    );
    // A live message is forwarded with RETAIN = 0 ([MQTT-3.3.1-9]).
    publisher
        .publish("r/1", RQoS::AtMostOnce, true, "live")
        .await
        .unwrap();
    let live = sub.publish3().await;
    assert_eq!((&live.payload[..], live.retain), (&b"live"[..], false));
    broker.shutdown().await;
}

#[tokio::test]
async fn will_sent_on_drop_not_on_disconnect() {
    let broker = start().await;
    let addr = broker.local_addr();
    let (watcher, mut rx) = rumqttc_v4(v4_options(addr, "watcher")).await;
    watcher.subscribe("wills/#", RQoS::AtLeastOnce).await.unwrap();
    rx.subacks(1).await;

    let with_will = |id: &str, topic: &str| {
        let mut c = connect3(id, true);
        c.last_will = Some(v3::LastWill {
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: topic.into(),
            message: "gone".into(),
        });
        c
    };
    // Clean DISCONNECT: no will.
    let (mut polite, _) = Raw::connect3(addr, with_will("polite", "wills/polite")).await;
    polite.send3(v3::Packet::Disconnect).await;
    polite.expect_closed3().await;
    // Dropped socket: will.
    let (rude, _) = Raw::connect3(addr, with_will("rude", "wills/rude")).await;
    drop(rude);
    let p = next(&mut rx).await;
    assert_eq!(p.topic, "wills/rude");
    nothing(&mut rx).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn persistent_session_keeps_messages_in_order() {
    let broker = start().await;
    let addr = broker.local_addr();
    let (mut sub, ack) = Raw::connect3(addr, connect3("keeper", false)).await;
    assert!(!ack.session_present);
    sub.subscribe3(1, &[("q/#", QoS::AtLeastOnce)]).await;
    sub.send3(v3::Packet::Disconnect).await;
    sub.expect_closed3().await;

    for i in 0..20u32 {
        broker.publish("q/x", i.to_string(), QoS::AtLeastOnce, false);
    }
    let (mut sub, ack) = Raw::connect3(addr, connect3("keeper", false)).await;
    assert!(ack.session_present, "session present after reconnect");
    for i in 0..20u32 {
        let p = sub.publish3().await;
        assert_eq!(p.payload, i.to_string().as_bytes());
        sub.send3(v3::Packet::PublishAck {
            packet_id: p.packet_id.unwrap(),
        })
        .await;
    }
    // Clean session ends it.
    sub.send3(v3::Packet::Disconnect).await;
    let (_c, ack) = Raw::connect3(addr, connect3("keeper", true)).await;
    assert!(!ack.session_present);
    broker.shutdown().await;
}

#[tokio::test]
async fn unacknowledged_message_resent_with_dup_after_reconnect() {
    let broker = start().await;
    let addr = broker.local_addr();
    let (mut sub, _) = Raw::connect3(addr, connect3("forgetful", false)).await;
    sub.subscribe3(1, &[("d", QoS::AtLeastOnce)]).await;
    broker.publish("d", "once", QoS::AtLeastOnce, false);
    let first = sub.publish3().await;
    assert!(!first.dup);
    drop(sub); // no PUBACK
    tokio::time::sleep(QUIET).await;
    let (mut sub, ack) = Raw::connect3(addr, connect3("forgetful", false)).await;
    assert!(ack.session_present);
    let again = sub.publish3().await;
    assert!(again.dup, "resent message must have DUP set");
    assert_eq!(
        (again.packet_id, &again.payload[..]),
        (first.packet_id, &b"once"[..])
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn qos2_inbound_duplicate_is_delivered_once() {
    let broker = start().await;
    let addr = broker.local_addr();
    let (mut sub, _) = Raw::connect3(addr, connect3("s2", true)).await;
    sub.subscribe3(1, &[("e", QoS::ExactlyOnce)]).await;
    let (mut p, _) = Raw::connect3(addr, connect3("p2", true)).await;
    let mut msg = publish("e", b"exactly", QoS::ExactlyOnce, Some(7));
    msg.properties = None;
    p.send3(v3::Packet::Publish(Box::new(msg.clone()))).await;
    assert!(matches!(
        p.recv3().await.packet(),
        v3::Packet::PublishReceived { .. }
    ));
    msg.dup = true;
    p.send3(v3::Packet::Publish(Box::new(msg))).await;
    assert!(matches!(
        p.recv3().await.packet(),
        v3::Packet::PublishReceived { .. }
    ));
    p.send3(v3::Packet::PublishRelease { packet_id: pid(7) }).await;
    assert!(matches!(
        p.recv3().await.packet(),
        v3::Packet::PublishComplete { .. }
    ));

    // Outbound QoS 2 flow to the subscriber.
    let got = sub.publish3().await;
    assert_eq!(got.qos, QoS::ExactlyOnce);
    let id = got.packet_id.unwrap();
    sub.send3(v3::Packet::PublishReceived { packet_id: id }).await;
    assert_eq!(
        sub.recv3().await.packet(),
        v3::Packet::PublishRelease { packet_id: id }
    );
    sub.send3(v3::Packet::PublishComplete { packet_id: id }).await;
    assert!(
        matches!(sub.recv3_within(QUIET).await, Got::Nothing),
        "duplicate delivered"
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn empty_client_id_rules() {
    let broker = start().await;
    let addr = broker.local_addr();
    let (_ok, ack) = Raw::connect3(addr, connect3("", true)).await;
    assert_eq!(ack.return_code, v3::ConnectAckReason::ConnectionAccepted);
    let (mut refused, ack) = Raw::connect3(addr, connect3("", false)).await;
    assert_eq!(ack.return_code, v3::ConnectAckReason::IdentifierRejected);
    refused.expect_closed3().await;
    broker.shutdown().await;
}

#[tokio::test]
async fn unsupported_protocol_level_gets_return_code_1() {
    let broker = start().await;
    let mut raw = Raw::tcp(broker.local_addr(), false).await;
    // CONNECT, protocol "MQTT" level 6.
    raw.send_bytes(&[0x10, 0x0c, 0, 4, b'M', b'Q', b'T', b'T', 6, 2, 0, 60, 0, 0])
        .await;
    let ack = raw.recv3().await.packet();
    assert_eq!(
        ack,
        v3::Packet::ConnectAck(v3::ConnectAck {
            session_present: false,
            return_code: v3::ConnectAckReason::UnacceptableProtocolVersion
        })
    );
    raw.expect_closed3().await;
    broker.shutdown().await;
}

#[tokio::test]
async fn takeover_closes_the_old_connection() {
    let broker = start().await;
    let addr = broker.local_addr();
    let (mut old, _) = Raw::connect3(addr, connect3("same", false)).await;
    old.subscribe3(1, &[("k", QoS::AtLeastOnce)]).await;
    let (mut new, ack) = Raw::connect3(addr, connect3("same", false)).await;
    assert!(ack.session_present);
    old.expect_closed3().await;
    broker.publish("k", "v", QoS::AtLeastOnce, false);
    assert_eq!(&new.publish3().await.payload[..], b"v");
    broker.shutdown().await;
}

#[tokio::test]
async fn anonymous_refused_when_not_allowed() {
    let broker = start_with(roomq::Config {
        auth: roomq::config::AuthConfig {
            allow_anonymous: Some(false),
            ..Default::default()
        },
        ..test_config()
    })
    .await;
    let (mut raw, ack) = Raw::connect3(broker.local_addr(), connect3("anon", true)).await;
    assert_eq!(ack.return_code, v3::ConnectAckReason::NotAuthorized);
    raw.expect_closed3().await;
    // Without a password file, JWT or certificate identity there is
    // nothing to check a username against: it is refused too, never taken
    // as an identity.
    let mut with_user = connect3("named", true);
    with_user.username = Some("alice".into());
    let (_raw, ack) = Raw::connect3(broker.local_addr(), with_user).await;
    assert_eq!(ack.return_code, v3::ConnectAckReason::NotAuthorized);
    broker.shutdown().await;
}

#[tokio::test]
async fn max_connections_refuses_with_server_unavailable() {
    let broker = start_with(roomq::Config {
        limits: Limits {
            max_connections: 1,
            ..test_config().limits
        },
        ..test_config()
    })
    .await;
    let addr = broker.local_addr();
    let (_first, ack) = Raw::connect3(addr, connect3("one", true)).await;
    assert_eq!(ack.return_code, v3::ConnectAckReason::ConnectionAccepted);
    let (mut second, ack) = Raw::connect3(addr, connect3("two", true)).await;
    assert_eq!(ack.return_code, v3::ConnectAckReason::ServiceUnavailable);
    second.expect_closed3().await;
    broker.shutdown().await;
}

/// [MQTT-4.7.3-1]: a will with an empty topic is a protocol violation: the
/// connection closes without a CONNACK, and without a return code that
/// blames the server (Mosquitto's 07-will-null-topic; issue 27, item 5).
#[tokio::test]
async fn will_with_an_empty_topic_closes_without_connack() {
    let broker = start().await;
    let mut raw = Raw::tcp(broker.local_addr(), false).await;
    // Clean session, will flag, will QoS 0: id, will topic "", will message.
    raw.send_bytes(&raw_connect(b"MQTT", 4, 0x06, None, &[b"will-null", b"", b"msg"]))
        .await;
    raw.expect_closed3().await;
    broker.shutdown().await;
}

/// MQTT 3.1 (protocol level 3): the client id is 1 to 23 characters, and
/// any other (also a missing one) gets return code 2, identifier rejected
/// (Mosquitto's 01-connect-invalid-id-0 and -missing; issue 27, item 8).
#[tokio::test]
async fn mqtt31_client_id_is_one_to_23_characters() {
    let broker = start().await;
    let addr = broker.local_addr();
    let cases: [(&str, &[&[u8]]); 3] = [
        ("empty client id", &[b""]),
        ("missing client id", &[]),
        ("24 characters", &[b"abcdefghijklmnopqrstuvwx"]),
    ];
    let mut wrong = Vec::new();
    for (name, fields) in cases {
        let mut raw = Raw::tcp(addr, false).await;
        raw.send_bytes(&raw_connect(b"MQIsdp", 3, 0x02, None, fields))
            .await;
        match raw.recv3().await {
            Got::Packet(v3::Packet::ConnectAck(ack))
                if ack.return_code == v3::ConnectAckReason::IdentifierRejected => {}
            other => wrong.push(format!("{name}: got {other:?}")),
        }
    }
    assert!(wrong.is_empty(), "expected return code 2: {wrong:#?}");
    let mut raw = Raw::tcp(addr, false).await;
    raw.send_bytes(&raw_connect(
        b"MQIsdp",
        3,
        0x02,
        None,
        &[b"abcdefghijklmnopqrstuvw"],
    ))
    .await;
    let ack = raw.recv3().await.packet();
    assert!(
        matches!(ack, v3::Packet::ConnectAck(a) if a.return_code == v3::ConnectAckReason::ConnectionAccepted)
    );
    broker.shutdown().await;
}

/// MQTT 3.1 has no Session Present: the first byte of the CONNACK's
/// variable header is reserved and 0, also when a session is resumed
/// (issue 27, item 9).
#[tokio::test]
async fn mqtt31_connack_never_says_session_present() {
    let broker = start().await;
    let addr = broker.local_addr();
    for attempt in ["first", "resumed"] {
        let mut raw = Raw::tcp(addr, false).await;
        // Clean session 0: the session outlives the connection.
        raw.send_bytes(&raw_connect(b"MQIsdp", 3, 0x00, None, &[b"old-device"]))
            .await;
        let ack = raw.recv3().await.packet();
        assert!(
            matches!(ack, v3::Packet::ConnectAck(a) if !a.session_present && a.return_code == v3::ConnectAckReason::ConnectionAccepted),
            "{attempt} connection: {ack:?}"
        );
        raw.send_bytes(&[0xe0, 0x00]).await; // DISCONNECT
        raw.expect_closed3().await;
    }
    broker.shutdown().await;
}

/// MQTT 3.1 sets DUP on a PUBREL (and SUBSCRIBE, UNSUBSCRIBE) it sends
/// again; 3.1.1 made those bits reserved. A 3.1 client's resent PUBREL is
/// answered with PUBCOMP, not closed as malformed (Mosquitto's
/// 03-publish-c2b-disconnect-qos2 at protocol level 3).
#[tokio::test]
async fn mqtt31_resent_pubrel_subscribe_and_unsubscribe_may_carry_dup() {
    let broker = start().await;
    let mut raw = Raw::tcp(broker.local_addr(), false).await;
    raw.send_bytes(&raw_connect(b"MQIsdp", 3, 0x02, None, &[b"dup31"]))
        .await;
    assert!(matches!(raw.recv3().await.packet(), v3::Packet::ConnectAck(_)));
    // PUBLISH QoS 2, topic "t", packet id 1, payload "x".
    raw.send_bytes(&[0x34, 0x06, 0, 1, b't', 0, 1, b'x']).await;
    let pubrec = raw.recv3().await.packet();
    assert!(matches!(pubrec, v3::Packet::PublishReceived { .. }), "{pubrec:?}");
    // PUBREL with DUP, packet id 1.
    raw.send_bytes(&[0x6a, 0x02, 0, 1]).await;
    let pubcomp = raw.recv3().await.packet();
    assert!(
        matches!(pubcomp, v3::Packet::PublishComplete { .. }),
        "{pubcomp:?}"
    );
    // SUBSCRIBE with DUP: packet id 2, "t" at QoS 0; UNSUBSCRIBE with DUP.
    raw.send_bytes(&[0x8a, 0x06, 0, 2, 0, 1, b't', 0]).await;
    let suback = raw.recv3().await.packet();
    assert!(matches!(suback, v3::Packet::SubscribeAck { .. }), "{suback:?}");
    raw.send_bytes(&[0xaa, 0x05, 0, 3, 0, 1, b't']).await;
    let unsuback = raw.recv3().await.packet();
    assert!(
        matches!(unsuback, v3::Packet::UnsubscribeAck { .. }),
        "{unsuback:?}"
    );
    broker.shutdown().await;
}
