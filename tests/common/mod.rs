//! Helpers shared by the integration tests: start a broker in-process on
//! port 0, a raw-packet client built on the wire codec (for exact protocol
//! assertions), and rumqttc v4/v5 clients whose messages arrive on a channel.
#![allow(dead_code)]

pub mod chat;
pub mod cluster;
pub mod e2ee;
pub mod events;
pub mod fillable;
pub mod grafana;
pub mod http;
pub mod nats;
mod raw;
pub mod small_fs;

pub use raw::{Got, Raw};

use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::time::Duration;

use rmqtt_codec::v3;
use rmqtt_codec::v5;
use roomq::config::StoreConfig;
use roomq::{Broker, BrokerHandle, Config};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// How long a test waits for something that should happen.
pub const WAIT: Duration = Duration::from_secs(10);
/// How long a test waits to be sure something does not happen.
pub const QUIET: Duration = Duration::from_millis(400);

pub fn test_config() -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        sys_interval_secs: 0,
        store: StoreConfig {
            storage: roomq::StorageKind::Memory,
            ..Default::default()
        },
        ..Config::default()
    }
}

/// `test_config()` with the sled store in `dir`.
pub fn sled_config(dir: &std::path::Path) -> Config {
    Config {
        data_dir: dir.to_path_buf(),
        store: StoreConfig {
            storage: roomq::StorageKind::Sled,
            ..test_config().store
        },
        ..test_config()
    }
}

pub async fn start() -> BrokerHandle {
    start_with(test_config()).await
}

pub async fn start_with(config: Config) -> BrokerHandle {
    Broker::new(config).start().await.expect("broker starts")
}

/// `test_config()` with one `ws` listener on a free port instead of TCP.
pub fn ws_config() -> Config {
    Config {
        listeners: vec![roomq::config::ListenerConfig {
            kind: roomq::config::ListenerKind::Ws,
            ..roomq::config::ListenerConfig::tcp("127.0.0.1:0".parse().unwrap())
        }],
        ..test_config()
    }
}

/// A WebSocket client on `/mqtt` offering the sub-protocol `mqtt`, and the
/// broker's upgrade response.
pub async fn ws_connect(
    addr: SocketAddr,
) -> (
    tokio_tungstenite::WebSocketStream<TcpStream>,
    tokio_tungstenite::tungstenite::handshake::client::Response,
) {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let socket = TcpStream::connect(addr).await.expect("tcp connect");
    let mut request = format!("ws://{addr}/mqtt").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "mqtt".parse().unwrap());
    tokio_tungstenite::client_async(request, socket)
        .await
        .expect("WebSocket upgrade")
}

/// `claims` as an HS256 token signed with `secret` (the broker's
/// `auth.jwt_secret`).
pub fn jwt(secret: &str, claims: &serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("claims encode")
}

pub fn pid(n: u16) -> NonZeroU16 {
    NonZeroU16::new(n).unwrap()
}

pub fn connect5(id: &str) -> v5::Connect {
    v5::Connect {
        clean_start: true,
        client_id: id.into(),
        ..Default::default()
    }
}

/// A 5.0 CONNECT that resumes or creates a persistent session (Clean Start
/// 0, Session Expiry Interval one hour).
pub fn persistent5(id: &str) -> v5::Connect {
    let mut c = connect5(id);
    c.clean_start = false;
    c.session_expiry_interval_secs = 3600;
    c
}

pub fn connect3(id: &str, clean: bool) -> v3::Connect {
    v3::Connect {
        protocol: rmqtt_codec::types::Protocol(4),
        clean_session: clean,
        client_id: id.into(),
        ..Default::default()
    }
}

/// A CONNECT written byte by byte, so a test can make its flags and its
/// payload disagree: protocol `name` and `level`, Connect `flags`, keep-alive
/// 60, 5.0 `properties` (raw, after their length; `None` for 3.x), then each
/// payload field as a length-prefixed string.
pub fn raw_connect(
    name: &[u8],
    level: u8,
    flags: u8,
    properties: Option<&[u8]>,
    fields: &[&[u8]],
) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&(name.len() as u16).to_be_bytes());
    body.extend_from_slice(name);
    body.extend_from_slice(&[level, flags, 0, 60]);
    if let Some(props) = properties {
        body.push(props.len() as u8);
        body.extend_from_slice(props);
    }
    for field in fields {
        body.extend_from_slice(&(field.len() as u16).to_be_bytes());
        body.extend_from_slice(field);
    }
    let mut out = vec![0x10, body.len() as u8];
    out.extend(body);
    out
}

pub fn publish(
    topic: &str,
    payload: &'static [u8],
    qos: v5::QoS,
    id: Option<u16>,
) -> rmqtt_codec::types::Publish {
    rmqtt_codec::types::Publish {
        dup: false,
        retain: false,
        qos,
        topic: topic.into(),
        packet_id: id.map(pid),
        payload: bytes::Bytes::from_static(payload),
        properties: Some(v5::PublishProperties::default()),
    }
}

pub fn opts(qos: v5::QoS) -> v5::SubscriptionOptions {
    v5::SubscriptionOptions {
        qos,
        ..Default::default()
    }
}

/// What a rumqttc client received: its PUBLISHes (the receiver itself, by
/// deref), SUBACKs and PUBACKs, so a test waits for a subscription or a
/// stored message instead of sleeping.
pub struct Inbox<T> {
    publishes: mpsc::UnboundedReceiver<T>,
    subacks: mpsc::UnboundedReceiver<()>,
    pubacks: mpsc::UnboundedReceiver<()>,
}

