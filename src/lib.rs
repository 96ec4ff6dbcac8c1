//! roomq: an embeddable MQTT 3.1.1 / 5.0 broker, specialised for chat.
//!
//! Where things live (each module imports only the ones listed after it;
//! `tests/architecture.rs` keeps it so):
//! - [`broker`]: [`Broker`] (build, start) and [`BrokerHandle`] (address,
//!   in-process publish/subscribe, shutdown): the public facade.
//! - `admin`: the admin listener (`admin_listen`): `/metrics`, `/healthz`,
//!   `/readyz` over HTTP.
//! - `server`: the listeners (TCP, TLS, WebSocket, WebSocket over TLS),
//!   handshakes, per-IP limits, and the browser chat's files on `web`
//!   listeners.
//! - `local`: the in-process client.
//! - `session`: one client's protocol state and the task serving its
//!   connection (one file per packet kind), and the session registry.
//! - `context`: `Shared`, the state every task shares (configuration,
//!   router, chat, gate, store, budgets; the registry as a type
//!   parameter), and the session directory cluster mode implements.
//! - [`auth`]: authentication (password file, JWT), login back-off, and the
//!   one access decision (`auth/gate.rs`: topic ACL and room membership).
//! - [`chat`]: rooms, room logs with `seq`, commit before delivery,
//!   de-duplication, presence, typing, receipts, history, alert rules
//!   (`topics.md`).
//! - `cluster`: cluster mode on NATS JetStream (`[cluster]`): room logs in
//!   a stream each node reads by interest, plain messages by node
//!   interest, retained messages, bans and mutes on every node, takeover
//!   across nodes.
//! - [`router`]: the subscription trie, retained messages, fan-out to
//!   [`router::Subscriber`]s (sessions implement it).
//! - [`store`]: the `Store` trait, sled and in-memory implementations,
//!   group commit, store health, record conversions.
//! - [`message`]: [`Message`] and `Delivery`, what the router carries.
//! - [`config`]: [`Config`], every setting and limit, and its layers.
//! - [`budget`]: per-identity accounts: what one identity may keep of
//!   every shared limit (`docs/limits.md`).
//! - [`protocol`]: the only module that knows the wire codec; packet
//!   validation and 3.1.1/5.0 translation.
//! - [`metrics`]: counters and histograms, read by `$SYS` topics and
//!   `/metrics`.
//!
//! The path of a PUBLISH, forward only (each step hands the next what it
//! found; none asks a module above it):
//! 1. `session/io.rs` reads bytes from the socket; `protocol/frame.rs`
//!    decodes a packet.
//! 2. `session/connection.rs` (`handle`) dispatches it to
//!    `session/publish.rs`: topic alias, size and rate limits. There the
//!    topic is classified, once, into a `chat::Classified`
//!    (`chat/classified.rs`: a chat topic with its room, sender and
//!    msg-id, or a plain one); that value travels with the message. In
//!    cluster mode it also names the room this node catches up with
//!    before the rest of the PUBLISH is handled (`session/rooms_ready.rs`).
//! 3. `auth/gate.rs` decides, from that value, whether this client may
//!    write the topic (the same decision serves wills, history replies
//!    and alert copies, each classified where it enters). Then
//!    `session/publish.rs` checks the store's health, Receive Maximum,
//!    QoS 2 state and de-duplication by packet id.
//! 4. `session/route.rs` sends it on. It first puts to the gate what the
//!    chat layer would write besides the message (a reply to a Response
//!    Topic, an alert rule's room copies), and hands the answers down:
//!    a chat topic goes to `chat/publish.rs` (checks, `seq`, room log in
//!    `chat/log.rs`, then `chat/commit.rs` delivers after the group
//!    commit); anything else, and alert copies, to the router.
//! 5. `router/mod.rs` matches subscriptions (`router/trie.rs`, retained in
//!    `router/retained.rs`) and hands a `Delivery` to each subscriber
//!    through `router::Subscriber`, which sessions implement.
//! 6. `session/mod.rs` (`deliver`) queues it (`session/queue.rs`, stored by
//!    `session/persist.rs` for a persistent session) and wakes the
//!    subscriber's connection, whose `session/outbox.rs` writes it.
//! 7. The publisher's PUBACK waits for the group commit
//!    (`store/group_commit.rs`) in `session/acks.rs` (its rules, without
//!    I/O, in `session/ack_queue.rs`; those of the messages in flight to
//!    a subscriber in `session/inflight.rs`).
//!
//! A SUBSCRIBE's filters are parsed the same way, once, in
//! `session/subscribe.rs`, into a `chat::Filter` (`chat/filter.rs`: the
//! `$share/{group}/` prefix and the room it names) that the ACL, the
//! router and the chat layer's room lists read.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let mut config = roomq::Config::default();
//! config.listen = "127.0.0.1:0".parse()?;
//! let broker = roomq::Broker::new(config).start().await?;
//! println!("listening on {}", broker.local_addr());
//! broker.shutdown().await;
//! # Ok(()) }
//! ```

// Without cluster mode the core's inbound seams (room messages, counts
// and sanctions applied from other nodes) have no caller; the default
// build, with it, still reports dead code.
#![cfg_attr(not(feature = "cluster"), allow(dead_code))]

mod admin;
pub mod auth;
pub mod broker;
pub mod budget;
pub mod chat;
#[cfg(feature = "cluster")]
mod cluster;
pub mod config;
mod context;
mod local;
pub mod message;
pub mod metrics;
pub mod protocol;
pub mod router;
mod server;
mod session;
pub mod store;

pub use broker::{Broker, BrokerHandle, StartError};
#[cfg(feature = "cluster")]
pub use cluster::ClusterError;
pub use config::{Config, ConfigError, StorageKind};
pub use local::{LocalSubscription, SubscribeError};
pub use message::Message;
pub use protocol::QoS;
