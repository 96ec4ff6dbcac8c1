//! A full disk is a fault the broker rides out. The store is a real sled
//! store whose flush is made to fail while the "disk is full", as sled's
//! flush fails on a full file system (writes go to memory until then).
//!
//! Wanted: publishes that need the store are answered after
//! `store_stall_timeout_ms` (5.0 PUBACK/PUBREC 0x97; 3.1.1 no PUBACK) on a
//! connection that stays open; what is stored keeps being delivered; the
//! condition shows on `$SYS/broker/store/status`; the broker resumes by
//! itself when space returns; a shutdown ends.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use rmqtt_codec::types::QoS;
use rmqtt_codec::v5::{Packet, PublishAckReason};
use roomq::store::{
    DedupRecord, LoadedSession, MessageRecord, QueuedRecord, RoomHead, RoomRecord, SessionRecord, SledStore,
    Store, StoreError,
};

/// A sled store whose flush fails while `full` is set, and which counts
/// the I/O errors its sled store itself returned (a real full disk).
struct FillableStore {
    inner: SledStore,
    full: AtomicBool,
    sled_errors: AtomicU64,
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
    fn trim_room(&self, room: &str, below: u64) -> Result<(), StoreError> {
        self.seen(self.inner.trim_room(room, below))
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
    fn load_alert_counters(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.inner.load_alert_counters()
    }
    fn flush(&self) -> Result<(), StoreError> {
        if self.full.load(Ordering::Acquire) {
            return Err(StoreError::Io("No space left on device (os error 28)".into()));
        }
        self.seen(self.inner.flush())
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
async fn store_status_watcher(addr: std::net::SocketAddr) -> Raw {
    let mut watcher = Raw::client5(addr, "watcher").await;
    watcher
        .subscribe5(1, &[("$SYS/broker/store/status", opts(QoS::AtMostOnce))])
        .await;
    watcher
}

/// Waits until `$SYS/broker/store/status` says `prefix...`.
async fn status_becomes(watcher: &mut Raw, prefix: &str) {
    loop {
        let p = watcher.publish5().await;
        if p.topic == "$SYS/broker/store/status" && p.payload.starts_with(prefix.as_bytes()) {
            return;
        }
    }
}

/// A broker on a `FillableStore` in `dir` (not full yet), with a short
/// stall timeout.
async fn start_fillable(dir: &std::path::Path) -> (roomq::BrokerHandle, Arc<FillableStore>) {
    start_fillable_with(fillable_config(dir)).await
}

/// The configuration of `start_fillable`: a short stall timeout, `$SYS`
/// on (for the store status).
fn fillable_config(dir: &std::path::Path) -> roomq::Config {
    roomq::Config {
        store_stall_timeout_ms: 300,
        sys_interval_secs: 60,
        ..sled_config(dir)
    }
}

/// `start_fillable` with `config` (its `data_dir` holds the store).
async fn start_fillable_with(config: roomq::Config) -> (roomq::BrokerHandle, Arc<FillableStore>) {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_publishes_in_bounded_time_and_the_broker_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, store) = start_fillable(dir.path()).await;
    let addr = broker.local_addr();

    // Stored while the disk has room: an offline member's backlog.
    let (mut away, _) = Raw::connect5(addr, persistent5("away")).await;
    away.subscribe5(1, &[("backlog/#", opts(QoS::AtLeastOnce))]).await;
    drop(away);
    let mut publisher = Raw::client5(addr, "writer").await;
    let ack = publisher.publish1_5(1, "backlog/a", b"stored before").await;
    assert_eq!(ack.reason_code, PublishAckReason::Success);

    let mut watcher = store_status_watcher(addr).await;
    status_becomes(&mut watcher, "ok").await;
    let mut live = Raw::client5(addr, "live").await;
    live.subscribe5(1, &[("plain/#", opts(QoS::AtMostOnce))]).await;

    store.full.store(true, Ordering::Release);
    // 5.0, QoS 1: refused with 0x97 once the stall timeout passed.
    let ack = publisher.publish1_5(2, "plain/t", b"while full").await;
    assert_eq!(ack.reason_code, PublishAckReason::QuotaExceeded);
    status_becomes(&mut watcher, "failing since ").await;
    // 5.0, QoS 2: PUBREC 0x97; the exchange ends, the id is free again.
    let mut qos2 = publish("plain/t", b"q2", QoS::ExactlyOnce, Some(3));
    qos2.dup = false;
    publisher.send5(Packet::Publish(Box::new(qos2))).await;
    match publisher.recv5().await.packet() {
        Packet::PublishReceived(rec) => assert_eq!(rec.reason_code, PublishAckReason::QuotaExceeded),
        other => panic!("expected PUBREC, got {other:?}"),
    }
    // A plain message still reaches a live subscriber (it needs no store).
    assert_eq!(&live.publish5().await.payload[..], b"while full");
    // What was stored is still delivered: the offline member's backlog.
    let (mut away, ack) = Raw::connect5(addr, persistent5("away")).await;
    assert!(ack.session_present);
    assert_eq!(&away.publish5().await.payload[..], b"stored before");

    // 3.1.1, QoS 1: no PUBACK, and the connection stays open.
    let (mut device, _) = Raw::connect3(addr, connect3("device", true)).await;
    let mut p = publish("plain/d", b"from a device", QoS::AtLeastOnce, Some(7));
    p.properties = None;
    device.send3(rmqtt_codec::v3::Packet::Publish(Box::new(p))).await;
    device.send3(rmqtt_codec::v3::Packet::PingRequest).await;
    match device.recv3_within(Duration::from_secs(3)).await {
        Got::Packet(rmqtt_codec::v3::Packet::PingResponse) => {}
        other => panic!("expected only PINGRESP (no PUBACK), got {other:?}"),
    }
    assert!(
        matches!(
            device.recv3_within(Duration::from_millis(800)).await,
            Got::Nothing
        ),
        "a refused 3.1.1 publish got an answer"
    );

    // Space returns: the broker resumes by itself.
    store.full.store(false, Ordering::Release);
    status_becomes(&mut watcher, "ok").await;
    let ack = publisher.publish1_5(4, "plain/t", b"after").await;
    assert_eq!(ack.reason_code, PublishAckReason::Success);
    assert!(broker.metrics().publishes_refused_store.get() >= 3);

    // Full again, with an acknowledgement waiting: the shutdown still ends.
    store.full.store(true, Ordering::Release);
    publisher
        .send5(Packet::Publish(Box::new(publish(
            "plain/t",
            b"at shutdown",
            QoS::AtLeastOnce,
            Some(5),
        ))))
        .await;
    tokio::time::timeout(Duration::from_secs(60), broker.shutdown())
        .await
        .expect("the shutdown ends while the store cannot write");
}

/// Below `min_free_disk_bytes` (here: more than any disk has), publishes
/// that need the store are refused before sled could hit a full disk;
/// plain QoS 0 messages still flow.
#[tokio::test]
async fn below_min_free_disk_bytes_publishes_that_need_the_store_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_with(roomq::Config {
        min_free_disk_bytes: u64::MAX,
        sys_interval_secs: 60,
        ..sled_config(dir.path())
    })
    .await;
    let addr = broker.local_addr();
    let mut watcher = store_status_watcher(addr).await;
    status_becomes(&mut watcher, "failing since ").await;
    let mut member = Raw::client5(addr, "member").await;
    member
        .subscribe5(
            1,
            &[
                ("rooms/ops/msg/+", opts(QoS::AtMostOnce)),
                ("plain/#", opts(QoS::AtMostOnce)),
            ],
        )
        .await;
    let mut publisher = Raw::client5(addr, "writer").await;
    let ack = publisher.publish1_5(1, "plain/t", b"q1").await;
    assert_eq!(ack.reason_code, PublishAckReason::QuotaExceeded);
    let mut retained = publish("plain/r", b"kept", QoS::AtMostOnce, None);
    retained.retain = true;
    publisher.send5(Packet::Publish(Box::new(retained))).await;
    publisher.publish0_5("rooms/ops/msg/writer", b"room q0").await;
    publisher.publish0_5("plain/t", b"plain q0").await;
    // Only the plain QoS 0 message arrives.
    assert_eq!(&member.publish5().await.payload[..], b"plain q0");
    assert!(matches!(member.recv5_within(QUIET).await, Got::Nothing));
    assert_eq!(broker.metrics().publishes_refused_store.get(), 3);
    broker.shutdown().await;
}

/// A history request only reads: while the disk is full it is still
/// answered, with a successful PUBACK, when room messages are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_stays_readable_while_the_disk_is_full() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, store) = start_fillable(dir.path()).await;
    let addr = broker.local_addr();
    let mut writer = Raw::client5(addr, "writer").await;
    let ack = writer.publish1_5(1, "rooms/ops/msg/writer", b"before").await;
    assert_eq!(ack.reason_code, PublishAckReason::Success);
    let mut watcher = store_status_watcher(addr).await;

