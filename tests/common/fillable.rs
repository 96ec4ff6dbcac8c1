//! A store whose disk fills on demand, for the full-disk tests
//! (`full_disk.rs`): a real sled store whose flush fails while `full` is
//! set, as sled's flush fails on a full file system, and the broker's
//! `$SYS/broker/store/status` as a test reads it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use rmqtt_codec::types::QoS;
use roomq::config::StoreConfig;
use roomq::store::{
    DedupRecord, LoadedSession, MessageRecord, QueuedRecord, Reactions, RoomHead, RoomRecord, SessionRecord,
    SledStore, Store, StoreError,
};

use super::{opts, sled_config, Raw};

/// A sled store whose flush fails while `full` is set, and which counts
/// the I/O errors its sled store itself returned (a real full disk).
pub struct FillableStore {
    pub inner: SledStore,
    pub full: AtomicBool,
    pub sled_errors: AtomicU64,
}

impl FillableStore {
    /// Counts `result` if sled failed.
    fn seen<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(StoreError::Io(error)) = &result {
            eprintln!("sled failed: {error}");
            self.sled_errors.fetch_add(1, Ordering::Relaxed);
        }
        result
    }
}

impl Store for FillableStore {
    fn put_retained(&self, topic: &str, message: Option<&MessageRecord>) -> Result<(), StoreError> {
        self.seen(self.inner.put_retained(topic, message))
    }
    fn load_retained(&self) -> Result<Vec<MessageRecord>, StoreError> {
        self.inner.load_retained()
    }
    fn put_session(&self, client_id: &str, session: &SessionRecord) -> Result<(), StoreError> {
        self.seen(self.inner.put_session(client_id, session))
    }
    fn remove_session(&self, client_id: &str) -> Result<(), StoreError> {
        self.seen(self.inner.remove_session(client_id))
    }
    fn load_sessions(&self) -> Result<Vec<LoadedSession>, StoreError> {
        self.inner.load_sessions()
    }
    fn new_body_id(&self) -> u64 {
        self.inner.new_body_id()
    }
    fn put_message(
        &self,
        client_id: &str,
        seq: u64,
        body: u64,
        message: QueuedRecord,
    ) -> Result<(), StoreError> {
        self.seen(self.inner.put_message(client_id, seq, body, message))
    }
    fn update_message(
        &self,
        client_id: &str,
        seq: u64,
        body: u64,
        message: QueuedRecord,
    ) -> Result<(), StoreError> {
        self.seen(self.inner.update_message(client_id, seq, body, message))
    }
    fn load_body(&self, body: u64) -> Result<Option<MessageRecord>, StoreError> {
        self.inner.load_body(body)
    }
    fn remove_message(&self, client_id: &str, seq: u64) -> Result<(), StoreError> {
        self.seen(self.inner.remove_message(client_id, seq))
    }
    fn put_incoming_qos2(&self, client_id: &str, packet_id: u16) -> Result<(), StoreError> {
        self.seen(self.inner.put_incoming_qos2(client_id, packet_id))
    }
    fn remove_incoming_qos2(&self, client_id: &str, packet_id: u16) -> Result<(), StoreError> {
        self.seen(self.inner.remove_incoming_qos2(client_id, packet_id))
    }
    fn append_room(&self, room: &str, seq: u64, record: &RoomRecord) -> Result<(), StoreError> {
        self.seen(self.inner.append_room(room, seq, record))
    }
    fn room_range(
        &self,
        room: &str,
        after: u64,
        before: u64,
        limit: usize,
        newest: bool,
    ) -> Result<Vec<(u64, RoomRecord)>, StoreError> {
        self.inner.room_range(room, after, before, limit, newest)
    }
    fn rewrite_room(&self, room: &str, seq: u64, record: &RoomRecord) -> Result<(), StoreError> {
        self.seen(self.inner.rewrite_room(room, seq, record))
    }
    fn reserve_room_seqs(&self, room: &str, up_to: u64) -> Result<(), StoreError> {
        self.seen(self.inner.reserve_room_seqs(room, up_to))
    }
    fn room_heads(&self) -> Result<Vec<RoomHead>, StoreError> {
        self.inner.room_heads()
    }
    fn trim_room(&self, room: &str, below: u64) -> Result<u64, StoreError> {
        self.seen(self.inner.trim_room(room, below))
    }
    fn room_len(&self, room: &str) -> Result<u64, StoreError> {
        self.inner.room_len(room)
    }
    fn reactions(&self, room: &str, seq: u64, reactor: Option<&str>) -> Result<Reactions, StoreError> {
        self.inner.reactions(room, seq, reactor)
    }
    fn set_reaction(
        &self,
        room: &str,
        seq: u64,
        emoji: &str,
        reactor: &str,
        on: bool,
    ) -> Result<(), StoreError> {
        self.seen(self.inner.set_reaction(room, seq, emoji, reactor, on))
    }
    fn clear_reactions(&self, room: &str, seq: u64) -> Result<(), StoreError> {
        self.seen(self.inner.clear_reactions(room, seq))
    }

