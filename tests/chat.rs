//! The chat contract of `topics.md`, as clients see it: rooms with `seq`,
//! `ts` and `msg-id`, sender checks, de-duplication, offline backlogs from
//! the room log, history, alert rules and retention. Presence, typing and
//! receipts are in `chat_presence.rs`.

mod common;

use std::collections::HashMap;

use bytes::Bytes;
use common::chat::*;
use common::*;
use rmqtt_codec::types::QoS;
use rmqtt_codec::v5::{Packet, PublishAckReason};
use roomq::chat::payloads::{self, HistoryResponse};

#[tokio::test]
async fn members_see_messages_with_seq_ts_and_msg_id_and_311_sees_them_plain() {
    let broker = start().await;
    let addr = broker.local_addr();
    let mut alice = Raw::client5(addr, "alice").await;
    let mut bob = Raw::client5(addr, "bob").await;
    let (mut carol, _) = Raw::connect3(addr, connect3("carol", true)).await;
    alice
        .subscribe5(1, &[("rooms/lobby/msg/+", opts(QoS::AtLeastOnce))])
        .await;
    bob.subscribe5(1, &[("rooms/lobby/msg/+", opts(QoS::AtLeastOnce))])
        .await;
    carol
        .subscribe3(1, &[("rooms/lobby/msg/+", QoS::AtLeastOnce)])
        .await;

    // Each user sends from a second device (same username), so the
    // subscribing connections see every message.
    let mut alice_phone = user5(addr, "alice-phone", "alice").await;
    let mut bob_phone = user5(addr, "bob-phone", "bob").await;
    // A sender's own `seq`/`prev` User Properties are not passed on.
    let ack = send_and_ack(
        &mut alice_phone,
        publish_with(
            "rooms/lobby/msg/alice",
            b"hi bob",
            Some(1),
            &[("msg-id", "a-1"), ("prev", "41")],
        ),
    )
    .await;
    assert_eq!(ack.reason_code, PublishAckReason::Success);
    let ack = send_and_ack(
        &mut bob_phone,
        publish_with("rooms/lobby/msg/bob/b-1", b"hi alice", Some(1), &[]),
    )
    .await;
    assert_eq!(ack.reason_code, PublishAckReason::Success);

    for client in [&mut alice, &mut bob] {
        let mut got = Vec::new();
        while got.len() < 2 {
            if let Packet::Publish(p) = client.recv5().await.packet() {
                ack_publish5(client, &p).await;
                got.push(*p);
            }
        }
        assert_eq!(got[0].topic, "rooms/lobby/msg/alice");
        assert_eq!(
            got[1].topic, "rooms/lobby/msg/bob",
            "the msg-id level is stripped"
        );
        assert_eq!(seq_of(&got[1]), seq_of(&got[0]) + 1, "consecutive seq");
        assert_eq!(user_props(&got[0])["prev"], "0", "the room's first message");
        let prevs = got[0].properties.as_ref().unwrap().user_properties.iter();
        assert_eq!(
            prevs.filter(|(k, _)| k == "prev").count(),
            1,
            "one prev, the broker's"
        );
        assert_eq!(user_props(&got[1])["prev"], seq_of(&got[0]).to_string());
        assert_eq!(user_props(&got[0])["msg-id"], "a-1");
        assert_eq!(user_props(&got[1])["msg-id"], "b-1");
        let ts: u64 = user_props(&got[0])["ts"].parse().unwrap();
        assert!(ts > 1_600_000_000_000, "ts is unix ms");
        assert_eq!(&got[0].payload[..], b"hi bob");
    }
    let first = carol.publish3().await;
    let second = carol.publish3().await;
    assert_eq!(first.topic, "rooms/lobby/msg/alice");
    assert_eq!(&first.payload[..], b"hi bob");
    assert_eq!(second.topic, "rooms/lobby/msg/bob");
    assert!(first.properties.is_none(), "3.1.1 gets no properties");
}

