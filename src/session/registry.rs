//! Client id to session: finding, taking over and creating sessions.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::OwnedMutexGuard;

use super::Shared;
use super::{Kick, Session};
use crate::auth::gate::Principal;
use crate::budget::Held;

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

/// Why a session could not be claimed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ClaimRefused {
    /// The client id belongs to a session of another identity: 5.0 CONNACK
    /// 0x87 Not authorized, 3.1.1 return code 5.
    OtherOwner,
    /// The old connection would not let go: 0x88 Server unavailable.
    OldConnectionStuck,
    /// The owner holds `max_sessions_per_user` sessions already: 5.0
    /// CONNACK 0x97 Quota exceeded, 3.1.1 return code 3.
    OverBudget,
    /// The broker keeps `max_sessions` sessions already and this one
    /// would be a new persistent one: 5.0 CONNACK 0x97, 3.1.1 code 3.
    Full,
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

    /// Messages queued or in flight over every session (read at scrape
    /// time: one lock per session, after the registry's).
    pub fn pending_total(&self) -> usize {
        let sessions: Vec<Arc<Session>> = self.sessions.lock().values().cloned().collect();
        sessions.iter().map(|s| s.pending_count()).sum()
    }

    /// Writes the record of every connected persistent session again
    /// (after a reopen of the store lost the latest ones); returns how
    /// many were written.
    pub(crate) fn resave_online(&self) -> usize {
        let sessions: Vec<Arc<Session>> = self.sessions.lock().values().cloned().collect();
        sessions
            .iter()
            .filter(|s| s.is_online())
            .filter(|s| s.save(&s.state.lock(), None))
            .count()
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

    /// Claims the session of `client_id` for a new connection of `owner`:
    /// an existing connection is kicked off (takeover) and waited for; with
    /// `clean_start` an existing session is ended and a new one made. A
    /// session that belongs to another identity is left untouched, with its
    /// connection, and the claim refused. A new `persistent` session (one
    /// that outlives its connection) is refused beyond `max_sessions`.
    pub(crate) async fn claim(
        &self,
        shared: &Arc<Shared>,
        client_id: &str,
        clean_start: bool,
        persistent: bool,
        owner: &Principal,
    ) -> Result<Claimed, ClaimRefused> {
        let (session, created) = match self.get(client_id) {
            Some(s) => (s, false),
            None => {
                let fresh = self.new_session(shared, client_id);
                let mut map = self.sessions.lock();
                // The ceiling behind `max_sessions_per_user`. A clean
                // session lasts as long as its connection, which
                // `max_connections` bounds: it is not refused here.
                let max = shared.config.limits.max_sessions;
                if persistent && max > 0 && map.len() >= max {
                    drop(map);
                    tracing::info!(%client_id, max_sessions = max, "new persistent session refused: max_sessions");
                    return Err(ClaimRefused::Full);
                }
                let entry = map
                    .entry(fresh.client_id.clone())
                    .or_insert_with(|| fresh.clone());
                let created = Arc::ptr_eq(entry, &fresh);
                (entry.clone(), created)
            }
        };
        if !charge_session(shared, &session, owner, persistent) {
            if created {
                self.remove(shared, &session);
            }
            return Err(ClaimRefused::OverBudget);
        }
        {
            let mut st = session.state.lock();
            match &st.owner {
                Some(existing) if !st.ended && !existing.same_owner(owner) => {
                    return Err(ClaimRefused::OtherOwner)
                }
                // A session stored by an older version has no owner yet:
                // the first client to come back binds it, and is listed in
                // the rooms its filters name from now on.
                None if !st.ended => {
                    for filter in st.subscriptions.keys() {
                        let filter = crate::chat::Filter::read(filter);
                        shared
                            .chat
                            .subscribed(owner.identity.as_deref(), &owner.account, &filter, None);
                    }
                    st.owner = Some(owner.clone());
                }
                _ => st.owner = Some(owner.clone()),
            }
            st.kick_reason = Some(Kick::TakenOver {
                session_continues: !clean_start,
            });
        }
        let guard = take_ownership(&session)
            .await
            .ok_or(ClaimRefused::OldConnectionStuck)?;
        let ended = session.state.lock().ended;
        if clean_start || ended {
            if !ended {
                super::lifecycle::end_session(shared, &session);
            }
            let fresh = self.new_session(shared, client_id);
            if !charge_session(shared, &fresh, owner, persistent) {
                return Err(ClaimRefused::OverBudget);
            }
            fresh.state.lock().owner = Some(owner.clone());
            let guard = fresh
                .owner
                .clone()
                .try_lock_owned()
                .map_err(|_| ClaimRefused::OldConnectionStuck)?;
            self.sessions
                .lock()
                .insert(fresh.client_id.clone(), fresh.clone());
            return Ok(Claimed {
                session: fresh,
                present: false,
                guard,
            });
        }
        Ok(Claimed {
            session,
            present: !created,
            guard,
        })
    }

    /// Closes the connections whose password login `auth` now revokes
    /// (after a reload of the password file); their sessions end when the
    /// connection has closed (`connection.rs`, `finish`). Returns how many
    /// were closed, and the revoked sessions with no connection, for the
    /// caller to end (`lifecycle::end_revoked`).
    pub(crate) fn kick_revoked(&self, auth: &dyn crate::auth::Authenticator) -> (usize, Vec<Arc<Session>>) {
        let sessions: Vec<Arc<Session>> = self.sessions.lock().values().cloned().collect();
        let mut kicked = 0;
        let mut offline = Vec::new();
        for session in sessions {
            let mut st = session.state.lock();
            let revoked = st
                .revocable_login
                .as_deref()
                .is_some_and(|user| auth.revoked(user));
            if !revoked {
                continue;
            }
            match st.kick.clone() {
                Some(kick) => {
                    st.kick_reason = Some(Kick::Revoked);
                    kick.notify_one();
                    kicked += 1;
                }
                None => {
                    drop(st);
                    offline.push(session);
                }
            }
        }
        (kicked, offline)
    }

    fn new_session(&self, shared: &Shared, client_id: &str) -> Arc<Session> {
        let session = Arc::new(Session::new(
            client_id.into(),
            shared.config.limits.max_queued_messages,
            shared.config.limits.max_queued_bytes,
            shared.config.limits.queue_qos0_messages,
            shared.metrics.clone(),
            shared.store.clone(),
            Some(shared.chat.membership.clone()),
        ));
        if !shared.gate.acl.is_empty() {
            let _ = session.acl.set(shared.gate.acl.clone());
        }
        if let Some(commit) = &shared.commit {
            let _ = session.commit.set(commit.clone());
        }
        session
    }

    /// Registers a session rebuilt from the store at start-up.
    pub(crate) fn restore(&self, shared: &Shared, client_id: &str) -> Arc<Session> {
        let session = self.new_session(shared, client_id);
        self.sessions
            .lock()
            .insert(session.client_id.clone(), session.clone());
        session
    }

    /// Forgets `session` if it is still the one registered for its id,
    /// and gives its charge back to its owner's account.
    pub(crate) fn remove(&self, shared: &Shared, session: &Arc<Session>) {
        {
            let mut map = self.sessions.lock();
            if map
                .get(&session.client_id)
                .is_some_and(|s| Arc::ptr_eq(s, session))
            {
                map.remove(&session.client_id);
            }
        }
        let mut st = session.state.lock();
        let counted = std::mem::take(&mut st.counted_as_session);
        let account = st.release_charges();
        drop(st);
        if let (Some(account), true) = (account, counted) {
            shared.budgets.release(&account, Held::Sessions, 1);
        }
    }
}

