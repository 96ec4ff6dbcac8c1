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
    assert_eq!(config.limits.max_connections, 7, "file layer");
    assert_eq!(config.limits.max_inflight_messages, 11, "flags override the file");

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

/// Accepts only alice/secret, so the test sees what CONNECT carried.
struct OnlyAlice;

impl roomq::auth::Authenticator for OnlyAlice {
    fn authenticate(&self, r: &roomq::auth::AuthRequest<'_>) -> roomq::auth::AuthDecision {
        match (r.username, r.password) {
            (Some("alice"), Some(b"secret")) => roomq::auth::AuthDecision::Allow(Default::default()),
            (None, _) => roomq::auth::AuthDecision::NotAuthorized,
            _ => roomq::auth::AuthDecision::BadCredentials,
        }
    }
}

#[tokio::test]
async fn username_and_password_reach_the_auth_hook() {
    use rmqtt_codec::v3;
    use rmqtt_codec::v5::ConnectAckReason;
    let broker = roomq::Broker::new(test_config())
        .with_authenticator(std::sync::Arc::new(OnlyAlice))
        .start()
        .await
        .unwrap();
    let addr = broker.local_addr();
    let login = |user: &str, pass: &'static [u8]| {
        let mut c = connect5("who");
        c.username = Some(user.into());
        c.password = Some(bytes::Bytes::from_static(pass));
        c
    };
    let (_ok, ack) = Raw::connect5(addr, login("alice", b"secret")).await;
    assert_eq!(ack.reason_code, ConnectAckReason::Success);
    let (_bad, ack) = Raw::connect5(addr, login("alice", b"guess")).await;
    assert_eq!(ack.reason_code, ConnectAckReason::BadUserNameOrPassword);
    let (_anon, ack) = Raw::connect5(addr, connect5("nobody")).await;
    assert_eq!(ack.reason_code, ConnectAckReason::NotAuthorized);
    let mut c3 = connect3("who3", true);
    c3.username = Some("alice".into());
    c3.password = Some(bytes::Bytes::from_static(b"guess"));
    let (_bad3, ack) = Raw::connect3(addr, c3).await;
    assert_eq!(ack.return_code, v3::ConnectAckReason::BadUserNameOrPassword);
    assert_eq!(broker.metrics().auth_failures.get(), 3);
    broker.shutdown().await;
}
