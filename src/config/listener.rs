//! Listener configuration: the transports a broker accepts clients on.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

/// The transport of a listener.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ListenerKind {
    /// Plain MQTT over TCP.
    Tcp,
    /// MQTT over TLS (rustls): `cert` and `key` required.
    Tls,
    /// MQTT over WebSocket on `path`, sub-protocol `mqtt`.
    Ws,
    /// MQTT over WebSocket over TLS.
    Wss,
}

/// As written in the configuration (`tcp`, `tls`, `ws`, `wss`), for log
/// lines and errors.
impl std::fmt::Display for ListenerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ListenerKind::Tcp => "tcp",
            ListenerKind::Tls => "tls",
            ListenerKind::Ws => "ws",
            ListenerKind::Wss => "wss",
        })
    }
}

impl ListenerKind {
    /// Its label in `roomq_connections{listener}`.
    pub fn metrics_listener(self) -> crate::metrics::Listener {
        match self {
            ListenerKind::Tcp => crate::metrics::Listener::Tcp,
            ListenerKind::Tls => crate::metrics::Listener::Tls,
            ListenerKind::Ws => crate::metrics::Listener::Ws,
            ListenerKind::Wss => crate::metrics::Listener::Wss,
        }
    }
}

/// One listener: `{ kind = "tls", bind = "0.0.0.0:8883", cert = "cert.pem", key = "key.pem" }`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub kind: ListenerKind,
    pub bind: SocketAddr,
    /// PEM certificate chain (tls, wss).
    pub cert: Option<PathBuf>,
    /// PEM private key (tls, wss).
    pub key: Option<PathBuf>,
    /// PEM CA certificates: when set, clients must present a certificate
    /// signed by one of them (mTLS).
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: the certificate's Common Name becomes the username
    /// (Mosquitto's `use_identity_as_username`).
    #[serde(default)]
    pub use_identity_as_username: bool,
    /// HTTP path of a WebSocket listener.
    #[serde(default = "default_ws_path")]
    pub path: String,
    /// A `ws`/`wss` listener also serves the browser chat at `/` (plain
    /// HTTP GET on the same port, so the page and MQTT share one origin).
    #[serde(default)]
    pub web: bool,
}

fn default_ws_path() -> String {
    "/mqtt".into()
}

impl ListenerConfig {
    /// A plain TCP listener.
    pub fn tcp(bind: SocketAddr) -> Self {
        ListenerConfig {
            kind: ListenerKind::Tcp,
            bind,
            cert: None,
            key: None,
            client_ca: None,
            use_identity_as_username: false,
            path: default_ws_path(),
            web: false,
        }
    }

    /// Checks the fields that depend on each other; `i` names the listener
    /// in the error (`listeners[i]`).
    pub(super) fn validate(&self, i: usize) -> Result<(), String> {
        let tls = matches!(self.kind, ListenerKind::Tls | ListenerKind::Wss);
        if tls && (self.cert.is_none() || self.key.is_none()) {
            return Err(format!(
                "key `listeners[{i}]`: a `{}` listener needs `cert` and `key`",
                self.kind
            ));
        }
        if self.use_identity_as_username && self.client_ca.is_none() {
            return Err(format!(
                "key `listeners[{i}]`: `use_identity_as_username` needs `client_ca`"
            ));
        }
        if matches!(self.kind, ListenerKind::Ws | ListenerKind::Wss) && !self.path.starts_with('/') {
            return Err(format!("key `listeners[{i}].path`: must start with `/`"));
        }
        if self.web && !matches!(self.kind, ListenerKind::Ws | ListenerKind::Wss) {
            return Err(format!(
                "key `listeners[{i}].web`: only a `ws` or `wss` listener serves the browser chat"
            ));
        }
        Ok(())
    }
}
