//! What chat lets a client make the broker keep (read receipts, rooms,
//! presence) is bounded per identity, and broker-owned state is not
//! charged to the clients' shared budgets (issue 23, `docs/limits.md`).
//! Each test is an attack that worked before the bound: it asserts what a
//! client can observe (a reason code, a record kept or gone).

mod common;

use std::time::Duration;

use common::chat::{publish_with, seq_of};
use common::*;
use rmqtt_codec::v5::{self, PublishAckReason, QoS};
use roomq::chat::payloads;
use roomq::config::{ChatConfig, Limits, PerUserLimits};
use roomq::Config;

fn receipt(room: &str, sender: &str, seq: u64, id: u16) -> rmqtt_codec::types::Publish {
    let payload = payloads::to_cbor(&payloads::Receipt { seq });
    publish_with(&format!("rooms/{room}/read/{sender}"), &payload, Some(id), &[])
}

fn post(room: &str, sender: &str, id: u16) -> rmqtt_codec::types::Publish {
    publish_with(&format!("rooms/{room}/msg/{sender}"), b"x", Some(id), &[])
}

/// The topics of the retained messages matching `filter` now.
fn retained(broker: &roomq::BrokerHandle, filter: &str) -> Vec<String> {
    let sub = broker
        .subscribe(filter, roomq::QoS::AtMostOnce)
        .expect("subscribes");
    let mut topics = Vec::new();
    while let Some(m) = sub.try_recv() {
        if m.retain {
            topics.push(m.topic.to_string());
        }
    }
    topics.sort();
    topics
}

#[tokio::test]
async fn a_receipt_to_a_room_without_a_log_is_refused_and_stores_nothing() {
    let broker = start().await;
    let mut alice = Raw::client5(broker.local_addr(), "alice").await;
    assert_eq!(
        alice.puback_of(receipt("fresh", "alice", 0, 1)).await,
        PublishAckReason::TopicNameInvalid
    );
    assert!(retained(&broker, "rooms/+/read/+").is_empty(), "nothing kept");
    // In a room with a log, a receipt is kept.
    assert_eq!(
        alice.puback_of(post("real", "alice", 2)).await,
        PublishAckReason::Success
    );
    assert_eq!(
        alice.puback_of(receipt("real", "alice", 1, 3)).await,
        PublishAckReason::Success
    );
    assert_eq!(retained(&broker, "rooms/+/read/+"), vec!["rooms/real/read/alice"]);
}

#[tokio::test]
async fn receipts_beyond_the_per_user_bound_are_refused() {
    let broker = start_with(Config {
        per_user: PerUserLimits {
            max_receipts_per_user: 2,
            ..test_config().per_user
        },
        ..test_config()
    })
    .await;
    let mut alice = Raw::client5(broker.local_addr(), "alice").await;
    for (i, room) in ["a", "b", "c"].into_iter().enumerate() {
        assert_eq!(
            alice.puback_of(post(room, "alice", 10 + i as u16)).await,
            PublishAckReason::Success
        );
    }
    assert_eq!(
        alice.puback_of(receipt("a", "alice", 1, 1)).await,
        PublishAckReason::Success
    );
    assert_eq!(
        alice.puback_of(receipt("b", "alice", 1, 2)).await,
        PublishAckReason::Success
    );
    assert_eq!(
        alice.puback_of(receipt("c", "alice", 1, 3)).await,
        PublishAckReason::QuotaExceeded,
        "a third receipt of alice"
    );
    // Moving a receipt she holds is not a new one; another user has a
    // budget of their own.
    assert_eq!(
        alice.puback_of(receipt("a", "alice", 1, 4)).await,
        PublishAckReason::Success
    );
    let mut bob = Raw::client5(broker.local_addr(), "bob").await;
    assert_eq!(
        bob.puback_of(receipt("c", "bob", 1, 1)).await,
        PublishAckReason::Success
    );
    assert_eq!(
        retained(&broker, "rooms/+/read/+"),
        vec!["rooms/a/read/alice", "rooms/b/read/alice", "rooms/c/read/bob"]
    );
}

