//! Framing: turns bytes from a socket into packets and packets into bytes,
//! for whichever protocol version the CONNECT announced.

use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};

use super::{connect, v311, validate, DisconnectReasonCode, Packet, Version};

/// Why a byte stream could not be turned into a packet. Each value names the
/// 5.0 reason code the connection is closed with.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("the first packet was not CONNECT")]
    FirstPacketNotConnect,
    #[error("unsupported protocol level {0}")]
    UnsupportedProtocolLevel(u8),
    #[error("invalid protocol name")]
    InvalidProtocolName,
    #[error("packet of {size} bytes is over the maximum of {max}")]
    PacketTooLarge { size: u32, max: u32 },
    #[error("client identifier not valid")]
    InvalidClientId,
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    #[error("invalid topic name")]
    TopicNameInvalid,
    #[error("topic alias 0")]
    TopicAliasInvalid,
}

impl DecodeError {
    /// The reason code a 5.0 DISCONNECT carries for this error.
    pub fn reason_code(&self) -> DisconnectReasonCode {
        match self {
            DecodeError::PacketTooLarge { .. } => DisconnectReasonCode::PacketTooLarge,
            DecodeError::Protocol(_) | DecodeError::FirstPacketNotConnect => {
                DisconnectReasonCode::ProtocolError
            }
            DecodeError::TopicNameInvalid => DisconnectReasonCode::TopicNameInvalid,
            DecodeError::TopicAliasInvalid => DisconnectReasonCode::TopicAliasInvalid,
            _ => DisconnectReasonCode::MalformedPacket,
        }
    }
}

impl From<rmqtt_codec::error::DecodeError> for DecodeError {
    fn from(e: rmqtt_codec::error::DecodeError) -> Self {
        use rmqtt_codec::error::DecodeError as E;
        match e {
            E::MaxSizeExceeded { size, max } => DecodeError::PacketTooLarge { size, max },
            E::InvalidClientId => DecodeError::InvalidClientId,
            E::InvalidProtocol => DecodeError::InvalidProtocolName,
            E::UnsupportedProtocolLevel => DecodeError::Protocol("unsupported protocol level"),
            E::InvalidTopicName => DecodeError::TopicNameInvalid,
            E::InvalidTopicFilter => DecodeError::Malformed("invalid topic filter"),
            E::Utf8Error => DecodeError::Malformed("invalid UTF-8 string"),
            E::InvalidConnectFlags | E::ConnectReservedFlagSet => {
                DecodeError::Malformed("invalid CONNECT flags")
            }
            E::UnsupportedPacketType => DecodeError::Malformed("unknown packet type or reserved flags"),
            E::PacketIdRequired => DecodeError::Malformed("packet identifier missing"),
            E::InvalidLength => DecodeError::Malformed("invalid length"),
            _ => DecodeError::Malformed("malformed packet"),
        }
    }
}

/// Per-connection codec. Starts undecided and picks the version from the
/// CONNECT packet's protocol level.
pub struct Codec {
    version: Option<Version>,
    max_inbound: u32,
    /// The peer's Maximum Packet Size (5.0), whole packets in bytes: a
    /// packet over it is never written.
    max_outbound: Option<u32>,
    v3: rmqtt_codec::v3::Codec,
    v5: rmqtt_codec::v5::Codec,
}

impl Codec {
    /// `max_inbound` is the largest packet (remaining length) accepted.
    pub fn new(max_inbound: u32) -> Self {
        Codec {
            version: None,
            max_inbound,
            max_outbound: None,
            v3: rmqtt_codec::v3::Codec::new(max_inbound),
            v5: rmqtt_codec::v5::Codec::new(max_inbound, 0),
        }
    }

    pub fn version(&self) -> Option<Version> {
        self.version
    }

    /// Changes the largest packet accepted: before CONNECT is accepted a
    /// smaller limit applies (`max_connect_packet_size`).
    pub fn set_max_inbound(&mut self, size: u32) {
        self.max_inbound = size;
        self.v3.set_max_size(size);
        self.v5.set_max_inbound_size(size);
    }

    /// The largest packet the peer accepts (5.0 Maximum Packet Size), in
    /// bytes of the whole packet ([MQTT-3.1.2-24]).
    pub fn set_max_outbound(&mut self, size: u32) {
        self.max_outbound = Some(size);
        // The codec compares the remaining length with its limit less 5
        // bytes (the largest fixed header), so it would withhold packets
        // that fit by up to 3 bytes. It is given the largest remaining
        // length that fits with its real fixed header, plus those 5; its
        // limit still decides how much of an acknowledgement's Reason
        // String and User Properties to leave out. `encode` checks the
        // whole packet, also where that limit cannot (a size of 5 or less).
        self.v5
            .set_max_outbound_size(largest_remaining_length(size).saturating_add(5));
    }

