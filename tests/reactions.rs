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

/// An emoji a page would render as nothing, or with a control character
/// in it, is refused with 0x99 and changes nothing; emoji sequences that
/// join with U+200D and variation selectors are emoji.
#[tokio::test]
async fn invisible_and_control_emoji_are_refused() {
    let broker = start().await;
    let addr = broker.local_addr();
    let mut alice = user5(addr, "alice-1", "alice").await;
    let mut watcher = user5(addr, "carol-1", "carol").await;
    watcher
        .subscribe5(1, &[("rooms/ops/#", opts(QoS::AtLeastOnce))])
        .await;
    assert_eq!(
        send(&mut alice, "rooms/ops/msg/alice", b"hi", 1).await,
        PublishAckReason::Success
    );
    let s1 = seq_of(&next_publish(&mut watcher).await);
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
    for (i, emoji) in ["👍", "👨\u{200d}👩\u{200d}👧", "❤\u{fe0f}", "+1"].iter().enumerate() {
        let id = 100 + i as u16;
        assert_eq!(
            send(&mut alice, "rooms/ops/react/alice", &react(s1, emoji, false), id).await,
            PublishAckReason::Success,
            "emoji {emoji:?}"
        );
        assert_eq!(event_of(&next_publish(&mut watcher).await).emoji.as_deref(), Some(*emoji));
    }
    broker.shutdown().await;
}
