//! The task that serves one network connection: reads and decodes packets,
//! dispatches them, writes queued messages in batches, enforces keep-alive,
//! and closes with the right reason code.
//!
//! One task does both directions. Each turn of the loop first moves what the
//! session has queued into the write buffer and writes it in one call (many
//! packets per syscall), then waits for whichever comes first: bytes from
//! the client, new deliveries, a takeover, shutdown or the keep-alive
//! deadline.

use std::collections::HashMap;
use std::sync::Arc;

use bytestring::ByteString;
use futures_util::future::Either;
use futures_util::FutureExt;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::Instrument;

use super::acks::wait_durable;
pub(crate) use super::io::Io;
pub use super::io::Stream;
use super::io::WRITE_BATCH;
pub(crate) use super::parts::{Agreed, RoomUse, Tenure};
use super::Shared;
use super::{lifecycle, Kick, Session};
use crate::auth::gate::Principal;
use crate::metrics::CloseReason;
use crate::protocol::{DecodeError, Disconnect, DisconnectReasonCode, Packet};

/// Why a connection ends, which decides the DISCONNECT sent and the will.
#[derive(Debug)]
pub(crate) enum Close {
    /// DISCONNECT with reason 0x00: the will is discarded.
    Normal,
    /// The client went away (socket closed, I/O error, DISCONNECT 0x04):
    /// the will is published.
    Lost(String),
    /// The broker closes the connection: a 5.0 client gets DISCONNECT with
    /// this reason code; the will is published.
    ByServer(DisconnectReasonCode, String),
    /// The broker is shutting down: DISCONNECT 0x8B; no will.
    Shutdown,
    /// The client's login was revoked: DISCONNECT 0x87; no will (it would
    /// be a publish by a client that may no longer publish).
    Revoked,
}

impl From<DecodeError> for Close {
    fn from(e: DecodeError) -> Self {
        Close::ByServer(e.reason_code(), e.to_string())
    }
}

/// The topic aliases of a 5.0 connection.
#[derive(Default)]
pub(crate) struct Aliases {
    /// Topic aliases the client set up (alias to topic).
    pub inbound: HashMap<u16, ByteString>,
    /// Bytes of the topics in `inbound`, bounded by
    /// `max_topic_alias_bytes`: the alias count alone let each connection
    /// hold `topic_alias_maximum` topics of up to `max_topic_length` each.
    pub inbound_bytes: usize,
    /// Topic aliases the broker set up towards the client.
    pub outbound: HashMap<ByteString, u16>,
}

/// A connection that has completed CONNECT/CONNACK.
pub(crate) struct Connection {
    pub io: Io,
    pub shared: Arc<Shared>,
    pub session: Arc<Session>,
    /// Who the client is (`auth/gate.rs`): the username for `%u`, the
    /// identity that is `{sender}`/`{user}` in chat topics and counts in
    /// presence, and a token's room list.
    pub principal: Principal,
    /// Version, keep-alive, windows and deadlines agreed at CONNECT.
    pub agreed: Agreed,
    /// The kick, the session's lock and the connection's charge.
    pub tenure: Tenure,
    /// PUBACK/PUBREC/PUBREL/PUBCOMP (and a persistent session's
    /// SUBACK/UNSUBACK) waiting for the group commit that makes what they
    /// promise durable; sent in arrival order ([MQTT-4.6.0-2]).
    pub acks: super::ack_queue::AckQueue,
    /// Topic aliases, both ways; made when the first one is (most
    /// connections never use one, and every idle connection would carry
    /// two empty maps).
    pub aliases: Option<Box<Aliases>>,
    /// Presence and what was logged about this client's room posts.
    pub rooms: RoomUse,
    pub shutdown: watch::Receiver<bool>,
    /// `max_publish_rate` / `max_publish_bytes_rate`.
    pub publish_budget: super::rate::PublishBudget,
    /// Delivery latencies of the current write batch (`outbox.rs`).
    pub delivery_latency: crate::metrics::LocalHistogram,
}

