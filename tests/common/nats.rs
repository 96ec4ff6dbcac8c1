//! A NATS JetStream cluster for the cluster tests: `nats-server` processes
//! (the Debian package; `./scripts/test` installs it) on free loopback
//! ports, with temporary store directories, stopped when dropped.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use roomq::config::ClusterConfig;
use roomq::Config;

pub struct NatsServer {
    pub port: u16,
    conf: std::path::PathBuf,
    log: std::path::PathBuf,
    child: Option<Child>,
}

pub struct NatsCluster {
    _dir: tempfile::TempDir,
    pub servers: Vec<NatsServer>,
}

/// A free port below Linux's ephemeral range (32768 and up), so that no
/// outgoing connection of a parallel test takes it before the server
/// binds it.
pub fn free_port() -> u16 {
    loop {
        let port = rand::random_range(20_000..32_000);
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

impl NatsCluster {
    /// Starts `n` servers that form one JetStream cluster (on new ports
    /// if a port was taken meanwhile).
    pub fn start(n: usize) -> NatsCluster {
        NatsCluster::start_with(n, "")
    }

    /// `start`, with `extra` added to every server's configuration (an
    /// `authorization { ... }` block, say).
    pub fn start_with(n: usize, extra: &str) -> NatsCluster {
        let mut last_error = String::new();
        for _ in 0..5 {
            match NatsCluster::try_start(n, extra) {
                Ok(cluster) => return cluster,
                Err(error) => last_error = error,
            }
        }
        panic!("{last_error}");
    }

    fn try_start(n: usize, extra: &str) -> Result<NatsCluster, String> {
        let dir = tempfile::tempdir().expect("temp dir");
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, c)| format!("nats://127.0.0.1:{c}"))
            .collect();
        let mut servers = Vec::new();
        for (i, (port, cluster_port)) in ports.iter().enumerate() {
            let store = dir.path().join(format!("js{i}"));
            let conf = dir.path().join(format!("n{i}.conf"));
            let cluster = if n > 1 {
                format!(
                    "cluster {{ name: roomq-test, listen: 127.0.0.1:{cluster_port}, routes: [{}] }}",
                    routes.join(", ")
                )
            } else {
                String::new()
            };
            std::fs::write(
                &conf,
                format!(
                    "server_name: n{i}\nlisten: 127.0.0.1:{port}\njetstream {{ store_dir: {:?} }}\n{cluster}\n{extra}\n",
                    store.display().to_string()
                ),
            )
            .expect("write nats config");
            let mut server = NatsServer {
                port: *port,
                log: dir.path().join(format!("n{i}.log")),
                conf,
                child: None,
            };
            server.spawn();
            servers.push(server);
        }
        for server in &servers {
            server.wait_listening()?;
        }
        Ok(NatsCluster { _dir: dir, servers })
    }

    pub fn urls(&self) -> Vec<String> {
        self.servers
            .iter()
            .map(|s| format!("nats://127.0.0.1:{}", s.port))
            .collect()
    }

    /// A test broker's configuration as cluster node `node`.
    pub fn node_config(&self, node: &str) -> Config {
        Config {
            cluster: Some(ClusterConfig {
                nats: self.urls(),
                node: node.into(),
                replicas: self.servers.len().min(3),
                ..ClusterConfig::default()
            }),
            ..super::test_config()
        }
    }
}

/// Starts the `roomq` binary as cluster node `node` on `nats`, with
/// `top` and `cluster` as extra TOML lines of the top level and of the
/// `[cluster]` section; returns the process, its address and the
/// directory of its configuration (dropped: removed).
pub fn spawn_node(
    nats: &NatsCluster,
    node: &str,
    top: &str,
    cluster: &str,
) -> (std::process::Child, std::net::SocketAddr, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join(format!("{node}.toml"));
    let urls: Vec<String> = nats.urls().iter().map(|u| format!("{u:?}")).collect();
    std::fs::write(
        &config,
        format!(
            "storage = \"memory\"\n{top}\n[cluster]\nnats = [{}]\nnode = \"{node}\"\nreplicas = 3\n{cluster}\n",
            urls.join(", ")
        ),
    )
    .expect("write the node's configuration");
    let (child, addr) = super::spawn_roomq(0, &[std::ffi::OsStr::new("-c"), config.as_os_str()]);
    (child, addr, dir)
}

impl NatsServer {
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("nats log file");
        let child = Command::new("nats-server")
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("nats-server runs (./scripts/test installs the Debian package)");
        self.child = Some(child);
    }

    fn wait_listening(&self) -> Result<(), String> {
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        Err(format!(
            "nats-server on port {} did not start; its log ends:\n{}",
            self.port,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ))
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and store.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
        if let Err(error) = self.wait_listening() {
            panic!("{error}");
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
