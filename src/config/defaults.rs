//! The built-in defaults of every setting: the first layer, under the
//! TOML file, the environment and the flags.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::settings::FlatConfig;
use super::*;

/// The defaults are written once, as the file's keys; the grouped
/// [`Config`] sorts them.
impl Default for Config {
    fn default() -> Self {
        FlatConfig::default().into()
    }
}

impl Default for FlatConfig {
    fn default() -> Self {
        FlatConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 1883)),
            data_dir: PathBuf::from("./data"),
            storage: StorageKind::Sled,
            durability: Durability::Flush,
            flush_interval_ms: 100,
            commit_delay_us: 1000,
            store_stall_timeout_ms: 5000,
            min_free_disk_bytes: 64 * 1024 * 1024,
            disk_reserve_bytes: 16 * 1024 * 1024,
            // As `store::DEFAULT_CACHE_BYTES` (config sits below store).
            store_cache_bytes: 64 * 1024 * 1024,
            max_connections: 100_000,
            max_packet_size: 16 * 1024 * 1024,
            max_inflight_messages: 128,
            receive_maximum: 1024,
            max_queued_messages: 10_000,
            queue_qos0_messages: false,
            max_topic_length: 65_535,
            max_topic_levels: 128,
            connect_timeout_secs: 10,
            max_connect_packet_size: 64 * 1024,
            max_concurrent_logins: 2,
            max_pending_logins: 64,
            max_keepalive_secs: 0,
            max_session_expiry_secs: 0,
            topic_alias_maximum: 64,
            retain_available: true,
            sys_interval_secs: 10,
            admin_listen: None,
            auth: AuthConfig::default(),
            acl: Vec::new(),
            max_publish_rate: 0,
            max_publish_bytes_rate: 0,
            max_connections_per_ip: 0,
            max_connection_rate_per_ip: 0,
            max_subscriptions_per_session: 1000,
            max_filter_length: 1024,
            max_queued_bytes: 16 * 1024 * 1024,
            max_retained_messages: 100_000,
            max_retained_bytes: 256 * 1024 * 1024,
            ws_max_write_buffer_bytes: 1024 * 1024,
            worker_threads: 0,
            log_format: LogFormat::Text,
            listeners: Vec::new(),
            web_root: PathBuf::from("web"),
            rooms_default: RoomsDefault::Open,
            rooms: Vec::new(),
            alerts: Vec::new(),
            typing_min_interval_ms: 1000,
            dedup_window_secs: 24 * 3600,
            dedup_max_entries: 1_000_000,
            dedup_max_bytes: 64 * 1024 * 1024,
            max_msg_id_length: 128,
            max_chat_name_length: 128,
            max_room_message_bytes: 256 * 1024,
            max_rooms: 100_000,
            typing_max_entries: 100_000,
            presence_retention_secs: 7 * 24 * 3600,
            room_max_messages: 100_000,
            room_max_age_secs: 30 * 24 * 3600,
            history_default_limit: 50,
            history_max_limit: 500,
            cluster: None,
            max_connections_per_user: 1000,
            max_sessions_per_user: 1000,
            max_subscription_bytes_per_user: 4 * 1024 * 1024,
            max_queued_bytes_per_user: 64 * 1024 * 1024,
            max_sessions: 100_000,
            max_room_cursors_per_user: 100_000,
            max_room_cursors: 10_000_000,
            max_rooms_per_user: 1000,
            max_receipts_per_user: 10_000,
            max_receipts: 1_000_000,
            max_retained_messages_per_user: 10_000,
            max_retained_bytes_per_user: 32 * 1024 * 1024,
            history_requests_per_minute: 120,
            room_post_bytes_per_hour: 256 * 1024 * 1024,
            history_max_bytes: 1024 * 1024,
            max_pending_logins_per_ip: 8,
            claimed_names_budget_on_loopback: true,
            max_topic_alias_bytes: 64 * 1024,
            admin_max_connections: 64,
            admin_timeout_secs: 10,
            presence_transient_secs: 300,
            max_presence_records: 1_000_000,
            max_presence_records_per_user: 100,
            room_members_listed: 1000,
            room_members_interval_ms: 250,
            room_members_bytes_per_sec: 16_384,
            room_member_changes_per_minute: 120,
            max_bans_per_room: 10_000,
            max_reaction_emoji: 32,
            max_reactions_per_message: 4096,
            room_max_edits_per_message: 100,
            reaction_purge_chunk: 1024,
            room_members_listed_per_account: 4,
            room_max_reactions_per_user_per_message: 8,
            max_emoji_bytes: 32,
            room_max_messages_per_minute: 0,
            max_alert_devices: 100_000,
            max_alert_devices_per_rule: 10_000,
        }
    }
}
