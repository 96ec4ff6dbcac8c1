//! `rooms`: R rooms of K members; every member subscribes to its room and
//! publishes into it at a fixed rate. Plain topics (`lgrooms/{r}/msg/m{m}`)
//! by default; with `--chat` real room messages, each with a msg-id, so
//! every message takes a `seq`, a room-log record and a de-dup entry.

use std::num::NonZeroU16;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rmqtt_codec::types::QoS;
use tokio::io::AsyncWriteExt;
use tokio_util::codec::Encoder;

use crate::conn::{publish_packet, Conn};
use crate::measure::{payload, report, PublisherReport, Received};
use crate::{Args, Targets};

/// The workload of a `rooms` run.
pub struct Shape {
    pub rooms: usize,
    pub members: usize,
    /// Messages per second per member.
    pub rate: f64,
    /// Real room messages instead of plain topics.
    pub chat: bool,
    /// Log members in with HS256 tokens signed with this secret.
    pub jwt_secret: Option<String>,
    /// All members of a room on one of the targets (a cluster node).
    pub room_per_node: bool,
}

impl Shape {
    /// Member `m` of room `r`: its name (client id and, with a token,
    /// username), the filter it subscribes to and the topic it posts to
    /// (`{id}` is replaced by the msg-id).
    fn member(&self, r: usize, m: usize) -> (String, String, String) {
        if self.chat {
            let name = format!("lg{r}m{m}");
            let topic = format!("rooms/lg{r}/msg/{name}/{{id}}");
            (name, format!("rooms/lg{r}/msg/+"), topic)
        } else {
            let name = format!("lg-room{r}-m{m}-{}", std::process::id());
            (
                name,
                format!("lgrooms/{r}/msg/+"),
                format!("lgrooms/{r}/msg/m{m}"),
            )
        }
    }

    /// A token for `name`, valid for a day.
    fn token(&self, name: &str) -> std::io::Result<Option<String>> {
        let Some(secret) = &self.jwt_secret else {
            return Ok(None);
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(std::io::Error::other)?
            .as_secs();
        let claims = serde_json::json!({ "sub": name, "exp": now + 86_400 });
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
        .map(Some)
        .map_err(std::io::Error::other)
    }
}

pub async fn run(args: Arc<Args>, addrs: &Targets, shape: Shape) -> std::io::Result<()> {
    let qos = args.qos();
    let (rooms, members) = (shape.rooms, shape.members);
    let mut subs = Vec::new();
    let mut writers = Vec::new();
    for r in 0..rooms {
        for m in 0..members {
            let (name, filter, topic) = shape.member(r, m);
            let token = shape.token(&name)?;
            let login = token.as_deref().map(|t| (name.as_str(), t));
            let target = if shape.room_per_node { r } else { r * members + m };
            let mut conn = Conn::open_with(addrs.pick(target), &name, 300, true, login).await?;
            conn.subscribe(&filter, qos).await?;
            let received = Arc::new(Received::new(rooms * members));
            let (writer, codec) = conn.spawn_subscriber(received.clone());
            subs.push(received);
            writers.push((topic, writer, codec));
        }
    }
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    let period = Duration::from_secs_f64(1.0 / shape.rate);
    for (i, (topic, writer, mut codec)) in writers.into_iter().enumerate() {
        let stop = stop.clone();
        let size = args.payload;
        tasks.push(tokio::spawn(async move {
            // Spread the members over the first period.
            tokio::time::sleep(period.mul_f64((i % 1000) as f64 / 1000.0)).await;
            let mut tick = tokio::time::interval(period);
            let mut seq = 0u32;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let packet_id = (qos == QoS::AtLeastOnce)
                    .then(|| NonZeroU16::new((seq % 65535 + 1) as u16))
                    .flatten();
                // Unique per run: a broker de-duplicates a msg-id it saw
                // (within `dedup_window_secs`), also from an earlier run.
                let topic = topic.replace("{id}", &format!("{}-{seq}", std::process::id()));
                let publish = publish_packet(&topic, qos, packet_id, payload(size, i as u32, seq));
                let mut out = BytesMut::new();
                let _ = codec.encode(publish, &mut out);
                if writer.lock().await.write_all(&out).await.is_err() {
                    break;
                }
                seq += 1;
            }
            PublisherReport {
                sent: u64::from(seq),
                acked: u64::from(seq),
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(args.duration)).await;
    stop.store(true, Ordering::Relaxed);
    let mut reports = Vec::new();
    for t in tasks {
        reports.push(t.await.map_err(std::io::Error::other)?);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Each member expects every message sent in its room (its own included);
    // members are numbered room by room.
    let per_room: Vec<u64> = reports
        .chunks(members)
        .map(|room| room.iter().map(|r| r.sent).sum())
        .collect();
    let expected: Vec<u64> = (0..rooms * members).map(|i| per_room[i / members]).collect();
    let name = if shape.chat { "chat-rooms" } else { "rooms" };
    report(name, &args, started, &reports, &subs, &expected);
    Ok(())
}
