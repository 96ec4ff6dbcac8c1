//! A session's bounds hold for what reaches it through the room log too
//! (fifth attack pass): a persistent session's backlog replay, and a room
//! message edited to a larger body while it waited, stay within
//! `max_queued_bytes` (waiting and in flight together); nothing is lost,
//! the rest waits in the log.

mod common;

use common::chat::{ack_publish5, seq_of, user5};
use common::events::{edit, send};
use common::*;
use rmqtt_codec::types::{Publish, QoS};
use rmqtt_codec::v5::{self, Packet, PublishAckReason};
use roomq::config::Limits;
use roomq::Config;

const BIG: usize = 200 * 1024;

fn bounded() -> Config {
    Config {
        limits: Limits {
            max_queued_bytes: 1024 * 1024,
            ..test_config().limits
        },
        ..test_config()
    }
}

/// Every PUBLISH that arrives before the connection goes quiet.
async fn drain(c: &mut Raw) -> Vec<Publish> {
    let mut got = Vec::new();
    while let Got::Packet(Packet::Publish(p)) = c.recv5_within(QUIET).await {
        got.push(*p);
    }
    got
}

#[tokio::test]
async fn a_backlog_replay_stays_within_max_queued_bytes_and_loses_nothing() {
    let broker = start_with(bounded()).await;
    let addr = broker.local_addr();
    let mut away = persistent5("away-1");
    away.username = Some("away".into());
    let (mut member, _) = Raw::connect5(addr, away.clone()).await;
    member
        .subscribe5(1, &[("rooms/big/msg/+", opts(QoS::AtLeastOnce))])
        .await;
    member.send5(Packet::Disconnect(v5::Disconnect::default())).await;
    drop(member);

    let mut poster = user5(addr, "poster-1", "poster").await;
    for i in 0..20u16 {
        let payload = vec![b'a' + (i % 26) as u8; BIG];
        assert_eq!(
            send(&mut poster, "rooms/big/msg/poster", &payload, i + 1).await,
            PublishAckReason::Success,
            "post {i}"
        );
    }

    // Back, reading but acknowledging nothing: 1 MiB holds five.
    let (mut member, _) = Raw::connect5(addr, away).await;
    let first = drain(&mut member).await;
    assert!(!first.is_empty(), "the replay sends the backlog");
    assert!(
        first.len() <= 6,
        "{} replayed messages held for a reader that acknowledges none",
        first.len()
    );
    let pending = broker.session_pending_bytes("away-1").unwrap_or(0);
    assert!(pending <= 1024 * 1024 + BIG, "{pending} bytes held");

    // Acknowledging lets the rest come, in order, all of it.
    let mut seqs: Vec<u64> = first.iter().map(seq_of).collect();
    let mut batch = first;
    while seqs.len() < 20 {
        for p in &batch {
            ack_publish5(&mut member, p).await;
        }
        batch = drain(&mut member).await;
        assert!(
            !batch.is_empty(),
            "the replay stalled after {} messages",
            seqs.len()
        );
        seqs.extend(batch.iter().map(seq_of));
    }
    assert_eq!(seqs.len(), 20, "{seqs:?}");
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
}

#[tokio::test]
async fn an_edit_that_grows_a_waiting_message_does_not_grow_what_the_session_holds() {
    let broker = start_with(bounded()).await;
    let addr = broker.local_addr();
    let mut connect = connect5("reader-1");
    connect.username = Some("reader".into());
    connect.receive_max = std::num::NonZeroU16::new(8);
    let (mut reader, _) = Raw::connect5(addr, connect).await;
    reader
        .subscribe5(1, &[("rooms/grow/msg/+", opts(QoS::AtLeastOnce))])
        .await;

    let mut poster = user5(addr, "poster-1", "poster").await;
    for i in 0..16u16 {
        assert_eq!(
            send(&mut poster, "rooms/grow/msg/poster", b"tiny", i + 1).await,
            PublishAckReason::Success
        );
    }
    // Eight in flight, eight waiting.
    let in_flight = drain(&mut reader).await;
    assert_eq!(in_flight.len(), 8);
    let first_waiting = seq_of(&in_flight[7]) + 1;
    for (n, seq) in (first_waiting..).take(8).enumerate() {
        let body = vec![b'E'; BIG];
        assert_eq!(
            send(
                &mut poster,
                "rooms/grow/edit/poster",
                &edit(seq, &body),
                100 + n as u16
            )
            .await,
            PublishAckReason::Success,
            "edit of {seq}"
        );
    }
    for p in &in_flight {
        ack_publish5(&mut reader, p).await;
    }
    // The eight waiting ones go in their current (edited) state...
    let edited = drain(&mut reader).await;
    assert_eq!(edited.len(), 8);
    assert!(edited.iter().all(|p| p.payload.len() > BIG / 2), "sent as edited");
    // ...while the session holds them at the size they were queued at:
    // 8 × 200 KiB in flight would be over its 1 MiB.
    let pending = broker.session_pending_bytes("reader-1").unwrap_or(0);
    assert!(pending <= 1024 * 1024, "{pending} bytes held in flight");
}
