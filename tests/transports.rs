//! Listeners of every kind serve the same broker: TLS (with and without
//! client certificates) tested with `mosquitto_pub`/`mosquitto_sub`, and
//! WebSocket tested with MQTT.js (a browser-style client) chatting with a
//! TCP client in the same room.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rmqtt_codec::types::QoS;
use rmqtt_codec::v5::Packet;
use roomq::config::{ListenerConfig, ListenerKind};
use tokio::io::{AsyncBufReadExt, BufReader};

/// A CA, a server certificate for localhost/127.0.0.1 and a client
/// certificate with CN `alice`, written as PEM files.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "roomq test CA");
        let ca_key = KeyPair::generate().unwrap();
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let write = |name: &str, text: String| std::fs::write(dir.path().join(name), text).unwrap();
        write("ca.pem", ca.pem());
        for (name, sans, cn) in [
            (
                "server",
                vec!["localhost".to_string(), "127.0.0.1".to_string()],
                "localhost",
            ),
            ("alice", vec![], "alice"),
            // A client certificate without a Common Name.
            ("nocn", vec![], ""),
        ] {
            let mut params = CertificateParams::new(sans).unwrap();
            if !cn.is_empty() {
                params.distinguished_name.push(DnType::CommonName, cn);
            }
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
            write(&format!("{name}.pem"), cert.pem());
            write(&format!("{name}-key.pem"), key.serialize_pem());
        }
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn listener(kind: ListenerKind, pki: Option<&Pki>) -> ListenerConfig {
    let mut l = ListenerConfig::tcp("127.0.0.1:0".parse().unwrap());
    l.kind = kind;
    if let Some(pki) = pki {
        l.cert = Some(pki.path("server.pem"));
        l.key = Some(pki.path("server-key.pem"));
    }
    l
}

fn port_of(broker: &roomq::BrokerHandle, kind: ListenerKind) -> u16 {
    broker
        .local_addrs()
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, a)| a.port())
        .expect("listener of that kind")
}

async fn mosquitto(program: &str, args: &[&str], extra: &[&Path]) -> std::process::Output {
    tokio::process::Command::new(program)
        .args(args)
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("mosquitto clients run (scripts/test installs mosquitto-clients)")
}