#[tokio::test]
async fn a_spoofed_sender_is_refused_and_not_delivered() {
    let broker = start().await;
    let addr = broker.local_addr();
    let mut watcher = Raw::client5(addr, "watcher").await;
    watcher
        .subscribe5(1, &[("rooms/#", opts(QoS::AtLeastOnce))])
        .await;
    let mut mallory = Raw::client5(addr, "mallory").await;
    let ack = send_and_ack(
        &mut mallory,
        publish_with("rooms/lobby/msg/alice", b"I am alice", Some(1), &[]),
    )
    .await;
    assert_eq!(ack.reason_code, PublishAckReason::NotAuthorized);
    let ack = send_and_ack(
        &mut mallory,
        publish_with(
            "rooms/lobby/typing/alice",
            &payloads::to_cbor(&payloads::Typing { typing: true }),
            Some(2),
            &[],
        ),
    )
    .await;
    assert_eq!(ack.reason_code, PublishAckReason::NotAuthorized);
    assert!(matches!(watcher.recv5_within(QUIET).await, Got::Nothing));
    // A 3.1.1 client's spoofed message is dropped too.
    let (mut dev, _) = Raw::connect3(addr, connect3("dev-1", true)).await;
    dev.send3(rmqtt_codec::v3::Packet::Publish(Box::new(publish(
        "rooms/lobby/msg/alice",
        b"x",
        QoS::AtLeastOnce,
        Some(3),
    ))))
    .await;
    assert!(matches!(
        dev.recv3().await.packet(),
        rmqtt_codec::v3::Packet::PublishAck { .. }
    ));
    assert!(matches!(watcher.recv5_within(QUIET).await, Got::Nothing));
    assert_eq!(broker.chat_counters().refused.get(), 3);
}

#[tokio::test]
async fn closed_rooms_refuse_non_members() {
    let mut config = test_config();
    config.chat.rooms_default = roomq::config::RoomsDefault::Closed;
    config.rooms = vec![roomq::config::RoomConfig {
        name: "ops".into(),
        members: vec!["alice".into()],
        open: false,
        moderators: vec![],
    }];
    let broker = start_with(config).await;
    let addr = broker.local_addr();
    let mut alice = Raw::client5(addr, "alice").await;
    let mut bob = Raw::client5(addr, "bob").await;
    let ok = send_and_ack(
        &mut alice,
        publish_with("rooms/ops/msg/alice", b"x", Some(1), &[]),
    )
    .await;
    assert_eq!(ok.reason_code, PublishAckReason::Success);
    let no = send_and_ack(&mut bob, publish_with("rooms/ops/msg/bob", b"x", Some(1), &[])).await;
    assert_eq!(no.reason_code, PublishAckReason::NotAuthorized);
    let undeclared = send_and_ack(
        &mut alice,
        publish_with("rooms/other/msg/alice", b"x", Some(2), &[]),
    )
    .await;
    assert_eq!(undeclared.reason_code, PublishAckReason::NotAuthorized);
    // The member list is retained under $rooms/, out of reach of `#`,
    // and readable by the room's members (alice, on another device).
    let mut lister = common::chat::user5(addr, "alice-lister", "alice").await;
    lister
        .subscribe5(1, &[("$rooms/ops/members", opts(QoS::AtLeastOnce))])
        .await;
    let members = lister.publish5().await;
    let members: Vec<String> = payloads::from_cbor(&members.payload).expect("CBOR list");
    assert_eq!(members, vec!["alice".to_string()]);
}

