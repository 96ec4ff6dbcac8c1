//! Room events and moderation, and what the store keeps (`topics.md`,
//! *Edits, deletes and reactions*, *Moderation*): a moderator deletes any
//! message, a non-moderator none; bans are events and stop events to the
//! banned user; a delete leaves no copy of the body in the sled store;
//! events survive a restart.

mod common;

use std::collections::BTreeMap;

use common::chat::{ack_publish5, publish_with, seq_of, user5, user_props};
use common::events::*;
use common::*;
use rmqtt_codec::types::QoS;
use rmqtt_codec::v5::{self, PublishAckReason};
use roomq::chat::payloads::{self, ModResponse};
use roomq::config::{ChatConfig, RoomConfig, RoomsDefault};
use roomq::Config;

fn moderated() -> Config {
    Config {
        rooms: vec![RoomConfig {
            name: "ops".into(),
            members: vec!["alice".into(), "eve".into(), "carol".into()],
            open: false,
            moderators: vec!["mod".into()],
        }],
        chat: ChatConfig {
            rooms_default: RoomsDefault::Closed,
            ..test_config().chat
        },
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
    // The reaction is in `reactions` above, not a log entry.
    assert_eq!(
        events,
        [
            ("edit".to_string(), Some(s1), None),
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

/// An edit and a delete sent back to back: the delete is taken while the
/// edit waits for its group commit, and still removes the edit's body.
#[tokio::test]
async fn a_delete_right_after_an_edit_removes_the_edit_body_too() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_with(sled_config(dir.path())).await;
    let addr = broker.local_addr();
    let mut alice = user5(addr, "alice-1", "alice").await;
    // A subscriber of its own: `send` skips what arrives before a PUBACK.
    let mut plain = user5(addr, "dave-0", "dave").await;
    plain
        .subscribe5(1, &[("rooms/ops/msg/+", opts(QoS::AtLeastOnce))])
        .await;
    assert_eq!(
        send(&mut alice, "rooms/ops/msg/alice", b"first", 1).await,
        PublishAckReason::Success
    );
    let s1 = seq_of(&next_publish(&mut plain).await);
    drop(plain);
    for round in 0..20u16 {
        let body = format!("pipelined-edit-{round}");
        let edit = publish_with("rooms/ops/edit/alice", &edit(s1, body.as_bytes()), Some(2), &[]);
        alice.send5(v5::Packet::Publish(Box::new(edit))).await;
        if round == 19 {
            let delete = publish_with("rooms/ops/delete/alice", &delete(s1), Some(3), &[]);
            alice.send5(v5::Packet::Publish(Box::new(delete))).await;
        }
        let want = if round == 19 { 2 } else { 1 };
        let mut acks = 0;
        while acks < want {
            match alice.recv5().await.packet() {
                v5::Packet::PublishAck(ack) => {
                    assert_eq!(ack.reason_code, PublishAckReason::Success);
                    acks += 1;
                }
                v5::Packet::Publish(p) => ack_publish5(&mut alice, &p).await,
                other => panic!("expected PUBACKs, got {other:?}"),
            }
        }
    }
    drop(alice);
    broker.shutdown().await;
    assert!(
        !sled_holds(dir.path(), b"pipelined-edit-"),
        "an edit's body is still stored"
    );
}

/// A message takes `room_max_edits_per_message` (100) edits; the next is
/// refused with 0x97 and changes nothing. A delete of a message with the
/// most edits empties every edit's body in the store, and another
/// member's post sent meanwhile is delivered as well.
#[tokio::test]
async fn edits_per_message_are_bounded_and_a_delete_empties_them_all() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_with(sled_config(dir.path())).await;
    let addr = broker.local_addr();
    let mut alice = user5(addr, "alice-1", "alice").await;
    let mut carol = user5(addr, "carol-1", "carol").await;
    let mut eve = user5(addr, "eve-1", "eve").await;
    eve.subscribe5(
        1,
        &[
            ("rooms/ops/event/+", opts(QoS::AtLeastOnce)),
            ("rooms/lobby/msg/+", opts(QoS::AtLeastOnce)),
        ],
    )
    .await;
    assert_eq!(
        send(&mut alice, "rooms/ops/msg/alice", b"bounded-original", 1).await,
        PublishAckReason::Success
    );
    for i in 0..100u16 {
        let body = format!("bounded-edit-{i}");
        let reason = send(&mut alice, "rooms/ops/edit/alice", &edit(1, body.as_bytes()), 2).await;
        assert_eq!(reason, PublishAckReason::Success, "edit {i}");
        assert_eq!(event_of(&next_publish(&mut eve).await).kind, "edit");
    }
    assert_eq!(
        send(
            &mut alice,
            "rooms/ops/edit/alice",
            &edit(1, b"bounded-edit-over"),
            3
        )
        .await,
        PublishAckReason::QuotaExceeded,
        "the 101st edit of one message"
    );
    // The delete and another member's post, back to back: both arrive.
    let delete = publish_with("rooms/ops/delete/alice", &delete(1), Some(4), &[]);
    alice.send5(v5::Packet::Publish(Box::new(delete))).await;
    let post = publish_with("rooms/lobby/msg/carol", b"meanwhile", Some(1), &[]);
    carol.send5(v5::Packet::Publish(Box::new(post))).await;
    let mut got = Vec::new();
    for _ in 0..2 {
        let p = next_publish(&mut eve).await;
        got.push(if p.topic.starts_with("rooms/ops/event/") {
            event_of(&p).kind
        } else {
            String::from_utf8_lossy(&p.payload).into_owned()
        });
    }
    got.sort();
    assert_eq!(got, ["delete", "meanwhile"]);
    drop((alice, carol, eve));
    broker.shutdown().await;
    assert!(
        !sled_holds(dir.path(), b"bounded-edit-"),
        "an edit's body is still stored"
    );
    assert!(
        !sled_holds(dir.path(), b"bounded-original"),
        "the body is still stored"
    );
}

/// A message edited more often than `room_max_edits_per_message` allows
/// now (edited before the bound was lowered, or before it existed): its
/// delete is accepted, the first edits are emptied with it and the rest a
/// step at a time in the background (a delete no longer holds a runtime
/// thread for one store read and rewrite per edit), until no body of any
/// edit is left, in history or on disk.
#[tokio::test]
async fn a_delete_of_a_message_edited_beyond_the_bound_empties_every_edit() {
    let dir = tempfile::tempdir().unwrap();
    let config = |edits| Config {
        chat: ChatConfig {
            room_max_edits_per_message: edits,
            ..sled_config(dir.path()).chat
        },
        ..sled_config(dir.path())
    };
    let broker = start_with(config(30)).await;
    let addr = broker.local_addr();
    let mut alice = user5(addr, "alice-1", "alice").await;
    assert_eq!(
        send(&mut alice, "rooms/ops/msg/alice", b"legacy-original", 1).await,
        PublishAckReason::Success
    );
    for i in 0..30u16 {
        let body = format!("legacy-edit-{i}");
        let reason = send(&mut alice, "rooms/ops/edit/alice", &edit(1, body.as_bytes()), 2).await;
        assert_eq!(reason, PublishAckReason::Success, "edit {i}");
    }
    drop(alice);
    broker.shutdown().await;

    let broker = start_with(config(4)).await;
    let addr = broker.local_addr();
    let mut alice = user5(addr, "alice-1", "alice").await;
    alice
        .subscribe5(1, &[("replies/alice", opts(QoS::AtLeastOnce))])
        .await;
    assert_eq!(
        send(&mut alice, "rooms/ops/delete/alice", &delete(1), 3).await,
        PublishAckReason::Success
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut id = 10;
    loop {
        id += 1;
        let answer = history_as(&mut alice, "replies/alice", "ops", true, id).await;
        let events = answer.events.expect("events");
        assert_eq!(events.iter().filter(|e| e.kind == "edit").count(), 30);
        let bodies_left = events
            .iter()
            .filter(|e| e.body.as_ref().is_some_and(|b| !b.is_empty()))
            .count();
        if bodies_left == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{bodies_left} edits of the deleted message still carry a body"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    drop(alice);
    broker.shutdown().await;
    assert!(
        !sled_holds(dir.path(), b"legacy-edit-"),
        "an edit's body is still stored"
    );
    assert!(
        !sled_holds(dir.path(), b"legacy-original"),
        "the body is still stored"
    );
}
