//! Signed device alerts (`[[alerts]]` with `hmac_key_file`, `topics.md`
//! *Signed alerts*): a rule with a key takes only alerts signed with it,
//! with a counter above the device's last one, also after a restart; 5.0
//! devices sign in User Properties, 3.1.1 devices in a CBOR envelope.

mod common;

use std::path::{Path, PathBuf};

use common::chat::{publish_with, send_and_ack, user_props};
use common::*;
use hmac::{Hmac, Mac};
use rmqtt_codec::types::Publish;
use rmqtt_codec::v3;
use rmqtt_codec::v5::{PublishAckReason, QoS};
use roomq::chat::payloads::{to_cbor, AlertEnvelope};
use roomq::config::AlertRule;
use roomq::Config;
use sha2::Sha256;

const KEY: [u8; 32] = *b"0123456789abcdef0123456789abcdef";
const TOPIC: &str = "alerts/boiler-7/critical";

/// The signature as a device computes it, written here from `topics.md`
/// (not with the broker's code): HMAC-SHA256 over topic, 0x00, body,
/// counter (8 bytes big-endian).
fn sign(key: &[u8], topic: &str, body: &[u8], counter: u64) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(topic.as_bytes());
    mac.update(&[0]);
    mac.update(body);
    mac.update(&counter.to_be_bytes());
    mac.finalize().into_bytes().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A key file holding `KEY` in hex, in `dir`.
fn key_file(dir: &Path) -> PathBuf {
    let path = dir.join("boilers.key");
    std::fs::write(&path, format!("{}\n", hex(&KEY))).unwrap();
    path
}

/// `config` with one signed rule: `alerts/+/critical` into room `ops`.
fn signed_rule(mut config: Config, key: PathBuf) -> Config {
    config.alerts = vec![AlertRule {
        topic: "alerts/+/critical".into(),
        room: "ops".into(),
        publishers: Vec::new(),
        hmac_key_file: Some(key),
    }];
    config
}

/// A 5.0 alert signed in User Properties (`sig` with `signature`, `ctr`).
fn alert5(id: u16, body: &[u8], counter: u64, signature: &[u8]) -> Publish {
    let (sig, ctr) = (hex(signature), counter.to_string());
    publish_with(TOPIC, body, Some(id), &[("sig", &sig), ("ctr", &ctr)])
}

async fn ops_watcher(addr: std::net::SocketAddr) -> Raw {
    let mut ops = Raw::client5(addr, "ops-watch").await;
    ops.subscribe5(1, &[("rooms/ops/msg/+", opts(QoS::AtLeastOnce))])
        .await;
    ops
}

#[tokio::test]
async fn a_correctly_signed_alert_enters_the_room() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_with(signed_rule(test_config(), key_file(dir.path()))).await;
    let addr = broker.local_addr();
    let mut ops = ops_watcher(addr).await;
    let mut device = Raw::client5(addr, "boiler-7").await;

    let sig = sign(&KEY, TOPIC, b"pressure high", 1);
    let ack = send_and_ack(&mut device, alert5(1, b"pressure high", 1, &sig)).await;
    assert!(u8::from(ack.reason_code) < 0x80, "{:?}", ack.reason_code);
    let alert = ops.publish5().await;
    assert_eq!(alert.topic, "rooms/ops/msg/boiler-7");
    assert_eq!(&alert.payload[..], b"pressure high");
    // The signature is for the broker; members get the verified alert.
    let props = user_props(&alert);
    assert!(
        !props.contains_key("sig") && !props.contains_key("ctr"),
        "{props:?}"
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn a_bad_signature_is_refused_and_nothing_enters_the_room() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_with(signed_rule(test_config(), key_file(dir.path()))).await;
    let addr = broker.local_addr();
    let mut ops = ops_watcher(addr).await;
    let mut device = Raw::client5(addr, "boiler-7").await;

    // Signed with another key, then the right signature over another body.
    let wrong_key = sign(b"another key, another key, anothe", TOPIC, b"fire", 1);
    let ack = send_and_ack(&mut device, alert5(1, b"fire", 1, &wrong_key)).await;
    assert_eq!(ack.reason_code, PublishAckReason::NotAuthorized);
    let changed_body = sign(&KEY, TOPIC, b"all fine", 2);
    let ack = send_and_ack(&mut device, alert5(2, b"fire", 2, &changed_body)).await;
    assert_eq!(ack.reason_code, PublishAckReason::NotAuthorized);
    // No signature at all on a signed rule: not the documented format.
    let ack = send_and_ack(&mut device, publish_with(TOPIC, b"fire", Some(3), &[])).await;
    assert_eq!(ack.reason_code, PublishAckReason::PayloadFormatInvalid);
    assert!(matches!(ops.recv5_within(QUIET).await, Got::Nothing));
    assert_eq!(broker.chat_counters().alerts_refused.get(), 3);
    broker.shutdown().await;
}

