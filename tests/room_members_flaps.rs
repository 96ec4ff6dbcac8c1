//! One identity flapping a room subscription (`topics.md`, *Room
//! members*): a reader that does not read holds one copy of the list per
//! room, the newest, not one per change; and the changes one identity
//! makes to its place in the lists are charged to it
//! (`room_member_changes_per_minute`): beyond it the change stands, but
//! no list goes out for it before the next minute.

mod common;

use common::chat::*;
use common::*;
use rmqtt_codec::types::QoS;
use rmqtt_codec::v5;
use roomq::chat::payloads;
use roomq::config::{ChatConfig, PerUserLimits};

const LOBBY: &str = "$rooms/lobby/members";
const FILTER: &str = "rooms/lobby/msg/+";

fn list_of(p: &rmqtt_codec::types::Publish) -> Vec<String> {
    assert_eq!(p.topic, LOBBY);
    payloads::from_cbor(&p.payload).expect("CBOR list of names")
}

/// `who` subscribes to the lobby (`n` numbers its packet ids).
async fn join(who: &mut Raw, n: u16) {
    who.subscribe5(n, &[(FILTER, opts(QoS::AtMostOnce))]).await;
}

/// `who` unsubscribes from the lobby.
async fn leave(who: &mut Raw, n: u16) {
    who.send5(v5::Packet::Unsubscribe(v5::Unsubscribe {
        packet_id: pid(n),
        user_properties: Vec::new(),
        topic_filters: vec![FILTER.into()],
    }))
    .await;
    assert!(matches!(
        who.recv5().await.packet(),
        v5::Packet::UnsubscribeAck(_)
    ));
}

/// A reader with Receive Maximum 1 that never acknowledges: the first
/// list stays in flight, every later one waits in its queue. Each change
/// is published (an observer sees it) before the next is made; the
/// reader then gets the newest list only, not one per change.
#[tokio::test]
async fn a_reader_that_does_not_read_holds_only_the_newest_list() {
    let broker = start_with(roomq::Config {
        per_user: PerUserLimits {
            room_member_changes_per_minute: 0,
            ..test_config().per_user
        },
        chat: ChatConfig {
            room_members_interval_ms: 1,
            room_members_bytes_per_sec: 0,
            ..test_config().chat
        },
        ..test_config()
    })
    .await;
    let addr = broker.local_addr();
    let mut connect = connect5("slow");
    connect.receive_max = std::num::NonZeroU16::new(1);
    let (mut slow, _) = Raw::connect5(addr, connect).await;
    slow.subscribe5(1, &[(LOBBY, opts(QoS::AtLeastOnce))]).await;
    let mut watcher = Raw::client5(addr, "watcher").await;
    watcher.subscribe5(1, &[(LOBBY, opts(QoS::AtMostOnce))]).await;
    let mut mallory = user5(addr, "mallory-1", "mallory").await;
    let mut want: Vec<String> = Vec::new();
    for n in 0..6u16 {
        if n % 2 == 0 {
            join(&mut mallory, n + 1).await;
            want = vec!["mallory".to_string()];
        } else {
            leave(&mut mallory, n + 1).await;
            want = Vec::new();
        }
        let list = tokio::time::timeout(WAIT, async {
            loop {
                let list = list_of(&watcher.publish5().await);
                if list == want {
                    return list;
                }
            }
        })
        .await;
        assert!(list.is_ok(), "change {n} was never published");
    }
    // The first list is in flight; of the five after it only the newest
    // waits.
    let first = slow.publish5().await;
    assert_eq!(list_of(&first), ["mallory"]);
    ack_publish5(&mut slow, &first).await;
    let mut after = Vec::new();
    while let Got::Packet(v5::Packet::Publish(p)) = slow.recv5_within(QUIET).await {
        ack_publish5(&mut slow, &p).await;
        after.push(list_of(&p));
    }
    assert_eq!(after, [want], "the queued copies of the list");
    // Each copy replaced is counted (`roomq_messages_dropped_total`).
    assert_eq!(broker.metrics().messages_superseded.get(), 4);
    broker.shutdown().await;
}

