//! The state every task of one broker shares: configuration, router,
//! sessions, chat, access decision, store. Built once by `Broker::start`
//! (`broker/`, the public facade) and handed to every connection task as
//! an `Arc`.
//!
//! It sits below `session` (which reads it on every packet) and above
//! `auth`, `chat` and the rest it holds, so it names nothing of the layers
//! that use it: the session registry is a type parameter (`session` uses
//! `Shared<Registry>` and calls it `Shared`), and the session directory,
//! the seam cluster mode implements, is defined here (`directory.rs`).

mod directory;

use std::future::Future;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use tokio::sync::watch;

use crate::auth::gate::Gate;
use crate::auth::{Authenticator, LoginBackoff, LoginPool};
use crate::budget::Budgets;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::router::Router;
use crate::store::{GroupCommit, Store, StoreHealth};

pub(crate) use directory::{HandedOver, OneNode, SessionDirectory};

/// State shared by every task of one broker; cheap to clone as `Arc`.
/// `R` is the session registry (`session::Registry`): a parameter, not a
/// name, so that this module stays below `session`.
pub(crate) struct Shared<R> {
    pub config: Config,
    /// An `Arc` because the chat layer holds it too (`Chat::open`).
    pub router: Arc<Router>,
    pub registry: R,
    pub metrics: Arc<Metrics>,
    pub auth: Arc<dyn Authenticator>,
    /// Set to true once to ask every task to stop.
    pub shutdown: watch::Sender<bool>,
    /// Open client sockets, for `max_connections`.
    pub connections: AtomicUsize,
    /// The durable store (`storage = "sled"`).
    pub store: Option<Arc<dyn Store>>,
    /// Group commit, with `durability = "flush"`: acknowledgements of QoS
    /// 1/2 messages wait for it.
    pub commit: Option<Arc<GroupCommit>>,
    /// Whether the store can write (a full disk cannot).
    pub store_health: Arc<StoreHealth>,
    /// Which client ids this node serves among a cluster's nodes
    /// (`directory.rs`; `OneNode` without a cluster).
    pub directory: Arc<dyn SessionDirectory>,
    /// Rooms, presence, history (see `topics.md`).
    pub chat: crate::chat::Chat,
    /// The one access decision (topic rules and room membership) for
    /// everything the broker writes on a client's behalf.
    pub gate: Gate,
    /// Slows down password guessing per IP address and username.
    pub login_backoff: LoginBackoff,
    /// Bounds the password checks running and waiting.
    pub logins: LoginPool,
    /// Per-identity accounts (`budget/`): what each identity holds of
    /// the shared limits. An `Arc` because the router and chat charge it
    /// too.
    pub budgets: Arc<Budgets>,
}

impl<R> Shared<R> {
    /// Publishes the `$SYS/broker/...` topics (retained), unless `$SYS` is
    /// off (`sys_interval_secs = 0`): all of them every `sys_interval_secs`
    /// (`broker/tasks.rs`), and what changed when a client subscribes to
    /// `$SYS` (`subscribe.rs`), so that it does not read the values of the
    /// last interval (zeros, right after start-up).
    pub fn publish_sys(&self, all: bool) {
        if self.config.sys_interval_secs == 0 {
            return;
        }
        self.metrics
            .refresh_sys(env!("CARGO_PKG_VERSION"), all, |topic, value| {
                let message = crate::message::Message::new(
                    topic,
                    value.to_string(),
                    crate::protocol::QoS::AtMostOnce,
                    true,
                );
                self.router.publish(message);
            });
    }

    /// Runs `work` unless the broker shuts down first (`None`): for the
    /// waits a shutdown must not sit out, a handshake or a CONNECT still to
    /// come. A shutdown already under way counts, too.
    pub async fn unless_shutdown<F: Future>(&self, work: F) -> Option<F::Output> {
        let mut stop = self.shutdown.subscribe();
        tokio::select! {
            output = work => Some(output),
            _ = stop.wait_for(|stopped| *stopped) => None,
        }
    }
}
