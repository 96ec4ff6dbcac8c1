//! CONNECT to CONNACK: client id rules, authentication, session claim and
//! takeover, keep-alive, and the limits announced to 5.0 clients.

use std::collections::HashMap;
use std::num::NonZeroU16;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use super::acks::wait_until_durable;
use super::connection::{Close, Connection, Io};
use super::identify::identify;
use super::io::CertName;
use super::registry::ClaimRefused;
use super::Shared;
use super::Will;
use crate::auth::gate::Principal;
use crate::auth::Grant;
use crate::protocol::validate::is_valid_topic_name;
use crate::protocol::{Connect, ConnectAck, ConnectAckReason, DecodeError, Packet, Version};

/// Answers a first packet that could not be decoded, where the protocol
/// has an answer: an unsupported protocol level gets 3.1.1 return code 1, a
/// rejected client id gets "identifier rejected".
pub(crate) async fn refuse_undecodable(io: &mut Io, shared: &Shared, close: Close) {
    shared.metrics.protocol_errors.inc();
    if let Close::ByServer(_, text) = &close {
        tracing::debug!(error = %text, "refusing connection");
    }
    match close {
        Close::ByServer(_, text) if text == DecodeError::InvalidClientId.to_string() => {
            send_connack(io, ConnectAckReason::ClientIdentifierNotValid, false, None);
        }
        Close::ByServer(_, text) if text.starts_with("unsupported protocol level") => {
            // The client spoke a version we do not know: answer in 3.1.1
            // form, which every version can read ([MQTT-3.1.2-2]).
            io.out.extend_from_slice(&[0x20, 0x02, 0x00, 0x01]);
        }
        _ => {}
    }
}

/// Sends the refusing CONNACK and closes.
async fn refuse(io: &mut Io, reason: ConnectAckReason) {
    send_connack(io, reason, false, None);
    io.flush_final().await;
    io.linger().await;
}

fn send_connack(io: &mut Io, reason: ConnectAckReason, present: bool, ack: Option<ConnectAck>) {
    let mut ack = ack.unwrap_or_default();
    ack.reason_code = reason;
    ack.session_present = present && reason == ConnectAckReason::Success;
    io.send(Packet::ConnectAck(Box::new(ack)));
}

