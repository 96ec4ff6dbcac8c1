//! Who is in a room: `$rooms/{room}/members` (retained, QoS 1, CBOR
//! `[* tstr]`, sorted). A declared room lists its declared members and
//! moderators; any other (open) room the identities holding a
//! subscription whose filter names it (`rooms/{room}/...`, also under
//! `$share/`), online or kept by a persistent session, at most
//! `room_members_listed` of them, and at most
//! `room_members_listed_per_account` of one budget account (where names
//! are only claimed, one address is one account: the names it invents
//! cannot push the others out). When the list is cut, identities that
//! pay with their own account come before those paid for by an address;
//! the list shown is sorted. A user banned from the room is not listed.
//!
//! Memory: per room, a count of such subscriptions per identity. An entry
//! exists only while one of those subscriptions exists, and a room's map
//! goes with its last one, so the index is bounded by the subscriptions
//! themselves (`max_subscriptions_per_session` per session, sessions and
//! connections per identity by `max_sessions_per_user` and
//! `max_connections_per_user`), which are already charged to their
//! identity: nothing more is charged here.
//!
//! A change marks its room; `run_members` publishes the marked rooms at
//! once, then waits `room_members_interval_ms` before it publishes again,
//! so a flood of SUBSCRIBE and UNSUBSCRIBE costs at most one publication
//! per room per interval, not one per packet; after a list of N bytes its
//! room also waits N / `room_members_bytes_per_sec` seconds, so the bytes
//! one room's list costs each reader are bounded whatever one identity
//! does (a list is up to `room_members_listed` × ~130 bytes). An open room's list is kept
//! in memory only (it is rebuilt from the restored sessions at start-up);
//! when its last subscriber goes, watchers get an empty list and nothing
//! is kept. In a cluster each node lists the subscribers it serves or
//! holds, to its own clients.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;

use super::{payloads, Chat, Filter};
use crate::budget::Rate;
use crate::protocol::QoS;
use crate::router::{Message, RemoteScope};

/// How often the lists set aside for identities over
/// `room_member_changes_per_minute` are published: the rate's period.
const DEFERRED_EVERY: Duration = Duration::from_secs(60);

/// One room's subscribers by identity, sorted, as the list shows them.
type Subscribers = BTreeMap<Arc<str>, Subscriber>;

/// How many subscriptions of one identity name the room, and the account
/// that pays for the first of them (`Principal::account`), which the
/// list's per-account bound counts.
struct Subscriber {
    count: u32,
    account: Arc<str>,
}

/// The subscribers of each room, by identity.
pub(crate) struct RoomMembers {
    rooms: Mutex<HashMap<Arc<str>, Subscribers>>,
    /// Rooms whose list changed since it was last published (lock order:
    /// after `rooms`).
    changed: Mutex<HashSet<Arc<str>>>,
    /// Rooms whose change came beyond its identity's
    /// `room_member_changes_per_minute`: published at the next minute
    /// (`DEFERRED_EVERY`), not now. Bounded by the rooms with subscribers
    /// or a declared list, and emptied each minute.
    deferred: Mutex<HashSet<Arc<str>>>,
    /// Wakes `run_members` when a room is marked.
    wake: Notify,
    /// `room_members_listed`.
    listed: usize,
    /// `room_members_listed_per_account` (0: no bound).
    per_account: usize,
    /// `room_members_interval_ms`.
    interval: Duration,
    /// `room_members_bytes_per_sec`.
    bytes_per_sec: u64,
}

impl RoomMembers {
    pub(crate) fn new(
        listed: usize,
        per_account: usize,
        interval: Duration,
        bytes_per_sec: u64,
    ) -> RoomMembers {
        RoomMembers {
            per_account,
            rooms: Mutex::default(),
            changed: Mutex::default(),
            deferred: Mutex::default(),
            wake: Notify::new(),
            listed,
            interval,
            bytes_per_sec,
        }
    }

    /// `identity` holds one more subscription naming `room`; true when
    /// it was not listed before.
    fn add(&self, room: &str, identity: &str, account: &Arc<str>) -> bool {
        let mut rooms = self.rooms.lock();
        let room_entry = match rooms.get_mut(room) {
            Some(entry) => entry,
            None => rooms.entry(Arc::from(room)).or_default(),
        };
        match room_entry.get_mut(identity) {
            Some(subscriber) => {
                subscriber.count += 1;
                false
            }
            None => {
                let subscriber = Subscriber {
                    count: 1,
                    account: account.clone(),
                };
                room_entry.insert(Arc::from(identity), subscriber);
                true
            }
        }
    }

