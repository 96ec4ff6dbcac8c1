//! Message lifecycle as room events (`topics.md`, *Edits, deletes and
//! reactions*): senders edit, delete and react on
//! `rooms/{room}/edit|delete|react/{sender}`; each accepted request is a
//! room event with its own `seq`, delivered on `rooms/{room}/event/{sender}`
//! in `seq` order with the messages; a client of `msg` alone sees nothing
//! of it and an unbroken `prev` chain; history shows each message in its
//! current state; an offline member gets the events it missed.

mod common;

use std::collections::BTreeMap;

use common::chat::{seq_of, user5, user_props};
use common::events::*;
use common::*;
use rmqtt_codec::types::{Publish, QoS};
use rmqtt_codec::v3;
use rmqtt_codec::v5::PublishAckReason;
use roomq::config::ChatConfig;
use roomq::Config;

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
    // An event's `prev` is the room's entry before it, message or event,
    // that the log keeps (not a reaction).
    let mut before = s1;
    for p in &got {
        assert_eq!(
            user_props(p)["prev"].parse::<u64>().unwrap(),
            if p.topic.contains("/msg/") { s1 } else { before }
        );
        if p.topic.contains("/msg/") || event_of(p).kind != "react" {
            before = seq_of(p);
        }
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
    // With `events: true`, the raw events the log keeps too, in seq order:
    // reactions are state on their message, not log entries.
    let answer = history_as(&mut bob, "replies/bob", "ops", true, 21).await;
    let events = answer.events.expect("events");
    let kinds: Vec<(&str, u64)> = events.iter().map(|e| (e.kind.as_str(), e.seq)).collect();
    assert_eq!(kinds, [("edit", seqs[0]), ("delete", seqs[6])]);
    broker.shutdown().await;
}

#[tokio::test]
async fn refusals_change_nothing() {
    let config = Config {
        chat: ChatConfig {
            max_reaction_emoji: 2,
            ..test_config().chat
        },
        ..test_config()
    };
    let broker = start_with(config).await;
    let addr = broker.local_addr();
    let mut alice = user5(addr, "alice-1", "alice").await;
    let mut eve = user5(addr, "eve-1", "eve").await;
    let mut watcher = ops_watcher(addr).await;
    let s1 = alice_posts(&mut alice, &mut watcher, b"mine").await;

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

#[tokio::test]
async fn an_offline_member_gets_the_events_it_missed_in_seq_order() {
    let broker = start().await;
    let addr = broker.local_addr();
    common::chat::member_leaves(addr, "carol-p", "rooms/ops/#").await;
    let mut alice = user5(addr, "alice-1", "alice").await;
    assert_eq!(
        send(&mut alice, "rooms/ops/msg/alice", b"one", 1).await,
        PublishAckReason::Success
    );
    // A subscriber of its own: `send` skips what arrives before a PUBACK.
    let mut plain = user5(addr, "dave-1", "dave").await;
    plain
        .subscribe5(1, &[("rooms/ops/msg/+", opts(QoS::AtLeastOnce))])
        .await;
    assert_eq!(
        send(&mut alice, "rooms/ops/msg/alice", b"two", 2).await,
        PublishAckReason::Success
    );
    let s2 = seq_of(&next_publish(&mut plain).await);
    assert_eq!(
        send(&mut alice, "rooms/ops/edit/alice", &edit(s2, b"two!"), 3).await,
        PublishAckReason::Success
    );
    assert_eq!(
        send(&mut alice, "rooms/ops/react/alice", &react(s2, "👀", false), 4).await,
        PublishAckReason::Success
    );
    assert_eq!(
        send(&mut alice, "rooms/ops/msg/alice", b"three", 5).await,
        PublishAckReason::Success
    );

    let (mut carol, _) = Raw::connect5(addr, persistent5("carol-p")).await;
    // The reaction is not replayed: it is state on its message (history),
    // not a log entry.
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(next_publish(&mut carol).await);
    }
    let topics: Vec<&str> = got.iter().map(|p| &*p.topic).collect();
    assert_eq!(
        topics,
        [
            "rooms/ops/msg/alice",
            "rooms/ops/msg/alice",
            "rooms/ops/event/alice",
            "rooms/ops/msg/alice",
        ]
    );
    let seqs: Vec<u64> = got.iter().map(seq_of).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    // The replayed message is in its current state.
    assert_eq!(&got[1].payload[..], b"two!");
    assert!(user_props(&got[1]).contains_key("edited"));
    assert_eq!(event_of(&got[2]).kind, "edit");
    quiet(&mut carol).await;
    broker.shutdown().await;
}

/// Events count for `history_max_bytes`: a room whose newest entries are
/// a long run of edits answers `events: true` with what fits and
/// `more`, not with every event (an attacker's 8 MB answer).
#[tokio::test]
async fn an_answer_with_events_stays_within_history_max_bytes() {
    let config = Config {
        chat: ChatConfig {
            history_max_bytes: 4096,
            room_max_edits_per_message: 200,
            ..test_config().chat
        },
        ..test_config()
    };
    let broker = start_with(config).await;
    let addr = broker.local_addr();
    let mut alice = user5(addr, "alice-1", "alice").await;
    assert_eq!(
        send(&mut alice, "rooms/ops/msg/alice", b"target", 1).await,
        PublishAckReason::Success
    );
    for i in 0..200u16 {
        let body = format!("v{i}");
        let reason = send(
            &mut alice,
            "rooms/ops/edit/alice",
            &edit(1, body.as_bytes()),
            i + 2,
        )
        .await;
        assert_eq!(reason, PublishAckReason::Success);
    }
    alice
        .subscribe5(1, &[("replies/alice", opts(QoS::AtLeastOnce))])
        .await;
    let answer = history_as(&mut alice, "replies/alice", "ops", true, 900).await;
    let events = answer.events.expect("events");
    assert!(answer.more, "200 events of ~100 bytes do not fit in 4096 bytes");
    assert!(
        !events.is_empty() && events.len() < 100,
        "{} events in a 4096-byte answer",
        events.len()
    );
    broker.shutdown().await;
}
