//! sled really hits a full disk (the margin and the reserve are off), and
//! the broker recovers without a restart: once space returns the store is
//! reopened, posts are stored again, nothing acknowledged is lost, no
//! `seq` is handed out twice, and a persistent session's backlog written
//! before the fault is still delivered (`store/sled_db.rs`).

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::fillable::*;
use common::small_fs::*;
use common::*;
use rmqtt_codec::types::QoS;
use rmqtt_codec::v5::{Packet, PublishAckReason};
use roomq::config::StoreConfig;
use roomq::store::Store;

/// Post `n` of `size` bytes (`BIG`: the writer's, else the chatter's) with `msg-id` `m-{n}` and packet id `id`.
fn post(n: u32, id: u16, size: usize) -> Packet {
    // Small posts are the chatter's (a user posts as itself).
    let topic = if size == BIG {
        "rooms/ops/msg/writer"
    } else {
        "rooms/ops/msg/chatter"
    };
    let mut body = format!("post-{n:04}|").into_bytes();
    body.resize(size, b'x');
    let msg_id = format!("m-{n}");
    let p = common::chat::publish_with(topic, &body, Some(id), &[("msg-id", &msg_id)]);
    Packet::Publish(Box::new(p))
}

/// 255 KiB: over sled's blob threshold, so sled writes it to a file of
/// its own at once.
const BIG: usize = 255 * 1024;
/// Small posts go into sled's log buffer, written in the background: a
/// failure there loses posts sled had taken.
const SMALL: usize = 2 * 1024;

/// Sends `posts` (number, size) from `client` at once, then reads their
/// acknowledgements: returns the numbers stored and those refused.
async fn send_all(client: &mut Raw, posts: &[(u32, usize)], id: &mut u16) -> (Vec<u32>, Vec<u32>) {
    let mut numbers = std::collections::HashMap::new();
    for &(n, size) in posts {
        *id = id.wrapping_add(1).max(1);
        numbers.insert(*id, n);
        client.send5(post(n, *id, size)).await;
    }
    let (mut stored, mut refused) = (Vec::new(), Vec::new());
    for _ in posts {
        let ack = next_puback(client).await;
        let n = numbers[&ack.packet_id.get()];
        match ack.reason_code {
            PublishAckReason::Success => stored.push(n),
            PublishAckReason::QuotaExceeded => refused.push(n),
            other => panic!("post {n} got {other:?}, not Success or 0x97"),
        }
    }
    (stored, refused)
}

