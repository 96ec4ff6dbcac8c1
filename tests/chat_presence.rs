//! The chat contract of `topics.md`, as clients see it: presence (devices,
//! status, keep-alive timeouts, restarts), typing events and read receipts.

mod common;

use std::collections::HashMap;

use common::chat::*;
use common::*;
use rmqtt_codec::types::QoS;
use rmqtt_codec::v5::PublishAckReason;
use roomq::chat::payloads;

#[tokio::test]
async fn presence_follows_devices_and_keeps_a_user_status() {
    let broker = start().await;
    let addr = broker.local_addr();
    let mut watcher = Raw::client5(addr, "watcher").await;
    watcher
        .subscribe5(1, &[("$presence/+", opts(QoS::AtLeastOnce))])
        .await;
    // `#` does not see broker data.
    let mut plain = Raw::client5(addr, "plain").await;
    plain.subscribe5(1, &[("#", opts(QoS::AtLeastOnce))]).await;

    let next_presence = async |w: &mut Raw, user: &str| -> payloads::Presence {
        loop {
            let p = w.publish5().await;
            ack_publish5(w, &p).await;
            if p.topic == format!("$presence/{user}") {
                return payloads::from_cbor(&p.payload).expect("presence decodes against the schema");
            }
        }
    };
    // Presence shows identities that use rooms: Ann's first device joins
    // one; her second is shown because she is.
    let mut phone = user5(addr, "ann-phone", "ann").await;
    phone
        .subscribe5(1, &[("rooms/lobby/msg/+", opts(QoS::AtLeastOnce))])
        .await;
    let p = next_presence(&mut watcher, "ann").await;
    assert_eq!((p.status.as_str(), p.devices), ("online", 1));
    let laptop = user5(addr, "ann-laptop", "ann").await;
    let p = next_presence(&mut watcher, "ann").await;
    assert_eq!((p.status.as_str(), p.devices), ("online", 2));

    // Ann sets "away"; the broker merges the device count.
    let ack = send_and_ack(
        &mut phone,
        publish_with(
            "$presence/ann",
            &payloads::to_cbor(&serde_json_like_status("away")),
            Some(1),
            &[],
        ),
    )
    .await;
    assert_eq!(ack.reason_code, PublishAckReason::Success);
    let p = next_presence(&mut watcher, "ann").await;
    assert_eq!((p.status.as_str(), p.devices), ("away", 2));
    // Nobody else may set it.
    let ack = send_and_ack(
        &mut watcher,
        publish_with(
            "$presence/ann",
            &payloads::to_cbor(&serde_json_like_status("busy")),
            Some(2),
            &[],
        ),
    )
    .await;
    assert_eq!(ack.reason_code, PublishAckReason::NotAuthorized);

    drop(phone);
    let p = next_presence(&mut watcher, "ann").await;
    assert_eq!(
        (p.status.as_str(), p.devices),
        ("away", 1),
        "still there on the laptop, away kept"
    );
    drop(laptop);
    let p = next_presence(&mut watcher, "ann").await;
    assert_eq!(p.status, "offline");
    assert!(p.last_seen.is_some());
    assert!(
        matches!(plain.recv5_within(QUIET).await, Got::Nothing),
        "# sees no presence"
    );
}

fn serde_json_like_status(status: &str) -> HashMap<&'static str, String> {
    HashMap::from([("status", status.to_string())])
}

#[tokio::test(start_paused = true)]
async fn presence_goes_offline_on_keepalive_timeout() {
    let broker = start().await;
    let addr = broker.local_addr();
    let mut watcher = Raw::client5(addr, "watcher").await;
    watcher
        .subscribe5(1, &[("$presence/sleepy", opts(QoS::AtMostOnce))])
        .await;
    let mut c = connect5("sleepy");
    c.keep_alive = 2;
    let (mut sleepy, _) = Raw::connect5(addr, c).await;
    // A room user: presence shows only identities that use rooms.
    sleepy
        .subscribe5(1, &[("rooms/lobby/msg/+", opts(QoS::AtMostOnce))])
        .await;
    let online: payloads::Presence = payloads::from_cbor(&watcher.publish5().await.payload).unwrap();
    assert_eq!(online.status, "online");
    // No PINGREQ: after 1.5 x keep-alive the broker drops the connection.
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    let offline: payloads::Presence = payloads::from_cbor(&watcher.publish5().await.payload).unwrap();
    assert_eq!(offline.status, "offline");
}

