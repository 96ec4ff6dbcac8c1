//! A newcomer's path (issue 25, item 6): what a new user meets following
//! the README from the top: the configuration file's paths, the secure
//! example in `contrib/`, environment variables, error texts, the
//! `roomq passwd` file's mode, the `--admin-listen` flag and the start-up
//! log lines.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use roomq::config::ListenerKind;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn relative_paths_in_a_config_file_resolve_against_its_folder() {
    let dir = tempfile::tempdir().unwrap();
    let etc = dir.path().join("etc");
    std::fs::create_dir(&etc).unwrap();
    let file = etc.join("roomq.toml");
    std::fs::write(
        &file,
        r#"
data_dir = "state"
web_root = "web"
listeners = [{ kind = "tls", bind = "127.0.0.1:0", cert = "tls/cert.pem", key = "/abs/key.pem" }]
[auth]
password_file = "passwords"
"#,
    )
    .unwrap();
    let config = roomq::Config::load_from(Some(&file), Vec::new(), &[]).unwrap();
    assert_eq!(config.data_dir, etc.join("state"));
    assert_eq!(config.web_root, etc.join("web"));
    assert_eq!(config.auth.password_file, Some(etc.join("passwords")));
    assert_eq!(config.listeners[0].cert, Some(etc.join("tls/cert.pem")));
    assert_eq!(config.listeners[0].key, Some(PathBuf::from("/abs/key.pem")));
    // A path given as a flag or an environment variable is the user's
    // own: relative to the working directory; a default stays as it is.
    let flagged = roomq::Config::load_from(
        Some(&file),
        env(&[("ROOMQ_AUTH__PASSWORD_FILE", "pw")]),
        &[("data_dir", "here".into())],
    )
    .unwrap();
    assert_eq!(flagged.data_dir, PathBuf::from("here"));
    assert_eq!(flagged.auth.password_file, Some(PathBuf::from("pw")));
    let plain = roomq::Config::load_from(None, Vec::new(), &[]).unwrap();
    assert_eq!(plain.data_dir, PathBuf::from("./data"));
}

#[test]
fn nested_settings_come_from_double_underscore_environment_variables() {
    let config = roomq::Config::load_from(
        None,
        env(&[
            ("ROOMQ_AUTH__PASSWORD_FILE", "/etc/roomq/passwords"),
            ("ROOMQ_AUTH__ALLOW_ANONYMOUS", "false"),
            ("ROOMQ_MAX_CONNECTIONS", "5"),
            ("PATH", "/bin"),
        ]),
        &[],
    )
    .unwrap();
    assert_eq!(
        config.auth.password_file,
        Some(PathBuf::from("/etc/roomq/passwords"))
    );
    assert_eq!(config.auth.allow_anonymous, Some(false));
    assert_eq!(config.limits.max_connections, 5);
    // The guess a newcomer makes is named, with the right spelling.
    let err = roomq::Config::load_from(None, env(&[("ROOMQ_AUTH_PASSWORD_FILE", "x")]), &[])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("ROOMQ_AUTH_PASSWORD_FILE") && err.contains("ROOMQ_AUTH__PASSWORD_FILE"),
        "{err}"
    );
    let err = roomq::Config::load_from(None, env(&[("ROOMQ_MAX_CONECTIONS", "5")]), &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("ROOMQ_MAX_CONECTIONS"), "{err}");
    assert!(err.len() < 400, "no list of 80 fields: {err}");
}

#[test]
fn a_wrong_choice_lists_the_valid_ones() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("roomq.toml");
    for (text, wanted) in [
        ("durability = \"fast\"\n", &["`flush`", "`buffered`"][..]),
        ("storage = \"x\"\n", &["`memory`", "`sled`"]),
        (
            "listeners = [{ kind = \"tpc\", bind = \"127.0.0.1:0\" }]\n",
            &["`tcp`", "`tls`", "`ws`", "`wss`"],
        ),
        ("rooms_default = \"shut\"\n", &["`open`", "`closed`"]),
    ] {
        std::fs::write(&file, text).unwrap();
        let err = roomq::Config::load_from(Some(&file), Vec::new(), &[])
            .unwrap_err()
            .to_string();
        for want in wanted {
            assert!(err.contains(want), "{text}: {err}");
        }
    }
    let err = roomq::Config::load_from(None, env(&[("ROOMQ_DURABILITY", "fast")]), &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("`flush`") && err.contains("`buffered`"), "{err}");
}

#[test]
fn roomq_passwd_creates_a_file_only_its_owner_can_read() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("passwords");
    roomq::auth::password_file::set_password(&file, "alice", b"secret").unwrap();
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "mode {mode:o}");
    // A mode the operator chose is kept when a password changes.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
    roomq::auth::password_file::set_password(&file, "bob", b"secret").unwrap();
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640, "mode {mode:o}");
}

