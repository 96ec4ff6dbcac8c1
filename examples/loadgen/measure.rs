//! What the load generator measures: end-to-end latency from a timestamp
//! in each payload, and which messages arrived (each subscriber keeps a
//! bitmap per publisher, so duplicates and gaps show).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use hdrhistogram::Histogram;

use crate::Args;

pub static START: OnceLock<Instant> = OnceLock::new();

/// Messages published and delivered so far, for the progress line.
pub static SENT: AtomicU64 = AtomicU64::new(0);
pub static DELIVERED: AtomicU64 = AtomicU64::new(0);

/// Prints a line a second on stderr (the summary stays alone on stdout)
/// until the task is dropped.
pub async fn print_progress() {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.tick().await;
    loop {
        tick.tick().await;
        eprintln!(
            "loadgen: {:>4.0}s sent={} delivered={}",
            START.get_or_init(Instant::now).elapsed().as_secs_f64(),
            SENT.load(Ordering::Relaxed),
            DELIVERED.load(Ordering::Relaxed)
        );
    }
}

pub fn now_nanos() -> u64 {
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// One subscriber's view of what arrived.
pub struct Received {
    pub count: AtomicU64,
    unique: Mutex<Vec<Vec<u64>>>,
    duplicates: AtomicU64,
    latency: Mutex<Histogram<u64>>,
    last_at: AtomicU64,
}

impl Received {
    pub fn new(publishers: usize) -> Self {
        Received {
            count: AtomicU64::new(0),
            unique: Mutex::new(vec![Vec::new(); publishers]),
            duplicates: AtomicU64::new(0),
            latency: Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram")),
            last_at: AtomicU64::new(0),
        }
    }

    /// Records one payload: `[send nanos u64][publisher u32][seq u32]...`.
    pub fn record(&self, mut payload: Bytes) {
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
        DELIVERED.fetch_add(1, Ordering::Relaxed);
        self.last_at.store(now, Ordering::Relaxed);
    }

    pub fn unique_count(&self) -> u64 {
        self.unique
            .lock()
            .unwrap()
            .iter()
            .flatten()
            .map(|w| u64::from(w.count_ones()))
            .sum()
    }
}

pub fn payload(size: usize, publisher: u32, seq: u32) -> Bytes {
    SENT.fetch_add(1, Ordering::Relaxed);
    let mut b = BytesMut::with_capacity(size.max(16));
    b.put_u64(now_nanos());
    b.put_u32(publisher);
    b.put_u32(seq);
    b.resize(size.max(16), b'x');
    b.freeze()
}

pub struct PublisherReport {
    pub sent: u64,
    pub acked: u64,
}

/// Prints the one-line summary. `expected[i]` is how many messages
/// subscriber `i` should have received.
pub fn report(
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
