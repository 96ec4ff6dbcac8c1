//! The `roomq` binary: flags, configuration layers, logging, signals.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

/// roomq: an MQTT 3.1.1 / 5.0 broker specialised for chat.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Flags {
    /// TOML configuration file.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on for MQTT over TCP (default 127.0.0.1:1883).
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Option<String>,
    /// Directory for durable state (default ./data).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Keep everything in memory.
    #[arg(long)]
    memory: bool,
    /// Most client connections at once.
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
    /// Seconds between $SYS updates (0 = off).
    #[arg(long, value_name = "SECS")]
    sys_interval_secs: Option<u64>,
    /// Address of the admin listener: /metrics, /healthz, /readyz (plain
    /// HTTP; keep it on loopback). Port 0 picks a free port.
    #[arg(long, value_name = "ADDR:PORT")]
    admin_listen: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Sets USER's password in the argon2id password FILE (created if
    /// missing). Prompts twice on a terminal; otherwise reads one line from
    /// standard input.
    Passwd { file: PathBuf, user: String },
}

/// `roomq passwd FILE USER`.
fn passwd(file: &std::path::Path, user: &str) -> ExitCode {
    // Before the prompt: a name the file cannot hold is refused at once.
    if let Err(e) = roomq::auth::password_file::check_user_name(user) {
        eprintln!("roomq passwd: {e}");
        return ExitCode::from(2);
    }
    let password = if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        let first = rpassword::prompt_password(format!("password for {user}: "));
        let second = rpassword::prompt_password("again: ");
        match (first, second) {
            (Ok(a), Ok(b)) if a == b => a,
            (Ok(_), Ok(_)) => {
                eprintln!("roomq passwd: the passwords differ");
                return ExitCode::from(2);
            }
            (Err(e), _) | (_, Err(e)) => {
                eprintln!("roomq passwd: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        let mut line = String::new();
        if let Err(e) = std::io::stdin().read_line(&mut line) {
            eprintln!("roomq passwd: {e}");
            return ExitCode::FAILURE;
        }
        line.trim_end_matches(['\r', '\n']).to_string()
    };
    if password.is_empty() {
        eprintln!("roomq passwd: empty password");
        return ExitCode::from(2);
    }
    match roomq::auth::password_file::set_password(file, user, password.as_bytes()) {
        Ok(()) => {
            println!("password for {user} set in {}", file.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("roomq passwd: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Log lines on stderr, at `RUST_LOG` (default info), as `format` says.
fn init_logging(format: roomq::config::LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        roomq::config::LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        roomq::config::LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
}

fn main() -> ExitCode {
    let flags = Flags::parse();
    if let Some(Command::Passwd { file, user }) = &flags.command {
        return passwd(file, user);
    }
    let mut overrides: Vec<(&str, String)> = Vec::new();
    if let Some(listen) = &flags.listen {
        overrides.push(("listen", listen.clone()));
    }
    if let Some(dir) = &flags.data_dir {
        overrides.push(("data_dir", dir.display().to_string()));
    }
    if flags.memory {
        overrides.push(("storage", "memory".into()));
    }
    if let Some(n) = flags.max_connections {
        overrides.push(("max_connections", n.to_string()));
    }
    if let Some(n) = flags.sys_interval_secs {
        overrides.push(("sys_interval_secs", n.to_string()));
    }
    if let Some(addr) = &flags.admin_listen {
        overrides.push(("admin_listen", addr.clone()));
    }
    let config = match roomq::Config::load(flags.config.as_deref(), &overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("roomq: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(config.log_format);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if config.worker_threads > 0 {
        builder.worker_threads(config.worker_threads);
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("roomq: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async move {
        // Listen before starting: a SIGTERM or SIGINT during the start
        // (a long store restore, a cluster waiting for JetStream, which
        // can take forever) gives the start up. What it wrote is as safe
        // as after a SIGKILL, which every store write is made to survive.
        let mut signals = ShutdownSignals::install();
        let start = roomq::Broker::new(config).start();
        tokio::pin!(start);
        let started = loop {
            tokio::select! {
                started = &mut start => break started,
                action = signals.wait() => {
                    if action == SignalAction::Shutdown {
                        eprintln!("roomq: stopped by a signal during start-up");
                        return ExitCode::FAILURE;
                    }
                    // SIGHUP: nothing is loaded yet that could be reloaded.
                }
            }
        };
        let broker = match started {
            Ok(b) => b,
            Err(e) => {
                eprintln!("roomq: {e}");
                return ExitCode::FAILURE;
            }
        };
        while signals.wait().await == SignalAction::Reload {
            tracing::info!("SIGHUP: reloading certificates, credential files and rooms");
            broker.reload();
            match roomq::Config::load(flags.config.as_deref(), &overrides) {
                Ok(fresh) => broker.set_rooms(fresh.chat.rooms_default, &fresh.rooms),
                Err(e) => tracing::error!(error = %e, "configuration reload failed; rooms unchanged"),
            }
        }
        tracing::info!("shutting down");
        broker.shutdown().await;
        ExitCode::SUCCESS
    });
    // A blocking task stuck on a broken store (a flush after a full disk)
    // must not keep the process alive: the shutdown has given up on it.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    code
}

/// SIGINT, SIGTERM and SIGHUP, registered once at start-up.
struct ShutdownSignals {
    term: Option<tokio::signal::unix::Signal>,
    interrupt: Option<tokio::signal::unix::Signal>,
    hangup: Option<tokio::signal::unix::Signal>,
}

/// What a signal asks for.
#[derive(Debug, PartialEq, Eq)]
enum SignalAction {
    Shutdown,
    Reload,
}

impl ShutdownSignals {
    fn install() -> Self {
        use tokio::signal::unix::{signal, SignalKind};
        let listen = |kind: SignalKind, name: &str| match signal(kind) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for {name}");
                None
            }
        };
        ShutdownSignals {
            term: listen(SignalKind::terminate(), "SIGTERM"),
            interrupt: listen(SignalKind::interrupt(), "SIGINT"),
            hangup: listen(SignalKind::hangup(), "SIGHUP"),
        }
    }

    /// Waits for the next signal.
    async fn wait(&mut self) -> SignalAction {
        async fn next(signal: &mut Option<tokio::signal::unix::Signal>) {
            match signal {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            _ = next(&mut self.term) => SignalAction::Shutdown,
            _ = next(&mut self.interrupt) => SignalAction::Shutdown,
            _ = next(&mut self.hangup) => SignalAction::Reload,
        }
    }
}
