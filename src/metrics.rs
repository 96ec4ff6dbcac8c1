//! Counters the broker keeps about itself, published on `$SYS/broker/...`.

use std::sync::atomic::{AtomicU64, Ordering};
use tokio::time::Instant;

/// A monotonically increasing (or, for gauges, up-and-down) counter.
#[derive(Default, Debug)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Every counter of one broker.
#[derive(Debug)]
pub struct Metrics {
    pub started: Instant,
    /// Clients connected now.
    pub clients_connected: Counter,
    /// PUBLISH packets received from clients or the in-process API.
    pub messages_received: Counter,
    /// PUBLISH packets sent to clients.
    pub messages_sent: Counter,
    /// Messages not delivered because a session's queue was full.
    pub messages_dropped_queue_full: Counter,
    /// QoS 0 messages not queued because the session was offline
    /// (`queue_qos0_messages = false`).
    pub messages_dropped_offline_qos0: Counter,
    /// Messages dropped because their Message Expiry Interval ran out.
    pub messages_expired: Counter,
    /// Messages not sent because they exceed the client's Maximum Packet Size.
    pub messages_dropped_too_large: Counter,
    /// Connections refused or closed for a protocol violation.
    pub protocol_errors: Counter,
    /// CONNECTs refused for bad credentials or authorization.
    pub auth_failures: Counter,
    /// Sockets closed at once by the per-IP limits.
    pub connections_limited: Counter,
    /// PUBLISH and SUBSCRIBE refused by the ACL or room membership.
    pub acl_denied: Counter,
    /// Connections closed for going over a publish rate limit.
    pub rate_limited: Counter,
    /// Publishes refused because the store could not write them within
    /// `store_stall_timeout_ms` (a full disk).
    pub publishes_refused_store: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            started: Instant::now(),
            clients_connected: Counter::default(),
            messages_received: Counter::default(),
            messages_sent: Counter::default(),
            messages_dropped_queue_full: Counter::default(),
            messages_dropped_offline_qos0: Counter::default(),
            messages_expired: Counter::default(),
            messages_dropped_too_large: Counter::default(),
            protocol_errors: Counter::default(),
            auth_failures: Counter::default(),
            connections_limited: Counter::default(),
            acl_denied: Counter::default(),
            rate_limited: Counter::default(),
            publishes_refused_store: Counter::default(),
        }
    }
}

impl Metrics {
    /// The `$SYS/broker/...` topics and their current values.
    pub fn sys_topics(&self, version: &str) -> Vec<(&'static str, String)> {
        vec![
            ("$SYS/broker/version", format!("roomq {version}")),
            (
                "$SYS/broker/uptime",
                format!("{} seconds", self.started.elapsed().as_secs()),
            ),
            (
                "$SYS/broker/clients/connected",
                self.clients_connected.get().to_string(),
            ),
            (
                "$SYS/broker/messages/received",
                self.messages_received.get().to_string(),
            ),
            ("$SYS/broker/messages/sent", self.messages_sent.get().to_string()),
            (
                "$SYS/broker/messages/dropped",
                self.messages_dropped_queue_full.get().to_string(),
            ),
        ]
    }
}
