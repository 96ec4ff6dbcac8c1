//! Authentication, authorization and limits, as a client sees them: the
//! password file (made with `roomq passwd`), JWT tokens with a room list,
//! room membership on publish and subscribe (also after a member is
//! removed), topic rules, and the flood limits.

mod common;

use std::process::Stdio;

use common::*;
use rmqtt_codec::types::QoS;
use rmqtt_codec::v3;
use rmqtt_codec::v5::{self, ConnectAckReason, Packet, PublishAckReason, SubscribeAckReason};
use roomq::config::{AuthConfig, RoomConfig};

/// Writes `user`'s password into `file` with the real `roomq passwd`.
fn roomq_passwd(file: &std::path::Path, user: &str, password: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_roomq"))
        .arg("passwd")
        .arg(file)
        .arg(user)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    assert!(child.wait().unwrap().success());
}

fn login5(id: &str, user: &str, password: &str) -> v5::Connect {
    let mut c = connect5(id);
    c.username = Some(user.into());
    c.password = Some(bytes::Bytes::copy_from_slice(password.as_bytes()));
    c
}

#[tokio::test]
async fn password_file_logins_with_mosquitto_clients_and_the_right_refusal_codes() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("passwd");
    roomq_passwd(&file, "alice", "s3cret");
    roomq_passwd(&file, "bob", "hunter2");
    let mut config = test_config();
    config.auth = AuthConfig {
        allow_anonymous: Some(false),
        password_file: Some(file.clone()),
        ..Default::default()
    };
    let broker = start_with(config).await;
    let addr = broker.local_addr();
    let port = addr.port().to_string();
    let pub_with = |password: &'static str| {
        let port = port.clone();
        async move {
            tokio::process::Command::new("mosquitto_pub")
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port,
                    "-u",
                    "alice",
                    "-P",
                    password,
                    "-t",
                    "t",
                    "-m",
                    "x",
                ])
                .output()
                .await
                .expect("mosquitto_pub runs")
        }
    };
    assert!(pub_with("s3cret").await.status.success());
    let wrong = pub_with("guess").await;
    assert!(!wrong.status.success());
    let (_, ack) = Raw::connect5(addr, login5("c1", "alice", "guess")).await;
    assert_eq!(ack.reason_code, ConnectAckReason::BadUserNameOrPassword);
    let (_, ack) = Raw::connect5(addr, connect5("anon")).await;
    assert_eq!(ack.reason_code, ConnectAckReason::NotAuthorized);
    let mut c3 = connect3("c3", true);
    c3.username = Some("bob".into());
    c3.password = Some(bytes::Bytes::from_static(b"nope"));
    let (_, ack) = Raw::connect3(addr, c3).await;
    assert_eq!(ack.return_code, v3::ConnectAckReason::BadUserNameOrPassword);
    let (_, ack) = Raw::connect5(addr, login5("c4", "bob", "hunter2")).await;
    assert_eq!(ack.reason_code, ConnectAckReason::Success);
    assert_eq!(broker.metrics().auth_failures.get(), 4);
}

fn token(secret: &str, sub: &str, exp_in_secs: i64, rooms: &[&str]) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    jwt(
        secret,
        &serde_json::json!({ "sub": sub, "exp": now + exp_in_secs, "rooms": rooms }),
    )
}

async fn send_ack(c: &mut Raw, topic: &str, id: u16) -> PublishAckReason {
    c.puback_of(publish(topic, b"m", QoS::AtLeastOnce, Some(id)))
        .await
}

