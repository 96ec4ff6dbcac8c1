//! A full disk is a fault the broker rides out. The store is a real sled
//! store whose flush is made to fail while the "disk is full", as sled's
//! flush fails on a full file system (writes go to memory until then).
//!
//! Wanted: publishes that need the store are answered after
//! `store_stall_timeout_ms` (5.0 PUBACK/PUBREC 0x97; 3.1.1 no PUBACK) on a
//! connection that stays open; what is stored keeps being delivered; the
//! condition shows on `$SYS/broker/store/status`; the broker resumes by
//! itself when space returns; a shutdown ends.

mod common;

use roomq::config::StoreConfig;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::fillable::*;
use common::small_fs::*;
use common::*;
use rmqtt_codec::types::QoS;
use rmqtt_codec::v5::{Packet, PublishAckReason};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_publishes_in_bounded_time_and_the_broker_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, store) = start_fillable(dir.path()).await;
    let addr = broker.local_addr();

    // Stored while the disk has room: an offline member's backlog.
    let (mut away, _) = Raw::connect5(addr, persistent5("away")).await;
    away.subscribe5(1, &[("backlog/#", opts(QoS::AtLeastOnce))]).await;
    drop(away);
    let mut publisher = Raw::client5(addr, "writer").await;
    let ack = publisher.publish1_5(1, "backlog/a", b"stored before").await;
    assert_eq!(ack.reason_code, PublishAckReason::Success);

    let mut watcher = store_status_watcher(addr).await;
    status_becomes(&mut watcher, "ok").await;
    let mut live = Raw::client5(addr, "live").await;
    live.subscribe5(1, &[("plain/#", opts(QoS::AtMostOnce))]).await;

    store.full.store(true, Ordering::Release);
    // 5.0, QoS 1: refused with 0x97 once the stall timeout passed.
    let ack = publisher.publish1_5(2, "plain/t", b"while full").await;
    assert_eq!(ack.reason_code, PublishAckReason::QuotaExceeded);
    status_becomes(&mut watcher, "failing since ").await;
    // 5.0, QoS 2: PUBREC 0x97; the exchange ends, the id is free again.
    let mut qos2 = publish("plain/t", b"q2", QoS::ExactlyOnce, Some(3));
    qos2.dup = false;
    publisher.send5(Packet::Publish(Box::new(qos2))).await;
    match publisher.recv5().await.packet() {
        Packet::PublishReceived(rec) => assert_eq!(rec.reason_code, PublishAckReason::QuotaExceeded),
        other => panic!("expected PUBREC, got {other:?}"),
    }
    // A plain message still reaches a live subscriber (it needs no store).
    assert_eq!(&live.publish5().await.payload[..], b"while full");
    // What was stored is still delivered: the offline member's backlog.
    let (mut away, ack) = Raw::connect5(addr, persistent5("away")).await;
    assert!(ack.session_present);
    assert_eq!(&away.publish5().await.payload[..], b"stored before");

    // 3.1.1, QoS 1: no PUBACK, and the connection stays open.
    let (mut device, _) = Raw::connect3(addr, connect3("device", true)).await;
    let mut p = publish("plain/d", b"from a device", QoS::AtLeastOnce, Some(7));
    p.properties = None;
    device.send3(rmqtt_codec::v3::Packet::Publish(Box::new(p))).await;
    device.send3(rmqtt_codec::v3::Packet::PingRequest).await;
    match device.recv3_within(Duration::from_secs(3)).await {
        Got::Packet(rmqtt_codec::v3::Packet::PingResponse) => {}
        other => panic!("expected only PINGRESP (no PUBACK), got {other:?}"),
    }
    assert!(
        matches!(
            device.recv3_within(Duration::from_millis(800)).await,
            Got::Nothing
        ),
        "a refused 3.1.1 publish got an answer"
    );

    // Space returns: the broker resumes by itself.
    store.full.store(false, Ordering::Release);
    status_becomes(&mut watcher, "ok").await;
    let ack = publisher.publish1_5(4, "plain/t", b"after").await;
    assert_eq!(ack.reason_code, PublishAckReason::Success);
    assert!(broker.metrics().publishes_refused_store.get() >= 3);

    // Full again, with an acknowledgement waiting: the shutdown still ends.
    store.full.store(true, Ordering::Release);
    publisher
        .send5(Packet::Publish(Box::new(publish(
            "plain/t",
            b"at shutdown",
            QoS::AtLeastOnce,
            Some(5),
        ))))
        .await;
    tokio::time::timeout(Duration::from_secs(60), broker.shutdown())
        .await
        .expect("the shutdown ends while the store cannot write");
}

