//! Cluster mode under failures: a nats-server killed during QoS 1 load, a
//! roomq node killed during QoS 1 load, and JetStream without quorum. The
//! promise checked: a PUBACK means the message is stored; every
//! acknowledged message is in the history exactly once after publishers
//! re-send what was not acknowledged (through another node if theirs died).
#![cfg(feature = "cluster")]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::chat::{history, publish_with};
use common::nats::NatsCluster;
use common::{Got, Raw};
use parking_lot::Mutex;
use rmqtt_codec::v5::{self, Packet, PublishAckReason};
use roomq::config::{ChatConfig, StoreConfig};
use roomq::{Broker, Config};

/// How long a poster waits for a PUBACK before it reconnects and re-sends.
const ACK_WAIT: Duration = Duration::from_secs(10);
/// How long all posting may take, failures included.
const POSTING_DEADLINE: Duration = Duration::from_secs(180);

fn node_config(nats: &NatsCluster, node: &str) -> Config {
    Config {
        store: StoreConfig {
            store_stall_timeout_ms: 1000,
            ..nats.node_config(node).store
        },
        chat: ChatConfig {
            history_max_limit: 10_000,
            ..nats.node_config(node).chat
        },
        ..nats.node_config(node)
    }
}

/// What a poster saw.
#[derive(Default)]
struct Posted {
    /// msg-ids with a successful PUBACK.
    acked: Vec<String>,
    /// PUBACKs that refused (0x97, 0x80) or never came, before a re-send.
    retries: usize,
}

