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
//! it delivers what it reads back from the cluster, in `seq` order, after
//! applying it to its own copy of the room log (history, backlogs,
//! de-duplication; `RoomSink::apply`). So every member on every node sees
//! one order, and only what JetStream stored.
//!
//! **Only nodes with interest read a room.** The stream republishes every
//! stored message on core NATS (`{name}.live.{room}`, stream RePublish,
//! with the message's sequence and its subject's previous sequence), and a
//! node subscribes to the rooms it follows: those its sessions subscribe
//! to, and those it posted to or read history of lately (`cluster.room_linger_secs`). A
//! room message costs nothing on a node without interest in its room. No
//! JetStream consumer lives per session or per room: a node that starts
//! following a room reads what it missed with a short-lived consumer
//! filtered to that room, then lives on the republished copies. A copy
//! whose previous sequence is not the last one this node holds reveals a
//! gap (core NATS does not redeliver after a reconnect or a leader
//! change); the gap is read from the stream before the copy is applied.
//! A lost copy with nothing after it is found by the checks that follow a
//! quiet room (`CHECK_WHEN_QUIET`), a reconnect to NATS, or this node's
//! own acknowledged post (`Nudge::Expect`).
//!
//! The stream also holds copies of bans and mutes, in the room's order
//! (`sanctions.rs`): a follower applies one before the messages after it.
//!
//! The nodes, not JetStream's per-subject limit, decide what a room keeps
//! (`Rooms::purge_below`): a node that trims its copy of a room purges the
//! room's subject below the same `seq`, so reactions (events that are not
//! log entries) never push the room's messages out of the stream.
//!
//! A filter over every room (`rooms/+/msg/#`, `#`) makes the node follow
//! the whole stream with one ordered consumer (`follow_everything`).
//!
//! De-duplication across nodes: a message with a msg-id is written with
//! `Nats-Msg-Id` = a hash of (room, sender, msg-id), so JetStream stores a
//! retry once even when two nodes send it at the same moment; after that,
//! every following node's copy of the log knows the msg-id
//! (`chat/dedup.rs`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_nats::jetstream;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;
use tokio::time::Instant;

mod follow;

use follow::{follow_everything, follow_room};

use super::names::{hash_hex, Names};
use super::sanctions::Sanctions;
use super::writer::{RoomAcknowledged, Write, Writer};
use crate::chat::RoomInterest;
use crate::store::{RoomRecord, StoreError};

/// Pause before a follower tries again after an error.
const FOLLOW_RETRY: Duration = Duration::from_millis(500);
/// A room this node posted to or read history of, without subscriptions
/// here, stays followed this long after (a chat client posts again).
/// A followed room that got no message for this long is checked against
/// the stream once (finds a lost last copy).
const CHECK_WHEN_QUIET: Duration = Duration::from_secs(5);
/// How long a post acknowledged by JetStream may take to come back live
/// before the follower reads it from the stream.
const EXPECT_WAIT: Duration = Duration::from_millis(250);
/// Longest a catch-up waits for the next message of its consumer.
const CATCH_UP_IDLE: Duration = Duration::from_secs(2);

/// A room message as stored in the stream.
#[derive(Serialize, Deserialize)]
struct RoomWire {
    record: RoomRecord,
    /// Client id of the publisher, for the No Local option.
    publisher: Option<String>,
}

/// Where followers put the room messages they read (the chat layer).
pub(crate) trait RoomSink: Send + Sync {
    /// The highest `seq` this node's copy of `room` holds (0: none).
    fn last_applied(&self, room: &str) -> u64;
    /// Appends a stored message to this node's copy of `room` (ignored
    /// when `seq` is not above the last one) and delivers it to the
    /// members here.
    fn apply(&self, room: &str, seq: u64, record: RoomRecord, publisher: Option<Arc<str>>);
    /// `seq` of `room` is not a message (a sanction's copy): this node's
    /// copy of the room goes on after it.
    fn skip(&self, room: &str, seq: u64);
}

/// What a room's follower is told besides its live messages.
enum Nudge {
    /// JetStream acknowledged this node's post under this `seq`.
    Expect(u64),
}

/// One followed room.
struct Followed {
    /// Subscriptions here that name the room.
    subscriptions: usize,
    /// Last post or history read here.
    touched: Instant,
    ready: watch::Receiver<bool>,
    nudges: mpsc::UnboundedSender<Nudge>,
    task: AbortHandle,
}

/// Following the whole stream (a filter over every room).
struct FollowedAll {
    subscriptions: usize,
    touched: Instant,
    ready: watch::Receiver<bool>,
    task: AbortHandle,
}

/// Posting room messages, and reading the rooms this node has interest in.
pub(crate) struct Rooms {
    inner: Arc<Inner>,
    node: Arc<str>,
    boot: u64,
    posts: AtomicU64,
}

