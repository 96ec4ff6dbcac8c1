//! Identity comes from credentials, and a session belongs to its owner:
//! a client id, a bare username or a missing password never make a client
//! someone else; a session is resumed or taken over only by the identity
//! that made it; a revoked login ends at once; tokens are checked as
//! identity providers issue them.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use rmqtt_codec::types::QoS;
use rmqtt_codec::v3;
use rmqtt_codec::v5::{self, ConnectAckReason, Packet, PublishAckReason};
use roomq::config::{AuthConfig, ChatConfig, RoomConfig, RoomsDefault, StoreConfig};
use roomq::Config;

fn password_file(dir: &Path, users: &[(&str, &str)]) -> PathBuf {
    let file = dir.join("passwd");
    for (user, password) in users {
        roomq::auth::password_file::set_password(&file, user, password.as_bytes()).unwrap();
    }
    file
}

/// Closed room `ops` of alice and bob, a password file of alice, bob and
/// mallory, anonymous clients allowed (the loopback default).
fn with_passwords(dir: &Path) -> Config {
    Config {
        rooms: vec![RoomConfig {
            name: "ops".into(),
            members: vec!["alice".into(), "bob".into()],
            open: false,
            moderators: vec![],
        }],
        auth: AuthConfig {
            allow_anonymous: Some(true),
            password_file: Some(password_file(
                dir,
                &[
                    ("alice", "alice-pw"),
                    ("bob", "bob-pw"),
                    ("mallory", "mallory-pw"),
                ],
            )),
            ..Default::default()
        },
        chat: ChatConfig {
            rooms_default: RoomsDefault::Open,
            ..test_config().chat
        },
        ..test_config()
    }
}

fn login5(id: &str, user: &str, password: &str) -> v5::Connect {
    let mut c = connect5(id);
    c.username = Some(user.into());
    c.password = Some(bytes::Bytes::copy_from_slice(password.as_bytes()));
    c
}

async fn puback_of(c: &mut Raw, topic: &str, id: u16) -> PublishAckReason {
    c.puback_of(publish(topic, b"m", QoS::AtLeastOnce, Some(id)))
        .await
}

async fn logged_in(addr: std::net::SocketAddr, connect: v5::Connect) -> Raw {
    let (raw, ack) = Raw::connect5(addr, connect).await;
    assert_eq!(ack.reason_code, ConnectAckReason::Success);
    raw
}

#[tokio::test]
async fn an_anonymous_client_is_nobody_where_names_are_verified() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_with(with_passwords(dir.path())).await;
    let addr = broker.local_addr();
    let mut bob = logged_in(addr, login5("bob-1", "bob", "bob-pw")).await;
    bob.subscribe5(
        1,
        &[
            ("rooms/+/msg/+", opts(QoS::AtLeastOnce)),
            ("$presence/alice", opts(QoS::AtLeastOnce)),
        ],
    )
    .await;
    // Client id `alice`, no username: not alice.
    let mut anon = logged_in(addr, connect5("alice")).await;
    for (id, topic) in [
        (1, "rooms/ops/msg/alice"),
        (2, "rooms/lobby/msg/alice"),
        (3, "$presence/alice"),
    ] {
        assert_eq!(
            puback_of(&mut anon, topic, id).await,
            PublishAckReason::NotAuthorized,
            "{topic}"
        );
    }
    // 3.1.1 alike: the message is dropped.
    let (mut anon3, ack) = Raw::connect3(addr, connect3("alice", true)).await;
    assert_eq!(ack.return_code, v3::ConnectAckReason::ConnectionAccepted);
    anon3
        .send3(v3::Packet::Publish(Box::new(publish(
            "rooms/ops/msg/alice",
            b"x",
            QoS::AtLeastOnce,
            Some(1),
        ))))
        .await;
    assert!(matches!(
        anon3.recv3().await.packet(),
        v3::Packet::PublishAck { .. }
    ));
    // A username without its password is refused, never taken as a name.
    let mut bare = connect5("bare");
    bare.username = Some("alice".into());
    let (_b, ack) = Raw::connect5(addr, bare).await;
    assert_eq!(ack.reason_code, ConnectAckReason::BadUserNameOrPassword);
    if let Got::Packet(p) = bob.recv5_within(QUIET).await {
        panic!("bob saw {p:?}");
    }
}

#[tokio::test]
async fn a_jwt_broker_takes_no_name_without_a_token() {
    let mut config = test_config();
    config.auth = AuthConfig {
        allow_anonymous: Some(true),
        jwt_secret: Some("s".into()),
        ..Default::default()
    };
    let broker = start_with(config).await;
    let mut c = connect5("c");
    c.username = Some("alice".into());
    let (_c, ack) = Raw::connect5(broker.local_addr(), c).await;
    assert_eq!(ack.reason_code, ConnectAckReason::BadUserNameOrPassword);
    // Anonymous without a name is still let in, as configured.
    let (_a, ack) = Raw::connect5(broker.local_addr(), connect5("anon")).await;
    assert_eq!(ack.reason_code, ConnectAckReason::Success);
}

