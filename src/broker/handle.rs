//! [`BrokerHandle`]: a running broker. Its address, reloads, the
//! in-process client (publish, subscribe, a connection over a pipe), the
//! figures tests and embedders read, and `shutdown()`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio_util::task::TaskTracker;

use super::nodes::Nodes;
use super::tasks::run_upkeep;
use crate::config::ListenerKind;
use crate::context::Shared;
use crate::local::{LocalSubscription, SubscribeError};
use crate::metrics::Metrics;
use crate::protocol::QoS;
use crate::router::Message;
use crate::session::Registry;

/// A running broker.
pub struct BrokerHandle {
    pub(super) shared: Arc<Shared<Registry>>,
    pub(super) local_addr: SocketAddr,
    pub(super) local_addrs: Vec<(ListenerKind, SocketAddr)>,
    /// Where the admin listener is bound (`admin_listen`).
    pub(super) admin_addr: Option<SocketAddr>,
    /// Certificates of the TLS listeners, for `reload`.
    pub(super) tls: Vec<Arc<crate::server::ReloadableTls>>,
    pub(super) tracker: TaskTracker,
    /// The other nodes of a cluster, left at shutdown.
    pub(super) nodes: Arc<Nodes>,
}

impl BrokerHandle {
    /// The address the first listener is bound to (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Every listener's kind and bound address, in configuration order.
    pub fn local_addrs(&self) -> &[(ListenerKind, SocketAddr)] {
        &self.local_addrs
    }

