//! The loads of the issue "Nothing a client sends is held without bound":
//! `ws-ping-flood` (8 s of WebSocket pings, never reading the pongs, no
//! CONNECT), `wrong-logins` (400 concurrent wrong passwords for one user,
//! and a correct login of another user in the middle: its latency),
//! `long-msg-ids` (3,000 room messages with 60 KB msg-ids), `slow-consumer`
//! (10,000 QoS 0 publishes of 200 KB to a subscriber that never reads),
//! `subscriptions` (20,000 subscriptions with 60 KB filters),
//! `retained-flood` (200,000 retained messages, then 300 SUBSCRIBEs that
//! match nothing, one after another, while another client's delivery
//! latency is measured in each phase) and
//! `clean-ids` (40,000 clean connections with random client ids: RSS, and
//! how many retained `$presence` records a new subscriber gets).

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::SinkExt;
use rmqtt_codec::types::QoS;
use rmqtt_codec::v3::Packet;
use tokio::net::TcpStream;

use crate::client::Client;
use crate::{ms, walk_size, Broker, Extra, Probe};

pub async fn ws_ping_flood(broker: &Broker) -> Extra {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;
    let url = format!("ws://127.0.0.1:{}/mqtt", broker.ws_port);
    let Ok(socket) = TcpStream::connect(("127.0.0.1", broker.ws_port)).await else {
        return "no WebSocket listener".into();
    };
    let Ok(mut request) = url.into_client_request() else {
        return "bad url".into();
    };
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "mqtt".parse().expect("header"));
    let Ok((mut ws, _)) = tokio_tungstenite::client_async(request, socket).await else {
        return "upgrade refused".into();
    };
    let ping = Bytes::from(vec![0u8; 125]);
    let end = Instant::now() + Duration::from_secs(8);
    let mut sent = 0u64;
    let mut closed = false;
    while Instant::now() < end {
        match tokio::time::timeout(Duration::from_millis(500), ws.send(Message::Ping(ping.clone()))).await {
            Ok(Ok(())) => sent += 1,
            Ok(Err(_)) => {
                closed = true;
                break;
            }
            Err(_) => {}
        }
    }
    format!(
        "{sent} pings sent; connection {}",
        if closed {
            "closed by the broker"
        } else {
            "still open"
        }
    )
}

