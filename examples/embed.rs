// roomq inside a tokio program: a broker in memory on a free port, an
// in-process subscriber, one message published and received, a clean stop.
use roomq::config::StoreConfig;
use roomq::{Broker, Config, QoS, StorageKind};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = Config {
        listen: "127.0.0.1:0".parse()?, // port 0: a free port
        store: StoreConfig {
            storage: StorageKind::Memory, // the default, "sled", keeps its state in ./data
            ..Default::default()
        },
        ..Config::default()
    };
    let broker = Broker::new(config).start().await?;
    println!("MQTT clients can connect to {}", broker.local_addr());

    let alerts = broker.subscribe("alerts/#", QoS::AtLeastOnce)?; // in-process, no socket
    broker.publish("alerts/boiler-7", "pressure high", QoS::AtLeastOnce, false);
    let message = alerts.recv().await;
    let text = String::from_utf8_lossy(&message.payload);
    println!("{} = {text}", message.topic);

    broker.shutdown().await; // DISCONNECT 0x8B to 5.0 clients, closes, waits
    Ok(())
}
