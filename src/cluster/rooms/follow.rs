//! Reading one room (or every room) from the cluster: the catch-up from
//! the stream, the live copies, and the checks that find lost ones
//! (`rooms/mod.rs` says when a node reads a room).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_nats::jetstream::{self, consumer};
use async_nats::HeaderMap;
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::super::sanctions::MARK;
use super::{Inner, Nudge, RoomSink, RoomWire, CATCH_UP_IDLE, CHECK_WHEN_QUIET, EXPECT_WAIT, FOLLOW_RETRY};

impl Inner {
    pub(super) fn sink(&self) -> Option<&Arc<dyn RoomSink>> {
        self.sink.get()
    }

    pub(super) fn last_applied(&self, room: &str) -> u64 {
        self.sink().map_or(0, |s| s.last_applied(room))
    }

    /// Decodes and applies one stored room message, or a sanction's copy
    /// (marked by its header): applied before anything after it.
    pub(super) fn apply(&self, room: &str, seq: u64, headers: Option<&HeaderMap>, payload: &[u8]) {
        if headers.is_some_and(|h| h.get(MARK).is_some()) {
            self.sanctions.receive_room_copy(room, seq, payload);
            if let Some(sink) = self.sink() {
                sink.skip(room, seq);
            }
            self.writer.applied(room, seq);
            return;
        }
        self.received.fetch_add(1, Ordering::Relaxed);
        match postcard::from_bytes::<RoomWire>(payload) {
            Ok(wire) => {
                if let Some(sink) = self.sink() {
                    sink.apply(room, seq, wire.record, wire.publisher.map(Into::into));
                }
            }
            Err(error) => {
                tracing::error!(%room, seq, %error, "undecodable room message in the stream skipped")
            }
        }
        self.writer.applied(room, seq);
    }