    store.full.store(true, Ordering::Release);
    let ack = writer.publish1_5(2, "rooms/ops/msg/writer", b"while full").await;
    assert_eq!(ack.reason_code, PublishAckReason::QuotaExceeded);
    status_becomes(&mut watcher, "failing since ").await;
    let answer = common::chat::history(addr, "ops").await;
    let bodies: Vec<&[u8]> = answer
        .messages
        .iter()
        .map(|m| m.body.as_deref().unwrap_or_default())
        .collect();
    assert_eq!(bodies, [&b"before"[..]]);
    store.full.store(false, Ordering::Release);
    broker.shutdown().await;
}

/// A small file system (a tmpfs of a few MiB), unmounted when dropped: a
/// disk that really fills.
struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    /// Mounts a tmpfs of `bytes`; `None` (with the reason printed) where
    /// this machine cannot (mounting needs root), except under CI, where
    /// a skip would hide a broken set-up.
    fn mount(bytes: u64) -> Option<SmallFs> {
        let dir = tempfile::tempdir().unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "roomq-test"])
            .arg(dir.path())
            .output()
            .is_ok_and(|o| o.status.success());
        if !mounted {
            assert!(
                std::env::var_os("CI").is_none(),
                "cannot mount a tmpfs under CI (needs root)"
            );
            println!("full_disk: skipped: mounting a tmpfs needs root");
            return None;
        }
        Some(SmallFs { dir })
    }

    /// The data directory inside it.
    fn data_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }

    /// Fills what is left with a file (until ENOSPC); returns its path.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.dir.path().join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 4096];
        while file.write_all(&chunk).is_ok() {}
        let _ = file.sync_all();
        path
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .output();
    }
}

