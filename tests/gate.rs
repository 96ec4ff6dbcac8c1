//! Every way in goes through one gate: wills, history replies, alert
//! rules, writes under a room and `$SYS` are judged like a direct PUBLISH
//! by the same client. Each test is a way an attacker (mallory) made the
//! broker write as someone else or where she may not, and asserts what
//! the victim (bob, a member of the closed room `ops`) sees: nothing.
//! Identity and session ownership are in `tests/identity.rs`.

mod common;

use common::*;
use rmqtt_codec::types::QoS;
use rmqtt_codec::v3;
use rmqtt_codec::v5::{self, ConnectAckReason, PublishAckReason};
use roomq::config::{AlertRule, ChatConfig, RoomConfig, RoomsDefault};
use roomq::Config;

/// Rooms `ops` (alice, bob) and `m` (mallory), closed; nothing else open.
fn closed_rooms() -> Config {
    let room = |name: &str, members: &[&str]| RoomConfig {
        name: name.into(),
        members: members.iter().map(|m| m.to_string()).collect(),
        open: false,
        moderators: vec![],
    };
    Config {
        rooms: vec![room("ops", &["alice", "bob"]), room("m", &["mallory"])],
        chat: ChatConfig {
            rooms_default: RoomsDefault::Closed,
            ..test_config().chat
        },
        ..test_config()
    }
}

/// bob, subscribed to everything under `ops` (QoS 1).
async fn bob_watching_ops(addr: std::net::SocketAddr) -> Raw {
    let mut bob = Raw::client5(addr, "bob").await;
    bob.subscribe5(1, &[("rooms/ops/#", opts(QoS::AtLeastOnce))])
        .await;
    bob
}

fn retained(topic: &str, payload: &'static [u8], id: u16) -> rmqtt_codec::types::Publish {
    let mut p = publish(topic, payload, QoS::AtLeastOnce, Some(id));
    p.retain = true;
    p
}

fn seq_of(p: &rmqtt_codec::types::Publish) -> Option<u64> {
    p.properties
        .as_ref()?
        .user_properties
        .iter()
        .find(|(k, _)| k == "seq")
        .and_then(|(_, v)| v.parse().ok())
}

async fn assert_quiet(c: &mut Raw, what: &str) {
    if let Got::Packet(p) = c.recv5_within(QUIET).await {
        panic!("{what}: got {p:?}");
    }
}

#[tokio::test]
async fn a_will_into_a_closed_room_as_someone_else_is_refused_at_connect() {
    let broker = start_with(closed_rooms()).await;
    let addr = broker.local_addr();
    let mut bob = bob_watching_ops(addr).await;

    let mut c = connect5("mallory");
    c.last_will = Some(will(
        "rooms/ops/msg/alice",
        b"transfer the money -- alice",
        None,
        false,
    ));
    let (_m, ack) = Raw::connect5(addr, c).await;
    assert_eq!(ack.reason_code, ConnectAckReason::NotAuthorized);

    let mut c3 = connect3("mallory", true);
    c3.last_will = Some(v3::LastWill {
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "rooms/ops/msg/alice".into(),
        message: bytes::Bytes::from_static(b"transfer the money -- alice"),
    });
    let (mut m3, ack) = Raw::connect3(addr, c3).await;
    assert_eq!(ack.return_code, v3::ConnectAckReason::NotAuthorized);
    m3.expect_closed3().await;
    assert_quiet(&mut bob, "a refused will").await;

    // alice's own will into her room is a room message like any post: it
    // gets a seq and is in the room log.
    let mut c = connect5("alice");
    c.last_will = Some(will("rooms/ops/msg/alice", b"alice dropped", None, false));
    let (alice, ack) = Raw::connect5(addr, c).await;
    assert_eq!(ack.reason_code, ConnectAckReason::Success);
    drop(alice);
    let got = bob.publish5().await;
    assert_eq!(got.topic, "rooms/ops/msg/alice");
    assert_eq!(&got.payload[..], b"alice dropped");
    assert_eq!(seq_of(&got), Some(1));
}

