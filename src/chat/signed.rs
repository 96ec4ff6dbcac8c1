//! Signed device alerts: an `[[alerts]]` rule with `hmac_key_file` takes
//! only alerts that carry an HMAC-SHA256 over their topic, body and a
//! counter that grows with every alert of the device (`topics.md`,
//! *Signed alerts*). A device that cannot do TLS can then still be
//! trusted: nobody without the key can make an alert, and a recorded one
//! cannot be played again.
//!
//! The last accepted counter of each device (the alert's sender) is kept
//! in the store (`alert_counters`), at most `max_alert_devices` of them.
//! It is written before the alert is posted, so the group commit that
//! makes the alert durable (and its PUBACK) carries the counter too.
//!
//! Counters are kept per rule key and device, so rotating a rule's key
//! starts its devices' counters afresh. Earlier versions kept one counter
//! per device for every key; such a counter belongs to the keys the rules
//! had when this version first started with one (recorded in the same
//! tree, `LEGACY_KEY`): a key rotated in later starts fresh, and once
//! none of those keys is configured at a start, the old counters are
//! forgotten. (Before, they held for every key forever: a device whose
//! counter a key holder had pushed to 2^64−1 stayed locked out through
//! any rotation.)

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use parking_lot::{Mutex, RwLock};
use sha2::Sha256;

use super::limits::ChatLimits;
use super::payloads::AlertEnvelope;
use crate::config::AlertRule;
use crate::protocol::PublishAckReason;
use crate::router::Message;
use crate::store::{MemoryStore, Store};

/// Shortest and longest key accepted, in bytes: under 128 bits a key can
/// be guessed; over the block size HMAC hashes it down anyway.
const KEY_BYTES: std::ops::RangeInclusive<usize> = 16..=64;

/// Per rule of `config.alerts` (same index): its key, if it has one.
type RuleKeys = Arc<[Option<Arc<[u8]>>]>;

/// Why a signed alert was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// No signature, or one that is not hex / CBOR as `topics.md` says.
    Malformed,
    /// The signature does not match (another key, or a changed alert).
    BadSignature,
    /// Correctly signed, but its counter is not above the last accepted
    /// one: a recorded alert played again, or a device that lost count.
    Replayed,
    /// A new device while `max_alert_devices` are known.
    TooManyDevices,
    /// The counter could not be written.
    Store,
}

impl Refusal {
    /// The 5.0 PUBACK reason. A replay gets the code of a bad signature:
    /// both mean "this does not prove the device sent it now", and 0x99
    /// would claim a format error where there is none.
    pub(crate) fn reason(self) -> PublishAckReason {
        match self {
            Refusal::Malformed => PublishAckReason::PayloadFormatInvalid,
            Refusal::BadSignature | Refusal::Replayed => PublishAckReason::NotAuthorized,
            Refusal::TooManyDevices => PublishAckReason::QuotaExceeded,
            Refusal::Store => PublishAckReason::UnspecifiedError,
        }
    }
}

/// An alert that passed its signature check: what the room gets, and the
/// counter to record once every check of the publish passed.
pub(crate) struct Verified {
    pub body: Bytes,
    pub counter: u64,
    /// The identity of the key that verified it (`key_id`): counters are
    /// kept per key and device, so a holder of one rule's key cannot
    /// spend the counters of another rule's devices.
    pub key_id: String,
}

/// The keys of the signed rules and the devices' counters.
pub(crate) struct SignedAlerts {
    /// Per rule (same index): its `hmac_key_file`, read again on SIGHUP.
    key_files: Vec<Option<PathBuf>>,
    /// Replaced whole on SIGHUP (a lock held for a clone of the `Arc`).
    keys: RwLock<RuleKeys>,
    /// Last accepted counter per key id and device; a mutex because a
    /// check and its update must be one step (two copies of one alert on
    /// two connections: one passes).
    counters: Mutex<HashMap<String, u64>>,
    /// Devices with a counter per key id (`max_alert_devices_per_rule`).
    /// Lock order: after `counters`.
    per_key: Mutex<HashMap<String, usize>>,
    /// Counters of the per-device format (never written now), and the
    /// key ids they hold for (`None`: every key, while no start with a
    /// signed rule recorded them).
    legacy: HashMap<String, u64>,
    legacy_keys: Option<HashSet<String>>,
    max_devices_per_key: usize,
    store: Arc<dyn Store>,
    max_devices: usize,
}

