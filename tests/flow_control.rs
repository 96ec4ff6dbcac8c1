//! Receive Maximum towards the broker, for QoS 1 and QoS 2, as a client
//! that keeps writing sees it: DISCONNECT 0x93 read from the socket, not a
//! reset (the broker lingers on close, reading and discarding the rest).

mod common;

use bytes::BytesMut;
use common::*;
use rmqtt_codec::types::QoS;
use rmqtt_codec::v5::{self, DisconnectReasonCode, Packet};
use roomq::config::Limits;
use tokio_util::codec::Encoder;

/// 200 PUBLISHes at `qos`, packet ids 1..=200, in one buffer.
fn burst(qos: QoS) -> Vec<u8> {
    let mut codec = v5::Codec::new(0, 0);
    let mut out = BytesMut::new();
    for id in 1..=200u16 {
        let p = publish("flood/t", b"0123456789", qos, Some(id));
        codec.encode(Packet::Publish(Box::new(p)), &mut out).unwrap();
    }
    out.to_vec()
}

/// Writes the burst, then reads everything the broker sends until it
/// closes; returns the DISCONNECT reason, failing on a reset.
async fn flood_past_receive_maximum(qos: QoS) -> DisconnectReasonCode {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_with(roomq::Config {
        limits: Limits {
            receive_maximum: 4,
            ..sled_config(dir.path()).limits
        },
        ..sled_config(dir.path())
    })
    .await;
    let mut c = Raw::client5(broker.local_addr(), "flooder").await;
    // More than the broker reads before it closes, and the client goes on
    // writing after it closed: a close with unread input would reset the
    // connection, and the client's next write would fail ("broken pipe",
    // where rumqttc gives up) before it read the reason code.
    for _ in 0..5 {
        c.send_bytes(&burst(qos)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let more = c.try_send_bytes(&burst(qos)).await;
    assert!(more.is_ok(), "the broker reset the connection: {more:?}");
    loop {
        match c.recv5().await {
            Got::Packet(Packet::Disconnect(d)) => return d.reason_code,
            Got::Packet(Packet::PublishAck(_) | Packet::PublishReceived(_)) => {}
            other => panic!("expected DISCONNECT 0x93, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn qos1_past_receive_maximum_reads_disconnect_0x93() {
    assert_eq!(
        flood_past_receive_maximum(QoS::AtLeastOnce).await,
        DisconnectReasonCode::ReceiveMaximumExceeded
    );
}

#[tokio::test]
async fn qos2_past_receive_maximum_reads_disconnect_0x93() {
    assert_eq!(
        flood_past_receive_maximum(QoS::ExactlyOnce).await,
        DisconnectReasonCode::ReceiveMaximumExceeded
    );
}