/// A QoS 1 room post of `body` with packet id `id`.
fn room_post(id: u16, body: &bytes::Bytes) -> Packet {
    let mut p = publish("rooms/ops/msg/writer", b"", QoS::AtLeastOnce, Some(id));
    p.payload = body.clone();
    Packet::Publish(Box::new(p))
}

/// Reads the next PUBACK, skipping other packets.
async fn next_puback(client: &mut Raw) -> rmqtt_codec::v5::PublishAck {
    loop {
        match client.recv5().await {
            Got::Packet(Packet::PublishAck(ack)) => return ack,
            Got::Packet(_) => {}
            other => panic!("expected a PUBACK, got {other:?}"),
        }
    }
}

/// One client posting 200 KiB QoS 1 room messages, 32 in flight, on a
/// 8 MiB file system with a 3 MiB margin: posts beyond the margin are
/// refused with 0x97 (never 0x80), and sled never hits the full disk
/// (before: the margin was checked once a second, and sled writes about
/// twice the payload, so a fast writer went through it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_writer_never_takes_the_disk_below_the_margin() {
    let Some(fs) = SmallFs::mount(8 << 20) else {
        return;
    };
    let margin = 3 << 20;
    let (broker, store) = start_fillable_with(roomq::Config {
        min_free_disk_bytes: margin,
        ..fillable_config(&fs.data_dir())
    })
    .await;
    let mut writer = Raw::client5(broker.local_addr(), "writer").await;
    let body = bytes::Bytes::from(vec![b'x'; 200 * 1024]);
    let (total, in_flight) = (80u16, 32u16);
    let (mut sent, mut answered, mut stored, mut refused) = (0u16, 0u16, 0, 0);
    while answered < total {
        while sent < total && sent - answered < in_flight {
            sent += 1;
            writer.send5(room_post(sent, &body)).await;
        }
        let ack = next_puback(&mut writer).await;
        answered += 1;
        match ack.reason_code {
            PublishAckReason::Success => stored += 1,
            PublishAckReason::QuotaExceeded => refused += 1,
            other => panic!("post {} got {other:?}, not Success or 0x97", ack.packet_id),
        }
    }
    let free = fs2::available_space(fs.data_dir()).unwrap();
    println!("stored {stored}, refused {refused}, {free} bytes free");
    assert!(stored > 0 && refused > 0, "stored {stored}, refused {refused}");
    assert_eq!(
        store.sled_errors.load(Ordering::Relaxed),
        0,
        "sled hit the full disk"
    );
    let started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(60), broker.shutdown())
        .await
        .expect("the shutdown ends");
    println!("shutdown took {:?}", started.elapsed());
}