struct Inner {
    names: Names,
    js: jetstream::Context,
    client: async_nats::Client,
    writer: Arc<Writer>,
    /// Takes the sanctions' copies in the room stream.
    sanctions: Arc<Sanctions>,
    sink: OnceLock<Arc<dyn RoomSink>>,
    rooms: Mutex<HashMap<Arc<str>, Followed>>,
    every: Mutex<Option<FollowedAll>>,
    /// Bumped when NATS reconnects: every follower checks its room.
    resync: watch::Sender<u64>,
    /// Room messages this node read from the cluster.
    received: AtomicU64,
    /// How long a room without subscriptions here stays followed after
    /// its last use (`cluster.room_linger_secs`).
    linger: Duration,
}

impl Rooms {
    pub fn new(
        names: Names,
        js: jetstream::Context,
        client: async_nats::Client,
        writer: Arc<Writer>,
        sanctions: Arc<Sanctions>,
        node: Arc<str>,
        linger: Duration,
    ) -> Rooms {
        Rooms {
            inner: Arc::new(Inner {
                names,
                js,
                client,
                writer,
                sanctions,
                sink: OnceLock::new(),
                rooms: Mutex::default(),
                every: Mutex::default(),
                resync: watch::Sender::new(0),
                received: AtomicU64::new(0),
                linger,
            }),
            node,
            boot: crate::store::unix_ms_now(),
            posts: AtomicU64::new(0),
        }
    }

    /// Where followed rooms' messages go; set once, before any follow.
    pub fn set_sink(&self, sink: Arc<dyn RoomSink>) {
        if self.inner.sink.set(sink).is_err() {
            tracing::error!("the room sink is already set");
        }
    }

    /// Room messages this node has read from the cluster (a node without
    /// members in a room reads none of its messages).
    pub fn received(&self) -> u64 {
        self.inner.received.load(Ordering::Relaxed)
    }

    /// What to call when NATS reconnected (or dropped messages): every
    /// follower checks its room against the stream.
    pub fn resync_hook(&self) -> impl Fn() + Send + 'static {
        let inner = Arc::downgrade(&self.inner);
        move || {
            if let Some(inner) = inner.upgrade() {
                inner.resync.send_modify(|n| *n += 1);
            }
        }
    }

    /// Purges `room`'s subject below `below`: this node trimmed its copy
    /// of the room there (by `room_max_messages` or `room_max_age_secs`),
    /// so the stream keeps what the logs keep. The stream's own per-room
    /// limit is only a backstop (`cluster.room_stream_extra_records`):
    /// reactions, which are not log entries, do not count against the
    /// room's messages.
    ///
    /// Every node's copy holds the room's newest entries up to what it has
    /// read, so the point it trims below is never above the one the whole
    /// room would be trimmed below: a purge never takes one of the room's
    /// newest `room_max_messages` entries, and nodes purging the same room
    /// at once only repeat each other.
    pub fn purge_below(&self, room: &str, below: u64) {
        let write = Write::purge_below(
            self.inner.names.rooms_stream.as_str().into(),
            self.inner.names.room(room),
            below,
        );
        if self.inner.writer.write(write).is_err() {
            tracing::warn!(
                %room,
                below,
                "the room's trimmed records stay in the stream for now: cluster.write_buffer_bytes full"
            );
        }
    }

    /// `cluster.room_linger_secs`.
    pub fn linger(&self) -> Duration {
        self.inner.linger
    }

    /// What to call periodically: stops following rooms that lost their
    /// interest here (`forget_idle`).
    pub fn forget_hook(&self) -> impl Fn() + Send + 'static {
        let inner = Arc::downgrade(&self.inner);
        move || {
            if let Some(inner) = inner.upgrade() {
                inner.forget_idle();
            }
        }
    }

    /// Writes a room message to the stream; it is delivered when this
    /// node's follower of the room reads it back. `dedup_key` identifies
    /// (room, sender, msg-id) when the sender gave a msg-id.
    /// Deletes room messages from the stream, by their `seq` (a deleted
    /// message's body and its edits), once the writes queued before are
    /// acknowledged (the delete event among them). A node that reads the
    /// room later finds neither.
    pub fn delete_from_stream(&self, seqs: &[u64]) {
        for &seq in seqs {
            let write = Write::delete_seq(self.inner.names.rooms_stream.as_str().into(), seq);
            if self.inner.writer.write(write).is_err() {
                tracing::warn!(
                    seq,
                    "a deleted room message stays in the stream: cluster.write_buffer_bytes full"
                );
            }
        }
    }

    pub fn post(
        &self,
        room: &str,
        record: RoomRecord,
        dedup_key: Option<&str>,
        publisher: Option<&str>,
    ) -> Result<(), StoreError> {
        let room: Arc<str> = room.into();
        self.touch(&room);
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
        self.inner
            .writer
            .write(Write {
                room: Some(room.clone()),
                ..Write::publish(self.inner.names.room(&room), msg_id, payload.into())
            })
            .map_err(|_| {
                StoreError::Io("cluster.write_buffer_bytes full: JetStream is slow or without quorum".into())
            })
    }

    /// A subscription naming `interest` was added or removed here.
    pub fn interest(&self, interest: &RoomInterest, added: bool) {
        match interest {
            RoomInterest::One(room) => {
                let mut rooms = self.inner.rooms.lock();
                let followed = self.inner.follow_locked(&mut rooms, room);
                if added {
                    followed.subscriptions += 1;
                } else {
                    followed.subscriptions = followed.subscriptions.saturating_sub(1);
                    followed.touched = Instant::now();
                }
            }
            RoomInterest::Every => {
                let mut every = self.inner.every.lock();
                let followed = self.inner.follow_every_locked(&mut every);
                if added {
                    followed.subscriptions += 1;
                } else {
                    followed.subscriptions = followed.subscriptions.saturating_sub(1);
                    followed.touched = Instant::now();
                }
            }
        }
    }

    /// Follows `room` (for `cluster.room_linger_secs` at least) and resolves once this
    /// node's copy holds what the stream held when it started following,
    /// or after `bound`.
    pub async fn ready(&self, interest: &RoomInterest, bound: Duration) {
        let mut ready = match interest {
            RoomInterest::One(room) => self.touch(room),
            RoomInterest::Every => {
                let mut every = self.inner.every.lock();
                let followed = self.inner.follow_every_locked(&mut every);
                followed.touched = Instant::now();
                followed.ready.clone()
            }
        };
        if tokio::time::timeout(bound, ready.wait_for(|r| *r)).await.is_err() {
            tracing::warn!(
                ?interest,
                "the room log did not catch up with the cluster in time"
            );
        }
    }

    /// Follows `room` for `cluster.room_linger_secs` at least.
    fn touch(&self, room: &str) -> watch::Receiver<bool> {
        let mut rooms = self.inner.rooms.lock();
        let followed = self.inner.follow_locked(&mut rooms, room);
        followed.touched = Instant::now();
        followed.ready.clone()
    }
}

