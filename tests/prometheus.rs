//! A real Prometheus server (the Debian package `prometheus`, which
//! `scripts/test` installs) scrapes the admin listener every second: the
//! target is up, and the families are there with the types they claim.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use roomq::{Broker, Config};

/// A Prometheus server, killed when dropped.
struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Prometheus {
    fn scraping(target: std::net::SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: roomq\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus runs (./scripts/test installs the Debian package)");
        Prometheus {
            child,
            port,
            _dir: dir,
        }
    }

    /// `GET /api/v1/{path}` as JSON, once the server answers.
    async fn api(&self, path: &str) -> serde_json::Value {
        let addr: std::net::SocketAddr = format!("127.0.0.1:{}", self.port).parse().unwrap();
        let (status, body) = common::http::get(addr, &format!("/api/v1/{path}")).await;
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(body.trim()).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_every_family_with_its_type() {
    let config = Config {
        admin_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..test_config()
    };
    let broker = Broker::new(config).start().await.unwrap();
    let mut client = Raw::client5(broker.local_addr(), "c").await;
    client.publish0_5("t", b"x").await;
    let prometheus = Prometheus::scraping(broker.admin_addr().unwrap());

    // Up, with no scrape error, within 30 s (Prometheus starts in seconds).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let addr: std::net::SocketAddr = format!("127.0.0.1:{}", prometheus.port).parse().unwrap();
        let (status, body) = common::http::get(addr, "/api/v1/targets").await;
        if status == 200 {
            let targets: serde_json::Value = serde_json::from_str(body.trim()).unwrap();
            let active = &targets["data"]["activeTargets"][0];
            if active["health"] == "up" {
                assert_eq!(active["lastError"], "", "{active}");
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the roomq target never came up: {body}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let metadata = prometheus.api("metadata").await;
    let type_of = |family: &str| -> String {
        metadata["data"][family][0]["type"]
            .as_str()
            .unwrap_or_else(|| panic!("{family} not in Prometheus' metadata: {metadata}"))
            .to_string()
    };
    for gauge in [
        "roomq_connections",
        "roomq_sessions",
        "roomq_subscriptions",
        "roomq_retained_messages",
        "roomq_queued_messages",
        "roomq_rooms",
        "roomq_presence_online",
        "roomq_build_info",
    ] {
        assert_eq!(type_of(gauge), "gauge", "{gauge}");
    }
    for counter in [
        "roomq_messages_received",
        "roomq_messages_sent",
        "roomq_messages_dropped",
        "roomq_bytes_received",
        "roomq_bytes_sent",
        "roomq_connections_opened",
        "roomq_connections_closed",
        "roomq_auth_failures",
        "roomq_authz_denied",
        "roomq_room_messages",
        "roomq_dedup_hits",
        "roomq_typing_dropped",
        "roomq_history_requests",
    ] {
        assert_eq!(type_of(counter), "counter", "{counter}");
    }
    for histogram in [
        "roomq_publish_to_delivery_seconds",
        "roomq_store_flush_duration_seconds",
        "roomq_store_flush_batch_messages",
    ] {
        assert_eq!(type_of(histogram), "histogram", "{histogram}");
    }
    // And the samples are queryable: one QoS 0 message received.
    let query = prometheus
        .api("query?query=roomq_messages_received_total%7Bqos%3D%220%22%7D")
        .await;
    assert_eq!(query["data"]["result"][0]["value"][1], "1", "{query}");
    // Every query of the Grafana dashboard is valid PromQL to this server.
    for expr in common::grafana::dashboard_queries() {
        let encoded: String = expr
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                other => format!("%{other:02X}"),
            })
            .collect();
        let answer = prometheus.api(&format!("query?query={encoded}")).await;
        assert_eq!(answer["status"], "success", "{expr}: {answer}");
    }
    broker.shutdown().await;
}
