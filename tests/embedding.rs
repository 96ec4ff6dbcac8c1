//! The library API: in-process publish and subscribe, next to socket
//! clients, and shutdown.

mod common;

use common::*;
use rmqtt_codec::types::QoS;

#[tokio::test]
async fn in_process_client_talks_to_socket_clients() {
    let broker = start().await;
    let local = broker.subscribe("sensors/+", QoS::AtLeastOnce).unwrap();
    let mut raw = Raw::client5(broker.local_addr(), "device").await;
    raw.publish1_5(1, "sensors/t1", b"21.5").await;
    let m = tokio::time::timeout(WAIT, local.recv()).await.unwrap();
    assert_eq!((&*m.topic, &m.payload[..]), ("sensors/t1", &b"21.5"[..]));

    raw.subscribe5(2, &[("commands", opts(QoS::AtLeastOnce))]).await;
    assert_eq!(broker.publish("commands", "reboot", QoS::AtLeastOnce, false), 1);
    assert_eq!(&raw.publish5().await.payload[..], b"reboot");
    assert!(broker.subscribe("bad/#/filter", QoS::AtMostOnce).is_err());
    drop(local);
    assert_eq!(
        broker.publish("sensors/t1", "x", QoS::AtMostOnce, false),
        0,
        "dropping unsubscribes"
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn config_layers_and_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("roomq.toml");
    std::fs::write(&file, "max_connections = 7\nmax_inflight_messages = 9\n").unwrap();
    let config = roomq::Config::load(Some(&file), &[("max_inflight_messages", "11".into())]).unwrap();
    assert_eq!(config.max_connections, 7, "file layer");
    assert_eq!(config.max_inflight_messages, 11, "flags override the file");

    std::fs::write(&file, "max_connections = \"many\"\n").unwrap();
    let err = roomq::Config::load(Some(&file), &[]).unwrap_err().to_string();
    assert!(
        err.contains("roomq.toml") && err.contains("max_connections"),
        "{err}"
    );
    std::fs::write(&file, "max_conections = 5\n").unwrap();
    let err = roomq::Config::load(Some(&file), &[]).unwrap_err().to_string();
    assert!(err.contains("max_conections"), "unknown key named: {err}");
    let err = roomq::Config::load(Some(&dir.path().join("missing.toml")), &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing.toml"), "{err}");
}
