//! One message to many offline persistent sessions is stored once: the
//! sessions' queues hold references to one stored body (issue 23: 60
//! sessions and one 15 MiB message took 1.6 GiB of disk and 1.8 GiB of
//! memory after a restart, one copy per session).

mod common;

use common::*;
use rmqtt_codec::types::QoS;
use rmqtt_codec::v5::{self, Packet};

const SESSIONS: usize = 20;
const BODY: usize = 2 * 1024 * 1024;

/// Bytes of every file under `dir`.
fn dir_size(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                dirs.push(entry.path());
            } else {
                total += meta.len();
            }
        }
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_message_to_many_offline_sessions_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_with(sled_config(dir.path())).await;
    let addr = broker.local_addr();
    for i in 0..SESSIONS {
        let (mut sub, _) = Raw::connect5(addr, persistent5(&format!("member-{i}"))).await;
        sub.subscribe5(1, &[("big/#", opts(QoS::AtLeastOnce))]).await;
        sub.send5(Packet::Disconnect(v5::Disconnect::default())).await;
    }
    // The session records are on disk (each SUBACK waited for them); what
    // the publish adds is measured from here.
    let mut publisher = Raw::client5(addr, "writer").await;
    publisher.publish1_5(1, "big/warmup", b"w").await;
    let before = dir_size(dir.path());
    let mut p = publish("big/file", b"", QoS::AtLeastOnce, Some(2));
    p.payload = bytes::Bytes::from(vec![7u8; BODY]);
    publisher.send5(Packet::Publish(Box::new(p))).await;
    assert!(matches!(publisher.recv5().await.packet(), Packet::PublishAck(_)));
    let grown = dir_size(dir.path()).saturating_sub(before);
    eprintln!(
        "one {BODY}-byte message to {SESSIONS} offline sessions: the data directory grew by {grown} bytes"
    );
    assert!(
        grown < 3 * BODY as u64 + 1024 * 1024,
        "one {BODY}-byte message to {SESSIONS} offline sessions grew the data directory by {grown} bytes"
    );
    broker.shutdown().await;

    // After a restart every session gets it (and the warm-up before it).
    let broker = start_with(sled_config(dir.path())).await;
    let addr = broker.local_addr();
    for i in 0..SESSIONS {
        let (mut sub, ack) = Raw::connect5(addr, persistent5(&format!("member-{i}"))).await;
        assert!(ack.session_present);
        let warmup = sub.publish5().await;
        assert_eq!(&warmup.payload[..], b"w");
        let big = sub.publish5().await;
        assert_eq!((&*big.topic, big.payload.len()), ("big/file", BODY));
        assert!(big.payload.iter().all(|b| *b == 7));
        for p in [warmup, big] {
            sub.send5(Packet::PublishAck(v5::PublishAck {
                packet_id: p.packet_id.unwrap(),
                ..Default::default()
            }))
            .await;
        }
        sub.send5(Packet::Disconnect(v5::Disconnect::default())).await;
    }
    broker.shutdown().await;

    // Acknowledged everywhere: nothing comes again after another restart.
    let broker = start_with(sled_config(dir.path())).await;
    let (mut sub, ack) = Raw::connect5(broker.local_addr(), persistent5("member-0")).await;
    assert!(ack.session_present);
    assert!(matches!(sub.recv5_within(QUIET).await, Got::Nothing));
    broker.shutdown().await;
}
