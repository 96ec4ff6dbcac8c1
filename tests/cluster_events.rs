//! Room events in a cluster (`topics.md`, *Edits, deletes and
//! reactions*): an event posted on one node reaches members on another in
//! `seq` order with the messages, every node's history shows the change,
//! and a delete takes the message's body (and its edits) out of the room
//! stream, and reactions do not push messages out of the stream.
#![cfg(feature = "cluster")]

mod common;

use common::chat::{history, seq_of, user5};
use common::events::*;
use common::nats::NatsCluster;
use common::*;
use rmqtt_codec::types::QoS;
use rmqtt_codec::v5::PublishAckReason;
use roomq::config::ChatConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_replicate_and_a_delete_leaves_the_stream() {
    let nats = NatsCluster::start(1);
    let a = start_with(nats.node_config("a")).await;
    let b = start_with(nats.node_config("b")).await;
    let mut carol = user5(b.local_addr(), "carol-1", "carol").await;
    carol
        .subscribe5(1, &[("rooms/ops/#", opts(QoS::AtLeastOnce))])
        .await;
    let mut alice = user5(a.local_addr(), "alice-1", "alice").await;
    let topic = "rooms/ops/msg/alice";
    assert_eq!(
        send(&mut alice, topic, b"secret-cluster-body", 1).await,
        PublishAckReason::Success
    );
    let s1 = seq_of(&next_publish(&mut carol).await);
    assert_eq!(
        send(&mut alice, topic, b"kept", 2).await,
        PublishAckReason::Success
    );
    let s2 = seq_of(&next_publish(&mut carol).await);
    // Node a checks the request against its copy of the log, which has
    // the message once it came back from the stream (before the PUBACK).
    let edit_ack = send(
        &mut alice,
        "rooms/ops/edit/alice",
        &edit(s1, b"secret-cluster-edit"),
        3,
    )
    .await;
    assert_eq!(edit_ack, PublishAckReason::Success);
    let edited = next_publish(&mut carol).await;
    assert_eq!(&*edited.topic, "rooms/ops/event/alice");
    let edited = event_of(&edited);
    assert_eq!((edited.kind.as_str(), edited.target), ("edit", Some(s1)));
    assert!(edited.seq > s2);
    assert_eq!(
        send(&mut alice, "rooms/ops/delete/alice", &delete(s1), 4).await,
        PublishAckReason::Success
    );
    let deleted = event_of(&next_publish(&mut carol).await);
    assert_eq!((deleted.kind.as_str(), deleted.target), ("delete", Some(s1)));

    // Node b's history: the tombstone.
    let answer = history(b.local_addr(), "ops").await;
    let states: Vec<_> = answer
        .messages
        .iter()
        .map(|m| (m.seq, m.deleted, m.body.clone()))
        .collect();
    assert_eq!(
        states,
        [(s1, Some(true), None), (s2, None, Some(b"kept".to_vec()))]
    );

    // The stream holds neither the message nor its edit once the delete's
    // writes are done (they follow the delete event's acknowledgement).
    let client = async_nats::connect(nats.urls()[0].as_str()).await.expect("NATS");
    let js = async_nats::jetstream::new(client);
    let stream = js.get_stream("ROOMQ_ROOMS").await.expect("the room stream");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let original = stream.get_raw_message(s1).await.is_ok();
        let edit = stream.get_raw_message(edited.seq).await.is_ok();
        if !original && !edit {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the deleted body is still in the stream"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        stream.get_raw_message(s2).await.is_ok(),
        "the other message stays"
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// Reactions do not count against a room's retention in the cluster
/// either (`docs/cluster.md`, *What is stored where*): with
/// `room_max_messages = 4`, eleven reaction changes on the first message
/// leave the room's four messages in the stream, and a node that reads
/// the room only afterwards answers history with all four and the
/// reaction's aggregate. Before, the stream's per-room limit counted the
/// reactions and pushed the messages out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reactions_do_not_push_messages_out_of_the_stream() {
    let nats = NatsCluster::start(1);
    let a = small_node(&nats, "a", |_| {}).await;
    let b = small_node(&nats, "b", |_| {}).await;
    let mut carol = ops_watcher(a.local_addr()).await;
    let mut alice = user5(a.local_addr(), "alice-1", "alice").await;
    let mut posted = Vec::new();
    for body in [&b"one"[..], b"two", b"three", b"four"] {
        posted.push(alice_posts(&mut alice, &mut carol, body).await);
    }
    // Add, take back, add, ...: eleven records, ending with the reaction on.
    for n in 0..11u16 {
        let remove = n % 2 == 1;
        assert_eq!(
            send(
                &mut alice,
                "rooms/ops/react/alice",
                &react(posted[0], "👍", remove),
                10 + n
            )
            .await,
            PublishAckReason::Success
        );
        let event = event_of(&next_publish(&mut carol).await);
        assert_eq!((event.kind.as_str(), event.target), ("react", Some(posted[0])));
    }
    // Node b has never read room ops: it reads it from the stream now.
    let answer = history(b.local_addr(), "ops").await;
    let got: Vec<_> = answer
        .messages
        .iter()
        .map(|m| (m.seq, m.body.clone(), m.reactions.clone()))
        .collect();
    let thumbs = Some([("👍".to_string(), 1u64)].into());
    assert_eq!(
        got,
        [
            (posted[0], Some(b"one".to_vec()), thumbs),
            (posted[1], Some(b"two".to_vec()), None),
            (posted[2], Some(b"three".to_vec()), None),
            (posted[3], Some(b"four".to_vec()), None),
        ]
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// Node `name` on `nats` keeping 4 entries per room log, its config
/// changed by `configure`.
async fn small_node(
    nats: &NatsCluster,
    name: &str,
    configure: impl FnOnce(&mut roomq::Config),
) -> roomq::BrokerHandle {
    let mut config = roomq::Config {
        chat: ChatConfig {
            room_max_messages: 4,
            ..nats.node_config(name).chat
        },
        ..nats.node_config(name)
    };
    configure(&mut config);
    roomq::Broker::new(config)
        .start()
        .await
        .expect("cluster node starts")
}

/// The room stream still keeps what the logs keep: once a node trims its
/// copy of a room (64 entries beyond `room_max_messages` at most), the
/// room's subject is purged below the same point, and a node that reads
/// the room afterwards gets only the newest entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trim_of_the_log_trims_the_room_stream() {
    let nats = NatsCluster::start(1);
    let a = small_node(&nats, "a", |_| {}).await;
    let b = small_node(&nats, "b", |_| {}).await;
    let mut carol = ops_watcher(a.local_addr()).await;
    let mut alice = user5(a.local_addr(), "alice-1", "alice").await;
    let mut posted = Vec::new();
    for n in 0..64 {
        posted.push(alice_posts(&mut alice, &mut carol, format!("m{n}").as_bytes()).await);
    }
    let client = async_nats::connect(nats.urls()[0].as_str()).await.expect("NATS");
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream("ROOMQ_ROOMS").await.expect("the room stream");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let held = stream.info().await.expect("stream info").state.messages;
        if held == 4 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the room stream still holds {held} records, not the log's 4"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let answer = history(b.local_addr(), "ops").await;
    let seqs: Vec<u64> = answer.messages.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, posted[60..]);
    a.shutdown().await;
    b.shutdown().await;
}

/// A room stream made with another per-room limit (an earlier roomq kept
/// `room_max_messages` records) takes the limit of the node that starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_starting_node_sets_the_room_streams_limit() {
    let nats = NatsCluster::start(1);
    let a = small_node(&nats, "a", |c| {
        if let Some(cluster) = c.cluster.as_mut() {
            cluster.room_stream_extra_records = 64;
        }
    })
    .await;
    let client = async_nats::connect(nats.urls()[0].as_str()).await.expect("NATS");
    let js = async_nats::jetstream::new(client);
    let limit = |info: async_nats::jetstream::stream::Info| info.config.max_messages_per_subject;
    let mut stream = js.get_stream("ROOMQ_ROOMS").await.expect("the room stream");
    assert_eq!(limit(stream.info().await.expect("info").clone()), 4 + 64);
    let b = small_node(&nats, "b", |_| {}).await;
    assert_eq!(limit(stream.info().await.expect("info").clone()), 4 + 100_000);
    a.shutdown().await;
    b.shutdown().await;
}