#[tokio::test]
async fn mosquitto_clients_over_tls_and_mtls_with_the_certificate_as_username() {
    let pki = Pki::new();
    let mut mtls = listener(ListenerKind::Tls, Some(&pki));
    mtls.client_ca = Some(pki.path("ca.pem"));
    mtls.use_identity_as_username = true;
    let mut config = test_config();
    config.listeners = vec![
        listener(ListenerKind::Tcp, None),
        listener(ListenerKind::Tls, Some(&pki)),
        mtls,
    ];
    let broker = start_with(config).await;
    let tls_port = port_of(&broker, ListenerKind::Tls).to_string();
    let mtls_port = broker.local_addrs()[2].1.port().to_string();
    let ca = pki.path("ca.pem");

    // A TLS subscriber gets what a TCP client publishes.
    let sub = tls_subscriber(tls_port.clone(), "secure/t", ca.clone(), 10);
    let mut tcp = Raw::client5(broker.local_addr(), "tcp-pub").await;
    let mut delivered = false;
    for _ in 0..50 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let ack = tcp.publish1_5(1, "secure/t", b"over tls").await;
        if ack.reason_code == rmqtt_codec::v5::PublishAckReason::Success {
            delivered = true;
            break;
        }
    }
    assert!(delivered, "the TLS subscriber connected");
    let out = sub.await.unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "over tls");

    // mTLS: without a client certificate the handshake fails.
    let refused = mosquitto(
        "mosquitto_pub",
        &[
            "-h",
            "localhost",
            "-p",
            &mtls_port,
            "-t",
            "x",
            "-m",
            "y",
            "--cafile",
        ],
        &[&ca],
    )
    .await;
    assert!(!refused.status.success());
    // With one, its CN is the username: alice may post as alice.
    let mut watcher = Raw::client5(broker.local_addr(), "watcher").await;
    watcher
        .subscribe5(1, &[("rooms/sec/msg/+", opts(QoS::AtLeastOnce))])
        .await;
    // One QoS 1 post to rooms/sec/msg/alice over mTLS with `cert`'s
    // certificate, and the username `-u` if given.
    let post_with_cert = |cert: &'static str, username: Option<&'static str>| {
        let (port, ca) = (mtls_port.clone(), ca.clone());
        let (cert_file, key_file) = (
            pki.path(&format!("{cert}.pem")),
            pki.path(&format!("{cert}-key.pem")),
        );
        async move {
            let mut args = vec!["-h", "localhost", "-p", &port, "-q", "1"];
            if let Some(user) = username {
                args.extend(["-u", user]);
            }
            args.extend(["-t", "rooms/sec/msg/alice", "-m", cert, "--cafile"]);
            let extra = [
                &ca,
                Path::new("--cert"),
                &cert_file,
                Path::new("--key"),
                &key_file,
            ];
            mosquitto("mosquitto_pub", &args, &extra).await
        }
    };
    let ok = post_with_cert("alice", None).await;
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let got = watcher.publish5().await;
    assert_eq!(got.topic, "rooms/sec/msg/alice");

    // A certificate without a CN does not let the client pick a name: it
    // is refused, whatever username it sends.
    let no_cn = post_with_cert("nocn", Some("alice")).await;
    assert!(!no_cn.status.success(), "a certificate without CN was accepted");
    // Nor does a plain listener hand out a certificate's name as a claim.
    let mut claim = connect5("claims-alice");
    claim.username = Some("alice".into());
    let (_c, ack) = Raw::connect5(broker.local_addr(), claim).await;
    assert_eq!(
        ack.reason_code,
        rmqtt_codec::v5::ConnectAckReason::BadUserNameOrPassword
    );
    assert!(matches!(watcher.recv5_within(QUIET).await, Got::Nothing));
}

/// A `mosquitto_sub` over TLS that waits (at most `secs`) for one message
/// on `topic`.
fn tls_subscriber(
    port: String,
    topic: &'static str,
    ca: PathBuf,
    secs: u32,
) -> tokio::task::JoinHandle<std::process::Output> {
    tls_subscriber_for(port, topic, ca, secs, 1)
}

/// `tls_subscriber` for `count` messages.
fn tls_subscriber_for(
    port: String,
    topic: &'static str,
    ca: PathBuf,
    secs: u32,
    count: u32,
) -> tokio::task::JoinHandle<std::process::Output> {
    tokio::spawn(async move {
        let secs = secs.to_string();
        let count = count.to_string();
        let args = [
            "-h",
            "localhost",
            "-p",
            &port,
            "-t",
            topic,
            "-C",
            &count,
            "-W",
            &secs,
            "--cafile",
        ];
        mosquitto("mosquitto_sub", &args, &[&ca]).await
    })
}

/// The whole HTTPS response to `GET path` from the broker's certificate
/// for `localhost`, checked against `ca`.
async fn https_get(port: u16, ca: &Path, path: &str) -> String {
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    let pem = std::fs::read(ca).unwrap();
    for cert in rustls_pemfile::certs(&mut &pem[..]) {
        roots.add(cert.unwrap()).unwrap();
    }
    // ring, as the broker uses (two providers are linked in, so none is
    // the default).
    let provider = std::sync::Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let tls = tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls));
    let socket = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let stream = connector.connect(name, socket).await.expect("TLS handshake");
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n");
    let (response, _) = common::http::exchange(stream, &request).await;
    String::from_utf8_lossy(&response).to_string()
}