#[tokio::test]
async fn a_jwt_user_gets_into_exactly_the_rooms_the_token_lists_until_it_expires() {
    let secret = "test-secret";
    let mut config = test_config();
    config.auth = AuthConfig {
        allow_anonymous: Some(false),
        jwt_secret: Some(secret.into()),
        ..Default::default()
    };
    let broker = start_with(config).await;
    let addr = broker.local_addr();
    let mut c = connect5("phone-1");
    c.password = Some(token(secret, "jay", 3600, &["a"]).into());
    let (mut jay, ack) = Raw::connect5(addr, c).await;
    assert_eq!(ack.reason_code, ConnectAckReason::Success);
    // `sub` is the identity, so jay posts as jay.
    assert_eq!(
        send_ack(&mut jay, "rooms/a/msg/jay", 1).await,
        PublishAckReason::Success
    );
    assert_eq!(
        send_ack(&mut jay, "rooms/b/msg/jay", 2).await,
        PublishAckReason::NotAuthorized
    );
    let status = jay
        .subscribe5(
            1,
            &[
                ("rooms/a/msg/+", opts(QoS::AtLeastOnce)),
                ("rooms/b/msg/+", opts(QoS::AtLeastOnce)),
            ],
        )
        .await;
    assert_eq!(
        status,
        vec![SubscribeAckReason::GrantedQos1, SubscribeAckReason::NotAuthorized]
    );

    // A wrong signature, an expired token, or a username that is not `sub`.
    for (user, password) in [
        (None, token("other-secret", "jay", 3600, &["a"])),
        (None, token(secret, "jay", -10, &["a"])),
        (Some("mallory"), token(secret, "jay", 3600, &["a"])),
    ] {
        let mut c = connect5("phone-2");
        c.username = user.map(Into::into);
        c.password = Some(password.into());
        let (_, ack) = Raw::connect5(addr, c).await;
        assert_eq!(ack.reason_code, ConnectAckReason::BadUserNameOrPassword);
    }
    // A token that expires while connected ends the connection with 0xA0.
    let mut c = connect5("phone-3");
    c.password = Some(token(secret, "kim", 1, &["a"]).into());
    let (mut kim, ack) = Raw::connect5(addr, c).await;
    assert_eq!(ack.reason_code, ConnectAckReason::Success);
    assert_eq!(
        kim.expect_disconnect5().await,
        v5::DisconnectReasonCode::MaximumConnectTime
    );
}

fn ops_room(members: &[&str]) -> RoomConfig {
    RoomConfig {
        name: "ops".into(),
        members: members.iter().map(|m| m.to_string()).collect(),
        open: false,
        moderators: vec![],
    }
}

#[tokio::test]
async fn a_non_member_cannot_read_or_write_a_room_before_or_after_being_removed() {
    let mut config = test_config();
    config.rooms = vec![ops_room(&["alice", "bob"])];
    let broker = start_with(config).await;
    let addr = broker.local_addr();
    let mut alice = Raw::client5(addr, "alice").await;
    let mut bob = Raw::client5(addr, "bob").await;
    let mut carol = Raw::client5(addr, "carol").await;
    assert_eq!(
        bob.subscribe5(1, &[("rooms/ops/msg/+", opts(QoS::AtLeastOnce))])
            .await,
        vec![SubscribeAckReason::GrantedQos1]
    );
    // Carol: a named subscription is refused, a wildcard one sees nothing
    // of ops, and her posts are refused.
    assert_eq!(
        carol
            .subscribe5(1, &[("rooms/ops/msg/+", opts(QoS::AtLeastOnce))])
            .await,
        vec![SubscribeAckReason::NotAuthorized]
    );
    carol.subscribe5(2, &[("rooms/#", opts(QoS::AtLeastOnce))]).await;
    assert_eq!(
        send_ack(&mut carol, "rooms/ops/msg/carol", 1).await,
        PublishAckReason::NotAuthorized
    );
    assert_eq!(
        send_ack(&mut alice, "rooms/ops/msg/alice", 1).await,
        PublishAckReason::Success
    );
    assert_eq!(bob.publish5().await.topic, "rooms/ops/msg/alice");
    assert!(matches!(carol.recv5_within(QUIET).await, Got::Nothing));
    // A 3.1.1 non-member gets 0x80 for the filter.
    let (mut dave, _) = Raw::connect3(addr, connect3("dave", true)).await;
    assert_eq!(
        dave.subscribe3(1, &[("rooms/ops/msg/+", QoS::AtLeastOnce)]).await,
        vec![v3::SubscribeReturnCode::Failure]
    );

    // Bob is removed while subscribed: he stops receiving and posting.
    broker.set_room(ops_room(&["alice"]));
    assert_eq!(
        send_ack(&mut alice, "rooms/ops/msg/alice", 2).await,
        PublishAckReason::Success
    );
    assert!(matches!(
        bob.recv5_within(QUIET).await,
        Got::Nothing | Got::Packet(Packet::PublishAck(_))
    ));
    assert_eq!(
        send_ack(&mut bob, "rooms/ops/msg/bob", 3).await,
        PublishAckReason::NotAuthorized
    );
    assert!(broker.metrics().acl_denied.get() >= 2);
}