/// Below `min_free_disk_bytes` (here: more than any disk has), publishes
/// that need the store are refused before sled could hit a full disk;
/// plain QoS 0 messages still flow.
#[tokio::test]
async fn below_min_free_disk_bytes_publishes_that_need_the_store_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_with(roomq::Config {
        sys_interval_secs: 60,
        store: StoreConfig {
            min_free_disk_bytes: u64::MAX,
            ..sled_config(dir.path()).store
        },
        ..sled_config(dir.path())
    })
    .await;
    let addr = broker.local_addr();
    let mut watcher = store_status_watcher(addr).await;
    status_becomes(&mut watcher, "failing since ").await;
    let mut member = Raw::client5(addr, "member").await;
    member
        .subscribe5(
            1,
            &[
                ("rooms/ops/msg/+", opts(QoS::AtMostOnce)),
                ("plain/#", opts(QoS::AtMostOnce)),
            ],
        )
        .await;
    let mut publisher = Raw::client5(addr, "writer").await;
    let ack = publisher.publish1_5(1, "plain/t", b"q1").await;
    assert_eq!(ack.reason_code, PublishAckReason::QuotaExceeded);
    let mut retained = publish("plain/r", b"kept", QoS::AtMostOnce, None);
    retained.retain = true;
    publisher.send5(Packet::Publish(Box::new(retained))).await;
    publisher.publish0_5("rooms/ops/msg/writer", b"room q0").await;
    publisher.publish0_5("plain/t", b"plain q0").await;
    // Only the plain QoS 0 message arrives.
    assert_eq!(&member.publish5().await.payload[..], b"plain q0");
    assert!(matches!(member.recv5_within(QUIET).await, Got::Nothing));
    assert_eq!(broker.metrics().publishes_refused_store.get(), 3);
    broker.shutdown().await;
}

/// A history request only reads: while the disk is full it is still
/// answered, with a successful PUBACK, when room messages are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_stays_readable_while_the_disk_is_full() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, store) = start_fillable(dir.path()).await;
    let addr = broker.local_addr();
    let mut writer = Raw::client5(addr, "writer").await;
    let ack = writer.publish1_5(1, "rooms/ops/msg/writer", b"before").await;
    assert_eq!(ack.reason_code, PublishAckReason::Success);
    let mut watcher = store_status_watcher(addr).await;

    store.full.store(true, Ordering::Release);
    let ack = writer.publish1_5(2, "rooms/ops/msg/writer", b"while full").await;
    assert_eq!(ack.reason_code, PublishAckReason::QuotaExceeded);
    status_becomes(&mut watcher, "failing since ").await;
    let answer = common::chat::history(addr, "ops").await;
    let bodies: Vec<&[u8]> = answer
        .messages
        .iter()
        .map(|m| m.body.as_deref().unwrap_or_default())
        .collect();
    assert_eq!(bodies, [&b"before"[..]]);
    store.full.store(false, Ordering::Release);
    broker.shutdown().await;
}

