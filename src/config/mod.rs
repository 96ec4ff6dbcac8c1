//! Broker configuration and its layers: built-in defaults < TOML file <
//! `ROOMQ_*` environment variables < command-line flags.
//!
//! Every limit the broker enforces is a field here, with its default and
//! meaning; `docs/configuration.md` lists every field (`tests/budgets.rs`
//! checks that none is missing).

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

mod cluster;
mod defaults;
mod layers;
mod listener;
pub use cluster::ClusterConfig;
pub use listener::{ListenerConfig, ListenerKind};

/// What a rule allows.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    Read,
    Write,
    ReadWrite,
    /// Neither: refuses what the rule matches, for both directions.
    Deny,
}

/// One `[[acl]]` rule (how rules combine: `auth/acl.rs`).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AclRule {
    /// A topic filter; `%u` and `%c` are replaced by the client's username
    /// and client id (a rule with `%u` never matches a client without one).
    pub topic: String,
    pub access: Access,
}

/// Where the broker keeps its state.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    /// Everything in memory: lost when the process ends.
    Memory,
    /// sled in `data_dir`: sessions, their unacknowledged messages and
    /// retained messages survive a restart and a crash.
    Sled,
}

/// How the `roomq` binary writes its log lines (stderr).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, with the event's fields (client id,
    /// username, peer; room, `seq`, msg-id) as keys.
    Json,
}

/// What an acknowledgement (PUBACK, PUBREC) of a QoS 1/2 message promises.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Acknowledged = flushed to disk (group commit): survives a crash of
    /// the process (SIGKILL). sled flushes with `sync_file_range`, so a power
    /// loss may still lose the last writes.
    Flush,
    /// Acknowledged = written to the store's memory; flushed every
    /// `flush_interval_ms`. A crash loses up to that much.
    Buffered,
}

