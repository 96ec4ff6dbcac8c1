//! `room-size`: one message at a time into a room of N members: how long
//! until every member has it (p50/p99 over the messages), and the latency
//! of each single delivery. With `--chat` the room is a real roomq room
//! (`rooms/{room}/msg/{sender}`: a `seq`, a room-log record, commit before
//! delivery); without it a plain topic, for any broker.

use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use hdrhistogram::Histogram;
use rmqtt_codec::v3::Packet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::codec::Encoder;

use crate::conn::{publish_packet, Conn};
use crate::curve::{open_many, summary};
use crate::measure::{now_nanos, payload, DELIVERED};
use crate::Args;

/// How long one message may take to reach every member before it counts
/// as missing for those that did not get it.
const DELIVERY_LIMIT: Duration = Duration::from_secs(10);

/// What the members saw, per message (index = the payload's sequence).
struct Arrivals {
    members: usize,
    count: Vec<AtomicUsize>,
    /// Nanoseconds (since the run's start) of the latest arrival.
    last: Vec<AtomicU64>,
    complete: tokio::sync::Notify,
    each: Mutex<Histogram<u64>>,
}

impl Arrivals {
    fn record(&self, mut payload: bytes::Bytes) {
        if payload.len() < 16 {
            return;
        }
        let sent = payload.get_u64();
        let _publisher = payload.get_u32();
        let seq = payload.get_u32() as usize;
        let now = now_nanos();
        DELIVERED.fetch_add(1, Ordering::Relaxed);
        // Message 0 (the room's opening) is not timed.
        if let (true, Ok(mut h)) = (seq > 0, self.each.lock()) {
            let _ = h.record(now.saturating_sub(sent) / 1000);
        }
        let (Some(count), Some(last)) = (self.count.get(seq), self.last.get(seq)) else {
            return;
        };
        last.fetch_max(now, Ordering::Relaxed);
        if count.fetch_add(1, Ordering::AcqRel) + 1 == self.members {
            self.complete.notify_one();
        }
    }
}

/// Reads one member's deliveries until the connection closes.
async fn member(mut conn: Conn, arrivals: Arc<Arrivals>) {
    while let Ok(Some(packet)) = conn.next().await {
        if let Packet::Publish(p) = packet {
            if let Some(id) = p.packet_id {
                if conn.send(Packet::PublishAck { packet_id: id }).await.is_err() {
                    return;
                }
            }
            arrivals.record(p.payload);
        }
    }
}

pub async fn run(
    args: Arc<Args>,
    addr: SocketAddr,
    members: usize,
    messages: usize,
    chat: bool,
) -> std::io::Result<()> {
    let qos = args.qos();
    let tag = format!("lgsz{}", std::process::id());
    let (filter, topic) = if chat {
        (format!("rooms/{tag}/msg/+"), format!("rooms/{tag}/msg/{tag}p"))
    } else {
        (format!("lgsz/{tag}/msg/+"), format!("lgsz/{tag}/msg/p"))
    };
    // Message 0 opens the room (its first log record) and is not timed.
    let total = messages + 1;
    let arrivals = Arc::new(Arrivals {
        members,
        count: (0..total).map(|_| AtomicUsize::new(0)).collect(),
        last: (0..total).map(|_| AtomicU64::new(0)).collect(),
        complete: tokio::sync::Notify::new(),
        each: Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3).map_err(std::io::Error::other)?),
    });
    let conns = open_many(members, |i| {
        let (tag, filter) = (tag.clone(), filter.clone());
        async move {
            let mut conn = Conn::open(addr, &format!("{tag}m{i}"), 300).await?;
            conn.subscribe(&filter, qos).await?;
            Ok(conn)
        }
    })
    .await?;
    for conn in conns {
        tokio::spawn(member(conn, arrivals.clone()));
    }
    let Conn {
        mut reader,
        mut writer,
        mut codec,
        ..
    } = Conn::open(addr, &format!("{tag}p"), 300).await?;
    // The publisher's PUBACKs are read and dropped, so its socket never fills.
    let drain = tokio::spawn(async move {
        let mut sink = vec![0u8; 16 * 1024];
        while matches!(reader.read(&mut sink).await, Ok(n) if n > 0) {}
    });
    let (mut to_all, mut missing) = (Vec::with_capacity(messages), 0usize);
    for k in 0..total {
        let packet_id = (qos != rmqtt_codec::types::QoS::AtMostOnce)
            .then(|| NonZeroU16::new((k % 65_535 + 1) as u16))
            .flatten();
        let sent_at = now_nanos();
        let mut out = BytesMut::new();
        codec
            .encode(
                publish_packet(&topic, qos, packet_id, payload(args.payload, 0, k as u32)),
                &mut out,
            )
            .map_err(std::io::Error::other)?;
        writer.write_all(&out).await?;
        let deadline = tokio::time::Instant::now() + DELIVERY_LIMIT;
        while arrivals.count[k].load(Ordering::Acquire) < members {
            if tokio::time::timeout_at(deadline, arrivals.complete.notified())
                .await
                .is_err()
            {
                break;
            }
        }
        let got = arrivals.count[k].load(Ordering::Acquire);
        if k == 0 {
            continue;
        }
        if got < members {
            missing += members - got;
        } else {
            let last = arrivals.last[k].load(Ordering::Relaxed);
            to_all.push(Duration::from_nanos(last.saturating_sub(sent_at)));
        }
    }
    drain.abort();
    let each = arrivals
        .each
        .lock()
        .map_err(|_| std::io::Error::other("poisoned"))?;
    println!(
        "room-size: members={members} chat={chat} qos={} payload={}B messages={messages} {} each-p50={:.2}ms each-p99={:.2}ms missing={missing}",
        args.qos,
        args.payload,
        summary("to-all", &mut to_all),
        each.value_at_quantile(0.5) as f64 / 1000.0,
        each.value_at_quantile(0.99) as f64 / 1000.0,
    );
    Ok(())
}
