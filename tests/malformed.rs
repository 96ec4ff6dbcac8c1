//! Malformed and out-of-order input, sent as raw bytes. Each case must close
//! only the offending connection (with the right reason code in 5.0) while
//! the broker keeps serving everyone else.

mod common;

use common::*;
use rmqtt_codec::types::QoS;
use rmqtt_codec::v5::{DisconnectReasonCode as R, Packet};
use roomq::config::Limits;

/// A 5.0 PUBLISH QoS 0 with no properties, from raw topic bytes.
fn publish_bytes(first_byte: u8, topic: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut body = vec![0, topic.len() as u8];
    body.extend_from_slice(topic);
    body.push(0); // property length
    body.extend_from_slice(payload);
    let mut out = vec![first_byte, body.len() as u8];
    out.extend(body);
    out
}

/// Sends `bytes` after a good 5.0 CONNECT and returns what the broker did.
async fn after_connect5(addr: std::net::SocketAddr, bytes: &[u8]) -> Option<R> {
    let mut raw = Raw::client5(addr, "bad").await;
    raw.send_bytes(bytes).await;
    match raw.recv5().await {
        Got::Packet(Packet::Disconnect(d)) => {
            assert!(matches!(raw.recv5().await, Got::Closed));
            Some(d.reason_code)
        }
        Got::Closed => None,
        other => panic!("expected the connection to close, got {other:?}"),
    }
}

/// The broker still works for a well-behaved client.
async fn still_serving(addr: std::net::SocketAddr) {
    let mut sub = Raw::client5(addr, "good-sub").await;
    sub.subscribe5(1, &[("ok", opts(QoS::AtMostOnce))]).await;
    let mut publisher = Raw::client5(addr, "good-pub").await;
    publisher.publish0_5("ok", b"fine").await;
    assert_eq!(&sub.publish5().await.payload[..], b"fine");
}