/// All settings of one broker. Build one with [`Config::default`] and change
/// fields, or with [`Config::load`] from the layered sources.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// TCP address to accept MQTT connections on. Port 0 picks a free port.
    pub listen: SocketAddr,
    /// Directory for durable state.
    pub data_dir: PathBuf,
    /// Which store to use.
    pub storage: StorageKind,
    /// What a PUBACK promises with `storage = "sled"`.
    pub durability: Durability,
    /// With `durability = "buffered"`: milliseconds between flushes.
    pub flush_interval_ms: u64,
    /// With `durability = "flush"`, under concurrent load: microseconds a
    /// group commit waits for more writes before it flushes. More messages
    /// per flush cost less CPU; a lone client is never delayed. 0 turns it off.
    pub commit_delay_us: u64,
    /// With `durability = "flush"`, when the store cannot write (a full
    /// disk): milliseconds an acknowledgement waits for it before the
    /// publish is refused (5.0 PUBACK/PUBREC 0x97 Quota exceeded; 3.1.1 no
    /// PUBACK, the connection stays open). Also bounds how long a SUBACK or
    /// CONNACK, and a shutdown, wait for a failing store.
    pub store_stall_timeout_ms: u64,
    /// With a store on disk: below this many free bytes on the data
    /// directory's file system, publishes that need the store are refused
    /// (sled cannot recover from a write that hit a full disk). 0 turns the
    /// check off (the reserve file, `disk_reserve_bytes`, still counts).
    pub min_free_disk_bytes: u64,
    /// With a store on disk: a file of this many bytes (really allocated)
    /// kept in the data directory while the disk has room, and given back
    /// the moment the store refuses writes (free space below
    /// `min_free_disk_bytes`, or a failed write), so that what sled still
    /// writes finds room; made again when space returns. 0: none.
    pub disk_reserve_bytes: u64,
    /// With sled: bytes of its page cache, at least 1 MiB (sled's own
    /// default, 1 GiB, lets reads of old history grow the process to it).
    pub store_cache_bytes: u64,
    /// Most client connections open at once; further ones are refused
    /// (5.0 CONNACK 0x89 Server busy, 3.1.1 return code 3).
    pub max_connections: usize,
    /// Largest packet accepted from a client, in bytes (remaining length);
    /// a larger one closes the connection (5.0: DISCONNECT 0x95).
    /// Announced to 5.0 clients as Maximum Packet Size.
    pub max_packet_size: u32,
    /// Most QoS 1/2 messages in flight to one client at once (unacknowledged).
    /// A 5.0 client's own Receive Maximum lowers it further.
    pub max_inflight_messages: u16,
    /// Receive Maximum announced to 5.0 clients: most unacknowledged QoS 1/2
    /// messages a client may send at once; going over it is answered with
    /// DISCONNECT 0x93.
    pub receive_maximum: u16,
    /// Most messages queued for one session (online but over its inflight
    /// window, or offline). When full, further messages for that session
    /// are dropped and counted (`messages_dropped`), and logged.
    pub max_queued_messages: usize,
    /// Whether QoS 0 messages are queued for offline persistent sessions.
    pub queue_qos0_messages: bool,
    /// Longest topic name or filter, in bytes.
    pub max_topic_length: usize,
    /// Most levels (`/`-separated parts) in a topic name or filter.
    pub max_topic_levels: usize,
    /// Seconds a new socket may take, from accept, to finish its TLS and
    /// WebSocket handshakes and send CONNECT; then it is closed.
    pub connect_timeout_secs: u64,
    /// Largest CONNECT accepted, in bytes (it is held while the login is
    /// checked, before the client is known); larger ones close the socket.
    pub max_connect_packet_size: u32,
    /// Password checks (argon2 hashes, ~19 MiB and ~30 ms of CPU each) run
    /// at once; further logins wait in a queue.
    pub max_concurrent_logins: usize,
    /// Logins waiting for a password check; beyond this a CONNECT is
    /// refused at once (5.0 CONNACK 0x89 Server busy, 3.1.1 code 3).
    pub max_pending_logins: usize,
    /// Largest keep-alive a client may use, in seconds (0 = no limit). A 5.0
    /// client asking for more (or for 0) is told this value as Server Keep
    /// Alive; a 3.1.1 client asking for more is accepted, and held to this
    /// value.
    pub max_keepalive_secs: u16,
    /// Largest Session Expiry Interval granted, in seconds (0 = no limit).
    pub max_session_expiry_secs: u32,
    /// Most topic aliases a 5.0 client may set up towards the broker.
    pub topic_alias_maximum: u16,
    /// Whether retained messages are supported (announced to 5.0 clients).
    pub retain_available: bool,
    /// Seconds between `$SYS/broker/...` updates (0 = off).
    pub sys_interval_secs: u64,
    /// The admin listener (`/metrics`, `/healthz`, `/readyz` over plain
    /// HTTP); unset = off. Keep it on loopback or a private network.
    pub admin_listen: Option<SocketAddr>,
    /// Authentication (`[auth]`).
    pub auth: AuthConfig,
    /// Topic rules for non-chat topics (`[[acl]]`); none = everything allowed.
    pub acl: Vec<AclRule>,
    /// Most PUBLISH packets per second from one connection (0 = no limit);
    /// over it: 5.0 DISCONNECT 0x96 Message rate too high, else close.
    pub max_publish_rate: u32,
    /// Most PUBLISH payload bytes per second from one connection (0 = no
    /// limit); same answer.
    pub max_publish_bytes_rate: u64,
    /// Most connections open at once from one IP address (0 = no limit).
    pub max_connections_per_ip: usize,
    /// Most new connections per second from one IP address (0 = no limit).
    pub max_connection_rate_per_ip: u32,
    /// Most subscriptions one session may hold (0 = no limit); further ones
    /// get 5.0 SUBACK 0x97 Quota exceeded / 3.1.1 0x80.
    pub max_subscriptions_per_session: usize,
    /// Longest topic filter in a SUBSCRIBE, in bytes (`$share/{group}/`
    /// included); longer ones get 5.0 SUBACK 0x8F / 3.1.1 0x80.
    pub max_filter_length: usize,
    /// Most payload and topic bytes queued for one session (online but
    /// over its inflight window, or offline); further messages are dropped
    /// and counted, like `max_queued_messages`.
    pub max_queued_bytes: usize,
    /// Most retained messages kept (count); a retained PUBLISH to a new
    /// topic beyond it is delivered but not retained (5.0 PUBACK 0x97).
    pub max_retained_messages: usize,
    /// Most retained payload and topic bytes kept; same answer beyond it.
    pub max_retained_bytes: usize,
    /// Outgoing bytes a WebSocket connection may have waiting in its write
    /// buffer (pongs included); a client that does not read is closed.
    pub ws_max_write_buffer_bytes: usize,
    /// Threads of the `roomq` binary's runtime (0 = one per CPU core).
    /// Embedders run the broker on their own runtime and ignore it.
    pub worker_threads: usize,
    /// The `roomq` binary's log lines: "text" or "json" (embedders set up
    /// their own `tracing` subscriber).
    pub log_format: LogFormat,
    /// Listeners of every kind. Empty: one TCP listener on `listen`.
    pub listeners: Vec<ListenerConfig>,
    /// The folder whose `node_modules` holds the browser chat's libraries
    /// (MQTT.js, cbor-x), installed there by `npm ci --prefix web`. Read
    /// only by listeners with `web = true`.
    pub web_root: PathBuf,
    /// Whether a room not declared in `rooms` is open to everyone or closed.
    pub rooms_default: RoomsDefault,
    /// Declared rooms and their members (see `topics.md`).
    pub rooms: Vec<RoomConfig>,
    /// Rules that turn plain device topics into room messages.
    pub alerts: Vec<AlertRule>,
    /// Least time between two typing events of one sender in one room; the
    /// ones in between are dropped and counted.
    pub typing_min_interval_ms: u64,
    /// How long a (room, sender, msg-id) is remembered for de-duplication.
    pub dedup_window_secs: u64,
    /// Most de-duplication entries kept; the oldest go first.
    pub dedup_max_entries: usize,
    /// Most bytes of de-duplication keys kept in memory (each key is room,
    /// sender and msg-id); the oldest go first.
    pub dedup_max_bytes: usize,
    /// Longest `msg-id` (topic level or User Property), in bytes; longer
    /// ones are refused with 0x99.
    pub max_msg_id_length: usize,
    /// Longest room name and `{sender}`/`{user}` level in chat topics, in
    /// bytes; longer ones are refused with 0x90.
    pub max_chat_name_length: usize,
    /// Largest room message stored in a room log (payload and User
    /// Properties), in bytes; larger ones are refused with 0x97.
    pub max_room_message_bytes: usize,
    /// Most rooms with a log; a post that would open another is refused
    /// with 0x97 (rooms are opened by their first message).
    pub max_rooms: usize,
    /// Most (room, sender) pairs remembered for `typing_min_interval_ms`;
    /// stale ones are forgotten every minute, and a typing event beyond the
    /// limit is dropped and counted.
    pub typing_max_entries: usize,
    /// How long an offline user's retained `$presence/{user}` is kept, in
    /// seconds (0 = forever).
    pub presence_retention_secs: u64,
    /// Most messages kept in one room's log; older ones are removed.
    pub room_max_messages: u64,
    /// Oldest message kept in a room's log, in seconds (0 = no age limit).
    pub room_max_age_secs: u64,
    /// Messages in a history answer when the request gives no `limit`.
    pub history_default_limit: usize,
    /// Most messages in one history answer.
    pub history_max_limit: usize,
    /// Cluster mode on NATS JetStream (`[cluster]`); unset, one node.
    pub cluster: Option<ClusterConfig>,
    // Per-identity bounds (`budget/`, `docs/limits.md`): what one
    // identity may take of the shared limits above. 0 = no bound.
    /// Connections open at once under one identity (username, or client
    /// id where names are claims); more get 5.0 CONNACK 0x97 / 3.1.1 code 3.
    pub max_connections_per_user: usize,
    /// Persistent sessions (online or offline) one identity may hold;
    /// a CONNECT that would create another gets 5.0 CONNACK 0x97 / 3.1.1
    /// code 3.
    pub max_sessions_per_user: usize,
    /// Bytes of subscriptions one identity may hold over all its sessions
    /// (each filter's bytes three times plus 1024, what it costs in
    /// memory); beyond it that
    /// filter gets 5.0 SUBACK 0x97 / 3.1.1 0x80.
    pub max_subscription_bytes_per_user: usize,
    /// Bytes queued and in flight over all one identity's sessions (the
    /// subscriber's identity); beyond it a message is dropped for that
    /// session, counted and logged as for a full session queue.
    pub max_queued_bytes_per_user: usize,
    /// Sessions the broker keeps (online and offline): the ceiling behind
    /// `max_sessions_per_user`; a CONNECT that would create a new
    /// persistent session beyond it gets 5.0 CONNACK 0x97 / 3.1.1 code 3.
    pub max_sessions: usize,
    /// Room cursors (one per persistent session and room it follows) one
    /// identity's sessions may keep; beyond it a new room gets no cursor
    /// for them: not replayed after a reconnect (its `prev` shows the gap).
    pub max_room_cursors_per_user: usize,
    /// Room cursors kept in all: the ceiling behind
    /// `max_room_cursors_per_user`.
    pub max_room_cursors: usize,
    /// Rooms one identity may open (with its first post); beyond it a post
    /// that would open another gets 0x97. `max_rooms` is the ceiling.
    pub max_rooms_per_user: usize,
    /// Read receipts kept for one identity (one per room it reads).
    pub max_receipts_per_user: usize,
    /// Read receipts kept in all: the ceiling behind
    /// `max_receipts_per_user`; beyond it a new receipt gets 0x97.
    pub max_receipts: usize,
    /// Retained messages one identity may set; `max_retained_messages` is
    /// the ceiling.
    pub max_retained_messages_per_user: usize,
    /// Bytes (topic, payload, properties) of the retained messages one
    /// identity may set; `max_retained_bytes` is the ceiling.
    pub max_retained_bytes_per_user: usize,
    /// History requests one identity may make per minute (a burst of this
    /// many, refilled evenly); beyond it no answer, 5.0 PUBACK 0x97 (5.0
    /// has no 0x96 in a PUBACK), 3.1.1 a plain PUBACK.
    pub history_requests_per_minute: u32,
    /// Bytes of room messages one identity may have stored per hour (a
    /// burst of this much, refilled evenly); beyond it 0x97.
    pub room_post_bytes_per_hour: u64,
    /// Most bytes in one history answer (each reply's topic, payload and
    /// properties); an answer that would go over stops early and says so
    /// (`more`, see `topics.md`), holding at least one message. At most
    /// `max_packet_size`.
    pub history_max_bytes: usize,
    /// Password logins waiting for a check from one address; beyond it a
    /// CONNECT from that address is refused at once (5.0 CONNACK 0x89,
    /// 3.1.1 code 3), so one address cannot take `max_pending_logins`.
    pub max_pending_logins_per_ip: usize,
    /// On a broker that does not verify names (no authenticator), whose
    /// budget a client's claimed name is: with `true`, a loopback client's
    /// (the machine's own processes, as load generators and local apps
    /// are) is its name's; any other client's is its address's, so
    /// inventing names buys no budget and claiming another's spends none
    /// of hers. `false`: loopback clients pay per address too.
    pub claimed_names_budget_on_loopback: bool,
    /// Bytes of topic names one 5.0 connection may hold as topic aliases
    /// (inbound); an alias that would go over is a protocol error
    /// (DISCONNECT 0x94 Topic Alias invalid).
    pub max_topic_alias_bytes: usize,
    /// Connections the admin listener keeps open at once; more are closed
    /// at accept.
    pub admin_max_connections: usize,
    /// Seconds an admin connection may take to send a request's headers,
    /// and may stay idle between requests.
    pub admin_timeout_secs: u64,
    /// How long the retained presence of an identity that set its own
    /// presence but holds no persistent session and never used a room is
    /// kept after it goes offline, in seconds (`presence_retention_secs`
    /// for the others; an identity that did neither has no presence).
    pub presence_transient_secs: u64,
    /// Most presence records (identities with a retained `$presence`)
    /// kept; beyond it the longest-offline transient ones go first.
    pub max_presence_records: usize,
    /// Most presence records one account pays for (`Held::PresenceRecords`):
    /// an identity's record is charged to the account its connection pays
    /// from, so an address that invents names pays for all of them.
    pub max_presence_records_per_user: usize,
    /// Most identities an open room's `$rooms/{room}/members` lists (the
    /// first ones in sorted order; the list is cut beyond it). 0: open
    /// rooms publish no list.
    pub room_members_listed: usize,
    /// Least time between two publications of one room's member list, in
    /// milliseconds: a flood of SUBSCRIBE and UNSUBSCRIBE costs one
    /// publication per room per interval, not one per packet.
    pub room_members_interval_ms: u64,
    /// Most bytes of one room's member list published per second: after a
    /// list of N bytes the room's next list waits at least N / this many
    /// seconds (and `room_members_interval_ms`), so what the list costs
    /// each reader is bounded whatever one identity does. 0: no bound.
    pub room_members_bytes_per_sec: u64,
    /// Changes one identity may make per minute to its place in room
    /// member lists (a SUBSCRIBE, UNSUBSCRIBE or session end that adds or
    /// removes it); beyond it the change is made, but no list is
    /// published for it before the next minute. 0: no bound.
    pub room_member_changes_per_minute: u32,
    /// Names of one budget account an open room's member list shows at
    /// most (where names are claims, one address), so one account cannot
    /// push the others out of the list. 0: no bound.
    pub room_members_listed_per_account: usize,
    /// Bans and mutes one room may hold at once (moderators grow it with
    /// `$rooms/{room}/mod`); a request beyond it is answered `ok: false`.
    pub max_bans_per_room: usize,
    /// Distinct emoji one room message may hold reactions with; a new
    /// one beyond it gets 0x97.
    pub max_reaction_emoji: usize,
    /// Reactions one room message may hold in all (each a reactor's name
    /// in its record); one beyond it gets 0x97.
    pub max_reactions_per_message: usize,
    /// Edits one room message may take; one beyond it gets 0x97. Each
    /// edit is a log entry the message's record lists, and a delete
    /// empties every one of them, so this bounds what one delete does.
    pub room_max_edits_per_message: usize,
    /// Reaction keys removed per step when their messages are gone
    /// (trimmed, aged out, deleted, their room forgotten): the reactions
    /// are removed in the background, this many keys per store batch, so
    /// removing many crowded messages never holds other rooms' commits
    /// (nor memory) for longer than one chunk. At least 1.
    pub reaction_purge_chunk: usize,
    /// Distinct emoji one identity may react with on one message; a new
    /// one beyond it gets 0x97, so one identity cannot take all
    /// `max_reaction_emoji` slots from the others.
    pub room_max_reactions_per_user_per_message: usize,
    /// Longest reaction emoji, in bytes of UTF-8; longer (or empty) 0x99.
    pub max_emoji_bytes: usize,
    /// Room messages one identity may post per minute in one room (a burst
    /// of this many, refilled evenly; 0 = no bound, the default: a "slow
    /// mode" is a room's policy, and a gateway posting alerts for many
    /// devices would hit any fixed number). Beyond it 5.0 PUBACK 0x97 (5.0
    /// has no 0x96 in a PUBACK), 3.1.1 no PUBACK; counted.
    pub room_max_messages_per_minute: u32,
    /// Devices whose last signed-alert counter is kept (`[[alerts]]` with
    /// `hmac_key_file`); a correctly signed alert from a new device beyond
    /// it is refused (0x97). Only holders of a key can add one.
    pub max_alert_devices: usize,
    /// Devices one signed rule's key may add (a counter each), so one
    /// key holder cannot fill `max_alert_devices`, the ceiling, for the
    /// other rules; a new device beyond it gets 0x97.
    pub max_alert_devices_per_rule: usize,
}

