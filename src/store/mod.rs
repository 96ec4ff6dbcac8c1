//! Durable state behind one small trait, so the storage engine can change in
//! one place. Today: [`MemoryStore`] (state is lost when the process ends).
//! The sled implementation lands with the durability work.

mod memory;

pub use memory::MemoryStore;

use bytes::Bytes;

/// A retained message as stored: enough to rebuild it after a restart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredRetained {
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    /// Expiry as wall-clock unix milliseconds, so it keeps counting while
    /// the broker is down; `None` for never.
    pub expires_at_unix_ms: Option<u64>,
}

/// Errors from a store, naming what failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("store I/O error: {0}")]
    Io(String),
}

/// What the broker keeps durably.
pub trait Store: Send + Sync {
    /// Sets (or with an empty payload, clears) a topic's retained message.
    fn put_retained(&self, message: &StoredRetained) -> Result<(), StoreError>;
    /// All retained messages, for start-up.
    fn load_retained(&self) -> Result<Vec<StoredRetained>, StoreError>;
    /// Makes every earlier write durable.
    fn flush(&self) -> Result<(), StoreError>;
}