/// One client posting 200 KiB QoS 1 room messages, 32 in flight, on a
/// 8 MiB file system with a 3 MiB margin: posts beyond the margin are
/// refused with 0x97 (never 0x80), and sled never hits the full disk
/// (before: the margin was checked once a second, and sled writes about
/// twice the payload, so a fast writer went through it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_writer_never_takes_the_disk_below_the_margin() {
    let Some(fs) = SmallFs::mount(8 << 20) else {
        return;
    };
    let margin = 3 << 20;
    let (broker, store) = start_fillable_with(roomq::Config {
        store: StoreConfig {
            min_free_disk_bytes: margin,
            disk_reserve_bytes: 1 << 20,
            ..fillable_config(&fs.data_dir()).store
        },
        ..fillable_config(&fs.data_dir())
    })
    .await;
    let mut writer = Raw::client5(broker.local_addr(), "writer").await;
    let body = bytes::Bytes::from(vec![b'x'; 200 * 1024]);
    let (total, in_flight) = (80u16, 32u16);
    let (mut sent, mut answered, mut stored, mut refused) = (0u16, 0u16, 0, 0);
    while answered < total {
        while sent < total && sent - answered < in_flight {
            sent += 1;
            writer.send5(room_post(sent, &body)).await;
        }
        let ack = next_puback(&mut writer).await;
        answered += 1;
        match ack.reason_code {
            PublishAckReason::Success => stored += 1,
            PublishAckReason::QuotaExceeded => refused += 1,
            other => panic!("post {} got {other:?}, not Success or 0x97", ack.packet_id),
        }
    }
    let free = fs2::available_space(fs.data_dir()).unwrap();
    println!("stored {stored}, refused {refused}, {free} bytes free");
    assert!(stored > 0 && refused > 0, "stored {stored}, refused {refused}");
    assert_eq!(
        store.sled_errors.load(Ordering::Relaxed),
        0,
        "sled hit the full disk"
    );
    let started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(60), broker.shutdown())
        .await
        .expect("the shutdown ends");
    println!("shutdown took {:?}", started.elapsed());
}

/// Another program fills the disk (only the reserve file is left): the
/// next post is refused before sled writes it (without the guard, sled
/// would have hit ENOSPC: a 200 KiB post does not fit), the reserve is
/// given back, and once space returns posts are stored again and history
/// has them, without a restart; the reserve is made again, and a shutdown
/// ends. Before: the post went to sled, whose blob write hit ENOSPC, and
/// the store never recovered until a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_disk_was_full_posts_are_stored_again_without_a_restart() {
    let Some(fs) = SmallFs::mount(8 << 20) else {
        return;
    };
    let (broker, store) = start_fillable_with(roomq::Config {
        store: StoreConfig {
            min_free_disk_bytes: 1 << 20,
            disk_reserve_bytes: 1 << 20,
            ..fillable_config(&fs.data_dir()).store
        },
        ..fillable_config(&fs.data_dir())
    })
    .await;
    let reserve = fs.data_dir().join(roomq::store::RESERVE_FILE);
    assert!(
        std::fs::metadata(&reserve).is_ok_and(|m| m.len() >= 1 << 20),
        "no reserve file"
    );
    let addr = broker.local_addr();
    let mut watcher = store_status_watcher(addr).await;
    let mut writer = Raw::client5(addr, "writer").await;
    let ack = writer.publish1_5(1, "rooms/ops/msg/writer", b"before").await;
    assert_eq!(ack.reason_code, PublishAckReason::Success);

    let filler = fs.fill();
    let body = bytes::Bytes::from(vec![b'x'; 200 * 1024]);
    let free = fs2::available_space(fs.data_dir()).unwrap();
    assert!(
        free < body.len() as u64,
        "the disk is not full: {free} bytes free"
    );
    writer.send5(room_post(2, &body)).await;
    assert_eq!(
        next_puback(&mut writer).await.reason_code,
        PublishAckReason::QuotaExceeded
    );
    status_becomes(&mut watcher, "failing since ").await;
    assert_eq!(
        store.sled_errors.load(Ordering::Relaxed),
        0,
        "sled hit the full disk"
    );
    assert!(!reserve.exists(), "the reserve was not given back");

    std::fs::remove_file(filler).unwrap();
    tokio::time::timeout(Duration::from_secs(30), status_becomes(&mut watcher, "ok"))
        .await
        .expect("the store status says ok again");
    writer.send5(room_post(3, &body)).await;
    assert_eq!(
        next_puback(&mut writer).await.reason_code,
        PublishAckReason::Success
    );
    let ack = writer.publish1_5(4, "rooms/ops/msg/writer", b"after").await;
    assert_eq!(ack.reason_code, PublishAckReason::Success);
    let answer = common::chat::history(addr, "ops").await;
    let bodies: Vec<usize> = answer
        .messages
        .iter()
        .map(|m| m.body.as_ref().map_or(0, Vec::len))
        .collect();
    assert_eq!(bodies, [6, body.len(), 5]);
    assert_eq!(
        answer.messages.last().and_then(|m| m.body.as_deref()),
        Some(&b"after"[..])
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !reserve.exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the reserve was not made again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::timeout(Duration::from_secs(60), broker.shutdown())
        .await
        .expect("the shutdown ends");
}

