//! Cluster mode (`[cluster]`): several roomq nodes as one broker, sharing
//! state through NATS JetStream. Without `[cluster]` none of this runs.
//!
//! - `rooms/`: room messages in one JetStream stream; its sequence is
//!   the room `seq`; a node reads the rooms it has interest in and
//!   delivers in that order.
//! - `writer.rs`: JetStream writes, acknowledged (by a quorum) before the
//!   client's PUBACK, through the group commit.
//! - `plain.rs`: plain MQTT messages on core NATS, by node interest;
//!   shared subscriptions as NATS queue groups.
//! - `retained.rs`: retained messages in a stream every node follows.
//! - `sanctions.rs`: bans and mutes in a stream every node follows, and
//!   copies in the room stream that order them against room messages.
//! - `sessions.rs`: a client id is held by one node; a CONNECT on another
//!   node takes the connection over and the session with it;
//!   `holding.rs` answers those claims on the holding node.
//! - `queues.rs`, `mirror.rs`: persistent sessions' plain QoS 1/2
//!   messages, also in JetStream, so they outlive their node.
//! - `names.rs`: subjects and stream names.
//! - `join.rs`: the core's seams (room replication, the session
//!   directory, the router's outbound) implemented on this, and the sinks
//!   that feed the core what comes from the other nodes.
//!
//! `docs/cluster.md` says what each failure does.

mod holding;
mod join;
mod mirror;
mod names;
mod plain;
mod presence;
mod queues;
mod retained;
mod rooms;
mod sanctions;
mod sessions;
mod writer;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use tokio::sync::watch;

pub(crate) use join::join;
pub(crate) use names::Names;
pub(crate) use plain::Plain;
pub(crate) use presence::{PresenceLink, PresenceSink};
pub(crate) use retained::ApplyRetained;
pub(crate) use rooms::{RoomSink, Rooms};
pub(crate) use sanctions::{ApplySanction, PublishAnswer, Sanctions};
pub(crate) use sessions::Sessions;
use writer::Writer;

use crate::config::{ClusterConfig, Config};
use crate::store::{CommitBarrier, StoreHealth};

/// Why cluster mode could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    #[error("cannot connect to NATS at {urls}: {reason}")]
    Connect { urls: String, reason: String },
    #[error("cannot create or open the JetStream stream {stream}: {reason}")]
    Stream { stream: String, reason: String },
}

/// How long start-up waits for NATS before it gives up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Tries to create a stream, 500 ms apart (60: half a minute).
const STREAM_ATTEMPTS: u32 = 60;

/// This node's connection to the cluster.
pub(crate) struct Cluster {
    pub names: Names,
    client: async_nats::Client,
    js: jetstream::Context,
    writer: Arc<Writer>,
    pub plain: Arc<Plain>,
    pub rooms: Rooms,
    pub sessions: Arc<Sessions>,
    /// Bans and mutes, on every node.
    pub sanctions: Arc<Sanctions>,
    /// Persistent sessions' plain messages in JetStream.
    queues: Arc<queues::Queues>,
    /// This node's presence changes, for the other nodes.
    pub presence: Arc<PresenceLink>,
    presence_outgoing: parking_lot::Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<presence::Wire>>>,
    /// Told when the NATS connection came back (or dropped messages).
    reconnected: parking_lot::Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<()>>>,
    liveness: presence::Liveness,
    /// The writer, followers and presence tasks, stopped by `shutdown`.
    tasks: parking_lot::Mutex<Vec<tokio::task::AbortHandle>>,
}