/// `room_member_changes_per_minute`: mallory's first changes are
/// published, the ones beyond her budget are made but publish no list;
/// another user's change then publishes the list as it is, with
/// mallory's last change in it.
#[tokio::test]
async fn changes_beyond_the_identity_budget_publish_no_list() {
    let broker = start_with(roomq::Config {
        per_user: PerUserLimits {
            room_member_changes_per_minute: 3,
            ..test_config().per_user
        },
        chat: ChatConfig {
            room_members_interval_ms: 1,
            room_members_bytes_per_sec: 0,
            ..test_config().chat
        },
        ..test_config()
    })
    .await;
    let addr = broker.local_addr();
    let mut reader = Raw::client5(addr, "reader").await;
    reader.subscribe5(1, &[(LOBBY, opts(QoS::AtMostOnce))]).await;
    let mut mallory = user5(addr, "mallory-1", "mallory").await;
    let mut lists = Vec::new();
    // Eight changes, each given time to be published: three are.
    for n in 0..8u16 {
        if n % 2 == 0 {
            join(&mut mallory, n + 1).await;
        } else {
            leave(&mut mallory, n + 1).await;
        }
        while let Got::Packet(v5::Packet::Publish(p)) = reader.recv5_within(QUIET).await {
            lists.push(list_of(&p));
        }
    }
    assert_eq!(lists.len(), 3, "lists published for 8 changes: {lists:?}");
    // Her last change stood: she is in the room, as bob's join shows.
    join(&mut mallory, 20).await;
    let mut bob = user5(addr, "bob-1", "bob").await;
    join(&mut bob, 1).await;
    let list = tokio::time::timeout(WAIT, async {
        loop {
            let list = list_of(&reader.publish5().await);
            if list.len() == 2 {
                return list;
            }
        }
    })
    .await
    .expect("bob's join is published");
    assert_eq!(list, ["bob", "mallory"]);
    broker.shutdown().await;
}

/// The newest list also replaces a copy queued before a restart (the
/// store does not keep `Message::last_value`): a persistent session that
/// held one list in flight and one queued gets, after the restart and a
/// new change, the one in flight again and the newest, not the old one.
#[tokio::test]
async fn a_list_queued_before_a_restart_is_replaced_too() {
    let dir = tempfile::tempdir().unwrap();
    let config = || roomq::Config {
        chat: ChatConfig {
            room_members_interval_ms: 1,
            room_members_bytes_per_sec: 0,
            ..sled_config(dir.path()).chat
        },
        ..sled_config(dir.path())
    };
    let broker = start_with(config()).await;
    let addr = broker.local_addr();
    let mut persistent = connect5("slow");
    persistent.clean_start = false;
    persistent.session_expiry_interval_secs = 3600;
    persistent.receive_max = std::num::NonZeroU16::new(1);
    let (mut slow, _) = Raw::connect5(addr, persistent.clone()).await;
    slow.subscribe5(1, &[(LOBBY, opts(QoS::AtLeastOnce))]).await;
    let mut watcher = Raw::client5(addr, "watcher").await;
    watcher.subscribe5(1, &[(LOBBY, opts(QoS::AtMostOnce))]).await;
    let mut mallory = user5(addr, "mallory-1", "mallory").await;
    join(&mut mallory, 1).await;
    assert_eq!(list_of(&watcher.publish5().await), ["mallory"]);
    leave(&mut mallory, 2).await;
    assert!(list_of(&watcher.publish5().await).is_empty());
    // One list in flight, one queued, both stored.
    assert_eq!(list_of(&slow.publish5().await), ["mallory"]);
    drop((slow, watcher, mallory));
    broker.shutdown().await;

    let broker = start_with(config()).await;
    let addr = broker.local_addr();
    let mut bob = user5(addr, "bob-1", "bob").await;
    let mut watcher = Raw::client5(addr, "watcher").await;
    watcher.subscribe5(1, &[(LOBBY, opts(QoS::AtMostOnce))]).await;
    join(&mut bob, 1).await;
    let published = tokio::time::timeout(WAIT, async {
        while list_of(&watcher.publish5().await) != ["bob"] {}
    })
    .await;
    assert!(published.is_ok(), "bob's join was never published");
    let (mut slow, _) = Raw::connect5(addr, persistent).await;
    let mut got = Vec::new();
    while let Got::Packet(v5::Packet::Publish(p)) = slow.recv5_within(QUIET).await {
        ack_publish5(&mut slow, &p).await;
        got.push(list_of(&p));
    }
    assert_eq!(got, [vec!["mallory".to_string()], vec!["bob".to_string()]]);
    broker.shutdown().await;
}
