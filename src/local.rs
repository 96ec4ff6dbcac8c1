//! The in-process client: subscribe to topics from the embedding program,
//! without a socket. Each subscription is a session of its own that the
//! router delivers to like any other.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::chat::Filter;
use crate::context::Shared;
use crate::protocol::validate::is_valid_topic_filter;
use crate::protocol::{QoS, SubscriptionOptions};
use crate::router::Message;
use crate::session::Registry;
use crate::session::Session;

/// Why [`crate::BrokerHandle::subscribe`] refused a filter.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SubscribeError {
    /// Not a valid MQTT topic filter (`#` only last, `+` a whole level).
    #[error("invalid topic filter {0:?}")]
    InvalidFilter(String),
    /// A `$share/{group}/{filter}` with an empty or invalid group or filter.
    #[error("invalid shared subscription filter {0:?}")]
    InvalidShared(String),
}

static NEXT_LOCAL_ID: AtomicU64 = AtomicU64::new(1);

/// A subscription made through [`crate::BrokerHandle::subscribe`]. Dropping
/// it unsubscribes.
pub struct LocalSubscription {
    session: Arc<Session>,
    shared: Arc<Shared<Registry>>,
    filter: String,
}

impl LocalSubscription {
    pub(crate) fn new(shared: Arc<Shared<Registry>>, filter: &str, qos: QoS) -> Result<Self, SubscribeError> {
        let parsed = Filter::parse(filter).map_err(|_| SubscribeError::InvalidShared(filter.into()))?;
        if parsed.shared.is_none() && !is_valid_topic_filter(filter) {
            return Err(SubscribeError::InvalidFilter(filter.into()));
        }
        let id = NEXT_LOCAL_ID.fetch_add(1, Ordering::Relaxed);
        let session = Arc::new(Session::new(
            format!("$local-{id}").into(),
            shared.config.limits.max_queued_messages,
            shared.config.limits.max_queued_bytes,
            true,
            shared.metrics.clone(),
            None,
            None,
        ));
        session.set_online(true);
        let options = SubscriptionOptions {
            qos,
            ..Default::default()
        };
        shared
            .router
            // The embedding program is trusted: it reads everything.
            .subscribe(
                &session.subscriber(),
                filter,
                parsed.shared.as_ref(),
                options,
                None,
                false,
            );
        Ok(LocalSubscription {
            session,
            shared,
            filter: filter.to_string(),
        })
    }

    /// The next message, waiting for one if none is queued.
    pub async fn recv(&self) -> Arc<Message> {
        loop {
            if let Some(d) = self.session.state.lock().queue.pop_front() {
                return d.message;
            }
            self.session.wake.notified().await;
        }
    }

    /// The next message if one is queued.
    pub fn try_recv(&self) -> Option<Arc<Message>> {
        self.session.state.lock().queue.pop_front().map(|d| d.message)
    }
}

impl Drop for LocalSubscription {
    fn drop(&mut self) {
        let parsed = Filter::read(&self.filter);
        self.shared
            .router
            .unsubscribe(&self.session.subscriber(), &self.filter, parsed.shared.as_ref());
    }
}