    fn purge_reactions(&self, max_keys: usize) -> Result<usize, StoreError> {
        self.seen(self.inner.purge_reactions(max_keys))
    }

    fn set_edit_purge(&self, room: &str, message: u64, edits: &[u64]) -> Result<(), StoreError> {
        self.seen(self.inner.set_edit_purge(room, message, edits))
    }

    fn edit_purges(&self, max: usize) -> Result<Vec<roomq::store::EditPurge>, StoreError> {
        self.inner.edit_purges(max)
    }

    fn set_room_opener(&self, room: &str, account: &str) -> Result<(), StoreError> {
        self.inner.set_room_opener(room, account)
    }
    fn forget_room(&self, room: &str, seq_floor: u64) -> Result<(), StoreError> {
        self.inner.forget_room(room, seq_floor)
    }
    fn room_seq_floor(&self) -> Result<u64, StoreError> {
        self.inner.room_seq_floor()
    }
    fn put_dedup(&self, key: &str, entry: Option<DedupRecord>) -> Result<(), StoreError> {
        self.seen(self.inner.put_dedup(key, entry))
    }
    fn load_dedup(&self) -> Result<Vec<(String, DedupRecord)>, StoreError> {
        self.inner.load_dedup()
    }
    fn put_sanction(
        &self,
        key: &str,
        entry: Option<&roomq::store::SanctionRecord>,
    ) -> Result<(), StoreError> {
        self.inner.put_sanction(key, entry)
    }
    fn load_sanctions(&self) -> Result<Vec<(String, roomq::store::SanctionRecord)>, StoreError> {
        self.inner.load_sanctions()
    }
    fn put_alert_counter(&self, device: &str, counter: u64) -> Result<(), StoreError> {
        self.inner.put_alert_counter(device, counter)
    }
    fn remove_alert_counter(&self, device: &str) -> Result<(), StoreError> {
        self.inner.remove_alert_counter(device)
    }
    fn load_alert_counters(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.inner.load_alert_counters()
    }
    fn flush(&self) -> Result<(), StoreError> {
        if self.full.load(Ordering::Acquire) {
            return Err(StoreError::Io("No space left on device (os error 28)".into()));
        }
        self.seen(self.inner.flush())
    }
    fn needs_reopen(&self) -> bool {
        self.inner.needs_reopen()
    }
    fn reopen(&self) -> Result<bool, StoreError> {
        self.inner.reopen()
    }
    fn reopens(&self) -> u64 {
        self.inner.reopens()
    }
    fn size_on_disk(&self) -> u64 {
        self.inner.size_on_disk()
    }
    fn bytes_written(&self) -> u64 {
        self.inner.bytes_written()
    }
    fn close(&self) {
        self.inner.close()
    }
}

/// A client subscribed to `$SYS/broker/store/status`.
pub async fn store_status_watcher(addr: std::net::SocketAddr) -> Raw {
    let mut watcher = Raw::client5(addr, "watcher").await;
    watcher
        .subscribe5(1, &[("$SYS/broker/store/status", opts(QoS::AtMostOnce))])
        .await;
    watcher
}

/// Waits until `$SYS/broker/store/status` says `prefix...`; returns it.
pub async fn status_becomes(watcher: &mut Raw, prefix: &str) -> String {
    loop {
        let p = watcher.publish5().await;
        if p.topic == "$SYS/broker/store/status" && p.payload.starts_with(prefix.as_bytes()) {
            return String::from_utf8_lossy(&p.payload).into_owned();
        }
    }
}

/// A broker on a `FillableStore` in `dir` (not full yet), with a short
/// stall timeout.
pub async fn start_fillable(dir: &std::path::Path) -> (roomq::BrokerHandle, Arc<FillableStore>) {
    start_fillable_with(fillable_config(dir)).await
}

/// The configuration of `start_fillable`: a short stall timeout, `$SYS`
/// on (for the store status).
pub fn fillable_config(dir: &std::path::Path) -> roomq::Config {
    roomq::Config {
        sys_interval_secs: 60,
        store: StoreConfig {
            store_stall_timeout_ms: 300,
            ..sled_config(dir).store
        },
        ..sled_config(dir)
    }
}

/// `start_fillable` with `config` (its `data_dir` holds the store).
pub async fn start_fillable_with(config: roomq::Config) -> (roomq::BrokerHandle, Arc<FillableStore>) {
    let store = Arc::new(FillableStore {
        inner: SledStore::open(&config.data_dir).unwrap(),
        full: AtomicBool::new(false),
        sled_errors: AtomicU64::new(0),
    });
    let broker = roomq::Broker::new(config)
        .with_store(store.clone())
        .start()
        .await
        .unwrap();
    (broker, store)
}
