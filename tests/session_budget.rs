//! `max_sessions_per_user`: one identity cannot make the broker keep more
//! persistent sessions (each with a queue and subscriptions) than its
//! bound by inventing client ids; ending a session gives its share back,
//! and other identities are not affected.

mod common;

use common::*;
use rmqtt_codec::v5;

fn persistent_as(id: &str, user: &str) -> v5::Connect {
    let mut connect = persistent5(id);
    connect.username = Some(user.into());
    connect
}

async fn connack(addr: std::net::SocketAddr, connect: v5::Connect) -> v5::ConnectAckReason {
    let (mut raw, ack) = Raw::connect5(addr, connect).await;
    raw.send5(v5::Packet::Disconnect(v5::Disconnect::default())).await;
    ack.reason_code
}

#[tokio::test]
async fn an_identity_keeps_at_most_its_share_of_sessions() {
    let broker = start_with(roomq::Config {
        max_sessions_per_user: 2,
        ..test_config()
    })
    .await;
    let addr = broker.local_addr();
    // Two persistent sessions, left offline: both kept.
    for id in ["mallory-1", "mallory-2"] {
        assert_eq!(
            connack(addr, persistent_as(id, "mallory")).await,
            v5::ConnectAckReason::Success
        );
    }
    // A third client id under the same name would be a third session.
    assert_eq!(
        connack(addr, persistent_as("mallory-3", "mallory")).await,
        v5::ConnectAckReason::QuotaExceeded
    );
    // Resuming one she has is not a new session.
    assert_eq!(
        connack(addr, persistent_as("mallory-1", "mallory")).await,
        v5::ConnectAckReason::Success
    );
    // Somebody else is not affected.
    assert_eq!(
        connack(addr, persistent_as("alice-1", "alice")).await,
        v5::ConnectAckReason::Success
    );
    // Ending a session (clean start, expiry 0) gives its share back.
    let mut ending = connect5("mallory-2");
    ending.username = Some("mallory".into());
    assert_eq!(connack(addr, ending).await, v5::ConnectAckReason::Success);
    // The clean session itself is gone once its connection closed; wait
    // until the share is free rather than for a fixed time.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let reason = connack(addr, persistent_as("mallory-3", "mallory")).await;
        if reason == v5::ConnectAckReason::Success {
            break;
        }
        assert_eq!(reason, v5::ConnectAckReason::QuotaExceeded);
        assert!(
            tokio::time::Instant::now() < deadline,
            "the ended session's share never came back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn a_3_1_1_client_over_the_bound_gets_server_unavailable() {
    let broker = start_with(roomq::Config {
        max_sessions_per_user: 1,
        ..test_config()
    })
    .await;
    let addr = broker.local_addr();
    let mut first = connect3("dev-1", false);
    first.username = Some("device".into());
    let (_kept, ack) = Raw::connect3(addr, first).await;
    assert_eq!(
        ack.return_code,
        rmqtt_codec::v3::ConnectAckReason::ConnectionAccepted
    );
    let mut second = connect3("dev-2", false);
    second.username = Some("device".into());
    let (_raw, ack) = Raw::connect3(addr, second).await;
    assert_eq!(
        ack.return_code,
        rmqtt_codec::v3::ConnectAckReason::ServiceUnavailable
    );
    broker.shutdown().await;
}
