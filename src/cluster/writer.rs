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
//! after the PUBACK finds the message).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
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

/// One write: a message for a stream subject.
pub(crate) struct Write {
    pub subject: String,
    /// JetStream de-duplicates by it: a retry is stored once.
    pub msg_id: String,
    pub payload: Bytes,
    /// A room message: the commit also waits until this node applied it.
    pub room: bool,
}

impl Write {
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
    /// Highest stream sequence acknowledged for a room message.
    room_seq_acked: u64,
    /// Highest stream sequence this node's room log has applied.
    room_seq_applied: u64,
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

    /// This node's room log applied every room message up to `seq`.
    pub fn applied(&self, seq: u64) {
        let mut progress = self.progress.lock();
        if seq > progress.room_seq_applied {
            progress.room_seq_applied = seq;
            self.changed.notify_all();
        }
    }

    fn acknowledged(&self, id: u64, room_seq: Option<u64>) {
        let mut progress = self.progress.lock();
        if let Some(seq) = room_seq {
            progress.room_seq_acked = progress.room_seq_acked.max(seq);
        }
        progress.acked_above.insert(id);
        while progress.acked_above.first() == Some(&(progress.acked + 1)) {
            progress.acked += 1;
            progress.acked_above.pop_first();
        }
        self.changed.notify_all();
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
            while batch.len() < MAX_BATCH {
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

    /// Sends a batch in order and waits for its acknowledgements; returns
    /// the writes that failed.
    async fn send_batch(&self, js: &jetstream::Context, batch: Vec<(u64, Write)>) -> Vec<(u64, Write)> {
        let mut pending = Vec::with_capacity(batch.len());
        for (id, write) in batch {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", write.msg_id.as_str());
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
                    self.acknowledged(id, write.room.then_some(ack.sequence));
                }
                Err(e) => {
                    error = Some(e);
                    failed.push((id, write));
                }
            }
        }
        match error {
            Some(e) => self.health.failed(&StoreError::Io(format!(
                "JetStream did not acknowledge {} write(s) (quorum lost?): {e}",
                failed.len()
            ))),
            None => self.health.worked(),
        }
        failed
    }
}

impl CommitBarrier for Writer {
    fn settle(&self) -> Result<(), StoreError> {
        let target = self.issued.load(Ordering::Acquire);
        let deadline = std::time::Instant::now() + SETTLE_WAIT;
        let mut progress = self.progress.lock();
        loop {
            if progress.acked >= target && progress.room_seq_applied >= progress.room_seq_acked {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_beyond_the_buffer_are_refused_until_acknowledged() {
        let (writer, _rx) = Writer::new(Arc::new(StoreHealth::default()), 100);
        let write = |n: usize| Write {
            subject: "s".into(),
            msg_id: "m".into(),
            payload: Bytes::from(vec![0u8; n]),
            room: false,
        };
        assert!(writer.write(write(60)).is_ok());
        assert!(
            writer.write(write(60)).is_err(),
            "160 bytes fit in a 100-byte buffer"
        );
        assert!(writer.write(write(30)).is_ok());
    }
}
