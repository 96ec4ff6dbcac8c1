//! `startup` (roomq only): fill a store with M room messages and S
//! persistent sessions (each following a room), kill the broker with
//! SIGKILL, and time restarts until the first CONNACK, and until a kept
//! session is resumed. The loadgen starts the broker itself (`--binary`,
//! `--data-dir`, listening on `--port`); a data directory that is not
//! empty is reused as it is (no fill), so restarts can be timed again.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rmqtt_codec::types::QoS;
use rmqtt_codec::v3::Packet;
use tokio::process::{Child, Command};

use crate::conn::Conn;
use crate::curve::{fill, open_many, summary, Load};
use crate::Args;

/// How long a start may take before the run fails.
const START_LIMIT: Duration = Duration::from_secs(600);
/// Names of this scenario's clients and rooms: fixed, so that a reused
/// store's sessions are found again.
const TAG: &str = "lgst";

/// The shape of a `startup` run.
pub struct Shape {
    pub binary: PathBuf,
    pub data_dir: PathBuf,
    pub messages: u64,
    pub sessions: usize,
    pub rooms: usize,
    pub publishers: usize,
    pub window: u64,
    pub restarts: usize,
}

/// Starts the broker and waits for its first CONNACK; returns it and the
/// time that took.
async fn start(shape: &Shape, addr: SocketAddr) -> std::io::Result<(Child, Duration)> {
    let started = Instant::now();
    let mut child = Command::new(&shape.binary)
        .arg("--listen")
        .arg(addr.to_string())
        .arg("--data-dir")
        .arg(&shape.data_dir)
        .args(["--sys-interval-secs", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    loop {
        if Conn::open(addr, &format!("{TAG}-probe"), 60).await.is_ok() {
            return Ok((child, started.elapsed()));
        }
        if let Some(status) = child.try_wait()? {
            return Err(std::io::Error::other(format!("the broker exited: {status}")));
        }
        if started.elapsed() > START_LIMIT {
            return Err(std::io::Error::other(
                "the broker did not answer a CONNECT in time",
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Bytes of the files under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// S persistent sessions, session `i` following room `i mod rooms`.
async fn make_sessions(addr: SocketAddr, sessions: usize, rooms: usize) -> std::io::Result<()> {
    open_many(sessions, move |i| async move {
        let mut conn = Conn::open_with(addr, &format!("{TAG}s{i}"), 300, false, None).await?;
        conn.subscribe(
            &format!("rooms/{TAG}{}/msg/+", i % rooms.max(1)),
            QoS::AtLeastOnce,
        )
        .await?;
        conn.send(Packet::Disconnect).await
    })
    .await
    .map(drop)
}

pub async fn run(args: Arc<Args>, addr: SocketAddr, shape: Shape) -> std::io::Result<()> {
    let reused = std::fs::read_dir(&shape.data_dir).is_ok_and(|mut d| d.next().is_some());
    let (mut child, _) = start(&shape, addr).await?;
    let mut acked = 0;
    let filled_at = Instant::now();
    if !reused {
        make_sessions(addr, shape.sessions, shape.rooms).await?;
        let rooms = shape.rooms.max(1) as u64;
        acked = fill(
            addr,
            Load {
                publishers: shape.publishers,
                count: shape.messages,
                window: shape.window,
                retain: false,
                payload: args.payload,
            },
            |p| format!("{TAG}p{p}"),
            Arc::new(move |p: usize, i: u64| format!("rooms/{TAG}{}/msg/{TAG}p{p}", i % rooms)),
        )
        .await?;
    }
    let fill_secs = filled_at.elapsed().as_secs_f64();
    let (mut first, mut resume) = (Vec::new(), Vec::new());
    for _ in 0..shape.restarts.max(1) {
        child.start_kill()?;
        child.wait().await?;
        let (next, took) = start(&shape, addr).await?;
        child = next;
        first.push(took);
        let started = Instant::now();
        let conn = Conn::open_with(addr, &format!("{TAG}s0"), 300, false, None).await?;
        resume.push(started.elapsed());
        drop(conn);
    }
    child.start_kill()?;
    child.wait().await?;
    // A reused store holds what an earlier run put there, not this shape.
    let shown = |n: String| if reused { "-".to_string() } else { n };
    println!(
        "startup: messages={} acked={acked} sessions={} rooms={} reused={reused} fill={fill_secs:.1}s store={:.1}MB restarts={} {} {}",
        shown(shape.messages.to_string()),
        shown(shape.sessions.to_string()),
        shown(shape.rooms.to_string()),
        dir_bytes(&shape.data_dir) as f64 / 1e6,
        shape.restarts.max(1),
        summary("first-connack", &mut first),
        summary("resume", &mut resume),
    );
    Ok(())
}
