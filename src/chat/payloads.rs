//! The CBOR payloads of `topics.md` (schemas in CDDL there), with serde and
//! ciborium.

use serde::{Deserialize, Serialize};

/// `typing = { typing: bool }`
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Typing {
    pub typing: bool,
}

/// `receipt = { seq: uint }`
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    pub seq: u64,
}

/// `presence = { status, devices, since, ? last_seen }`
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    pub status: String,
    pub devices: u64,
    pub since: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<u64>,
}

/// What a user may publish to their own presence topic.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresenceUpdate {
    pub status: String,
}

/// `history-request = { ? before, ? after, ? limit, ? events: bool }`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryRequest {
    pub before: Option<u64>,
    pub after: Option<u64>,
    pub limit: Option<u64>,
    /// Also the raw room events of the range the answer covers.
    #[serde(default)]
    pub events: bool,
}

/// `mod-request`: `{ op: "ban" / "mute", user, ? secs, ? reason }`,
/// `{ op: "unban" / "unmute", user }` or `{ op: "delete", seq }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModRequest {
    pub op: String,
    pub user: Option<String>,
    pub secs: Option<u64>,
    pub reason: Option<String>,
    pub seq: Option<u64>,
}

/// `edit-request = { seq: uint, body: bstr }`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EditRequest {
    pub seq: u64,
    #[serde(with = "serde_bytes_compat")]
    pub body: Vec<u8>,
}

/// `delete-request = { seq: uint }`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteRequest {
    pub seq: u64,
}

/// `react-request = { seq: uint, emoji: tstr, ? remove: bool }`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReactRequest {
    pub seq: u64,
    pub emoji: String,
    #[serde(default)]
    pub remove: bool,
}

/// `room-event`: what members get on `rooms/{room}/event/{sender}`, and
/// history's `events`.
#[derive(Debug, Serialize, Deserialize)]
pub struct RoomEvent {
    pub seq: u64,
    /// The `seq` of the room's entry (message or event) before it.
    pub prev: u64,
    pub ts: u64,
    pub sender: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_bytes")]
    pub body: Option<Vec<u8>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emoji: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remove: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secs: Option<u64>,
}

/// `mod-response = { ok: bool, ? error: tstr }`
#[derive(Debug, Serialize, Deserialize)]
pub struct ModResponse {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `history-response = { messages, more, ? events }`
#[derive(Debug, Serialize, Deserialize)]
pub struct HistoryResponse {
    pub messages: Vec<HistoryMessage>,
    pub more: bool,
    /// With `events: true`: the room events of the range, in `seq` order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<RoomEvent>>,
}

/// `history-message`: a message in its current state.
#[derive(Debug, Serialize, Deserialize)]
pub struct HistoryMessage {
    pub seq: u64,
    /// The `seq` of the room's message before this one.
    #[serde(default)]
    pub prev: u64,
    pub ts: u64,
    pub sender: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msg_id: Option<String>,
    /// Absent when deleted.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_bytes")]
    pub body: Option<Vec<u8>>,
    /// Unix ms of the last edit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edited: Option<u64>,
    /// A tombstone (only ever `true`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted: Option<bool>,
    /// Emoji and how many reacted with it (absent when none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reactions: Option<std::collections::BTreeMap<String, u64>>,
    /// The emoji the requester reacted with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mine: Option<Vec<String>>,
}

/// A signed alert from a client without User Properties (3.1.1), as its
/// whole payload: `alert-envelope = { body: bstr, ctr: uint, sig: bstr }`
/// (`topics.md`, *Signed alerts*). The room gets `body`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertEnvelope {
    #[serde(with = "serde_bytes_compat")]
    pub body: Vec<u8>,
    pub ctr: u64,
    #[serde(with = "serde_bytes_compat")]
    pub sig: Vec<u8>,
}

