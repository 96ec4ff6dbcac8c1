//! `/metrics`: the broker's own counters (`metrics/`, the chat layer's,
//! the router's), encoded at scrape time with `prometheus-client`. Nothing
//! is counted twice: `$SYS/broker/...` reads the same counters. Labels
//! are only small fixed sets (listener kind, QoS, reason), never a room,
//! topic or client id.

use std::sync::{Arc, Weak};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::chat::ChatCounters;
use crate::context::Shared;
use crate::metrics::{CloseReason, Counter, Histogram, Listener, Metrics};
use crate::session::Registry as Sessions;

/// A registry with one collector reading `shared` at each scrape.
pub(super) fn registry(shared: &Arc<Shared<Sessions>>) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Families {
        shared: Arc::downgrade(shared),
    }));
    registry
}

struct Families {
    shared: Weak<Shared<Sessions>>,
}

impl std::fmt::Debug for Families {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("roomq metric families")
    }
}

type Result = std::result::Result<(), std::fmt::Error>;

impl Collector for Families {
    /// The families in a fixed order (dashboards and the pinned fixture in
    /// `tests/fixtures/metrics_fresh.txt` read them so): what is held now,
    /// then traffic, then refusals and chat counters, then latencies.
    fn encode(&self, mut out: DescriptorEncoder) -> Result {
        let Some(shared) = self.shared.upgrade() else {
            return Ok(());
        };
        held_now(&mut out, &shared)?;
        traffic(&mut out, &shared.metrics)?;
        refusals(&mut out, &shared)?;
        chat_counters(&mut out, &shared.chat.counters)?;
        latencies(&mut out, &shared.metrics)
    }
}

/// Gauges of what the broker holds at this moment.
fn held_now(out: &mut DescriptorEncoder, shared: &Shared<Sessions>) -> Result {
    let m = &shared.metrics;
    let mut listeners = out.encode_descriptor(
        "roomq_connections",
        "Clients connected now, by listener kind",
        None,
        MetricType::Gauge,
    )?;
    for listener in Listener::ALL {
        let count = m.connected(listener).get() as i64;
        ConstGauge::new(count).encode(listeners.encode_family(&[("listener", listener.as_str())])?)?;
    }
    let held = [
        (
            "roomq_sessions",
            "Sessions held (connected or persistent)",
            shared.registry.len(),
        ),
        (
            "roomq_subscriptions",
            "Subscriptions held",
            shared.router.subscription_count(),
        ),
        (
            "roomq_retained_messages",
            "Retained messages",
            shared.router.retained().len(),
        ),
        (
            "roomq_queued_messages",
            "Messages queued or in flight for sessions",
            shared.registry.pending_total(),
        ),
        (
            "roomq_rooms",
            "Rooms with a log on this node",
            shared.chat.rooms(),
        ),
        (
            "roomq_presence_online",
            "Users shown in presence (they use rooms) with a device connected to this node",
            shared.chat.online_users(),
        ),
    ];
    for (name, help, value) in held {
        gauge(out, name, help, value)?;
    }
    let mut build = out.encode_descriptor(
        "roomq_build_info",
        "The running version (value 1)",
        None,
        MetricType::Gauge,
    )?;
    ConstGauge::new(1).encode(build.encode_family(&[("version", env!("CARGO_PKG_VERSION"))])?)?;
    gauge(
        out,
        "roomq_admin_connections",
        "Admin listener connections open now",
        m.admin_connections.get() as usize,
    )
}

/// Messages and bytes moved, and connections opened and closed.
fn traffic(out: &mut DescriptorEncoder, m: &Metrics) -> Result {
    let qos = ["0", "1", "2"];
    labelled_counters(
        out,
        "roomq_messages_received",
        "PUBLISH packets received, by QoS",
        "qos",
        &qos,
        &m.messages_received,
    )?;
    labelled_counters(
        out,
        "roomq_messages_sent",
        "PUBLISH packets sent to clients, by QoS",
        "qos",
        &qos,
        &m.messages_sent,
    )?;
    let dropped = [
        ("queue_full", &m.messages_dropped_queue_full),
        ("offline_qos0", &m.messages_dropped_offline_qos0),
        ("expired", &m.messages_expired),
        ("superseded", &m.messages_superseded),
        ("too_large", &m.messages_dropped_too_large),
    ];
    let mut family = out.encode_descriptor(
        "roomq_messages_dropped",
        "Messages not delivered to a subscriber, by reason",
        None,
        MetricType::Counter,
    )?;
    for (reason, counter) in dropped {
        ConstCounter::new(counter.get()).encode(family.encode_family(&[("reason", reason)])?)?;
    }
    counters(
        out,
        [
            (
                "roomq_bytes_received",
                "Bytes read from clients",
                &m.bytes_received,
            ),
            ("roomq_bytes_sent", "Bytes written to clients", &m.bytes_sent),
            (
                "roomq_connections_opened",
                "Connections accepted (CONNACK 0)",
                &m.connections_opened,
            ),
        ],
    )?;
    labelled_counters(
        out,
        "roomq_connections_closed",
        "Accepted connections closed, by reason",
        "reason",
        &CloseReason::ALL.map(CloseReason::as_str),
        &m.connections_closed,
    )
}

