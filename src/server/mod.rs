//! Listeners: TCP, TLS, WebSocket and WebSocket over TLS, any number of
//! each. Every kind ends in the same connection task, so the same session,
//! router and limits serve them all. Accepting counts connections for
//! `max_connections`; the TLS and WebSocket handshakes run in the
//! connection's own task under `connect_timeout_secs`, so a slow handshake
//! never blocks the accept loop.

mod tls;
mod web;
mod websocket;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::Either;
use futures_util::FutureExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::task::TaskTracker;

use crate::config::{ListenerConfig, ListenerKind};
use crate::context::Shared;
use crate::session::Registry;
use crate::session::{self, Stream};
pub(crate) use crate::session::{CertName, Peer};
pub use tls::{ReloadableTls, TlsFiles};
pub(crate) use web::missing_libraries as missing_web_libraries;

/// Per-IP connection counts and rates, for `max_connections_per_ip` and
/// `max_connection_rate_per_ip`.
#[derive(Default)]
pub struct IpLimits {
    /// Open connections, and (second, connections opened in it).
    per_ip: parking_lot::Mutex<std::collections::HashMap<std::net::IpAddr, (usize, u64, u32)>>,
}

impl IpLimits {
    /// Whether a new connection from `ip` is within the limits; when it
    /// is, it counts until `release`.
    fn admit(&self, ip: std::net::IpAddr, max_open: usize, max_rate: u32) -> bool {
        if max_open == 0 && max_rate == 0 {
            // No per-IP limit: no global lock and no table entry per connection.
            return true;
        }
        let second = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut per_ip = self.per_ip.lock();
        let entry = per_ip.entry(ip).or_insert((0, second, 0));
        if entry.1 != second {
            entry.1 = second;
            entry.2 = 0;
        }
        if (max_open > 0 && entry.0 >= max_open) || (max_rate > 0 && entry.2 >= max_rate) {
            return false;
        }
        entry.0 += 1;
        entry.2 += 1;
        true
    }

    fn release(&self, ip: std::net::IpAddr) {
        let mut per_ip = self.per_ip.lock();
        if let Some(entry) = per_ip.get_mut(&ip) {
            entry.0 = entry.0.saturating_sub(1);
            if entry.0 == 0 {
                per_ip.remove(&ip);
            }
        }
    }
}

/// One bound listener, ready to accept.
pub(crate) struct BoundListener {
    pub config: ListenerConfig,
    pub socket: TcpListener,
    pub local_addr: SocketAddr,
    pub tls: Option<Arc<ReloadableTls>>,
}

/// Why a listener could not open.
#[derive(Debug)]
pub(crate) enum ListenError {
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    Tls(String),
}

/// Binds a listener and loads its certificates.
pub(crate) async fn bind(config: ListenerConfig) -> Result<BoundListener, ListenError> {
    let tls = match (config.kind, &config.cert, &config.key) {
        (ListenerKind::Tls | ListenerKind::Wss, Some(cert), Some(key)) => {
            let files = TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: config.client_ca.clone(),
            };
            Some(Arc::new(ReloadableTls::load(files).map_err(ListenError::Tls)?))
        }
        _ => None,
    };
    let bind_err = |source| ListenError::Bind {
        addr: config.bind,
        source,
    };
    let socket = TcpListener::bind(config.bind).await.map_err(bind_err)?;
    let local_addr = socket.local_addr().map_err(bind_err)?;
    Ok(BoundListener {
        config,
        socket,
        local_addr,
        tls,
    })
}

/// Accepts connections until shutdown. `ip_limits` is shared by every
/// listener, so the per-IP limits count all of them.
pub(crate) async fn accept_loop(
    listener: BoundListener,
    shared: Arc<Shared<Registry>>,
    ip_limits: Arc<IpLimits>,
    tracker: TaskTracker,
) {
    let mut stop = shared.shutdown.subscribe();
    let listener = Arc::new(listener);
    // The browser chat's libraries, read once for this listener and shared
    // by every request (an `Arc`: each connection task holds it).
    let libraries = Arc::new(web::Libraries::new(shared.config.web_root.clone()));
    loop {
        let accepted = tokio::select! {
            _ = stop.changed() => return,
            r = listener.socket.accept() => r,
        };
        let (socket, addr) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors and the like: back off briefly.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (max_open, max_rate) = (
            shared.config.limits.max_connections_per_ip,
            shared.config.limits.max_connection_rate_per_ip,
        );
        if !ip_limits.admit(addr.ip(), max_open, max_rate) {
            // Refused before any MQTT: the cheapest answer to a flood.
            shared.metrics.connections_limited.inc();
            tracing::debug!(%addr, "connection refused: max_connections_per_ip or max_connection_rate_per_ip");
            drop(socket);
            continue;
        }
        // Without TCP_NODELAY small packets wait tens of milliseconds.
        if let Err(e) = socket.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
        let open = shared.connections.fetch_add(1, Ordering::AcqRel) + 1;
        let over_limit = open > shared.config.limits.max_connections;
        // One deadline for the handshakes and the CONNECT together.
        let deadline =
            tokio::time::Instant::now() + Duration::from_secs(shared.config.limits.connect_timeout_secs);
        // Boxed, and made before the task: the TLS and WebSocket handshake
        // state is large, and inline it would stay in every idle
        // connection's task (measured: 15 KB instead of 6 KB per idle
        // connection); what it is given is freed with it.
        let handshake = Box::pin(handshake(
            listener.clone(),
            socket,
            addr,
            shared.clone(),
            libraries.clone(),
            deadline,
        ));
        let (shared, ip_limits, ip) = (shared.clone(), ip_limits.clone(), addr.ip());
        let serve_shared = shared.clone();
        // Combinators, not an async block: one keeps a value it moves into
        // a future it awaits twice, and the task is what every idle
        // connection holds. `then` frees the handshake's box once done.
        tracker.spawn(
            handshake
                .then(move |opened| match opened {
                    Some((stream, peer)) => {
                        Either::Left(session::serve(stream, peer, serve_shared, over_limit, deadline))
                    }
                    None => Either::Right(std::future::ready(())),
                })
                .map(move |()| {
                    shared.connections.fetch_sub(1, Ordering::AcqRel);
                    ip_limits.release(ip);
                }),
        );
    }
}

