//! Writes to JetStream, acknowledged before the client's acknowledgement.
//!
//! Room messages and retained messages are handed to one writer task. It
//! sends everything that queued while the previous batch was in flight,
//! in order, then waits for JetStream's acknowledgements (with replicas =
//! 3: a quorum of servers has it). A write that fails or times out is sent
//! again with the same `Nats-Msg-Id`, so JetStream stores it once, until it
//! works: while quorum is lost nothing is acknowledged to clients, and the
//! store's health says so (PUBACK 0x97 after `store_stall_timeout_ms`).
//!
//! The group commit (`store/group_commit.rs`) waits for this writer through
//! [`CommitBarrier`]: a client's PUBACK goes out only once every write
//! made before its ticket is acknowledged, and, for room messages, once
//! this node's copy of the room log has it (so a history request right
//! after the PUBACK finds the message; the poster's node follows the
//! room, `rooms.rs`).

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use parking_lot::{Condvar, Mutex};
use tokio::sync::mpsc;

use crate::store::{CommitBarrier, StoreError, StoreHealth};

/// Most writes sent before their acknowledgements are awaited.
const MAX_BATCH: usize = 4096;
/// Pause before failed writes are sent again.
const RETRY_AFTER: Duration = Duration::from_millis(200);
/// Longest the writer waits for the NATS client to take one write.
const SEND_WAIT: Duration = Duration::from_secs(2);
/// Longest a commit blocks in `settle` before it reports and retries.
const SETTLE_WAIT: Duration = Duration::from_millis(500);

/// Told about each acknowledged room post: its room and `seq`.
pub(crate) type RoomAcknowledged = Arc<dyn Fn(&str, u64) + Send + Sync>;

/// One write: a message for a stream subject, or a removal.
pub(crate) struct Write {
    pub subject: String,
    /// JetStream de-duplicates by it: a retry is stored once.
    pub msg_id: String,
    pub payload: Bytes,
    /// A room message (its room): the commit also waits until this node
    /// applied it.
    pub room: Option<Arc<str>>,
    pub action: Action,
    /// A header sent with it, set to "1" (what a room's follower tells a
    /// sanction's record by, `sanctions.rs`).
    pub mark: Option<&'static str>,
    /// Called, in the writer's task, once JetStream acknowledged it, with
    /// its stream sequence (for a publish; a removal's is 0).
    pub then: Option<Then>,
}

/// What a write's acknowledgement is followed by (quick: it runs in the
/// writer's task).
pub(crate) type Then = Box<dyn FnOnce(u64) + Send>;

/// What a write does.
pub(crate) enum Action {
    /// Stores `payload` on `subject`.
    Publish,
    /// Removes what `subject` (a filter) holds in the named stream, after
    /// the publishes queued before it are acknowledged (a message's own
    /// removal: its subject is unique, so it need not wait for more).
    Remove(Arc<str>),
    /// The same, and nothing queued after it is sent before it is done
    /// (clearing a subject that later writes fill again).
    RemoveBeforeLater(Arc<str>),
    /// Deletes the message stored under this sequence in the named stream
    /// (a deleted room message's body), after the publishes queued before
    /// it are acknowledged; one already gone counts as deleted.
    DeleteSeq(Arc<str>, u64),
    /// Removes what `subject` holds in the named stream below this
    /// sequence (a room's records older than its kept entries), after the
    /// publishes queued before it are acknowledged.
    PurgeBelow(Arc<str>, u64),
}

impl Write {
    /// A write that stores `payload` on `subject`.
    pub fn publish(subject: String, msg_id: String, payload: Bytes) -> Write {
        Write {
            subject,
            msg_id,
            payload,
            room: None,
            action: Action::Publish,
            mark: None,
            then: None,
        }
    }

    /// A write that removes what `filter` holds in `stream`.
    pub fn remove(stream: Arc<str>, filter: String, before_later: bool) -> Write {
        Write {
            subject: filter,
            msg_id: String::new(),
            payload: Bytes::new(),
            room: None,
            action: match before_later {
                true => Action::RemoveBeforeLater(stream),
                false => Action::Remove(stream),
            },
            mark: None,
            then: None,
        }
    }

