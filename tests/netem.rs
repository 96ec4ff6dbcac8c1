//! Chat on a bad network: impairment scenarios that check no acknowledged
//! message is lost, none is shown twice, and room order is kept.
//!
//! Each scenario runs in a network namespace of its own (`ip netns`),
//! created and deleted here: the broker (the `roomq` binary, with sled),
//! the impairing proxy (`netem/proxy.rs`) and the clients of the verifier
//! (`netem/verifier.rs`) all talk over that namespace's loopback. Packet
//! loss comes from `tc netem` where the kernel has it, else from nftables
//! `numgen random` drop rules; delay, jitter, stalls, resets and half-open
//! connections come from the proxy. Each scenario prints which mechanism
//! it used, and one summary line. Without root, `ip` or `nft`, a scenario
//! prints why it is skipped (and fails under CI, where `scripts/test`
//! installs what they need).
//!
//! Short form (CI): 20 s of sending per scenario. Long form:
//! `NETEM_LONG=1 cargo test --release --test netem -- --nocapture`.

#[path = "netem/cluster.rs"]
mod cluster;
mod common;
#[path = "netem/proxy.rs"]
mod proxy;
#[path = "netem/verifier.rs"]
mod verifier;

use std::process::Command;
use std::time::Duration;

use proxy::{Impairment, Proxy};
use verifier::{Plan, Report};

/// Scenarios share the machine's two cores: one at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn long_form() -> bool {
    std::env::var_os("NETEM_LONG").is_some()
}

fn send_for() -> Duration {
    Duration::from_secs(if long_form() { 60 } else { 20 })
}

fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
        || Command::new(program)
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success())
}

