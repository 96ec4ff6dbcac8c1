//! Load generator for any MQTT broker (it speaks plain MQTT 3.1.1).
//!
//! Scenarios:
//! - `fanin`: N publishers, 1 subscriber on one topic.
//! - `fanout`: 1 publisher, M subscribers on one topic (like one busy room).
//! - `rooms`: R rooms of K members; every member publishes at a fixed rate
//!   to its room and subscribes to it.
//! - `conns`: C idle connections; with `--pid` prints the broker's RSS
//!   before and after, per connection.
//!
//! `fanin` and `fanout` send as fast as the broker delivers: the publishers
//! never run more than `--window` messages ahead of the slowest subscriber,
//! so the figure is the highest rate with nothing dropped. Latency is
//! measured from a timestamp in each payload; at QoS 1 every message the
//! broker acknowledged is checked for at every subscriber.
//!
//! ```text
//! cargo run --release --example loadgen -- --port 1883 --qos 1 fanout --subscribers 100
//! ```

use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use rmqtt_codec::types::{Protocol, QoS};
use rmqtt_codec::v3::{Codec, Connect, Packet};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_util::codec::{Decoder, Encoder};

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 1883)]
    port: u16,
    /// QoS of publishes and subscriptions (0 or 1).
    #[arg(long, default_value_t = 1)]
    qos: u8,
    /// Payload size in bytes (at least 16: timestamp and sequence).
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Most messages a publisher may be ahead of the slowest subscriber.
    #[arg(long, default_value_t = 2000)]
    window: u64,
    /// `fanin`/`fanout`: messages per second per publisher; 0 sends as fast
    /// as the window allows.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Subscribers use persistent sessions (clean session = 0), so a broker
    /// with durable storage stores every message it queues for them.
    #[arg(long)]
    persistent: bool,
    #[command(subcommand)]
    scenario: Scenario,
}

impl Args {
    /// The QoS of publishes and subscriptions (anything but 0 means 1).
    fn qos(&self) -> QoS {
        if self.qos == 0 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        }
    }
}

/// A PUBLISH as every scenario sends it: no retain, no properties.
fn publish_packet(topic: &str, qos: QoS, packet_id: Option<NonZeroU16>, payload: Bytes) -> Packet {
    Packet::Publish(Box::new(rmqtt_codec::types::Publish {
        dup: false,
        retain: false,
        qos,
        topic: topic.into(),
        packet_id,
        payload,
        properties: None,
    }))
}

#[derive(Subcommand, Debug)]
enum Scenario {
    Fanin {
        #[arg(long, default_value_t = 10)]
        publishers: usize,
    },
    Fanout {
        #[arg(long, default_value_t = 100)]
        subscribers: usize,
    },
    Rooms {
        #[arg(long, default_value_t = 200)]
        rooms: usize,
        #[arg(long, default_value_t = 20)]
        members: usize,
        /// Messages per second per member.
        #[arg(long, default_value_t = 1.0)]
        rate: f64,
    },
    Conns {
        #[arg(long, default_value_t = 5000)]
        count: usize,
        /// Broker process id, to read its RSS.
        #[arg(long)]
        pid: Option<u32>,
    },
}

static START: OnceLock<Instant> = OnceLock::new();