/// Serves one accepted connection until it closes. `over_limit` is set
/// when the broker already has `max_connections`: the client is then told
/// the server is busy. Not an `async fn`: its arguments would be kept
/// in the task a second time, beside the block's own copies.
pub fn serve(
    stream: Box<dyn Stream>,
    peer: super::io::Peer,
    shared: Arc<Shared>,
    over_limit: bool,
    connect_deadline: Instant,
) -> impl std::future::Future<Output = ()> {
    let span = tracing::info_span!("conn", peer = %peer.addr, client_id = tracing::field::Empty);
    // Boxed, and made here rather than in the task: reading the CONNECT,
    // a refusal's lingering close and what `open` is given live on the
    // heap while they are needed and are freed after, instead of sizing
    // the task that every idle connection keeps.
    let opening = Box::pin(open(stream, peer, shared, over_limit, connect_deadline));
    // Combinators, not an async block: one keeps the connection twice
    // (the local, and the `run` future it moved into).
    opening
        .then(|opened| match opened {
            Some(conn) => {
                tracing::Span::current().record("client_id", &*conn.session.client_id);
                Either::Left(conn.run())
            }
            None => Either::Right(std::future::ready(())),
        })
        .instrument(span)
}

/// Reads the CONNECT and accepts or refuses it: the connection, or `None`
/// when it ended before CONNACK.
async fn open(
    stream: Box<dyn Stream>,
    peer: super::io::Peer,
    shared: Arc<Shared>,
    over_limit: bool,
    connect_deadline: Instant,
) -> Option<Connection> {
    let cert_name = peer.cert_name.clone();
    // Until the client is known, a CONNECT-sized limit: what a pending
    // login holds stays small.
    let config = &shared.config;
    let mut io = Io::new(
        stream,
        &peer,
        config
            .limits
            .max_packet_size
            .min(config.limits.max_connect_packet_size),
        shared.metrics.clone(),
    );
    // A shutdown does not wait for a client that has not logged in.
    let reading = tokio::time::timeout_at(connect_deadline, io.read_packet());
    let Some(first) = shared.unless_shutdown(reading).await else {
        tracing::debug!("shutdown before CONNECT, closing");
        return None;
    };
    let first = match first {
        Err(_) => {
            tracing::debug!("no CONNECT within connect_timeout_secs, closing");
            return None;
        }
        Ok(Err(close)) => {
            super::connect::refuse_undecodable(&mut io, &shared, close).await;
            io.flush_final().await;
            io.linger().await;
            return None;
        }
        Ok(Ok(packet)) => packet,
    };
    let Packet::Connect(connect) = first else {
        tracing::debug!("first packet was not CONNECT, closing");
        return None;
    };
    // Boxed: the handshake's state (the login, the CONNACK being built)
    // is large; a client that never sends CONNECT does not hold it.
    Box::pin(super::connect::accept(
        io, &shared, *connect, over_limit, cert_name,
    ))
    .await
}

impl Connection {
    /// Not an `async fn`: one taking `mut self` keeps the connection in
    /// its task twice (the argument and its mutable binding).
    #[allow(clippy::manual_async_fn)]
    fn run(mut self) -> impl std::future::Future<Output = ()> {
        async move {
            let close = self.event_loop().await;
            match &close {
                Close::Lost(why) => tracing::debug!(%why, "connection lost"),
                other => tracing::debug!(reason = ?other, "connection closing"),
            }
            // Boxed: closing (the final write, the lingering close with its
            // read buffer) happens once; inline, its state would size the
            // task of every idle connection.
            Box::pin(self.finish(close)).await;
        }
    }

