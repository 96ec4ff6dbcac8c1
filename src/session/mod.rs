//! One client's protocol state, and the connection task that serves it.
//!
//! A [`Session`] outlives its connections: it holds the subscriptions, the
//! queue of messages not yet sent, the messages in flight (sent, not yet
//! acknowledged) and the incoming QoS 2 packet ids. The router pushes
//! deliveries onto the queue from the publisher's task; the connection task
//! moves them into flight within the client's Receive Maximum and writes
//! them. Both sides take the session's `std::sync::Mutex` briefly and never
//! across an `.await`.

mod ack_queue;
mod acks;
mod connect;
mod connection;
mod identify;
mod inflight;
mod io;
mod lifecycle;
mod outbox;
mod parts;
mod persist;
mod publish;
mod queue;
mod rate;
mod registry;
mod replay;
mod rooms_ready;
mod route;
mod subscribe;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use queue::Counted;
use std::num::{NonZeroU16, NonZeroU32};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;

pub use connection::{serve, Stream};
pub(crate) use io::{CertName, Peer};
pub(crate) use lifecycle::end_revoked;
pub(crate) use persist::{restore_from_store, restore_sessions};
// For cluster mode (`cluster/join.rs`).
#[cfg_attr(not(feature = "cluster"), allow(unused_imports))]
pub(crate) use registry::give_up_to_other_node;
pub use registry::Registry;
use rooms_ready::{rooms_ready_for_publish, rooms_ready_for_session, rooms_ready_for_subscribe};
/// The broker's shared state (`context/`), with this layer's registry.
pub(crate) type Shared = crate::context::Shared<Registry>;

use crate::auth::gate::Principal;
use crate::metrics::Metrics;
use crate::protocol::{LastWill, QoS, SubscriptionOptions};
use crate::router::Delivery;
use crate::store::Store;

/// The acknowledgement a message in flight to the client waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stage {
    /// QoS 1 sent, waiting for PUBACK.
    Puback,
    /// QoS 2 sent, waiting for PUBREC.
    Pubrec,
    /// PUBREL sent, waiting for PUBCOMP.
    Pubcomp,
}

/// A QoS 1/2 message sent to the client and not yet acknowledged.
pub(crate) struct Inflight {
    pub packet_id: NonZeroU16,
    pub delivery: Delivery,
    pub stage: Stage,
}

/// The Will Message of the current connection, with its 5.0 delay.
#[derive(Clone, Debug)]
pub(crate) struct Will {
    /// Boxed: most connections have no will, and `Option<Will>` sits
    /// twice in every session (`will`, `pending_will`).
    pub will: Box<LastWill>,
    pub delay_secs: u32,
}

/// A subscription as the session remembers it (the router holds the
/// index). The options and identifier are what a durable store saves to
/// rebuild the index after a restart.
#[derive(Clone, Debug)]
pub(crate) struct SessionSubscription {
    pub options: SubscriptionOptions,
    pub id: Option<NonZeroU32>,
}

/// Why the broker wakes a connection to close it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kick {
    /// Another connection with the same client id and owner takes the
    /// session; when the session continues (Clean Start 0) the old
    /// connection's will is not sent ([MQTT-3.1.4-3], as Mosquitto does).
    TakenOver { session_continues: bool },
    /// The client's login was revoked (a user removed from the password
    /// file by a reload): 5.0 DISCONNECT 0x87, no will.
    Revoked,
}