impl SignedAlerts {
    /// Reads the rules' key files and the counters kept in `store` (in
    /// memory without one). A missing or bad key file is an error that
    /// names the file and the key.
    pub(crate) fn load(
        rules: &[AlertRule],
        limits: &ChatLimits,
        store: Option<Arc<dyn Store>>,
    ) -> Result<SignedAlerts, String> {
        let key_files: Vec<Option<PathBuf>> = rules.iter().map(|r| r.hmac_key_file.clone()).collect();
        let keys = read_keys(&key_files)?;
        let store = store.unwrap_or_else(|| Arc::new(MemoryStore::default()));
        let (mut counters, mut legacy, mut recorded) = (HashMap::new(), HashMap::new(), None);
        for (name, counter) in store
            .load_alert_counters()
            .map_err(|e| format!("alert counters: {e}"))?
        {
            if let Some(key_id) = name.strip_prefix(LEGACY_KEY) {
                recorded
                    .get_or_insert_with(HashSet::new)
                    .insert(key_id.to_string());
            } else if name.contains('\u{0}') {
                counters.insert(name, counter);
            } else {
                legacy.insert(name, counter);
            }
        }
        let configured: HashSet<String> = keys.iter().flatten().map(|k| key_id(k)).collect();
        let legacy_keys = retire_legacy(&*store, &mut legacy, recorded, configured)
            .map_err(|e| format!("alert counters: {e}"))?;
        let mut per_key: HashMap<String, usize> = HashMap::new();
        for name in counters.keys() {
            if let Some((key_id, _)) = name.split_once('\u{0}') {
                *per_key.entry(key_id.to_string()).or_default() += 1;
            }
        }
        Ok(SignedAlerts {
            key_files,
            keys: RwLock::new(keys),
            counters: Mutex::new(counters),
            per_key: Mutex::new(per_key),
            legacy,
            legacy_keys,
            max_devices_per_key: limits.max_alert_devices_per_rule,
            store,
            max_devices: limits.max_alert_devices,
        })
    }

    /// No signed rules, counters in memory: until `load` replaces it.
    pub(crate) fn none() -> SignedAlerts {
        SignedAlerts {
            key_files: Vec::new(),
            keys: RwLock::new(Arc::from(Vec::new())),
            counters: Mutex::default(),
            per_key: Mutex::default(),
            legacy: HashMap::new(),
            legacy_keys: None,
            max_devices_per_key: 0,
            store: Arc::new(MemoryStore::default()),
            max_devices: 0,
        }
    }

    /// Reads the key files again (SIGHUP); on an error the old keys stay.
    pub(crate) fn reload(&self) {
        match read_keys(&self.key_files) {
            Ok(keys) => {
                let signed = keys.iter().filter(|k| k.is_some()).count();
                *self.keys.write() = keys;
                if signed > 0 {
                    tracing::info!(rules = signed, "alert keys reloaded");
                }
            }
            Err(e) => tracing::error!(error = %e, "alert keys not reloaded; the old ones stay in use"),
        }
    }

    /// Whether rule `index` takes only signed alerts.
    pub(crate) fn is_signed(&self, index: usize) -> bool {
        self.key(index).is_some()
    }

    fn key(&self, index: usize) -> Option<Arc<[u8]>> {
        self.keys.read().get(index).cloned().flatten()
    }

