//! Message lifecycle as room events (`topics.md`, *Edits, deletes and
//! reactions*): senders edit, delete and react on
//! `rooms/{room}/edit|delete|react/{sender}`; each accepted request is a
//! room event with its own `seq`, delivered on `rooms/{room}/event/{sender}`
//! in `seq` order with the messages; a client of `msg` alone sees nothing
//! of it and an unbroken `prev` chain; history shows each message in its
//! current state; a delete leaves no copy of the body in the store.

mod common;

use std::collections::{BTreeMap, HashMap};

use common::chat::{ack_publish5, publish_with, send_and_ack, seq_of, user5, user_props};
use common::*;
use rmqtt_codec::types::{Publish, QoS};
use rmqtt_codec::v3;
use rmqtt_codec::v5::{self, PublishAckReason};
use roomq::chat::payloads::{self, HistoryResponse, ModResponse, RoomEvent};
use roomq::config::{RoomConfig, RoomsDefault};
use roomq::Config;
use serde::Serialize;

/// `{seq, body}` for an edit.
#[derive(Serialize)]
struct Edit<'a> {
    seq: u64,
    #[serde(with = "serde_bytes_like")]
    body: &'a [u8],
}

mod serde_bytes_like {
    pub fn serialize<S: serde::Serializer>(bytes: &&[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(bytes)
    }
}

fn edit(seq: u64, body: &[u8]) -> Vec<u8> {
    payloads::to_cbor(&Edit { seq, body })
}

fn delete(seq: u64) -> Vec<u8> {
    payloads::to_cbor(&BTreeMap::from([("seq", seq)]))
}

fn react(seq: u64, emoji: &str, remove: bool) -> Vec<u8> {
    #[derive(Serialize)]
    struct React<'a> {
        seq: u64,
        emoji: &'a str,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        remove: bool,
    }
    payloads::to_cbor(&React { seq, emoji, remove })
}

/// Publishes at QoS 1 and returns the PUBACK reason.
async fn send(c: &mut Raw, topic: &str, payload: &[u8], id: u16) -> PublishAckReason {
    send_and_ack(c, publish_with(topic, payload, Some(id), &[]))
        .await
        .reason_code
}

/// The next PUBLISH `c` gets, acknowledged.
async fn next_publish(c: &mut Raw) -> Publish {
    let p = c.publish5().await;
    ack_publish5(c, &p).await;
    p
}

fn event_of(p: &Publish) -> RoomEvent {
    payloads::from_cbor(&p.payload).expect("a room-event")
}

/// Nothing more arrives on `c` for a while.
async fn quiet(c: &mut Raw) {
    match c.recv5_within(QUIET).await {
        Got::Nothing => {}
        other => panic!("expected nothing, got {other:?}"),
    }
}

/// The history of `room` as `asker` (a 5.0 client of that identity, which
/// takes the answer on `replies/{id}`).
async fn history_as(asker: &mut Raw, reply_to: &str, room: &str, events: bool, id: u16) -> HistoryResponse {
    let mut request: HashMap<&str, ciborium::Value> = HashMap::new();
    request.insert("limit", 100.into());
    if events {
        request.insert("events", true.into());
    }
    let mut p = publish_with(
        &format!("$history/rooms/{room}"),
        &payloads::to_cbor(&request),
        Some(id),
        &[],
    );
    if let Some(props) = p.properties.as_mut() {
        props.response_topic = Some(reply_to.into());
    }
    asker.send5(v5::Packet::Publish(Box::new(p))).await;
    let (mut acked, mut answer) = (false, None);
    while !acked || answer.is_none() {
        match asker.recv5().await.packet() {
            v5::Packet::Publish(reply) if reply.topic == reply_to => {
                ack_publish5(asker, &reply).await;
                answer = Some(payloads::from_cbor(&reply.payload).expect("history-response"));
            }
            v5::Packet::Publish(other) => ack_publish5(asker, &other).await,
            v5::Packet::PublishAck(ack) => {
                assert_eq!(ack.reason_code, PublishAckReason::Success);
                acked = true;
            }
            other => panic!("expected the history answer, got {other:?}"),
        }
    }
    answer.expect("an answer")
}