/// With the margin off, sled really hits a full disk; once space is
/// freed the store should recover by itself (posts are refused until a
/// restart), and a shutdown then end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "not fixed yet: sled's flush never returns after ENOSPC, so the flusher thread hangs and the store cannot be opened again in-process"]
async fn after_sled_hit_a_full_disk_the_store_recovers_without_a_restart() {
    let Some(fs) = SmallFs::mount(8 << 20) else {
        return;
    };
    let (broker, store) = start_fillable_with(roomq::Config {
        min_free_disk_bytes: 0,
        ..fillable_config(&fs.data_dir())
    })
    .await;
    let addr = broker.local_addr();
    let mut watcher = store_status_watcher(addr).await;
    let mut writer = Raw::client5(addr, "writer").await;
    let ack = writer.publish1_5(1, "rooms/ops/msg/writer", b"before").await;
    assert_eq!(ack.reason_code, PublishAckReason::Success);

    let filler = fs.fill();
    let body = bytes::Bytes::from(vec![b'x'; 200 * 1024]);
    let mut id = 1;
    loop {
        id += 1;
        assert!(id < 100, "posts on a full disk were still stored");
        writer.send5(room_post(id, &body)).await;
        match next_puback(&mut writer).await.reason_code {
            PublishAckReason::Success => {}
            PublishAckReason::QuotaExceeded => break,
            other => panic!("post {id} got {other:?}, not Success or 0x97"),
        }
    }
    assert!(
        store.sled_errors.load(Ordering::Relaxed) > 0,
        "sled did not hit the full disk"
    );

    std::fs::remove_file(filler).unwrap();
    // Nothing to await: the store tries again on its own, so the client
    // does what a client does, it posts again (for at most 30 s).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let ack = writer.publish1_5(1, "rooms/ops/msg/writer", b"after").await;
        match ack.reason_code {
            PublishAckReason::Success => break,
            PublishAckReason::QuotaExceeded => {}
            other => panic!("a post after space returned got {other:?}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "posts are still refused 30 s after space returned"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::timeout(Duration::from_secs(10), status_becomes(&mut watcher, "ok"))
        .await
        .expect("the store status says ok again");
    let answer = common::chat::history(addr, "ops").await;
    assert_eq!(
        answer
            .messages
            .last()
            .map(|m| m.body.as_deref().unwrap_or_default()),
        Some(&b"after"[..])
    );
    let started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(60), broker.shutdown())
        .await
        .expect("the shutdown ends");
    println!("shutdown took {:?}", started.elapsed());
}