#[tokio::test]
async fn a_msg_id_resent_from_a_new_connection_and_a_dup_packet_id_deliver_once() {
    let broker = start().await;
    let addr = broker.local_addr();
    let mut sub = Raw::client5(addr, "sub").await;
    sub.subscribe5(
        1,
        &[
            ("rooms/r/msg/+", opts(QoS::AtLeastOnce)),
            ("plain/t", opts(QoS::AtLeastOnce)),
        ],
    )
    .await;

    let mut dev = Raw::client5(addr, "dev").await;
    let first = send_and_ack(
        &mut dev,
        publish_with("rooms/r/msg/dev", b"alarm", Some(1), &[("msg-id", "x1")]),
    )
    .await;
    assert_eq!(first.reason_code, PublishAckReason::Success);
    drop(dev);
    let mut dev = Raw::client5(addr, "dev").await;
    let again = send_and_ack(
        &mut dev,
        publish_with("rooms/r/msg/dev", b"alarm", Some(7), &[("msg-id", "x1")]),
    )
    .await;
    assert_eq!(again.reason_code, PublishAckReason::Success, "acknowledged again");
    // Also through the topic level form.
    let again = send_and_ack(
        &mut dev,
        publish_with("rooms/r/msg/dev/x1", b"alarm", Some(8), &[]),
    )
    .await;
    assert_eq!(again.reason_code, PublishAckReason::Success);

    // De-dup by packet id, on a plain topic: the DUP resend is acknowledged
    // and not delivered again.
    let p = publish("plain/t", b"once", QoS::AtLeastOnce, Some(42));
    send_and_ack(&mut dev, p.clone()).await;
    let mut resend = p.clone();
    resend.dup = true;
    let ack = send_and_ack(&mut dev, resend).await;
    assert_eq!(ack.packet_id, pid(42));
    // Same id, DUP, different payload: a new message.
    let mut other = publish("plain/t", b"twice", QoS::AtLeastOnce, Some(42));
    other.dup = true;
    send_and_ack(&mut dev, other).await;

    let mut got = Vec::new();
    while let Got::Packet(Packet::Publish(p)) = sub.recv5_within(QUIET * 2).await {
        ack_publish5(&mut sub, &p).await;
        got.push((p.topic.to_string(), p.payload.clone()));
    }
    assert_eq!(
        got,
        vec![
            ("rooms/r/msg/dev".to_string(), Bytes::from_static(b"alarm")),
            ("plain/t".to_string(), Bytes::from_static(b"once")),
            ("plain/t".to_string(), Bytes::from_static(b"twice")),
        ]
    );
    assert_eq!(broker.chat_counters().duplicates.get(), 3);
}

/// Reconnects a persistent member and reads `n` messages (acknowledging
/// each); returns their payloads and seqs.
async fn member_returns(addr: std::net::SocketAddr, id: &str, n: usize) -> (Raw, Vec<(String, u64)>) {
    let (mut m, ack) = Raw::connect5(addr, persistent5(id)).await;
    assert!(ack.session_present);
    let mut got = Vec::new();
    while got.len() < n {
        let p = m.publish5().await;
        ack_publish5(&mut m, &p).await;
        got.push((String::from_utf8_lossy(&p.payload).into_owned(), seq_of(&p)));
    }
    (m, got)
}

fn assert_in_order(got: &[(String, u64)], n: u32) {
    let payloads: Vec<String> = got.iter().map(|(p, _)| p.clone()).collect();
    let expected: Vec<String> = (0..n).map(|i| i.to_string()).collect();
    assert_eq!(payloads, expected, "all messages, in order, once");
    assert!(got.windows(2).all(|w| w[1].1 == w[0].1 + 1), "consecutive seq");
}

#[tokio::test]
async fn an_offline_member_gets_the_backlog_in_order_exactly_once() {
    let broker = start().await;
    let addr = broker.local_addr();
    post_many(addr, "early", "team", 3).await; // history before joining is not replayed
    member_leaves(addr, "mia", "rooms/team/msg/+").await;
    post_many(addr, "zed", "team", 500).await;
    let (mut mia, got) = member_returns(addr, "mia", 500).await;
    assert_in_order(&got, 500);
    assert!(
        matches!(mia.recv5_within(QUIET).await, Got::Nothing),
        "nothing twice"
    );
}

