//! Client id to session: finding, taking over and creating sessions.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::OwnedMutexGuard;

use super::Session;
use crate::broker::Shared;

/// How long a taking-over connection waits, per try, for the old connection
/// to let go of the session before kicking it again.
const TAKEOVER_WAIT: Duration = Duration::from_secs(1);
const TAKEOVER_TRIES: u32 = 10;

/// All sessions of one broker, by client id.
#[derive(Default)]
pub struct Registry {
    sessions: Mutex<HashMap<Arc<str>, Arc<Session>>>,
    assigned_ids: AtomicU64,
}

/// A session claimed by a connection.
pub(crate) struct Claimed {
    pub session: Arc<Session>,
    /// Whether state from an earlier connection was kept.
    pub present: bool,
    /// Held for as long as the connection serves the session.
    pub guard: OwnedMutexGuard<()>,
}

impl Registry {
    pub fn len(&self) -> usize {
        self.sessions.lock().len()
    }

    pub fn get(&self, client_id: &str) -> Option<Arc<Session>> {
        self.sessions.lock().get(client_id).cloned()
    }

    /// A fresh client id for a 5.0 client that sent an empty one.
    pub fn assign_client_id(&self) -> String {
        let n = self.assigned_ids.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        format!("roomq-{nanos:x}-{n}")
    }

    /// Claims the session of `client_id` for a new connection: an existing
    /// connection is kicked off (takeover) and waited for; with `clean_start`
    /// an existing session is ended and a new one made. `None` when the old
    /// connection would not let go.
    pub(crate) async fn claim(
        &self,
        shared: &Arc<Shared>,
        client_id: &str,
        clean_start: bool,
    ) -> Option<Claimed> {
        let (session, created) = match self.get(client_id) {
            Some(s) => (s, false),
            None => {
                let fresh = self.new_session(shared, client_id);
                let mut map = self.sessions.lock();
                let entry = map
                    .entry(fresh.client_id.clone())
                    .or_insert_with(|| fresh.clone());
                let created = Arc::ptr_eq(entry, &fresh);
                (entry.clone(), created)
            }
        };
        let guard = take_ownership(&session).await?;
        let ended = session.state.lock().ended;
        if clean_start || ended {
            if !ended {
                super::lifecycle::end_session(shared, &session);
            }
            let fresh = self.new_session(shared, client_id);
            let guard = fresh.owner.clone().try_lock_owned().ok()?;
            self.sessions
                .lock()
                .insert(fresh.client_id.clone(), fresh.clone());
            return Some(Claimed {
                session: fresh,
                present: false,
                guard,
            });
        }
        Some(Claimed {
            session,
            present: !created,
            guard,
        })
    }

    fn new_session(&self, shared: &Shared, client_id: &str) -> Arc<Session> {
        Arc::new(Session::new(
            client_id.into(),
            shared.config.max_queued_messages,
            shared.config.queue_qos0_messages,
            shared.metrics.clone(),
            shared.store.clone(),
            Some(shared.chat.membership.clone()),
        ))
    }

    /// Registers a session rebuilt from the store at start-up.
    pub(crate) fn restore(&self, shared: &Shared, client_id: &str) -> Arc<Session> {
        let session = self.new_session(shared, client_id);
        self.sessions
            .lock()
            .insert(session.client_id.clone(), session.clone());
        session
    }

    /// Forgets `session` if it is still the one registered for its id.
    pub(crate) fn remove(&self, session: &Arc<Session>) {
        let mut map = self.sessions.lock();
        if map
            .get(&session.client_id)
            .is_some_and(|s| Arc::ptr_eq(s, session))
        {
            map.remove(&session.client_id);
        }
    }
}

/// Kicks whatever connection serves `session` and waits until it is gone.
async fn take_ownership(session: &Arc<Session>) -> Option<OwnedMutexGuard<()>> {
    for _ in 0..TAKEOVER_TRIES {
        if let Ok(guard) = session.owner.clone().try_lock_owned() {
            return Some(guard);
        }
        if let Some(kick) = session.state.lock().kick.clone() {
            kick.notify_one();
        }
        if let Ok(guard) = tokio::time::timeout(TAKEOVER_WAIT, session.owner.clone().lock_owned()).await {
            return Some(guard);
        }
    }
    tracing::error!(client_id = %session.client_id, "old connection did not release the session");
    None
}
