//! Durable state behind one trait, [`Store`], so the storage engine can
//! change in one place: [`SledStore`] on disk, [`MemoryStore`] for tests
//! of the contract. With `storage = "memory"` the broker writes no records at all.
//!
//! What is stored: retained messages; persistent sessions (subscriptions,
//! expiry, will); each persistent session's QoS 1/2 messages not yet
//! acknowledged (queued or in flight), as references to message bodies
//! stored once however many sessions they were queued for; and the packet ids of incoming QoS 2
//! messages awaiting PUBREL; the chat layer's room logs (each message once,
//! whatever the number of members), room heads and msg-id de-duplication
//! entries. Deadlines are wall-clock unix milliseconds, so
//! they keep running while the broker is down.

mod bodies;
mod convert;
mod group_commit;
mod health;
mod journal;
mod memory;
mod migrate;
mod monitored;
mod records;
mod replication;
mod reserve;
mod sled_db;
mod sled_keys;
mod sled_reactions;
mod sled_rooms;
mod sled_store;
mod space;

pub use group_commit::{CommitBarrier, GroupCommit};
pub use health::{StoreFailure, StoreHealth};
pub use memory::MemoryStore;
pub use monitored::Monitored;
/// Session records are also read from a cluster's sessions stream, which
/// the previous version may have written.
#[cfg_attr(not(feature = "cluster"), allow(unused_imports))]
pub(crate) use records::decode_session;
pub use records::{
    unix_ms_now, DedupRecord, EditPurge, EventKind, EventRecord, MessageRecord, MessageState, OwnerRecord,
    QueuedRecord, QueuedRef, RoomEntry, RoomRecord, SanctionRecord, SessionRecord, SubscriptionRecord,
    WillRecord,
};
pub use replication::{SanctionChange, SanctionKind, SanctionReplication};
pub use reserve::RESERVE_FILE;
pub use sled_db::{DEFAULT_CACHE_BYTES, MIN_CACHE_BYTES};
pub use sled_store::SledStore;
pub use space::WRITE_AMPLIFICATION;

/// The data format this build reads and writes; stored in the data
/// directory so a later version can refuse or migrate it, never misread it.
/// `roomq-store-3` (session queues holding a copy of each message) is
/// still read: opening it converts it (`migrate.rs`).
pub const FORMAT_VERSION: &str = "roomq-store-4";

/// Errors from a store, naming what failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("cannot open the store at {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("the data directory {path} holds format {found:?}, this roomq reads {FORMAT_VERSION:?}; it was left untouched")]
    WrongFormat { path: String, found: String },
    #[error("store I/O error: {0}")]
    Io(String),
    #[error("the store is closed")]
    Closed,
    #[error("corrupt record under {key}: {reason}")]
    Corrupt { key: String, reason: String },
}

/// A room's heads as stored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoomHead {
    pub room: String,
    /// The `seq` of the last message appended.
    pub last: u64,
    /// `seq` values up to this were handed out (`reserve_room_seqs`).
    pub reserved: u64,
    /// The account whose post opened the room (`set_room_opener`); `None`
    /// for a declared room or one opened before openers were stored.
    pub opener: Option<String>,
}

/// The reactions on one message: how many reactors each emoji has (at
/// most `max_reaction_emoji` of them), and the emoji one reactor used.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reactions {
    pub counts: Vec<(String, u64)>,
    pub mine: Vec<String>,
}

impl Reactions {
    /// Reactions in all.
    pub fn total(&self) -> u64 {
        self.counts.iter().map(|(_, n)| n).sum()
    }
}

/// A persistent session as loaded at start-up.
pub struct LoadedSession {
    pub client_id: String,
    pub record: SessionRecord,
    /// Its unacknowledged messages, in queue order; their bodies are read
    /// with [`Store::load_body`], once for every session that holds them.
    pub messages: Vec<(u64, QueuedRef)>,
    /// Incoming QoS 2 packet ids awaiting PUBREL.
    pub incoming_qos2: Vec<u16>,
}

/// What the broker keeps durably. Writes are buffered until [`Store::flush`].
pub trait Store: Send + Sync {
    /// Sets a topic's retained message, or clears it with `None`.
    fn put_retained(&self, topic: &str, message: Option<&MessageRecord>) -> Result<(), StoreError>;
    fn load_retained(&self) -> Result<Vec<MessageRecord>, StoreError>;

