//! Broker configuration and its layers: built-in defaults < TOML file <
//! `ROOMQ_*` environment variables < command-line flags.
//!
//! Every limit the broker enforces is a field of [`Config`], listed with
//! its meaning in `settings.rs` (grouped by concern: `config.limits`,
//! `config.chat`…, while the keys stay flat) and with its default in
//! `defaults.rs`; `docs/configuration.md` lists every field
//! (`tests/budgets.rs` checks that none is missing).

use std::path::PathBuf;

use serde::Deserialize;

mod cluster;
mod defaults;
mod grouping;
mod layers;
mod listener;
mod settings;
pub use cluster::ClusterConfig;
pub use listener::{ListenerConfig, ListenerKind};
pub use settings::{ChatConfig, Config, Limits, PerUserLimits, StoreConfig};

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
        if self.limits.max_inflight_messages == 0 {
            return Err("key `max_inflight_messages`: must be at least 1".into());
        }
        if self.limits.receive_maximum == 0 {
            return Err("key `receive_maximum`: must be at least 1".into());
        }
        if self.limits.max_packet_size < 64 {
            return Err("key `max_packet_size`: must be at least 64 bytes".into());
        }
        if self.limits.max_topic_levels == 0 || self.limits.max_topic_length == 0 {
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
        if self.limits.max_concurrent_logins == 0 {
            return Err("key `max_concurrent_logins`: must be at least 1".into());
        }
        if self.chat.max_bans_per_room == 0 {
            return Err("key `max_bans_per_room`: must be at least 1".into());
        }
        if self.limits.admin_max_connections == 0 || self.limits.admin_timeout_secs == 0 {
            return Err("keys `admin_max_connections` and `admin_timeout_secs` must be at least 1".into());
        }
        if self.limits.max_connect_packet_size < 64 {
            return Err("key `max_connect_packet_size`: must be at least 64 bytes".into());
        }
        if self.chat.room_max_messages == 0 || self.chat.history_max_limit == 0 {
            return Err("keys `room_max_messages` and `history_max_limit` must be at least 1".into());
        }
        if let Some(cluster) = &self.cluster {
            cluster.validate()?;
        }
        Ok(())
    }
}