impl Cluster {
    /// Connects to NATS, creates roomq's streams if they are missing, and
    /// starts the JetStream writer. JetStream failures are reported to
    /// `health` (acknowledgements wait, then are refused).
    pub async fn connect(config: &Config, health: Arc<StoreHealth>) -> Result<Arc<Cluster>, ClusterError> {
        let Some(cc) = &config.cluster else {
            return Err(ClusterError::Connect {
                urls: String::new(),
                reason: "no [cluster] section".into(),
            });
        };
        let (reconnected_tx, reconnected) = tokio::sync::mpsc::unbounded_channel();
        let client = connect_nats(cc, reconnected_tx).await?;
        let mut js = jetstream::new(client.clone());
        js.set_timeout(Duration::from_millis(cc.ack_timeout_ms));
        let names = Names::new(&cc.name);
        ensure_streams(&js, &names, cc, config).await?;
        let node: Arc<str> = cc.node.as_str().into();
        let (writer, queue) = Writer::new(health, cc.write_buffer_bytes);
        let writer_task = tokio::spawn(writer.clone().run(js.clone(), queue));
        let plain = Plain::start(
            names.clone(),
            node.clone(),
            client.clone(),
            writer.clone(),
            cc.forward_buffer_bytes,
        );
        let sanctions = Sanctions::new(names.clone(), writer.clone(), node.clone());
        let rooms = Rooms::new(
            names.clone(),
            js.clone(),
            client.clone(),
            writer.clone(),
            sanctions.clone(),
            node.clone(),
            Duration::from_secs(cc.room_linger_secs),
        );
        writer.on_room_acknowledged(rooms.acknowledgement_hook());
        let queues = Arc::new(queues::Queues::new(
            names.clone(),
            node.clone(),
            js.clone(),
            writer.clone(),
        ));
        let sessions = Arc::new(Sessions::new(
            names.clone(),
            node.clone(),
            js.clone(),
            writer.clone(),
            queues.clone(),
        ));
        let (presence, presence_outgoing) = presence::link(node.clone());
        let liveness = presence::Liveness {
            heartbeat: Duration::from_millis(cc.heartbeat_ms),
            node_timeout: Duration::from_millis(cc.node_timeout_ms),
        };
        tracing::info!(node = %node, nats = ?cc.nats, replicas = cc.replicas, "cluster mode: connected to NATS JetStream");
        Ok(Arc::new(Cluster {
            names,
            client,
            js,
            writer,
            plain,
            rooms,
            sessions,
            sanctions,
            queues,
            presence,
            presence_outgoing: parking_lot::Mutex::new(Some(presence_outgoing)),
            reconnected: parking_lot::Mutex::new(Some(reconnected)),
            liveness,
            tasks: parking_lot::Mutex::new(vec![writer_task.abort_handle()]),
        }))
    }

    /// Whether this node's NATS connection is up (`/readyz`).
    pub fn nats_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// What the group commit waits for: JetStream's acknowledgements.
    pub fn barrier(&self) -> Arc<dyn CommitBarrier> {
        self.writer.clone()
    }

    /// `store` with its session writes (records, queues) also made in the
    /// cluster.
    pub fn mirrored(&self, store: Arc<dyn crate::store::Store>) -> Arc<dyn crate::store::Store> {
        Arc::new(mirror::Mirrored::new(
            store,
            self.sessions.clone(),
            self.queues.clone(),
        ))
    }

    /// A session taken over from another node gets written to this
    /// node's store: first the cluster's copy of its queue is cleared
    /// (the writes that follow make it again, under this node's name).
    pub fn adopting_queue_of(&self, client_id: &str) {
        self.queues.clear_before_adopting(client_id);
    }

    /// Starts reading the rooms this node has interest in (into `rooms`),
    /// the retained and sanctions streams and the other nodes' presence;
    /// resolves once this node has read the retained messages and the
    /// sanctions the streams held at start (so a SUBSCRIBE gets them, and
    /// a banned user is refused from the first packet). A room's log is read when the node
    /// starts following it (`Rooms::ready`).
    pub async fn follow(
        &self,
        rooms: Arc<dyn RoomSink>,
        retained: ApplyRetained,
        presence: Arc<dyn PresenceSink>,
    ) {
        self.rooms.set_sink(rooms);
        let mut tasks = Vec::new();
        if let Some(outgoing) = self.presence_outgoing.lock().take() {
            tasks.push(tokio::spawn(presence::run(
                self.client.clone(),
                self.names.clone(),
                self.presence.clone(),
                outgoing,
                presence,
                self.liveness,
            )));
        }
        if let Some(mut reconnected) = self.reconnected.lock().take() {
            let resync = self.rooms.resync_hook();
            tasks.push(tokio::spawn(async move {
                while reconnected.recv().await.is_some() {
                    resync();
                }
            }));
        }
        let (forget, linger) = (self.rooms.forget_hook(), self.rooms.linger());
        tasks.push(tokio::spawn(async move {
            // At most a tenth of the linger late, and no more often than
            // every second.
            let every = (linger / 10).clamp(Duration::from_secs(1), Duration::from_secs(10));
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                forget();
            }
        }));
        let (retained_done, mut retained_ready) = watch::channel(false);
        tasks.push(tokio::spawn(retained::follow(
            self.js.clone(),
            self.names.clone(),
            retained,
            retained_done,
        )));
        let (sanctions_done, mut sanctions_ready) = watch::channel(false);
        tasks.push(tokio::spawn(sanctions::follow(
            self.js.clone(),
            self.sanctions.clone(),
            sanctions_done,
        )));
        self.tasks.lock().extend(tasks.iter().map(|t| t.abort_handle()));
        let _ = retained_ready.wait_for(|ready| *ready).await;
        let _ = sanctions_ready.wait_for(|ready| *ready).await;
        tracing::info!("cluster mode: retained messages and sanctions loaded");
    }
}

