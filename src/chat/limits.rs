//! The part of the configuration the chat layer reads while it serves:
//! copied once at start (`Chat::open`), so that no request needs the whole
//! `Config` passed down. These settings change only with a restart.

use crate::config::Config;

/// The bounds the chat layer applies per request (each field is the
/// setting of the same name: `config.chat`'s, `max_packet_size` from
/// `config.limits`; `docs/configuration.md`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct ChatLimits {
    pub max_packet_size: u32,
    pub max_msg_id_length: usize,
    pub max_chat_name_length: usize,
    pub max_room_message_bytes: usize,
    pub max_rooms: usize,
    pub max_emoji_bytes: usize,
    pub max_bans_per_room: usize,
    pub typing_min_interval_ms: u64,
    pub typing_max_entries: usize,
    pub room_max_messages: u64,
    pub history_default_limit: usize,
    pub history_max_limit: usize,
    pub history_max_bytes: usize,
    pub max_alert_devices: usize,
    pub max_alert_devices_per_rule: usize,
}

impl ChatLimits {
    pub fn from_config(config: &Config) -> Self {
        ChatLimits {
            max_packet_size: config.limits.max_packet_size,
            max_msg_id_length: config.chat.max_msg_id_length,
            max_chat_name_length: config.chat.max_chat_name_length,
            max_room_message_bytes: config.chat.max_room_message_bytes,
            max_rooms: config.chat.max_rooms,
            max_emoji_bytes: config.chat.max_emoji_bytes,
            max_bans_per_room: config.chat.max_bans_per_room,
            typing_min_interval_ms: config.chat.typing_min_interval_ms,
            typing_max_entries: config.chat.typing_max_entries,
            room_max_messages: config.chat.room_max_messages,
            history_default_limit: config.chat.history_default_limit,
            history_max_limit: config.chat.history_max_limit,
            history_max_bytes: config.chat.history_max_bytes,
            max_alert_devices: config.chat.max_alert_devices,
            max_alert_devices_per_rule: config.chat.max_alert_devices_per_rule,
        }
    }
}