    /// Decodes one packet from the front of `buf`, or returns `None` when
    /// more bytes are needed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Packet>, DecodeError> {
        let version = match self.version {
            Some(v) => v,
            None => match detect_version(buf, self.max_inbound)? {
                Some(v) => {
                    self.version = Some(v);
                    v
                }
                None => return Ok(None),
            },
        };
        // The codec only ever sees whole frames: it never holds a partial
        // packet between calls, so `buf[0]` is always a fixed header and the
        // size limit is checked before any body is buffered.
        let Some((header_len, total)) = whole_frame(buf, self.max_inbound)? else {
            return Ok(None);
        };
        if version == Version::V31 && matches!(buf[0], 0x6a | 0x8a | 0xaa) {
            // MQTT 3.1 sets DUP on a PUBREL, SUBSCRIBE or UNSUBSCRIBE it
            // sends again; 3.1.1 made the bit reserved, and the codec
            // refuses it. It changes nothing in the packet's meaning.
            buf[0] &= !0x08;
        }
        let first_byte = buf[0];
        if first_byte == 0x82 && version != Version::V5 {
            check_v3_subscribe_options(&buf[header_len..total])?;
        }
        if first_byte == 0x10 {
            connect::check_payload(&buf[header_len..total], version)?;
        }
        let packet = match version {
            Version::V5 if first_byte == 0x10 => match self.decode_v5_connect(buf)? {
                Some(p) => p,
                None => return Ok(None),
            },
            Version::V5 => {
                // The codec reads a Topic Alias of 0 as a malformed packet;
                // 5.0 names it: 0x94 Topic Alias invalid ([MQTT-3.3.2-8]).
                let alias_zero =
                    first_byte >> 4 == 3 && publish_has_topic_alias_zero(&buf[header_len..total], first_byte);
                match self.v5.decode(buf) {
                    Ok(Some((p, _))) => p,
                    Ok(None) => return Ok(None),
                    Err(_) if alias_zero => return Err(DecodeError::TopicAliasInvalid),
                    Err(e) => return Err(e.into()),
                }
            }
            Version::V31 | Version::V311 => match self.v3.decode(buf)? {
                Some((p, _)) => v311::to_v5(p),
                None => return Ok(None),
            },
        };
        validate::inbound_packet(first_byte, &packet, version)?;
        if let Packet::Connect(c) = &packet {
            connect::check_client_id(&c.client_id, version)?;
        }
        Ok(Some(packet))
    }

    /// Decodes a 5.0 CONNECT. The codec refuses an empty client id unless
    /// Clean Start is set, but 5.0 lets the server assign an id either way
    /// ([MQTT-3.1.3-6]); so the CONNECT is decoded with Clean Start set and
    /// the client's own flag is put back afterwards.
    fn decode_v5_connect(&mut self, buf: &mut BytesMut) -> Result<Option<Packet>, DecodeError> {
        // The flag is changed and read back in one codec call on a whole
        // frame (see `decode`).
        let Some(flags_at) = connect_flags_offset(buf) else {
            return Err(DecodeError::Malformed("CONNECT too short"));
        };
        let clean_start = buf[flags_at] & 0b10 != 0;
        buf[flags_at] |= 0b10;
        match self.v5.decode(buf)? {
            Some((Packet::Connect(mut c), _)) => {
                c.clean_start = clean_start;
                Ok(Some(Packet::Connect(c)))
            }
            Some((other, _)) => Ok(Some(other)),
            None => Err(DecodeError::Malformed("incomplete CONNECT")),
        }
    }

    /// Appends the encoding of `packet` to `dst`. A packet with no 3.1.1
    /// form (DISCONNECT or AUTH from the server) writes nothing there.
    pub fn encode(&mut self, packet: Packet, dst: &mut BytesMut) -> Result<(), EncodeError> {
        let start = dst.len();
        match self.version {
            Some(Version::V5) => self.v5.encode(packet, dst).map_err(EncodeError::from)?,
            Some(version) => match v311::from_v5(packet) {
                // MQTT 3.1 has no Session Present: the byte is reserved, 0.
                Some(rmqtt_codec::v3::Packet::ConnectAck(mut ack)) if version == Version::V31 => {
                    ack.session_present = false;
                    self.v3.encode(rmqtt_codec::v3::Packet::ConnectAck(ack), dst)?
                }
                Some(p) => self.v3.encode(p, dst)?,
                None => {}
            },
            None => return Err(EncodeError::NoVersion),
        }
        self.withhold_over_maximum(start, dst)
    }

    /// Appends a PUBLISH for a 3.1.1 or 3.1 peer, written from its parts
    /// (`publish_v3.rs`); `None` for a 5.0 peer (or before CONNECT), whose
    /// PUBLISH `encode` writes.
    #[inline]
    pub fn encode_publish_v3(
        &mut self,
        publish: &super::PublishV3<'_>,
        dst: &mut BytesMut,
    ) -> Option<Result<(), EncodeError>> {
        if !matches!(self.version, Some(Version::V311 | Version::V31)) {
            return None;
        }
        let start = dst.len();
        super::publish_v3::encode(publish, dst);
        Some(self.withhold_over_maximum(start, dst))
    }

    /// Takes back the packet written to `dst` from `start` when it is over
    /// the peer's Maximum Packet Size: only such a packet is withheld
    /// ([MQTT-3.1.2-25]); the caller counts it.
    fn withhold_over_maximum(&self, start: usize, dst: &mut BytesMut) -> Result<(), EncodeError> {
        if self
            .max_outbound
            .is_some_and(|max| dst.len() - start > max as usize)
        {
            dst.truncate(start);
            return Err(EncodeError::TooLarge);
        }
        Ok(())
    }
}

