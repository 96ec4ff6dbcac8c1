//! An account's counters of what it holds, shared and atomic, and the
//! handle a per-message path (a session's queue) charges through: a
//! delivery charges and releases its bytes without the accounts' lock, a
//! map lookup or an allocation (four times per message, on the fan-out's
//! hottest path).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::{Budgets, Held, OverBudget, HELD_KINDS};

/// What one account holds, per kind. Atomic and shared, so that a path
/// that charges per message (a session's queue) holds a [`HeldHandle`] and
/// charges without the accounts' lock or a lookup.
#[derive(Debug, Default)]
pub(super) struct HeldCounters(pub(super) [AtomicU64; HELD_KINDS]);

impl HeldCounters {
    /// Adds `amount` unless the result would exceed `bound` (0: none).
    pub(super) fn try_add(&self, what: Held, amount: u64, bound: u64) -> bool {
        self.0[what.index()]
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                let new = held.saturating_add(amount);
                (bound == 0 || new <= bound).then_some(new)
            })
            .is_ok()
    }

    /// Takes away up to `amount`; what was taken.
    pub(super) fn sub(&self, what: Held, amount: u64) -> u64 {
        let before = self.0[what.index()]
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                Some(held.saturating_sub(amount))
            })
            .unwrap_or_else(|held| held);
        before.min(amount)
    }

    pub(super) fn get(&self, what: Held) -> u64 {
        self.0[what.index()].load(Ordering::Relaxed)
    }
}

/// One account's counter of one kind (see [`Budgets::handle`]): charges
/// and releases with atomics, within the same bound and ceiling as
/// [`Budgets::charge`].
#[derive(Debug)]
pub struct HeldHandle {
    pub(super) budgets: Arc<Budgets>,
    pub(super) held: Arc<HeldCounters>,
    pub(super) what: Held,
}

impl HeldHandle {
    /// [`Budgets::charge`] on this handle's account and kind.
    pub fn charge(&self, amount: u64) -> Result<(), OverBudget> {
        self.budgets.charge_counters(&self.held, self.what, amount)
    }

    /// [`HeldHandle::charge`] without counting a refusal (see
    /// [`super::ReservedHandle`]).
    pub(super) fn try_charge(&self, amount: u64) -> Result<(), OverBudget> {
        self.budgets.try_charge_counters(&self.held, self.what, amount)
    }

    /// [`Budgets::charge_unchecked`] on this handle's account and kind.
    pub fn charge_unchecked(&self, amount: u64) {
        self.budgets.add_total(self.what, amount);
        self.held.try_add(self.what, amount, 0);
    }

    /// [`Budgets::release`] on this handle's account and kind (the account
    /// is forgotten by the upkeep once idle and without handles).
    pub fn release(&self, amount: u64) {
        let released = self.held.sub(self.what, amount);
        self.budgets.sub_total(self.what, released);
    }
}
