//! Counters the broker keeps about itself: one source for `$SYS/broker/...`
//! and for the admin listener's `/metrics` (`admin/`).

mod histogram;

use std::sync::atomic::{AtomicU64, Ordering};
use tokio::time::Instant;

pub use histogram::{Histogram, LocalHistogram, BATCH_BUCKETS, LATENCY_BUCKETS};

/// The kind of listener a client came through: the `listener` label of
/// `roomq_connections`, and the index of its counter in
/// `Metrics::connections` (the enum and its counters cannot drift apart:
/// the array is sized by `ALL`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    Tcp = 0,
    Tls = 1,
    Ws = 2,
    Wss = 3,
}

impl Listener {
    /// Every kind, in label order (each at its own index).
    pub const ALL: [Listener; 4] = [Listener::Tcp, Listener::Tls, Listener::Ws, Listener::Wss];

    /// The metric label and log field.
    pub fn as_str(self) -> &'static str {
        match self {
            Listener::Tcp => "tcp",
            Listener::Tls => "tls",
            Listener::Ws => "ws",
            Listener::Wss => "wss",
        }
    }
}

/// Why an accepted connection closed: the `reason` label of
/// `roomq_connections_closed`, and the index of its counter in
/// `Metrics::connections_closed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// DISCONNECT 0x00 from the client.
    Normal = 0,
    /// The client went away (socket closed, I/O error, DISCONNECT 0x04).
    Lost = 1,
    /// No packet within 1.5 x the keep-alive.
    Keepalive = 2,
    /// Another connection took the session.
    TakenOver = 3,
    /// The client broke the protocol (malformed packet, bad topic, too
    /// large, Receive Maximum exceeded).
    ProtocolError = 4,
    /// The broker closed it for another reason (a limit, a login expired).
    Server = 5,
    /// Its login was revoked.
    Revoked = 6,
    /// The broker shut down.
    Shutdown = 7,
}

impl CloseReason {
    /// Every reason, in label order (each at its own index).
    pub const ALL: [CloseReason; 8] = [
        CloseReason::Normal,
        CloseReason::Lost,
        CloseReason::Keepalive,
        CloseReason::TakenOver,
        CloseReason::ProtocolError,
        CloseReason::Server,
        CloseReason::Revoked,
        CloseReason::Shutdown,
    ];

    /// The metric label and log field.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Normal => "normal",
            CloseReason::Lost => "lost",
            CloseReason::Keepalive => "keepalive",
            CloseReason::TakenOver => "taken_over",
            CloseReason::ProtocolError => "protocol_error",
            CloseReason::Server => "server",
            CloseReason::Revoked => "revoked",
            CloseReason::Shutdown => "shutdown",
        }
    }
}

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
    /// Clients connected now, per listener kind (`Listener as usize`;
    /// read with `connected`).
    pub connections: [Counter; Listener::ALL.len()],
    /// MQTT connections accepted (CONNACK 0) since start.
    pub connections_opened: Counter,
    /// Accepted connections closed, per reason (`CloseReason as usize`;
    /// read with `closed`).
    pub connections_closed: [Counter; CloseReason::ALL.len()],
    /// PUBLISH packets received from clients or the in-process API, per QoS.
    pub messages_received: [Counter; 3],
    /// PUBLISH packets sent to clients, per QoS.
    pub messages_sent: [Counter; 3],
    /// Bytes read from and written to clients' connections.
    pub bytes_received: Counter,
    pub bytes_sent: Counter,
    /// Messages not delivered because a session's queue was full.
    pub messages_dropped_queue_full: Counter,
    /// QoS 0 messages not queued because the session was offline
    /// (`queue_qos0_messages = false`).
    pub messages_dropped_offline_qos0: Counter,
    /// Messages dropped because their Message Expiry Interval ran out.
    pub messages_expired: Counter,
    /// Queued copies of a member list or presence replaced by a newer one
    /// before they were sent (`Message::last_value`).
    pub messages_superseded: Counter,
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
    /// Admin listener connections open now (a gauge).
    pub admin_connections: Counter,
    /// Admin listener connections closed at accept
    /// (`admin_max_connections` open).
    pub admin_connections_refused: Counter,
    /// Connections closed for going over a publish rate limit.
    pub rate_limited: Counter,
    /// Publishes refused because the store could not write them within
    /// `store_stall_timeout_ms` (a full disk).
    pub publishes_refused_store: Counter,
    /// From a PUBLISH read to its copy written to a subscriber's socket.
    pub publish_to_delivery: Histogram,
    /// Group commits: how long each flush took, and how many writes it
    /// made durable.
    pub store_flush_duration: Histogram,
    pub store_flush_batch: Histogram,
    /// The `$SYS` values last published, so that a new subscriber's
    /// refresh (`refresh_sys`) publishes only what changed. A `parking_lot`
    /// lock: held only while the few values are compared and published.
    sys_published: parking_lot::Mutex<Vec<(&'static str, String)>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            started: Instant::now(),
            connections: Default::default(),
            connections_opened: Counter::default(),
            connections_closed: Default::default(),
            messages_received: Default::default(),
            messages_sent: Default::default(),
            bytes_received: Counter::default(),
            bytes_sent: Counter::default(),
            messages_dropped_queue_full: Counter::default(),
            messages_dropped_offline_qos0: Counter::default(),
            messages_expired: Counter::default(),
            messages_superseded: Counter::default(),
            messages_dropped_too_large: Counter::default(),
            protocol_errors: Counter::default(),
            auth_failures: Counter::default(),
            connections_limited: Counter::default(),
            acl_denied: Counter::default(),
            admin_connections: Counter::default(),
            admin_connections_refused: Counter::default(),
            rate_limited: Counter::default(),
            publishes_refused_store: Counter::default(),
            publish_to_delivery: Histogram::seconds(),
            store_flush_duration: Histogram::seconds(),
            store_flush_batch: Histogram::new(BATCH_BUCKETS, 1.0),
            sys_published: Default::default(),
        }
    }
}