#[tokio::test]
async fn a_second_broker_on_one_data_dir_says_another_roomq_uses_it() {
    let dir = tempfile::tempdir().unwrap();
    let first = start_with(sled_config(dir.path())).await;
    let err = match roomq::Broker::new(sled_config(dir.path())).start().await {
        Ok(_) => panic!("two brokers opened one data_dir"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("another roomq is using this data_dir"), "{err}");
    assert!(!err.contains("WouldBlock"), "{err}");
    first.shutdown().await;
}

#[tokio::test]
async fn the_in_process_subscribe_error_is_a_std_error() {
    let broker = start().await;
    let err = broker
        .subscribe("bad/#/filter", roomq::QoS::AtMostOnce)
        .err()
        .expect("an invalid filter is refused");
    let err: Box<dyn std::error::Error + Send + Sync> = Box::new(err);
    assert!(err.to_string().contains("bad/#/filter"), "{err}");
    broker.shutdown().await;
}

/// A self-signed certificate for localhost, as `cert.pem` and `key.pem`
/// in `dir`.
fn self_signed(dir: &Path) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
}

/// `contrib/roomq-secure.toml` as written, its files next to it (what its
/// comment tells the user to make), ports changed to free ones: TLS with
/// a password works, a wrong password does not, the admin listener is up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_secure_example_config_starts_and_takes_tls_with_a_password() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/roomq-secure.toml"))
        .expect("contrib/roomq-secure.toml");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("roomq-secure.toml");
    let ported = text
        .replace("0.0.0.0:8883", "127.0.0.1:0")
        .replace("127.0.0.1:9183", "127.0.0.1:0");
    assert_ne!(ported, text, "the example's ports moved: update this test");
    std::fs::write(&file, ported).unwrap();
    self_signed(dir.path());
    roomq::auth::password_file::set_password(&dir.path().join("passwords"), "alice", b"s3cret").unwrap();

    // From another working directory's point of view: paths are the file's.
    let config = roomq::Config::load(Some(&file), &[]).unwrap();
    assert_eq!(config.data_dir, dir.path().join("data"));
    let broker = start_with(config).await;
    assert!(dir.path().join("data").is_dir(), "the store is next to the file");
    let (kind, addr) = broker.local_addrs()[0];
    assert_eq!(kind, ListenerKind::Tls);
    let admin = broker.admin_addr().expect("admin listener");
    assert_eq!(common::http::get(admin, "/healthz").await.0, 200);

    let publish = |password: &'static str| {
        let cafile = dir.path().join("cert.pem");
        async move {
            tokio::process::Command::new("mosquitto_pub")
                .args(["-h", "localhost", "-p", &addr.port().to_string(), "--cafile"])
                .arg(cafile)
                .args(["-u", "alice", "-P", password, "-q", "1"])
                .args(["-t", "rooms/ops/msg/alice", "-m", "hello"])
                .output()
                .await
                .expect("mosquitto_pub runs (scripts/test installs mosquitto-clients)")
        }
    };
    let ok = publish("s3cret").await;
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let refused = publish("wrong").await;
    assert!(!refused.status.success(), "a wrong password is refused");
    broker.shutdown().await;
}

/// The lines of a `roomq` binary's stderr, read as they come.
struct Lines {
    lines: Arc<Mutex<Vec<String>>>,
    reader: std::thread::JoinHandle<()>,
}

impl Lines {
    fn of(child: &mut std::process::Child) -> Lines {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let stderr = child.stderr.take().unwrap();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Lines { lines, reader }
    }

    /// Waits (bounded) for a line containing `what`; returns it.
    fn wait_for(&self, what: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(line) = self.lines.lock().unwrap().iter().find(|l| l.contains(what)) {
                return line.clone();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "never logged {what:?}: {:#?}",
                self.lines.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every line, once `child` has been stopped and its stderr read to
    /// the end.
    fn all_after_killing(self, child: &mut std::process::Child) -> Vec<String> {
        let _ = child.kill();
        let _ = child.wait();
        self.reader.join().expect("the reader ends with the process");
        self.lines.lock().unwrap().clone()
    }
}

/// A child process stopped when the test ends, also when it fails.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The value of `key=` in a text log line.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split(&format!("{key}="))
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no {key}= in {line}"))
}

/// A 3.1.1 CONNECT with an empty client id, `user` and `password`; returns
/// the CONNACK's return code and the socket.
fn connect311(addr: std::net::SocketAddr, user: &str, password: &str) -> (u8, std::net::TcpStream) {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0xC2, 0, 60, 0, 0];
    for s in [user, password] {
        body.extend_from_slice(&(s.len() as u16).to_be_bytes());
        body.extend_from_slice(s.as_bytes());
    }
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend_from_slice(&body);
    let mut socket = std::net::TcpStream::connect(addr).unwrap();
    socket.set_read_timeout(Some(WAIT)).unwrap();
    socket.write_all(&packet).unwrap();
    let mut connack = [0u8; 4];
    socket.read_exact(&mut connack).unwrap();
    (connack[3], socket)
}