#[tokio::test]
async fn typing_is_rate_limited_never_queued_offline_and_never_retained() {
    let broker = start().await;
    let addr = broker.local_addr();
    member_leaves(addr, "away-member", "rooms/t/typing/+").await;
    let mut online = Raw::client5(addr, "online").await;
    online
        .subscribe5(1, &[("rooms/t/typing/+", opts(QoS::AtLeastOnce))])
        .await;
    let mut ty = Raw::client5(addr, "ty").await;
    let typing = payloads::to_cbor(&payloads::Typing { typing: true });
    for id in 1..=5 {
        send_and_ack(&mut ty, publish_with("rooms/t/typing/ty", &typing, Some(id), &[])).await;
    }
    let got = online.publish5().await;
    assert_eq!(got.qos, QoS::AtMostOnce);
    let expiry = got
        .properties
        .as_ref()
        .and_then(|p| p.message_expiry_interval)
        .map(|e| e.get());
    assert!(matches!(expiry, Some(1..=5)), "expiry 5 s, got {expiry:?}");
    assert!(
        matches!(online.recv5_within(QUIET).await, Got::Nothing),
        "the rest dropped"
    );
    assert_eq!(broker.chat_counters().typing_dropped.get(), 4);
    let (mut back, _) = Raw::connect5(addr, persistent5("away-member")).await;
    assert!(
        matches!(back.recv5_within(QUIET).await, Got::Nothing),
        "not queued offline"
    );
    let mut late = Raw::client5(addr, "late").await;
    late.subscribe5(1, &[("rooms/t/typing/+", opts(QoS::AtLeastOnce))])
        .await;
    assert!(
        matches!(late.recv5_within(QUIET).await, Got::Nothing),
        "not retained"
    );
}

#[tokio::test]
async fn read_receipts_keep_the_highest_seq() {
    let broker = start().await;
    let addr = broker.local_addr();
    post_many(addr, "poster", "x", 9).await;
    let mut r = Raw::client5(addr, "reader").await;
    for (id, seq) in [(1, 5u64), (2, 3), (3, 9)] {
        let body = payloads::to_cbor(&payloads::Receipt { seq });
        let ack = send_and_ack(&mut r, publish_with("rooms/x/read/reader", &body, Some(id), &[])).await;
        assert_eq!(ack.reason_code, PublishAckReason::Success);
    }
    // A receipt beyond the room's head (9) is refused: it would hide the
    // reader's real receipts until the room got there.
    let body = payloads::to_cbor(&payloads::Receipt { seq: u64::MAX });
    let ack = send_and_ack(&mut r, publish_with("rooms/x/read/reader", &body, Some(4), &[])).await;
    assert_eq!(ack.reason_code, PublishAckReason::PayloadFormatInvalid);
    let mut later = Raw::client5(addr, "later").await;
    later
        .subscribe5(1, &[("rooms/x/read/+", opts(QoS::AtLeastOnce))])
        .await;
    let retained = later.publish5().await;
    assert!(retained.retain);
    let receipt: payloads::Receipt = payloads::from_cbor(&retained.payload).unwrap();
    assert_eq!(receipt.seq, 9);
}

#[tokio::test]
async fn a_restart_marks_everyone_offline() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_with(sled_config(dir.path())).await;
    let addr = broker.local_addr();
    // A user that uses rooms: presence shows no other (tests/room_members.rs).
    let mut stays = user5(addr, "stays-phone", "stays").await;
    stays
        .subscribe5(1, &[("rooms/lobby/msg/+", opts(QoS::AtMostOnce))])
        .await;
    // Ended without closing connections cleanly: like a crash, the stored
    // presence still says online.
    broker.shutdown().await;
    let broker = start_with(sled_config(dir.path())).await;
    let mut watcher = Raw::client5(broker.local_addr(), "watcher").await;
    watcher
        .subscribe5(1, &[("$presence/stays", opts(QoS::AtLeastOnce))])
        .await;
    let p: payloads::Presence = payloads::from_cbor(&watcher.publish5().await.payload).unwrap();
    assert_eq!(p.status, "offline");
    assert!(p.last_seen.is_some());
}
