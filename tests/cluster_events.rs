//! Room events in a cluster (`topics.md`, *Edits, deletes and
//! reactions*): an event posted on one node reaches members on another in
//! `seq` order with the messages, every node's history shows the change,
//! and a delete takes the message's body (and its edits) out of the room
//! stream.
#![cfg(feature = "cluster")]

mod common;

use common::chat::{history, seq_of, user5};
use common::events::*;
use common::nats::NatsCluster;
use common::*;
use rmqtt_codec::types::QoS;
use rmqtt_codec::v5::PublishAckReason;

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