#[tokio::test]
async fn no_authenticator_and_no_anonymous_refuses_everyone() {
    let mut config = test_config();
    config.auth.allow_anonymous = Some(false);
    let broker = start_with(config).await;
    let mut named = connect5("c");
    named.username = Some("alice".into());
    let (_c, ack) = Raw::connect5(broker.local_addr(), named).await;
    assert_eq!(ack.reason_code, ConnectAckReason::NotAuthorized);
    let (_c, ack) = Raw::connect5(broker.local_addr(), login5("d", "alice", "any")).await;
    assert_eq!(ack.reason_code, ConnectAckReason::NotAuthorized);
}

#[tokio::test]
async fn a_session_belongs_to_the_identity_that_made_it() {
    let dir = tempfile::tempdir().unwrap();
    let durable = || {
        let base = with_passwords(dir.path());
        Config {
            data_dir: dir.path().join("data"),
            store: StoreConfig {
                storage: roomq::StorageKind::Sled,
                ..base.store
            },
            ..base
        }
    };
    let broker = start_with(durable()).await;
    let addr = broker.local_addr();
    let alice_phone = |clean: bool| {
        let mut c = login5("alice-phone", "alice", "alice-pw");
        c.clean_start = clean;
        c.session_expiry_interval_secs = 3600;
        c
    };
    let mut alice = logged_in(addr, alice_phone(false)).await;
    alice
        .subscribe5(
            1,
            &[
                ("rooms/ops/msg/+", opts(QoS::AtLeastOnce)),
                ("private/alice/#", opts(QoS::AtLeastOnce)),
            ],
        )
        .await;
    // The live connection: mallory cannot take it, with either Clean Start.
    for clean in [false, true] {
        let mut c = login5("alice-phone", "mallory", "mallory-pw");
        c.clean_start = clean;
        c.session_expiry_interval_secs = 3600;
        let (_m, ack) = Raw::connect5(addr, c).await;
        assert_eq!(ack.reason_code, ConnectAckReason::NotAuthorized);
    }
    let mut bob = logged_in(addr, login5("bob-1", "bob", "bob-pw")).await;
    assert_eq!(
        puback_of(&mut bob, "rooms/ops/msg/bob", 1).await,
        PublishAckReason::Success
    );
    let live = alice.publish5().await;
    assert_eq!(live.topic, "rooms/ops/msg/bob", "alice's connection is untouched");
    alice
        .send5(Packet::PublishAck(v5::PublishAck {
            packet_id: live.packet_id.unwrap(),
            ..Default::default()
        }))
        .await;
    alice.send5(Packet::Disconnect(v5::Disconnect::default())).await;
    drop(alice);

    // Offline: queued private mail and a room backlog.
    let mut admin = logged_in(addr, login5("admin", "bob", "bob-pw")).await;
    admin
        .send5(Packet::Publish(Box::new(publish(
            "private/alice/dm",
            b"your password reset code is 4242",
            QoS::AtLeastOnce,
            Some(1),
        ))))
        .await;
    let _ = admin.recv5().await;
    assert_eq!(
        puback_of(&mut bob, "rooms/ops/msg/bob", 2).await,
        PublishAckReason::Success
    );
    let mut c = login5("alice-phone", "mallory", "mallory-pw");
    c.clean_start = false;
    c.session_expiry_interval_secs = 3600;
    let (mut mallory, ack) = Raw::connect5(addr, c).await;
    assert_eq!(ack.reason_code, ConnectAckReason::NotAuthorized);
    assert!(!ack.session_present);
    assert!(matches!(
        mallory.recv5_within(QUIET).await,
        Got::Closed | Got::Nothing
    ));
    // An anonymous client cannot have it either.
    let mut anon = connect5("alice-phone");
    anon.clean_start = false;
    let (_a, ack) = Raw::connect5(addr, anon).await;
    assert_eq!(ack.reason_code, ConnectAckReason::NotAuthorized);

    // The owner, also after a restart, finds everything.
    broker.shutdown().await;
    let broker = start_with(durable()).await;
    let addr = broker.local_addr();
    let mut c = login5("alice-phone", "mallory", "mallory-pw");
    c.clean_start = false;
    let (_m, ack) = Raw::connect5(addr, c).await;
    assert_eq!(
        ack.reason_code,
        ConnectAckReason::NotAuthorized,
        "ownership survives a restart"
    );
    let (mut alice, ack) = Raw::connect5(addr, alice_phone(false)).await;
    assert_eq!(ack.reason_code, ConnectAckReason::Success);
    assert!(ack.session_present);
    let mut topics = Vec::new();
    for _ in 0..2 {
        let p = alice.publish5().await;
        topics.push(p.topic.to_string());
        if let Some(id) = p.packet_id {
            alice
                .send5(Packet::PublishAck(v5::PublishAck {
                    packet_id: id,
                    ..Default::default()
                }))
                .await;
        }
    }
    topics.sort();
    assert_eq!(topics, vec!["private/alice/dm", "rooms/ops/msg/bob"]);
}

