//! The raw-packet client: speaks MQTT through the wire codec, so a test can
//! send exactly the bytes it means and see exactly what the broker answers.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use rmqtt_codec::v3;
use rmqtt_codec::v5;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::{Decoder, Encoder};

use super::{connect5, pid, publish, WAIT};

/// A client that speaks packets through the codec, so a test can send
/// exactly what it wants and see exactly what the broker sends.
pub struct Raw {
    stream: TcpStream,
    buf: BytesMut,
    v5: v5::Codec,
    v3: v3::Codec,
    pub is_v5: bool,
}

/// What `Raw::recv` saw.
#[derive(Debug)]
pub enum Got<P> {
    Packet(P),
    Closed,
    Nothing,
}

impl<P: std::fmt::Debug> Got<P> {
    pub fn packet(self) -> P {
        match self {
            Got::Packet(p) => p,
            other => panic!("expected a packet, got {other:?}"),
        }
    }
}

impl Raw {
    pub async fn tcp(addr: SocketAddr, is_v5: bool) -> Raw {
        let stream = TcpStream::connect(addr).await.expect("tcp connect");
        stream.set_nodelay(true).unwrap();
        Raw {
            stream,
            buf: BytesMut::new(),
            v5: v5::Codec::new(0, 0),
            v3: v3::Codec::new(0),
            is_v5,
        }
    }

    /// Like `tcp`, from the loopback address `from` (`127.0.0.2`, say):
    /// another address, for the broker's per-address limits.
    pub async fn tcp_from(addr: SocketAddr, from: std::net::IpAddr, is_v5: bool) -> Raw {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(SocketAddr::new(from, 0))
            .expect("bind the source address");
        let stream = socket.connect(addr).await.expect("tcp connect");
        stream.set_nodelay(true).unwrap();
        Raw {
            stream,
            buf: BytesMut::new(),
            v5: v5::Codec::new(0, 0),
            v3: v3::Codec::new(0),
            is_v5,
        }
    }