    /// A write that deletes the message under `seq` in `stream`.
    pub fn delete_seq(stream: Arc<str>, seq: u64) -> Write {
        Write {
            subject: String::new(),
            msg_id: String::new(),
            payload: Bytes::new(),
            room: None,
            action: Action::DeleteSeq(stream, seq),
            mark: None,
            then: None,
        }
    }

    /// A write that removes what `subject` holds in `stream` below `seq`.
    pub fn purge_below(stream: Arc<str>, subject: String, seq: u64) -> Write {
        Write {
            action: Action::PurgeBelow(stream, seq),
            ..Write::remove(Arc::from(""), subject, false)
        }
    }

    /// What it counts for in `cluster.write_buffer_bytes`.
    fn size(&self) -> usize {
        self.payload.len() + self.subject.len()
    }
}

#[derive(Default)]
struct Progress {
    /// Every write id up to this is acknowledged.
    acked: u64,
    /// Acknowledged ids above `acked`.
    acked_above: BTreeSet<u64>,
    /// Rooms with an acknowledged post this node has not applied yet, and
    /// the highest such `seq`.
    room_waiting: HashMap<Arc<str>, u64>,
    /// The highest `seq` this node applied, per followed room.
    room_applied: HashMap<Arc<str>, u64>,
}

/// The writer's buffer is full (`cluster.write_buffer_bytes`).
#[derive(Debug)]
pub(crate) struct BufferFull;

pub(crate) struct Writer {
    queue: mpsc::UnboundedSender<(u64, Write)>,
    /// Payload bytes queued or waiting for their acknowledgement, bounded
    /// by `limit`: while JetStream is slow or without quorum, writes are
    /// refused instead of piling up.
    queued_bytes: std::sync::atomic::AtomicUsize,
    limit: usize,
    issued: AtomicU64,
    progress: Mutex<Progress>,
    changed: Condvar,
    health: Arc<StoreHealth>,
    /// Told about every acknowledged room post (`Rooms`' followers expect
    /// it back).
    room_acknowledged: OnceLock<RoomAcknowledged>,
}

impl Writer {
    /// The writer and the receiving end its task (`run`) drains.
    pub fn new(
        health: Arc<StoreHealth>,
        limit: usize,
    ) -> (Arc<Writer>, mpsc::UnboundedReceiver<(u64, Write)>) {
        let (queue, rx) = mpsc::unbounded_channel();
        let writer = Arc::new(Writer {
            queue,
            queued_bytes: std::sync::atomic::AtomicUsize::new(0),
            limit,
            issued: AtomicU64::new(0),
            progress: Mutex::default(),
            changed: Condvar::new(),
            health,
            room_acknowledged: OnceLock::new(),
        });
        (writer, rx)
    }

    /// Queues a write. The client's acknowledgement waits for it through
    /// the group commit; its size was bounded by the client's limits
    /// (`max_packet_size`, Receive Maximum) before it got here.
    pub fn write(&self, write: Write) -> Result<(), BufferFull> {
        let size = write.size();
        if self.queued_bytes.fetch_add(size, Ordering::AcqRel) + size > self.limit {
            self.queued_bytes.fetch_sub(size, Ordering::AcqRel);
            tracing::warn!(
                limit = self.limit,
                "cluster.write_buffer_bytes full (JetStream slow or without quorum): write refused"
            );
            return Err(BufferFull);
        }
        let id = self.issued.fetch_add(1, Ordering::AcqRel) + 1;
        if self.queue.send((id, write)).is_err() {
            tracing::error!("the JetStream writer has stopped; the write is not stored");
        }
        Ok(())
    }

    /// Sets what is told about acknowledged room posts (once).
    pub fn on_room_acknowledged(&self, hook: RoomAcknowledged) {
        if self.room_acknowledged.set(hook).is_err() {
            tracing::error!("the room acknowledgement hook is already set");
        }
    }

    /// This node's copy of `room` holds every message up to `seq`.
    pub fn applied(&self, room: &str, seq: u64) {
        let mut progress = self.progress.lock();
        match progress.room_applied.get_mut(room) {
            Some(applied) if *applied >= seq => return,
            Some(applied) => *applied = seq,
            None => {
                progress.room_applied.insert(room.into(), seq);
            }
        }
        if progress
            .room_waiting
            .get(room)
            .is_some_and(|waiting| *waiting <= seq)
        {
            progress.room_waiting.remove(room);
            self.changed.notify_all();
        }
    }

