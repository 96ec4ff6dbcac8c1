//! The browser chat: a `ws` listener with `web = true` serves the page at
//! `/` and MQTT over WebSocket at its `path` on the same port; two headless
//! Chromium pages (web/test/chat.test.mjs, puppeteer-core) chat through it,
//! and reconnect after the broker restarts. With end-to-end encryption, a
//! page and a Rust client read each other's sealed messages
//! (web/test/e2ee.test.mjs).

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::chat::{ack_publish5, publish_with, send_and_ack, user5};
use common::e2ee::{self, RoomKey};
use common::*;
use roomq::config::{AuthConfig, ListenerConfig, ListenerKind, RoomConfig};
use roomq::Config;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

fn web_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("web")
}

/// A sled-backed broker with one `ws` listener at `bind` serving the chat.
fn web_config(data: &Path, bind: SocketAddr) -> Config {
    Config {
        listeners: vec![ListenerConfig {
            kind: ListenerKind::Ws,
            web: true,
            ..ListenerConfig::tcp(bind)
        }],
        web_root: web_root(),
        ..sled_config(data)
    }
}

/// One HTTP/1.1 request on a new connection: status, head and body.
async fn http(addr: SocketAddr, request: &str) -> (u16, String, Vec<u8>) {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (response, closed) = common::http::exchange(stream, request).await;
    assert!(closed, "the broker closes after the response to {request:?}");
    assert!(
        response.windows(4).any(|w| w == b"\r\n\r\n"),
        "a complete response head to {request:?}"
    );
    common::http::split(&response)
}

