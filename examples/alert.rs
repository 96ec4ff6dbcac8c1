//! A device-style alert sender on MQTT 3.1.1 (rumqttc v4): publishes one
//! alert into a room with a msg-id in the topic
//! (`rooms/{room}/msg/{device}/{msg-id}`), and sends it again with the
//! same msg-id, as a device does when it never saw the PUBACK. The room
//! gets it once.
//!
//! ```sh
//! mosquitto_sub -t 'rooms/ops/msg/+' -v &
//! cargo run --example alert -- --device boiler-7 --room ops "pressure high"
//! ```
//!
//! With `--hmac-key FILE` it sends a signed alert instead (`topics.md`,
//! *Signed alerts*) to `alerts/{device}/critical`, for a rule such as
//! `[[alerts]] topic = "alerts/+/critical"`, `room = "ops"`,
//! `hmac_key_file = FILE`: a CBOR envelope (3.1.1 has no User Properties),
//! with the time in milliseconds as the counter. The second attempt sends
//! the same signed bytes, as a replay would: the broker refuses it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 1883)]
    port: u16,
    /// The device's client id, which is its chat identity.
    #[arg(long, default_value = "boiler-7")]
    device: String,
    /// The room the alert goes into: posted to `rooms/{room}/msg/{device}/…`
    /// (signed: the room of the broker's `[[alerts]]` rule, named here
    /// only in what is printed).
    #[arg(long, default_value = "ops")]
    room: String,
    /// A key file (hex, as `hmac_key_file`): sign the alert.
    #[arg(long)]
    hmac_key: Option<std::path::PathBuf>,
    /// How many times to send the same alert.
    #[arg(long, default_value_t = 2)]
    attempts: u32,
    text: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let msg_id = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let (topic, payload) = match &args.hmac_key {
        None => {
            let topic = format!("rooms/{}/msg/{}/{msg_id}", args.room, args.device);
            println!("posting to room {} as {} on {topic}", args.room, args.device);
            (topic, args.text.clone().into_bytes())
        }
        Some(file) => {
            let text = std::fs::read_to_string(file)?;
            let key = roomq::chat::decode_hex(text.trim())
                .ok_or_else(|| anyhow::anyhow!("{}: the key must be hex", file.display()))?;
            let topic = format!("alerts/{}/critical", args.device);
            let counter = msg_id as u64;
            let sig = roomq::chat::sign_alert(&key, &topic, args.text.as_bytes(), counter);
            let envelope = roomq::chat::payloads::AlertEnvelope {
                body: args.text.clone().into_bytes(),
                ctr: counter,
                sig: sig.to_vec(),
            };
            println!(
                "signed alert (counter {counter}) on {topic}, for the rule that posts it into room {}",
                args.room
            );
            (topic, roomq::chat::payloads::to_cbor(&envelope))
        }
    };
    for attempt in 1..=args.attempts {
        // A new connection per attempt, as a device that lost power would.
        let options = MqttOptions::new(&args.device, &args.host, args.port);
        let (client, mut events) = AsyncClient::new(options, 10);
        client
            .publish(&topic, QoS::AtLeastOnce, false, payload.clone())
            .await?;
        let acked = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => return Ok(()),
                    Ok(_) => {}
                    Err(e) => return Err(e),
                }
            }
        })
        .await;
        match acked {
            Ok(Ok(())) => println!("attempt {attempt}: acknowledged (msg-id {msg_id})"),
            Ok(Err(e)) => println!("attempt {attempt}: {e}"),
            Err(_) => println!("attempt {attempt}: no PUBACK within 5 s"),
        }
        let _ = client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_millis(200), events.poll()).await;
    }
    Ok(())
}
