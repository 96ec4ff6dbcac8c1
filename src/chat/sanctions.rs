//! Bans and mutes per room, set by moderators (`moderation.rs`), read by
//! every room access through [`super::Membership`]: a ban makes
//! `Membership::allows` false for that user, so her subscriptions, posts,
//! history requests and every delivery already queued stop at once.
//!
//! Kept in memory (user names only, a count per room bounded by
//! `max_bans_per_room`) and in the store (`sanctions` tree, with who set it
//! and why), loaded at start. Expiry is checked when read, so a ban ends
//! exactly on time without a timer; `prune` forgets expired ones. What
//! does need a timer is the member list, which a ban's end changes:
//! timed bans are also kept by end time (`ban_ends`), and the list's task
//! (`members.rs`) sleeps until the first.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

use crate::store::{unix_ms_now, SanctionRecord, Store, StoreError};

/// What a moderator may do to a user in a room (defined in the store, so
/// that a cluster can carry it: `store/replication.rs`).
pub(crate) use crate::store::SanctionKind as Kind;

impl Kind {
    fn tag(self) -> &'static str {
        match self {
            Kind::Ban => "ban",
            Kind::Mute => "mute",
        }
    }
}

/// The key of a sanction in the store. Room names and users never hold a
/// NUL (MQTT topics may not; `moderation.rs` refuses such users).
fn key(kind: Kind, room: &str, user: &str) -> String {
    format!("{}\0{room}\0{user}", kind.tag())
}

fn parse_key(key: &str) -> Option<(Kind, &str, &str)> {
    let mut parts = key.splitn(3, '\0');
    let kind = match parts.next()? {
        "ban" => Kind::Ban,
        "mute" => Kind::Mute,
        _ => return None,
    };
    Some((kind, parts.next()?, parts.next()?))
}

/// Why a sanction could not be set.
#[derive(Debug)]
pub(crate) enum SetError {
    /// The room holds `max_bans_per_room` already.
    Full,
    Store(StoreError),
}

/// Per room: (kind, user) to the unix ms it ends at (`None`: until lifted).
type RoomSanctions = HashMap<(Kind, String), Option<u64>>;

/// Every room's bans and mutes.
pub(crate) struct Sanctions {
    rooms: RwLock<HashMap<String, RoomSanctions>>,
    /// Entries in all rooms: the common case (none) costs one atomic load
    /// per room delivery, not a lock.
    count: AtomicUsize,
    /// Where they are kept across restarts; `None` for a membership made
    /// without a broker (unit tests).
    store: Option<Arc<dyn Store>>,
    /// Timed bans by end (unix ms, room, user): one entry per timed ban
    /// held, so bounded as the bans are.
    ban_ends: parking_lot::Mutex<BTreeSet<(u64, String, String)>>,
}

impl Default for Sanctions {
    fn default() -> Self {
        Sanctions {
            rooms: RwLock::default(),
            count: AtomicUsize::new(0),
            store: None,
            ban_ends: Default::default(),
        }
    }
}

impl Sanctions {
    /// Loads the stored sanctions that have not ended yet (and forgets the
    /// ended ones in the store).
    pub(crate) fn load(store: Arc<dyn Store>) -> Result<Sanctions, StoreError> {
        let now = unix_ms_now();
        let mut rooms: HashMap<String, RoomSanctions> = HashMap::new();
        let mut count = 0;
        let mut ban_ends = BTreeSet::new();
        for (stored_key, record) in store.load_sanctions()? {
            match parse_key(&stored_key) {
                Some((kind, room, user)) if record.until_unix_ms.is_none_or(|t| t > now) => {
                    rooms
                        .entry(room.to_string())
                        .or_default()
                        .insert((kind, user.to_string()), record.until_unix_ms);
                    count += 1;
                    if let (Kind::Ban, Some(until)) = (kind, record.until_unix_ms) {
                        ban_ends.insert((until, room.to_string(), user.to_string()));
                    }
                }
                _ => store.put_sanction(&stored_key, None)?,
            }
        }
        Ok(Sanctions {
            rooms: RwLock::new(rooms),
            count: AtomicUsize::new(count),
            store: Some(store),
            ban_ends: parking_lot::Mutex::new(ban_ends),
        })
    }