#[tokio::test]
async fn receipts_do_not_use_up_the_clients_retained_budget() {
    let broker = start_with(Config {
        limits: Limits {
            max_retained_messages: 2,
            ..test_config().limits
        },
        ..test_config()
    })
    .await;
    let mut alice = Raw::client5(broker.local_addr(), "alice").await;
    for (i, room) in ["a", "b", "c"].into_iter().enumerate() {
        let id = 10 + i as u16;
        assert_eq!(
            alice.puback_of(post(room, "alice", id)).await,
            PublishAckReason::Success
        );
        assert_eq!(
            alice.puback_of(receipt(room, "alice", 1, id + 10)).await,
            PublishAckReason::Success
        );
    }
    let mut plain = publish("t/x", b"kept", QoS::AtLeastOnce, Some(1));
    plain.retain = true;
    assert_eq!(
        alice.puback_of(plain).await,
        PublishAckReason::NoMatchingSubscribers,
        "a plain retained publish is still kept"
    );
    assert_eq!(retained(&broker, "t/x"), vec!["t/x"]);
    assert_eq!(retained(&broker, "rooms/+/read/+").len(), 3);
}

#[tokio::test]
async fn rooms_one_user_opens_are_bounded_and_others_still_open_rooms() {
    let broker = start_with(Config {
        per_user: PerUserLimits {
            max_rooms_per_user: 2,
            ..test_config().per_user
        },
        ..test_config()
    })
    .await;
    let mut alice = Raw::client5(broker.local_addr(), "alice").await;
    assert_eq!(
        alice.puback_of(post("r1", "alice", 1)).await,
        PublishAckReason::Success
    );
    assert_eq!(
        alice.puback_of(post("r2", "alice", 2)).await,
        PublishAckReason::Success
    );
    assert_eq!(
        alice.puback_of(post("r3", "alice", 3)).await,
        PublishAckReason::QuotaExceeded,
        "a third room opened by alice"
    );
    assert_eq!(
        alice.puback_of(post("r1", "alice", 4)).await,
        PublishAckReason::Success
    );
    let mut bob = Raw::client5(broker.local_addr(), "bob").await;
    assert_eq!(
        bob.puback_of(post("r3", "bob", 1)).await,
        PublishAckReason::Success
    );
    // Posting in a room someone else opened costs no room.
    assert_eq!(
        alice.puback_of(post("r3", "alice", 5)).await,
        PublishAckReason::Success
    );
}

#[tokio::test]
async fn who_opened_a_room_is_remembered_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = || Config {
        per_user: PerUserLimits {
            max_rooms_per_user: 1,
            ..sled_config(dir.path()).per_user
        },
        ..sled_config(dir.path())
    };
    let broker = start_with(config()).await;
    let mut alice = Raw::client5(broker.local_addr(), "alice").await;
    assert_eq!(
        alice.puback_of(post("r1", "alice", 1)).await,
        PublishAckReason::Success
    );
    drop(alice);
    broker.shutdown().await;
    let broker = start_with(config()).await;
    let mut alice = Raw::client5(broker.local_addr(), "alice").await;
    assert_eq!(
        alice.puback_of(post("r2", "alice", 1)).await,
        PublishAckReason::QuotaExceeded
    );
    assert_eq!(
        alice.puback_of(post("r1", "alice", 2)).await,
        PublishAckReason::Success
    );
}