fn now_nanos() -> u64 {
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// One subscriber's view of what arrived.
struct Received {
    count: AtomicU64,
    unique: Mutex<Vec<Vec<u64>>>,
    duplicates: AtomicU64,
    latency: Mutex<Histogram<u64>>,
    last_at: AtomicU64,
}

impl Received {
    fn new(publishers: usize) -> Self {
        Received {
            count: AtomicU64::new(0),
            unique: Mutex::new(vec![Vec::new(); publishers]),
            duplicates: AtomicU64::new(0),
            latency: Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram")),
            last_at: AtomicU64::new(0),
        }
    }

    /// Records one payload: `[send nanos u64][publisher u32][seq u32]...`.
    fn record(&self, mut payload: Bytes) {
        if payload.len() < 16 {
            return;
        }
        let sent = payload.get_u64();
        let publisher = payload.get_u32() as usize;
        let seq = payload.get_u32() as usize;
        let now = now_nanos();
        let _ = self
            .latency
            .lock()
            .unwrap()
            .record(now.saturating_sub(sent) / 1000);
        let mut unique = self.unique.lock().unwrap();
        if let Some(bits) = unique.get_mut(publisher) {
            if bits.len() <= seq / 64 {
                bits.resize(seq / 64 + 16, 0);
            }
            let (word, bit) = (seq / 64, 1u64 << (seq % 64));
            if bits[word] & bit != 0 {
                self.duplicates.fetch_add(1, Ordering::Relaxed);
            } else {
                bits[word] |= bit;
            }
        }
        self.count.fetch_add(1, Ordering::Release);
        self.last_at.store(now, Ordering::Relaxed);
    }

    fn unique_count(&self) -> u64 {
        self.unique
            .lock()
            .unwrap()
            .iter()
            .flatten()
            .map(|w| u64::from(w.count_ones()))
            .sum()
    }
}

/// A minimal MQTT 3.1.1 connection.
struct Conn {
    reader: OwnedReadHalf,
    writer: OwnedWriteHalf,
    codec: Codec,
    buf: BytesMut,
}

impl Conn {
    async fn open(addr: SocketAddr, id: &str, keep_alive: u16) -> std::io::Result<Conn> {
        Conn::open_with(addr, id, keep_alive, true).await
    }

    async fn open_with(addr: SocketAddr, id: &str, keep_alive: u16, clean: bool) -> std::io::Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (reader, writer) = stream.into_split();
        let mut conn = Conn {
            reader,
            writer,
            codec: Codec::new(0),
            buf: BytesMut::with_capacity(64 * 1024),
        };
        let connect = Connect {
            protocol: Protocol(4),
            clean_session: clean,
            keep_alive,
            client_id: id.into(),
            ..Default::default()
        };
        conn.send(Packet::Connect(Box::new(connect))).await?;
        match conn.next().await? {
            Some(Packet::ConnectAck(ack))
                if ack.return_code == rmqtt_codec::v3::ConnectAckReason::ConnectionAccepted =>
            {
                Ok(conn)
            }
            other => Err(std::io::Error::other(format!("CONNECT refused: {other:?}"))),
        }
    }

    async fn send(&mut self, packet: Packet) -> std::io::Result<()> {
        let mut out = BytesMut::new();
        self.codec
            .encode(packet, &mut out)
            .map_err(std::io::Error::other)?;
        self.writer.write_all(&out).await
    }

    async fn next(&mut self) -> std::io::Result<Option<Packet>> {
        loop {
            if let Some((p, _)) = self.codec.decode(&mut self.buf).map_err(std::io::Error::other)? {
                return Ok(Some(p));
            }
            if self.reader.read_buf(&mut self.buf).await? == 0 {
                return Ok(None);
            }
        }
    }

    async fn subscribe(&mut self, filter: &str, qos: QoS) -> std::io::Result<()> {
        let id = NonZeroU16::new(1).expect("nonzero");
        self.send(Packet::Subscribe {
            packet_id: id,
            topic_filters: vec![(filter.into(), qos)],
        })
        .await?;
        match self.next().await? {
            Some(Packet::SubscribeAck { .. }) => Ok(()),
            other => Err(std::io::Error::other(format!("SUBSCRIBE failed: {other:?}"))),
        }
    }
}

type SharedWriter = Arc<tokio::sync::Mutex<OwnedWriteHalf>>;

