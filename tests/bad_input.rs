//! Bad input, one connection at a time, on a broker with stored state: for
//! each case that connection closes (with the right reason code where the
//! protocol has one), the broker keeps serving other clients, and nothing
//! stored (a retained message, a persistent session's queued message) is
//! lost or changed. `malformed.rs` has the packet-level table; this one adds
//! truncated and lying packets, bad strings in CONNECT, huge property
//! lists, a slowloris client and a TLS handshake of garbage.

mod common;

use std::time::Duration;

use common::*;
use rmqtt_codec::types::QoS;
use rmqtt_codec::v5::{self, DisconnectReasonCode as R, Packet};
use roomq::config::{Limits, ListenerConfig, ListenerKind, StoreConfig};
use tokio::io::AsyncWriteExt;

/// A 5.0 CONNECT for client `id`, encoded.
fn connect_bytes(id: &str) -> Vec<u8> {
    let mut out = bytes::BytesMut::new();
    tokio_util::codec::Encoder::encode(
        &mut v5::Codec::new(0, 0),
        Packet::Connect(Box::new(connect5(id))),
        &mut out,
    )
    .unwrap();
    out.to_vec()
}

/// Sends `bytes` on a fresh socket (after a CONNECT when `connected`) and
/// waits for the broker to close it; returns the DISCONNECT reason, if any.
async fn close_reason(name: &str, addr: std::net::SocketAddr, connected: bool, bytes: &[u8]) -> Option<R> {
    let mut raw = if connected {
        Raw::client5(addr, "bad").await
    } else {
        Raw::tcp(addr, true).await
    };
    raw.send_bytes(bytes).await;
    loop {
        match raw.recv5().await {
            Got::Packet(Packet::Disconnect(d)) => {
                assert!(
                    matches!(raw.recv5().await, Got::Closed),
                    "closed after DISCONNECT"
                );
                return Some(d.reason_code);
            }
            Got::Packet(Packet::ConnectAck(_)) => {}
            Got::Closed => return None,
            other => panic!("{name}: expected the connection to close, got {other:?}"),
        }
    }
}

/// The stored state is intact and the broker serves a new client.
async fn state_intact(addr: std::net::SocketAddr) {
    let mut watcher = Raw::client5(addr, "watcher").await;
    watcher
        .subscribe5(1, &[("keep/retained", opts(QoS::AtLeastOnce))])
        .await;
    let retained = watcher.publish5().await;
    assert_eq!(&retained.payload[..], b"still here");
    watcher.send5(Packet::Disconnect(v5::Disconnect::default())).await;
}

/// Name, whether to CONNECT first, the bytes, the acceptable outcomes.
type Case = (&'static str, bool, Vec<u8>, &'static [Option<R>]);

fn varint(mut n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if n == 0 {
            return out;
        }
    }
}

