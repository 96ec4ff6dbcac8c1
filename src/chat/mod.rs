//! The chat layer: rooms on topic hierarchies, as `topics.md` describes them
//! for client authors.
//!
//! - `topics.rs` recognises the chat topics; everything else is plain MQTT.
//!   `classified.rs` is that answer as a value: found once where a message
//!   enters, it travels with the message through the gate, the route and
//!   `publish.rs`. `filter.rs` does the same for a subscription filter
//!   (`$share/{group}/`, the room it names).
//! - `rooms.rs` is the membership model ([`Membership::may_join`]).
//! - `log.rs` keeps each room's messages once, under one increasing `seq`.
//! - `commit.rs` delivers a room message once it is on disk
//!   (`durability = "flush"`).
//! - `dedup.rs` remembers (room, sender, msg-id) for `dedup_window_secs`.
//! - `lifecycle.rs` takes edits, deletes and reactions (and moderators'
//!   deletes) as room events in the log; `events.rs` makes what members
//!   get of a log entry, message or event; `edit_purges.rs` empties a
//!   deleted message's edit bodies a bounded number at a time.
//! - `moderation.rs` answers moderators' bans and mutes on
//!   `$rooms/{room}/mod`; `sanctions.rs` keeps them (read through
//!   `Membership`); `replication.rs` is the hook that takes them to every
//!   node of a cluster.
//! - `presence.rs`, `typing` (in `publish.rs`), `receipts.rs` and
//!   `history.rs` serve the other chat topics; `payloads.rs` holds their
//!   CBOR schemas.
//!
//! What a client makes the chat layer keep is charged to its account
//! (`budget/`): the rooms its posts open, their bytes, its receipts.
//! Upkeep forgets a room with no message left (not a declared one), which
//! releases its opener's charge, its slot in `max_rooms` and its receipts.
//!
//! Offline members do not get a copy of each message: the session keeps a
//! cursor per room and replays its backlog from the log on reconnect
//! (`session/replay.rs`).

mod classified;
mod commit;
mod dedup;
mod edit_purges;
mod events;
mod filter;
mod history;
mod lifecycle;
mod limits;
mod log;
mod members;
mod moderation;
mod other_nodes;
pub mod payloads;
mod presence;
mod presence_charges;
mod presence_index;
mod publish;
mod reactions;
mod receipts;
mod replication;
mod room_state;
mod rooms;
mod sanctions;
mod signed;
#[cfg(test)]
mod tests;
mod topics;
mod upkeep;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::time::Instant;

pub(crate) use classified::Classified;
pub(crate) use events::room_message;
pub(crate) use filter::Filter;
pub(crate) use log::RoomLog;
// The seams cluster mode implements (unused by the rest of a build
// without the `cluster` feature).
#[cfg_attr(not(feature = "cluster"), allow(unused_imports))]
pub(crate) use other_nodes::{DeviceCount, Pending, PresenceReplication, Replication, RoomReplication};
pub use presence::presence_topic;
pub(crate) use publish::{AlertTarget, Handled, Publisher};
pub use rooms::Membership;
pub use signed::{decode_hex, sign_alert, signing_input};
pub(crate) use topics::{
    answer_owner, classify, is_last_value, may_be_restricted, message_topic, only_reads, room_read_by,
    rooms_covered, ChatTopic, RoomInterest,
};

use crate::budget::{Budgets, Held};

/// What the store writes for one room record (a post, an edit, a delete,
/// a reaction, a moderation action) besides the bytes the client sent:
/// the log key and its `seq`, the msg-id and reaction index keys, the
/// message record an edit rewrites, sled's per-entry framing. Charged to
/// `room_post_bytes_per_hour` with every record, so that the budget in
/// bytes is close to the disk it costs: measured (session 4's attack,
/// `run_amp.sh`) at ~500-600 B of disk for a 60-byte reaction or edit
/// request, which the budget counted as 60.
pub(crate) const STORED_RECORD_OVERHEAD: usize = 512;
use crate::config::{AlertRule, Config};
use crate::protocol::QoS;
use crate::router::Router;
use crate::store::{unix_ms_now, GroupCommit, MemoryStore, RoomRecord, Store, StoreError};
use commit::{CommitQueue, Undo};
use dedup::{dedup_key, DedupIndex};
use limits::ChatLimits;
use presence::Presence;
use receipts::Receipts;