/// The `[auth]` section.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Whether clients without credentials may connect. Unset: yes when
    /// every listener is on a loopback address, no otherwise.
    pub allow_anonymous: Option<bool>,
    /// argon2id password file, managed with `roomq passwd FILE USER`;
    /// reloaded on SIGHUP.
    pub password_file: Option<PathBuf>,
    /// HS256 secret for JWT bearer tokens passed as the password.
    pub jwt_secret: Option<String>,
    /// PEM public key (RSA or EC) for RS256/ES256 tokens.
    pub jwt_public_key: Option<PathBuf>,
    /// Token claim listing the rooms the user may join.
    pub jwt_rooms_claim: String,
    /// Token claim listing the rooms the user moderates (and so may join).
    pub jwt_moderators_claim: String,
    /// When set, a token's `aud` must contain this value; unset, `aud` is
    /// not checked.
    pub jwt_audience: Option<String>,
    /// When set, a token's `iss` must be this value.
    pub jwt_issuer: Option<String>,
    /// Longest wait before refusing a login from an address that failed
    /// many times (the back-off doubles from 100 ms after 3 failures).
    pub login_backoff_max_ms: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            allow_anonymous: None,
            password_file: None,
            jwt_secret: None,
            jwt_public_key: None,
            jwt_rooms_claim: "rooms".into(),
            jwt_moderators_claim: "mod_rooms".into(),
            jwt_audience: None,
            jwt_issuer: None,
            login_backoff_max_ms: 5000,
        }
    }
}