pub async fn wrong_logins(broker: &Broker) -> Extra {
    let addr = broker.addr;
    let n = broker.n(400);
    let guesses: Vec<_> = (0..n)
        .map(|i| {
            tokio::spawn(async move {
                Client::connect(addr, &format!("guess-{i}"), Some(("alice", "wrong")))
                    .await
                    .map(|(_, ok)| ok)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let correct = Client::connect(addr, "bob-1", Some(("bob", "right"))).await;
    let latency = started.elapsed();
    let answered = guesses.iter().filter(|g| g.is_finished()).count();
    for g in guesses {
        g.abort();
    }
    format!(
        "correct login {} after {:.0} ms ({answered} of {n} guesses answered by then)",
        if matches!(correct, Some((_, true))) {
            "accepted"
        } else {
            "refused"
        },
        latency.as_secs_f64() * 1000.0
    )
}

pub async fn long_msg_ids(broker: &Broker) -> Extra {
    let Some((mut c, _)) = Client::connect(broker.addr, "dev", None).await else {
        return "no connection".into();
    };
    let id = "i".repeat(60 * 1024);
    let n = broker.n(3000) as u16;
    for i in 0..n {
        c.publish(
            &format!("rooms/r/msg/dev/{id}{i}"),
            Bytes::from_static(b"x"),
            QoS::AtLeastOnce,
            i + 1,
            false,
        )
        .await;
        let _ = c.recv(Duration::from_secs(10)).await;
    }
    let disk: u64 = walk_size(broker.dir.path());
    format!("{n} messages; data dir {} MiB", disk / (1024 * 1024))
}

pub async fn slow_consumer(broker: &Broker) -> Extra {
    let Some((mut stuck, _)) = Client::connect(broker.addr, "never-reads", None).await else {
        return "no connection".into();
    };
    stuck.subscribe(1, "bulk").await;
    stuck.suback(Duration::from_secs(5)).await;
    let Some((mut publisher, _)) = Client::connect(broker.addr, "pub", None).await else {
        return "no connection".into();
    };
    let payload = Bytes::from(vec![7u8; 200 * 1024]);
    let n = broker.n(10_000);
    for _ in 0..n {
        publisher
            .publish("bulk", payload.clone(), QoS::AtMostOnce, 0, false)
            .await;
    }
    // A round trip, so the broker has read everything.
    publisher.subscribe(2, "sync").await;
    publisher.suback(Duration::from_secs(60)).await;
    drop(stuck);
    format!("{n} x 200 KB to a subscriber that never reads")
}

pub async fn subscriptions(broker: &Broker) -> Extra {
    let Some((mut c, _)) = Client::connect(broker.addr, "subs", None).await else {
        return "no connection".into();
    };
    let long = "f".repeat(60 * 1024);
    let mut granted = 0;
    let n = broker.n(20_000) as u16;
    for i in 0..n {
        c.subscribe(i.max(1), &format!("{long}/{i}")).await;
        if let Some(Packet::SubscribeAck { status, .. }) = c.recv(Duration::from_secs(10)).await {
            if status
                .iter()
                .all(|s| matches!(s, rmqtt_codec::v3::SubscribeReturnCode::Success(_)))
            {
                granted += 1;
            }
        }
    }
    format!("{granted} of {n} granted")
}

pub async fn retained_flood(broker: &Broker, probe: &mut Probe) -> Extra {
    // The probe's phase 0 is the retained writes, phase 1 the SUBSCRIBEs.
    let Some((mut c, _)) = Client::connect(broker.addr, "retainer", None).await else {
        return "no connection".into();
    };
    let started = Instant::now();
    let n = broker.n(200_000) as u32;
    for i in 0..n {
        c.publish(
            &format!("ret/{}/{i}", i % 100),
            Bytes::from_static(b"v"),
            QoS::AtMostOnce,
            0,
            true,
        )
        .await;
    }
    c.subscribe(1, "sync").await;
    c.suback(Duration::from_secs(120)).await;
    let stored_in = started.elapsed();
    probe.phase(1);
    // One client, 300 SUBSCRIBEs one after another, each waiting for its
    // SUBACK: the retained matching, not a connection storm.
    let Some((mut subscriber, _)) = Client::connect(broker.addr, "subscriber", None).await else {
        return "no connection".into();
    };
    let started = Instant::now();
    let subscribes = broker.n(300) as u16;
    for i in 0..subscribes {
        subscriber.subscribe(i + 1, &format!("nomatch/{i}/+/x")).await;
        subscriber.suback(Duration::from_secs(60)).await;
    }
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let phases = probe.stop().await;
    let (writes, subscribed) = (&phases[0], &phases[1]);
    format!(
        "{n} retained sent in {:.1} s: others' delivery p50 {:.2} ms, p99 {:.2} ms; \
         {subscribes} SUBSCRIBEs took {:.0} ms: p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms",
        stored_in.as_secs_f64(),
        ms(writes, 0.5),
        ms(writes, 0.99),
        took.as_secs_f64() * 1000.0,
        ms(subscribed, 0.5),
        ms(subscribed, 0.99),
        subscribed.max() as f64 / 1000.0
    )
}

pub async fn clean_ids(broker: &Broker) -> Extra {
    let addr = broker.addr;
    let mut workers = Vec::new();
    let each = broker.n(2000) as u32;
    for w in 0..20u32 {
        workers.push(tokio::spawn(async move {
            for i in 0..each {
                let id = format!("mosq-{:08x}{w:02}{i:05}", rand::random::<u32>());
                if let Some((mut c, _)) = Client::connect(addr, &id, None).await {
                    c.send(Packet::Disconnect).await;
                }
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    let Some((mut watcher, _)) = Client::connect(addr, "watcher", None).await else {
        return "no connection".into();
    };
    watcher.subscribe(1, "$presence/+").await;
    let mut records = 0;
    while let Some(p) = watcher.recv(Duration::from_secs(2)).await {
        if matches!(p, Packet::Publish(_)) {
            records += 1;
        }
    }
    format!("{} connections; {records} retained $presence records", each * 20)
}