#[tokio::test]
async fn topic_rules_with_username_patterns_and_no_hash_for_non_admins() {
    let mut config = test_config();
    config.acl = vec![
        roomq::auth::acl::AclRule {
            topic: "sensors/%u/#".into(),
            access: roomq::auth::acl::Access::ReadWrite,
        },
        roomq::auth::acl::AclRule {
            topic: "public/#".into(),
            access: roomq::auth::acl::Access::Read,
        },
    ];
    let broker = start_with(config).await;
    let addr = broker.local_addr();
    let (mut alice, _) = Raw::connect5(addr, login5("a1", "alice", "")).await;
    assert_eq!(
        send_ack(&mut alice, "sensors/alice/temp", 1).await,
        PublishAckReason::NoMatchingSubscribers
    );
    assert_eq!(
        send_ack(&mut alice, "sensors/bob/temp", 2).await,
        PublishAckReason::NotAuthorized
    );
    assert_eq!(
        send_ack(&mut alice, "public/news", 3).await,
        PublishAckReason::NotAuthorized,
        "read-only"
    );
    let status = alice
        .subscribe5(
            1,
            &[
                ("#", opts(QoS::AtLeastOnce)),
                ("public/+", opts(QoS::AtLeastOnce)),
                ("sensors/bob/#", opts(QoS::AtLeastOnce)),
            ],
        )
        .await;
    assert_eq!(
        status,
        vec![
            SubscribeAckReason::NotAuthorized,
            SubscribeAckReason::GrantedQos1,
            SubscribeAckReason::NotAuthorized
        ]
    );
    // 3.1.1: a denied publish is dropped silently, a denied filter is 0x80.
    let mut c = connect3("dev", true);
    c.username = Some("dev".into());
    let (mut dev, _) = Raw::connect3(addr, c).await;
    assert_eq!(
        dev.subscribe3(1, &[("#", QoS::AtLeastOnce)]).await,
        vec![v3::SubscribeReturnCode::Failure]
    );
    dev.send3(v3::Packet::Publish(Box::new(publish(
        "sensors/alice/temp",
        b"x",
        QoS::AtLeastOnce,
        Some(5),
    ))))
    .await;
    assert!(matches!(
        dev.recv3().await.packet(),
        v3::Packet::PublishAck { .. }
    ));
}

#[tokio::test]
async fn flood_limits_close_or_refuse_with_the_right_codes() {
    let mut config = test_config();
    config.limits.max_publish_rate = 20;
    config.limits.max_subscriptions_per_session = 2;
    config.limits.max_connections_per_ip = 3;
    let broker = start_with(config).await;
    let addr = broker.local_addr();
    let mut subs = Raw::client5(addr, "subs").await;
    let status = subs
        .subscribe5(
            1,
            &[
                ("a", opts(QoS::AtMostOnce)),
                ("b", opts(QoS::AtMostOnce)),
                ("c", opts(QoS::AtMostOnce)),
            ],
        )
        .await;
    assert_eq!(status[2], SubscribeAckReason::QuotaExceeded);
    // Three connections from this address are open; the fourth is closed
    // before any MQTT.
    let _second = Raw::client5(addr, "second").await;
    let _third = Raw::client5(addr, "third").await;
    let mut fourth = Raw::tcp(addr, true).await;
    fourth.send5(Packet::Connect(Box::new(connect5("fourth")))).await;
    assert!(matches!(fourth.recv5().await, Got::Closed));
    assert!(broker.metrics().connections_limited.get() >= 1);
    // A publisher over max_publish_rate is disconnected with 0x96.
    for _ in 0..200 {
        subs.publish0_5("x", b"flood").await;
    }
    assert_eq!(
        subs.expect_disconnect5().await,
        v5::DisconnectReasonCode::MessageRateTooHigh
    );
    assert_eq!(broker.metrics().rate_limited.get(), 1);
}

