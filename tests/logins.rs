//! The edges of a login: the password-check queue is shared fairly between
//! addresses (`max_pending_logins_per_ip`), a full queue answers at once,
//! and one identity holds at most `max_connections_per_user` connections.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Condvar, Mutex};

use bytes::Bytes;
use common::*;
use rmqtt_codec::v5::{self, ConnectAckReason};
use roomq::auth::{AuthDecision, AuthRequest, Authenticator, Grant};
use roomq::config::{Limits, PerUserLimits};
use roomq::{Broker, BrokerHandle, Config};
use tokio::sync::mpsc;

/// An authenticator whose check blocks until the test opens it, so logins
/// stay in the queue as long as the test needs (a slow hash, made
/// deterministic). It says which username entered the check.
struct Stuck {
    entered: mpsc::UnboundedSender<String>,
    open: Arc<(Mutex<bool>, Condvar)>,
}

impl Authenticator for Stuck {
    fn authenticate(&self, request: &AuthRequest<'_>) -> AuthDecision {
        let _ = self.entered.send(request.username.unwrap_or("").to_string());
        let (lock, opened) = &*self.open;
        let guard = lock.lock().unwrap();
        // Bounded, so that a failing test cannot hang a blocking thread.
        let _ = opened.wait_timeout_while(guard, WAIT * 3, |open| !*open).unwrap();
        AuthDecision::Allow(Grant::default())
    }
}

/// A broker with the `Stuck` authenticator, its "entered" receiver and the
/// switch that lets every check through.
async fn stuck_broker(config: Config) -> (BrokerHandle, mpsc::UnboundedReceiver<String>, impl Fn()) {
    let (entered, entered_rx) = mpsc::unbounded_channel();
    let open = Arc::new((Mutex::new(false), Condvar::new()));
    let auth = Stuck {
        entered,
        open: open.clone(),
    };
    let broker = Broker::new(config)
        .with_authenticator(Arc::new(auth))
        .start()
        .await
        .expect("broker starts");
    let release = move || switch(&open, true);
    (broker, entered_rx, release)
}

/// Opens (every check goes through) or closes the `Stuck` check.
fn switch(open: &(Mutex<bool>, Condvar), to: bool) {
    *open.0.lock().unwrap() = to;
    open.1.notify_all();
}

fn login(id: &str, user: &str) -> v5::Connect {
    let mut c = connect5(id);
    c.username = Some(user.into());
    c.password = Some(Bytes::from_static(b"secret"));
    c
}

/// Sends a password CONNECT from `from` and returns the connection, whose
/// CONNACK is still to be read.
async fn send_login(addr: SocketAddr, from: &str, id: &str, user: &str) -> Raw {
    let from: IpAddr = from.parse().unwrap();
    let mut raw = Raw::tcp_from(addr, from, true).await;
    raw.send5(v5::Packet::Connect(Box::new(login(id, user)))).await;
    raw
}

