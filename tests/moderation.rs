//! Moderators ban and mute on `$rooms/{room}/mod` (`topics.md`,
//! *Moderation*). Room `ops` is closed: alice and eve are members, `mod` is
//! its moderator. Each test is something a moderator relies on: a ban
//! holds at once on every subscription and device of the banned user,
//! ends when lifted or after `secs`, survives a restart; a mute lets her
//! read, not write; a non-moderator changes nothing.

mod common;

use common::chat::{publish_with, send_and_ack, user5};
use common::*;
use rmqtt_codec::types::QoS;
use rmqtt_codec::v3;
use rmqtt_codec::v5::{self, PublishAckReason, SubscribeAckReason};
use roomq::chat::payloads::{self, ModResponse};
use roomq::config::{AuthConfig, ChatConfig, RoomConfig, RoomsDefault};
use roomq::Config;
use serde::Serialize;

fn ops(moderators: &[&str]) -> RoomConfig {
    RoomConfig {
        name: "ops".into(),
        members: vec!["alice".into(), "eve".into()],
        open: false,
        moderators: moderators.iter().map(|m| m.to_string()).collect(),
    }
}

fn config() -> Config {
    Config {
        rooms: vec![ops(&["mod"])],
        chat: ChatConfig {
            rooms_default: RoomsDefault::Closed,
            ..test_config().chat
        },
        ..test_config()
    }
}

/// A `mod-request`.
#[derive(Serialize)]
struct Request<'a> {
    op: &'a str,
    user: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    secs: Option<u64>,
}

fn req<'a>(op: &'a str, user: &'a str) -> Request<'a> {
    Request { op, user, secs: None }
}

/// A 5.0 client of `user` that takes moderation answers on
/// `replies/{client_id}`.
async fn moderator5(addr: std::net::SocketAddr, client_id: &str, user: &str) -> Raw {
    let mut c = user5(addr, client_id, user).await;
    let reply_to = format!("replies/{client_id}");
    let status = c.subscribe5(1, &[(&reply_to, opts(QoS::AtMostOnce))]).await;
    assert_eq!(status, [SubscribeAckReason::GrantedQos0]);
    c
}

/// Sends `request` for `ops` at QoS 1 with a Response Topic and returns
/// the PUBACK reason and the answer (they may come in either order).
async fn moderate(
    c: &mut Raw,
    client_id: &str,
    request: &Request<'_>,
    id: u16,
) -> (PublishAckReason, ModResponse) {
    let mut p = publish_with("$rooms/ops/mod", &payloads::to_cbor(request), Some(id), &[]);
    let reply_to = format!("replies/{client_id}");
    if let Some(props) = p.properties.as_mut() {
        props.response_topic = Some(reply_to.as_str().into());
        props.correlation_data = Some(bytes::Bytes::from_static(b"c1"));
    }
    c.send5(v5::Packet::Publish(Box::new(p))).await;
    let (mut ack, mut answer) = (None, None);
    while ack.is_none() || answer.is_none() {
        match c.recv5().await.packet() {
            v5::Packet::Publish(reply) => {
                assert_eq!(reply.topic, reply_to.as_str());
                let correlation = reply.properties.as_ref().and_then(|p| p.correlation_data.clone());
                assert_eq!(correlation.as_deref(), Some(&b"c1"[..]));
                answer = Some(payloads::from_cbor::<ModResponse>(&reply.payload).expect("mod-response"));
            }
            v5::Packet::PublishAck(a) => ack = Some(a.reason_code),
            other => panic!("expected the answer and PUBACK, got {other:?}"),
        }
    }
    (ack.unwrap(), answer.unwrap())
}

async fn post(c: &mut Raw, sender: &str, body: &[u8], id: u16) -> PublishAckReason {
    let ack = send_and_ack(
        c,
        publish_with(&format!("rooms/ops/msg/{sender}"), body, Some(id), &[]),
    )
    .await;
    ack.reason_code
}

async fn ask_history(c: &mut Raw, id: u16) -> PublishAckReason {
    let mut p = publish_with("$history/rooms/ops", b"", Some(id), &[]);
    if let Some(props) = p.properties.as_mut() {
        props.response_topic = Some("replies/eve".into());
    }
    send_and_ack(c, p).await.reason_code
}

