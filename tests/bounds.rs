//! Nothing a client sends is held without bound: each test is a way a
//! client made the broker hold memory, work or state without limit, and
//! asserts the bound a user can observe (a reason code, a count, a closed
//! connection). The memory and latency these bounds buy are measured by
//! `scripts/abuse`, not asserted here.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use rmqtt_codec::types::{Publish, QoS};
use rmqtt_codec::v5::{self, ConnectAckReason, PublishAckReason, SubscribeAckReason};
use roomq::config::{AuthConfig, ChatConfig, Limits};
use roomq::Config;

fn owned(topic: &str, payload: Vec<u8>, id: u16, user_properties: &[(&str, &str)]) -> Publish {
    let mut p = publish(topic, b"", QoS::AtLeastOnce, Some(id));
    p.payload = Bytes::from(payload);
    if let Some(props) = p.properties.as_mut() {
        props.user_properties = user_properties
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect();
    }
    p
}

#[tokio::test]
async fn chat_sizes_are_bounded_with_the_right_reason_codes() {
    let broker = start().await;
    let mut c = Raw::client5(broker.local_addr(), "dev").await;
    let long_id = "i".repeat(129);
    let cases: Vec<(&str, Publish, PublishAckReason)> = vec![
        (
            "msg-id level over 128 bytes",
            owned(&format!("rooms/r/msg/dev/{long_id}"), b"x".to_vec(), 1, &[]),
            PublishAckReason::PayloadFormatInvalid,
        ),
        (
            "msg-id property over 128 bytes",
            owned("rooms/r/msg/dev", b"x".to_vec(), 2, &[("msg-id", &long_id)]),
            PublishAckReason::PayloadFormatInvalid,
        ),
        (
            "room message over max_room_message_bytes",
            owned("rooms/r/msg/dev", vec![0; 300 * 1024], 3, &[]),
            PublishAckReason::QuotaExceeded,
        ),
        (
            "room name over max_chat_name_length",
            owned(
                &format!("rooms/{}/msg/dev", "r".repeat(200)),
                b"x".to_vec(),
                4,
                &[],
            ),
            PublishAckReason::TopicNameInvalid,
        ),
        (
            "typing with a key the schema lacks",
            owned(
                "rooms/r/typing/dev",
                cbor(&serde_json::json!({"typing": true, "pad": "x"})),
                5,
                &[],
            ),
            PublishAckReason::PayloadFormatInvalid,
        ),
        (
            "typing with bytes after the CBOR value",
            owned(
                "rooms/r/typing/dev",
                [cbor(&serde_json::json!({"typing": true})), vec![0; 64]].concat(),
                6,
                &[],
            ),
            PublishAckReason::PayloadFormatInvalid,
        ),
        (
            "a large typing event",
            owned(
                "rooms/r/typing/dev",
                cbor(&serde_json::json!({"typing": true, "x": "y".repeat(5000)})),
                7,
                &[],
            ),
            PublishAckReason::PayloadFormatInvalid,
        ),
    ];
    for (what, publish, expected) in cases {
        assert_eq!(c.puback_of(publish).await, expected, "{what}");
    }
    // Within the limits, all is well.
    drop(c);
    let broker = start_with(Config {
        chat: ChatConfig {
            max_rooms: 2,
            ..test_config().chat
        },
        ..test_config()
    })
    .await;
    let mut c = Raw::client5(broker.local_addr(), "dev").await;
    for (id, room, expected) in [
        (1, "a", PublishAckReason::Success),
        (2, "b", PublishAckReason::Success),
        (3, "c", PublishAckReason::QuotaExceeded),
        (4, "a", PublishAckReason::Success),
    ] {
        let p = owned(&format!("rooms/{room}/msg/dev"), b"x".to_vec(), id, &[]);
        assert_eq!(c.puback_of(p).await, expected, "room {room} with max_rooms 2");
    }
    let ok = owned(
        "rooms/a/msg/dev",
        b"x".to_vec(),
        8,
        &[("msg-id", &"i".repeat(128))],
    );
    assert_eq!(c.puback_of(ok).await, PublishAckReason::Success);
}

fn cbor(value: &serde_json::Value) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).unwrap();
    out
}

