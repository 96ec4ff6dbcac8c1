//! Loads of the third attack pass on what an account pays for: clean
//! sessions' subscriptions and queues (F1), presence records of names one
//! address invents (F3), and connections of invented names (F4). The last
//! two run with `claimed_names_budget_on_loopback = false`, so a loopback
//! address pays as a remote one does; the attacker connects from
//! 127.0.0.2, its victim from 127.0.0.3.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use bytestring::ByteString;
use rmqtt_codec::types::QoS;
use rmqtt_codec::v3::Packet;
use rmqtt_codec::v5;
use tokio::net::TcpStream;

use crate::client::{pid, tcp_from, Client, Client5, Got};
use crate::v5::{codes_text, pipeline, window, Codes};
use crate::{mib, proc_status, settle, walk_size, Broker, Extra};

const ATTACKER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const VICTIM: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);

/// A clean 5.0 connection of client id `id` claiming `user`, from `from`
/// (127.0.0.1 when `None`).
async fn connect5(
    broker: &Broker,
    from: Option<Ipv4Addr>,
    id: &str,
    user: &str,
) -> Option<(Client5, v5::ConnectAck)> {
    let stream = match from {
        Some(from) => tcp_from(broker.addr, from).await?,
        None => TcpStream::connect(broker.addr).await.ok()?,
    };
    Client5::handshake(stream, Client5::clean(id, Some(user))).await
}

/// Sends a SUBSCRIBE and waits for its SUBACK: a reason code per filter
/// (or "closed or silent" for each).
async fn subscribe5(c: &mut Client5, filters: Vec<ByteString>, qos: QoS) -> Vec<String> {
    let n = filters.len();
    let options = v5::SubscriptionOptions {
        qos,
        ..Default::default()
    };
    let sent = c
        .send(v5::Packet::Subscribe(v5::Subscribe {
            packet_id: pid(1),
            id: None,
            user_properties: Vec::new(),
            topic_filters: filters.into_iter().map(|f| (f, options)).collect(),
        }))
        .await;
    if sent {
        loop {
            match c.recv(Duration::from_secs(60)).await {
                Got::Packet(v5::Packet::SubscribeAck(ack)) => {
                    return ack.status.iter().map(|s| format!("{s:?}")).collect();
                }
                Got::Packet(_) => {}
                Got::Closed | Got::Nothing => break,
            }
        }
    }
    vec!["closed or silent".into(); n]
}

/// F1 (clean-sessions): one name, 100 clean connections, each subscribing
/// 1,000 filters of 1,000 bytes; then 10 clean connections of another
/// name subscribed to `q/#` at QoS 1 that never read, and 320 messages of
/// 64 KiB to `q/x`. What each identity was granted and held: the filters'
/// SUBACK codes, and the messages the non-readers got once they read.
pub async fn clean_sessions(broker: &Broker) -> Extra {
    let connections = broker.n(100);
    let mut codes = Codes::new();
    let mut held = Vec::new();
    for i in 0..connections {
        let Some((mut c, ack)) = connect5(broker, None, &format!("mal-{i}"), "mal").await else {
            *codes.entry("no CONNACK".into()).or_default() += 1000;
            continue;
        };
        if ack.reason_code != v5::ConnectAckReason::Success {
            *codes.entry(format!("CONNACK {:?}", ack.reason_code)).or_default() += 1000;
            continue;
        }
        let filters = (0..1000)
            .map(|k| {
                let mut f = format!("f/{i}/{k}/");
                f.extend(std::iter::repeat_n('x', 1000 - f.len()));
                ByteString::from(f)
            })
            .collect();
        for code in subscribe5(&mut c, filters, QoS::AtMostOnce).await {
            *codes.entry(code).or_default() += 1;
        }
        held.push(c);
    }
    let granted = codes.get("GrantedQos0").copied().unwrap_or(0);
    let rss_filters = settle(broker.pid(), Duration::from_secs(10)).await;

    let mut readers = Vec::new();
    for i in 0..broker.n(10) {
        if let Some((mut c, _)) = connect5(broker, None, &format!("nr-{i}"), "nr").await {
            subscribe5(&mut c, vec!["q/#".into()], QoS::AtLeastOnce).await;
            readers.push(c);
        }
    }
    let Some((mut publisher, ack)) = Client5::connect(broker.addr, "q-pub").await else {
        return "no connection".into();
    };
    let body = Bytes::from(vec![b'q'; 64 * 1024]);
    let n = broker.n(320);
    let published = pipeline(&mut publisher, n, window(&ack), |_, id| {
        Client5::publish("q/x", body.clone(), QoS::AtLeastOnce, id, false)
    })
    .await;
    let rss_queued = settle(broker.pid(), Duration::from_secs(10)).await;
    let (mut got, mut bytes) = (0usize, 0usize);
    for r in &mut readers {
        while let Got::Packet(p) = r.recv(Duration::from_secs(1)).await {
            if let v5::Packet::Publish(p) = p {
                got += 1;
                bytes += p.payload.len();
                if let Some(packet_id) = p.packet_id {
                    r.send(v5::Packet::PublishAck(v5::PublishAck {
                        packet_id,
                        reason_code: v5::PublishAckReason::Success,
                        properties: Vec::new(),
                        reason_string: None,
                    }))
                    .await;
                }
            }
        }
    }
    drop(held);
    format!(
        "{granted} of {} filters of 1,000 B over {connections} clean connections of one name \
         granted ({}; RSS {} MiB); {n} × 64 KiB ({}) to {} clean non-readers of another name: \
         they held {got} messages ({} MiB) in all (RSS {} MiB)",
        connections * 1000,
        codes_text(&codes),
        mib(rss_filters),
        codes_text(&published),
        readers.len(),
        bytes / (1024 * 1024),
        mib(rss_queued)
    )
}

