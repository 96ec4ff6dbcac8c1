//! A small terminal chat client on rumqttc (MQTT 5.0), following `topics.md`.
//!
//! ```sh
//! cargo run --release                                   # the broker
//! cargo run --release --example chat -- --user alice --room lobby
//! cargo run --release --example chat -- --user bob --room lobby
//! # a broker with a password file, or with tokens (the token names the user):
//! cargo run --release --example chat -- --user alice --password 'secret' --room ops
//! cargo run --release --example chat -- --token "$(cat alice.jwt)" --room ops
//! ```
//! Type a line to send it. Shows messages as `[seq] sender: text` (with
//! `(edited)`, a deleted one as `(message deleted)`, and its reactions),
//! presence changes, typing and room events; fetches the last 20 messages
//! on start, each in its current state. Commands (`topics.md`, *Edits,
//! deletes and reactions* and *Moderation*):
//! - `/edit SEQ TEXT`, `/delete SEQ` (your own message; a moderator's
//!   `/delete` of someone else's goes to `$rooms/{room}/mod`),
//! - `/react SEQ EMOJI`, `/unreact SEQ EMOJI`,
//! - a moderator's `/ban USER [SECS]`, `/unban USER`, `/mute USER [SECS]`,
//!   `/unmute USER`.
//!
//! The session is persistent, so after a dropped connection rumqttc
//! reconnects and the broker replays what was missed; messages are shown
//! once, by `seq`. With `--e2ee PASSPHRASE` message and edit bodies are
//! sealed end to end with a key derived from the passphrase and the room
//! (`topics.md`, *End-to-end encryption*): the broker stores and forwards
//! only ciphertext, and members who share the passphrase (here or in the
//! browser chat) read them. A room the broker refuses (not a member, banned) and a
//! refused login end the program with the reason; the end of the input (Ctrl-D) ends it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, PubAckReason, PublishProperties, SubscribeReasonCode};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, ConnectionError, Event, MqttOptions};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};

// The clients' crypto, shared with the tests; not every function is used here.
#[allow(dead_code)]
#[path = "common/e2ee.rs"]
mod e2ee;

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 1883)]
    port: u16,
    /// Your name: the MQTT username and the `{sender}` of your messages.
    /// With `--token`, the token's `sub` (you may leave it out).
    #[arg(long, required_unless_present = "token")]
    user: Option<String>,
    /// Your password, when the broker has a password file.
    #[arg(
        long,
        env = "ROOMQ_PASSWORD",
        hide_env_values = true,
        conflicts_with = "token"
    )]
    password: Option<String>,
    /// A login token (JWT) the broker verifies; it names you (`sub`).
    #[arg(long, env = "ROOMQ_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[arg(long, default_value = "lobby")]
    room: String,
    /// Seal message bodies end to end under a key derived from this
    /// passphrase and the room; every member needs the same passphrase.
    #[arg(long, value_name = "PASSPHRASE")]
    e2ee: Option<String>,
}

/// How many messages' senders the client remembers, to tell `/delete` of
/// its own message from a moderator's delete of another's.
const SENDERS_KEPT: usize = 10_000;

/// The senders of the messages seen, by `seq` (the newest `SENDERS_KEPT`).
type Senders = Arc<Mutex<BTreeMap<u64, String>>>;

// ---- payloads (topics.md, *Payload schemas*) --------------------------------

#[derive(Deserialize)]
struct HistoryResponse {
    messages: Vec<HistoryMessage>,
}

#[derive(Deserialize)]
struct HistoryMessage {
    seq: u64,
    sender: String,
    #[serde(default)]
    body: Option<ciborium::Value>,
    #[serde(default)]
    edited: Option<u64>,
    #[serde(default)]
    deleted: bool,
    #[serde(default)]
    reactions: BTreeMap<String, u64>,
}

