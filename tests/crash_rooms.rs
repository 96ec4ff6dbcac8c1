//! Commit before delivery, checked with SIGKILL: publishers post into one
//! room at QoS 0 and at QoS 1, each message with a unique msg-id, while a
//! live 5.0 subscriber records the (`seq`, `msg-id`) of every message it
//! gets. The `roomq` binary is killed at random moments and restarted on
//! the same data directory, three times; then the room's history is read.
//!
//! What a member may rely on (`topics.md`): a `seq` is never carried by two
//! messages, and a message a member saw is in the room's history under the
//! `seq` it was seen with. Before commit-before-delivery, a message was
//! delivered before its room-log record was on disk: a crash erased it from
//! history and its `seq` went to the next message.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use rand::Rng;
use rmqtt_codec::types::{Publish, QoS};
use rmqtt_codec::v5::{self, Packet};
use roomq::chat::payloads::{self, HistoryResponse};
use tokio::sync::watch;

const ROOM: &str = "crash";
const KILLS: usize = 3;
/// Publishers per QoS.
const PUBLISHERS: usize = 2;

/// What the live subscriber saw: msg-id per `seq`, and every clash.
#[derive(Default)]
struct Seen {
    by_seq: BTreeMap<u64, String>,
    clashes: Vec<(u64, String, String)>,
}

impl Seen {
    fn record(&mut self, seq: u64, msg_id: String) {
        match self.by_seq.get(&seq) {
            Some(known) if *known != msg_id => self.clashes.push((seq, known.clone(), msg_id)),
            Some(_) => {}
            None => {
                self.by_seq.insert(seq, msg_id);
            }
        }
    }
}

fn user_property<'p>(p: &'p Publish, key: &str) -> Option<&'p str> {
    p.properties
        .as_ref()?
        .user_properties
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| &**v)
}

/// A room message with a msg-id as the last topic level.
fn post(sender: &str, msg_id: &str, qos: QoS, packet_id: Option<u16>) -> Publish {
    let mut p = publish("", b"", qos, packet_id);
    p.topic = format!("rooms/{ROOM}/msg/{sender}/{msg_id}").into();
    p.payload = Bytes::from(msg_id.to_string());
    p
}

/// Connects and subscribes to the room; `None` while the broker is down.
async fn subscriber(addr: SocketAddr) -> Option<Raw> {
    let (mut raw, _) = Raw::try_connect5(addr, connect5("crash-rooms-sub")).await?;
    let subscribe = v5::Subscribe {
        packet_id: pid(1),
        id: None,
        user_properties: Vec::new(),
        topic_filters: vec![(format!("rooms/{ROOM}/msg/+").into(), opts(QoS::AtLeastOnce))],
    };
    raw.send5(Packet::Subscribe(subscribe)).await;
    match raw.recv5().await {
        Got::Packet(Packet::SubscribeAck(_)) => Some(raw),
        _ => None,
    }
}

/// The live member: records every room message until `stop` and a quiet
/// second.
async fn watch_room(seen: Arc<Mutex<Seen>>, stop: Arc<AtomicBool>, addr_rx: watch::Receiver<SocketAddr>) {
    let mut conn = None;
    let mut quiet = 0;
    loop {
        let Some(raw) = conn.as_mut() else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let addr = *addr_rx.borrow();
            conn = subscriber(addr).await;
            continue;
        };
        match raw.recv5_within(Duration::from_millis(500)).await {
            Got::Packet(Packet::Publish(p)) => {
                quiet = 0;
                let seq = user_property(&p, "seq").and_then(|s| s.parse().ok());
                let msg_id = user_property(&p, "msg-id").map(str::to_string);
                let (Some(seq), Some(msg_id)) = (seq, msg_id) else {
                    panic!("room message without seq or msg-id: {p:?}");
                };
                seen.lock().unwrap().record(seq, msg_id);
                if let Some(id) = p.packet_id {
                    raw.send5(Packet::PublishAck(v5::PublishAck {
                        packet_id: id,
                        ..Default::default()
                    }))
                    .await;
                }
            }
            Got::Packet(_) => {}
            Got::Closed => conn = None,
            Got::Nothing if stop.load(Ordering::Relaxed) => {
                quiet += 1;
                if quiet >= 2 {
                    return;
                }
            }
            Got::Nothing => {}
        }
    }
}

/// A QoS 0 publisher: a message every millisecond, never waiting.
async fn post_qos0(sender: String, stop: Arc<AtomicBool>, addr_rx: watch::Receiver<SocketAddr>) -> usize {
    let mut sent = 0;
    let mut conn: Option<Raw> = None;
    while !stop.load(Ordering::Relaxed) {
        let Some(raw) = conn.as_mut() else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let addr = *addr_rx.borrow();
            conn = Raw::try_connect5(addr, connect5(&sender)).await.map(|(r, _)| r);
            continue;
        };
        let msg = post(&sender, &format!("{sender}-{sent}"), QoS::AtMostOnce, None);
        if raw.try_send5(Packet::Publish(Box::new(msg))).await.is_err() {
            conn = None;
            continue;
        }
        sent += 1;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    sent
}

