//! Reactions (`topics.md`, *Edits, deletes and reactions*): what an emoji
//! may be, and what a hostile member can do with reactions: neither push
//! other people's messages out of history nor make one reaction cost more
//! because the message already has many.

mod common;

use common::chat::{seq_of, user5};
use common::events::*;
use common::*;
use rmqtt_codec::types::QoS;
use rmqtt_codec::v5::PublishAckReason;
use roomq::config::{ChatConfig, PerUserLimits};

/// An emoji a page would render as nothing, or with a control character
/// in it, is refused with 0x99 and changes nothing; emoji sequences that
/// join with U+200D and variation selectors are emoji.
#[tokio::test]
async fn invisible_and_control_emoji_are_refused() {
    let broker = start().await;
    let addr = broker.local_addr();
    let mut alice = user5(addr, "alice-1", "alice").await;
    let mut watcher = ops_watcher(addr).await;
    let s1 = alice_posts(&mut alice, &mut watcher, b"hi").await;
    let refused = [
        "\u{0}",
        "a\u{0}",
        "\u{7}",
        "\u{85}",
        "\u{9f}",
        "\u{feff}",
        "\u{202e}",
        "\u{202a}x",
        "\u{2066}",
        "\u{2069}",
        " ",
        "\t",
        "\u{3000}",
        "\u{200d}",
        "\u{fe0f}",
        "\u{200b}",
    ];
    for (i, emoji) in refused.iter().enumerate() {
        let id = 2 + i as u16;
        assert_eq!(
            send(&mut alice, "rooms/ops/react/alice", &react(s1, emoji, false), id).await,
            PublishAckReason::PayloadFormatInvalid,
            "emoji {emoji:?}"
        );
    }
    quiet(&mut watcher).await;
    for (i, emoji) in ["👍", "👨\u{200d}👩\u{200d}👧", "❤\u{fe0f}", "+1"]
        .iter()
        .enumerate()
    {
        let id = 100 + i as u16;
        assert_eq!(
            send(&mut alice, "rooms/ops/react/alice", &react(s1, emoji, false), id).await,
            PublishAckReason::Success,
            "emoji {emoji:?}"
        );
        assert_eq!(
            event_of(&next_publish(&mut watcher).await).emoji.as_deref(),
            Some(*emoji)
        );
    }
    broker.shutdown().await;
}

/// A member who toggles a reaction many more times than the log keeps
/// entries pushes no message out of history: a reaction is state on its
/// message, not a log entry. Live subscribers still get every reaction
/// event, in `seq` order.
#[tokio::test]
async fn toggling_a_reaction_evicts_no_message() {
    let config = roomq::Config {
        chat: ChatConfig {
            room_max_messages: 5,
            ..test_config().chat
        },
        ..test_config()
    };
    let broker = start_with(config).await;
    let addr = broker.local_addr();
    let mut alice = user5(addr, "alice-1", "alice").await;
    let mut eve = user5(addr, "eve-1", "eve").await;
    let mut watcher = user5(addr, "carol-1", "carol").await;
    watcher
        .subscribe5(1, &[("rooms/ops/#", opts(QoS::AtLeastOnce))])
        .await;
    let mut posted = Vec::new();
    for i in 0..5u16 {
        let body = format!("message {i}");
        assert_eq!(
            send(&mut alice, "rooms/ops/msg/alice", body.as_bytes(), i + 1).await,
            PublishAckReason::Success
        );
        posted.push(seq_of(&next_publish(&mut watcher).await));
    }
    let toggles = 300u16;
    for i in 0..toggles {
        let reason = send(
            &mut eve,
            "rooms/ops/react/eve",
            &react(posted[0], "👍", i % 2 == 1),
            i + 1,
        )
        .await;
        assert_eq!(reason, PublishAckReason::Success);
    }
    let mut last = *posted.last().expect("posted");
    for _ in 0..toggles {
        let p = next_publish(&mut watcher).await;
        assert_eq!(event_of(&p).kind, "react");
        assert!(seq_of(&p) > last, "events in seq order");
        last = seq_of(&p);
    }
    alice
        .subscribe5(9, &[("replies/alice", opts(QoS::AtLeastOnce))])
        .await;
    let answer = history_as(&mut alice, "replies/alice", "ops", true, 900).await;
    let seqs: Vec<u64> = answer.messages.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, posted, "every message is still in history");
    broker.shutdown().await;
}

