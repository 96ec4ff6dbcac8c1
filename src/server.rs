//! The TCP listener: accepts sockets, sets TCP_NODELAY, counts connections
//! for `max_connections`, and hands each to its connection task.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

use crate::broker::Shared;
use crate::session;

/// Accepts connections until shutdown.
pub(crate) async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, tracker: TaskTracker) {
    let mut stop = shared.shutdown.subscribe();
    loop {
        let accepted = tokio::select! {
            _ = stop.changed() => return,
            r = listener.accept() => r,
        };
        let (socket, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors and the like: back off briefly.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        // Without TCP_NODELAY small packets wait tens of milliseconds.
        if let Err(e) = socket.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
        let open = shared.connections.fetch_add(1, Ordering::AcqRel) + 1;
        let over_limit = open > shared.config.max_connections;
        let shared = shared.clone();
        tracker.spawn(async move {
            session::serve(Box::new(socket), peer, shared.clone(), over_limit).await;
            shared.connections.fetch_sub(1, Ordering::AcqRel);
        });
    }
}