/// Ordered rules with `deny`: the first matching rule decides, so a deny
/// before `#` refuses exactly that topic, for 5.0 and 3.1.1 clients alike
/// (the paho interoperability suite's `test/nosubscribe`).
#[tokio::test]
async fn a_deny_rule_before_a_catch_all_refuses_only_its_topic() {
    use roomq::auth::acl::{Access, AclRule};
    let mut config = test_config();
    config.acl = vec![
        AclRule {
            topic: "test/nosubscribe".into(),
            access: Access::Deny,
        },
        AclRule {
            topic: "#".into(),
            access: Access::ReadWrite,
        },
    ];
    let broker = start_with(config).await;
    let addr = broker.local_addr();
    let mut c5 = Raw::client5(addr, "c5").await;
    let status = c5
        .subscribe5(
            1,
            &[
                ("test/nosubscribe", opts(QoS::AtLeastOnce)),
                ("test/other", opts(QoS::AtLeastOnce)),
            ],
        )
        .await;
    assert_eq!(
        status,
        vec![SubscribeAckReason::NotAuthorized, SubscribeAckReason::GrantedQos1]
    );
    let (mut c3, _) = Raw::connect3(addr, connect3("c3", true)).await;
    let status = c3.subscribe3(1, &[("test/nosubscribe", QoS::AtLeastOnce)]).await;
    assert_eq!(status, vec![v3::SubscribeReturnCode::Failure]);
    let mut watcher = Raw::client5(addr, "watcher").await;
    watcher.subscribe5(1, &[("#", opts(QoS::AtLeastOnce))]).await;
    assert_eq!(
        send_ack(&mut c5, "test/nosubscribe", 1).await,
        PublishAckReason::NotAuthorized
    );
    c3.send3(v3::Packet::Publish(Box::new(publish(
        "test/nosubscribe",
        b"x",
        QoS::AtLeastOnce,
        Some(2),
    ))))
    .await;
    assert!(matches!(c3.recv3().await.packet(), v3::Packet::PublishAck { .. }));
    assert_eq!(
        send_ack(&mut c5, "test/other", 3).await,
        PublishAckReason::Success
    );
    assert_eq!(
        watcher.publish5().await.topic,
        "test/other",
        "only the allowed topic arrives"
    );
}

/// The rules of the attack on issue 23: alice's inbox is hers to read,
/// anyone may write into it, nobody else reads it; everything else is
/// open. `inbox/+/#` is refused at SUBSCRIBE (the deny rule covers it),
/// but `#`, `+/+/+` and `+/alice/#` are granted: what they deliver is
/// checked per message.
fn inbox_rules() -> roomq::Config {
    use roomq::auth::acl::{Access, AclRule};
    let rule = |topic: &str, access| AclRule {
        topic: topic.into(),
        access,
    };
    roomq::Config {
        acl: vec![
            rule("inbox/%u/#", Access::Read),
            rule("inbox/#", Access::Write),
            rule("inbox/#", Access::Deny),
            rule("#", Access::ReadWrite),
        ],
        ..test_config()
    }
}

/// A named client (names are claims on this broker: no authenticator).
async fn user(addr: std::net::SocketAddr, mut c: v5::Connect, user: &str) -> Raw {
    c.username = Some(user.into());
    let (raw, ack) = Raw::connect5(addr, c).await;
    assert_eq!(ack.reason_code, ConnectAckReason::Success);
    raw
}

/// Takes PUBLISHes until one on `marker` arrives and returns the topics
/// that came before it.
async fn topics_before(c: &mut Raw, marker: &str) -> Vec<String> {
    let mut before = Vec::new();
    loop {
        let p = c.publish5().await;
        if p.topic == marker {
            return before;
        }
        before.push(p.topic.to_string());
    }
}

