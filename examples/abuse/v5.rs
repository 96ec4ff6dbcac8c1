//! Loads of the issue "Every identity has a budget" that need 5.0 (reason
//! codes in PUBACKs, User Properties, topic aliases): receipts in fresh
//! rooms (finding 2), retained messages made of properties (4), posts that
//! open rooms (8) and topic aliases (13).

use std::collections::BTreeMap;
use std::num::NonZeroU16;
use std::time::Duration;

use bytes::Bytes;
use bytestring::ByteString;
use rmqtt_codec::types::QoS;
use rmqtt_codec::v5;

use crate::client::{Client5, Got};
use crate::{mib, proc_status, settle, walk_size, Broker, Extra, Probe};

/// Reason codes and how often each came.
pub type Codes = BTreeMap<String, usize>;

pub fn codes_text(codes: &Codes) -> String {
    let parts: Vec<String> = codes.iter().map(|(k, v)| format!("{v} {k}")).collect();
    parts.join(", ")
}

/// Publishes the broker took: 0x00, and 0x10 (taken, nobody subscribed).
pub fn accepted(codes: &Codes) -> usize {
    ["Success", "NoMatchingSubscribers"]
        .iter()
        .filter_map(|k| codes.get(*k))
        .sum()
}

/// Sends `n` QoS 1 publishes made by `make(i, packet id)`, with at most
/// `window` unacknowledged; the PUBACK reason codes (a missing PUBACK, or a
/// closed connection, counted as such).
pub async fn pipeline(
    c: &mut Client5,
    n: usize,
    window: usize,
    make: impl Fn(usize, u16) -> v5::Packet,
) -> Codes {
    let mut codes = Codes::new();
    let mut open = 0;
    for i in 0..n {
        if open == window {
            match c.puback(Duration::from_secs(30)).await {
                Some(code) => *codes.entry(format!("{code:?}")).or_default() += 1,
                None => {
                    *codes.entry("closed or silent".into()).or_default() += n - i + open;
                    return codes;
                }
            }
            open -= 1;
        }
        if !c.send(make(i, (i % 60_000) as u16 + 1)).await {
            *codes.entry("closed or silent".into()).or_default() += n - i + open;
            return codes;
        }
        open += 1;
    }
    for _ in 0..open {
        let code = c.puback(Duration::from_secs(30)).await;
        let name = code.map_or("closed or silent".into(), |c| format!("{c:?}"));
        *codes.entry(name).or_default() += 1;
    }
    codes
}

/// The unacknowledged publishes a client may have: the broker's Receive
/// Maximum, at most 32.
pub fn window(ack: &v5::ConnectAck) -> usize {
    usize::from(ack.receive_max.get()).min(32)
}

/// One QoS 1 publish by a fresh connection of `id`: its PUBACK code.
async fn one_post(broker: &Broker, id: &str, topic: &str, retain: bool) -> String {
    let Some((mut c, _)) = Client5::connect(broker.addr, id).await else {
        return "no connection".into();
    };
    c.send(Client5::publish(
        topic,
        Bytes::from_static(b"x"),
        QoS::AtLeastOnce,
        1,
        retain,
    ))
    .await;
    match c.puback(Duration::from_secs(30)).await {
        Some(code) => format!("{code:?}"),
        None => "no PUBACK".into(),
    }
}

/// Finding 2 (receipt-flood): alice sends `{seq: 0}` to
/// `rooms/{fresh}/read/alice` for 100,000 fresh rooms; then bob's retained
/// publish to a plain topic.
pub async fn receipt_flood(broker: &Broker) -> Extra {
    let Some((mut alice, ack)) = Client5::connect(broker.addr, "alice").await else {
        return "no connection".into();
    };
    // CBOR `{seq: 0}`: a map of one pair, text key "seq", unsigned 0.
    let receipt = Bytes::from_static(b"\xa1\x63seq\x00");
    let n = broker.n(100_000);
    let codes = pipeline(&mut alice, n, window(&ack), |i, id| {
        Client5::publish(
            &format!("rooms/rcpt{i}/read/alice"),
            receipt.clone(),
            QoS::AtLeastOnce,
            id,
            false,
        )
    })
    .await;
    let bob = one_post(broker, "bob", "plain/topic", true).await;
    format!(
        "{} of {n} receipts accepted ({}); bob's retained publish: {bob}",
        accepted(&codes),
        codes_text(&codes)
    )
}