    /// Whether `user` is under a `kind` sanction in `room` now.
    pub(crate) fn applies(&self, kind: Kind, room: &str, user: &str) -> bool {
        if self.count.load(Ordering::Acquire) == 0 {
            return false;
        }
        let rooms = self.rooms.read();
        let Some(entries) = rooms.get(room) else {
            return false;
        };
        // A lookup by (kind, user) needs an owned key; sanctions are rare,
        // so the allocation is paid only in a room that has some.
        match entries.get(&(kind, user.to_string())) {
            Some(until) => until.is_none_or(|t| t > unix_ms_now()),
            None => false,
        }
    }

    /// Sets (or replaces) a sanction, on disk first (flushed): once this
    /// returns, it holds also after a crash.
    pub(crate) fn set(
        &self,
        kind: Kind,
        room: &str,
        user: &str,
        record: SanctionRecord,
        max_per_room: usize,
    ) -> Result<(), SetError> {
        let mut rooms = self.rooms.write();
        let entries = rooms.entry(room.to_string()).or_default();
        let entry = (kind, user.to_string());
        if !entries.contains_key(&entry) && entries.len() >= max_per_room {
            let before = entries.len();
            let now = unix_ms_now();
            entries.retain(|_, until| until.is_none_or(|t| t > now));
            self.count.fetch_sub(before - entries.len(), Ordering::AcqRel);
            if entries.len() >= max_per_room {
                return Err(SetError::Full);
            }
        }
        if let Some(store) = &self.store {
            // Moderation is rare: one flush per request, so that the answer
            // promises what a crash keeps.
            store
                .put_sanction(&key(kind, room, user), Some(&record))
                .and_then(|()| store.flush())
                .map_err(SetError::Store)?;
        }
        let old = entries.insert(entry, record.until_unix_ms);
        if old.is_none() {
            self.count.fetch_add(1, Ordering::AcqRel);
        }
        self.reschedule(kind, room, user, old, Some(record.until_unix_ms));
        Ok(())
    }

    /// Lifts a sanction (nothing when there is none).
    pub(crate) fn lift(&self, kind: Kind, room: &str, user: &str) -> Result<(), StoreError> {
        let mut rooms = self.rooms.write();
        if let Some(store) = &self.store {
            store
                .put_sanction(&key(kind, room, user), None)
                .and_then(|()| store.flush())?;
        }
        if let Some(entries) = rooms.get_mut(room) {
            let old = entries.remove(&(kind, user.to_string()));
            if old.is_some() {
                self.count.fetch_sub(1, Ordering::AcqRel);
            }
            self.reschedule(kind, room, user, old, None);
            if entries.is_empty() {
                rooms.remove(room);
            }
        }
        Ok(())
    }

    /// The state of one sanction here: `None` when there is none,
    /// `Some(until)` when there is one (ended or not).
    pub(crate) fn current(&self, kind: Kind, room: &str, user: &str) -> Option<Option<u64>> {
        self.rooms
            .read()
            .get(room)
            .and_then(|entries| entries.get(&(kind, user.to_string())).copied())
    }

    /// Cluster mode: takes in the state another node (or this one) set
    /// and the cluster committed (`replication.rs`). Not counted against
    /// `max_bans_per_room`: the node that set it checked, and this node's
    /// copy must match the cluster's. This node's store is in memory in a
    /// cluster (JetStream keeps sanctions), so nothing is flushed.
    pub(crate) fn replace(&self, kind: Kind, room: &str, user: &str, until: Option<Option<u64>>) {
        let mut rooms = self.rooms.write();
        let entry = (kind, user.to_string());
        match until {
            Some(until) => {
                let old = rooms.entry(room.to_string()).or_default().insert(entry, until);
                if old.is_none() {
                    self.count.fetch_add(1, Ordering::AcqRel);
                }
                self.reschedule(kind, room, user, old, Some(until));
            }
            None => {
                if let Some(entries) = rooms.get_mut(room) {
                    let old = entries.remove(&entry);
                    if old.is_some() {
                        self.count.fetch_sub(1, Ordering::AcqRel);
                    }
                    self.reschedule(kind, room, user, old, None);
                    if entries.is_empty() {
                        rooms.remove(room);
                    }
                }
            }
        }
    }