    fn put_session(&self, client_id: &str, session: &SessionRecord) -> Result<(), StoreError>;
    /// Removes a session with its messages and QoS 2 ids.
    fn remove_session(&self, client_id: &str) -> Result<(), StoreError>;
    /// Removes a session that another node of a cluster took over: only
    /// this node's copy (the other node keeps the record where every node
    /// reads it). Without a cluster, `remove_session`.
    fn remove_session_moved_away(&self, client_id: &str) -> Result<(), StoreError> {
        self.remove_session(client_id)
    }
    fn load_sessions(&self) -> Result<Vec<LoadedSession>, StoreError>;

    /// A new id for a message body, never used by a body the store holds.
    /// A message gets one the first time it is queued for a persistent
    /// session, and every session it is queued for refers to it.
    fn new_body_id(&self) -> u64;
    /// Stores a new message record of a session's queue; `seq` was never
    /// used for this session. Its message is stored as body `body`, once
    /// for every session that refers to it: the store writes it only if it
    /// does not hold that body yet, and deletes it when the last record
    /// that refers to it is removed.
    fn put_message(
        &self,
        client_id: &str,
        seq: u64,
        body: u64,
        message: QueuedRecord,
    ) -> Result<(), StoreError>;
    /// Replaces a message record (QoS 2 progress); its body stays.
    fn update_message(
        &self,
        client_id: &str,
        seq: u64,
        body: u64,
        message: QueuedRecord,
    ) -> Result<(), StoreError>;
    fn remove_message(&self, client_id: &str, seq: u64) -> Result<(), StoreError>;
    /// Records the packet id a message was sent with, so it is resent with
    /// it after a restart. `record` builds the whole record, for a store
    /// that must rewrite it; one that still holds it unwritten only sets
    /// the id (the common case: sending is on the hot path).
    fn set_packet_id(
        &self,
        client_id: &str,
        seq: u64,
        body: u64,
        packet_id: u16,
        record: &dyn Fn() -> QueuedRecord,
    ) -> Result<(), StoreError> {
        let _ = packet_id;
        self.update_message(client_id, seq, body, record())
    }
    /// A stored message body; `None` once no record refers to it.
    fn load_body(&self, body: u64) -> Result<Option<MessageRecord>, StoreError>;

    fn put_incoming_qos2(&self, client_id: &str, packet_id: u16) -> Result<(), StoreError>;
    fn remove_incoming_qos2(&self, client_id: &str, packet_id: u16) -> Result<(), StoreError>;

    /// Appends a message to a room's log and moves the room's head to `seq`
    /// (heads survive trimming, so a `seq` is never reused).
    fn append_room(&self, room: &str, seq: u64, record: &RoomRecord) -> Result<(), StoreError>;
    /// Up to `limit` messages of a room with `after < seq < before`, in
    /// `seq` order: the oldest ones, or with `newest` the newest ones.
    fn room_range(
        &self,
        room: &str,
        after: u64,
        before: u64,
        limit: usize,
        newest: bool,
    ) -> Result<Vec<(u64, RoomRecord)>, StoreError>;
    /// Replaces an entry the room's log still holds (a message edited,
    /// deleted or reacted to; an edit event whose message was deleted):
    /// the old bytes are gone from the log, its heads do not move. An
    /// entry trimmed meanwhile stays gone.
    fn rewrite_room(&self, room: &str, seq: u64, record: &RoomRecord) -> Result<(), StoreError>;
    /// Records that `seq` values up to `up_to` are handed out in `room`
    /// (with `durability = "buffered"`, a delivered message may be lost in a
    /// crash, but its `seq` must not come back). Durable after the next
    /// `flush`.
    fn reserve_room_seqs(&self, room: &str, up_to: u64) -> Result<(), StoreError>;
    /// Every room's last stored `seq` and its reservation: the room's next
    /// `seq` is above both.
    fn room_heads(&self) -> Result<Vec<RoomHead>, StoreError>;
    /// Removes a room's entries with `seq < below` (and their
    /// reactions); returns how many entries it removed.
    fn trim_room(&self, room: &str, below: u64) -> Result<u64, StoreError>;
    /// How many entries a room's log holds (read once per room at
    /// start-up: the log is trimmed by this count).
    fn room_len(&self, room: &str) -> Result<u64, StoreError>;
    /// The reactions on message `seq` of `room`, with `reactor`'s own.
    fn reactions(&self, room: &str, seq: u64, reactor: Option<&str>) -> Result<Reactions, StoreError>;
    /// Adds (`on`) or takes back `reactor`'s reaction `emoji` on message
    /// `seq`. Kept apart from the message: it writes the reaction and its
    /// emoji's count, whatever the message holds already, so one reaction
    /// costs the same on a message with thousands. The caller orders the
    /// changes of one room.
    fn set_reaction(
        &self,
        room: &str,
        seq: u64,
        emoji: &str,
        reactor: &str,
        on: bool,
    ) -> Result<(), StoreError>;
    /// Removes every reaction on message `seq` (it was deleted): queued,
    /// as the reactions of trimmed and forgotten messages are, for
    /// `purge_reactions`.
    fn clear_reactions(&self, room: &str, seq: u64) -> Result<(), StoreError>;
    /// Removes at most `max_keys` keys of the reactions of removed
    /// messages; returns how many, fewer than `max_keys` once none is left.
    /// A message may hold thousands of reactions and a trim removes many
    /// messages: this bounds the work of one call (and the memory it holds)
    /// whatever clients reacted, and the queue survives a restart.
    fn purge_reactions(&self, max_keys: usize) -> Result<usize, StoreError>;
    /// Queues the edit events of deleted message `message` of `room` whose
    /// bodies are still to be emptied, replacing what was queued for it
    /// (none: the entry goes). Written before the message's tombstone, so
    /// that a crash which keeps the tombstone keeps the queue too.
    fn set_edit_purge(&self, room: &str, message: u64, edits: &[u64]) -> Result<(), StoreError>;
    /// Up to `max` queued entries of `set_edit_purge`, in key order.
    fn edit_purges(&self, max: usize) -> Result<Vec<EditPurge>, StoreError>;
    /// Records the account whose post opened `room`, so that the room is
    /// charged to it again after a restart (`max_rooms_per_user`).
    fn set_room_opener(&self, room: &str, account: &str) -> Result<(), StoreError>;
    /// Forgets a room that has no message left: its log, heads and opener.
    /// Its `seq` values must never come back, so the floor that rooms
    /// opened later start above (`room_seq_floor`) is raised to at least
    /// `seq_floor` first.
    fn forget_room(&self, room: &str, seq_floor: u64) -> Result<(), StoreError>;
    /// The highest `seq` a forgotten room handed out: a room opened now
    /// starts above it.
    fn room_seq_floor(&self) -> Result<u64, StoreError>;