/// A room post with a `msg-id`, refused (0x97) because the store could not
/// write, and sent again with the same `msg-id` once space returned: the
/// message is then stored and delivered, once, and the history has it once
/// (DESIGN.md promise 2: not only acknowledged as a duplicate). Both ways a
/// post is refused: after the stall timeout (it was written, the flush
/// failed), and at once (the store was known to be failing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_refused_on_a_full_disk_and_sent_again_is_stored_and_delivered_once() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, store) = start_fillable(dir.path()).await;
    let addr = broker.local_addr();
    let mut watcher = store_status_watcher(addr).await;
    status_becomes(&mut watcher, "ok").await;
    let mut member = Raw::client5(addr, "member").await;
    member
        .subscribe5(1, &[("rooms/ops/msg/+", opts(QoS::AtLeastOnce))])
        .await;
    let mut writer = Raw::client5(addr, "writer").await;
    let post = |id, body: &[u8], msg_id| {
        let topic = "rooms/ops/msg/writer";
        Packet::Publish(Box::new(common::chat::publish_with(
            topic,
            body,
            Some(id),
            &[("msg-id", msg_id)],
        )))
    };

    store.full.store(true, Ordering::Release);
    writer.send5(post(1, b"one", "m-1")).await;
    assert_eq!(
        next_puback(&mut writer).await.reason_code,
        PublishAckReason::QuotaExceeded
    );
    status_becomes(&mut watcher, "failing since ").await;
    writer.send5(post(2, b"two", "m-2")).await;
    assert_eq!(
        next_puback(&mut writer).await.reason_code,
        PublishAckReason::QuotaExceeded
    );

    store.full.store(false, Ordering::Release);
    status_becomes(&mut watcher, "ok").await;
    for (id, body, msg_id) in [(3, &b"one"[..], "m-1"), (4, b"two", "m-2")] {
        writer.send5(post(id, body, msg_id)).await;
        assert_eq!(
            next_puback(&mut writer).await.reason_code,
            PublishAckReason::Success
        );
    }
    let mut got = Vec::new();
    loop {
        match member.recv5_within(QUIET).await {
            Got::Packet(Packet::Publish(p)) => got.push(p.payload.clone()),
            Got::Packet(_) => {}
            _ => break,
        }
    }
    assert_eq!(got, [&b"one"[..], b"two"], "delivered");
    let answer = common::chat::history(addr, "ops").await;
    let bodies: Vec<&[u8]> = answer
        .messages
        .iter()
        .map(|m| m.body.as_deref().unwrap_or_default())
        .collect();
    assert_eq!(bodies, [&b"one"[..], b"two"], "in the history");
    broker.shutdown().await;
}