pub use crate::protocol::validate::is_valid_room_name;

/// The chat state of one broker.
pub struct Chat {
    /// Where room messages, presence and answers are published; the same
    /// router the sessions use (an `Arc`: `context::Shared` holds it too).
    router: Arc<Router>,
    /// The chat settings read per request.
    limits: ChatLimits,
    pub membership: Arc<Membership>,
    pub(crate) log: RoomLog,
    /// Room messages waiting for their group commit (`durability =
    /// "flush"`); `None` delivers at once.
    uncommitted: Option<CommitQueue>,
    dedup: DedupIndex,
    /// Cluster mode: room messages are written to the shared log and come
    /// back through `apply_replicated` (`other_nodes.rs`).
    replication: Option<Arc<dyn RoomReplication>>,
    /// Cluster mode: where moderators' changes go (`replication.rs`).
    sanction_replication: std::sync::OnceLock<Arc<dyn crate::store::SanctionReplication>>,
    presence: Presence,
    /// The subscribers of each room, for `$rooms/{room}/members`.
    members: members::RoomMembers,
    /// Last typing event per (room, sender), for `typing_min_interval_ms`.
    typing: Mutex<HashMap<(String, String), Instant>>,
    receipts: Receipts,
    /// Every identity's account (`Shared::budgets`): rooms opened, bytes
    /// posted and receipts are charged to it.
    budgets: Arc<Budgets>,
    /// The `[[alerts]]` rules, copied at start: a restart changes them
    /// (SIGHUP re-reads only their key files, into `signed`).
    alerts: Vec<AlertRule>,
    /// Keys of the signed `[[alerts]]` rules and the devices' counters.
    signed: signed::SignedAlerts,
    /// How many reactions a message holds (`lifecycle.rs`).
    reaction_bounds: reactions::ReactionBounds,
    /// `room_max_edits_per_message` (`lifecycle.rs`).
    max_edits: usize,
    pub counters: ChatCounters,
}

/// What the chat layer counts.
#[derive(Default)]
pub struct ChatCounters {
    /// Room messages stored and delivered.
    pub messages: crate::metrics::Counter,
    /// Messages acknowledged again but not delivered: a known msg-id, or
    /// a DUP resend of a packet id already stored.
    pub duplicates: crate::metrics::Counter,
    /// Typing events dropped by `typing_min_interval_ms`.
    pub typing_dropped: crate::metrics::Counter,
    /// Chat publishes refused: wrong sender, not a member, bad payload.
    pub refused: crate::metrics::Counter,
    /// History requests answered.
    pub history_requests: crate::metrics::Counter,
    /// Rooms a session visited to set up its room cursors or plan its
    /// replay (SUBSCRIBE, reconnect). Grows with the rooms the session's
    /// filters name or it has cursors for, never with every room of the
    /// broker: how the tests see that this work goes through an index.
    pub rooms_scanned: crate::metrics::Counter,
    /// History requests refused, not answered: over the identity's
    /// `history_requests_per_minute`.
    pub history_refused_rate: crate::metrics::Counter,
    /// Room posts refused, over the identity's
    /// `room_max_messages_per_minute` in that room.
    pub room_rate_refused: crate::metrics::Counter,
    /// Member list changes whose list waits for the next minute: over the
    /// identity's `room_member_changes_per_minute`.
    pub member_changes_deferred: crate::metrics::Counter,
    /// Alerts refused by a signed rule: malformed, bad signature, replayed
    /// counter (3.1.1 publishers only see them dropped).
    pub alerts_refused: crate::metrics::Counter,
}