    /// Checks the signature of `message` for rule `index` (which has a
    /// key): User Properties `sig` and `ctr`, or else a CBOR envelope as
    /// the payload. Changes nothing.
    pub(crate) fn verify(&self, index: usize, message: &Message) -> Result<Verified, Refusal> {
        let key = self.key(index).ok_or(Refusal::BadSignature)?;
        let (body, counter, sig) = signed_parts(message)?;
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|_| Refusal::BadSignature)?;
        mac.update(&signing_input(&message.topic, &body, counter));
        // `verify_slice` compares in constant time.
        mac.verify_slice(&sig).map_err(|_| Refusal::BadSignature)?;
        Ok(Verified {
            body,
            counter,
            key_id: key_id(&key),
        })
    }

    /// Records `counter` as `device`'s last one, or refuses it when it is
    /// not above the last (or `device` would be one too many).
    pub(crate) fn accept(&self, key_id: &str, device: &str, counter: u64) -> Result<(), Refusal> {
        let mut counters = self.counters.lock();
        let stored = counter_key(key_id, device);
        // A counter stored by a version that kept one per device (its
        // key is the bare device name) holds for the keys of that time:
        // an upgrade loses no replay protection, a rotation starts fresh.
        let legacy = self
            .legacy_keys
            .as_ref()
            .is_none_or(|keys| keys.contains(key_id))
            .then(|| self.legacy.get(device))
            .flatten();
        let last = match (counters.get(&stored), legacy) {
            (Some(&a), Some(&b)) => Some(a.max(b)),
            (a, b) => a.or(b).copied(),
        };
        match last {
            Some(last) if counter <= last => return Err(Refusal::Replayed),
            None if counter == 0 => return Err(Refusal::Replayed),
            _ => {}
        }
        let new = !counters.contains_key(&stored);
        let mut per_key = self.per_key.lock();
        let of_key = per_key.get(key_id).copied().unwrap_or(0);
        if new && (counters.len() >= self.max_devices || of_key >= self.max_devices_per_key) {
            return Err(Refusal::TooManyDevices);
        }
        if let Err(e) = self.store.put_alert_counter(&stored, counter) {
            tracing::error!(%device, error = %e, "could not store an alert counter");
            return Err(Refusal::Store);
        }
        counters.insert(stored, counter);
        if new {
            per_key.insert(key_id.to_string(), of_key + 1);
        }
        Ok(())
    }
}

/// The name prefix, in the `alert_counters` tree, of the key ids that
/// counters of the per-device format hold for (no device name or
/// key-and-device name starts with U+0000).
const LEGACY_KEY: &str = "\u{0}legacy-key\u{0}";

/// The key ids `legacy` (counters of the per-device format) hold for:
/// those `recorded` at an earlier start, else the `configured` ones, now
/// recorded; `None` (every key) while no signed rule has been configured
/// at a start. Once signed rules are configured with none of the recorded
/// keys (all rotated out), they and the record are removed; a start
/// without signed rules keeps them.
fn retire_legacy(
    store: &dyn Store,
    legacy: &mut HashMap<String, u64>,
    recorded: Option<HashSet<String>>,
    configured: HashSet<String>,
) -> Result<Option<HashSet<String>>, crate::store::StoreError> {
    match recorded {
        None if legacy.is_empty() || configured.is_empty() => Ok(None),
        None => {
            for key_id in &configured {
                store.put_alert_counter(&format!("{LEGACY_KEY}{key_id}"), 0)?;
            }
            Ok(Some(configured))
        }
        Some(recorded)
            if !legacy.is_empty() && (configured.is_empty() || !recorded.is_disjoint(&configured)) =>
        {
            Ok(Some(recorded))
        }
        Some(recorded) => {
            for device in legacy.keys() {
                store.remove_alert_counter(device)?;
            }
            for key_id in &recorded {
                store.remove_alert_counter(&format!("{LEGACY_KEY}{key_id}"))?;
            }
            if !legacy.is_empty() {
                tracing::info!(
                    devices = legacy.len(),
                    "alert counters of the per-device format forgotten: every key they held for was rotated out"
                );
            }
            legacy.clear();
            Ok(None)
        }
    }
}

