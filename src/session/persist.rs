//! Keeping a persistent session in the store, and rebuilding sessions from
//! the store at start-up.
//!
//! Only sessions that outlive their connection (Session Expiry Interval > 0,
//! or 3.1.1 clean session = 0) are written, and of their messages only QoS
//! 1/2 ones: a QoS 0 message may be lost by definition. A message queued
//! for many sessions is stored once (its `stored_body`), each session's
//! record naming it; a restart reads each body once and the sessions share
//! it again.

use std::collections::HashMap;

use std::num::{NonZeroU16, NonZeroU32};
use std::sync::Arc;

use super::Shared;
use super::{Inflight, Session, SessionState, SessionSubscription, Stage, Will};
use crate::auth::gate::Principal;
use crate::context::HandedOver;
use crate::message::Message;
use crate::protocol::{qos_from, QoS};
use crate::router::Delivery;
use crate::store::{
    LoadedSession, OwnerRecord, QueuedRecord, QueuedRef, SessionRecord, Store, StoreError,
    SubscriptionRecord, WillRecord,
};

/// The owner as stored, with the account the session is charged to
/// (`charged_to`, which stays with the session when its client comes back
/// from elsewhere; the owner's own account until it is charged).
fn owner_record(p: &Principal, charged_to: Option<&Arc<str>>) -> OwnerRecord {
    OwnerRecord {
        username: p.username.as_deref().map(str::to_string),
        identity: p.identity.as_deref().map(str::to_string),
        rooms: p.room_grant.as_ref().map(|rooms| rooms.iter().cloned().collect()),
        account: Some(charged_to.unwrap_or(&p.account).to_string()),
    }
}

fn owner_from_record(r: OwnerRecord) -> Principal {
    Principal {
        // The account it was charged to before the restart: where names
        // are claims, the address's, so that invented names do not each
        // become an account of their own. A record from before the field
        // has only the name.
        account: match r.account {
            Some(account) => Arc::from(account),
            None => crate::budget::account_of(r.identity.as_deref(), None),
        },
        username: r.username.map(Arc::from),
        identity: r.identity.map(Arc::from),
        room_grant: r.rooms.map(|rooms| Arc::new(rooms.into_iter().collect())),
        mod_grant: None,
    }
}

fn log_store_error(client_id: &str, what: &str, e: crate::store::StoreError) {
    match e {
        // After shutdown, timers of offline sessions may still fire.
        crate::store::StoreError::Closed => tracing::debug!(%client_id, "store closed, not written: {what}"),
        e => tracing::error!(%client_id, error = %e, "store write failed: {what}"),
    }
}

impl Session {
    /// The store, when this session's state must be kept.
    fn durable_store(&self, st: &SessionState) -> Option<&Arc<dyn Store>> {
        self.store.as_ref().filter(|_| st.expiry_secs > 0 && !st.ended)
    }

    /// Stores a QoS 1/2 delivery of a persistent session and remembers
    /// where, before it is queued.
    #[inline]
    pub(crate) fn record_delivery(&self, st: &mut SessionState, d: &mut Delivery) {
        // Inline: most deliveries (QoS 0, clean sessions) store nothing.
        if d.qos != QoS::AtMostOnce && self.durable_store(st).is_some() {
            self.store_delivery(st, d);
        }
    }

