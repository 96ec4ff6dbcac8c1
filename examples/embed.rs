//! Embedding roomq in a tokio program: start a broker on a free port, use
//! the in-process client next to a network client, shut down cleanly.
//!
//! ```text
//! cargo run --example embed
//! ```

use std::time::Duration;

use roomq::{Broker, Config, QoS};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = Config {
        listen: "127.0.0.1:0".parse()?,
        // Keep this demo in memory; leave the default ("sled" in ./data) for state that survives restarts.
        storage: roomq::StorageKind::Memory,
        ..Config::default()
    };
    let broker = Broker::new(config).start().await?;
    println!("broker listening on {}", broker.local_addr());

    // In-process subscriber: no socket involved.
    let alerts = broker.subscribe("alerts/#", QoS::AtLeastOnce)?;

    // A network client (rumqttc, MQTT 3.1.1) publishes an alert.
    let addr = broker.local_addr();
    let options = rumqttc::MqttOptions::new("boiler-7", addr.ip().to_string(), addr.port());
    let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 10);
    let network = tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    client
        .publish(
            "alerts/boiler-7/critical",
            rumqttc::QoS::AtLeastOnce,
            false,
            "pressure high",
        )
        .await?;

    let message = tokio::time::timeout(Duration::from_secs(5), alerts.recv()).await?;
    println!(
        "in-process subscriber got {} = {:?}",
        message.topic, message.payload
    );

    // And the other way round: publish from the program.
    let delivered = broker.publish("status/broker", "up", QoS::AtMostOnce, true);
    println!("status published to {delivered} subscribers (and retained)");

    client.disconnect().await?;
    network.abort();
    broker.shutdown().await;
    Ok(())
}