/// A key's identity, for its devices' counters: the first 8 bytes of its
/// SHA-256, in hex (not the key, which the store must not hold).
fn key_id(key: &[u8]) -> String {
    use sha2::Digest;
    Sha256::digest(key)
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The name a device's counter is stored under: key identity, U+0000,
/// device. No topic level holds U+0000, so it cannot be a device name of
/// the per-device format.
fn counter_key(key_id: &str, device: &str) -> String {
    format!("{key_id}\u{0}{device}")
}

/// What is signed: the topic's bytes, one 0x00 byte, the body, and the
/// counter as 8 bytes big-endian. The 0x00 (which no MQTT topic may
/// contain) marks where the topic ends, so no other split of the same
/// bytes into topic and body has the same signature.
pub fn signing_input(topic: &str, body: &[u8], counter: u64) -> Vec<u8> {
    let mut input = Vec::with_capacity(topic.len() + 1 + body.len() + 8);
    input.extend_from_slice(topic.as_bytes());
    input.push(0);
    input.extend_from_slice(body);
    input.extend_from_slice(&counter.to_be_bytes());
    input
}

/// The HMAC-SHA256 of an alert, as a device computes it.
pub fn sign_alert(key: &[u8], topic: &str, body: &[u8], counter: u64) -> [u8; 32] {
    // HMAC takes a key of any length: this cannot fail.
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => return [0; 32],
    };
    mac.update(&signing_input(topic, body, counter));
    mac.finalize().into_bytes().into()
}

/// Body, counter and signature of a signed alert.
fn signed_parts(message: &Message) -> Result<(Bytes, u64, Vec<u8>), Refusal> {
    let property = |name: &str| {
        message
            .properties
            .as_ref()
            .and_then(|p| p.user_properties.iter().find(|(k, _)| k == name))
            .map(|(_, v)| v.to_string())
    };
    if let Some(sig) = property("sig") {
        let counter = property("ctr")
            .and_then(|c| c.parse::<u64>().ok())
            .ok_or(Refusal::Malformed)?;
        let sig = decode_hex(&sig).ok_or(Refusal::Malformed)?;
        return Ok((message.payload.clone(), counter, sig));
    }
    // Exactly one CBOR value, nothing after it; its size is already
    // bounded by `max_room_message_bytes`.
    let mut rest = message.payload.as_ref();
    let envelope: AlertEnvelope = ciborium::from_reader(&mut rest).map_err(|_| Refusal::Malformed)?;
    if !rest.is_empty() {
        return Err(Refusal::Malformed);
    }
    Ok((Bytes::from(envelope.body), envelope.ctr, envelope.sig))
}

/// Every rule's key, read from its `hmac_key_file` (`key_files`, per rule).
fn read_keys(key_files: &[Option<PathBuf>]) -> Result<RuleKeys, String> {
    key_files
        .iter()
        .enumerate()
        .map(|(i, file)| match file {
            None => Ok(None),
            Some(path) => read_key(path)
                .map(|k| Some(Arc::from(k)))
                .map_err(|why| format!("key `alerts[{i}].hmac_key_file` ({}): {why}", path.display())),
        })
        .collect()
}

/// A key file: the key in hex, surrounding whitespace ignored.
fn read_key(path: &Path) -> Result<Vec<u8>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let key = decode_hex(text.trim()).ok_or("the file must hold the key in hex")?;
    if !KEY_BYTES.contains(&key.len()) {
        return Err(format!(
            "the key is {} bytes; it must be {} to {}",
            key.len(),
            KEY_BYTES.start(),
            KEY_BYTES.end()
        ));
    }
    Ok(key)
}