/// The mutable part of a session.
#[derive(Default)]
pub(crate) struct SessionState {
    /// Bumped on every new connection; timers started for an older
    /// connection (will delay, session expiry) check it and stand down.
    pub generation: u64,
    /// Wakes the current connection to close it, for `kick_reason`.
    pub kick: Option<Arc<Notify>>,
    pub kick_reason: Option<Kick>,
    /// The username of the current connection when its login can be
    /// revoked by a reload (`Grant::revocable`).
    pub revocable_login: Option<Arc<str>>,
    /// Messages waiting to be sent, in order.
    pub queue: queue::Queue<Delivery>,
    /// QoS 1/2 messages sent and not yet acknowledged, in send order;
    /// their bytes count with the queue's against `max_queued_bytes`.
    pub inflight: queue::Queue<Inflight>,
    next_packet_id: u16,
    /// Set when the window's packet ids may not go up in send order
    /// (`inflight.rs`, `SessionState::push_in_flight`): a new id is then
    /// checked against every message in flight.
    inflight_unordered: bool,
    /// Packet ids of incoming QoS 2 messages for which PUBREC was sent and
    /// PUBREL has not arrived ([MQTT-4.3.3-9]). This and the other maps
    /// of the state are B-trees: an empty one is 24 bytes, against 48 for
    /// a `HashMap` (its table and hasher keys), and every idle session
    /// carries them empty.
    pub incoming_qos2: BTreeSet<NonZeroU16>,
    /// Filter (as the client sent it) to subscription.
    pub subscriptions: BTreeMap<String, SessionSubscription>,
    /// Session Expiry Interval in seconds; `u32::MAX` never expires.
    pub expiry_secs: u32,
    /// The will of the connection serving the session now.
    pub will: Option<Will>,
    /// A will waiting out its delay after the connection closed.
    pub pending_will: Option<Will>,
    /// Last queue sequence used for a stored delivery.
    pub next_store_seq: u64,
    /// Set once the session has ended; deliveries are then ignored.
    pub ended: bool,
    /// Messages dropped for a full queue, for rate-limited logging.
    pub dropped: u64,
    /// Per room: what was queued and what is done (see `replay.rs`).
    pub room_cursors: BTreeMap<Arc<str>, replay::RoomCursor>,
    /// Set on connect until the room backlog has been queued.
    pub replaying: bool,
    /// Restored from the store: cursors started after the record's save
    /// (unix ms) are lost; the first replay plan looks for rooms with
    /// messages since (`replay.rs`).
    pub rescan_rooms_since: Option<u64>,
    /// Room messages acknowledged since the session record was last saved.
    pub room_acks_unsaved: u32,
    /// Who the session belongs to: set by the connection that created it
    /// and stored with it. Only a client with the same identity may resume
    /// or take it over; room messages are delivered only while it is a
    /// member of the room (checked per message, so a removed member stops
    /// receiving at once). `None` only for a session stored by an older
    /// version, until its client reconnects.
    pub owner: Option<Principal>,
    /// The account this session is charged to (`Held::Sessions`, and the
    /// subscriptions' and queues' bytes), given back when the session
    /// ends; `None` for an anonymous owner.
    pub charged_to: Option<Arc<str>>,
    /// Whether this session counts for its owner's `max_sessions_per_user`
    /// (it outlives its connection); given back with it.
    pub counted_as_session: bool,
    /// What the subscriptions cost `charged_to` (`Held::SubscriptionBytes`,
    /// `subscribe::subscription_cost` each).
    pub subscription_bytes: u64,
    /// Room cursors charged to `charged_to` (`Held::RoomCursors`); at
    /// most `room_cursors.len()` (a cursor refused is not made).
    pub cursors_charged: u64,
    /// The accounts `charged_to` lives in; set with it.
    budgets: Option<Arc<crate::budget::Budgets>>,
    /// Packet id to a hash of (topic, payload) of this session's recent QoS
    /// 1 publishes, to recognise a DUP resend of one already stored.
    pub recent_publishes: VecDeque<(u16, u64)>,
}

impl SessionState {
    /// Charges this session to `account`: the queues' bytes from now on
    /// (`Held::QueuedBytes`; the caller charges `Held::Sessions`).
    pub fn charge_to(&mut self, budgets: &Arc<crate::budget::Budgets>, account: Arc<str>) {
        let payer = Arc::new(crate::budget::ReservedHandle::new(
            budgets.handle(&account, crate::budget::Held::QueuedBytes),
        ));
        self.queue.pay_from(payer.clone());
        self.inflight.pay_from(payer);
        self.charged_to = Some(account);
        self.budgets = Some(budgets.clone());
    }