#[tokio::test]
async fn store_writes_per_room_message_do_not_grow_with_offline_members() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_with(sled_config(dir.path())).await;
    let addr = broker.local_addr();
    let mut per_message = Vec::new();
    for (room, members) in [("small", 1usize), ("big", 1000)] {
        for i in 0..members {
            member_leaves(addr, &format!("{room}-{i}"), &format!("rooms/{room}/msg/+")).await;
        }
        // Connect first and let the members' departures (session records,
        // presence) finish writing, so the window holds only the posts.
        let mut poster = Raw::client5(addr, &format!("poster-{room}")).await;
        // The first post opens the room (one write of who opened it, per
        // room, not per message): before the window too.
        let topic = format!("rooms/{room}/msg/poster-{room}");
        let ack = send_and_ack(&mut poster, publish_with(&topic, b"open", Some(999), &[])).await;
        assert_eq!(ack.reason_code, PublishAckReason::Success);
        let mut before = broker.store_writes();
        loop {
            tokio::time::sleep(QUIET).await;
            let now = broker.store_writes();
            if now == before {
                break;
            }
            before = now;
        }
        for i in 0..200u16 {
            let topic = format!("rooms/{room}/msg/poster-{room}");
            let ack = send_and_ack(
                &mut poster,
                publish_with(&topic, i.to_string().as_bytes(), Some(i + 1), &[]),
            )
            .await;
            assert_eq!(ack.reason_code, PublishAckReason::Success);
        }
        let writes = broker.store_writes() - before;
        per_message.push(writes as f64 / 200.0);
    }
    println!(
        "store writes per room message: 1 offline member {}, 1000 offline members {}",
        per_message[0], per_message[1]
    );
    assert_eq!(
        per_message,
        vec![1.0, 1.0],
        "one write per room message, whatever the members"
    );
    let (_, got) = member_returns(addr, "big-999", 201).await;
    assert_eq!(got[0].0, "open");
    assert_in_order(&got[1..], 200);
}

