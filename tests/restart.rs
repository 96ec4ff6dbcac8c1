//! Restart with sled: a clean shutdown and a start on the same data
//! directory keep persistent sessions, their messages, retained messages
//! and expiry deadlines.

mod common;

use std::num::NonZeroU32;

use common::*;
use rmqtt_codec::types::QoS;
use rmqtt_codec::v5::{self, Packet};

#[tokio::test]
async fn offline_messages_subscriptions_and_retained_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_with(sled_config(dir.path())).await;
    let addr = broker.local_addr();
    let mut c = connect5("keeper");
    c.clean_start = false;
    c.session_expiry_interval_secs = 3600;
    let (mut sub, _) = Raw::connect5(addr, c.clone()).await;
    sub.subscribe5(1, &[("log/#", opts(QoS::AtLeastOnce))]).await;
    sub.send5(Packet::Disconnect(v5::Disconnect::default())).await;
    drop(sub);

    let mut publisher = Raw::client5(addr, "writer").await;
    for i in 0..1000u16 {
        let mut p = publish("log/x", b"", QoS::AtLeastOnce, Some(i % 60000 + 1));
        p.payload = bytes::Bytes::from(i.to_string());
        publisher.send5(Packet::Publish(Box::new(p))).await;
        assert!(matches!(publisher.recv5().await.packet(), Packet::PublishAck(_)));
    }
    let mut retained = publish("status/boiler", b"ok", QoS::AtLeastOnce, Some(1));
    retained.retain = true;
    publisher.send5(Packet::Publish(Box::new(retained))).await;
    publisher.recv5().await.packet();
    let mut short = publish("status/brief", b"gone soon", QoS::AtLeastOnce, Some(2));
    short.retain = true;
    short.properties = Some(v5::PublishProperties {
        message_expiry_interval: NonZeroU32::new(1),
        ..Default::default()
    });
    publisher.send5(Packet::Publish(Box::new(short))).await;
    publisher.recv5().await.packet();
    broker.shutdown().await;

    // The expiry keeps counting while the broker is down.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let broker = start_with(sled_config(dir.path())).await;
    let addr = broker.local_addr();
    let (mut sub, ack) = Raw::connect5(addr, c).await;
    assert!(ack.session_present, "session restored");
    for i in 0..1000u16 {
        let p = sub.publish5().await;
        assert_eq!(p.payload, i.to_string().as_bytes(), "in order, exactly once");
        sub.send5(Packet::PublishAck(v5::PublishAck {
            packet_id: p.packet_id.unwrap(),
            ..Default::default()
        }))
        .await;
    }
    assert!(
        matches!(sub.recv5_within(QUIET).await, Got::Nothing),
        "a message came twice"
    );
    // The subscription itself survived: a new message arrives.
    broker.publish("log/y", "after", QoS::AtLeastOnce, false);
    assert_eq!(&sub.publish5().await.payload[..], b"after");

    // A persistent session: its SUBACK waits for the session record to be
    // flushed, and must still come before the retained messages.
    let mut late_connect = connect5("late");
    late_connect.clean_start = false;
    late_connect.session_expiry_interval_secs = 60;
    let (mut late, _) = Raw::connect5(addr, late_connect).await;
    late.subscribe5(1, &[("status/+", opts(QoS::AtLeastOnce))]).await;
    let r = late.publish5().await;
    assert_eq!(
        (&*r.topic, &r.payload[..], r.retain),
        ("status/boiler", &b"ok"[..], true)
    );
    assert!(
        matches!(late.recv5_within(QUIET).await, Got::Nothing),
        "expired retained message came back"
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn will_fires_after_restart_and_expired_session_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_with(sled_config(dir.path())).await;
    let addr = broker.local_addr();
    let mut c = connect5("with-will");
    c.clean_start = false;
    c.session_expiry_interval_secs = 3600;
    c.last_will = Some(will("wills/with-will", b"dropped", None, true));
    let (_online, _) = Raw::connect5(addr, c).await;
    let mut short = connect5("short");
    short.clean_start = false;
    short.session_expiry_interval_secs = 1;
    let (mut s, _) = Raw::connect5(addr, short.clone()).await;
    s.send5(Packet::Disconnect(v5::Disconnect::default())).await;
    // Shut down while "with-will" is still connected.
    broker.shutdown().await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;

    let broker = start_with(sled_config(dir.path())).await;
    let mut watcher = Raw::client5(broker.local_addr(), "watcher").await;
    watcher
        .subscribe5(1, &[("wills/#", opts(QoS::AtLeastOnce))])
        .await;
    let w = watcher.publish5().await;
    assert_eq!(
        (&*w.topic, &w.payload[..]),
        ("wills/with-will", &b"dropped"[..]),
        "will sent as if the client dropped"
    );
    let (_s, ack) = Raw::connect5(broker.local_addr(), short).await;
    assert!(
        !ack.session_present,
        "a session whose expiry passed while the broker was down is gone"
    );
    broker.shutdown().await;
}

