//! The clients' end-to-end encryption (`examples/common/e2ee.rs`, which
//! examples/chat.rs includes too), and the inputs of the test vector in
//! `topics.md` (*End-to-end encryption (clients only)*) with the outputs
//! the Rust code computed for it: `tests/e2ee.rs` checks them against the
//! code and topics.md, `tests/web_chat.rs` against the browser's code.

#[path = "../../examples/common/e2ee.rs"]
mod crypto;

pub use crypto::*;

pub const PASSPHRASE: &str = "correct horse battery staple";
pub const ROOM: &str = "lobby";
pub const SENDER: &str = "alice";
pub const PLAINTEXT: &str = "hello, sealed world";
/// 00 01 02 … 17: a fixed nonce, for the vector only.
pub const NONCE_HEX: &str = "000102030405060708090a0b0c0d0e0f1011121314151617";
pub const SALT_HEX: &str = "df59875740d961658b358b747d2c0c64";
pub const KEY_HEX: &str = "6849fa43dff22b00635e6d8e4b0b2187bca1d6c90bec0733a0276fbfb01c6011";
pub const SEALED_HEX: &str = "72716531000102030405060708090a0b0c0d0e0f101112131415161716af87cf407c39886555e74d6a4f9c9a706927fcd8eeddcbbafd941b97e122ec353f3e";

/// The vector's nonce as bytes.
pub fn vector_nonce() -> [u8; NONCE_LEN] {
    std::array::from_fn(|i| i as u8)
}

/// The vector as JSON, for the browser test.
pub fn vector_json() -> String {
    serde_json::json!({
        "passphrase": PASSPHRASE,
        "room": ROOM,
        "sender": SENDER,
        "plaintext": PLAINTEXT,
        "nonce": NONCE_HEX,
        "salt": SALT_HEX,
        "key": KEY_HEX,
        "sealed": SEALED_HEX,
    })
    .to_string()
}
