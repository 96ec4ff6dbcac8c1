//! Read receipts: the highest `seq` each member read in a room. The broker
//! keeps them (retained on `rooms/{room}/read/{sender}`, marked
//! `broker_owned` so they do not use up the clients' retained limits), so
//! they are bounded here: per identity by `max_receipts_per_user`
//! (`Held::Receipts`), in all by `max_receipts`, and only for rooms that
//! have a log. A room's receipts go when upkeep forgets the room.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::budget::{account_of, Budgets, Held};
use crate::protocol::PublishAckReason;

#[derive(Default)]
struct Table {
    /// Highest receipt per room, then per sender: forgetting a room costs
    /// its own receipts, not a scan of all.
    by_room: HashMap<Arc<str>, HashMap<Arc<str>, u64>>,
    /// Receipts in `by_room`.
    count: usize,
}

/// Every receipt this broker keeps (a `parking_lot` mutex: held for map
/// operations only, never across an `.await`).
pub(crate) struct Receipts {
    table: Mutex<Table>,
    /// `max_receipts`, the ceiling behind the per-identity bound.
    max: usize,
    budgets: Arc<Budgets>,
}

/// The account a sender's receipts are charged to: the sender is the
/// publisher's own identity (the gate checks it), also after a restart.
fn account(sender: &str) -> Arc<str> {
    account_of(Some(sender), None)
}

impl Receipts {
    pub(crate) fn new(max: usize, budgets: Arc<Budgets>) -> Receipts {
        Receipts {
            table: Mutex::default(),
            max,
            budgets,
        }
    }

    /// Takes `seq` as `sender`'s receipt in `room` when it is above the
    /// highest known; `elsewhere` gives the highest kept outside this table
    /// (the retained receipt: another node's, in a cluster; `always_ask`
    /// asks it even when the table has one). Returns whether the receipt
    /// was raised (to be stored and delivered), or the refusal of a new
    /// receipt: 0x97 beyond `max_receipts_per_user` or `max_receipts`.
    pub(crate) fn raise(
        &self,
        room: &str,
        sender: &str,
        seq: u64,
        always_ask: bool,
        elsewhere: impl Fn() -> u64,
    ) -> Result<bool, PublishAckReason> {
        let mut table = self.table.lock();
        let kept = table.by_room.get(room).and_then(|m| m.get(sender)).copied();
        let known = match kept {
            Some(k) if always_ask => k.max(elsewhere()),
            Some(k) => k,
            None => elsewhere(),
        };
        if kept.is_none() {
            if table.count >= self.max {
                tracing::warn!(
                    limit = self.max,
                    room,
                    sender,
                    "receipt refused: max_receipts reached"
                );
                return Err(PublishAckReason::QuotaExceeded);
            }
            if let Err(over) = self.budgets.charge(&account(sender), Held::Receipts, 1) {
                tracing::info!(room, sender, %over, "receipt refused");
                return Err(PublishAckReason::QuotaExceeded);
            }
            table.count += 1;
        }
        let raised = !(seq <= known && known > 0);
        table
            .by_room
            .entry(room.into())
            .or_default()
            .insert(sender.into(), if raised { seq } else { known });
        Ok(raised)
    }

    /// A receipt kept before a restart: counted and charged again, also
    /// over a bound lowered since.
    pub(crate) fn restore(&self, room: &str, sender: &str, seq: u64) {
        let mut table = self.table.lock();
        let senders = table.by_room.entry(room.into()).or_default();
        if senders.insert(sender.into(), seq).is_none() {
            table.count += 1;
            self.budgets.charge_unchecked(&account(sender), Held::Receipts, 1);
        }
    }

    /// Forgets the receipts of a forgotten room and releases their
    /// charges; returns the senders, whose retained receipts are to go.
    pub(crate) fn forget_room(&self, room: &str) -> Vec<Arc<str>> {
        let mut table = self.table.lock();
        let Some(senders) = table.by_room.remove(room) else {
            return Vec::new();
        };
        table.count -= senders.len();
        senders
            .into_keys()
            .inspect(|sender| self.budgets.release(&account(sender), Held::Receipts, 1))
            .collect()
    }

    /// Receipts kept now.
    pub(crate) fn len(&self) -> usize {
        self.table.lock().count
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::Limits;

    #[test]
    fn receipts_are_bounded_per_sender_and_in_all_and_released_with_their_room() {
        let budgets = Arc::new(Budgets::new(Limits::default().with_held(Held::Receipts, 2)));
        let receipts = Receipts::new(3, budgets.clone());
        assert_eq!(receipts.raise("a", "ann", 1, false, || 0), Ok(true));
        assert_eq!(receipts.raise("a", "ann", 1, false, || 0), Ok(false), "not above");
        assert_eq!(receipts.raise("b", "ann", 1, false, || 0), Ok(true));
        assert_eq!(
            receipts.raise("c", "ann", 1, false, || 0),
            Err(PublishAckReason::QuotaExceeded)
        );
        assert_eq!(receipts.raise("c", "bob", 1, false, || 0), Ok(true));
        assert_eq!(
            receipts.raise("c", "cid", 1, false, || 0),
            Err(PublishAckReason::QuotaExceeded),
            "max_receipts"
        );
        assert_eq!(receipts.forget_room("a"), vec![Arc::<str>::from("ann")]);
        assert_eq!(budgets.held("user:ann", Held::Receipts), 1);
        assert_eq!(receipts.len(), 2);
        assert_eq!(receipts.raise("c", "ann", 1, false, || 0), Ok(true));
    }
}