    /// `identity` holds one subscription naming `room` less; true when
    /// that was its last one.
    fn remove(&self, room: &str, identity: &str) -> bool {
        let mut rooms = self.rooms.lock();
        let Some(room_entry) = rooms.get_mut(room) else {
            return false;
        };
        let Some(subscriber) = room_entry.get_mut(identity) else {
            return false;
        };
        subscriber.count -= 1;
        if subscriber.count > 0 {
            return false;
        }
        room_entry.remove(identity);
        if room_entry.is_empty() {
            rooms.remove(room);
        }
        true
    }

    /// Marks a room's list for publication.
    fn mark(&self, room: &str) {
        if self.changed.lock().insert(Arc::from(room)) {
            self.wake.notify_one();
        }
    }

    /// Sets a room's list aside for the next minute's publication.
    fn defer(&self, room: &str) {
        self.deferred.lock().insert(Arc::from(room));
    }

    /// The rooms set aside since the last call.
    fn take_deferred(&self) -> Vec<Arc<str>> {
        self.deferred.lock().drain().collect()
    }

    /// The rooms marked since the last call.
    fn take_changed(&self) -> Vec<Arc<str>> {
        self.changed.lock().drain().collect()
    }

    /// The sorted subscribers of `room` that `listed` says to show: at
    /// most `room_members_listed_per_account` per account, then, if more
    /// than `room_members_listed` are left, those paying with their own
    /// account first.
    fn subscribers(&self, room: &str, listed: impl Fn(&str) -> bool) -> Vec<String> {
        let rooms = self.rooms.lock();
        let Some(identities) = rooms.get(room) else {
            return Vec::new();
        };
        let mut per_account: HashMap<&str, usize> = HashMap::new();
        let mut own = Vec::new();
        let mut paid_for = Vec::new();
        for (identity, subscriber) in identities {
            if own.len() >= self.listed {
                break;
            }
            if !listed(identity) {
                continue;
            }
            let shown = per_account.entry(&subscriber.account).or_default();
            if self.per_account > 0 && *shown >= self.per_account {
                continue;
            }
            *shown += 1;
            if *subscriber.account == *crate::budget::account_of(Some(identity), None) {
                own.push(identity.to_string());
            } else if paid_for.len() < self.listed {
                paid_for.push(identity.to_string());
            }
        }
        // Both halves are sorted; the list shown is too.
        let room_left = self.listed.saturating_sub(own.len());
        own.extend(paid_for.into_iter().take(room_left));
        own.sort();
        own
    }

    /// Rooms with at least one subscriber.
    #[cfg(test)]
    fn rooms(&self) -> usize {
        self.rooms.lock().len()
    }
}

impl Chat {
    /// A session of `identity` subscribed to `filter` (a new filter for
    /// that session, or one restored from the store). `account` pays for
    /// its place in the list (`Principal::account`); `payer`: the account
    /// a client's own change is charged to, `None` for what the broker
    /// restores.
    pub(crate) fn subscribed(
        &self,
        identity: Option<&str>,
        account: &Arc<str>,
        filter: &Filter<'_>,
        payer: Option<&str>,
    ) {
        if let (Some(identity), Some(room)) = (identity, filter.named_room()) {
            // A declared closed room's list does not follow its
            // subscribers.
            if self.members.add(room, identity, account) && self.membership.lists_subscribers(room) {
                self.list_changed(room, payer);
            }
        }
    }

    /// A session of `identity` no longer holds its subscription to
    /// `filter` (UNSUBSCRIBE, or the session ended); `payer` as for
    /// [`Chat::subscribed`].
    pub(crate) fn unsubscribed(&self, identity: Option<&str>, filter: &Filter<'_>, payer: Option<&str>) {
        if let (Some(identity), Some(room)) = (identity, filter.named_room()) {
            if self.members.remove(room, identity) && self.membership.lists_subscribers(room) {
                self.list_changed(room, payer);
            }
        }
    }

    /// Marks `room`'s list for publication, charged to `payer`'s
    /// `room_member_changes_per_minute`; beyond it the change stands but
    /// its list waits for the next minute (a SUBSCRIBE is never refused
    /// for it: what it grants is standard MQTT, the list is the broker's).
    fn list_changed(&self, room: &str, payer: Option<&str>) {
        let spent = payer.map(|account| self.budgets.spend(account, Rate::RoomMemberChanges, 1));
        if let Some(Err(over)) = spent {
            self.counters.member_changes_deferred.inc();
            tracing::debug!(%room, account = payer, %over, "member list change deferred");
            self.members.defer(room);
            return;
        }
        self.members.mark(room);
    }

    /// Marks a room's list for publication (a ban or its end changes it).
    pub(crate) fn members_changed(&self, room: &str) {
        self.members.mark(room);
    }

