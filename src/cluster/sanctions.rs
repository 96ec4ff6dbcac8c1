//! Bans and mutes in a cluster: the chat layer's `SanctionReplication`
//! on JetStream.
//!
//! A moderator's change (the state of one (kind, room, user), with its
//! end) is written to a stream that keeps the last record per sanction
//! (`{name}.sanction.{hash}`; a lift is a record without a sanction, so
//! every node sees it). Every node reads the whole stream before it
//! serves and follows it (like retained messages), so a node that starts
//! or restarts knows every ban.
//!
//! Once JetStream acknowledged that record, the node that took the
//! request writes a copy of it into the room's own stream, marked by the
//! `Roomq-Sanction` header, and publishes the moderator's answer only
//! once that copy is acknowledged too. A room message posted after the
//! answer therefore comes after the copy in the room's order, and every
//! node following the room applies the copy before it delivers that
//! message (`rooms/follow.rs`). A node that does not follow the room
//! delivers nothing of it; it gets the change from the sanctions stream
//! (typically milliseconds; its SUBSCRIBE of the room first reads the
//! room's stream, copies included).
//!
//! Both ways carry the record's sequence in the sanctions stream, its
//! version: a node applies a change only when its version is above the
//! one it holds for that sanction, so the two ways, old copies read when
//! a node starts following a room, and two moderators changing the same
//! sanction on two nodes at once, all end in the sanctions stream's
//! order.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::names::Names;
use super::writer::{Write, Writer};
use crate::message::Message;
use crate::store::{SanctionChange, SanctionReplication};

/// The header that marks a sanction's copy in a room's stream.
pub(crate) const MARK: &str = "Roomq-Sanction";

const FOLLOW_RETRY: Duration = Duration::from_millis(500);

/// Takes a committed change in on this node (the chat layer).
pub(crate) type ApplySanction = Arc<dyn Fn(&SanctionChange) + Send + Sync>;
/// Publishes a moderator's answer on this node (the router).
pub(crate) type PublishAnswer = Arc<dyn Fn(Message) + Send + Sync>;

/// A sanction's copy in a room's stream.
#[derive(Serialize, Deserialize)]
struct RoomCopy {
    change: SanctionChange,
    /// Its record's sequence in the sanctions stream.
    version: u64,
}

pub(crate) struct Sanctions {
    names: Names,
    writer: Arc<Writer>,
    /// Makes this node's writes' `Nats-Msg-Id`s unique.
    node: Arc<str>,
    boot: u64,
    writes: AtomicU64,
    /// Per sanction (its key): the version applied here. The lock is held
    /// across the apply, so that of two ways delivering changes at once
    /// the later version is the one that stays. One entry per sanction
    /// the stream holds (lifted ones too).
    versions: Mutex<HashMap<String, u64>>,
    apply: OnceLock<ApplySanction>,
    answer: OnceLock<PublishAnswer>,
    /// Itself, for the writer's callbacks.
    this: Weak<Sanctions>,
}

impl Sanctions {
    pub fn new(names: Names, writer: Arc<Writer>, node: Arc<str>) -> Arc<Sanctions> {
        Arc::new_cyclic(|this| Sanctions {
            names,
            writer,
            node,
            boot: crate::store::unix_ms_now(),
            writes: AtomicU64::new(0),
            versions: Mutex::default(),
            apply: OnceLock::new(),
            answer: OnceLock::new(),
            this: this.clone(),
        })
    }

    /// Where changes are applied and answers published; set once, before
    /// `follow` and before clients connect.
    pub fn connect(&self, apply: ApplySanction, answer: PublishAnswer) {
        if self.apply.set(apply).is_err() || self.answer.set(answer).is_err() {
            tracing::error!("the cluster's sanctions are already connected");
        }
    }

    /// Applies `change` unless this node holds its sanction at `version`
    /// or later.
    fn receive(&self, version: u64, change: &SanctionChange) {
        let mut versions = self.versions.lock();
        let key = change.key();
        if versions.get(&key).is_some_and(|held| *held >= version) {
            return;
        }
        versions.insert(key, version);
        if let Some(apply) = self.apply.get() {
            apply(change);
        }
    }

    /// A copy read from a room's stream (the header `MARK`).
    pub fn receive_room_copy(&self, room: &str, seq: u64, payload: &[u8]) {
        match postcard::from_bytes::<RoomCopy>(payload) {
            Ok(copy) => self.receive(copy.version, &copy.change),
            Err(error) => {
                tracing::error!(%room, seq, %error, "undecodable sanction in the room stream skipped")
            }
        }
    }

    fn msg_id(&self, what: &str) -> String {
        let n = self.writes.fetch_add(1, Ordering::Relaxed);
        format!("{what}-{}-{}-{n}", self.node, self.boot)
    }

