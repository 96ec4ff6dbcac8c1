//! Helpers shared by the scale-curve scenarios (`room-size`, `history`,
//! `retained`, `subscribe-rooms`, `startup`): percentiles of timed
//! operations, many connections opened at once, and a pipelined QoS 1
//! publisher that fills the broker fast.

use std::future::Future;
use std::num::NonZeroU16;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rmqtt_codec::types::QoS;
use rmqtt_codec::v3::Packet;

use crate::conn::Conn;
use crate::measure::payload;

/// Connections opened at once while a scenario sets up: enough to hide the
/// round trips, few enough not to look like a connection storm.
const OPEN_CONCURRENCY: usize = 64;

/// `{name}-p50=… {name}-p99=… {name}-max=…` (milliseconds) of timed
/// operations: every figure of a summary line is one `key=value`, so
/// `scripts/bench-curves` can tabulate it.
pub fn summary(name: &str, times: &mut [Duration]) -> String {
    if times.is_empty() {
        return format!("{name}-p50=- {name}-p99=- {name}-max=-");
    }
    times.sort();
    let at = |q: f64| {
        let i = ((times.len() as f64 * q).ceil() as usize).clamp(1, times.len()) - 1;
        times[i].as_secs_f64() * 1000.0
    };
    format!(
        "{name}-p50={:.2}ms {name}-p99={:.2}ms {name}-max={:.2}ms",
        at(0.5),
        at(0.99),
        at(1.0)
    )
}

/// Runs `open(i)` for `i` in `0..n`, at most `OPEN_CONCURRENCY` at once,
/// and returns the results in order; the first error stops it.
pub async fn open_many<T, F, Fut>(n: usize, open: F) -> std::io::Result<Vec<T>>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: Future<Output = std::io::Result<T>> + Send + 'static,
{
    let gate = Arc::new(tokio::sync::Semaphore::new(OPEN_CONCURRENCY));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let permit = gate
            .clone()
            .acquire_owned()
            .await
            .map_err(std::io::Error::other)?;
        let fut = open(i);
        tasks.push(tokio::spawn(async move {
            let result = fut.await;
            drop(permit);
            result
        }));
    }
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.map_err(std::io::Error::other)??);
    }
    Ok(out)
}

/// What one pipelined publisher sends.
pub struct Fill<'a> {
    pub count: u64,
    /// Most messages unacknowledged at once.
    pub window: u64,
    pub retain: bool,
    pub payload: usize,
    /// The topic of the `i`-th message.
    pub topic: &'a (dyn Fn(u64) -> String + Sync),
}

/// Publishes `fill.count` QoS 1 messages on `conn`, never more than
/// `fill.window` unacknowledged, and returns how many were acknowledged.
pub async fn publish_acked(conn: &mut Conn, fill: &Fill<'_>) -> std::io::Result<u64> {
    let window = fill.window.clamp(1, 65_000);
    let (mut sent, mut acked) = (0u64, 0u64);
    let mut out = BytesMut::with_capacity(64 * 1024);
    while acked < fill.count {
        while sent < fill.count && sent - acked < window {
            let packet = Packet::Publish(Box::new(rmqtt_codec::types::Publish {
                dup: false,
                retain: fill.retain,
                qos: QoS::AtLeastOnce,
                topic: (fill.topic)(sent).into(),
                packet_id: NonZeroU16::new((sent % 65_535 + 1) as u16),
                payload: payload(fill.payload, 0, sent as u32),
                properties: None,
            }));
            tokio_util::codec::Encoder::encode(&mut conn.codec, packet, &mut out)
                .map_err(std::io::Error::other)?;
            sent += 1;
        }
        if !out.is_empty() {
            tokio::io::AsyncWriteExt::write_all(&mut conn.writer, &out).await?;
            out.clear();
        }
        match tokio::time::timeout(Duration::from_secs(30), conn.next()).await {
            Ok(Ok(Some(Packet::PublishAck { .. }))) => acked += 1,
            Ok(Ok(Some(_))) => {}
            Ok(Ok(None)) => return Err(std::io::Error::other("connection closed while publishing")),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(std::io::Error::other("no PUBACK for 30 s")),
        }
    }
    Ok(acked)
}

