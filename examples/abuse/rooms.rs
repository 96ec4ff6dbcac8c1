//! Loads of the third attack pass on rooms: one identity flapping a
//! room subscription while others read the room's member list (F2), and
//! the delete of a message with tens of thousands of edits (F6).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use rmqtt_codec::types::QoS;
use rmqtt_codec::v3::Packet;
use rmqtt_codec::v5;
use tokio::net::{TcpSocket, TcpStream};

use crate::client::{pid, Client, Client5, Got};
use crate::v5::{accepted, codes_text, pipeline, window};
use crate::{ms, Broker, Extra, Probe};

const ROOM: &str = "rooms/open/msg/+";
const LIST: &str = "$rooms/open/members";

/// What a member-list reader saw while it counted.
#[derive(Default)]
struct Seen {
    lists: usize,
    bytes: usize,
    largest: usize,
}

/// F2 (members-flap): 1,000 identities with 120-byte names hold
/// persistent sessions subscribed to the open room `open` (offline, so
/// listed), 20 clients read `$rooms/open/members`, and one slow member
/// (reads at 128 KiB/s) reads the list and the room's chat, which carol
/// posts every 50 ms. For 5 s mallory subscribes to the room and
/// unsubscribes, again and again. What each list reader received
/// meanwhile, and the slow member's chat latency until it has read all.
pub async fn members_flap(broker: &Broker) -> Extra {
    let addr = broker.addr;
    let members = broker.n(1000);
    let workers: Vec<_> = (0..10)
        .map(|w| {
            tokio::spawn(async move {
                let mut listed = 0;
                for i in (w..members).step_by(10) {
                    let mut name = format!("member{i:05}");
                    name.extend(std::iter::repeat_n('m', 120 - name.len()));
                    let Ok(stream) = TcpStream::connect(addr).await else {
                        continue;
                    };
                    let id = format!("member-{i}");
                    if let Some((mut c, true)) =
                        Client::handshake(stream, &id, Some((&name, "")), false).await
                    {
                        c.subscribe(1, ROOM).await;
                        if c.suback(Duration::from_secs(10)).await {
                            listed += 1;
                        }
                        c.send(Packet::Disconnect).await;
                    }
                }
                listed
            })
        })
        .collect();
    let mut listed = 0;
    for w in workers {
        listed += w.await.unwrap_or(0);
    }
    let counting = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for i in 0..broker.n(20) {
        let Some((mut c, true)) = Client::connect(addr, &format!("list-reader-{i}"), None).await else {
            continue;
        };
        c.subscribe(1, LIST).await;
        c.suback(Duration::from_secs(10)).await;
        let (counting, stop) = (counting.clone(), stop.clone());
        readers.push(tokio::spawn(async move {
            let mut seen = Seen::default();
            while !stop.load(Ordering::Relaxed) {
                if let Some(Packet::Publish(p)) = c.recv(Duration::from_millis(200)).await {
                    seen.largest = seen.largest.max(p.payload.len());
                    if counting.load(Ordering::Relaxed) {
                        seen.lists += 1;
                        seen.bytes += p.payload.len();
                    }
                }
            }
            seen
        }));
    }
    // The slow member: a small receive buffer, set before connect, so what
    // it cannot read yet waits in the broker, not in the kernel.
    let Ok(socket) = TcpSocket::new_v4() else {
        return "no socket".into();
    };
    let _ = socket.set_recv_buffer_size(4096);
    let Ok(stream) = socket.connect(addr).await else {
        return "no connection".into();
    };
    let Some((mut slow, true)) = Client::handshake(stream, "slow", Some(("slow", "")), true).await else {
        return "no connection".into();
    };
    slow.subscribe(1, LIST).await;
    slow.subscribe(2, ROOM).await;
    let epoch = Instant::now();
    let sent = Arc::new(AtomicUsize::new(usize::MAX));
    let slow_task = {
        let (sent, counting) = (sent.clone(), counting.clone());
        tokio::spawn(async move {
            let mut latency = Histogram::<u64>::new(3).expect("histogram");
            let (mut seen, mut chat, mut last) = (Seen::default(), 0, Instant::now());
            let deadline = Instant::now() + Duration::from_secs(90);
            while chat < sent.load(Ordering::Relaxed) && Instant::now() < deadline {
                let Some(p) = slow
                    .recv_paced(Duration::from_secs(10), 4096, 128.0 * 1024.0)
                    .await
                else {
                    break;
                };
                let Packet::Publish(p) = p else { continue };
                if p.topic.starts_with("$rooms/") {
                    if counting.load(Ordering::Relaxed) {
                        seen.lists += 1;
                        seen.bytes += p.payload.len();
                    }
                } else if let Ok(at) = <[u8; 8]>::try_from(&p.payload[..]) {
                    let at = Duration::from_micros(u64::from_be_bytes(at));
                    let _ = latency.record(epoch.elapsed().saturating_sub(at).as_micros() as u64);
                    chat += 1;
                    last = Instant::now();
                }
            }
            (latency, seen, chat, last)
        })
    };
    // Let everyone read the list they got at SUBSCRIBE first.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let Some((mut carol, true)) = Client::connect(addr, "carol", None).await else {
        return "no connection".into();
    };
    let Some((mut mallory, true)) = Client::connect(addr, "mallory", None).await else {
        return "no connection".into();
    };
    counting.store(true, Ordering::Relaxed);
    let flapping = Arc::new(AtomicBool::new(true));
    let carol_task = {
        let flapping = flapping.clone();
        tokio::spawn(async move {
            let mut posts = 0;
            while flapping.load(Ordering::Relaxed) {
                let at = epoch.elapsed().as_micros() as u64;
                let id = (posts % 60_000) as u16 + 1;
                carol
                    .publish(
                        "rooms/open/msg/carol",
                        Bytes::copy_from_slice(&at.to_be_bytes()),
                        QoS::AtLeastOnce,
                        id,
                        false,
                    )
                    .await;
                if carol.puback(id, Duration::from_secs(10)).await {
                    posts += 1;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            posts
        })
    };
    let duration = Duration::from_secs_f64((5.0 * broker.scale).max(1.0));
    let started = Instant::now();
    let mut flaps = 0;
    while started.elapsed() < duration {
        mallory.subscribe(1, ROOM).await;
        mallory.suback(Duration::from_secs(10)).await;
        mallory
            .send(Packet::Unsubscribe {
                packet_id: pid(2),
                topic_filters: vec![ROOM.into()],
            })
            .await;
        while let Some(p) = mallory.recv(Duration::from_secs(10)).await {
            if matches!(p, Packet::UnsubscribeAck { .. }) {
                break;
            }
        }
        flaps += 1;
    }
    flapping.store(false, Ordering::Relaxed);
    let flapped = Instant::now();
    let posts = carol_task.await.unwrap_or(0);
    sent.store(posts, Ordering::Relaxed);
    // The list readers keep counting for a second: a list held back to
    // the end of an interval still counts.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let mut fast = Seen::default();
    let n_readers = readers.len();
    for r in readers {
        if let Ok(seen) = r.await {
            fast.lists += seen.lists;
            fast.bytes += seen.bytes;
            fast.largest = fast.largest.max(seen.largest);
        }
    }
    let Ok((latency, slow_seen, chat, last)) = slow_task.await else {
        return "the slow member failed".into();
    };
    let drained = last.saturating_duration_since(flapped);
    let each = n_readers.max(1);
    format!(
        "{listed} members listed (list {} KB); mallory flapped {flaps} times in {:.0} s: each of \
         {n_readers} list readers got {} lists ({} KB); the slow member (128 KiB/s) got {} lists \
         ({} KB) and {chat} of {posts} chat messages, the last {:.1} s after the flapping; its chat \
         latency p50 {:.0} / p99 {:.0} / max {:.0} ms",
        fast.largest / 1000,
        duration.as_secs_f64(),
        fast.lists / each,
        fast.bytes / each / 1000,
        slow_seen.lists,
        slow_seen.bytes / 1000,
        drained.as_secs_f64(),
        ms(&latency, 0.5),
        ms(&latency, 0.99),
        latency.max() as f64 / 1000.0
    )
}

/// CBOR `{seq: seq}` and, with a body, `{seq: seq, body: body}`
/// (topics.md, `edit-request`, `delete-request`).
fn cbor_request(seq: u64, body: Option<&[u8]>) -> Bytes {
    use ciborium::Value;
    let mut fields = vec![(Value::Text("seq".into()), Value::Integer(seq.into()))];
    if let Some(body) = body {
        fields.push((Value::Text("body".into()), Value::Bytes(body.to_vec())));
    }
    let mut out = Vec::new();
    let _ = ciborium::ser::into_writer(&Value::Map(fields), &mut out);
    Bytes::from(out)
}

/// The `seq` User Property of a 5.0 room message.
fn seq_of(p: &rmqtt_codec::types::Publish) -> Option<u64> {
    let props = p.properties.as_ref()?;
    props
        .user_properties
        .iter()
        .find(|(k, _)| &**k == "seq")
        .and_then(|(_, v)| v.parse().ok())
}

/// F6 (edit-delete): alice posts one message and edits it 40,000 times
/// (QoS 1, 32 at a time), then deletes it. Meanwhile bob posts into
/// another room every 2 ms and carol reads it (a second probe, beside the
/// plain one): how many edits were accepted, how long the delete took,
/// and both probes' latency during it.
pub async fn edit_delete(broker: &Broker, probe: &mut Probe) -> Extra {
    let addr = broker.addr;
    let Ok(stream) = TcpStream::connect(addr).await else {
        return "no connection".into();
    };
    let Some((mut alice, ack)) = Client5::handshake(stream, Client5::clean("alice", Some("alice"))).await
    else {
        return "no connection".into();
    };
    alice
        .send(v5::Packet::Subscribe(v5::Subscribe {
            packet_id: pid(1),
            id: None,
            user_properties: Vec::new(),
            topic_filters: vec![("rooms/edits/msg/+".into(), Default::default())],
        }))
        .await;
    alice
        .send(Client5::publish(
            "rooms/edits/msg/alice",
            Bytes::from_static(b"the original"),
            QoS::AtLeastOnce,
            1,
            false,
        ))
        .await;
    let mut seq = None;
    while seq.is_none() {
        match alice.recv(Duration::from_secs(10)).await {
            Got::Packet(v5::Packet::Publish(p)) => seq = seq_of(&p),
            Got::Packet(_) => {}
            _ => break,
        }
    }
    let Some(seq) = seq else {
        return "alice's message came back without a seq".into();
    };
    let Some(mut room_probe) = Probe::start_on(
        addr,
        None,
        ("carol", "rooms/other/msg/+"),
        ("bob", "rooms/other/msg/bob"),
    )
    .await
    else {
        return "the room probe could not connect".into();
    };
    let n = broker.n(40_000);
    let started = Instant::now();
    let edits = pipeline(&mut alice, n, window(&ack), |i, id| {
        let body = format!("edit {i}");
        Client5::publish(
            "rooms/edits/edit/alice",
            cbor_request(seq, Some(body.as_bytes())),
            QoS::AtLeastOnce,
            id,
            false,
        )
    })
    .await;
    let edits_took = started.elapsed();
    probe.phase(1);
    room_probe.phase(1);
    let started = Instant::now();
    alice
        .send(Client5::publish(
            "rooms/edits/delete/alice",
            cbor_request(seq, None),
            QoS::AtLeastOnce,
            1,
            false,
        ))
        .await;
    let deleted = alice.puback(Duration::from_secs(120)).await;
    let delete_took = started.elapsed();
    probe.phase(2);
    room_probe.phase(2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let plain = probe.stop().await[1].clone();
    let room = room_probe.stop().await[1].clone();
    let p50_max = |h: &Histogram<u64>| {
        if h.is_empty() {
            "no sample".to_string()
        } else {
            format!("{:.1} / {:.0} ms", ms(h, 0.5), h.max() as f64 / 1000.0)
        }
    };
    format!(
        "{} of {n} edits accepted ({}) in {:.1} s; the delete: {} after {:.0} ms; meanwhile others' \
         room messages p50 / max {}, plain {}",
        accepted(&edits),
        codes_text(&edits),
        edits_took.as_secs_f64(),
        deleted.map_or("no PUBACK".into(), |c| format!("{c:?}")),
        delete_took.as_secs_f64() * 1000.0,
        p50_max(&room),
        p50_max(&plain)
    )
}
