//! The admin listener (`admin_listen`): `/metrics` moves with the traffic a
//! client can see, `/healthz` and `/readyz` answer as an orchestrator
//! expects, and a real Prometheus server scrapes it (`prometheus.rs`).

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::chat::{ack_publish5, publish_with, send_and_ack, user5};
use common::*;
use rmqtt_codec::types::QoS;
use rmqtt_codec::v5::{self, Packet, PublishAckReason};
use roomq::config::{Limits, StoreConfig};
use roomq::{Broker, Config};

/// The samples of an exposition: `name{labels}` to value.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

fn admin_config() -> Config {
    Config {
        admin_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..test_config()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_clients_did() {
    let broker = Broker::new(admin_config()).start().await.unwrap();
    let (addr, admin) = (
        broker.local_addr(),
        broker.admin_addr().expect("admin listener on"),
    );
    let mut subscriber = Raw::client5(addr, "sub").await;
    subscriber.subscribe5(1, &[("t/#", opts(QoS::AtLeastOnce))]).await;
    let mut publisher = Raw::client5(addr, "pub").await;
    for n in 1..=3u16 {
        assert_eq!(
            publisher.publish1_5(n, "t/a", b"one").await.reason_code,
            PublishAckReason::Success
        );
    }
    publisher.publish0_5("t/b", b"zero").await;
    publisher.publish0_5("t/b", b"zero").await;
    for _ in 0..5 {
        let p = subscriber.publish5().await;
        ack_publish5(&mut subscriber, &p).await;
    }
    // A room message, retried with its msg-id, and a history request.
    let mut alice = user5(addr, "alice-phone", "alice").await;
    for _ in 0..2 {
        let ack = send_and_ack(
            &mut alice,
            publish_with("rooms/lobby/msg/alice/m1", b"hi", Some(7), &[]),
        )
        .await;
        assert_eq!(ack.reason_code, PublishAckReason::Success);
    }
    let ack = send_and_ack(
        &mut alice,
        publish_with("$history/rooms/lobby", b"", Some(8), &[]),
    )
    .await;
    assert_eq!(ack.reason_code, PublishAckReason::Success);
    publisher
        .send5(Packet::Disconnect(v5::Disconnect::default()))
        .await;
    drop(publisher);
    tokio::time::sleep(QUIET).await;

    let (status, text) = common::http::get(admin, "/metrics").await;
    assert_eq!(status, 200);
    assert!(text.ends_with("# EOF\n"), "not OpenMetrics: {text}");
    let s = samples(&text);
    let get = |k: &str| *s.get(k).unwrap_or_else(|| panic!("{k} missing from:\n{text}"));
    assert_eq!(get("roomq_messages_received_total{qos=\"0\"}"), 2.0);
    // Three plain QoS 1, two room posts and the history request.
    assert_eq!(get("roomq_messages_received_total{qos=\"1\"}"), 6.0);
    assert_eq!(get("roomq_messages_sent_total{qos=\"0\"}"), 2.0);
    assert!(get("roomq_messages_sent_total{qos=\"1\"}") >= 3.0);
    assert_eq!(get("roomq_connections{listener=\"tcp\"}"), 2.0);
    assert_eq!(get("roomq_connections_opened_total"), 3.0);
    assert_eq!(get("roomq_connections_closed_total{reason=\"normal\"}"), 1.0);
    assert_eq!(get("roomq_room_messages_total"), 1.0);
    assert_eq!(get("roomq_dedup_hits_total"), 1.0);
    assert_eq!(get("roomq_history_requests_total"), 1.0);
    assert_eq!(get("roomq_subscriptions"), 1.0);
    assert_eq!(get("roomq_rooms"), 1.0);
    // alice, who posted in a room; "sub" is online but never used a room,
    // so presence does not show it; "pub" has left.
    assert_eq!(get("roomq_presence_online"), 1.0);
    assert!(get("roomq_bytes_received_total") > 0.0);
    assert!(get("roomq_bytes_sent_total") > 0.0);
    assert!(get("roomq_publish_to_delivery_seconds_count") >= 5.0);
    assert_eq!(
        get(&format!(
            "roomq_build_info{{version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        )),
        1.0
    );
    let (status, _) = common::http::get(admin, "/healthz").await;
    assert_eq!(status, 200);
    let (status, _) = common::http::get(admin, "/readyz").await;
    assert_eq!(status, 200);
    let (status, _) = common::http::get(admin, "/nothing").await;
    assert_eq!(status, 404);
    broker.shutdown().await;
}

/// A store that cannot write (here: less free disk than
/// `min_free_disk_bytes`) makes the broker not ready, with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_says_503_while_the_store_cannot_write() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        admin_listen: Some("127.0.0.1:0".parse().unwrap()),
        store: StoreConfig {
            min_free_disk_bytes: u64::MAX,
            ..sled_config(dir.path()).store
        },
        ..sled_config(dir.path())
    };
    let broker = Broker::new(config).start().await.unwrap();
    let admin = broker.admin_addr().unwrap();
    assert_eq!(common::http::get(admin, "/healthz").await.0, 200);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, body) = common::http::get(admin, "/readyz").await;
        if status == 503 {
            assert!(body.contains("store"), "{body}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "/readyz stayed {status}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_admin_port_stops_start_up_with_its_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let config = Config {
        admin_listen: Some(addr),
        ..test_config()
    };
    let error = Broker::new(config).start().await.err().expect("refused");
    assert!(error.to_string().contains(&addr.to_string()), "{error}");
}

/// The `roomq_…` names a query uses.
fn names_in(query: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = query;
    while let Some(at) = rest.find("roomq_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        names.push(name);
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grafana_dashboard_queries_only_what_metrics_has() {
    let broker = Broker::new(admin_config()).start().await.unwrap();
    let (_, text) = common::http::get(broker.admin_addr().unwrap(), "/metrics").await;
    let exposed: std::collections::HashSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let queries = common::grafana::dashboard_queries();
    let used: Vec<String> = queries.iter().flat_map(|q| names_in(q)).collect();
    for name in &used {
        assert!(
            exposed.contains(name.as_str()),
            "the dashboard queries {name}, /metrics has no such series"
        );
    }
    // It shows what an operator looks at first.
    for family in [
        "roomq_connections",
        "roomq_messages_received_total",
        "roomq_messages_dropped_total",
        "roomq_publish_to_delivery_seconds_bucket",
        "roomq_store_flush_duration_seconds_bucket",
    ] {
        assert!(
            used.iter().any(|n| n == family),
            "the dashboard has no panel on {family}"
        );
    }
    broker.shutdown().await;
}

/// Every family `/metrics` exposes has its row in the metrics table of
/// `docs/monitoring.md`, so an operator can tell what a new series means.
#[tokio::test]
async fn every_metric_family_is_documented() {
    let broker = Broker::new(admin_config()).start().await.unwrap();
    let (_, text) = common::http::get(broker.admin_addr().unwrap(), "/metrics").await;
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/monitoring.md")).unwrap();
    let mut missing = Vec::new();
    for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let mut words = line.split_whitespace().skip(2);
        let (Some(name), Some(kind)) = (words.next(), words.next()) else {
            continue;
        };
        let shown = if kind == "counter" {
            format!("{name}_total")
        } else {
            name.to_string()
        };
        if !readme.contains(&format!("`{shown}`")) && !readme.contains(&format!("`{name}`")) {
            missing.push(shown);
        }
    }
    assert!(
        missing.is_empty(),
        "docs/monitoring.md's metrics table has no row for {missing:?}"
    );
    broker.shutdown().await;
}

/// An admin connection that sends part of a request head and stops: it
/// holds its place until the broker closes it.
async fn unfinished_request(admin: std::net::SocketAddr) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(admin).await.unwrap();
    stream.write_all(b"GET /metrics HTTP/1.1\r\n").await.unwrap();
    stream
}

/// Reads until the broker closes the connection (within `WAIT`), and
/// returns what it sent before.
async fn read_until_closed(stream: &mut tokio::net::TcpStream) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut got))
        .await
        .expect("the broker closes the admin connection")
        .ok();
    got
}

