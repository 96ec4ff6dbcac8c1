//! What happens when a connection closes: the will (now, after its delay, or
//! when the session ends), the session expiry timer, and handing shared
//! subscription messages to another member.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use super::route::{gate_check, route_as};
use super::Shared;
use super::{Session, Will};
use crate::protocol::{PublishProperties, QoS};
use crate::router::Message;

/// Marks the session offline after its connection closed and starts what
/// follows: the will (when `will` is set), expiry, shared handover.
pub(crate) fn connection_closed(shared: &Arc<Shared>, session: &Arc<Session>, will: Option<Will>) {
    let (expiry_secs, delay) = {
        let mut st = session.state.lock();
        // `finish` has already taken this connection's will (`st.will`).
        st.kick = None;
        (st.expiry_secs, will.as_ref().map(|w| w.delay_secs).unwrap_or(0))
    };
    go_offline(shared, session, will, delay, expiry_secs);
}

/// Takes a session offline: publishes its will now or after
/// `will_delay_secs` (never later than the session lasts), and ends the
/// session after `expiry_secs` (`u32::MAX`: never) unless a client comes
/// back first. Used when a connection closes and for sessions restored at
/// start-up.
pub(crate) fn go_offline(
    shared: &Arc<Shared>,
    session: &Arc<Session>,
    will: Option<Will>,
    will_delay_secs: u32,
    expiry_secs: u32,
) {
    session.set_online(false);
    let generation = session.state.lock().generation;
    hand_over_shared(shared, session);

    if let Some(will) = will {
        if will_delay_secs == 0 || expiry_secs == 0 {
            // A will whose delay is longer than the session lasts is sent
            // when the session ends ([MQTT-3.1.3-9]): here, now.
            publish_will(shared, session, &will);
        } else {
            let delay = will_delay_secs.min(expiry_secs);
            session.state.lock().pending_will = Some(will);
            let (shared, session) = (shared.clone(), session.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(u64::from(delay))).await;
                let will = {
                    let mut st = session.state.lock();
                    if st.generation != generation || session.is_online() {
                        return;
                    }
                    let will = st.pending_will.take();
                    session.save(&st, Some(crate::store::unix_ms_now()));
                    will
                };
                if let Some(will) = will {
                    publish_will(&shared, &session, &will);
                }
            });
        }
    }
    session.save(&session.state.lock(), Some(crate::store::unix_ms_now()));

    if expiry_secs == 0 {
        end_session(shared, session);
    } else if expiry_secs != u32::MAX {
        let (shared, session) = (shared.clone(), session.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(u64::from(expiry_secs))).await;
            let still_away = session.state.lock().generation == generation && !session.is_online();
            if still_away {
                tracing::debug!(client_id = %session.client_id, "session expired");
                end_session(&shared, &session);
            }
        });
    }
}

/// Ends a session: its subscriptions leave the router, its queue is dropped
/// (shared-subscription messages go to another member), a will still
/// waiting out its delay is sent, and the registry forgets it.
pub(crate) fn end_session(shared: &Arc<Shared>, session: &Arc<Session>) {
    hand_over_shared(shared, session);
    let (subscriptions, pending_will, identity, payer) = {
        let mut st = session.state.lock();
        if st.ended {
            return;
        }
        st.ended = true;
        st.queue.clear();
        st.inflight.clear();
        session.erase();
        let identity = st.owner.as_ref().and_then(|o| o.identity.clone());
        (
            std::mem::take(&mut st.subscriptions),
            st.pending_will.take(),
            identity,
            st.charged_to.clone(),
        )
    };
    for text in subscriptions.keys() {
        let filter = crate::chat::Filter::read(text);
        shared
            .router
            .unsubscribe(&session.subscriber(), text, filter.shared.as_ref());
        // Its end leaves the lists, charged as an UNSUBSCRIBE would be:
        // connecting and leaving is a flap too.
        shared
            .chat
            .unsubscribed(identity.as_deref(), &filter, payer.as_deref());
    }
    shared.registry.remove(shared, session);
    if shared.registry.get(&session.client_id).is_none() {
        shared.directory.release(&session.client_id);
    }
    if let Some(will) = pending_will {
        publish_will(shared, session, &will);
    }
}