async fn get(addr: SocketAddr, path: &str) -> (u16, String, Vec<u8>) {
    http(addr, &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n")).await
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

/// The npm packages `npm ci --prefix web` installs: those the page loads
/// and the one that drives Chromium.
fn assert_libraries_installed() {
    for package in [
        "mqtt",
        "cbor-x",
        "libsodium-sumo",
        "libsodium-wrappers-sumo",
        "puppeteer-core",
    ] {
        let dir = web_root().join("node_modules").join(package);
        assert!(
            dir.is_dir(),
            "{} missing: run ./scripts/test (it runs `npm ci --prefix web`)",
            dir.display()
        );
    }
}

#[tokio::test]
async fn a_web_listener_serves_the_page_and_mqtt_on_the_same_port() {
    assert_libraries_installed();
    let dir = tempfile::tempdir().unwrap();
    let broker = start_with(web_config(dir.path(), "127.0.0.1:0".parse().unwrap())).await;
    let addr = broker.local_addr();

    let (status, head, body) = get(addr, "/").await;
    assert_eq!(status, 200, "{head}");
    assert!(
        header(&head, "content-type")
            .unwrap_or("")
            .starts_with("text/html"),
        "{head}"
    );
    let policy = header(&head, "content-security-policy").expect("a CSP header");
    assert!(
        policy.contains("script-src 'self'") && policy.contains("connect-src 'self'"),
        "{policy}"
    );
    assert_eq!(header(&head, "x-content-type-options"), Some("nosniff"));
    let page = String::from_utf8_lossy(&body);
    assert!(
        page.contains("vendor/mqtt.min.js") && page.contains("app.js"),
        "{page}"
    );
    // Everything the page loads comes from this origin.
    assert!(!page.contains("http://") && !page.contains("https://"), "{page}");

    let (status, _, body) = get(addr, "/config.json").await;
    assert_eq!(status, 200);
    let config: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(config["mqtt_path"], "/mqtt");
    for library in [
        "/vendor/mqtt.min.js",
        "/vendor/cbor-x.min.js",
        "/vendor/libsodium-sumo.js",
        "/vendor/libsodium-wrappers-sumo.js",
        "/e2ee.js",
        "/app.js",
        "/view.js",
        "/actions.js",
        "/style.css",
    ] {
        let (status, head, body) = get(addr, library).await;
        assert_eq!(status, 200, "{library}: {head}");
        assert!(!body.is_empty(), "{library} is empty");
    }
    // HEAD: the same head, no body.
    let (status, head, body) = http(addr, &format!("HEAD / HTTP/1.1\r\nHost: {addr}\r\n\r\n")).await;
    assert_eq!(status, 200, "{head}");
    assert!(body.is_empty());
    // Only the listed files: nothing else under web/, nothing outside it.
    for path in [
        "/package.json",
        "/node_modules/mqtt/package.json",
        "/../Cargo.toml",
        "/nope",
    ] {
        assert_eq!(get(addr, path).await.0, 404, "{path}");
    }
    let (status, _, _) = http(
        addr,
        &format!("POST / HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\n\r\n"),
    )
    .await;
    assert_eq!(status, 405);

    // MQTT over WebSocket on the same port still works, and counts as a
    // connection while the page requests did not.
    let (socket, response) = ws_connect(addr).await;
    assert_eq!(response.status(), 101);
    assert_eq!(broker.metrics().protocol_errors.get(), 0);
    drop(socket);
    broker.shutdown().await;
}

#[tokio::test]
async fn a_web_listener_without_the_libraries_says_how_to_get_them() {
    let dir = tempfile::tempdir().unwrap();
    let empty = tempfile::tempdir().unwrap();
    let mut config = web_config(dir.path(), "127.0.0.1:0".parse().unwrap());
    config.web_root = empty.path().to_path_buf();
    let broker = start_with(config).await;
    let addr = broker.local_addr();
    // The page itself is built in; the libraries are not.
    assert_eq!(get(addr, "/").await.0, 200);
    let (status, _, body) = get(addr, "/vendor/mqtt.min.js").await;
    assert_eq!(status, 503);
    assert!(String::from_utf8_lossy(&body).contains("npm ci --prefix web"));
    broker.shutdown().await;
}

/// A library is read from disk once and then served from one shared copy
/// in memory: a request that does not read its answer holds a reference
/// to that copy, not a file-sized buffer of its own. Changing the file on
/// disk after the first request shows it: the second gets the first copy.
#[tokio::test]
async fn a_library_is_read_once_and_served_from_memory() {
    let dir = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let file = root.path().join("node_modules/mqtt/dist/mqtt.min.js");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, b"first copy").unwrap();
    let mut config = web_config(dir.path(), "127.0.0.1:0".parse().unwrap());
    config.web_root = root.path().to_path_buf();
    let broker = start_with(config).await;
    let addr = broker.local_addr();
    let (status, _, body) = get(addr, "/vendor/mqtt.min.js").await;
    assert_eq!((status, &body[..]), (200, &b"first copy"[..]));
    std::fs::write(&file, b"changed on disk").unwrap();
    let (status, _, body) = get(addr, "/vendor/mqtt.min.js").await;
    assert_eq!((status, &body[..]), (200, &b"first copy"[..]));
    broker.shutdown().await;
}

#[tokio::test]
async fn a_ws_listener_without_web_serves_no_page() {
    let broker = start_with(ws_config()).await;
    let addr = broker.local_addr();
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET / HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    let (response, _) = common::http::exchange(stream, &request).await;
    let response = String::from_utf8_lossy(&response);
    assert!(!response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(!response.contains("<html"), "{response}");
    broker.shutdown().await;
}

/// `contrib/web-chat.toml`, the README's way to open the chat, is a valid
/// configuration whose page and libraries are served.
#[tokio::test]
async fn the_readme_web_chat_configuration_serves_the_page() {
    assert_libraries_installed();
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/web-chat.toml");
    let mut config = Config::load(Some(&file), &[]).expect("contrib/web-chat.toml loads");
    let web = config
        .listeners
        .iter_mut()
        .find(|l| l.web)
        .expect("a listener with web = true");
    assert_eq!(web.kind, ListenerKind::Ws);
    assert_eq!(
        web.bind,
        "127.0.0.1:8080".parse().unwrap(),
        "the address the README opens"
    );
    // The same listeners on free ports; the rest as written.
    for listener in &mut config.listeners {
        listener.bind = "127.0.0.1:0".parse().unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    config.store.storage = roomq::StorageKind::Sled;
    config.data_dir = dir.path().to_path_buf();
    config.sys_interval_secs = 0;
    let broker = start_with(config).await;
    let (_, ws) = *broker
        .local_addrs()
        .iter()
        .find(|(kind, _)| *kind == ListenerKind::Ws)
        .expect("the ws listener is bound");
    assert_eq!(get(ws, "/").await.0, 200);
    assert_eq!(get(ws, "/vendor/mqtt.min.js").await.0, 200);
    assert_eq!(get(ws, "/vendor/cbor-x.min.js").await.0, 200);
    broker.shutdown().await;
}

/// Debian's Chromium, or `$CHROMIUM`.
fn chromium() -> String {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} missing: ./scripts/test installs the Debian package chromium"
    );
    chromium
}

fn token(secret: &str, claims: serde_json::Value) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mut claims = claims;
    claims["exp"] = (now + 3600).into();
    jwt(secret, &claims)
}

/// `node web/test/chat.test.mjs SCENARIO URL PARAMS` with headless
/// Chromium, its stdout read line by line (the `chat` scenario asks for a
/// broker restart there) and its stdin open for the answer.
struct BrowserTest {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl BrowserTest {
    fn start(scenario: &str, addr: SocketAddr, params: serde_json::Value) -> BrowserTest {
        assert_libraries_installed();
        let chromium = chromium();
        let mut child = tokio::process::Command::new("node")
            .arg(web_root().join("test/chat.test.mjs"))
            .arg(scenario)
            .arg(format!("http://{addr}/"))
            .arg(params.to_string())
            .env("CHROMIUM", &chromium)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node runs (./scripts/test installs nodejs)");
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        BrowserTest { child, stdin, lines }
    }

