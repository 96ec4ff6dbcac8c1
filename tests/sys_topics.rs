//! `$SYS/broker/...`: a new subscriber reads the values of now, not those
//! of the last `sys_interval_secs` refresh (which, right after start-up,
//! were all zeros).

mod common;

use common::*;
use rmqtt_codec::types::QoS;

/// Found by a newcomer: `mosquitto_sub -t '$SYS/#'` right after start-up
/// showed 0 clients connected while it was connected itself, until the
/// next interval.
#[tokio::test]
async fn a_new_sys_subscriber_reads_current_values() {
    let broker = start_with(roomq::Config {
        // Long enough that no periodic refresh happens during the test.
        sys_interval_secs: 3600,
        ..test_config()
    })
    .await;
    let addr = broker.local_addr();
    let (_other, _) = Raw::connect3(addr, connect3("other", true)).await;
    let (mut sub, _) = Raw::connect3(addr, connect3("sys", true)).await;
    sub.subscribe3(1, &[("$SYS/broker/clients/connected", QoS::AtMostOnce)])
        .await;
    let p = sub.publish3().await;
    assert_eq!(&*p.topic, "$SYS/broker/clients/connected");
    let connected: u64 = std::str::from_utf8(&p.payload).unwrap().parse().unwrap();
    assert!(connected >= 2, "$SYS/broker/clients/connected read {connected}");
    broker.shutdown().await;
}