/// Who may use a room that the configuration does not declare.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RoomsDefault {
    /// Anyone may join (the default, for anonymous local use).
    Open,
    /// Nobody may.
    Closed,
}

/// One declared room.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RoomConfig {
    pub name: String,
    /// Identities (usernames, or client ids without a username) that may
    /// join.
    #[serde(default)]
    pub members: Vec<String>,
    /// Whether anyone may join, members or not.
    #[serde(default)]
    pub open: bool,
    /// Identities that may ban and mute in the room (`$rooms/{room}/mod`);
    /// they are members too.
    #[serde(default)]
    pub moderators: Vec<String>,
}

/// Messages published to `topic` (a filter, `+` and `#` allowed) also go
/// into `room` as chat messages. The sender of the room copy is the level
/// matched by the first `+` (else the publisher's identity), and it must be
/// the publisher's own identity, unless the publisher is listed in
/// `publishers` (a gateway that speaks for many devices). Either way the
/// publisher must be allowed to post in `room`; a publish whose room copy
/// is refused is refused whole (5.0 PUBACK 0x87).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AlertRule {
    pub topic: String,
    pub room: String,
    /// Identities that may post copies under any sender name.
    #[serde(default)]
    pub publishers: Vec<String>,
    /// A file with an HMAC-SHA256 key (hex, 16 to 64 bytes): the rule then
    /// takes only alerts signed with it (`topics.md`, *Signed alerts*).
    /// Read at start (a bad file stops start-up) and on SIGHUP.
    #[serde(default)]
    pub hmac_key_file: Option<PathBuf>,
}

