//! Commit, then deliver: with `durability = "flush"` a room message reaches
//! subscribers only once its room-log record is on disk.
//!
//! `Chat::post` appends a message and, still holding the room's order
//! lock, queues it here with a group-commit ticket taken after the append.
//! Tickets and the queue share one lock, so the queue is in ticket order,
//! and within a room in `seq` order. A task (`CommitQueue::run`) wakes on
//! every group commit and delivers, in queue order, every message whose
//! ticket the commit covered; a connection does the same before it sends
//! acknowledgements (`deliver_durable`). A crash before the commit loses a message no
//! member saw and no publisher had acknowledged; its `seq` is handed out
//! again after the restart, which no one can notice.
//!
//! QoS 0 room messages share the group commit like QoS 1 and 2: no flush
//! per message, only the wait for the next one.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;

use super::log::RoomState;
use crate::router::{Message, Router};
use crate::store::{GroupCommit, Store};

/// How long a shutdown waits for the commit of the last room messages.
const FINAL_COMMIT_WAIT: Duration = Duration::from_secs(5);

/// What to undo if a message's writes are lost with a reopen of the store
/// (`store/sled_db.rs`): the room's links before it, its de-dup key.
pub(crate) struct Undo {
    /// `RoomState::links` before it was appended.
    pub links: (u64, u64),
    pub dedup_key: Option<String>,
}

/// A stored room message waiting for the commit that makes it durable.
struct Uncommitted {
    ticket: u64,
    room: Arc<RoomState>,
    seq: u64,
    message: Message,
    undo: Undo,
}

/// Room messages stored but not yet durable, oldest first.
pub(crate) struct CommitQueue {
    commit: Arc<GroupCommit>,
    waiting: Mutex<VecDeque<Uncommitted>>,
    /// Held while a batch is taken from `waiting` and delivered, so that
    /// any task may deliver and the order still holds.
    delivering: Mutex<()>,
    /// `GroupCommit::lost_mark` when lost messages were last dropped.
    lost_checked: AtomicU64,
    /// Where a message whose commit was lost is looked for: some of what
    /// sled wrote before it failed may be on disk after the reopen.
    store: Arc<dyn Store>,
}

impl CommitQueue {
    pub fn new(commit: Arc<GroupCommit>, store: Arc<dyn Store>) -> CommitQueue {
        CommitQueue {
            commit,
            waiting: Mutex::default(),
            delivering: Mutex::default(),
            lost_checked: AtomicU64::new(0),
            store,
        }
    }

    /// Queues `message` (room `room`, `seq`) for delivery after the group
    /// commit that covers it. The caller holds `room.order` and appended
    /// the message to the log before this call.
    pub fn push(&self, room: Arc<RoomState>, seq: u64, message: Message, undo: Undo) {
        let mut waiting = self.waiting.lock();
        // Taken under the queue's lock, so the queue stays in ticket order.
        let ticket = self.commit.ticket();
        waiting.push_back(Uncommitted {
            ticket,
            room,
            seq,
            message,
            undo,
        });
    }

    /// Drops the messages whose writes were lost with a reopen of the
    /// store (their publishers are refused): newest first, each unlinked
    /// from its room (the next message's `prev` points at the last one
    /// really stored). Returns their de-dup keys, to forget. A message the
    /// reopened store has after all (sled wrote part of what it was given
    /// before it failed; recovery keeps a prefix of its log) is delivered
    /// now, in order: it is on disk, and a retry is its duplicate. One
    /// atomic load when nothing was lost since the last call.
    pub fn drop_lost(&self, router: &Router) -> Vec<String> {
        let mark = self.commit.lost_mark();
        if self.lost_checked.swap(mark, Ordering::AcqRel) == mark {
            return Vec::new();
        }
        let _in_order = self.delivering.lock();
        let lost = {
            let mut waiting = self.waiting.lock();
            let (lost, kept): (VecDeque<Uncommitted>, VecDeque<Uncommitted>) = std::mem::take(&mut *waiting)
                .into_iter()
                .partition(|u| self.commit.is_lost(u.ticket));
            *waiting = kept;
            lost
        };
        let (kept, gone): (Vec<Uncommitted>, Vec<Uncommitted>) = lost.into_iter().partition(|u| {
            let stored = self
                .store
                .room_range(&u.room.name, u.seq - 1, u.seq + 1, 1, false);
            stored.is_ok_and(|found| !found.is_empty())
        });
        for u in kept {
            u.room.reveal(u.seq);
            router.publish(u.message);
        }
        let mut keys = Vec::new();
        for u in gone.into_iter().rev() {
            // Not under the room's `order` (the caller may hold it): a post
            // into that room at this very moment may still name the lost
            // `seq` as its `prev`, a gap clients handle as any other.
            u.room.unlink(u.seq, u.undo.links);
            tracing::warn!(room = %u.room.name, seq = u.seq, "room message lost with the store's reopen: not delivered, its publisher was refused");
            keys.extend(u.undo.dedup_key);
        }
        keys
    }

    /// Delivers, in order, every queued message the last commit made
    /// durable. The delivery task calls it after each commit, and a
    /// connection before it sends acknowledgements (so a publisher's PUBACK
    /// never overtakes its room message: a history request right after the
    /// PUBACK finds it). The router is called outside the queue's lock, but
    /// under `delivering`, so the order holds whoever delivers.
    pub fn deliver_durable(&self, router: &Router) -> Vec<String> {
        let lost = self.drop_lost(router);
        let _in_order = self.delivering.lock();
        let durable = self.commit.durable();
        let ready: Vec<Uncommitted> = {
            let mut waiting = self.waiting.lock();
            let count = waiting.iter().take_while(|u| u.ticket <= durable).count();
            waiting.drain(..count).collect()
        };
        for Uncommitted {
            ticket,
            room,
            seq,
            message,
            ..
        } in ready
        {
            if self.commit.is_lost(ticket) {
                // Lost between `drop_lost` and here: never delivered.
                continue;
            }
            // Revealed first: a replay or history request from now on may
            // read it, and a session that replays it skips the live copy.
            room.reveal(seq);
            let outcome = router.publish(message);
            tracing::debug!(room = %room.name, seq, subscribers = outcome.matched, "room message committed and delivered");
        }
        lost
    }

    /// Delivers room messages as their group commits complete, until
    /// `stop`; then waits (bounded, and not at all while flushes fail) for
    /// one last commit and delivers what it covered, so a clean shutdown
    /// leaves nothing stored undelivered.
    pub async fn run(&self, router: &Router, mut stop: watch::Receiver<bool>, forget: impl Fn(Vec<String>)) {
        let mut durable = self.commit.subscribe();
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                changed = durable.changed() => if changed.is_err() { break },
            }
            forget(self.deliver_durable(router));
        }
        let last = self.commit.ticket();
        let _ = tokio::time::timeout(FINAL_COMMIT_WAIT, self.commit.wait_unless_failing(last)).await;
        forget(self.deliver_durable(router));
    }
}
