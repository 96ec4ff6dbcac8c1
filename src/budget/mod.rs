//! Per-identity accounts: everything a client can make the broker keep
//! (memory, disk, a slot in a shared limit, work on a runtime thread) is
//! charged to the identity that caused it, within a documented bound; the
//! global limits (`max_rooms`, `max_retained_messages`, free disk) are the
//! ceiling behind these bounds, not the first defence.
//!
//! An account is named by [`account_of`]: the username, or for a client
//! without one, its address (anonymous clients at one address share one
//! account). Broker-owned state (its own `$` topics, presence it
//! publishes) is never charged here.
//!
//! Two kinds of budget:
//! - [`Held`]: what stays until it is released (a retained message, a room
//!   opened, a connection). [`Budgets::charge`] refuses what would go over
//!   the bound; the caller releases exactly what it charged.
//! - [`Rate`]: work or growth per time (history requests, bytes posted to
//!   room logs). [`Budgets::spend`] takes from a token bucket that refills
//!   continuously.
//!
//! `docs/limits.md` has one row per variant; `tests/budgets.rs` fails when
//! a variant has no row there.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::metrics::Counter;

mod counters;
mod reserve;

use counters::HeldCounters;
pub use counters::HeldHandle;
pub use reserve::ReservedHandle;

/// Something that stays held by an identity until it is released.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Held {
    /// Open MQTT connections (`max_connections_per_user`).
    Connections,
    /// Persistent sessions (online or offline) owned by this identity
    /// (`max_sessions_per_user`): each keeps a queue and subscriptions.
    Sessions,
    /// Rooms whose log this identity opened with its first post
    /// (`max_rooms_per_user`).
    Rooms,
    /// Read receipts kept for this identity (`max_receipts_per_user`).
    Receipts,
    /// Retained messages this identity set (`max_retained_messages_per_user`).
    RetainedMessages,
    /// Bytes of those retained messages: topic, payload, properties
    /// (`max_retained_bytes_per_user`).
    RetainedBytes,
    /// Bytes of subscriptions over all this identity's sessions: each
    /// filter plus a fixed overhead (`max_subscription_bytes_per_user`).
    SubscriptionBytes,
    /// Bytes queued and in flight over all this identity's sessions
    /// (`max_queued_bytes_per_user`): its subscriptions made the broker
    /// keep them.
    QueuedBytes,
    /// Room cursors of this identity's persistent sessions, one per
    /// (session, room) (`max_room_cursors_per_user`; `max_room_cursors`
    /// is the ceiling over all identities).
    RoomCursors,
    /// Presence records (`$presence/{user}`, online or offline) shown for
    /// the identities this account's connections brought in
    /// (`max_presence_records_per_user`; `max_presence_records` is the
    /// ceiling over all).
    PresenceRecords,
}

impl Held {
    /// Every variant, for the documentation check and the metrics.
    pub const ALL: [Held; 10] = [
        Held::Connections,
        Held::Sessions,
        Held::Rooms,
        Held::Receipts,
        Held::RetainedMessages,
        Held::RetainedBytes,
        Held::SubscriptionBytes,
        Held::QueuedBytes,
        Held::RoomCursors,
        Held::PresenceRecords,
    ];