/// The account that pays for the sessions of `owner`
/// (`Principal::account`: a verified identity's, else its address's).
fn session_account(owner: &Principal) -> Option<Arc<str>> {
    Some(owner.account.clone())
}

/// Charges `session` to `owner`: its subscriptions' and queues' bytes
/// whatever its kind (`max_subscription_bytes_per_user`,
/// `max_queued_bytes_per_user`: a clean session holds them as long as its
/// connection), and, when `persistent`, one of `max_sessions_per_user`
/// (a session that ends with its connection is bounded by the
/// connections instead). False when the owner holds its share of
/// sessions.
fn charge_session(shared: &Shared, session: &Session, owner: &Principal, persistent: bool) -> bool {
    let Some(account) = session_account(owner) else {
        return true;
    };
    let mut st = session.state.lock();
    if st.charged_to.is_none() {
        st.charge_to(&shared.budgets, account.clone());
    }
    if !persistent || st.counted_as_session {
        return true;
    }
    let account = st.charged_to.clone().unwrap_or(account);
    match shared.budgets.charge(&account, Held::Sessions, 1) {
        Ok(()) => {
            st.counted_as_session = true;
            true
        }
        Err(over) => {
            tracing::info!(client_id = %session.client_id, %account, "{over}: session refused");
            false
        }
    }
}

/// Charges a session restored from the store (or handed over by another
/// node) to its owner, without a bound check: it is kept already. Its
/// subscriptions and queues are charged too, so the owner's bounds count
/// them after a restart as before.
pub(crate) fn charge_restored(shared: &Shared, session: &Session) {
    let mut st = session.state.lock();
    if st.charged_to.is_some() {
        return;
    }
    if let Some(account) = st.owner.as_ref().and_then(session_account) {
        shared.budgets.charge_unchecked(&account, Held::Sessions, 1);
        st.counted_as_session = true;
        let subscriptions: u64 = st
            .subscriptions
            .keys()
            .map(|f| super::subscribe::subscription_cost(f))
            .sum();
        shared
            .budgets
            .charge_unchecked(&account, Held::SubscriptionBytes, subscriptions);
        st.subscription_bytes = subscriptions;
        let cursors = st.room_cursors.len() as u64;
        shared
            .budgets
            .charge_unchecked(&account, Held::RoomCursors, cursors);
        st.cursors_charged = cursors;
        st.charge_to(&shared.budgets, account);
    }
}

/// `client_id` connected on another node of the cluster: the connection
/// here, if any, is closed (5.0 DISCONNECT 0x8E Session taken over) and
/// the session is forgotten here. With `continues` (the new CONNECT has
/// Clean Start 0) it goes on there: returned to be sent over, and no will
/// is sent; otherwise it ends here as on a local takeover.
#[cfg_attr(not(feature = "cluster"), allow(dead_code))]
pub(crate) async fn give_up_to_other_node(
    shared: &Arc<Shared>,
    client_id: &str,
    continues: bool,
) -> Option<crate::context::HandedOver> {
    let session = shared.registry.get(client_id)?;
    session.state.lock().kick_reason = Some(Kick::TakenOver {
        session_continues: continues,
    });
    let _guard = take_ownership(&session).await?;
    let handed = {
        let mut st = session.state.lock();
        let persistent = continues && st.expiry_secs > 0 && !st.ended;
        if persistent {
            st.pending_will = None;
        }
        persistent.then(|| session.hand_over(&st))
    };
    if handed.is_some() {
        // The new node writes the record from now on.
        session
            .moved_away
            .store(true, std::sync::atomic::Ordering::Release);
    }
    super::lifecycle::end_session(shared, &session);
    handed
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
