//! The `roomq` binary: flags, config errors, signals.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

/// Starts the binary on a free port and returns it with its address, read
/// from the "roomq listening" log line.
fn spawn_roomq(extra: &[&str]) -> (Child, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_roomq"))
        .args(["--listen", "127.0.0.1:0", "--sys-interval-secs", "0"])
        .args(extra)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("roomq starts");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("local_addr=").nth(1) {
                let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                let _ = tx.send(addr);
            }
        }
    });
    let addr = rx
        .recv_timeout(WAIT)
        .expect("listening line")
        .parse()
        .expect("address");
    (child, addr)
}

#[test]
fn bad_config_stops_startup_naming_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken.toml");
    std::fs::write(&file, "max_packet_size = -5\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_roomq"))
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("broken.toml") && err.contains("max_packet_size"),
        "{err}"
    );
}

#[tokio::test]
async fn serves_clients_and_stops_on_sigterm() {
    let (mut child, addr) = spawn_roomq(&["--memory"]);
    let mut sub = Raw::client5(addr, "bin-sub").await;
    sub.subscribe5(1, &[("bin", opts(rmqtt_codec::types::QoS::AtLeastOnce))])
        .await;
    let mut publisher = Raw::client5(addr, "bin-pub").await;
    publisher.publish1_5(1, "bin", b"hello").await;
    assert_eq!(&sub.publish5().await.payload[..], b"hello");

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(
        sub.expect_disconnect5().await,
        rmqtt_codec::v5::DisconnectReasonCode::ServerShuttingDown
    );
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if let Some(code) = child.try_wait().unwrap() {
            assert!(code.success(), "exit status {code}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "roomq did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