#[tokio::test]
async fn a_replayed_or_older_counter_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_with(signed_rule(test_config(), key_file(dir.path()))).await;
    let addr = broker.local_addr();
    let mut ops = ops_watcher(addr).await;
    let mut device = Raw::client5(addr, "boiler-7").await;

    let sig = sign(&KEY, TOPIC, b"pressure high", 7);
    let ack = send_and_ack(&mut device, alert5(1, b"pressure high", 7, &sig)).await;
    assert!(u8::from(ack.reason_code) < 0x80);
    assert_eq!(&ops.publish5().await.payload[..], b"pressure high");
    // The same signed alert again, from a new connection under the
    // device's name (a recording played by someone who claims the name).
    drop(device);
    let mut attacker = Raw::client5(addr, "boiler-7").await;
    let ack = send_and_ack(&mut attacker, alert5(2, b"pressure high", 7, &sig)).await;
    assert_eq!(ack.reason_code, PublishAckReason::NotAuthorized);
    let older = sign(&KEY, TOPIC, b"pressure low", 6);
    let ack = send_and_ack(&mut attacker, alert5(3, b"pressure low", 6, &older)).await;
    assert_eq!(ack.reason_code, PublishAckReason::NotAuthorized);
    assert!(matches!(ops.recv5_within(QUIET).await, Got::Nothing));
    broker.shutdown().await;
}

/// The counter survives a restart on the same data directory: an alert
/// recorded before the restart cannot be played after it.
#[tokio::test]
async fn the_counter_is_kept_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path());
    let data = dir.path().join("data");
    let sig = sign(&KEY, TOPIC, b"pressure high", 41);
    {
        let broker = start_with(signed_rule(sled_config(&data), key.clone())).await;
        let mut device = Raw::client5(broker.local_addr(), "boiler-7").await;
        let ack = send_and_ack(&mut device, alert5(1, b"pressure high", 41, &sig)).await;
        assert!(u8::from(ack.reason_code) < 0x80);
        broker.shutdown().await;
    }
    let broker = start_with(signed_rule(sled_config(&data), key)).await;
    let addr = broker.local_addr();
    let mut ops = ops_watcher(addr).await;
    let mut device = Raw::client5(addr, "boiler-7").await;
    let ack = send_and_ack(&mut device, alert5(1, b"pressure high", 41, &sig)).await;
    assert_eq!(ack.reason_code, PublishAckReason::NotAuthorized);
    let next = sign(&KEY, TOPIC, b"pressure normal", 42);
    let ack = send_and_ack(&mut device, alert5(2, b"pressure normal", 42, &next)).await;
    assert!(u8::from(ack.reason_code) < 0x80);
    assert_eq!(&ops.publish5().await.payload[..], b"pressure normal");
    broker.shutdown().await;
}

/// 3.1.1 has no User Properties: the device sends the CBOR envelope
/// `{ body, ctr, sig }` as its payload; the room gets `body`. A refused
/// one is acknowledged (3.1.1 has no reason codes; a device would resend
/// a publish without PUBACK forever), dropped and counted.
#[tokio::test]
async fn a_311_device_signs_in_a_cbor_envelope() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_with(signed_rule(test_config(), key_file(dir.path()))).await;
    let addr = broker.local_addr();
    let mut ops = ops_watcher(addr).await;
    let (mut device, _) = Raw::connect3(addr, connect3("boiler-7", true)).await;
    let envelope = |body: &[u8], ctr: u64, sig: Vec<u8>| {
        let mut p = publish(TOPIC, b"", QoS::AtLeastOnce, Some(ctr as u16));
        p.payload = to_cbor(&AlertEnvelope {
            body: body.to_vec(),
            ctr,
            sig,
        })
        .into();
        v3::Packet::Publish(Box::new(p))
    };

    device
        .send3(envelope(
            b"forged",
            1,
            sign(b"not the key at all, not the key", TOPIC, b"forged", 1),
        ))
        .await;
    device
        .send3(envelope(
            b"pressure high",
            2,
            sign(&KEY, TOPIC, b"pressure high", 2),
        ))
        .await;
    let alert = ops.publish5().await;
    assert_eq!(alert.topic, "rooms/ops/msg/boiler-7");
    assert_eq!(&alert.payload[..], b"pressure high");
    assert_eq!(broker.chat_counters().alerts_refused.get(), 1);
    for id in [1, 2] {
        match device.recv3().await.packet() {
            v3::Packet::PublishAck { packet_id } => assert_eq!(packet_id.get(), id),
            other => panic!("expected PUBACK {id}, got {other:?}"),
        }
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn a_missing_key_file_stops_start_up_naming_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such.key");
    let config = signed_rule(test_config(), missing.clone());
    let error = roomq::Broker::new(config)
        .start()
        .await
        .err()
        .expect("start-up fails")
        .to_string();
    assert!(error.contains("alerts[0].hmac_key_file"), "{error}");
    assert!(error.contains(&missing.display().to_string()), "{error}");
}