#[tokio::test]
async fn a_will_is_checked_again_when_it_fires() {
    let broker = start_with(closed_rooms()).await;
    let addr = broker.local_addr();
    let mut bob = bob_watching_ops(addr).await;
    let mut c = connect5("alice");
    c.last_will = Some(will("rooms/ops/msg/alice", b"alice dropped", None, false));
    let (alice, ack) = Raw::connect5(addr, c).await;
    assert_eq!(ack.reason_code, ConnectAckReason::Success);
    // alice leaves the room while connected; her will may no longer go there.
    broker.set_room(RoomConfig {
        name: "ops".into(),
        members: vec!["bob".into()],
        open: false,
        moderators: vec![],
    });
    drop(alice);
    assert_quiet(&mut bob, "the will of a removed member").await;
}

#[tokio::test]
async fn retained_wills_to_forbidden_topics_are_refused_and_nothing_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = || Config {
        acl: vec![roomq::auth::acl::AclRule {
            topic: "public/#".into(),
            access: roomq::auth::acl::Access::ReadWrite,
        }],
        ..sled_config(dir.path())
    };
    let broker = start_with(config()).await;
    let addr = broker.local_addr();
    for (version, topic) in [
        (5, "secret/plans"),
        (5, "$presence/alice"),
        (5, "$SYS/broker/version"),
        (4, "secret/plans"),
        (4, "$SYS/broker/version"),
    ] {
        if version == 5 {
            let mut c = connect5("mallory");
            c.last_will = Some(will(topic, b"forged", None, true));
            let (_m, ack) = Raw::connect5(addr, c).await;
            assert_eq!(ack.reason_code, ConnectAckReason::NotAuthorized, "{topic}");
        } else {
            let mut c = connect3("mallory", true);
            c.last_will = Some(v3::LastWill {
                qos: QoS::AtLeastOnce,
                retain: true,
                topic: topic.into(),
                message: bytes::Bytes::from_static(b"forged"),
            });
            let (_m, ack) = Raw::connect3(addr, c).await;
            assert_eq!(ack.return_code, v3::ConnectAckReason::NotAuthorized, "{topic}");
        }
    }
    // A will the rules allow is still accepted.
    let mut c = connect5("mallory");
    c.last_will = Some(will("public/mallory", b"gone", None, true));
    let (_ok, ack) = Raw::connect5(addr, c).await;
    assert_eq!(ack.reason_code, ConnectAckReason::Success);
    broker.shutdown().await;

    let broker = start_with(Config {
        acl: Vec::new(),
        ..config()
    })
    .await;
    let mut reader = Raw::client5(broker.local_addr(), "reader").await;
    reader
        .subscribe5(
            1,
            &[
                ("secret/#", opts(QoS::AtLeastOnce)),
                ("$presence/alice", opts(QoS::AtLeastOnce)),
                ("$SYS/#", opts(QoS::AtLeastOnce)),
            ],
        )
        .await;
    assert_quiet(&mut reader, "a forged retained will after the restart").await;
}

#[tokio::test]
async fn a_history_reply_goes_only_where_the_requester_may_write() {
    let mut config = closed_rooms();
    config.acl = vec![
        roomq::auth::acl::AclRule {
            topic: "replies/%u".into(),
            access: roomq::auth::acl::Access::ReadWrite,
        },
        roomq::auth::acl::AclRule {
            topic: "#".into(),
            access: roomq::auth::acl::Access::Read,
        },
    ];
    let broker = start_with(config).await;
    let addr = broker.local_addr();
    let mut bob = bob_watching_ops(addr).await;
    bob.subscribe5(2, &[("$presence/alice", opts(QoS::AtLeastOnce))])
        .await;
    let mut snoop = Raw::client5(addr, "snoop").await;
    snoop.subscribe5(1, &[("denied/#", opts(QoS::AtLeastOnce))]).await;
    let mut c = connect5("mallory");
    c.username = Some("mallory".into());
    let (mut mallory, _) = Raw::connect5(addr, c).await;
    assert_eq!(
        mallory
            .puback_of(publish("rooms/m/msg/mallory", b"hi", QoS::AtLeastOnce, Some(1)))
            .await,
        PublishAckReason::Success
    );
    let ask = |reply_to: &str, id: u16| {
        let mut p = publish("$history/rooms/m", b"", QoS::AtLeastOnce, Some(id));
        if let Some(props) = p.properties.as_mut() {
            props.response_topic = Some(reply_to.into());
        }
        p
    };
    for (n, target) in [
        "rooms/ops/msg/alice",
        "$presence/alice",
        "rooms/m/typing/mallory",
        "$SYS/broker/version",
        "denied/topic",
    ]
    .into_iter()
    .enumerate()
    {
        let reason = mallory.puback_of(ask(target, 10 + n as u16)).await;
        assert_eq!(reason, PublishAckReason::NotAuthorized, "reply to {target}");
    }
    assert_quiet(&mut bob, "a history reply aimed at bob").await;
    assert_quiet(&mut snoop, "a history reply on an ACL-denied topic").await;
    // Her own reply topic works.
    mallory
        .subscribe5(2, &[("replies/mallory", opts(QoS::AtLeastOnce))])
        .await;
    assert_eq!(
        mallory.puback_of(ask("replies/mallory", 30)).await,
        PublishAckReason::Success
    );
    let reply = mallory.publish5().await;
    assert_eq!(reply.topic, "replies/mallory");
}