    /// Publishes `$rooms/{room}/members` as it is now; returns the bytes
    /// each reader gets of it (0 when nothing was published).
    pub fn publish_members(&self, room: &str) -> usize {
        let topic = format!("$rooms/{room}/members");
        let declared = self.membership.declared_members(room);
        if let Some(members) = declared.as_ref() {
            if !self.membership.lists_subscribers(room) || self.members.listed == 0 {
                let mut message = Message::new(topic, payloads::to_cbor(members), QoS::AtLeastOnce, true);
                message.last_value = true;
                let bytes = message.footprint();
                self.router.publish(message);
                return bytes;
            }
        }
        if self.members.listed == 0 {
            return 0;
        }
        let sanctions = &self.membership.sanctions;
        let mut members = self.members.subscribers(room, |user| {
            !sanctions.applies(super::sanctions::Kind::Ban, room, user)
        });
        if let Some(names) = declared {
            // A declared open room: its subscribers and its declared
            // names (moderators, say), sorted, within the same cut.
            let all: std::collections::BTreeSet<String> = members.into_iter().chain(names).collect();
            members = all.into_iter().take(self.members.listed).collect();
        }
        let mut message = Message::new(topic, payloads::to_cbor(&members), QoS::AtLeastOnce, true);
        message.last_value = true;
        let bytes = message.footprint();
        // Rebuilt from the restored sessions at start-up: never stored.
        message.retain_in_memory = true;
        if members.is_empty() {
            // Watchers see the room empty; nothing of it is kept.
            message.retain = false;
            self.router.clear_retained(&message.topic);
        }
        if self.replication.is_some() {
            // Each node lists its own subscribers, to its own clients: a
            // list sent on would replace the other nodes' lists.
            self.router.publish_remote(message, RemoteScope::Plain);
            return bytes;
        }
        self.router.publish(message);
        bytes
    }

    /// Publishes the member lists that changed, until `stop`: a room's
    /// change at once, unless its last list is too recent. After a list
    /// of N bytes the room waits `room_members_interval_ms` and at least
    /// N / `room_members_bytes_per_sec` seconds, so a long list is
    /// published less often and the bytes one room's list costs each
    /// reader per second are bounded whatever its subscribers do; the
    /// changes made meanwhile are published together when it is due.
    pub(crate) async fn run_members(&self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut pacing = Pacing::new(self.members.interval, self.members.bytes_per_sec);
        let mut deferred_at = tokio::time::Instant::now() + DEFERRED_EVERY;
        let sanctions = &self.membership.sanctions;
        loop {
            let next = pacing.next_due();
            // A ban's end changes its room's list: a timer, so that the
            // user is listed again when she reads the room again (a
            // new ban wakes this loop through `members_changed`).
            let ban_end = sanctions.next_ban_end().map(|until| {
                let wait = until.saturating_sub(crate::store::unix_ms_now());
                tokio::time::Instant::now() + Duration::from_millis(wait)
            });
            tokio::select! {
                _ = stop.changed() => return,
                _ = self.members.wake.notified() => {}
                _ = sleep_until(next) => {}
                _ = tokio::time::sleep_until(deferred_at) => {
                    pacing.waiting.extend(self.members.take_deferred());
                    deferred_at = tokio::time::Instant::now() + DEFERRED_EVERY;
                }
                _ = sleep_until(ban_end) => {}
            }
            pacing.waiting.extend(self.members.take_changed());
            let ended = sanctions.take_ended_bans(crate::store::unix_ms_now());
            pacing.waiting.extend(ended.into_iter().map(Arc::from));
            let now = tokio::time::Instant::now();
            for room in pacing.due(now) {
                let bytes = self.publish_members(&room);
                pacing.published(room, bytes, now);
            }
        }
    }
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// When each room's list may be published next (`run_members`). Memory:
/// an entry per room published within the last wait (at most
/// `room_members_listed` × ~130 B / `room_members_bytes_per_sec` seconds)
/// and per room changed since, both bounded by the rooms that have
/// subscribers or a declared list.
struct Pacing {
    interval: Duration,
    /// `room_members_bytes_per_sec` (0: no bound).
    bytes_per_sec: u64,
    /// Rooms whose last list is too recent: when the next one is due.
    not_before: HashMap<Arc<str>, tokio::time::Instant>,
    /// Rooms changed and not yet published.
    waiting: HashSet<Arc<str>>,
}

impl Pacing {
    fn new(interval: Duration, bytes_per_sec: u64) -> Pacing {
        Pacing {
            interval,
            bytes_per_sec,
            not_before: HashMap::new(),
            waiting: HashSet::new(),
        }
    }

