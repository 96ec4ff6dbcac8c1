//! `subscribe-rooms`: with N rooms open, time one SUBSCRIBE of F filters
//! (one per room, spread over the N) by a persistent session, and that
//! session's reconnect (CONNECT to CONNACK). With `--chat` the rooms are
//! roomq rooms (each opened by a first message); without it, for any
//! broker, N topics each held by a subscription of a helper connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rmqtt_codec::v3::Packet;

use crate::conn::Conn;
use crate::curve::{await_suback, fill, open_many, send_subscribe, summary, Load};
use crate::Args;

/// Rooms one identity opens: roomq's default `max_rooms_per_user` is 1,000.
const ROOMS_PER_OPENER: usize = 1000;
/// Filters per helper connection (plain topics): roomq's default
/// `max_subscriptions_per_session` is 1,000.
const FILTERS_PER_HELPER: usize = 1000;

/// The shape of a `subscribe-rooms` run.
pub struct Shape {
    pub rooms: usize,
    pub filters: usize,
    pub repeat: usize,
    pub chat: bool,
    pub window: u64,
}

pub async fn run(args: Arc<Args>, addr: SocketAddr, shape: Shape) -> std::io::Result<()> {
    let qos = args.qos();
    let tag = format!("lgsr{}", std::process::id());
    let filter = {
        let (tag, chat) = (tag.clone(), shape.chat);
        move |room: usize| {
            if chat {
                format!("rooms/{tag}x{room}/msg/+")
            } else {
                format!("lgsr/{tag}/{room}/msg/+")
            }
        }
    };
    let opened_at = Instant::now();
    // Keeps the helpers' subscriptions (plain topics) for the whole run.
    let mut _helpers = Vec::new();
    if shape.chat {
        let openers = shape.rooms.div_ceil(ROOMS_PER_OPENER).max(1);
        let t = tag.clone();
        fill(
            addr,
            Load {
                publishers: openers,
                count: shape.rooms as u64,
                window: shape.window,
                retain: false,
                payload: args.payload,
            },
            |p| format!("{tag}o{p}"),
            Arc::new(move |p: usize, i: u64| format!("rooms/{t}x{i}/msg/{t}o{p}")),
        )
        .await?;
    } else {
        let helpers = shape.rooms.div_ceil(FILTERS_PER_HELPER);
        let (rooms, t, f) = (shape.rooms, tag.clone(), filter.clone());
        _helpers = open_many(helpers, move |h| {
            let (t, f) = (t.clone(), f.clone());
            async move {
                let mut conn = Conn::open(addr, &format!("{t}h{h}"), 300).await?;
                let filters: Vec<String> = (h * FILTERS_PER_HELPER
                    ..((h + 1) * FILTERS_PER_HELPER).min(rooms))
                    .map(&f)
                    .collect();
                send_subscribe(&mut conn, 1, &filters, qos).await?;
                await_suback(&mut conn, 1, Duration::from_secs(60)).await?;
                Ok(conn)
            }
        })
        .await?;
    }
    let open_secs = opened_at.elapsed().as_secs_f64();
    // Filter `i` names a room spread over the N open ones (rooms beyond N,
    // when F > N, are not open).
    let filters: Vec<String> = (0..shape.filters)
        .map(|i| {
            if shape.rooms >= shape.filters {
                filter(i * shape.rooms / shape.filters)
            } else {
                filter(i)
            }
        })
        .collect();
    let (mut subscribe, mut reconnect, mut refused) = (Vec::new(), Vec::new(), 0usize);
    for r in 0..shape.repeat {
        let id = format!("{tag}s{r}");
        let mut conn = Conn::open_with(addr, &id, 300, false, None).await?;
        let started = Instant::now();
        send_subscribe(&mut conn, 1, &filters, qos).await?;
        let (_, no) = await_suback(&mut conn, 1, Duration::from_secs(60)).await?;
        subscribe.push(started.elapsed());
        refused += no;
        conn.send(Packet::Disconnect).await?;
        drop(conn);
        let started = Instant::now();
        let mut conn = Conn::open_with(addr, &id, 300, false, None).await?;
        reconnect.push(started.elapsed());
        conn.send(Packet::Disconnect).await?;
    }
    println!(
        "subscribe-rooms: rooms={} chat={} open={:.1}s filters={} {} {} refused={refused}",
        shape.rooms,
        shape.chat,
        open_secs,
        shape.filters,
        summary("subscribe", &mut subscribe),
        summary("reconnect", &mut reconnect),
    );
    Ok(())
}