    /// The configuration key of its per-identity bound.
    pub fn key(self) -> &'static str {
        match self {
            Held::Connections => "max_connections_per_user",
            Held::Sessions => "max_sessions_per_user",
            Held::Rooms => "max_rooms_per_user",
            Held::Receipts => "max_receipts_per_user",
            Held::RetainedMessages => "max_retained_messages_per_user",
            Held::RetainedBytes => "max_retained_bytes_per_user",
            Held::SubscriptionBytes => "max_subscription_bytes_per_user",
            Held::QueuedBytes => "max_queued_bytes_per_user",
            Held::RoomCursors => "max_room_cursors_per_user",
            Held::PresenceRecords => "max_presence_records_per_user",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Work or growth an identity may cause per unit of time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rate {
    /// History requests per minute (`history_requests_per_minute`).
    HistoryRequests,
    /// Bytes of room messages stored per hour (`room_post_bytes_per_hour`):
    /// one identity cannot fill the disk for everyone.
    RoomPostBytes,
    /// Room messages per minute in one room (`room_max_messages_per_minute`),
    /// charged to the account [`room_account`] names: one identity cannot
    /// drown a room's conversation.
    RoomMessages,
    /// Changes of one's own place in room member lists per minute
    /// (`room_member_changes_per_minute`): a SUBSCRIBE, UNSUBSCRIBE or
    /// session end that adds or removes the identity from a room's
    /// `$rooms/{room}/members`. Beyond it the change is made but its list
    /// waits for the next minute: one identity flapping a subscription
    /// cannot make every reader of the list get a new one each time.
    RoomMemberChanges,
}

impl Rate {
    pub const ALL: [Rate; 4] = [
        Rate::HistoryRequests,
        Rate::RoomPostBytes,
        Rate::RoomMessages,
        Rate::RoomMemberChanges,
    ];

    /// The configuration key of its per-identity bound.
    pub fn key(self) -> &'static str {
        match self {
            Rate::HistoryRequests => "history_requests_per_minute",
            Rate::RoomPostBytes => "room_post_bytes_per_hour",
            Rate::RoomMessages => "room_max_messages_per_minute",
            Rate::RoomMemberChanges => "room_member_changes_per_minute",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

const HELD_KINDS: usize = Held::ALL.len();
const RATE_KINDS: usize = Rate::ALL.len();

/// The bounds of one account. 0 means no bound.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    pub held: [u64; HELD_KINDS],
    /// Per held kind: the most all accounts together may hold, where the
    /// kind has such a ceiling kept here (0: none here).
    pub ceiling: [u64; HELD_KINDS],
    /// Per rate: how much per `period`.
    pub rate: [(u64, Duration); RATE_KINDS],
}

impl Limits {
    pub fn with_held(mut self, what: Held, bound: u64) -> Self {
        self.held[what.index()] = bound;
        self
    }

    pub fn with_ceiling(mut self, what: Held, ceiling: u64) -> Self {
        self.ceiling[what.index()] = ceiling;
        self
    }

    pub fn with_rate(mut self, what: Rate, amount: u64, period: Duration) -> Self {
        self.rate[what.index()] = (amount, period);
        self
    }

    /// The bounds the configuration sets.
    pub fn from_config(config: &crate::config::Config) -> Self {
        let (per_user, chat) = (&config.per_user, &config.chat);
        Limits::default()
            .with_held(Held::Connections, per_user.max_connections_per_user as u64)
            .with_held(Held::Sessions, per_user.max_sessions_per_user as u64)
            .with_held(Held::Rooms, per_user.max_rooms_per_user as u64)
            .with_held(Held::Receipts, per_user.max_receipts_per_user as u64)
            .with_held(
                Held::RetainedMessages,
                per_user.max_retained_messages_per_user as u64,
            )
            .with_held(Held::RetainedBytes, per_user.max_retained_bytes_per_user as u64)
            .with_held(
                Held::SubscriptionBytes,
                per_user.max_subscription_bytes_per_user as u64,
            )
            .with_held(Held::QueuedBytes, per_user.max_queued_bytes_per_user as u64)
            .with_held(Held::RoomCursors, per_user.max_room_cursors_per_user as u64)
            .with_ceiling(Held::RoomCursors, chat.max_room_cursors as u64)
            .with_held(
                Held::PresenceRecords,
                per_user.max_presence_records_per_user as u64,
            )
            .with_rate(
                Rate::HistoryRequests,
                per_user.history_requests_per_minute as u64,
                Duration::from_secs(60),
            )
            .with_rate(
                Rate::RoomPostBytes,
                per_user.room_post_bytes_per_hour,
                Duration::from_secs(3600),
            )
            .with_rate(
                Rate::RoomMessages,
                chat.room_max_messages_per_minute as u64,
                Duration::from_secs(60),
            )
            .with_rate(
                Rate::RoomMemberChanges,
                per_user.room_member_changes_per_minute as u64,
                Duration::from_secs(60),
            )
    }
}

/// A charge that would go over the bound; nothing was charged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("over the per-identity bound `{key}` ({bound})")]
pub struct OverBudget {
    pub key: &'static str,
    pub bound: u64,
}

/// The name of the account that pays for what a client makes the broker
/// keep: `user:{identity}` for a verified identity (`Principal::identity`),
/// or `anon:{address}` for a client whose name is only claimed (a broker
/// without an authenticator: the loopback default) or that has none
/// (`anon:` when the address is unknown, as for a will restored after a
/// restart). Pass `identity` only when it is verified, or when the
/// address is unknown and the name is all there is (a restored session).
pub fn account_of(identity: Option<&str>, peer: Option<IpAddr>) -> Arc<str> {
    match (identity, peer) {
        (Some(name), _) => format!("user:{name}").into(),
        (None, Some(ip)) => format!("anon:{ip}").into(),
        (None, None) => "anon:".into(),
    }
}

/// The account of `account`'s posts in `room`, for [`Rate::RoomMessages`]:
/// one per (identity, room) that posted within the last minute, forgotten
/// like any idle account. The `room:` prefix keeps it apart from every
/// identity's own account (`user:`, `anon:`), and a room name has no `/`,
/// so no two pairs share a name.
pub fn room_account(account: &str, room: &str) -> String {
    format!("room:{room}/{account}")
}

#[derive(Debug)]
struct Bucket {
    /// Tokens left, refilled continuously up to the bound.
    tokens: f64,
    refilled: Instant,
}

#[derive(Debug, Default)]
struct Account {
    held: Arc<HeldCounters>,
    /// Made by the first `spend`: most accounts (one per connected
    /// identity) never spend, and each would carry them empty.
    buckets: Option<Box<[Option<Bucket>; RATE_KINDS]>>,
}

impl Account {
    /// Whether the account keeps nothing worth remembering: nothing held,
    /// no handle on its counters, and every bucket would be full again by
    /// now.
    fn is_idle(&self, limits: &Limits, now: Instant) -> bool {
        Arc::strong_count(&self.held) == 1
            && self.held.0.iter().all(|h| h.load(Ordering::Relaxed) == 0)
            && self.buckets.as_deref().is_none_or(|buckets| {
                buckets.iter().enumerate().all(|(i, bucket)| match bucket {
                    None => true,
                    Some(b) => refilled(b, limits.rate[i], now) >= limits.rate[i].0 as f64,
                })
            })
    }
}

fn refilled(bucket: &Bucket, (amount, period): (u64, Duration), now: Instant) -> f64 {
    let elapsed = now.saturating_duration_since(bucket.refilled).as_secs_f64();
    let per_sec = amount as f64 / period.as_secs_f64().max(f64::MIN_POSITIVE);
    (bucket.tokens + elapsed * per_sec).min(amount as f64)
}

/// `account`'s entry, made when missing, with `owned` as its key when
/// given (no second copy of a name the caller holds as an `Arc`).
fn entry<'a>(
    accounts: &'a mut HashMap<Arc<str>, Account>,
    account: &str,
    owned: Option<&Arc<str>>,
) -> &'a mut Account {
    let key = match accounts.get_key_value(account) {
        Some((key, _)) => key.clone(),
        None => owned.cloned().unwrap_or_else(|| Arc::from(account)),
    };
    accounts.entry(key).or_default()
}

/// Every identity's account; one per broker, shared by every path that
/// charges (a `parking_lot` mutex: held for a map lookup only, never across
/// an `.await`).
#[derive(Debug)]
pub struct Budgets {
    limits: Limits,
    accounts: Mutex<HashMap<Arc<str>, Account>>,
    /// What all accounts hold together, per kind, for the ceilings
    /// (`Limits::ceiling`); changed only under the `accounts` lock.
    totals: [AtomicU64; HELD_KINDS],
    /// Refusals per bound, for `roomq_budget_refused_total{bound}`: a
    /// limit that refuses counts it (nothing is dropped silently).
    refused_held: [Counter; HELD_KINDS],
    refused_rate: [Counter; RATE_KINDS],
}

impl Budgets {
    pub fn new(limits: Limits) -> Self {
        Budgets {
            limits,
            accounts: Mutex::new(HashMap::new()),
            totals: Default::default(),
            refused_held: Default::default(),
            refused_rate: Default::default(),
        }
    }