/// Runs the MQTT.js chat script; returns its JSON lines as they come.
fn mqtt_js(url: &str, user: &str, room: &str, version: u8) -> tokio::process::Child {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js/ws_chat.mjs");
    assert!(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/js/node_modules/mqtt")
            .exists(),
        "MQTT.js is missing: scripts/test installs it (npm install --prefix tests/js)"
    );
    tokio::process::Command::new("node")
        .arg(script)
        .args([url, user, room, &version.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs")
}

async fn next_json_line(lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>) -> String {
    tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("MQTT.js answered in time")
        .expect("stdout readable")
        .expect("MQTT.js printed a line")
}

#[tokio::test]
async fn an_mqtt_js_websocket_client_chats_with_a_tcp_client() {
    let pki = Pki::new();
    let mut config = test_config();
    config.listeners = vec![
        listener(ListenerKind::Tcp, None),
        listener(ListenerKind::Ws, None),
        // The wss listener also serves the browser chat: MQTT goes through
        // its page-or-upgrade step under TLS.
        ListenerConfig {
            web: true,
            ..listener(ListenerKind::Wss, Some(&pki))
        },
    ];
    config.web_root = Path::new(env!("CARGO_MANIFEST_DIR")).join("web");
    let broker = start_with(config).await;
    let page = https_get(port_of(&broker, ListenerKind::Wss), &pki.path("ca.pem"), "/").await;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains("<title>roomq chat</title>"), "{page}");
    for (scheme, kind, version) in [("ws", ListenerKind::Ws, 5), ("wss", ListenerKind::Wss, 4)] {
        let url = format!("{scheme}://127.0.0.1:{}/mqtt", port_of(&broker, kind));
        let room = format!("room-{scheme}");
        let mut tcp = Raw::client5(broker.local_addr(), &format!("tcp-{scheme}")).await;
        tcp.subscribe5(1, &[(&format!("rooms/{room}/msg/+"), opts(QoS::AtLeastOnce))])
            .await;
        let mut browser = mqtt_js(&url, &format!("browser-{scheme}"), &room, version);
        let mut lines = BufReader::new(browser.stdout.take().unwrap()).lines();
        assert!(next_json_line(&mut lines).await.contains("joined"));
        // The browser's hello reaches the TCP client...
        let hello = tcp.publish5().await;
        assert_eq!(hello.topic, format!("rooms/{room}/msg/browser-{scheme}"));
        assert_eq!(
            &hello.payload[..],
            format!("hello from browser-{scheme}").as_bytes()
        );
        if let Some(id) = hello.packet_id {
            tcp.send5(Packet::PublishAck(rmqtt_codec::v5::PublishAck {
                packet_id: id,
                ..Default::default()
            }))
            .await;
        }
        // ... and the TCP client's answer reaches the browser, with its seq.
        let topic = format!("rooms/{room}/msg/tcp-{scheme}");
        tcp.send5(Packet::Publish(Box::new(publish(
            &topic,
            b"hi browser",
            QoS::AtLeastOnce,
            Some(9),
        ))))
        .await;
        let line = next_json_line(&mut lines).await;
        assert!(line.contains("hi browser"), "{line}");
        if version == 5 {
            assert!(line.contains(r#""seq":"2""#), "{line}");
        }
        assert!(browser.wait().await.unwrap().success());
    }
}

#[tokio::test]
async fn a_certificate_reload_keeps_open_connections_and_serves_new_ones_the_new_certificate() {
    let (old, new) = (Pki::new(), Pki::new());
    let mut config = test_config();
    config.listeners = vec![
        listener(ListenerKind::Tcp, None),
        listener(ListenerKind::Tls, Some(&old)),
    ];
    let broker = start_with(config).await;
    let port = port_of(&broker, ListenerKind::Tls).to_string();
    let sub = tls_subscriber_for(port.clone(), "reload/t", old.path("ca.pem"), 20, 2);
    let mut tcp = Raw::client5(broker.local_addr(), "tcp-pub").await;
    // Wait until the TLS subscriber has subscribed: a QoS 1 probe finds a
    // subscriber (PUBACK Success, not 0x10) exactly once.
    let mut subscribed = false;
    for _ in 0..50 {
        let ack = tcp.publish1_5(1, "reload/t", b"probe").await;
        if ack.reason_code == rmqtt_codec::v5::PublishAckReason::Success {
            subscribed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(subscribed, "the TLS subscriber subscribed");
    // New files at the same paths, then reload (what SIGHUP does).
    for name in ["server.pem", "server-key.pem"] {
        std::fs::copy(new.path(name), old.path(name)).unwrap();
    }
    broker.reload();
    // The open connection still works.
    tcp.publish1_5(2, "reload/t", b"still here").await;
    let out = sub.await.unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "probe\nstill here");
    // New connections get the new certificate.
    let args = ["-h", "localhost", "-p", &port, "-t", "x", "-m", "y", "--cafile"];
    assert!(mosquitto("mosquitto_pub", &args, &[&new.path("ca.pem")])
        .await
        .status
        .success());
    assert!(!mosquitto("mosquitto_pub", &args, &[&old.path("ca.pem")])
        .await
        .status
        .success());
}

#[tokio::test]
async fn websocket_framing_packets_split_across_frames_and_several_in_one_frame() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;

    let mut config = test_config();
    config.listeners = vec![listener(ListenerKind::Ws, None)];
    let broker = start_with(config).await;
    let addr = broker.local_addr();
    // Without the `mqtt` sub-protocol [MQTT-6.0.0-3] the upgrade is refused.
    let socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("ws://{addr}/mqtt").into_client_request().unwrap();
    match tokio_tungstenite::client_async(request, socket).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status(), 400),
        other => panic!(
            "an upgrade without `mqtt` was not refused: {:?}",
            other.map(|(_, r)| r)
        ),
    }
    let (mut ws, response) = ws_connect(addr).await;
    assert_eq!(response.headers()["Sec-WebSocket-Protocol"], "mqtt");

    let encode = |packet: Packet| {
        let mut out = bytes::BytesMut::new();
        tokio_util::codec::Encoder::encode(&mut rmqtt_codec::v5::Codec::new(0, 0), packet, &mut out).unwrap();
        out.to_vec()
    };
    // CONNECT in two frames.
    let connect = encode(Packet::Connect(Box::new(connect5("framed"))));
    let (a, b) = connect.split_at(5);
    ws.send(Message::binary(a.to_vec())).await.unwrap();
    ws.send(Message::binary(b.to_vec())).await.unwrap();
    // SUBSCRIBE and PUBLISH in one frame.
    let mut both = encode(Packet::Subscribe(rmqtt_codec::v5::Subscribe {
        packet_id: pid(1),
        id: None,
        user_properties: Vec::new(),
        topic_filters: vec![("echo".into(), opts(QoS::AtMostOnce))],
    }));
    both.extend(encode(Packet::Publish(Box::new(publish(
        "echo",
        b"one frame",
        QoS::AtMostOnce,
        None,
    )))));
    ws.send(Message::binary(both)).await.unwrap();

    // The answers, whatever the framing: CONNACK, SUBACK, PUBLISH.
    let mut received = bytes::BytesMut::new();
    let mut codec = rmqtt_codec::v5::Codec::new(0, 0);
    let mut packets = Vec::new();
    while packets.len() < 3 {
        match tokio::time::timeout(WAIT, ws.next()).await {
            Ok(Some(Ok(Message::Binary(data)))) => received.extend_from_slice(&data),
            other => panic!("expected binary frames, got {other:?}"),
        }
        while let Some((packet, _)) = tokio_util::codec::Decoder::decode(&mut codec, &mut received).unwrap() {
            packets.push(packet);
        }
    }
    assert!(matches!(packets[0], Packet::ConnectAck(_)));
    assert!(matches!(packets[1], Packet::SubscribeAck(_)));
    match &packets[2] {
        Packet::Publish(p) => assert_eq!(&p.payload[..], b"one frame"),
        other => panic!("expected PUBLISH, got {other:?}"),
    }
}