/// `admin_max_connections` caps the admin sockets: one over it is closed
/// at accept without an answer, and the sockets are counted in /metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_connections_over_the_cap_are_closed_at_once() {
    let config = Config {
        limits: Limits {
            admin_max_connections: 2,
            admin_timeout_secs: 600,
            ..admin_config().limits
        },
        ..admin_config()
    };
    let broker = Broker::new(config).start().await.unwrap();
    let admin = broker.admin_addr().unwrap();
    let first = unfinished_request(admin).await;
    let _second = unfinished_request(admin).await;
    let (response, closed) = common::http::exchange(
        tokio::net::TcpStream::connect(admin).await.unwrap(),
        "GET /healthz HTTP/1.0\r\n\r\n",
    )
    .await;
    assert!(
        closed && response.is_empty(),
        "over the cap: {:?}",
        String::from_utf8_lossy(&response)
    );
    // A place freed is taken again; the gauge counts the held socket and
    // the scrape's own.
    drop(first);
    let deadline = tokio::time::Instant::now() + WAIT;
    let text = loop {
        let (status, text) = common::http::get(admin, "/metrics").await;
        if status == 200 {
            break text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the freed place was not given again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let values = samples(&text);
    assert_eq!(values.get("roomq_admin_connections"), Some(&2.0), "{text}");
    assert!(values["roomq_admin_connections_refused_total"] >= 1.0, "{text}");
    broker.shutdown().await;
}

/// `admin_timeout_secs` bounds how long a request head may take and how
/// long a connection may sit idle: a head sent a line at a time, and a
/// connection that sends nothing, are closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_or_idle_admin_connection_is_closed_after_the_timeout() {
    use tokio::io::AsyncWriteExt;
    let config = Config {
        limits: Limits {
            admin_timeout_secs: 1,
            ..admin_config().limits
        },
        ..admin_config()
    };
    let broker = Broker::new(config).start().await.unwrap();
    let admin = broker.admin_addr().unwrap();
    let mut idle = tokio::net::TcpStream::connect(admin).await.unwrap();
    let (mut reader, mut writer) = unfinished_request(admin).await.into_split();
    let slow = tokio::spawn(async move {
        // A header line every 100 ms, never the blank line that ends the
        // head, until the broker stops taking them (a pace, not a wait for
        // an event).
        for n in 0u32.. {
            let line = format!("X-Slow-{n}: 1\r\n");
            if writer.write_all(line.as_bytes()).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut got = Vec::new();
    tokio::time::timeout(WAIT, tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut got))
        .await
        .expect("a slow request head is cut off")
        .ok();
    slow.abort();
    assert!(!String::from_utf8_lossy(&got).contains(" 200 "), "{got:?}");
    assert!(read_until_closed(&mut idle).await.is_empty());
    // A head larger than the admin paths need is refused, not buffered.
    let big = format!(
        "GET /metrics HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let (response, _) =
        common::http::exchange(tokio::net::TcpStream::connect(admin).await.unwrap(), &big).await;
    assert_eq!(common::http::split(&response).0, 431);
    broker.shutdown().await;
}

/// A fresh broker's `/metrics`, byte for byte (the version aside): the
/// families, their order, help text, types and labels are what dashboards
/// and scrapers were written against, so a change to them is deliberate
/// (edit `tests/fixtures/metrics_fresh.txt`), never a side effect.
#[tokio::test]
async fn a_fresh_exposition_is_pinned() {
    let broker = Broker::new(admin_config()).start().await.unwrap();
    let (_, text) = common::http::get(broker.admin_addr().unwrap(), "/metrics").await;
    let text = text.replace(env!("CARGO_PKG_VERSION"), "VERSION");
    if let Ok(path) = std::env::var("ROOMQ_WRITE_METRICS_FIXTURE") {
        std::fs::write(path, &text).unwrap();
    }
    assert_eq!(text, include_str!("fixtures/metrics_fresh.txt"));
    broker.shutdown().await;
}