#[derive(Deserialize)]
struct RoomEvent {
    seq: u64,
    sender: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    target: Option<u64>,
    #[serde(default)]
    body: Option<ciborium::Value>,
    #[serde(default)]
    emoji: Option<String>,
    #[serde(default)]
    remove: bool,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    secs: Option<u64>,
}

#[derive(Deserialize)]
struct ModResponse {
    ok: bool,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
struct Presence {
    status: String,
    #[serde(default)]
    devices: u64,
}

#[derive(Deserialize)]
struct Typing {
    typing: bool,
}

/// `{ seq, body: bstr }`, `{ seq }`, `{ seq, emoji, ? remove }`, or a
/// `mod-request`: only the fields a command gives are written.
#[derive(Serialize, Default)]
struct Request<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    op: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<ciborium::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    emoji: Option<&'a str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    remove: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    secs: Option<u64>,
}

fn cbor<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing into a Vec cannot fail for these types.
    let _ = ciborium::into_writer(value, &mut out);
    out
}

fn from_cbor<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Option<T> {
    ciborium::from_reader(bytes).ok()
}

// ---- message bodies: the one place they are encoded and decoded -----------

/// How bodies are sealed and opened: set once in `main` (the key derivation
/// is slow on purpose), plain UTF-8 without `--e2ee`.
static BODIES: OnceLock<e2ee::Bodies> = OnceLock::new();

/// The bytes published for a message or an edit's `body` by `me`; `None`
/// (and a line saying why) when it cannot be sealed.
fn encode_body(me: &str, text: &str) -> Option<Vec<u8>> {
    let sealed = BODIES.get_or_init(|| e2ee::Bodies(None)).seal(me, text);
    sealed.map_err(|e| println!("* not sent: {e}")).ok()
}

/// The text shown for a body `sender` published.
fn decode_body(bytes: &[u8], sender: &str) -> String {
    BODIES.get_or_init(|| e2ee::Bodies(None)).open(sender, bytes)
}

fn body_bytes(value: Option<&ciborium::Value>) -> &[u8] {
    match value {
        Some(ciborium::Value::Bytes(b)) => b,
        _ => &[],
    }
}

// ---- login ------------------------------------------------------------------