#[tokio::test]
async fn an_expired_room_is_forgotten_and_its_slots_are_free_again() {
    let broker = start_with(Config {
        per_user: PerUserLimits {
            max_rooms_per_user: 1,
            ..test_config().per_user
        },
        chat: ChatConfig {
            max_rooms: 2,
            room_max_age_secs: 1,
            ..test_config().chat
        },
        ..test_config()
    })
    .await;
    let addr = broker.local_addr();
    let mut bob = Raw::client5(addr, "bob").await;
    bob.subscribe5(1, &[("rooms/r1/msg/+", opts(QoS::AtLeastOnce))])
        .await;
    let mut alice = Raw::client5(addr, "alice").await;
    assert_eq!(
        alice.puback_of(post("r1", "alice", 1)).await,
        PublishAckReason::Success
    );
    let first = seq_of(&bob.publish5().await);
    assert_eq!(
        alice.puback_of(post("r2", "alice", 2)).await,
        PublishAckReason::QuotaExceeded
    );
    // r1's only message ages out; upkeep forgets the room.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    broker.run_upkeep();
    assert_eq!(
        alice.puback_of(post("r2", "alice", 3)).await,
        PublishAckReason::Success
    );
    // Opened again by another user, r1 goes on above the seq it had: a
    // seq is never given to two messages of a room.
    let mut carol = Raw::client5(addr, "carol").await;
    assert_eq!(
        carol.puback_of(post("r1", "carol", 1)).await,
        PublishAckReason::Success
    );
    let again = bob.publish5().await;
    assert!(seq_of(&again) > first, "seq {} after {first}", seq_of(&again));
}

