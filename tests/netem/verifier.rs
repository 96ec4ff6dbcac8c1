//! The verifier shared by every scenario: chat clients (rumqttc 5.0 and
//! 3.1.1, persistent sessions, QoS 1, a msg-id on every message) in several
//! rooms send for a while through the impaired path; then each client's
//! received stream per room is checked against the room log (fetched with
//! history requests on a direct connection): no acknowledged message
//! missing, none delivered twice to the application (after de-dup by
//! `seq`), `seq` strictly increasing. Duplicates that reached the wire are
//! reported separately.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::common::{publish, Raw};
use roomq::chat::payloads::{self, HistoryResponse};

/// How much load, for how long.
#[derive(Clone, Debug)]
pub struct Plan {
    pub clients: usize,
    pub rooms: usize,
    pub send_for: Duration,
    /// Messages per second per client.
    pub rate: f64,
    pub keep_alive_secs: u64,
    /// Longest wait after sending for every client to catch up.
    pub drain: Duration,
    /// Notified once every client has subscribed and sending begins, so a
    /// scenario can time its faults within the sending phase.
    pub sending: Arc<tokio::sync::Notify>,
}

/// What one scenario measured.
#[derive(Debug, Default)]
pub struct Report {
    pub sent: u64,
    pub acknowledged: u64,
    pub delivered: u64,
    pub missing: u64,
    /// Reconnections answered with Session Present = 0: the broker forgot
    /// a persistent session (its subscriptions and backlog) it had
    /// confirmed.
    pub sessions_lost: u64,
    /// Acknowledged messages absent from their room's log (counted once,
    /// not per member): a broken promise of the broker, not of delivery.
    pub not_stored: u64,
    /// Messages the application would have seen twice (stored twice).
    pub duplicates: u64,
    /// Copies that reached a client again (dropped by its de-dup by seq).
    pub wire_duplicates: u64,
    pub out_of_order: u64,
    pub p50_ms: u64,
    pub p99_ms: u64,
}