    /// The record is in the sanctions stream under `version`: applied
    /// here, then its copy goes into the room's stream, then the answer.
    fn committed(&self, version: u64, change: SanctionChange, answer: Message) {
        self.receive(version, &change);
        let room = change.room.clone();
        let copy = RoomCopy { change, version };
        let payload = match postcard::to_allocvec(&copy) {
            Ok(payload) => payload,
            Err(error) => {
                tracing::error!(%error, "could not encode a sanction's copy");
                return;
            }
        };
        let publish = self.answer.get().cloned();
        let write = Write {
            mark: Some(MARK),
            then: Some(Box::new(move |_| {
                if let Some(publish) = publish {
                    publish(answer);
                }
            })),
            ..Write::publish(self.names.room(&room), self.msg_id("sr"), payload.into())
        };
        if self.writer.write(write).is_err() {
            // In the sanctions stream already: every node has it; only
            // the order against the room's messages is not promised.
            tracing::error!(%room, "a sanction's copy could not be written to the room stream; the moderator gets no answer");
        }
    }
}

impl SanctionReplication for Sanctions {
    fn replicate(&self, change: SanctionChange, answer: Message) -> bool {
        let payload = match postcard::to_allocvec(&change) {
            Ok(payload) => payload,
            Err(error) => {
                tracing::error!(%error, "could not encode a sanction");
                return false;
            }
        };
        let this = self.this.clone();
        let subject = self.names.sanction(&change.key());
        let write = Write {
            then: Some(Box::new(move |version| {
                if let Some(this) = this.upgrade() {
                    this.committed(version, change, answer);
                }
            })),
            ..Write::publish(subject, self.msg_id("s"), payload.into())
        };
        self.writer.write(write).is_ok()
    }
}

/// Follows the sanctions stream; sets `caught_up` once the records that
/// were there at start are applied.
pub(crate) async fn follow(
    js: jetstream::Context,
    sanctions: Arc<Sanctions>,
    caught_up: watch::Sender<bool>,
) {
    loop {
        if let Err(error) = follow_once(&js, &sanctions, &caught_up).await {
            tracing::warn!(%error, "following the sanctions stream failed; resuming");
            tokio::time::sleep(FOLLOW_RETRY).await;
        }
    }
}

async fn follow_once(
    js: &jetstream::Context,
    sanctions: &Sanctions,
    caught_up: &watch::Sender<bool>,
) -> Result<(), String> {
    let (last_at_start, mut stream, mut messages) = super::read_stream(
        js,
        &sanctions.names.sanctions_stream,
        sanctions.names.sanctions(),
        consumer::DeliverPolicy::LastPerSubject,
    )
    .await?;
    if last_at_start == 0 {
        caught_up.send_replace(true);
    }
    let mut seen = last_at_start;
    loop {
        let message = super::next_or_stalled(&mut stream, &mut messages, seen).await?;
        let info = message.info().map_err(|e| e.to_string())?;
        let (seq, pending) = (info.stream_sequence, info.pending);
        seen = seen.max(seq);
        match postcard::from_bytes::<SanctionChange>(&message.payload) {
            Ok(change) => sanctions.receive(seq, &change),
            Err(error) => tracing::error!(seq, %error, "undecodable sanction in the stream skipped"),
        }
        if seq >= last_at_start || pending == 0 {
            caught_up.send_replace(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{SanctionKind, StoreHealth};

    fn change(until: Option<Option<u64>>) -> SanctionChange {
        SanctionChange {
            kind: SanctionKind::Ban,
            room: "ops".into(),
            user: "mallory".into(),
            until,
        }
    }

    /// The two ways a change arrives (the sanctions stream, the room's
    /// stream) and old copies read again end in the stream's order.
    #[test]
    fn a_change_is_applied_only_above_the_version_held() {
        let (writer, _queue) = Writer::new(Arc::new(StoreHealth::default()), 1 << 20);
        let sanctions = Sanctions::new(Names::new("roomq"), writer, "a".into());
        let applied = Arc::new(Mutex::new(Vec::new()));
        let seen = applied.clone();
        sanctions.connect(
            Arc::new(move |c: &SanctionChange| seen.lock().push(c.until)),
            Arc::new(|_| {}),
        );
        sanctions.receive(5, &change(Some(None)));
        // The same version by the other way, and an older lift: nothing.
        sanctions.receive(5, &change(Some(None)));
        sanctions.receive(3, &change(None));
        sanctions.receive(7, &change(None));
        let copy = postcard::to_allocvec(&RoomCopy {
            change: change(Some(Some(1))),
            version: 6,
        })
        .unwrap();
        sanctions.receive_room_copy("ops", 40, &copy);
        assert_eq!(*applied.lock(), vec![Some(None), None]);
    }
}
