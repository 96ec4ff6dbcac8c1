//! `fanin` and `fanout`: publishers send as fast as the slowest subscriber
//! keeps up (within `--window`), or at `--rate`.

use std::num::NonZeroU16;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rmqtt_codec::types::QoS;
use rmqtt_codec::v3::Packet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::codec::{Decoder, Encoder};

use crate::conn::{publish_packet, Conn};
use crate::measure::{payload, report, PublisherReport, Received};
use crate::{Args, Targets};

/// Publishes as fast as the credit allows until `stop`. QoS 1 keeps at most
/// 100 messages unacknowledged.
async fn run_publisher(
    conn: Conn,
    index: u32,
    topic: String,
    args: Arc<Args>,
    stop: Arc<AtomicBool>,
    sent_total: Arc<AtomicU64>,
    slowest: impl Fn() -> u64,
) -> PublisherReport {
    let qos = args.qos();
    let acked = Arc::new(AtomicU64::new(0));
    let inflight = Arc::new(tokio::sync::Semaphore::new(100));
    let Conn {
        mut reader,
        mut writer,
        codec,
        mut buf,
    } = conn;
    let reader_task = {
        let (acked, inflight) = (acked.clone(), inflight.clone());
        let mut codec = codec.clone();
        tokio::spawn(async move {
            loop {
                while let Ok(Some((p, _))) = codec.decode(&mut buf) {
                    if let Packet::PublishAck { .. } = p {
                        acked.fetch_add(1, Ordering::Relaxed);
                        inflight.add_permits(1);
                    }
                }
                match reader.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
    };
    let mut codec = codec;
    let mut seq: u32 = 0;
    let mut out = BytesMut::with_capacity(64 * 1024);
    let mut pace = (args.rate > 0.0).then(|| tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate)));
    let batch = if pace.is_some() { 1 } else { 32 };
    while !stop.load(Ordering::Relaxed) {
        if let Some(pace) = pace.as_mut() {
            pace.tick().await;
        }
        // End-to-end credit: never run too far ahead of the slowest subscriber.
        if sent_total.load(Ordering::Relaxed).saturating_sub(slowest()) > args.window {
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_micros(200)).await;
            continue;
        }
        for _ in 0..batch {
            let packet_id = if qos == QoS::AtLeastOnce {
                match inflight.clone().try_acquire_owned() {
                    Ok(p) => {
                        p.forget();
                        NonZeroU16::new((seq % 65535 + 1) as u16)
                    }
                    Err(_) => break,
                }
            } else {
                None
            };
            let publish = publish_packet(&topic, qos, packet_id, payload(args.payload, index, seq));
            let _ = codec.encode(publish, &mut out);
            seq += 1;
            sent_total.fetch_add(1, Ordering::Relaxed);
        }
        if out.is_empty() {
            // Window full: wait for an ack.
            if let Ok(p) = inflight.acquire().await {
                drop(p);
            }
            continue;
        }
        if writer.write_all(&out).await.is_err() {
            break;
        }
        out.clear();
    }
    // Let the last acks arrive.
    let wait_until = Instant::now() + Duration::from_secs(5);
    while qos == QoS::AtLeastOnce
        && acked.load(Ordering::Relaxed) < u64::from(seq)
        && Instant::now() < wait_until
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    reader_task.abort();
    PublisherReport {
        sent: u64::from(seq),
        acked: if qos == QoS::AtLeastOnce {
            acked.load(Ordering::Relaxed)
        } else {
            u64::from(seq)
        },
    }
}

pub async fn throughput(
    args: Arc<Args>,
    addrs: &Targets,
    publishers: usize,
    subscribers: usize,
) -> std::io::Result<()> {
    let qos = args.qos();
    let topic = format!("loadgen/{}", std::process::id());
    let mut subs = Vec::new();
    for i in 0..subscribers {
        let id = format!("lg-sub-{i}-{}", std::process::id());
        let mut conn = Conn::open_with(addrs.pick(i), &id, 300, !args.persistent, None).await?;
        conn.subscribe(&topic, qos).await?;
        let received = Arc::new(Received::new(publishers));
        conn.spawn_subscriber(received.clone());
        subs.push(received);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let sent_total = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..publishers {
        // Publishers start after the subscribers' brokers: in a cluster a
        // fan-in crosses nodes.
        let conn = Conn::open(
            addrs.pick(subscribers + p),
            &format!("lg-pub-{p}-{}", std::process::id()),
            300,
        )
        .await?;
        let subs2 = subs.clone();
        tasks.push(tokio::spawn(run_publisher(
            conn,
            p as u32,
            topic.clone(),
            args.clone(),
            stop.clone(),
            sent_total.clone(),
            move || {
                subs2
                    .iter()
                    .map(|s| s.count.load(Ordering::Acquire))
                    .min()
                    .unwrap_or(0)
            },
        )));
    }
    tokio::time::sleep(Duration::from_secs(args.duration)).await;
    stop.store(true, Ordering::Relaxed);
    let mut reports = Vec::new();
    for t in tasks {
        reports.push(t.await.map_err(std::io::Error::other)?);
    }
    let expected: u64 = reports.iter().map(|r| r.acked).sum();
    // Wait for the last deliveries.
    let deadline = Instant::now() + Duration::from_secs(10);
    while subs.iter().any(|s| s.unique_count() < expected) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let name = if publishers > 1 { "fanin" } else { "fanout" };
    report(name, &args, started, &reports, &subs, &vec![expected; subs.len()]);
    Ok(())
}
