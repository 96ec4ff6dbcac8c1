//! A subscriber for the router's unit tests: records what it is handed,
//! with the online state and read permission a test sets.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use super::{Delivery, Subscriber};

pub(super) struct Probe {
    id: String,
    online: AtomicBool,
    /// Topics it may not read (room membership, as `may_read_topic` says).
    denied: Vec<String>,
    pub got: Mutex<Vec<Delivery>>,
}

impl Probe {
    pub fn new(id: &str) -> Arc<Probe> {
        Self::denying(id, &[])
    }

    pub fn denying(id: &str, denied: &[&str]) -> Arc<Probe> {
        Arc::new(Probe {
            id: id.to_string(),
            online: AtomicBool::new(true),
            denied: denied.iter().map(|t| t.to_string()).collect(),
            got: Mutex::new(Vec::new()),
        })
    }

    pub fn set_online(&self, online: bool) {
        self.online.store(online, Ordering::Relaxed);
    }

    /// The topics handed over so far, in order.
    pub fn topics(&self) -> Vec<String> {
        self.got
            .lock()
            .iter()
            .map(|d| d.message.topic.to_string())
            .collect()
    }
}

/// `probe` as the router holds it.
pub(super) fn handle(probe: &Arc<Probe>) -> Arc<dyn Subscriber> {
    probe.clone()
}

impl Subscriber for Probe {
    fn client_id(&self) -> &str {
        &self.id
    }

    fn deliver(&self, delivery: Delivery) -> bool {
        self.got.lock().push(delivery);
        true
    }

    fn may_read_topic(&self, topic: &str) -> bool {
        !self.denied.iter().any(|t| t == topic)
    }

    fn may_read_acl(&self, _topic: &str) -> bool {
        true
    }

    fn is_online(&self) -> bool {
        self.online.load(Ordering::Relaxed)
    }
}
