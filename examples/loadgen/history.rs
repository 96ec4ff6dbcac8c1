//! `history` (roomq only): fill one room's log with N messages (many
//! pipelined publishers), then time K history requests one after the
//! other: half for the newest page, half for a page before a random `seq`
//! (a deep page). Requests are spread over requesters so that none passes
//! `history_requests_per_minute` (120 by default).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ciborium::Value;
use rand::Rng;
use rmqtt_codec::types::QoS;

use crate::conn::{publish_packet, Conn};
use crate::curve::{fill, next_publish, summary, Load};
use crate::Args;

/// Requests one requester sends, below the default per-minute budget.
const REQUESTS_PER_REQUESTER: usize = 100;
/// How long an answer may take before the request counts as unanswered.
const ANSWER_LIMIT: Duration = Duration::from_secs(30);

/// The shape of a `history` run.
pub struct Shape {
    pub log: u64,
    pub requests: usize,
    pub limit: u64,
    pub publishers: usize,
    pub window: u64,
}

/// A CBOR `history-request` (`topics.md`).
fn request(limit: u64, before: Option<u64>, after: Option<u64>) -> std::io::Result<bytes::Bytes> {
    let mut map = vec![(Value::Text("limit".into()), Value::Integer(limit.into()))];
    if let Some(b) = before {
        map.push((Value::Text("before".into()), Value::Integer(b.into())));
    }
    if let Some(a) = after {
        map.push((Value::Text("after".into()), Value::Integer(a.into())));
    }
    let mut out = Vec::new();
    ciborium::into_writer(&Value::Map(map), &mut out).map_err(std::io::Error::other)?;
    Ok(out.into())
}

/// The `seq`s of a CBOR `history-response`, in order.
fn seqs(answer: &[u8]) -> Vec<u64> {
    let Ok(Value::Map(map)) = ciborium::from_reader::<Value, _>(answer) else {
        return Vec::new();
    };
    let Some((_, Value::Array(messages))) = map.iter().find(|(k, _)| k.as_text() == Some("messages")) else {
        return Vec::new();
    };
    messages
        .iter()
        .filter_map(|m| m.as_map())
        .filter_map(|m| m.iter().find(|(k, _)| k.as_text() == Some("seq")))
        .filter_map(|(_, v)| v.as_integer())
        .filter_map(|i| u64::try_from(i).ok())
        .collect()
}

/// One requester: a connection subscribed to its 3.1.1 answer topic.
struct Requester {
    conn: Conn,
    room: String,
}

impl Requester {
    async fn open(addr: SocketAddr, name: &str, room: &str) -> std::io::Result<Requester> {
        let mut conn = Conn::open(addr, name, 300).await?;
        conn.subscribe(&format!("users/{name}/history/#"), QoS::AtMostOnce)
            .await?;
        Ok(Requester {
            conn,
            room: room.to_string(),
        })
    }

    /// Sends one request and waits for its answer: the time and the
    /// answer's `seq`s (`None`: no answer in time).
    async fn ask(&mut self, payload: bytes::Bytes) -> std::io::Result<(Duration, Option<Vec<u64>>)> {
        let topic = format!("$history/rooms/{}", self.room);
        let started = Instant::now();
        self.conn
            .send(publish_packet(&topic, QoS::AtMostOnce, None, payload))
            .await?;
        let answer = next_publish(&mut self.conn, ANSWER_LIMIT).await?;
        Ok((started.elapsed(), answer.map(|a| seqs(&a))))
    }
}

pub async fn run(args: Arc<Args>, addr: SocketAddr, shape: Shape) -> std::io::Result<()> {
    let tag = format!("lgh{}", std::process::id());
    let room = tag.clone();
    let filled_at = Instant::now();
    let topic_room = room.clone();
    let topic = Arc::new(move |p: usize, _i: u64| format!("rooms/{topic_room}/msg/{}p{p}", topic_room));
    let acked = fill(
        addr,
        Load {
            publishers: shape.publishers,
            count: shape.log,
            window: shape.window,
            retain: false,
            payload: args.payload,
        },
        |p| format!("{tag}p{p}"),
        topic,
    )
    .await?;
    let fill_secs = filled_at.elapsed().as_secs_f64();
    let requesters = shape.requests.div_ceil(REQUESTS_PER_REQUESTER).max(1);
    let mut asking = Vec::with_capacity(requesters);
    for r in 0..requesters {
        asking.push(Requester::open(addr, &format!("{tag}r{r}"), &room).await?);
    }
    // What the log holds: its newest and its oldest `seq`.
    let (_, newest) = asking[0].ask(request(1, None, None)?).await?;
    let (_, oldest) = asking[0].ask(request(1, None, Some(0))?).await?;
    let newest = newest.and_then(|s| s.last().copied()).unwrap_or(0);
    let oldest = oldest.and_then(|s| s.first().copied()).unwrap_or(0);
    let kept = if newest >= oldest && newest > 0 {
        newest - oldest + 1
    } else {
        0
    };
    let (mut top, mut deep, mut unanswered, mut short) = (Vec::new(), Vec::new(), 0usize, 0usize);
    let mut rng = rand::rng();
    for k in 0..shape.requests {
        let requester = &mut asking[k / REQUESTS_PER_REQUESTER % requesters];
        let newest_page = k % 2 == 0;
        let before = (!newest_page && newest > oldest + shape.limit)
            .then(|| rng.random_range(oldest + shape.limit..=newest));
        let (took, answer) = requester.ask(request(shape.limit, before, None)?).await?;
        match answer {
            None => unanswered += 1,
            Some(seqs) => {
                if (seqs.len() as u64) < shape.limit.min(kept) {
                    short += 1;
                }
                if newest_page {
                    top.push(took)
                } else {
                    deep.push(took)
                }
            }
        }
    }
    println!(
        "history: log={} acked={acked} kept={kept} fill={:.1}s fill-rate={:.0}/s requests={} limit={} {} {} unanswered={unanswered} short={short}",
        shape.log,
        fill_secs,
        acked as f64 / fill_secs.max(1e-9),
        shape.requests,
        shape.limit,
        summary("newest", &mut top),
        summary("deep", &mut deep),
    );
    Ok(())
}