#[tokio::test]
async fn an_alert_rule_posts_only_as_the_publisher_itself() {
    let mut config = closed_rooms();
    config.rooms.push(RoomConfig {
        name: "ops".into(),
        members: vec!["alice".into(), "bob".into(), "mallory".into(), "gw".into()],
        open: false,
        moderators: vec![],
    });
    config.rooms.remove(0);
    config.alerts = vec![
        AlertRule {
            topic: "alerts/+/critical".into(),
            room: "ops".into(),
            publishers: Vec::new(),
            hmac_key_file: None,
        },
        AlertRule {
            topic: "gateway/+/alarm".into(),
            room: "ops".into(),
            publishers: vec!["gw".into()],
            hmac_key_file: None,
        },
    ];
    let broker = start_with(config).await;
    let addr = broker.local_addr();
    let mut bob = bob_watching_ops(addr).await;
    let mut mallory = Raw::client5(addr, "mallory").await;
    // The alert rule of docs/configuration.md's example: mallory names
    // alice in the `+` level.
    let reason = mallory
        .puback_of(publish(
            "alerts/alice/critical",
            b"wire the money now -- alice",
            QoS::AtLeastOnce,
            Some(1),
        ))
        .await;
    assert_eq!(reason, PublishAckReason::NotAuthorized);
    // Nor may she use the gateway's rule.
    let reason = mallory
        .puback_of(publish(
            "gateway/alice/alarm",
            b"forged",
            QoS::AtLeastOnce,
            Some(2),
        ))
        .await;
    assert_eq!(reason, PublishAckReason::NotAuthorized);
    assert_quiet(&mut bob, "an alert posted as alice").await;

    // As herself it works, and the listed gateway speaks for its devices.
    mallory
        .puback_of(publish(
            "alerts/mallory/critical",
            b"mine",
            QoS::AtLeastOnce,
            Some(3),
        ))
        .await;
    assert_eq!(bob.publish5().await.topic, "rooms/ops/msg/mallory");
    let mut gw = Raw::client5(addr, "gw").await;
    gw.puback_of(publish(
        "gateway/boiler-7/alarm",
        b"pressure",
        QoS::AtLeastOnce,
        Some(1),
    ))
    .await;
    let got = bob.publish5().await;
    assert_eq!(got.topic, "rooms/ops/msg/boiler-7");
    assert!(seq_of(&got).is_some());
}

#[tokio::test]
async fn non_members_cannot_write_anywhere_under_a_closed_room() {
    let broker = start_with(closed_rooms()).await;
    let addr = broker.local_addr();
    let mut bob = bob_watching_ops(addr).await;
    let mut mallory = Raw::client5(addr, "mallory").await;
    for (id, topic) in [
        (1, "rooms/ops/pinned"),
        (2, "rooms/ops/announcements"),
        (3, "rooms/ops"),
    ] {
        let reason = mallory.puback_of(retained(topic, b"forged", id)).await;
        assert_eq!(reason, PublishAckReason::NotAuthorized, "{topic}");
    }
    // 3.1.1: dropped.
    let (mut m3, _) = Raw::connect3(addr, connect3("mallory-311", true)).await;
    m3.send3(v3::Packet::Publish(Box::new(retained(
        "rooms/ops/pinned",
        b"forged",
        1,
    ))))
    .await;
    assert!(matches!(m3.recv3().await.packet(), v3::Packet::PublishAck { .. }));
    assert_quiet(&mut bob, "a non-member's write under rooms/ops").await;
    let mut late = Raw::client5(addr, "alice").await;
    late.subscribe5(1, &[("rooms/ops/#", opts(QoS::AtLeastOnce))])
        .await;
    assert_quiet(&mut late, "a retained write by a non-member").await;
    // A member may.
    let reason = late.puback_of(retained("rooms/ops/pinned", b"agenda", 2)).await;
    assert_eq!(reason, PublishAckReason::Success);
    assert_eq!(bob.publish5().await.topic, "rooms/ops/pinned");
}

