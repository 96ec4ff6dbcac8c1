//! One room's state in memory: its heads (the last `seq` handed out, the
//! last entry and message for `prev`, what members may see), the count of
//! entries its log holds, and the lock that orders its messages. The log
//! itself (`log.rs`) reads and moves these.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

/// One room's heads and the lock that orders its messages.
pub struct RoomState {
    pub name: Arc<str>,
    /// The last `seq` handed out.
    pub(super) assigned: AtomicU64,
    /// The `seq` of the last entry appended (message or event): the next
    /// event's `prev`.
    pub(super) last: AtomicU64,
    /// The `seq` of the last message appended: the next message's `prev`
    /// (messages skip events, so a client of `msg` alone sees no gap).
    pub(super) last_message: AtomicU64,
    /// The last `seq` delivered: what members may see.
    pub(super) head: AtomicU64,
    /// `seq` values up to this are reserved on disk (buffered mode).
    pub(super) reserved: AtomicU64,
    /// Entries the log holds (counted at start-up, then kept): the log
    /// is trimmed by this count, not by `seq`, whose values have gaps
    /// (reaction events take a `seq` and no entry; cluster mode's are
    /// stream sequences). So `room_max_messages` counts entries and a
    /// reaction never pushes a message out.
    pub(super) held: AtomicU64,
    /// Server time (unix ms) of the newest message: after a restart, which
    /// rooms got messages after a session's record was last saved
    /// (`session/replay.rs`).
    pub(super) last_ts_ms: AtomicU64,
    /// The `seq` of the last edit or delete applied to a message of the
    /// room (in memory only: what waits in memory is gone after a
    /// restart too). A copy of a message or event older than it that
    /// waits in a session may hold a body changed since: it is read
    /// again before it is sent (`Chat::current`); younger ones are sent
    /// as they are, without a store read.
    pub(super) last_change: AtomicU64,
    /// Held while a message gets its `seq`, is appended and is queued for
    /// delivery, so every subscriber sees the room's messages in `seq`
    /// order.
    pub(crate) order: Mutex<()>,
    /// The account charged for opening the room (`max_rooms_per_user`);
    /// `None` for a declared room or one opened before openers were kept.
    pub opener: Option<Arc<str>>,
    /// Set (under `order`) when upkeep forgot the room: a post that got
    /// this state just before looks the room up again.
    pub(super) forgotten: AtomicBool,
    /// Set by each post that found or opened the room, cleared when a
    /// message is appended: a room found empty while a post is between
    /// `RoomLog::open` and its append is not forgotten by that upkeep
    /// (its opener's charge would be released and the post would land in
    /// a room nobody is charged for).
    pub(super) post_pending: AtomicBool,
}

impl RoomState {
    /// A room whose last entry is `last` (`last_message` its last
    /// message) and whose `seq` values up to `reserved` were handed out.
    pub(super) fn new(
        name: Arc<str>,
        last: (u64, u64),
        reserved: u64,
        last_ts_ms: u64,
        opener: Option<Arc<str>>,
        held: u64,
    ) -> RoomState {
        let (last, last_message) = last;
        let assigned = last.max(reserved);
        RoomState {
            name,
            assigned: AtomicU64::new(assigned),
            last: AtomicU64::new(last),
            last_message: AtomicU64::new(last_message),
            head: AtomicU64::new(last),
            reserved: AtomicU64::new(assigned),
            held: AtomicU64::new(held),
            last_ts_ms: AtomicU64::new(last_ts_ms),
            last_change: AtomicU64::new(0),
            order: Mutex::new(()),
            opener,
            forgotten: AtomicBool::new(false),
            post_pending: AtomicBool::new(false),
        }
    }

    /// Whether upkeep forgot the room (see `RoomLog::forget_empty`).
    pub(crate) fn is_forgotten(&self) -> bool {
        self.forgotten.load(Ordering::Acquire)
    }

    /// The last `seq` members may see.
    pub fn head(&self) -> u64 {
        self.head.load(Ordering::Acquire)
    }

    /// The `seq` of the last entry and of the last message appended: the
    /// next entry's `prev` (taken before an append, to `unlink` it).
    pub(crate) fn links(&self) -> (u64, u64) {
        (
            self.last.load(Ordering::Acquire),
            self.last_message.load(Ordering::Acquire),
        )
    }

    /// Entry `seq` was lost with a reopen of the store (never delivered):
    /// the next entry's `prev` points at what was before it, `links` (as
    /// taken before it was appended), if nothing came after it. Its `seq`
    /// is not handed out again. Called newest first, under `order`.
    pub(crate) fn unlink(&self, seq: u64, links: (u64, u64)) {
        let _ = self
            .last
            .compare_exchange(seq, links.0, Ordering::AcqRel, Ordering::Acquire);
        let _ = self
            .last_message
            .compare_exchange(seq, links.1, Ordering::AcqRel, Ordering::Acquire);
    }

    /// `seq` is being delivered: replays and history may read it now.
    pub(crate) fn reveal(&self, seq: u64) {
        self.head.fetch_max(seq, Ordering::AcqRel);
    }
}
