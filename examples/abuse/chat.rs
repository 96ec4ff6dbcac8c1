//! Loads of the issue "Every identity has a budget" on the chat layer (3.1.1
//! clients): history answers nobody reads (finding 1), one big message to
//! many offline sessions (3), and a SUBSCRIBE among many rooms (6).

use std::time::{Duration, Instant};

use bytes::Bytes;
use rmqtt_codec::types::QoS;
use rmqtt_codec::v3::Packet;
use tokio::net::TcpStream;

use crate::client::{pid, Client};
use crate::{mib, ms, proc_status, settle, walk_size, Broker, Extra, Probe};

/// CBOR `{limit: 500}` (topics.md, `history-request`): a map of one pair,
/// text key "limit", unsigned 500.
const LIMIT_500: &[u8] = b"\xa1\x65limit\x19\x01\xf4";

/// Mallory fills room `big` with `n` messages of 255 KiB (just under
/// `max_room_message_bytes`); how many were stored.
async fn fill_room(mallory: &mut Client, n: usize) -> usize {
    let body = Bytes::from(vec![b'h'; 255 * 1024]);
    let mut stored = 0;
    for i in 0..n {
        let id = (i % 60_000) as u16 + 1;
        mallory
            .publish("rooms/big/msg/mallory", body.clone(), QoS::AtLeastOnce, id, false)
            .await;
        if mallory.puback(id, Duration::from_secs(30)).await {
            stored += 1;
        }
    }
    stored
}

/// `count` connections of the identity mallory subscribed to where 3.1.1
/// history answers go, at `qos`.
async fn readers(broker: &Broker, count: usize, qos: QoS, name: &str) -> Vec<Client> {
    let mut all = Vec::new();
    for i in 0..count {
        let id = format!("{name}-{i}");
        if let Some((mut c, true)) = Client::connect(broker.addr, &id, Some(("mallory", ""))).await {
            c.subscribe_qos(1, "users/mallory/history/#", qos).await;
            c.suback(Duration::from_secs(10)).await;
            all.push(c);
        }
    }
    all
}

/// The number of messages and `more` of a CBOR `history-response`.
fn answer_shape(payload: &[u8]) -> (usize, bool) {
    use ciborium::Value;
    let Ok(Value::Map(fields)) = ciborium::de::from_reader::<Value, _>(payload) else {
        return (0, false);
    };
    let mut shape = (0, false);
    for (k, v) in fields {
        match (k.as_text(), v) {
            (Some("messages"), Value::Array(m)) => shape.0 = m.len(),
            (Some("more"), Value::Bool(b)) => shape.1 = b,
            _ => {}
        }
    }
    shape
}

/// Finding 1 (history-flood): 200 messages of 255 KiB in one room, then
/// one history request for 500 from mallory, whose 3.1.1 answer goes to
/// `users/mallory/history/big`, where 8 connections of mallory never read
/// (and one more reads, to see what the answer was).
pub async fn history_flood(broker: &Broker) -> Extra {
    let Some((mut mallory, true)) = Client::connect(broker.addr, "mallory", None).await else {
        return "no connection".into();
    };
    let stored = fill_room(&mut mallory, broker.n(200)).await;
    let stuck = readers(broker, 8, QoS::AtMostOnce, "stuck").await;
    let mut seen = readers(broker, 1, QoS::AtMostOnce, "seen").await;
    let started = Instant::now();
    mallory
        .publish(
            "$history/rooms/big",
            Bytes::from_static(LIMIT_500),
            QoS::AtMostOnce,
            0,
            false,
        )
        .await;
    let mut answer = "no answer within 60 s".to_string();
    if let Some(reader) = seen.first_mut() {
        while let Some(p) = reader.recv(Duration::from_secs(60)).await {
            if let Packet::Publish(p) = p {
                let (messages, more) = answer_shape(&p.payload);
                answer = format!(
                    "answer {messages} messages ({} MiB, more: {more}) after {:.1} s",
                    p.payload.len() / (1024 * 1024),
                    started.elapsed().as_secs_f64()
                );
                break;
            }
        }
    }
    let rss = settle(broker.pid(), Duration::from_secs(20)).await;
    drop(stuck);
    format!(
        "{stored} of {} × 255 KiB stored; 1 request for 500, {} readers never read: {answer}; \
         RSS then {} MiB",
        broker.n(200),
        8,
        mib(rss)
    )
}

/// Finding 1, the variant: 24 QoS 1 history requests whose answers (QoS 1)
/// go to a connection of mallory that reads them but never PUBACKs.
pub async fn history_unacked(broker: &Broker) -> Extra {
    let Some((mut mallory, true)) = Client::connect(broker.addr, "mallory", None).await else {
        return "no connection".into();
    };
    let stored = fill_room(&mut mallory, broker.n(200)).await;
    let mut unacking = readers(broker, 1, QoS::AtLeastOnce, "unacking").await;
    let Some(reader) = unacking.first_mut() else {
        return "no reader".into();
    };
    let requests = 24u16;
    for id in 1..=requests {
        mallory
            .publish(
                "$history/rooms/big",
                Bytes::from_static(LIMIT_500),
                QoS::AtLeastOnce,
                id,
                false,
            )
            .await;
    }
    let mut acked = 0;
    for id in 1..=requests {
        if mallory.puback(id, Duration::from_secs(60)).await {
            acked += 1;
        }
    }
    let (mut answers, mut bytes) = (0, 0);
    while let Some(p) = reader.recv(Duration::from_secs(5)).await {
        if let Packet::Publish(p) = p {
            answers += 1;
            bytes += p.payload.len();
        }
    }
    let rss = settle(broker.pid(), Duration::from_secs(20)).await;
    format!(
        "{stored} × 255 KiB stored; {acked} of {requests} QoS 1 requests acknowledged; the reader \
         got {answers} answers ({} MiB) and acknowledged none; RSS then {} MiB",
        bytes / (1024 * 1024),
        mib(rss)
    )
}

