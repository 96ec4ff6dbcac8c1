//! Raw clients: 3.1.1 and 5.0 packets through the wire codec, so a load
//! sends exactly what it means and reads exactly what the broker answers.

use std::net::{Ipv4Addr, SocketAddr};
use std::num::NonZeroU16;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rmqtt_codec::types::{Protocol, Publish, QoS};
use rmqtt_codec::v3::{Codec, Connect, Packet};
use rmqtt_codec::v5;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_util::codec::{Decoder, Encoder};

/// A packet id from a counter (0 becomes 1).
pub fn pid(id: u16) -> NonZeroU16 {
    NonZeroU16::new(id.max(1)).unwrap_or(NonZeroU16::MIN)
}

/// A socket to `addr` from the loopback address `from` (127.0.0.2, ...):
/// the broker sees another client address, as from another machine.
pub async fn tcp_from(addr: SocketAddr, from: Ipv4Addr) -> Option<TcpStream> {
    let socket = TcpSocket::new_v4().ok()?;
    socket.bind((from, 0).into()).ok()?;
    socket.connect(addr).await.ok()
}

/// A 3.1.1 client on raw packets.
pub struct Client {
    pub stream: TcpStream,
    codec: Codec,
    buf: BytesMut,
}

impl Client {
    pub async fn connect(addr: SocketAddr, id: &str, login: Option<(&str, &str)>) -> Option<(Client, bool)> {
        let stream = TcpStream::connect(addr).await.ok()?;
        Client::handshake(stream, id, login, true).await
    }

    /// CONNECT (clean session or not) on a connected socket; whether the
    /// broker accepted it.
    pub async fn handshake(
        stream: TcpStream,
        id: &str,
        login: Option<(&str, &str)>,
        clean_session: bool,
    ) -> Option<(Client, bool)> {
        let (c, code) = Client::handshake_code(stream, id, login, clean_session).await?;
        Some((c, code == rmqtt_codec::v3::ConnectAckReason::ConnectionAccepted))
    }

    /// `handshake`, with the CONNACK's return code.
    pub async fn handshake_code(
        stream: TcpStream,
        id: &str,
        login: Option<(&str, &str)>,
        clean_session: bool,
    ) -> Option<(Client, rmqtt_codec::v3::ConnectAckReason)> {
        stream.set_nodelay(true).ok()?;
        let mut c = Client {
            stream,
            codec: Codec::new(0),
            buf: BytesMut::new(),
        };
        c.send(Packet::Connect(Box::new(Connect {
            protocol: Protocol(4),
            clean_session,
            client_id: id.into(),
            keep_alive: 600,
            username: login.map(|(u, _)| u.into()),
            // An empty password: a username alone (a claim, on a broker
            // without an authenticator).
            password: login
                .filter(|(_, p)| !p.is_empty())
                .map(|(_, p)| Bytes::copy_from_slice(p.as_bytes())),
            ..Default::default()
        })))
        .await;
        match c.recv(Duration::from_secs(30)).await {
            Some(Packet::ConnectAck(ack)) => Some((c, ack.return_code)),
            _ => None,
        }
    }

    pub async fn send(&mut self, packet: Packet) {
        let mut out = BytesMut::new();
        if self.codec.encode(packet, &mut out).is_ok() {
            let _ = self.stream.write_all(&out).await;
        }
    }