#[tokio::test]
async fn edits_deletes_and_reactions_are_room_events_in_seq_order() {
    let broker = start().await;
    let addr = broker.local_addr();
    let mut alice = user5(addr, "alice-1", "alice").await;
    let mut bob = user5(addr, "bob-1", "bob").await;
    // A member who follows messages and events, one who knows only `msg`.
    let mut watcher = user5(addr, "carol-1", "carol").await;
    watcher
        .subscribe5(1, &[("rooms/ops/#", opts(QoS::AtLeastOnce))])
        .await;
    let mut plain = user5(addr, "dave-1", "dave").await;
    plain
        .subscribe5(1, &[("rooms/ops/msg/+", opts(QoS::AtLeastOnce))])
        .await;
    bob.subscribe5(1, &[("replies/bob", opts(QoS::AtLeastOnce))])
        .await;

    assert_eq!(
        send(&mut alice, "rooms/ops/msg/alice", b"hello", 1).await,
        PublishAckReason::Success
    );
    let first = next_publish(&mut watcher).await;
    let s1 = seq_of(&first);
    assert_eq!(seq_of(&next_publish(&mut plain).await), s1);

    assert_eq!(
        send(&mut alice, "rooms/ops/edit/alice", &edit(s1, b"hello!"), 2).await,
        PublishAckReason::Success
    );
    assert_eq!(
        send(&mut bob, "rooms/ops/react/bob", &react(s1, "👍", false), 3).await,
        PublishAckReason::Success
    );
    // Reacting twice is one reaction: nothing is stored.
    assert_eq!(
        send(&mut bob, "rooms/ops/react/bob", &react(s1, "👍", false), 4).await,
        PublishAckReason::Success
    );
    assert_eq!(
        send(&mut alice, "rooms/ops/react/alice", &react(s1, "👍", false), 5).await,
        PublishAckReason::Success
    );
    assert_eq!(
        send(&mut alice, "rooms/ops/react/alice", &react(s1, "🎉", false), 6).await,
        PublishAckReason::Success
    );
    assert_eq!(
        send(&mut alice, "rooms/ops/react/alice", &react(s1, "🎉", true), 7).await,
        PublishAckReason::Success
    );
    assert_eq!(
        send(&mut alice, "rooms/ops/msg/alice", b"oops", 8).await,
        PublishAckReason::Success
    );
    let oops = next_publish(&mut plain).await;
    let s_oops = seq_of(&oops);
    // A client of `msg` alone: `prev` names the previous message, no gap.
    assert_eq!(user_props(&oops)["prev"], s1.to_string());
    assert_eq!(
        send(&mut alice, "rooms/ops/delete/alice", &delete(s_oops), 9).await,
        PublishAckReason::Success
    );

    // The watcher gets every entry in seq order: events on their topic.
    let mut got = Vec::new();
    for _ in 0..7 {
        got.push(next_publish(&mut watcher).await);
    }
    let topics: Vec<&str> = got.iter().map(|p| &*p.topic).collect();
    assert_eq!(
        topics,
        [
            "rooms/ops/event/alice",
            "rooms/ops/event/bob",
            "rooms/ops/event/alice",
            "rooms/ops/event/alice",
            "rooms/ops/event/alice",
            "rooms/ops/msg/alice",
            "rooms/ops/event/alice",
        ]
    );
    let seqs: Vec<u64> = got.iter().map(seq_of).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert!(seqs[0] > s1);
    // An event's `prev` is the room's entry before it, message or event.
    let mut before = s1;
    for p in &got {
        assert_eq!(
            user_props(p)["prev"].parse::<u64>().unwrap(),
            if p.topic.contains("/msg/") { s1 } else { before }
        );
        before = seq_of(p);
    }
    let edited = event_of(&got[0]);
    assert_eq!(
        (edited.kind.as_str(), edited.target, edited.body.as_deref()),
        ("edit", Some(s1), Some(&b"hello!"[..]))
    );
    assert_eq!((edited.seq, edited.sender.as_str()), (seqs[0], "alice"));
    let reacted = event_of(&got[1]);
    assert_eq!(
        (reacted.kind.as_str(), reacted.emoji.as_deref(), reacted.remove),
        ("react", Some("👍"), None)
    );
    assert_eq!(event_of(&got[4]).remove, Some(true));
    let deleted = event_of(&got[6]);
    assert_eq!((deleted.kind.as_str(), deleted.target), ("delete", Some(s_oops)));
    // The `msg` subscriber saw nothing of the events.
    quiet(&mut plain).await;
    quiet(&mut watcher).await;

    // History: current state, reactions counted, the asker's own.
    let answer = history_as(&mut bob, "replies/bob", "ops", false, 20).await;
    assert!(answer.events.is_none());
    let m: Vec<_> = answer.messages.iter().map(|m| m.seq).collect();
    assert_eq!(m, [s1, s_oops]);
    let hello = &answer.messages[0];
    assert_eq!(hello.body.as_deref(), Some(&b"hello!"[..]));
    assert!(hello.edited.is_some());
    assert_eq!(hello.reactions, Some(BTreeMap::from([("👍".to_string(), 2)])));
    assert_eq!(hello.mine.as_deref(), Some(&["👍".to_string()][..]));
    let gone = &answer.messages[1];
    assert_eq!(
        (gone.deleted, gone.body.as_ref(), gone.prev),
        (Some(true), None, s1)
    );
    // With `events: true`, the raw events too, in seq order.
    let answer = history_as(&mut bob, "replies/bob", "ops", true, 21).await;
    let events = answer.events.expect("events");
    let kinds: Vec<(&str, u64)> = events.iter().map(|e| (e.kind.as_str(), e.seq)).collect();
    let expected: Vec<(&str, u64)> = ["edit", "react", "react", "react", "react", "delete"]
        .into_iter()
        .zip(seqs.iter().copied().filter(|s| *s != s_oops))
        .collect();
    assert_eq!(kinds, expected);
    broker.shutdown().await;
}