    /// How often each per-identity bound refused, by its configuration
    /// key, in the order of [`Held::ALL`] then [`Rate::ALL`].
    pub fn refusals(&self) -> Vec<(&'static str, u64)> {
        let held = Held::ALL
            .iter()
            .map(|h| (h.key(), self.refused_held[h.index()].get()));
        let rate = Rate::ALL
            .iter()
            .map(|r| (r.key(), self.refused_rate[r.index()].get()));
        held.chain(rate).collect()
    }

    /// Charges `amount` of `what` to `account`, or refuses it (charging
    /// nothing) when the account would hold more than its bound.
    pub fn charge(&self, account: &str, what: Held, amount: u64) -> Result<(), OverBudget> {
        self.charge_keyed(account, None, what, amount)
    }

    fn charge_keyed(
        &self,
        account: &str,
        owned: Option<&Arc<str>>,
        what: Held,
        amount: u64,
    ) -> Result<(), OverBudget> {
        let mut accounts = self.accounts.lock();
        if let Some(entry) = accounts.get(account) {
            return self.charge_counters(&entry.held, what, amount);
        }
        let entry = Account::default();
        self.charge_counters(&entry.held, what, amount)?;
        let key = owned.cloned().unwrap_or_else(|| Arc::from(account));
        accounts.insert(key, entry);
        Ok(())
    }