/// [MQTT-4.4.0-1]: after a broker restart, unacknowledged QoS 1 messages of
/// a persistent session are re-sent with their original packet ids (and
/// DUP set), for 5.0 and 3.1.1 clients alike.
#[tokio::test]
async fn unacknowledged_qos1_messages_keep_their_packet_ids_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_with(sled_config(dir.path())).await;
    let addr = broker.local_addr();
    let (mut sub5, _) = Raw::connect5(addr, persistent5("ids-5")).await;
    sub5.subscribe5(1, &[("ids/#", opts(QoS::AtLeastOnce))]).await;
    let (mut sub3, _) = Raw::connect3(addr, connect3("ids-3", false)).await;
    sub3.subscribe3(1, &[("ids/#", QoS::AtLeastOnce)]).await;

    // A third session is away while its messages are published, so they
    // are written to disk before they are sent (the journal's id table).
    let (late, _) = Raw::connect5(addr, persistent5("ids-late")).await;
    let mut late = late;
    late.subscribe5(1, &[("ids/#", opts(QoS::AtLeastOnce))]).await;
    drop(late);

    // Ten acknowledged first, so the unacknowledged ones do not have the
    // ids a fresh session would hand out.
    let mut unacked5 = Vec::new();
    let mut unacked3 = Vec::new();
    for i in 0..15u32 {
        broker.publish("ids/x", i.to_string(), QoS::AtLeastOnce, false);
        let p5 = sub5.publish5().await;
        let p3 = sub3.publish3().await;
        let (id5, id3) = (p5.packet_id.unwrap(), p3.packet_id.unwrap());
        if i < 10 {
            sub5.send5(Packet::PublishAck(v5::PublishAck {
                packet_id: id5,
                ..Default::default()
            }))
            .await;
            sub3.send3(rmqtt_codec::v3::Packet::PublishAck { packet_id: id3 })
                .await;
        } else {
            unacked5.push((id5, p5.payload));
            unacked3.push((id3, p3.payload));
        }
    }
    // A round trip, so the acknowledgements above were read.
    sub5.subscribe5(2, &[("other", opts(QoS::AtLeastOnce))]).await;
    sub3.subscribe3(2, &[("other", QoS::AtLeastOnce)]).await;
    drop((sub5, sub3));
    // The late session takes its 15 stored messages and acknowledges ten.
    let (mut late, _) = Raw::connect5(addr, persistent5("ids-late")).await;
    let mut unacked_late = Vec::new();
    for i in 0..15 {
        let p = late.publish5().await;
        if i < 10 {
            late.send5(Packet::PublishAck(v5::PublishAck {
                packet_id: p.packet_id.unwrap(),
                ..Default::default()
            }))
            .await;
        } else {
            unacked_late.push((p.packet_id.unwrap(), p.payload));
        }
    }
    late.subscribe5(2, &[("other", opts(QoS::AtLeastOnce))]).await;
    drop(late);
    broker.shutdown().await;

    let broker = start_with(sled_config(dir.path())).await;
    let addr = broker.local_addr();
    let (mut sub5, ack) = Raw::connect5(addr, persistent5("ids-5")).await;
    assert!(ack.session_present);
    let (mut sub3, ack) = Raw::connect3(addr, connect3("ids-3", false)).await;
    assert!(ack.session_present);
    for (id, payload) in &unacked5 {
        let p = sub5.publish5().await;
        assert_eq!(
            (p.packet_id, &p.payload, p.dup),
            (Some(*id), payload, true),
            "5.0 resend"
        );
    }
    for (id, payload) in &unacked3 {
        let p = sub3.publish3().await;
        assert_eq!(
            (p.packet_id, &p.payload, p.dup),
            (Some(*id), payload, true),
            "3.1.1 resend"
        );
    }
    let (mut late, _) = Raw::connect5(addr, persistent5("ids-late")).await;
    for (id, payload) in &unacked_late {
        let p = late.publish5().await;
        assert_eq!(
            (p.packet_id, &p.payload, p.dup),
            (Some(*id), payload, true),
            "resend of a stored message"
        );
    }
    // A new message gets an id no unacknowledged message holds.
    broker.publish("ids/x", "new", QoS::AtLeastOnce, false);
    let p = sub5.publish5().await;
    assert_eq!(&p.payload[..], b"new");
    assert!(unacked5.iter().all(|(id, _)| Some(*id) != p.packet_id));
    broker.shutdown().await;
}

/// A shutdown closes connections that have not logged in (no CONNECT yet,
/// or a WebSocket handshake not finished) instead of waiting for their
/// `connect_timeout_secs`: with a one-hour timeout, each socket still sees
/// its end once `shutdown()` returns.
#[tokio::test]
async fn shutdown_closes_connections_that_have_not_logged_in() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut config = ws_config();
    config
        .listeners
        .push(roomq::config::ListenerConfig::tcp("127.0.0.1:0".parse().unwrap()));
    config.limits.connect_timeout_secs = 3600;
    let broker = start_with(config).await;
    let addrs = broker.local_addrs().to_vec();
    let mut sockets = Vec::new();
    for (_, addr) in &addrs {
        // Nothing sent: no CONNECT, and on the ws listener no HTTP request.
        sockets.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        // Half a WebSocket request / a partial CONNECT.
        let mut partial = tokio::net::TcpStream::connect(addr).await.unwrap();
        partial.write_all(b"\x10").await.unwrap();
        sockets.push(partial);
    }
    // The ws listener's upgraded connection, waiting for its CONNECT.
    let ws = addrs
        .iter()
        .find(|(kind, _)| *kind == roomq::config::ListenerKind::Ws)
        .unwrap()
        .1;
    let (upgraded, _) = ws_connect(ws).await;
    tokio::time::sleep(QUIET).await;
    broker.shutdown().await;
    for mut socket in sockets {
        let mut rest = Vec::new();
        let ended = tokio::time::timeout(WAIT, socket.read_to_end(&mut rest)).await;
        assert!(
            ended.is_ok(),
            "a connection without CONNECT stayed open after shutdown"
        );
    }
    let mut upgraded = upgraded;
    let ended = tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut upgraded)).await;
    assert!(
        matches!(
            ended,
            Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Close(_))))
        ),
        "the upgraded WebSocket without CONNECT stayed open after shutdown: {ended:?}"
    );
}