impl Report {
    pub fn line(&self, scenario: &str, mechanism: &str) -> String {
        format!(
            "netem {scenario}: mechanism={mechanism} sent={} acknowledged={} delivered={} missing={} sessions_lost={} not_stored={} duplicates={} wire_duplicates={} out_of_order={} p50={}ms p99={}ms",
            self.sent, self.acknowledged, self.delivered, self.missing, self.sessions_lost, self.not_stored, self.duplicates, self.wire_duplicates, self.out_of_order, self.p50_ms, self.p99_ms
        )
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What a client's event loop reports.
enum Event {
    Connected {
        session_present: bool,
    },
    Subscribed,
    Sent(u16),
    Acked(u16),
    Received {
        topic: String,
        payload: Vec<u8>,
        seq: Option<u64>,
    },
}

/// One client's record.
#[derive(Default)]
struct Record {
    room: String,
    connected: bool,
    sessions_lost: u64,
    subscribed: bool,
    /// msg-ids in request order, not yet matched to a packet id.
    requested: std::collections::VecDeque<String>,
    sent: u64,
    in_flight: HashMap<u16, String>,
    acked: HashSet<String>,
    /// (msg-id, seq if the client saw one, delivery latency in ms) in
    /// arrival order.
    received: Vec<(String, Option<u64>, u64)>,
}

type Shared = Arc<Mutex<Vec<Record>>>;

fn apply(records: &Shared, i: usize, event: Event) {
    let mut all = records.lock();
    let r = &mut all[i];
    match event {
        Event::Connected { session_present } => {
            // The first CONNACK creates the session; every later one must
            // find it.
            if r.connected && !session_present {
                r.sessions_lost += 1;
            }
            r.connected = true;
        }
        Event::Subscribed => r.subscribed = true,
        Event::Sent(pkid) => {
            // A resend after a reconnect keeps its packet id.
            if !r.in_flight.contains_key(&pkid) {
                if let Some(id) = r.requested.pop_front() {
                    r.in_flight.insert(pkid, id);
                }
            }
        }
        Event::Acked(pkid) => {
            if let Some(id) = r.in_flight.remove(&pkid) {
                r.acked.insert(id);
            }
        }
        Event::Received { topic, payload, seq } => {
            if topic.starts_with("rooms/") {
                let text = String::from_utf8_lossy(&payload).into_owned();
                let mut parts = text.split('|');
                let id = parts.next().unwrap_or_default().to_string();
                let sent_at: u64 = parts.next().and_then(|t| t.parse().ok()).unwrap_or(0);
                r.received.push((id, seq, unix_ms().saturating_sub(sent_at)));
            }
        }
    }
}

fn spawn_v5(
    proxy: SocketAddr,
    id: String,
    keep_alive: u64,
    tx: mpsc::UnboundedSender<Event>,
) -> rumqttc::v5::AsyncClient {
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::{Event as E, MqttOptions};
    let mut options = MqttOptions::new(id, proxy.ip().to_string(), proxy.port());
    options.set_clean_start(false);
    options.set_session_expiry_interval(Some(3600));
    options.set_keep_alive(Duration::from_secs(keep_alive));
    let (client, mut events) = rumqttc::v5::AsyncClient::new(options, 1000);
    tokio::spawn(async move {
        loop {
            let event = match events.poll().await {
                Ok(E::Incoming(Packet::ConnAck(ack))) => Event::Connected {
                    session_present: ack.session_present,
                },
                Ok(E::Incoming(Packet::SubAck(_))) => Event::Subscribed,
                Ok(E::Incoming(Packet::PubAck(ack))) => Event::Acked(ack.pkid),
                Ok(E::Incoming(Packet::Publish(p))) => {
                    let seq = p.properties.as_ref().and_then(|props| {
                        props
                            .user_properties
                            .iter()
                            .find(|(k, _)| k == "seq")
                            .and_then(|(_, v)| v.parse().ok())
                    });
                    Event::Received {
                        topic: String::from_utf8_lossy(&p.topic).into_owned(),
                        payload: p.payload.to_vec(),
                        seq,
                    }
                }
                Ok(E::Outgoing(rumqttc::Outgoing::Publish(pkid))) => Event::Sent(pkid),
                Ok(_) => continue,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    continue;
                }
            };
            if tx.send(event).is_err() {
                return;
            }
        }
    });
    client
}

fn spawn_v4(
    proxy: SocketAddr,
    id: String,
    keep_alive: u64,
    tx: mpsc::UnboundedSender<Event>,
) -> rumqttc::AsyncClient {
    use rumqttc::{Event as E, MqttOptions, Packet};
    let mut options = MqttOptions::new(id, proxy.ip().to_string(), proxy.port());
    options.set_clean_session(false);
    options.set_keep_alive(Duration::from_secs(keep_alive));
    let (client, mut events) = rumqttc::AsyncClient::new(options, 1000);
    tokio::spawn(async move {
        loop {
            let event = match events.poll().await {
                Ok(E::Incoming(Packet::ConnAck(ack))) => Event::Connected {
                    session_present: ack.session_present,
                },
                Ok(E::Incoming(Packet::SubAck(_))) => Event::Subscribed,
                Ok(E::Incoming(Packet::PubAck(ack))) => Event::Acked(ack.pkid),
                Ok(E::Incoming(Packet::Publish(p))) => Event::Received {
                    topic: p.topic.clone(),
                    payload: p.payload.to_vec(),
                    seq: None,
                },
                Ok(E::Outgoing(rumqttc::Outgoing::Publish(pkid))) => Event::Sent(pkid),
                Ok(_) => continue,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    continue;
                }
            };
            if tx.send(event).is_err() {
                return;
            }
        }
    });
    client
}

enum Client {
    V5(rumqttc::v5::AsyncClient),
    V4(rumqttc::AsyncClient),
}