/// The sum of a family's counters.
pub fn total(counters: &[Counter]) -> u64 {
    counters.iter().map(Counter::get).sum()
}

impl Metrics {
    /// The gauge of clients connected through `listener`.
    pub fn connected(&self, listener: Listener) -> &Counter {
        &self.connections[listener as usize]
    }

    /// The counter of connections closed for `reason`.
    pub fn closed(&self, reason: CloseReason) -> &Counter {
        &self.connections_closed[reason as usize]
    }

    /// Hands `publish` the `$SYS/broker/...` topics with their current
    /// values: all of them (`all`: the periodic refresh), or only those
    /// that changed since they were last handed out (a new `$SYS`
    /// subscriber, which then reads the values of now; a client that
    /// subscribes again and again makes nothing new published while
    /// nothing changed). Published under the lock, so that two refreshes
    /// at once cannot leave an older value retained last.
    pub fn refresh_sys(&self, version: &str, all: bool, mut publish: impl FnMut(&'static str, &str)) {
        let mut published = self.sys_published.lock();
        for (topic, value) in self.sys_topics(version) {
            let slot = published.iter_mut().find(|(t, _)| *t == topic);
            if !all && slot.as_ref().is_some_and(|(_, v)| *v == value) {
                continue;
            }
            publish(topic, &value);
            match slot {
                Some((_, v)) => *v = value,
                None => published.push((topic, value)),
            }
        }
    }

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
                total(&self.connections).to_string(),
            ),
            (
                "$SYS/broker/messages/received",
                total(&self.messages_received).to_string(),
            ),
            (
                "$SYS/broker/messages/sent",
                total(&self.messages_sent).to_string(),
            ),
            (
                "$SYS/broker/messages/dropped",
                self.messages_dropped_queue_full.get().to_string(),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The labels `/metrics` shows, as they were when they were index
    /// constants: dashboards and alerts name them.
    #[test]
    fn labels_are_unchanged_and_each_enum_value_counts_at_its_own_index() {
        let listeners: Vec<_> = Listener::ALL.iter().map(|l| l.as_str()).collect();
        assert_eq!(listeners, ["tcp", "tls", "ws", "wss"]);
        let reasons: Vec<_> = CloseReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            reasons,
            [
                "normal",
                "lost",
                "keepalive",
                "taken_over",
                "protocol_error",
                "server",
                "revoked",
                "shutdown"
            ]
        );
        for (i, l) in Listener::ALL.into_iter().enumerate() {
            assert_eq!(l as usize, i, "{l:?}");
        }
        for (i, r) in CloseReason::ALL.into_iter().enumerate() {
            assert_eq!(r as usize, i, "{r:?}");
        }
        let m = Metrics::default();
        m.connected(Listener::Wss).inc();
        m.closed(CloseReason::Revoked).inc();
        assert_eq!(m.connections[3].get(), 1);
        assert_eq!(m.connections_closed[6].get(), 1);
    }

    /// A new `$SYS` subscriber's refresh publishes what changed only; the
    /// periodic one publishes everything.
    #[test]
    fn a_refresh_publishes_what_changed() {
        let m = Metrics::default();
        let refresh = |all| {
            let mut topics = Vec::new();
            m.refresh_sys("1", all, |topic, value| topics.push((topic, value.to_string())));
            topics
        };
        assert!(
            refresh(false).len() >= 5,
            "the first refresh publishes every topic"
        );
        assert!(refresh(false).iter().all(|(t, _)| *t == "$SYS/broker/uptime"));
        m.connected(Listener::Tcp).inc();
        let changed = refresh(false);
        let connected = changed
            .iter()
            .find(|(t, _)| *t == "$SYS/broker/clients/connected");
        assert_eq!(connected.map(|(_, v)| v.as_str()), Some("1"));
        assert!(!changed.iter().any(|(t, _)| *t == "$SYS/broker/version"));
        assert_eq!(refresh(true).len(), m.sys_topics("1").len());
    }
}