#[tokio::test]
async fn a_session_queue_is_bounded_in_bytes() {
    let broker = start_with(Config {
        limits: Limits {
            max_queued_bytes: 1024 * 1024,
            ..test_config().limits
        },
        ..test_config()
    })
    .await;
    let addr = broker.local_addr();
    let (mut away, _) = Raw::connect5(addr, persistent5("away")).await;
    away.subscribe5(1, &[("bulk", opts(QoS::AtLeastOnce))]).await;
    drop(away);
    let mut publisher = Raw::client5(addr, "pub").await;
    for i in 0..20u16 {
        publisher
            .puback_of(owned("bulk", vec![7; 200 * 1024], i + 1, &[]))
            .await;
    }
    // 1 MiB holds five 200 KB messages; the rest were dropped and counted.
    let pending = broker.session_pending("away").expect("the session exists");
    assert!(pending <= 6, "{pending} messages queued for an offline session");
    assert!(broker.metrics().messages_dropped_queue_full.get() >= 14);
}

#[tokio::test]
async fn subscriptions_are_bounded_in_count_and_filter_length_by_default() {
    let broker = start().await;
    let mut c = Raw::client5(broker.local_addr(), "many").await;
    let long = format!("long/{}", "x".repeat(1100));
    let status = c.subscribe5(1, &[(long.as_str(), opts(QoS::AtMostOnce))]).await;
    assert_eq!(status, vec![SubscribeAckReason::TopicFilterInvalid]);
    let filters: Vec<String> = (0..1001).map(|i| format!("f/{i}")).collect();
    let mut last = Vec::new();
    for (n, chunk) in filters.chunks(100).enumerate() {
        let request: Vec<(&str, v5::SubscriptionOptions)> = chunk
            .iter()
            .map(|f| (f.as_str(), opts(QoS::AtMostOnce)))
            .collect();
        last = c.subscribe5(2 + n as u16, &request).await;
    }
    assert_eq!(
        last,
        vec![SubscribeAckReason::QuotaExceeded],
        "the 1,001st subscription"
    );
}

#[tokio::test]
async fn retained_messages_are_bounded_and_still_delivered() {
    let broker = start_with(Config {
        limits: Limits {
            max_retained_messages: 5,
            ..test_config().limits
        },
        ..test_config()
    })
    .await;
    let addr = broker.local_addr();
    let mut live = Raw::client5(addr, "live").await;
    live.subscribe5(1, &[("r/#", opts(QoS::AtMostOnce))]).await;
    let mut c = Raw::client5(addr, "retainer").await;
    for i in 0..6u16 {
        let mut p = owned(&format!("r/{i}"), b"v".to_vec(), i + 1, &[]);
        p.retain = true;
        let expected = if i < 5 {
            PublishAckReason::Success
        } else {
            PublishAckReason::QuotaExceeded
        };
        assert_eq!(c.puback_of(p).await, expected, "retained #{i}");
        assert_eq!(
            live.publish5().await.topic,
            format!("r/{i}"),
            "delivered either way"
        );
    }
    let mut late = Raw::client5(addr, "late").await;
    late.subscribe5(1, &[("r/#", opts(QoS::AtMostOnce))]).await;
    let mut got = Vec::new();
    while let Got::Packet(v5::Packet::Publish(p)) = late.recv5_within(QUIET).await {
        got.push(p.topic.to_string());
    }
    got.sort();
    assert_eq!(got, vec!["r/0", "r/1", "r/2", "r/3", "r/4"]);
    // Wildcards never reach `$` topics, shared subscriptions get no
    // retained messages, an exact filter gets its one.
    let mut shared = Raw::client5(addr, "shared").await;
    shared
        .subscribe5(
            1,
            &[
                ("$share/g/r/#", opts(QoS::AtMostOnce)),
                ("r/3", opts(QoS::AtMostOnce)),
            ],
        )
        .await;
    assert_eq!(shared.publish5().await.topic, "r/3");
    assert!(matches!(shared.recv5_within(QUIET).await, Got::Nothing));
}