    /// Connects with a 5.0 CONNECT and returns the CONNACK.
    pub async fn connect5(addr: SocketAddr, connect: v5::Connect) -> (Raw, v5::ConnectAck) {
        let mut raw = Raw::tcp(addr, true).await;
        raw.send5(v5::Packet::Connect(Box::new(connect))).await;
        match raw.recv5().await.packet() {
            v5::Packet::ConnectAck(ack) => (raw, *ack),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// Like `connect5`, but `None` instead of a panic when the broker is
    /// not there or does not answer (crash tests reconnect in a loop).
    pub async fn try_connect5(addr: SocketAddr, connect: v5::Connect) -> Option<(Raw, v5::ConnectAck)> {
        let stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .ok()?
            .ok()?;
        stream.set_nodelay(true).ok()?;
        let mut raw = Raw {
            stream,
            buf: BytesMut::new(),
            v5: v5::Codec::new(0, 0),
            v3: v3::Codec::new(0),
            is_v5: true,
        };
        raw.send5(v5::Packet::Connect(Box::new(connect))).await;
        match raw.recv5().await {
            Got::Packet(v5::Packet::ConnectAck(ack)) => Some((raw, *ack)),
            _ => None,
        }
    }

    /// A 5.0 client with this id, clean start, no keep-alive.
    pub async fn client5(addr: SocketAddr, id: &str) -> Raw {
        let (raw, ack) = Raw::connect5(addr, connect5(id)).await;
        assert_eq!(ack.reason_code, v5::ConnectAckReason::Success);
        raw
    }

    pub async fn connect3(addr: SocketAddr, connect: v3::Connect) -> (Raw, v3::ConnectAck) {
        let mut raw = Raw::tcp(addr, false).await;
        raw.send3(v3::Packet::Connect(Box::new(connect))).await;
        match raw.recv3().await.packet() {
            v3::Packet::ConnectAck(ack) => (raw, ack),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// Writes `bytes` and says whether the socket took them.
    pub async fn try_send_bytes(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        // A write may fail when the broker already closed: that is for the
        // test's next recv to see.
        let _ = self.stream.write_all(bytes).await;
    }

    pub async fn send5(&mut self, packet: v5::Packet) {
        let mut out = BytesMut::new();
        self.v5.encode(packet, &mut out).expect("encode");
        self.send_bytes(&out).await;
    }

    /// `send5`, telling whether the write reached the socket (a crash
    /// test's client notices the broker is gone).
    pub async fn try_send5(&mut self, packet: v5::Packet) -> std::io::Result<()> {
        let mut out = BytesMut::new();
        self.v5.encode(packet, &mut out).expect("encode");
        self.try_send_bytes(&out).await
    }

    pub async fn send3(&mut self, packet: v3::Packet) {
        let mut out = BytesMut::new();
        self.v3.encode(packet, &mut out).expect("encode");
        self.send_bytes(&out).await;
    }

    async fn recv_with<P>(&mut self, within: Duration, decode: impl Fn(&mut Self) -> Option<P>) -> Got<P> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(p) = decode(self) {
                return Got::Packet(p);
            }
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Err(_) => return Got::Nothing,
                Ok(Ok(0)) | Ok(Err(_)) => return Got::Closed,
                Ok(Ok(_)) => {}
            }
        }
    }

    pub async fn recv5(&mut self) -> Got<v5::Packet> {
        self.recv5_within(WAIT).await
    }

    pub async fn recv5_within(&mut self, within: Duration) -> Got<v5::Packet> {
        self.recv_with(within, |s| {
            s.v5.decode(&mut s.buf)
                .expect("broker sent a valid 5.0 packet")
                .map(|(p, _)| p)
        })
        .await
    }

    pub async fn recv3(&mut self) -> Got<v3::Packet> {
        self.recv3_within(WAIT).await
    }

    pub async fn recv3_within(&mut self, within: Duration) -> Got<v3::Packet> {
        self.recv_with(within, |s| {
            s.v3.decode(&mut s.buf)
                .expect("broker sent a valid 3.1.1 packet")
                .map(|(p, _)| p)
        })
        .await
    }

    /// Expects the next 5.0 packet to be a PUBLISH and returns it.
    pub async fn publish5(&mut self) -> rmqtt_codec::types::Publish {
        match self.recv5().await.packet() {
            v5::Packet::Publish(p) => *p,
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    pub async fn publish3(&mut self) -> rmqtt_codec::types::Publish {
        match self.recv3().await.packet() {
            v3::Packet::Publish(p) => *p,
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    /// Expects the broker to send DISCONNECT and close; returns its reason.
    pub async fn expect_disconnect5(&mut self) -> v5::DisconnectReasonCode {
        match self.recv5().await {
            Got::Packet(v5::Packet::Disconnect(d)) => {
                assert!(
                    matches!(self.recv5().await, Got::Closed),
                    "socket stays open after DISCONNECT"
                );
                d.reason_code
            }
            other => panic!("expected DISCONNECT, got {other:?}"),
        }
    }

    /// Expects the broker to close the socket (3.1.1 has no DISCONNECT from
    /// the server).
    pub async fn expect_closed3(&mut self) {
        match self.recv3().await {
            Got::Closed => {}
            other => panic!("expected the connection to close, got {other:?}"),
        }
    }

    /// Subscribes (5.0) and returns the SUBACK reason codes.
    pub async fn subscribe5(
        &mut self,
        id: u16,
        filters: &[(&str, v5::SubscriptionOptions)],
    ) -> Vec<v5::SubscribeAckReason> {
        self.send5(v5::Packet::Subscribe(v5::Subscribe {
            packet_id: pid(id),
            id: None,
            user_properties: Vec::new(),
            topic_filters: filters.iter().map(|(f, o)| ((*f).into(), *o)).collect(),
        }))
        .await;
        match self.recv5().await.packet() {
            v5::Packet::SubscribeAck(ack) => ack.status,
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    pub async fn subscribe3(&mut self, id: u16, filters: &[(&str, v5::QoS)]) -> Vec<v3::SubscribeReturnCode> {
        self.send3(v3::Packet::Subscribe {
            packet_id: pid(id),
            topic_filters: filters.iter().map(|(f, q)| ((*f).into(), *q)).collect(),
        })
        .await;
        match self.recv3().await.packet() {
            v3::Packet::SubscribeAck { status, .. } => status,
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    /// Publishes at QoS 0 (5.0).
    pub async fn publish0_5(&mut self, topic: &str, payload: &'static [u8]) {
        self.send5(v5::Packet::Publish(Box::new(publish(
            topic,
            payload,
            v5::QoS::AtMostOnce,
            None,
        ))))
        .await;
    }

    /// Sends a 5.0 PUBLISH (QoS 1) and returns its PUBACK reason, passing
    /// over any PUBLISH that arrives first.
    pub async fn puback_of(&mut self, publish: rmqtt_codec::types::Publish) -> v5::PublishAckReason {
        self.send5(v5::Packet::Publish(Box::new(publish))).await;
        loop {
            match self.recv5().await.packet() {
                v5::Packet::PublishAck(ack) => return ack.reason_code,
                v5::Packet::Publish(_) => {}
                other => panic!("expected PUBACK, got {other:?}"),
            }
        }
    }

    /// Publishes at QoS 1 (5.0) and returns the PUBACK.
    pub async fn publish1_5(&mut self, id: u16, topic: &str, payload: &'static [u8]) -> v5::PublishAck {
        self.send5(v5::Packet::Publish(Box::new(publish(
            topic,
            payload,
            v5::QoS::AtLeastOnce,
            Some(id),
        ))))
        .await;
        match self.recv5().await.packet() {
            v5::Packet::PublishAck(ack) => ack,
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
}
