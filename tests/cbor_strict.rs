//! Chat requests are CBOR as `topics.md`'s CDDL writes them: the schemas
//! have no tags and the broker takes definite lengths only, so a request
//! with a tag (24, embedded CBOR, or any other) or an indefinite-length
//! item is refused with 0x99 Payload format invalid, as any other bad
//! payload, for every kind of request: moderation, history, edit, delete,
//! react, receipt, typing, presence.

mod common;

use bytes::Bytes;
use ciborium::Value;
use common::chat::publish_with;
use common::*;
use rmqtt_codec::v5::PublishAckReason;
use roomq::config::RoomConfig;

fn encode(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).expect("encodable");
    out
}

fn map(entries: &[(&str, Value)]) -> Value {
    Value::Map(
        entries
            .iter()
            .map(|(k, v)| (Value::Text(k.to_string()), v.clone()))
            .collect(),
    )
}

/// The same map with an indefinite length (0xBF ... 0xFF).
fn indefinite(request: &Value) -> Vec<u8> {
    let mut bytes = encode(request);
    assert!((0xA1..0xB8).contains(&bytes[0]), "a small map");
    bytes[0] = 0xBF;
    bytes.push(0xFF);
    bytes
}

/// The map behind tag 24 (embedded CBOR: `24(h'...')`).
fn embedded(request: &Value) -> Vec<u8> {
    encode(&Value::Tag(24, Box::new(Value::Bytes(encode(request)))))
}

/// The map with a tag 24 right before it, as a lax decoder skips.
fn tagged(request: &Value) -> Vec<u8> {
    [vec![0xD8, 24], encode(request)].concat()
}

/// The map with its first value tagged (`{k: 24(v)}`).
fn tagged_value(request: &Value) -> Vec<u8> {
    let Value::Map(entries) = request else {
        unreachable!()
    };
    let mut entries = entries.clone();
    entries[0].1 = Value::Tag(24, Box::new(entries[0].1.clone()));
    encode(&Value::Map(entries))
}

/// An indefinite-length text string inside the map (`"a" "b"` chunks).
fn indefinite_text(request: &Value) -> Vec<u8> {
    let Value::Map(entries) = request else {
        unreachable!()
    };
    let mut out = vec![0xA0 + entries.len() as u8];
    for (k, v) in entries {
        let Value::Text(k) = k else { unreachable!() };
        out.extend([0x7F]);
        out.extend(encode(&Value::Text(k.clone())));
        out.push(0xFF);
        out.extend(encode(v));
    }
    out
}

#[tokio::test]
async fn requests_with_tags_or_indefinite_lengths_are_refused_with_0x99() {
    let broker = start().await;
    broker.set_room(RoomConfig {
        name: "lobby".into(),
        members: vec![],
        open: true,
        moderators: vec!["alice".into()],
    });
    let mut alice = Raw::client5(broker.local_addr(), "alice").await;
    let posted = publish_with("rooms/lobby/msg/alice", b"hi", Some(1), &[]);
    assert_eq!(alice.puback_of(posted).await, PublishAckReason::Success);
    let requests: Vec<(&str, Value)> = vec![
        (
            "$rooms/lobby/mod",
            map(&[("op", "mute".into()), ("user", "bob".into())]),
        ),
        ("$history/rooms/lobby", map(&[("limit", 10.into())])),
        (
            "rooms/lobby/edit/alice",
            map(&[("seq", 1.into()), ("body", Value::Bytes(b"hey".to_vec()))]),
        ),
        (
            "rooms/lobby/react/alice",
            map(&[("seq", 1.into()), ("emoji", "👍".into())]),
        ),
        ("rooms/lobby/read/alice", map(&[("seq", 1.into())])),
        ("rooms/lobby/typing/alice", map(&[("typing", true.into())])),
        ("$presence/alice", map(&[("status", "away".into())])),
        ("rooms/lobby/delete/alice", map(&[("seq", 1.into())])),
    ];
    let mut id = 1;
    for (topic, request) in &requests {
        let variants = [
            ("embedded (tag 24)", embedded(request)),
            ("tag 24 before the map", tagged(request)),
            ("a tagged value", tagged_value(request)),
            ("an indefinite-length map", indefinite(request)),
            ("an indefinite-length key", indefinite_text(request)),
        ];
        for (what, payload) in variants {
            id += 1;
            let mut p = publish_with(topic, b"", Some(id), &[]);
            p.payload = Bytes::from(payload);
            assert_eq!(
                alice.puback_of(p).await,
                PublishAckReason::PayloadFormatInvalid,
                "{topic}: {what}"
            );
        }
        // The same request, plainly encoded, is taken.
        id += 1;
        let p = publish_with(topic, &encode(request), Some(id), &[]);
        assert_eq!(
            alice.puback_of(p).await,
            PublishAckReason::Success,
            "{topic}: plain"
        );
    }
    broker.shutdown().await;
}
