//! Framed I/O of one connection: the socket (TCP, TLS or WebSocket, as a
//! byte stream), the codec, and the read and write buffers, with reads of
//! whole packets, batched writes, and the final write and lingering close.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::connection::Close;
use crate::protocol::{Codec, DecodeError, Packet};

/// Anything a connection can run over: TCP, later TLS and WebSocket.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// An idle connection has no read buffer: it waits with this many bytes
/// of the task's own memory to read into (a ping, an acknowledgement, a
/// small publish fit), so thousands of idle clients hold no heap for
/// reading. A read that fills it marks the client busy.
const IDLE_READ: usize = 64;
/// The read buffer while a client sends a lot, or a packet is incomplete.
const BUSY_READ_BUFFER: usize = 16 * 1024;
/// A write buffer at most this large is given back after each write: an
/// idle connection keeps none. It goes to its worker thread's spares
/// (`SPARE_WRITE_BUFFERS`), not to the allocator.
const IDLE_WRITE_BUFFER: usize = 1024;
/// How many small write buffers a runtime thread keeps for the next
/// connection that writes (at most 64 KiB per thread). A fan-out writes
/// one small buffer per subscriber per message; taking a spare instead of
/// allocating a new one, then growing it packet by packet, saved ~200
/// instructions per delivered message (callgrind, QoS 0 fan-out 1 → 100).
const SPARE_WRITE_BUFFERS: usize = 64;

