//! The CONNECT rules the codec leaves to us, checked on the raw bytes: the
//! payload holds exactly the fields its flags announce, and MQTT 3.1's
//! client identifier of 1 to 23 characters.

use super::frame::DecodeError;
use super::Version;

/// The Connect Flags that announce a payload field.
const WILL: u8 = 0x04;
const PASSWORD: u8 = 0x40;
const USERNAME: u8 = 0x80;

/// The longest client identifier MQTT 3.1 allows, in characters.
const V31_MAX_CLIENT_ID: usize = 23;

/// Checks the body (after the fixed header) of a whole CONNECT against its
/// own flags. The codec reads the fields the flags announce and ignores
/// what follows, so a username sent without its flag would be taken as no
/// username, or as the password; but bytes the flags do not announce make
/// the packet malformed ([MQTT-3.1.2-18], [MQTT-3.1.2-22], [MQTT-3.1.4-1]).
/// A 3.1 CONNECT with no client identifier at all is answered with return
/// code 2 (`InvalidClientId`), as 3.1 asks. Anything else the walk cannot
/// read is left to the codec, which names it.
pub(super) fn check_payload(body: &[u8], version: Version) -> Result<(), DecodeError> {
    const EXTRA: DecodeError = DecodeError::Malformed("CONNECT payload does not match its flags");
    let mut r = Reader { body, at: 0 };
    let Some(flags) = r.header(version) else {
        return Ok(());
    };
    if version == Version::V31 && r.at == body.len() {
        return Err(DecodeError::InvalidClientId);
    }
    let Some(end) = r.payload(flags, version) else {
        // A field the flags announce is missing or cut short: the codec
        // reports it.
        return Ok(());
    };
    if end != body.len() {
        return Err(EXTRA);
    }
    Ok(())
}

/// MQTT 3.1: a client identifier of 1 to 23 characters; 3.1.1 and 5.0
/// allow an empty one and longer ones.
pub(super) fn check_client_id(client_id: &str, version: Version) -> Result<(), DecodeError> {
    if version == Version::V31 && (client_id.is_empty() || client_id.chars().count() > V31_MAX_CLIENT_ID) {
        return Err(DecodeError::InvalidClientId);
    }
    Ok(())
}

/// A cursor over a CONNECT body; every read answers `None` when the bytes
/// run out.
struct Reader<'a> {
    body: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    /// Skips the variable header and returns the Connect Flags.
    fn header(&mut self, version: Version) -> Option<u8> {
        self.string()?; // protocol name
        self.skip(1)?; // protocol level
        let flags = *self.body.get(self.at)?;
        self.skip(1 + 2)?; // flags, keep-alive
        if version.is_v5() {
            self.properties()?;
        }
        Some(flags)
    }

    /// Skips the payload fields `flags` announce and returns where they end.
    fn payload(&mut self, flags: u8, version: Version) -> Option<usize> {
        self.string()?; // client identifier
        if flags & WILL != 0 {
            if version.is_v5() {
                self.properties()?;
            }
            self.string()?; // will topic
            self.string()?; // will payload
        }
        if flags & USERNAME != 0 {
            self.string()?;
        }
        if flags & PASSWORD != 0 {
            self.string()?;
        }
        Some(self.at)
    }

    fn skip(&mut self, n: usize) -> Option<()> {
        let next = self.at.checked_add(n)?;
        (next <= self.body.len()).then(|| self.at = next)
    }

    /// A two-byte length and that many bytes (string or binary data).
    fn string(&mut self) -> Option<()> {
        let len = self.body.get(self.at..self.at + 2)?;
        let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
        self.skip(2 + len)
    }

    /// A property list: a variable byte integer length and that many bytes.
    fn properties(&mut self) -> Option<()> {
        let mut len = 0usize;
        for shift in 0..4 {
            let byte = *self.body.get(self.at)?;
            self.at += 1;
            len |= usize::from(byte & 0x7f) << (7 * shift);
            if byte & 0x80 == 0 {
                return self.skip(len);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CONNECT body: protocol name, level, flags, keep-alive, 5.0
    /// properties when `v5`, then the length-prefixed fields.
    fn body(v5: bool, flags: u8, fields: &[&[u8]]) -> Vec<u8> {
        let mut b = vec![0, 4, b'M', b'Q', b'T', b'T', if v5 { 5 } else { 4 }, flags, 0, 60];
        if v5 {
            b.push(0);
        }
        for f in fields {
            b.extend_from_slice(&(f.len() as u16).to_be_bytes());
            b.extend_from_slice(f);
        }
        b
    }

    #[test]
    fn payload_matches_flags() {
        assert!(check_payload(&body(false, 0x02, &[b"id"]), Version::V311).is_ok());
        assert!(check_payload(&body(false, 0xc2, &[b"id", b"u", b"p"]), Version::V311).is_ok());
        let mut will = body(true, 0x06, &[b"id"]);
        will.push(0); // will properties
        will.extend_from_slice(&[0, 1, b't', 0, 1, b'm']);
        assert!(check_payload(&will, Version::V5).is_ok());
        assert!(check_payload(&body(false, 0x02, &[b"id", b"user"]), Version::V311).is_err());
        assert!(check_payload(&body(true, 0x42, &[b"id", b"user", b"pw"]), Version::V5).is_err());
        // Cut short: left to the codec.
        assert!(check_payload(&body(false, 0x82, &[b"id"]), Version::V311).is_ok());
    }

    #[test]
    fn v31_client_id() {
        let mut missing = body(false, 0x02, &[]);
        missing[6] = 3;
        assert!(matches!(
            check_payload(&missing, Version::V31),
            Err(DecodeError::InvalidClientId)
        ));
        assert!(check_client_id("", Version::V31).is_err());
        assert!(check_client_id(&"x".repeat(24), Version::V31).is_err());
        assert!(check_client_id(&"x".repeat(23), Version::V31).is_ok());
        assert!(check_client_id("", Version::V311).is_ok());
        assert!(check_client_id(&"x".repeat(24), Version::V311).is_ok());
    }
}
