//! Room messages in a cluster: one JetStream stream holds every room's log,
//! one subject per room, and the stream's sequence is the room's `seq`.
//!
//! JetStream gives each stored message the next sequence of the whole
//! stream, under its Raft log: strictly increasing per room, never reused
//! (also across leader changes and restarts), but with gaps (other rooms'
//! messages in between). Every room message therefore carries `prev`, the
//! `seq` of its room's message before it.
//!
//! A node posts by writing to the stream (`writer.rs`: the PUBACK waits for
//! the quorum's acknowledgement). It never delivers a room message itself:
//! every node follows the stream with one ordered consumer and applies
//! each message, in stream order, to its own copy of the room logs
//! (history, backlogs, de-duplication), then delivers it to its members
//! (`RoomSink::apply`). So every member on every node sees one order, and
//! only what JetStream stored.
//!
//! De-duplication across nodes: a message with a msg-id is written with
//! `Nats-Msg-Id` = a hash of (room, sender, msg-id), so JetStream stores a
//! retry once even when two nodes send it at the same moment; after that,
//! every node's copy of the log knows the msg-id (`chat/dedup.rs`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::names::{hash_hex, Names};
use super::writer::{Write, Writer};
use crate::store::{RoomRecord, StoreError};

/// Pause before the follower tries again after an error.
const FOLLOW_RETRY: Duration = Duration::from_millis(500);

/// A room message as stored in the stream.
#[derive(Serialize, Deserialize)]
struct RoomWire {
    record: RoomRecord,
    /// Client id of the publisher, for the No Local option.
    publisher: Option<String>,
}

/// Where the follower puts the room messages it reads (the chat layer).
pub(crate) trait RoomSink: Send + Sync {
    /// The highest stream sequence this node's room logs hold.
    fn last_applied(&self) -> u64;
    /// Appends a stored message to this node's copy of `room` and delivers
    /// it to the members here.
    fn apply(&self, room: &str, seq: u64, record: RoomRecord, publisher: Option<Arc<str>>);
}

/// Posting room messages to the stream.
pub(crate) struct Rooms {
    names: Names,
    writer: Arc<Writer>,
    node: Arc<str>,
    boot: u64,
    posts: AtomicU64,
}

impl Rooms {
    pub fn new(names: Names, writer: Arc<Writer>, node: Arc<str>) -> Rooms {
        Rooms {
            names,
            writer,
            node,
            boot: crate::store::unix_ms_now(),
            posts: AtomicU64::new(0),
        }
    }

    /// Writes a room message to the stream; it is delivered when the
    /// follower reads it back. `dedup_key` identifies (room, sender,
    /// msg-id) when the sender gave a msg-id.
    pub fn post(
        &self,
        room: &str,
        record: RoomRecord,
        dedup_key: Option<&str>,
        publisher: Option<&str>,
    ) -> Result<(), StoreError> {
        let msg_id = match dedup_key {
            Some(key) => format!("m-{}", hash_hex(key)),
            None => {
                // A retry by the writer is stored once; a client's retry
                // without a msg-id is a new message (as on one node).
                let n = self.posts.fetch_add(1, Ordering::Relaxed);
                format!("p-{}-{}-{n}", self.node, self.boot)
            }
        };
        let wire = RoomWire {
            record,
            publisher: publisher.map(str::to_string),
        };
        let payload = postcard::to_allocvec(&wire).map_err(|e| StoreError::Io(e.to_string()))?;
        self.writer
            .write(Write {
                subject: self.names.room(room),
                msg_id,
                payload: payload.into(),
                room: true,
            })
            .map_err(|_| {
                StoreError::Io("cluster.write_buffer_bytes full: JetStream is slow or without quorum".into())
            })
    }
}

/// Follows the room stream from after what `sink` holds, applying every
/// message in order; sets `caught_up` once it reached the stream's last
/// message at start. Runs until the task is dropped.
pub(crate) async fn follow(
    js: jetstream::Context,
    names: Names,
    sink: Arc<dyn RoomSink>,
    writer: Arc<Writer>,
    caught_up: watch::Sender<bool>,
) {
    loop {
        if let Err(error) = follow_once(&js, &names, &*sink, &writer, &caught_up).await {
            tracing::warn!(%error, "following the room stream failed; resuming");
            tokio::time::sleep(FOLLOW_RETRY).await;
        }
    }
}

async fn follow_once(
    js: &jetstream::Context,
    names: &Names,
    sink: &dyn RoomSink,
    writer: &Writer,
    caught_up: &watch::Sender<bool>,
) -> Result<(), String> {
    let from = sink.last_applied() + 1;
    let (last_at_start, mut stream, mut messages) = super::read_stream(
        js,
        &names.rooms_stream,
        names.rooms(),
        consumer::DeliverPolicy::ByStartSequence { start_sequence: from },
    )
    .await?;
    if from > last_at_start {
        caught_up.send_replace(true);
    }
    let mut seen = from.saturating_sub(1);
    loop {
        let message = super::next_or_stalled(&mut stream, &mut messages, seen).await?;
        let seq = message.info().map_err(|e| e.to_string())?.stream_sequence;
        seen = seq;
        match (
            names.room_of(&message.subject),
            postcard::from_bytes::<RoomWire>(&message.payload),
        ) {
            (Some(room), Ok(wire)) => {
                sink.apply(&room, seq, wire.record, wire.publisher.map(Into::into));
            }
            _ => {
                tracing::error!(subject = %message.subject, seq, "undecodable room message in the stream skipped")
            }
        }
        writer.applied(seq);
        if seq >= last_at_start {
            caught_up.send_replace(true);
        }
    }
}
