//! `max_sessions_per_user`: one identity cannot make the broker keep more
//! persistent sessions (each with a queue and subscriptions) than its
//! bound by inventing client ids; ending a session gives its share back,
//! and other identities are not affected. Where names are claims (no
//! authenticator, the loopback default) the address pays: inventing names
//! buys no more, and claiming another's name spends none of hers.

mod common;

use common::*;
use rmqtt_codec::v5;
use roomq::config::PerUserLimits;

fn persistent_as(id: &str, user: &str) -> v5::Connect {
    let mut connect = persistent5(id);
    connect.username = Some(user.into());
    connect
}

async fn connack(addr: std::net::SocketAddr, connect: v5::Connect) -> v5::ConnectAckReason {
    connack_from(addr, [127, 0, 0, 1], connect).await
}

async fn connack_from(
    addr: std::net::SocketAddr,
    from: [u8; 4],
    connect: v5::Connect,
) -> v5::ConnectAckReason {
    let mut raw = Raw::tcp_from(addr, from.into(), true).await;
    raw.send5(v5::Packet::Connect(Box::new(connect))).await;
    let ack = match raw.recv5().await.packet() {
        v5::Packet::ConnectAck(ack) => *ack,
        other => panic!("expected CONNACK, got {other:?}"),
    };
    raw.send5(v5::Packet::Disconnect(v5::Disconnect::default())).await;
    ack.reason_code
}

#[tokio::test]
async fn an_identity_keeps_at_most_its_share_of_sessions() {
    let broker = start_with(roomq::Config {
        per_user: PerUserLimits {
            max_sessions_per_user: 2,
            ..test_config().per_user
        },
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
    // Somebody else (from another address: names are claims here) is
    // not affected.
    assert_eq!(
        connack_from(addr, [127, 0, 0, 2], persistent_as("alice-1", "alice")).await,
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
        per_user: PerUserLimits {
            max_sessions_per_user: 1,
            ..test_config().per_user
        },
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

/// On a broker without an authenticator names are claims: one address
/// (not a loopback one, by default) that invents names gets no more sessions than one name would, and
/// claiming bob's name does not lock the real bob (another address) out.
#[tokio::test]
async fn where_names_are_claims_the_address_pays() {
    let broker = start_with(roomq::Config {
        per_user: PerUserLimits {
            max_sessions_per_user: 2,
            // The test's clients are all on loopback: make them pay as
            // clients from other machines do.
            claimed_names_budget_on_loopback: false,
            ..test_config().per_user
        },
        ..test_config()
    })
    .await;
    let addr = broker.local_addr();
    for (id, name) in [("m-1", "bob"), ("m-2", "bob")] {
        assert_eq!(
            connack(addr, persistent_as(id, name)).await,
            v5::ConnectAckReason::Success
        );
    }
    // A fresh name from the same address is no fresh budget.
    assert_eq!(
        connack(addr, persistent_as("m-3", "carol")).await,
        v5::ConnectAckReason::QuotaExceeded
    );
    // The same with a bare client id as the name.
    assert_eq!(
        connack(addr, persistent5("m-4")).await,
        v5::ConnectAckReason::QuotaExceeded
    );
    // Bob, from his own address, keeps his sessions.
    assert_eq!(
        connack_from(addr, [127, 0, 0, 3], persistent_as("bob-phone", "bob")).await,
        v5::ConnectAckReason::Success
    );
    // Sessions that end with their connection are not kept: not charged.
    assert_eq!(
        connack(addr, {
            let mut clean = connect5("m-5");
            clean.username = Some("dave".into());
            clean
        })
        .await,
        v5::ConnectAckReason::Success
    );
    broker.shutdown().await;
}

/// Where names are claims, connections are the address's too: inventing
/// names buys no connections (the attack: 2,000 invented names from one
/// address took every connection of `max_connections`).
#[tokio::test]
async fn where_names_are_claims_the_address_pays_for_connections() {
    let broker = start_with(roomq::Config {
        per_user: PerUserLimits {
            max_connections_per_user: 2,
            claimed_names_budget_on_loopback: false,
            ..test_config().per_user
        },
        ..test_config()
    })
    .await;
    let addr = broker.local_addr();
    let mut held = Vec::new();
    for (id, name) in [("n-1", "n1"), ("n-2", "n2")] {
        let (raw, ack) = Raw::connect5(addr, {
            let mut c = connect5(id);
            c.username = Some(name.into());
            c
        })
        .await;
        assert_eq!(ack.reason_code, v5::ConnectAckReason::Success);
        held.push(raw);
    }
    let mut third = connect5("n-3");
    third.username = Some("n3".into());
    assert_eq!(connack(addr, third).await, v5::ConnectAckReason::QuotaExceeded);
    // Another address is not affected.
    let mut carol = connect5("carol");
    carol.username = Some("carol".into());
    assert_eq!(
        connack_from(addr, [127, 0, 0, 7], carol).await,
        v5::ConnectAckReason::Success
    );
    // A connection's end gives its place back.
    drop(held.pop());
    let mut again = connect5("n-4");
    again.username = Some("n4".into());
    let mut accepted = false;
    for _ in 0..50 {
        if connack(addr, again.clone()).await == v5::ConnectAckReason::Success {
            accepted = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(accepted, "the place of a closed connection was not given back");
    broker.shutdown().await;
}

/// The address still pays after a restart: sessions restored from the
/// store are charged to the account they were charged to before, not to
/// the names they claimed (the attack: each invented name counted as an
/// account of its own after a restart, so one address got a fresh share
/// per name until its clients came back).
#[tokio::test]
async fn where_names_are_claims_the_address_still_pays_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = || roomq::Config {
        per_user: PerUserLimits {
            max_sessions_per_user: 2,
            claimed_names_budget_on_loopback: false,
            ..sled_config(dir.path()).per_user
        },
        ..sled_config(dir.path())
    };
    let broker = start_with(config()).await;
    let addr = broker.local_addr();
    for (id, name) in [("r-1", "bob"), ("r-2", "carol")] {
        assert_eq!(
            connack(addr, persistent_as(id, name)).await,
            v5::ConnectAckReason::Success
        );
    }
    broker.shutdown().await;

    let broker = start_with(config()).await;
    let addr = broker.local_addr();
    // The address holds its two sessions still: a third is refused.
    assert_eq!(
        connack(addr, persistent_as("r-3", "dave")).await,
        v5::ConnectAckReason::QuotaExceeded
    );
    // Resuming one of its own is not a new session.
    assert_eq!(
        connack(addr, persistent_as("r-1", "bob")).await,
        v5::ConnectAckReason::Success
    );
    // Another address is not affected.
    assert_eq!(
        connack_from(addr, [127, 0, 0, 4], persistent_as("erin-1", "erin")).await,
        v5::ConnectAckReason::Success
    );
    broker.shutdown().await;
}