    /// Waits for the scenario's end (it has no requests) and checks it held.
    async fn finish(mut self) {
        let status = tokio::time::timeout(std::time::Duration::from_secs(240), async {
            while let Some(line) = self
                .lines
                .next_line()
                .await
                .expect("read the browser test's output")
            {
                println!("browser test: {line}");
            }
            self.child.wait().await.expect("the browser test ends")
        })
        .await
        .expect("the browser test finishes within 4 minutes");
        assert!(
            status.success(),
            "the browser test failed (its steps are on stderr above)"
        );
    }
}

/// A broker that verifies names: a password file, tokens signed with
/// `secret`, and the closed room lobby of alice and bob, moderated by
/// alice (and by whoever a token's `mod_rooms` names).
fn closed_lobby(data: &Path, bind: SocketAddr, passwords: &Path, secret: &str) -> Config {
    let mut config = web_config(data, bind);
    config.auth = AuthConfig {
        allow_anonymous: Some(false),
        password_file: Some(passwords.to_path_buf()),
        jwt_secret: Some(secret.into()),
        ..Default::default()
    };
    config.rooms = vec![RoomConfig {
        name: "lobby".into(),
        members: vec!["alice".into(), "bob".into()],
        open: false,
        moderators: vec!["alice".into()],
    }];
    config
}

/// Two pages in headless Chromium: alice logs in with a password, bob with
/// a token; presence, typing, a message each way with sender and time, a
/// read receipt, history after a reload, and both pages reconnecting and
/// chatting after the broker restarts on the same port and data; then
/// reactions, an edit and a delete, live and from history after a reload;
/// alice, a moderator, deletes a message of bob's.
/// Its last step takes the README's screenshot: to remake
/// `docs/web-chat.png`, run this test and copy the file it names
/// (`target/tmp/web-chat.png`) there. The emoji need a colour emoji font
/// (Debian's `fonts-noto-color-emoji`, which `./scripts/test` installs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_browsers_chat_and_reconnect_after_a_broker_restart() {
    let dir = tempfile::tempdir().unwrap();
    let passwords = dir.path().join("passwd");
    roomq::auth::password_file::set_password(&passwords, "alice", b"alice-pw").unwrap();
    let secret = "web-chat-secret";
    let data = dir.path().join("data");
    let configure = |bind: SocketAddr| closed_lobby(&data, bind, &passwords, secret);
    let first = start_with(configure("127.0.0.1:0".parse().unwrap())).await;
    let addr = first.local_addr();
    let mut broker = Some(first);

    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("web-chat.png");
    let _ = std::fs::remove_file(&screenshot);
    let BrowserTest {
        mut child,
        mut stdin,
        mut lines,
    } = BrowserTest::start(
        "chat",
        addr,
        serde_json::json!({
            "screenshot": screenshot,
            "alicePassword": "alice-pw",
            "bobToken": token(secret, serde_json::json!({ "sub": "bob" })),
        }),
    );
    let mut restarted = false;
    let finished = tokio::time::timeout(std::time::Duration::from_secs(240), async {
        while let Some(line) = lines.next_line().await.expect("read the browser test's output") {
            if line.trim() == "restart" {
                if let Some(running) = broker.take() {
                    running.shutdown().await;
                }
                broker = Some(start_with(configure(addr)).await);
                restarted = true;
                stdin
                    .write_all(b"go\n")
                    .await
                    .expect("tell the browser test to go on");
            }
        }
        child.wait().await.expect("the browser test ends")
    })
    .await
    .expect("the browser test finishes within 4 minutes");
    assert!(
        finished.success(),
        "the browser test failed (its steps are on stderr above)"
    );
    assert!(restarted, "the browser test never asked for the restart");
    assert!(screenshot.exists(), "no screenshot at {}", screenshot.display());
    println!("screenshot: {}", screenshot.display());
    if let Some(running) = broker {
        running.shutdown().await;
    }
}

/// A page refused a room says so and offers the room picker, instead of a
/// "Subscribe error" in the header, a reconnecting dot and a composer that
/// cannot post: carol, no member of the closed lobby, opens it; bob is
/// banned from it by a moderator (a token with the `mod_rooms` claim).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_room_and_a_ban_show_a_clear_message_and_the_way_back() {
    let dir = tempfile::tempdir().unwrap();
    let passwords = dir.path().join("passwd");
    roomq::auth::password_file::set_password(&passwords, "alice", b"alice-pw").unwrap();
    let secret = "web-chat-secret";
    let broker = start_with(closed_lobby(
        &dir.path().join("data"),
        "127.0.0.1:0".parse().unwrap(),
        &passwords,
        secret,
    ))
    .await;
    BrowserTest::start(
        "refusals",
        broker.local_addr(),
        serde_json::json!({
            "carolToken": token(secret, serde_json::json!({ "sub": "carol" })),
            "bobToken": token(secret, serde_json::json!({ "sub": "bob" })),
            "modToken": token(secret, serde_json::json!({ "sub": "mod", "mod_rooms": ["lobby"] })),
        }),
    )
    .finish()
    .await;
    broker.shutdown().await;
}