/// Takes `count` signals from `acks` within `WAIT` each, or fails the test.
async fn take_acks(acks: &mut mpsc::UnboundedReceiver<()>, count: usize, what: &str) {
    for _ in 0..count {
        tokio::time::timeout(WAIT, acks.recv())
            .await
            .unwrap_or_else(|_| panic!("{what} in time"))
            .expect("client running");
    }
}

impl<T> Inbox<T> {
    /// Waits for the next `count` SUBACKs.
    pub async fn subacks(&mut self, count: usize) {
        take_acks(&mut self.subacks, count, "SUBACK").await;
    }

    /// Waits for the next `count` PUBACKs.
    pub async fn pubacks(&mut self, count: usize) {
        take_acks(&mut self.pubacks, count, "PUBACK").await;
    }
}

impl<T> std::ops::Deref for Inbox<T> {
    type Target = mpsc::UnboundedReceiver<T>;
    fn deref(&self) -> &Self::Target {
        &self.publishes
    }
}

impl<T> std::ops::DerefMut for Inbox<T> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.publishes
    }
}

/// Runs a rumqttc event loop (v4 or v5: the same shape, different types)
/// in a task: waits for the first CONNACK, then forwards every incoming
/// PUBLISH and SUBACK to the returned inbox until the loop fails.
macro_rules! forward_events {
    ($eventloop:ident, $event:path, $packet:path) => {{
        use $event as Ev;
        use $packet as Pk;
        let (tx, rx) = mpsc::unbounded_channel();
        let (suback_tx, suback_rx) = mpsc::unbounded_channel();
        let (puback_tx, puback_rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let mut ready_tx = Some(ready_tx);
        tokio::spawn(async move {
            loop {
                match $eventloop.poll().await {
                    Ok(Ev::Incoming(Pk::ConnAck(_))) => {
                        if let Some(t) = ready_tx.take() {
                            let _ = t.send(());
                        }
                    }
                    Ok(Ev::Incoming(Pk::Publish(p))) => {
                        if tx.send(p).is_err() {
                            return;
                        }
                    }
                    Ok(Ev::Incoming(Pk::SubAck(_))) => {
                        let _ = suback_tx.send(());
                    }
                    Ok(Ev::Incoming(Pk::PubAck(_))) => {
                        let _ = puback_tx.send(());
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
        tokio::time::timeout(WAIT, ready_rx)
            .await
            .expect("CONNACK in time")
            .expect("connected");
        Inbox {
            publishes: rx,
            subacks: suback_rx,
            pubacks: puback_rx,
        }
    }};
}

/// A rumqttc v4 (MQTT 3.1.1) client whose incoming PUBLISHes arrive in the
/// returned inbox. The event loop runs until the client disconnects.
pub async fn rumqttc_v4(
    mut options: rumqttc::MqttOptions,
) -> (rumqttc::AsyncClient, Inbox<rumqttc::Publish>) {
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 100);
    let rx = forward_events!(eventloop, rumqttc::Event, rumqttc::Packet);
    (client, rx)
}

pub fn v4_options(addr: SocketAddr, id: &str) -> rumqttc::MqttOptions {
    rumqttc::MqttOptions::new(id, addr.ip().to_string(), addr.port())
}

/// A rumqttc v5 client whose incoming PUBLISHes arrive in the inbox.
pub async fn rumqttc_v5(
    mut options: rumqttc::v5::MqttOptions,
) -> (
    rumqttc::v5::AsyncClient,
    Inbox<rumqttc::v5::mqttbytes::v5::Publish>,
) {
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::Event;
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = rumqttc::v5::AsyncClient::new(options, 100);
    let rx = forward_events!(eventloop, Event, Packet);
    (client, rx)
}

pub fn v5_options(addr: SocketAddr, id: &str) -> rumqttc::v5::MqttOptions {
    rumqttc::v5::MqttOptions::new(id, addr.ip().to_string(), addr.port())
}

/// Receives the next message within `WAIT`, or fails the test.
pub async fn next<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> T {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("a message in time")
        .expect("channel open")
}

/// Asserts nothing arrives within `QUIET`.
pub async fn nothing<T: std::fmt::Debug>(rx: &mut mpsc::UnboundedReceiver<T>) {
    if let Ok(Some(m)) = tokio::time::timeout(QUIET, rx.recv()).await {
        panic!("expected no message, got {m:?}");
    }
}

/// Starts the `roomq` binary with `args` plus a loopback listener on
/// `port` (0 = any) and returns it with its address, read from its
/// "roomq listening" log line.
pub fn spawn_roomq(port: u16, args: &[&std::ffi::OsStr]) -> (std::process::Child, SocketAddr) {
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_roomq"))
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--sys-interval-secs",
            "0",
        ])
        .args(args)
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("roomq starts");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("local_addr=").nth(1) {
                let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_string());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("roomq listening")
        .parse()
        .expect("address");
    (child, addr)
}

/// A 5.0 will on `topic` with payload "bye"/`message`, QoS 1.
pub fn will(topic: &str, message: &'static [u8], delay: Option<u32>, retain: bool) -> v5::LastWill {
    v5::LastWill {
        qos: v5::QoS::AtLeastOnce,
        retain,
        topic: topic.into(),
        message: bytes::Bytes::from_static(message),
        will_delay_interval_sec: delay,
        correlation_data: None,
        message_expiry_interval: None,
        content_type: None,
        user_properties: Vec::new(),
        is_utf8_payload: None,
        response_topic: None,
    }
}