/// One reaction writes the same bytes on a message with 500 reactions as
/// on one with none (reactions are kept apart from the message, which is
/// not rewritten), and history counts them right, with `mine`, after a
/// restart.
#[tokio::test]
async fn a_reaction_costs_the_same_on_a_crowded_message_and_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = roomq::Config {
        per_user: PerUserLimits {
            room_max_reactions_per_user_per_message: 600,
            ..sled_config(dir.path()).per_user
        },
        chat: ChatConfig {
            max_reaction_emoji: 600,
            ..sled_config(dir.path()).chat
        },
        ..sled_config(dir.path())
    };
    let broker = start_with(config.clone()).await;
    let addr = broker.local_addr();
    let mut alice = user5(addr, "alice-1", "alice").await;
    assert_eq!(
        send(&mut alice, "rooms/ops/msg/alice", b"crowded", 1).await,
        PublishAckReason::Success
    );
    let mut bob = user5(addr, "bob-1", "bob").await;
    let seq = 1;
    let mut cost = Vec::new();
    for i in 0..520u16 {
        let before = broker.store_bytes_written();
        let emoji = format!("e{i:03}");
        assert_eq!(
            send(&mut bob, "rooms/ops/react/bob", &react(seq, &emoji, false), i + 1).await,
            PublishAckReason::Success
        );
        cost.push(broker.store_bytes_written() - before);
    }
    let first: u64 = cost[..10].iter().sum();
    let last: u64 = cost[510..].iter().sum();
    assert!(
        last <= first + 10 * 16,
        "bytes per reaction grew with the reactions present: first ten {first}, last ten {last}"
    );
    assert_eq!(
        send(&mut alice, "rooms/ops/react/alice", &react(seq, "e000", false), 2).await,
        PublishAckReason::Success
    );
    assert_eq!(
        send(&mut bob, "rooms/ops/react/bob", &react(seq, "e001", true), 600).await,
        PublishAckReason::Success
    );
    drop((alice, bob));
    broker.shutdown().await;

    let broker = start_with(config).await;
    let mut alice = user5(broker.local_addr(), "alice-1", "alice").await;
    alice
        .subscribe5(1, &[("replies/alice", opts(QoS::AtLeastOnce))])
        .await;
    let answer = history_as(&mut alice, "replies/alice", "ops", false, 900).await;
    let message = &answer.messages[0];
    let counts = message.reactions.as_ref().expect("reactions");
    assert_eq!(counts.len(), 519, "e001 was taken back");
    assert_eq!(counts.get("e000"), Some(&2));
    assert_eq!(counts.get("e519"), Some(&1));
    assert_eq!(counts.get("e001"), None);
    assert_eq!(message.mine.as_deref(), Some(&["e000".to_string()][..]));
    broker.shutdown().await;
}

/// One identity cannot take every distinct-emoji slot of a message
/// (session 4 attack `emoji_slots.py`): beyond
/// `room_max_reactions_per_user_per_message` its new emoji get 0x97, and
/// the others can still react. Taking one back frees one of its own.
#[tokio::test]
async fn one_reactor_cannot_take_every_emoji_slot() {
    let broker = start().await;
    let addr = broker.local_addr();
    let mut alice = user5(addr, "alice-1", "alice").await;
    let mut eve = user5(addr, "eve-1", "eve").await;
    let mut watcher = ops_watcher(addr).await;
    let s1 = alice_posts(&mut alice, &mut watcher, b"vote here").await;
    let mut codes = Vec::new();
    for i in 0..32u16 {
        let emoji = char::from_u32(0x1F400 + u32::from(i)).map(String::from);
        let emoji = emoji.unwrap_or_default();
        codes.push(send(&mut eve, "rooms/ops/react/eve", &react(s1, &emoji, false), 10 + i).await);
    }
    let accepted = codes.iter().filter(|c| **c == PublishAckReason::Success).count();
    assert_eq!(accepted, 8, "eve's 32 distinct emoji: {codes:?}");
    assert!(codes[8..].iter().all(|c| *c == PublishAckReason::QuotaExceeded));
    assert_eq!(
        send(&mut alice, "rooms/ops/react/alice", &react(s1, "❤", false), 2).await,
        PublishAckReason::Success
    );
    // Taking one back makes room for another of eve's.
    let first = char::from_u32(0x1F400).map(String::from).unwrap_or_default();
    assert_eq!(
        send(&mut eve, "rooms/ops/react/eve", &react(s1, &first, true), 60).await,
        PublishAckReason::Success
    );
    assert_eq!(
        send(&mut eve, "rooms/ops/react/eve", &react(s1, "🎉", false), 61).await,
        PublishAckReason::Success
    );
    broker.shutdown().await;
}
