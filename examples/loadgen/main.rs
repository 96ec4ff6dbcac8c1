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
//! Scale curves (how a cost grows with the work; `scripts/bench-curves`):
//! - `room-size`: one message at a time to a room of N members, p50/p99
//!   of delivery to all (`--chat`: a roomq room; else a plain topic).
//! - `history` (roomq): a room log of N messages, K history requests.
//! - `retained`: N retained messages, then SUBSCRIBE `bench/{run}/#` until
//!   all arrived, and SUBSCRIBEs to exact topics.
//! - `subscribe-rooms`: N rooms, a SUBSCRIBE of 1,000 filters by a
//!   persistent session and its reconnect.
//! - `startup` (roomq): a store of M room messages and S sessions, killed,
//!   restarted until the first CONNACK.
//!
//! `fanin` and `fanout` send as fast as the broker delivers: the publishers
//! never run more than `--window` messages ahead of the slowest subscriber,
//! so the figure is the highest rate with nothing dropped. Latency is
//! measured from a timestamp in each payload; at QoS 1 every message the
//! broker acknowledged is checked for at every subscriber.
//!
//! With `rooms --chat` the members post real room messages
//! (`rooms/{room}/msg/{member}/{msg-id}`) and, with `--jwt-secret`, log in
//! as themselves with a token, so the chat layer (`seq`, room log, de-dup,
//! commit before delivery) is on the measured path.
//!
//! ```text
//! cargo run --release --example loadgen -- --port 1883 --qos 1 fanout --subscribers 100
//! ```

mod conn;
mod curve;
mod history;
mod measure;
mod retained;
mod room_size;
mod rooms;
mod startup;
mod subscribe_rooms;
mod throughput;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use rmqtt_codec::types::QoS;

use conn::Conn;
use measure::START;

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 1883)]
    port: u16,
    /// Several brokers (the nodes of a cluster): clients are spread over
    /// these ports in turn, instead of `--port`.
    #[arg(long, value_delimiter = ',')]
    ports: Vec<u16>,
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

/// The brokers clients connect to, in turn.
pub struct Targets(Vec<SocketAddr>);

impl Targets {
    /// The broker of the `i`-th client.
    pub fn pick(&self, i: usize) -> SocketAddr {
        self.0[i % self.0.len()]
    }
}