/// Counters are kept per key and device (session 4 attack `alerts.py`):
/// a holder of rule A's key who signs as `boiler-7` with the highest
/// counter does not lock `boiler-7` out of rule B, signed with B's key.
#[tokio::test]
async fn one_rules_key_cannot_spend_another_rules_counters() {
    const KEY_B: [u8; 32] = *b"fedcba9876543210fedcba9876543210";
    const FAULT: &str = "alerts/boiler-7/fault";
    let dir = tempfile::tempdir().unwrap();
    let key_b = dir.path().join("b.key");
    std::fs::write(&key_b, hex(&KEY_B)).unwrap();
    let mut config = signed_rule(test_config(), key_file(dir.path()));
    config.alerts.push(AlertRule {
        topic: "alerts/+/fault".into(),
        room: "ops".into(),
        publishers: Vec::new(),
        hmac_key_file: Some(key_b),
    });
    let broker = start_with(config).await;
    let addr = broker.local_addr();
    let mut ops = ops_watcher(addr).await;
    let mut device = Raw::client5(addr, "boiler-7").await;

    // Rule A's key holder, as boiler-7, with the highest counter.
    let top = sign(&KEY, TOPIC, b"mine now", u64::MAX);
    let ack = send_and_ack(&mut device, alert5(1, b"mine now", u64::MAX, &top)).await;
    assert!(u8::from(ack.reason_code) < 0x80, "{:?}", ack.reason_code);
    assert_eq!(&ops.publish5().await.payload[..], b"mine now");
    // boiler-7's own alert on rule B, signed with B's key.
    let sig = sign(&KEY_B, FAULT, b"burner fault", 1);
    let (sig, ctr) = (hex(&sig), 1.to_string());
    let alert = publish_with(FAULT, b"burner fault", Some(2), &[("sig", &sig), ("ctr", &ctr)]);
    let ack = send_and_ack(&mut device, alert).await;
    assert!(
        u8::from(ack.reason_code) < 0x80,
        "rule B refused: {:?}",
        ack.reason_code
    );
    assert_eq!(&ops.publish5().await.payload[..], b"burner fault");
    broker.shutdown().await;
}

/// One rule's key adds at most `max_alert_devices_per_rule` devices, so
/// its holder cannot fill `max_alert_devices` for the other rules
/// (session 4 attack `alerts.py`, 2,100 invented devices).
#[tokio::test]
async fn one_rules_key_adds_a_bounded_number_of_devices() {
    const KEY_B: [u8; 32] = *b"fedcba9876543210fedcba9876543210";
    let dir = tempfile::tempdir().unwrap();
    let key_b = dir.path().join("b.key");
    std::fs::write(&key_b, hex(&KEY_B)).unwrap();
    let mut config = signed_rule(test_config(), key_file(dir.path()));
    config.chat.max_alert_devices = 3;
    config.chat.max_alert_devices_per_rule = 2;
    config.alerts.push(AlertRule {
        topic: "alerts/+/fault".into(),
        room: "ops".into(),
        publishers: Vec::new(),
        hmac_key_file: Some(key_b),
    });
    let broker = start_with(config).await;
    let addr = broker.local_addr();
    let post = |key: &'static [u8], device: &'static str, kind: &'static str| async move {
        let topic = format!("alerts/{device}/{kind}");
        let sig = hex(&sign(key, &topic, b"x", 1));
        let mut c = Raw::client5(addr, device).await;
        send_and_ack(
            &mut c,
            publish_with(&topic, b"x", Some(1), &[("sig", &sig), ("ctr", "1")]),
        )
        .await
        .reason_code
    };
    for device in ["d1", "d2"] {
        let code = post(&KEY, device, "critical").await;
        assert!(u8::from(code) < 0x80, "{device}: {code:?}");
    }
    assert_eq!(
        post(&KEY, "d3", "critical").await,
        PublishAckReason::QuotaExceeded
    );
    let code = post(&KEY_B, "boiler-8", "fault").await;
    assert!(u8::from(code) < 0x80, "rule B's new device: {code:?}");
    broker.shutdown().await;
}

