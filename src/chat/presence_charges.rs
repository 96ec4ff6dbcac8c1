//! Who pays for each presence record (`Held::PresenceRecords`,
//! `max_presence_records_per_user`): a record is charged to the account
//! of the connection that made its identity shown (`Principal::account`:
//! on a broker where names are claims, the address, so an address pays
//! for every name it invents), and released when the record goes
//! (expiry, eviction, an offline that keeps nothing). Records read back
//! at start-up are charged to their name's account (`user:{name}`): who
//! paid before is not stored. Records another node shows (cluster mode)
//! are that node's: nothing is charged here for them.
//!
//! Memory: one entry per charged record, as many as the records kept
//! (bounded by `max_presence_records`).

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::budget::{account_of, Budgets, Held};

#[derive(Default)]
pub(crate) struct RecordCharges {
    /// `None` in unit tests of presence alone: nothing is charged.
    budgets: Option<Arc<Budgets>>,
    /// User to the account its record is charged to (a leaf lock: taken
    /// under presence's locks, never the other way round).
    paid: Mutex<HashMap<Arc<str>, Arc<str>>>,
}

impl RecordCharges {
    pub(crate) fn new(budgets: Option<Arc<Budgets>>) -> RecordCharges {
        RecordCharges {
            budgets,
            paid: Mutex::default(),
        }
    }

    /// Charges `user`'s record to `account` unless it is paid for
    /// already; false (charging nothing, logged and counted by the
    /// budget) when the account is at its bound.
    pub(crate) fn charge(&self, user: &str, account: &str) -> bool {
        let Some(budgets) = &self.budgets else {
            return true;
        };
        let mut paid = self.paid.lock();
        if paid.contains_key(user) {
            return true;
        }
        match budgets.charge(account, Held::PresenceRecords, 1) {
            Ok(()) => {
                paid.insert(Arc::from(user), Arc::from(account));
                true
            }
            Err(over) => {
                tracing::info!(
                    user,
                    account,
                    bound = over.bound,
                    "presence not shown: over {}",
                    over.key
                );
                false
            }
        }
    }

    /// A record read back at start-up: charged to its name's account
    /// without a bound check (it is kept already).
    pub(crate) fn restored(&self, user: &str) {
        let Some(budgets) = &self.budgets else {
            return;
        };
        let mut paid = self.paid.lock();
        if paid.contains_key(user) {
            return;
        }
        let account = account_of(Some(user), None);
        budgets.charge_unchecked(&account, Held::PresenceRecords, 1);
        paid.insert(Arc::from(user), account);
    }

    /// `user`'s record is gone: its account gets the charge back.
    pub(crate) fn release(&self, user: &str) {
        let Some(budgets) = &self.budgets else {
            return;
        };
        if let Some(account) = self.paid.lock().remove(user) {
            budgets.release(&account, Held::PresenceRecords, 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::Limits;

    #[test]
    fn a_record_is_charged_once_and_released_when_it_goes() {
        let budgets = Arc::new(Budgets::new(
            Limits::default().with_held(Held::PresenceRecords, 2),
        ));
        let charges = RecordCharges::new(Some(budgets.clone()));
        assert!(charges.charge("a", "anon:10.0.0.1"));
        assert!(charges.charge("a", "anon:10.0.0.1"), "paid for already");
        assert!(charges.charge("b", "anon:10.0.0.1"));
        assert!(!charges.charge("c", "anon:10.0.0.1"), "over the bound");
        assert!(charges.charge("c", "user:c"), "another account");
        charges.release("a");
        assert_eq!(budgets.held("anon:10.0.0.1", Held::PresenceRecords), 1);
        // Read back at start-up: the name's account, past any bound.
        for user in ["r1", "r2", "r3"] {
            charges.restored(user);
        }
        for user in ["r1", "r2", "r3"] {
            assert_eq!(budgets.held(&format!("user:{user}"), Held::PresenceRecords), 1);
        }
        charges.release("r1");
        assert_eq!(budgets.held("user:r1", Held::PresenceRecords), 0);
    }
}