/// Stops the progress line when the scenario ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
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
        /// Post real room messages (`rooms/lg{r}/msg/{member}/{msg-id}`)
        /// instead of plain `lgrooms/...` topics.
        #[arg(long)]
        chat: bool,
        /// With `--chat`: log in as the member with an HS256 token signed
        /// with this secret (the broker's `auth.jwt_secret`).
        #[arg(long)]
        jwt_secret: Option<String>,
        /// With `--ports`: all members of a room on one node (room `r` on
        /// port `r` mod the number of ports), instead of spread over all.
        #[arg(long)]
        room_per_node: bool,
    },
    Conns {
        #[arg(long, default_value_t = 5000)]
        count: usize,
        /// Broker process id, to read its RSS.
        #[arg(long)]
        pid: Option<u32>,
    },
    /// One message at a time to a room of N members.
    RoomSize {
        #[arg(long, default_value_t = 100)]
        members: usize,
        /// Messages timed (one more opens the room first).
        #[arg(long, default_value_t = 100)]
        messages: usize,
        /// A roomq room (`rooms/{room}/msg/{sender}`) instead of a plain topic.
        #[arg(long)]
        chat: bool,
    },
    /// History requests against a room log of N messages (roomq only).
    History {
        #[arg(long, default_value_t = 1000)]
        log: u64,
        #[arg(long, default_value_t = 200)]
        requests: usize,
        /// `limit` of each request.
        #[arg(long, default_value_t = 50)]
        limit: u64,
        /// Publishers filling the log, each with `--fill-window` in flight.
        #[arg(long, default_value_t = 16)]
        publishers: usize,
        #[arg(long, default_value_t = 64)]
        fill_window: u64,
    },
    /// N retained messages, then wildcard and exact SUBSCRIBEs.
    Retained {
        #[arg(long, default_value_t = 1000)]
        count: u64,
        /// Publishers setting them (at least one per 10,000).
        #[arg(long, default_value_t = 8)]
        publishers: usize,
        #[arg(long, default_value_t = 64)]
        fill_window: u64,
        /// Wildcard SUBSCRIBEs timed, each on a fresh connection.
        #[arg(long, default_value_t = 3)]
        repeat: usize,
        /// Exact-filter SUBSCRIBEs timed.
        #[arg(long, default_value_t = 100)]
        exact: usize,
    },
    /// A SUBSCRIBE of many filters, and a reconnect, with N rooms open.
    SubscribeRooms {
        #[arg(long, default_value_t = 1000)]
        rooms: usize,
        #[arg(long, default_value_t = 1000)]
        filters: usize,
        #[arg(long, default_value_t = 5)]
        repeat: usize,
        /// roomq rooms (opened by a first message) instead of plain topics.
        #[arg(long)]
        chat: bool,
        #[arg(long, default_value_t = 64)]
        fill_window: u64,
    },
    /// Restart time of roomq with a filled store (starts the broker itself).
    Startup {
        /// The roomq binary.
        #[arg(long)]
        binary: std::path::PathBuf,
        /// Its data directory; one that is not empty is reused, unfilled.
        #[arg(long)]
        data_dir: std::path::PathBuf,
        #[arg(long, default_value_t = 1_000_000)]
        messages: u64,
        #[arg(long, default_value_t = 10_000)]
        sessions: usize,
        /// Rooms the messages go to (roomq keeps `room_max_messages`,
        /// 100,000, per room).
        #[arg(long, default_value_t = 100)]
        rooms: usize,
        #[arg(long, default_value_t = 16)]
        publishers: usize,
        #[arg(long, default_value_t = 64)]
        fill_window: u64,
        #[arg(long, default_value_t = 3)]
        restarts: usize,
    },
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
    let ports = if args.ports.is_empty() {
        vec![args.port]
    } else {
        args.ports.clone()
    };
    let mut addrs = Vec::new();
    for port in ports {
        let addr: SocketAddr = tokio::net::lookup_host((args.host.as_str(), port))
            .await?
            .next()
            .ok_or_else(|| std::io::Error::other("host not found"))?;
        addrs.push(addr);
    }
    let addrs = Targets(addrs);
    let addr = addrs.pick(0);
    let progress = tokio::spawn(measure::print_progress());
    let _stop_progress = AbortOnDrop(progress);
    match args.scenario {
        Scenario::Fanin { publishers } => throughput::throughput(args.clone(), &addrs, publishers, 1).await,
        Scenario::Fanout { subscribers } => {
            throughput::throughput(args.clone(), &addrs, 1, subscribers).await
        }
        Scenario::Rooms {
            rooms: r,
            members,
            rate,
            chat,
            ref jwt_secret,
            room_per_node,
        } => {
            let shape = rooms::Shape {
                rooms: r,
                members,
                rate,
                chat,
                jwt_secret: jwt_secret.clone(),
                room_per_node,
            };
            rooms::run(args.clone(), &addrs, shape).await
        }
        Scenario::Conns { count, pid } => conns(addr, count, pid).await,
        Scenario::RoomSize {
            members,
            messages,
            chat,
        } => room_size::run(args.clone(), addr, members, messages, chat).await,
        Scenario::History {
            log,
            requests,
            limit,
            publishers,
            fill_window,
        } => {
            let shape = history::Shape {
                log,
                requests,
                limit,
                publishers,
                window: fill_window,
            };
            history::run(args.clone(), addr, shape).await
        }
        Scenario::Retained {
            count,
            publishers,
            fill_window,
            repeat,
            exact,
        } => {
            let shape = retained::Shape {
                count,
                publishers,
                window: fill_window,
                repeat,
                exact,
            };
            retained::run(args.clone(), addr, shape).await
        }
        Scenario::SubscribeRooms {
            rooms: n,
            filters,
            repeat,
            chat,
            fill_window,
        } => {
            let shape = subscribe_rooms::Shape {
                rooms: n,
                filters,
                repeat,
                chat,
                window: fill_window,
            };
            subscribe_rooms::run(args.clone(), addr, shape).await
        }
        Scenario::Startup {
            ref binary,
            ref data_dir,
            messages,
            sessions,
            rooms: n,
            publishers,
            fill_window,
            restarts,
        } => {
            let shape = startup::Shape {
                binary: binary.clone(),
                data_dir: data_dir.clone(),
                messages,
                sessions,
                rooms: n,
                publishers,
                window: fill_window,
                restarts,
            };
            startup::run(args.clone(), addr, shape).await
        }
    }
}