#[tokio::test]
async fn history_windows_for_5_and_311_requesters() {
    let broker = start().await;
    let addr = broker.local_addr();
    post_many(addr, "hist", "h", 20).await;
    let request = |before: Option<u64>, after: Option<u64>, limit: Option<u64>| {
        let mut m = HashMap::new();
        if let Some(b) = before {
            m.insert("before", b);
        }
        if let Some(a) = after {
            m.insert("after", a);
        }
        if let Some(l) = limit {
            m.insert("limit", l);
        }
        payloads::to_cbor(&m)
    };
    let mut asker = Raw::client5(addr, "asker").await;
    asker
        .subscribe5(1, &[("replies/asker", opts(QoS::AtLeastOnce))])
        .await;
    let mut ask5 = async |body: Vec<u8>| -> (HistoryResponse, Option<Bytes>) {
        let mut p = publish_with("$history/rooms/h", &body, Some(1), &[]);
        if let Some(props) = p.properties.as_mut() {
            props.response_topic = Some("replies/asker".into());
            props.correlation_data = Some(Bytes::from_static(b"corr-1"));
        }
        send_and_ack(&mut asker, p).await;
        let reply = asker.publish5().await;
        ack_publish5(&mut asker, &reply).await;
        let corr = reply.properties.as_ref().and_then(|p| p.correlation_data.clone());
        (
            payloads::from_cbor(&reply.payload).expect("history-response"),
            corr,
        )
    };
    let seqs = |r: &HistoryResponse| r.messages.iter().map(|m| m.seq).collect::<Vec<_>>();
    let (latest, corr) = ask5(request(None, None, Some(5))).await;
    assert_eq!(seqs(&latest), vec![16, 17, 18, 19, 20]);
    assert!(latest.more);
    assert_eq!(corr.as_deref(), Some(&b"corr-1"[..]));
    assert_eq!(latest.messages[0].body.as_deref(), Some(&b"15"[..]));
    assert_eq!(latest.messages[0].sender, "hist");
    let (before, _) = ask5(request(Some(4), None, None)).await;
    assert_eq!(seqs(&before), vec![1, 2, 3]);
    assert!(!before.more);
    let (after, _) = ask5(request(None, Some(17), Some(10))).await;
    assert_eq!(seqs(&after), vec![18, 19, 20]);
    let (between, _) = ask5(request(Some(10), Some(5), Some(2))).await;
    assert_eq!(seqs(&between), vec![6, 7]);
    assert!(between.more);

    // 3.1.1: the answer goes to users/{requester}/history/{room}.
    let (mut dev, _) = Raw::connect3(addr, connect3("dev", true)).await;
    dev.subscribe3(1, &[("users/dev/history/#", QoS::AtLeastOnce)])
        .await;
    dev.send3(rmqtt_codec::v3::Packet::Publish(Box::new({
        let mut p = publish("$history/rooms/h", b"", QoS::AtLeastOnce, Some(2));
        p.payload = Bytes::from(request(None, Some(0), Some(3)));
        p
    })))
    .await;
    let answer = loop {
        match dev.recv3().await.packet() {
            rmqtt_codec::v3::Packet::Publish(p) => break *p,
            rmqtt_codec::v3::Packet::PublishAck { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(answer.topic, "users/dev/history/h");
    let answer: HistoryResponse = payloads::from_cbor(&answer.payload).unwrap();
    assert_eq!(seqs(&answer), vec![1, 2, 3]);
    assert!(answer.more);
}

#[tokio::test]
async fn an_alert_rule_turns_a_mosquitto_pub_into_a_room_message() {
    let mut config = test_config();
    config.alerts = vec![roomq::config::AlertRule {
        topic: "alerts/+/critical".into(),
        room: "ops".into(),
        publishers: Vec::new(),
        hmac_key_file: None,
    }];
    let broker = start_with(config).await;
    let addr = broker.local_addr();
    let mut ops = Raw::client5(addr, "ops-watch").await;
    ops.subscribe5(1, &[("rooms/ops/msg/+", opts(QoS::AtLeastOnce))])
        .await;
    let status = tokio::process::Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &addr.port().to_string(),
            "-V",
            "mqttv311",
            "-q",
            "1",
            "-i",
            "boiler-7",
        ])
        .args(["-t", "alerts/boiler-7/critical", "-m", "pressure high"])
        .status()
        .await
        .expect("mosquitto_pub runs (scripts/test installs mosquitto-clients)");
    assert!(status.success());
    let alert = ops.publish5().await;
    assert_eq!(alert.topic, "rooms/ops/msg/boiler-7");
    assert_eq!(&alert.payload[..], b"pressure high");
    assert_eq!(seq_of(&alert), 1);
}

#[tokio::test]
async fn backlog_seq_and_msg_ids_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_with(sled_config(dir.path())).await;
    let addr = broker.local_addr();
    member_leaves(addr, "max", "rooms/keep/msg/+").await;
    post_many(addr, "poster", "keep", 500).await;
    let mut dev = Raw::client5(addr, "dev").await;
    send_and_ack(
        &mut dev,
        publish_with("rooms/keep/msg/dev/once", b"500", Some(1), &[]),
    )
    .await;
    drop(dev);
    broker.shutdown().await;

    let broker = start_with(sled_config(dir.path())).await;
    let addr = broker.local_addr();
    // The same msg-id after the restart is acknowledged, not stored again.
    let mut dev = Raw::client5(addr, "dev").await;
    let ack = send_and_ack(
        &mut dev,
        publish_with("rooms/keep/msg/dev/once", b"500", Some(1), &[]),
    )
    .await;
    assert_eq!(ack.reason_code, PublishAckReason::Success);
    // seq continues after the restart.
    send_and_ack(&mut dev, publish_with("rooms/keep/msg/dev", b"501", Some(2), &[])).await;
    let (mut max, got) = member_returns(addr, "max", 502).await;
    assert_in_order(&got, 502);
    assert_eq!(got.last().map(|g| g.1), Some(502));
    assert!(
        matches!(max.recv5_within(QUIET).await, Got::Nothing),
        "nothing twice"
    );
    assert_eq!(broker.chat_counters().duplicates.get(), 1);
}

#[tokio::test]
async fn room_retention_trims_the_log_and_a_stale_cursor_resumes_at_the_oldest_kept() {
    let mut config = test_config();
    config.chat.room_max_messages = 10;
    let broker = start_with(config).await;
    let addr = broker.local_addr();
    member_leaves(addr, "slow", "rooms/short/msg/+").await;
    // Trimming runs every 64 appends: at seq 64 the log keeps 55..=64.
    post_many(addr, "talker", "short", 64).await;
    let (mut slow, _) = Raw::connect5(addr, persistent5("slow")).await;
    let first = slow.publish5().await;
    assert_eq!(
        seq_of(&first),
        55,
        "resumes at the oldest kept; the gap in seq shows the loss"
    );
    let mut last = first;
    for _ in 55..64 {
        ack_publish5(&mut slow, &last).await;
        last = slow.publish5().await;
    }
    assert_eq!(seq_of(&last), 64);
}

