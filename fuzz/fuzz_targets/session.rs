//! A whole session on arbitrary bytes: a CONNECT (3.1.1 or 5.0, chosen by
//! the first input byte; with bit 1 set it carries a will whose topic and
//! Response Topic are taken from the input), then the rest of the input,
//! through the broker's real connection task over an in-memory pipe. The
//! broker has a closed room, an alert rule and ACL rules, so wills, history
//! replies and alert copies go through the gate. It must never panic and
//! must keep serving: after every input a canary publish through the
//! in-process API is delivered.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use roomq::{Broker, BrokerHandle, Config, QoS, StorageKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Runtime;

struct World {
    runtime: Runtime,
    broker: BrokerHandle,
    canary: roomq::LocalSubscription,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let config = Config {
            listen: "127.0.0.1:0".parse().expect("address"),
            store: roomq::config::StoreConfig {
                storage: StorageKind::Memory,
                ..Default::default()
            },
            sys_interval_secs: 0,
            limits: roomq::config::Limits {
                max_packet_size: 64 * 1024,
                ..Default::default()
            },
            rooms: vec![roomq::config::RoomConfig {
                name: "ops".into(),
                members: vec!["fz".into()],
                open: false,
                moderators: vec!["fz".into()],
            }],
            alerts: vec![roomq::config::AlertRule {
                topic: "alerts/+/critical".into(),
                room: "ops".into(),
                publishers: Vec::new(),
                hmac_key_file: None,
            }],
            acl: vec![roomq::auth::acl::AclRule {
                topic: "#".into(),
                access: roomq::auth::acl::Access::ReadWrite,
            }],
            ..Config::default()
        };
        let broker = runtime
            .block_on(Broker::new(config).start())
            .expect("broker starts");
        let canary = broker.subscribe("canary/#", QoS::AtMostOnce).expect("subscribe");
        World {
            runtime,
            broker,
            canary,
        }
    })
}

/// CONNECT, clean start, client id "fz", keep-alive 0.
const CONNECT_311: &[u8] = &[
    0x10, 0x0e, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 0, 0, 2, b'f', b'z',
];
const CONNECT_5: &[u8] = &[
    0x10, 0x0f, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 0, 0, 0, 2, b'f', b'z',
];

/// Takes a length byte and that many bytes (fewer at the end) from `data`.
fn take_field<'a>(data: &mut &'a [u8]) -> &'a [u8] {
    let Some((&len, rest)) = data.split_first() else {
        return &[];
    };
    let (field, rest) = rest.split_at(usize::from(len).min(rest.len()));
    *data = rest;
    field
}

/// A CONNECT for client id "fz" with a QoS 1 will on `topic` (raw bytes,
/// so not always valid UTF-8) and, in 5.0, a will Response Topic.
fn connect_with_will(v5: bool, topic: &[u8], response_topic: &[u8]) -> Vec<u8> {
    let string = |out: &mut Vec<u8>, s: &[u8]| {
        out.extend_from_slice(&(s.len() as u16).to_be_bytes());
        out.extend_from_slice(s);
    };
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', if v5 { 5 } else { 4 }];
    body.push(0x02 | 0x04 | 0x08); // clean start, will, will QoS 1
    body.extend_from_slice(&[0, 0]); // keep-alive
    if v5 {
        body.push(0); // CONNECT properties
    }
    string(&mut body, b"fz");
    if v5 {
        let mut props = vec![0x08];
        string(&mut props, response_topic);
        body.push(props.len() as u8);
        body.extend(props);
    }
    string(&mut body, topic);
    string(&mut body, b"bye");
    let mut out = vec![0x10];
    let mut len = body.len();
    loop {
        let byte = (len % 128) as u8;
        len /= 128;
        out.push(if len > 0 { byte | 0x80 } else { byte });
        if len == 0 {
            break;
        }
    }
    out.extend(body);
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, mut rest)) = data.split_first() else {
        return;
    };
    let world = world();
    world.runtime.block_on(async {
        let mut client = world.broker.connect_in_memory(256 * 1024);
        let v5 = which & 1 == 1;
        let connect = if which & 2 == 0 {
            (if v5 { CONNECT_5 } else { CONNECT_311 }).to_vec()
        } else {
            let topic = take_field(&mut rest);
            let response_topic = take_field(&mut rest);
            connect_with_will(v5, topic, response_topic)
        };
        let _ = client.write_all(&connect).await;
        let _ = client.write_all(rest).await;
        let _ = client.shutdown().await;
        let mut sink = vec![0u8; 64 * 1024];
        let _ = tokio::time::timeout(Duration::from_millis(200), async {
            while let Ok(n) = client.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
        drop(client);
        // Let the connection task end, so nothing of this input outlives it.
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while world.broker.session_count() > 0 || world.broker.open_connections() > 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await;
        world
            .broker
            .publish("canary/alive", "yes", QoS::AtMostOnce, false);
        let got = tokio::time::timeout(Duration::from_secs(5), world.canary.recv()).await;
        assert!(got.is_ok(), "the broker stopped serving");
    });
});