/// Why a packet could not be written.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("packet is larger than the peer's Maximum Packet Size")]
    TooLarge,
    #[error("no CONNECT yet, the protocol version is unknown")]
    NoVersion,
    #[error("encoding failed: {0}")]
    Other(String),
}

impl From<rmqtt_codec::error::EncodeError> for EncodeError {
    fn from(e: rmqtt_codec::error::EncodeError) -> Self {
        match e {
            rmqtt_codec::error::EncodeError::OverMaxPacketSize { .. } => EncodeError::TooLarge,
            other => EncodeError::Other(other.to_string()),
        }
    }
}

/// The largest remaining length of a packet that fits in `max` bytes with
/// its fixed header (one byte and the remaining length's 1 to 4 bytes).
fn largest_remaining_length(max: u32) -> u32 {
    let mut remaining = max.saturating_sub(2);
    for header in 2..=5 {
        let fits_one_more_byte = remaining >= 1 << (7 * (header - 1));
        if !fits_one_more_byte {
            break;
        }
        remaining = max.saturating_sub(header + 1);
    }
    remaining
}

/// Where the Connect Flags byte of the (whole) CONNECT at the front of
/// `buf` is.
fn connect_flags_offset(buf: &BytesMut) -> Option<usize> {
    let (header_len, total) = whole_frame(buf, 0).ok()??;
    let name_len = usize::from(u16::from_be_bytes([
        *buf.get(header_len)?,
        *buf.get(header_len + 1)?,
    ]));
    let flags_at = header_len + 2 + name_len + 1;
    (flags_at < total).then_some(flags_at)
}

/// The fixed header's length and the whole packet's length, once the whole
/// packet at the front of `buf` has arrived. A remaining length over
/// `max_inbound` (0 = no limit) or over four bytes is refused at once.
fn whole_frame(buf: &[u8], max_inbound: u32) -> Result<Option<(usize, usize)>, DecodeError> {
    Ok(
        fixed_header(buf, max_inbound)?.and_then(|(header_len, remaining)| {
            (buf.len() >= header_len + remaining).then_some((header_len, header_len + remaining))
        }),
    )
}

/// The fixed header's length and the remaining length of the packet at the
/// front of `buf`, once the header has arrived. A remaining length over
/// `max_inbound` (0 = no limit) or over four bytes is refused at once.
fn fixed_header(buf: &[u8], max_inbound: u32) -> Result<Option<(usize, usize)>, DecodeError> {
    let mut remaining: usize = 0;
    let mut at = 1;
    loop {
        let Some(&byte) = buf.get(at) else { return Ok(None) };
        remaining |= usize::from(byte & 0x7f) << (7 * (at - 1));
        at += 1;
        if byte & 0x80 == 0 {
            break;
        }
        if at > 4 {
            return Err(DecodeError::Malformed("remaining length over four bytes"));
        }
    }
    if max_inbound != 0 && remaining > max_inbound as usize {
        return Err(DecodeError::PacketTooLarge {
            size: remaining as u32,
            max: max_inbound,
        });
    }
    Ok(Some((at, remaining)))
}