    /// Sets or (with `None`) removes a de-duplication entry.
    fn put_dedup(&self, key: &str, entry: Option<DedupRecord>) -> Result<(), StoreError>;
    fn load_dedup(&self) -> Result<Vec<(String, DedupRecord)>, StoreError>;

    /// Sets or (with `None`) removes a room's ban or mute.
    fn put_sanction(&self, key: &str, entry: Option<&SanctionRecord>) -> Result<(), StoreError>;
    fn load_sanctions(&self) -> Result<Vec<(String, SanctionRecord)>, StoreError>;
    /// Sets the last accepted counter of a device that signs its alerts
    /// (`chat/signed.rs`). Durable after the next `flush`.
    fn put_alert_counter(&self, device: &str, counter: u64) -> Result<(), StoreError>;
    /// Forgets a counter `put_alert_counter` set (one no key uses any more).
    fn remove_alert_counter(&self, device: &str) -> Result<(), StoreError>;
    fn load_alert_counters(&self) -> Result<Vec<(String, u64)>, StoreError>;

    /// Write operations so far (for the storage-writes-per-message figure).
    fn writes(&self) -> u64 {
        0
    }

    /// Bytes written so far (keys and values, before the engine's own
    /// overhead): the free-space estimate (`space.rs`) counts them. 0 for a
    /// store that takes no disk.
    fn bytes_written(&self) -> u64 {
        0
    }

    /// Makes every earlier write durable.
    fn flush(&self) -> Result<(), StoreError>;
    /// Whether the store cannot write again until it is reopened (sled
    /// after an I/O error: `sled_db.rs`).
    fn needs_reopen(&self) -> bool {
        false
    }
    /// Reopens the store if it `needs_reopen` and the disk has room;
    /// returns whether it did. What was written since the last flush that
    /// worked is lost (none of it was acknowledged).
    fn reopen(&self) -> Result<bool, StoreError> {
        Ok(false)
    }
    /// How many times the store was reopened so far.
    fn reopens(&self) -> u64 {
        0
    }
    /// Bytes the store takes on disk (0 for memory).
    fn size_on_disk(&self) -> u64;
    /// Releases the files (after a final flush); later calls fail with
    /// `Closed`. Lets an embedding program start a new broker on the same
    /// directory in the same process.
    fn close(&self) {}
}

#[cfg(test)]
mod contract_tests;
#[cfg(test)]
mod purge_tests;
