//! Retained messages: the last retained message of each topic, delivered to
//! new subscriptions that match it.

use std::collections::HashMap;
use std::sync::Arc;
use tokio::time::Instant;

use parking_lot::RwLock;

use super::message::Message;
use crate::protocol::validate::topic_matches;

/// Topic to retained message. A read lock serves every subscribe; a write
/// lock is taken only by a PUBLISH with the RETAIN flag.
#[derive(Default)]
pub struct RetainedStore {
    by_topic: RwLock<HashMap<String, Arc<Message>>>,
}

impl RetainedStore {
    /// Stores `message` as the topic's retained message, or clears it when
    /// the payload is empty ([MQTT-3.3.1-10]).
    pub fn set(&self, message: &Arc<Message>) {
        let mut map = self.by_topic.write();
        if message.payload.is_empty() {
            map.remove(&*message.topic);
        } else {
            map.insert(message.topic.to_string(), message.clone());
        }
    }

    /// Every unexpired retained message whose topic matches `filter`; expired
    /// ones are dropped on the way.
    pub fn matching(&self, filter: &str) -> Vec<Arc<Message>> {
        let now = Instant::now();
        let mut expired = Vec::new();
        let found = {
            let map = self.by_topic.read();
            map.iter()
                .filter(|(topic, msg)| {
                    if msg.is_expired(now) {
                        expired.push((*topic).clone());
                        return false;
                    }
                    topic_matches(filter, topic)
                })
                .map(|(_, msg)| msg.clone())
                .collect()
        };
        if !expired.is_empty() {
            let mut map = self.by_topic.write();
            for topic in expired {
                if map.get(&topic).is_some_and(|m| m.is_expired(now)) {
                    map.remove(&topic);
                }
            }
        }
        found
    }

    pub fn len(&self) -> usize {
        self.by_topic.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
