//! Loads of the issue "Every identity has a budget" on the doors of the
//! broker: logins (finding 10, and the third pass's F5), the admin
//! listener (11), presence records of throw-away names (12) and the
//! browser chat's files (15).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rmqtt_codec::v3::{ConnectAckReason, Packet};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::client::{tcp_from, Client};
use crate::{mib, ms, proc_status, settle, walk_size, Broker, Extra, Probe};

/// Whether the broker closed a socket we never read: open while a read
/// would block (or finds bytes waiting), closed at EOF or an error.
fn still_open(stream: &TcpStream) -> bool {
    // Read what the broker sent (an error response before it closed, say)
    // until the socket either has nothing more now (open) or ends (closed).
    let mut buffer = [0u8; 4096];
    loop {
        match stream.try_read(&mut buffer) {
            Ok(0) => return false,
            Ok(_) => continue,
            Err(e) => return e.kind() == std::io::ErrorKind::WouldBlock,
        }
    }
}

/// How a 3.1.1 login ended: "accepted", "refused (code)", "closed", or
/// unanswered.
async fn login_outcome(
    addr: SocketAddr,
    from: Ipv4Addr,
    id: &str,
    login: (&str, &str),
    within: Duration,
) -> String {
    let attempt = async {
        let stream = tcp_from(addr, from).await?;
        Client::handshake_code(stream, id, Some(login), true).await
    };
    match tokio::time::timeout(within, attempt).await {
        Ok(Some((_, ConnectAckReason::ConnectionAccepted))) => "accepted".into(),
        Ok(Some((_, code))) => format!("refused ({code:?})"),
        Ok(None) => "closed".into(),
        Err(_) => format!("unanswered in {} s", within.as_secs()),
    }
}

/// One login of alice from `from` (another address than the flood's):
/// how it ended, and how long it took.
async fn alice_login(addr: SocketAddr, from: Ipv4Addr, n: usize) -> (String, Duration) {
    let started = Instant::now();
    let login = ("alice", "right");
    let outcome = login_outcome(addr, from, &format!("alice-{n}"), login, Duration::from_secs(30)).await;
    (outcome, started.elapsed())
}

/// "3 accepted, 2 refused (...)" and the number accepted.
fn alice_text(logins: &[(String, Duration)]) -> (usize, String, Histogram<u64>) {
    let mut latency = Histogram::<u64>::new(3).expect("histogram");
    let mut outcomes = BTreeMap::<&str, usize>::new();
    for (outcome, took) in logins {
        *outcomes.entry(outcome).or_default() += 1;
        let _ = latency.record(took.as_micros() as u64);
    }
    let ok = outcomes.get("accepted").copied().unwrap_or(0);
    let text: Vec<String> = outcomes.iter().map(|(k, v)| format!("{v} {k}")).collect();
    (ok, text.join(", "), latency)
}

/// Finding 10 (login-flood): from 127.0.0.1, ~370 CONNECTs a second with
/// wrong passwords at fresh usernames, for 10 s; meanwhile alice logs in
/// correctly from 127.0.0.2 every 500 ms.
pub async fn login_flood(broker: &Broker) -> Extra {
    let addr = broker.addr;
    let duration = Duration::from_secs_f64((10.0 * broker.scale).max(1.0));
    let mut tick = tokio::time::interval(Duration::from_micros(2_700));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut alice_tick = tokio::time::interval(Duration::from_millis(500));
    let (mut guesses, mut logins) = (Vec::new(), Vec::new());
    let started = Instant::now();
    while started.elapsed() < duration {
        tokio::select! {
            _ = tick.tick() => {
                let n = guesses.len();
                guesses.push(tokio::spawn(async move {
                    let user = format!("u{:08x}{n}", rand::random::<u32>());
                    let id = format!("g{n}");
                    let login = Client::connect(addr, &id, Some((&user, "wrong")));
                    match tokio::time::timeout(Duration::from_secs(10), login).await {
                        Ok(Some((_, false))) => "refused",
                        Ok(Some((_, true))) => "accepted",
                        Ok(None) => "closed",
                        Err(_) => "unanswered in 10 s",
                    }
                }));
            }
            _ = alice_tick.tick() => {
                let n = logins.len();
                logins.push(tokio::spawn(alice_login(addr, Ipv4Addr::new(127, 0, 0, 2), n)));
            }
        }
    }
    let sent_in = started.elapsed();
    let mut alice = Vec::new();
    for login in &mut logins {
        if let Ok(l) = login.await {
            alice.push(l);
        }
    }
    let (ok, alice, latency) = alice_text(&alice);
    let mut outcomes = std::collections::BTreeMap::<&str, usize>::new();
    for guess in &mut guesses {
        *outcomes.entry(guess.await.unwrap_or("lost")).or_default() += 1;
    }
    let outcomes: Vec<String> = outcomes.iter().map(|(k, v)| format!("{v} {k}")).collect();
    format!(
        "{} wrong logins in {:.1} s ({}); alice: {ok} of {} accepted ({}), p50 {:.0} ms, max {:.0} ms",
        guesses.len(),
        sent_in.as_secs_f64(),
        outcomes.join(", "),
        logins.len(),
        alice,
        ms(&latency, 0.5),
        latency.max() as f64 / 1000.0
    )
}