/// A configuration that could not be loaded; the message names the file,
/// the key and the reason.
#[derive(Debug, thiserror::Error)]
#[error("configuration error{}: {message}", file.as_ref().map(|f| format!(" in {}", f.display())).unwrap_or_default())]
pub struct ConfigError {
    pub file: Option<PathBuf>,
    pub message: String,
}

impl Config {
    /// `auth.allow_anonymous`, or (unset) whether every listener is on a
    /// loopback address.
    pub fn effective_allow_anonymous(&self) -> bool {
        self.auth.allow_anonymous.unwrap_or_else(|| {
            self.effective_listeners()
                .iter()
                .all(|l| l.bind.ip().is_loopback())
        })
    }

    /// Whether some listener takes usernames from client certificates
    /// (`use_identity_as_username`): those names are then verified, and
    /// no other listener may hand them out as claims.
    pub fn certificate_names_used(&self) -> bool {
        self.listeners.iter().any(|l| l.use_identity_as_username)
    }

    /// The listeners to open: `listeners`, or one TCP listener on `listen`.
    pub fn effective_listeners(&self) -> Vec<ListenerConfig> {
        if self.listeners.is_empty() {
            vec![ListenerConfig::tcp(self.listen)]
        } else {
            self.listeners.clone()
        }
    }

