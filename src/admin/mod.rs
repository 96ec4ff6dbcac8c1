//! The admin listener (`admin_listen`): plain HTTP for operators.
//!
//! - `/metrics`: the broker's counters in the OpenMetrics text format
//!   (`exposition.rs`), for Prometheus;
//! - `/healthz`: 200 while the process serves;
//! - `/readyz`: 200 while the broker takes clients: listeners bound, the
//!   store writing (not failing, e.g. a full disk) and, in a cluster, NATS
//!   connected; 503 with the reason otherwise.

mod exposition;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::context::Shared;
use crate::session::Registry;

/// Most bytes hyper buffers of a request (its head: the admin paths take
/// no body); hyper's smallest allowed value, and far above what Prometheus
/// or curl send.
const MAX_HEAD_BUFFER: usize = 8192;

/// Why the admin listener could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on admin_listen = {addr}: {source}")]
pub struct AdminError {
    addr: SocketAddr,
    source: std::io::Error,
}

/// The bound admin listener, not serving yet.
pub(crate) struct Admin {
    listener: TcpListener,
    registry: Arc<prometheus_client::registry::Registry>,
}

impl Admin {
    /// Binds `addr` (before the broker reports itself started, so a taken
    /// port stops start-up with an error naming it).
    pub async fn bind(addr: SocketAddr, shared: &Arc<Shared<Registry>>) -> Result<Admin, AdminError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| AdminError { addr, source })?;
        if !addr.ip().is_loopback() {
            tracing::warn!(%addr, "the admin listener is not on loopback: /metrics is readable by anyone who reaches it");
        }
        Ok(Admin {
            listener,
            registry: Arc::new(exposition::registry(shared)),
        })
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves requests until the broker shuts down. Each connection holds
    /// one of `admin_max_connections` places (one more is closed at
    /// accept, unanswered), may take `admin_timeout_secs` to send a
    /// request head and as long idle before the next, and its head is
    /// read into at most `MAX_HEAD_BUFFER` bytes: so idle or slow sockets
    /// cannot take the process's file descriptors or memory.
    pub async fn serve(self, shared: Arc<Shared<Registry>>) {
        let mut stop = shared.shutdown.subscribe();
        let places = Arc::new(Semaphore::new(shared.config.limits.admin_max_connections));
        let timeout = Duration::from_secs(shared.config.limits.admin_timeout_secs);
        loop {
            let (stream, peer) = tokio::select! {
                _ = stop.changed() => return,
                accepted = self.listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "admin listener: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let Ok(place) = places.clone().try_acquire_owned() else {
                shared.metrics.admin_connections_refused.inc();
                tracing::debug!(%peer, "admin connection closed: admin_max_connections open");
                drop(stream);
                continue;
            };
            shared.metrics.admin_connections.inc();
            let (shared, registry) = (shared.clone(), self.registry.clone());
            tokio::spawn(async move {
                let metrics = shared.metrics.clone();
                let service = hyper::service::service_fn(move |request| {
                    let response = respond(&request, &shared, &registry);
                    async move { Ok::<_, Infallible>(response) }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                // The header timeout also runs while hyper waits for the
                // next request on a kept-alive connection: the idle bound.
                if let Err(error) = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(timeout)
                    .max_buf_size(MAX_HEAD_BUFFER)
                    .serve_connection(io, service)
                    .await
                {
                    tracing::debug!(%peer, %error, "admin connection ended with an error");
                }
                metrics.admin_connections.dec();
                drop(place);
            });
        }
    }
}

fn respond<B>(
    request: &Request<B>,
    shared: &Shared<Registry>,
    registry: &prometheus_client::registry::Registry,
) -> Response<Full<Bytes>> {
    match request.uri().path() {
        "/metrics" => {
            let mut text = String::new();
            match prometheus_client::encoding::text::encode(&mut text, registry) {
                Ok(()) => reply(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    text,
                ),
                Err(_) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    "cannot encode the metrics\n".into(),
                ),
            }
        }
        "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => match not_ready(shared) {
            None => reply(StatusCode::OK, "text/plain", "ready\n".into()),
            Some(why) => reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", format!("{why}\n")),
        },
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics, /healthz or /readyz\n".into(),
        ),
    }
}

/// Why the broker should not get clients now, if it should not.
fn not_ready(shared: &Shared<Registry>) -> Option<String> {
    if *shared.shutdown.borrow() {
        return Some("shutting down".into());
    }
    if let Some(failure) = shared.store_health.failure() {
        return Some(format!("the store is failing: {}", failure.error));
    }
    shared.directory.unready()
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = hyper::header::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}