#[tokio::test]
async fn bad_input_closes_that_connection_and_changes_nothing_stored() {
    let dir = tempfile::tempdir().unwrap();
    let pki_dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(pki_dir.path().join("cert.pem"), cert.cert.pem()).unwrap();
    std::fs::write(pki_dir.path().join("key.pem"), cert.key_pair.serialize_pem()).unwrap();
    let mut tls = ListenerConfig::tcp("127.0.0.1:0".parse().unwrap());
    tls.kind = ListenerKind::Tls;
    tls.cert = Some(pki_dir.path().join("cert.pem"));
    tls.key = Some(pki_dir.path().join("key.pem"));
    let broker = start_with(roomq::Config {
        data_dir: dir.path().to_path_buf(),
        listeners: vec![ListenerConfig::tcp("127.0.0.1:0".parse().unwrap()), tls],
        store: StoreConfig {
            storage: roomq::StorageKind::Sled,
            ..test_config().store
        },
        limits: Limits {
            max_packet_size: 4096,
            connect_timeout_secs: 2,
            ..test_config().limits
        },
        ..test_config()
    })
    .await;
    let addr = broker.local_addr();
    let tls_addr = broker.local_addrs()[1].1;

    // Stored state: a retained message and a persistent session with one
    // queued message.
    let mut setup = Raw::client5(addr, "setup").await;
    let mut retained = publish("keep/retained", b"still here", QoS::AtLeastOnce, Some(1));
    retained.retain = true;
    setup.send5(Packet::Publish(Box::new(retained))).await;
    setup.recv5().await.packet();
    let mut keeper = connect5("keeper");
    keeper.clean_start = false;
    keeper.session_expiry_interval_secs = 3600;
    let (mut k, _) = Raw::connect5(addr, keeper.clone()).await;
    k.subscribe5(1, &[("keep/queue", opts(QoS::AtLeastOnce))]).await;
    k.send5(Packet::Disconnect(v5::Disconnect::default())).await;
    drop(k);
    setup.publish1_5(2, "keep/queue", b"queued").await;

    let mut big_properties = vec![0x30];
    let mut body = vec![0, 1, b'a'];
    let props: Vec<u8> = std::iter::repeat_n([0x26u8, 0, 1, b'k', 0, 1, b'v'], 1000)
        .flatten()
        .collect();
    body.extend(varint(props.len()));
    body.extend(props);
    big_properties.extend(varint(body.len()));
    big_properties.extend(body);

    let cases: Vec<Case> = vec![
        // The topic length says 10 bytes; the packet holds 3.
        (
            "lying topic length",
            true,
            vec![0x30, 0x05, 0, 10, b'a', b'b', b'c'],
            &[Some(R::MalformedPacket)],
        ),
        // A property length longer than the packet.
        (
            "lying property length",
            true,
            vec![0x30, 0x05, 0, 1, b'a', 0x20, b'x'],
            &[Some(R::MalformedPacket)],
        ),
        (
            "five-byte remaining length",
            true,
            vec![0x30, 0x80, 0x80, 0x80, 0x80, 0x01],
            &[Some(R::MalformedPacket)],
        ),
        (
            "7,000-byte property list over max_packet_size",
            true,
            big_properties,
            &[Some(R::PacketTooLarge)],
        ),
        // CONNECT whose username is not UTF-8 / contains U+0000.
        (
            "invalid UTF-8 username",
            false,
            {
                let mut c = connect_bytes("u1");
                let mut tail = vec![0, 2, 0xc3, 0x28];
                c[9] |= 0x80; // username flag
                c.append(&mut tail);
                c[1] += 4;
                c
            },
            &[None, Some(R::MalformedPacket)],
        ),
        (
            "U+0000 in username",
            false,
            {
                let mut c = connect_bytes("u2");
                let mut tail = vec![0, 3, b'a', 0, b'b'];
                c[9] |= 0x80;
                c.append(&mut tail);
                c[1] += 5;
                c
            },
            &[None, Some(R::MalformedPacket)],
        ),
        (
            "wildcard in PUBLISH topic",
            true,
            vec![0x30, 0x05, 0, 2, b'#', b'x', 0],
            &[Some(R::TopicNameInvalid)],
        ),
    ];
    for (name, connected, bytes, expected) in cases {
        let got = close_reason(name, addr, connected, &bytes).await;
        assert!(
            expected.contains(&got),
            "{name}: expected one of {expected:?}, got {got:?}"
        );
        state_intact(addr).await;
    }

    // A truncated packet followed by the client going away: nothing of it
    // is delivered or stored.
    let mut truncated = Raw::client5(addr, "truncated").await;
    truncated.send_bytes(&[0x31, 0x20, 0, 13]).await;
    truncated.send_bytes(b"keep/retai").await;
    drop(truncated);
    state_intact(addr).await;

    // Slowloris: one byte of CONNECT at a time is cut off by
    // connect_timeout_secs.
    let slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut reader, mut writer) = slow.into_split();
    let connect = connect_bytes("slow");
    let trickle = tokio::spawn(async move {
        for byte in connect.iter().cycle().take(60) {
            if writer.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(WAIT, tokio::io::AsyncReadExt::read(&mut reader, &mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "slowloris is cut off by connect_timeout_secs while still sending, got {read:?}"
    );
    trickle.abort();
    let connect = connect_bytes("slow");
    let mut slow = Raw::tcp(addr, true).await;
    slow.send_bytes(&connect[..3]).await;
    assert!(
        matches!(slow.recv5().await, Got::Closed),
        "an incomplete CONNECT is closed"
    );

    // A TLS handshake of garbage on the TLS listener.
    let mut garbage = tokio::net::TcpStream::connect(tls_addr).await.unwrap();
    let _ = garbage
        .write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5, 0xff, 0xee])
        .await;
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(WAIT, tokio::io::AsyncReadExt::read(&mut garbage, &mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(_)) | Ok(Err(_))),
        "the TLS listener answers or closes"
    );
    state_intact(addr).await;

    // The persistent session still has its queued message.
    let (mut k, ack) = Raw::connect5(addr, keeper).await;
    assert!(ack.session_present);
    assert_eq!(&k.publish5().await.payload[..], b"queued");
    assert!(broker.metrics().protocol_errors.get() >= 7);
}