    /// [`Session::record_delivery`] for a delivery a store keeps.
    fn store_delivery(&self, st: &mut SessionState, d: &mut Delivery) {
        let Some(store) = self.durable_store(st) else {
            return;
        };
        st.next_store_seq += 1;
        let seq = st.next_store_seq;
        // The first session to store this message gives it its body id;
        // the others name the same body (a lost race wastes an id only).
        let body = match d.message.stored_body.get() {
            Some(body) => *body,
            None => {
                let id = store.new_body_id();
                *d.message.stored_body.get_or_init(|| id)
            }
        };
        let mut record = QueuedRecord::from_delivery(d, None, false);
        if d.message.room.is_some() {
            // A shared group's copy of a room message: the room log keeps
            // the body, and a moderator's delete must remove its only
            // copy; the restore reads it from the log again
            // (`Chat::queued_reference`).
            record.message.payload = bytes::Bytes::new();
        }
        match store.put_message(&self.client_id, seq, body, record) {
            Ok(()) => {
                d.store_seq = Some(seq);
                if d.message.room.is_some() {
                    // Queued after the room message's own commit (room
                    // messages are delivered once durable): no later
                    // commit of its publisher covers this record.
                    self.flush_soon();
                }
            }
            Err(e) => log_store_error(&self.client_id, "queued message", e),
        }
    }

    /// Asks the group commit for a flush without waiting for it: for
    /// writes no publisher's commit covers (a shared group's copy of a
    /// committed room message, the removal of an acknowledged message).
    /// Without it they reached the disk only with the next write that
    /// needed a commit, however late, so a SIGKILL in between lost the
    /// copy or brought the acknowledged message back (attacker pass,
    /// 2026-12-07). What stays is the window of one flush.
    fn flush_soon(&self) {
        if let Some(commit) = self.commit.get() {
            commit.ticket();
        }
    }

    /// Records an in-flight QoS 1/2 message's packet id (and QoS 2
    /// progress), so after a restart it is resent with its original packet
    /// id ([MQTT-4.4.0-1]). Written with the next flush; a message
    /// acknowledged before then is never written. Returns whether the
    /// store was written to.
    pub(crate) fn record_inflight(&self, st: &SessionState, f: &Inflight) -> bool {
        if f.delivery.qos == QoS::AtMostOnce {
            return false;
        }
        let (Some(store), Some(seq), Some(&body)) = (
            self.durable_store(st),
            f.delivery.store_seq,
            f.delivery.message.stored_body.get(),
        ) else {
            return false;
        };
        let record =
            || QueuedRecord::from_delivery(&f.delivery, Some(f.packet_id), f.stage == Stage::Pubcomp);
        let written = if f.stage == Stage::Puback {
            store.set_packet_id(&self.client_id, seq, body, f.packet_id.get(), &record)
        } else {
            store.update_message(&self.client_id, seq, body, record())
        };
        if let Err(e) = written {
            log_store_error(&self.client_id, "in-flight message", e);
        }
        true
    }

    /// Removes a delivery's record once it needs no more keeping.
    pub(crate) fn forget_delivery(&self, d: &Delivery) {
        if let (Some(store), Some(seq)) = (self.store.as_ref(), d.store_seq) {
            match store.remove_message(&self.client_id, seq) {
                Ok(()) => self.flush_soon(),
                Err(e) => log_store_error(&self.client_id, "remove message", e),
            }
        }
    }

    /// Adds or removes an incoming QoS 2 packet id awaiting PUBREL; returns
    /// whether the store was written to.
    pub(crate) fn record_incoming_qos2(&self, st: &SessionState, packet_id: NonZeroU16, add: bool) -> bool {
        let Some(store) = self.durable_store(st) else {
            return false;
        };
        let result = if add {
            store.put_incoming_qos2(&self.client_id, packet_id.get())
        } else {
            store.remove_incoming_qos2(&self.client_id, packet_id.get())
        };
        if let Err(e) = result {
            log_store_error(&self.client_id, "incoming QoS 2 id", e);
        }
        true
    }

    /// Writes the session record (subscriptions, expiry, will). `offline_since`
    /// is set when the connection has just closed. Returns whether the store
    /// was written to (the record, or its removal), so that a reply which
    /// promises it (CONNACK, SUBACK, UNSUBACK) can wait for the flush.
    pub(crate) fn save(&self, st: &SessionState, offline_since: Option<u64>) -> bool {
        let Some(store) = &self.store else {
            return false;
        };
        if st.ended {
            return false;
        }
        if st.expiry_secs == 0 {
            // Not persistent (any more): remove what an earlier connection
            // may have stored; a clean session never touches the store.
            if self.stored.swap(false, std::sync::atomic::Ordering::AcqRel) {
                self.remove_record();
                return true;
            }
            return false;
        }
        self.stored.store(true, std::sync::atomic::Ordering::Release);
        let record = session_record(st, offline_since);
        // In a cluster the store also writes it where other nodes read it.
        if let Err(e) = store.put_session(&self.client_id, &record) {
            log_store_error(&self.client_id, "session", e);
        }
        true
    }

