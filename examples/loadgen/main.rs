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
//! With `rooms --chat` the members post real room messages
//! (`rooms/{room}/msg/{member}/{msg-id}`) and, with `--jwt-secret`, log in
//! as themselves with a token, so the chat layer (`seq`, room log, de-dup,
//! commit before delivery) is on the measured path.
//!
//! ```text
//! cargo run --release --example loadgen -- --port 1883 --qos 1 fanout --subscribers 100
//! ```

mod conn;
mod measure;
mod rooms;
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
    }
}
