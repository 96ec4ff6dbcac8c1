//! Cluster mode's wiring (`[cluster]`, `cluster/`): the only place that
//! hands the core its cluster implementations (room replication, presence,
//! the session directory, the mirrored store, the commit barrier) and
//! connects the cluster to the broker's shared state. Built without the
//! `cluster` feature, or without `[cluster]`, it is one node: every seam
//! gets its local implementation.

use std::sync::Arc;
use std::time::Duration;

use super::StartError;
use crate::chat::Replication;
use crate::config::Config;
use crate::context::Shared;
use crate::context::{OneNode, SessionDirectory};
use crate::session::Registry;
use crate::store::{CommitBarrier, Store, StoreHealth};

/// This node's link to the others: none without a cluster.
pub(super) struct Nodes {
    #[cfg(feature = "cluster")]
    cluster: Option<Arc<crate::cluster::Cluster>>,
}

impl Nodes {
    /// Connects to the cluster `config` names, if any.
    pub async fn connect(config: &Config, health: &Arc<StoreHealth>) -> Result<Nodes, StartError> {
        #[cfg(feature = "cluster")]
        {
            let cluster = match &config.cluster {
                Some(_) => Some(crate::cluster::Cluster::connect(config, health.clone()).await?),
                None => None,
            };
            Ok(Nodes { cluster })
        }
        #[cfg(not(feature = "cluster"))]
        {
            let _ = health;
            match &config.cluster {
                Some(_) => Err(StartError::Config(
                    "key `cluster`: this roomq was built without the `cluster` feature".into(),
                )),
                None => Ok(Nodes {}),
            }
        }
    }

    /// Whether this node is one of a cluster.
    pub fn clustered(&self) -> bool {
        #[cfg(feature = "cluster")]
        return self.cluster.is_some();
        #[cfg(not(feature = "cluster"))]
        false
    }

    /// The store sessions are written to: in a cluster, `store` (or memory
    /// with `storage = "memory"`) with its session records and queues also
    /// in JetStream.
    pub fn store(&self, store: Option<Arc<dyn Store>>) -> Option<Arc<dyn Store>> {
        #[cfg(feature = "cluster")]
        if let Some(cluster) = &self.cluster {
            let store = store.unwrap_or_else(|| Arc::new(crate::store::MemoryStore::default()));
            return Some(cluster.mirrored(store));
        }
        store
    }

    /// What the group commit waits for besides the store: in a cluster,
    /// JetStream's acknowledgements.
    pub fn barrier(&self) -> Option<Arc<dyn CommitBarrier>> {
        #[cfg(feature = "cluster")]
        if let Some(cluster) = &self.cluster {
            return Some(cluster.barrier());
        }
        None
    }

    /// The chat layer's seams: room logs and presence shared with the
    /// other nodes.
    pub fn chat(&self) -> Replication {
        #[cfg(feature = "cluster")]
        if let Some(cluster) = &self.cluster {
            let presence: Arc<dyn crate::chat::PresenceReplication> = cluster.presence.clone();
            return Replication {
                rooms: Some(cluster.clone()),
                presence: Some(presence),
            };
        }
        Replication::default()
    }

    /// Which client ids this node serves.
    pub fn directory(&self) -> Arc<dyn SessionDirectory> {
        #[cfg(feature = "cluster")]
        if let Some(cluster) = &self.cluster {
            return cluster.clone();
        }
        Arc::new(OneNode)
    }

    /// Connects `shared` to the other nodes; returns once this node has
    /// loaded what the cluster holds. Before sessions are restored and
    /// clients connect.
    pub async fn join(&self, shared: &Arc<Shared<Registry>>) {
        #[cfg(feature = "cluster")]
        if let Some(cluster) = &self.cluster {
            crate::cluster::join(shared, cluster).await;
        }
        #[cfg(not(feature = "cluster"))]
        let _ = shared;
    }

    /// The cluster's `$SYS` topics.
    pub fn sys_topics(&self) -> Vec<(&'static str, String)> {
        #[cfg(feature = "cluster")]
        if let Some(cluster) = &self.cluster {
            return vec![
                // What following only the rooms with interest here saves.
                (
                    "$SYS/broker/cluster/room-messages/received",
                    cluster.rooms.received().to_string(),
                ),
                // CONNECTs that waited the whole handover time for a holder.
                (
                    "$SYS/broker/cluster/takeovers/unanswered",
                    cluster.sessions.unanswered_claims().to_string(),
                ),
            ];
        }
        Vec::new()
    }

    /// Leaves the cluster (waits at most `bound` for JetStream).
    pub async fn leave(&self, bound: Duration) {
        #[cfg(feature = "cluster")]
        if let Some(cluster) = &self.cluster {
            cluster.shutdown(bound).await;
        }
        #[cfg(not(feature = "cluster"))]
        let _ = bound;
    }
}