    /// The bound, then the ceiling; on a refusal nothing stays charged.
    fn charge_counters(&self, held: &HeldCounters, what: Held, amount: u64) -> Result<(), OverBudget> {
        let refused = self.try_charge_counters(held, what, amount);
        if refused.is_err() {
            self.refused_held[what.index()].inc();
        }
        refused
    }

    /// [`Budgets::charge_counters`] without counting a refusal: for a
    /// charge of more than is needed (a handle's reserve), which is tried
    /// again with only what is needed when refused.
    fn try_charge_counters(&self, held: &HeldCounters, what: Held, amount: u64) -> Result<(), OverBudget> {
        let bound = self.limits.held[what.index()];
        if !held.try_add(what, amount, bound) {
            return Err(OverBudget {
                key: what.key(),
                bound,
            });
        }
        let ceiling = self.limits.ceiling[what.index()];
        if ceiling == 0 {
            return Ok(());
        }
        let total = &self.totals[what.index()];
        let before = total.fetch_add(amount, Ordering::Relaxed);
        if before.saturating_add(amount) > ceiling {
            total.fetch_sub(amount, Ordering::Relaxed);
            held.sub(what, amount);
            return Err(OverBudget {
                key: what.key(),
                bound: ceiling,
            });
        }
        Ok(())
    }

    /// Charges without a bound check: for what is already kept (state read
    /// back at start-up), so that the account counts it even when a bound
    /// was lowered since.
    pub fn charge_unchecked(&self, account: &str, what: Held, amount: u64) {
        self.charge_unchecked_keyed(account, None, what, amount);
    }

    fn charge_unchecked_keyed(&self, account: &str, owned: Option<&Arc<str>>, what: Held, amount: u64) {
        let mut accounts = self.accounts.lock();
        self.add_total(what, amount);
        entry(&mut accounts, account, owned).held.try_add(what, amount, 0);
    }

    /// Gives back what [`Budgets::charge`] took.
    pub fn release(&self, account: &str, what: Held, amount: u64) {
        let now = Instant::now();
        let mut accounts = self.accounts.lock();
        if let Some(entry) = accounts.get_mut(account) {
            let released = entry.held.sub(what, amount);
            self.sub_total(what, released);
            if entry.is_idle(&self.limits, now) {
                accounts.remove(account);
            }
        }
    }

