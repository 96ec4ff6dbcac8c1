//! Abuse loads against a broker process, measuring what they make it hold:
//! each scenario starts a fresh broker (the `roomq` binary, another roomq
//! binary with `--roomq PATH`, or Mosquitto with `--mosquitto`), reads its
//! RSS and threads from `/proc` before, at the peak and after the load, and
//! prints one Markdown table row. `scripts/abuse` runs them all.
//!
//! ```text
//! cargo run --release --example abuse -- --roomq target/release/roomq ws-ping-flood
//! cargo run --release --example abuse -- --mosquitto slow-consumer
//! ```
//!
//! Scenarios (the issue "Nothing a client sends is held without bound"):
//! `ws-ping-flood` (8 s of WebSocket pings, never reading the pongs, no
//! CONNECT), `wrong-logins` (400 concurrent wrong passwords for one user,
//! and a correct login of another user in the middle: its latency),
//! `long-msg-ids` (3,000 room messages with 60 KB msg-ids), `slow-consumer`
//! (10,000 QoS 0 publishes of 200 KB to a subscriber that never reads),
//! `subscriptions` (20,000 subscriptions with 60 KB filters),
//! `retained-flood` (200,000 retained messages, then 300 SUBSCRIBEs that
//! match nothing, one after another, while another client's delivery
//! latency is measured in each phase) and
//! `clean-ids` (40,000 clean connections with random client ids: RSS, and
//! how many retained `$presence` records a new subscriber gets).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use clap::{Parser, ValueEnum};
use futures_util::SinkExt;
use hdrhistogram::Histogram;
use rmqtt_codec::types::{Protocol, Publish, QoS};
use rmqtt_codec::v3::{Codec, Connect, Packet};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::{Decoder, Encoder};

#[derive(Parser, Debug)]
struct Args {
    /// The roomq binary to measure.
    #[arg(long, default_value = "target/release/roomq")]
    roomq: PathBuf,
    /// Measure Mosquitto (`mosquitto` on the PATH or in /usr/sbin) instead.
    #[arg(long)]
    mosquitto: bool,
    /// First of the ports to use (MQTT on it, WebSocket on the next).
    #[arg(long, default_value_t = 18830)]
    port: u16,
    scenario: Scenario,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum Scenario {
    WsPingFlood,
    WrongLogins,
    LongMsgIds,
    SlowConsumer,
    Subscriptions,
    RetainedFlood,
    CleanIds,
}

/// A broker process and where it keeps its files.
struct Broker {
    child: Child,
    _dir: tempfile::TempDir,
    addr: SocketAddr,
    ws_port: u16,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// RSS in KiB, peak RSS in KiB and threads of a process.
fn proc_status(pid: u32) -> (u64, u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"), field("Threads:"))
}

fn start(args: &Args, passwords: bool) -> Broker {
    let dir = tempfile::tempdir().expect("temp dir");
    let (port, ws_port) = (args.port, args.port + 1);
    let child = if args.mosquitto {
        let mut conf = format!(
            "persistence false\nlistener {port} 127.0.0.1\nlistener {ws_port} 127.0.0.1\nprotocol websockets\n"
        );
        if passwords {
            let file = dir.path().join("passwd");
            for (n, (user, password)) in [("alice", "right"), ("bob", "right")].into_iter().enumerate() {
                // `-c` creates the file, for the first user.
                let flags: &[&str] = if n == 0 { &["-c", "-b"] } else { &["-b"] };
                let status = Command::new("mosquitto_passwd")
                    .args(flags)
                    .arg(&file)
                    .args([user, password])
                    .status();
                if !matches!(status, Ok(s) if s.success()) {
                    eprintln!("abuse: mosquitto_passwd failed");
                }
            }
            conf += &format!("password_file {}\nallow_anonymous false\n", file.display());
        } else {
            conf += "allow_anonymous true\n";
        }
        let path = dir.path().join("mosquitto.conf");
        std::fs::write(&path, conf).expect("mosquitto.conf");
        let program = if Path::new("/usr/sbin/mosquitto").exists() {
            "/usr/sbin/mosquitto"
        } else {
            "mosquitto"
        };
        Command::new(program)
            .arg("-c")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto starts")
    } else {
        let mut conf = format!(
            "data_dir = \"{}\"\nsys_interval_secs = 0\n[[listeners]]\nkind = \"tcp\"\nbind = \"127.0.0.1:{port}\"\n\
             [[listeners]]\nkind = \"ws\"\nbind = \"127.0.0.1:{ws_port}\"\n",
            dir.path().join("data").display()
        );
        if passwords {
            let file = dir.path().join("passwd");
            for user in ["alice", "bob"] {
                let mut child = Command::new(&args.roomq)
                    .arg("passwd")
                    .arg(&file)
                    .arg(user)
                    .stdin(Stdio::piped())
                    .stdout(Stdio::null())
                    .spawn()
                    .expect("roomq passwd");
                if let Some(mut stdin) = child.stdin.take() {
                    use std::io::Write;
                    let _ = writeln!(stdin, "right");
                }
                let _ = child.wait();
            }
            conf = format!(
                "{conf}[auth]\nallow_anonymous = false\npassword_file = \"{}\"\n",
                file.display()
            );
        }
        let path = dir.path().join("roomq.toml");
        std::fs::write(&path, conf).expect("roomq.toml");
        Command::new(&args.roomq)
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("roomq starts")
    };
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "the broker did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Broker {
        child,
        _dir: dir,
        addr,
        ws_port,
    }
}

/// A 3.1.1 client on raw packets.
struct Client {
    stream: TcpStream,
    codec: Codec,
    buf: BytesMut,
}

impl Client {
    async fn connect(addr: SocketAddr, id: &str, login: Option<(&str, &str)>) -> Option<(Client, bool)> {
        let stream = TcpStream::connect(addr).await.ok()?;
        stream.set_nodelay(true).ok()?;
        let mut c = Client {
            stream,
            codec: Codec::new(0),
            buf: BytesMut::new(),
        };
        c.send(Packet::Connect(Box::new(Connect {
            protocol: Protocol(4),
            clean_session: true,
            client_id: id.into(),
            keep_alive: 60,
            username: login.map(|(u, _)| u.into()),
            password: login.map(|(_, p)| Bytes::copy_from_slice(p.as_bytes())),
            ..Default::default()
        })))
        .await;
        match c.recv(Duration::from_secs(30)).await {
            Some(Packet::ConnectAck(ack)) => {
                let ok = ack.return_code == rmqtt_codec::v3::ConnectAckReason::ConnectionAccepted;
                Some((c, ok))
            }
            _ => None,
        }
    }

