//! [`Broker`]: build from a [`Config`], start, and get a [`BrokerHandle`]
//! with the bound address, an in-process client and `shutdown()`. The
//! broker's own periodic tasks (upkeep, flushes, store watch, `$SYS`) are
//! in `tasks.rs`.

use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::auth::acl::Acl;
use crate::auth::gate::Gate;
use crate::auth::{Authenticator, ConfiguredAuth, LoginBackoff, LoginPool};
use crate::budget::{Budgets, Limits as BudgetLimits};
use crate::config::{Config, Durability, ListenerKind, StorageKind};
use crate::local::{LocalSubscription, SubscribeError};
use crate::metrics::Metrics;
use crate::protocol::QoS;
use crate::router::{Message, RetainedStore, Router};
use crate::session::{Registry, Shared};
use crate::store::{GroupCommit, MemoryStore, Monitored, SledStore, Store, StoreHealth};

mod nodes;
mod tasks;
use nodes::Nodes;
use tasks::{chat_upkeep, flush_periodically, publish_sys, purge_reactions, run_upkeep, watch_store};

/// Errors that stop the broker from starting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
    #[cfg(feature = "cluster")]
    #[error("cluster: {0}")]
    Cluster(#[from] crate::cluster::ClusterError),
    #[error("{0}")]
    Admin(String),
}

impl From<crate::server::ListenError> for StartError {
    fn from(e: crate::server::ListenError) -> Self {
        match e {
            crate::server::ListenError::Bind { addr, source } => StartError::Bind { addr, source },
            crate::server::ListenError::Tls(why) => StartError::Tls(why),
        }
    }
}

/// A broker not yet started.
pub struct Broker {
    config: Config,
    auth: Option<Arc<dyn Authenticator>>,
    store: Option<Arc<dyn Store>>,
}

impl Broker {
    pub fn new(config: Config) -> Self {
        Broker {
            config,
            auth: None,
            store: None,
        }
    }

    /// Uses `store` instead of the one `storage` names (for an embedding
    /// program with its own storage engine, and for fault-injection tests).
    pub fn with_store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// Replaces the built-in authentication policy.
    pub fn with_authenticator(mut self, auth: Arc<dyn Authenticator>) -> Self {
        self.auth = Some(auth);
        self
    }

