//! Loads of the issue "Every identity has a budget" on the doors of the
//! broker: logins (finding 10), the admin listener (11), presence records
//! of throw-away names (12) and the browser chat's files (15).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rmqtt_codec::v3::Packet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::client::Client;
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

/// One login of alice from 127.0.0.2 (a different address from the
/// flood's): how it ended, and how long it took.
async fn alice_login(addr: SocketAddr, n: usize) -> (&'static str, Duration) {
    let started = Instant::now();
    let attempt = async {
        let socket = TcpSocket::new_v4().ok()?;
        socket.bind(([127, 0, 0, 2], 0).into()).ok()?;
        let stream = socket.connect(addr).await.ok()?;
        let id = format!("alice-{n}");
        Client::handshake(stream, &id, Some(("alice", "right")), true).await
    };
    let outcome = match tokio::time::timeout(Duration::from_secs(30), attempt).await {
        Ok(Some((_, true))) => "accepted",
        Ok(Some((_, false))) => "refused",
        Ok(None) => "closed",
        Err(_) => "unanswered in 30 s",
    };
    (outcome, started.elapsed())
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
                logins.push(tokio::spawn(alice_login(addr, n)));
            }
        }
    }
    let sent_in = started.elapsed();
    let mut latency = Histogram::<u64>::new(3).expect("histogram");
    let mut alice = std::collections::BTreeMap::<&str, usize>::new();
    for login in &mut logins {
        if let Ok((outcome, took)) = login.await {
            *alice.entry(outcome).or_default() += 1;
            let _ = latency.record(took.as_micros() as u64);
        }
    }
    let ok = alice.get("accepted").copied().unwrap_or(0);
    let alice: Vec<String> = alice.iter().map(|(k, v)| format!("{v} {k}")).collect();
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
        alice.join(", "),
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
