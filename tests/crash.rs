//! Crash consistency: the `roomq` binary is killed with SIGKILL at random
//! moments while 8 publishers send QoS 1 messages to a persistent
//! subscriber, and restarted on the same data directory, three times.
//! Reproduces the failure "the broker acknowledged a message, then died
//! before it reached the subscriber": every message that got a PUBACK must
//! reach the subscriber at least once. Duplicates (allowed by QoS 1 for
//! messages whose PUBACK did not get through) are counted and printed.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use rand::Rng;
use rmqtt_codec::types::QoS;
use rmqtt_codec::v5::{self, Packet};
use tokio::sync::watch;

const PUBLISHERS: usize = 8;
const KILLS: usize = 3;

/// Starts the binary on `port` (0 = any) over `dir`.
fn start_roomq(dir: &std::path::Path, port: u16) -> (Child, SocketAddr) {
    spawn_roomq(port, &["--data-dir".as_ref(), dir.as_os_str()])
}

fn subscriber_connect() -> v5::Connect {
    let mut c = connect5("crash-sub");
    c.clean_start = false;
    c.session_expiry_interval_secs = 3600;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr) = start_roomq(dir.path(), 0);
    let port = addr.port();
    let (addr_tx, addr_rx) = watch::channel(addr);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));

    // The subscriber: subscribes once, then reconnects to its session.
    let (mut sub, _) = Raw::try_connect5(addr, subscriber_connect())
        .await
        .expect("subscriber connects");
    sub.subscribe5(1, &[("crash/#", opts(QoS::AtLeastOnce))]).await;
    let received: Arc<Mutex<(HashSet<String>, u64)>> = Arc::default();
    let sub_task = {
        let (received, stop, addr_rx) = (received.clone(), stop.clone(), addr_rx.clone());
        tokio::spawn(async move {
            let mut conn = Some(sub);
            let mut idle_after_stop = 0;
            loop {
                let Some(raw) = conn.as_mut() else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let addr = *addr_rx.borrow();
                    conn = Raw::try_connect5(addr, subscriber_connect())
                        .await
                        .map(|(r, _)| r);
                    continue;
                };
                match raw.recv5_within(Duration::from_millis(500)).await {
                    Got::Packet(Packet::Publish(p)) => {
                        idle_after_stop = 0;
                        let text = String::from_utf8_lossy(&p.payload).into_owned();
                        {
                            let mut r = received.lock().unwrap();
                            if !r.0.insert(text) {
                                r.1 += 1;
                            }
                        }
                        if let Some(id) = p.packet_id {
                            raw.send5(Packet::PublishAck(v5::PublishAck {
                                packet_id: id,
                                ..Default::default()
                            }))
                            .await;
                        }
                    }
                    Got::Packet(_) => {}
                    Got::Closed => conn = None,
                    Got::Nothing => {
                        if stop.load(std::sync::atomic::Ordering::Relaxed) {
                            idle_after_stop += 1;
                            if idle_after_stop >= 6 {
                                return;
                            }
                        }
                    }
                }
            }
        })
    };

    // Publishers: one message at a time, remembering each acknowledged one.
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut publishers = Vec::new();
    for p in 0..PUBLISHERS {
        let (acked, stop, addr_rx) = (acked.clone(), stop.clone(), addr_rx.clone());
        publishers.push(tokio::spawn(async move {
            let mut seq = 0u32;
            let mut conn: Option<Raw> = None;
            let mut packet_id = 0u16;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let Some(raw) = conn.as_mut() else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let addr = *addr_rx.borrow();
                    conn = Raw::try_connect5(addr, connect5(&format!("crash-pub-{p}")))
                        .await
                        .map(|(r, _)| r);
                    continue;
                };
                packet_id = packet_id % 60000 + 1;
                let payload = format!("p{p}-{seq}");
                let mut msg = publish("crash/t", b"", QoS::AtLeastOnce, Some(packet_id));
                msg.payload = bytes::Bytes::from(payload.clone());
                raw.send5(Packet::Publish(Box::new(msg))).await;
                match raw.recv5_within(Duration::from_secs(5)).await {
                    Got::Packet(Packet::PublishAck(a)) if a.packet_id.get() == packet_id => {
                        acked.lock().unwrap().push(payload);
                        seq += 1;
                    }
                    _ => conn = None, // resent on the next connection (as a new message)
                }
            }
        }));
    }

    let mut rng = rand::rng();
    for kill in 0..KILLS {
        tokio::time::sleep(Duration::from_millis(rng.random_range(700..2000))).await;
        child.kill().expect("SIGKILL");
        child.wait().unwrap();
        let acked_so_far = acked.lock().unwrap().len();
        let (next, addr) = start_roomq(dir.path(), port);
        child = next;
        addr_tx.send_replace(addr);
        eprintln!(
            "kill {}: {acked_so_far} messages acknowledged before it",
            kill + 1
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for p in publishers {
        p.await.unwrap();
    }
    tokio::time::timeout(Duration::from_secs(60), sub_task)
        .await
        .expect("subscriber drains")
        .unwrap();
    child.kill().ok();

    let acked = acked.lock().unwrap().clone();
    let (received, duplicates) = received.lock().unwrap().clone();
    let missing: Vec<_> = acked.iter().filter(|m| !received.contains(*m)).collect();
    eprintln!(
        "crash test: {} acknowledged, {} distinct delivered, {duplicates} delivered twice, {} missing",
        acked.len(),
        received.len(),
        missing.len()
    );
    assert!(acked.len() > 100, "the publishers made progress");
    assert!(
        missing.is_empty(),
        "acknowledged but never delivered: {:?}",
        &missing[..missing.len().min(10)]
    );
}

/// A SUBACK promises the subscription: killed right after it, the broker
/// must come back with the session and the subscription. Likewise an
/// UNSUBACK: the filter must stay gone. Several rounds, since each kill
/// lands at a slightly different moment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_subscriptions_survive_sigkill() {
    const ROUNDS: usize = 4;
    let dir = tempfile::tempdir().unwrap();
    let (mut child, mut addr) = start_roomq(dir.path(), 0);
    let persistent = |id: &str| {
        let mut c = connect5(id);
        c.clean_start = false;
        c.session_expiry_interval_secs = 3600;
        c
    };
    let mut lost = Vec::new();
    for round in 0..ROUNDS {
        // Subscribe, kill on the SUBACK.
        let id = format!("sub-{round}");
        let topic = format!("crash/sub/{round}");
        let (mut sub, _) = Raw::connect5(addr, persistent(&id)).await;
        sub.subscribe5(1, &[(&topic, opts(QoS::AtLeastOnce))]).await;
        child.kill().expect("SIGKILL");
        child.wait().unwrap();
        drop(sub);
        (child, addr) = start_roomq(dir.path(), addr.port());

        let (mut sub, ack) = Raw::connect5(addr, persistent(&id)).await;
        let mut publisher = Raw::client5(addr, &format!("pub-{round}")).await;
        publisher.publish1_5(1, &topic, b"after the crash").await;
        let delivered = match sub.recv5_within(Duration::from_secs(5)).await {
            Got::Packet(Packet::Publish(p)) => {
                // Acknowledged, so it is not resent after the next kill.
                if let Some(packet_id) = p.packet_id {
                    sub.send5(Packet::PublishAck(v5::PublishAck {
                        packet_id,
                        ..Default::default()
                    }))
                    .await;
                }
                true
            }
            _ => false,
        };
        if !ack.session_present || !delivered {
            lost.push(format!(
                "round {round}: SUBACK then SIGKILL: session_present={} delivered={delivered}",
                ack.session_present
            ));
        }

        // Unsubscribe, kill on the UNSUBACK.
        sub.send5(Packet::Unsubscribe(v5::Unsubscribe {
            packet_id: pid(2),
            user_properties: Vec::new(),
            topic_filters: vec![topic.as_str().into()],
        }))
        .await;
        loop {
            match sub.recv5().await.packet() {
                Packet::UnsubscribeAck(_) => break,
                Packet::Publish(_) | Packet::PublishAck(_) => {}
                other => panic!("expected UNSUBACK, got {other:?}"),
            }
        }
        child.kill().expect("SIGKILL");
        child.wait().unwrap();
        drop((sub, publisher));
        (child, addr) = start_roomq(dir.path(), addr.port());

        let (mut sub, _) = Raw::connect5(addr, persistent(&id)).await;
        let mut publisher = Raw::client5(addr, &format!("pub-{round}")).await;
        publisher.publish1_5(1, &topic, b"after the unsubscribe").await;
        if let Got::Packet(Packet::Publish(p)) = sub.recv5_within(Duration::from_secs(2)).await {
            lost.push(format!(
                "round {round}: UNSUBACK then SIGKILL: still delivered {:?}",
                p.payload
            ));
        }
    }
    child.kill().ok();
    assert!(lost.is_empty(), "{lost:#?}");
}

