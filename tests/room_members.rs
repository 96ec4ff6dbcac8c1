//! Who is in a room (`topics.md`, *Room members*): `$rooms/{room}/members`
//! lists an open room's subscribers (online or held by a persistent
//! session, also across a restart), bounded by `room_members_listed`;
//! presence is shown only for identities that use rooms, never for a
//! plain MQTT client.

mod common;

use common::chat::*;
use common::*;
use rmqtt_codec::types::QoS;
use rmqtt_codec::{v3, v5};
use roomq::chat::payloads;
use roomq::config::{ChatConfig, PerUserLimits};

const LOBBY: &str = "$rooms/lobby/members";

/// Reads `$rooms/lobby/members` publications (QoS 0, over 5.0 or 3.1.1)
/// until one lists exactly `want`; panics after `WAIT`.
async fn until_listed(reader: &mut Raw, v5: bool, want: &[&str]) {
    let mut seen = Vec::new();
    let found = tokio::time::timeout(WAIT, async {
        loop {
            let p = if v5 {
                reader.publish5().await
            } else {
                reader.publish3().await
            };
            assert_eq!(p.topic, LOBBY);
            let list: Vec<String> = payloads::from_cbor(&p.payload).expect("CBOR list of names");
            if list == want {
                return;
            }
            seen.push(list);
        }
    })
    .await;
    assert!(found.is_ok(), "never listed {want:?}; saw {seen:?}");
}

async fn until_listed5(reader: &mut Raw, want: &[&str]) {
    until_listed(reader, true, want).await
}

async fn until_listed3(reader: &mut Raw, want: &[&str]) {
    until_listed(reader, false, want).await
}

async fn reader5(addr: std::net::SocketAddr, id: &str) -> Raw {
    let mut reader = Raw::client5(addr, id).await;
    reader.subscribe5(1, &[(LOBBY, opts(QoS::AtMostOnce))]).await;
    reader
}

async fn reader3(addr: std::net::SocketAddr, id: &str) -> Raw {
    let (mut reader, _) = Raw::connect3(addr, connect3(id, true)).await;
    reader.subscribe3(1, &[(LOBBY, QoS::AtMostOnce)]).await;
    reader
}

#[tokio::test]
async fn subscribers_of_an_open_room_are_listed_until_they_leave() {
    let broker = start().await;
    let addr = broker.local_addr();
    let mut r5 = reader5(addr, "reader5").await;
    let mut r3 = reader3(addr, "reader3").await;

    // Two users who only SUBSCRIBE (one 5.0, one 3.1.1) see each other.
    let mut alice = user5(addr, "alice-phone", "alice").await;
    alice
        .subscribe5(1, &[("rooms/lobby/msg/+", opts(QoS::AtLeastOnce))])
        .await;
    let mut c = connect3("bob-laptop", true);
    c.username = Some("bob".into());
    let (mut bob, _) = Raw::connect3(addr, c).await;
    bob.subscribe3(1, &[("rooms/lobby/#", QoS::AtLeastOnce)]).await;
    until_listed5(&mut r5, &["alice", "bob"]).await;
    until_listed3(&mut r3, &["alice", "bob"]).await;
    // A reader that comes later gets the retained list.
    let mut late = reader5(addr, "late").await;
    until_listed5(&mut late, &["alice", "bob"]).await;

    // Alice unsubscribes: gone.
    alice
        .send5(v5::Packet::Unsubscribe(v5::Unsubscribe {
            packet_id: pid(2),
            user_properties: Vec::new(),
            topic_filters: vec!["rooms/lobby/msg/+".into()],
        }))
        .await;
    until_listed5(&mut r5, &["bob"]).await;
    until_listed3(&mut r3, &["bob"]).await;

    // Bob (a clean session) disconnects: the room is empty, nothing kept.
    bob.send3(v3::Packet::Disconnect).await;
    until_listed5(&mut r5, &[]).await;
    let mut after = Raw::client5(addr, "after").await;
    after.subscribe5(1, &[(LOBBY, opts(QoS::AtMostOnce))]).await;
    assert!(
        matches!(after.recv5_within(QUIET).await, Got::Nothing),
        "no retained list for an empty room"
    );
}