#[tokio::test]
async fn a_non_member_in_a_shared_group_takes_nothing_from_the_members() {
    let broker = start_with(closed_rooms()).await;
    let addr = broker.local_addr();
    let mut alice = Raw::client5(addr, "alice").await;
    let mut mallory = Raw::client5(addr, "mallory").await;
    for c in [&mut alice, &mut mallory] {
        c.subscribe5(1, &[("$share/team/rooms/+/msg/+", opts(QoS::AtMostOnce))])
            .await;
    }
    let mut bob = Raw::client5(addr, "bob").await;
    for i in 0..10u16 {
        bob.puback_of(publish("rooms/ops/msg/bob", b"m", QoS::AtLeastOnce, Some(i + 1)))
            .await;
    }
    for _ in 0..10 {
        assert_eq!(alice.publish5().await.topic, "rooms/ops/msg/bob");
    }
    assert_quiet(&mut mallory, "a room message handed to a non-member").await;
}

#[tokio::test]
async fn clients_never_write_under_sys() {
    let broker = start().await;
    let addr = broker.local_addr();
    let mut reader = Raw::client5(addr, "reader").await;
    reader.subscribe5(1, &[("$SYS/#", opts(QoS::AtLeastOnce))]).await;
    let mut mallory = Raw::client5(addr, "mallory").await;
    let reason = mallory
        .puback_of(retained("$SYS/broker/version", b"9.9.9", 1))
        .await;
    assert_eq!(reason, PublishAckReason::NotAuthorized);
    assert_quiet(&mut reader, "a client's $SYS write").await;
}

#[tokio::test]
async fn a_will_is_not_sent_when_the_same_client_resumes_its_session() {
    let broker = start().await;
    let addr = broker.local_addr();
    let mut watcher = Raw::client5(addr, "watcher").await;
    watcher
        .subscribe5(1, &[("status/phone", opts(QoS::AtLeastOnce))])
        .await;
    let with_will = |clean: bool| {
        let mut c = persistent5("phone");
        c.clean_start = clean;
        c.last_will = Some(will("status/phone", b"offline", None, false));
        c
    };
    let (_old, ack) = Raw::connect5(addr, with_will(false)).await;
    assert_eq!(ack.reason_code, ConnectAckReason::Success);
    // The phone comes back through a new NAT mapping: same session.
    let (mut old_again, ack) = Raw::connect5(addr, with_will(false)).await;
    assert!(ack.session_present);
    assert_quiet(&mut watcher, "the will of a session that continues").await;
    // A new connection that starts clean ends the session: now it is sent.
    let (_fresh, ack) = Raw::connect5(addr, with_will(true)).await;
    assert!(!ack.session_present);
    assert_eq!(&watcher.publish5().await.payload[..], b"offline");
    assert_eq!(
        old_again.expect_disconnect5().await,
        v5::DisconnectReasonCode::SessionTakenOver
    );
}

/// `closed_rooms()` with a password file of alice and bob.
fn with_passwords(dir: &std::path::Path) -> (Config, std::path::PathBuf) {
    let file = dir.join("passwd");
    for user in ["alice", "bob"] {
        roomq::auth::password_file::set_password(&file, user, format!("{user}-pw").as_bytes()).unwrap();
    }
    let mut config = closed_rooms();
    config.auth.allow_anonymous = Some(true);
    config.auth.password_file = Some(file.clone());
    (config, file)
}

fn login(mut c: v5::Connect, user: &str) -> v5::Connect {
    c.username = Some(user.into());
    c.password = Some(format!("{user}-pw").into());
    c
}