#[tokio::test]
async fn a_wide_subscription_receives_only_the_topics_its_owner_may_read() {
    let broker = start_with(inbox_rules()).await;
    let addr = broker.local_addr();
    let mut bob = user(addr, connect5("bob"), "bob").await;
    let mut retained = publish("inbox/alice/r", b"alice's secret", QoS::AtLeastOnce, Some(1));
    retained.retain = true;
    assert_eq!(
        bob.puback_of(retained).await,
        PublishAckReason::NoMatchingSubscribers
    );

    let mut mallory = user(addr, connect5("mallory"), "mallory").await;
    let all = opts(QoS::AtLeastOnce);
    let status = mallory
        .subscribe5(
            1,
            &[("inbox/+/#", all), ("#", all), ("+/+/+", all), ("+/alice/#", all)],
        )
        .await;
    use SubscribeAckReason::{GrantedQos1, NotAuthorized};
    assert_eq!(status, vec![NotAuthorized, GrantedQos1, GrantedQos1, GrantedQos1]);
    let mut shared = user(addr, connect5("mallory-2"), "mallory").await;
    shared.subscribe5(1, &[("$share/g/#", all)]).await;
    // Offline: mallory's persistent session with `#`.
    let mut away = user(addr, persistent5("mallory-3"), "mallory").await;
    away.subscribe5(1, &[("#", all)]).await;
    drop(away);
    let mut alice = user(addr, connect5("alice"), "alice").await;
    alice.subscribe5(1, &[("inbox/alice/#", all)]).await;
    assert_eq!(
        alice.publish5().await.topic,
        "inbox/alice/r",
        "the owner still gets it"
    );

    bob.publish1_5(2, "inbox/alice/live", b"alice's secret").await;
    bob.publish1_5(3, "news/a/b", b"public").await;
    assert_eq!(alice.publish5().await.topic, "inbox/alice/live");
    let none: Vec<String> = Vec::new();
    assert_eq!(
        topics_before(&mut mallory, "news/a/b").await,
        none,
        "retained or live inbox"
    );
    assert_eq!(
        topics_before(&mut shared, "news/a/b").await,
        none,
        "shared subscription"
    );
    let (mut back, _) = Raw::connect5(addr, {
        let mut c = persistent5("mallory-3");
        c.username = Some("mallory".into());
        c
    })
    .await;
    assert_eq!(
        topics_before(&mut back, "news/a/b").await,
        none,
        "queued while offline"
    );
    // What mallory may read still arrives through the same `#`.
    bob.publish1_5(4, "inbox/mallory/x", b"for mallory").await;
    assert_eq!(mallory.publish5().await.topic, "inbox/mallory/x");
}

/// History answers hold a room's messages: `users/{user}/history/...` is
/// delivered to `{user}` alone, so a non-member cannot read a closed
/// room's history through `#` or `users/+/history/#` when a member asks.
#[tokio::test]
async fn history_answers_reach_only_the_user_who_asked() {
    let config = roomq::Config {
        rooms: vec![roomq::config::RoomConfig {
            name: "ops".into(),
            members: vec!["alice".into()],
            open: false,
            moderators: vec![],
        }],
        ..test_config()
    };
    let broker = start_with(config).await;
    let addr = broker.local_addr();
    let mut mallory = Raw::client5(addr, "mallory").await;
    mallory
        .subscribe5(
            1,
            &[
                ("#", opts(v5::QoS::AtMostOnce)),
                ("users/+/history/#", opts(v5::QoS::AtMostOnce)),
            ],
        )
        .await;
    let mut alice = Raw::client5(addr, "alice").await;
    alice
        .subscribe5(1, &[("users/alice/history/#", opts(v5::QoS::AtMostOnce))])
        .await;
    alice
        .send5(v5::Packet::Publish(Box::new(publish(
            "rooms/ops/msg/alice",
            b"secret ops text",
            v5::QoS::AtLeastOnce,
            Some(2),
        ))))
        .await;
    // The request without a Response Topic: answered on
    // users/alice/history/ops, as to a 3.1.1 client.
    let mut request = publish("$history/rooms/ops", b"", v5::QoS::AtLeastOnce, Some(3));
    request.properties = None;
    alice.send5(v5::Packet::Publish(Box::new(request))).await;
    let answer = loop {
        match alice.recv5().await.packet() {
            v5::Packet::Publish(p) if p.topic.starts_with("users/alice/history/") => break p,
            _ => continue,
        }
    };
    assert!(answer.payload.windows(15).any(|w| w == b"secret ops text"));
    // Mallory's `#` sees neither the room message nor the answer.
    loop {
        match mallory.recv5_within(QUIET).await {
            Got::Packet(v5::Packet::Publish(p)) => panic!("mallory received {}", p.topic),
            Got::Packet(_) => continue,
            _ => break,
        }
    }
    broker.shutdown().await;
}
