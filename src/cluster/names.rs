//! Names of roomq's JetStream streams and NATS subjects.
//!
//! An MQTT topic level or a room name may hold any UTF-8, a NATS subject
//! token only some of it, so each is escaped: letters, digits, `-` and `_`
//! stay, every other byte becomes `~` and two hex digits, and an empty
//! level becomes a lone `~`. The escaping is one-to-one, so MQTT `+` maps
//! to NATS `*` and a trailing `#` to `>` (plus the parent level, which `#`
//! also matches).

use std::fmt::Write;

/// A topic whose subject would be longer than this travels on the
/// catch-all subject (NATS limits a protocol line to 4 KiB by default).
const MAX_SUBJECT_LEN: usize = 2048;

/// Subjects and streams of one roomq cluster (`cluster.name`).
#[derive(Clone, Debug)]
pub(crate) struct Names {
    prefix: String,
    /// The stream of room messages, one subject per room.
    pub rooms_stream: String,
    /// The stream of retained messages, one subject per topic.
    pub retained_stream: String,
    /// The stream of persistent sessions, one subject per client id.
    pub sessions_stream: String,
    /// The stream of persistent sessions' unacknowledged plain messages,
    /// one subject per message.
    pub queues_stream: String,
    /// The stream of bans and mutes, one subject per (kind, room, user).
    pub sanctions_stream: String,
}

impl Names {
    pub fn new(name: &str) -> Names {
        let upper = name.to_ascii_uppercase().replace('-', "_");
        Names {
            prefix: name.to_string(),
            rooms_stream: format!("{upper}_ROOMS"),
            retained_stream: format!("{upper}_RETAINED"),
            sessions_stream: format!("{upper}_SESSIONS"),
            queues_stream: format!("{upper}_QUEUES"),
            sanctions_stream: format!("{upper}_SANCTIONS"),
        }
    }

    /// Every room's subject: `{name}.room.>`.
    pub fn rooms(&self) -> String {
        format!("{}.room.>", self.prefix)
    }

    pub fn room(&self, room: &str) -> String {
        format!("{}.room.{}", self.prefix, token(room))
    }

    /// The room a room subject names.
    pub fn room_of(&self, subject: &str) -> Option<String> {
        let rest = subject.strip_prefix(&self.prefix)?.strip_prefix(".room.")?;
        untoken(rest)
    }

    /// Where JetStream republishes every stored room message (stream
    /// RePublish), for the nodes following the room: `{name}.live.>`.
    pub fn live_rooms(&self) -> String {
        format!("{}.live.>", self.prefix)
    }

    /// The republished copies of one room's messages.
    pub fn live_room(&self, room: &str) -> String {
        format!("{}.live.{}", self.prefix, token(room))
    }

    /// Every sanction's subject: `{name}.sanction.>`.
    pub fn sanctions(&self) -> String {
        format!("{}.sanction.>", self.prefix)
    }

    /// The subject of the sanction named `key` (a hash: room and user
    /// names are bounded, but escaped they could pass `MAX_SUBJECT_LEN`;
    /// the record itself names them).
    pub fn sanction(&self, key: &str) -> String {
        format!("{}.sanction.{}", self.prefix, hash_hex(key))
    }

    pub fn retained_all(&self) -> String {
        format!("{}.retained.>", self.prefix)
    }

    /// A retained message's subject: the whole topic as one token (a
    /// retained subject is only ever read in full, never by filter).
    pub fn retained(&self, topic: &str) -> String {
        format!("{}.retained.{}", self.prefix, token(topic))
    }

    pub fn topic_of_retained(&self, subject: &str) -> Option<String> {
        let rest = subject.strip_prefix(&self.prefix)?.strip_prefix(".retained.")?;
        untoken(rest)
    }

    /// The subject a plain message on `topic` travels on.
    pub fn message(&self, topic: &str) -> String {
        let mut subject = format!("{}.msg", self.prefix);
        for level in topic.split('/') {
            subject.push('.');
            subject.push_str(&token(level));
        }
        if subject.len() > MAX_SUBJECT_LEN {
            return self.long_messages();
        }
        subject
    }

    /// Where messages with very long topics travel; every node with any
    /// subscription listens to it.
    pub fn long_messages(&self) -> String {
        format!("{}.long", self.prefix)
    }