    /// Where the admin listener serves `/metrics`, `/healthz` and
    /// `/readyz` (`admin_listen`; useful with port 0), if it is on.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let config = roomq::Config {
    ///     listen: "127.0.0.1:1883".parse()?,
    ///     admin_listen: Some("127.0.0.1:0".parse()?),
    ///     ..roomq::Config::default()
    /// };
    /// let broker = roomq::Broker::new(config).start().await?;
    /// if let Some(admin) = broker.admin_addr() {
    ///     println!("scrape http://{admin}/metrics");
    /// }
    /// # Ok(()) }
    /// ```
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Reloads what can change without a restart (the binary does it on
    /// SIGHUP): TLS certificates (new connections get the new ones, open
    /// ones keep theirs), the authenticator's files, the alert rules' keys.
    /// Errors are logged and the old material stays in use. A login the
    /// reloaded files no longer accept loses its connections (5.0
    /// DISCONNECT 0x87) and its sessions: no will of theirs is sent, their
    /// queues and subscriptions are dropped. The `[[acl]]` rules are not
    /// reloaded (a restart applies them to stored subscriptions).
    pub fn reload(&self) {
        for tls in &self.tls {
            match tls.reload() {
                Ok(()) => tracing::info!("TLS certificates reloaded"),
                Err(e) => tracing::error!(error = %e, "TLS reload failed; the old certificate stays in use"),
            }
        }
        self.shared.auth.reload();
        self.shared.chat.reload_alert_keys();
        let (revoked, offline) = self.shared.registry.kick_revoked(&*self.shared.auth);
        if revoked > 0 {
            tracing::info!(
                connections = revoked,
                "closed connections whose login was revoked"
            );
        }
        crate::session::end_revoked(&self.shared, offline);
    }

    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// Number of sessions the broker holds (online and offline).
    /// The chat layer's counters (room messages, duplicates, typing drops).
    pub fn chat_counters(&self) -> &crate::chat::ChatCounters {
        &self.shared.chat.counters
    }

    /// Serves one client over an in-memory pipe instead of a socket: the
    /// same session, router and limits as any listener. For embedding
    /// programs that carry MQTT over their own transport, and for the fuzz
    /// targets. The returned end is the client's.
    pub fn connect_in_memory(&self, buffer: usize) -> tokio::io::DuplexStream {
        let (client, server) = tokio::io::duplex(buffer);
        let shared = self.shared.clone();
        let peer = crate::server::Peer {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            cert_name: crate::server::CertName::NotUsed,
            // In-process connections count as plain MQTT.
            listener: crate::metrics::Listener::Tcp,
        };
        self.tracker.spawn(async move {
            shared
                .connections
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            let deadline =
                tokio::time::Instant::now() + Duration::from_secs(shared.config.limits.connect_timeout_secs);
            crate::session::serve(Box::new(server), peer, shared.clone(), false, deadline).await;
            shared
                .connections
                .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        });
        client
    }

    /// Client connections open now, on every listener (and in memory).
    pub fn open_connections(&self) -> usize {
        self.shared.connections.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Declares or redeclares a room (members, open) while running; it
    /// takes effect at once, also on existing subscriptions (a removed
    /// member stops receiving), and republishes `$rooms/{room}/members`.
    pub fn set_room(&self, room: crate::config::RoomConfig) {
        self.shared.chat.membership.set_room(&room);
        self.shared.chat.publish_members(&room.name);
    }

    /// Replaces the room configuration (the binary does it on SIGHUP with
    /// the configuration file's `rooms_default` and `rooms`).
    pub fn set_rooms(&self, default: crate::config::RoomsDefault, rooms: &[crate::config::RoomConfig]) {
        // A room no longer declared lists its subscribers again.
        let before = self.shared.chat.membership.declared();
        self.shared.chat.membership.replace(default, rooms);
        let names = before
            .iter()
            .map(|(name, _)| name)
            .chain(rooms.iter().map(|r| &r.name));
        for name in names.collect::<std::collections::BTreeSet<_>>() {
            self.shared.chat.publish_members(name);
        }
    }

    /// Runs the periodic upkeep now, as the broker does every minute:
    /// room logs trimmed by age, stale de-duplication and typing entries
    /// dropped, offline presence older than `presence_retention_secs`
    /// forgotten, and every reaction of a removed message removed (the
    /// broker does that every second too). Returns how many presence
    /// records were forgotten.
    pub fn run_upkeep(&self) -> usize {
        run_upkeep(&self.shared)
    }

    /// Records written to the durable store so far (0 without one): the
    /// storage-writes-per-message figure of the chat benchmark.
    pub fn store_writes(&self) -> u64 {
        self.shared.store.as_ref().map_or(0, |s| s.writes())
    }

    /// Bytes of keys and values written to the durable store so far (0
    /// without one): what one operation costs the disk.
    pub fn store_bytes_written(&self) -> u64 {
        self.shared.store.as_ref().map_or(0, |s| s.bytes_written())
    }

    pub fn session_count(&self) -> usize {
        self.shared.registry.len()
    }

    /// Messages queued or in flight for the session of `client_id`.
    pub fn session_pending(&self, client_id: &str) -> Option<usize> {
        self.shared.registry.get(client_id).map(|s| s.pending_count())
    }

    /// Bytes the session of `client_id` holds queued or in flight (what
    /// `max_queued_bytes` bounds).
    pub fn session_pending_bytes(&self, client_id: &str) -> Option<usize> {
        self.shared.registry.get(client_id).map(|s| s.pending_bytes())
    }

    /// Publishes a message from inside the process, without a socket.
    /// Returns how many sessions it was delivered to.
    pub fn publish(&self, topic: &str, payload: impl Into<Bytes>, qos: QoS, retain: bool) -> usize {
        self.shared.metrics.messages_received[usize::from(qos.value())].inc();
        self.shared
            .router
            .publish(Message::new(topic, payload.into(), qos, retain))
            .matched
    }

    /// Subscribes from inside the process; messages arrive on the returned
    /// subscription until it is dropped.
    pub fn subscribe(&self, filter: &str, qos: QoS) -> Result<LocalSubscription, SubscribeError> {
        LocalSubscription::new(self.shared.clone(), filter, qos)
    }

    /// Stops accepting, sends every client DISCONNECT (5.0: 0x8B Server
    /// shutting down), closes the connections and waits for every task.
    /// Connections that have not logged in yet (no CONNECT, or a TLS or
    /// WebSocket handshake under way) are closed at once.
    pub async fn shutdown(self) {
        self.shared.shutdown.send_replace(true);
        self.tracker.close();
        if tokio::time::timeout(Duration::from_secs(10), self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("some connections did not close within 10 s of shutdown");
        }
        let bound = Duration::from_millis(self.shared.config.store.store_stall_timeout_ms.max(1000));
        self.nodes.leave(bound).await;
        if let Some(store) = self.shared.store.clone() {
            // On its own thread and bounded: sled's flush does not return
            // after a write hit a full disk, and a shutdown must end. What
            // was acknowledged was flushed before its acknowledgement.
            let (done_tx, done_rx) = tokio::sync::oneshot::channel();
            let spawned = std::thread::Builder::new()
                .name("roomq-final-flush".into())
                .spawn(move || {
                    if let Err(e) = store.flush() {
                        tracing::error!(error = %e, "final store flush failed");
                    }
                    store.close();
                    let _ = done_tx.send(());
                });
            let bound = Duration::from_millis(self.shared.config.store.store_stall_timeout_ms.max(1000));
            if spawned.is_ok() && tokio::time::timeout(bound, done_rx).await.is_err() {
                tracing::error!(
                    waited_ms = bound.as_millis() as u64,
                    "the final store flush did not finish (disk full?); stopping without it"
                );
            }
        }
        tracing::info!("roomq stopped");
    }
}