    async fn event_loop(&mut self) -> Close {
        if *self.shutdown.borrow() {
            return Close::Shutdown;
        }
        self.resend_inflight();
        let mut deadline = self.agreed.keep_alive_window.map(|w| Instant::now() + w);
        loop {
            if self.session.wants_replay(self.agreed.send_window * 2) {
                self.session.replay_rooms(&self.shared.chat);
            }
            loop {
                let more = self.fill_outbox(WRITE_BATCH);
                if let Err(e) = self.io.flush().await {
                    return Close::Lost(e.to_string());
                }
                if !more {
                    break;
                }
            }
            let commit = self.shared.commit.clone();
            let oldest_ticket = self.acks.oldest_ticket();
            let stall_deadline = self.ack_stall_deadline();
            let read = tokio::select! {
                biased;
                _ = self.shutdown.changed() => return Close::Shutdown,
                _ = wait_durable(commit, oldest_ticket) => {
                    self.send_durable_acks();
                    continue;
                }
                _ = self.tenure.kick.notified() => return self.kicked(),
                r = self.io.read_more() => r,
                _ = self.session.wake.notified() => continue,
                // One timer for every deadline: each timer is part of every
                // idle connection's task.
                _ = sleep_until_opt(earliest(earliest(deadline, self.agreed.auth_deadline), stall_deadline)) => {
                    let now = Instant::now();
                    if self.agreed.auth_deadline.is_some_and(|d| d <= now) {
                        return Close::ByServer(DisconnectReasonCode::MaximumConnectTime, "the login token expired".into());
                    }
                    if deadline.is_some_and(|d| d <= now) {
                        return Close::ByServer(DisconnectReasonCode::KeepAliveTimeout, "keep alive timeout".into());
                    }
                    self.on_ack_stall();
                    continue;
                }
            };
            match read {
                Ok(0) => return Close::Lost("connection closed by client".into()),
                Ok(_) => {}
                Err(e) => return Close::Lost(e.to_string()),
            }
            // Any packet restarts the keep-alive: the clock is read once
            // for everything this read brought.
            let mut packets = false;
            loop {
                // No packet is held across an `.await` of this loop: what
                // is held there is part of every idle connection's task.
                let packet = match self.io.next_packet() {
                    Ok(Some(packet)) => packet,
                    Ok(None) => break,
                    Err(e) => return e.into(),
                };
                if !packets {
                    packets = true;
                    deadline = self.agreed.keep_alive_window.map(|w| Instant::now() + w);
                }
                let close = if self.shared.chat.replicated() {
                    // Boxed: cluster mode only.
                    Box::pin(self.handle_when_rooms_ready(packet)).await
                } else {
                    self.handle(packet)
                };
                if let Some(close) = close {
                    return close;
                }
                if self.acks.has_replies() {
                    // Boxed: only after a persistent session's SUBSCRIBE,
                    // so its state stays out of the task.
                    Box::pin(self.send_replies_when_durable()).await;
                }
            }
            self.queue_acks();
        }
    }

    /// Shows the client's presence, and makes it last, the first time it
    /// uses a room (subscribes to one, or posts in one).
    pub(super) fn joined_a_room(&mut self) {
        if !self.rooms.room_user {
            self.rooms.room_user = true;
            self.rooms.presence_lasting = true;
            if let Some(identity) = &self.principal.identity {
                self.shared.chat.presence().used_rooms(
                    &self.shared.router,
                    identity,
                    &self.principal.account,
                );
            }
        }
    }

    /// Why the broker closes this connection, after a kick.
    fn kicked(&self) -> Close {
        match self.session.state.lock().kick_reason {
            Some(Kick::Revoked) => Close::Revoked,
            _ => Close::ByServer(
                DisconnectReasonCode::SessionTakenOver,
                "session taken over".into(),
            ),
        }
    }