/// With `durability = "flush"` a room message is delivered after its group
/// commit; the PUBACK must not overtake it: a history request sent right
/// after the PUBACK finds the message, every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_right_after_the_puback_has_the_message() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_with(sled_config(dir.path())).await;
    let addr = broker.local_addr();
    let mut poster = Raw::client5(addr, "rw").await;
    poster
        .subscribe5(1, &[("replies/rw", opts(QoS::AtLeastOnce))])
        .await;
    for i in 1..=50u16 {
        let ack = send_and_ack(
            &mut poster,
            publish_with("rooms/rw/msg/rw", i.to_string().as_bytes(), Some(i), &[]),
        )
        .await;
        assert_eq!(ack.reason_code, PublishAckReason::Success);
        let request: HashMap<&str, u64> = [("limit", 1)].into();
        let mut ask = publish_with(
            "$history/rooms/rw",
            &payloads::to_cbor(&request),
            Some(1000 + i),
            &[],
        );
        if let Some(p) = ask.properties.as_mut() {
            p.response_topic = Some("replies/rw".into());
        }
        poster.send5(Packet::Publish(Box::new(ask))).await;
        // The request's PUBACK and the reply, in either order.
        let (mut reply, mut acked) = (None, false);
        while reply.is_none() || !acked {
            match poster.recv5().await.packet() {
                Packet::Publish(p) => reply = Some(*p),
                Packet::PublishAck(_) => acked = true,
                other => panic!("expected the history reply, got {other:?}"),
            }
        }
        let reply = reply.unwrap();
        ack_publish5(&mut poster, &reply).await;
        let answer: HistoryResponse = payloads::from_cbor(&reply.payload).unwrap();
        let newest = answer.messages.last().map(|m| m.seq);
        assert_eq!(newest, Some(u64::from(i)), "history after PUBACK {i}");
    }
}

/// `room_max_messages_per_minute` is per identity and per room: beyond it
/// a post gets 0x97 (5.0 has no 0x96 in a PUBACK) and is counted, while
/// another user in that room and the same user in another room post on.
#[tokio::test]
async fn a_user_over_her_room_rate_is_refused_in_that_room_only() {
    let mut config = test_config();
    config.chat.room_max_messages_per_minute = 3;
    let broker = start_with(config).await;
    let addr = broker.local_addr();
    let post = |room: &str, sender: &str, id: u16| {
        publish_with(&format!("rooms/{room}/msg/{sender}"), b"hi", Some(id), &[])
    };
    let mut alice = Raw::client5(addr, "alice").await;
    for id in 1..=3 {
        let ack = send_and_ack(&mut alice, post("lobby", "alice", id)).await;
        assert_eq!(ack.reason_code, PublishAckReason::Success);
    }
    let ack = send_and_ack(&mut alice, post("lobby", "alice", 4)).await;
    assert_eq!(ack.reason_code, PublishAckReason::QuotaExceeded);
    assert_eq!(broker.chat_counters().room_rate_refused.get(), 1);

    let ack = send_and_ack(&mut alice, post("garden", "alice", 5)).await;
    assert_eq!(ack.reason_code, PublishAckReason::Success);
    let mut bob = Raw::client5(addr, "bob").await;
    let ack = send_and_ack(&mut bob, post("lobby", "bob", 1)).await;
    assert_eq!(ack.reason_code, PublishAckReason::Success);
    // A second connection of alice shares her budget in the room.
    let mut alice_phone = Raw::client5(addr, "alice").await;
    let ack = send_and_ack(&mut alice_phone, post("lobby", "alice", 6)).await;
    assert_eq!(ack.reason_code, PublishAckReason::QuotaExceeded);
    assert_eq!(broker.chat_counters().room_rate_refused.get(), 2);
}