#[tokio::test]
async fn removing_a_user_from_the_password_file_ends_its_connections_on_reload() {
    let dir = tempfile::tempdir().unwrap();
    let config = with_passwords(dir.path());
    let file = config.auth.password_file.clone().unwrap();
    let broker = start_with(config).await;
    let addr = broker.local_addr();
    let mut mallory = logged_in(addr, login5("m-1", "mallory", "mallory-pw")).await;
    let mut alice = logged_in(addr, login5("a-1", "alice", "alice-pw")).await;
    // What `roomq passwd` cannot do, an operator does by hand.
    let kept: String = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("mallory:"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&file, kept).unwrap();
    broker.reload(); // what SIGHUP does
    assert_eq!(
        mallory.expect_disconnect5().await,
        v5::DisconnectReasonCode::NotAuthorized
    );
    let (_m, ack) = Raw::connect5(addr, login5("m-2", "mallory", "mallory-pw")).await;
    assert_eq!(ack.reason_code, ConnectAckReason::BadUserNameOrPassword);
    assert_eq!(
        puback_of(&mut alice, "rooms/ops/msg/alice", 1).await,
        PublishAckReason::Success
    );
}

fn token(claims: serde_json::Value) -> String {
    jwt("test-secret", &claims)
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

async fn token_login(addr: std::net::SocketAddr, token: String) -> ConnectAckReason {
    let mut c = connect5("tok");
    c.password = Some(token.into());
    Raw::connect5(addr, c).await.1.reason_code
}

#[tokio::test]
async fn tokens_are_checked_as_identity_providers_issue_them() {
    let jwt = |audience: Option<&str>, issuer: Option<&str>| {
        let mut config = test_config();
        config.auth = AuthConfig {
            allow_anonymous: Some(false),
            jwt_secret: Some("test-secret".into()),
            jwt_audience: audience.map(Into::into),
            jwt_issuer: issuer.map(Into::into),
            ..Default::default()
        };
        config
    };
    let exp = now() + 3600;
    let broker = start_with(jwt(None, None)).await;
    let addr = broker.local_addr();
    let ok = serde_json::json!({ "sub": "jay", "exp": exp, "aud": "some-app", "iss": "idp" });
    assert_eq!(
        token_login(addr, token(ok)).await,
        ConnectAckReason::Success,
        "aud is ignored unless configured"
    );
    let not_yet = serde_json::json!({ "sub": "jay", "exp": exp, "nbf": now() + 600 });
    assert_eq!(
        token_login(addr, token(not_yet)).await,
        ConnectAckReason::BadUserNameOrPassword
    );
    let empty_sub = serde_json::json!({ "sub": "", "exp": exp });
    assert_eq!(
        token_login(addr, token(empty_sub)).await,
        ConnectAckReason::BadUserNameOrPassword
    );
    broker.shutdown().await;

    let broker = start_with(jwt(Some("chat"), Some("https://idp.example"))).await;
    let addr = broker.local_addr();
    for (aud, iss, expected) in [
        ("chat", "https://idp.example", ConnectAckReason::Success),
        (
            "other",
            "https://idp.example",
            ConnectAckReason::BadUserNameOrPassword,
        ),
        (
            "chat",
            "https://evil.example",
            ConnectAckReason::BadUserNameOrPassword,
        ),
    ] {
        let claims = serde_json::json!({ "sub": "jay", "exp": exp, "aud": aud, "iss": iss });
        assert_eq!(
            token_login(addr, token(claims)).await,
            expected,
            "aud {aud}, iss {iss}"
        );
    }
    broker.shutdown().await;

    let mut empty = jwt(None, None);
    empty.auth.jwt_secret = Some(String::new());
    let err = roomq::Broker::new(empty)
        .start()
        .await
        .err()
        .expect("an empty secret stops start-up");
    assert!(err.to_string().contains("jwt_secret"), "{err}");
}

#[tokio::test]
async fn roomq_passwd_refuses_names_the_file_cannot_hold() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("passwd");
    for name in ["#admin", "a:b", "a b", "a/b", "+"] {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_roomq"))
            .arg("passwd")
            .arg(&file)
            .arg(name)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let _ = writeln!(child.stdin.take().unwrap(), "pw");
        assert!(!child.wait().unwrap().success(), "{name:?} accepted");
    }
    assert!(!file.exists() || std::fs::read_to_string(&file).unwrap().trim().is_empty());
}

