//! Durable state behind one small trait, so the storage engine can change in
//! one place: [`SledStore`] on disk, [`MemoryStore`] for tests of the
//! contract. With `storage = "memory"` the broker writes no records at all.
//!
//! What is stored: retained messages; persistent sessions (subscriptions,
//! expiry, will); each persistent session's QoS 1/2 messages not yet
//! acknowledged (queued or in flight); and the packet ids of incoming QoS 2
//! messages awaiting PUBREL; the chat layer's room logs (each message once,
//! whatever the number of members), room heads and msg-id de-duplication
//! entries. Deadlines are wall-clock unix milliseconds, so
//! they keep running while the broker is down.

mod convert;
mod group_commit;
mod health;
mod journal;
mod memory;
mod monitored;
mod records;
mod sled_store;
mod space;

pub use group_commit::{CommitBarrier, GroupCommit};
pub use health::{StoreFailure, StoreHealth};
pub use memory::MemoryStore;
pub use monitored::Monitored;
pub use records::{
    unix_ms_now, DedupRecord, MessageRecord, OwnerRecord, QueuedRecord, RoomRecord, SessionRecord,
    SubscriptionRecord, WillRecord,
};
pub use sled_store::SledStore;
pub use space::WRITE_AMPLIFICATION;

/// The data format this build reads and writes; stored in the data
/// directory so a later version can refuse or migrate it, never misread it.
pub const FORMAT_VERSION: &str = "roomq-store-3";

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
}

/// A persistent session as loaded at start-up.
pub struct LoadedSession {
    pub client_id: String,
    pub record: SessionRecord,
    /// Its unacknowledged messages, in queue order.
    pub messages: Vec<(u64, QueuedRecord)>,
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
    fn load_sessions(&self) -> Result<Vec<LoadedSession>, StoreError>;

    /// Stores a new message record; `seq` was never used for this session.
    fn put_message(&self, client_id: &str, seq: u64, message: QueuedRecord) -> Result<(), StoreError>;
    /// Replaces a message record (QoS 2 progress).
    fn update_message(&self, client_id: &str, seq: u64, message: QueuedRecord) -> Result<(), StoreError>;
    fn remove_message(&self, client_id: &str, seq: u64) -> Result<(), StoreError>;
    /// Records the packet id a message was sent with, so it is resent with
    /// it after a restart. `record` builds the whole record, for a store
    /// that must rewrite it; one that still holds it unwritten only sets
    /// the id (the common case: sending is on the hot path).
    fn set_packet_id(
        &self,
        client_id: &str,
        seq: u64,
        packet_id: u16,
        record: &dyn Fn() -> QueuedRecord,
    ) -> Result<(), StoreError> {
        let _ = packet_id;
        self.update_message(client_id, seq, record())
    }

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
    /// Records that `seq` values up to `up_to` are handed out in `room`
    /// (with `durability = "buffered"`, a delivered message may be lost in a
    /// crash, but its `seq` must not come back). Durable after the next
    /// `flush`.
    fn reserve_room_seqs(&self, room: &str, up_to: u64) -> Result<(), StoreError>;
    /// Every room's last stored `seq` and its reservation: the room's next
    /// `seq` is above both.
    fn room_heads(&self) -> Result<Vec<RoomHead>, StoreError>;
    /// Removes a room's messages with `seq < below`.
    fn trim_room(&self, room: &str, below: u64) -> Result<(), StoreError>;

    /// Sets or (with `None`) removes a de-duplication entry.
    fn put_dedup(&self, key: &str, entry: Option<DedupRecord>) -> Result<(), StoreError>;
    fn load_dedup(&self) -> Result<Vec<(String, DedupRecord)>, StoreError>;

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
    /// Bytes the store takes on disk (0 for memory).
    fn size_on_disk(&self) -> u64;
    /// Releases the files (after a final flush); later calls fail with
    /// `Closed`. Lets an embedding program start a new broker on the same
    /// directory in the same process.
    fn close(&self) {}
}

#[cfg(test)]
mod contract_tests;
