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
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;

use super::log::RoomState;
use crate::router::{Message, Router};
use crate::store::GroupCommit;

/// How long a shutdown waits for the commit of the last room messages.
const FINAL_COMMIT_WAIT: Duration = Duration::from_secs(5);

/// A stored room message waiting for the commit that makes it durable.
struct Uncommitted {
    ticket: u64,
    room: Arc<RoomState>,
    seq: u64,
    message: Message,
}

/// Room messages stored but not yet durable, oldest first.
pub(crate) struct CommitQueue {
    commit: Arc<GroupCommit>,
    waiting: Mutex<VecDeque<Uncommitted>>,
    /// Held while a batch is taken from `waiting` and delivered, so that
    /// any task may deliver and the order still holds.
    delivering: Mutex<()>,
}

impl CommitQueue {
    pub fn new(commit: Arc<GroupCommit>) -> CommitQueue {
        CommitQueue {
            commit,
            waiting: Mutex::default(),
            delivering: Mutex::default(),
        }
    }

    /// Queues `message` (room `room`, `seq`) for delivery after the group
    /// commit that covers it. The caller holds `room.order` and appended
    /// the message to the log before this call.
    pub fn push(&self, room: Arc<RoomState>, seq: u64, message: Message) {
        let mut waiting = self.waiting.lock();
        // Taken under the queue's lock, so the queue stays in ticket order.
        let ticket = self.commit.ticket();
        waiting.push_back(Uncommitted {
            ticket,
            room,
            seq,
            message,
        });
    }

    /// Delivers, in order, every queued message the last commit made
    /// durable. The delivery task calls it after each commit, and a
    /// connection before it sends acknowledgements (so a publisher's PUBACK
    /// never overtakes its room message: a history request right after the
    /// PUBACK finds it). The router is called outside the queue's lock, but
    /// under `delivering`, so the order holds whoever delivers.
    pub fn deliver_durable(&self, router: &Router) {
        let _in_order = self.delivering.lock();
        let durable = self.commit.durable();
        let ready: Vec<Uncommitted> = {
            let mut waiting = self.waiting.lock();
            let count = waiting.iter().take_while(|u| u.ticket <= durable).count();
            waiting.drain(..count).collect()
        };
        for Uncommitted {
            room, seq, message, ..
        } in ready
        {
            // Revealed first: a replay or history request from now on may
            // read it, and a session that replays it skips the live copy.
            room.reveal(seq);
            let outcome = router.publish(message);
            tracing::debug!(room = %room.name, seq, subscribers = outcome.matched, "room message committed and delivered");
        }
    }

    /// Delivers room messages as their group commits complete, until
    /// `stop`; then waits (bounded, and not at all while flushes fail) for
    /// one last commit and delivers what it covered, so a clean shutdown
    /// leaves nothing stored undelivered.
    pub async fn run(&self, router: &Router, mut stop: watch::Receiver<bool>) {
        let mut durable = self.commit.subscribe();
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                changed = durable.changed() => if changed.is_err() { break },
            }
            self.deliver_durable(router);
        }
        let last = self.commit.ticket();
        let _ = tokio::time::timeout(FINAL_COMMIT_WAIT, self.commit.wait_unless_failing(last)).await;
        self.deliver_durable(router);
    }
}
