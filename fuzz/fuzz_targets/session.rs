//! A whole session on arbitrary bytes: a valid CONNECT (3.1.1 or 5.0,
//! chosen by the first input byte), then the input, through the broker's
//! real connection task over an in-memory pipe. The broker must never
//! panic and must keep serving: after every input a canary publish through
//! the in-process API is delivered.
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
            storage: StorageKind::Memory,
            sys_interval_secs: 0,
            max_packet_size: 64 * 1024,
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

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let world = world();
    world.runtime.block_on(async {
        let mut client = world.broker.connect_in_memory(256 * 1024);
        let connect = if which & 1 == 0 { CONNECT_311 } else { CONNECT_5 };
        let _ = client.write_all(connect).await;
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