/// A room message as it arrives, before it gets a `seq`.
pub(crate) struct Post<'a> {
    pub room: &'a str,
    pub sender: &'a str,
    pub msg_id: Option<&'a str>,
    pub payload: Bytes,
    pub qos: QoS,
    pub user_properties: Vec<(String, String)>,
    pub publisher: Option<Arc<str>>,
    /// When its PUBLISH was read (delivery latency).
    pub received_at: Option<Instant>,
}

impl Post<'_> {
    /// The log record of this message, stamped with the server time.
    fn into_record(self) -> RoomRecord {
        RoomRecord {
            ts_unix_ms: unix_ms_now(),
            sender: self.sender.to_string(),
            msg_id: self.msg_id.map(str::to_string),
            qos: self.qos.value(),
            payload: self.payload,
            user_properties: self.user_properties,
            prev: None,
            entry: None,
        }
    }
}

impl Chat {
    /// Loads room heads and de-duplication entries from `store`, or keeps
    /// them in memory without one. With `commit`, room messages are
    /// delivered after the group commit that stores them (`run_delivery`).
    /// Everything the chat layer publishes goes to `router`.
    pub(crate) fn open(
        config: &Config,
        router: Arc<Router>,
        store: Option<Arc<dyn Store>>,
        commit: Option<Arc<GroupCommit>>,
        Replication {
            rooms: replication,
            presence,
        }: Replication,
        budgets: Arc<Budgets>,
    ) -> Result<Chat, StoreError> {
        // Delivered before it is durable: reserve `seq` values on disk.
        let reserve_ahead = store.is_some() && commit.is_none();
        let store = store.unwrap_or_else(|| Arc::new(MemoryStore::default()));
        let sanctions = sanctions::Sanctions::load(store.clone())?;
        let mut log = RoomLog::load(
            store.clone(),
            config.chat.room_max_messages,
            config.chat.room_max_age_secs,
            reserve_ahead,
        )?;
        log.trims_shared_with(replication.clone());
        let dedup = DedupIndex::load(
            store.clone(),
            config.chat.dedup_window_secs.saturating_mul(1000),
            config.chat.dedup_max_entries,
            config.chat.dedup_max_bytes,
            |room| log.head(room),
        )?;
        // Rooms opened before the restart stay charged to their openers.
        for opener in log.openers() {
            budgets.charge_unchecked(&opener, Held::Rooms, 1);
        }
        Ok(Chat {
            router,
            limits: ChatLimits::from_config(config),
            membership: Arc::new(Membership::with_sanctions(config, sanctions)),
            log,
            uncommitted: commit.map(|commit| CommitQueue::new(commit, store.clone())),
            dedup,
            presence: Presence::new(
                presence,
                config.chat.max_presence_records,
                std::time::Duration::from_secs(config.chat.presence_transient_secs),
                Some(budgets.clone()),
            ),
            members: members::RoomMembers::new(
                config.chat.room_members_listed,
                config.per_user.room_members_listed_per_account,
                std::time::Duration::from_millis(config.chat.room_members_interval_ms),
                config.chat.room_members_bytes_per_sec,
            ),
            replication,
            sanction_replication: std::sync::OnceLock::new(),
            typing: Mutex::default(),
            receipts: Receipts::new(config.chat.max_receipts, budgets.clone()),
            budgets,
            alerts: config.alerts.clone(),
            signed: signed::SignedAlerts::none(),
            reaction_bounds: reactions::ReactionBounds {
                emoji: config.chat.max_reaction_emoji,
                total: config.chat.max_reactions_per_message,
                per_reactor: config.per_user.room_max_reactions_per_user_per_message,
            },
            max_edits: config.chat.room_max_edits_per_message,
            counters: ChatCounters::default(),
        })
    }

