//! A minimal MQTT 3.1.1 client: connect (optionally with a login),
//! subscribe, publish, and a reader that acknowledges what it receives.

use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use rmqtt_codec::types::{Protocol, QoS};
use rmqtt_codec::v3::{Codec, Connect, Packet};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_util::codec::{Decoder, Encoder};

use crate::measure::Received;

/// A PUBLISH as every scenario sends it: no retain, no properties.
pub fn publish_packet(topic: &str, qos: QoS, packet_id: Option<NonZeroU16>, payload: Bytes) -> Packet {
    Packet::Publish(Box::new(rmqtt_codec::types::Publish {
        dup: false,
        retain: false,
        qos,
        topic: topic.into(),
        packet_id,
        payload,
        properties: None,
    }))
}

/// A minimal MQTT 3.1.1 connection.
pub struct Conn {
    pub reader: OwnedReadHalf,
    pub writer: OwnedWriteHalf,
    pub codec: Codec,
    pub buf: BytesMut,
}

impl Conn {
    pub async fn open(addr: SocketAddr, id: &str, keep_alive: u16) -> std::io::Result<Conn> {
        Conn::open_with(addr, id, keep_alive, true, None).await
    }

    /// Connects with clean session `clean` and, with `login`, a username
    /// and password.
    pub async fn open_with(
        addr: SocketAddr,
        id: &str,
        keep_alive: u16,
        clean: bool,
        login: Option<(&str, &str)>,
    ) -> std::io::Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (reader, writer) = stream.into_split();
        let mut conn = Conn {
            reader,
            writer,
            codec: Codec::new(0),
            buf: BytesMut::with_capacity(64 * 1024),
        };
        let connect = Connect {
            protocol: Protocol(4),
            clean_session: clean,
            keep_alive,
            client_id: id.into(),
            username: login.map(|(user, _)| user.into()),
            password: login.map(|(_, password)| Bytes::copy_from_slice(password.as_bytes())),
            ..Default::default()
        };
        conn.send(Packet::Connect(Box::new(connect))).await?;
        match conn.next().await? {
            Some(Packet::ConnectAck(ack))
                if ack.return_code == rmqtt_codec::v3::ConnectAckReason::ConnectionAccepted =>
            {
                Ok(conn)
            }
            other => Err(std::io::Error::other(format!("CONNECT refused: {other:?}"))),
        }
    }

    pub async fn send(&mut self, packet: Packet) -> std::io::Result<()> {
        let mut out = BytesMut::new();
        self.codec
            .encode(packet, &mut out)
            .map_err(std::io::Error::other)?;
        self.writer.write_all(&out).await
    }

    pub async fn next(&mut self) -> std::io::Result<Option<Packet>> {
        loop {
            if let Some((p, _)) = self.codec.decode(&mut self.buf).map_err(std::io::Error::other)? {
                return Ok(Some(p));
            }
            if self.reader.read_buf(&mut self.buf).await? == 0 {
                return Ok(None);
            }
        }
    }

    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> std::io::Result<()> {
        let id = NonZeroU16::new(1).expect("nonzero");
        self.send(Packet::Subscribe {
            packet_id: id,
            topic_filters: vec![(filter.into(), qos)],
        })
        .await?;
        match self.next().await? {
            Some(Packet::SubscribeAck { .. }) => Ok(()),
            other => Err(std::io::Error::other(format!("SUBSCRIBE failed: {other:?}"))),
        }
    }
}

impl Conn {
    /// Reads this connection's messages into `received` on a task of its
    /// own; gives back the writer (shared with that task, which sends the
    /// PUBACKs) and the codec, for publishing on the same connection.
    pub fn spawn_subscriber(self, received: Arc<Received>) -> (SharedWriter, Codec) {
        let Conn {
            reader,
            writer,
            codec,
            buf,
        } = self;
        let writer = Arc::new(tokio::sync::Mutex::new(writer));
        tokio::spawn(run_subscriber(
            reader,
            buf,
            codec.clone(),
            writer.clone(),
            received,
        ));
        (writer, codec)
    }
}

pub type SharedWriter = Arc<tokio::sync::Mutex<OwnedWriteHalf>>;

/// Reads messages until the connection closes, acknowledging QoS 1 through
/// `writer` (shared with a publisher on the same connection in `rooms`).
async fn run_subscriber(
    mut reader: OwnedReadHalf,
    mut buf: BytesMut,
    mut codec: Codec,
    writer: SharedWriter,
    received: Arc<Received>,
) {
    let mut acks = BytesMut::new();
    loop {
        loop {
            match codec.decode(&mut buf) {
                Ok(Some((Packet::Publish(p), _))) => {
                    if let Some(id) = p.packet_id {
                        let _ = codec.encode(Packet::PublishAck { packet_id: id }, &mut acks);
                    }
                    received.record(p.payload);
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => {
                    eprintln!("subscriber decode error: {e}");
                    return;
                }
            }
        }
        if !acks.is_empty() {
            if writer.lock().await.write_all(&acks).await.is_err() {
                return;
            }
            acks.clear();
        }
        match reader.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}
