//! `retained`: set N retained messages (pipelined publishers), then time
//! (a) a SUBSCRIBE to `bench/{run}/#` until every retained message has
//! arrived, on a fresh connection each repeat, and (b) SUBSCRIBEs to exact
//! topics until their SUBACK and their one retained message.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;

use crate::conn::Conn;
use crate::curve::{await_suback, fill, next_publish, send_subscribe, summary, Load};
use crate::Args;

/// Retained messages one publisher sets: roomq's default
/// `max_retained_messages_per_user` is 10,000.
const PER_PUBLISHER: u64 = 10_000;
/// How long the stream of retained messages may pause before the rest
/// counts as missing.
const QUIET_LIMIT: Duration = Duration::from_secs(10);

/// The shape of a `retained` run.
pub struct Shape {
    pub count: u64,
    pub publishers: usize,
    pub window: u64,
    pub repeat: usize,
    pub exact: usize,
}

/// The topic of retained message `i`: two levels under the run's prefix,
/// so the wildcard walks a tree, not one flat level.
fn topic(prefix: &str, i: u64) -> String {
    format!("{prefix}/{}/{}", i / 1000, i % 1000)
}

pub async fn run(args: Arc<Args>, addr: SocketAddr, shape: Shape) -> std::io::Result<()> {
    let qos = args.qos();
    let tag = format!("lgr{}", std::process::id());
    let prefix = format!("bench/{tag}");
    let publishers = shape
        .publishers
        .max(shape.count.div_ceil(PER_PUBLISHER) as usize)
        .max(1);
    let started = Instant::now();
    let p2 = prefix.clone();
    let acked = fill(
        addr,
        Load {
            publishers,
            count: shape.count,
            window: shape.window,
            retain: true,
            payload: args.payload,
        },
        |p| format!("{tag}p{p}"),
        Arc::new(move |_p: usize, i: u64| topic(&p2, i)),
    )
    .await?;
    let fill_secs = started.elapsed().as_secs_f64();
    // (a) the wildcard: SUBACK, then every retained message.
    let (mut suback, mut all, mut missing) = (Vec::new(), Vec::new(), 0u64);
    for r in 0..shape.repeat {
        let mut conn = Conn::open(addr, &format!("{tag}w{r}"), 300).await?;
        let started = Instant::now();
        send_subscribe(&mut conn, 1, &[format!("{prefix}/#")], qos).await?;
        let (before, _) = await_suback(&mut conn, 1, Duration::from_secs(60)).await?;
        suback.push(started.elapsed());
        let mut received = before.len() as u64;
        while received < acked {
            match next_publish(&mut conn, QUIET_LIMIT).await? {
                Some(_) => received += 1,
                None => break,
            }
        }
        if received >= acked {
            all.push(started.elapsed());
        } else {
            missing += acked - received;
        }
    }
    // (b) exact filters, one after the other on one connection.
    let mut exact = Vec::new();
    let mut unanswered = 0usize;
    let mut conn = Conn::open(addr, &format!("{tag}x"), 300).await?;
    let mut rng = rand::rng();
    for k in 0..shape.exact {
        let i = rng.random_range(0..acked.max(1));
        let id = (k % 65_000 + 2) as u16;
        let started = Instant::now();
        send_subscribe(&mut conn, id, &[topic(&prefix, i)], qos).await?;
        let (before, _) = await_suback(&mut conn, id, Duration::from_secs(60)).await?;
        let got = !before.is_empty() || next_publish(&mut conn, QUIET_LIMIT).await?.is_some();
        if got {
            exact.push(started.elapsed());
        } else {
            unanswered += 1;
        }
    }
    println!(
        "retained: count={} acked={acked} qos={} set={:.1}s set-rate={:.0}/s {} {} missing={missing} {} unanswered={unanswered}",
        shape.count,
        args.qos,
        fill_secs,
        acked as f64 / fill_secs.max(1e-9),
        summary("wildcard-suback", &mut suback),
        summary("wildcard-all", &mut all),
        summary("exact", &mut exact),
    );
    Ok(())
}
