//! Client ids across nodes: a node that accepts a CONNECT announces the
//! client id on NATS; another node with a connection for the same id
//! closes it (5.0 DISCONNECT 0x8E Session taken over), as a single broker
//! does on a takeover.

use std::sync::Arc;

use futures_util::StreamExt;

use super::names::Names;

/// Takes a client id over from this node (another node accepted it).
pub(crate) type TakenOver = Arc<dyn Fn(String) + Send + Sync>;

/// Announces that `client_id` connected on `node`. The announcement is
/// sent before the CONNACK, and NATS keeps one connection's messages in
/// order, so a later announcement by this node is seen after it.
pub(crate) async fn announce(client: &async_nats::Client, names: &Names, node: &str, client_id: &str) {
    let subject = names.client(client_id);
    if let Err(error) = client.publish(subject, node.to_string().into()).await {
        tracing::warn!(%client_id, %error, "could not announce a connection to the other nodes");
    }
    // Sent now, not batched: the old connection should close promptly.
    let _ = client.flush().await;
}

/// Listens for announcements of other nodes and calls `taken_over` for
/// each client id connected elsewhere.
pub(crate) async fn watch(client: async_nats::Client, names: Names, node: Arc<str>, taken_over: TakenOver) {
    let mut subscription = match client.subscribe(names.clients()).await {
        Ok(s) => s,
        Err(error) => {
            tracing::error!(%error, "cannot watch connections on other nodes; a takeover across nodes will not close the old connection");
            return;
        }
    };
    while let Some(message) = subscription.next().await {
        if *message.payload == *node.as_bytes() {
            continue;
        }
        let client_id = message
            .subject
            .as_str()
            .rsplit('.')
            .next()
            .and_then(super::names::untoken);
        if let Some(client_id) = client_id {
            taken_over(client_id);
        }
    }
}