    /// Cluster mode: `handle` once this node follows the rooms the packet
    /// reads. A PUBLISH is classified where it enters, after its topic
    /// alias is resolved (a topic sent as an alias alone names a room
    /// too), and that classification decides which room to catch up with.
    async fn handle_when_rooms_ready(&mut self, packet: Packet) -> Option<Close> {
        match packet {
            Packet::Publish(publish) => {
                let (publish, kind) = match self.enter_publish(*publish) {
                    Ok(entered) => entered,
                    Err(close) => return Some(close),
                };
                super::rooms_ready_for_publish(&self.shared, &publish.topic, kind).await;
                self.on_entered_publish(publish, kind)
            }
            Packet::Subscribe(subscribe) => {
                super::rooms_ready_for_subscribe(&self.shared, &subscribe).await;
                self.handle(Packet::Subscribe(subscribe))
            }
            packet => self.handle(packet),
        }
    }

    /// Dispatches one packet; returns `Some` when the connection must close.
    fn handle(&mut self, packet: Packet) -> Option<Close> {
        match packet {
            Packet::Publish(p) => self.on_publish(*p),
            Packet::PublishAck(ack) => self.on_puback(ack),
            Packet::PublishReceived(ack) => self.on_pubrec(ack),
            Packet::PublishComplete(ack) => self.on_pubcomp(ack),
            Packet::PublishRelease(ack) => self.on_pubrel(ack),
            Packet::Subscribe(s) => self.on_subscribe(s),
            Packet::Unsubscribe(u) => self.on_unsubscribe(u),
            Packet::PingRequest => {
                self.io.send(Packet::PingResponse);
                None
            }
            Packet::Disconnect(d) => Some(self.on_disconnect(d)),
            Packet::Auth(_) => Some(Close::ByServer(
                DisconnectReasonCode::BadAuthenticationMethod,
                "no enhanced authentication method is configured".into(),
            )),
            Packet::Connect(_) => Some(Close::ByServer(
                DisconnectReasonCode::ProtocolError,
                "second CONNECT".into(),
            )),
            other => Some(Close::ByServer(
                DisconnectReasonCode::ProtocolError,
                format!(
                    "packet type {:#x} may not be sent by a client",
                    other.packet_type()
                ),
            )),
        }
    }

    fn on_disconnect(&mut self, d: Disconnect) -> Close {
        if let Some(expiry) = d.session_expiry_interval_secs {
            if self.agreed.connect_expiry == 0 && expiry != 0 {
                return Close::ByServer(
                    DisconnectReasonCode::ProtocolError,
                    "session expiry set on DISCONNECT after 0 at CONNECT".into(),
                );
            }
            let expiry = self.cap_expiry(expiry);
            let mut st = self.session.state.lock();
            st.expiry_secs = expiry;
            if expiry == 0 {
                // No longer persistent: what was stored for it goes.
                self.session.erase();
            }
        }
        if d.reason_code == DisconnectReasonCode::DisconnectWithWillMessage {
            Close::Lost("DISCONNECT with will message".into())
        } else {
            Close::Normal
        }
    }

    /// Applies `max_session_expiry_secs`.
    pub fn cap_expiry(&self, requested: u32) -> u32 {
        match self.shared.config.limits.max_session_expiry_secs {
            0 => requested,
            max => requested.min(max),
        }
    }