/// How many messages a fill sends, and how.
pub struct Load {
    pub publishers: usize,
    pub count: u64,
    /// Messages in flight per publisher.
    pub window: u64,
    pub retain: bool,
    pub payload: usize,
}

/// Splits `load.count` messages over `load.publishers` pipelined
/// publishers, each connected as `name(p)` (its client id and, where names
/// are claims, its identity); `topic(p, i)` names message `i` (of
/// `0..count`, each sent once) from publisher `p`. Returns the number
/// acknowledged.
pub async fn fill(
    addr: std::net::SocketAddr,
    load: Load,
    name: impl Fn(usize) -> String,
    topic: Arc<dyn Fn(usize, u64) -> String + Send + Sync>,
) -> std::io::Result<u64> {
    let Load {
        publishers,
        count,
        window,
        retain,
        payload,
    } = load;
    let publishers = publishers.max(1);
    let mut tasks = Vec::new();
    let mut start = 0u64;
    for p in 0..publishers {
        // The first publishers take the remainder.
        let share = count / publishers as u64 + u64::from((p as u64) < count % publishers as u64);
        let first = start;
        start += share;
        let mut conn = Conn::open(addr, &name(p), 300).await?;
        let topic = topic.clone();
        tasks.push(tokio::spawn(async move {
            let one = move |i: u64| topic(p, first + i);
            let fill = Fill {
                count: share,
                window,
                retain,
                payload,
                topic: &one,
            };
            publish_acked(&mut conn, &fill).await
        }));
    }
    let mut acked = 0;
    for t in tasks {
        acked += t.await.map_err(std::io::Error::other)??;
    }
    Ok(acked)
}

/// A SUBSCRIBE of several filters in one packet, not waiting for the
/// SUBACK.
pub async fn send_subscribe(
    conn: &mut Conn,
    packet_id: u16,
    filters: &[String],
    qos: QoS,
) -> std::io::Result<()> {
    let id = NonZeroU16::new(packet_id.max(1)).ok_or_else(|| std::io::Error::other("packet id 0"))?;
    conn.send(Packet::Subscribe {
        packet_id: id,
        topic_filters: filters.iter().map(|f| (f.as_str().into(), qos)).collect(),
    })
    .await
}

/// Reads until the SUBACK of `packet_id`, acknowledging QoS 1 messages on
/// the way; returns the PUBLISHes read before it and how many filters the
/// SUBACK refused.
pub async fn await_suback(
    conn: &mut Conn,
    packet_id: u16,
    limit: Duration,
) -> std::io::Result<(Vec<Bytes>, usize)> {
    let mut before = Vec::new();
    let wait = async {
        loop {
            match conn.next().await? {
                Some(Packet::SubscribeAck {
                    packet_id: id,
                    status,
                }) if id.get() == packet_id => {
                    return Ok(status
                        .iter()
                        .filter(|s| matches!(s, rmqtt_codec::v3::SubscribeReturnCode::Failure))
                        .count())
                }
                Some(Packet::Publish(p)) => {
                    if let Some(id) = p.packet_id {
                        conn.send(Packet::PublishAck { packet_id: id }).await?;
                    }
                    before.push(p.payload.clone());
                }
                Some(_) => {}
                None => return Err(std::io::Error::other("connection closed before the SUBACK")),
            }
        }
    };
    let result = tokio::time::timeout(limit, wait).await;
    match result {
        Ok(Ok(refused)) => Ok((before, refused)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(std::io::Error::other("no SUBACK in time")),
    }
}

/// The next PUBLISH on `conn` within `limit` (QoS 1 acknowledged), or
/// `None` when none came.
pub async fn next_publish(conn: &mut Conn, limit: Duration) -> std::io::Result<Option<Bytes>> {
    let wait = async {
        loop {
            match conn.next().await? {
                Some(Packet::Publish(p)) => {
                    if let Some(id) = p.packet_id {
                        conn.send(Packet::PublishAck { packet_id: id }).await?;
                    }
                    return Ok(Some(p.payload.clone()));
                }
                Some(_) => {}
                None => return Err(std::io::Error::other("connection closed")),
            }
        }
    };
    tokio::time::timeout(limit, wait).await.unwrap_or(Ok(None))
}
