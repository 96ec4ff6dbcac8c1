//! The shell examples of README.md, topics.md and every page of `docs/`,
//! run as written against a broker on a free port, with their output
//! checked: an example a user copies must work. Every ```sh block that
//! uses the mosquitto clients is run (blocks that build or benchmark, with
//! `cargo` or `./target`, are not; the cluster example of
//! `docs/cluster.md` runs in `tests/cluster.rs`). What the harness changes, and only that: `-p PORT` after each
//! `mosquitto_pub`/`mosquitto_sub`; a short pause after a command sent to
//! the background (a person typing waits that long); `-W 3` for a
//! `mosquitto_sub` that would otherwise wait forever.

mod common;

use std::time::Duration;

use common::*;

/// The ```sh blocks of `file` that talk to a broker with the mosquitto
/// clients, with the line each starts on.
fn client_examples(file: &str) -> Vec<(usize, String)> {
    let text =
        std::fs::read_to_string(format!("{}/{file}", env!("CARGO_MANIFEST_DIR"))).expect("doc readable");
    let mut blocks = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (n, line) in text.lines().enumerate() {
        match (&mut current, line.trim_end()) {
            (None, "```sh") => current = Some((n + 2, String::new())),
            (Some(_), "```") => {
                if let Some((start, body)) = current.take() {
                    let runs_clients = body.contains("mosquitto_");
                    // A cluster's example runs in tests/cluster.rs.
                    let builds = body.contains("cargo ")
                        || body.contains("./target")
                        || body.contains("scripts/cluster");
                    if runs_clients && !builds {
                        blocks.push((start, body));
                    }
                }
            }
            (Some((_, body)), _) => {
                body.push_str(line);
                body.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

/// The block as a script for a broker on `port` (see the module doc).
fn script_for(block: &str, port: u16) -> String {
    let mut script = String::new();
    for line in block.lines() {
        let mut line = line
            .replace("mosquitto_pub ", &format!("mosquitto_pub -p {port} "))
            .replace("mosquitto_sub ", &format!("mosquitto_sub -p {port} "));
        // A comment starts with `#` at the line's start or after a space;
        // a `#` inside a topic filter (`'demo/#'`) does not.
        let code = if line.trim_start().starts_with('#') {
            String::new()
        } else {
            line.split(" #").next().unwrap_or("").to_string()
        };
        let waits_forever =
            code.contains("mosquitto_sub") && !code.contains(" -W ") && !code.contains(" -C ");
        if waits_forever {
            line = line.replacen(
                &format!("mosquitto_sub -p {port} "),
                &format!("mosquitto_sub -p {port} -W 3 "),
                1,
            );
        }
        script.push_str(&line);
        script.push('\n');
        if code.trim_end().ends_with('&') {
            script.push_str("sleep 0.5\n");
        }
    }
    script.push_str("wait\n");
    script
}

/// The rooms of the configuration a block's text says to start the
/// broker with: the README's moderation block runs with
/// `contrib/moderated-lobby.toml` (its rooms; the listener stays the
/// harness's, checked to be loopback as the file promises).
fn rooms_for(block: &str) -> Vec<roomq::config::RoomConfig> {
    if !block.contains("$rooms/lobby/mod") {
        return Vec::new();
    }
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/moderated-lobby.toml");
    let config = roomq::Config::load(Some(&file), &[]).expect("contrib/moderated-lobby.toml loads");
    assert!(
        config.listeners.iter().all(|l| l.bind.ip().is_loopback()),
        "names are claims there: loopback only"
    );
    config.rooms
}

async fn run_example(file: &str, start: usize, block: &str) -> String {
    let broker = start_with(roomq::Config {
        // The README's demo reads `$SYS` counters.
        sys_interval_secs: 1,
        rooms: rooms_for(block),
        ..test_config()
    })
    .await;
    // Let the first `$SYS` round be published.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let script = script_for(block, broker.local_addr().port());
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("bash")
            .arg("-c")
            .arg(&script)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{file} line {start}: the example did not finish:\n{script}"))
    .expect("bash runs (scripts/test installs mosquitto-clients)");
    broker.shutdown().await;
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// What each example must print (checked by substring), by file and the
/// line its block starts on; a new example block without an entry here
/// fails the test, so examples cannot go unchecked.
fn expected(file: &str, block: &str) -> Vec<&'static str> {
    match file {
        "README.md" if block.contains("demo/#") => {
            vec!["demo/hello hi there", "demo/status online", "$SYS/broker/"]
        }
        // The ban: bob read what came before it, alice got `{ok: true}`.
        "README.md" if block.contains("$rooms/lobby/mod") => vec![
            "rooms/lobby/msg/alice before the ban",
            "users/alice/mod/lobby a1626f6bf5",
        ],
        "README.md" if block.contains("rooms/lobby") => vec![
            "rooms/lobby/msg/alice",
            "hello lobby",
            "seq",
            "rooms/lobby/msg/boiler-7",
            "$presence/alice",
            "while bob was away",
        ],
        // The react event: its topic, then CBOR with "type": "react".
        "topics.md" if block.contains("rooms/ops/react/alice") => {
            vec!["rooms/ops/event/alice a7", "64747970656572656163"]
        }
        "topics.md" if block.contains("rooms/ops/msg/+") => {
            vec![
                "rooms/ops/msg/alice hello ops",
                "rooms/ops/msg/boiler-7 pressure high",
            ]
        }
        "topics.md" if block.contains("users/dev/history") => vec!["users/dev/history/ops"],
        "topics.md" if block.contains("users/mod/mod") => vec!["users/mod/mod/ops"],
        "topics.md" if block.contains("$presence/+") => vec!["$presence/"],
        _ => panic!("{file}: an example block with no expected output in tests/doc_examples.rs:\n{block}"),
    }
}

/// README.md, topics.md and every page of `docs/` (by name, so the order
/// is stable): an example moved to a new page is still run.
fn documents() -> Vec<String> {
    let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
    let mut pages: Vec<String> = std::fs::read_dir(&docs)
        .expect("docs/ readable")
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".md"))
        .map(|name| format!("docs/{name}"))
        .collect();
    pages.sort();
    let mut files = vec!["README.md".to_string(), "topics.md".to_string()];
    files.extend(pages);
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shell_examples_of_the_readme_and_topics_md_work_as_written() {
    let mut ran = 0;
    for file in documents() {
        let file = file.as_str();
        for (start, block) in client_examples(file) {
            let out = run_example(file, start, &block).await;
            for want in expected(file, &block) {
                assert!(
                    out.contains(want),
                    "{file} line {start}: the output lacks {want:?}:\n{out}"
                );
            }
            if block.contains("$rooms/lobby/mod") {
                // Nothing of the room reaches bob after the ban; his
                // post is refused.
                assert!(!out.contains("after the ban"), "{out}");
                assert!(!out.contains("let me in"), "{out}");
            } else if block.contains("rooms/lobby") {
                // Sent twice with one msg-id, stored and delivered once;
                // the forged post is not delivered.
                assert_eq!(out.matches("pressure high").count(), 1, "{out}");
                assert!(!out.contains("fake"), "{out}");
            }
            ran += 1;
        }
    }
    assert_eq!(
        ran, 8,
        "the README, topics.md and docs/ have eight client examples"
    );
}