/// A key file replaced on disk takes effect on reload (SIGHUP in the
/// binary): the old key no longer signs; a key file that became invalid
/// leaves the key in use as it was.
#[tokio::test]
async fn a_rotated_key_takes_effect_on_reload_and_a_broken_file_keeps_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = key_file(dir.path());
    let broker = start_with(signed_rule(test_config(), path.clone())).await;
    let addr = broker.local_addr();
    let mut device = Raw::client5(addr, "boiler-7").await;
    let new_key = *b"fedcba9876543210fedcba9876543210";

    std::fs::write(&path, format!("{}\n", hex(&new_key))).unwrap();
    let sig = sign(&KEY, TOPIC, b"old", 1);
    let ack = send_and_ack(&mut device, alert5(1, b"old", 1, &sig)).await;
    assert!(
        u8::from(ack.reason_code) < 0x80,
        "before the reload: {:?}",
        ack.reason_code
    );
    broker.reload();
    let sig = sign(&KEY, TOPIC, b"old", 2);
    let ack = send_and_ack(&mut device, alert5(2, b"old", 2, &sig)).await;
    assert_eq!(
        ack.reason_code,
        PublishAckReason::NotAuthorized,
        "the old key after the reload"
    );
    let sig = sign(&new_key, TOPIC, b"new", 3);
    let ack = send_and_ack(&mut device, alert5(3, b"new", 3, &sig)).await;
    assert!(
        u8::from(ack.reason_code) < 0x80,
        "the new key: {:?}",
        ack.reason_code
    );

    std::fs::write(&path, "not hex\n").unwrap();
    broker.reload();
    let sig = sign(&new_key, TOPIC, b"still", 4);
    let ack = send_and_ack(&mut device, alert5(4, b"still", 4, &sig)).await;
    assert!(
        u8::from(ack.reason_code) < 0x80,
        "after a failed reload: {:?}",
        ack.reason_code
    );
    broker.shutdown().await;
}

/// Rotating a rule's key starts fresh counters, also for a device whose
/// counter an earlier version stored per device alone: such a counter
/// holds for the key the rule had when this version started, not for a
/// key rotated in later (before, it held for every key forever, so a
/// device whose counter was used up stayed locked out through rotations).
#[tokio::test]
async fn rotating_a_rules_key_frees_a_device_from_an_old_format_counter() {
    use roomq::store::Store;
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path());
    let data = dir.path().join("data");
    {
        // What an earlier version stored: a counter under the device
        // name alone, used up.
        let store = roomq::store::SledStore::open(&data).unwrap();
        store.put_alert_counter("boiler-7", u64::MAX).unwrap();
        store.flush().unwrap();
        store.close();
    }
    let broker = start_with(signed_rule(sled_config(&data), key.clone())).await;
    let mut device = Raw::client5(broker.local_addr(), "boiler-7").await;
    let sig = sign(&KEY, TOPIC, b"pressure high", 5);
    let ack = send_and_ack(&mut device, alert5(1, b"pressure high", 5, &sig)).await;
    assert_eq!(
        ack.reason_code,
        PublishAckReason::NotAuthorized,
        "the key of the upgrade keeps the old counter"
    );
    broker.shutdown().await;

    let rotated: [u8; 32] = *b"fedcba9876543210fedcba9876543210";
    std::fs::write(&key, hex(&rotated)).unwrap();
    let broker = start_with(signed_rule(sled_config(&data), key)).await;
    let addr = broker.local_addr();
    let mut ops = ops_watcher(addr).await;
    let mut device = Raw::client5(addr, "boiler-7").await;
    let sig = sign(&rotated, TOPIC, b"pressure high", 1);
    let ack = send_and_ack(&mut device, alert5(1, b"pressure high", 1, &sig)).await;
    assert!(
        u8::from(ack.reason_code) < 0x80,
        "a rotated key starts fresh: {:?}",
        ack.reason_code
    );
    assert_eq!(&ops.publish5().await.payload[..], b"pressure high");
    broker.shutdown().await;
}
