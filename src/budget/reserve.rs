//! A handle that charges its account ahead, in steps: a session's queues
//! change their byte count twice per delivery (queued, then sent or
//! acknowledged), and every session of an identity (all anonymous clients
//! of one address) charged the same account counter, so each delivery
//! wrote two cache lines that every core writes. A reserve of up to
//! [`RESERVE_BYTES`] charged but not yet used lets most deliveries charge
//! and release without touching the account at all.
//!
//! What the account sees is what the session holds plus at most
//! `2 × RESERVE_BYTES`; the reserve is given back when the handle is
//! dropped (the session ends) and whenever it grows beyond that. The
//! per-identity bound and the global ceiling still refuse what would go
//! over them: near the bound the reserve is not taken, only what is
//! needed.

use std::sync::atomic::{AtomicU64, Ordering};

use super::{HeldHandle, OverBudget};

/// The most a handle keeps charged beyond what it holds, before it gives
/// the excess back (and what it charges ahead when it needs more): larger
/// than a typical chat message with its topic and properties, small
/// beside `max_queued_bytes_per_user` (64 MiB by default: 8,192 idle
/// sessions' reserves).
pub const RESERVE_BYTES: u64 = 4096;

/// [`HeldHandle`] with a reserve (see the module). Changed only under the
/// lock of the session that owns it, so its two counters are read and
/// written without read-modify-write instructions; atomics only make it
/// `Sync`.
#[derive(Debug)]
pub struct ReservedHandle {
    account: HeldHandle,
    /// What the owner holds through this handle.
    used: AtomicU64,
    /// What the account is charged for this handle: `used` plus the
    /// reserve, at most `used + 2 × RESERVE_BYTES`.
    charged: AtomicU64,
}

impl ReservedHandle {
    pub fn new(account: HeldHandle) -> Self {
        ReservedHandle {
            account,
            used: AtomicU64::new(0),
            charged: AtomicU64::new(0),
        }
    }

    /// Charges `amount`, from the reserve when it has enough, or refuses
    /// it (charging nothing) when the account would go over its bound.
    pub fn charge(&self, amount: u64) -> Result<(), OverBudget> {
        let used = self.used.load(Ordering::Relaxed).saturating_add(amount);
        let charged = self.charged.load(Ordering::Relaxed);
        if used > charged {
            let needed = used - charged;
            let charged_now = match self.account.try_charge(needed + RESERVE_BYTES) {
                Ok(()) => needed + RESERVE_BYTES,
                Err(_) => {
                    self.account.charge(needed)?;
                    needed
                }
            };
            self.charged.store(charged + charged_now, Ordering::Relaxed);
        }
        self.used.store(used, Ordering::Relaxed);
        Ok(())
    }

    /// Charges `amount` without a bound check (what the owner holds
    /// already: a restored queue).
    pub fn charge_unchecked(&self, amount: u64) {
        let used = self.used.load(Ordering::Relaxed).saturating_add(amount);
        let charged = self.charged.load(Ordering::Relaxed);
        if used > charged {
            self.account.charge_unchecked(used - charged);
            self.charged.store(used, Ordering::Relaxed);
        }
        self.used.store(used, Ordering::Relaxed);
    }

    /// Gives back `amount`; the account gets it back once the reserve
    /// would exceed `2 × RESERVE_BYTES`.
    pub fn release(&self, amount: u64) {
        let used = self.used.load(Ordering::Relaxed).saturating_sub(amount);
        self.used.store(used, Ordering::Relaxed);
        let charged = self.charged.load(Ordering::Relaxed);
        if charged > used + 2 * RESERVE_BYTES {
            let keep = used + RESERVE_BYTES;
            self.account.release(charged - keep);
            self.charged.store(keep, Ordering::Relaxed);
        }
    }

    /// What the owner holds through this handle (without the reserve).
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }
}

impl Drop for ReservedHandle {
    /// The reserve and whatever is still held go back to the account.
    fn drop(&mut self) {
        self.account.release(self.charged.load(Ordering::Relaxed));
    }
}