    /// Charges one new room cursor to the owner (`max_room_cursors_per_user`,
    /// and the `max_room_cursors` ceiling); false, charging nothing, when
    /// that would go over: the caller then makes no cursor. Without
    /// `checked`, for a cursor of a room a filter names (bounded by the
    /// subscriptions' own budget), it is charged and always made.
    pub fn charge_cursor(&mut self, checked: bool) -> bool {
        let (Some(budgets), Some(account)) = (&self.budgets, &self.charged_to) else {
            return true;
        };
        if checked {
            if let Err(over) = budgets.charge(account, crate::budget::Held::RoomCursors, 1) {
                tracing::debug!(%account, "{over}: no room cursor");
                return false;
            }
        } else {
            budgets.charge_unchecked(account, crate::budget::Held::RoomCursors, 1);
        }
        self.cursors_charged += 1;
        true
    }

    /// Gives every charge of this session back (it ends): the subscriptions
    /// and cursors; the caller gives `Held::Sessions` back.
    pub fn release_charges(&mut self) -> Option<Arc<str>> {
        let account = self.charged_to.take()?;
        if let Some(budgets) = &self.budgets {
            let subscriptions = std::mem::take(&mut self.subscription_bytes);
            budgets.release(&account, crate::budget::Held::SubscriptionBytes, subscriptions);
            let cursors = std::mem::take(&mut self.cursors_charged);
            budgets.release(&account, crate::budget::Held::RoomCursors, cursors);
        }
        Some(account)
    }
}

/// A client session, shared by its connection task and the router.
pub struct Session {
    /// The client identifier this session belongs to.
    pub client_id: Arc<str>,
    pub(crate) state: Mutex<SessionState>,
    /// Wakes the connection task when something was queued.
    pub(crate) wake: Notify,
    /// Whether a connection currently serves this session; read without the
    /// lock by shared-subscription round robin.
    online: AtomicBool,
    /// Held by the connection that serves the session, so a taking-over
    /// connection waits until the old one has fully stopped.
    pub(crate) owner: Arc<tokio::sync::Mutex<()>>,
    max_queued: usize,
    /// `max_queued_bytes`.
    max_queued_bytes: usize,
    queue_qos0_offline: bool,
    metrics: Arc<Metrics>,
    /// The durable store, when the broker has one.
    store: Option<Arc<dyn Store>>,
    /// Whether anything of this session may be in the store, so that a
    /// clean session (the common case) never touches the store at all.
    stored: AtomicBool,
    /// Cluster mode: the session went to another node, which now keeps
    /// its record; ending it here must not remove that.
    pub(crate) moved_away: AtomicBool,
    /// Room membership, shared with the chat layer; `None` for the trusted
    /// in-process subscriber of an embedding program, which reads all.
    membership: Option<Arc<crate::chat::Membership>>,
    /// The topic rules (`[[acl]]`), for deliveries that must be checked
    /// one by one (`may_read_acl`); `None` for the in-process subscriber.
    /// Set once, right after the session is made.
    pub(crate) acl: std::sync::OnceLock<Arc<crate::auth::acl::Acl>>,
    /// The group commit (`durability = "flush"`), asked for a flush after
    /// the writes no publisher's commit covers (`persist.rs`). Set once,
    /// right after the session is made.
    pub(crate) commit: std::sync::OnceLock<Arc<crate::store::GroupCommit>>,
}

impl Session {
    pub(crate) fn new(
        client_id: Arc<str>,
        max_queued: usize,
        max_queued_bytes: usize,
        queue_qos0_offline: bool,
        metrics: Arc<Metrics>,
        store: Option<Arc<dyn Store>>,
        membership: Option<Arc<crate::chat::Membership>>,
    ) -> Self {
        Session {
            client_id,
            state: Mutex::new(SessionState::default()),
            wake: Notify::new(),
            online: AtomicBool::new(false),
            owner: Arc::new(tokio::sync::Mutex::new(())),
            max_queued,
            max_queued_bytes,
            queue_qos0_offline,
            metrics,
            store,
            stored: AtomicBool::new(false),
            moved_away: AtomicBool::new(false),
            membership,
            acl: std::sync::OnceLock::new(),
            commit: std::sync::OnceLock::new(),
        }
    }

    pub fn is_online(&self) -> bool {
        self.online.load(Ordering::Acquire)
    }

    /// This session as the router holds it.
    pub(crate) fn subscriber(self: &Arc<Self>) -> Arc<dyn crate::router::Subscriber> {
        self.clone()
    }

    pub(crate) fn set_online(&self, online: bool) {
        self.online.store(online, Ordering::Release);
    }