/// Waits for the PUBLISH with `body` on a 5.0 client (others are skipped).
async fn receives5(c: &mut Raw, body: &[u8]) {
    loop {
        let p = c.publish5().await;
        if p.payload.as_ref() == body {
            return;
        }
    }
}

async fn receives3(c: &mut Raw, body: &[u8]) {
    loop {
        let p = c.publish3().await;
        if p.payload.as_ref() == body {
            return;
        }
    }
}

async fn quiet5(c: &mut Raw, what: &str) {
    if let Got::Packet(p) = c.recv5_within(QUIET).await {
        panic!("{what}: got {p:?}");
    }
}

async fn quiet3(c: &mut Raw, what: &str) {
    if let Got::Packet(p) = c.recv3_within(QUIET).await {
        panic!("{what}: got {p:?}");
    }
}

/// eve on a 3.1.1 device, subscribed to the room's messages.
async fn eve3(addr: std::net::SocketAddr) -> Raw {
    let mut connect = connect3("eve-laptop", true);
    connect.username = Some("eve".into());
    let (mut eve, ack) = Raw::connect3(addr, connect).await;
    assert_eq!(ack.return_code, v3::ConnectAckReason::ConnectionAccepted);
    let status = eve.subscribe3(1, &[("rooms/ops/msg/+", QoS::AtMostOnce)]).await;
    assert_eq!(status, [v3::SubscribeReturnCode::Success(QoS::AtMostOnce)]);
    eve
}

#[tokio::test]
async fn a_ban_stops_every_device_at_once_and_refuses_everything_until_unbanned() {
    let broker = start_with(config()).await;
    let addr = broker.local_addr();
    let mut moderator = moderator5(addr, "mod-1", "mod").await;
    let mut alice = user5(addr, "alice-1", "alice").await;
    let mut phone = user5(addr, "eve-phone", "eve").await;
    let status = phone
        .subscribe5(1, &[("rooms/ops/#", opts(QoS::AtMostOnce))])
        .await;
    assert_eq!(status, [SubscribeAckReason::GrantedQos0]);
    let mut laptop = eve3(addr).await;

    assert_eq!(
        post(&mut alice, "alice", b"before", 1).await,
        PublishAckReason::Success
    );
    receives5(&mut phone, b"before").await;
    receives3(&mut laptop, b"before").await;

    let (ack, answer) = moderate(&mut moderator, "mod-1", &req("ban", "eve"), 1).await;
    assert_eq!(
        (ack, answer.ok, answer.error),
        (PublishAckReason::Success, true, None)
    );

    // Her subscriptions are still there, but nothing of the room reaches
    // either device any more.
    assert_eq!(
        post(&mut alice, "alice", b"after", 2).await,
        PublishAckReason::Success
    );
    quiet5(&mut phone, "a banned 5.0 device still receives the room").await;
    quiet3(&mut laptop, "a banned 3.1.1 device still receives the room").await;
    assert_eq!(
        post(&mut phone, "eve", b"let me in", 2).await,
        PublishAckReason::NotAuthorized
    );
    let status = phone
        .subscribe5(2, &[("rooms/ops/msg/+", opts(QoS::AtMostOnce))])
        .await;
    assert_eq!(status, [SubscribeAckReason::NotAuthorized]);
    let status = laptop.subscribe3(2, &[("rooms/ops/#", QoS::AtMostOnce)]).await;
    assert_eq!(status, [v3::SubscribeReturnCode::Failure]);
    assert_eq!(ask_history(&mut phone, 3).await, PublishAckReason::NotAuthorized);

    let (ack, answer) = moderate(&mut moderator, "mod-1", &req("unban", "eve"), 2).await;
    assert_eq!((ack, answer.ok), (PublishAckReason::Success, true));
    assert_eq!(
        post(&mut alice, "alice", b"welcome back", 3).await,
        PublishAckReason::Success
    );
    receives5(&mut phone, b"welcome back").await;
    receives3(&mut laptop, b"welcome back").await;
    assert_eq!(
        post(&mut phone, "eve", b"thanks", 4).await,
        PublishAckReason::Success
    );
    assert_eq!(ask_history(&mut phone, 5).await, PublishAckReason::Success);
    broker.shutdown().await;
}