    /// Reads the signed alert rules' key files and the devices' counters
    /// from `store`; an error names the file and the key.
    pub(crate) fn load_signed_alerts(&mut self, store: Option<Arc<dyn Store>>) -> Result<(), String> {
        self.signed = signed::SignedAlerts::load(&self.alerts, &self.limits, store)?;
        Ok(())
    }

    /// Reads the signed alert rules' key files again (SIGHUP).
    pub(crate) fn reload_alert_keys(&self) {
        self.signed.reload();
    }

    /// Stores a room message under the room's next `seq` and delivers it
    /// (after its group commit with `durability = "flush"`), unless its
    /// msg-id was seen within the window. Returns the `seq` and whether it
    /// was new.
    pub(crate) fn post(&self, post: Post<'_>) -> Result<(u64, bool), StoreError> {
        tracing::debug!(
            room = post.room,
            sender = post.sender,
            msg_id = post.msg_id.unwrap_or(""),
            "room message received"
        );
        if let Some(replication) = &self.replication {
            return self.post_to_cluster(replication.as_ref(), post);
        }
        let room = self.log.room(post.room);
        let in_order = room.order.lock();
        if room.is_forgotten() {
            // Upkeep forgot the room between the lookup and the lock: the
            // post goes into the room as it is now.
            drop(in_order);
            return self.post(post);
        }
        // A msg-id whose message a reopen of the store lost is new again.
        self.forget_lost();
        let key = match self.dedup_key_unless_seen(&post) {
            Ok(key) => key,
            Err(seq) => return Ok((seq, false)),
        };
        let (publisher, received_at) = (post.publisher.clone(), post.received_at);
        let mut record = post.into_record();
        let links = room.links();
        // The de-dup entry is written before the message: a crash between
        // the two leaves an entry without its message, which loading drops
        // (`DedupIndex::load`); the other way round a stored message could
        // lose its entry and a retry be stored twice.
        let seq = self.log.append(&room, &mut record, |seq| {
            if let Some(key) = &key {
                self.dedup.insert(key.clone(), seq);
            }
        });
        let seq = match seq {
            Ok(seq) => seq,
            Err(e) => {
                if let Some(key) = &key {
                    self.dedup.forget(key);
                }
                return Err(e);
            }
        };
        self.counters.messages.inc();
        tracing::debug!(room = %room.name, seq, msg_id = record.msg_id.as_deref().unwrap_or(""), "room message stored");
        let mut message = room_message(&room.name, seq, record, publisher);
        message.received_at = received_at;
        match &self.uncommitted {
            Some(queue) => queue.push(
                room.clone(),
                seq,
                message,
                Undo {
                    links,
                    dedup_key: key,
                },
            ),
            None => {
                room.reveal(seq);
                self.router.publish(message);
            }
        }
        Ok((seq, true))
    }

    /// The post's de-dup key (when it has a msg-id), or the `seq` it was
    /// stored under when that (room, sender, msg-id) was seen (counted).
    fn dedup_key_unless_seen(&self, post: &Post<'_>) -> Result<Option<String>, u64> {
        let key = post.msg_id.map(|id| dedup_key(post.room, post.sender, id));
        if let Some(seq) = key.as_deref().and_then(|k| self.dedup.seen(k)) {
            self.counters.duplicates.inc();
            return Err(seq);
        }
        Ok(key)
    }

    /// Cluster mode: writes the message to the room stream (the `seq` is
    /// JetStream's, known when it comes back); returns `seq` 0 for a new
    /// message.
    fn post_to_cluster(
        &self,
        replication: &dyn RoomReplication,
        post: Post<'_>,
    ) -> Result<(u64, bool), StoreError> {
        let key = match self.dedup_key_unless_seen(&post) {
            Ok(key) => key,
            Err(seq) => return Ok((seq, false)),
        };
        let (room, publisher) = (post.room, post.publisher.clone());
        replication.post(room, post.into_record(), key.as_deref(), publisher.as_deref())?;
        Ok((0, true))
    }