/// Runs the plan through `proxy`; `broker` is the direct address for the
/// final history reads. The scenario's own actions run alongside.
pub async fn run(broker: impl Fn() -> SocketAddr, proxy: SocketAddr, plan: &Plan) -> Report {
    let records: Shared = Arc::new(Mutex::new((0..plan.clients).map(|_| Record::default()).collect()));
    let mut clients = Vec::new();
    for i in 0..plan.clients {
        let room = format!("r{}", i % plan.rooms);
        records.lock()[i].room = room.clone();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let id = format!("u{i}");
        let client = if i % 2 == 0 {
            Client::V5(spawn_v5(proxy, id, plan.keep_alive_secs, tx))
        } else {
            Client::V4(spawn_v4(proxy, id, plan.keep_alive_secs, tx))
        };
        let filter = format!("rooms/{room}/msg/+");
        match &client {
            Client::V5(c) => c
                .subscribe(filter, rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
                .await
                .expect("subscribe"),
            Client::V4(c) => c
                .subscribe(filter, rumqttc::QoS::AtLeastOnce)
                .await
                .expect("subscribe"),
        }
        let records = records.clone();
        tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                apply(&records, i, event);
            }
        });
        clients.push(client);
    }
    // Everyone subscribed before anyone sends (bounded). rumqttc does not
    // send a SUBSCRIBE again after a reconnect (its `clean` keeps only
    // publishes), so one lost with its connection under loss never gets a
    // SUBACK, and the session it resumes has no subscription: like an
    // application would, ask again every few seconds until the SUBACK.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut asked_at = tokio::time::Instant::now();
    while !records.lock().iter().all(|r| r.subscribed) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if asked_at.elapsed() < Duration::from_secs(5) {
            continue;
        }
        asked_at = tokio::time::Instant::now();
        let waiting: Vec<(usize, String)> = records
            .lock()
            .iter()
            .enumerate()
            .filter(|(_, r)| !r.subscribed)
            .map(|(i, r)| (i, format!("rooms/{}/msg/+", r.room)))
            .collect();
        for (i, filter) in waiting {
            let _ = match &clients[i] {
                Client::V5(c) => c
                    .subscribe(filter, rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
                    .await
                    .is_ok(),
                Client::V4(c) => c.subscribe(filter, rumqttc::QoS::AtLeastOnce).await.is_ok(),
            };
        }
    }

    plan.sending.notify_one();
    let progress = tokio::spawn(print_progress(records.clone()));
    let stop_at = tokio::time::Instant::now() + plan.send_for;
    let period = Duration::from_secs_f64(1.0 / plan.rate);
    let mut senders = Vec::new();
    for (i, client) in clients.into_iter().enumerate() {
        let records = records.clone();
        senders.push(tokio::spawn(async move {
            let mut n = 0u64;
            let mut tick = tokio::time::interval(period);
            while tokio::time::Instant::now() < stop_at {
                tick.tick().await;
                n += 1;
                let id = format!("u{i}-{n}");
                let room = records.lock()[i].room.clone();
                let payload = format!("{id}|{}", unix_ms());
                records.lock()[i].requested.push_back(id.clone());
                records.lock()[i].sent += 1;
                let ok = match &client {
                    Client::V5(c) => {
                        let props = rumqttc::v5::mqttbytes::v5::PublishProperties {
                            user_properties: vec![("msg-id".into(), id.clone())],
                            ..Default::default()
                        };
                        c.publish_with_properties(
                            format!("rooms/{room}/msg/u{i}"),
                            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                            false,
                            payload,
                            props,
                        )
                        .await
                        .is_ok()
                    }
                    Client::V4(c) => c
                        .publish(
                            format!("rooms/{room}/msg/u{i}/{id}"),
                            rumqttc::QoS::AtLeastOnce,
                            false,
                            payload,
                        )
                        .await
                        .is_ok(),
                };
                if !ok {
                    break;
                }
            }
            client
        }));
    }
    let mut clients = Vec::new();
    for s in senders {
        clients.push(s.await.expect("sender"));
    }

    // Drain: until every acknowledged message reached every member, or the
    // drain time is over.
    let deadline = tokio::time::Instant::now() + plan.drain;
    let mut stable_since = tokio::time::Instant::now();
    let mut last_total = 0;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let total: usize = records
            .lock()
            .iter()
            .map(|r| r.received.len() + r.acked.len())
            .sum();
        if total != last_total {
            last_total = total;
            stable_since = tokio::time::Instant::now();
        } else if stable_since.elapsed() > Duration::from_secs(5) && all_caught_up(&records) {
            break;
        }
    }
    progress.abort();
    let report = check(&records, broker(), plan).await;
    drop(clients);
    report
}

/// A line a second while the scenario sends and drains (`netem/run`
/// shows them): what was sent, acknowledged and delivered so far.
async fn print_progress(records: Shared) {
    let started = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tick.tick().await;
        let (sent, acked, delivered) = records.lock().iter().fold((0, 0, 0), |t, r| {
            (t.0 + r.sent, t.1 + r.acked.len(), t.2 + r.received.len())
        });
        println!(
            "netem progress: {:>3}s sent={sent} acknowledged={acked} delivered={delivered}",
            started.elapsed().as_secs()
        );
    }
}

