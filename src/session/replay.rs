//! Room backlogs of persistent sessions.
//!
//! A room message is stored once, in its room's log. A persistent session
//! that is offline does not queue it (no store write per member); it keeps a
//! cursor per room instead, and on reconnect replays what it missed from the
//! log, in `seq` order, a page at a time as its queue drains (so within the
//! client's Receive Maximum, `max_queued_messages`, `max_queued_bytes` and
//! the owner's `max_queued_bytes_per_user`: what does not fit waits in the
//! log, behind the cursor).
//!
//! Per room the session tracks `delivered` (the highest `seq` queued, in
//! memory) and `done` (every `seq` up to it was acknowledged, or sent at QoS
//! 0); `done` is what the session record stores. While a replay runs, live
//! room messages are not queued: the replay reads them from the log, so the
//! order stays the log's.
//!
//! Cursors are found through the filters, never by visiting every room of
//! the broker (a client can open many): a filter that matches no room
//! costs nothing, one that names a room (`rooms/ops/#`) one lookup. A
//! filter covering every room (`rooms/+/msg/+`, `#`) starts no cursor at
//! SUBSCRIBE: each room gets its cursor with its first message after the
//! subscription, which reaches the session through the router also while
//! it is offline or replaying (`take_live_room_message`). So a replay
//! plans the rooms its filters name and the rooms it has cursors for:
//! work in proportion to what the session subscribed to and received.
//! After a restart, cursors started since the record was last saved are
//! lost; a session with such a filter then makes one pass over the rooms
//! with messages stored since that save (the only pass over all rooms,
//! once per such session and restart) and replays them from the start.

use std::sync::Arc;

use super::queue::Counted;
use super::{Session, SessionState, SessionSubscription};
use crate::chat::RoomInterest;
use crate::chat::{room_message, rooms_covered, Chat, Filter};
use crate::protocol::validate::topic_matches;
use crate::protocol::QoS;
use crate::router::{Delivery, RoomTag};

/// Messages read from a room log per replay step.
const REPLAY_PAGE: usize = 256;
/// Save the session record (with its cursors) after this many room
/// messages were acknowledged, so a crash replays at most about this many
/// again (QoS 1 allows the duplicates; clients drop them by `seq`).
const SAVE_CURSORS_EVERY: u32 = 100;

/// One room's progress for one session.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct RoomCursor {
    pub delivered: u64,
    pub done: u64,
}

impl Session {
    /// Whether a live room message should be queued now. False when the
    /// log will replay it (offline persistent session, or a replay is
    /// running) or it was already queued.
    pub(crate) fn take_live_room_message(&self, st: &mut SessionState, tag: &RoomTag) -> bool {
        if st.replaying || (!self.is_online() && st.expiry_secs > 0) {
            // After a restart the first replay plan finds such rooms (and
            // earlier messages of theirs a crash may have lost the cursor
            // of); until then no cursor is started here.
            if st.rescan_rooms_since.is_none()
                && !st.room_cursors.contains_key(&tag.room)
                && st.charge_cursor(true)
            {
                // The room's first message since the subscription (see the
                // module doc): the replay starts just before it. Saved
                // with the next save of the record. Over the owner's
                // `max_room_cursors_per_user` no cursor is made: the room
                // is not replayed, the client sees the gap by `prev`.
                let before = tag.seq.saturating_sub(1);
                let cursor = RoomCursor {
                    delivered: before,
                    done: before,
                };
                st.room_cursors.insert(tag.room.clone(), cursor);
            }
            return false;
        }
        if !st.room_cursors.contains_key(&tag.room) && !st.charge_cursor(true) {
            // Over the owner's cursor budget: delivered live, untracked.
            return true;
        }
        let cursor = st.room_cursors.entry(tag.room.clone()).or_default();
        if tag.seq <= cursor.delivered {
            return false;
        }
        cursor.delivered = tag.seq;
        true
    }

    /// A room message left the session (acknowledged, sent at QoS 0,
    /// expired or too large): move the room's stored cursor.
    pub(crate) fn room_message_done(&self, st: &mut SessionState, delivery: &Delivery) {
        let Some(tag) = delivery.message.room.as_ref().filter(|_| by_cursor(delivery)) else {
            return;
        };
        if !st.room_cursors.contains_key(&tag.room) && !st.charge_cursor(true) {
            return;
        }
        let cursor = st.room_cursors.entry(tag.room.clone()).or_default();
        cursor.done = cursor.done.max(tag.seq);
        st.room_acks_unsaved += 1;
        if st.room_acks_unsaved >= SAVE_CURSORS_EVERY {
            st.room_acks_unsaved = 0;
            self.save(st, None);
        }
    }

    /// After a new subscription: the room it names starts at its current
    /// head, so subscribing does not replay old history (that is what
    /// history requests are for). A filter covering every room starts
    /// each room's cursor with its next message instead (module doc); one
    /// matching no room costs nothing.
    pub(crate) fn start_room_cursors(&self, chat: &Chat, filter: &Filter<'_>) {
        if filter.shared.is_some() {
            return;
        }
        let Some(RoomInterest::One(room)) = filter.rooms_covered() else {
            return;
        };
        chat.counters.rooms_scanned.inc();
        let head = chat.log.head(&room);
        let mut st = self.state.lock();
        // Charged without a check: a room a filter names is paid for by
        // the subscription's own budget.
        if head > 0 && !st.room_cursors.contains_key(room.as_str()) && st.charge_cursor(false) {
            let cursor = RoomCursor {
                delivered: head,
                done: head,
            };
            st.room_cursors.insert(room.into(), cursor);
        }
    }