    /// Removes the session's record, here and (in a cluster, unless it
    /// moved to another node, which keeps it now) where other nodes read it.
    fn remove_record(&self) {
        if let Some(store) = &self.store {
            let removed = if self.moved_away.load(std::sync::atomic::Ordering::Acquire) {
                store.remove_session_moved_away(&self.client_id)
            } else {
                store.remove_session(&self.client_id)
            };
            if let Err(e) = removed {
                log_store_error(&self.client_id, "remove session", e);
            }
        }
    }

    /// The session as another node of a cluster takes it over: its record,
    /// its unacknowledged plain messages (in flight first, with their
    /// packet ids, then queued) and its QoS 2 ids. Room messages are left
    /// out, but for a shared group's copies: the new node replays them
    /// from the room cursors.
    pub(crate) fn hand_over(&self, st: &SessionState) -> HandedOver {
        let inflight = st.inflight.iter().map(|f| {
            let released = f.stage == Stage::Pubcomp;
            (&f.delivery, Some(f.packet_id), released)
        });
        let queued = st.queue.iter().map(|d| (d, None, false));
        let messages = inflight
            .chain(queued)
            .filter(|(d, _, _)| !super::replay::by_cursor(d) && d.qos != QoS::AtMostOnce)
            .enumerate()
            .map(|(i, (d, packet_id, released))| {
                (i as u64 + 1, QueuedRecord::from_delivery(d, packet_id, released))
            })
            .collect();
        HandedOver {
            record: session_record(st, Some(crate::store::unix_ms_now())),
            messages,
            incoming_qos2: st.incoming_qos2.iter().map(|p| p.get()).collect(),
        }
    }

    /// Removes everything stored for this session.
    pub(crate) fn erase(&self) {
        if self.stored.swap(false, std::sync::atomic::Ordering::AcqRel) {
            self.remove_record();
        }
    }
}

/// The name (no room has it) of the cursor entry that holds when the
/// record was saved: rooms that got messages since may have lost their
/// cursor in a crash (`replay.rs`). Kept among the cursors so the record's
/// format stays as it is.
const SAVED_AT: &str = "";

/// The record of a persistent session as stored (and handed over).
fn session_record(st: &SessionState, offline_since: Option<u64>) -> SessionRecord {
    let will = st.will.as_ref().or(st.pending_will.as_ref()).map(|w| WillRecord {
        will: (*w.will).clone(),
        delay_secs: w.delay_secs,
    });
    SessionRecord {
        expiry_secs: st.expiry_secs,
        subscriptions: st
            .subscriptions
            .iter()
            .map(|(filter, s)| SubscriptionRecord::from_options(filter, &s.options, s.id))
            .collect(),
        will,
        offline_since_unix_ms: offline_since,
        room_cursors: st
            .room_cursors
            .iter()
            .map(|(room, c)| (room.to_string(), c.done))
            .chain([(SAVED_AT.to_string(), crate::store::unix_ms_now())])
            .collect(),
        owner: st
            .owner
            .as_ref()
            .map(|owner| owner_record(owner, st.charged_to.as_ref())),
    }
}