/// A QoS 0 PUBLISH of `payload` (under 100 bytes with the topic) to `topic`.
fn publish0(socket: &mut std::net::TcpStream, topic: &str, payload: &[u8]) {
    let mut body = (topic.len() as u16).to_be_bytes().to_vec();
    body.extend_from_slice(topic.as_bytes());
    body.extend_from_slice(payload);
    let mut packet = vec![0x30, body.len() as u8];
    packet.extend_from_slice(&body);
    socket.write_all(&packet).unwrap();
}

/// The binary's start-up lines: no Rust debug forms, `--admin-listen` as
/// a flag, the browser chat's URL; one line per failed login.
#[test]
fn start_up_and_login_lines_read_as_a_user_expects() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("roomq.toml");
    std::fs::write(
        &file,
        "storage = \"memory\"\nsys_interval_secs = 0\nmax_room_message_bytes = 64\nlisteners = [\n  { kind = \"tcp\", bind = \"127.0.0.1:0\" },\n  { kind = \"ws\", bind = \"127.0.0.1:0\", web = true },\n]\n[auth]\nallow_anonymous = false\npassword_file = \"passwords\"\n",
    )
    .unwrap();
    roomq::auth::password_file::set_password(&dir.path().join("passwords"), "alice", b"s3cret").unwrap();
    let mut child = KillOnDrop(
        std::process::Command::new(env!("CARGO_BIN_EXE_roomq"))
            .arg("-c")
            .arg(&file)
            .args(["--admin-listen", "127.0.0.1:0"])
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("roomq starts"),
    );
    let lines = Lines::of(&mut child.0);
    lines.wait_for("roomq listening");
    let admin = lines.wait_for("admin listener");
    let admin: std::net::SocketAddr = field(&admin, "admin_addr").parse().expect("an address");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    assert_eq!(runtime.block_on(common::http::get(admin, "/healthz")).0, 200);
    let tcp = lines.wait_for("kind=tcp");
    let tcp: std::net::SocketAddr = field(&tcp, "local_addr").parse().unwrap();
    let chat = lines.wait_for("browser chat");
    assert!(field(&chat, "url").starts_with("http://127.0.0.1:"), "{chat}");

    // Two posts over max_room_message_bytes from a 3.1.1 client, which
    // cannot be told why: one line says it. A PINGRESP after them means
    // both were handled.
    let (code, mut alice) = connect311(tcp, "alice", "s3cret");
    assert_eq!(code, 0);
    let connected = lines.wait_for("client connected");
    assert!(connected.contains("version=3.1.1"), "{connected}");
    for _ in 0..2 {
        publish0(&mut alice, "rooms/lobby/msg/alice", &[b'x'; 80]);
    }
    alice.write_all(&[0xC0, 0]).unwrap();
    let mut pingresp = [0u8; 2];
    alice.read_exact(&mut pingresp).unwrap();
    assert_eq!(pingresp, [0xD0, 0]);

    assert_eq!(
        connect311(tcp, "alice", "wrong").0,
        4,
        "bad user name or password"
    );
    lines.wait_for("login failed");
    let all = lines.all_after_killing(&mut child.0);
    for line in &all {
        assert!(!line.contains("Some("), "a Rust debug form: {line}");
        assert!(!line.contains("kind=Tcp") && !line.contains("kind=Ws"), "{line}");
        assert!(!line.contains("client_id= "), "an empty client id: {line}");
    }
    let refusals: Vec<_> = all
        .iter()
        .filter(|l| l.contains("login failed") || l.contains("connection refused"))
        .collect();
    assert_eq!(refusals.len(), 1, "one line per failed login: {refusals:#?}");
    let posts: Vec<_> = all.iter().filter(|l| l.contains("room post refused")).collect();
    assert_eq!(posts.len(), 1, "once per connection: {posts:#?}");
    assert!(posts[0].contains("max_room_message_bytes=64"), "{}", posts[0]);
}

/// `examples/embed.rs` is the README's *Embedding* program, word for word,
/// and it runs to its end.
#[test]
fn the_embedding_example_is_the_readmes_and_runs() {
    let root = env!("CARGO_MANIFEST_DIR");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    let example = std::fs::read_to_string(format!("{root}/examples/embed.rs")).unwrap();
    assert!(
        readme.contains(&format!("```rust\n{example}```\n")),
        "README's Embedding block differs from examples/embed.rs"
    );
    assert!(readme.contains("tokio = { version = \"1\", features = [\"macros\", \"rt-multi-thread\"] }"));
    embed::run().expect("the example runs");
}

/// The example's text as it is, compiled here so the test can run it.
mod embed {
    include!("../examples/embed.rs");

    pub fn run() -> Result<(), Box<dyn std::error::Error>> {
        main()
    }
}