    /// The earliest time a waiting room is due.
    fn next_due(&self) -> Option<tokio::time::Instant> {
        self.waiting
            .iter()
            .filter_map(|room| self.not_before.get(room).copied())
            .min()
    }

    /// The waiting rooms due at `now`, taken out; forgets the waits that
    /// are over.
    fn due(&mut self, now: tokio::time::Instant) -> Vec<Arc<str>> {
        self.not_before.retain(|_, at| *at > now);
        let not_before = &self.not_before;
        let due: Vec<Arc<str>> = self
            .waiting
            .iter()
            .filter(|room| !not_before.contains_key(*room))
            .cloned()
            .collect();
        for room in &due {
            self.waiting.remove(room);
        }
        due
    }

    /// `room`'s list of `bytes` went out at `now`: the next one waits.
    fn published(&mut self, room: Arc<str>, bytes: usize, now: tokio::time::Instant) {
        let by_bytes = match self.bytes_per_sec {
            0 => Duration::ZERO,
            rate => Duration::from_secs_f64(bytes as f64 / rate as f64),
        };
        let wait = self.interval.max(by_bytes);
        if !wait.is_zero() {
            self.not_before.insert(room, now + wait);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_subscriptions_per_identity() {
        let members = RoomMembers::new(2, 0, Duration::ZERO, 0);
        assert!(members.add("lobby", "bob", &Arc::from("anon:")));
        assert!(
            !members.add("lobby", "bob", &Arc::from("anon:")),
            "bob was listed"
        );
        assert!(members.add("lobby", "alice", &Arc::from("anon:")));
        assert!(members.add("lobby", "carol", &Arc::from("anon:")));
        assert_eq!(
            members.subscribers("lobby", |_| true),
            ["alice", "bob"],
            "sorted, cut at 2"
        );
        assert_eq!(members.subscribers("lobby", |u| u != "alice"), ["bob", "carol"]);
        assert!(!members.remove("lobby", "bob"), "bob still holds one");
        assert!(members.remove("lobby", "bob"));
        assert!(members.remove("lobby", "alice"));
        assert!(members.remove("lobby", "carol"));
        assert!(!members.remove("lobby", "carol"), "not there");
        assert_eq!(members.rooms(), 0, "nothing kept for an empty room");
        members.mark("lobby");
        members.mark("lobby");
        assert_eq!(members.take_changed().len(), 1, "a room is marked once");
        assert!(members.take_changed().is_empty());
    }

    #[test]
    fn one_account_is_listed_a_bounded_number_of_times_and_own_accounts_first() {
        let members = RoomMembers::new(3, 2, Duration::ZERO, 0);
        let address: Arc<str> = Arc::from("anon:10.0.0.1");
        for name in ["!a", "!b", "!c"] {
            members.add("lobby", name, &address);
        }
        for name in ["yan", "zed"] {
            members.add("lobby", name, &crate::budget::account_of(Some(name), None));
        }
        assert_eq!(members.subscribers("lobby", |_| true), ["!a", "yan", "zed"]);
    }

    #[test]
    fn a_long_list_waits_longer_before_the_next() {
        let mut pacing = Pacing::new(Duration::from_millis(250), 1000);
        let now = tokio::time::Instant::now();
        pacing.waiting.extend(["short".into(), "long".into()]);
        assert_eq!(pacing.due(now).len(), 2, "a first change goes at once");
        pacing.published("short".into(), 10, now);
        pacing.published("long".into(), 5000, now);
        pacing.waiting.extend(["short".into(), "long".into()]);
        assert!(pacing.due(now).is_empty());
        assert_eq!(pacing.next_due(), Some(now + Duration::from_millis(250)));
        let later = now + Duration::from_secs(1);
        assert_eq!(pacing.due(later), [Arc::<str>::from("short")], "the interval");
        assert!(
            pacing.due(now + Duration::from_millis(4999)).is_empty(),
            "5000 B at 1000 B/s"
        );
        assert_eq!(
            pacing.due(now + Duration::from_secs(5)),
            [Arc::<str>::from("long")]
        );
    }

    #[test]
    fn filters_that_name_a_room() {
        let room_named = |filter| Filter::read(filter).named_room();
        assert_eq!(room_named("rooms/lobby/msg/+"), Some("lobby"));
        assert_eq!(room_named("rooms/lobby/#"), Some("lobby"));
        assert_eq!(room_named("$share/g/rooms/lobby/typing/+"), Some("lobby"));
        for none in [
            "rooms/+/msg/+",
            "rooms/#",
            "#",
            "demo/x",
            "$rooms/lobby/members",
            "$share/g",
        ] {
            assert_eq!(room_named(none), None, "{none}");
        }
    }
}