/// QoS 2 packet ids: once the broker sent PUBCOMP, the id is free again.
/// Killed right after a PUBCOMP, the broker must not come back still
/// waiting for that PUBREL: it would take the client's next message with
/// the same id for a resend, answer PUBREC and drop it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completed_qos2_ids_stay_free_after_sigkill() {
    const ROUNDS: u16 = 4;
    let dir = tempfile::tempdir().unwrap();
    let (mut child, mut addr) = start_roomq(dir.path(), 0);
    let persistent = |id: &str| {
        let mut c = connect5(id);
        c.clean_start = false;
        c.session_expiry_interval_secs = 3600;
        c
    };
    let (mut sub, _) = Raw::connect5(addr, persistent("qos2-sub")).await;
    sub.subscribe5(1, &[("crash/qos2", opts(QoS::ExactlyOnce))]).await;
    drop(sub);
    let mut lost = Vec::new();
    for round in 0..ROUNDS {
        let packet_id = round + 1;
        let (mut publisher, _) = Raw::connect5(addr, persistent("qos2-pub")).await;
        let mut first = publish("crash/qos2", b"", QoS::ExactlyOnce, Some(packet_id));
        first.payload = bytes::Bytes::from(format!("first {round}"));
        publisher.send5(Packet::Publish(Box::new(first))).await;
        assert!(matches!(
            publisher.recv5().await.packet(),
            Packet::PublishReceived(_)
        ));
        publisher
            .send5(Packet::PublishRelease(v5::PublishAck2 {
                packet_id: pid(packet_id),
                ..Default::default()
            }))
            .await;
        assert!(matches!(
            publisher.recv5().await.packet(),
            Packet::PublishComplete(_)
        ));
        child.kill().expect("SIGKILL");
        child.wait().unwrap();
        drop(publisher);
        (child, addr) = start_roomq(dir.path(), addr.port());

        // The same packet id, for a new message.
        let (mut publisher, _) = Raw::connect5(addr, persistent("qos2-pub")).await;
        let mut second = publish("crash/qos2", b"", QoS::ExactlyOnce, Some(packet_id));
        second.payload = bytes::Bytes::from(format!("second {round}"));
        publisher.send5(Packet::Publish(Box::new(second))).await;
        assert!(matches!(
            publisher.recv5().await.packet(),
            Packet::PublishReceived(_)
        ));
        publisher
            .send5(Packet::PublishRelease(v5::PublishAck2 {
                packet_id: pid(packet_id),
                ..Default::default()
            }))
            .await;
        assert!(matches!(
            publisher.recv5().await.packet(),
            Packet::PublishComplete(_)
        ));

        // The subscriber's session holds both messages.
        let (mut sub, _) = Raw::connect5(addr, persistent("qos2-sub")).await;
        let mut got = Vec::new();
        while let Got::Packet(packet) = sub.recv5_within(Duration::from_secs(2)).await {
            match packet {
                Packet::Publish(p) => {
                    got.push(String::from_utf8_lossy(&p.payload).into_owned());
                    if let Some(id) = p.packet_id {
                        sub.send5(Packet::PublishReceived(v5::PublishAck {
                            packet_id: id,
                            ..Default::default()
                        }))
                        .await;
                    }
                }
                Packet::PublishRelease(rel) => {
                    sub.send5(Packet::PublishComplete(v5::PublishAck2 {
                        packet_id: rel.packet_id,
                        ..Default::default()
                    }))
                    .await;
                }
                _ => {}
            }
        }
        if !got.contains(&format!("second {round}")) {
            lost.push(format!("round {round}: PUBCOMP then SIGKILL, then a new message with packet id {packet_id}: subscriber got {got:?}"));
        }
    }
    child.kill().ok();
    assert!(lost.is_empty(), "{lost:#?}");
}

