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
use roomq::store::Store;

/// Post `n` (255 KiB: over sled's blob threshold, so sled writes it to a
/// file of its own) with `msg-id` `m-{n}` and packet id `id`.
fn big_post(n: u32, id: u16) -> Packet {
    let mut body = format!("post-{n:04}|").into_bytes();
    body.resize(255 * 1024, b'x');
    let topic = "rooms/ops/msg/writer";
    let msg_id = format!("m-{n}");
    let p = common::chat::publish_with(topic, &body, Some(id), &[("msg-id", &msg_id)]);
    Packet::Publish(Box::new(p))
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
        min_free_disk_bytes: 0,
        disk_reserve_bytes: 0,
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

    // Posts fill the last 3 MiB until sled's own write fails.
    let filler = fs.fill_leaving(3 << 20);
    let (mut acked, mut refused) = (Vec::new(), Vec::new());
    let mut id = 1u16;
    let mut n = 0u32;
    while refused.is_empty() || store.sled_errors.load(Ordering::Relaxed) == 0 {
        n += 1;
        id += 1;
        assert!(n < 40, "sled did not hit the full disk");
        writer.send5(big_post(n, id)).await;
        match next_puback(&mut writer).await.reason_code {
            PublishAckReason::Success => acked.push(n),
            PublishAckReason::QuotaExceeded => refused.push(n),
            other => panic!("post {n} got {other:?}, not Success or 0x97"),
        }
    }
    status_becomes(&mut watcher, "failing since ").await;

    // Space returns: the refused posts, sent again with their msg-ids, are
    // stored (not acknowledged as duplicates), without a restart.
    std::fs::remove_file(filler).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut retry = refused.clone();
    retry.extend([n + 1, n + 2, n + 3]);
    for n in retry {
        loop {
            id += 1;
            writer.send5(big_post(n, id)).await;
            match next_puback(&mut writer).await.reason_code {
                PublishAckReason::Success => break,
                PublishAckReason::QuotaExceeded => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "posts are still refused 60 s after space returned"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                other => panic!("post {n} got {other:?}, not Success or 0x97"),
            }
        }
        acked.push(n);
    }
    assert!(store.reopens() > 0, "the store was not reopened");
    tokio::time::timeout(Duration::from_secs(30), status_becomes(&mut watcher, "ok"))
        .await
        .expect("the store status says ok again");
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
    // Each message's `prev` names the message before it in the log: none
    // names one the reopen lost.
    let prevs: Vec<Option<u64>> = entries.iter().skip(1).map(|(_, r)| r.prev).collect();
    let before: Vec<Option<u64>> = seqs.iter().map(|s| Some(*s)).collect();
    assert_eq!(
        prevs,
        before[..before.len() - 1],
        "prev of each message, seqs {seqs:?}"
    );
    println!("acked {acked:?}, refused first {refused:?}, seqs {seqs:?}");
    assert_eq!(entries.first().map(|(_, r)| &r.payload[..]), Some(&b"before"[..]));
    let mut stored: BTreeMap<u32, usize> = BTreeMap::new();
    for (seq, record) in &entries[1..] {
        let n = post_number(&record.payload).unwrap_or_else(|| panic!("seq {seq}: not a post"));
        *stored.entry(n).or_default() += 1;
    }
    acked.sort_unstable();
    let once: BTreeMap<u32, usize> = acked.iter().map(|n| (*n, 1)).collect();
    assert_eq!(
        stored, once,
        "posts stored (number: times), acknowledged were {acked:?}"
    );
    log.close();
}
