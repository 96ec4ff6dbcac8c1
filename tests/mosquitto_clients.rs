//! The stock `mosquitto_pub` / `mosquitto_sub` clients against roomq
//! (Debian package mosquitto-clients; `scripts/test` installs it).

mod common;

use std::process::Stdio;

use common::*;
use tokio::process::Command;

async fn mosquitto_sub(port: u16, args: &[&str]) -> tokio::process::Child {
    Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("mosquitto_sub is installed (scripts/test installs mosquitto-clients)")
}

async fn mosquitto_pub(port: u16, args: &[&str]) {
    let status = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .status()
        .await
        .expect("mosquitto_pub is installed");
    assert!(status.success(), "mosquitto_pub {args:?} failed");
}

/// A `mosquitto_sub` started with `-d`, returned once its SUBACK arrived,
/// and the rest of its output: the messages, without the debug lines.
struct Subscribed {
    child: tokio::process::Child,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

async fn mosquitto_sub_subscribed(port: u16, args: &[&str]) -> Subscribed {
    use tokio::io::AsyncBufReadExt;
    // Line-buffered, so the SUBACK line arrives as it is printed.
    let mut child = Command::new("stdbuf")
        .args([
            "-oL",
            "mosquitto_sub",
            "-d",
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .args(args)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("stdbuf and mosquitto_sub are installed");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    loop {
        let line = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .expect("SUBACK in time")
            .unwrap()
            .expect("mosquitto_sub ended before its SUBACK");
        if line.contains("received SUBACK") {
            return Subscribed { child, lines };
        }
    }
}

impl Subscribed {
    /// Everything printed after the SUBACK, except mosquitto_sub's debug
    /// lines ("Client ... sending/received ...", "Subscribed ...").
    async fn messages(mut self) -> String {
        let mut out = String::new();
        while let Some(line) = tokio::time::timeout(WAIT, self.lines.next_line())
            .await
            .expect("mosquitto_sub ends")
            .unwrap()
        {
            if !line.starts_with("Client ") && !line.starts_with("Subscribed ") {
                out.push_str(&line);
                out.push('\n');
            }
        }
        let _ = self.child.wait().await;
        out
    }
}

async fn output(child: tokio::process::Child) -> String {
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("mosquitto_sub ends")
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn pub_and_sub_on_both_versions() {
    let broker = start().await;
    let port = broker.local_addr().port();
    for version in ["mqttv311", "mqttv5"] {
        let sub =
            mosquitto_sub_subscribed(port, &["-V", version, "-t", "demo/#", "-v", "-q", "1", "-C", "2"])
                .await;
        mosquitto_pub(port, &["-V", version, "-t", "demo/a", "-m", "one", "-q", "1"]).await;
        mosquitto_pub(port, &["-V", version, "-t", "demo/b", "-m", "two", "-q", "2"]).await;
        assert_eq!(sub.messages().await, "demo/a one\ndemo/b two\n", "{version}");
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn retained_message_for_late_subscriber() {
    let broker = start().await;
    let port = broker.local_addr().port();
    mosquitto_pub(port, &["-t", "status/boiler", "-m", "ok", "-r", "-q", "1"]).await;
    let sub = mosquitto_sub(port, &["-t", "status/+", "-v", "-C", "1", "-V", "mqttv5"]).await;
    assert_eq!(output(sub).await, "status/boiler ok\n");
    broker.shutdown().await;
}

#[tokio::test]
async fn sys_topics_are_published() {
    let broker = start_with(roomq::Config {
        sys_interval_secs: 1,
        ..test_config()
    })
    .await;
    let port = broker.local_addr().port();
    let sub = mosquitto_sub(
        port,
        &[
            "-t",
            "$SYS/broker/version",
            "-t",
            "$SYS/broker/uptime",
            "-t",
            "$SYS/broker/clients/connected",
            "-t",
            "$SYS/broker/messages/received",
            "-t",
            "$SYS/broker/messages/sent",
            "-v",
            "-C",
            "5",
        ],
    )
    .await;
    let out = output(sub).await;
    for topic in [
        "version",
        "uptime",
        "clients/connected",
        "messages/received",
        "messages/sent",
    ] {
        assert!(
            out.contains(&format!("$SYS/broker/{topic} ")),
            "{topic} missing in {out}"
        );
    }
    assert!(out.contains("$SYS/broker/version roomq"), "{out}");
    broker.shutdown().await;
}