#[tokio::test]
async fn a_persistent_session_stays_listed_offline_and_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_with(sled_config(dir.path())).await;
    let addr = broker.local_addr();
    let mut reader = reader5(addr, "reader").await;
    let mut c = persistent5("carol-phone");
    c.username = Some("carol".into());
    let (mut carol, _) = Raw::connect5(addr, c).await;
    carol
        .subscribe5(1, &[("rooms/lobby/msg/+", opts(QoS::AtLeastOnce))])
        .await;
    let mut dave = user5(addr, "dave-phone", "dave").await;
    dave.subscribe5(1, &[("rooms/lobby/msg/+", opts(QoS::AtLeastOnce))])
        .await;
    until_listed5(&mut reader, &["carol", "dave"]).await;
    carol.send5(v5::Packet::Disconnect(Default::default())).await;
    assert!(matches!(carol.recv5().await, Got::Closed));
    dave.send5(v5::Packet::Disconnect(Default::default())).await;
    until_listed5(&mut reader, &["carol"]).await;

    broker.shutdown().await;
    let broker = start_with(sled_config(dir.path())).await;
    let mut reader = reader5(broker.local_addr(), "reader").await;
    until_listed5(&mut reader, &["carol"]).await;
}

#[tokio::test]
async fn the_list_is_cut_at_room_members_listed() {
    let broker = start_with(roomq::Config {
        chat: ChatConfig {
            room_members_listed: 2,
            ..test_config().chat
        },
        ..test_config()
    })
    .await;
    let addr = broker.local_addr();
    let mut reader = reader5(addr, "reader").await;
    let mut users = Vec::new();
    for (user, want) in [("c", &["c"][..]), ("b", &["b", "c"]), ("a", &["a", "b"])] {
        let mut u = user5(addr, &format!("{user}-1"), user).await;
        u.subscribe5(1, &[("rooms/lobby/msg/+", opts(QoS::AtLeastOnce))])
            .await;
        until_listed5(&mut reader, want).await;
        users.push(u);
    }
}

#[tokio::test]
async fn a_declared_room_lists_its_members_and_moderators_sorted() {
    let broker = start().await;
    broker.set_room(roomq::config::RoomConfig {
        name: "lobby".into(),
        members: vec!["zed".into(), "amy".into()],
        open: false,
        moderators: vec!["mod".into()],
    });
    let mut reader = user5(broker.local_addr(), "amy-1", "amy").await;
    reader.subscribe5(1, &[(LOBBY, opts(QoS::AtMostOnce))]).await;
    until_listed5(&mut reader, &["amy", "mod", "zed"]).await;
}

/// A declared open room (declared for its moderators, say) lists its
/// subscribers as an undeclared open room does, and its declared names.
#[tokio::test]
async fn a_declared_open_room_lists_its_subscribers_and_moderators() {
    let broker = start().await;
    broker.set_room(roomq::config::RoomConfig {
        name: "lobby".into(),
        members: vec![],
        open: true,
        moderators: vec!["mod".into()],
    });
    let addr = broker.local_addr();
    let mut reader = reader5(addr, "reader5").await;
    until_listed5(&mut reader, &["mod"]).await;
    let mut alice = user5(addr, "alice-phone", "alice").await;
    alice
        .subscribe5(1, &[("rooms/lobby/msg/+", opts(QoS::AtLeastOnce))])
        .await;
    let mut bob = user5(addr, "bob-laptop", "bob").await;
    bob.subscribe5(1, &[("rooms/lobby/#", opts(QoS::AtLeastOnce))])
        .await;
    until_listed5(&mut reader, &["alice", "bob", "mod"]).await;
    // Her session ends with her connection: she is no longer listed.
    drop(alice);
    until_listed5(&mut reader, &["bob", "mod"]).await;
    broker.shutdown().await;
}

/// A closed room's list is the room's: a non-member who subscribes to it
/// (directly, or through `$rooms/+/members`) gets nothing, while a
/// member who subscribed the same way gets it.
#[tokio::test]
async fn a_closed_rooms_list_reaches_its_members_only() {
    let broker = start().await;
    broker.set_room(roomq::config::RoomConfig {
        name: "lobby".into(),
        members: vec!["amy".into()],
        open: false,
        moderators: vec![],
    });
    let addr = broker.local_addr();
    let mut outsider = user5(addr, "mal-1", "mal").await;
    outsider
        .subscribe5(
            1,
            &[
                ("$rooms/+/members", opts(QoS::AtMostOnce)),
                (LOBBY, opts(QoS::AtMostOnce)),
            ],
        )
        .await;
    let mut member = user5(addr, "amy-1", "amy").await;
    member
        .subscribe5(1, &[("$rooms/+/members", opts(QoS::AtMostOnce))])
        .await;
    until_listed5(&mut member, &["amy"]).await;
    if let Got::Packet(p) = outsider.recv5_within(std::time::Duration::from_millis(500)).await {
        panic!("a non-member got {p:?}");
    }
}