/// Finding 4 (property-retained): 100 retained messages of 1 byte and
/// 7.9 MiB of User Properties each, to distinct topics, with
/// `max_retained_bytes = 1048576` (Mosquitto: no such limit).
pub async fn property_retained(broker: &Broker) -> Extra {
    let Some((mut c, _)) = Client5::connect(broker.addr, "props").await else {
        return "no connection".into();
    };
    // 129 pairs of a 64,200-byte value: 7.9 MiB, under `max_packet_size`.
    let value = ByteString::from("v".repeat(64_200));
    let properties: Vec<(ByteString, ByteString)> = (0..129)
        .map(|j| (ByteString::from(format!("k{j}")), value.clone()))
        .collect();
    let n = broker.n(100);
    let codes = pipeline(&mut c, n, 1, |i, id| {
        let mut p = Client5::publish(
            &format!("prop/{i}"),
            Bytes::from_static(b"x"),
            QoS::AtLeastOnce,
            id,
            true,
        );
        if let v5::Packet::Publish(p) = &mut p {
            if let Some(props) = p.properties.as_mut() {
                props.user_properties = properties.clone();
            }
        }
        p
    })
    .await;
    settle(broker.pid(), Duration::from_secs(10)).await;
    format!(
        "{} of {n} retained accepted ({}); data dir {} MiB",
        accepted(&codes),
        codes_text(&codes),
        walk_size(broker.dir.path()) / (1024 * 1024)
    )
}

/// Finding 8 (room-flood): mallory posts 100,000 one-byte QoS 1 messages
/// to 100,000 fresh rooms; then carol's first post in a new room, before
/// and after a restart.
pub async fn room_flood(broker: &mut Broker, probe: &mut Probe) -> Extra {
    let Some((mut mallory, ack)) = Client5::connect(broker.addr, "mallory").await else {
        return "no connection".into();
    };
    let n = broker.n(100_000);
    let codes = pipeline(&mut mallory, n, window(&ack), |i, id| {
        Client5::publish(
            &format!("rooms/r{i}/msg/mallory"),
            Bytes::from_static(b"x"),
            QoS::AtLeastOnce,
            id,
            false,
        )
    })
    .await;
    let carol = one_post(broker, "carol", "rooms/fresh-a/msg/carol", false).await;
    drop(mallory);
    probe.stop().await;
    broker.restart();
    let rss = settle(broker.pid(), Duration::from_secs(10)).await;
    let carol_after = one_post(broker, "carol", "rooms/fresh-b/msg/carol", false).await;
    format!(
        "{} of {n} accepted ({}); carol's first post in a new room: {carol}; after a restart \
         (RSS {} MiB): {carol_after}",
        accepted(&codes),
        codes_text(&codes),
        mib(rss)
    )
}

/// Finding 13 (alias-flood): 500 connections, each registering 64 topic
/// aliases with 65 KB topics (QoS 0, nobody subscribed). Mosquitto runs
/// with its default `max_topic_alias` (10): it disconnects at alias 11.
pub async fn alias_flood(broker: &Broker) -> Extra {
    let n = broker.n(500);
    let pad = "t".repeat(65_000);
    let mut open = Vec::new();
    let mut refused = Codes::new();
    for i in 0..n {
        let Some((mut c, ack)) = Client5::connect(broker.addr, &format!("alias-{i}")).await else {
            *refused.entry("no CONNACK".into()).or_default() += 1;
            continue;
        };
        if ack.reason_code != v5::ConnectAckReason::Success {
            *refused
                .entry(format!("CONNACK {:?}", ack.reason_code))
                .or_default() += 1;
            continue;
        }
        let mut sent = true;
        for k in 1..=64u16 {
            let topic = format!("a/{i}/{k}/{pad}");
            let mut p = Client5::publish(
                &topic[..65_000],
                Bytes::from_static(b"x"),
                QoS::AtMostOnce,
                0,
                false,
            );
            if let v5::Packet::Publish(p) = &mut p {
                if let Some(props) = p.properties.as_mut() {
                    props.topic_alias = NonZeroU16::new(k);
                }
            }
            if !c.send(p).await {
                sent = false;
                break;
            }
        }
        // A PINGREQ round trip: the broker has read the aliases, or it
        // says why it closed.
        let alive = sent
            && c.send(v5::Packet::PingRequest).await
            && loop {
                match c.recv(Duration::from_secs(30)).await {
                    Got::Packet(v5::Packet::PingResponse) => break true,
                    Got::Packet(v5::Packet::Disconnect(d)) => {
                        *refused
                            .entry(format!("DISCONNECT {:?}", d.reason_code))
                            .or_default() += 1;
                        break false;
                    }
                    Got::Packet(_) => {}
                    Got::Closed | Got::Nothing => {
                        *refused.entry("closed".into()).or_default() += 1;
                        break false;
                    }
                }
            };
        if alive {
            open.push(c);
        } else if !sent {
            *refused.entry("closed while sending".into()).or_default() += 1;
        }
    }
    let (rss, _, _) = proc_status(broker.pid());
    format!(
        "{} of {n} connections hold 64 aliases of 65 KB; the others: {}; RSS with them {} MiB",
        open.len(),
        if refused.is_empty() {
            "none".into()
        } else {
            codes_text(&refused)
        },
        mib(rss)
    )
}