/// Rebuilds the persistent sessions the store holds. A message body is
/// read once, and shared by every session that holds it, as before the
/// restart (one copy per session made 60 sessions and one 15 MiB message
/// take 1.8 GiB of memory).
pub(crate) fn restore_from_store(shared: &Arc<Shared>, store: &Arc<dyn Store>) -> Result<(), StoreError> {
    let loaded = store.load_sessions()?;
    let mut read: HashMap<u64, Option<Arc<Message>>> = HashMap::new();
    let mut body = |id: u64| {
        read.entry(id)
            .or_insert_with(|| match store.load_body(id) {
                Ok(Some(record)) => {
                    let mut message = record.into_message();
                    // The store does not keep the flag: a member list
                    // queued before the restart is still replaced by a
                    // newer one.
                    message.last_value = crate::chat::is_last_value(&message.topic);
                    let _ = message.stored_body.set(id);
                    Some(Arc::new(message))
                }
                Ok(None) => None,
                Err(error) => {
                    tracing::error!(body = id, %error, "cannot read a queued message's body");
                    None
                }
            })
            .clone()
    };
    restore_sessions(shared, loaded, &mut body);
    Ok(())
}

/// Rebuilds persistent sessions (from the store, or handed over by another
/// node of a cluster); `body` gives the message a record names. Each comes
/// back offline, as if its client had just dropped: its will (if it had
/// one) follows after its delay, and its expiry counts on from when it went
/// offline (or from now, after a crash).
pub(crate) fn restore_sessions(
    shared: &Arc<Shared>,
    loaded: Vec<LoadedSession>,
    body: &mut dyn FnMut(u64) -> Option<Arc<Message>>,
) {
    let now_ms = crate::store::unix_ms_now();
    let count = loaded.len();
    for entry in loaded {
        restore_session(shared, entry, now_ms, body);
    }
    if count > 0 {
        tracing::info!(sessions = count, "restored persistent sessions from the store");
    }
}

/// Rebuilds one session: its state and messages, then its charge, its
/// subscriptions, and its going offline.
fn restore_session(
    shared: &Arc<Shared>,
    entry: LoadedSession,
    now_ms: u64,
    body: &mut dyn FnMut(u64) -> Option<Arc<Message>>,
) {
    let LoadedSession {
        client_id,
        record,
        messages,
        incoming_qos2,
    } = entry;
    let session = shared.registry.restore(shared, &client_id);
    shared.directory.hold(&client_id);
    session.stored.store(true, std::sync::atomic::Ordering::Release);
    let elapsed_secs = record
        .offline_since_unix_ms
        .map(|since| (now_ms.saturating_sub(since) / 1000) as u32)
        .unwrap_or(0);
    {
        let mut st = session.state.lock();
        restore_state(&mut st, &record, &messages, &incoming_qos2);
        for (seq, queued) in messages {
            if let Some(message) = restored_delivery(shared, &client_id, seq, queued.body, body) {
                queue_restored(&mut st, seq, message, queued);
            }
        }
    }
    super::registry::charge_restored(shared, &session);
    restore_subscriptions(shared, &session);
    let will = record.will.map(|w| Will {
        will: Box::new(w.will),
        delay_secs: w.delay_secs,
    });
    let expiry_left = if record.expiry_secs == u32::MAX {
        u32::MAX
    } else {
        record.expiry_secs.saturating_sub(elapsed_secs)
    };
    let will_delay_left = will
        .as_ref()
        .map(|w| w.delay_secs.saturating_sub(elapsed_secs))
        .unwrap_or(0);
    super::lifecycle::go_offline(shared, &session, will, will_delay_left, expiry_left);
}

