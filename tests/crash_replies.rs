//! Every reply that promises state must still hold after a SIGKILL that
//! comes right after it. The `roomq` binary is killed the moment the reply
//! arrives and restarted on the same data directory, a few rounds each,
//! since each kill lands at a slightly different moment.
//!
//! - SUBACK and UNSUBACK: the subscription is there, or gone, after the
//!   restart (with Session Present = 1).
//! - PUBCOMP to a publisher: the packet id is free again.
//! - PUBREL to a subscriber: the message is never sent again as a PUBLISH.
//!
//! Each of these failed in every round before the broker waited for the
//! flush before replying.

mod common;

use std::net::SocketAddr;
use std::process::Child;
use std::time::Duration;

use common::*;
use rmqtt_codec::types::QoS;
use rmqtt_codec::v5::{self, Packet};

const ROUNDS: u16 = 4;

fn start(dir: &std::path::Path, port: u16) -> (Child, SocketAddr) {
    spawn_roomq(port, &["--data-dir".as_ref(), dir.as_os_str()])
}

/// SIGKILL, then the broker again on the same port and data directory.
fn kill_and_restart(child: &mut Child, dir: &std::path::Path, addr: &mut SocketAddr) {
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    (*child, *addr) = start(dir, addr.port());
}

/// A QoS 2 PUBLISH through to its PUBCOMP.
async fn publish_qos2(publisher: &mut Raw, packet_id: u16, topic: &str, payload: String) {
    let mut p = publish(topic, b"", QoS::ExactlyOnce, Some(packet_id));
    p.payload = bytes::Bytes::from(payload);
    publisher.send5(Packet::Publish(Box::new(p))).await;
    let rec = publisher.recv5().await.packet();
    assert!(
        matches!(rec, Packet::PublishReceived(_)),
        "expected PUBREC, got {rec:?}"
    );
    publisher
        .send5(Packet::PublishRelease(v5::PublishAck2 {
            packet_id: pid(packet_id),
            ..Default::default()
        }))
        .await;
    let comp = publisher.recv5().await.packet();
    assert!(
        matches!(comp, Packet::PublishComplete(_)),
        "expected PUBCOMP, got {comp:?}"
    );
}

/// Everything a subscriber receives until it is quiet for 2 s, each QoS
/// 1/2 flow answered; the payloads of the PUBLISH packets.
async fn drain(sub: &mut Raw) -> Vec<String> {
    let mut got = Vec::new();
    while let Got::Packet(packet) = sub.recv5_within(Duration::from_secs(2)).await {
        let reply = match packet {
            Packet::Publish(p) => {
                got.push(String::from_utf8_lossy(&p.payload).into_owned());
                match (p.qos, p.packet_id) {
                    (QoS::AtLeastOnce, Some(packet_id)) => Packet::PublishAck(v5::PublishAck {
                        packet_id,
                        ..Default::default()
                    }),
                    (QoS::ExactlyOnce, Some(packet_id)) => Packet::PublishReceived(v5::PublishAck {
                        packet_id,
                        ..Default::default()
                    }),
                    _ => continue,
                }
            }
            Packet::PublishRelease(rel) => Packet::PublishComplete(v5::PublishAck2 {
                packet_id: rel.packet_id,
                ..Default::default()
            }),
            _ => continue,
        };
        sub.send5(reply).await;
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_subscriptions_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, mut addr) = start(dir.path(), 0);
    let mut broken = Vec::new();
    for round in 0..ROUNDS {
        let id = format!("sub-{round}");
        let topic = format!("crash/sub/{round}");
        let (mut sub, _) = Raw::connect5(addr, persistent5(&id)).await;
        sub.subscribe5(1, &[(&topic, opts(QoS::AtLeastOnce))]).await;
        kill_and_restart(&mut child, dir.path(), &mut addr);
        drop(sub);

        let (mut sub, ack) = Raw::connect5(addr, persistent5(&id)).await;
        let mut publisher = Raw::client5(addr, &format!("pub-{round}")).await;
        publisher.publish1_5(1, &topic, b"after the SUBACK").await;
        let got = drain(&mut sub).await;
        if !ack.session_present || got != ["after the SUBACK"] {
            broken.push(format!(
                "round {round}: SUBACK then SIGKILL: session_present={} got {got:?}",
                ack.session_present
            ));
        }

        sub.send5(Packet::Unsubscribe(v5::Unsubscribe {
            packet_id: pid(2),
            user_properties: Vec::new(),
            topic_filters: vec![topic.as_str().into()],
        }))
        .await;
        let unsuback = sub.recv5().await.packet();
        assert!(
            matches!(unsuback, Packet::UnsubscribeAck(_)),
            "expected UNSUBACK, got {unsuback:?}"
        );
        kill_and_restart(&mut child, dir.path(), &mut addr);
        drop((sub, publisher));

        let (mut sub, _) = Raw::connect5(addr, persistent5(&id)).await;
        let mut publisher = Raw::client5(addr, &format!("pub-{round}")).await;
        publisher.publish1_5(1, &topic, b"after the UNSUBACK").await;
        let got = drain(&mut sub).await;
        if !got.is_empty() {
            broken.push(format!("round {round}: UNSUBACK then SIGKILL: still got {got:?}"));
        }
    }
    child.kill().ok();
    assert!(broken.is_empty(), "{broken:#?}");
}