/// The handshakes of one accepted connection under `deadline` and
/// shutdown: the stream to serve MQTT on, or `None` (failed, timed out,
/// cut short, or a browser chat file was served).
async fn handshake(
    listener: Arc<BoundListener>,
    socket: TcpStream,
    addr: SocketAddr,
    shared: Arc<Shared<Registry>>,
    libraries: Arc<web::Libraries>,
    deadline: tokio::time::Instant,
) -> Option<(Box<dyn Stream>, Peer)> {
    let upgrading = upgrade(&listener, socket, addr, &shared, &libraries);
    // A shutdown does not wait for a handshake under way.
    let finished = shared
        .unless_shutdown(tokio::time::timeout_at(deadline, upgrading))
        .await;
    match finished {
        None => tracing::debug!(%addr, "handshake cut short by shutdown"),
        Some(Ok(Ok(Some(opened)))) => return Some(opened),
        // A browser chat page or script, already answered.
        Some(Ok(Ok(None))) => {}
        Some(Ok(Err(why))) => {
            shared.metrics.protocol_errors.inc();
            tracing::debug!(%addr, kind = %listener.config.kind, %why, "handshake failed");
        }
        Some(Err(_)) => tracing::debug!(%addr, kind = %listener.config.kind, "handshake timed out"),
    }
    None
}

/// Runs the TLS and WebSocket handshakes the listener asks for; `None`
/// when the connection asked for a browser chat file, which was served.
async fn upgrade(
    listener: &BoundListener,
    socket: TcpStream,
    addr: SocketAddr,
    shared: &Shared<Registry>,
    libraries: &web::Libraries,
) -> Result<Option<(Box<dyn Stream>, Peer)>, String> {
    let mut peer = Peer {
        addr,
        cert_name: CertName::NotUsed,
        listener: listener.config.kind.metrics_listener(),
    };
    let kind = listener.config.kind;
    let stream: Option<Box<dyn Stream>> = match &listener.tls {
        None => match kind {
            ListenerKind::Tcp => Some(Box::new(socket)),
            ListenerKind::Ws => websocket_or_page(socket, listener, shared, libraries).await?,
            _ => return Err(format!("{kind:?} listener without TLS configuration")),
        },
        Some(tls) => {
            let stream = tls.acceptor().accept(socket).await.map_err(|e| e.to_string())?;
            if listener.config.use_identity_as_username {
                let certs = stream.get_ref().1.peer_certificates();
                peer.cert_name = match certs.and_then(|c| c.first()).and_then(|der| common_name(der)) {
                    Some(name) if crate::auth::password_file::check_user_name(&name).is_ok() => {
                        CertName::Name(name)
                    }
                    _ => CertName::Unusable,
                };
            }
            match kind {
                ListenerKind::Wss => websocket_or_page(stream, listener, shared, libraries).await?,
                _ => Some(Box::new(stream)),
            }
        }
    };
    Ok(stream.map(|stream| (stream, peer)))
}

/// The WebSocket handshake, or on a `web = true` listener a browser chat
/// file when the request is not an upgrade (`None`).
async fn websocket_or_page<S>(
    stream: S,
    listener: &BoundListener,
    shared: &Shared<Registry>,
    libraries: &web::Libraries,
) -> Result<Option<Box<dyn Stream>>, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    if !listener.config.web {
        return Ok(Some(websocket_accept(stream, listener, shared).await?));
    }
    let path = &listener.config.path;
    match web::serve_or_upgrade(stream, libraries, path).await? {
        web::Opening::Upgrade(stream) => Ok(Some(websocket_accept(stream, listener, shared).await?)),
        web::Opening::Served => Ok(None),
    }
}

/// The WebSocket handshake on the listener's `path`, with the broker's
/// frame and write-buffer limits.
async fn websocket_accept<S>(
    stream: S,
    listener: &BoundListener,
    shared: &Shared<Registry>,
) -> Result<Box<dyn Stream>, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let max_frame = shared.config.limits.max_packet_size as usize + 8;
    let max_write_buffer = shared.config.limits.ws_max_write_buffer_bytes;
    let ws = websocket::accept(stream, &listener.config.path, max_frame, max_write_buffer).await?;
    Ok(Box::new(ws))
}

/// The Common Name of a DER certificate.
fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    Some(cn)
}
