//! The retained "offline" presence records this node published, indexed
//! by `last_seen` so that upkeep and eviction never scan them all
//! (`presence.rs`).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

/// The retained "offline" records, by user and by age: a transient one
/// (no persistent session, no room used) goes before a lasting one.
#[derive(Default)]
pub(crate) struct OfflineIndex {
    /// User to (`last_seen`, transient).
    pub(crate) users: HashMap<Arc<str>, (u64, bool)>,
    /// (`last_seen`, user), oldest first: transient ones, then the others.
    by_age: [BTreeSet<(u64, Arc<str>)>; 2],
}

impl OfflineIndex {
    pub(crate) fn insert(&mut self, user: &str, last_seen: u64, transient: bool) {
        self.remove(user);
        let user: Arc<str> = user.into();
        self.by_age[usize::from(!transient)].insert((last_seen, user.clone()));
        self.users.insert(user, (last_seen, transient));
    }

    pub(crate) fn remove(&mut self, user: &str) {
        if let Some((user, (last_seen, transient))) = self.users.remove_entry(user) {
            self.by_age[usize::from(!transient)].remove(&(last_seen, user));
        }
    }

    /// The longest-offline record of a kind (transient or not) offline
    /// since before `cutoff`, taken out.
    pub(crate) fn pop_older(&mut self, transient: bool, cutoff: u64) -> Option<Arc<str>> {
        let set = &mut self.by_age[usize::from(!transient)];
        let (last_seen, user) = set.first()?.clone();
        if last_seen >= cutoff {
            return None;
        }
        set.pop_first();
        self.users.remove(&user);
        Some(user)
    }

    pub(crate) fn len(&self) -> usize {
        self.users.len()
    }
}
