//! A session's queues that know how many bytes they hold: the deliveries
//! not yet sent, and the messages in flight (sent, not yet acknowledged).
//! `max_queued_bytes` bounds both together, as `max_queued_messages`
//! bounds their length: a reader that never acknowledges would otherwise
//! make the broker hold up to `max_inflight_messages` messages of any size
//! for it, outside every byte limit. Every change goes through here.

use std::collections::VecDeque;

use super::Inflight;
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

pub(crate) struct Queue<T> {
    items: VecDeque<T>,
    bytes: usize,
}

impl<T> Default for Queue<T> {
    fn default() -> Self {
        Queue {
            items: VecDeque::new(),
            bytes: 0,
        }
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

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.items.iter()
    }

    pub fn front(&self) -> Option<&T> {
        self.items.front()
    }

    pub fn get(&self, index: usize) -> Option<&T> {
        self.items.get(index)
    }

    /// The entry at `index`, to change what does not count (the stage of
    /// a message in flight).
    pub fn get_mut(&mut self, index: usize) -> Option<&mut T> {
        self.items.get_mut(index)
    }

    pub fn push_back(&mut self, item: T) {
        self.bytes += item.bytes();
        self.items.push_back(item);
    }

    pub fn pop_front(&mut self) -> Option<T> {
        let item = self.items.pop_front()?;
        self.bytes = self.bytes.saturating_sub(item.bytes());
        Some(item)
    }

    pub fn remove(&mut self, index: usize) -> Option<T> {
        let item = self.items.remove(index)?;
        self.bytes = self.bytes.saturating_sub(item.bytes());
        Some(item)
    }

    pub fn extend(&mut self, items: impl IntoIterator<Item = T>) {
        for item in items {
            self.push_back(item);
        }
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
        self.bytes = self.bytes.saturating_sub(removed);
    }

    pub fn clear(&mut self) {
        self.items.clear();
        self.bytes = 0;
    }
}
