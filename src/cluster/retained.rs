//! Retained messages in a cluster: a JetStream stream with one subject per
//! topic that keeps only the last message of each (an empty one clears
//! it). Every node reads the whole stream at start and follows it, keeping
//! its own retained index (like nats-server's own MQTT support does), so a
//! SUBSCRIBE is answered from memory on any node.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use tokio::sync::watch;

use super::names::Names;
use crate::message::Message;
use crate::protocol::QoS;
use crate::store::MessageRecord;

const FOLLOW_RETRY: Duration = Duration::from_millis(500);

/// Sets (or, with an empty payload, clears) a retained message here.
pub(crate) type ApplyRetained = Arc<dyn Fn(Message) + Send + Sync>;

/// Follows the retained stream; sets `caught_up` once the messages that
/// were there at start are applied.
pub(crate) async fn follow(
    js: jetstream::Context,
    names: Names,
    apply: ApplyRetained,
    caught_up: watch::Sender<bool>,
) {
    loop {
        if let Err(error) = follow_once(&js, &names, &apply, &caught_up).await {
            tracing::warn!(%error, "following the retained stream failed; resuming");
            tokio::time::sleep(FOLLOW_RETRY).await;
        }
    }
}

async fn follow_once(
    js: &jetstream::Context,
    names: &Names,
    apply: &ApplyRetained,
    caught_up: &watch::Sender<bool>,
) -> Result<(), String> {
    let (last_at_start, mut stream, mut messages) = super::read_stream(
        js,
        &names.retained_stream,
        names.retained_all(),
        consumer::DeliverPolicy::LastPerSubject,
    )
    .await?;
    if last_at_start == 0 {
        caught_up.send_replace(true);
    }
    // With the last message per topic, superseded sequences are skipped:
    // start from the stream's last one.
    let mut seen = last_at_start;
    loop {
        let message = super::next_or_stalled(&mut stream, &mut messages, seen).await?;
        let info = message.info().map_err(|e| e.to_string())?;
        let (seq, pending) = (info.stream_sequence, info.pending);
        seen = seen.max(seq);
        let Some(topic) = names.topic_of_retained(&message.subject) else {
            continue;
        };
        if message.payload.is_empty() {
            apply(Message::new(topic, bytes::Bytes::new(), QoS::AtMostOnce, true));
        } else {
            match postcard::from_bytes::<MessageRecord>(&message.payload) {
                Ok(record) => apply(record.into_message()),
                Err(error) => {
                    tracing::error!(%topic, %error, "undecodable retained message in the stream skipped")
                }
            }
        }
        if seq >= last_at_start || pending == 0 {
            caught_up.send_replace(true);
        }
    }
}
