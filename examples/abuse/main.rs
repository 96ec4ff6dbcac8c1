//! Abuse loads against a broker process, measuring what they make it hold:
//! each scenario starts a fresh broker (the `roomq` binary, another roomq
//! binary with `--roomq PATH`, or Mosquitto with `--mosquitto`), reads its
//! RSS and threads from `/proc` before, at the peak and after the load, the
//! size of its data directory before and at the peak, and the delivery
//! latency another client sees meanwhile (a probe: one client publishes
//! every 2 ms to a topic another one reads). Each prints one Markdown table
//! row. `scripts/abuse` runs them all, or the ones it is given.
//!
//! ```text
//! cargo run --release --example abuse -- --roomq target/release/roomq ws-ping-flood
//! cargo run --release --example abuse -- --mosquitto slow-consumer
//! cargo run --example abuse -- --roomq target/debug/roomq --scale 0.01 room-flood
//! ```
//!
//! The scenarios live by issue: `held.rs` ("Nothing a client sends is held
//! without bound"), `chat.rs`, `v5.rs` and `hold.rs` ("Every identity has a
//! budget", one load per finding; each function's comment names its
//! finding), `accounts.rs`, `rooms.rs` and `hold.rs` again (that issue's
//! third attack pass, F1 to F6). `--scale` multiplies every count (connections, messages,
//! rooms), for a quick check at small size.

mod accounts;
mod chat;
mod client;
mod held;
mod hold;
mod rooms;
mod v5;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use rmqtt_codec::types::QoS;

use client::Client;

#[derive(Parser, Debug)]
struct Args {
    /// The roomq binary to measure.
    #[arg(long, default_value = "target/release/roomq")]
    roomq: PathBuf,
    /// Measure Mosquitto (`mosquitto` on the PATH or in /usr/sbin) instead.
    #[arg(long)]
    mosquitto: bool,
    /// First of the ports to use (MQTT on it, WebSocket on the next, the
    /// admin listener on the one after).
    #[arg(long, default_value_t = 18830)]
    port: u16,
    /// Multiplies every count of the load (1 = the sizes in the table).
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
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
    HistoryFlood,
    HistoryUnacked,
    ReceiptFlood,
    OfflineFanout,
    PropertyRetained,
    SubscribeScan,
    RoomFlood,
    LoginFlood,
    AdminHold,
    PresenceNames,
    AliasFlood,
    VendorHold,
    CleanSessions,
    MembersFlap,
    PresenceClaims,
    ConnectionClaims,
    LoginAddresses,
    EditDelete,
}

impl Scenario {
    /// What the broker needs for this load besides the defaults.
    fn setup(self) -> Setup {
        let mut s = Setup::default();
        match self {
            Scenario::WrongLogins | Scenario::LoginFlood | Scenario::LoginAddresses => s.passwords = true,
            // Where names are claims, loopback pays per address as remote
            // clients do (the attacker's address is 127.0.0.2).
            Scenario::PresenceClaims => s.roomq = "claimed_names_budget_on_loopback = false\n".into(),
            Scenario::ConnectionClaims => {
                s.roomq = "claimed_names_budget_on_loopback = false\nmax_connections = 2000\n".into();
                s.mosquitto_listener = "max_connections 2000\n".into();
            }
            // Persistence, so Mosquitto has a data directory to measure
            // and to restart from, like roomq's.
            Scenario::OfflineFanout | Scenario::PresenceNames => s.persistence = true,
            // The finding's broker: a retained budget of 1 MiB.
            Scenario::PropertyRetained => s.roomq = "max_retained_bytes = 1048576\n".into(),
            Scenario::AdminHold => s.admin = true,
            Scenario::VendorHold => s.web = true,
            _ => {}
        }
        s
    }
}

/// Broker configuration a scenario needs.
#[derive(Default, Clone)]
struct Setup {
    /// A password file with alice and bob (password "right"), no anonymous.
    passwords: bool,
    /// Mosquitto: `persistence true` in the temporary directory.
    persistence: bool,
    /// roomq: top-level TOML lines.
    roomq: String,
    /// Mosquitto: lines for the MQTT listener.
    mosquitto_listener: String,
    /// roomq: the admin listener on port + 2.
    admin: bool,
    /// roomq: the WebSocket listener also serves the browser chat.
    web: bool,
}