/// Third pass F5 (login-addresses): alice logs in once from 127.0.0.10;
/// then 8 addresses (127.0.0.2 to .9) run 12 guessers each for 10 s, one
/// CONNECT after another with a wrong password at a fresh username, while
/// alice logs in from 127.0.0.10 every 500 ms.
pub async fn login_addresses(broker: &Broker) -> Extra {
    let addr = broker.addr;
    let alice_from = Ipv4Addr::new(127, 0, 0, 10);
    let (first, _) = alice_login(addr, alice_from, 0).await;
    let duration = Duration::from_secs_f64((10.0 * broker.scale).max(1.0));
    let started = Instant::now();
    let guessers: Vec<_> = (2..=9u8)
        .flat_map(|a| (0..12).map(move |g| (a, g)))
        .map(|(a, g)| {
            tokio::spawn(async move {
                let from = Ipv4Addr::new(127, 0, 0, a);
                let mut outcomes = BTreeMap::<String, usize>::new();
                let mut k = 0;
                while started.elapsed() < duration {
                    let user = format!("u{:08x}{a}x{g}x{k}", rand::random::<u32>());
                    let id = format!("g{a}-{g}-{k}");
                    let outcome =
                        login_outcome(addr, from, &id, (&user, "wrong"), Duration::from_secs(10)).await;
                    *outcomes.entry(outcome).or_default() += 1;
                    k += 1;
                }
                outcomes
            })
        })
        .collect();
    let mut alice_tick = tokio::time::interval(Duration::from_millis(500));
    let mut logins = Vec::new();
    while started.elapsed() < duration {
        alice_tick.tick().await;
        let n = logins.len() + 1;
        logins.push(tokio::spawn(alice_login(addr, alice_from, n)));
    }
    let mut guesses = BTreeMap::<String, usize>::new();
    for g in guessers {
        for (k, v) in g.await.unwrap_or_default() {
            *guesses.entry(k).or_default() += v;
        }
    }
    let mut alice = Vec::new();
    for login in logins {
        if let Ok(l) = login.await {
            alice.push(l);
        }
    }
    let (ok, alice_outcomes, latency) = alice_text(&alice);
    let total: usize = guesses.values().sum();
    let guesses: Vec<String> = guesses.iter().map(|(k, v)| format!("{v} {k}")).collect();
    format!(
        "alice's first login: {first}; {total} wrong logins from 8 addresses × 12 in {:.0} s ({}); \
         alice from her address meanwhile: {ok} of {} accepted ({alice_outcomes}), p50 {:.0} ms, \
         max {:.0} ms",
        duration.as_secs_f64(),
        guesses.join(", "),
        alice.len(),
        ms(&latency, 0.5),
        latency.max() as f64 / 1000.0
    )
}