/// How long a follower waits for a message before it checks that it is
/// not behind the stream (an ordered consumer can stall silently when a
/// server dies; then it is made again from the last message applied).
const FOLLOW_IDLE: Duration = Duration::from_secs(2);

/// The next message of a follower's consumer; an error when the consumer
/// ended, failed, or stalled behind `stream` (its last sequence above
/// `seen`, the highest sequence read).
async fn next_or_stalled(
    stream: &mut stream::Stream,
    messages: &mut jetstream::consumer::push::Ordered,
    seen: u64,
) -> Result<jetstream::Message, String> {
    use futures_util::StreamExt;
    loop {
        match tokio::time::timeout(FOLLOW_IDLE, messages.next()).await {
            Ok(Some(message)) => return message.map_err(|e| e.to_string()),
            Ok(None) => return Err("the ordered consumer ended".into()),
            Err(_) => {
                let last = last_sequence(stream).await?;
                if last > seen {
                    return Err(format!("the consumer stalled at {seen}, the stream is at {last}"));
                }
            }
        }
    }
}

/// The stream's last sequence now.
async fn last_sequence(stream: &mut stream::Stream) -> Result<u64, String> {
    Ok(stream
        .info()
        .await
        .map_err(|e| e.to_string())?
        .state
        .last_sequence)
}