/// [MQTT-3.8.3-4]: in 3.1.1 the upper six bits of each subscription's
/// options byte are reserved and must be zero (the codec ignores them).
fn check_v3_subscribe_options(mut body: &[u8]) -> Result<(), DecodeError> {
    let malformed = DecodeError::Malformed("reserved bits set in SUBSCRIBE options");
    body = body.get(2..).unwrap_or_default(); // packet id
    while body.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([body[0], body[1]]));
        match body.get(2 + len) {
            Some(options) if options & 0b1111_1100 != 0 => return Err(malformed),
            Some(_) => body = &body[2 + len + 1..],
            None => return Ok(()), // truncated: the codec reports it
        }
    }
    Ok(())
}

/// Reads the fixed header, protocol name and level of the first packet
/// without consuming anything.
fn detect_version(buf: &BytesMut, max_inbound: u32) -> Result<Option<Version>, DecodeError> {
    if buf.is_empty() {
        return Ok(None);
    }
    if buf[0] != 0x10 {
        return Err(DecodeError::FirstPacketNotConnect);
    }
    let Some((header_len, _)) = fixed_header(buf, max_inbound)? else {
        return Ok(None);
    };
    let header = &buf[header_len..];
    if header.len() < 2 {
        return Ok(None);
    }
    let name_len = usize::from(u16::from_be_bytes([header[0], header[1]]));
    if header.len() < 2 + name_len + 1 {
        return Ok(None);
    }
    let name = &header[2..2 + name_len];
    let level = header[2 + name_len];
    match (name, level) {
        (b"MQTT", 4) => Ok(Some(Version::V311)),
        (b"MQTT", 5) => Ok(Some(Version::V5)),
        (b"MQIsdp", 3) => Ok(Some(Version::V31)),
        (b"MQTT", level) | (b"MQIsdp", level) => Err(DecodeError::UnsupportedProtocolLevel(level)),
        _ => Err(DecodeError::InvalidProtocolName),
    }
}

/// Whether a 5.0 PUBLISH body carries a Topic Alias property of 0: walks
/// the topic, packet id and property list (only called to name the reason
/// of a decode error, so any other oddity simply answers false).
fn publish_has_topic_alias_zero(body: &[u8], first_byte: u8) -> bool {
    const TOPIC_ALIAS: u8 = 0x23;
    let read_u16 = |at: usize| {
        body.get(at..at + 2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    };
    let Some(topic_len) = read_u16(0) else {
        return false;
    };
    let qos = (first_byte >> 1) & 0b11;
    let mut at = 2 + topic_len + if qos > 0 { 2 } else { 0 };
    // Property Length, a variable byte integer.
    let mut props_len = 0usize;
    for shift in 0..4 {
        let Some(&byte) = body.get(at) else {
            return false;
        };
        at += 1;
        props_len |= usize::from(byte & 0x7f) << (7 * shift);
        if byte & 0x80 == 0 {
            break;
        }
    }
    let end = (at + props_len).min(body.len());
    while at < end {
        let id = body[at];
        at += 1;
        let skip = match id {
            TOPIC_ALIAS => return read_u16(at) == Some(0),
            0x01 => 1, // payload format indicator
            0x02 => 4, // message expiry interval
            0x03 | 0x08 | 0x09 => match read_u16(at) {
                Some(n) => 2 + n, // content type, response topic, correlation data
                None => return false,
            },
            0x26 => match (read_u16(at), read_u16(at + 2 + read_u16(at).unwrap_or(0))) {
                (Some(k), Some(v)) => 4 + k + v, // user property: two strings
                _ => return false,
            },
            0x0B => {
                // subscription identifier: a variable byte integer
                let mut n = 0;
                while body.get(at + n).is_some_and(|b| b & 0x80 != 0) {
                    n += 1;
                }
                n + 1
            }
            _ => return false,
        };
        at += skip;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::largest_remaining_length;

    /// One byte of packet type, 1 to 4 bytes of remaining length, the rest:
    /// the largest remaining length fills `max` exactly or leaves one byte
    /// where a longer length field would not fit.
    #[test]
    fn remaining_length_within_a_maximum_packet_size() {
        for (max, remaining) in [
            (2, 0),
            (20, 18),
            (129, 127),
            (130, 127),
            (131, 128),
            (16_386, 16_383),
            (16_387, 16_383),
            (16_388, 16_384),
        ] {
            assert_eq!(largest_remaining_length(max), remaining, "max {max}");
        }
    }
}
