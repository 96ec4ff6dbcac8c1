//! A session's queue of deliveries not yet sent, which knows how many
//! bytes it holds, so that `max_queued_bytes` bounds it as
//! `max_queued_messages` bounds its length. Every change goes through it.

use std::collections::VecDeque;

use crate::router::Delivery;

#[derive(Default)]
pub(crate) struct Queue {
    items: VecDeque<Delivery>,
    bytes: usize,
}

/// What one queued delivery counts for: its message's footprint (topic,
/// payload, properties; shared between subscribers, so this over-counts a
/// fan-out, which errs on the safe side).
pub(crate) fn delivery_bytes(d: &Delivery) -> usize {
    d.message.footprint()
}

impl Queue {
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Bytes queued (`delivery_bytes` of each).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn iter(&self) -> impl Iterator<Item = &Delivery> {
        self.items.iter()
    }

    pub fn front(&self) -> Option<&Delivery> {
        self.items.front()
    }

    pub fn push_back(&mut self, d: Delivery) {
        self.bytes += delivery_bytes(&d);
        self.items.push_back(d);
    }

    pub fn pop_front(&mut self) -> Option<Delivery> {
        let d = self.items.pop_front()?;
        self.bytes = self.bytes.saturating_sub(delivery_bytes(&d));
        Some(d)
    }

    pub fn extend(&mut self, deliveries: impl IntoIterator<Item = Delivery>) {
        for d in deliveries {
            self.push_back(d);
        }
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&Delivery) -> bool) {
        let mut removed = 0;
        self.items.retain(|d| {
            let kept = keep(d);
            if !kept {
                removed += delivery_bytes(d);
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