/// Encodes `body` as a CBOR byte string (bstr), not an array of numbers.
mod serde_bytes_compat {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let value = ciborium::Value::deserialize(d)?;
        match value {
            ciborium::Value::Bytes(b) => Ok(b),
            _ => Err(serde::de::Error::custom("expected a byte string")),
        }
    }
}

/// An optional CBOR byte string.
mod opt_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(b) => s.serialize_bytes(b),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        match ciborium::Value::deserialize(d)? {
            ciborium::Value::Bytes(b) => Ok(Some(b)),
            ciborium::Value::Null => Ok(None),
            _ => Err(serde::de::Error::custom("expected a byte string")),
        }
    }
}

/// Encodes a payload as CBOR.
pub fn to_cbor<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    // Writing into a Vec cannot fail; the types above always serialize.
    if let Err(e) = ciborium::into_writer(value, &mut out) {
        tracing::error!(error = %e, "CBOR encoding failed");
    }
    out
}

/// Decodes a CBOR payload; `None` when it does not match the schema.
pub fn from_cbor<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Option<T> {
    ciborium::from_reader(bytes).ok()
}

/// Largest payload a client may send for typing, a receipt, a presence
/// status or a history request: their schemas need a few dozen bytes.
pub const MAX_CONTROL_PAYLOAD: usize = 256;

/// Decodes a client's chat control payload strictly: at most
/// `MAX_CONTROL_PAYLOAD` bytes, and as [`from_request_cbor`]. `None` is
/// answered with 0x99 Payload format invalid.
pub fn from_client_cbor<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Option<T> {
    if bytes.len() > MAX_CONTROL_PAYLOAD {
        return None;
    }
    from_request_cbor(bytes)
}

/// Decodes a client's request (every chat request comes through here,
/// also one larger than a control payload, an edit's body): exactly one
/// CBOR value with no bytes after it, in the plain form `topics.md`'s CDDL
/// describes (`plain_cbor`), and (by the types' `deny_unknown_fields`)
/// no keys the schema lacks.
pub fn from_request_cbor<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Option<T> {
    if !plain_cbor(bytes) {
        return None;
    }
    ciborium::from_reader(bytes).ok()
}

/// Whether `bytes` are exactly one CBOR data item with no tag and no
/// indefinite length anywhere in it. The CDDL of `topics.md` has no tags:
/// a decoder that skips them would take `24(h'...')` (embedded CBOR) or a
/// tagged field as if they were the plain value, which the schema does
/// not allow; definite lengths are what RFC 8949's preferred encoding
/// uses, and what every client library writes. Walks the item heads
/// only: at most one step per byte.
fn plain_cbor(bytes: &[u8]) -> bool {
    let mut pos = 0usize;
    // Data items still to read (a map's entries count twice).
    let mut pending: u64 = 1;
    while pending > 0 {
        let Some(&head) = bytes.get(pos) else {
            return false;
        };
        pos += 1;
        pending -= 1;
        let (major, info) = (head >> 5, head & 0x1f);
        let argument = match info {
            0..=23 => u64::from(info),
            24..=27 => {
                let size = 1usize << (info - 24);
                let Some(field) = bytes.get(pos..pos + size) else {
                    return false;
                };
                pos += size;
                field.iter().fold(0u64, |a, &b| (a << 8) | u64::from(b))
            }
            // 28-30 are reserved; 31 is an indefinite length (or a
            // "break" out of place).
            _ => return false,
        };
        match major {
            // Integers; simple values and floats (their bytes were the
            // argument).
            0 | 1 | 7 => {}
            2 | 3 => match usize::try_from(argument).ok().and_then(|n| pos.checked_add(n)) {
                Some(end) if end <= bytes.len() => pos = end,
                _ => return false,
            },
            4 => pending = pending.saturating_add(argument),
            5 => pending = pending.saturating_add(argument.saturating_mul(2)),
            // A tag.
            _ => return false,
        }
    }
    pos == bytes.len()
}