    /// Forgets the sanctions that have ended (periodic upkeep). Only the
    /// rooms that have any are visited. Returns the rooms where a ban
    /// ended (their member lists change).
    pub(crate) fn prune(&self) -> Vec<String> {
        let mut bans_ended = Vec::new();
        if self.count.load(Ordering::Acquire) == 0 {
            return bans_ended;
        }
        let now = unix_ms_now();
        let mut rooms = self.rooms.write();
        for (room, entries) in rooms.iter_mut() {
            entries.retain(|(kind, user), until| {
                let live = until.is_none_or(|t| t > now);
                if !live {
                    self.reschedule(*kind, room, user, Some(*until), None);
                    if *kind == Kind::Ban && bans_ended.last() != Some(room) {
                        bans_ended.push(room.clone());
                    }
                    self.count.fetch_sub(1, Ordering::AcqRel);
                    if let Some(store) = &self.store {
                        if let Err(e) = store.put_sanction(&key(*kind, room, user), None) {
                            tracing::warn!(%room, %user, error = %e, "could not forget an ended ban or mute");
                        }
                    }
                }
                live
            });
        }
        rooms.retain(|_, entries| !entries.is_empty());
        bans_ended
    }

    /// Keeps `ban_ends` in step with a ban that was `old` and is `new`
    /// (`None`: none; `Some(None)`: until lifted).
    fn reschedule(
        &self,
        kind: Kind,
        room: &str,
        user: &str,
        old: Option<Option<u64>>,
        new: Option<Option<u64>>,
    ) {
        if kind != Kind::Ban {
            return;
        }
        let mut ends = self.ban_ends.lock();
        if let Some(Some(until)) = old {
            ends.remove(&(until, room.to_string(), user.to_string()));
        }
        if let Some(Some(until)) = new {
            ends.insert((until, room.to_string(), user.to_string()));
        }
    }

    /// When the first timed ban ends (unix ms), if one is held.
    pub(crate) fn next_ban_end(&self) -> Option<u64> {
        self.ban_ends.lock().first().map(|(until, _, _)| *until)
    }

    /// Takes the bans that have ended by `now` (unix ms) off the schedule
    /// and returns their rooms, whose member lists change. The bans
    /// themselves are already over (expiry is checked when read); `prune`
    /// forgets them.
    pub(crate) fn take_ended_bans(&self, now: u64) -> Vec<String> {
        let mut ends = self.ban_ends.lock();
        let mut rooms = Vec::new();
        while ends.first().is_some_and(|(until, _, _)| *until <= now) {
            if let Some((_, room, _)) = ends.pop_first() {
                rooms.push(room);
            }
        }
        rooms
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    fn record(until: Option<u64>) -> SanctionRecord {
        SanctionRecord {
            until_unix_ms: until,
            by: "mod".into(),
            at_unix_ms: unix_ms_now(),
            reason: None,
        }
    }

    #[test]
    fn set_lift_expire_reload_and_bound() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
        let s = Sanctions::load(store.clone()).unwrap();
        s.set(Kind::Ban, "ops", "eve", record(None), 2).unwrap();
        s.set(Kind::Mute, "ops", "bob", record(Some(1)), 2).unwrap();
        assert!(s.applies(Kind::Ban, "ops", "eve"));
        assert!(!s.applies(Kind::Mute, "ops", "eve"));
        assert!(!s.applies(Kind::Ban, "lobby", "eve"));
        // Ended at unix ms 1: no longer applies, and makes room for another.
        assert!(!s.applies(Kind::Mute, "ops", "bob"));
        s.set(Kind::Ban, "ops", "carol", record(None), 2).unwrap();
        assert!(matches!(
            s.set(Kind::Ban, "ops", "dave", record(None), 2),
            Err(SetError::Full)
        ));
        let reloaded = Sanctions::load(store.clone()).unwrap();
        assert!(reloaded.applies(Kind::Ban, "ops", "eve"));
        assert!(reloaded.applies(Kind::Ban, "ops", "carol"));
        reloaded.lift(Kind::Ban, "ops", "eve").unwrap();
        assert!(!reloaded.applies(Kind::Ban, "ops", "eve"));
        assert!(!Sanctions::load(store).unwrap().applies(Kind::Ban, "ops", "eve"));
    }
}
