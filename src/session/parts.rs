//! The owned parts of a [`Connection`](super::connection::Connection),
//! grouped by what decides them: the terms CONNECT and CONNACK agreed,
//! what the connection holds while it serves its session, and how far the
//! client has used rooms. Each is set once at CONNECT (`connect.rs`) and
//! read by the packet handlers.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, OwnedMutexGuard};
use tokio::time::Instant;

use crate::protocol::Version;

/// What CONNECT and CONNACK agreed; fixed for the connection's life.
pub(crate) struct Agreed {
    pub version: Version,
    /// 1.5 x the keep-alive in force; `None` when keep-alive is off.
    pub keep_alive_window: Option<Duration>,
    /// Most QoS 1/2 messages in flight to the client (its Receive Maximum,
    /// capped by `max_inflight_messages`).
    pub send_window: usize,
    /// Topic Alias Maximum of the client (0 = none).
    pub client_alias_max: u16,
    /// The client's Session Expiry Interval at CONNECT, for the DISCONNECT
    /// rule [MQTT-3.14.2-2].
    pub connect_expiry: u32,
    /// When the token the client logged in with expires.
    pub auth_deadline: Option<Instant>,
}

/// What the connection holds while it serves its session; given back, in
/// this order, when it ends (`connection.rs`, `finish`).
pub(crate) struct Tenure {
    /// Wakes this connection to close it (a takeover, a revoked login).
    pub kick: Arc<Notify>,
    /// This connection's place in its identity's `max_connections_per_user`
    /// (`None` for a client without an identity); given back before
    /// `guard`, so a takeover finds it given back.
    pub identity_charge: Option<crate::budget::Charged>,
    /// Held while this connection serves the session.
    pub guard: Option<OwnedMutexGuard<()>>,
}

/// How far this client has used rooms.
pub(crate) struct RoomUse {
    /// Whether this client's presence outlives it (see `chat::presence`);
    /// set once it joins a room.
    pub presence_lasting: bool,
    /// Whether this client used a room (its session holds a room
    /// subscription, or it subscribed to or posted in one): only then is
    /// its identity shown in `$presence/`.
    pub room_user: bool,
    /// Whether a refused room post of this 3.1.1 client was logged: its
    /// PUBACK cannot say why, so the log does, once per connection.
    pub told_refused_post: bool,
}