    /// This node no longer follows `room`.
    pub fn forget_room(&self, room: &str) {
        self.progress.lock().room_applied.remove(room);
    }

    fn acknowledged(&self, id: u64, room_seq: Option<(Arc<str>, u64)>) {
        let mut progress = self.progress.lock();
        let mut expect = None;
        if let Some((room, seq)) = room_seq {
            if progress
                .room_applied
                .get(&room)
                .is_none_or(|applied| *applied < seq)
            {
                let waiting = progress.room_waiting.entry(room.clone()).or_default();
                *waiting = (*waiting).max(seq);
                expect = Some((room, seq));
            }
        }
        progress.acked_above.insert(id);
        while progress.acked_above.first() == Some(&(progress.acked + 1)) {
            progress.acked += 1;
            progress.acked_above.pop_first();
        }
        self.changed.notify_all();
        drop(progress);
        if let (Some((room, seq)), Some(hook)) = (expect, self.room_acknowledged.get()) {
            hook(&room, seq);
        }
    }

    /// Sends queued writes in batches and collects their acknowledgements,
    /// until the queue closes.
    pub async fn run(self: Arc<Self>, js: jetstream::Context, mut rx: mpsc::UnboundedReceiver<(u64, Write)>) {
        let mut batch: Vec<(u64, Write)> = Vec::new();
        loop {
            if batch.is_empty() {
                match rx.recv().await {
                    Some(w) => batch.push(w),
                    None => return,
                }
            }
            // A removal that later writes must not overtake closes the batch.
            while batch.len() < MAX_BATCH
                && !batch
                    .last()
                    .is_some_and(|(_, w)| matches!(w.action, Action::RemoveBeforeLater(_)))
            {
                match rx.try_recv() {
                    Ok(w) => batch.push(w),
                    Err(_) => break,
                }
            }
            batch = self.send_batch(&js, batch).await;
            if !batch.is_empty() {
                tokio::time::sleep(RETRY_AFTER).await;
            }
        }
    }

    /// Sends a batch's publishes in order and waits for their
    /// acknowledgements, then its removals; returns the writes that failed.
    async fn send_batch(&self, js: &jetstream::Context, batch: Vec<(u64, Write)>) -> Vec<(u64, Write)> {
        let (publishes, removals): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .partition(|(_, w)| matches!(w.action, Action::Publish));
        let mut failed = self.send_publishes(js, publishes).await;
        if failed.is_empty() {
            failed = self.send_removals(js, removals).await;
        } else {
            // Not before the publishes they follow are stored.
            failed.extend(removals);
            failed.sort_by_key(|(id, _)| *id);
        }
        failed
    }

    /// Removals, all at once (their subjects do not overlap the ones
    /// published with them).
    async fn send_removals(&self, js: &jetstream::Context, removals: Vec<(u64, Write)>) -> Vec<(u64, Write)> {
        let results = futures_util::future::join_all(removals.into_iter().map(|(id, write)| async move {
            let stream = match &write.action {
                Action::Remove(stream)
                | Action::RemoveBeforeLater(stream)
                | Action::DeleteSeq(stream, _)
                | Action::PurgeBelow(stream, _) => stream.clone(),
                Action::Publish => return (id, write, Ok(())),
            };
            let result = match (js.get_stream_no_info(&*stream).await, &write.action) {
                (Ok(stream), Action::DeleteSeq(_, seq)) => match stream.delete_message(*seq).await {
                    Ok(_) => Ok(()),
                    Err(e) if already_gone(&e) => Ok(()),
                    Err(e) => Err(e.to_string()),
                },
                (Ok(stream), Action::PurgeBelow(_, seq)) => stream
                    .purge()
                    .filter(write.subject.clone())
                    .sequence(*seq)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                (Ok(stream), _) => stream
                    .purge()
                    .filter(write.subject.clone())
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                (Err(e), _) => Err(e.to_string()),
            };
            (id, write, result)
        }))
        .await;
        let mut failed = Vec::new();
        let mut error = None;
        for (id, write, result) in results {
            match result {
                Ok(()) => {
                    self.queued_bytes.fetch_sub(write.size(), Ordering::AcqRel);
                    self.acknowledged(id, None);
                    if let Some(then) = write.then {
                        then(0);
                    }
                }
                Err(e) => {
                    error = Some(e);
                    failed.push((id, write));
                }
            }
        }
        self.report(error, failed.len());
        failed
    }