/// Waits until the local subscription `watch` (on `$presence/+`) saw
/// `user` go offline.
async fn offline(watch: &roomq::LocalSubscription, user: &str) {
    let topic = format!("$presence/{user}");
    tokio::time::timeout(WAIT, async {
        loop {
            let m = watch.recv().await;
            let p: Option<payloads::Presence> = payloads::from_cbor(&m.payload);
            if m.topic == topic && p.is_some_and(|p| p.status == "offline") {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{user} offline in time"));
}

/// A named client (clean session, or with a session that lasts) connects,
/// sets its presence (so it is shown: presence shows only identities that
/// use it or rooms) and leaves; returns when its offline presence was
/// published.
async fn visit(broker: &roomq::BrokerHandle, watch: &roomq::LocalSubscription, user: &str, persistent: bool) {
    let mut c = if persistent {
        persistent5(user)
    } else {
        connect5(user)
    };
    c.username = Some(user.into());
    let (mut raw, _) = Raw::connect5(broker.local_addr(), c).await;
    let status = std::collections::HashMap::from([("status", "online")]);
    let set = publish_with(
        &format!("$presence/{user}"),
        &payloads::to_cbor(&status),
        Some(1),
        &[],
    );
    assert_eq!(raw.puback_of(set).await, PublishAckReason::Success);
    raw.send5(v5::Packet::Disconnect(Default::default())).await;
    offline(watch, user).await;
}

#[tokio::test]
async fn transient_presence_goes_after_presence_transient_secs_lasting_stays() {
    let broker = start_with(Config {
        chat: ChatConfig {
            presence_transient_secs: 1,
            ..test_config().chat
        },
        ..test_config()
    })
    .await;
    let watch = broker.subscribe("$presence/+", roomq::QoS::AtMostOnce).unwrap();
    visit(&broker, &watch, "passer", false).await;
    visit(&broker, &watch, "member", true).await;
    assert_eq!(
        retained(&broker, "$presence/+"),
        vec!["$presence/member", "$presence/passer"]
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(broker.run_upkeep(), 1);
    assert_eq!(retained(&broker, "$presence/+"), vec!["$presence/member"]);
}

#[tokio::test]
async fn presence_records_are_bounded_transient_ones_go_first() {
    let broker = start_with(Config {
        chat: ChatConfig {
            max_presence_records: 2,
            ..test_config().chat
        },
        ..test_config()
    })
    .await;
    let watch = broker.subscribe("$presence/+", roomq::QoS::AtMostOnce).unwrap();
    visit(&broker, &watch, "member", true).await;
    visit(&broker, &watch, "u1", false).await;
    visit(&broker, &watch, "u2", false).await;
    assert_eq!(
        retained(&broker, "$presence/+"),
        vec!["$presence/member", "$presence/u2"],
        "the longest-offline transient record went first"
    );
    visit(&broker, &watch, "member2", true).await;
    visit(&broker, &watch, "member3", true).await;
    assert_eq!(
        retained(&broker, "$presence/+"),
        vec!["$presence/member2", "$presence/member3"],
        "then the longest-offline others"
    );
}

/// `room_post_bytes_per_hour` counts what one identity stores in rooms:
/// beyond it a post gets 0x97. A repeat of a post (same msg-id, sent
/// again after a lost PUBACK) stores nothing and spends nothing.
#[tokio::test]
async fn room_post_bytes_are_bounded_per_identity_and_a_repeat_is_free() {
    let broker = start_with(Config {
        per_user: PerUserLimits {
            room_post_bytes_per_hour: 100_000,
            ..test_config().per_user
        },
        ..test_config()
    })
    .await;
    let addr = broker.local_addr();
    let mut dev = Raw::client5(addr, "dev").await;
    let body = |n: usize| vec![b'x'; n];
    let once = publish_with(
        "rooms/plant/msg/dev",
        &body(40_000),
        Some(1),
        &[("msg-id", "once")],
    );
    for _ in 0..2 {
        let ack = common::chat::send_and_ack(&mut dev, once.clone()).await;
        assert_eq!(ack.reason_code, PublishAckReason::Success);
    }
    // 40,000 + 50,000 fit; had the repeat been charged, they would not.
    let more = publish_with(
        "rooms/plant/msg/dev",
        &body(50_000),
        Some(2),
        &[("msg-id", "more")],
    );
    let ack = common::chat::send_and_ack(&mut dev, more).await;
    assert_eq!(ack.reason_code, PublishAckReason::Success, "a repeat was charged");
    let over = publish_with(
        "rooms/plant/msg/dev",
        &body(20_000),
        Some(3),
        &[("msg-id", "over")],
    );
    let ack = common::chat::send_and_ack(&mut dev, over).await;
    assert_eq!(ack.reason_code, PublishAckReason::QuotaExceeded);
    // Another identity has its own budget.
    let mut eve = Raw::client5(addr, "eve").await;
    let hers = publish_with("rooms/plant/msg/eve", &body(20_000), Some(1), &[]);
    let ack = common::chat::send_and_ack(&mut eve, hers).await;
    assert_eq!(ack.reason_code, PublishAckReason::Success);
    broker.shutdown().await;
}

/// An edit or a reaction is charged what the store writes for it, not
/// only the bytes of its small request (session 4's attack: 4 MiB of
/// budget spent on reactions left 40 MiB on disk). With 20,000 bytes an
/// hour, a few dozen edits fit, not the 100 a message takes.
#[tokio::test]
async fn room_events_are_charged_what_they_store() {
    let broker = start_with(Config {
        per_user: PerUserLimits {
            room_post_bytes_per_hour: 20_000,
            ..test_config().per_user
        },
        ..test_config()
    })
    .await;
    let addr = broker.local_addr();
    let mut dev = Raw::client5(addr, "dev").await;
    let ack =
        common::chat::send_and_ack(&mut dev, publish_with("rooms/plant/msg/dev", b"v1", Some(1), &[])).await;
    assert_eq!(ack.reason_code, PublishAckReason::Success);
    let mut accepted = 0;
    for id in 2..200u16 {
        let edit: std::collections::BTreeMap<&str, ciborium::Value> = [
            ("seq", 1.into()),
            ("body", ciborium::Value::Bytes(b"v2".to_vec())),
        ]
        .into();
        let request = publish_with("rooms/plant/edit/dev", &payloads::to_cbor(&edit), Some(id), &[]);
        let ack = common::chat::send_and_ack(&mut dev, request).await;
        if ack.reason_code != PublishAckReason::Success {
            assert_eq!(ack.reason_code, PublishAckReason::QuotaExceeded);
            break;
        }
        accepted += 1;
    }
    assert!(
        (10..60).contains(&accepted),
        "{accepted} edits of ~40 request bytes fit in 20,000 bytes: each should cost what it stores"
    );
    broker.shutdown().await;
}