#[tokio::test]
async fn a_plain_client_never_shows_presence_a_room_user_does() {
    let broker = start().await;
    let addr = broker.local_addr();
    let watch = broker
        .subscribe("$presence/+", roomq::QoS::AtMostOnce)
        .expect("local subscription");
    // `mosquitto_pub -t demo/x -m hi`, without and with a username, and a
    // 5.0 one: connect, publish, disconnect.
    for (id, username) in [("mosq-1", None), ("mosq-2", Some("sensor"))] {
        let mut c = connect3(id, true);
        c.username = username.map(Into::into);
        let (mut plain, _) = Raw::connect3(addr, c).await;
        plain
            .send3(v3::Packet::Publish(Box::new(publish(
                "demo/x",
                b"hi",
                QoS::AtMostOnce,
                None,
            ))))
            .await;
        plain.send3(v3::Packet::Disconnect).await;
        plain.expect_closed3().await;
    }
    let mut plain5 = user5(addr, "gauge-5", "gauge").await;
    plain5.publish0_5("demo/x", b"hi").await;
    plain5.send5(v5::Packet::Disconnect(Default::default())).await;
    assert!(matches!(plain5.recv5().await, Got::Closed));

    // A room user shows: the first presence the watcher sees is hers.
    let mut ann = user5(addr, "ann-1", "ann").await;
    ann.subscribe5(1, &[("rooms/lobby/msg/+", opts(QoS::AtLeastOnce))])
        .await;
    let first = tokio::time::timeout(WAIT, watch.recv())
        .await
        .expect("ann's presence");
    assert_eq!(first.topic, "$presence/ann", "plain clients never show presence");
    let p: payloads::Presence = payloads::from_cbor(&first.payload).unwrap();
    assert_eq!((p.status.as_str(), p.devices), ("online", 1));
}

#[tokio::test]
async fn a_flood_of_subscribes_is_published_once_per_interval() {
    let broker = start_with(roomq::Config {
        chat: ChatConfig {
            room_members_interval_ms: 3_600_000,
            ..test_config().chat
        },
        ..test_config()
    })
    .await;
    let addr = broker.local_addr();
    let mut reader = reader5(addr, "reader").await;
    let mut alice = user5(addr, "alice-1", "alice").await;
    alice
        .subscribe5(1, &[("rooms/lobby/msg/+", opts(QoS::AtLeastOnce))])
        .await;
    // The first change is published at once.
    until_listed5(&mut reader, &["alice"]).await;
    // Within the interval, 40 changes wait for its end: nothing now.
    let mut bob = user5(addr, "bob-1", "bob").await;
    for n in 0..20u16 {
        bob.subscribe5(2 * n + 1, &[("rooms/lobby/#", opts(QoS::AtMostOnce))])
            .await;
        bob.send5(v5::Packet::Unsubscribe(v5::Unsubscribe {
            packet_id: pid(2 * n + 2),
            user_properties: Vec::new(),
            topic_filters: vec!["rooms/lobby/#".into()],
        }))
        .await;
        assert!(matches!(
            bob.recv5().await.packet(),
            v5::Packet::UnsubscribeAck(_)
        ));
    }
    assert!(
        matches!(reader.recv5_within(QUIET).await, Got::Nothing),
        "no publication per SUBSCRIBE within room_members_interval_ms"
    );
}

/// A long list is published less often (`room_members_bytes_per_sec`):
/// one identity toggling its subscription makes the broker publish at
/// most that many bytes of the list per second to each reader, however
/// short `room_members_interval_ms` is.
#[tokio::test]
async fn a_flapping_subscriber_costs_readers_a_bounded_number_of_bytes() {
    let broker = start_with(roomq::Config {
        chat: ChatConfig {
            room_members_interval_ms: 1,
            // A list of ~30 bytes waits ~30 s before the next one.
            room_members_bytes_per_sec: 1,
            ..test_config().chat
        },
        ..test_config()
    })
    .await;
    let addr = broker.local_addr();
    let mut reader = reader5(addr, "reader").await;
    let mut alice = user5(addr, "alice-1", "alice").await;
    alice
        .subscribe5(1, &[("rooms/lobby/msg/+", opts(QoS::AtLeastOnce))])
        .await;
    until_listed5(&mut reader, &["alice"]).await;
    let mut mallory = user5(addr, "mallory-1", "mallory").await;
    for n in 0..20u16 {
        mallory
            .subscribe5(2 * n + 1, &[("rooms/lobby/msg/+", opts(QoS::AtMostOnce))])
            .await;
        mallory
            .send5(v5::Packet::Unsubscribe(v5::Unsubscribe {
                packet_id: pid(2 * n + 2),
                user_properties: Vec::new(),
                topic_filters: vec!["rooms/lobby/msg/+".into()],
            }))
            .await;
        assert!(matches!(
            mallory.recv5().await.packet(),
            v5::Packet::UnsubscribeAck(_)
        ));
    }
    let mut lists = 0;
    while let Got::Packet(v5::Packet::Publish(_)) = reader.recv5_within(QUIET).await {
        lists += 1;
    }
    assert_eq!(
        lists, 0,
        "40 changes within the byte budget of one list published {lists} lists"
    );
}