    async fn send(&mut self, packet: Packet) {
        let mut out = BytesMut::new();
        if self.codec.encode(packet, &mut out).is_ok() {
            let _ = self.stream.write_all(&out).await;
        }
    }

    async fn recv(&mut self, within: Duration) -> Option<Packet> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Ok(Some((p, _))) = self.codec.decode(&mut self.buf) {
                return Some(p);
            }
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return None,
            }
        }
    }

    async fn publish(&mut self, topic: &str, payload: Bytes, qos: QoS, id: u16, retain: bool) {
        self.send(Packet::Publish(Box::new(Publish {
            dup: false,
            retain,
            qos,
            topic: topic.into(),
            packet_id: (qos != QoS::AtMostOnce)
                .then(|| std::num::NonZeroU16::new(id.max(1)).expect("non-zero")),
            payload,
            properties: None,
        })))
        .await;
    }

    async fn subscribe(&mut self, id: u16, filter: &str) {
        self.send(Packet::Subscribe {
            packet_id: std::num::NonZeroU16::new(id.max(1)).expect("non-zero"),
            topic_filters: vec![(filter.into(), QoS::AtMostOnce)],
        })
        .await;
    }

    /// Reads until a SUBACK (or nothing for `within`).
    async fn suback(&mut self, within: Duration) -> bool {
        while let Some(p) = self.recv(within).await {
            if matches!(p, Packet::SubscribeAck { .. }) {
                return true;
            }
        }
        false
    }
}

/// What one scenario reports besides memory.
type Extra = String;

async fn ws_ping_flood(broker: &Broker) -> Extra {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;
    let url = format!("ws://127.0.0.1:{}/mqtt", broker.ws_port);
    let Ok(socket) = TcpStream::connect(("127.0.0.1", broker.ws_port)).await else {
        return "no WebSocket listener".into();
    };
    let Ok(mut request) = url.into_client_request() else {
        return "bad url".into();
    };
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "mqtt".parse().expect("header"));
    let Ok((mut ws, _)) = tokio_tungstenite::client_async(request, socket).await else {
        return "upgrade refused".into();
    };
    let ping = Bytes::from(vec![0u8; 125]);
    let end = Instant::now() + Duration::from_secs(8);
    let mut sent = 0u64;
    let mut closed = false;
    while Instant::now() < end {
        match tokio::time::timeout(Duration::from_millis(500), ws.send(Message::Ping(ping.clone()))).await {
            Ok(Ok(())) => sent += 1,
            Ok(Err(_)) => {
                closed = true;
                break;
            }
            Err(_) => {}
        }
    }
    format!(
        "{sent} pings sent; connection {}",
        if closed {
            "closed by the broker"
        } else {
            "still open"
        }
    )
}