/// Every acknowledged msg-id, by room.
fn acked_per_room(records: &[Record]) -> HashMap<&str, HashSet<&str>> {
    let mut per_room: HashMap<&str, HashSet<&str>> = HashMap::new();
    for r in records {
        per_room
            .entry(&r.room)
            .or_default()
            .extend(r.acked.iter().map(String::as_str));
    }
    per_room
}

fn all_caught_up(records: &Shared) -> bool {
    let all = records.lock();
    let acked_per_room = acked_per_room(&all);
    all.iter().all(|r| {
        let got: HashSet<&str> = r.received.iter().map(|(id, _, _)| id.as_str()).collect();
        acked_per_room
            .get(r.room.as_str())
            .is_none_or(|acked| acked.iter().all(|id| got.contains(id)))
    })
}

/// Reads a room's whole log: msg-id → seq, and how often each msg-id
/// was stored.
async fn room_log(broker: SocketAddr, room: &str) -> (HashMap<String, u64>, u64) {
    let mut c = Raw::client5(broker, &format!("verifier-{room}")).await;
    c.subscribe5(
        1,
        &[(
            "verifier/answers",
            crate::common::opts(rmqtt_codec::types::QoS::AtMostOnce),
        )],
    )
    .await;
    let mut seqs = HashMap::new();
    let mut stored_twice = 0;
    let mut after = 0u64;
    loop {
        let mut p = publish(
            &format!("$history/rooms/{room}"),
            b"",
            rmqtt_codec::types::QoS::AtMostOnce,
            None,
        );
        p.payload = bytes::Bytes::from(payloads::to_cbor(&HashMap::from([
            ("after", after),
            ("limit", 500),
        ])));
        p.properties = Some(rmqtt_codec::v5::PublishProperties {
            response_topic: Some("verifier/answers".into()),
            ..Default::default()
        });
        c.send5(rmqtt_codec::v5::Packet::Publish(Box::new(p))).await;
        let answer = c.publish5().await;
        let page: HistoryResponse = payloads::from_cbor(&answer.payload).expect("history answer");
        for m in &page.messages {
            let text = String::from_utf8_lossy(m.body.as_deref().unwrap_or_default()).into_owned();
            let id = text.split('|').next().unwrap_or_default().to_string();
            if seqs.insert(id, m.seq).is_some() {
                stored_twice += 1;
            }
            after = m.seq;
        }
        if !page.more || page.messages.is_empty() {
            break;
        }
    }
    (seqs, stored_twice)
}

async fn check(records: &Shared, broker: SocketAddr, plan: &Plan) -> Report {
    let mut report = Report::default();
    let mut logs = HashMap::new();
    for room in 0..plan.rooms {
        let room = format!("r{room}");
        let (log, twice) = room_log(broker, &room).await;
        report.duplicates += twice;
        logs.insert(room, log);
    }
    let all = records.lock();
    let acked_per_room = acked_per_room(&all);
    let mut latencies: Vec<u64> = Vec::new();
    for r in all.iter() {
        let log = &logs[&r.room];
        report.sent += r.sent;
        report.acknowledged += r.acked.len() as u64;
        report.sessions_lost += r.sessions_lost;
        report.not_stored += r.acked.iter().filter(|id| !log.contains_key(id.as_str())).count() as u64;
        report.delivered += r.received.len() as u64;
        let mut seen = HashSet::new();
        let mut highest = 0u64;
        for (id, seq, latency) in &r.received {
            // 3.1.1 clients see no seq: the log gives it by msg-id.
            let Some(seq) = seq.or_else(|| log.get(id).copied()) else {
                continue;
            };
            if !seen.insert(seq) {
                report.wire_duplicates += 1;
                continue;
            }
            if seq < highest {
                report.out_of_order += 1;
            }
            highest = highest.max(seq);
            latencies.push(*latency);
        }
        let got: HashSet<&str> = r.received.iter().map(|(id, _, _)| id.as_str()).collect();
        if let Some(acked) = acked_per_room.get(r.room.as_str()) {
            report.missing += acked
                .iter()
                .filter(|id| !got.contains(*id) || !log.contains_key(**id))
                .count() as u64;
        }
    }
    latencies.sort_unstable();
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or(0)
    };
    report.p50_ms = at(0.50);
    report.p99_ms = at(0.99);
    report
}