#[tokio::test]
async fn refusals_change_nothing() {
    let config = Config {
        max_reaction_emoji: 2,
        ..test_config()
    };
    let broker = start_with(config).await;
    let addr = broker.local_addr();
    let mut alice = user5(addr, "alice-1", "alice").await;
    let mut eve = user5(addr, "eve-1", "eve").await;
    let mut watcher = user5(addr, "carol-1", "carol").await;
    watcher
        .subscribe5(1, &[("rooms/ops/#", opts(QoS::AtLeastOnce))])
        .await;
    assert_eq!(
        send(&mut alice, "rooms/ops/msg/alice", b"mine", 1).await,
        PublishAckReason::Success
    );
    let s1 = seq_of(&next_publish(&mut watcher).await);

    // Someone else's message: 0x87.
    assert_eq!(
        send(&mut eve, "rooms/ops/edit/eve", &edit(s1, b"hacked"), 1).await,
        PublishAckReason::NotAuthorized
    );
    assert_eq!(
        send(&mut eve, "rooms/ops/delete/eve", &delete(s1), 2).await,
        PublishAckReason::NotAuthorized
    );
    // As someone else: the gate's 0x87.
    assert_eq!(
        send(&mut eve, "rooms/ops/delete/alice", &delete(s1), 3).await,
        PublishAckReason::NotAuthorized
    );
    // No such message: 0x99.
    assert_eq!(
        send(&mut alice, "rooms/ops/delete/alice", &delete(s1 + 100), 2).await,
        PublishAckReason::PayloadFormatInvalid
    );
    assert_eq!(
        send(&mut alice, "rooms/nowhere/edit/alice", &edit(1, b"x"), 3).await,
        PublishAckReason::PayloadFormatInvalid
    );
    // A bad payload or emoji: 0x99.
    assert_eq!(
        send(&mut alice, "rooms/ops/edit/alice", b"not cbor", 4).await,
        PublishAckReason::PayloadFormatInvalid
    );
    assert_eq!(
        send(&mut alice, "rooms/ops/react/alice", &react(s1, "", false), 5).await,
        PublishAckReason::PayloadFormatInvalid
    );
    let long = "x".repeat(33);
    assert_eq!(
        send(&mut alice, "rooms/ops/react/alice", &react(s1, &long, false), 6).await,
        PublishAckReason::PayloadFormatInvalid
    );
    // Clients never publish events: 0x90.
    assert_eq!(
        send(&mut alice, "rooms/ops/event/alice", b"x", 7).await,
        PublishAckReason::TopicNameInvalid
    );
    // Beyond `max_reaction_emoji` distinct emoji: 0x97.
    assert_eq!(
        send(&mut eve, "rooms/ops/react/eve", &react(s1, "a", false), 8).await,
        PublishAckReason::Success
    );
    assert_eq!(
        send(&mut eve, "rooms/ops/react/eve", &react(s1, "b", false), 9).await,
        PublishAckReason::Success
    );
    assert_eq!(
        send(&mut eve, "rooms/ops/react/eve", &react(s1, "c", false), 10).await,
        PublishAckReason::QuotaExceeded
    );
    // A deleted message is no message any more.
    assert_eq!(
        send(&mut alice, "rooms/ops/delete/alice", &delete(s1), 11).await,
        PublishAckReason::Success
    );
    assert_eq!(
        send(&mut alice, "rooms/ops/edit/alice", &edit(s1, b"again"), 12).await,
        PublishAckReason::PayloadFormatInvalid
    );
    assert_eq!(
        send(&mut alice, "rooms/ops/delete/alice", &delete(s1), 13).await,
        PublishAckReason::PayloadFormatInvalid
    );
    // The events of the accepted requests only: two reactions, a delete.
    let kinds: Vec<String> = [
        next_publish(&mut watcher).await,
        next_publish(&mut watcher).await,
        next_publish(&mut watcher).await,
    ]
    .iter()
    .map(|p| event_of(p).kind)
    .collect();
    assert_eq!(kinds, ["react", "react", "delete"]);
    quiet(&mut watcher).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn a_3_1_1_client_reacts_and_edits() {
    let broker = start().await;
    let addr = broker.local_addr();
    let mut watcher = user5(addr, "carol-1", "carol").await;
    watcher
        .subscribe5(1, &[("rooms/ops/#", opts(QoS::AtLeastOnce))])
        .await;
    // Without an authenticator a 3.1.1 device's name is its client id.
    let (mut dev, _) = Raw::connect3(addr, connect3("dev", true)).await;
    let mut post = publish("rooms/ops/msg/dev", b"pressure high", QoS::AtLeastOnce, Some(1));
    post.properties = None;
    dev.send3(v3::Packet::Publish(Box::new(post))).await;
    assert!(matches!(
        dev.recv3().await.packet(),
        v3::Packet::PublishAck { .. }
    ));
    let s1 = seq_of(&next_publish(&mut watcher).await);
    for (id, topic, payload) in [
        (2, "rooms/ops/react/dev", react(s1, "👍", false)),
        (3, "rooms/ops/edit/dev", edit(s1, b"pressure normal")),
    ] {
        let p = publish(topic, &[], QoS::AtLeastOnce, Some(id));
        let p = Publish {
            payload: payload.into(),
            ..p
        };
        dev.send3(v3::Packet::Publish(Box::new(p))).await;
        assert!(matches!(
            dev.recv3().await.packet(),
            v3::Packet::PublishAck { .. }
        ));
    }
    let reacted = event_of(&next_publish(&mut watcher).await);
    let edited = event_of(&next_publish(&mut watcher).await);
    assert_eq!((reacted.kind.as_str(), reacted.sender.as_str()), ("react", "dev"));
    assert_eq!(edited.body.as_deref(), Some(&b"pressure normal"[..]));
    broker.shutdown().await;
}

fn moderated() -> Config {
    Config {
        rooms_default: RoomsDefault::Closed,
        rooms: vec![RoomConfig {
            name: "ops".into(),
            members: vec!["alice".into(), "eve".into(), "carol".into()],
            open: false,
            moderators: vec!["mod".into()],
        }],
        ..test_config()
    }
}

/// A moderation request for `ops` with `replies/{id}` as Response Topic:
/// the PUBACK reason and the answer.
async fn moderate(c: &mut Raw, reply_to: &str, request: &[u8], id: u16) -> (PublishAckReason, ModResponse) {
    let mut p = publish_with("$rooms/ops/mod", request, Some(id), &[]);
    if let Some(props) = p.properties.as_mut() {
        props.response_topic = Some(reply_to.into());
    }
    c.send5(v5::Packet::Publish(Box::new(p))).await;
    let (mut ack, mut answer) = (None, None);
    while ack.is_none() || answer.is_none() {
        match c.recv5().await.packet() {
            v5::Packet::Publish(reply) if reply.topic == reply_to => {
                ack_publish5(c, &reply).await;
                answer = Some(payloads::from_cbor::<ModResponse>(&reply.payload).expect("mod-response"));
            }
            v5::Packet::Publish(other) => ack_publish5(c, &other).await,
            v5::Packet::PublishAck(a) => ack = Some(a.reason_code),
            other => panic!("expected the answer and PUBACK, got {other:?}"),
        }
    }
    (ack.expect("a PUBACK"), answer.expect("an answer"))
}

#[tokio::test]
async fn moderators_delete_and_their_actions_are_events() {
    let broker = start_with(moderated()).await;
    let addr = broker.local_addr();
    let mut alice = user5(addr, "alice-1", "alice").await;
    let mut eve = user5(addr, "eve-1", "eve").await;
    eve.subscribe5(
        1,
        &[
            ("rooms/ops/#", opts(QoS::AtLeastOnce)),
            ("replies/eve", opts(QoS::AtLeastOnce)),
        ],
    )
    .await;
    let mut watcher = user5(addr, "carol-1", "carol").await;
    watcher
        .subscribe5(
            1,
            &[
                ("rooms/ops/#", opts(QoS::AtLeastOnce)),
                ("replies/carol", opts(QoS::AtLeastOnce)),
            ],
        )
        .await;
    let mut moderator = user5(addr, "mod-1", "mod").await;
    moderator
        .subscribe5(1, &[("replies/mod", opts(QoS::AtLeastOnce))])
        .await;
    assert_eq!(
        send(&mut alice, "rooms/ops/msg/alice", b"spam", 1).await,
        PublishAckReason::Success
    );
    let s1 = seq_of(&next_publish(&mut eve).await);
    assert_eq!(seq_of(&next_publish(&mut watcher).await), s1);
    let delete_s1 = payloads::to_cbor(&BTreeMap::from([
        ("op", ciborium::Value::from("delete")),
        ("seq", ciborium::Value::from(s1)),
    ]));

    // Not a moderator: refused, nothing changes.
    let (ack, answer) = moderate(&mut eve, "replies/eve", &delete_s1, 2).await;
    assert_eq!(
        (ack, answer.ok, answer.error.as_deref()),
        (PublishAckReason::NotAuthorized, false, Some("not a moderator"))
    );
    // The moderator deletes alice's message.
    let (ack, answer) = moderate(&mut moderator, "replies/mod", &delete_s1, 3).await;
    assert_eq!((ack, answer.ok), (PublishAckReason::Success, true));
    let deleted = event_of(&next_publish(&mut watcher).await);
    assert_eq!(
        (deleted.kind.as_str(), deleted.sender.as_str(), deleted.target),
        ("delete", "mod", Some(s1))
    );
    // Again: no such message.
    let (_, answer) = moderate(&mut moderator, "replies/mod", &delete_s1, 4).await;
    assert_eq!(
        (answer.ok, answer.error.as_deref()),
        (false, Some("no such message"))
    );
    let history = history_as(&mut watcher, "replies/carol", "ops", false, 30).await;
    assert_eq!(history.messages.len(), 1);
    assert_eq!(
        (history.messages[0].deleted, history.messages[0].body.as_ref()),
        (Some(true), None)
    );

    // A ban is an event; the banned user gets no event any more.
    let ban = payloads::to_cbor(&BTreeMap::from([("op", "ban"), ("user", "eve")]));
    let (ack, _) = moderate(&mut moderator, "replies/mod", &ban, 5).await;
    assert_eq!(ack, PublishAckReason::Success);
    let banned = event_of(&next_publish(&mut watcher).await);
    assert_eq!(
        (banned.kind.as_str(), banned.user.as_deref()),
        ("ban", Some("eve"))
    );
    assert_eq!(
        send(&mut alice, "rooms/ops/msg/alice", b"after", 6).await,
        PublishAckReason::Success
    );
    let s2 = seq_of(&next_publish(&mut watcher).await);
    assert_eq!(
        send(&mut alice, "rooms/ops/react/alice", &react(s2, "👍", false), 7).await,
        PublishAckReason::Success
    );
    assert_eq!(event_of(&next_publish(&mut watcher).await).kind, "react");
    // Eve saw the delete event before her ban, and nothing after it.
    let mut eve_got = Vec::new();
    while let Got::Packet(v5::Packet::Publish(p)) = eve.recv5_within(QUIET).await {
        ack_publish5(&mut eve, &p).await;
        eve_got.push(p.topic.to_string());
    }
    assert!(!eve_got.iter().any(|t| t.contains("/msg/")), "{eve_got:?}");
    assert!(eve_got.len() <= 2, "{eve_got:?}");
    broker.shutdown().await;
}

/// Every value of every tree of the sled database in `dir`.
fn sled_holds(dir: &std::path::Path, needle: &[u8]) -> bool {
    // The broker's sled releases its lock from a background thread.
    let mut tries = 0;
    let db = loop {
        match sled::open(dir) {
            Ok(db) => break db,
            Err(e) if tries < 100 => {
                tries += 1;
                eprintln!("sled not open yet: {e}");
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("the data directory does not open: {e}"),
        }
    };
    let found = db.tree_names().into_iter().any(|name| {
        let tree = db.open_tree(&name).expect("a tree");
        tree.iter().filter_map(Result::ok).any(|(k, v)| {
            k.windows(needle.len()).any(|w| w == needle) || v.windows(needle.len()).any(|w| w == needle)
        })
    });
    drop(db);
    found
}

#[tokio::test]
async fn a_delete_leaves_no_copy_of_the_body_and_events_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_with(sled_config(dir.path())).await;
    let addr = broker.local_addr();
    let mut alice = user5(addr, "alice-1", "alice").await;
    let mut plain = user5(addr, "dave-0", "dave").await;
    plain
        .subscribe5(1, &[("rooms/ops/msg/+", opts(QoS::AtLeastOnce))])
        .await;
    assert_eq!(
        send(&mut alice, "rooms/ops/msg/alice", b"secret-original-1", 1).await,
        PublishAckReason::Success
    );
    assert_eq!(
        send(&mut alice, "rooms/ops/msg/alice", b"kept", 2).await,
        PublishAckReason::Success
    );
    let s1 = seq_of(&next_publish(&mut plain).await);
    let s2 = seq_of(&next_publish(&mut plain).await);
    drop(plain);
    assert_eq!(
        send(
            &mut alice,
            "rooms/ops/edit/alice",
            &edit(s1, b"secret-edited-2"),
            3
        )
        .await,
        PublishAckReason::Success
    );
    assert_eq!(
        send(&mut alice, "rooms/ops/react/alice", &react(s2, "👍", false), 4).await,
        PublishAckReason::Success
    );
    assert_eq!(
        send(&mut alice, "rooms/ops/delete/alice", &delete(s1), 5).await,
        PublishAckReason::Success
    );
    drop(alice);
    broker.shutdown().await;
    assert!(
        !sled_holds(dir.path(), b"secret-original-1"),
        "the deleted body is still stored"
    );
    assert!(
        !sled_holds(dir.path(), b"secret-edited-2"),
        "the deleted message's edit is still stored"
    );
    assert!(sled_holds(dir.path(), b"kept"));

    // Restarted: the tombstone, the reaction and the events are there, and
    // the next message's `prev` is the last message, not the last event.
    let broker = start_with(sled_config(dir.path())).await;
    let addr = broker.local_addr();
    let mut alice = user5(addr, "alice-2", "alice").await;
    alice
        .subscribe5(1, &[("replies/alice", opts(QoS::AtLeastOnce))])
        .await;
    let answer = history_as(&mut alice, "replies/alice", "ops", true, 10).await;
    let states: Vec<_> = answer
        .messages
        .iter()
        .map(|m| (m.seq, m.deleted, m.body.clone(), m.reactions.clone()))
        .collect();
    assert_eq!(
        states,
        [
            (s1, Some(true), None, None),
            (
                s2,
                None,
                Some(b"kept".to_vec()),
                Some(BTreeMap::from([("👍".to_string(), 1)]))
            ),
        ]
    );
    let events: Vec<(String, Option<u64>, Option<Vec<u8>>)> = answer
        .events
        .expect("events")
        .into_iter()
        .map(|e| (e.kind, e.target, e.body))
        .collect();
    assert_eq!(
        events,
        [
            ("edit".to_string(), Some(s1), None),
            ("react".to_string(), Some(s2), None),
            ("delete".to_string(), Some(s1), None),
        ]
    );
    let mut plain = user5(addr, "dave-1", "dave").await;
    plain
        .subscribe5(1, &[("rooms/ops/msg/+", opts(QoS::AtLeastOnce))])
        .await;
    assert_eq!(
        send(&mut alice, "rooms/ops/msg/alice", b"next", 11).await,
        PublishAckReason::Success
    );
    let next = next_publish(&mut plain).await;
    assert_eq!(user_props(&next)["prev"], s2.to_string());
    broker.shutdown().await;
}