/// The token's `sub`, read without checking the signature (the broker
/// checks it): the name the broker will give this client.
fn token_subject(token: &str) -> anyhow::Result<String> {
    #[derive(Deserialize)]
    struct Claims {
        sub: String,
    }
    let mut validation = jsonwebtoken::Validation::default();
    validation.insecure_disable_signature_validation();
    validation.validate_exp = false;
    validation.required_spec_claims.clear();
    let header = jsonwebtoken::decode_header(token)?;
    validation.algorithms = vec![header.alg];
    let data =
        jsonwebtoken::decode::<Claims>(token, &jsonwebtoken::DecodingKey::from_secret(&[]), &validation)?;
    Ok(data.claims.sub)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let user = match (&args.token, &args.user) {
        (Some(token), named) => {
            let sub = token_subject(token).map_err(|e| anyhow::anyhow!("--token is no JWT: {e}"))?;
            if named.as_ref().is_some_and(|n| *n != sub) {
                anyhow::bail!(
                    "--user {} is not the token's user {sub}",
                    named.as_deref().unwrap_or("")
                );
            }
            sub
        }
        (None, Some(named)) => named.clone(),
        (None, None) => anyhow::bail!("give --user (or --token)"),
    };
    let key = args
        .e2ee
        .as_deref()
        .map(|passphrase| e2ee::RoomKey::derive(passphrase, &args.room));
    let _ = BODIES.set(e2ee::Bodies(key.transpose()?));
    let secret = args.token.clone().or(args.password.clone()).unwrap_or_default();
    let mut options = MqttOptions::new(format!("chat-{user}"), &args.host, args.port);
    options
        .set_credentials(user.clone(), secret)
        .set_clean_start(false)
        .set_session_expiry_interval(Some(3600))
        .set_keep_alive(Duration::from_secs(15));
    let (client, mut events) = AsyncClient::new(options, 100);
    let room = args.room.clone();
    let replies = format!("users/{user}/history/{room}");
    let mod_replies = format!("users/{user}/mod/{room}");
    // The room's filters in one SUBSCRIBE, so its SUBACK says at once
    // whether the broker lets this user in.
    client
        .subscribe_many([
            Filter::new(format!("rooms/{room}/msg/+"), QoS::AtLeastOnce),
            Filter::new(format!("rooms/{room}/event/+"), QoS::AtLeastOnce),
            Filter::new(format!("rooms/{room}/typing/+"), QoS::AtMostOnce),
        ])
        .await?;
    client.subscribe("$presence/+", QoS::AtLeastOnce).await?;
    client.subscribe(&replies, QoS::AtLeastOnce).await?;
    client.subscribe(&mod_replies, QoS::AtLeastOnce).await?;
    let request = cbor(&HashMap::from([("limit", 20u64)]));
    let properties = PublishProperties {
        response_topic: Some(replies.clone()),
        ..Default::default()
    };
    client
        .publish_with_properties(
            format!("$history/rooms/{room}"),
            QoS::AtLeastOnce,
            false,
            request,
            properties,
        )
        .await?;

    let senders: Senders = Arc::default();
    tokio::spawn(read_lines(
        client.clone(),
        user.clone(),
        room.clone(),
        senders.clone(),
    ));

    let mut last_seq = 0u64;
    let mut first_suback = true;
    loop {
        let packet = match events.poll().await {
            Ok(Event::Incoming(Packet::Publish(p))) => p,
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                let refused = ack
                    .return_codes
                    .iter()
                    .any(|c| !matches!(c, SubscribeReasonCode::Success(_)));
                if std::mem::take(&mut first_suback) && refused {
                    refused_room(&format!(
                        "You are not a member of {room} (or you were banned from it)."
                    ));
                }
                continue;
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                match ack.reason {
                    PubAckReason::Success | PubAckReason::NoMatchingSubscribers => {}
                    PubAckReason::NotAuthorized => {
                        println!("* refused: not allowed (not your message, or you are muted or banned here)")
                    }
                    PubAckReason::PayloadFormatInvalid => println!("* refused: no such message"),
                    PubAckReason::QuotaExceeded => println!("* refused: over a limit, try again later"),
                    other => println!("* refused: {other:?}"),
                }
                continue;
            }
            // Sent at the end of the input, after what was typed (the session is kept).
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return Ok(()),
            Ok(_) => continue,
            Err(ConnectionError::ConnectionRefused(code)) => {
                refused_room(&format!("The broker refused the login: {code:?}."));
            }
            Err(e) => {
                eprintln!("* connection lost ({e}), reconnecting");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let topic = String::from_utf8_lossy(&packet.topic).into_owned();
        let levels: Vec<&str> = topic.split('/').collect();
        match levels.as_slice() {
            ["rooms", _, "msg", from] => {
                let seq = user_property(&packet.properties, "seq")
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                if seq <= last_seq {
                    continue; // already shown (a resend after a reconnect)
                }
                last_seq = seq;
                remember(&senders, seq, from);
                println!("[{seq}] {from}: {}", decode_body(&packet.payload, from));
            }
            ["rooms", _, "event", _] => {
                let Some(event) = from_cbor::<RoomEvent>(&packet.payload) else {
                    continue;
                };
                if event.kind == "ban" && event.user.as_deref() == Some(user.as_str()) {
                    refused_room(&format!("You were banned from {room} by {}.", event.sender));
                }
                println!("* {}", describe(&event, &senders));
            }
            ["rooms", _, "typing", from]
                if *from != user && from_cbor::<Typing>(&packet.payload).is_some_and(|t| t.typing) =>
            {
                println!("* {from} is typing");
            }
            ["$presence", who] => {
                if let Some(p) = from_cbor::<Presence>(&packet.payload) {
                    match p.devices {
                        0 | 1 => println!("* {who} is {}", p.status),
                        n => println!("* {who} is {} ({n} devices)", p.status),
                    }
                }
            }
            _ if topic == mod_replies => match from_cbor::<ModResponse>(&packet.payload) {
                Some(ModResponse { ok: true, .. }) => println!("* done"),
                Some(ModResponse { error, .. }) => println!("* refused: {}", error.unwrap_or_default()),
                None => {}
            },
            _ if topic == replies => {
                let Some(history) = from_cbor::<HistoryResponse>(&packet.payload) else {
                    continue;
                };
                for m in &history.messages {
                    remember(&senders, m.seq, &m.sender);
                    if m.seq <= last_seq {
                        continue;
                    }
                    println!("{}", show(m));
                    last_seq = m.seq;
                }
            }
            _ => {}
        }
    }
}

/// Says why the room is closed to this client, and ends it: retrying
/// would not change the broker's answer.
fn refused_room(text: &str) -> ! {
    println!("* {text}");
    std::process::exit(1)
}

/// A message from history in its current state: `[3] alice: text (edited) 👍2`.
fn show(m: &HistoryMessage) -> String {
    let mut line = if m.deleted {
        format!("[{}] {}: (message deleted)", m.seq, m.sender)
    } else {
        format!(
            "[{}] {}: {}",
            m.seq,
            m.sender,
            decode_body(body_bytes(m.body.as_ref()), &m.sender)
        )
    };
    if m.edited.is_some() && !m.deleted {
        line.push_str(" (edited)");
    }
    for (emoji, count) in &m.reactions {
        line.push_str(&format!(" {emoji}{count}"));
    }
    line
}

/// A room event as a line: `alice edited [3]: new text`, `mod banned eve for 3600 s`.
fn describe(event: &RoomEvent, senders: &Senders) -> String {
    let who = &event.sender;
    let target = event.target.unwrap_or(0);
    let user = event.user.as_deref().unwrap_or("?");
    let length = event.secs.map(|s| format!(" for {s} s")).unwrap_or_default();
    match event.kind.as_str() {
        "edit" => {
            let author = senders
                .lock()
                .ok()
                .and_then(|s| s.get(&target).cloned())
                .unwrap_or_default();
            let text = decode_body(body_bytes(event.body.as_ref()), &author);
            format!("{who} edited [{target}]: {text}")
        }
        "delete" => format!("{who} deleted [{target}]"),
        "react" if event.remove => {
            format!(
                "{who} took back {} on [{target}]",
                event.emoji.as_deref().unwrap_or("")
            )
        }
        "react" => format!(
            "{who} reacted {} to [{target}]",
            event.emoji.as_deref().unwrap_or("")
        ),
        "ban" => format!("{who} banned {user}{length}"),
        "mute" => format!("{who} muted {user}{length}"),
        "unban" => format!("{who} lifted the ban on {user}"),
        "unmute" => format!("{who} unmuted {user}"),
        other => format!("{who}: {other} (event {})", event.seq),
    }
}

fn remember(senders: &Senders, seq: u64, sender: &str) {
    if let Ok(mut senders) = senders.lock() {
        senders.insert(seq, sender.to_owned());
        while senders.len() > SENDERS_KEPT {
            senders.pop_first();
        }
    }
}

/// Reads stdin: a command (see the module's doc) or a message to send.
async fn read_lines(client: AsyncClient, user: String, room: String, senders: Senders) {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut counter = 0u64;
    while let Ok(Some(line)) = lines.next_line().await {
        if line.starts_with('/') {
            match command(&line, &user, &senders) {
                Ok((kind, request)) => {
                    let topic = if kind == "mod" {
                        format!("$rooms/{room}/mod")
                    } else {
                        format!("rooms/{room}/{kind}/{user}")
                    };
                    let _ = client.publish(topic, QoS::AtLeastOnce, false, request).await;
                }
                Err(usage) => println!("* {usage}"),
            }
            continue;
        }
        let typing = cbor(&HashMap::from([("typing", true)]));
        let _ = client
            .publish(
                format!("rooms/{room}/typing/{user}"),
                QoS::AtMostOnce,
                false,
                typing,
            )
            .await;
        counter += 1;
        // A msg-id makes a resend after a reconnect harmless.
        let msg_id = format!("{}-{counter}", unix_ms());
        let properties = PublishProperties {
            user_properties: vec![("msg-id".into(), msg_id)],
            ..Default::default()
        };
        let Some(body) = encode_body(&user, &line) else {
            continue;
        };
        let topic = format!("rooms/{room}/msg/{user}");
        let _ = client
            .publish_with_properties(topic, QoS::AtLeastOnce, false, body, properties)
            .await;
    }
    // The end of the input: queued after the publishes, so they go out first.
    let _ = client.disconnect().await;
}

/// A command line as (topic kind: `edit`, `delete`, `react` or `mod`, CBOR
/// payload), or its usage.
fn command(line: &str, me: &str, senders: &Senders) -> Result<(&'static str, Vec<u8>), String> {
    let mut words = line.splitn(3, char::is_whitespace);
    let name = words.next().unwrap_or_default();
    let first = words.next().map(str::trim).filter(|w| !w.is_empty());
    let rest = words.next().map(str::trim).filter(|w| !w.is_empty());
    let seq = || first.and_then(|w| w.parse::<u64>().ok());
    let usage = |text: &str| Err(format!("usage: {text}"));
    match name {
        "/edit" => match (seq(), rest.and_then(|text| encode_body(me, text))) {
            (Some(seq), Some(body)) => Ok((
                "edit",
                cbor(&Request {
                    seq: Some(seq),
                    body: Some(ciborium::Value::Bytes(body)),
                    ..Default::default()
                }),
            )),
            _ => usage("/edit SEQ TEXT"),
        },
        "/delete" => match seq() {
            Some(seq) => {
                let sender = senders.lock().ok().and_then(|s| s.get(&seq).cloned());
                // Someone else's message: only a moderator may, on `mod`.
                if sender.is_some_and(|s| s != me) {
                    Ok((
                        "mod",
                        cbor(&Request {
                            op: Some("delete"),
                            seq: Some(seq),
                            ..Default::default()
                        }),
                    ))
                } else {
                    Ok((
                        "delete",
                        cbor(&Request {
                            seq: Some(seq),
                            ..Default::default()
                        }),
                    ))
                }
            }
            None => usage("/delete SEQ"),
        },
        "/react" | "/unreact" => match (seq(), rest) {
            (Some(seq), Some(emoji)) => Ok((
                "react",
                cbor(&Request {
                    seq: Some(seq),
                    emoji: Some(emoji),
                    remove: name == "/unreact",
                    ..Default::default()
                }),
            )),
            _ => usage(&format!("{name} SEQ EMOJI")),
        },
        "/ban" | "/mute" | "/unban" | "/unmute" => {
            let op = &name[1..];
            let lasting = matches!(op, "ban" | "mute");
            let secs = rest.and_then(|s| s.parse().ok());
            match first {
                Some(user) if lasting || rest.is_none() => Ok((
                    "mod",
                    cbor(&Request {
                        op: Some(op),
                        user: Some(user),
                        secs,
                        ..Default::default()
                    }),
                )),
                _ if lasting => usage(&format!("{name} USER [SECS]")),
                _ => usage(&format!("{name} USER")),
            }
        }
        _ => Err(
            "commands: /edit SEQ TEXT, /delete SEQ, /react SEQ EMOJI, /unreact SEQ EMOJI, \
                  /ban USER [SECS], /unban USER, /mute USER [SECS], /unmute USER"
                .into(),
        ),
    }
}

fn user_property(properties: &Option<PublishProperties>, key: &str) -> Option<String> {
    let all = &properties.as_ref()?.user_properties;
    all.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
}

fn unix_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}