    /// Queues one delivery and wakes the connection. Returns false when the
    /// message was dropped (queue full, or QoS 0 for an offline session);
    /// every drop is counted.
    pub fn deliver(&self, delivery: Delivery) -> bool {
        let mut st = self.state.lock();
        if st.ended {
            return false;
        }
        if !self.may_read(&st, &delivery.message.topic) {
            return true;
        }
        // A shared group has no room cursor: its copy is queued for the
        // member the router picked, online or not, like any shared
        // message ([MQTT-4.8.2]; `replay.rs`).
        let by_cursor = replay::by_cursor(&delivery);
        if let Some(tag) = delivery.message.room.as_ref().filter(|_| by_cursor) {
            if !self.take_live_room_message(&mut st, tag) {
                // The room log has it; the replay will queue it.
                return true;
            }
        } else if delivery.message.ephemeral && !self.is_online() {
            return false;
        }
        if delivery.qos == QoS::AtMostOnce && !self.queue_qos0_offline && !self.is_online() {
            self.metrics.messages_dropped_offline_qos0.inc();
            return false;
        }
        let mut delivery = if delivery.message.last_value {
            match self.replace_waiting_copy(&mut st, delivery) {
                Ok(()) => {
                    drop(st);
                    self.wake.notify_one();
                    return true;
                }
                Err(delivery) => delivery,
            }
        } else {
            delivery
        };
        let bytes = delivery.bytes();
        if !self.reserve_queue_room(&st, bytes) {
            let held_bytes = st.queue.bytes() + st.inflight.bytes();
            self.dropped_full(&mut st, held_bytes);
            return false;
        }
        if !by_cursor {
            // Room messages are in the room log already (a shared copy
            // keeps a reference to it: `persist.rs`).
            self.record_delivery(&mut st, &mut delivery);
        }
        st.queue.push_back_reserved(delivery, bytes);
        drop(st);
        self.wake.notify_one();
        true
    }

    /// Whether `bytes` more may join this session's queue, charging them to
    /// the owner's account if so (a live delivery and a replayed room
    /// backlog alike). A message alone is always taken by the session (it
    /// is within max_packet_size); beyond that what waits and what is in
    /// flight (sent, not yet acknowledged) are bounded together, in count
    /// and in bytes: a reader that never acknowledges holds no more than
    /// one that never reads. The owner's account pays for every session's
    /// queue together (`max_queued_bytes_per_user`), charged before the
    /// message is stored, so a refused one leaves nothing behind.
    #[inline]
    pub(crate) fn reserve_queue_room(&self, st: &SessionState, bytes: usize) -> bool {
        let held = st.queue.len() + st.inflight.len();
        let held_bytes = st.queue.bytes() + st.inflight.bytes();
        let over_bytes = held > 0 && held_bytes + bytes > self.max_queued_bytes;
        held < self.max_queued && !over_bytes && st.queue.reserve(bytes)
    }

    /// Puts `delivery` of a last-value topic (`Message::last_value`: a
    /// member list, a presence) in the place of its topic's copy still
    /// waiting in the queue, which is of no more use; `Err` gives it back
    /// when there is none. The scan is bounded by `max_queued_messages`
    /// and runs only for such topics.
    fn replace_waiting_copy(&self, st: &mut SessionState, mut delivery: Delivery) -> Result<(), Delivery> {
        if !delivery.message.last_value {
            return Err(delivery);
        }
        let topic = &delivery.message.topic;
        let Some(index) = st
            .queue
            .iter()
            .rposition(|d| d.message.last_value && d.message.topic == *topic)
        else {
            return Err(delivery);
        };
        self.record_delivery(st, &mut delivery);
        let mut older = None;
        st.queue.update(index, |waiting| {
            older = Some(std::mem::replace(waiting, delivery))
        });
        if let Some(older) = older {
            // Counted like every message a subscriber does not get.
            self.metrics.messages_superseded.inc();
            self.forget_delivery(&older);
        }
        Ok(())
    }