/// Waits (bounded) until the broker has seen `n` connections close.
async fn until_open_connections(broker: &roomq::BrokerHandle, n: usize) {
    tokio::time::timeout(WAIT, async {
        while broker.open_connections() != n {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the connection closed in time");
}

/// alice leaves with a delayed will into her closed room and a persistent
/// session; the operator removes her from the password file and reloads.
/// Her will must not reach the room as her, and nothing of her session
/// (queue, subscriptions) stays: she can no longer log in to get it.
#[tokio::test]
async fn a_revoked_users_delayed_will_and_session_are_dropped_on_reload() {
    let dir = tempfile::tempdir().unwrap();
    let (config, file) = with_passwords(dir.path());
    let broker = start_with(config).await;
    let addr = broker.local_addr();
    let (mut bob, ack) = Raw::connect5(addr, login(connect5("bob"), "bob")).await;
    assert_eq!(ack.reason_code, ConnectAckReason::Success);
    bob.subscribe5(1, &[("rooms/ops/#", opts(QoS::AtLeastOnce))])
        .await;
    let mut c = login(persistent5("alice-phone"), "alice");
    c.last_will = Some(will(
        "rooms/ops/msg/alice",
        b"transfer the money -- alice",
        Some(1),
        false,
    ));
    let (mut alice, ack) = Raw::connect5(addr, c).await;
    assert_eq!(ack.reason_code, ConnectAckReason::Success);
    alice.subscribe5(1, &[("news/#", opts(QoS::AtLeastOnce))]).await;
    drop(alice);
    // Her laptop is still connected when the reload comes.
    let (mut laptop, ack) = Raw::connect5(addr, login(persistent5("alice-laptop"), "alice")).await;
    assert_eq!(ack.reason_code, ConnectAckReason::Success);
    until_open_connections(&broker, 2).await;
    bob.publish1_5(1, "news/today", b"queued for alice").await;
    assert_eq!(broker.session_pending("alice-phone"), Some(1));

    let kept: String = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("alice:"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&file, kept).unwrap();
    broker.reload(); // what SIGHUP does
    if let Got::Packet(p) = bob.recv5_within(std::time::Duration::from_secs(2)).await {
        panic!("the revoked user's will was published: {p:?}");
    }
    assert_eq!(
        broker.session_pending("alice-phone"),
        None,
        "her session is ended"
    );
    assert_eq!(
        laptop.expect_disconnect5().await,
        v5::DisconnectReasonCode::NotAuthorized
    );
    tokio::time::timeout(WAIT, async {
        while broker.session_pending("alice-laptop").is_some() {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the revoked connection's persistent session ends");
}

/// A delayed will set while the rules allowed it is judged by the rules
/// in force when it fires: here a restart took `status/%u` away.
#[tokio::test]
async fn a_will_is_judged_by_the_rules_in_force_when_it_fires() {
    use roomq::auth::acl::{Access, AclRule};
    let dir = tempfile::tempdir().unwrap();
    let rule = |topic: &str, access| AclRule {
        topic: topic.into(),
        access,
    };
    let config = |acl| Config {
        acl,
        ..sled_config(dir.path())
    };
    let before = vec![rule("status/%u", Access::Write), rule("#", Access::Read)];
    let broker = start_with(config(before)).await;
    let mut c = persistent5("alice-phone");
    c.username = Some("alice".into());
    // Retained, so that a subscriber that comes late would still see it.
    c.last_will = Some(will("status/alice", b"offline", Some(1), true));
    let (_alice, ack) = Raw::connect5(broker.local_addr(), c).await;
    assert_eq!(ack.reason_code, ConnectAckReason::Success);
    // Kept with the stored session, the will fires after the restart.
    broker.shutdown().await;

    let broker = start_with(config(vec![rule("#", Access::Read)])).await;
    let mut watcher = Raw::client5(broker.local_addr(), "watcher").await;
    watcher
        .subscribe5(1, &[("status/#", opts(QoS::AtLeastOnce))])
        .await;
    if let Got::Packet(p) = watcher.recv5_within(std::time::Duration::from_secs(2)).await {
        panic!("a will the rules no longer allow was published: {p:?}");
    }
}