fn sh(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A scenario this machine cannot run: skipped, with the reason printed,
/// except under CI (`CI` set), where `scripts/test` installs everything a
/// scenario needs, so a skip would hide a broken set-up: there it fails.
fn cannot_run(scenario: &str, why: &str) -> Option<String> {
    if std::env::var_os("CI").is_some() {
        panic!("netem {scenario}: cannot run under CI: {why}");
    }
    println!("netem {scenario}: skipped: {why}");
    None
}

/// Runs `scenario` in a fresh namespace; returns its summary line, or None
/// (with the reason printed) when this machine cannot run it.
fn in_namespace(scenario: &str) -> Option<String> {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0"));
    if !is_root || !have("ip") {
        return cannot_run(scenario, "needs root and iproute2 (`ip netns`)");
    }
    let ns = format!("roomq-{scenario}-{}", std::process::id());
    if !sh(&["ip", "netns", "add", &ns]) {
        return cannot_run(scenario, "cannot create a network namespace");
    }
    sh(&["ip", "netns", "exec", &ns, "ip", "link", "set", "lo", "up"]);
    let netem = sh(&[
        "ip", "netns", "exec", &ns, "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "0ms",
    ]);
    if netem {
        sh(&[
            "ip", "netns", "exec", &ns, "tc", "qdisc", "del", "dev", "lo", "root",
        ]);
    }
    let needs_loss = matches!(scenario, "lossy" | "broker-crash");
    if needs_loss && !netem && !have("nft") {
        sh(&["ip", "netns", "del", &ns]);
        return cannot_run(scenario, "no sch_netem and no nft for packet loss");
    }
    let exe = std::env::current_exe().expect("test binary");
    let inner = format!(
        "exec env NETEM_SCENARIO={scenario} NETEM_TC={} {} --exact inner --ignored --nocapture --test-threads 1",
        u8::from(netem),
        exe.display()
    );
    let out = Command::new("ip")
        .args(["netns", "exec", &ns, "sh", "-c", &inner])
        .output()
        .expect("ip netns exec runs");
    sh(&["ip", "netns", "del", &ns]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    // The test harness may print "test inner ... " in front of a line.
    let ours: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.find("netem ").map(|i| &l[i..]))
        .collect();
    for line in &ours {
        println!("{line}");
    }
    assert!(
        out.status.success(),
        "{scenario} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = format!("netem {scenario}: mechanism=");
    let line = ours.iter().find(|l| l.starts_with(&summary));
    Some(
        line.unwrap_or_else(|| panic!("{scenario} printed no summary line:\n{stdout}"))
            .to_string(),
    )
}

fn field(line: &str, name: &str) -> u64 {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.trim_end_matches("ms").parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {line}"))
}

fn assert_promises(line: Option<String>) {
    let Some(line) = line else { return };
    assert!(field(&line, "acknowledged") > 0, "nothing got through: {line}");
    assert_eq!(field(&line, "missing"), 0, "{line}");
    assert_eq!(field(&line, "sessions_lost"), 0, "{line}");
    assert_eq!(field(&line, "not_stored"), 0, "{line}");
    assert_eq!(field(&line, "duplicates"), 0, "{line}");
    assert_eq!(field(&line, "out_of_order"), 0, "{line}");
}

#[test]
fn lossy() {
    assert_promises(in_namespace("lossy"));
}

#[test]
fn tunnel() {
    assert_promises(in_namespace("tunnel"));
}

#[test]
fn nat_timeout() {
    let line = in_namespace("nat-timeout");
    if let Some(line) = &line {
        let keep_alive = field(line, "keep_alive_ms");
        assert!(
            field(line, "detected_max_ms") <= keep_alive * 3 / 2 + 500,
            "{line}"
        );
    }
    assert_promises(line.map(|l| l.split(" | ").next().unwrap_or_default().to_string()));
}

#[test]
fn reconnect_storm() {
    assert_promises(in_namespace("reconnect-storm"));
}

#[test]
fn broker_crash() {
    assert_promises(in_namespace("broker-crash"));
}

#[test]
fn cluster_failover() {
    assert_promises(in_namespace("cluster-failover"));
}

/// The scenario itself, run inside the namespace by `in_namespace`.
#[test]
#[ignore = "run by the scenario tests inside their network namespace"]
fn inner() {
    let Ok(scenario) = std::env::var("NETEM_SCENARIO") else {
        println!("inner: only runs inside a scenario's namespace");
        return;
    };
    let tc = std::env::var("NETEM_TC").is_ok_and(|v| v == "1");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(scenarios::run(&scenario, tc));
}

mod scenarios {
    use super::*;
    use std::net::SocketAddr;
    use std::sync::Arc;

    /// The broker as a child process on a fixed port, restartable.
    pub struct BrokerProcess {
        child: std::process::Child,
        pub addr: SocketAddr,
        dir: tempfile::TempDir,
    }

    impl BrokerProcess {
        pub fn start() -> Self {
            let dir = tempfile::tempdir().expect("data dir");
            let (child, addr) =
                common::spawn_roomq(0, &[std::ffi::OsStr::new("--data-dir"), dir.path().as_os_str()]);
            BrokerProcess { child, addr, dir }
        }

        /// SIGKILL, then a start on the same port and data directory.
        pub fn crash_and_restart(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            let (child, _) = common::spawn_roomq(
                self.addr.port(),
                &[std::ffi::OsStr::new("--data-dir"), self.dir.path().as_os_str()],
            );
            self.child = child;
        }
    }

    impl Drop for BrokerProcess {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn nft_loss(port: u16, percent: u8) {
        let rules = format!(
            "table inet roomq_netem {{\n chain input {{\n type filter hook input priority 0;\n \
             tcp dport {port} numgen random mod 100 < {percent} drop\n \
             tcp sport {port} numgen random mod 100 < {percent} drop\n }}\n}}\n"
        );
        let ok = Command::new("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().expect("stdin").write_all(rules.as_bytes())?;
                c.wait()
            });
        assert!(ok.is_ok_and(|s| s.success()), "nft rules applied");
    }

    fn plan(keep_alive_secs: u64) -> Plan {
        Plan {
            clients: 24,
            rooms: 4,
            send_for: send_for(),
            rate: 2.0,
            keep_alive_secs,
            drain: Duration::from_secs(90),
            sending: Arc::default(),
        }
    }

    pub async fn run(scenario: &str, tc: bool) {
        let mut broker = BrokerProcess::start();
        let upstream = broker.addr;
        let line = match scenario {
            "lossy" | "broker-crash" => {
                let (impairment, mechanism) = if tc {
                    assert!(sh(&[
                        "tc", "qdisc", "add", "dev", "lo", "root", "netem", "loss", "10%", "delay", "200ms",
                        "100ms"
                    ]));
                    (Impairment::default(), "tc-netem(loss 10%, delay 200±100ms)")
                } else {
                    (
                        Impairment {
                            delay_ms: (100, 300),
                            ..Default::default()
                        },
                        "nft-numgen(loss 10%)+proxy(jitter 100-300ms)",
                    )
                };
                let proxy = Proxy::start(upstream, impairment, 7).await;
                if !tc {
                    nft_loss(proxy.addr.port(), 10);
                }
                let plan = plan(15);
                let crash = scenario == "broker-crash";
                let verify = verifier::run(move || upstream, proxy.addr, &plan);
                let report = if crash {
                    // Two kills: right after the last SUBACK (the
                    // subscriptions must be on disk), and halfway through
                    // the sending phase (messages in flight everywhere).
                    let half = plan.send_for / 2;
                    let (report, _) = tokio::join!(verify, async {
                        plan.sending.notified().await;
                        let sending_since = tokio::time::Instant::now();
                        broker.crash_and_restart();
                        println!("netem {scenario}: broker SIGKILLed and restarted as sending began");
                        tokio::time::sleep_until(sending_since + half).await;
                        broker.crash_and_restart();
                        println!(
                            "netem {scenario}: broker SIGKILLed and restarted {} s into the sending phase",
                            half.as_secs()
                        );
                    });
                    report
                } else {
                    verify.await
                };
                report.line(scenario, mechanism)
            }
            "tunnel" => {
                let long = long_form();
                let impairment = Impairment {
                    delay_ms: (20, 80),
                    stall_every_ms: if long { (10_000, 30_000) } else { (3_000, 8_000) },
                    stall_ms: if long { (5_000, 30_000) } else { (5_000, 10_000) },
                    reset_percent: 30,
                    ..Default::default()
                };
                let proxy = Proxy::start(upstream, impairment, 11).await;
                let report = verifier::run(move || upstream, proxy.addr, &plan(30)).await;
                let stalls = proxy.stats.stalls.load(std::sync::atomic::Ordering::Relaxed);
                let resets = proxy.stats.resets.load(std::sync::atomic::Ordering::Relaxed);
                format!(
                    "{} | stalls={stalls} resets={resets}",
                    report.line(scenario, "proxy(stalls 5-30 s, 30% end in a reset)")
                )
            }
            "cluster-failover" => cluster::run(plan(15)).await,
            "nat-timeout" => nat_timeout(upstream).await,
            "reconnect-storm" => reconnect_storm(upstream).await,
            other => panic!("unknown scenario {other}"),
        };
        println!("{line}");
        drop(broker);
    }

    /// Connections go half-open mid-run. The verifier's clients must notice
    /// through keep-alive and reconnect; two extra clients that keep
    /// pinging but never reconnect show how long the broker takes to drop
    /// a dead connection and publish "offline".
    async fn nat_timeout(upstream: SocketAddr) -> String {
        let keep_alive = 5u16; // rumqttc allows no less
        let proxy = Arc::new(
            Proxy::start(
                upstream,
                Impairment {
                    delay_ms: (5, 20),
                    ..Default::default()
                },
                13,
            )
            .await,
        );
        let mut watcher = common::Raw::client5(upstream, "presence-watcher").await;
        watcher
            .subscribe5(
                1,
                &[("$presence/+", common::opts(rmqtt_codec::types::QoS::AtMostOnce))],
            )
            .await;
        let mut victims = Vec::new();
        for i in 0..2 {
            let mut c = common::connect5(&format!("victim-{i}"));
            c.keep_alive = keep_alive;
            let (mut raw, _) = common::Raw::connect5(proxy.addr, c).await;
            // Presence is kept for identities that use rooms: the victims
            // are chat members.
            raw.subscribe5(
                1,
                &[(
                    "rooms/nat/msg/+",
                    common::opts(rmqtt_codec::types::QoS::AtMostOnce),
                )],
            )
            .await;
            victims.push(tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    raw.send5(rmqtt_codec::v5::Packet::PingRequest).await;
                }
            }));
        }
        let plan = plan(u64::from(keep_alive));
        let half_open_at = plan.send_for / 3;
        let p = proxy.clone();
        let cut = tokio::spawn(async move {
            tokio::time::sleep(half_open_at).await;
            p.half_open();
            tokio::time::Instant::now()
        });
        let detect = tokio::spawn(async move {
            let mut offline = std::collections::HashMap::new();
            while offline.len() < 2 {
                let Some(p) = (match watcher.recv5_within(Duration::from_secs(120)).await {
                    common::Got::Packet(rmqtt_codec::v5::Packet::Publish(p)) => Some(*p),
                    common::Got::Packet(_) => None,
                    _ => break,
                }) else {
                    continue;
                };
                let status: Option<roomq::chat::payloads::Presence> =
                    roomq::chat::payloads::from_cbor(&p.payload);
                if p.topic.starts_with("$presence/victim-") && status.is_some_and(|s| s.status == "offline") {
                    offline.insert(p.topic.to_string(), tokio::time::Instant::now());
                }
            }
            offline
        });
        let report = verifier::run(move || upstream, proxy.addr, &plan).await;
        let cut_at = cut.await.expect("half-open");
        let offline = detect.await.expect("presence watcher");
        let detected_max = offline
            .values()
            .map(|t| t.duration_since(cut_at).as_millis() as u64)
            .max()
            .unwrap_or(u64::MAX);
        for v in victims {
            v.abort();
        }
        format!(
            "{} | keep_alive_ms={} detected_max_ms={detected_max} offline_presence={}",
            report.line("nat-timeout", "proxy(half-open: bytes vanish, no FIN/RST)"),
            u64::from(keep_alive) * 1000,
            offline.len()
        )
    }

    /// 2,000 clients drop and reconnect within one second while the
    /// verifier runs; a probe measures the broker's round trip meanwhile.
    async fn reconnect_storm(upstream: SocketAddr) -> String {
        let proxy = Proxy::start(upstream, Impairment::default(), 17).await;
        let storm = async {
            let connect_all = || async {
                let mut set = tokio::task::JoinSet::new();
                for i in 0..2000 {
                    set.spawn(async move {
                        let c = common::connect5(&format!("storm-{i}"));
                        common::Raw::try_connect5(upstream, c).await.map(|(raw, _)| raw)
                    });
                }
                let mut open = Vec::new();
                while let Some(r) = set.join_next().await {
                    if let Ok(Some(raw)) = r {
                        open.push(raw);
                    }
                }
                open
            };
            tokio::time::sleep(send_for() / 4).await;
            let first = connect_all().await;
            let connected = first.len();
            tokio::time::sleep(Duration::from_secs(2)).await;
            let started = tokio::time::Instant::now();
            drop(first);
            // The verifier's clients drop at the same moment.
            proxy.reset_all();
            let second = connect_all().await;
            (connected, second.len(), started.elapsed())
        };
        let probe = async {
            let mut probe = common::Raw::client5(upstream, "probe").await;
            probe
                .subscribe5(
                    1,
                    &[("probe/rtt", common::opts(rmqtt_codec::types::QoS::AtMostOnce))],
                )
                .await;
            let mut rtts = Vec::new();
            let end = tokio::time::Instant::now() + send_for();
            while tokio::time::Instant::now() < end {
                let t = tokio::time::Instant::now();
                probe.publish0_5("probe/rtt", b"ping").await;
                let _ = probe.publish5().await;
                rtts.push(t.elapsed().as_millis() as u64);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            rtts.sort_unstable();
            rtts
        };
        let plan = plan(30);
        let (report, (first, second, took), rtts): (Report, _, _) =
            tokio::join!(verifier::run(move || upstream, proxy.addr, &plan), storm, probe);
        let q = |f: f64| {
            rtts.get(((rtts.len() as f64 - 1.0) * f) as usize)
                .copied()
                .unwrap_or(0)
        };
        format!(
            "{} | storm: {first} connected, {second} reconnected in {} ms; probe rtt p50={}ms p99={}ms max={}ms",
            report.line("reconnect-storm", "direct(2,000 clients reconnecting)"),
            took.as_millis(),
            q(0.5),
            q(0.99),
            rtts.last().copied().unwrap_or(0)
        )
    }
}
