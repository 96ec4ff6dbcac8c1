//! End-to-end encryption of chat bodies, as `topics.md` (*End-to-end
//! encryption (clients only)*) fixes it: a room key from Argon2id over the
//! passphrase and the room name, bodies sealed with XChaCha20-Poly1305.
//!
//! Clients only: the broker never links this (its dependencies stay as
//! they are); `examples/chat.rs` and the tests include this file with
//! `#[path]`. The browser chat does the same in `web/e2ee.js`, and the test
//! vector in `topics.md` ties the two together.

use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};

/// The first bytes of every sealed body: a body without them was sent in
/// clear (or by a client that does not know this format).
pub const MARKER: &[u8; 4] = b"rqe1";
/// What a client shows for a body it cannot open (the browser chat too).
pub const NOT_READABLE: &str = "[not readable: wrong passphrase or not encrypted]";
/// XChaCha20's nonce: long enough to be drawn at random for every body.
pub const NONCE_LEN: usize = 24;
/// Poly1305's tag, appended to the ciphertext.
pub const TAG_LEN: usize = 16;

/// Argon2id's cost: OWASP's minimum for Argon2id (19 MiB, 2 passes, one
/// lane), paid once per room when a client joins, in Rust and in a browser.
const MEMORY_KIB: u32 = 19_456;
const ITERATIONS: u32 = 2;
const PARALLELISM: u32 = 1;

/// The key of one room, derived from the passphrase its members share.
/// The room name is kept with it: it is the salt of the key and part of
/// every body's associated data.
#[derive(Clone)]
pub struct RoomKey {
    room: String,
    key: [u8; 32],
}

impl RoomKey {
    /// Argon2id(passphrase, salt = SHA-256("roomq-e2ee-v1" || 0 || room)[..16]).
    /// Slow on purpose (about 0.1 s): derive once per
    /// room, not per message.
    pub fn derive(passphrase: &str, room: &str) -> Result<RoomKey, argon2::Error> {
        let params = Params::new(MEMORY_KIB, ITERATIONS, PARALLELISM, Some(32))?;
        let mut key = [0u8; 32];
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params).hash_password_into(
            passphrase.as_bytes(),
            &salt(room),
            &mut key,
        )?;
        Ok(RoomKey {
            room: room.to_string(),
            key,
        })
    }

    /// The key's bytes (for the test vector).
    pub fn bytes(&self) -> &[u8; 32] {
        &self.key
    }

    /// `plaintext` sealed for the room as sent by `sender`, under a fresh
    /// random nonce. Fails only for a plaintext over 256 GiB, which no MQTT
    /// packet (256 MiB at most) carries.
    pub fn seal(&self, sender: &str, plaintext: &[u8]) -> Result<Vec<u8>, chacha20poly1305::Error> {
        self.seal_with_nonce(sender, &rand::random::<[u8; NONCE_LEN]>(), plaintext)
    }

    /// `seal` with a given nonce: for the test vector only; a nonce must
    /// never be used twice under one key.
    pub fn seal_with_nonce(
        &self,
        sender: &str,
        nonce: &[u8; NONCE_LEN],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, chacha20poly1305::Error> {
        let cipher = XChaCha20Poly1305::new((&self.key).into());
        let aad = associated_data(&self.room, sender);
        let payload = Payload {
            msg: plaintext,
            aad: &aad,
        };
        let mut sealed = Vec::with_capacity(MARKER.len() + NONCE_LEN + plaintext.len() + TAG_LEN);
        sealed.extend_from_slice(MARKER);
        sealed.extend_from_slice(nonce);
        sealed.extend_from_slice(&cipher.encrypt(XNonce::from_slice(nonce), payload)?);
        Ok(sealed)
    }

    /// The plaintext of a body that `sender` sealed for this room; `None`
    /// when it is not sealed, was sealed under another key (a wrong
    /// passphrase) or for another room or sender, or was altered.
    pub fn open(&self, sender: &str, sealed: &[u8]) -> Option<Vec<u8>> {
        let rest = sealed.strip_prefix(MARKER.as_slice())?;
        if rest.len() < NONCE_LEN + TAG_LEN {
            return None;
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let aad = associated_data(&self.room, sender);
        XChaCha20Poly1305::new((&self.key).into())
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .ok()
    }
}

/// A chat client's message (and edit) bodies as they go out and come in:
/// sealed and opened with the room key when the client has a passphrase
/// (`examples/chat.rs --e2ee`), plain UTF-8 otherwise.
#[derive(Clone)]
pub struct Bodies(pub Option<RoomKey>);

impl Bodies {
    pub fn seal(&self, sender: &str, text: &str) -> Result<Vec<u8>, chacha20poly1305::Error> {
        match &self.0 {
            Some(key) => key.seal(sender, text.as_bytes()),
            None => Ok(text.as_bytes().to_vec()),
        }
    }

    pub fn open(&self, sender: &str, body: &[u8]) -> String {
        match &self.0 {
            Some(key) => key.open(sender, body).map_or_else(
                || NOT_READABLE.to_string(),
                |text| String::from_utf8_lossy(&text).into_owned(),
            ),
            None if body.starts_with(MARKER) => {
                "[encrypted: join with --e2ee PASSPHRASE to read it]".to_string()
            }
            None => String::from_utf8_lossy(body).into_owned(),
        }
    }
}

/// The salt of a room's key: the first 16 bytes of
/// SHA-256("roomq-e2ee-v1" || 0x00 || room).
pub fn salt(room: &str) -> [u8; 16] {
    let mut hash = Sha256::new();
    hash.update(b"roomq-e2ee-v1\0");
    hash.update(room.as_bytes());
    let digest = hash.finalize();
    std::array::from_fn(|i| digest[i])
}

/// room || 0x00 || sender: a body moved to another room, or replayed under
/// another sender's name, does not open.
fn associated_data(room: &str, sender: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(room.len() + 1 + sender.len());
    aad.extend_from_slice(room.as_bytes());
    aad.push(0);
    aad.extend_from_slice(sender.as_bytes());
    aad
}

/// Lower-case hex, as the test vector in `topics.md` writes bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