/// In an open room two users who only joined (no post, no typing) see
/// each other in the member list, with presence: the broker publishes
/// `$rooms/{room}/members` for open rooms too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_who_only_joined_an_open_room_see_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_with(web_config(dir.path(), "127.0.0.1:0".parse().unwrap())).await;
    BrowserTest::start("members", broker.local_addr(), serde_json::json!({}))
        .finish()
        .await;
    broker.shutdown().await;
}

/// End-to-end encryption between the browser and Rust (topics.md, *End-to-end
/// encryption*): the page computes the test vector as the Rust code does;
/// alice's page seals a message that a Rust member (bob) receives sealed
/// and opens with `examples/common/e2ee.rs`; bob's sealed message from Rust
/// shows in clear on her page and carol's plain one as not readable; eve,
/// with another passphrase, reads none of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_and_a_rust_client_read_each_others_sealed_messages() {
    assert_libraries_installed();
    let chromium = chromium();
    let passphrase = "a passphrase the room shares";
    let dir = tempfile::tempdir().unwrap();
    // The page on the ws listener, the Rust clients on a tcp one.
    let mut config = web_config(dir.path(), "127.0.0.1:0".parse().unwrap());
    config
        .listeners
        .push(ListenerConfig::tcp("127.0.0.1:0".parse().unwrap()));
    let broker = start_with(config).await;
    let addr = broker.local_addr();
    let (_, tcp) = *broker
        .local_addrs()
        .iter()
        .find(|(kind, _)| *kind == ListenerKind::Tcp)
        .expect("the tcp listener is bound");
    let key = RoomKey::derive(passphrase, "lobby").unwrap();
    let mut bob = user5(tcp, "bob-rust", "bob").await;
    bob.subscribe5(
        1,
        &[("rooms/lobby/msg/+", opts(rmqtt_codec::types::QoS::AtLeastOnce))],
    )
    .await;

    let mut browser = tokio::process::Command::new("node")
        .arg(web_root().join("test/e2ee.test.mjs"))
        .arg(format!("http://{addr}/"))
        .arg(e2ee::vector_json())
        .arg(passphrase)
        .env("CHROMIUM", &chromium)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs (./scripts/test installs nodejs)");

    // Page to Rust: what the broker forwards is sealed, and opens.
    let from_page = async {
        loop {
            match bob
                .recv5_within(std::time::Duration::from_secs(150))
                .await
                .packet()
            {
                rmqtt_codec::v5::Packet::Publish(p) => {
                    ack_publish5(&mut bob, &p).await;
                    if p.topic == "rooms/lobby/msg/alice" {
                        return p.payload;
                    }
                }
                other => panic!("expected alice's message, got {other:?}"),
            }
        }
    };
    let sealed = tokio::select! {
        sealed = from_page => sealed,
        status = browser.wait() => panic!("the browser test ended before alice's message came: {status:?}"),
    };
    assert!(sealed.starts_with(b"rqe1"), "{sealed:?}");
    assert!(
        !sealed.windows(6).any(|w| w == b"sealed"),
        "plaintext on the wire: {sealed:?}"
    );
    assert_eq!(
        key.open("alice", &sealed).as_deref(),
        Some(&b"sealed from the page"[..])
    );

    // Rust to page: one sealed message, one in clear.
    let body = key.seal("bob", b"sealed from rust").unwrap();
    let ack = send_and_ack(&mut bob, publish_with("rooms/lobby/msg/bob", &body, Some(2), &[])).await;
    assert_eq!(ack.reason_code, rmqtt_codec::v5::PublishAckReason::Success);
    let mut carol = user5(tcp, "carol-rust", "carol").await;
    let plain = publish_with("rooms/lobby/msg/carol", b"plain from rust", Some(1), &[]);
    let ack = send_and_ack(&mut carol, plain).await;
    assert_eq!(ack.reason_code, rmqtt_codec::v5::PublishAckReason::Success);

    let finished = tokio::time::timeout(std::time::Duration::from_secs(240), browser.wait())
        .await
        .expect("the browser test finishes within 4 minutes")
        .expect("the browser test ends");
    assert!(
        finished.success(),
        "the browser test failed (its steps are on stderr above)"
    );
    broker.shutdown().await;
}
