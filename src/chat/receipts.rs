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
    by_room: HashMap<Arc<str>, HashMap<Arc<str>, Kept>>,
    /// Receipts in `by_room`.
    count: usize,
}

/// One sender's receipt in one room, and the account it was charged to
/// (the sender's, or where names are claims its address's): released to
/// the same account.
#[derive(Clone, Debug)]
struct Kept {
    seq: u64,
    paid_by: Arc<str>,
}

/// Every receipt this broker keeps (a `parking_lot` mutex: held for map
/// operations only, never across an `.await`).
pub(crate) struct Receipts {
    table: Mutex<Table>,
    /// `max_receipts`, the ceiling behind the per-identity bound.
    max: usize,
    budgets: Arc<Budgets>,
}

/// The account a receipt restored after a restart is charged to: the
/// address it came from is not stored, the sender's name is all there is.
fn restored_account(sender: &str) -> Arc<str> {
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
        account: &Arc<str>,
        seq: u64,
        always_ask: bool,
        elsewhere: impl Fn() -> u64,
    ) -> Result<bool, PublishAckReason> {
        let mut table = self.table.lock();
        let kept = table.by_room.get(room).and_then(|m| m.get(sender)).map(|k| k.seq);
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
            if let Err(over) = self.budgets.charge(account, Held::Receipts, 1) {
                tracing::info!(room, sender, %over, "receipt refused");
                return Err(PublishAckReason::QuotaExceeded);
            }
            table.count += 1;
        }
        let raised = !(seq <= known && known > 0);
        let seq = if raised { seq } else { known };
        let senders = table.by_room.entry(room.into()).or_default();
        match senders.get_mut(sender) {
            Some(kept) => kept.seq = seq,
            None => {
                senders.insert(
                    sender.into(),
                    Kept {
                        seq,
                        paid_by: account.clone(),
                    },
                );
            }
        }
        Ok(raised)
    }

    /// A receipt kept before a restart: counted and charged again, also
    /// over a bound lowered since.
    pub(crate) fn restore(&self, room: &str, sender: &str, seq: u64) {
        let mut table = self.table.lock();
        let senders = table.by_room.entry(room.into()).or_default();
        if !senders.contains_key(sender) {
            let paid_by = restored_account(sender);
            self.budgets.charge_unchecked(&paid_by, Held::Receipts, 1);
            senders.insert(sender.into(), Kept { seq, paid_by });
            table.count += 1;
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
            .into_iter()
            .map(|(sender, kept)| {
                self.budgets.release(&kept.paid_by, Held::Receipts, 1);
                sender
            })
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
        assert_eq!(
            receipts.raise("a", "ann", &account_of(Some("ann"), None), 1, false, || 0),
            Ok(true)
        );
        assert_eq!(
            receipts.raise("a", "ann", &account_of(Some("ann"), None), 1, false, || 0),
            Ok(false),
            "not above"
        );
        assert_eq!(
            receipts.raise("b", "ann", &account_of(Some("ann"), None), 1, false, || 0),
            Ok(true)
        );
        assert_eq!(
            receipts.raise("c", "ann", &account_of(Some("ann"), None), 1, false, || 0),
            Err(PublishAckReason::QuotaExceeded)
        );
        assert_eq!(
            receipts.raise("c", "bob", &account_of(Some("bob"), None), 1, false, || 0),
            Ok(true)
        );
        assert_eq!(
            receipts.raise("c", "cid", &account_of(Some("cid"), None), 1, false, || 0),
            Err(PublishAckReason::QuotaExceeded),
            "max_receipts"
        );
        assert_eq!(receipts.forget_room("a"), vec![Arc::<str>::from("ann")]);
        assert_eq!(budgets.held("user:ann", Held::Receipts), 1);
        assert_eq!(receipts.len(), 2);
        assert_eq!(
            receipts.raise("c", "ann", &account_of(Some("ann"), None), 1, false, || 0),
            Ok(true)
        );
    }
}