async fn connack(raw: &mut Raw) -> ConnectAckReason {
    match raw.recv5().await.packet() {
        v5::Packet::ConnectAck(ack) => ack.reason_code,
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

/// One address with random usernames cannot take the whole login queue:
/// beyond its share (`max_pending_logins_per_ip`) its logins get 0x89 at
/// once, while a login from another address still gets a place, and in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_takes_only_its_share_of_the_login_queue() {
    let config = Config {
        limits: Limits {
            max_concurrent_logins: 1,
            // Half of the queue is kept for addresses with a recent successful
            // login: three places for new ones.
            max_pending_logins: 6,
            max_pending_logins_per_ip: 2,
            ..test_config().limits
        },
        ..test_config()
    };
    let (broker, mut entered, release) = stuck_broker(config).await;
    let addr = broker.local_addr();
    // The attacker's first login is in the check, and stays there.
    let mut first = send_login(addr, "127.0.0.1", "a0", "random0").await;
    let who = tokio::time::timeout(WAIT, entered.recv())
        .await
        .expect("in the check");
    assert_eq!(who.as_deref(), Some("random0"));
    // Two more from the same address: one fits its share of two, the
    // other is refused at once (which one depends on arrival).
    let mut second = send_login(addr, "127.0.0.1", "a1", "random1").await;
    let mut third = send_login(addr, "127.0.0.1", "a2", "random2").await;
    let refused = tokio::select! {
        reason = connack(&mut second) => { second = third; reason }
        reason = connack(&mut third) => reason,
    };
    assert_eq!(refused, ConnectAckReason::ServerBusy);
    // The next place is another address's.
    let mut alice = send_login(addr, "127.0.0.2", "alice-phone", "alice").await;
    release();
    assert_eq!(connack(&mut alice).await, ConnectAckReason::Success);
    assert_eq!(connack(&mut first).await, ConnectAckReason::Success);
    assert_eq!(connack(&mut second).await, ConnectAckReason::Success);
    broker.shutdown().await;
}

/// Half of `max_pending_logins` is kept for addresses with a successful
/// login in the last day: guessers fill the rest (a new address then gets
/// 0x89 at once), and alice, who logged in from 127.0.0.2 before, still
/// gets a place and in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_address_keeps_its_place_while_guessers_fill_the_queue() {
    let config = Config {
        limits: Limits {
            max_concurrent_logins: 1,
            // Two places for addresses that never logged in, two kept.
            max_pending_logins: 4,
            // No share per address: one address may fill the untrusted half.
            max_pending_logins_per_ip: 0,
            ..test_config().limits
        },
        ..test_config()
    };
    let (entered_tx, mut entered) = mpsc::unbounded_channel();
    let open = Arc::new((Mutex::new(true), Condvar::new()));
    let auth = Stuck {
        entered: entered_tx,
        open: open.clone(),
    };
    let broker = Broker::new(config)
        .with_authenticator(Arc::new(auth))
        .start()
        .await
        .expect("broker starts");
    let addr = broker.local_addr();
    // Yesterday, say: alice logs in from 127.0.0.2.
    let mut before = send_login(addr, "127.0.0.2", "alice-phone", "alice").await;
    assert_eq!(connack(&mut before).await, ConnectAckReason::Success);
    assert_eq!(entered.recv().await.as_deref(), Some("alice"));
    drop(before);
    // Now the checks are slow: a guess is in the check and stays there.
    switch(&open, false);
    let mut first = send_login(addr, "127.0.0.1", "g0", "random0").await;
    let who = tokio::time::timeout(WAIT, entered.recv())
        .await
        .expect("in the check");
    assert_eq!(who.as_deref(), Some("random0"));
    // Two more guesses: one takes the last untrusted place, the other is
    // refused at once (which one depends on arrival).
    let mut second = send_login(addr, "127.0.0.1", "g1", "random1").await;
    let mut third = send_login(addr, "127.0.0.1", "g2", "random2").await;
    let refused = tokio::select! {
        reason = connack(&mut second) => { second = third; reason }
        reason = connack(&mut third) => reason,
    };
    assert_eq!(refused, ConnectAckReason::ServerBusy);
    // The untrusted half is full: a newcomer gets 0x89 at once...
    let mut newcomer = send_login(addr, "127.0.0.3", "carol-phone", "carol").await;
    assert_eq!(connack(&mut newcomer).await, ConnectAckReason::ServerBusy);
    // ...and alice, back at her address, still gets a place.
    let mut alice = send_login(addr, "127.0.0.2", "alice-laptop", "alice").await;
    // A refusal would come at once; she waits for the check instead.
    assert!(
        matches!(alice.recv5_within(QUIET).await, Got::Nothing),
        "alice's login was answered before any check ran"
    );
    switch(&open, true);
    assert_eq!(connack(&mut alice).await, ConnectAckReason::Success);
    assert_eq!(connack(&mut first).await, ConnectAckReason::Success);
    assert_eq!(connack(&mut second).await, ConnectAckReason::Success);
    broker.shutdown().await;
}

