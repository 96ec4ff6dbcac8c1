//! Bans and mutes beyond this node: what the chat layer hands to a
//! replication (cluster mode, `cluster/sanctions.rs`). It sits here, below
//! both, like [`super::CommitBarrier`], so that the cluster implements it
//! without naming the chat layer, and the chat layer uses it without
//! naming the cluster.

use serde::{Deserialize, Serialize};

use crate::message::Message;

/// What a moderator may do to a user in a room (`chat/sanctions.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SanctionKind {
    /// No access to the room at all.
    Ban,
    /// Reads, but does not post or type.
    Mute,
}

/// The state of one (kind, room, user) after a change: what every node
/// takes in. The state, not the operation: taken in twice, it gives one
/// result, and an older one is told by its version (`cluster/`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SanctionChange {
    pub kind: SanctionKind,
    pub room: String,
    pub user: String,
    /// `None`: there is none (lifted); `Some(until)`: in force until
    /// `until` (unix ms; `None`: until lifted).
    pub until: Option<Option<u64>>,
}

impl SanctionChange {
    /// Names the (kind, room, user) the change is about (stored in the
    /// cluster: never changes). Room names and users hold no NUL (MQTT
    /// topics may not).
    pub fn key(&self) -> String {
        let kind = match self.kind {
            SanctionKind::Ban => "ban",
            SanctionKind::Mute => "mute",
        };
        format!("{kind}\0{}\0{}", self.room, self.user)
    }
}

/// Where a moderator's change goes besides this node.
pub trait SanctionReplication: Send + Sync {
    /// Makes `change`, in effect here already, reach every node, and
    /// publishes `answer` (the moderator's) once it is committed for
    /// them. False when it could not even be queued (nothing is
    /// published then).
    fn replicate(&self, change: SanctionChange, answer: Message) -> bool;
}