/// A QoS 1 publisher: one message at a time; a message without PUBACK is
/// sent again (same msg-id) on the next connection. Returns the acknowledged
/// msg-ids.
async fn post_qos1(
    sender: String,
    stop: Arc<AtomicBool>,
    addr_rx: watch::Receiver<SocketAddr>,
) -> Vec<String> {
    let mut acked = Vec::new();
    let mut conn: Option<Raw> = None;
    let mut packet_id = 0u16;
    while !stop.load(Ordering::Relaxed) {
        let Some(raw) = conn.as_mut() else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let addr = *addr_rx.borrow();
            conn = Raw::try_connect5(addr, connect5(&sender)).await.map(|(r, _)| r);
            continue;
        };
        packet_id = packet_id % 60000 + 1;
        let msg_id = format!("{sender}-{}", acked.len());
        let msg = post(&sender, &msg_id, QoS::AtLeastOnce, Some(packet_id));
        if raw.try_send5(Packet::Publish(Box::new(msg))).await.is_err() {
            conn = None;
            continue;
        }
        match raw.recv5_within(Duration::from_secs(5)).await {
            Got::Packet(Packet::PublishAck(a)) if a.packet_id.get() == packet_id => {
                assert_eq!(a.reason_code, v5::PublishAckReason::Success, "{msg_id}");
                acked.push(msg_id);
            }
            _ => conn = None,
        }
    }
    acked
}

/// The whole room log, read through history requests, oldest first.
async fn read_history(addr: SocketAddr) -> Vec<payloads::HistoryMessage> {
    let mut asker = Raw::client5(addr, "crash-rooms-history").await;
    asker
        .subscribe5(1, &[("replies/crash-rooms", opts(QoS::AtLeastOnce))])
        .await;
    let mut all = Vec::new();
    let mut after = 0u64;
    for page in 1u16.. {
        let request: HashMap<&str, u64> = [("after", after), ("limit", 500)].into();
        let mut ask = publish(
            &format!("$history/rooms/{ROOM}"),
            b"",
            QoS::AtLeastOnce,
            Some(page),
        );
        ask.payload = Bytes::from(payloads::to_cbor(&request));
        if let Some(p) = ask.properties.as_mut() {
            p.response_topic = Some("replies/crash-rooms".into());
        }
        asker.send5(Packet::Publish(Box::new(ask))).await;
        let reply = loop {
            match asker.recv5().await.packet() {
                Packet::Publish(p) => break p,
                Packet::PublishAck(a) => assert_eq!(a.reason_code, v5::PublishAckReason::Success),
                other => panic!("expected the history reply, got {other:?}"),
            }
        };
        if let Some(id) = reply.packet_id {
            asker
                .send5(Packet::PublishAck(v5::PublishAck {
                    packet_id: id,
                    ..Default::default()
                }))
                .await;
        }
        let answer: HistoryResponse = payloads::from_cbor(&reply.payload).expect("history-response");
        after = answer.messages.last().map_or(after, |m| m.seq);
        all.extend(answer.messages);
        if !answer.more {
            break;
        }
    }
    all
}

/// What one run left: what the member saw, the room's history after the
/// last restart, the QoS 1 msg-ids acknowledged and the QoS 0 messages sent.
struct Outcome {
    seen: Seen,
    history: Vec<payloads::HistoryMessage>,
    acked: Vec<String>,
    sent0: usize,
}