    /// Rejects values that cannot work, naming the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_inflight_messages == 0 {
            return Err("key `max_inflight_messages`: must be at least 1".into());
        }
        if self.receive_maximum == 0 {
            return Err("key `receive_maximum`: must be at least 1".into());
        }
        if self.max_packet_size < 64 {
            return Err("key `max_packet_size`: must be at least 64 bytes".into());
        }
        if self.max_topic_levels == 0 || self.max_topic_length == 0 {
            return Err("keys `max_topic_levels` and `max_topic_length` must be at least 1".into());
        }
        for (i, listener) in self.listeners.iter().enumerate() {
            listener.validate(i)?;
        }
        for room in &self.rooms {
            if !crate::protocol::validate::is_valid_room_name(&room.name) {
                return Err(format!(
                    "key `rooms`: room name {:?} must be one non-empty topic level without `+`, `#` or `/`",
                    room.name
                ));
            }
        }
        for rule in &self.alerts {
            if !crate::protocol::validate::is_valid_topic_filter(&rule.topic) {
                return Err(format!(
                    "key `alerts`: topic {:?} is not a valid topic filter",
                    rule.topic
                ));
            }
            if !crate::protocol::validate::is_valid_room_name(&rule.room) {
                return Err(format!(
                    "key `alerts`: room name {:?} is not a valid room name",
                    rule.room
                ));
            }
        }
        if self.max_concurrent_logins == 0 {
            return Err("key `max_concurrent_logins`: must be at least 1".into());
        }
        if self.max_bans_per_room == 0 {
            return Err("key `max_bans_per_room`: must be at least 1".into());
        }
        if self.admin_max_connections == 0 || self.admin_timeout_secs == 0 {
            return Err("keys `admin_max_connections` and `admin_timeout_secs` must be at least 1".into());
        }
        if self.max_connect_packet_size < 64 {
            return Err("key `max_connect_packet_size`: must be at least 64 bytes".into());
        }
        if self.room_max_messages == 0 || self.history_max_limit == 0 {
            return Err("keys `room_max_messages` and `history_max_limit` must be at least 1".into());
        }
        if let Some(cluster) = &self.cluster {
            cluster.validate()?;
        }
        Ok(())
    }
}
