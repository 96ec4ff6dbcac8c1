//! roomq: an embeddable MQTT 3.1.1 / 5.0 broker, specialised for chat.
//!
//! Where things live:
//! - [`broker`]: [`Broker`] (build, start) and [`BrokerHandle`] (address,
//!   in-process publish/subscribe, shutdown).
//! - [`config`]: [`Config`], every setting and limit, and its layers.
//! - `server`: the listeners (TCP, TLS, WebSocket, WebSocket over TLS),
//!   handshakes, per-IP limits.
//! - [`protocol`]: the only module that knows the wire codec; packet
//!   validation and 3.1.1/5.0 translation.
//! - `session`: one client's protocol state and the task serving its
//!   connection (connect, publish, subscribe, outbox, will, expiry).
//! - [`router`]: the subscription trie, retained messages, fan-out.
//! - [`store`]: the `Store` trait, sled and in-memory implementations,
//!   group commit.
//! - [`chat`]: rooms, room logs with `seq`, de-duplication, presence,
//!   typing, receipts, history, alert rules (`topics.md`).
//! - [`auth`]: authentication (password file, JWT), login back-off, topic
//!   ACL.
//! - [`metrics`]: counters and `$SYS` topics.
//! - `local`: the in-process client.
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

pub mod auth;
pub mod broker;
pub mod chat;
pub mod config;
mod local;
pub mod metrics;
pub mod protocol;
pub mod router;
mod server;
mod session;
pub mod store;

pub use broker::{Broker, BrokerHandle, StartError};
pub use config::{Config, ConfigError, StorageKind};
pub use local::LocalSubscription;
pub use protocol::QoS;
pub use router::Message;
