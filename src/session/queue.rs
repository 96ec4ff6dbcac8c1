//! A session's queues that know how many bytes they hold: the deliveries
//! not yet sent, and the messages in flight (sent, not yet acknowledged).
//! `max_queued_bytes` bounds both together, as `max_queued_messages`
//! bounds their length: a reader that never acknowledges would otherwise
//! make the broker hold up to `max_inflight_messages` messages of any size
//! for it, outside every byte limit. Every change goes through here.
//!
//! The bytes are also charged to the session owner's account
//! (`Held::QueuedBytes`, `max_queued_bytes_per_user`): an identity with
//! many sessions cannot make the broker hold `max_queued_bytes` for each.
//! Every change of the byte count charges or releases the same amount, and
//! a queue dropped with its session gives back what it still held. The
//! session's two queues share one payer, which charges the account ahead
//! in steps (`budget::ReservedHandle`): a message moving from the queue
//! into flight, or sent and gone, touches no counter that other sessions
//! write.

use std::collections::VecDeque;
use std::sync::Arc;

use super::Inflight;
use crate::budget::ReservedHandle;
use crate::router::Delivery;

/// What an entry counts for in bytes.
pub(crate) trait Counted {
    fn bytes(&self) -> usize;
}

/// A delivery counts its message's footprint (topic, payload, properties;
/// shared between subscribers, so this over-counts a fan-out, which errs
/// on the safe side).
impl Counted for Delivery {
    fn bytes(&self) -> usize {
        self.message.footprint()
    }
}

impl Counted for Inflight {
    fn bytes(&self) -> usize {
        self.delivery.bytes()
    }
}

/// The account a queue's bytes are charged to: a handle, so that the
/// charge per message takes no lock, shared by the session's queues.
pub(crate) type Payer = Arc<ReservedHandle>;

pub(crate) struct Queue<T> {
    items: VecDeque<T>,
    bytes: usize,
    /// `None` until the session's owner is known, and for an anonymous
    /// owner (bounded per session and by its address's connections).
    payer: Option<Payer>,
}

impl<T> Default for Queue<T> {
    fn default() -> Self {
        Queue {
            items: VecDeque::new(),
            bytes: 0,
            payer: None,
        }
    }
}

impl<T> Queue<T> {
    /// Charges what this queue holds, and whatever it takes from now on,
    /// to `account` (what it held was charged to nobody before: a queue
    /// gets its payer once, when its session's owner is known).
    pub fn pay_from(&mut self, payer: Payer) {
        self.release(self.bytes);
        payer.charge_unchecked(self.bytes as u64);
        self.payer = Some(payer);
    }

    #[inline]
    fn release(&self, bytes: usize) {
        if let Some(p) = &self.payer {
            p.release(bytes as u64);
        }
    }

    fn charge_unchecked(&self, bytes: usize) {
        if let Some(p) = &self.payer {
            p.charge_unchecked(bytes as u64);
        }
    }
}

impl<T> Drop for Queue<T> {
    /// A session dropped without being ended (a restore that failed, a
    /// broker shutting down) gives its queue's charge back too.
    fn drop(&mut self) {
        self.release(self.bytes);
    }
}

impl<T: Counted> Queue<T> {
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Bytes held (`Counted::bytes` of each entry).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn iter(&self) -> std::collections::vec_deque::Iter<'_, T> {
        self.items.iter()
    }

    pub fn front(&self) -> Option<&T> {
        self.items.front()
    }

    pub fn back(&self) -> Option<&T> {
        self.items.back()
    }

    pub fn get(&self, index: usize) -> Option<&T> {
        self.items.get(index)
    }

    /// The entry at `index`, to change what does not count (the stage of
    /// a message in flight).
    pub fn get_mut(&mut self, index: usize) -> Option<&mut T> {
        self.items.get_mut(index)
    }

    /// Appends `item`, charged to the payer without a bound check: for
    /// what the session holds already (a message moving into flight, a
    /// restored queue).
    pub fn push_back(&mut self, item: T) {
        let bytes = item.bytes();
        self.charge_unchecked(bytes);
        self.bytes += bytes;
        self.items.push_back(item);
    }

    /// Charges `bytes` to the payer's account if it has room for them
    /// (`max_queued_bytes_per_user`); false, charging nothing, if not. The
    /// caller then appends with [`Queue::push_back_reserved`].
    #[inline]
    pub fn reserve(&self, bytes: usize) -> bool {
        self.payer.as_ref().is_none_or(|p| p.charge(bytes as u64).is_ok())
    }

    /// Appends `item`, whose `bytes` [`Queue::reserve`] charged.
    #[inline]
    pub fn push_back_reserved(&mut self, item: T, bytes: usize) {
        self.bytes += bytes;
        self.items.push_back(item);
    }

    /// Changes the entry at `index` with `change` and counts its bytes
    /// again (a room message in flight replaced by its current state).
    pub fn update(&mut self, index: usize, change: impl FnOnce(&mut T)) {
        let Some(item) = self.items.get_mut(index) else {
            return;
        };
        let before = item.bytes();
        change(item);
        let after = item.bytes();
        self.release(before);
        self.charge_unchecked(after);
        self.bytes = self.bytes.saturating_sub(before) + after;
    }

    #[inline]
    pub fn pop_front(&mut self) -> Option<T> {
        let item = self.items.pop_front()?;
        let bytes = item.bytes();
        self.release(bytes);
        self.bytes = self.bytes.saturating_sub(bytes);
        Some(item)
    }

    pub fn remove(&mut self, index: usize) -> Option<T> {
        let item = self.items.remove(index)?;
        let bytes = item.bytes();
        self.release(bytes);
        self.bytes = self.bytes.saturating_sub(bytes);
        Some(item)
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        let mut removed = 0;
        self.items.retain(|item| {
            let kept = keep(item);
            if !kept {
                removed += item.bytes();
            }
            kept
        });
        self.release(removed);
        self.bytes = self.bytes.saturating_sub(removed);
    }

    pub fn clear(&mut self) {
        self.items.clear();
        self.release(self.bytes);
        self.bytes = 0;
    }
}
