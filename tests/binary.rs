//! The `roomq` binary: flags, config errors, signals.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

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
    let (mut child, addr) = spawn_roomq(0, &["--memory".as_ref()]);
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
