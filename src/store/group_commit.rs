//! Group commit: many writers, one flush.
//!
//! A writer that needs its writes on disk takes a ticket after writing and
//! waits for it. One background task flushes whenever tickets are pending;
//! every ticket taken before a flush started is served by that flush, so N
//! concurrent publishers share one `fsync`-like call instead of making N.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{watch, Notify};

use super::Store;

/// The group-commit coordinator of one store.
pub struct GroupCommit {
    /// Highest ticket handed out.
    requested: AtomicU64,
    /// Highest ticket known to be durable.
    durable: watch::Sender<u64>,
    wake: Notify,
    /// Flushes done, for the benchmark and tests.
    pub flushes: AtomicU64,
}

impl GroupCommit {
    /// Starts the flusher task for `store`.
    pub fn start(store: Arc<dyn Store>) -> Arc<GroupCommit> {
        let (durable, _) = watch::channel(0);
        let gc = Arc::new(GroupCommit {
            requested: AtomicU64::new(0),
            durable,
            wake: Notify::new(),
            flushes: AtomicU64::new(0),
        });
        let worker = gc.clone();
        tokio::spawn(async move { worker.run(store).await });
        gc
    }

    /// A ticket covering every write made before this call.
    pub fn ticket(&self) -> u64 {
        let t = self.requested.fetch_add(1, Ordering::AcqRel) + 1;
        self.wake.notify_one();
        t
    }

    /// The highest ticket known to be durable.
    pub fn durable(&self) -> u64 {
        *self.durable.borrow()
    }

    /// Waits until the writes covered by `ticket` are durable.
    pub async fn wait(&self, ticket: u64) {
        let mut rx = self.durable.subscribe();
        let _ = rx.wait_for(|d| *d >= ticket).await;
    }

    async fn run(self: Arc<Self>, store: Arc<dyn Store>) {
        loop {
            let target = self.requested.load(Ordering::Acquire);
            if target <= *self.durable.borrow() {
                self.wake.notified().await;
                continue;
            }
            let store = store.clone();
            let result = tokio::task::spawn_blocking(move || store.flush()).await;
            let failure = match result {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(e) => Some(e.to_string()),
            };
            match failure {
                None => {
                    self.flushes.fetch_add(1, Ordering::Relaxed);
                    self.durable.send_replace(target);
                }
                Some(error) => {
                    // Acknowledgements wait for a flush that works.
                    tracing::error!(%error, "store flush failed, retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    }
}
