//! Removing messages that carry many reactions (a trim by
//! `room_max_messages`) removes their reactions in the background, in
//! chunks of `reaction_purge_chunk` keys: other rooms go on meanwhile, no
//! reaction key of a removed message is left in the end, and a restart in
//! the middle of the purge goes on with it.

mod common;

use common::chat::{seq_of, user5};
use common::events::*;
use common::*;
use rmqtt_codec::types::QoS;
use rmqtt_codec::v5::PublishAckReason;
use roomq::config::{ChatConfig, PerUserLimits};
use roomq::store::{Reactions, SledStore, Store};

/// Posts that trigger the trim by count (every 64 entries held).
const POSTS: u16 = 64;

#[tokio::test]
async fn reactions_of_trimmed_messages_are_purged_and_other_rooms_go_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = roomq::Config {
        per_user: PerUserLimits {
            // One reactor crowds each message here.
            room_max_reactions_per_user_per_message: 64,
            ..sled_config(dir.path()).per_user
        },
        chat: ChatConfig {
            room_max_messages: 4,
            max_reaction_emoji: 64,
            reaction_purge_chunk: 8,
            ..sled_config(dir.path()).chat
        },
        ..sled_config(dir.path())
    };
    let broker = start_with(config.clone()).await;
    let addr = broker.local_addr();
    let mut alice = user5(addr, "alice-1", "alice").await;
    let mut bob = user5(addr, "bob-1", "bob").await;
    let mut dave = user5(addr, "dave-1", "dave").await;
    let mut watcher = user5(addr, "carol-1", "carol").await;
    watcher
        .subscribe5(1, &[("rooms/ops/msg/+", opts(QoS::AtLeastOnce))])
        .await;
    let mut other = user5(addr, "olga-1", "olga").await;
    other
        .subscribe5(1, &[("rooms/other/msg/+", opts(QoS::AtLeastOnce))])
        .await;

    // Eight crowded messages, then enough posts to trim them.
    let mut posted = Vec::new();
    for i in 0..8u16 {
        assert_eq!(
            send(&mut alice, "rooms/ops/msg/alice", b"crowded", i + 1).await,
            PublishAckReason::Success
        );
        posted.push(seq_of(&next_publish(&mut watcher).await));
    }
    let mut id = 0u16;
    for seq in &posted {
        for e in 0..40 {
            id += 1;
            let emoji = format!("e{e:02}");
            assert_eq!(
                send(&mut bob, "rooms/ops/react/bob", &react(*seq, &emoji, false), id).await,
                PublishAckReason::Success
            );
        }
    }
    for i in 8..POSTS {
        assert_eq!(
            send(&mut alice, "rooms/ops/msg/alice", b"pushes out", i + 1).await,
            PublishAckReason::Success
        );
        posted.push(seq_of(&next_publish(&mut watcher).await));
    }
    // The trim ran with the last post; its reactions are being purged.
    // Another room's member gets its messages, in order, meanwhile.
    let mut last = 0;
    for i in 0..20u16 {
        let body = format!("other {i}");
        assert_eq!(
            send(&mut dave, "rooms/other/msg/dave", body.as_bytes(), i + 1).await,
            PublishAckReason::Success
        );
        let p = next_publish(&mut other).await;
        assert_eq!(&p.payload[..], body.as_bytes());
        assert!(seq_of(&p) > last, "in seq order");
        last = seq_of(&p);
    }
    let kept = *posted.last().expect("posted");
    assert_eq!(
        send(&mut bob, "rooms/ops/react/bob", &react(kept, "👍", false), 1).await,
        PublishAckReason::Success
    );
    drop((alice, bob, dave, watcher, other));
    // Stopped at once: the purge may be half done.
    broker.shutdown().await;

    // After a restart the queue is worked off (`run_upkeep` drains it).
    let broker = start_with(config).await;
    broker.run_upkeep();
    broker.shutdown().await;

    let store = SledStore::open(dir.path()).expect("store opens");
    for seq in &posted[..8] {
        assert_eq!(
            store.reactions("ops", *seq, Some("bob")).expect("read"),
            Reactions::default(),
            "message {seq} was trimmed: its reactions are gone"
        );
    }
    assert_eq!(
        store.reactions("ops", kept, Some("bob")).expect("read").total(),
        1
    );
    assert!(
        store.purge_reactions(usize::MAX).expect("purge") == 0,
        "nothing left to purge"
    );
    store.close();
}