/// What was refused (chat, store, per-identity bounds, credentials, ACL),
/// and the presence records kept and evicted.
fn refusals(out: &mut DescriptorEncoder, shared: &Shared<Sessions>) -> Result {
    let (m, chat) = (&shared.metrics, &shared.chat);
    counters(
        out,
        [
            (
                "roomq_chat_refused",
                "Chat publishes refused: wrong sender, not a member, bad payload, a room bound",
                &chat.counters.refused,
            ),
            (
                "roomq_publishes_refused_store",
                "Publishes refused because the store could not write (a full disk)",
                &m.publishes_refused_store,
            ),
        ],
    )?;
    let (presence_records, presence_evicted) = chat.presence_records();
    gauge(
        out,
        "roomq_presence_records",
        "Presence records kept (online users and offline records)",
        presence_records,
    )?;
    let evicted = ConstCounter::new(presence_evicted);
    evicted.encode(out.encode_descriptor(
        "roomq_presence_evicted",
        "Offline presence records dropped by max_presence_records",
        None,
        evicted.metric_type(),
    )?)?;
    let mut refused = out.encode_descriptor(
        "roomq_budget_refused",
        "Requests refused by a per-identity bound (docs/limits.md), by the bound's key",
        None,
        MetricType::Counter,
    )?;
    for (bound, count) in shared.budgets.refusals() {
        ConstCounter::new(count).encode(refused.encode_family(&[("bound", bound)])?)?;
    }
    counters(
        out,
        [
            (
                "roomq_auth_failures",
                "CONNECTs refused for credentials",
                &m.auth_failures,
            ),
            (
                "roomq_admin_connections_refused",
                "Admin listener connections closed at accept (admin_max_connections open)",
                &m.admin_connections_refused,
            ),
            (
                "roomq_authz_denied",
                "PUBLISH and SUBSCRIBE refused by the ACL or room membership",
                &m.acl_denied,
            ),
        ],
    )
}

/// The chat layer's counters: room messages, history, rates, alerts.
fn chat_counters(out: &mut DescriptorEncoder, c: &ChatCounters) -> Result {
    counters(
        out,
        [
            ("roomq_room_messages", "Room messages stored", &c.messages),
            (
                "roomq_dedup_hits",
                "Room messages acknowledged again but not stored (a retry)",
                &c.duplicates,
            ),
            (
                "roomq_typing_dropped",
                "Typing events dropped by typing_min_interval_ms",
                &c.typing_dropped,
            ),
            ("roomq_history_requests", "History requests", &c.history_requests),
            (
                "roomq_subscribe_rooms_scanned",
                "Rooms visited by sessions to start room cursors or plan a replay",
                &c.rooms_scanned,
            ),
            (
                "roomq_history_requests_refused_rate",
                "History requests refused, over history_requests_per_minute",
                &c.history_refused_rate,
            ),
            (
                "roomq_room_posts_refused_rate",
                "Room posts refused, over room_max_messages_per_minute of the identity in that room",
                &c.room_rate_refused,
            ),
            (
                "roomq_member_changes_deferred",
                "Room member list changes not published before the next minute, over room_member_changes_per_minute",
                &c.member_changes_deferred,
            ),
            (
                "roomq_alerts_refused_signature",
                "Alerts refused by a signed rule: malformed, bad signature or a counter that did not grow",
                &c.alerts_refused,
            ),
        ],
    )
}

/// The latency and batch-size histograms.
fn latencies(out: &mut DescriptorEncoder, m: &Metrics) -> Result {
    histogram(
        out,
        "roomq_publish_to_delivery_seconds",
        "From a PUBLISH read to its copy written for a subscriber's socket",
        &m.publish_to_delivery,
    )?;
    histogram(
        out,
        "roomq_store_flush_duration_seconds",
        "Group commits: time to make a batch durable",
        &m.store_flush_duration,
    )?;
    histogram(
        out,
        "roomq_store_flush_batch_messages",
        "Group commits: acknowledgements released per flush",
        &m.store_flush_batch,
    )
}

/// Unlabelled counters, each its own family, in the order given.
fn counters<const N: usize>(out: &mut DescriptorEncoder, families: [(&str, &str, &Counter); N]) -> Result {
    for (name, help, value) in families {
        counter(out, name, help, value)?;
    }
    Ok(())
}

fn gauge(out: &mut DescriptorEncoder, name: &str, help: &str, value: usize) -> Result {
    let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
    gauge.encode(out.encode_descriptor(name, help, None, gauge.metric_type())?)
}

fn counter(out: &mut DescriptorEncoder, name: &str, help: &str, value: &Counter) -> Result {
    let counter = ConstCounter::new(value.get());
    counter.encode(out.encode_descriptor(name, help, None, counter.metric_type())?)
}

fn labelled_counters(
    out: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    values: &[&str],
    counters: &[Counter],
) -> Result {
    let mut family = out.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value, counter) in values.iter().zip(counters) {
        ConstCounter::new(counter.get()).encode(family.encode_family(&[(label, *value)])?)?;
    }
    Ok(())
}

fn histogram(out: &mut DescriptorEncoder, name: &str, help: &str, histogram: &Histogram) -> Result {
    let (sum, count, buckets) = histogram.snapshot();
    out.encode_descriptor(name, help, None, MetricType::Histogram)?
        .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
}
