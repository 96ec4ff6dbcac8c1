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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr) = start_roomq(dir.path(), 0);
    let port = addr.port();
    let (addr_tx, addr_rx) = watch::channel(addr);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));

    // The subscriber: subscribes once, then reconnects to its session.
    let (mut sub, _) = Raw::try_connect5(addr, persistent5("crash-sub"))
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
                    conn = Raw::try_connect5(addr, persistent5("crash-sub"))
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