    /// Takes `amount` from `account`'s bucket for `what`, or refuses it
    /// (taking nothing) when the bucket holds less.
    pub fn spend(&self, account: &str, what: Rate, amount: u64) -> Result<(), OverBudget> {
        let (bound, period) = self.limits.rate[what.index()];
        if bound == 0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut accounts = self.accounts.lock();
        let entry = entry(&mut accounts, account, None);
        let buckets = entry.buckets.get_or_insert_with(Default::default);
        let bucket = buckets[what.index()].get_or_insert(Bucket {
            tokens: bound as f64,
            refilled: now,
        });
        let tokens = refilled(bucket, (bound, period), now);
        if tokens < amount as f64 {
            bucket.tokens = tokens;
            bucket.refilled = now;
            self.refused_rate[what.index()].inc();
            return Err(OverBudget {
                key: what.key(),
                bound,
            });
        }
        bucket.tokens = tokens - amount as f64;
        bucket.refilled = now;
        Ok(())
    }

    /// Adds to the sum over all accounts, kept only for a kind with a
    /// ceiling: a sum that every delivery changes would be one cache line
    /// all cores write.
    fn add_total(&self, what: Held, amount: u64) {
        if self.limits.ceiling[what.index()] != 0 {
            self.totals[what.index()].fetch_add(amount, Ordering::Relaxed);
        }
    }

    fn sub_total(&self, what: Held, amount: u64) {
        if self.limits.ceiling[what.index()] != 0 {
            self.totals[what.index()].fetch_sub(amount, Ordering::Relaxed);
        }
    }

    /// What all accounts hold of `what` now, for a kind with a ceiling
    /// (`Limits::ceiling`; 0 for the others, which are not summed).
    pub fn total(&self, what: Held) -> u64 {
        self.totals[what.index()].load(Ordering::Relaxed)
    }

    /// What `account` holds of `what` now.
    pub fn held(&self, account: &str, what: Held) -> u64 {
        self.accounts.lock().get(account).map_or(0, |a| a.held.get(what))
    }

    /// A handle on `account`'s counter of `what`, for a path that charges
    /// and releases per message: no lock and no lookup per charge. The
    /// account is remembered while a handle on it lives.
    pub fn handle(self: &Arc<Self>, account: &Arc<str>, what: Held) -> HeldHandle {
        let mut accounts = self.accounts.lock();
        let held = entry(&mut accounts, account, Some(account)).held.clone();
        HeldHandle {
            budgets: self.clone(),
            held,
            what,
        }
    }

    /// Accounts remembered now (each holds something or has a bucket that
    /// is not yet full).
    pub fn accounts(&self) -> usize {
        self.accounts.lock().len()
    }

    /// Forgets accounts that hold nothing and whose buckets are full again;
    /// run by the broker's upkeep so an identity seen once costs nothing
    /// for long.
    pub fn forget_idle(&self) {
        let now = Instant::now();
        self.accounts.lock().retain(|_, a| !a.is_idle(&self.limits, now));
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// [`Budgets::charge`], released when the returned guard drops: for
    /// what is held exactly as long as a value lives (a connection), so
    /// that every way it ends gives the charge back.
    pub fn charge_held(
        self: &Arc<Self>,
        account: Arc<str>,
        what: Held,
        amount: u64,
    ) -> Result<Charged, OverBudget> {
        self.charge_keyed(&account, Some(&account), what, amount)?;
        Ok(self.charged(account, what, amount))
    }

    /// [`Budgets::charge_unchecked`] with a guard: for what replaces
    /// something the account is about to give back (a session taken over
    /// by a new connection of the same identity).
    pub fn charge_held_unchecked(self: &Arc<Self>, account: Arc<str>, what: Held, amount: u64) -> Charged {
        self.charge_unchecked_keyed(&account, Some(&account), what, amount);
        self.charged(account, what, amount)
    }

    fn charged(self: &Arc<Self>, account: Arc<str>, what: Held, amount: u64) -> Charged {
        Charged {
            budgets: self.clone(),
            account,
            what,
            amount,
        }
    }
}

/// A charge that is released when this drops (see [`Budgets::charge_held`]).
#[derive(Debug)]
pub struct Charged {
    budgets: Arc<Budgets>,
    account: Arc<str>,
    what: Held,
    amount: u64,
}

impl Drop for Charged {
    fn drop(&mut self) {
        self.budgets.release(&self.account, self.what, self.amount);
    }
}

#[cfg(test)]
mod tests;