/// Reads messages until the connection closes, acknowledging QoS 1 through
/// `writer` (shared with a publisher on the same connection in `rooms`).
async fn run_subscriber(
    mut reader: OwnedReadHalf,
    mut buf: BytesMut,
    mut codec: Codec,
    writer: SharedWriter,
    received: Arc<Received>,
) {
    let mut acks = BytesMut::new();
    loop {
        loop {
            match codec.decode(&mut buf) {
                Ok(Some((Packet::Publish(p), _))) => {
                    if let Some(id) = p.packet_id {
                        let _ = codec.encode(Packet::PublishAck { packet_id: id }, &mut acks);
                    }
                    received.record(p.payload);
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => {
                    eprintln!("subscriber decode error: {e}");
                    return;
                }
            }
        }
        if !acks.is_empty() {
            if writer.lock().await.write_all(&acks).await.is_err() {
                return;
            }
            acks.clear();
        }
        match reader.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

fn payload(size: usize, publisher: u32, seq: u32) -> Bytes {
    let mut b = BytesMut::with_capacity(size.max(16));
    b.put_u64(now_nanos());
    b.put_u32(publisher);
    b.put_u32(seq);
    b.resize(size.max(16), b'x');
    b.freeze()
}

struct PublisherReport {
    sent: u64,
    acked: u64,
}

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

/// Prints the one-line summary. `expected[i]` is how many messages
/// subscriber `i` should have received.
fn report(
    name: &str,
    args: &Args,
    started: Instant,
    reports: &[PublisherReport],
    subs: &[Arc<Received>],
    expected: &[u64],
) {
    let sent: u64 = reports.iter().map(|r| r.sent).sum();
    let acked: u64 = reports.iter().map(|r| r.acked).sum();
    let delivered: u64 = subs.iter().map(|s| s.count.load(Ordering::Relaxed)).sum();
    let duplicates: u64 = subs.iter().map(|s| s.duplicates.load(Ordering::Relaxed)).sum();
    let missing: u64 = subs
        .iter()
        .zip(expected)
        .map(|(s, e)| e.saturating_sub(s.unique_count()))
        .sum();
    let last = subs
        .iter()
        .map(|s| s.last_at.load(Ordering::Relaxed))
        .max()
        .unwrap_or(0);
    let start_nanos = started
        .duration_since(*START.get_or_init(Instant::now))
        .as_nanos() as u64;
    let secs = (last.saturating_sub(start_nanos)) as f64 / 1e9;
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    for s in subs {
        let _ = hist.add(&*s.latency.lock().unwrap());
    }
    println!(
        "{name}: qos={} payload={}B publishers={} subscribers={} sent={sent} acked={acked} delivered={delivered} \
         rate={:.0} msg/s p50={:.2}ms p99={:.2}ms max={:.2}ms missing={missing} duplicates={duplicates}",
        args.qos,
        args.payload,
        reports.len(),
        subs.len(),
        delivered as f64 / secs.max(1e-9),
        hist.value_at_quantile(0.5) as f64 / 1000.0,
        hist.value_at_quantile(0.99) as f64 / 1000.0,
        hist.max() as f64 / 1000.0,
    );
}

async fn throughput(
    args: Arc<Args>,
    addr: SocketAddr,
    publishers: usize,
    subscribers: usize,
) -> std::io::Result<()> {
    let qos = args.qos();
    let topic = format!("loadgen/{}", std::process::id());
    let mut subs = Vec::new();
    for i in 0..subscribers {
        let id = format!("lg-sub-{i}-{}", std::process::id());
        let mut conn = Conn::open_with(addr, &id, 300, !args.persistent).await?;
        conn.subscribe(&topic, qos).await?;
        let received = Arc::new(Received::new(publishers));
        let Conn {
            reader,
            writer,
            codec,
            buf,
        } = conn;
        let writer = Arc::new(tokio::sync::Mutex::new(writer));
        tokio::spawn(run_subscriber(reader, buf, codec, writer, received.clone()));
        subs.push(received);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let sent_total = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..publishers {
        let conn = Conn::open(addr, &format!("lg-pub-{p}-{}", std::process::id()), 300).await?;
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

async fn rooms(
    args: Arc<Args>,
    addr: SocketAddr,
    rooms: usize,
    members: usize,
    rate: f64,
) -> std::io::Result<()> {
    let qos = args.qos();
    let mut subs = Vec::new();
    let mut writers = Vec::new();
    for r in 0..rooms {
        for m in 0..members {
            let mut conn = Conn::open(addr, &format!("lg-room{r}-m{m}-{}", std::process::id()), 300).await?;
            conn.subscribe(&format!("lgrooms/{r}/msg/+"), qos).await?;
            let received = Arc::new(Received::new(rooms * members));
            let Conn {
                reader,
                writer,
                codec,
                buf,
            } = conn;
            let writer = Arc::new(tokio::sync::Mutex::new(writer));
            tokio::spawn(run_subscriber(
                reader,
                buf,
                codec.clone(),
                writer.clone(),
                received.clone(),
            ));
            subs.push(received);
            writers.push((r, m, writer, codec));
        }
    }
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    let period = Duration::from_secs_f64(1.0 / rate);
    for (i, (r, m, writer, mut codec)) in writers.into_iter().enumerate() {
        let stop = stop.clone();
        let size = args.payload;
        tasks.push(tokio::spawn(async move {
            let topic = format!("lgrooms/{r}/msg/m{m}");
            // Spread the members over the first period.
            tokio::time::sleep(period.mul_f64((i % 1000) as f64 / 1000.0)).await;
            let mut tick = tokio::time::interval(period);
            let mut seq = 0u32;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let packet_id = (qos == QoS::AtLeastOnce)
                    .then(|| NonZeroU16::new((seq % 65535 + 1) as u16))
                    .flatten();
                let publish = publish_packet(&topic, qos, packet_id, payload(size, i as u32, seq));
                let mut out = BytesMut::new();
                let _ = codec.encode(publish, &mut out);
                if writer.lock().await.write_all(&out).await.is_err() {
                    break;
                }
                seq += 1;
            }
            PublisherReport {
                sent: u64::from(seq),
                acked: u64::from(seq),
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(args.duration)).await;
    stop.store(true, Ordering::Relaxed);
    let mut reports = Vec::new();
    for t in tasks {
        reports.push(t.await.map_err(std::io::Error::other)?);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Each member expects every message sent in its room (its own included);
    // members are numbered room by room.
    let per_room: Vec<u64> = reports
        .chunks(members)
        .map(|room| room.iter().map(|r| r.sent).sum())
        .collect();
    let expected: Vec<u64> = (0..rooms * members).map(|i| per_room[i / members]).collect();
    report("rooms", &args, started, &reports, &subs, &expected);
    Ok(())
}

async fn conns(addr: SocketAddr, count: usize, pid: Option<u32>) -> std::io::Result<()> {
    let rss_before = pid.and_then(rss_kb);
    let mut open = Vec::with_capacity(count);
    for i in 0..count {
        open.push(Conn::open(addr, &format!("lg-idle-{i}-{}", std::process::id()), 600).await?);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_after = pid.and_then(rss_kb);
    match (rss_before, rss_after) {
        (Some(b), Some(a)) => println!(
            "conns: {count} idle connections, broker RSS {b} KB -> {a} KB, {:.0} bytes per connection",
            (a.saturating_sub(b) * 1024) as f64 / count as f64
        ),
        _ => println!("conns: {count} idle connections open (pass --pid to measure the broker's RSS)"),
    }
    drop(open);
    Ok(())
}

fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Arc::new(Args::parse());
    START.get_or_init(Instant::now);
    let addr: SocketAddr = tokio::net::lookup_host((args.host.as_str(), args.port))
        .await?
        .next()
        .ok_or_else(|| std::io::Error::other("host not found"))?;
    match args.scenario {
        Scenario::Fanin { publishers } => throughput(args.clone(), addr, publishers, 1).await,
        Scenario::Fanout { subscribers } => throughput(args.clone(), addr, 1, subscribers).await,
        Scenario::Rooms {
            rooms: r,
            members,
            rate,
        } => rooms(args.clone(), addr, r, members, rate).await,
        Scenario::Conns { count, pid } => conns(addr, count, pid).await,
    }
}
