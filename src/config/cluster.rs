//! The `[cluster]` section: several roomq nodes as one broker, sharing
//! state through NATS JetStream (`docs/cluster.md`).

use std::path::PathBuf;

use serde::Deserialize;

/// `[cluster]`: where NATS is, and this node's name.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// NATS server URLs (`nats://host:port`); the client fails over
    /// between them.
    pub nats: Vec<String>,
    /// This node's name, unique in the cluster: letters, digits, `-`, `_`.
    pub node: String,
    /// JetStream replicas of roomq's streams (3: a write is acknowledged
    /// once two of three servers have it; 1 for a single nats-server).
    pub replicas: usize,
    /// Prefix of roomq's streams and subjects, so several roomq clusters
    /// can share one NATS system: streams `{NAME}_ROOMS`, subjects
    /// `{name}.…`.
    pub name: String,
    /// NATS user and password, or `token`.
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    /// PEM file of the CA that signed the NATS servers' certificates
    /// (turns TLS on).
    pub tls_ca: Option<PathBuf>,
    /// How long a write waits for JetStream's acknowledgement before it is
    /// sent again (with the same message id, so it is stored once).
    pub ack_timeout_ms: u64,
    /// How often this node tells the others it is alive.
    pub heartbeat_ms: u64,
    /// A node not heard from for this long is dead: its users' devices are
    /// dropped (they show offline unless connected elsewhere).
    pub node_timeout_ms: u64,
    /// Most bytes of writes (room messages, retained messages, session
    /// records) waiting for JetStream's acknowledgement; beyond it a room
    /// message is refused (5.0 PUBACK 0x80) until JetStream catches up.
    pub write_buffer_bytes: usize,
    /// Most bytes of plain messages waiting to be forwarded to the other
    /// nodes; beyond it a message reaches only this node's subscribers
    /// (counted and logged).
    pub forward_buffer_bytes: usize,
    /// Records a room's subject of the room stream may hold beyond
    /// `room_max_messages`: reactions (not log entries, so not counted by
    /// the nodes' trims), ban copies, and the entries a node lets pile up
    /// before it trims (`docs/cluster.md`, *A room's retention*). The
    /// stream's per-room limit is their sum; beyond it JetStream removes
    /// the room's oldest records, messages included.
    pub room_stream_extra_records: u64,
    /// How long a node keeps following a room that none of its sessions
    /// subscribes to after its last post, read receipt or history request
    /// there (seconds): within it the next request finds the room ready,
    /// after it the node stops reading the room's messages.
    pub room_linger_secs: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            nats: vec!["nats://127.0.0.1:4222".into()],
            node: String::new(),
            replicas: 3,
            name: "roomq".into(),
            user: None,
            password: None,
            token: None,
            tls_ca: None,
            ack_timeout_ms: 2000,
            heartbeat_ms: 1000,
            node_timeout_ms: 5000,
            write_buffer_bytes: 64 * 1024 * 1024,
            forward_buffer_bytes: 64 * 1024 * 1024,
            room_stream_extra_records: 100_000,
            room_linger_secs: 60,
        }
    }
}

/// The least `room_stream_extra_records`: a node trims a room's log (and
/// the room's subject) once 64 entries piled up beyond
/// `room_max_messages` (`chat/log.rs`, `TRIM_EVERY`), so the stream must
/// hold those without pushing out messages itself.
const MIN_EXTRA_RECORDS: u64 = 64;

/// Whether `s` can be one NATS subject token and part of a stream name.
fn is_plain_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl ClusterConfig {
    pub(super) fn validate(&self) -> Result<(), String> {
        if !is_plain_token(&self.node) {
            return Err(
                "key `cluster.node`: must be 1 to 64 letters, digits, `-` or `_`, unique per node".into(),
            );
        }
        if !is_plain_token(&self.name) {
            return Err("key `cluster.name`: must be 1 to 64 letters, digits, `-` or `_`".into());
        }
        if self.nats.is_empty() {
            return Err("key `cluster.nats`: needs at least one NATS server URL".into());
        }
        if !(1..=5).contains(&self.replicas) {
            return Err("key `cluster.replicas`: JetStream allows 1 to 5".into());
        }
        if self.heartbeat_ms == 0 || self.node_timeout_ms <= self.heartbeat_ms {
            return Err("keys `cluster.heartbeat_ms` and `cluster.node_timeout_ms`: the heartbeat must be at least 1 ms and shorter than the timeout".into());
        }
        if self.room_stream_extra_records < MIN_EXTRA_RECORDS {
            return Err(format!(
                "key `cluster.room_stream_extra_records`: must be at least {MIN_EXTRA_RECORDS} (a node trims a room's log {MIN_EXTRA_RECORDS} entries at a time)"
            ));
        }
        if self.room_linger_secs == 0 {
            return Err("key `cluster.room_linger_secs`: must be at least 1".into());
        }
        if self.ack_timeout_ms == 0 {
            return Err("key `cluster.ack_timeout_ms`: must be at least 1".into());
        }
        Ok(())
    }
}