/// Finding 11 (admin-hold): 1,000 connections to the admin listener, each
/// sending an unfinished ~380 KB header and then holding; how many are
/// open after 15 s, and whether the MQTT listener still accepts.
pub async fn admin_hold(broker: &Broker) -> Extra {
    let n = broker.n(1000);
    let admin: SocketAddr = ([127, 0, 0, 1], broker.admin_port).into();
    let mut header = b"GET /metrics HTTP/1.1\r\nHost: abuse\r\nX-Pad: ".to_vec();
    header.resize(380_000, b'a');
    let header = bytes::Bytes::from(header);
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let header = header.clone();
            tokio::spawn(async move {
                let mut stream = TcpStream::connect(admin).await.ok()?;
                // A broker that stops reading leaves the rest in our buffer.
                let _ = tokio::time::timeout(Duration::from_secs(5), stream.write_all(&header)).await;
                Some(stream)
            })
        })
        .collect();
    let mut held = Vec::new();
    for t in tasks {
        if let Ok(Some(stream)) = t.await {
            held.push(stream);
        }
    }
    let rss = settle(broker.pid(), Duration::from_secs(10)).await;
    let mqtt = match Client::connect(broker.addr, "while-held", None).await {
        Some((_, true)) => "accepted",
        Some((_, false)) => "refused",
        None => "no answer",
    };
    let open_now = held.iter().filter(|s| still_open(s)).count();
    tokio::time::sleep(Duration::from_secs(15)).await;
    let open_later = held.iter().filter(|s| still_open(s)).count();
    format!(
        "{} of {n} connected, {open_now} open when sent (RSS {} MiB), {open_later} open after \
         15 s; an MQTT connection meanwhile: {mqtt}",
        held.len(),
        mib(rss)
    )
}

/// Finding 12 (presence-names): on the no-auth default, 50,000 fresh
/// usernames connect with a clean session and disconnect: RSS, data
/// directory, retained `$presence` records, and RSS after a restart.
pub async fn presence_names(broker: &mut Broker, probe: &mut Probe) -> Extra {
    let addr = broker.addr;
    let each = broker.n(50_000).div_ceil(20);
    let workers: Vec<_> = (0..20u32)
        .map(|w| {
            tokio::spawn(async move {
                for i in 0..each {
                    let name = format!("n{:08x}{w:02}{i:06}", rand::random::<u32>());
                    if let Some((mut c, _)) = Client::connect(addr, &name, Some((&name, ""))).await {
                        c.send(Packet::Disconnect).await;
                    }
                }
            })
        })
        .collect();
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
    drop(watcher);
    let disk = walk_size(broker.dir.path());
    let (rss, _, _) = proc_status(broker.pid());
    probe.stop().await;
    broker.restart();
    let rss_after = settle(broker.pid(), Duration::from_secs(10)).await;
    format!(
        "{} names; {records} retained $presence records; RSS {} MiB, data dir {} MiB; after a \
         restart: RSS {} MiB",
        each * 20,
        mib(rss),
        disk / (1024 * 1024),
        mib(rss_after)
    )
}

/// The status line and Content-Length of one GET that is read.
async fn get_head(addr: SocketAddr, path: &str) -> String {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return "no connection".into();
    };
    let request = format!("GET {path} HTTP/1.1\r\nHost: abuse\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return "closed".into();
    }
    let mut head = Vec::new();
    let mut chunk = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => head.extend_from_slice(&chunk[..n]),
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&head);
    let status = text.lines().next().unwrap_or("no answer").to_string();
    let length = text
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_else(|| "?".into());
    format!("{status}, {length} bytes")
}

/// Finding 15 (vendor-hold): 500 clients GET `/vendor/mqtt.min.js` from a
/// `web = true` listener with a 4 KiB receive buffer, and never read.
pub async fn vendor_hold(broker: &Broker) -> Extra {
    let web: SocketAddr = ([127, 0, 0, 1], broker.ws_port).into();
    let path = "/vendor/mqtt.min.js";
    let head = get_head(web, path).await;
    let n = broker.n(500);
    let request = format!("GET {path} HTTP/1.1\r\nHost: abuse\r\n\r\n");
    let mut held = Vec::new();
    for _ in 0..n {
        let Ok(socket) = TcpSocket::new_v4() else { continue };
        // Set before connect, so the window the broker sees is small.
        let _ = socket.set_recv_buffer_size(4096);
        let Ok(mut stream) = socket.connect(web).await else {
            continue;
        };
        if stream.write_all(request.as_bytes()).await.is_ok() {
            held.push(stream);
        }
    }
    let rss = settle(broker.pid(), Duration::from_secs(15)).await;
    let open = held.iter().filter(|s| still_open(s)).count();
    format!(
        "one GET read: {head}; {} of {n} sent and never read: RSS {} MiB, {open} still open",
        held.len(),
        mib(rss)
    )
}