/// A name is one topic level (`topics.md`, *Identity*): a username, token
/// `sub` or client id standing in for a name that holds `+`, `#`, `/` or a
/// control character would make the broker publish `$presence/#` or
/// `users/#/history/...`, so a username is refused at CONNECT on every
/// path (5.0 0x86 / 3.1.1 code 4). Any string is a valid MQTT client id,
/// so a client id that would stand in for such a name is served, without
/// a name: it cannot post as one.
#[tokio::test]
async fn names_that_are_not_one_topic_level_are_refused_at_connect() {
    // No authenticator (the loopback default): names are claims.
    let broker = start().await;
    let addr = broker.local_addr();
    for name in ["#", "+", "a/b", "alice/#", "a\u{1}b"] {
        let mut c = connect5("named");
        c.username = Some(name.into());
        let reason = Raw::connect5(addr, c).await.1.reason_code;
        assert_eq!(
            reason,
            ConnectAckReason::BadUserNameOrPassword,
            "username {name:?}"
        );
        let (mut nameless, ack) = Raw::connect5(addr, connect5(name)).await;
        assert_eq!(ack.reason_code, ConnectAckReason::Success, "client id {name:?}");
        nameless
            .send5(v5::Packet::Publish(Box::new(publish(
                "rooms/lobby/msg/x",
                b"hi",
                v5::QoS::AtLeastOnce,
                Some(1),
            ))))
            .await;
        match nameless.recv5().await.packet() {
            v5::Packet::PublishAck(ack) => assert_eq!(
                ack.reason_code,
                v5::PublishAckReason::NotAuthorized,
                "client id {name:?} posted as a name"
            ),
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
    let mut c = connect3("named", true);
    c.username = Some("#".into());
    let code = Raw::connect3(addr, c).await.1.return_code;
    assert_eq!(code, v3::ConnectAckReason::BadUserNameOrPassword);
    let code = Raw::connect3(addr, connect3("+", true)).await.1.return_code;
    assert_eq!(code, v3::ConnectAckReason::ConnectionAccepted);
    // A client id is only checked where it is the identity.
    let mut c = connect5("devices/#");
    c.username = Some("alice".into());
    assert_eq!(
        Raw::connect5(addr, c).await.1.reason_code,
        ConnectAckReason::Success
    );
    broker.shutdown().await;

    // A password file edited by hand to hold such a name.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("passwd");
    let hash = roomq::auth::password_file::hash_password(b"pw").unwrap();
    std::fs::write(&file, format!("a/b:{hash}\n")).unwrap();
    let mut config = test_config();
    config.auth = AuthConfig {
        password_file: Some(file),
        ..Default::default()
    };
    let broker = start_with(config).await;
    let reason = Raw::connect5(broker.local_addr(), login5("c", "a/b", "pw"))
        .await
        .1
        .reason_code;
    assert_eq!(reason, ConnectAckReason::BadUserNameOrPassword);
    broker.shutdown().await;

    // Tokens: a `sub` that is not one level, and a 3.1.1 CONNECT whose
    // username is empty (a username, when sent, must be the `sub`).
    let mut config = test_config();
    config.auth = AuthConfig {
        allow_anonymous: Some(false),
        jwt_secret: Some("test-secret".into()),
        ..Default::default()
    };
    let broker = start_with(config).await;
    let addr = broker.local_addr();
    let exp = now() + 3600;
    for sub in ["#", "+", "a/b"] {
        let claims = serde_json::json!({ "sub": sub, "exp": exp });
        assert_eq!(
            token_login(addr, token(claims)).await,
            ConnectAckReason::BadUserNameOrPassword,
            "sub {sub:?}"
        );
    }
    let jay = token(serde_json::json!({ "sub": "jay", "exp": exp }));
    let mut c = connect3("jay-iot", true);
    c.username = Some("".into());
    c.password = Some(jay.clone().into());
    let code = Raw::connect3(addr, c).await.1.return_code;
    assert_eq!(code, v3::ConnectAckReason::BadUserNameOrPassword);
    let mut c = connect3("jay-iot", true);
    c.username = Some("jay".into());
    c.password = Some(jay.into());
    let code = Raw::connect3(addr, c).await.1.return_code;
    assert_eq!(code, v3::ConnectAckReason::ConnectionAccepted);
    broker.shutdown().await;
}
