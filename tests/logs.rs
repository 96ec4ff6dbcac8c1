//! `log_format = "json"`: every line the `roomq` binary logs is a JSON
//! object; connection events carry client id, username and peer, and at
//! debug level a room message can be followed by its room, `seq` and
//! msg-id from its arrival to each subscriber.

mod common;

use std::io::{BufRead, BufReader};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::chat::{publish_with, send_and_ack, user5};
use common::*;
use rmqtt_codec::types::QoS;
use rmqtt_codec::v5::{self, Packet, PublishAckReason};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_carry_who_and_which_room_message() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("roomq.toml");
    std::fs::write(
        &config,
        "listen = \"127.0.0.1:0\"\nstorage = \"memory\"\nsys_interval_secs = 0\nlog_format = \"json\"\n",
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_roomq"))
        .arg("-c")
        .arg(&config)
        .env("RUST_LOG", "roomq=debug")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("roomq starts");
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let stderr = child.stderr.take().unwrap();
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    let parsed = || -> Vec<Value> {
        lines
            .lock()
            .unwrap()
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    };
    let wait_for = |what: &dyn Fn(&Value) -> bool| -> Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(found) = parsed().into_iter().find(|v| what(v)) {
                return found;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "never logged; got {:?}",
                parsed()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let listening = wait_for(&|v| v["message"] == "roomq listening");
    let addr = listening["local_addr"].as_str().unwrap().parse().unwrap();

    let mut bob = user5(addr, "bob-laptop", "bob").await;
    bob.subscribe5(1, &[("rooms/lobby/msg/+", opts(QoS::AtLeastOnce))])
        .await;
    let mut alice = user5(addr, "alice-phone", "alice").await;
    let ack = send_and_ack(
        &mut alice,
        publish_with("rooms/lobby/msg/alice/m-42", b"hi", Some(1), &[]),
    )
    .await;
    assert_eq!(ack.reason_code, PublishAckReason::Success);
    let got = bob.publish5().await;
    assert_eq!(&got.payload[..], b"hi");
    alice.send5(Packet::Disconnect(v5::Disconnect::default())).await;

    let connected = wait_for(&|v| v["message"] == "client connected" && v["client_id"] == "alice-phone");
    assert_eq!(connected["username"], "alice");
    assert!(
        connected["peer"]
            .as_str()
            .is_some_and(|p| p.starts_with("127.0.0.1:")),
        "{connected}"
    );
    let gone = wait_for(&|v| v["message"] == "client disconnected" && v["client_id"] == "alice-phone");
    assert_eq!(
        (gone["username"].clone(), gone["reason"].clone()),
        ("alice".into(), "normal".into())
    );
    assert!(gone["peer"].is_string(), "{gone}");

    // The room message, end to end: received (msg-id), stored (seq), sent
    // to bob (seq).
    let received = wait_for(&|v| v["message"] == "room message received" && v["msg_id"] == "m-42");
    assert_eq!(received["room"], "lobby");
    let stored = wait_for(&|v| v["message"] == "room message stored" && v["msg_id"] == "m-42");
    let seq = stored["seq"].as_u64().expect("seq");
    let sent = wait_for(&|v| v["message"] == "room message sent" && v["client_id"] == "bob-laptop");
    assert_eq!(
        (sent["room"].clone(), sent["seq"].as_u64()),
        ("lobby".into(), Some(seq))
    );
    let _ = child.kill();
    let _ = child.wait();
    // Every line, to the last, was JSON.
    parsed();
}
