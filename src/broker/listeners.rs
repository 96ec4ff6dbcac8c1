//! The steps of `Broker::start` that open the broker to clients: bind
//! every listener (before anything is served, so a port in use stops
//! start-up), serve them, and start the admin listener.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio_util::task::TaskTracker;

use super::StartError;
use crate::config::{Config, ListenerKind};
use crate::context::Shared;
use crate::server::BoundListener;
use crate::session::Registry;

/// Binds every configured listener; warns when a `web` listener would
/// serve the browser chat without its libraries.
pub(super) async fn bind_all(config: &Config) -> Result<Vec<BoundListener>, StartError> {
    let listener_configs = config.effective_listeners();
    if listener_configs.iter().any(|l| l.web) {
        for file in crate::server::missing_web_libraries(&config.web_root) {
            tracing::warn!(file = %file.display(), "the browser chat needs this library: run `npm ci --prefix web` in roomq's folder (./scripts/test does), or set `web_root`");
        }
    }
    let mut listeners = Vec::new();
    for listener in listener_configs {
        listeners.push(crate::server::bind(listener).await?);
    }
    Ok(listeners)
}

/// Accepts clients on every listener until shutdown; the per-IP limits
/// count the connections of all of them together.
pub(super) fn serve_all(
    listeners: Vec<BoundListener>,
    shared: &Arc<Shared<Registry>>,
    tracker: &TaskTracker,
) {
    let ip_limits = Arc::new(crate::server::IpLimits::default());
    for listener in listeners {
        tracing::info!(kind = %listener.config.kind, local_addr = %listener.local_addr, "listener open");
        if listener.config.web {
            tracing::info!(url = %browser_url(&listener), "browser chat");
        }
        tracker.spawn(crate::server::accept_loop(
            listener,
            shared.clone(),
            ip_limits.clone(),
            tracker.clone(),
        ));
    }
}

/// The address a newcomer opens in a browser to reach a `web` listener.
fn browser_url(listener: &BoundListener) -> String {
    let scheme = if listener.config.kind == ListenerKind::Wss {
        "https"
    } else {
        "http"
    };
    // On every address (0.0.0.0, ::): this machine's loopback.
    let mut shown = listener.local_addr;
    if shown.ip().is_unspecified() {
        shown.set_ip(match shown {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    format!("{scheme}://{shown}/")
}

/// Binds and serves the admin listener (`admin_listen`), if configured;
/// returns where it is bound.
pub(super) async fn start_admin(
    shared: &Arc<Shared<Registry>>,
    tracker: &TaskTracker,
) -> Result<Option<SocketAddr>, StartError> {
    let Some(addr) = shared.config.admin_listen else {
        return Ok(None);
    };
    let admin = crate::admin::Admin::bind(addr, shared)
        .await
        .map_err(|e| StartError::Admin(e.to_string()))?;
    let bound = admin.local_addr();
    tracker.spawn(admin.serve(shared.clone()));
    if let Some(bound) = bound {
        tracing::info!(admin_addr = %bound, "admin listener: /metrics, /healthz, /readyz");
    }
    Ok(bound)
}