    pub async fn recv(&mut self, within: Duration) -> Option<Packet> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Ok(Some((p, _))) = self.codec.decode(&mut self.buf) {
                return Some(p);
            }
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return None,
            }
        }
    }

    /// `recv` for a slow client: reads at most `chunk` bytes at a time and
    /// then waits as long as `bytes_per_sec` allows for them, so what the
    /// broker sends faster waits in the broker.
    pub async fn recv_paced(&mut self, within: Duration, chunk: usize, bytes_per_sec: f64) -> Option<Packet> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Ok(Some((p, _))) = self.codec.decode(&mut self.buf) {
                return Some(p);
            }
            let read = (&mut self.stream).take(chunk as u64);
            let mut read = std::pin::pin!(read);
            let mut part = BytesMut::with_capacity(chunk);
            match tokio::time::timeout_at(deadline, read.read_buf(&mut part)).await {
                Ok(Ok(n)) if n > 0 => {
                    self.buf.extend_from_slice(&part);
                    tokio::time::sleep(Duration::from_secs_f64(n as f64 / bytes_per_sec)).await;
                }
                _ => return None,
            }
        }
    }

    pub async fn publish(&mut self, topic: &str, payload: Bytes, qos: QoS, id: u16, retain: bool) {
        self.send(Packet::Publish(Box::new(Publish {
            dup: false,
            retain,
            qos,
            topic: topic.into(),
            packet_id: (qos != QoS::AtMostOnce).then(|| pid(id)),
            payload,
            properties: None,
        })))
        .await;
    }

    pub async fn subscribe(&mut self, id: u16, filter: &str) {
        self.subscribe_qos(id, filter, QoS::AtMostOnce).await;
    }

    pub async fn subscribe_qos(&mut self, id: u16, filter: &str, qos: QoS) {
        self.send(Packet::Subscribe {
            packet_id: pid(id),
            topic_filters: vec![(filter.into(), qos)],
        })
        .await;
    }

    /// Reads until a SUBACK (or nothing for `within`).
    pub async fn suback(&mut self, within: Duration) -> bool {
        while let Some(p) = self.recv(within).await {
            if matches!(p, Packet::SubscribeAck { .. }) {
                return true;
            }
        }
        false
    }

    /// Reads until the PUBACK of `id` (or nothing for `within`).
    pub async fn puback(&mut self, id: u16, within: Duration) -> bool {
        while let Some(p) = self.recv(within).await {
            if matches!(p, Packet::PublishAck { packet_id } if packet_id == pid(id)) {
                return true;
            }
        }
        false
    }

    /// A round trip: once the SUBACK is back the broker has read
    /// everything sent before.
    pub async fn sync(&mut self, within: Duration) -> bool {
        self.subscribe(0xfffe, "sync").await;
        self.suback(within).await
    }
}

/// A 5.0 client on raw packets.
pub struct Client5 {
    pub stream: TcpStream,
    codec: v5::Codec,
    buf: BytesMut,
}

/// What `Client5::recv` saw.
pub enum Got {
    Packet(v5::Packet),
    Closed,
    Nothing,
}

impl Client5 {
    pub async fn connect(addr: SocketAddr, id: &str) -> Option<(Client5, v5::ConnectAck)> {
        let stream = TcpStream::connect(addr).await.ok()?;
        Client5::handshake(stream, Client5::clean(id, None)).await
    }

    /// A clean-start CONNECT of client id `id`, with `username` if given
    /// (a claim, with no password).
    pub fn clean(id: &str, username: Option<&str>) -> v5::Connect {
        v5::Connect {
            clean_start: true,
            client_id: id.into(),
            keep_alive: 600,
            username: username.map(Into::into),
            ..Default::default()
        }
    }

    /// Sends `connect` on a connected socket; the CONNACK.
    pub async fn handshake(stream: TcpStream, connect: v5::Connect) -> Option<(Client5, v5::ConnectAck)> {
        stream.set_nodelay(true).ok()?;
        let mut c = Client5 {
            stream,
            codec: v5::Codec::new(0, 0),
            buf: BytesMut::new(),
        };
        c.send(v5::Packet::Connect(Box::new(connect))).await;
        match c.recv(Duration::from_secs(30)).await {
            Got::Packet(v5::Packet::ConnectAck(ack)) => Some((c, *ack)),
            _ => None,
        }
    }

    /// Writes a packet; false when the socket refused it.
    pub async fn send(&mut self, packet: v5::Packet) -> bool {
        let mut out = BytesMut::new();
        self.codec.encode(packet, &mut out).is_ok() && self.stream.write_all(&out).await.is_ok()
    }

    pub async fn recv(&mut self, within: Duration) -> Got {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match self.codec.decode(&mut self.buf) {
                Ok(Some((p, _))) => return Got::Packet(p),
                Ok(None) => {}
                Err(_) => return Got::Closed,
            }
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Err(_) => return Got::Nothing,
                Ok(Ok(0)) | Ok(Err(_)) => return Got::Closed,
                Ok(Ok(_)) => {}
            }
        }
    }

    /// A PUBLISH with default properties.
    pub fn publish(topic: &str, payload: Bytes, qos: QoS, id: u16, retain: bool) -> v5::Packet {
        v5::Packet::Publish(Box::new(Publish {
            dup: false,
            retain,
            qos,
            topic: topic.into(),
            packet_id: (qos != QoS::AtMostOnce).then(|| pid(id)),
            payload,
            properties: Some(v5::PublishProperties::default()),
        }))
    }

    /// Reads until a PUBACK and gives its reason code; `None` when the
    /// connection closed or nothing came for `within`.
    pub async fn puback(&mut self, within: Duration) -> Option<v5::PublishAckReason> {
        loop {
            match self.recv(within).await {
                Got::Packet(v5::Packet::PublishAck(ack)) => return Some(ack.reason_code),
                Got::Packet(_) => {}
                _ => return None,
            }
        }
    }
}