    /// The subjects an MQTT filter needs (a trailing `#` also matches its
    /// parent level, which NATS `>` does not). Empty when the filter is
    /// too long for a subject: `long_messages` and the catch-all cover it.
    pub fn filter(&self, filter: &str) -> Vec<String> {
        let mut subject = format!("{}.msg", self.prefix);
        let mut out = Vec::new();
        for level in filter.split('/') {
            match level {
                "#" => {
                    // `a/#` matches `a` too; a lone `#` matches everything.
                    if subject.len() > self.prefix.len() + 4 {
                        out.push(subject.clone());
                    }
                    subject.push_str(".>");
                    break;
                }
                "+" => subject.push_str(".*"),
                literal => {
                    subject.push('.');
                    subject.push_str(&token(literal));
                }
            }
        }
        if subject.len() > MAX_SUBJECT_LEN {
            return vec![format!("{}.msg.>", self.prefix)];
        }
        out.push(subject);
        out
    }

    /// Device counts and heartbeats of every node.
    pub fn presence(&self) -> String {
        format!("{}.presence", self.prefix)
    }

    /// Where the node serving `client_id` answers other nodes' claims.
    pub fn client(&self, client_id: &str) -> String {
        format!("{}.client.{}", self.prefix, client_token(client_id))
    }

    pub fn sessions(&self) -> String {
        format!("{}.session.>", self.prefix)
    }

    /// Where `client_id`'s session record is kept.
    pub fn session(&self, client_id: &str) -> String {
        format!("{}.session.{}", self.prefix, client_token(client_id))
    }
}

impl Names {
    /// Every queued message of every session.
    pub fn queues(&self) -> String {
        format!("{}.queue.>", self.prefix)
    }

    /// Every queued message of `client_id`'s session, from any node.
    pub fn queue(&self, client_id: &str) -> String {
        format!("{}.queue.{}.>", self.prefix, client_token(client_id))
    }

    /// The queued messages of `client_id`'s session that `node` wrote.
    pub fn queue_of_node(&self, client_id: &str, node: &str) -> String {
        format!(
            "{}.queue.{}.{}.>",
            self.prefix,
            client_token(client_id),
            token(node)
        )
    }

    /// One queued message: `node`'s store sequence `seq` for the session.
    pub fn queued(&self, client_id: &str, node: &str, seq: u64) -> String {
        format!(
            "{}.queue.{}.{}.{seq}",
            self.prefix,
            client_token(client_id),
            token(node)
        )
    }

    /// The store sequence a queued message's subject ends with.
    pub fn seq_of_queued(subject: &str) -> Option<u64> {
        subject.rsplit('.').next()?.parse().ok()
    }
}

/// A client id as a subject token (a hash for a very long id).
fn client_token(client_id: &str) -> String {
    let t = token(client_id);
    if t.len() > MAX_SUBJECT_LEN / 2 {
        return format!("h-{}", hash_hex(client_id));
    }
    t
}

/// 128-bit BLAKE2b of `key`, in hex: a name without the key's bytes (a
/// `Nats-Msg-Id` header may not hold every byte; a subject has a limit).
pub(crate) fn hash_hex(key: &str) -> String {
    use blake2::digest::{Update, VariableOutput};
    let mut hasher = blake2::Blake2bVar::new(16).expect("16 is a valid BLAKE2b output size");
    hasher.update(key.as_bytes());
    let mut out = [0u8; 16];
    hasher
        .finalize_variable(&mut out)
        .expect("the buffer has the requested size");
    out.iter().map(|b| format!("{b:02x}")).collect()
}

/// Escapes one topic level or name into one subject token.
pub(crate) fn token(s: &str) -> String {
    if s.is_empty() {
        return "~".into();
    }
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(b as char);
        } else {
            let _ = write!(out, "~{b:02X}");
        }
    }
    out
}

/// The name a token escapes; `None` for a token `token` never makes.
pub(crate) fn untoken(t: &str) -> Option<String> {
    if t == "~" {
        return Some(String::new());
    }
    let bytes = t.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'~' {
            let hex = t.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_any_name() {
        for name in ["ops", "a.b", "x y*>", "", "~", "é/ü", "a~41"] {
            let t = token(name);
            assert!(!t.contains(['.', '*', '>', ' ']), "{t}");
            assert_eq!(untoken(&t).as_deref(), Some(name));
        }
    }

    #[test]
    fn filters_map_to_the_subjects_their_topics_use() {
        let n = Names::new("roomq");
        assert_eq!(n.filter("a/+/c"), vec!["roomq.msg.a.*.c"]);
        assert_eq!(n.filter("a/#"), vec!["roomq.msg.a", "roomq.msg.a.>"]);
        assert_eq!(n.filter("#"), vec!["roomq.msg.>"]);
        assert_eq!(n.message("a/b.c/"), "roomq.msg.a.b~2Ec.~");
        assert_eq!(n.room_of(&n.room("r.1")).as_deref(), Some("r.1"));
        // The stream's RePublish maps `{name}.room.X` onto `{name}.live.X`.
        assert_eq!(n.live_room("r.1"), n.room("r.1").replace(".room.", ".live."));
    }
}