impl Inner {
    /// Stops following rooms without subscriptions here that were not
    /// touched for `cluster.room_linger_secs`.
    fn forget_idle(&self) {
        let now = Instant::now();
        let idle = |subscriptions: usize, touched: Instant| {
            subscriptions == 0 && now.duration_since(touched) >= self.linger
        };
        let mut forgotten = Vec::new();
        self.rooms.lock().retain(|room, f| {
            let keep = !idle(f.subscriptions, f.touched);
            if !keep {
                f.task.abort();
                forgotten.push(room.clone());
            }
            keep
        });
        for room in forgotten {
            self.writer.forget_room(&room);
            tracing::debug!(%room, "no interest here any more: room not followed");
        }
        let mut every = self.every.lock();
        if every.as_ref().is_some_and(|f| idle(f.subscriptions, f.touched)) {
            if let Some(f) = every.take() {
                f.task.abort();
            }
        }
    }
}

impl Rooms {
    /// What the writer calls when JetStream acknowledged this node's post
    /// to a room under a `seq`: the room's follower expects it back.
    pub fn acknowledgement_hook(&self) -> RoomAcknowledged {
        let inner = Arc::downgrade(&self.inner);
        Arc::new(move |room, seq| {
            let Some(inner) = inner.upgrade() else {
                return;
            };
            let rooms = inner.rooms.lock();
            if let Some(followed) = rooms.get(room) {
                let _ = followed.nudges.send(Nudge::Expect(seq));
            }
        })
    }

    /// Stops every follower.
    pub fn stop(&self) {
        for (_, f) in self.inner.rooms.lock().drain() {
            f.task.abort();
        }
        if let Some(f) = self.inner.every.lock().take() {
            f.task.abort();
        }
    }
}

impl Inner {
    /// The room's entry, its follower started when it had none.
    fn follow_locked<'a>(
        self: &Arc<Self>,
        rooms: &'a mut HashMap<Arc<str>, Followed>,
        room: &str,
    ) -> &'a mut Followed {
        if !rooms.contains_key(room) {
            let room: Arc<str> = room.into();
            let (ready_tx, ready) = watch::channel(false);
            let (nudges, nudged) = mpsc::unbounded_channel();
            let task = tokio::spawn(follow_room(self.clone(), room.clone(), ready_tx, nudged));
            rooms.insert(
                room.clone(),
                Followed {
                    subscriptions: 0,
                    touched: Instant::now(),
                    ready,
                    nudges,
                    task: task.abort_handle(),
                },
            );
            tracing::debug!(%room, "following the room");
        }
        rooms.get_mut(room).expect("inserted above")
    }

    fn follow_every_locked<'a>(self: &Arc<Self>, every: &'a mut Option<FollowedAll>) -> &'a mut FollowedAll {
        every.get_or_insert_with(|| {
            let (ready_tx, ready) = watch::channel(false);
            let task = tokio::spawn(follow_everything(self.clone(), ready_tx));
            tracing::debug!("a subscription covers every room: following the whole room stream");
            FollowedAll {
                subscriptions: 0,
                touched: Instant::now(),
                ready,
                task: task.abort_handle(),
            }
        })
    }
}