#[tokio::test]
async fn presence_lasts_only_for_users_that_matter_and_expires() {
    let broker = start_with(Config {
        chat: ChatConfig {
            presence_retention_secs: 1,
            ..test_config().chat
        },
        ..test_config()
    })
    .await;
    let addr = broker.local_addr();
    // A mosquitto_pub-style client: anonymous, clean, no room.
    drop(Raw::client5(addr, "mosq-3f9a1c").await);
    // A plain client with a name: presence shows only room users.
    let mut sensor = connect5("sensor-1");
    sensor.username = Some("sensor".into());
    drop(Raw::connect5(addr, sensor).await);
    // A user with a name who uses a room.
    let mut named = connect5("ann-phone");
    named.username = Some("ann".into());
    let (mut ann, _) = Raw::connect5(addr, named).await;
    ann.subscribe5(1, &[("rooms/lobby/msg/+", opts(QoS::AtMostOnce))])
        .await;
    drop(ann);
    let retained_presence = async || {
        let mut w = Raw::client5(addr, "watcher").await;
        w.subscribe5(1, &[("$presence/+", opts(QoS::AtMostOnce))]).await;
        let mut users = Vec::new();
        while let Got::Packet(v5::Packet::Publish(p)) = w.recv5_within(QUIET).await {
            // The watcher's own live presence aside.
            if p.retain && p.topic != "$presence/watcher" {
                users.push(p.topic.to_string());
            }
        }
        users
    };
    assert_eq!(retained_presence().await, vec!["$presence/ann"]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(broker.run_upkeep(), 1);
    assert!(retained_presence().await.is_empty(), "stale presence expired");
}

/// A broker with a password file of alice and bob (password "right").
async fn with_passwords(dir: &std::path::Path, config: Config) -> roomq::BrokerHandle {
    let file = dir.join("passwd");
    for user in ["alice", "bob"] {
        roomq::auth::password_file::set_password(&file, user, b"right").unwrap();
    }
    start_with(Config {
        auth: AuthConfig {
            allow_anonymous: Some(false),
            password_file: Some(file),
            ..Default::default()
        },
        ..config
    })
    .await
}

async fn login(
    addr: std::net::SocketAddr,
    id: String,
    user: String,
    password: &'static [u8],
) -> ConnectAckReason {
    let mut c = connect5(&id);
    c.username = Some(user.into());
    c.password = Some(Bytes::from_static(password));
    Raw::connect5(addr, c).await.1.reason_code
}

#[tokio::test]
async fn logins_beyond_the_queue_are_refused_before_any_hashing() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        limits: Limits {
            max_concurrent_logins: 1,
            max_pending_logins: 3,
            ..test_config().limits
        },
        ..test_config()
    };
    let broker = with_passwords(dir.path(), config).await;
    let addr = broker.local_addr();
    // Twelve users guessed at once: what does not fit the queue of three is
    // refused at once (how many depends on how fast the hashes run, so
    // only the refusal is asserted).
    let guesses: Vec<_> = (0..12)
        .map(|i| tokio::spawn(login(addr, format!("g{i}"), format!("user{i}"), b"wrong")))
        .collect();
    let mut busy = 0;
    for guess in guesses {
        if guess.await.unwrap() == ConnectAckReason::ServerBusy {
            busy += 1;
        }
    }
    assert!(busy > 0, "no login was refused as busy beyond max_pending_logins");
}

#[tokio::test]
async fn a_correct_login_gets_in_while_guesses_at_another_account_wait() {
    let dir = tempfile::tempdir().unwrap();
    let broker = with_passwords(dir.path(), test_config()).await;
    let addr = broker.local_addr();
    // Guesses at alice wait out their back-off without holding the login
    // queue: bob, behind the same address, gets in while they wait.
    let alice: Vec<_> = (0..20)
        .map(|i| tokio::spawn(login(addr, format!("a{i}"), "alice".into(), b"wrong")))
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        login(addr, "bob-1".into(), "bob".into(), b"right").await,
        ConnectAckReason::Success
    );
    assert!(
        alice.iter().any(|guess| !guess.is_finished()),
        "bob got in only after every guess at alice was answered"
    );
    for guess in alice {
        guess.abort();
    }
}

#[tokio::test]
async fn the_connect_timeout_covers_the_handshake_and_connect_together() {
    use tokio::io::AsyncWriteExt;
    let broker = start_with(Config {
        limits: Limits {
            connect_timeout_secs: 3,
            ..ws_config().limits
        },
        ..ws_config()
    })
    .await;
    let addr = broker.local_addr();
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The upgrade request comes 2 s after the socket opened...
    tokio::time::sleep(Duration::from_secs(2)).await;
    let request = format!(
        "GET /mqtt HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: mqtt\r\n\r\n"
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    // ... and nothing more: 4 s after the socket opened (2 s after the
    // handshake), the 3 s allowed for handshake and CONNECT together are
    // over, and the broker has closed it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let closed = async {
        while broker.open_connections() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_millis(500), closed)
        .await
        .expect("closed by the single connect deadline");
}
