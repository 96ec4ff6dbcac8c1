//! A delete empties the bodies of its message's edit events too (no copy
//! of a deleted body stays in the log), a bounded number per step: the
//! delete itself empties at most `room_max_edits_per_message` of them, on
//! the thread that serves the request, and queues the rest in the store
//! (`Store::set_edit_purge`); a task of the broker (`broker/tasks.rs`)
//! empties the queue, at most as many edits per step, each step on a
//! blocking thread under its room's `order`.
//!
//! Why: the bound on edits per message came after messages were edited,
//! and in a cluster two nodes may each let an edit past it; a message with
//! thousands of edits made its delete one store read and rewrite per edit
//! while the runtime thread (and every post to the room) waited. The queue
//! is on disk: a crash in the middle leaves no body behind, the next run
//! goes on with it. Until a step reaches them, the edits beyond the first
//! step keep their bodies (history with `events`, a queued copy): seconds.

use bytes::Bytes;

use super::Chat;
use crate::store::StoreError;

impl Chat {
    /// Edits one step empties (`room_max_edits_per_message`, at least one).
    fn edits_per_step(&self) -> usize {
        self.max_edits.max(1)
    }

    /// Empties the bodies of `edits`, the edit events of deleted message
    /// `message` of `room`: one step's worth now, the rest queued for
    /// [`Chat::purge_edits`]. The caller holds the room's `order` and
    /// writes the message's tombstone after this (the queue first: a crash
    /// that keeps the tombstone keeps the queue).
    pub(super) fn empty_edits(&self, room: &str, message: u64, edits: Vec<u64>) -> Result<(), StoreError> {
        let (now, later) = edits.split_at(self.edits_per_step().min(edits.len()));
        if !later.is_empty() {
            self.log.store().set_edit_purge(room, message, later)?;
        }
        for &edit in now {
            self.empty_edit(room, edit)?;
        }
        Ok(())
    }

    /// Empties the body of edit event `edit` of `room`, if the log still
    /// holds it (a trimmed one stays gone).
    fn empty_edit(&self, room: &str, edit: u64) -> Result<(), StoreError> {
        if let Some(mut entry) = self.log.stored(room, edit)? {
            if !entry.payload.is_empty() {
                entry.payload = Bytes::new();
                self.log.rewrite(room, edit, &entry)?;
            }
        }
        Ok(())
    }

    /// One step of the queue [`Chat::empty_edits`] leaves: empties at most
    /// `room_max_edits_per_message` edit bodies of the first queued
    /// message, under its room's `order`. Returns whether it did (false:
    /// the queue is empty). Blocks on the store: call it off the runtime.
    pub(crate) fn purge_edits(&self) -> Result<bool, StoreError> {
        let Some(queued) = self.log.store().edit_purges(1)?.into_iter().next() else {
            return Ok(false);
        };
        let (now, later) = queued
            .edits
            .split_at(self.edits_per_step().min(queued.edits.len()));
        // A room this broker no longer holds was forgotten with its log:
        // nothing of it is left to empty.
        if let Some(room) = self.log.existing(&queued.room) {
            let _in_order = room.order.lock();
            for &edit in now {
                self.empty_edit(&queued.room, edit)?;
            }
        }
        self.log
            .store()
            .set_edit_purge(&queued.room, queued.message, later)?;
        Ok(true)
    }
}
