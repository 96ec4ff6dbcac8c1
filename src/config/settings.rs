//! Every setting, grouped by concern, with its meaning: the reference
//! (`docs/configuration.md` has a row for each). In code the settings are
//! grouped (`config.limits.max_connections`, `config.chat.max_rooms`); in
//! the TOML file, the `ROOMQ_*` variables and the flags their keys are
//! flat (`max_connections`, `max_rooms`), as they have always been
//! (`grouping.rs` says how one listing makes both).

use std::net::SocketAddr;
use std::path::PathBuf;

use super::grouping::grouped_config;
use super::{
    AclRule, AlertRule, AuthConfig, ClusterConfig, Durability, ListenerConfig, LogFormat, RoomConfig,
    RoomsDefault, StorageKind,
};

grouped_config! {
    /// All settings of one broker. Build one with [`Config::default`] and
    /// change fields (`config.limits.max_connections = 10`), or with
    /// [`Config::load`] from the layered sources. The fields are grouped by
    /// concern; the keys of the file, the `ROOMQ_*` variables and the flags
    /// are not (`max_connections`, not `limits.max_connections`).
    pub struct Config {
        /// TCP address to accept MQTT connections on. Port 0 picks a free port.
        pub listen: SocketAddr,
        /// Directory for durable state.
        pub data_dir: PathBuf,
        /// Seconds between `$SYS/broker/...` updates (0 = off).
        pub sys_interval_secs: u64,
        /// The admin listener (`/metrics`, `/healthz`, `/readyz` over plain
        /// HTTP); unset = off. Keep it on loopback or a private network.
        pub admin_listen: Option<SocketAddr>,
        /// Authentication (`[auth]`).
        pub auth: AuthConfig,
        /// Topic rules for non-chat topics (`[[acl]]`); none = everything allowed.
        pub acl: Vec<AclRule>,
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
        /// Declared rooms and their members (see `topics.md`).
        pub rooms: Vec<RoomConfig>,
        /// Rules that turn plain device topics into room messages.
        pub alerts: Vec<AlertRule>,
        /// Cluster mode on NATS JetStream (`[cluster]`); unset, one node.
        pub cluster: Option<ClusterConfig>,
    }

    /// Where the broker keeps its state and what an acknowledgement
    /// promises about it.
    pub struct StoreConfig in store {
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
    }

    /// The protocol's and the connections' ceilings: packet and topic
    /// sizes, inflight windows and queues, logins, rates per connection and
    /// per address, retained messages, sessions, the admin listener.
    pub struct Limits in limits {
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
        /// Most payload and topic bytes queued for one session (online but
        /// over its inflight window, or offline); further messages are dropped
        /// and counted, like `max_queued_messages`.
        pub max_queued_bytes: usize,
        /// Whether QoS 0 messages are queued for offline persistent sessions.
        pub queue_qos0_messages: bool,
        /// Longest topic name or filter, in bytes.
        pub max_topic_length: usize,
        /// Most levels (`/`-separated parts) in a topic name or filter.
        pub max_topic_levels: usize,
        /// Longest topic filter in a SUBSCRIBE, in bytes (`$share/{group}/`
        /// included); longer ones get 5.0 SUBACK 0x8F / 3.1.1 0x80.
        pub max_filter_length: usize,
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
        /// Password logins waiting for a check from one address; beyond it a
        /// CONNECT from that address is refused at once (5.0 CONNACK 0x89,
        /// 3.1.1 code 3), so one address cannot take `max_pending_logins`.
        pub max_pending_logins_per_ip: usize,
        /// Largest keep-alive a client may use, in seconds (0 = no limit). A 5.0
        /// client asking for more (or for 0) is told this value as Server Keep
        /// Alive; a 3.1.1 client asking for more is accepted, and held to this
        /// value.
        pub max_keepalive_secs: u16,
        /// Largest Session Expiry Interval granted, in seconds (0 = no limit).
        pub max_session_expiry_secs: u32,
        /// Most topic aliases a 5.0 client may set up towards the broker.
        pub topic_alias_maximum: u16,
        /// Bytes of topic names one 5.0 connection may hold as topic aliases
        /// (inbound); an alias that would go over is a protocol error
        /// (DISCONNECT 0x94 Topic Alias invalid).
        pub max_topic_alias_bytes: usize,
        /// Whether retained messages are supported (announced to 5.0 clients).
        pub retain_available: bool,
        /// Most retained messages kept (count); a retained PUBLISH to a new
        /// topic beyond it is delivered but not retained (5.0 PUBACK 0x97).
        pub max_retained_messages: usize,
        /// Most retained payload and topic bytes kept; same answer beyond it.
        pub max_retained_bytes: usize,
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
        /// Outgoing bytes a WebSocket connection may have waiting in its write
        /// buffer (pongs included); a client that does not read is closed.
        pub ws_max_write_buffer_bytes: usize,
        /// Sessions the broker keeps (online and offline): the ceiling behind
        /// `max_sessions_per_user`; a CONNECT that would create a new
        /// persistent session beyond it gets 5.0 CONNACK 0x97 / 3.1.1 code 3.
        pub max_sessions: usize,
        /// Connections the admin listener keeps open at once; more are closed
        /// at accept.
        pub admin_max_connections: usize,
        /// Seconds an admin connection may take to send a request's headers,
        /// and may stay idle between requests.
        pub admin_timeout_secs: u64,
    }

    /// Per-identity bounds (`budget/`, `docs/limits.md`): what one identity
    /// may take of the shared limits. 0 = no bound.
    pub struct PerUserLimits in per_user {
        /// On a broker that does not verify names (no authenticator), whose
        /// budget a client's claimed name is: with `true`, a loopback client's
        /// (the machine's own processes, as load generators and local apps
        /// are) is its name's; any other client's is its address's, so
        /// inventing names buys no budget and claiming another's spends none
        /// of hers. `false`: loopback clients pay per address too.
        pub claimed_names_budget_on_loopback: bool,
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
        /// Room cursors (one per persistent session and room it follows) one
        /// identity's sessions may keep; beyond it a new room gets no cursor
        /// for them: not replayed after a reconnect (its `prev` shows the gap).
        pub max_room_cursors_per_user: usize,
        /// Rooms one identity may open (with its first post); beyond it a post
        /// that would open another gets 0x97. `max_rooms` is the ceiling.
        pub max_rooms_per_user: usize,
        /// Read receipts kept for one identity (one per room it reads).
        pub max_receipts_per_user: usize,
        /// Retained messages one identity may set; `max_retained_messages` is
        /// the ceiling.
        pub max_retained_messages_per_user: usize,
        /// Bytes (topic, payload, properties) of the retained messages one
        /// identity may set; `max_retained_bytes` is the ceiling.
        pub max_retained_bytes_per_user: usize,
        /// Most presence records one account pays for (`Held::PresenceRecords`):
        /// an identity's record is charged to the account its connection pays
        /// from, so an address that invents names pays for all of them.
        pub max_presence_records_per_user: usize,
        /// History requests one identity may make per minute (a burst of this
        /// many, refilled evenly); beyond it no answer, 5.0 PUBACK 0x97 (5.0
        /// has no 0x96 in a PUBACK), 3.1.1 a plain PUBACK.
        pub history_requests_per_minute: u32,
        /// Bytes of room messages one identity may have stored per hour (a
        /// burst of this much, refilled evenly); beyond it 0x97.
        pub room_post_bytes_per_hour: u64,
        /// Changes one identity may make per minute to its place in room
        /// member lists (a SUBSCRIBE, UNSUBSCRIBE or session end that adds or
        /// removes it); beyond it the change is made, but no list is
        /// published for it before the next minute. 0: no bound.
        pub room_member_changes_per_minute: u32,
        /// Names of one budget account an open room's member list shows at
        /// most (where names are claims, one address), so one account cannot
        /// push the others out of the list. 0: no bound.
        pub room_members_listed_per_account: usize,
        /// Distinct emoji one identity may react with on one message; a new
        /// one beyond it gets 0x97, so one identity cannot take all
        /// `max_reaction_emoji` slots from the others.
        pub room_max_reactions_per_user_per_message: usize,
    }

    /// Chat: rooms, their logs and history, typing, de-duplication,
    /// presence, member lists, moderation, reactions, edits and alerts.
    pub struct ChatConfig in chat {
        /// Whether a room not declared in `rooms` is open to everyone or closed.
        pub rooms_default: RoomsDefault,
        /// Least time between two typing events of one sender in one room; the
        /// ones in between are dropped and counted.
        pub typing_min_interval_ms: u64,
        /// Most (room, sender) pairs remembered for `typing_min_interval_ms`;
        /// stale ones are forgotten every minute, and a typing event beyond the
        /// limit is dropped and counted.
        pub typing_max_entries: usize,
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
        /// Most messages kept in one room's log; older ones are removed.
        pub room_max_messages: u64,
        /// Oldest message kept in a room's log, in seconds (0 = no age limit).
        pub room_max_age_secs: u64,
        /// Room messages one identity may post per minute in one room (a burst
        /// of this many, refilled evenly; 0 = no bound, the default: a "slow
        /// mode" is a room's policy, and a gateway posting alerts for many
        /// devices would hit any fixed number). Beyond it 5.0 PUBACK 0x97 (5.0
        /// has no 0x96 in a PUBACK), 3.1.1 no PUBACK; counted.
        pub room_max_messages_per_minute: u32,
        /// Messages in a history answer when the request gives no `limit`.
        pub history_default_limit: usize,
        /// Most messages in one history answer.
        pub history_max_limit: usize,
        /// Most bytes in one history answer (each reply's topic, payload and
        /// properties); an answer that would go over stops early and says so
        /// (`more`, see `topics.md`), holding at least one message. At most
        /// `max_packet_size`.
        pub history_max_bytes: usize,
        /// Room cursors kept in all: the ceiling behind
        /// `max_room_cursors_per_user`.
        pub max_room_cursors: usize,
        /// Read receipts kept in all: the ceiling behind
        /// `max_receipts_per_user`; beyond it a new receipt gets 0x97.
        pub max_receipts: usize,
        /// How long an offline user's retained `$presence/{user}` is kept, in
        /// seconds (0 = forever).
        pub presence_retention_secs: u64,
        /// How long the retained presence of an identity that set its own
        /// presence but holds no persistent session and never used a room is
        /// kept after it goes offline, in seconds (`presence_retention_secs`
        /// for the others; an identity that did neither has no presence).
        pub presence_transient_secs: u64,
        /// Most presence records (identities with a retained `$presence`)
        /// kept; beyond it the longest-offline transient ones go first.
        pub max_presence_records: usize,
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
        /// Longest reaction emoji, in bytes of UTF-8; longer (or empty) 0x99.
        pub max_emoji_bytes: usize,
        /// Devices whose last signed-alert counter is kept (`[[alerts]]` with
        /// `hmac_key_file`); a correctly signed alert from a new device beyond
        /// it is refused (0x97). Only holders of a key can add one.
        pub max_alert_devices: usize,
        /// Devices one signed rule's key may add (a counter each), so one
        /// key holder cannot fill `max_alert_devices`, the ceiling, for the
        /// other rules; a new device beyond it gets 0x97.
        pub max_alert_devices_per_rule: usize,
    }
}