#[tokio::test]
async fn a_ban_with_secs_ends_by_itself() {
    let broker = start_with(config()).await;
    let addr = broker.local_addr();
    let mut moderator = moderator5(addr, "mod-1", "mod").await;
    let mut eve = user5(addr, "eve-phone", "eve").await;
    let request = Request {
        op: "ban",
        user: "eve",
        secs: Some(1),
    };
    let (ack, answer) = moderate(&mut moderator, "mod-1", &request, 1).await;
    assert_eq!((ack, answer.ok), (PublishAckReason::Success, true));
    assert_eq!(
        post(&mut eve, "eve", b"now?", 1).await,
        PublishAckReason::NotAuthorized
    );
    // Polled within a bounded wait: the ban ends after a second.
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut id = 2;
    while post(&mut eve, "eve", b"now?", id).await != PublishAckReason::Success {
        assert!(tokio::time::Instant::now() < deadline, "the ban did not end");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        id += 1;
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn a_muted_member_reads_but_may_not_post_or_type() {
    let broker = start_with(config()).await;
    let addr = broker.local_addr();
    // A 3.1.1 moderator gets her answers on users/{her}/mod/{room}.
    let mut connect = connect3("mod-laptop", true);
    connect.username = Some("mod".into());
    let (mut moderator, _) = Raw::connect3(addr, connect).await;
    moderator
        .subscribe3(1, &[("users/mod/mod/ops", QoS::AtMostOnce)])
        .await;
    let mute = payloads::to_cbor(&req("mute", "eve"));
    moderator
        .send3(v3::Packet::Publish(Box::new(rmqtt_codec::types::Publish {
            payload: mute.into(),
            ..publish("$rooms/ops/mod", b"", QoS::AtMostOnce, None)
        })))
        .await;
    let answer: ModResponse = payloads::from_cbor(&moderator.publish3().await.payload).expect("mod-response");
    assert!(answer.ok);

    let mut alice = user5(addr, "alice-1", "alice").await;
    let mut eve = user5(addr, "eve-phone", "eve").await;
    eve.subscribe5(1, &[("rooms/ops/msg/+", opts(QoS::AtMostOnce))])
        .await;
    assert_eq!(
        post(&mut alice, "alice", b"hello eve", 1).await,
        PublishAckReason::Success
    );
    receives5(&mut eve, b"hello eve").await;
    assert_eq!(
        post(&mut eve, "eve", b"hello", 2).await,
        PublishAckReason::NotAuthorized
    );
    let typing = payloads::to_cbor(&payloads::Typing { typing: true });
    let ack = send_and_ack(
        &mut eve,
        publish_with("rooms/ops/typing/eve", &typing, Some(3), &[]),
    )
    .await;
    assert_eq!(ack.reason_code, PublishAckReason::NotAuthorized);
    let receipt = payloads::to_cbor(&payloads::Receipt { seq: 1 });
    let ack = send_and_ack(
        &mut eve,
        publish_with("rooms/ops/read/eve", &receipt, Some(4), &[]),
    )
    .await;
    assert_eq!(
        ack.reason_code,
        PublishAckReason::Success,
        "a muted member still reads"
    );
    assert_eq!(ask_history(&mut eve, 5).await, PublishAckReason::Success);

    let unmute = payloads::to_cbor(&req("unmute", "eve"));
    moderator
        .send3(v3::Packet::Publish(Box::new(rmqtt_codec::types::Publish {
            payload: unmute.into(),
            ..publish("$rooms/ops/mod", b"", QoS::AtMostOnce, None)
        })))
        .await;
    assert!(
        payloads::from_cbor::<ModResponse>(&moderator.publish3().await.payload)
            .unwrap()
            .ok
    );
    assert_eq!(
        post(&mut eve, "eve", b"hello", 6).await,
        PublishAckReason::Success
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn a_non_moderator_is_refused_and_changes_nothing() {
    let broker = start_with(config()).await;
    let addr = broker.local_addr();
    let mut alice = moderator5(addr, "alice-1", "alice").await;
    let (ack, answer) = moderate(&mut alice, "alice-1", &req("ban", "eve"), 1).await;
    assert_eq!(ack, PublishAckReason::NotAuthorized);
    assert!(!answer.ok);
    assert_eq!(answer.error.as_deref(), Some("not a moderator"));
    let mut eve = user5(addr, "eve-phone", "eve").await;
    assert_eq!(
        post(&mut eve, "eve", b"still here", 1).await,
        PublishAckReason::Success
    );
    // Nor may a moderator ban a configured moderator.
    let mut moderator = moderator5(addr, "mod-1", "mod").await;
    let (ack, answer) = moderate(&mut moderator, "mod-1", &req("ban", "mod"), 1).await;
    assert_eq!(
        (ack, answer.error.as_deref()),
        (PublishAckReason::NotAuthorized, Some("moderator"))
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn roles_come_from_a_token_claim_and_from_a_room_reload_at_once() {
    let secret = "moderation-secret";
    let mut config = config();
    config.auth = AuthConfig {
        allow_anonymous: Some(false),
        jwt_secret: Some(secret.into()),
        ..Default::default()
    };
    let broker = start_with(config).await;
    let addr = broker.local_addr();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token = |sub: &str, claims: serde_json::Value| {
        let mut all = serde_json::json!({ "sub": sub, "exp": now + 3600 });
        all.as_object_mut()
            .unwrap()
            .extend(claims.as_object().unwrap().clone());
        jwt(secret, &all)
    };
    let login = |client_id: &str, token: String| {
        let mut c = connect5(client_id);
        c.password = Some(token.into());
        c
    };
    // tom is in no member list: his token makes him a moderator of ops,
    // so a member too.
    let (mut tom, _) = Raw::connect5(
        addr,
        login("tom-1", token("tom", serde_json::json!({ "mod_rooms": ["ops"] }))),
    )
    .await;
    tom.subscribe5(1, &[("replies/tom-1", opts(QoS::AtMostOnce))])
        .await;
    assert_eq!(post(&mut tom, "tom", b"hi", 1).await, PublishAckReason::Success);
    let (ack, answer) = moderate(&mut tom, "tom-1", &req("mute", "eve"), 2).await;
    assert_eq!((ack, answer.ok), (PublishAckReason::Success, true));
    let (mut eve, _) = Raw::connect5(addr, login("eve-1", token("eve", serde_json::json!({})))).await;
    assert_eq!(
        post(&mut eve, "eve", b"x", 1).await,
        PublishAckReason::NotAuthorized
    );

    // alice becomes a moderator by a reload (SIGHUP in the binary).
    let (mut alice, _) = Raw::connect5(addr, login("alice-1", token("alice", serde_json::json!({})))).await;
    alice
        .subscribe5(1, &[("replies/alice-1", opts(QoS::AtMostOnce))])
        .await;
    let (ack, _) = moderate(&mut alice, "alice-1", &req("unmute", "eve"), 1).await;
    assert_eq!(ack, PublishAckReason::NotAuthorized);
    broker.set_rooms(RoomsDefault::Closed, &[ops(&["alice"])]);
    let (ack, answer) = moderate(&mut alice, "alice-1", &req("unmute", "eve"), 2).await;
    assert_eq!((ack, answer.ok), (PublishAckReason::Success, true));
    assert_eq!(post(&mut eve, "eve", b"x", 2).await, PublishAckReason::Success);
    broker.shutdown().await;
}

/// The `roomq` binary is SIGKILLed right after the moderator's answer:
/// the ban is on disk before the answer goes (`topics.md`, *Moderation*).
#[tokio::test]
async fn a_ban_survives_a_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("roomq.toml");
    std::fs::write(
        &file,
        format!(
            "data_dir = {:?}\nrooms_default = \"closed\"\n[[rooms]]\nname = \"ops\"\nmembers = [\"alice\", \"eve\"]\nmoderators = [\"mod\"]\n",
            dir.path().join("data").display().to_string()
        ),
    )
    .unwrap();
    let args = [std::ffi::OsStr::new("-c"), file.as_os_str()];
    let (mut broker, addr) = spawn_roomq(0, &args);
    let mut eve = user5(addr, "eve-phone", "eve").await;
    assert_eq!(
        post(&mut eve, "eve", b"before", 1).await,
        PublishAckReason::Success
    );
    let mut moderator = moderator5(addr, "mod-1", "mod").await;
    let (ack, answer) = moderate(&mut moderator, "mod-1", &req("ban", "eve"), 1).await;
    assert_eq!((ack, answer.ok), (PublishAckReason::Success, true));
    broker.kill().expect("SIGKILL");
    broker.wait().unwrap();

    let (mut broker, addr) = spawn_roomq(0, &args);
    let mut eve = user5(addr, "eve-phone", "eve").await;
    assert_eq!(
        post(&mut eve, "eve", b"back?", 2).await,
        PublishAckReason::NotAuthorized,
        "the ban outlived the SIGKILL"
    );
    broker.kill().expect("SIGKILL");
    broker.wait().unwrap();
}

#[tokio::test]
async fn a_ban_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = || Config {
        rooms: vec![ops(&["mod"])],
        chat: ChatConfig {
            rooms_default: RoomsDefault::Closed,
            ..sled_config(dir.path()).chat
        },
        ..sled_config(dir.path())
    };
    let broker = start_with(config()).await;
    let mut moderator = moderator5(broker.local_addr(), "mod-1", "mod").await;
    let (ack, answer) = moderate(&mut moderator, "mod-1", &req("ban", "eve"), 1).await;
    assert_eq!((ack, answer.ok), (PublishAckReason::Success, true));
    drop(moderator);
    broker.shutdown().await;

    let broker = start_with(config()).await;
    let mut eve = user5(broker.local_addr(), "eve-phone", "eve").await;
    assert_eq!(
        post(&mut eve, "eve", b"back?", 1).await,
        PublishAckReason::NotAuthorized
    );
    let status = eve.subscribe5(1, &[("rooms/ops/#", opts(QoS::AtMostOnce))]).await;
    assert_eq!(status, [SubscribeAckReason::NotAuthorized]);
    broker.shutdown().await;
}

#[tokio::test]
async fn what_waits_in_a_banned_users_queue_is_not_sent_either() {
    let broker = start_with(config()).await;
    let addr = broker.local_addr();
    let mut moderator = moderator5(addr, "mod-1", "mod").await;
    let mut alice = user5(addr, "alice-1", "alice").await;
    // One message in flight at a time: the second waits in the queue.
    let mut connect = connect5("eve-phone");
    connect.username = Some("eve".into());
    connect.receive_max = std::num::NonZeroU16::new(1);
    let (mut eve, _) = Raw::connect5(addr, connect).await;
    eve.subscribe5(1, &[("rooms/ops/msg/+", opts(QoS::AtLeastOnce))])
        .await;
    assert_eq!(
        post(&mut alice, "alice", b"one", 1).await,
        PublishAckReason::Success
    );
    assert_eq!(
        post(&mut alice, "alice", b"two", 2).await,
        PublishAckReason::Success
    );
    let first = eve.publish5().await;
    assert_eq!(first.payload.as_ref(), b"one");

    let (ack, answer) = moderate(&mut moderator, "mod-1", &req("ban", "eve"), 1).await;
    assert_eq!((ack, answer.ok), (PublishAckReason::Success, true));
    common::chat::ack_publish5(&mut eve, &first).await;
    quiet5(&mut eve, "a message queued before the ban was sent after it").await;
    broker.shutdown().await;
}

/// `$rooms/{room}/members` does not list a banned user; lifted, she is
/// listed again.
#[tokio::test]
async fn a_banned_user_is_not_listed_in_the_room_members() {
    let broker = start_with(config()).await;
    let addr = broker.local_addr();
    let mut alice = user5(addr, "alice-1", "alice").await;
    alice
        .subscribe5(1, &[("$rooms/ops/members", opts(QoS::AtMostOnce))])
        .await;
    let list =
        |p: rmqtt_codec::types::Publish| payloads::from_cbor::<Vec<String>>(&p.payload).expect("a list");
    assert_eq!(list(alice.publish5().await), ["alice", "eve", "mod"]);
    let mut m = moderator5(addr, "mod-1", "mod").await;
    let (ack, answer) = moderate(&mut m, "mod-1", &req("ban", "eve"), 1).await;
    assert_eq!((ack, answer.ok), (PublishAckReason::Success, true));
    assert_eq!(list(alice.publish5().await), ["alice", "mod"]);
    let (ack, answer) = moderate(&mut m, "mod-1", &req("unban", "eve"), 2).await;
    assert_eq!((ack, answer.ok), (PublishAckReason::Success, true));
    assert_eq!(list(alice.publish5().await), ["alice", "eve", "mod"]);
}