    async fn finish(mut self, close: Close) {
        // Acknowledge what was already read and stored before closing.
        if !matches!(close, Close::Lost(_)) {
            self.release_acks().await;
        }
        let (reason, mut publish_will) = match &close {
            Close::Normal => (None, false),
            Close::Lost(_) => (None, true),
            Close::ByServer(code, _) => (Some(*code), true),
            Close::Shutdown => (Some(DisconnectReasonCode::ServerShuttingDown), false),
            Close::Revoked => (Some(DisconnectReasonCode::NotAuthorized), false),
        };
        if let Close::ByServer(DisconnectReasonCode::SessionTakenOver, _) = &close {
            // The same client came back on a new connection: while its
            // session continues, it has not gone away ([MQTT-3.1.4-3]).
            let st = self.session.state.lock();
            let continues = matches!(
                st.kick_reason,
                Some(Kick::TakenOver {
                    session_continues: true
                })
            );
            publish_will = !(continues && st.expiry_secs > 0);
        }
        if let (Some(code), true) = (reason, self.agreed.version.is_v5()) {
            let mut d = Disconnect::new(code);
            if let Close::ByServer(_, text) = &close {
                d.reason_string = Some(text.as_str().into());
            }
            self.io.send(Packet::Disconnect(d));
        }
        if matches!(close, Close::ByServer(..)) {
            self.shared.metrics.protocol_errors.inc();
        }
        self.io.flush_final().await;
        let will = {
            let mut st = self.session.state.lock();
            let will = st.will.take();
            if matches!(close, Close::Shutdown) {
                // Not sent now: kept with the stored session, it fires after
                // the restart as if the client had dropped.
                st.pending_will = will;
                None
            } else if publish_will {
                will
            } else {
                None
            }
        };
        lifecycle::connection_closed(&self.shared, &self.session, will);
        if matches!(close, Close::Revoked) {
            // Its owner can no longer log in to resume it: nothing of it
            // (queue, subscriptions, a stored will) is kept for nobody.
            lifecycle::end_session(&self.shared, &self.session);
        }
        if let Some(identity) = &self.principal.identity {
            self.shared
                .chat
                .presence()
                .disconnected(&self.shared.router, identity);
        }
        self.shared.metrics.connected(self.io.listener).dec();
        let reason = close_reason(&close);
        self.shared.metrics.closed(reason).inc();
        tracing::info!(
            client_id = %self.session.client_id,
            username = self.principal.username.as_deref().unwrap_or(""),
            peer = %self.io.peer,
            reason = reason.as_str(),
            "client disconnected"
        );
        drop(self.tenure.identity_charge.take());
        drop(self.tenure.guard.take());
        if matches!(close, Close::ByServer(..) | Close::Revoked) {
            self.io.linger().await;
        }
    }
}

/// Where a close counts in `roomq_connections_closed{reason}`.
fn close_reason(close: &Close) -> CloseReason {
    match close {
        Close::Normal => CloseReason::Normal,
        Close::Lost(_) => CloseReason::Lost,
        Close::ByServer(DisconnectReasonCode::KeepAliveTimeout, _) => CloseReason::Keepalive,
        Close::ByServer(DisconnectReasonCode::SessionTakenOver, _) => CloseReason::TakenOver,
        Close::ByServer(
            DisconnectReasonCode::MalformedPacket
            | DisconnectReasonCode::ProtocolError
            | DisconnectReasonCode::TopicNameInvalid
            | DisconnectReasonCode::TopicFilterInvalid
            | DisconnectReasonCode::PacketTooLarge
            | DisconnectReasonCode::TopicAliasInvalid
            | DisconnectReasonCode::ReceiveMaximumExceeded,
            _,
        ) => CloseReason::ProtocolError,
        Close::ByServer(..) => CloseReason::Server,
        Close::Revoked => CloseReason::Revoked,
        Close::Shutdown => CloseReason::Shutdown,
    }
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future a function returns, without calling it.
    fn future_size<A, B, C, D, E, F: std::future::Future>(_: impl FnOnce(A, B, C, D, E) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every idle connection keeps its task's future and its session:
    /// what is held across an `.await` of the connection task, or sits in
    /// `Session`, costs that much per connection. The bounds are those of
    /// the test (unoptimised) build, with some room; the task's future was
    /// 5,696 bytes here before it was trimmed (release: `loadgen conns`).
    #[test]
    fn an_idle_connection_task_and_session_stay_small() {
        let task = future_size(serve);
        let session = std::mem::size_of::<Session>();
        println!("connection task future: {task} bytes, Session: {session} bytes");
        // 1,360 when the read buffer became 64 bytes of the task.
        assert!(task <= 1_408, "the connection task's future is {task} bytes");
        // 608 when the guard was written; the per-identity queue account
        // (`max_queued_bytes_per_user`) added 64; the state's maps as
        // B-trees took 72 off (600).
        assert!(session <= 608, "a Session is {session} bytes");
    }
}