/// QoS 2 towards a subscriber: once the broker sent PUBREL, the message is
/// delivered (exactly once). Killed right after the subscriber's PUBCOMP,
/// the broker may resend the PUBREL but never the PUBLISH: the subscriber
/// freed the packet id and would take it for a new message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn released_qos2_deliveries_are_not_resent_after_sigkill() {
    const ROUNDS: usize = 4;
    let dir = tempfile::tempdir().unwrap();
    let (mut child, mut addr) = start_roomq(dir.path(), 0);
    let mut subscriber = connect5("qos2-receiver");
    subscriber.clean_start = false;
    subscriber.session_expiry_interval_secs = 3600;
    let (mut sub, _) = Raw::connect5(addr, subscriber.clone()).await;
    sub.subscribe5(1, &[("crash/once", opts(QoS::ExactlyOnce))]).await;
    let mut twice = Vec::new();
    for round in 0..ROUNDS {
        let payload = format!("once {round}");
        let mut publisher = Raw::client5(addr, "qos2-sender").await;
        let mut p = publish("crash/once", b"", QoS::ExactlyOnce, Some(1));
        p.payload = bytes::Bytes::from(payload.clone());
        publisher.send5(Packet::Publish(Box::new(p))).await;
        assert!(matches!(
            publisher.recv5().await.packet(),
            Packet::PublishReceived(_)
        ));
        publisher
            .send5(Packet::PublishRelease(v5::PublishAck2 {
                packet_id: pid(1),
                ..Default::default()
            }))
            .await;
        assert!(matches!(
            publisher.recv5().await.packet(),
            Packet::PublishComplete(_)
        ));
        let delivered = sub.publish5().await;
        assert_eq!(delivered.qos, QoS::ExactlyOnce);
        let packet_id = delivered.packet_id.expect("QoS 2 has a packet id");
        sub.send5(Packet::PublishReceived(v5::PublishAck {
            packet_id,
            ..Default::default()
        }))
        .await;
        loop {
            match sub.recv5().await.packet() {
                Packet::PublishRelease(_) => break,
                Packet::PublishAck(_) => {}
                other => panic!("expected PUBREL, got {other:?}"),
            }
        }
        sub.send5(Packet::PublishComplete(v5::PublishAck2 {
            packet_id,
            ..Default::default()
        }))
        .await;
        // Let the PUBCOMP reach the broker; whether it was stored does not
        // matter (a resent PUBREL is allowed).
        tokio::time::sleep(Duration::from_millis(50)).await;
        child.kill().expect("SIGKILL");
        child.wait().unwrap();
        drop((sub, publisher));
        (child, addr) = start_roomq(dir.path(), addr.port());

        (sub, _) = Raw::connect5(addr, subscriber.clone()).await;
        while let Got::Packet(packet) = sub.recv5_within(Duration::from_secs(2)).await {
            match packet {
                Packet::Publish(p) => {
                    twice.push(format!(
                        "round {round}: {:?} delivered again after PUBREL, PUBCOMP and SIGKILL",
                        p.payload
                    ));
                    if let Some(packet_id) = p.packet_id {
                        sub.send5(Packet::PublishReceived(v5::PublishAck {
                            packet_id,
                            ..Default::default()
                        }))
                        .await;
                    }
                }
                Packet::PublishRelease(rel) => {
                    sub.send5(Packet::PublishComplete(v5::PublishAck2 {
                        packet_id: rel.packet_id,
                        ..Default::default()
                    }))
                    .await;
                }
                _ => {}
            }
        }
    }
    child.kill().ok();
    assert!(twice.is_empty(), "{twice:#?}");
}
