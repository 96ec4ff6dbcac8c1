//! Presence across nodes: how many devices each node has for each user,
//! and which nodes are alive.
//!
//! A node tells the others its own device count for a user whenever it
//! changes (one small core NATS message on `{name}.presence`); each node
//! adds the others' counts to its own, so `$presence/{user}` shows the
//! user's devices on every node. Every node also sends a heartbeat each
//! `cluster.heartbeat_ms`; a node silent for `cluster.node_timeout_ms` is
//! dead: its devices are dropped, and its users go offline unless they are
//! connected elsewhere (published by the alive node with the smallest
//! name, so once). A node that starts (a new boot id) is sent everyone's
//! counts, and its counts from before a restart are dropped.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::names::Names;
use crate::chat::{DeviceCount, PresenceReplication};

#[derive(Serialize, Deserialize)]
pub(crate) enum Wire {
    Count(DeviceCount),
    Heartbeat {
        node: String,
        boot: u64,
    },
    /// The node shuts down: its devices are gone now.
    Leaving {
        node: String,
    },
}

/// Tells the other nodes this node is leaving (a clean shutdown), so its
/// users do not wait `node_timeout_ms` to go offline.
pub(crate) async fn leave(client: &async_nats::Client, names: &Names, node: &str) {
    if let Ok(bytes) = postcard::to_allocvec(&Wire::Leaving {
        node: node.to_string(),
    }) {
        let _ = client.publish(names.presence(), bytes.into()).await;
        let _ = client.flush().await;
    }
}

/// The chat layer's side: counts of other nodes, and this node's own.
pub(crate) trait PresenceSink: Send + Sync {
    /// Another node's count for a user changed.
    fn remote(&self, count: DeviceCount);
    /// `nodes` are gone (dead, or restarted): forget their devices. With
    /// `publish`, this node publishes the users' presence that changed.
    fn nodes_gone(&self, nodes: &[String], publish: bool);
    /// This node's counts, for a node that just started.
    fn local_counts(&self) -> Vec<DeviceCount>;
}

/// Sends this node's presence changes, in order.
pub(crate) struct PresenceLink {
    outgoing: mpsc::UnboundedSender<Wire>,
    pub node: Arc<str>,
}

impl PresenceReplication for PresenceLink {
    fn send(&self, count: DeviceCount) {
        let _ = self.outgoing.send(Wire::Count(count));
    }

    fn node(&self) -> &str {
        &self.node
    }
}

/// Timing of liveness, from `[cluster]`.
#[derive(Clone, Copy)]
pub(crate) struct Liveness {
    pub heartbeat: Duration,
    pub node_timeout: Duration,
}

/// Starts the sender; `run` does the rest once the chat layer is there.
pub(crate) fn link(node: Arc<str>) -> (Arc<PresenceLink>, mpsc::UnboundedReceiver<Wire>) {
    let (outgoing, rx) = mpsc::unbounded_channel();
    (Arc::new(PresenceLink { outgoing, node }), rx)
}

/// Sends queued counts and heartbeats, receives the other nodes', and
/// declares silent nodes dead. Runs until the task is dropped.
pub(crate) async fn run(
    client: async_nats::Client,
    names: Names,
    link: Arc<PresenceLink>,
    mut outgoing: mpsc::UnboundedReceiver<Wire>,
    sink: Arc<dyn PresenceSink>,
    liveness: Liveness,
) {
    let subject = names.presence();
    let mut incoming = match client.subscribe(subject.clone()).await {
        Ok(s) => s,
        Err(error) => {
            tracing::error!(%error, "cannot follow presence on other nodes; $presence shows this node's devices only");
            return;
        }
    };
    let node = link.node.to_string();
    let boot = crate::store::unix_ms_now();
    let send = |wire: &Wire| postcard::to_allocvec(wire).map(bytes::Bytes::from);
    // Node name -> (boot id once heard, last heard).
    let mut alive: HashMap<String, (Option<u64>, Instant)> = HashMap::new();
    let mut beat = tokio::time::interval(liveness.heartbeat);
    loop {
        tokio::select! {
            Some(wire) = outgoing.recv() => {
                if let Ok(bytes) = send(&wire) {
                    let _ = client.publish(subject.clone(), bytes).await;
                }
            }
            _ = beat.tick() => {
                let heartbeat = Wire::Heartbeat { node: node.clone(), boot };
                if let Ok(bytes) = send(&heartbeat) {
                    let _ = client.publish(subject.clone(), bytes).await;
                }
                let now = Instant::now();
                let gone: Vec<String> = alive
                    .iter()
                    .filter(|(_, (_, heard))| now.duration_since(*heard) > liveness.node_timeout)
                    .map(|(n, _)| n.clone())
                    .collect();
                if !gone.is_empty() {
                    alive.retain(|n, _| !gone.contains(n));
                    tracing::warn!(nodes = ?gone, timeout_ms = liveness.node_timeout.as_millis() as u64, "cluster nodes silent: their users' devices are dropped");
                    let first_alive = alive.keys().all(|n| *n > node);
                    sink.nodes_gone(&gone, first_alive);
                }
            }
            Some(message) = incoming.next() => {
                let Ok(wire) = postcard::from_bytes::<Wire>(&message.payload) else {
                    tracing::warn!("undecodable presence message from another node");
                    continue;
                };
                let (from, boot) = match &wire {
                    Wire::Count(count) => (count.node.clone(), None),
                    Wire::Heartbeat { node, boot } => (node.clone(), Some(*boot)),
                    Wire::Leaving { node: leaving } => {
                        if *leaving != node && alive.remove(leaving).is_some() {
                            tracing::info!(node = %leaving, "cluster node left");
                            let first_alive = alive.keys().all(|n| *n > node);
                            sink.nodes_gone(std::slice::from_ref(leaving), first_alive);
                        }
                        continue;
                    }
                };
                if from == node {
                    continue;
                }
                // Any message shows the node alive; a heartbeat also says
                // which run of it this is.
                let known = alive.get(&from).map(|(b, _)| *b);
                alive.insert(from.clone(), (boot.or(known.flatten()), Instant::now()));
                let restarted = matches!((known, boot), (Some(Some(before)), Some(now)) if before != now);
                if restarted {
                    // Its devices from before the restart are gone.
                    sink.nodes_gone(std::slice::from_ref(&from), false);
                }
                if known.is_none() || restarted {
                    tracing::info!(node = %from, "cluster node joined");
                    for count in sink.local_counts() {
                        if let Ok(bytes) = send(&Wire::Count(count)) {
                            let _ = client.publish(subject.clone(), bytes).await;
                        }
                    }
                }
                if let Wire::Count(count) = wire {
                    sink.remote(count);
                }
            }
        }
    }
}