async fn wrong_logins(broker: &Broker) -> Extra {
    let addr = broker.addr;
    let guesses: Vec<_> = (0..400)
        .map(|i| {
            tokio::spawn(async move {
                Client::connect(addr, &format!("guess-{i}"), Some(("alice", "wrong")))
                    .await
                    .map(|(_, ok)| ok)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let correct = Client::connect(addr, "bob-1", Some(("bob", "right"))).await;
    let latency = started.elapsed();
    let answered = guesses.iter().filter(|g| g.is_finished()).count();
    for g in guesses {
        g.abort();
    }
    format!(
        "correct login {} after {:.0} ms ({answered} of 400 guesses answered by then)",
        if matches!(correct, Some((_, true))) {
            "accepted"
        } else {
            "refused"
        },
        latency.as_secs_f64() * 1000.0
    )
}

async fn long_msg_ids(broker: &Broker) -> Extra {
    let Some((mut c, _)) = Client::connect(broker.addr, "dev", None).await else {
        return "no connection".into();
    };
    let id = "i".repeat(60 * 1024);
    for i in 0..3000u16 {
        c.publish(
            &format!("rooms/r/msg/dev/{id}{i}"),
            Bytes::from_static(b"x"),
            QoS::AtLeastOnce,
            i + 1,
            false,
        )
        .await;
        let _ = c.recv(Duration::from_secs(10)).await;
    }
    let disk: u64 = walk_size(broker._dir.path());
    format!("data dir {} MiB", disk / (1024 * 1024))
}

fn walk_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => walk_size(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

async fn slow_consumer(broker: &Broker) -> Extra {
    let Some((mut stuck, _)) = Client::connect(broker.addr, "never-reads", None).await else {
        return "no connection".into();
    };
    stuck.subscribe(1, "bulk").await;
    stuck.suback(Duration::from_secs(5)).await;
    let Some((mut publisher, _)) = Client::connect(broker.addr, "pub", None).await else {
        return "no connection".into();
    };
    let payload = Bytes::from(vec![7u8; 200 * 1024]);
    for _ in 0..10_000 {
        publisher
            .publish("bulk", payload.clone(), QoS::AtMostOnce, 0, false)
            .await;
    }
    // A round trip, so the broker has read everything.
    publisher.subscribe(2, "sync").await;
    publisher.suback(Duration::from_secs(60)).await;
    drop(stuck);
    "10,000 x 200 KB to a subscriber that never reads".into()
}

async fn subscriptions(broker: &Broker) -> Extra {
    let Some((mut c, _)) = Client::connect(broker.addr, "subs", None).await else {
        return "no connection".into();
    };
    let long = "f".repeat(60 * 1024);
    let mut granted = 0;
    for i in 0..20_000u16 {
        c.subscribe(i.max(1), &format!("{long}/{i}")).await;
        if let Some(Packet::SubscribeAck { status, .. }) = c.recv(Duration::from_secs(10)).await {
            if status
                .iter()
                .all(|s| matches!(s, rmqtt_codec::v3::SubscribeReturnCode::Success(_)))
            {
                granted += 1;
            }
        }
    }
    format!("{granted} of 20,000 granted")
}

async fn retained_flood(broker: &Broker) -> Extra {
    use std::sync::atomic::{AtomicU8, Ordering};
    // A probe: one client publishes every 2 ms, another receives; the
    // latency of each phase goes to its own histogram.
    let Some((mut probe_sub, _)) = Client::connect(broker.addr, "probe-sub", None).await else {
        return "no connection".into();
    };
    probe_sub.subscribe(1, "probe").await;
    probe_sub.suback(Duration::from_secs(10)).await;
    let Some((mut probe_pub, _)) = Client::connect(broker.addr, "probe-pub", None).await else {
        return "no connection".into();
    };
    // 0: retained writes, 1: SUBSCRIBEs, 2: stop.
    let phase = std::sync::Arc::new(AtomicU8::new(0));
    let probe_phase = phase.clone();
    let prober = tokio::spawn(async move {
        let mut histograms = [
            Histogram::<u64>::new(3).expect("histogram"),
            Histogram::<u64>::new(3).expect("histogram"),
        ];
        loop {
            let now = usize::from(probe_phase.load(Ordering::Relaxed));
            if now > 1 {
                break;
            }
            let sent = Instant::now();
            probe_pub
                .publish("probe", Bytes::from_static(b"p"), QoS::AtMostOnce, 0, false)
                .await;
            if probe_sub.recv(Duration::from_secs(30)).await.is_some() {
                let _ = histograms[now].record(sent.elapsed().as_micros() as u64);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        histograms
    });
    let Some((mut c, _)) = Client::connect(broker.addr, "retainer", None).await else {
        return "no connection".into();
    };
    let started = Instant::now();
    for i in 0..200_000u32 {
        c.publish(
            &format!("ret/{}/{i}", i % 100),
            Bytes::from_static(b"v"),
            QoS::AtMostOnce,
            0,
            true,
        )
        .await;
    }
    c.subscribe(1, "sync").await;
    c.suback(Duration::from_secs(120)).await;
    let stored_in = started.elapsed();
    phase.store(1, Ordering::Relaxed);
    // One client, 300 SUBSCRIBEs one after another, each waiting for its
    // SUBACK: the retained matching, not a connection storm.
    let Some((mut subscriber, _)) = Client::connect(broker.addr, "subscriber", None).await else {
        return "no connection".into();
    };
    let started = Instant::now();
    for i in 0..300u16 {
        subscriber.subscribe(i + 1, &format!("nomatch/{i}/+/x")).await;
        subscriber.suback(Duration::from_secs(60)).await;
    }
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_millis(200)).await;
    phase.store(2, Ordering::Relaxed);
    let [writes, subscribes] = prober.await.expect("probe");
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    format!(
        "200,000 retained sent in {:.1} s: others' delivery p50 {:.2} ms, p99 {:.2} ms; \
         300 SUBSCRIBEs took {:.0} ms: p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms",
        stored_in.as_secs_f64(),
        ms(&writes, 0.5),
        ms(&writes, 0.99),
        took.as_secs_f64() * 1000.0,
        ms(&subscribes, 0.5),
        ms(&subscribes, 0.99),
        subscribes.max() as f64 / 1000.0
    )
}

async fn clean_ids(broker: &Broker) -> Extra {
    let addr = broker.addr;
    let mut workers = Vec::new();
    for w in 0..20u32 {
        workers.push(tokio::spawn(async move {
            for i in 0..2000u32 {
                let id = format!("mosq-{:08x}{w:02}{i:05}", rand::random::<u32>());
                if let Some((mut c, _)) = Client::connect(addr, &id, None).await {
                    c.send(Packet::Disconnect).await;
                }
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    let Some((mut watcher, _)) = Client::connect(addr, "watcher", None).await else {
        return "no connection".into();
    };
    watcher.subscribe(1, "$presence/+").await;
    let mut records = 0;
    while let Some(p) = watcher.recv(Duration::from_secs(2)).await {
        if matches!(p, Packet::Publish(_)) {
            records += 1;
        }
    }
    format!("{records} retained $presence records")
}

fn main() {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let broker = start(&args, args.scenario == Scenario::WrongLogins);
    std::thread::sleep(Duration::from_millis(300));
    let pid = broker.child.id();
    let (before, _, _) = proc_status(pid);
    let extra = runtime.block_on(async {
        match args.scenario {
            Scenario::WsPingFlood => ws_ping_flood(&broker).await,
            Scenario::WrongLogins => wrong_logins(&broker).await,
            Scenario::LongMsgIds => long_msg_ids(&broker).await,
            Scenario::SlowConsumer => slow_consumer(&broker).await,
            Scenario::Subscriptions => subscriptions(&broker).await,
            Scenario::RetainedFlood => retained_flood(&broker).await,
            Scenario::CleanIds => clean_ids(&broker).await,
        }
    });
    let (after, peak, threads) = proc_status(pid);
    let name = if args.mosquitto {
        "mosquitto".to_string()
    } else {
        args.roomq.display().to_string()
    };
    println!(
        "| {:?} | {name} | {} MiB | {} MiB | {} MiB | {threads} | {extra} |",
        args.scenario,
        before / 1024,
        peak / 1024,
        after / 1024
    );
}