    /// Binds the listener and starts serving. Must be called inside a tokio
    /// runtime.
    pub async fn start(self) -> Result<BrokerHandle, StartError> {
        self.config.validate().map_err(StartError::Config)?;
        // The store is opened before the port, so a bad data directory stops
        // start-up before any client can connect.
        let store: Option<Arc<dyn Store>> = match (self.store, self.config.storage) {
            (Some(store), _) => Some(store),
            (None, StorageKind::Memory) => None,
            (None, StorageKind::Sled) => Some(Arc::new(SledStore::open(&self.config.data_dir)?)),
        };
        let store_health = Arc::new(StoreHealth::default());
        let (min_free, reserve) = (self.config.min_free_disk_bytes, self.config.disk_reserve_bytes);
        if self.config.storage == StorageKind::Sled && (min_free > 0 || reserve > 0) {
            store_health.watch_disk(self.config.data_dir.clone(), min_free, reserve);
        }
        let store: Option<Arc<dyn Store>> =
            store.map(|s| Arc::new(Monitored::new(s, store_health.clone())) as Arc<dyn Store>);
        let mut listeners = Vec::new();
        let listener_configs = self.config.effective_listeners();
        if listener_configs.iter().any(|l| l.web) {
            for file in crate::server::missing_web_libraries(&self.config.web_root) {
                tracing::warn!(file = %file.display(), "the browser chat needs this library: run `npm ci --prefix web` in roomq's folder (./scripts/test does), or set `web_root`");
            }
        }
        for listener in listener_configs {
            listeners.push(crate::server::bind(listener).await?);
        }
        let local_addrs: Vec<(ListenerKind, SocketAddr)> =
            listeners.iter().map(|l| (l.config.kind, l.local_addr)).collect();
        let local_addr = local_addrs[0].1;
        let tls: Vec<_> = listeners.iter().filter_map(|l| l.tls.clone()).collect();
        let metrics = Arc::new(Metrics::default());
        let budgets = Arc::new(Budgets::new(BudgetLimits::from_config(&self.config)));
        let allow_anonymous = self.config.effective_allow_anonymous();
        let auth: Arc<dyn Authenticator> = match self.auth {
            Some(auth) => auth,
            None => Arc::new(ConfiguredAuth::load(&self.config).map_err(StartError::Config)?),
        };
        if !allow_anonymous && !auth.verifies_names() {
            tracing::warn!("auth.allow_anonymous is false and no password_file, jwt_secret, jwt_public_key or certificate identity is configured: every CONNECT will be refused");
        }
        if allow_anonymous
            && !auth.verifies_names()
            && self.config.rooms.iter().any(|r| !r.members.is_empty())
        {
            tracing::warn!("rooms declare members but no authenticator is configured: names are claims, so anyone can connect as a member");
        }
        let public = local_addrs.iter().find(|(_, a)| !a.ip().is_loopback());
        if let (true, Some((kind, addr))) = (allow_anonymous, public) {
            tracing::warn!(%kind, %addr, "anonymous clients are allowed on a non-loopback listener (auth.allow_anonymous)");
        }
        let (shutdown, _) = watch::channel(false);
        let nodes = Arc::new(Nodes::connect(&self.config, &store_health).await?);
        let clustered = nodes.clustered();
        // In a cluster, persistent sessions are also in JetStream (kept in
        // memory here with `storage = "memory"`).
        let store = nodes.store(store);
        let commit_delay = Duration::from_micros(self.config.commit_delay_us);
        let commit = match (&store, self.config.durability, nodes.barrier()) {
            // In a cluster an acknowledgement also waits for JetStream's.
            (_, _, Some(barrier)) => Some(GroupCommit::start_with_barrier(
                store.clone().unwrap_or_else(|| Arc::new(MemoryStore::default())),
                commit_delay,
                Some(barrier),
            )),
            (Some(store), Durability::Flush, None) => Some(GroupCommit::start(store.clone(), commit_delay)),
            _ => None,
        };
        if let Some(commit) = &commit {
            commit.observe_in(metrics.clone());
        }
        // In a cluster the room logs live in JetStream; this node keeps a
        // copy in memory, loaded from the stream at start.
        let replication = nodes.chat();
        let (chat_store, chat_commit) = match replication.rooms {
            Some(_) => (None, None),
            None => (store.clone(), commit.clone()),
        };
        let mut chat = crate::chat::Chat::open(
            &self.config,
            chat_store,
            chat_commit,
            replication,
            budgets.clone(),
        )?;
        chat.load_signed_alerts(&self.config, store.clone())
            .map_err(StartError::Config)?;
        let shared = Arc::new(Shared {
            router: Router::new(
                self.config.retain_available,
                store.clone().filter(|_| !clustered),
                RetainedStore::new(self.config.max_retained_messages, self.config.max_retained_bytes)
                    .with_budgets(budgets.clone()),
            ),
            registry: Registry::default(),
            metrics,
            auth,
            shutdown,
            connections: AtomicUsize::new(0),
            commit: commit.clone(),
            store_health,
            gate: Gate {
                acl: Arc::new(Acl::new(self.config.acl.clone())),
                membership: chat.membership.clone(),
                max_name_length: self.config.max_chat_name_length,
            },
            chat,
            directory: nodes.directory(),
            login_backoff: LoginBackoff::new(Duration::from_millis(self.config.auth.login_backoff_max_ms)),
            logins: LoginPool::new(
                self.config.max_concurrent_logins,
                self.config.max_pending_logins,
                self.config.max_pending_logins_per_ip,
            ),
            budgets,
            store,
            config: self.config,
        });
        nodes.join(&shared).await;
        if let Some(store) = &shared.store {
            // In a cluster, retained messages come from JetStream.
            if !clustered {
                for record in store.load_retained()? {
                    let mut message = record.into_message();
                    if shared.chat.restore_retained(&mut message) {
                        shared.router.restore_retained(message);
                    } else if let Err(e) = store.put_retained(&message.topic, None) {
                        tracing::warn!(topic = %message.topic, error = %e, "could not drop a stale read receipt");
                    }
                }
            }
            crate::session::restore_from_store(&shared, store)?;
        }
        // In a cluster, users online on other nodes stay online.
        shared.chat.publish_startup_state(&shared.router, !clustered);
        let tracker = TaskTracker::new();
        let ip_limits = Arc::new(crate::server::IpLimits::default());
        for listener in listeners {
            tracing::info!(kind = %listener.config.kind, local_addr = %listener.local_addr, "listener open");
            if listener.config.web {
                // The address a newcomer opens in a browser.
                let scheme = if listener.config.kind == ListenerKind::Wss {
                    "https"
                } else {
                    "http"
                };
                // On every address (0.0.0.0, ::): this machine's loopback.
                let mut shown = listener.local_addr;
                if shown.ip().is_unspecified() {
                    shown.set_ip(match shown {
                        SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                        SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
                    });
                }
                tracing::info!(url = %format_args!("{scheme}://{shown}/"), "browser chat");
            }
            tracker.spawn(crate::server::accept_loop(
                listener,
                shared.clone(),
                ip_limits.clone(),
                tracker.clone(),
            ));
        }
        tracker.spawn(chat_upkeep(shared.clone()));
        if shared.commit.is_some() {
            let delivery = shared.clone();
            tracker.spawn(async move {
                let stop = delivery.shutdown.subscribe();
                delivery.chat.run_delivery(&delivery.router, stop).await;
            });
        }
        let members = shared.clone();
        tracker.spawn(async move {
            let stop = members.shutdown.subscribe();
            members.chat.run_members(&members.router, stop).await;
        });
        if shared.config.sys_interval_secs > 0 {
            tracker.spawn(publish_sys(shared.clone(), nodes.clone()));
        }
        if let (Some(store), Durability::Buffered) = (&shared.store, shared.config.durability) {
            tracker.spawn(flush_periodically(store.clone(), shared.clone()));
        }
        if let Some(store) = &shared.store {
            tracker.spawn(watch_store(shared.clone()));
            tracker.spawn(purge_reactions(store.clone(), shared.clone()));
        }
        let admin_addr = match shared.config.admin_listen {
            Some(addr) => {
                let admin = crate::admin::Admin::bind(addr, &shared)
                    .await
                    .map_err(|e| StartError::Admin(e.to_string()))?;
                let bound = admin.local_addr();
                tracker.spawn(admin.serve(shared.clone()));
                if let Some(bound) = bound {
                    tracing::info!(admin_addr = %bound, "admin listener: /metrics, /healthz, /readyz");
                }
                bound
            }
            None => None,
        };
        tracing::info!(%local_addr, "roomq listening");
        Ok(BrokerHandle {
            shared,
            local_addr,
            local_addrs,
            admin_addr,
            tls,
            tracker,
            nodes,
        })
    }
}