/// The post number a stored body starts with (`None`: not a big post).
fn post_number(payload: &[u8]) -> Option<u32> {
    let head = payload.get(..10)?;
    std::str::from_utf8(head.strip_prefix(b"post-")?.strip_suffix(b"|")?)
        .ok()?
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sled_hit_a_full_disk_the_store_reopens_and_loses_nothing_acknowledged() {
    let Some(fs) = SmallFs::mount(8 << 20) else {
        return;
    };
    let (broker, store) = start_fillable_with(roomq::Config {
        store: StoreConfig {
            min_free_disk_bytes: 0,
            disk_reserve_bytes: 0,
            ..fillable_config(&fs.data_dir()).store
        },
        ..fillable_config(&fs.data_dir())
    })
    .await;
    let addr = broker.local_addr();
    let mut watcher = store_status_watcher(addr).await;
    // An offline member's backlog, written before the fault.
    let (mut away, _) = Raw::connect5(addr, persistent5("away")).await;
    away.subscribe5(1, &[("rooms/ops/msg/+", opts(QoS::AtLeastOnce))])
        .await;
    drop(away);
    let mut writer = Raw::client5(addr, "writer").await;
    let ack = writer.publish1_5(1, "rooms/ops/msg/writer", b"before").await;
    assert_eq!(ack.reason_code, PublishAckReason::Success);

    // Twice: posts fill the disk until sled's own write fails, then space
    // returns. First a big post (a blob file: its write fails at once) and
    // three small ones of another client at a time; then only small ones,
    // 16 at a time (they go into sled's log buffer: its write fails in the
    // background, after sled took them).
    let mut chatter = Raw::client5(addr, "chatter").await;
    let mut acked = Vec::new();
    let (mut writer_id, mut chatter_id) = (1u16, 0u16);
    let (mut n, mut small_n) = (0u32, 1000u32);
    for round in 1..=2u64 {
        let filler = fs.fill_leaving(if round == 1 { 3 << 20 } else { 1 << 20 });
        let errors = store.sled_errors.load(Ordering::Relaxed);
        let mut refused = Vec::new();
        while refused.is_empty() || store.sled_errors.load(Ordering::Relaxed) == errors {
            let mut small = Vec::new();
            for _ in 0..if round == 1 { 3 } else { 16 } {
                small_n += 1;
                small.push((small_n, SMALL));
            }
            n += 1;
            assert!(n < 400, "sled did not hit the full disk");
            let big: &[(u32, usize)] = if round == 1 { &[(n, BIG)] } else { &[] };
            let (big, chat) = tokio::join!(
                send_all(&mut writer, big, &mut writer_id),
                send_all(&mut chatter, &small, &mut chatter_id),
            );
            for (stored, not) in [big, chat] {
                acked.extend(stored);
                refused.extend(not);
            }
        }
        status_becomes(&mut watcher, "failing since ").await;

        // Space returns: the refused posts, sent again with their msg-ids,
        // are stored (not acknowledged as duplicates), without a restart.
        std::fs::remove_file(filler).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let mut retry: Vec<(u32, usize)> = refused
            .iter()
            .map(|n| (*n, if *n < 1000 { BIG } else { SMALL }))
            .collect();
        retry.extend([(n + 1, BIG), (small_n + 1, SMALL)]);
        (n, small_n) = (n + 1, small_n + 1);
        for post in retry {
            let (client, id) = match post.1 {
                BIG => (&mut writer, &mut writer_id),
                _ => (&mut chatter, &mut chatter_id),
            };
            while send_all(client, &[post], id).await.0.is_empty() {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "posts are still refused 60 s after space returned"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            acked.push(post.0);
        }
        assert!(store.reopens() >= round, "the store was not reopened");
        tokio::time::timeout(Duration::from_secs(30), status_becomes(&mut watcher, "ok"))
            .await
            .expect("the store status says ok again");
    }
    let (mut away, ack) = Raw::connect5(addr, persistent5("away")).await;
    assert!(ack.session_present);
    assert_eq!(&away.publish5().await.payload[..], b"before");
    drop(away);
    tokio::time::timeout(Duration::from_secs(60), broker.shutdown())
        .await
        .expect("the shutdown ends");
    drop(store);

    // The room log: every acknowledged post once, in strictly increasing
    // seq, and nothing else but "before".
    let log = roomq::store::SledStore::open(&fs.data_dir()).unwrap();
    let entries = log.room_range("ops", 0, u64::MAX, 10_000, false).unwrap();
    let seqs: Vec<u64> = entries.iter().map(|(seq, _)| *seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "seqs {seqs:?}");
    println!("acked {acked:?}, seqs {seqs:?}");
    assert_eq!(entries.first().map(|(_, r)| &r.payload[..]), Some(&b"before"[..]));
    let mut stored: BTreeMap<u32, usize> = BTreeMap::new();
    for (seq, record) in &entries[1..] {
        let n = post_number(&record.payload).unwrap_or_else(|| panic!("seq {seq}: not a post"));
        *stored.entry(n).or_default() += 1;
    }
    let missing: Vec<&u32> = acked.iter().filter(|n| !stored.contains_key(n)).collect();
    assert!(missing.is_empty(), "acknowledged, not stored: {missing:?}");
    let extra: Vec<(&u32, &usize)> = stored
        .iter()
        .filter(|(n, times)| **times > 1 || !acked.contains(n))
        .collect();
    assert!(extra.is_empty(), "stored twice, or not acknowledged: {extra:?}");
    // Each message's `prev` names the message before it in the log: none
    // names one the reopen lost.
    for pair in entries.windows(2) {
        assert_eq!(pair[1].1.prev, Some(pair[0].0), "prev of seq {}", pair[1].0);
    }
    log.close();
}