/// Hex (either case) to bytes; `None` for anything else.
pub fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    let digit = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    text.as_bytes()
        .chunks(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    /// `SignedAlerts::load` with `config`'s rules and limits.
    fn load_from(config: &Config, store: Option<Arc<dyn Store>>) -> Result<SignedAlerts, String> {
        SignedAlerts::load(&config.alerts, &ChatLimits::from_config(config), store)
    }

    /// The test vector of `topics.md` (*Signed alerts*).
    #[test]
    fn the_documented_test_vector() {
        let key = decode_hex("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f").unwrap();
        let sig = sign_alert(&key, "alerts/boiler-7/critical", b"pressure high", 1);
        let hex: String = sig.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, TEST_VECTOR_SIG);
    }

    const TEST_VECTOR_SIG: &str = "d5ffb5f36c1935a4333ecc4a4441a1ab63accf4492e650e0bf7fb896b13724bb";

    #[test]
    fn a_counter_must_grow_per_device() {
        let alerts = SignedAlerts::load(
            &[],
            &ChatLimits::from_config(&crate::config::Config::default()),
            None,
        )
        .unwrap();
        assert_eq!(alerts.accept("k", "d", 0), Err(Refusal::Replayed));
        alerts.accept("k", "d", 5).unwrap();
        assert_eq!(alerts.accept("k", "d", 5), Err(Refusal::Replayed));
        assert_eq!(alerts.accept("k", "d", 4), Err(Refusal::Replayed));
        alerts.accept("k", "e", 1).unwrap();
        alerts.accept("k", "d", 6).unwrap();
        // Another key's counters are its own.
        alerts.accept("other", "d", 1).unwrap();
    }

    /// A counter stored per device only (before counters were kept per
    /// key) still refuses older counters under every key after an upgrade.
    #[test]
    fn a_counter_of_the_old_format_holds_for_every_key() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
        store.put_alert_counter("d", 9).unwrap();
        let alerts = SignedAlerts::load(
            &[],
            &ChatLimits::from_config(&crate::config::Config::default()),
            Some(store),
        )
        .unwrap();
        for key in ["k", "other"] {
            assert_eq!(alerts.accept(key, "d", 9), Err(Refusal::Replayed));
        }
        alerts.accept("k", "d", 10).unwrap();
    }

    /// A configuration with one signed rule whose key is `key`.
    fn signed_rule(dir: &Path, key: &[u8]) -> Config {
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        let file = dir.join(format!("{}.key", key_id(key)));
        std::fs::write(&file, hex).unwrap();
        Config {
            alerts: vec![crate::config::AlertRule {
                topic: "alerts/+/critical".into(),
                room: "ops".into(),
                publishers: Vec::new(),
                hmac_key_file: Some(file),
            }],
            ..Config::default()
        }
    }

    /// Counters of the old per-device format belong to the keys the rules
    /// had when this version first started: a key rotated in later starts
    /// fresh, as it does for counters of the per-key format, and once
    /// every one of those keys is gone the old counters are forgotten.
    #[test]
    fn counters_of_the_old_format_end_with_the_keys_they_were_written_under() {
        let dir = tempfile::tempdir().unwrap();
        let (old_key, new_key) = ([1u8; 32], [2u8; 32]);
        let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
        store.put_alert_counter("d", u64::MAX).unwrap();
        let alerts = load_from(&signed_rule(dir.path(), &old_key), Some(store.clone())).unwrap();
        assert_eq!(
            alerts.accept(&key_id(&old_key), "d", 9),
            Err(Refusal::Replayed),
            "the key in use at the upgrade keeps its devices' counters"
        );
        assert_eq!(
            alerts.accept(&key_id(&new_key), "d", 1),
            Ok(()),
            "a key rotated in starts fresh"
        );
        // A start without signed rules keeps it for the old key.
        let alerts = load_from(&Config::default(), Some(store.clone())).unwrap();
        assert_eq!(alerts.accept(&key_id(&old_key), "d", 10), Err(Refusal::Replayed));
        // The next start has only the new key: the old counter goes.
        let alerts = load_from(&signed_rule(dir.path(), &new_key), Some(store.clone())).unwrap();
        assert_eq!(alerts.accept(&key_id(&new_key), "d", 1), Err(Refusal::Replayed));
        alerts.accept(&key_id(&new_key), "d", 2).unwrap();
        let names: Vec<String> = store
            .load_alert_counters()
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, [counter_key(&key_id(&new_key), "d")]);
    }
}