thread_local! {
    static SPARES: std::cell::RefCell<Vec<BytesMut>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A spare write buffer of this thread, or a new one of
/// `IDLE_WRITE_BUFFER` bytes.
fn spare_write_buffer() -> BytesMut {
    SPARES
        .with(|spares| spares.borrow_mut().pop())
        .unwrap_or_else(|| BytesMut::with_capacity(IDLE_WRITE_BUFFER))
}

/// Keeps an empty small write buffer for the next writer on this thread.
fn give_back_write_buffer(buffer: BytesMut) {
    SPARES.with(|spares| {
        let mut spares = spares.borrow_mut();
        if spares.len() < SPARE_WRITE_BUFFERS {
            spares.push(buffer);
        }
    });
}
/// Stop filling the write buffer at this size and write it out first.
pub(super) const WRITE_BATCH: usize = 64 * 1024;
/// How long a closing connection waits to write its final DISCONNECT.
const FINAL_WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// Lingering close (see `Io::flush_final`): how long, how many bytes, and
/// how many sockets at once.
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 256 * 1024;
const MAX_LINGERING: usize = 1024;
static LINGERING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Socket, codec and buffers of one connection.
pub(crate) struct Io {
    stream: Box<dyn Stream>,
    pub peer: SocketAddr,
    pub codec: Codec,
    rbuf: BytesMut,
    /// Set while reads fill the buffer: the client is sending a lot, so
    /// read in big chunks until it goes quiet.
    busy: bool,
    pub out: BytesMut,
    /// Which kind of listener the client came through.
    pub listener: crate::metrics::Listener,
    /// Bytes in and out are counted here.
    metrics: std::sync::Arc<crate::metrics::Metrics>,
}

impl Io {
    pub(super) fn new(
        stream: Box<dyn Stream>,
        peer: &Peer,
        max_packet_size: u32,
        metrics: std::sync::Arc<crate::metrics::Metrics>,
    ) -> Self {
        Io {
            stream,
            peer: peer.addr,
            codec: Codec::new(max_packet_size),
            rbuf: BytesMut::new(),
            busy: false,
            out: BytesMut::new(),
            listener: peer.listener,
            metrics,
        }
    }

    /// Reads more bytes; `Ok(0)` means the peer closed.
    pub(super) async fn read_more(&mut self) -> std::io::Result<usize> {
        if self.rbuf.is_empty() && !self.busy {
            // Idle: nothing half-read. The bytes are copied once into a
            // buffer just big enough, made only when they have come.
            let mut small = [0u8; IDLE_READ];
            let n = self.stream.read(&mut small).await?;
            self.rbuf.extend_from_slice(&small[..n]);
            self.metrics.bytes_received.add(n as u64);
            self.busy = n == IDLE_READ;
            return Ok(n);
        }
        if self.busy || self.rbuf.capacity() - self.rbuf.len() < IDLE_READ {
            self.rbuf.reserve(BUSY_READ_BUFFER);
        }
        let spare = self.rbuf.capacity() - self.rbuf.len();
        let n = self.stream.read_buf(&mut self.rbuf).await?;
        self.metrics.bytes_received.add(n as u64);
        self.busy = n >= spare;
        Ok(n)
    }

    /// The next complete packet in the read buffer, if any.
    pub(super) fn next_packet(&mut self) -> Result<Option<Packet>, DecodeError> {
        let packet = self.codec.decode(&mut self.rbuf)?;
        if !self.busy && self.rbuf.is_empty() && self.rbuf.capacity() > 0 {
            // Everything read is decoded: give the buffer back (the
            // packets keep what they use of it); `read_more` waits
            // without one.
            self.rbuf = BytesMut::new();
        }
        Ok(packet)
    }

    /// Queues a packet for the next write. A packet that cannot be encoded
    /// is logged and skipped.
    pub fn send(&mut self, packet: Packet) {
        if let Err(e) = self.encode(packet) {
            tracing::warn!(error = %e, "could not encode a packet");
        }
    }

    /// Encodes `packet` into the write buffer: a spare one of this thread
    /// when the connection holds none.
    // Always inline: the packet is moved once, into the codec, as when
    // the codec was called directly (callgrind: 42 instructions per
    // delivered message for the extra move).
    #[inline(always)]
    pub(super) fn encode(&mut self, packet: Packet) -> Result<(), crate::protocol::EncodeError> {
        self.hold_write_buffer();
        self.codec.encode(packet, &mut self.out)
    }

    /// `encode` for a 3.1.1 PUBLISH, from its parts; `None` on a 5.0
    /// connection (`Codec::encode_publish_v3`).
    #[inline(always)]
    pub(super) fn encode_publish_v3(
        &mut self,
        publish: &crate::protocol::PublishV3<'_>,
    ) -> Option<Result<(), crate::protocol::EncodeError>> {
        self.hold_write_buffer();
        self.codec.encode_publish_v3(publish, &mut self.out)
    }

    /// Takes a spare write buffer of this thread when the connection holds
    /// none (an idle connection keeps none: `flush`).
    #[inline(always)]
    fn hold_write_buffer(&mut self) {
        if self.out.capacity() == 0 {
            self.take_spare_write_buffer();
        }
    }

    #[cold]
    fn take_spare_write_buffer(&mut self) {
        self.out = spare_write_buffer();
    }

    /// Writes everything queued.
    pub(super) async fn flush(&mut self) -> std::io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        self.stream.write_all(&self.out).await?;
        // TLS and WebSocket buffer inside the stream; TCP ignores this.
        self.stream.flush().await?;
        self.metrics.bytes_sent.add(self.out.len() as u64);
        self.out.clear();
        let capacity = self.out.capacity();
        if capacity > 4 * WRITE_BATCH {
            // A big one after a burst.
            self.out = BytesMut::new();
        } else if capacity <= IDLE_WRITE_BUFFER {
            // A small one, so that an idle connection keeps none; the
            // next connection of this thread to write takes it.
            give_back_write_buffer(std::mem::take(&mut self.out));
        }
        Ok(())
    }

    /// Writes what is queued and shuts the write side, giving up after
    /// `FINAL_WRITE_TIMEOUT` on a client that does not read.
    pub async fn flush_final(&mut self) {
        let _ = tokio::time::timeout(FINAL_WRITE_TIMEOUT, async {
            let _ = self.flush().await;
            let _ = self.stream.shutdown().await;
        })
        .await;
    }

    /// After `flush_final` of a DISCONNECT or refusing CONNACK: reads and
    /// discards what the client still sends, until it closes, for at most
    /// `LINGER_TIME` and `LINGER_BYTES` (a lingering close, as HTTP servers
    /// do). Closing a socket with unread input makes the kernel send a
    /// reset, and a client that was still writing would never read the
    /// reason code (it would see "connection reset"). At most
    /// `MAX_LINGERING` sockets linger at once, so this cannot be used to
    /// hold sockets open; nothing else waits for it.
    pub async fn linger(&mut self) {
        let lingering = LINGERING.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        if lingering < MAX_LINGERING {
            let mut discarded = 0;
            let mut sink = [0u8; 1024];
            let deadline = Instant::now() + LINGER_TIME;
            while discarded < LINGER_BYTES {
                match tokio::time::timeout_at(deadline, self.stream.read(&mut sink)).await {
                    Ok(Ok(n)) if n > 0 => discarded += n,
                    _ => break,
                }
            }
        }
        LINGERING.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// Reads until one whole packet is there.
    pub(super) async fn read_packet(&mut self) -> Result<Packet, Close> {
        loop {
            if let Some(p) = self.next_packet()? {
                return Ok(p);
            }
            match self.read_more().await {
                Ok(0) => return Err(Close::Lost("closed before CONNECT".into())),
                Ok(_) => {}
                Err(e) => return Err(Close::Lost(e.to_string())),
            }
        }
    }
}

/// What the connection task learns from the transport.
#[derive(Clone, Debug)]
pub struct Peer {
    pub addr: SocketAddr,
    /// The name the client certificate gives, on an mTLS listener with
    /// `use_identity_as_username`.
    pub cert_name: CertName,
    /// The kind of listener it came through.
    pub listener: crate::metrics::Listener,
}

/// The username a client certificate gives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertName {
    /// The listener does not take names from certificates.
    NotUsed,
    /// The certificate's Common Name: it is the username.
    Name(String),
    /// The listener takes names from certificates, and this one has no
    /// Common Name usable as one (none, empty, or with `/`, `+`, `#` or
    /// control characters): the client is refused, never left to pick a
    /// name of its own.
    Unusable,
}