/// Why a CONNECT is not accepted.
pub(super) enum Refusal {
    /// A refusing CONNACK with this reason, then close.
    Connack(ConnectAckReason, &'static str),
    /// A protocol violation: close without a CONNACK.
    Close(&'static str),
    /// A refusing CONNACK with this reason, then close; the refusal was
    /// logged where it was decided (a failed login: one line, not two).
    Logged(ConnectAckReason),
}

/// What an accepted CONNECT settled before the CONNACK: who the client
/// is, what it is charged, and the session it claimed.
struct Admitted {
    /// The accepting CONNACK's properties, taken when it is sent.
    ack: Option<ConnectAck>,
    client_id: String,
    grant: Grant,
    principal: Principal,
    /// Whether its presence record lasts (a session that outlives the
    /// connection) rather than being transient.
    presence_lasting: bool,
    /// Whether the client already uses rooms (its session resumes them),
    /// so its presence shows from the start.
    room_user: bool,
    claimed: super::registry::Claimed,
    identity_charge: Option<crate::budget::Charged>,
}

/// Handles CONNECT in four steps: check it, find out who the client is
/// (`identify`), claim its session (`claim_session`), agree on the
/// connection's terms (`negotiate`); then CONNACK. On success returns the
/// connection; on refusal sends the refusing CONNACK (where the protocol
/// has one) and returns `None`.
pub(crate) async fn accept(
    mut io: Io,
    shared: &Arc<Shared>,
    mut connect: Connect,
    over_limit: bool,
    cert_name: CertName,
) -> Option<Connection> {
    let version = io.codec.version()?;
    // Before anything is sent: a packet over the client's Maximum Packet
    // Size is never sent, not even a refusing CONNACK ([MQTT-3.1.2-24]).
    if let Some(max) = connect.max_packet_size {
        io.codec.set_max_outbound(max.get());
    }
    let mut admitted = match admit(&mut io, shared, &mut connect, version, over_limit, cert_name).await {
        Ok(admitted) => admitted,
        Err(refusal) => {
            answer_refusal(&mut io, shared, &connect, refusal).await;
            return None;
        }
    };
    let terms = negotiate(
        shared,
        &admitted.claimed.session,
        &connect,
        &admitted.grant,
        &admitted.principal,
        version,
    )
    .await;
    io.codec.set_max_inbound(shared.config.limits.max_packet_size);
    let present = admitted.claimed.present;
    send_connack(&mut io, ConnectAckReason::Success, present, admitted.ack.take());
    shared.metrics.connected(io.listener).inc();
    shared.metrics.connections_opened.inc();
    tracing::info!(
        client_id = %admitted.client_id,
        username = admitted.principal.username.as_deref().unwrap_or(""),
        peer = %io.peer,
        listener = io.listener.as_str(),
        version = %if version.is_v5() { "5.0" } else { "3.1.1" },
        session_present = present,
        "client connected"
    );
    Some(connection(io, shared, admitted, &connect, version, terms))
}

/// The CONNECT's checks, identification, charge and session claim, in
/// that order; the first refusal ends it.
async fn admit(
    io: &mut Io,
    shared: &Arc<Shared>,
    connect: &mut Connect,
    version: Version,
    over_limit: bool,
    cert_name: CertName,
) -> Result<Admitted, Refusal> {
    check_connect(shared, connect, version, over_limit)?;
    let assigned = connect
        .client_id
        .is_empty()
        .then(|| shared.registry.assign_client_id());
    let ack = connack(shared, connect, assigned.as_deref(), version);
    if connect.max_packet_size.is_some() {
        connack_fits(io, &ack)?;
    }
    let client_id: String = assigned.clone().unwrap_or_else(|| connect.client_id.to_string());
    let (grant, principal) = identify(shared, io.peer, connect, &client_id, cert_name).await?;
    connect.username = principal.username.as_deref().map(Into::into);
    let identity_charge = charge_connection(shared, &principal, &client_id)?;
    // A username alone makes a transient record (`presence_transient_secs`):
    // names are claims on the no-auth default.
    let presence_lasting = connect.session_expiry_interval_secs > 0;
    let room_user = resumes_rooms(shared, &client_id, connect);
    let presence = (presence_lasting, room_user);
    let claimed = claim_session(shared, &client_id, connect, &principal, presence).await?;
    Ok(Admitted {
        ack,
        client_id,
        grant,
        principal,
        presence_lasting,
        room_user,
        claimed,
        identity_charge,
    })
}

/// Answers a refused CONNECT as its refusal says: a logged CONNACK, a
/// CONNACK already logged, or a close without one.
async fn answer_refusal(io: &mut Io, shared: &Shared, connect: &Connect, refusal: Refusal) {
    match refusal {
        Refusal::Connack(reason, why) => {
            // A client that sent no id has none to log yet.
            let client_id = Some(&*connect.client_id).filter(|id| !id.is_empty());
            let code = u8::from(reason);
            tracing::info!(client_id, peer = %io.peer, reason = %format_args!("{code:#04x}"), "connection refused: {why}");
            refuse(io, reason).await;
        }
        Refusal::Logged(reason) => refuse(io, reason).await,
        Refusal::Close(why) => {
            shared.metrics.protocol_errors.inc();
            tracing::info!(peer = %io.peer, "connection closed: {why}");
            io.flush_final().await;
        }
    }
}

/// The accepted connection, with the terms agreed at CONNECT.
fn connection(
    io: Io,
    shared: &Arc<Shared>,
    admitted: Admitted,
    connect: &Connect,
    version: Version,
    terms: Terms,
) -> Connection {
    let limits = &shared.config.limits;
    let Admitted {
        principal,
        presence_lasting,
        room_user,
        claimed,
        identity_charge,
        ..
    } = admitted;
    Connection {
        io,
        shared: shared.clone(),
        session: claimed.session,
        principal,
        agreed: super::connection::Agreed {
            version,
            keep_alive_window: terms.keep_alive_window,
            send_window: terms.send_window,
            client_alias_max: connect.topic_alias_max,
            connect_expiry: connect.session_expiry_interval_secs,
            auth_deadline: terms.auth_deadline,
        },
        tenure: super::connection::Tenure {
            kick: terms.kick,
            identity_charge,
            guard: Some(claimed.guard),
        },
        acks: Default::default(),
        aliases: None,
        rooms: super::connection::RoomUse {
            presence_lasting,
            room_user,
            told_refused_post: false,
        },
        shutdown: shared.shutdown.subscribe(),
        publish_budget: super::rate::PublishBudget::new(
            limits.max_publish_rate,
            limits.max_publish_bytes_rate,
        ),
        delivery_latency: crate::metrics::LocalHistogram::default(),
    }
}

/// The accepting CONNACK's properties (5.0; `None` for 3.x): the limits
/// the broker announces and the terms `keep_alive_terms` sets.
fn connack(
    shared: &Shared,
    connect: &Connect,
    assigned: Option<&str>,
    version: Version,
) -> Option<ConnectAck> {
    let config = &shared.config;
    let terms = keep_alive_terms(config, connect, version);
    (version == Version::V5).then(|| ConnectAck {
        session_expiry_interval_secs: (terms.expiry != connect.session_expiry_interval_secs)
            .then_some(terms.expiry),
        receive_max: NonZeroU16::new(config.limits.receive_maximum).unwrap_or(NonZeroU16::MAX),
        max_packet_size: Some(config.limits.max_packet_size),
        assigned_client_id: assigned.map(Into::into),
        topic_alias_max: config.limits.topic_alias_maximum,
        retain_available: config.limits.retain_available,
        server_keepalive_sec: terms.server_keep_alive,
        ..Default::default()
    })
}

/// A client whose Maximum Packet Size no CONNACK fits in cannot be
/// answered at all: it is closed at once, before it holds a session,
/// rather than left waiting for an answer that never comes.
fn connack_fits(io: &mut Io, ack: &Option<ConnectAck>) -> Result<(), Refusal> {
    let Some(ack) = ack else {
        return Ok(()); // 3.x has no Maximum Packet Size
    };
    let mut scratch = bytes::BytesMut::new();
    let packet = Packet::ConnectAck(Box::new(ack.clone()));
    match io.codec.encode(packet, &mut scratch) {
        Err(crate::protocol::EncodeError::TooLarge) => Err(Refusal::Close(
            "the client's Maximum Packet Size is smaller than the CONNACK",
        )),
        _ => Ok(()),
    }
}

/// What CONNECT asks that needs no identity: the connection limit, the
/// protocol's rules, the will's topic.
fn check_connect(
    shared: &Shared,
    connect: &Connect,
    version: Version,
    over_limit: bool,
) -> Result<(), Refusal> {
    if over_limit {
        return Err(Refusal::Connack(
            ConnectAckReason::ServerBusy,
            "max_connections reached",
        ));
    }
    if version != Version::V5 && connect.username.is_none() && connect.password.is_some() {
        // [MQTT-3.1.2-22]: a protocol violation, so no CONNACK.
        return Err(Refusal::Close("3.1.1 CONNECT with a password but no username"));
    }
    if connect.auth_method.is_some() {
        return Err(Refusal::Connack(
            ConnectAckReason::BadAuthenticationMethod,
            "enhanced authentication not configured",
        ));
    }
    if connect
        .last_will
        .as_ref()
        .is_some_and(|will| !is_valid_topic_name(&will.topic))
    {
        if version != Version::V5 {
            // [MQTT-4.7.3-1], [MQTT-3.1.2-14]: a protocol violation, and
            // 3.1.1 has no return code for it (3, "server unavailable",
            // would blame the server): close without a CONNACK.
            return Err(Refusal::Close("3.1.1 CONNECT with an invalid will topic"));
        }
        shared.metrics.protocol_errors.inc();
        return Err(Refusal::Connack(
            ConnectAckReason::TopicNameInvalid,
            "invalid will topic",
        ));
    }
    Ok(())
}

/// Charges the connection to its account's `max_connections_per_user`:
/// a verified identity's, or, where names are only claimed or there is
/// none, its address's (`Principal::account`), so that inventing names
/// buys no connections. The charge is given back when the returned guard
/// drops, however the connection ends or is refused later. A connection
/// that takes over its client id's connected session replaces one, so it
/// is never refused: the old one gives its place back as it closes.
fn charge_connection(
    shared: &Shared,
    principal: &Principal,
    client_id: &str,
) -> Result<Option<crate::budget::Charged>, Refusal> {
    let account = principal.account.clone();
    let identity = principal.identity.as_deref().unwrap_or("");
    let budgets = &shared.budgets;
    match budgets.charge_held(account.clone(), crate::budget::Held::Connections, 1) {
        Ok(charge) => Ok(Some(charge)),
        Err(_) if shared.registry.get(client_id).is_some_and(|s| s.is_online()) => Ok(Some(
            budgets.charge_held_unchecked(account, crate::budget::Held::Connections, 1),
        )),
        Err(over) => {
            tracing::info!(%client_id, identity, %account, bound = over.bound, "connection refused: {}", over.key);
            Err(Refusal::Connack(
                ConnectAckReason::QuotaExceeded,
                "max_connections_per_user reached",
            ))
        }
    }
}

/// Whether the client resumes a session that holds a subscription to a
/// room filter: such a client uses rooms from its first packet on.
fn resumes_rooms(shared: &Shared, client_id: &str, connect: &Connect) -> bool {
    !connect.clean_start
        && shared.registry.get(client_id).is_some_and(|session| {
            session
                .state
                .lock()
                .subscriptions
                .keys()
                .any(|filter| crate::chat::Filter::read(filter).uses_rooms())
        })
}

/// Takes over or creates the session of `client_id` for `principal`.
/// Presence counts the connection first, so a takeover never shows the
/// user offline in between. Given as (lasting, room user): it is shown
/// only for a client that uses rooms (`room_user`: a session with a room
/// subscription; room activity counts later, see
/// `Connection::joined_a_room`), and outlives the connection for long
/// only for one that matters (`presence_lasting`: a persistent session).
async fn claim_session(
    shared: &Arc<Shared>,
    client_id: &str,
    connect: &Connect,
    principal: &Principal,
    (presence_lasting, room_user): (bool, bool),
) -> Result<super::registry::Claimed, Refusal> {
    if let Some(identity) = &principal.identity {
        shared.chat.presence().connected(
            &shared.router,
            identity,
            &principal.account,
            (presence_lasting, principal.username.is_some(), room_user),
        );
    }
    // Another node serving this client id closes its connection (a
    // takeover, as on one node) and hands its session over.
    {
        let handed = shared.directory.claim(client_id, connect.clean_start).await;
        if let (Some(handed), None) = (handed, shared.registry.get(client_id)) {
            // Its plain messages are this node's to keep now (and the
            // cluster's copy is made again under this node's name).
            shared.directory.adopting(client_id);
            // Each message gets a body id of this node's store.
            let mut counted = 0;
            let mut new_body = || match &shared.store {
                Some(store) => store.new_body_id(),
                None => {
                    counted += 1;
                    counted
                }
            };
            let (loaded, records) = handed.into_loaded(client_id, &mut new_body);
            let mut bodies = HashMap::new();
            for (seq, body, record) in records {
                let message = record.message.clone().into_message();
                if let Some(store) = &shared.store {
                    let _ = message.stored_body.set(body);
                    if let Err(error) = store.put_message(client_id, seq, body, record) {
                        tracing::error!(%client_id, %error, "could not store a message of a session taken over");
                    }
                }
                bodies.insert(body, Arc::new(message));
            }
            super::restore_sessions(shared, vec![loaded], &mut |id| bodies.remove(&id));
        }
    }
    let claimed = shared
        .registry
        .claim(
            shared,
            client_id,
            connect.clean_start,
            connect.session_expiry_interval_secs > 0,
            principal,
        )
        .await;
    if claimed.is_ok() {
        shared.directory.hold_now(client_id).await;
    }
    claimed.map_err(|refusal| {
        if let Some(identity) = &principal.identity {
            shared.chat.presence().disconnected(&shared.router, identity);
        }
        match refusal {
            ClaimRefused::OtherOwner => {
                shared.metrics.acl_denied.inc();
                Refusal::Connack(
                    ConnectAckReason::NotAuthorized,
                    "the client id belongs to another identity's session",
                )
            }
            ClaimRefused::OldConnectionStuck => {
                Refusal::Connack(ConnectAckReason::ServerUnavailable, "session takeover failed")
            }
            ClaimRefused::OverBudget => Refusal::Connack(
                ConnectAckReason::QuotaExceeded,
                "the identity holds max_sessions_per_user sessions",
            ),
            ClaimRefused::Full => Refusal::Connack(
                ConnectAckReason::QuotaExceeded,
                "the broker holds max_sessions sessions",
            ),
        }
    })
}

/// The terms of an accepted connection.
struct Terms {
    keep_alive_window: Option<Duration>,
    send_window: usize,
    kick: Arc<Notify>,
    /// When the login token expires.
    auth_deadline: Option<tokio::time::Instant>,
}

/// Keep-alive and session expiry as the broker's maximums allow them.
struct KeepAliveTerms {
    keep_alive: u16,
    /// The keep-alive the broker imposes (5.0 Server Keep Alive).
    server_keep_alive: Option<u16>,
    /// The Session Expiry Interval in force.
    expiry: u32,
}

fn keep_alive_terms(config: &crate::config::Config, connect: &Connect, version: Version) -> KeepAliveTerms {
    // Keep-alive: 0 means off unless the broker sets a maximum.
    let max_keepalive = config.limits.max_keepalive_secs;
    let mut keep_alive = connect.keep_alive;
    let mut server_keep_alive = None;
    if max_keepalive > 0 && (keep_alive == 0 || keep_alive > max_keepalive) {
        keep_alive = max_keepalive;
        if version.is_v5() {
            server_keep_alive = Some(max_keepalive);
        }
    }
    let expiry = match config.limits.max_session_expiry_secs {
        0 => connect.session_expiry_interval_secs,
        max => connect.session_expiry_interval_secs.min(max),
    };
    KeepAliveTerms {
        keep_alive,
        server_keep_alive,
        expiry,
    }
}

/// Agrees on keep-alive, session expiry and flow control, and sets the
/// session up for this connection (will, replay of the rooms' backlog).
/// The session record is stored before the CONNACK: its Session Present
/// must hold after a crash (a client told it has a session does not
/// subscribe again).
async fn negotiate(
    shared: &Shared,
    session: &Arc<super::Session>,
    connect: &Connect,
    grant: &Grant,
    principal: &Principal,
    version: Version,
) -> Terms {
    let config = &shared.config;
    let KeepAliveTerms {
        keep_alive, expiry, ..
    } = keep_alive_terms(config, connect, version);
    let kick = Arc::new(Notify::new());
    let filters = session.state.lock().subscriptions.keys().cloned().collect();
    super::rooms_ready_for_session(shared, filters).await;
    let session_written = {
        let mut st = session.state.lock();
        st.generation += 1;
        st.kick = Some(kick.clone());
        st.kick_reason = None;
        st.revocable_login = grant.revocable.then(|| principal.username.clone()).flatten();
        st.pending_will = None;
        st.expiry_secs = expiry;
        // Queue what the rooms got while the session was away.
        st.replaying = true;
        st.will = connect.last_will.clone().map(|will| Will {
            delay_secs: will.will_delay_interval_sec.unwrap_or(0),
            will: Box::new(will),
        });
        // Stored now (offline_since = None), so that after a crash the will
        // fires and the expiry restarts from the restart.
        session.save(&st, None)
    };
    if session_written {
        wait_until_durable(shared).await;
    }
    session.set_online(true);
    let client_receive_max = connect.receive_max.map(NonZeroU16::get).unwrap_or(u16::MAX);
    Terms {
        keep_alive_window: (keep_alive > 0).then(|| Duration::from_millis(u64::from(keep_alive) * 1500)),
        send_window: usize::from(client_receive_max.min(config.limits.max_inflight_messages)),
        kick,
        auth_deadline: grant.expires_unix.map(|exp| {
            let left = exp.saturating_sub(crate::store::unix_ms_now() / 1000);
            tokio::time::Instant::now() + Duration::from_secs(left)
        }),
    }
}