    /// Cluster mode: a room message JetStream stored under `seq` (read back
    /// in the room's order): appended to this node's copy of the room log,
    /// remembered for de-duplication, and delivered to the members here.
    pub(crate) fn apply_replicated(
        &self,
        room: &str,
        seq: u64,
        mut record: RoomRecord,
        publisher: Option<Arc<str>>,
    ) {
        let state = self.log.room(room);
        let _in_order = state.order.lock();
        if seq <= self.log.applied(room) {
            return;
        }
        // Every node applies a room's messages in the same order, so every
        // node makes the same choice here.
        let key = record
            .msg_id
            .as_deref()
            .map(|id| dedup_key(room, &record.sender, id));
        if key.as_deref().is_some_and(|k| self.dedup.seen(k).is_some()) {
            // Stored twice: two nodes took the same msg-id after
            // JetStream's duplicate window. Kept and shown once.
            self.counters.duplicates.inc();
            self.log.skip_at(&state, seq);
            return;
        }
        let applied = self
            .log
            .append_at(&state, seq, &mut record)
            .and_then(|new| Ok(new && self.apply_effect(room, seq, &record).map(|()| true)?));
        match applied {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::error!(%room, seq, error = %e, "could not keep a room message in this node's copy of the log");
                return;
            }
        }
        self.sanction_from_event(room, &record);
        if let Some(key) = key {
            self.dedup.insert(key, seq);
        }
        self.counters.messages.inc();
        tracing::debug!(
            room,
            seq,
            msg_id = record.msg_id.as_deref().unwrap_or(""),
            "room message from the cluster applied"
        );
        state.reveal(seq);
        self.router
            .publish(room_message(&state.name, seq, record, publisher));
    }

    /// Cluster mode: the highest `seq` of `room` this node took in (where
    /// following the room resumes).
    pub(crate) fn applied_seq(&self, room: &str) -> u64 {
        self.log.applied(room)
    }

    /// Delivers the room messages that are durable now (see
    /// `CommitQueue::deliver_durable`).
    pub(crate) fn deliver_committed(&self) {
        if let Some(queue) = &self.uncommitted {
            self.forget_dedup(queue.deliver_durable(&self.router));
        }
    }

    /// Drops the queued room messages a reopen of the store lost
    /// (`CommitQueue::drop_lost`) and forgets their msg-ids, so a retry
    /// is stored, not acknowledged as a duplicate of nothing.
    fn forget_lost(&self) {
        if let Some(queue) = &self.uncommitted {
            self.forget_dedup(queue.drop_lost(&self.router));
        }
    }

    fn forget_dedup(&self, keys: Vec<String>) {
        for key in keys {
            self.dedup.forget(&key);
        }
    }

    /// Delivers room messages as their group commits complete, until
    /// `stop` (returns at once when messages are delivered without
    /// waiting for a commit).
    pub(crate) async fn run_delivery(&self, stop: tokio::sync::watch::Receiver<bool>) {
        if let Some(queue) = &self.uncommitted {
            queue
                .run(&self.router, stop, |keys| self.forget_dedup(keys))
                .await;
        }
    }

    /// Read receipts kept now.
    pub fn receipts(&self) -> usize {
        self.receipts.len()
    }

    pub(crate) fn presence(&self) -> &Presence {
        &self.presence
    }

    /// Rooms this broker holds a log of.
    pub fn rooms(&self) -> usize {
        self.log.len()
    }

    /// Users with a device connected to this broker.
    pub fn online_users(&self) -> usize {
        self.presence.online_here()
    }

    /// Presence records kept (online users here and offline records), and
    /// how many offline ones `max_presence_records` dropped so far.
    pub fn presence_records(&self) -> (usize, u64) {
        (self.presence.records(), self.presence.evicted.get())
    }
}
