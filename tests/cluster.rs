//! Cluster mode: three roomq nodes on a three-server NATS JetStream
//! cluster (`tests/common/nats.rs`) behave as one broker, with real
//! clients on different nodes.
#![cfg(feature = "cluster")]

mod common;

use bytes::Bytes;
use common::chat::{ack_publish5, history, publish_with, send_and_ack, seq_of, user_props};
use common::cluster::{receive, three_nodes, wait_until_routed};
use common::nats::NatsCluster;
use common::{opts, publish, Got, Raw, QUIET, WAIT};
use rmqtt_codec::types::QoS;
use rmqtt_codec::v5::{self, Packet, PublishAckReason};
use roomq::chat::payloads;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_members_on_three_nodes_see_one_order() {
    let nats = NatsCluster::start(3);
    let nodes = three_nodes(&nats).await;
    let mut members = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let mut m = Raw::client5(node.local_addr(), &format!("member-{i}")).await;
        m.subscribe5(1, &[("rooms/lobby/msg/+", opts(QoS::AtLeastOnce))])
            .await;
        members.push(m);
    }
    // Three posters, one per node, at the same time.
    let posters: Vec<_> = nodes
        .iter()
        .enumerate()
        .map(|(i, node)| {
            let addr = node.local_addr();
            tokio::spawn(async move {
                let sender = format!("poster{i}");
                let mut c = Raw::client5(addr, &sender).await;
                for n in 1..=20u16 {
                    let ack = send_and_ack(
                        &mut c,
                        publish_with(
                            &format!("rooms/lobby/msg/{sender}"),
                            format!("{i}-{n}").as_bytes(),
                            Some(n),
                            &[],
                        ),
                    )
                    .await;
                    assert_eq!(ack.reason_code, PublishAckReason::Success);
                }
            })
        })
        .collect();
    for poster in posters {
        poster.await.unwrap();
    }
    let mut orders = Vec::new();
    for m in &mut members {
        let got = receive(m, 60).await;
        let order: Vec<(u64, u64, Bytes)> = got
            .iter()
            .map(|p| {
                (
                    seq_of(p),
                    user_props(p)["prev"].parse().unwrap(),
                    p.payload.clone(),
                )
            })
            .collect();
        // Strictly increasing, and each message names the one before it.
        for pair in order.windows(2) {
            assert!(pair[1].0 > pair[0].0, "seq goes down: {pair:?}");
            assert_eq!(
                pair[1].1, pair[0].0,
                "prev of {} is not the seq before it",
                pair[1].0
            );
        }
        orders.push(order);
    }
    assert_eq!(
        orders[0], orders[1],
        "members on nodes a and b saw different orders"
    );
    assert_eq!(
        orders[0], orders[2],
        "members on nodes a and c saw different orders"
    );
    // Any node's history is that order.
    let answer = history(nodes[2].local_addr(), "lobby").await;
    let history: Vec<(u64, u64, Bytes)> = answer
        .messages
        .iter()
        .map(|m| (m.seq, m.prev, Bytes::from(m.body.clone().unwrap_or_default())))
        .collect();
    assert_eq!(history, orders[0]);
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_msg_id_posted_through_two_nodes_is_stored_once() {
    let nats = NatsCluster::start(3);
    let nodes = three_nodes(&nats).await;
    // A device's retry after its node died: the same msg-id, another node.
    for node in &nodes[..2] {
        let (mut dev, _) = Raw::connect3(node.local_addr(), common::connect3("boiler-7", true)).await;
        dev.send3(rmqtt_codec::v3::Packet::Publish(Box::new(publish(
            "rooms/ops/msg/boiler-7/a1b2",
            b"pressure high",
            QoS::AtLeastOnce,
            Some(1),
        ))))
        .await;
        match dev.recv3().await.packet() {
            rmqtt_codec::v3::Packet::PublishAck { .. } => {}
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
    // Both at the same moment through two nodes.
    let racers: Vec<_> = nodes[1..]
        .iter()
        .enumerate()
        .map(|(i, node)| {
            let addr = node.local_addr();
            tokio::spawn(async move {
                let p = publish_with("rooms/ops/msg/twin", b"said once", Some(1), &[("msg-id", "t-1")]);
                let mut c = common::chat::user5(addr, &format!("twin-{i}"), "twin").await;
                send_and_ack(&mut c, p).await.reason_code
            })
        })
        .collect();
    for racer in racers {
        assert_eq!(racer.await.unwrap(), PublishAckReason::Success);
    }
    for node in &nodes {
        let answer = history(node.local_addr(), "ops").await;
        let bodies: Vec<&[u8]> = answer
            .messages
            .iter()
            .map(|m| m.body.as_deref().unwrap_or_default())
            .collect();
        assert_eq!(
            bodies.iter().filter(|b| **b == b"pressure high").count(),
            1,
            "{bodies:?}"
        );
        assert_eq!(
            bodies.iter().filter(|b| **b == b"said once").count(),
            1,
            "{bodies:?}"
        );
    }
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_messages_wildcards_and_retained_cross_nodes() {
    let nats = NatsCluster::start(3);
    let nodes = three_nodes(&nats).await;
    let mut sub = Raw::client5(nodes[1].local_addr(), "sub-b").await;
    sub.subscribe5(1, &[("sensors/+/temp", opts(QoS::AtLeastOnce))])
        .await;
    let mut publisher = Raw::client5(nodes[0].local_addr(), "pub-a").await;
    wait_until_routed(&mut publisher, &mut sub, "sensors/probe/temp").await;
    let ack = send_and_ack(
        &mut publisher,
        publish("sensors/x/temp", b"21.5", QoS::AtLeastOnce, Some(1)),
    )
    .await;
    assert_eq!(ack.reason_code, PublishAckReason::Success);
    let got = receive(&mut sub, 1).await;
    assert_eq!(got[0].topic, "sensors/x/temp");
    assert_eq!(&got[0].payload[..], b"21.5");
    assert_eq!(got[0].qos, QoS::AtLeastOnce);
    // Exactly one copy, though the node is subscribed on NATS too.
    assert!(matches!(sub.recv5_within(QUIET).await, Got::Nothing));

    // Retained on node a, read on node c by a new subscriber; cleared on
    // node b, gone on node c.
    let mut retained = publish("status/boiler", b"on", QoS::AtLeastOnce, Some(2));
    retained.retain = true;
    assert_eq!(
        send_and_ack(&mut publisher, retained).await.reason_code,
        PublishAckReason::Success
    );
    let mut reader = Raw::client5(nodes[2].local_addr(), "reader-c").await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        reader
            .subscribe5(1, &[("status/#", opts(QoS::AtLeastOnce))])
            .await;
        match reader.recv5_within(QUIET).await {
            Got::Packet(Packet::Publish(p)) => {
                assert_eq!(&p.payload[..], b"on");
                assert!(p.retain);
                break;
            }
            _ => assert!(
                tokio::time::Instant::now() < deadline,
                "retained message never reached node c"
            ),
        }
    }
    let mut clearer = Raw::client5(nodes[1].local_addr(), "clearer-b").await;
    let mut clear = publish("status/boiler", b"", QoS::AtLeastOnce, Some(1));
    clear.retain = true;
    assert_eq!(
        send_and_ack(&mut clearer, clear).await.reason_code,
        PublishAckReason::Success
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut late = Raw::client5(nodes[2].local_addr(), "late-c").await;
        late.subscribe5(1, &[("status/#", opts(QoS::AtLeastOnce))]).await;
        if let Got::Nothing = late.recv5_within(QUIET).await {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "cleared retained message still on node c"
        );
    }
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_subscription_gets_each_message_once_across_nodes() {
    let nats = NatsCluster::start(3);
    let nodes = three_nodes(&nats).await;
    let mut workers = Vec::new();
    for (i, node) in nodes[1..].iter().enumerate() {
        let mut w = Raw::client5(node.local_addr(), &format!("worker-{i}")).await;
        w.subscribe5(1, &[("$share/g/jobs/#", opts(QoS::AtLeastOnce))])
            .await;
        workers.push(w);
    }
    let mut plain = Raw::client5(nodes[2].local_addr(), "watcher").await;
    plain.subscribe5(1, &[("jobs/#", opts(QoS::AtLeastOnce))]).await;
    let mut publisher = Raw::client5(nodes[0].local_addr(), "boss").await;
    wait_until_routed(&mut publisher, &mut plain, "jobs/probe").await;
    // The probes went to the group too: drain them.
    for w in &mut workers {
        while let Got::Packet(p) = w.recv5_within(QUIET).await {
            if let Packet::Publish(p) = p {
                ack_publish5(w, &p).await;
            }
        }
    }
    for i in 1..=20u16 {
        let ack = send_and_ack(
            &mut publisher,
            publish("jobs/build", b"job", QoS::AtLeastOnce, Some(i)),
        )
        .await;
        assert_eq!(ack.reason_code, PublishAckReason::Success);
    }
    assert_eq!(receive(&mut plain, 20).await.len(), 20);
    let mut total = 0;
    for w in &mut workers {
        while let Got::Packet(p) = w.recv5_within(QUIET).await {
            if let Packet::Publish(p) = p {
                ack_publish5(w, &p).await;
                total += 1;
            }
        }
    }
    assert_eq!(total, 20, "the group got {total} copies of 20 messages");
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_and_wills_across_nodes() {
    let nats = NatsCluster::start(3);
    let nodes = three_nodes(&nats).await;
    let mut watcher = Raw::client5(nodes[2].local_addr(), "watcher").await;
    watcher
        .subscribe5(1, &[("wills/#", opts(QoS::AtLeastOnce))])
        .await;
    let mut prober = Raw::client5(nodes[0].local_addr(), "prober").await;
    wait_until_routed(&mut prober, &mut watcher, "wills/probe").await;

    // The same client id on node b takes over the connection on node a
    // (with Clean Start: the old session ends, so its will is sent).
    let mut first = common::connect5("phone");
    first.last_will = Some(common::will("wills/phone", b"gone", None, false));
    let (mut old, _) = Raw::connect5(nodes[0].local_addr(), first).await;
    let (mut new, ack) = Raw::connect5(nodes[1].local_addr(), common::connect5("phone")).await;
    assert_eq!(ack.reason_code, v5::ConnectAckReason::Success);
    assert_eq!(
        old.expect_disconnect5().await,
        v5::DisconnectReasonCode::SessionTakenOver
    );
    let got = receive(&mut watcher, 1).await;
    assert_eq!(got[0].topic, "wills/phone");

    // A client with a will on node a drops: the watcher on node c gets it.
    let mut with_will = common::connect5("sensor");
    with_will.last_will = Some(common::will("wills/sensor", b"sensor lost", None, false));
    let (sensor, _) = Raw::connect5(nodes[0].local_addr(), with_will).await;
    drop(sensor);
    let got = receive(&mut watcher, 1).await;
    assert_eq!(got[0].topic, "wills/sensor");
    assert_eq!(&got[0].payload[..], b"sensor lost");
    new.send5(Packet::Disconnect(v5::Disconnect::default())).await;
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_session_resumes_on_another_node_with_its_backlog() {
    let nats = NatsCluster::start(3);
    let nodes = three_nodes(&nats).await;
    let addr = |i: usize| nodes[i].local_addr();
    let mut connect = common::persistent5("member");
    connect.username = Some("m".into());
    let (mut member, ack) = Raw::connect5(addr(1), connect.clone()).await;
    assert!(!ack.session_present);
    member
        .subscribe5(
            1,
            &[
                ("rooms/team/msg/+", opts(QoS::AtLeastOnce)),
                ("alerts/#", opts(QoS::AtLeastOnce)),
            ],
        )
        .await;
    member.send5(Packet::Disconnect(v5::Disconnect::default())).await;
    // A watcher on node b shows when node b gets node a's plain messages.
    let mut watcher = Raw::client5(addr(1), "watcher").await;
    watcher
        .subscribe5(1, &[("alerts/#", opts(QoS::AtLeastOnce))])
        .await;
    let mut poster = common::chat::user5(addr(0), "poster", "poster").await;
    wait_until_routed(&mut poster, &mut watcher, "alerts/probe").await;
    for n in 1..=10u16 {
        let p = publish_with(
            "rooms/team/msg/poster",
            format!("room-{n}").as_bytes(),
            Some(n),
            &[],
        );
        assert_eq!(
            send_and_ack(&mut poster, p).await.reason_code,
            PublishAckReason::Success
        );
    }
    for n in 1..=5u16 {
        let mut p = publish("alerts/x", b"", QoS::AtLeastOnce, Some(100 + n));
        p.payload = Bytes::from(format!("alert-{n}"));
        assert_eq!(
            send_and_ack(&mut poster, p).await.reason_code,
            PublishAckReason::Success
        );
    }
    assert_eq!(receive(&mut watcher, 5).await.len(), 5);

    // Back, on node c.
    let (mut member, ack) = Raw::connect5(addr(2), connect.clone()).await;
    assert!(ack.session_present, "node c did not get the session from node b");
    let got = receive(&mut member, 15).await;
    let rooms: Vec<&[u8]> = got
        .iter()
        .filter(|p| p.topic.starts_with("rooms/"))
        .map(|p| &p.payload[..])
        .collect();
    let expected: Vec<String> = (1..=10).map(|n| format!("room-{n}")).collect();
    assert_eq!(rooms, expected.iter().map(|s| s.as_bytes()).collect::<Vec<_>>());
    let seqs: Vec<u64> = got
        .iter()
        .filter(|p| p.topic.starts_with("rooms/"))
        .map(seq_of)
        .collect();
    assert!(seqs.windows(2).all(|w| w[1] > w[0]), "{seqs:?}");
    let alerts: Vec<&[u8]> = got
        .iter()
        .filter(|p| p.topic == "alerts/x")
        .map(|p| &p.payload[..])
        .collect();
    let expected: Vec<String> = (1..=5).map(|n| format!("alert-{n}")).collect();
    assert_eq!(alerts, expected.iter().map(|s| s.as_bytes()).collect::<Vec<_>>());

    // Connected on node c, it connects again on node a: the connection on
    // node c is taken over, and the session goes on on node a.
    let (_again, ack) = Raw::connect5(addr(0), connect).await;
    assert!(ack.session_present);
    assert_eq!(
        member.expect_disconnect5().await,
        v5::DisconnectReasonCode::SessionTakenOver
    );
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_and_receipts_cross_nodes() {
    let nats = NatsCluster::start(3);
    let nodes = three_nodes(&nats).await;
    let mut member = common::chat::user5(nodes[1].local_addr(), "member", "mia").await;
    member
        .subscribe5(
            1,
            &[
                ("rooms/r/typing/+", opts(QoS::AtMostOnce)),
                ("rooms/r/read/+", opts(QoS::AtLeastOnce)),
            ],
        )
        .await;
    let mut ann = common::chat::user5(nodes[0].local_addr(), "ann-phone", "ann").await;
    let ack = send_and_ack(&mut ann, publish_with("rooms/r/msg/ann", b"hi", Some(1), &[])).await;
    assert_eq!(ack.reason_code, PublishAckReason::Success);
    let typing = payloads::to_cbor(&payloads::Typing { typing: true });
    // Typing is QoS 0 and never stored: send until the member's node has
    // the interest (each event is allowed once a second).
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        ann.send5(Packet::Publish(Box::new(publish_with(
            "rooms/r/typing/ann",
            &typing,
            None,
            &[],
        ))))
        .await;
        if let Got::Packet(Packet::Publish(p)) =
            member.recv5_within(std::time::Duration::from_millis(1100)).await
        {
            assert_eq!(p.topic, "rooms/r/typing/ann");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "typing never crossed nodes"
        );
    }
    for i in 2..=3u16 {
        let ack = send_and_ack(&mut ann, publish_with("rooms/r/msg/ann", b"more", Some(i), &[])).await;
        assert_eq!(ack.reason_code, PublishAckReason::Success);
    }
    let seqs: Vec<u64> = history(nodes[2].local_addr(), "r")
        .await
        .messages
        .iter()
        .map(|m| m.seq)
        .collect();
    let receipt = |seq: u64| payloads::to_cbor(&payloads::Receipt { seq });
    let read_seq =
        |p: &rmqtt_codec::types::Publish| payloads::from_cbor::<payloads::Receipt>(&p.payload).unwrap().seq;
    // Read up to the first message on the tablet (node c), up to the last
    // on the phone (node a): the member on node b gets both.
    let mut tablet = common::chat::user5(nodes[2].local_addr(), "ann-tablet", "ann").await;
    let ack = send_and_ack(
        &mut tablet,
        publish_with("rooms/r/read/ann", &receipt(seqs[0]), Some(1), &[]),
    )
    .await;
    assert_eq!(ack.reason_code, PublishAckReason::Success);
    assert_eq!(read_seq(&receive(&mut member, 1).await[0]), seqs[0]);
    let ack = send_and_ack(
        &mut ann,
        publish_with("rooms/r/read/ann", &receipt(seqs[2]), Some(4), &[]),
    )
    .await;
    assert_eq!(ack.reason_code, PublishAckReason::Success);
    assert_eq!(read_seq(&receive(&mut member, 1).await[0]), seqs[2]);
    // Once node c has the higher receipt, the tablet's lower one (the
    // middle message) is ignored there: receipts only move forward.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut reader = Raw::client5(nodes[2].local_addr(), "reader").await;
        reader
            .subscribe5(1, &[("rooms/r/read/ann", opts(QoS::AtLeastOnce))])
            .await;
        if let Got::Packet(Packet::Publish(p)) = reader.recv5_within(QUIET).await {
            if read_seq(&p) == seqs[2] {
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the receipt never reached node c"
        );
    }
    let ack = send_and_ack(
        &mut tablet,
        publish_with("rooms/r/read/ann", &receipt(seqs[1]), Some(2), &[]),
    )
    .await;
    assert_eq!(ack.reason_code, PublishAckReason::Success);
    assert!(
        matches!(member.recv5_within(QUIET).await, Got::Nothing),
        "a lower receipt was delivered"
    );
    for node in nodes {
        node.shutdown().await;
    }
}

/// The example of `docs/cluster.md` (*Running one*), as written, against three nodes: its
/// `-p 1883` and `-p 1884` become nodes a and b.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_example_of_the_docs_works() {
    let page = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/cluster.md")).unwrap();
    let block = page
        .split("```sh\n")
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .find(|b| b.contains("scripts/cluster start"))
        .expect("the cluster example of docs/cluster.md");
    let nats = NatsCluster::start(3);
    let nodes = three_nodes(&nats).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sub.txt");
    let mut script = String::from("set -e\n");
    for line in block.lines().filter(|l| l.contains("mosquitto_")) {
        let mut line = line.split(" #").next().unwrap().to_string();
        for (i, port) in ["1883", "1884", "1885"].iter().enumerate() {
            line = line.replace(
                &format!("-p {port}"),
                &format!("-p {}", nodes[i].local_addr().port()),
            );
        }
        if line.trim_end().ends_with('&') {
            // The subscriber: bounded, its output kept, a moment to subscribe.
            let line = line.trim_end().trim_end_matches('&');
            script.push_str(&format!("{line} -W 5 -C 1 > {} &\nsleep 1\n", out.display()));
        } else {
            script.push_str(&line);
            script.push('\n');
        }
    }
    script.push_str("wait\n");
    let status = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(&script)
        .status()
        .await
        .unwrap();
    assert!(status.success(), "the example failed:\n{script}");
    let seen = std::fs::read_to_string(&out).unwrap();
    assert!(
        seen.starts_with("rooms/ops/msg/alice hello from node a seq:"),
        "node b's subscriber saw {seen:?}"
    );
    for node in nodes {
        node.shutdown().await;
    }
}