    /// Publishes in order; waits for their acknowledgements.
    async fn send_publishes(&self, js: &jetstream::Context, batch: Vec<(u64, Write)>) -> Vec<(u64, Write)> {
        let mut pending = Vec::with_capacity(batch.len());
        for (id, write) in batch {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", write.msg_id.as_str());
            if let Some(mark) = write.mark {
                headers.insert(mark, "1");
            }
            // Bounded: while NATS is unreachable the client's queue fills,
            // and the batch is better failed (and sent again) than stuck.
            let send = js.publish_with_headers(write.subject.clone(), headers, write.payload.clone());
            let sent = match tokio::time::timeout(SEND_WAIT, send).await {
                Ok(sent) => sent.map_err(|e| e.to_string()),
                Err(_) => Err("NATS did not take the write in time".to_string()),
            };
            pending.push((id, write, sent));
        }
        let mut failed = Vec::new();
        let mut error = None;
        let acks = futures_util::future::join_all(pending.into_iter().map(|(id, write, sent)| async move {
            let ack = match sent {
                Ok(ack) => ack.await.map_err(|e| e.to_string()),
                Err(e) => Err(e),
            };
            (id, write, ack)
        }))
        .await;
        for (id, write, ack) in acks {
            match ack {
                Ok(ack) => {
                    let size = write.size();
                    self.queued_bytes.fetch_sub(size, Ordering::AcqRel);
                    self.acknowledged(id, write.room.map(|room| (room, ack.sequence)));
                    if let Some(then) = write.then {
                        then(ack.sequence);
                    }
                }
                Err(e) => {
                    error = Some(e);
                    failed.push((id, write));
                }
            }
        }
        self.report(error, failed.len());
        failed
    }

    /// Marks the store's health after a round of writes.
    fn report(&self, error: Option<String>, failed: usize) {
        match error {
            Some(e) => self.health.failed(&StoreError::Io(format!(
                "JetStream did not acknowledge {failed} write(s) (quorum lost?): {e}"
            ))),
            None => self.health.worked(),
        }
    }
}

impl CommitBarrier for Writer {
    fn settle(&self) -> Result<(), StoreError> {
        let target = self.issued.load(Ordering::Acquire);
        let deadline = std::time::Instant::now() + SETTLE_WAIT;
        let mut progress = self.progress.lock();
        loop {
            if progress.acked >= target && progress.room_waiting.is_empty() {
                return Ok(());
            }
            if self.changed.wait_until(&mut progress, deadline).timed_out() {
                return Err(StoreError::Io(format!(
                    "JetStream has acknowledged writes up to {} of {target}",
                    progress.acked
                )));
            }
        }
    }
}

/// Whether a delete failed because the message is not in the stream (a
/// retry, or retention dropped it): what the delete wanted.
fn already_gone(error: &async_nats::jetstream::stream::DeleteMessageError) -> bool {
    use async_nats::jetstream::stream::DeleteMessageErrorKind;
    match error.kind() {
        DeleteMessageErrorKind::JetStream(e) => {
            e.error_code() == async_nats::jetstream::ErrorCode::NO_MESSAGE_FOUND
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_beyond_the_buffer_are_refused_until_acknowledged() {
        let (writer, _rx) = Writer::new(Arc::new(StoreHealth::default()), 100);
        let write = |n: usize| Write::publish("s".into(), "m".into(), Bytes::from(vec![0u8; n]));
        assert!(writer.write(write(60)).is_ok());
        assert!(
            writer.write(write(60)).is_err(),
            "160 bytes fit in a 100-byte buffer"
        );
        assert!(writer.write(write(30)).is_ok());
    }
}
