//! [`Broker`]: build from a [`Config`], start, and get a [`BrokerHandle`]
//! (`handle.rs`) with the bound address, an in-process client and
//! `shutdown()`. This file keeps the wiring only, as a list of steps:
//! `assemble.rs` opens the store and builds the shared state, `nodes.rs`
//! connects the cluster, `listeners.rs` binds and serves the listeners
//! and the admin listener, `tasks.rs` runs the broker's own periodic
//! tasks (upkeep, flushes, store watch, `$SYS`).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio_util::task::TaskTracker;

use crate::auth::Authenticator;
use crate::config::{Config, ListenerKind};
use crate::store::Store;

mod assemble;
mod handle;
mod listeners;
mod nodes;
mod tasks;
pub use handle::BrokerHandle;
use nodes::Nodes;

/// Errors that stop the broker from starting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
    #[cfg(feature = "cluster")]
    #[error("cluster: {0}")]
    Cluster(#[from] crate::cluster::ClusterError),
    #[error("{0}")]
    Admin(String),
}

impl From<crate::server::ListenError> for StartError {
    fn from(e: crate::server::ListenError) -> Self {
        match e {
            crate::server::ListenError::Bind { addr, source } => StartError::Bind { addr, source },
            crate::server::ListenError::Tls(why) => StartError::Tls(why),
        }
    }
}

/// A broker not yet started.
pub struct Broker {
    config: Config,
    auth: Option<Arc<dyn Authenticator>>,
    store: Option<Arc<dyn Store>>,
}

impl Broker {
    pub fn new(config: Config) -> Self {
        Broker {
            config,
            auth: None,
            store: None,
        }
    }

    /// Uses `store` instead of the one `storage` names (for an embedding
    /// program with its own storage engine, and for fault-injection tests).
    pub fn with_store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// Replaces the built-in authentication policy.
    pub fn with_authenticator(mut self, auth: Arc<dyn Authenticator>) -> Self {
        self.auth = Some(auth);
        self
    }

    /// Binds the listener and starts serving. Must be called inside a tokio
    /// runtime. Each step is a function of its own: building the state in
    /// `assemble.rs`, listeners in `listeners.rs`, tasks in `tasks.rs`.
    pub async fn start(self) -> Result<BrokerHandle, StartError> {
        self.config.validate().map_err(StartError::Config)?;
        // The store is opened before the port, so a bad data directory stops
        // start-up before any client can connect.
        let (store, store_health) = assemble::open_store(&self.config, self.store)?;
        let listeners = listeners::bind_all(&self.config).await?;
        let local_addrs: Vec<(ListenerKind, SocketAddr)> =
            listeners.iter().map(|l| (l.config.kind, l.local_addr)).collect();
        let local_addr = local_addrs[0].1;
        let tls: Vec<_> = listeners.iter().filter_map(|l| l.tls.clone()).collect();
        let auth = assemble::authenticator(&self.config, self.auth, &local_addrs)?;
        let nodes = Arc::new(Nodes::connect(&self.config, &store_health).await?);
        let shared = Arc::new(assemble::shared(self.config, store, store_health, auth, &nodes)?);
        nodes.join(&shared).await;
        assemble::restore(&shared, nodes.clustered())?;
        let tracker = TaskTracker::new();
        listeners::serve_all(listeners, &shared, &tracker);
        tasks::spawn_all(&shared, &nodes, &tracker);
        let admin_addr = listeners::start_admin(&shared, &tracker).await?;
        tracing::info!(%local_addr, "roomq listening");
        Ok(BrokerHandle {
            shared,
            local_addr,
            local_addrs,
            admin_addr,
            tls,
            tracker,
            nodes,
        })
    }
}