    /// Whether a replay is running and the queue has room for a step
    /// (`pending` below `room_for`, and at most half of
    /// `max_queued_bytes`); one lock, on every turn of the connection's
    /// loop.
    pub(crate) fn wants_replay(&self, room_for: usize) -> bool {
        let st = self.state.lock();
        st.replaying
            && st.queue.len() + st.inflight.len() < room_for
            && st.queue.bytes() + st.inflight.bytes() <= self.max_queued_bytes / 2
    }

    /// One replay step: queues up to a page per room of what the session
    /// missed. Returns whether the replay goes on (call again once the
    /// queue drains).
    pub(crate) fn replay_rooms(&self, chat: &Chat) -> bool {
        loop {
            let plan = {
                let mut st = self.state.lock();
                if !st.replaying {
                    return false;
                }
                let plan = replay_plan(&mut st, chat);
                if plan.is_empty() {
                    // Checked under the lock: every message with a seq up
                    // to the heads read here is queued; later ones arrive
                    // live.
                    st.replaying = false;
                    return false;
                }
                plan
            };
            let (mut queued, mut full) = (0, false);
            for (room, from) in plan {
                let page = match chat.log.range(&room, from, u64::MAX, REPLAY_PAGE, false) {
                    Ok(page) => page,
                    Err(e) => {
                        tracing::error!(client_id = %self.client_id, %room, error = %e, "cannot read the room log; replay stops");
                        self.state.lock().replaying = false;
                        return false;
                    }
                };
                let mut st = self.state.lock();
                let head = chat.log.head(&room);
                if !st.room_cursors.contains_key(&room) {
                    // A room a filter names (the others have a cursor).
                    st.charge_cursor(false);
                }
                let cursor = st.room_cursors.entry(room.clone()).or_default();
                let mut last = cursor.delivered;
                if page.is_empty() {
                    // Trimmed away: resume at the head.
                    last = last.max(head);
                }
                for (seq, record) in page {
                    if seq <= last {
                        continue;
                    }
                    let message = room_message(&room, seq, record, None);
                    if !self.may_read(&st, &message.topic) {
                        last = seq;
                        continue;
                    }
                    if let Some((qos, subscription_ids)) = best_match(&st.subscriptions, &message.topic) {
                        let delivery = Delivery {
                            qos: message.qos.less_value(qos),
                            message: Arc::new(message),
                            retain: false,
                            subscription_ids,
                            shared: None,
                            store_seq: None,
                        };
                        let bytes = delivery.bytes();
                        if !self.reserve_queue_room(&st, bytes) {
                            // Within the session's and the owner's queue
                            // bounds, as a live delivery; the rest waits in
                            // the log until the queue drains, the cursor
                            // before it (never dropped).
                            full = true;
                            break;
                        }
                        st.queue.push_back_reserved(delivery, bytes);
                        queued += 1;
                    }
                    last = seq;
                }
                if let Some(cursor) = st.room_cursors.get_mut(&room) {
                    cursor.delivered = last;
                }
                if full {
                    break;
                }
            }
            if queued > 0 || full {
                if queued > 0 {
                    self.wake.notify_one();
                }
                return true;
            }
        }
    }
}

/// Whether a room message reaches this session through its room cursor:
/// not a shared group's copy, which is queued like any shared message
/// (MQTT 5.0 §4.8.2, also for an offline member) and stored with the
/// session's queue (`store_seq`, also once restored, when the group is
/// no longer known).
pub(crate) fn by_cursor(delivery: &Delivery) -> bool {
    delivery.message.room.is_some() && delivery.shared.is_none() && delivery.store_seq.is_none()
}

/// Rooms with messages after the session's cursor, and where to start:
/// the rooms its filters name, and with a filter covering every room the
/// rooms it has cursors for (module doc).
fn replay_plan(st: &mut SessionState, chat: &Chat) -> Vec<(Arc<str>, u64)> {
    let mut every = false;
    let mut rooms: Vec<Arc<str>> = Vec::new();
    for filter in st.subscriptions.keys().filter(|f| !f.starts_with("$share/")) {
        match rooms_covered(filter) {
            Some(RoomInterest::Every) => every = true,
            Some(RoomInterest::One(room)) => rooms.push(room.into()),
            None => {}
        }
    }
    let rescan_since = st.rescan_rooms_since.take();
    if every {
        if let Some(since) = rescan_since {
            for room in chat.log.changed_since(since) {
                chat.counters.rooms_scanned.inc();
                if !st.room_cursors.contains_key(&room) && st.charge_cursor(true) {
                    st.room_cursors.insert(room, Default::default());
                }
            }
        }
        rooms.extend(st.room_cursors.keys().cloned());
    }
    rooms.sort_unstable();
    rooms.dedup();
    rooms
        .into_iter()
        .inspect(|_| chat.counters.rooms_scanned.inc())
        .filter_map(|room| {
            let head = chat.log.head(&room);
            let from = st.room_cursors.get(&room).map_or(0, |c| c.delivered);
            (from < head).then_some((room, from))
        })
        .collect()
}

/// The highest QoS and the identifiers of the (non-shared) subscriptions
/// matching `topic`.
fn best_match(
    subscriptions: &std::collections::BTreeMap<String, SessionSubscription>,
    topic: &str,
) -> Option<(QoS, Vec<std::num::NonZeroU32>)> {
    let mut best: Option<QoS> = None;
    let mut ids = Vec::new();
    for (filter, sub) in subscriptions {
        if filter.starts_with("$share/") || !topic_matches(filter, topic) {
            continue;
        }
        best = Some(match best {
            Some(q) if q.value() >= sub.options.qos.value() => q,
            _ => sub.options.qos,
        });
        ids.extend(sub.id);
    }
    best.map(|q| (q, ids))
}
