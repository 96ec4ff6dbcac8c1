//! Writes that no publisher's commit covers reach the disk soon, not only
//! with the next write that needs a commit: the `roomq` binary is killed
//! with SIGKILL after a quiet half second and restarted on the same data.
//! Before the fix (attacker pass, 2026-12-07) a room message queued for a
//! shared group whose members were all offline was lost (its record was
//! written after the room message's commit and waited for the next one),
//! and a persistent session got again the messages it had acknowledged.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::chat::user5;
use common::*;
use rmqtt_codec::types::QoS;
use rmqtt_codec::v5::{self, Packet};

/// How long the broker is left alone before the kill: many flushes, and
/// no write after the ones under test that would need a commit.
const QUIET: Duration = Duration::from_millis(500);

/// The broker process, killed with SIGKILL when dropped: at the end of a
/// step, and when an assertion fails (a leftover broker would keep the
/// test runner's output pipe open).
struct Broker(std::process::Child);

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(dir: &std::path::Path, port: u16) -> (Broker, SocketAddr) {
    let (child, addr) = spawn_roomq(port, &["--data-dir".as_ref(), dir.as_os_str()]);
    (Broker(child), addr)
}

fn kill(broker: Broker) {
    drop(broker);
}

/// The payloads of what arrives within a second, each acknowledged.
async fn arriving(c: &mut Raw) -> Vec<String> {
    let mut got = Vec::new();
    while let Got::Packet(packet) = c.recv5_within(Duration::from_secs(1)).await {
        if let Packet::Publish(p) = packet {
            got.push(String::from_utf8_lossy(&p.payload).into_owned());
            if let Some(id) = p.packet_id {
                c.send5(Packet::PublishAck(v5::PublishAck {
                    packet_id: id,
                    ..Default::default()
                }))
                .await;
            }
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_message_queued_for_an_offline_shared_group_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let (child, addr) = start(dir.path(), 0);
    let filter = "$share/grp/rooms/shr/msg/+";
    {
        let (mut member, _) = Raw::connect5(addr, persistent5("group-member")).await;
        member.subscribe5(1, &[(filter, opts(QoS::AtLeastOnce))]).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut alice = user5(addr, "alice-phone", "alice").await;
    for (id, body) in [(1, &b"first"[..]), (2, &b"second"[..])] {
        let ack = alice.publish1_5(id, "rooms/shr/msg/alice", body).await;
        assert_eq!(ack.reason_code, v5::PublishAckReason::Success);
    }
    tokio::time::sleep(QUIET).await;
    kill(child);

    let (child, addr) = start(dir.path(), addr.port());
    let (mut member, ack) = Raw::connect5(addr, persistent5("group-member")).await;
    assert!(ack.session_present);
    assert_eq!(arriving(&mut member).await, ["first", "second"]);
    kill(child);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_do_not_come_back_after_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let (child, addr) = start(dir.path(), 0);
    let (mut keeper, _) = Raw::connect5(addr, persistent5("keeper")).await;
    keeper.subscribe5(1, &[("q/#", opts(QoS::AtLeastOnce))]).await;
    let mut publisher = Raw::client5(addr, "publisher").await;
    for (id, body) in [(1, &b"one"[..]), (2, &b"two"[..]), (3, &b"three"[..])] {
        publisher.publish1_5(id, "q/x", body).await;
    }
    assert_eq!(arriving(&mut keeper).await, ["one", "two", "three"]);
    tokio::time::sleep(QUIET).await;
    kill(child);

    let (child, addr) = start(dir.path(), addr.port());
    let (mut keeper, ack) = Raw::connect5(addr, persistent5("keeper")).await;
    assert!(ack.session_present);
    assert_eq!(arriving(&mut keeper).await, Vec::<String>::new());
    kill(child);
}