    /// Counts and logs (rate-limited) a message dropped for a full queue:
    /// the session's, or its owner's over all its sessions.
    fn dropped_full(&self, st: &mut SessionState, held_bytes: usize) {
        st.dropped += 1;
        self.metrics.messages_dropped_queue_full.inc();
        if st.dropped == 1 || st.dropped % 1000 == 0 {
            tracing::warn!(
                client_id = %self.client_id,
                dropped = st.dropped,
                max_queued_messages = self.max_queued,
                max_queued_bytes = self.max_queued_bytes,
                queued_bytes = held_bytes,
                account = st.charged_to.as_deref(),
                "session queue full (or its owner's, max_queued_bytes_per_user), message dropped"
            );
        }
    }

    /// Whether this session's client may read `topic`: room topics
    /// (`rooms/{room}/...`) need membership of the room, and the broker's
    /// answers to a user (`users/{user}/history/...`, `.../mod/...`) are
    /// that user's alone.
    #[inline]
    pub(crate) fn may_read(&self, st: &SessionState, topic: &str) -> bool {
        // Most topics are answered here, inline, on every delivery.
        self.membership.is_none()
            || !crate::chat::may_be_restricted(topic)
            || self.may_read_restricted(st, topic)
    }

    /// [`Session::may_read`] for the topics a membership may restrict.
    fn may_read_restricted(&self, st: &SessionState, topic: &str) -> bool {
        let Some(membership) = &self.membership else {
            return true;
        };
        if let Some(user) = crate::chat::answer_owner(topic) {
            return st.owner.as_ref().and_then(|o| o.identity.as_deref()) == Some(user);
        }
        let Some(room) = crate::chat::room_read_by(topic) else {
            return true;
        };
        match &st.owner {
            Some(owner) => owner.may_join(membership, room),
            // Unknown owner: open rooms only.
            None => membership.allows(None, None, room),
        }
    }

    /// `may_read` for one topic, taking the lock only for room topics:
    /// shared-subscription round robin skips members that may not read.
    pub fn may_read_topic(&self, topic: &str) -> bool {
        let plain = crate::chat::room_read_by(topic).is_none() && crate::chat::answer_owner(topic).is_none();
        plain || self.may_read(&self.state.lock(), topic)
    }

    /// Whether the topic rules let this session's owner read `topic` (for
    /// the subscriptions the rules did not decide as a whole at SUBSCRIBE:
    /// `#` under rules that deny part of it). Judged as the owner recorded
    /// with the session; an unknown owner has no username.
    pub fn may_read_acl(&self, topic: &str) -> bool {
        let Some(acl) = self.acl.get() else {
            return true;
        };
        let st = self.state.lock();
        let who = crate::auth::acl::Subject {
            username: st.owner.as_ref().and_then(|o| o.username.as_deref()),
            client_id: &self.client_id,
        };
        acl.may_read(&who, topic)
    }

    /// Whether deliveries through a subscription to `filter` (without a
    /// `$share/{group}/` prefix) must be checked one by one. Always, under
    /// rules, while the owner is unknown (a session stored by an older
    /// version): its username, once known, may matter to the rules.
    pub(crate) fn needs_read_check(&self, st: &SessionState, filter: &str) -> bool {
        self.acl.get().is_some_and(|acl| {
            let Some(owner) = &st.owner else {
                return true;
            };
            let who = crate::auth::acl::Subject {
                username: owner.username.as_deref(),
                client_id: &self.client_id,
            };
            acl.needs_read_check(&who, filter)
        })
    }

    /// Messages waiting to be sent plus messages in flight.
    pub fn pending_count(&self) -> usize {
        let st = self.state.lock();
        st.queue.len() + st.inflight.len()
    }

    /// Bytes of the messages waiting to be sent and in flight.
    pub fn pending_bytes(&self) -> usize {
        let st = self.state.lock();
        st.queue.bytes() + st.inflight.bytes()
    }
}

/// What the router needs of a session (it never sees the rest).
impl crate::router::Subscriber for Session {
    fn client_id(&self) -> &str {
        &self.client_id
    }

    fn deliver(&self, delivery: Delivery) -> bool {
        Session::deliver(self, delivery)
    }

    fn may_read_topic(&self, topic: &str) -> bool {
        Session::may_read_topic(self, topic)
    }

    fn may_read_acl(&self, topic: &str) -> bool {
        Session::may_read_acl(self, topic)
    }

    fn is_online(&self) -> bool {
        Session::is_online(self)
    }
}
