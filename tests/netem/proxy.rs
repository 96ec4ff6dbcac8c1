//! A user-space TCP proxy that impairs a connection the way a mobile
//! network does: latency with jitter, a bandwidth cap, stalls (a train
//! tunnel), resets, and half-open connections (packets vanish, no FIN or
//! RST: a NAT timeout). Deterministic for a given seed. Used where the
//! kernel has no `sch_netem` (this machine) and for what netem cannot do.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// SplitMix64: a small seeded generator, so a scenario replays exactly.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.next_u64() % (hi - lo + 1)
    }
}

/// What the proxy does to every connection.
#[derive(Clone, Debug, Default)]
pub struct Impairment {
    /// Added one-way delay range, per chunk, order kept.
    pub delay_ms: (u64, u64),
    /// Bytes per second per direction (0 = unlimited).
    pub bandwidth: u64,
    /// Stall every connection for `stall_ms` after `stall_every_ms` (both
    /// ranges, random per stall); (0, 0) = never.
    pub stall_every_ms: (u64, u64),
    pub stall_ms: (u64, u64),
    /// Of the stalls, this percentage end in a reset instead of resuming.
    pub reset_percent: u64,
}

/// Commands the scenario can give all live connections at once.
#[derive(Default)]
struct Controls {
    /// Bumped to turn every connection open now half-open: from then on
    /// its bytes vanish and nothing is closed (no FIN, no RST). New
    /// connections are not affected, as after a NAT drops its entries.
    half_open_epoch: AtomicU64,
    /// Bumped to reset every live connection.
    reset_epoch: AtomicU64,
}

pub struct Proxy {
    pub addr: SocketAddr,
    controls: Arc<Controls>,
    pub stats: Arc<ProxyStats>,
}

#[derive(Default, Debug)]
pub struct ProxyStats {
    pub connections: AtomicU64,
    pub stalls: AtomicU64,
    pub resets: AtomicU64,
}

impl Proxy {
    /// Listens on 127.0.0.1 (any port) and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr, impairment: Impairment, seed: u64) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy binds");
        let addr = listener.local_addr().expect("proxy address");
        let controls = Arc::new(Controls::default());
        let stats = Arc::new(ProxyStats::default());
        let rng = Arc::new(Mutex::new(Rng::new(seed)));
        let (c, s) = (controls.clone(), stats.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let _ = client.set_nodelay(true);
                s.connections.fetch_add(1, Ordering::Relaxed);
                let conn_seed = rng.lock().next_u64();
                let (c, s, imp) = (c.clone(), s.clone(), impairment.clone());
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(upstream).await {
                        let _ = server.set_nodelay(true);
                        relay(client, server, imp, c, s, conn_seed).await;
                    }
                });
            }
        });
        Proxy {
            addr,
            controls,
            stats,
        }
    }

    /// Every live connection goes half-open (its bytes vanish, no FIN, no
    /// RST); connections made afterwards work.
    pub fn half_open(&self) {
        self.controls.half_open_epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// Resets every live connection now.
    pub fn reset_all(&self) {
        self.controls.reset_epoch.fetch_add(1, Ordering::SeqCst);
    }
}

/// One chunk in flight, with the time it may be delivered.
struct Chunk {
    at: Instant,
    bytes: Vec<u8>,
}

async fn relay(
    client: TcpStream,
    server: TcpStream,
    imp: Impairment,
    controls: Arc<Controls>,
    stats: Arc<ProxyStats>,
    seed: u64,
) {
    let epoch = controls.reset_epoch.load(Ordering::SeqCst);
    let born = controls.half_open_epoch.load(Ordering::SeqCst);
    let is_half_open = {
        let controls = controls.clone();
        move || controls.half_open_epoch.load(Ordering::SeqCst) != born
    };
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let stalled_until = Arc::new(Mutex::new(None::<Instant>));
    let reset = Arc::new(AtomicBool::new(false));
    let up = tokio::spawn(direction(
        cr,
        sw,
        imp.clone(),
        seed,
        is_half_open.clone(),
        stalled_until.clone(),
        reset.clone(),
    ));
    let down = tokio::spawn(direction(
        sr,
        cw,
        imp.clone(),
        seed ^ 0xABCD,
        is_half_open.clone(),
        stalled_until.clone(),
        reset.clone(),
    ));
    // The stall schedule of this connection.
    let mut rng = Rng::new(seed ^ 0x5151);
    let stalls = imp.stall_every_ms.1 > 0;
    let mut next_stall =
        Instant::now() + Duration::from_millis(rng.range(imp.stall_every_ms.0, imp.stall_every_ms.1));
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if (up.is_finished() || down.is_finished()) && !is_half_open() {
            break;
        }
        if controls.reset_epoch.load(Ordering::SeqCst) != epoch {
            reset.store(true, Ordering::SeqCst);
            stats.resets.fetch_add(1, Ordering::Relaxed);
            break;
        }
        if stalls && Instant::now() >= next_stall {
            let stall = Duration::from_millis(rng.range(imp.stall_ms.0, imp.stall_ms.1));
            stats.stalls.fetch_add(1, Ordering::Relaxed);
            if rng.range(1, 100) <= imp.reset_percent {
                tokio::time::sleep(stall).await;
                reset.store(true, Ordering::SeqCst);
                stats.resets.fetch_add(1, Ordering::Relaxed);
                break;
            }
            *stalled_until.lock() = Some(Instant::now() + stall);
            next_stall = Instant::now()
                + stall
                + Duration::from_millis(rng.range(imp.stall_every_ms.0, imp.stall_every_ms.1));
        }
    }
    up.abort();
    down.abort();
    // Dropping both halves closes the sockets (FIN; a reset drops unsent data).
}

async fn direction(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    imp: Impairment,
    seed: u64,
    is_half_open: impl Fn() -> bool + Send + 'static,
    stalled_until: Arc<Mutex<Option<Instant>>>,
    reset: Arc<AtomicBool>,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Chunk>();
    let writer = tokio::spawn(async move {
        let mut sent_in_window = 0u64;
        let mut window = Instant::now();
        while let Some(chunk) = rx.recv().await {
            tokio::time::sleep_until(chunk.at).await;
            if is_half_open() {
                continue; // the bytes vanish
            }
            loop {
                let stall = *stalled_until.lock();
                if stall.is_none_or(|until| until <= Instant::now()) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            if reset.load(Ordering::SeqCst) {
                return;
            }
            if imp.bandwidth > 0 {
                if window.elapsed() >= Duration::from_secs(1) {
                    window = Instant::now();
                    sent_in_window = 0;
                }
                if sent_in_window + chunk.bytes.len() as u64 > imp.bandwidth {
                    tokio::time::sleep_until(window + Duration::from_secs(1)).await;
                    window = Instant::now();
                    sent_in_window = 0;
                }
                sent_in_window += chunk.bytes.len() as u64;
            }
            if to.write_all(&chunk.bytes).await.is_err() {
                return;
            }
        }
        if is_half_open() {
            // A half-open connection never closes: hold the socket.
            std::future::pending::<()>().await;
        }
        let _ = to.shutdown().await;
    });
    let mut rng = Rng::new(seed);
    let mut last = Instant::now();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let delay = Duration::from_millis(rng.range(imp.delay_ms.0, imp.delay_ms.1));
        // Jitter never reorders bytes of one TCP stream.
        let at = (Instant::now() + delay).max(last);
        last = at;
        if tx
            .send(Chunk {
                at,
                bytes: buf[..n].to_vec(),
            })
            .is_err()
        {
            break;
        }
    }
    drop(tx);
    let _ = writer.await;
}