/// A running broker.
pub struct BrokerHandle {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    local_addrs: Vec<(ListenerKind, SocketAddr)>,
    /// Where the admin listener is bound (`admin_listen`).
    admin_addr: Option<SocketAddr>,
    /// Certificates of the TLS listeners, for `reload`.
    tls: Vec<Arc<crate::server::ReloadableTls>>,
    tracker: TaskTracker,
    /// The other nodes of a cluster, left at shutdown.
    nodes: Arc<Nodes>,
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
        self.shared.chat.reload_alert_keys(&self.shared.config);
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
                tokio::time::Instant::now() + Duration::from_secs(shared.config.connect_timeout_secs);
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
        self.shared.chat.publish_members(&self.shared.router, &room.name);
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
            self.shared.chat.publish_members(&self.shared.router, name);
        }
    }

    /// Runs the periodic upkeep now, as the broker does every minute:
    /// room logs trimmed by age, stale de-duplication and typing entries
    /// dropped, offline presence older than `presence_retention_secs`
    /// forgotten, and every reaction of a removed message removed (the
    /// broker does that every second too). Returns how many presence records were forgotten.
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
        let bound = Duration::from_millis(self.shared.config.store_stall_timeout_ms.max(1000));
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
            let bound = Duration::from_millis(self.shared.config.store_stall_timeout_ms.max(1000));
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
