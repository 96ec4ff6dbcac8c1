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
    #[arg(long, default_value = "ops")]
    room: String,
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
    let topic = format!("rooms/{}/msg/{}/{msg_id}", args.room, args.device);
    for attempt in 1..=args.attempts {
        // A new connection per attempt, as a device that lost power would.
        let options = MqttOptions::new(&args.device, &args.host, args.port);
        let (client, mut events) = AsyncClient::new(options, 10);
        client
            .publish(&topic, QoS::AtLeastOnce, false, args.text.clone())
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
