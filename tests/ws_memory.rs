//! A WebSocket client that sends pings and never reads the pongs holds at
//! most `ws_max_write_buffer_bytes` of the broker's memory. Before the
//! bound, tungstenite buffered every unsent pong (measured: 2.3 GB in 8 s).
//! In a binary of its own: the test reads its own process's RSS, which no
//! other test may move. The bound asserted is generous (tens of MiB
//! against the hundreds the pongs would take); `scripts/abuse` measures.

mod common;

use bytes::Bytes;
use common::*;
use futures_util::SinkExt;
use roomq::config::Limits;
use tokio_tungstenite::tungstenite::Message;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_client_that_pings_and_never_reads_holds_bounded_memory() {
    let broker = start_with(roomq::Config {
        limits: Limits {
            // Long enough that the connect timeout does not end the flood.
            connect_timeout_secs: 600,
            ..ws_config().limits
        },
        ..ws_config()
    })
    .await;
    let (mut ws, _) = ws_connect(broker.local_addr()).await;
    let before = rss_kib();
    // 1,000,000 pings: 127 MB of pongs if the broker kept them all.
    let ping = Bytes::from(vec![0u8; 125]);
    for _ in 0..1_000_000 {
        if ws.send(Message::Ping(ping.clone())).await.is_err() {
            break;
        }
    }
    let grown_mib = rss_kib().saturating_sub(before) / 1024;
    assert!(grown_mib < 48, "the process grew by {grown_mib} MiB");
    assert_eq!(broker.open_connections(), 1, "the broker still serves it");
}