/// Sets what the record keeps of a session's state: expiry, owner, room
/// cursors, subscriptions and the packet ids it holds; not its messages.
fn restore_state(
    st: &mut SessionState,
    record: &SessionRecord,
    messages: &[(u64, QueuedRef)],
    incoming_qos2: &[u16],
) {
    st.expiry_secs = record.expiry_secs;
    st.owner = record.owner.clone().map(owner_from_record);
    // A record without the entry (an older version) started a cursor
    // for every room at SUBSCRIBE: any room without one is new.
    st.rescan_rooms_since = Some(
        record
            .room_cursors
            .iter()
            .find(|(room, _)| room == SAVED_AT)
            .map_or(0, |(_, saved_at)| *saved_at),
    );
    st.room_cursors = record
        .room_cursors
        .iter()
        .filter(|(room, _)| room != SAVED_AT)
        .map(|(room, done)| {
            let cursor = super::replay::RoomCursor {
                delivered: *done,
                done: *done,
            };
            (Arc::from(room.as_str()), cursor)
        })
        .collect();
    st.next_store_seq = messages.iter().map(|(s, _)| *s).max().unwrap_or(0);
    st.incoming_qos2 = incoming_qos2.iter().filter_map(|p| NonZeroU16::new(*p)).collect();
    for sub in &record.subscriptions {
        let (options, id) = sub.options();
        st.subscriptions
            .insert(sub.filter.clone(), SessionSubscription { options, id });
    }
}

/// The message a queued record names, or `None` when it is gone (then its
/// record is removed from the store, and the session keeps the rest).
fn restored_delivery(
    shared: &Shared,
    client_id: &str,
    seq: u64,
    body_id: u64,
    body: &mut dyn FnMut(u64) -> Option<Arc<Message>>,
) -> Option<Arc<Message>> {
    let forget = || {
        if let Some(store) = &shared.store {
            let _ = store.remove_message(client_id, seq);
        }
    };
    let Some(message) = body(body_id) else {
        // Not expected (a body goes after its last record);
        // the record is dropped rather than the session.
        tracing::error!(%client_id, seq, "a queued message's body is missing; dropped");
        forget();
        return None;
    };
    // A room message (a shared group's copy) is stored without
    // its body: read again from the room log.
    match shared.chat.queued_reference(&message) {
        None => Some(message),
        Some(Some(current)) => Some(Arc::new(current)),
        Some(None) => {
            tracing::info!(%client_id, seq, "a queued room message is no longer in its room log; dropped");
            forget();
            None
        }
    }
}

/// Puts a restored message back where it was: in flight at the stage it
/// had reached when it had a packet id, queued otherwise.
fn queue_restored(st: &mut SessionState, seq: u64, message: Arc<Message>, queued: QueuedRef) {
    let delivery = Delivery {
        message,
        qos: qos_from(queued.qos),
        retain: queued.retain,
        subscription_ids: queued
            .subscription_ids
            .into_iter()
            .filter_map(NonZeroU32::new)
            .collect(),
        shared: None,
        store_seq: Some(seq),
    };
    match queued.packet_id.and_then(NonZeroU16::new) {
        Some(packet_id) => {
            let stage = match (delivery.qos, queued.released) {
                (QoS::AtLeastOnce, _) => Stage::Puback,
                (_, true) => Stage::Pubcomp,
                (_, false) => Stage::Pubrec,
            };
            st.push_in_flight(Inflight {
                packet_id,
                delivery,
                stage,
            });
        }
        None => st.queue.push_back(delivery),
    }
}

/// Puts a restored session's subscriptions back in the router and its
/// owner in the rooms they name.
fn restore_subscriptions(shared: &Arc<Shared>, session: &Arc<Session>) {
    let (subscriptions, identity, account) = {
        let st = session.state.lock();
        let identity = st.owner.as_ref().and_then(|o| o.identity.clone());
        let account = st.owner.as_ref().map(|o| o.account.clone());
        (st.subscriptions.clone(), identity, account)
    };
    let account = account.unwrap_or_else(|| crate::budget::account_of(None, None));
    for (text, sub) in subscriptions {
        let filter = crate::chat::Filter::read(&text);
        // Its owner is listed in the rooms it names, also offline.
        shared
            .chat
            .subscribed(identity.as_deref(), &account, &filter, None);
        // Judged by today's rules: they may have changed since.
        let check_read = session.needs_read_check(&session.state.lock(), filter.plain);
        shared.router.restore_subscription(
            &session.subscriber(),
            &text,
            filter.shared.as_ref(),
            sub.options,
            sub.id,
            check_read,
        );
    }
}