/// Finding 3 (offline-fanout): 60 offline persistent sessions subscribed
/// to `big/#`, one 15 MiB QoS 1 message: the data directory, then a
/// restart on it: RSS, and whether an offline session still gets it.
pub async fn offline_fanout(broker: &mut Broker, probe: &mut Probe) -> Extra {
    let sessions = broker.n(60);
    for i in 0..sessions {
        let Ok(stream) = TcpStream::connect(broker.addr).await else {
            return "no connection".into();
        };
        let id = format!("off-{i}");
        if let Some((mut c, true)) = Client::handshake(stream, &id, None, false).await {
            c.subscribe_qos(1, "big/#", QoS::AtLeastOnce).await;
            c.suback(Duration::from_secs(10)).await;
            c.send(Packet::Disconnect).await;
        }
    }
    let Some((mut publisher, true)) = Client::connect(broker.addr, "big-pub", None).await else {
        return "no connection".into();
    };
    let body = Bytes::from(vec![b'b'; 15 * 1024 * 1024]);
    publisher.publish("big/x", body, QoS::AtLeastOnce, 1, false).await;
    let acked = publisher.puback(1, Duration::from_secs(120)).await;
    // The PUBACK says stored; the copies for the sessions may follow.
    settle(broker.pid(), Duration::from_secs(10)).await;
    let disk = walk_size(broker.dir.path());
    drop(publisher);
    probe.stop().await;
    broker.restart();
    let rss = settle(broker.pid(), Duration::from_secs(10)).await;
    let disk_after = walk_size(broker.dir.path());
    let mut got = "nothing".to_string();
    if let Ok(stream) = TcpStream::connect(broker.addr).await {
        if let Some((mut c, true)) = Client::handshake(stream, "off-0", None, false).await {
            while let Some(p) = c.recv(Duration::from_secs(30)).await {
                if let Packet::Publish(p) = p {
                    got = format!("{} MiB", p.payload.len() / (1024 * 1024));
                    if let Some(id) = p.packet_id {
                        c.send(Packet::PublishAck { packet_id: id }).await;
                    }
                    break;
                }
            }
        }
    }
    format!(
        "15 MiB to {sessions} offline sessions ({}): data dir {} MiB; after a restart: RSS {} MiB, \
         data dir {} MiB, off-0 got {got}",
        if acked { "PUBACK" } else { "no PUBACK" },
        disk / (1024 * 1024),
        mib(rss),
        disk_after / (1024 * 1024)
    )
}

/// Finding 6 (subscribe-scan): 100,000 rooms opened with one-byte QoS 0
/// posts, then one SUBSCRIBE with 1,000 non-room filters: time to SUBACK,
/// and the probe's latency in each phase. The posts come from one identity
/// per 1,000 rooms (`dev0`, `dev1`, ...), so `max_rooms_per_user` does not
/// keep the rooms from existing: the load measures the scan, not that
/// bound (room-flood measures it).
pub async fn subscribe_scan(broker: &Broker, probe: &mut Probe) -> Extra {
    let rooms = broker.n(100_000);
    let started = Instant::now();
    for first in (0..rooms).step_by(1000) {
        let me = format!("dev{}", first / 1000);
        let Some((mut c, true)) = Client::connect(broker.addr, &me, None).await else {
            return "no connection".into();
        };
        for i in first..(first + 1000).min(rooms) {
            c.publish(
                &format!("rooms/r{i}/msg/{me}"),
                Bytes::from_static(b"x"),
                QoS::AtMostOnce,
                0,
                false,
            )
            .await;
        }
        c.sync(Duration::from_secs(120)).await;
        c.send(Packet::Disconnect).await;
    }
    let posted_in = started.elapsed();
    probe.phase(1);
    let Some((mut scanner, true)) = Client::connect(broker.addr, "scanner", None).await else {
        return "no connection".into();
    };
    let started = Instant::now();
    scanner
        .send(Packet::Subscribe {
            packet_id: pid(1),
            topic_filters: (0..1000)
                .map(|i| (format!("x/{i}/+").into(), QoS::AtMostOnce))
                .collect(),
        })
        .await;
    let acked = scanner.suback(Duration::from_secs(120)).await;
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let phases = probe.stop().await;
    let (posting, scanning) = (&phases[0], &phases[1]);
    let (rss, _, _) = proc_status(broker.pid());
    format!(
        "{rooms} rooms posted in {:.1} s (others p99 {:.1} ms); SUBSCRIBE of 1,000 filters: {} in \
         {:.0} ms, others' p50 {:.1} ms, max {:.1} ms; RSS {} MiB",
        posted_in.as_secs_f64(),
        ms(posting, 0.99),
        if acked { "SUBACK" } else { "no SUBACK" },
        took.as_secs_f64() * 1000.0,
        ms(scanning, 0.5),
        scanning.max() as f64 / 1000.0,
        mib(rss)
    )
}
