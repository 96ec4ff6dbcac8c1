//! End-to-end encryption in the clients (`topics.md`, *End-to-end
//! encryption (clients only)*): the test vector written there is what the
//! Rust code computes (the browser side checks the same vector in
//! `tests/web_chat.rs`), a sealed body opens only with its room's key and
//! sender, and a broker that stored sealed messages holds no plaintext on
//! disk.

mod common;

use std::path::Path;

use common::chat::{history, publish_with, send_and_ack, user5};
use common::e2ee::*;
use common::*;
use rmqtt_codec::types::QoS;
use rmqtt_codec::v5::PublishAckReason;

#[test]
fn the_test_vector_in_topics_md_is_what_the_code_computes() {
    let key = RoomKey::derive(PASSPHRASE, ROOM).unwrap();
    let sealed = key
        .seal_with_nonce(SENDER, &vector_nonce(), PLAINTEXT.as_bytes())
        .unwrap();
    println!("key    {}", hex(key.bytes()));
    println!("sealed {}", hex(&sealed));
    assert_eq!(hex(&vector_nonce()), NONCE_HEX);
    assert_eq!(hex(key.bytes()), KEY_HEX);
    assert_eq!(hex(&sealed), SEALED_HEX);
    assert_eq!(key.open(SENDER, &sealed).as_deref(), Some(PLAINTEXT.as_bytes()));
    assert_eq!(hex(&salt(ROOM)), SALT_HEX);
    // topics.md writes the same inputs and outputs (a long one over two
    // lines: compared without white space).
    let topics = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("topics.md")).unwrap();
    let squeezed: String = topics.split_whitespace().collect();
    for expected in [
        PASSPHRASE, ROOM, SENDER, PLAINTEXT, NONCE_HEX, SALT_HEX, KEY_HEX, SEALED_HEX,
    ] {
        let expected: String = expected.split_whitespace().collect();
        assert!(
            squeezed.contains(&expected),
            "topics.md's test vector lacks {expected}"
        );
    }
}

#[test]
fn a_sealed_body_opens_only_with_its_passphrase_room_and_sender() {
    let key = RoomKey::derive(PASSPHRASE, ROOM).unwrap();
    let sealed = key.seal(SENDER, b"for lobby, from alice").unwrap();
    assert!(sealed.starts_with(b"rqe1"));
    assert_eq!(sealed.len(), 4 + 24 + 21 + 16);
    // A fresh nonce every time: the same text seals differently.
    assert_ne!(sealed, key.seal(SENDER, b"for lobby, from alice").unwrap());
    assert_eq!(
        key.open(SENDER, &sealed).as_deref(),
        Some(&b"for lobby, from alice"[..])
    );

    let wrong_passphrase = RoomKey::derive("correct horse battery stapler", ROOM).unwrap();
    assert_eq!(wrong_passphrase.open(SENDER, &sealed), None);
    // The same passphrase in another room is another key.
    let other_room = RoomKey::derive(PASSPHRASE, "ops").unwrap();
    assert_ne!(other_room.bytes(), key.bytes());
    assert_eq!(other_room.open(SENDER, &sealed), None);
    // Replayed under another sender's name.
    assert_eq!(key.open("mallory", &sealed), None);
    // Altered in transit, cut short, or sent in clear.
    let mut altered = sealed.clone();
    *altered.last_mut().unwrap() ^= 1;
    assert_eq!(key.open(SENDER, &altered), None);
    assert_eq!(key.open(SENDER, &sealed[..30]), None);
    assert_eq!(key.open(SENDER, b"for lobby, from alice"), None);
    assert_eq!(key.open(SENDER, b""), None);
}

/// What a chat client shows (examples/chat.rs): a body it cannot open as
/// not readable; without a passphrase, a sealed body as encrypted.
#[test]
fn a_client_shows_a_body_it_cannot_open_as_not_readable() {
    let with = Bodies(Some(RoomKey::derive(PASSPHRASE, ROOM).unwrap()));
    let without = Bodies(None);
    let sealed = with.seal(SENDER, "hi").unwrap();
    assert_eq!(with.open(SENDER, &sealed), "hi");
    assert_eq!(with.open(SENDER, b"hi in clear"), NOT_READABLE);
    assert_eq!(with.open("bob", &sealed), NOT_READABLE);
    assert!(without.open(SENDER, &sealed).starts_with("[encrypted"));
    assert_eq!(without.open(SENDER, b"hi in clear"), "hi in clear");
    assert_eq!(without.seal(SENDER, "hi").unwrap(), b"hi");
}

/// Every file under `dir`, recursively.
fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, out);
        } else {
            out.push(path);
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Sealed messages go through a sled broker: the member receives and the
/// history returns the sealed bytes (which open), and once the broker is
/// stopped no file of its data directory holds a byte string of the
/// plaintext, while the sealed marker is there (the messages were stored).
/// A control: one message sent in clear to another room is found by the
/// same scan, so the scan does see stored bodies.
#[tokio::test]
async fn the_broker_stores_and_forwards_ciphertext_only() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let broker = start_with(sled_config(&data)).await;
    let addr = broker.local_addr();
    let key = RoomKey::derive(PASSPHRASE, ROOM).unwrap();
    let secrets: Vec<String> = (0..20)
        .map(|i| format!("the vault code is swordfish-{i:02}, tell no one"))
        .collect();

    let mut bob = user5(addr, "bob-dev", "bob").await;
    bob.subscribe5(1, &[("rooms/lobby/msg/+", opts(QoS::AtLeastOnce))])
        .await;
    let mut alice = user5(addr, "alice-dev", SENDER).await;
    for (i, secret) in secrets.iter().enumerate() {
        let sealed = key.seal(SENDER, secret.as_bytes()).unwrap();
        let p = publish_with("rooms/lobby/msg/alice", &sealed, Some(i as u16 + 1), &[]);
        let ack = send_and_ack(&mut alice, p).await;
        assert_eq!(ack.reason_code, PublishAckReason::Success);
        let got = bob.publish5().await;
        assert_eq!(got.payload, sealed, "the broker forwards the sealed bytes");
        assert_eq!(key.open(SENDER, &got.payload).as_deref(), Some(secret.as_bytes()));
    }
    let clear = publish_with("rooms/ops/msg/alice", b"canary in clear", Some(100), &[]);
    assert_eq!(
        send_and_ack(&mut alice, clear).await.reason_code,
        PublishAckReason::Success
    );
    let stored = history(addr, ROOM).await;
    assert_eq!(stored.messages.len(), secrets.len());
    for (m, secret) in stored.messages.iter().zip(&secrets) {
        assert!(m.body.starts_with(b"rqe1"));
        assert_eq!(key.open(&m.sender, &m.body).as_deref(), Some(secret.as_bytes()));
    }
    broker.shutdown().await;

    let mut all = Vec::new();
    files(&data, &mut all);
    assert!(!all.is_empty(), "the sled store wrote files");
    let (mut marker_seen, mut canary_seen) = (false, false);
    for file in &all {
        let bytes = std::fs::read(file).unwrap();
        marker_seen |= contains(&bytes, b"rqe1");
        canary_seen |= contains(&bytes, b"canary in clear");
        // "swordfish" is in every secret; 9 bytes are enough to find a
        // fragment of any of them.
        assert!(
            !contains(&bytes, b"swordfish") && !contains(&bytes, b"vault code"),
            "plaintext on disk in {}",
            file.display()
        );
    }
    assert!(marker_seen, "no sealed body found in {}", data.display());
    assert!(canary_seen, "the scan misses a body stored in clear");
}