/// `user` connects from `from` with a clean 3.1.1 session, joins the
/// lobby (which shows its presence) and leaves; whether it got in.
async fn visit_lobby(addr: SocketAddr, from: Ipv4Addr, id: &str, user: &str) -> bool {
    let Some(stream) = tcp_from(addr, from).await else {
        return false;
    };
    let Some((mut c, true)) = Client::handshake(stream, id, Some((user, "")), true).await else {
        return false;
    };
    c.subscribe(1, "rooms/lobby/msg/+").await;
    let joined = c.suback(Duration::from_secs(10)).await;
    c.send(Packet::Disconnect).await;
    joined
}

/// F3 (presence-claims): carol visits the lobby from 127.0.0.3; then
/// 40,000 invented 128-byte names visit it from 127.0.0.2 (20 at a time).
/// The retained `$presence` records a new subscriber gets, whether
/// carol's is among them, RSS and the data directory.
pub async fn presence_claims(broker: &Broker) -> Extra {
    let carol = visit_lobby(broker.addr, VICTIM, "carol", "carol").await;
    let each = broker.n(40_000).div_ceil(20);
    let workers: Vec<_> = (0..20usize)
        .map(|w| {
            let addr = broker.addr;
            tokio::spawn(async move {
                let mut joined = 0;
                for i in 0..each {
                    let mut name = format!("n{w:02}{i:06}");
                    name.extend(std::iter::repeat_n('n', 128 - name.len()));
                    if visit_lobby(addr, ATTACKER, &format!("p{w}-{i}"), &name).await {
                        joined += 1;
                    }
                }
                joined
            })
        })
        .collect();
    let mut joined = 0;
    for w in workers {
        joined += w.await.unwrap_or(0);
    }
    let rss = settle(broker.pid(), Duration::from_secs(10)).await;
    let Some((mut watcher, true)) = Client::connect(broker.addr, "watcher", None).await else {
        return "no connection".into();
    };
    watcher.subscribe(1, "$presence/+").await;
    let (mut records, mut carols) = (0, 0);
    while let Some(p) = watcher.recv(Duration::from_secs(2)).await {
        if let Packet::Publish(p) = p {
            records += 1;
            if &*p.topic == "$presence/carol" {
                carols += 1;
            }
        }
    }
    format!(
        "{joined} of {} invented names from one address joined the lobby (carol from another: {}); \
         {records} retained $presence records, carol's {}; RSS {} MiB, data dir {} MiB",
        each * 20,
        if carol { "joined" } else { "refused" },
        if carols > 0 { "kept" } else { "absent" },
        mib(rss),
        walk_size(broker.dir.path()) / (1024 * 1024)
    )
}

/// F4 (connection-claims): with `max_connections = 2000`, 2,500 clean
/// connections from 127.0.0.2, each claiming a fresh name, held open; then
/// carol's from 127.0.0.3.
pub async fn connection_claims(broker: &Broker) -> Extra {
    let n = broker.n(2_500);
    let mut codes = Codes::new();
    let mut held = Vec::new();
    for i in 0..n {
        let name = format!("c{:08x}{i}", rand::random::<u32>());
        match connect5(broker, Some(ATTACKER), &name, &name).await {
            Some((c, ack)) if ack.reason_code == v5::ConnectAckReason::Success => {
                *codes.entry("Success".into()).or_default() += 1;
                held.push(c);
            }
            Some((_, ack)) => *codes.entry(format!("{:?}", ack.reason_code)).or_default() += 1,
            None => *codes.entry("closed without CONNACK".into()).or_default() += 1,
        }
    }
    let (rss, _, _) = proc_status(broker.pid());
    let carol = match connect5(broker, Some(VICTIM), "carol", "carol").await {
        Some((_, ack)) => format!("{:?}", ack.reason_code),
        None => "closed without CONNACK".into(),
    };
    format!(
        "{} of {n} invented names from one address connected ({}); then carol from another \
         address: {carol}; RSS {} MiB",
        held.len(),
        codes_text(&codes),
        mib(rss)
    )
}