/// A timed ban ends on time for the member list too: banned for one
/// second, alice leaves the list, and comes back into it when the ban
/// ends (she reads the room again then), without waiting for the
/// periodic upkeep.
#[tokio::test]
async fn a_timed_ban_ends_in_the_list_when_it_ends() {
    let broker = start().await;
    broker.set_room(roomq::config::RoomConfig {
        name: "lobby".into(),
        members: vec![],
        open: true,
        moderators: vec!["mod".into()],
    });
    let addr = broker.local_addr();
    let mut reader = reader5(addr, "reader5").await;
    let mut alice = user5(addr, "alice-phone", "alice").await;
    alice
        .subscribe5(1, &[("rooms/lobby/msg/+", opts(QoS::AtLeastOnce))])
        .await;
    until_listed5(&mut reader, &["alice", "mod"]).await;
    let mut moderator = user5(addr, "mod-1", "mod").await;
    let request: std::collections::BTreeMap<&str, ciborium::Value> =
        [("op", "ban".into()), ("user", "alice".into()), ("secs", 1.into())].into();
    let ack = send_and_ack(
        &mut moderator,
        publish_with("$rooms/lobby/mod", &payloads::to_cbor(&request), Some(1), &[]),
    )
    .await;
    assert_eq!(ack.reason_code, v5::PublishAckReason::Success);
    until_listed5(&mut reader, &["mod"]).await;
    until_listed5(&mut reader, &["alice", "mod"]).await;
    broker.shutdown().await;
}

/// A 5.0 client from source address `from` with claimed name `name`.
async fn from5(addr: std::net::SocketAddr, from: [u8; 4], mut c: v5::Connect, name: &str) -> Raw {
    c.username = Some(name.into());
    let mut raw = Raw::tcp_from(addr, std::net::IpAddr::from(from), true).await;
    raw.send5(v5::Packet::Connect(Box::new(c))).await;
    match raw.recv5().await.packet() {
        v5::Packet::ConnectAck(ack) => assert_eq!(ack.reason_code, v5::ConnectAckReason::Success),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    raw
}

/// One address cannot fill an open room's list (session 4 attack
/// `members.py`): where names are only claimed, the names it invents are
/// one account, listed at most `room_members_listed_per_account` times,
/// so alice and bob, from other addresses, stay listed.
#[tokio::test]
async fn one_account_cannot_push_the_others_out_of_the_list() {
    let broker = start_with(roomq::Config {
        per_user: PerUserLimits {
            claimed_names_budget_on_loopback: false,
            ..test_config().per_user
        },
        chat: ChatConfig {
            room_members_listed: 6,
            ..test_config().chat
        },
        ..test_config()
    })
    .await;
    let addr = broker.local_addr();
    let mut reader = reader5(addr, "reader").await;
    let mut alice = from5(addr, [127, 0, 0, 2], connect5("alice-1"), "alice").await;
    let mut bob = from5(addr, [127, 0, 0, 3], connect5("bob-1"), "bob").await;
    for c in [&mut alice, &mut bob] {
        c.subscribe5(1, &[("rooms/lobby/msg/+", opts(QoS::AtLeastOnce))])
            .await;
    }
    until_listed5(&mut reader, &["alice", "bob"]).await;
    for i in 0..6 {
        let name = format!("!{i}");
        let mut eve = from5(addr, [127, 0, 0, 4], persistent5(&name), &name).await;
        eve.subscribe5(1, &[("rooms/lobby/msg/+", opts(QoS::AtLeastOnce))])
            .await;
        eve.send5(v5::Packet::Disconnect(Default::default())).await;
    }
    until_listed5(&mut reader, &["!0", "!1", "!2", "!3", "alice", "bob"]).await;
}
