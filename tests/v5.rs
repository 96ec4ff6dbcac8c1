//! MQTT 5.0 connections and sessions, mostly with raw packets so that
//! reason codes and properties can be checked exactly: CONNECT/CONNACK,
//! keep-alive, takeover, session expiry, wills, shutdown, framing. Message
//! flow is in `v5_flow.rs`.

mod common;

use common::*;
use rmqtt_codec::types::QoS;
use rmqtt_codec::v5::{self, ConnectAckReason, DisconnectReasonCode, Packet};
use roomq::config::Limits;

#[tokio::test]
async fn empty_client_id_is_assigned() {
    let broker = start().await;
    let (_c, ack) = Raw::connect5(broker.local_addr(), connect5("")).await;
    assert_eq!(ack.reason_code, ConnectAckReason::Success);
    let id = ack.assigned_client_id.expect("Assigned Client Identifier");
    assert!(!id.is_empty());
    // Also with Clean Start 0, as Mosquitto does.
    let mut c = connect5("");
    c.clean_start = false;
    c.session_expiry_interval_secs = 60;
    let (_c2, ack) = Raw::connect5(broker.local_addr(), c).await;
    assert_eq!(ack.reason_code, ConnectAckReason::Success);
    assert!(!ack.session_present);
    assert_ne!(
        ack.assigned_client_id.expect("assigned"),
        id,
        "a new id each time"
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn connack_announces_limits() {
    let config = roomq::Config {
        limits: Limits {
            receive_maximum: 10,
            topic_alias_maximum: 5,
            ..test_config().limits
        },
        ..test_config()
    };
    let broker = start_with(config.clone()).await;
    let (_c, ack) = Raw::connect5(broker.local_addr(), connect5("limits")).await;
    assert_eq!(ack.receive_max.get(), 10);
    assert_eq!(ack.topic_alias_max, 5);
    assert_eq!(ack.max_packet_size, Some(config.limits.max_packet_size));
    assert!(
        ack.retain_available && ack.shared_subscription_available && ack.subscription_identifiers_available
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn server_keep_alive_enforces_max_keepalive() {
    let broker = start_with(roomq::Config {
        limits: Limits {
            max_keepalive_secs: 30,
            ..test_config().limits
        },
        ..test_config()
    })
    .await;
    let mut c = connect5("ka");
    c.keep_alive = 600;
    let (_c, ack) = Raw::connect5(broker.local_addr(), c).await;
    assert_eq!(ack.server_keepalive_sec, Some(30));
    let mut c = connect5("ka0");
    c.keep_alive = 0;
    let (_c, ack) = Raw::connect5(broker.local_addr(), c).await;
    assert_eq!(
        ack.server_keepalive_sec,
        Some(30),
        "keep-alive 0 is raised to max_keepalive"
    );
    broker.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn keep_alive_timeout_disconnects_with_0x8d() {
    let broker = start().await;
    let mut c = connect5("sleepy");
    c.keep_alive = 2;
    let (mut raw, _) = Raw::connect5(broker.local_addr(), c).await;
    // Paused time moves on while nothing happens: 1.5 x 2 s passes.
    assert_eq!(
        raw.expect_disconnect5().await,
        DisconnectReasonCode::KeepAliveTimeout
    );
    broker.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn socket_without_connect_is_closed() {
    let broker = start_with(roomq::Config {
        limits: Limits {
            connect_timeout_secs: 5,
            ..test_config().limits
        },
        ..test_config()
    })
    .await;
    let mut raw = Raw::tcp(broker.local_addr(), true).await;
    assert!(matches!(
        raw.recv5_within(std::time::Duration::from_secs(20)).await,
        Got::Closed
    ));
    broker.shutdown().await;
}

#[tokio::test]
async fn takeover_sends_0x8e() {
    let broker = start().await;
    let mut old = Raw::client5(broker.local_addr(), "dup-id").await;
    let _new = Raw::client5(broker.local_addr(), "dup-id").await;
    assert_eq!(
        old.expect_disconnect5().await,
        DisconnectReasonCode::SessionTakenOver
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn enhanced_auth_is_refused() {
    let broker = start().await;
    let mut c = connect5("auth");
    c.auth_method = Some("SCRAM-SHA-1".into());
    let (_raw, ack) = Raw::connect5(broker.local_addr(), c).await;
    assert_eq!(ack.reason_code, ConnectAckReason::BadAuthenticationMethod);

    let mut raw = Raw::client5(broker.local_addr(), "auth2").await;
    raw.send5(Packet::Auth(v5::Auth::default())).await;
    assert_eq!(
        raw.expect_disconnect5().await,
        DisconnectReasonCode::BadAuthenticationMethod
    );
    broker.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn session_expiry_zero_and_nonzero() {
    let broker = start().await;
    let addr = broker.local_addr();
    let mut c = connect5("short-lived");
    c.clean_start = false;
    c.session_expiry_interval_secs = 10;
    let (mut raw, _) = Raw::connect5(addr, c.clone()).await;
    raw.subscribe5(1, &[("se", opts(QoS::AtLeastOnce))]).await;
    raw.send5(Packet::Disconnect(v5::Disconnect::default())).await;
    drop(raw);
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    assert_eq!(broker.session_count(), 1, "kept within the expiry interval");
    let (raw, ack) = Raw::connect5(addr, c.clone()).await;
    assert!(ack.session_present);
    drop(raw);
    tokio::time::sleep(std::time::Duration::from_secs(11)).await;
    assert_eq!(broker.session_count(), 0, "gone after the expiry interval");
    let (_raw, ack) = Raw::connect5(addr, c).await;
    assert!(!ack.session_present);

    let mut zero = connect5("zero");
    zero.clean_start = false;
    let (raw, _) = Raw::connect5(addr, zero.clone()).await;
    drop(raw);
    tokio::time::sleep(QUIET).await;
    let (_raw, ack) = Raw::connect5(addr, zero).await;
    assert!(
        !ack.session_present,
        "expiry 0 ends the session with the connection"
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn disconnect_cannot_set_expiry_after_zero() {
    let broker = start().await;
    let mut raw = Raw::client5(broker.local_addr(), "se-proto").await;
    raw.send5(Packet::Disconnect(v5::Disconnect {
        session_expiry_interval_secs: Some(60),
        ..Default::default()
    }))
    .await;
    match raw.recv5().await.packet() {
        Packet::Disconnect(d) => {
            assert_eq!(d.reason_code, DisconnectReasonCode::ProtocolError);
            assert!(
                d.reason_string.is_some_and(|s| s.contains("expiry")),
                "a Reason String says why"
            );
        }
        other => panic!("{other:?}"),
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn will_with_disconnect_0x04_and_delay() {
    let broker = start().await;
    let addr = broker.local_addr();
    let mut watcher = Raw::client5(addr, "will-watcher").await;
    watcher.subscribe5(1, &[("will/#", opts(QoS::AtLeastOnce))]).await;
    let mut c = connect5("will-04");
    c.last_will = Some(will("will/04", b"bye", None, false));
    let (mut raw, _) = Raw::connect5(addr, c).await;
    raw.send5(Packet::Disconnect(v5::Disconnect::new(
        DisconnectReasonCode::DisconnectWithWillMessage,
    )))
    .await;
    assert_eq!(watcher.publish5().await.topic, "will/04");
    broker.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn will_delay_cancelled_by_reconnect_and_capped_by_session_expiry() {
    let broker = start().await;
    let addr = broker.local_addr();
    let mut watcher = Raw::client5(addr, "delay-watcher").await;
    watcher
        .subscribe5(1, &[("delayed/#", opts(QoS::AtMostOnce))])
        .await;

    // Delay 30 s, client back after 5 s: no will.
    let mut c = connect5("comes-back");
    c.clean_start = false;
    c.session_expiry_interval_secs = 300;
    c.last_will = Some(will("delayed/back", b"bye", Some(30), false));
    let (raw, _) = Raw::connect5(addr, c.clone()).await;
    drop(raw);
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    let (_back, _) = Raw::connect5(addr, c).await;
    tokio::time::sleep(std::time::Duration::from_secs(40)).await;
    assert!(
        matches!(watcher.recv5_within(QUIET).await, Got::Nothing),
        "cancelled will was sent"
    );

    // Delay 60 s but session expires after 10 s: sent at 10 s.
    let mut c = connect5("goes-away");
    c.clean_start = false;
    c.session_expiry_interval_secs = 10;
    c.last_will = Some(will("delayed/away", b"bye", Some(60), false));
    let (raw, _) = Raw::connect5(addr, c).await;
    drop(raw);
    tokio::time::sleep(std::time::Duration::from_secs(8)).await;
    assert!(
        matches!(watcher.recv5_within(QUIET).await, Got::Nothing),
        "will sent before its time"
    );
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert_eq!(watcher.publish5().await.topic, "delayed/away");
    broker.shutdown().await;
}

#[tokio::test]
async fn shutdown_sends_0x8b() {
    let broker = start().await;
    let mut raw = Raw::client5(broker.local_addr(), "bye").await;
    let shutdown = tokio::spawn(broker.shutdown());
    assert_eq!(
        raw.expect_disconnect5().await,
        DisconnectReasonCode::ServerShuttingDown
    );
    shutdown.await.unwrap();
}

#[tokio::test]
async fn connect_split_into_single_bytes_still_works() {
    let broker = start().await;
    let mut raw = Raw::tcp(broker.local_addr(), true).await;
    let mut out = bytes::BytesMut::new();
    let mut c = connect5("");
    c.clean_start = false;
    tokio_util::codec::Encoder::encode(&mut v5::Codec::new(0, 0), Packet::Connect(Box::new(c)), &mut out)
        .unwrap();
    for byte in out.iter() {
        raw.send_bytes(&[*byte]).await;
        tokio::task::yield_now().await;
    }
    match raw.recv5().await.packet() {
        Packet::ConnectAck(ack) => {
            assert_eq!(ack.reason_code, ConnectAckReason::Success);
            assert!(ack.assigned_client_id.is_some());
        }
        other => panic!("{other:?}"),
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn packet_split_across_reads_is_reassembled() {
    let broker = start().await;
    let mut raw = Raw::client5(broker.local_addr(), "split").await;
    // SUBSCRIBE with packet id 0x1001: its body starts with 0x10, the byte
    // that starts a CONNECT; it must still be read as the rest of the
    // SUBSCRIBE.
    let mut out = bytes::BytesMut::new();
    tokio_util::codec::Encoder::encode(
        &mut v5::Codec::new(0, 0),
        Packet::Subscribe(v5::Subscribe {
            packet_id: pid(0x1001),
            id: None,
            user_properties: Vec::new(),
            topic_filters: vec![("split/+".into(), opts(QoS::AtMostOnce))],
        }),
        &mut out,
    )
    .unwrap();
    raw.send_bytes(&out[..2]).await;
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    raw.send_bytes(&out[2..]).await;
    match raw.recv5().await.packet() {
        Packet::SubscribeAck(ack) => assert_eq!(ack.packet_id, pid(0x1001)),
        other => panic!("{other:?}"),
    }
    broker.shutdown().await;
}