/// Ends sessions whose owner's login was revoked (a user removed from the
/// password file by a reload) while no connection served them: the will
/// waiting out its delay is dropped, not sent, and so are the queue and the
/// subscriptions, since their owner can no longer log in to get them.
pub(crate) fn end_revoked(shared: &Arc<Shared>, sessions: Vec<Arc<Session>>) {
    for session in sessions {
        {
            let mut st = session.state.lock();
            st.pending_will = None;
            st.will = None;
        }
        tracing::info!(client_id = %session.client_id, "session ended: its login was revoked");
        end_session(shared, &session);
    }
}

/// Moves QoS 1/2 messages that came through a shared subscription, and that
/// this offline session has not acknowledged, to another group member.
fn hand_over_shared(shared: &Arc<Shared>, session: &Arc<Session>) {
    let moved: Vec<_> = {
        let mut st = session.state.lock();
        let mut moved = Vec::new();
        st.queue.retain(|d| {
            let take = d.shared.is_some() && d.qos != QoS::AtMostOnce;
            if take {
                moved.push(d.clone());
            }
            !take
        });
        st.inflight.retain(|f| {
            // A QoS 2 message whose PUBREC arrived belongs to this client now.
            let take = f.delivery.shared.is_some() && f.stage != super::Stage::Pubcomp;
            if take {
                moved.push(f.delivery.clone());
            }
            !take
        });
        moved
    };
    for mut delivery in moved {
        session.forget_delivery(&delivery);
        delivery.store_seq = None;
        if !shared.router.redeliver_shared(&session.subscriber(), delivery) {
            tracing::debug!(client_id = %session.client_id, "no other shared-subscription member to take over");
        }
    }
}

/// Publishes a will as if its client had sent it now: through the gate
/// (membership or rules may have changed since CONNECT) and the same path
/// as a PUBLISH. A will whose owner's login has been revoked since is not
/// sent: its client could no longer publish anything.
pub(crate) fn publish_will(shared: &Shared, session: &Session, will: &Will) {
    let client_id = &session.client_id;
    let w = &will.will;
    let (principal, revoked) = {
        let st = session.state.lock();
        let revoked = st
            .revocable_login
            .as_deref()
            .is_some_and(|user| shared.auth.revoked(user));
        // A session stored by an older version has no recorded owner: its
        // will is judged as an anonymous client's.
        (st.owner.clone().unwrap_or_default(), revoked)
    };
    if revoked {
        tracing::info!(%client_id, topic = %w.topic, "will not published: the login was revoked");
        return;
    }
    // A will's topic enters here when it fires: classified once.
    let kind = crate::chat::Classified::of(&w.topic);
    if gate_check(shared, &principal, client_id, &w.topic, kind).is_err() {
        tracing::info!(%client_id, topic = %w.topic, "will not published: refused by the access rules");
        return;
    }
    let properties = PublishProperties {
        topic_alias: None,
        correlation_data: w.correlation_data.clone(),
        message_expiry_interval: None,
        content_type: w.content_type.clone(),
        user_properties: w.user_properties.clone(),
        is_utf8_payload: w.is_utf8_payload.unwrap_or(false),
        response_topic: w.response_topic.clone(),
        subscription_ids: Vec::new(),
    };
    let message = Message {
        topic: w.topic.clone(),
        payload: w.message.clone(),
        qos: w.qos,
        retain: w.retain,
        properties: Some(properties),
        expires_at: w
            .message_expiry_interval
            .map(NonZeroU32::get)
            .map(|s| Instant::now() + Duration::from_secs(u64::from(s))),
        publisher: Some(client_id.clone()),
        owner: w.retain.then(|| principal.account.clone()),
        room: None,
        ephemeral: false,
        retain_in_memory: false,
        broker_owned: false,
        received_at: None,
        last_value: false,
        stored_body: std::sync::OnceLock::new(),
    };
    tracing::debug!(%client_id, topic = %w.topic, "publishing will");
    shared.metrics.messages_received[usize::from(message.qos.value())].inc();
    route_as(shared, &principal, client_id, message, kind);
}