/// Posts at QoS 0 and 1 with a live member while the binary is killed
/// `KILLS` times; `config` is the broker's configuration file.
async fn run_with_kills(config: &str) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let config_file = dir.path().join("roomq.toml");
    std::fs::write(&config_file, config).unwrap();
    let data = dir.path().join("data");
    let start = |port| {
        spawn_roomq(
            port,
            &[
                "--data-dir".as_ref(),
                data.as_os_str(),
                "--config".as_ref(),
                config_file.as_os_str(),
            ],
        )
    };
    let (mut child, addr) = start(0);
    let port = addr.port();
    let (addr_tx, addr_rx) = watch::channel(addr);
    let stop = Arc::new(AtomicBool::new(false));

    let seen: Arc<Mutex<Seen>> = Arc::default();
    let member = tokio::spawn(watch_room(seen.clone(), stop.clone(), addr_rx.clone()));
    let qos0: Vec<_> = (0..PUBLISHERS)
        .map(|i| tokio::spawn(post_qos0(format!("q0-{i}"), stop.clone(), addr_rx.clone())))
        .collect();
    let qos1: Vec<_> = (0..PUBLISHERS)
        .map(|i| tokio::spawn(post_qos1(format!("q1-{i}"), stop.clone(), addr_rx.clone())))
        .collect();

    let mut rng = rand::rng();
    for kill in 1..=KILLS {
        tokio::time::sleep(Duration::from_millis(rng.random_range(700..2000))).await;
        child.kill().expect("SIGKILL");
        child.wait().unwrap();
        let (next, addr) = start(port);
        child = next;
        addr_tx.send_replace(addr);
        eprintln!(
            "kill {kill}: {} messages seen so far",
            seen.lock().unwrap().by_seq.len()
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let mut sent0 = 0;
    for p in qos0 {
        sent0 += p.await.unwrap();
    }
    let mut acked = Vec::new();
    for p in qos1 {
        acked.extend(p.await.unwrap());
    }
    tokio::time::timeout(Duration::from_secs(60), member)
        .await
        .expect("the member's last messages arrive")
        .unwrap();
    let last_addr = *addr_rx.borrow();
    let history = read_history(last_addr).await;
    child.kill().ok();
    child.wait().ok();
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    assert!(acked.len() > 50 && sent0 > 500, "the publishers made progress");
    assert!(
        seen.by_seq.len() > 500,
        "the member saw messages across the crashes"
    );
    Outcome {
        seen,
        history,
        acked,
        sent0,
    }
}

impl Outcome {
    fn report(&self, mode: &str) -> Findings {
        let logged: BTreeMap<u64, &str> = self
            .history
            .iter()
            .map(|m| (m.seq, m.msg_id.as_deref().unwrap_or_default()))
            .collect();
        let missing: Vec<_> = self
            .seen
            .by_seq
            .iter()
            .filter(|(seq, id)| logged.get(seq) != Some(&id.as_str()))
            .map(|(seq, id)| format!("{seq}={id} (history: {:?})", logged.get(seq)))
            .collect();
        // A seq the member saw that history gives to another message.
        let reused: Vec<_> = self
            .seen
            .by_seq
            .iter()
            .filter(|(seq, id)| logged.get(seq).is_some_and(|l| *l != id.as_str()))
            .map(|(seq, id)| format!("{seq}: seen {id}, history {:?}", logged.get(seq)))
            .chain(
                self.seen
                    .clashes
                    .iter()
                    .map(|(s, a, b)| format!("{s}: seen {a}, then {b}")),
            )
            .collect();
        let mut ids_in_history = HashSet::new();
        let twice: Vec<_> = self
            .history
            .iter()
            .filter_map(|m| m.msg_id.clone())
            .filter(|id| !ids_in_history.insert(id.clone()))
            .collect();
        // Each message's `prev` is the message before it in history: a
        // gap (messages lost in buffered mode) shows as a gap, not as a
        // missing message.
        let wrong_prev: Vec<_> = self
            .history
            .windows(2)
            .filter(|w| w[1].prev != w[0].seq)
            .map(|w| {
                format!(
                    "seq {} has prev {}, history's previous is {}",
                    w[1].seq, w[1].prev, w[0].seq
                )
            })
            .collect();
        let unlogged_acks: Vec<_> = self
            .acked
            .iter()
            .filter(|id| !ids_in_history.contains(*id))
            .cloned()
            .collect();
        eprintln!(
            "crash_rooms ({mode}): {} QoS 0 sent, {} QoS 1 acknowledged, {} seen live, {} in history, \
             {} seq reused, {} seen but not in history, {} msg-ids twice in history, {} acknowledged not in history, \
             {} wrong prev",
            self.sent0,
            self.acked.len(),
            self.seen.by_seq.len(),
            self.history.len(),
            reused.len(),
            missing.len(),
            twice.len(),
            unlogged_acks.len(),
            wrong_prev.len(),
        );
        Findings {
            reused,
            missing,
            twice,
            unlogged_acks,
            wrong_prev,
        }
    }
}

/// What broke a promise, each with up to ten examples in the assertion.
struct Findings {
    reused: Vec<String>,
    missing: Vec<String>,
    twice: Vec<String>,
    unlogged_acks: Vec<String>,
    wrong_prev: Vec<String>,
}

/// Fails with up to ten examples when `list` is not empty.
fn assert_none(list: &[String], what: &str) {
    assert!(list.is_empty(), "{what}: {:?}", &list[..list.len().min(10)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_mode_no_seq_is_reused_and_nothing_seen_vanishes_across_sigkills() {
    let findings = run_with_kills("durability = \"flush\"\n").await.report("flush");
    assert_none(&findings.reused, "a seq carried two messages");
    assert_none(&findings.missing, "seen live but not in history under that seq");
    assert_none(&findings.twice, "a msg-id stored twice");
    assert_none(&findings.unlogged_acks, "acknowledged but not in history");
    assert_none(&findings.wrong_prev, "prev is not the previous message");
}

/// `durability = "buffered"` delivers before the disk has a message, so a
/// crash may lose what a member saw; its `seq` still never comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_mode_never_reuses_a_seq_across_sigkills() {
    let config = "durability = \"buffered\"\nflush_interval_ms = 200\n";
    let findings = run_with_kills(config).await.report("buffered");
    assert_none(&findings.reused, "a seq carried two messages");
    assert_none(&findings.twice, "a msg-id stored twice");
    assert_none(&findings.wrong_prev, "prev is not the previous message");
}