#[tokio::test]
async fn malformed_packets_close_only_that_connection() {
    let broker = start_with(roomq::Config {
        limits: Limits {
            max_packet_size: 256,
            ..test_config().limits
        },
        ..test_config()
    })
    .await;
    let addr = broker.local_addr();
    let cases: Vec<(&str, Vec<u8>, &[R])> = vec![
        (
            "remaining length over 4 bytes",
            vec![0x30, 0xff, 0xff, 0xff, 0xff, 0x7f],
            &[R::MalformedPacket],
        ),
        (
            "SUBSCRIBE with reserved flags 0000",
            vec![0x80, 0x06, 0, 1, 0, 0, 1, b'a'],
            &[R::MalformedPacket],
        ),
        (
            "invalid UTF-8 topic",
            publish_bytes(0x30, &[0xff, 0xfe], b"x"),
            &[R::MalformedPacket],
        ),
        (
            "wildcard in topic name",
            publish_bytes(0x30, b"a/+", b"x"),
            &[R::TopicNameInvalid],
        ),
        (
            "U+0000 in topic name",
            publish_bytes(0x30, b"a\0b", b"x"),
            &[R::MalformedPacket],
        ),
        (
            "DUP on QoS 0",
            publish_bytes(0x38, b"a", b"x"),
            &[R::MalformedPacket],
        ),
        ("QoS 3", publish_bytes(0x36, b"a", b"x"), &[R::MalformedPacket]),
        (
            "packet over max_packet_size",
            {
                let mut p = vec![0x30, 0x80, 0x04]; // remaining length 512
                p.extend(std::iter::repeat_n(0u8, 512));
                p
            },
            &[R::PacketTooLarge],
        ),
        (
            "second CONNECT",
            {
                let mut out = bytes::BytesMut::new();
                tokio_util::codec::Encoder::encode(
                    &mut rmqtt_codec::v5::Codec::new(0, 0),
                    Packet::Connect(Box::new(connect5("again"))),
                    &mut out,
                )
                .unwrap();
                out.to_vec()
            },
            &[R::ProtocolError],
        ),
        (
            "CONNACK from a client",
            vec![0x20, 0x03, 0, 0, 0],
            &[R::ProtocolError, R::MalformedPacket],
        ),
        // A second CONNECT that claims 200 MB: refused from its header alone.
        (
            "second CONNECT over max_packet_size",
            vec![0x10, 0x80, 0x80, 0x80, 0x60],
            &[R::PacketTooLarge],
        ),
    ];
    for (name, bytes, expected) in cases {
        let reason = after_connect5(addr, &bytes).await;
        assert!(
            reason.is_some_and(|r| expected.contains(&r)),
            "{name}: expected DISCONNECT with one of {expected:?}, got {reason:?}"
        );
        still_serving(addr).await;
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn v311_malformed_packets_close_the_connection() {
    let broker = start().await;
    let addr = broker.local_addr();
    let v3_publish = |first: u8, topic: &[u8]| {
        let mut body = vec![0, topic.len() as u8];
        body.extend_from_slice(topic);
        body.push(b'x');
        let mut out = vec![first, body.len() as u8];
        out.extend(body);
        out
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("wildcard in topic", v3_publish(0x30, b"a/#")),
        ("invalid UTF-8 topic", v3_publish(0x30, &[0xc3, 0x28])),
        ("reserved flags on PINGREQ", vec![0xc1, 0x00]),
        // SUBSCRIBE "a" with options 0x41: reserved bit 6 set ([MQTT-3.8.3-4]).
        (
            "reserved bits in SUBSCRIBE options",
            vec![0x82, 0x06, 0, 1, 0, 1, b'a', 0x41],
        ),
        (
            "second CONNECT",
            vec![0x10, 0x0c, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 0],
        ),
    ];
    for (name, bytes) in cases {
        let (mut raw, _) = Raw::connect3(addr, connect3("bad3", true)).await;
        raw.send_bytes(&bytes).await;
        assert!(
            matches!(raw.recv3().await, Got::Closed),
            "{name}: connection stayed open"
        );
        still_serving(addr).await;
    }
    // An invalid filter in 3.1.1 SUBSCRIBE closes the connection.
    let (mut raw, _) = Raw::connect3(addr, connect3("bad3", true)).await;
    raw.send3(rmqtt_codec::v3::Packet::Subscribe {
        packet_id: pid(1),
        topic_filters: vec![("a/#/b".into(), QoS::AtMostOnce)],
    })
    .await;
    raw.expect_closed3().await;
    broker.shutdown().await;
}

#[tokio::test]
async fn publish_before_connect_is_closed_without_answer() {
    let broker = start().await;
    let mut raw = Raw::tcp(broker.local_addr(), true).await;
    raw.send_bytes(&publish_bytes(0x30, b"a", b"x")).await;
    assert!(matches!(raw.recv5().await, Got::Closed));
    let mut garbage = Raw::tcp(broker.local_addr(), true).await;
    garbage.send_bytes(b"GET / HTTP/1.1\r\n\r\n").await;
    assert!(matches!(garbage.recv5().await, Got::Closed));
    still_serving(broker.local_addr()).await;
    broker.shutdown().await;
}

/// The reason codes MQTT 5.0 names for topic and alias mistakes, and the
/// 3.1.1 rule on a password without a username.
#[tokio::test]
async fn topic_alias_response_topic_and_password_nits_get_the_reasons_the_spec_names() {
    let broker = start().await;
    let addr = broker.local_addr();
    // Topic Alias 0 [MQTT-3.3.2-8]: 0x94, not "malformed".
    let alias_zero = [0x30, 0x07, 0x00, 0x01, b't', 0x03, 0x23, 0x00, 0x00];
    assert_eq!(
        after_connect5(addr, &alias_zero).await,
        Some(R::TopicAliasInvalid)
    );
    // An empty topic without a Topic Alias [MQTT-3.3.2-8]: protocol error.
    assert_eq!(
        after_connect5(addr, &publish_bytes(0x30, b"", b"x")).await,
        Some(R::ProtocolError)
    );
    // A Response Topic with a wildcard [MQTT-3.3.2-14].
    let mut with_filter = publish("t", b"x", QoS::AtMostOnce, None);
    with_filter.properties.as_mut().unwrap().response_topic = Some("replies/#".into());
    let mut raw = Raw::client5(addr, "rt").await;
    raw.send5(Packet::Publish(Box::new(with_filter))).await;
    assert_eq!(raw.expect_disconnect5().await, R::ProtocolError);
    // 3.1.1: a password without a username [MQTT-3.1.2-22] closes the
    // connection without a CONNACK.
    let mut c = connect3("pw-only", true);
    c.password = Some(bytes::Bytes::from_static(b"secret"));
    let mut raw = Raw::tcp(addr, false).await;
    raw.send3(rmqtt_codec::v3::Packet::Connect(Box::new(c))).await;
    assert!(matches!(raw.recv3().await, Got::Closed));
    still_serving(addr).await;
}

/// [MQTT-3.1.4-1], [MQTT-3.1.2-18], [MQTT-3.1.2-22]: a CONNECT whose payload
/// holds fields its flags do not announce is malformed, and the connection
/// closes without a CONNACK (Mosquitto's 01-connect-uname-no-flag and
/// 01-connect-uname-pwd-no-flag; issue 27, items 1 and 2).
#[tokio::test]
async fn connect_payload_must_hold_exactly_what_its_flags_announce() {
    let broker = start().await;
    let addr = broker.local_addr();
    let id: &[u8] = b"uname-test";
    let cases: Vec<(&str, bool, Vec<u8>)> = vec![
        (
            "3.1.1, a username without its flag",
            false,
            raw_connect(b"MQTT", 4, 0x02, None, &[id, b"user"]),
        ),
        (
            "5.0, a username without its flag",
            true,
            raw_connect(b"MQTT", 5, 0x02, Some(&[]), &[id, b"user"]),
        ),
        (
            "5.0, username and password with only the password flag",
            true,
            raw_connect(b"MQTT", 5, 0x42, Some(&[]), &[id, b"user", b"pw"]),
        ),
        (
            "3.1.1, username and password with only the password flag",
            false,
            raw_connect(b"MQTT", 4, 0x42, None, &[id, b"user", b"pw"]),
        ),
        (
            "5.0, a will's fields without the will flag",
            true,
            raw_connect(b"MQTT", 5, 0x02, Some(&[]), &[id, &[0], b"t", b"m"]),
        ),
    ];
    let mut wrong = Vec::new();
    for (name, is_v5, bytes) in cases {
        let mut raw = Raw::tcp(addr, is_v5).await;
        raw.send_bytes(&bytes).await;
        let got = if is_v5 {
            format!("{:?}", raw.recv5().await)
        } else {
            format!("{:?}", raw.recv3().await)
        };
        if got != "Closed" {
            wrong.push(format!("{name}: got {got}"));
        }
    }
    assert!(wrong.is_empty(), "expected a close without CONNACK: {wrong:#?}");
    still_serving(addr).await;
    broker.shutdown().await;
}

/// [MQTT-1.5.4-2]: a UTF-8 string holding U+0000 makes the packet malformed
/// (0x81), whether it is a topic name or a topic filter (Mosquitto's
/// 13-malformed-subscribe-v5 and 03-publish-invalid-utf8; issue 27, items 3
/// and 4).
#[tokio::test]
async fn u0000_in_a_topic_or_filter_is_a_malformed_packet_in_5() {
    let broker = start().await;
    let addr = broker.local_addr();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("PUBLISH topic", publish_bytes(0x30, b"a\0b", b"x")),
        // SUBSCRIBE id 1, no properties, filter "a\0b", options QoS 0.
        (
            "SUBSCRIBE filter",
            vec![0x82, 0x09, 0, 1, 0, 0, 3, b'a', 0, b'b', 0],
        ),
        // UNSUBSCRIBE id 1, no properties, filter "a\0b".
        (
            "UNSUBSCRIBE filter",
            vec![0xa2, 0x08, 0, 1, 0, 0, 3, b'a', 0, b'b'],
        ),
    ];
    let mut wrong = Vec::new();
    for (name, bytes) in cases {
        let mut raw = Raw::client5(addr, "nul").await;
        raw.send_bytes(&bytes).await;
        match raw.recv5().await {
            Got::Packet(Packet::Disconnect(d)) if d.reason_code == R::MalformedPacket => {
                if !matches!(raw.recv5().await, Got::Closed) {
                    wrong.push(format!("{name}: open after DISCONNECT"));
                }
            }
            other => wrong.push(format!("{name}: got {other:?}")),
        }
    }
    assert!(
        wrong.is_empty(),
        "expected DISCONNECT 0x81 and a close: {wrong:#?}"
    );
    still_serving(addr).await;
    broker.shutdown().await;
}