    /// Reads from the stream every message of `room` after the last one
    /// this node holds, up to the stream's last one now.
    pub(super) async fn catch_up(&self, room: &str) -> Result<(), String> {
        let subject = self.names.room(room);
        let stream = self
            .js
            .get_stream_no_info(&self.names.rooms_stream)
            .await
            .map_err(|e| e.to_string())?;
        let last_in_stream = match stream.get_last_raw_message_by_subject(&subject).await {
            Ok(message) => message.sequence,
            Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => return Ok(()),
            Err(e) => return Err(e.to_string()),
        };
        let from = self.last_applied(room) + 1;
        if from > last_in_stream {
            return Ok(());
        }
        let consumer = stream
            .create_consumer(consumer::push::OrderedConfig {
                deliver_subject: self.client.new_inbox(),
                filter_subject: subject,
                deliver_policy: consumer::DeliverPolicy::ByStartSequence { start_sequence: from },
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
        loop {
            let message = match tokio::time::timeout(CATCH_UP_IDLE, messages.next()).await {
                Ok(Some(message)) => message.map_err(|e| e.to_string())?,
                Ok(None) => return Err("the catch-up consumer ended".into()),
                Err(_) => return Err(format!("no message from the catch-up consumer of room {room:?}")),
            };
            let seq = message.info().map_err(|e| e.to_string())?.stream_sequence;
            self.apply(room, seq, message.headers.as_ref(), &message.payload);
            if seq >= last_in_stream {
                return Ok(());
            }
        }
    }
}

/// Follows one room until the task is aborted (the room no longer has
/// interest here).
pub(super) async fn follow_room(
    inner: Arc<Inner>,
    room: Arc<str>,
    ready: watch::Sender<bool>,
    mut nudges: mpsc::UnboundedReceiver<Nudge>,
) {
    loop {
        if let Err(error) = follow_room_once(&inner, &room, &ready, &mut nudges).await {
            tracing::warn!(%room, %error, "following the room failed; resuming");
            tokio::time::sleep(FOLLOW_RETRY).await;
        }
    }
}

async fn follow_room_once(
    inner: &Inner,
    room: &str,
    ready: &watch::Sender<bool>,
    nudges: &mut mpsc::UnboundedReceiver<Nudge>,
) -> Result<(), String> {
    // Subscribed before the catch-up reads the stream, so nothing stored
    // in between is missed (what comes twice is applied once).
    let mut live = inner
        .client
        .subscribe(inner.names.live_room(room))
        .await
        .map_err(|e| e.to_string())?;
    inner.client.flush().await.map_err(|e| e.to_string())?;
    inner.catch_up(room).await?;
    ready.send_replace(true);
    let mut resync = inner.resync.subscribe();
    let mut check_at = Some(Instant::now() + CHECK_WHEN_QUIET);
    let mut expected = 0u64;
    let mut expect_at: Option<Instant> = None;
    loop {
        tokio::select! {
            message = live.next() => {
                let Some(message) = message else {
                    return Err("the live subscription ended".into());
                };
                on_live(inner, room, &message).await?;
                check_at = Some(Instant::now() + CHECK_WHEN_QUIET);
            }
            nudge = nudges.recv() => match nudge {
                Some(Nudge::Expect(seq)) => {
                    if seq > inner.last_applied(room) {
                        expected = expected.max(seq);
                        expect_at.get_or_insert_with(|| Instant::now() + EXPECT_WAIT);
                    }
                }
                None => return Ok(()),
            },
            _ = resync.changed() => inner.catch_up(room).await?,
            _ = sleep_until_opt(expect_at) => {
                expect_at = None;
                if expected > inner.last_applied(room) {
                    tracing::debug!(%room, expected, "an acknowledged post did not come back live; reading it from the stream");
                    inner.catch_up(room).await?;
                }
            }
            _ = sleep_until_opt(check_at) => {
                check_at = None;
                inner.catch_up(room).await?;
            }
        }
    }
}

/// One republished copy: applied when it follows the last message this
/// node holds, after the missing ones are read from the stream when not.
async fn on_live(inner: &Inner, room: &str, message: &async_nats::Message) -> Result<(), String> {
    let header = |name: &str| -> Option<u64> {
        message
            .headers
            .as_ref()
            .and_then(|h| h.get(name))
            .and_then(|v| v.as_str().parse().ok())
    };
    let (Some(seq), Some(prev)) = (header("Nats-Sequence"), header("Nats-Last-Sequence")) else {
        tracing::error!(subject = %message.subject, "a republished room message without its sequence headers skipped");
        return Ok(());
    };
    let last = inner.last_applied(room);
    if seq <= last {
        return Ok(());
    }
    if prev > last {
        // Copies were lost (a reconnect, a leader change): read them.
        tracing::debug!(%room, last, prev, seq, "gap in the live room messages; reading it from the stream");
        return inner.catch_up(room).await;
    }
    inner.apply(room, seq, message.headers.as_ref(), &message.payload);
    Ok(())
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Follows the whole room stream (a subscription here covers every room),
/// until the task is aborted.
pub(super) async fn follow_everything(inner: Arc<Inner>, ready: watch::Sender<bool>) {
    loop {
        if let Err(error) = follow_everything_once(&inner, &ready).await {
            tracing::warn!(%error, "following the room stream failed; resuming");
            tokio::time::sleep(FOLLOW_RETRY).await;
        }
    }
}

async fn follow_everything_once(inner: &Inner, ready: &watch::Sender<bool>) -> Result<(), String> {
    // From the first message: the rooms this node did not follow are read
    // whole; what it holds is skipped by `seq`.
    let (last_at_start, mut stream, mut messages) = super::super::read_stream(
        &inner.js,
        &inner.names.rooms_stream,
        inner.names.rooms(),
        consumer::DeliverPolicy::All,
    )
    .await?;
    if last_at_start == 0 {
        ready.send_replace(true);
    }
    let mut seen = 0;
    loop {
        let message = super::super::next_or_stalled(&mut stream, &mut messages, seen).await?;
        let seq = message.info().map_err(|e| e.to_string())?.stream_sequence;
        seen = seq;
        match inner.names.room_of(&message.subject) {
            Some(room) => inner.apply(&room, seq, message.headers.as_ref(), &message.payload),
            None => {
                tracing::error!(subject = %message.subject, seq, "a room message on an unknown subject skipped")
            }
        }
        if seq >= last_at_start {
            ready.send_replace(true);
        }
    }
}
