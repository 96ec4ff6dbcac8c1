//! A small terminal chat client on rumqttc (MQTT 5.0), following `topics.md`.
//!
//! ```sh
//! cargo run --release                                   # the broker
//! cargo run --example chat -- --user alice --room lobby
//! cargo run --example chat -- --user bob --room lobby
//! ```
//! Type a line to send it. Shows others' messages with sender and `seq`,
//! presence changes and typing; fetches the last 20 messages on start. A
//! moderator types `/ban USER [SECS]`, `/unban USER`, `/mute USER [SECS]`
//! or `/unmute USER` (`topics.md`, *Moderation*). With `--e2ee PASSPHRASE`
//! message bodies are sealed end to end with a key derived from the
//! passphrase and the room (`topics.md`, *End-to-end encryption*): the
//! broker stores and forwards only ciphertext, and members who share the
//! passphrase (here or in the browser chat) read them. The
//! session is persistent, so after a dropped connection rumqttc reconnects
//! and the broker replays what was missed; messages are shown once, by
//! `seq`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use roomq::chat::payloads::{self, HistoryResponse, ModResponse, Presence, Typing};
use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
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
    #[arg(long)]
    user: String,
    #[arg(long, default_value = "lobby")]
    room: String,
    /// Seal message bodies end to end under a key derived from this
    /// passphrase and the room; every member needs the same passphrase.
    #[arg(long, value_name = "PASSPHRASE")]
    e2ee: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Derived once: Argon2id is slow on purpose.
    let bodies = e2ee::Bodies(
        args.e2ee
            .as_deref()
            .map(|passphrase| e2ee::RoomKey::derive(passphrase, &args.room))
            .transpose()?,
    );
    let mut options = MqttOptions::new(format!("chat-{}", args.user), &args.host, args.port);
    options
        .set_credentials(args.user.clone(), "")
        .set_clean_start(false)
        .set_session_expiry_interval(Some(3600))
        .set_keep_alive(Duration::from_secs(15));
    let (client, mut events) = AsyncClient::new(options, 100);
    let room = args.room.clone();
    let replies = format!("users/{}/history/{room}", args.user);
    client
        .subscribe(format!("rooms/{room}/msg/+"), QoS::AtLeastOnce)
        .await?;
    client
        .subscribe(format!("rooms/{room}/typing/+"), QoS::AtMostOnce)
        .await?;
    client.subscribe("$presence/+", QoS::AtLeastOnce).await?;
    client.subscribe(&replies, QoS::AtLeastOnce).await?;
    let mod_replies = format!("users/{}/mod/{room}", args.user);
    client.subscribe(&mod_replies, QoS::AtLeastOnce).await?;
    let request = payloads::to_cbor(&std::collections::HashMap::from([("limit", 20u64)]));
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

    let sender = client.clone();
    let (user, send_room, seal) = (args.user.clone(), room.clone(), bodies.clone());
    tokio::spawn(async move {
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        let mut counter = 0u64;
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(request) = moderation(&line) {
                let _ = sender
                    .publish(
                        format!("$rooms/{send_room}/mod"),
                        QoS::AtLeastOnce,
                        false,
                        request,
                    )
                    .await;
                continue;
            }
            let typing = payloads::to_cbor(&Typing { typing: true });
            let _ = sender
                .publish(
                    format!("rooms/{send_room}/typing/{user}"),
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
            let topic = format!("rooms/{send_room}/msg/{user}");
            let body = match seal.seal(&user, &line) {
                Ok(body) => body,
                Err(e) => {
                    eprintln!("* not sent: {e}");
                    continue;
                }
            };
            let _ = sender
                .publish_with_properties(topic, QoS::AtLeastOnce, false, body, properties)
                .await;
        }
    });

    let mut last_seq = 0u64;
    loop {
        let packet = match events.poll().await {
            Ok(Event::Incoming(Packet::Publish(p))) => p,
            Ok(_) => continue,
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
                println!("[{seq}] {from}: {}", bodies.open(from, &packet.payload));
            }
            ["rooms", _, "typing", from]
                if *from != args.user
                    && payloads::from_cbor::<Typing>(&packet.payload).is_some_and(|t| t.typing) =>
            {
                println!("* {from} is typing");
            }
            ["$presence", who] => {
                if let Some(p) = payloads::from_cbor::<Presence>(&packet.payload) {
                    println!("* {who} is {} ({} devices)", p.status, p.devices);
                }
            }
            _ if topic == mod_replies => match payloads::from_cbor::<ModResponse>(&packet.payload) {
                Some(ModResponse { ok: true, .. }) => println!("* done"),
                Some(ModResponse { error, .. }) => println!("* refused: {}", error.unwrap_or_default()),
                None => {}
            },
            _ if topic == replies => {
                let Some(history) = payloads::from_cbor::<HistoryResponse>(&packet.payload) else {
                    continue;
                };
                for m in &history.messages {
                    if m.seq <= last_seq {
                        continue;
                    }
                    match &m.body {
                        Some(body) => println!("[{}] {}: {}", m.seq, m.sender, bodies.open(&m.sender, body)),
                        None => println!("[{}] {}: (deleted)", m.seq, m.sender),
                    }
                    last_seq = m.seq;
                }
            }
            _ => {}
        }
    }
}

/// `/ban USER [SECS]`, `/unban USER`, `/mute USER [SECS]`, `/unmute USER`
/// as a CBOR `mod-request` (`topics.md`, *Moderation*).
fn moderation(line: &str) -> Option<Vec<u8>> {
    #[derive(serde::Serialize)]
    struct Request<'a> {
        op: &'a str,
        user: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        secs: Option<u64>,
    }
    let mut words = line.split_whitespace();
    let op = words.next()?.strip_prefix('/')?;
    if !matches!(op, "ban" | "unban" | "mute" | "unmute") {
        return None;
    }
    let user = words.next()?;
    let secs = words.next().and_then(|s| s.parse().ok());
    Some(payloads::to_cbor(&Request { op, user, secs }))
}

fn user_property(properties: &Option<PublishProperties>, key: &str) -> Option<String> {
    properties
        .as_ref()?
        .user_properties
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
}

fn unix_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}