/// Killed right after a PUBCOMP, the broker must not come back still
/// waiting for that PUBREL: it would take the client's next message with
/// the same packet id for a resend, answer PUBREC and drop it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completed_qos2_ids_stay_free_after_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, mut addr) = start(dir.path(), 0);
    let (mut sub, _) = Raw::connect5(addr, persistent5("qos2-sub")).await;
    sub.subscribe5(1, &[("crash/qos2", opts(QoS::ExactlyOnce))]).await;
    drop(sub);
    let mut lost = Vec::new();
    for round in 0..ROUNDS {
        let packet_id = round + 1;
        let (mut publisher, _) = Raw::connect5(addr, persistent5("qos2-pub")).await;
        publish_qos2(&mut publisher, packet_id, "crash/qos2", format!("first {round}")).await;
        kill_and_restart(&mut child, dir.path(), &mut addr);
        drop(publisher);

        // The same packet id, for a new message.
        let (mut publisher, _) = Raw::connect5(addr, persistent5("qos2-pub")).await;
        publish_qos2(&mut publisher, packet_id, "crash/qos2", format!("second {round}")).await;
        let (mut sub, _) = Raw::connect5(addr, persistent5("qos2-sub")).await;
        let got = drain(&mut sub).await;
        if got != [format!("first {round}"), format!("second {round}")] {
            lost.push(format!(
                "round {round}: PUBCOMP then SIGKILL, then a new message with packet id {packet_id}: the subscriber got {got:?}"
            ));
        }
    }
    child.kill().ok();
    assert!(lost.is_empty(), "{lost:#?}");
}

/// Killed right after a subscriber's PUBCOMP, the broker may resend the
/// PUBREL but never the PUBLISH: the subscriber freed the packet id and
/// would take it for a new message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn released_qos2_deliveries_are_not_resent_after_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, mut addr) = start(dir.path(), 0);
    let (mut sub, _) = Raw::connect5(addr, persistent5("qos2-receiver")).await;
    sub.subscribe5(1, &[("crash/once", opts(QoS::ExactlyOnce))]).await;
    let mut twice = Vec::new();
    for round in 0..ROUNDS {
        let mut publisher = Raw::client5(addr, "qos2-sender").await;
        publish_qos2(&mut publisher, 1, "crash/once", format!("once {round}")).await;
        let delivered = sub.publish5().await;
        assert_eq!(delivered.qos, QoS::ExactlyOnce);
        let packet_id = delivered.packet_id.expect("QoS 2 has a packet id");
        sub.send5(Packet::PublishReceived(v5::PublishAck {
            packet_id,
            ..Default::default()
        }))
        .await;
        let rel = sub.recv5().await.packet();
        assert!(
            matches!(rel, Packet::PublishRelease(_)),
            "expected PUBREL, got {rel:?}"
        );
        sub.send5(Packet::PublishComplete(v5::PublishAck2 {
            packet_id,
            ..Default::default()
        }))
        .await;
        // Let the PUBCOMP reach the broker; whether it was stored does not
        // matter (a resent PUBREL is allowed).
        tokio::time::sleep(Duration::from_millis(50)).await;
        kill_and_restart(&mut child, dir.path(), &mut addr);
        drop((sub, publisher));

        (sub, _) = Raw::connect5(addr, persistent5("qos2-receiver")).await;
        let got = drain(&mut sub).await;
        if !got.is_empty() {
            twice.push(format!(
                "round {round}: after PUBREL, PUBCOMP and SIGKILL the PUBLISH came again: {got:?}"
            ));
        }
    }
    child.kill().ok();
    assert!(twice.is_empty(), "{twice:#?}");
}