/// With the queue full, a login is refused at once, every time: being
/// refused as busy is not a failed password, so it builds no back-off
/// (before, the tenth refusal waited 12.8 s for its 0x89).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_login_queue_refuses_at_once_without_back_off() {
    let config = Config {
        limits: Limits {
            max_concurrent_logins: 1,
            max_pending_logins: 1,
            ..test_config().limits
        },
        ..test_config()
    };
    let (broker, mut entered, release) = stuck_broker(config).await;
    let addr = broker.local_addr();
    let mut first = send_login(addr, "127.0.0.1", "a0", "someone").await;
    tokio::time::timeout(WAIT, entered.recv())
        .await
        .expect("in the check");
    for n in 0..10 {
        let mut alice = send_login(addr, "127.0.0.2", &format!("alice{n}"), "alice").await;
        let reason = tokio::time::timeout(WAIT, connack(&mut alice))
            .await
            .unwrap_or_else(|_| panic!("refusal {n} did not come at once"));
        assert_eq!(reason, ConnectAckReason::ServerBusy);
    }
    release();
    assert_eq!(connack(&mut first).await, ConnectAckReason::Success);
    // Nothing was held against alice: her login now goes straight in.
    let mut alice = send_login(addr, "127.0.0.2", "alice", "alice").await;
    let reason = tokio::time::timeout(WAIT, connack(&mut alice))
        .await
        .expect("alice's login is not held back");
    assert_eq!(reason, ConnectAckReason::Success);
    broker.shutdown().await;
}

fn claimed(id: &str, user: &str) -> v5::Connect {
    let mut c = connect5(id);
    c.username = Some(user.into());
    c
}

async fn connect_as(addr: SocketAddr, id: &str, user: &str) -> (Raw, ConnectAckReason) {
    let (raw, ack) = Raw::connect5(addr, claimed(id, user)).await;
    (raw, ack.reason_code)
}

/// One identity holds at most `max_connections_per_user` connections:
/// one more gets 5.0 CONNACK 0x97 / 3.1.1 code 3, a takeover of its own
/// client id is not one more, and a place comes back when a connection
/// closes (normally, lost) or when a charged CONNECT is refused later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_identity_holds_at_most_max_connections_per_user() {
    let config = Config {
        per_user: PerUserLimits {
            max_connections_per_user: 2,
            ..test_config().per_user
        },
        ..test_config()
    };
    let broker = roomq::Broker::new(config).start().await.unwrap();
    let addr = broker.local_addr();
    // bob's session "shared-id": alice may not take it (refused after her
    // connection was counted, which must not keep her place).
    let (_bob, reason) = connect_as(addr, "shared-id", "bob").await;
    assert_eq!(reason, ConnectAckReason::Success);
    let (_, reason) = connect_as(addr, "shared-id", "alice").await;
    assert_eq!(reason, ConnectAckReason::NotAuthorized);
    let (mut phone, reason) = connect_as(addr, "alice-phone", "alice").await;
    assert_eq!(reason, ConnectAckReason::Success);
    let (laptop, reason) = connect_as(addr, "alice-laptop", "alice").await;
    assert_eq!(reason, ConnectAckReason::Success);
    let (_, reason) = connect_as(addr, "alice-tablet", "alice").await;
    assert_eq!(reason, ConnectAckReason::QuotaExceeded);
    let mut v3 = connect3("alice-iot", true);
    v3.username = Some("alice".into());
    let (_, ack) = Raw::connect3(addr, v3).await;
    assert_eq!(
        ack.return_code,
        rmqtt_codec::v3::ConnectAckReason::ServiceUnavailable
    );
    // Another identity is not affected.
    let (_carol, reason) = connect_as(addr, "carol-phone", "carol").await;
    assert_eq!(reason, ConnectAckReason::Success);
    // The phone reconnects with its client id while the old connection
    // still looks open: a takeover, not a third connection.
    let (_phone_again, reason) = connect_as(addr, "alice-phone", "alice").await;
    assert_eq!(reason, ConnectAckReason::Success);
    assert!(matches!(
        phone.recv5().await,
        Got::Packet(v5::Packet::Disconnect(_)) | Got::Closed
    ));
    // A connection lost gives its place back (the broker notices the
    // close on its own time: bounded retries, not a sleep).
    drop(laptop);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_tablet, reason) = connect_as(addr, "alice-tablet", "alice").await;
        if reason == ConnectAckReason::Success {
            break;
        }
        assert_eq!(reason, ConnectAckReason::QuotaExceeded);
        assert!(
            tokio::time::Instant::now() < deadline,
            "the lost connection's place never came back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    broker.shutdown().await;
}