/// A broker process and where it keeps its files.
struct Broker {
    child: Child,
    dir: tempfile::TempDir,
    addr: SocketAddr,
    ws_port: u16,
    admin_port: u16,
    /// The command that starts it, again for a restart.
    program: PathBuf,
    config: PathBuf,
    mosquitto: bool,
    scale: f64,
    /// Peak RSS (KiB) of processes this broker replaced by a restart.
    earlier_peak: u64,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Broker {
    /// `base` times `--scale`, at least 1.
    fn n(&self, base: usize) -> usize {
        ((base as f64 * self.scale).round() as usize).max(1)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the broker and starts it again on the same data directory.
    /// roomq is killed (SIGKILL: what it stored must survive a crash);
    /// Mosquitto gets SIGTERM, as it writes its persistence file only at
    /// exit (or every `autosave_interval`, 30 min).
    fn restart(&mut self) {
        let (_, peak, _) = proc_status(self.pid());
        self.earlier_peak = self.earlier_peak.max(peak);
        if self.mosquitto {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(self.pid().to_string())
                .status();
        } else {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        self.child = spawn(&self.program, &self.config, self.mosquitto);
        wait_for(self.addr);
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

fn mib(kib: u64) -> u64 {
    kib / 1024
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

fn spawn(program: &Path, config: &Path, mosquitto: bool) -> Child {
    let mut command = Command::new(program);
    if mosquitto {
        command.arg("-c").arg(config);
    } else {
        command.arg("--config").arg(config).env("RUST_LOG", "error");
    }
    command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the broker starts")
}

fn wait_for(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "the broker did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn mosquitto_conf(dir: &Path, setup: &Setup, port: u16, ws_port: u16) -> String {
    // `set_tcp_nodelay`: without it Mosquitto waits for delayed ACKs
    // (Nagle), 40 ms in the probe that are no load's doing. `user root`:
    // started as root, Mosquitto would drop to the `mosquitto` user, who
    // cannot write the persistence file into our temporary directory.
    let mut conf = format!(
        "set_tcp_nodelay true\nuser root\n\
         listener {port} 127.0.0.1\n{}listener {ws_port} 127.0.0.1\nprotocol websockets\n",
        setup.mosquitto_listener
    );
    if setup.persistence {
        conf += &format!("persistence true\npersistence_location {}/\n", dir.display());
    } else {
        conf += "persistence false\n";
    }
    if setup.passwords {
        let file = dir.join("passwd");
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
    conf
}

fn roomq_conf(args: &Args, dir: &Path, setup: &Setup, port: u16, ws_port: u16) -> String {
    let mut conf = format!(
        "data_dir = \"{}\"\nsys_interval_secs = 0\n",
        dir.join("data").display()
    );
    conf += &setup.roomq;
    if setup.admin {
        conf += &format!("admin_listen = \"127.0.0.1:{}\"\n", port + 2);
    }
    if setup.web {
        let web = std::env::current_dir().unwrap_or_default().join("web");
        conf += &format!("web_root = \"{}\"\n", web.display());
    }
    if setup.passwords {
        let file = dir.join("passwd");
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
        conf += &format!(
            "[auth]\nallow_anonymous = false\npassword_file = \"{}\"\n",
            file.display()
        );
    }
    conf += &format!(
        "[[listeners]]\nkind = \"tcp\"\nbind = \"127.0.0.1:{port}\"\n\
         [[listeners]]\nkind = \"ws\"\nbind = \"127.0.0.1:{ws_port}\"\nweb = {}\n",
        setup.web
    );
    conf
}

fn start(args: &Args, setup: &Setup) -> Broker {
    let dir = tempfile::tempdir().expect("temp dir");
    let (port, ws_port) = (args.port, args.port + 1);
    // A port someone else listens on would measure their broker, not ours.
    for p in [port, ws_port, port + 2] {
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_err() {
            eprintln!("abuse: port {p} is in use (ABUSE_PORT= another first port)");
            std::process::exit(2);
        }
    }
    let (program, conf, name) = if args.mosquitto {
        let program = if Path::new("/usr/sbin/mosquitto").exists() {
            PathBuf::from("/usr/sbin/mosquitto")
        } else {
            PathBuf::from("mosquitto")
        };
        let conf = mosquitto_conf(dir.path(), setup, port, ws_port);
        (program, conf, "mosquitto.conf")
    } else {
        let conf = roomq_conf(args, dir.path(), setup, port, ws_port);
        (args.roomq.clone(), conf, "roomq.toml")
    };
    let config = dir.path().join(name);
    std::fs::write(&config, conf).expect("broker config");
    let child = spawn(&program, &config, args.mosquitto);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    wait_for(addr);
    Broker {
        child,
        dir,
        addr,
        ws_port,
        admin_port: port + 2,
        program,
        config,
        mosquitto: args.mosquitto,
        scale: args.scale,
        earlier_peak: 0,
    }
}

/// The largest size the data directory reached, sampled every 200 ms.
struct DiskWatch {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DiskWatch {
    fn start(dir: PathBuf) -> DiskWatch {
        let peak = Arc::new(AtomicU64::new(walk_size(&dir)));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(walk_size(&dir), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(200));
            }
            p.fetch_max(walk_size(&dir), Ordering::Relaxed);
        });
        DiskWatch {
            peak,
            stop,
            thread: Some(thread),
        }
    }

    fn stop(&mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.peak.load(Ordering::Relaxed)
    }
}

/// Another client's delivery latency: one client publishes every 2 ms,
/// another receives; each phase (a scenario moves it on with `phase`) has
/// its own histogram. It stops by itself when the broker goes away (a
/// restart): what it measured until then stays.
struct Probe {
    phase: Arc<AtomicU8>,
    task: Option<tokio::task::JoinHandle<Vec<Histogram<u64>>>>,
    done: Vec<Histogram<u64>>,
}

const PHASES: usize = 3;

impl Probe {
    async fn start(addr: SocketAddr, login: Option<(&str, &str)>) -> Option<Probe> {
        Probe::start_on(addr, login, ("probe-sub", "probe"), ("probe-pub", "probe")).await
    }

    /// A probe whose receiver (client id, filter) reads what its publisher
    /// (client id, topic) sends.
    async fn start_on(
        addr: SocketAddr,
        login: Option<(&str, &str)>,
        (sub_id, filter): (&str, &str),
        (pub_id, topic): (&str, &str),
    ) -> Option<Probe> {
        let (mut sub, ok) = Client::connect(addr, sub_id, login).await?;
        let (mut publisher, ok2) = Client::connect(addr, pub_id, login).await?;
        if !ok || !ok2 {
            return None;
        }
        let topic = topic.to_string();
        sub.subscribe(1, filter).await;
        sub.suback(Duration::from_secs(10)).await;
        let phase = Arc::new(AtomicU8::new(0));
        let now_phase = phase.clone();
        let task = tokio::spawn(async move {
            let mut histograms: Vec<_> = (0..PHASES)
                .map(|_| Histogram::<u64>::new(3).expect("histogram"))
                .collect();
            loop {
                let now = usize::from(now_phase.load(Ordering::Relaxed));
                if now >= PHASES {
                    break;
                }
                let sent = Instant::now();
                publisher
                    .publish(&topic, Bytes::from_static(b"p"), QoS::AtMostOnce, 0, false)
                    .await;
                match sub.recv(Duration::from_secs(30)).await {
                    Some(_) => {
                        let _ = histograms[now].record(sent.elapsed().as_micros() as u64);
                    }
                    None => break,
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            histograms
        });
        Some(Probe {
            phase,
            task: Some(task),
            done: Vec::new(),
        })
    }

    /// Later samples go to phase `n`.
    fn phase(&self, n: u8) {
        self.phase.store(n, Ordering::Relaxed);
    }

    /// Stops probing; the histograms of each phase. Again: the same ones.
    async fn stop(&mut self) -> &[Histogram<u64>] {
        if let Some(task) = self.task.take() {
            self.phase.store(PHASES as u8, Ordering::Relaxed);
            self.done = task.await.unwrap_or_default();
        }
        &self.done
    }
}

/// Milliseconds at quantile `q`.
fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// "p50 / p99 / max" of all phases together.
fn latency(histograms: &[Histogram<u64>]) -> String {
    let mut all = Histogram::<u64>::new(3).expect("histogram");
    for h in histograms {
        let _ = all.add(h);
    }
    if all.is_empty() {
        return "no samples".into();
    }
    format!(
        "{:.1} / {:.1} / {:.0} ms",
        ms(&all, 0.5),
        ms(&all, 0.99),
        all.max() as f64 / 1000.0
    )
}

/// Waits until the broker's RSS has not grown for 2 s (at most `within`):
/// a load whose end the client cannot see (answers to sockets nobody
/// reads) has then done what it does. Its RSS in KiB.
async fn settle(pid: u32, within: Duration) -> u64 {
    let deadline = Instant::now() + within;
    let (mut last, _, _) = proc_status(pid);
    let mut since = Instant::now();
    while Instant::now() < deadline && since.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let (now, _, _) = proc_status(pid);
        if now > last + 1024 {
            since = Instant::now();
        }
        last = last.max(now);
    }
    last
}

/// What one scenario reports besides memory.
type Extra = String;

async fn run(scenario: Scenario, broker: &mut Broker, probe: &mut Probe) -> Extra {
    match scenario {
        Scenario::WsPingFlood => held::ws_ping_flood(broker).await,
        Scenario::WrongLogins => held::wrong_logins(broker).await,
        Scenario::LongMsgIds => held::long_msg_ids(broker).await,
        Scenario::SlowConsumer => held::slow_consumer(broker).await,
        Scenario::Subscriptions => held::subscriptions(broker).await,
        Scenario::RetainedFlood => held::retained_flood(broker, probe).await,
        Scenario::CleanIds => held::clean_ids(broker).await,
        Scenario::HistoryFlood => chat::history_flood(broker).await,
        Scenario::HistoryUnacked => chat::history_unacked(broker).await,
        Scenario::ReceiptFlood => v5::receipt_flood(broker).await,
        Scenario::OfflineFanout => chat::offline_fanout(broker, probe).await,
        Scenario::PropertyRetained => v5::property_retained(broker).await,
        Scenario::SubscribeScan => chat::subscribe_scan(broker, probe).await,
        Scenario::RoomFlood => v5::room_flood(broker, probe).await,
        Scenario::LoginFlood => hold::login_flood(broker).await,
        Scenario::AdminHold => hold::admin_hold(broker).await,
        Scenario::PresenceNames => hold::presence_names(broker, probe).await,
        Scenario::AliasFlood => v5::alias_flood(broker).await,
        Scenario::VendorHold => hold::vendor_hold(broker).await,
        Scenario::CleanSessions => accounts::clean_sessions(broker).await,
        Scenario::MembersFlap => rooms::members_flap(broker).await,
        Scenario::PresenceClaims => accounts::presence_claims(broker).await,
        Scenario::ConnectionClaims => accounts::connection_claims(broker).await,
        Scenario::LoginAddresses => hold::login_addresses(broker).await,
        Scenario::EditDelete => rooms::edit_delete(broker, probe).await,
    }
}

fn main() {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let setup = args.scenario.setup();
    let mut broker = start(&args, &setup);
    std::thread::sleep(Duration::from_millis(300));
    let (before, _, _) = proc_status(broker.pid());
    let mut disk = DiskWatch::start(broker.dir.path().to_path_buf());
    let disk_before = walk_size(broker.dir.path());
    let login = setup.passwords.then_some(("bob", "right"));
    let (extra, probed) = runtime.block_on(async {
        let Some(mut probe) = Probe::start(broker.addr, login).await else {
            return ("the probe could not connect".to_string(), String::new());
        };
        let extra = run(args.scenario, &mut broker, &mut probe).await;
        (extra, latency(probe.stop().await))
    });
    let disk_peak = disk.stop();
    let (after, peak, threads) = proc_status(broker.pid());
    let peak = peak.max(broker.earlier_peak);
    let name = if args.mosquitto {
        "mosquitto".to_string()
    } else {
        args.roomq.display().to_string()
    };
    let to_mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let scenario = args
        .scenario
        .to_possible_value()
        .map_or_else(|| format!("{:?}", args.scenario), |v| v.get_name().to_string());
    println!(
        "| {scenario} | {name} | {} MiB | {} MiB | {} MiB | {threads} | {:.1} → {:.1} MiB | {probed} | {extra} |",
        mib(before),
        mib(peak),
        mib(after),
        to_mib(disk_before),
        to_mib(disk_peak),
    );
}