/// Posts `count` messages with msg-ids `{name}-{n}` into `room`, each until
/// it gets a successful PUBACK: after a refusal, a silence of `ACK_WAIT`
/// or a lost connection, it reconnects (to the first of `addrs` that
/// answers) and sends the same msg-id again.
async fn post_through_failures(
    addrs: Arc<Mutex<Vec<SocketAddr>>>,
    name: String,
    room: &'static str,
    count: u16,
    posted: Arc<Mutex<Posted>>,
) {
    let mut client: Option<Raw> = None;
    for n in 1..=count {
        let msg_id = format!("{name}-{n}");
        loop {
            let c = match client.as_mut() {
                Some(c) => c,
                None => {
                    client = connect_any(&addrs, &name).await;
                    if client.is_none() {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    continue;
                }
            };
            let p = publish_with(
                &format!("rooms/{room}/msg/{name}"),
                msg_id.as_bytes(),
                Some(n),
                &[("msg-id", &msg_id)],
            );
            if c.try_send5(Packet::Publish(Box::new(p))).await.is_err() {
                client = None;
                continue;
            }
            match c.recv5_within(ACK_WAIT).await {
                Got::Packet(Packet::PublishAck(ack)) if ack.reason_code == PublishAckReason::Success => {
                    posted.lock().acked.push(msg_id.clone());
                    break;
                }
                Got::Packet(Packet::PublishAck(_)) => {
                    posted.lock().retries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                _ => {
                    posted.lock().retries += 1;
                    client = None;
                }
            }
        }
    }
}

async fn connect_any(addrs: &Mutex<Vec<SocketAddr>>, name: &str) -> Option<Raw> {
    let candidates = addrs.lock().clone();
    for addr in candidates {
        let mut connect = common::connect5(name);
        connect.username = Some(name.into());
        if let Some((c, ack)) = Raw::try_connect5(addr, connect).await {
            if ack.reason_code == v5::ConnectAckReason::Success {
                return Some(c);
            }
        }
    }
    None
}

/// Every acknowledged msg-id is in `room`'s history on `addr`, and no
/// msg-id is there twice.
async fn assert_history_holds(addr: SocketAddr, room: &str, posted: &[Arc<Mutex<Posted>>]) {
    let answer = history(addr, room).await;
    let mut counts = std::collections::HashMap::new();
    for m in &answer.messages {
        *counts.entry(m.msg_id.clone().unwrap_or_default()).or_insert(0) += 1;
    }
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "msg-ids stored twice: {twice:?}");
    for p in posted {
        for id in &p.lock().acked {
            assert!(counts.contains_key(id), "acknowledged {id} is not in the history");
        }
    }
    for pair in answer.messages.windows(2) {
        assert!(pair[1].seq > pair[0].seq);
        assert_eq!(
            pair[1].prev, pair[0].seq,
            "history's prev chain breaks at {}",
            pair[1].seq
        );
    }
}

/// The server (index) that leads the room stream now.
async fn rooms_stream_leader(nats: &NatsCluster) -> usize {
    let client = async_nats::connect(nats.urls()[0].as_str()).await.expect("NATS");
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream("ROOMQ_ROOMS").await.expect("the room stream");
    let info = stream.info().await.expect("stream info");
    let leader = info
        .cluster
        .as_ref()
        .and_then(|c| c.leader.clone())
        .expect("a leader");
    leader
        .trim_start_matches('n')
        .parse()
        .expect("server names are n0, n1, n2")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_server_killed_during_qos1_load_loses_no_acknowledged_message() {
    let mut nats = NatsCluster::start(3);
    let a = Broker::new(node_config(&nats, "a")).start().await.unwrap();
    let b = Broker::new(node_config(&nats, "b")).start().await.unwrap();
    let posted: Vec<Arc<Mutex<Posted>>> = (0..2).map(|_| Arc::default()).collect();
    let tasks: Vec<_> = [&a, &b]
        .iter()
        .zip(&posted)
        .enumerate()
        .map(|(i, (node, posted))| {
            let addrs = Arc::new(Mutex::new(vec![node.local_addr()]));
            tokio::spawn(post_through_failures(
                addrs,
                format!("p{i}"),
                "load",
                150,
                posted.clone(),
            ))
        })
        .collect();
    while posted[0].lock().acked.len() < 40 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let leader = rooms_stream_leader(&nats).await;
    nats.servers[leader].kill();
    for task in tasks {
        // Bounded: a broker that never acknowledges again fails the test.
        tokio::time::timeout(POSTING_DEADLINE, task)
            .await
            .expect("the posters finished in time")
            .unwrap();
    }
    assert_eq!(posted[0].lock().acked.len(), 150);
    assert_history_holds(b.local_addr(), "load", &posted).await;
    assert_history_holds(a.local_addr(), "load", &posted).await;
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_roomq_node_killed_during_qos1_load_loses_no_acknowledged_message() {
    let nats = NatsCluster::start(3);
    let (mut killed, x_addr, _dir) =
        common::nats::spawn_node(&nats, "x", "store_stall_timeout_ms = 1000", "");
    let y = Broker::new(node_config(&nats, "y")).start().await.unwrap();
    // The posters start on node x and move to node y when x dies.
    let addrs = Arc::new(Mutex::new(vec![x_addr, y.local_addr()]));
    let posted: Vec<Arc<Mutex<Posted>>> = (0..2).map(|_| Arc::default()).collect();
    let tasks: Vec<_> = posted
        .iter()
        .enumerate()
        .map(|(i, posted)| {
            tokio::spawn(post_through_failures(
                addrs.clone(),
                format!("q{i}"),
                "crash",
                150,
                posted.clone(),
            ))
        })
        .collect();
    while posted[0].lock().acked.len() < 50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    killed.kill().unwrap();
    killed.wait().unwrap();
    addrs.lock().remove(0);
    for task in tasks {
        // Bounded: a broker that never acknowledges again fails the test.
        tokio::time::timeout(POSTING_DEADLINE, task)
            .await
            .expect("the posters finished in time")
            .unwrap();
    }
    assert!(
        posted.iter().any(|p| p.lock().retries > 0),
        "the kill interrupted no one"
    );
    assert_history_holds(y.local_addr(), "crash", &posted).await;
    y.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_quorum_nothing_is_acknowledged_and_publishing_resumes() {
    let mut nats = NatsCluster::start(3);
    let a = Broker::new(node_config(&nats, "a")).start().await.unwrap();
    let mut c = common::chat::user5(a.local_addr(), "q", "q").await;
    let ack = common::chat::send_and_ack(
        &mut c,
        publish_with("rooms/q/msg/q", b"before", Some(1), &[("msg-id", "before")]),
    )
    .await;
    assert_eq!(ack.reason_code, PublishAckReason::Success);
    // Two of three servers gone: JetStream cannot store anything.
    nats.servers[1].kill();
    nats.servers[2].kill();
    let mut v3 = Raw::connect3(a.local_addr(), common::connect3("dev", true))
        .await
        .0;
    let ack = common::chat::send_and_ack(
        &mut c,
        publish_with("rooms/q/msg/q", b"during", Some(2), &[("msg-id", "during")]),
    )
    .await;
    assert!(
        matches!(
            ack.reason_code,
            PublishAckReason::QuotaExceeded | PublishAckReason::UnspecifiedError
        ),
        "a message JetStream could not store was acknowledged with {:?}",
        ack.reason_code
    );
    // 3.1.1 has no refusal: no PUBACK at all (the client re-sends later).
    v3.send3(rmqtt_codec::v3::Packet::Publish(Box::new(common::publish(
        "rooms/q/msg/dev",
        b"during",
        rmqtt_codec::types::QoS::AtLeastOnce,
        Some(1),
    ))))
    .await;
    match v3.recv3_within(Duration::from_secs(3)).await {
        Got::Nothing => {}
        other => panic!("3.1.1 publish without quorum got {other:?}"),
    }
    // Quorum back: publishing resumes by itself.
    nats.servers[1].restart();
    nats.servers[2].restart();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut id = 10;
    loop {
        id += 1;
        let ack = common::chat::send_and_ack(
            &mut c,
            publish_with("rooms/q/msg/q", b"after", Some(id), &[("msg-id", "after")]),
        )
        .await;
        if ack.reason_code == PublishAckReason::Success {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "publishing did not resume"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let answer = history(a.local_addr(), "q").await;
    let ids: Vec<_> = answer.messages.iter().filter_map(|m| m.msg_id.clone()).collect();
    assert!(
        ids.contains(&"before".to_string()) && ids.contains(&"after".to_string()),
        "{ids:?}"
    );
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_outlives_its_node() {
    let nats = NatsCluster::start(3);
    let (mut doomed, x_addr, _dir) = common::nats::spawn_node(&nats, "x", "", "");
    let y = Broker::new(node_config(&nats, "y")).start().await.unwrap();
    let mut connect = common::persistent5("member");
    connect.username = Some("m".into());
    let (mut member, _) = Raw::connect5(x_addr, connect.clone()).await;
    member
        .subscribe5(
            1,
            &[(
                "rooms/kept/msg/+",
                common::opts(rmqtt_codec::types::QoS::AtLeastOnce),
            )],
        )
        .await;
    let mut poster = common::chat::user5(y.local_addr(), "poster", "poster").await;
    let post = async |poster: &mut Raw, n: u16| {
        let p = publish_with("rooms/kept/msg/poster", format!("m{n}").as_bytes(), Some(n), &[]);
        let ack = common::chat::send_and_ack(poster, p).await;
        assert_eq!(ack.reason_code, PublishAckReason::Success);
    };
    post(&mut poster, 1).await;
    let first = common::cluster::receive(&mut member, 1).await;
    assert_eq!(&first[0].payload[..], b"m1");
    // Node x dies with the member's session on it; more is posted.
    doomed.kill().unwrap();
    doomed.wait().unwrap();
    for n in 2..=6 {
        post(&mut poster, n).await;
    }
    let (mut member, ack) = Raw::connect5(y.local_addr(), connect).await;
    assert!(ack.session_present, "the session died with its node");
    // Message 1 was acknowledged, but the cursor is saved every 100
    // messages or at disconnect: it may come again (QoS 1), then 2..6.
    let mut bodies = Vec::new();
    while bodies.last().is_none_or(|b: &Bytes| &b[..] != b"m6") {
        bodies.push(common::cluster::receive(&mut member, 1).await.remove(0).payload);
        assert!(bodies.len() <= 6, "{bodies:?}");
    }
    let tail: Vec<&[u8]> = bodies.iter().map(|b| &b[..]).filter(|b| *b != b"m1").collect();
    let expected: Vec<String> = (2..=6).map(|n| format!("m{n}")).collect();
    assert_eq!(tail, expected.iter().map(|s| s.as_bytes()).collect::<Vec<_>>());
    y.shutdown().await;
}

/// NATS credentials: a node with the server's token joins; one with a
/// wrong token does not start, and says which servers refused it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_credentials_are_used_and_a_refusal_is_clear() {
    let nats = NatsCluster::start_with(1, "authorization { token: \"s3cret\" }");
    let with_token = |token: &str| {
        let mut config = node_config(&nats, "t");
        if let Some(c) = config.cluster.as_mut() {
            c.token = Some(token.into());
            c.replicas = 1;
        }
        config
    };
    let node = Broker::new(with_token("s3cret"))
        .start()
        .await
        .expect("joins with the token");
    let mut poster = common::chat::user5(node.local_addr(), "p", "p").await;
    let ack =
        common::chat::send_and_ack(&mut poster, publish_with("rooms/t/msg/p", b"hi", Some(1), &[])).await;
    assert_eq!(ack.reason_code, PublishAckReason::Success);
    node.shutdown().await;
    let refused = Broker::new(with_token("wrong")).start().await;
    let error = refused.err().expect("a wrong token is refused").to_string();
    assert!(
        error.contains("cannot connect to NATS") && error.contains(&nats.urls()[0]),
        "unclear error: {error}"
    );
}

/// A persistent session's plain QoS 1 messages (one in flight, four
/// queued while it was offline) outlive the node that held them: the
/// client resumes on another node and gets all five, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sessions_plain_messages_outlive_its_node() {
    use rmqtt_codec::types::QoS;
    let nats = NatsCluster::start(3);
    let (mut doomed, x_addr, _dir) = common::nats::spawn_node(&nats, "x", "", "");
    let y = Broker::new(node_config(&nats, "y")).start().await.unwrap();
    let connect = common::persistent5("device-7");
    let (mut device, _) = Raw::connect5(x_addr, connect.clone()).await;
    device
        .subscribe5(1, &[("alerts/#", common::opts(QoS::AtLeastOnce))])
        .await;
    let mut sensor = Raw::client5(x_addr, "sensor").await;
    let ack = sensor.publish1_5(1, "alerts/boiler", b"a1").await;
    assert_eq!(ack.reason_code, PublishAckReason::Success);
    // Received, never acknowledged: in flight with its packet id.
    let first = device.publish5().await;
    assert_eq!(&first.payload[..], b"a1");
    drop(device);
    for (n, body) in [(2, &b"a2"[..]), (3, b"a3"), (4, b"a4"), (5, b"a5")] {
        let p = common::publish(&format!("alerts/{n}"), body, QoS::AtLeastOnce, Some(n));
        assert_eq!(sensor.puback_of(p).await, PublishAckReason::Success);
    }
    // Node x dies holding the session; the device comes back on y.
    doomed.kill().unwrap();
    doomed.wait().unwrap();
    let (mut device, ack) = Raw::connect5(y.local_addr(), connect).await;
    assert!(ack.session_present, "the session died with its node");
    let mut bodies = Vec::new();
    while bodies.len() < 5 {
        match device.recv5().await {
            Got::Packet(Packet::Publish(p)) => {
                common::chat::ack_publish5(&mut device, &p).await;
                bodies.push(p.payload.clone());
            }
            Got::Packet(_) => {}
            other => panic!(
                "expected the queued messages, got {} then {other:?}",
                bodies.len()
            ),
        }
    }
    let expected: Vec<Bytes> = ["a1", "a2", "a3", "a4", "a5"].map(Bytes::from).to_vec();
    assert_eq!(bodies, expected, "the queue as the dead node held it");
    y.shutdown().await;
}

/// A node whose NATS has no JetStream waits for it without end; a
/// SIGTERM then stops it (it went on waiting, and `scripts/cluster stop`
/// left such nodes running: newcomer pass).
#[tokio::test]
async fn a_node_waiting_for_jetstream_stops_on_sigterm() {
    let port = common::nats::free_port();
    // A nats-server without JetStream: roomq connects, and waits.
    let mut nats = std::process::Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("nats-server runs (./scripts/test installs the Debian package)");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("x.toml");
    std::fs::write(
        &config,
        format!("storage = \"memory\"\nlisten = \"127.0.0.1:0\"\n[cluster]\nnats = [\"nats://127.0.0.1:{port}\"]\nnode = \"x\"\nreplicas = 1\n"),
    )
    .unwrap();
    let mut node = std::process::Command::new(env!("CARGO_BIN_EXE_roomq"))
        .arg("-c")
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Well into its start-up (it cannot finish it).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(node.try_wait().unwrap().is_none(), "the node gave up by itself");
    let status = std::process::Command::new("kill")
        .args(["-TERM", &node.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // Its start would give up by itself after 30 s (docs/cluster.md);
    // a SIGTERM ends it well before.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let stopped = loop {
        if let Some(code) = node.try_wait().unwrap() {
            break Some(code);
        }
        if std::time::Instant::now() > deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let _ = node.kill();
    let _ = node.wait();
    let _ = nats.kill();
    let _ = nats.wait();
    assert!(
        stopped.is_some(),
        "the node did not stop on SIGTERM during start-up"
    );
}