/// An ordered consumer (this node's only view of a stream: one per
/// stream, never one per session) on `stream` from `policy`, with the
/// stream and its last sequence when it was opened.
async fn read_stream(
    js: &jetstream::Context,
    stream: &str,
    filter: String,
    policy: jetstream::consumer::DeliverPolicy,
) -> Result<(u64, stream::Stream, jetstream::consumer::push::Ordered), String> {
    let mut stream = js.get_stream(stream).await.map_err(|e| e.to_string())?;
    let last = last_sequence(&mut stream).await?;
    let consumer = stream
        .create_consumer(jetstream::consumer::push::OrderedConfig {
            deliver_subject: js.client().new_inbox(),
            filter_subject: filter,
            deliver_policy: policy,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let messages = consumer.messages().await.map_err(|e| e.to_string())?;
    Ok((last, stream, messages))
}

impl Cluster {
    /// Leaves the cluster: waits (at most `bound`) until JetStream has
    /// acknowledged every write made so far (sessions saved as their
    /// connections closed), tells the other nodes this node's devices are
    /// gone, and stops every task and the NATS connection.
    pub async fn shutdown(&self, bound: Duration) {
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            let writer = self.writer.clone();
            if let Ok(Ok(())) = tokio::task::spawn_blocking(move || writer.settle()).await {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::error!("JetStream did not acknowledge the last writes before shutdown");
                break;
            }
        }
        presence::leave(&self.client, &self.names, &self.presence.node).await;
        self.plain.stop();
        self.rooms.stop();
        self.sessions.stop();
        for task in self.tasks.lock().drain(..) {
            task.abort();
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.client.drain()).await;
    }
}

async fn connect_nats(
    cc: &ClusterConfig,
    reconnected: tokio::sync::mpsc::UnboundedSender<()>,
) -> Result<async_nats::Client, ClusterError> {
    let urls = cc.nats.join(",");
    let fail = |reason: String| ClusterError::Connect {
        urls: urls.clone(),
        reason,
    };
    let options = || {
        let reconnected = reconnected.clone();
        let mut options = async_nats::ConnectOptions::new()
            .name(format!("roomq-{}", cc.node))
            .connection_timeout(CONNECT_TIMEOUT)
            .max_reconnects(None)
            // Core NATS drops what arrives while disconnected or too fast:
            // room followers then check their rooms against the stream.
            .event_callback(move |event| {
                let reconnected = reconnected.clone();
                async move {
                    if matches!(
                        event,
                        async_nats::Event::Connected | async_nats::Event::SlowConsumer(_)
                    ) {
                        let _ = reconnected.send(());
                    }
                }
            });
        if let (Some(user), Some(password)) = (&cc.user, &cc.password) {
            options = options.user_and_password(user.clone(), password.clone());
        }
        if let Some(token) = &cc.token {
            options = options.token(token.clone());
        }
        if let Some(ca) = &cc.tls_ca {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        options
    };
    let mut addrs = Vec::new();
    for url in &cc.nats {
        addrs.push(
            url.parse::<async_nats::ServerAddr>()
                .map_err(|e| fail(format!("key `cluster.nats`: {url:?}: {e}")))?,
        );
    }
    // Servers started with roomq may not listen yet: a refused
    // connection is tried again until CONNECT_TIMEOUT; a refused login
    // is not.
    let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
    loop {
        match options().connect(addrs.clone()).await {
            Ok(client) => return Ok(client),
            Err(e)
                if e.kind() == async_nats::ConnectErrorKind::Io && tokio::time::Instant::now() < deadline =>
            {
                tracing::debug!(error = %e, "NATS not reachable yet; trying again");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => return Err(fail(e.to_string())),
        }
    }
}

/// Records one room's subject of the room stream may hold: the entries
/// the nodes' logs keep, and `room_stream_extra_records` more (reactions,
/// ban copies, what piles up before a trim).
fn room_stream_limit(config: &Config, cc: &ClusterConfig) -> u64 {
    config
        .chat
        .room_max_messages
        .saturating_add(cc.room_stream_extra_records)
}

/// Creates roomq's streams, or checks they exist; several nodes may do
/// this at once (creating a stream with the same settings is idempotent).
async fn ensure_streams(
    js: &jetstream::Context,
    names: &Names,
    cc: &ClusterConfig,
    config: &Config,
) -> Result<(), ClusterError> {
    let rooms = stream::Config {
        name: names.rooms_stream.clone(),
        subjects: vec![names.rooms()],
        storage: stream::StorageType::File,
        num_replicas: cc.replicas,
        // The nodes trim each room's subject as they trim their logs
        // (`Rooms::purge_below`), by entries kept; this is the backstop that
        // also counts reactions and ban copies.
        max_messages_per_subject: i64::try_from(room_stream_limit(config, cc)).unwrap_or(i64::MAX),
        max_age: Duration::from_secs(config.chat.room_max_age_secs),
        // A writer's retry comes within seconds; after that every node's
        // copy of the log knows the msg-id (`chat/dedup.rs`).
        duplicate_window: Duration::from_secs(120),
        // Each stored message is also sent on core NATS, for the nodes
        // following its room (`rooms.rs`).
        republish: Some(stream::Republish {
            source: names.rooms(),
            destination: names.live_rooms(),
            headers_only: false,
        }),
        ..Default::default()
    };
    // Retained messages and session records: the last one per subject.
    let last_only = |name: &str, subject: String| stream::Config {
        name: name.to_string(),
        subjects: vec![subject],
        storage: stream::StorageType::File,
        num_replicas: cc.replicas,
        max_messages_per_subject: 1,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    };
    let retained = last_only(&names.retained_stream, names.retained_all());
    let sessions = last_only(&names.sessions_stream, names.sessions());
    let queues = last_only(&names.queues_stream, names.queues());
    // A lift is a record too (every node must see it): one per sanction
    // ever set, until it is set again.
    let sanctions = last_only(&names.sanctions_stream, names.sanctions());
    for wanted in [rooms, retained, sessions, queues, sanctions] {
        let name = wanted.name.clone();
        let mut last_error = String::new();
        // JetStream needs a meta leader first (seconds after the servers
        // start), and two nodes may create at once: try for a while.
        for attempt in 0..STREAM_ATTEMPTS {
            if attempt > 0 && attempt % 10 == 0 {
                tracing::warn!(stream = %name, error = %last_error, "JetStream not ready yet; still trying");
            }
            match js.get_or_create_stream(wanted.clone()).await {
                Ok(existing) => {
                    last_error.clear();
                    // RePublish cannot be added to a stream later (2.9).
                    if wanted.republish.is_some() && existing.cached_info().config.republish.is_none() {
                        return Err(ClusterError::Stream {
                            stream: name,
                            reason: "it exists without RePublish (made by an older roomq); \
                                     back it up and delete it, roomq creates it again"
                                .into(),
                        });
                    }
                    // A stream made by an earlier roomq, or with other
                    // limits: it takes this node's (2.9 can change them).
                    let limit = existing.cached_info().config.max_messages_per_subject;
                    if limit != wanted.max_messages_per_subject {
                        if let Err(e) = js.update_stream(wanted.clone()).await {
                            last_error = e.to_string();
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            continue;
                        }
                        tracing::info!(stream = %name, from = limit, to = wanted.max_messages_per_subject, "per-subject limit of the stream changed");
                    }
                    break;
                }
                Err(e) => {
                    last_error = e.to_string();
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        if !last_error.is_empty() {
            return Err(ClusterError::Stream {
                stream: name,
                reason: last_error,
            });
        }
    }
    Ok(())
}
