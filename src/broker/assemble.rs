//! The steps of `Broker::start` that build state: the store, the
//! authenticator, the shared state every task reads (`context::Shared`)
//! and what a restart brings back into it.

use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::nodes::Nodes;
use super::StartError;
use crate::auth::acl::Acl;
use crate::auth::gate::Gate;
use crate::auth::{Authenticator, ConfiguredAuth, LoginBackoff, LoginPool};
use crate::budget::{Budgets, Limits as BudgetLimits};
use crate::chat::Chat;
use crate::config::{Config, Durability, ListenerKind, StorageKind};
use crate::context::Shared;
use crate::metrics::Metrics;
use crate::router::{RetainedStore, Router};
use crate::session::Registry;
use crate::store::{GroupCommit, MemoryStore, Monitored, SledStore, Store, StoreHealth};

/// The store (none with `storage = "memory"`) and its health.
type Opened = (Option<Arc<dyn Store>>, Arc<StoreHealth>);

/// The store `given` (an embedder's) or the one `storage` names, watched
/// by its health (free disk space, failed writes).
pub(super) fn open_store(config: &Config, given: Option<Arc<dyn Store>>) -> Result<Opened, StartError> {
    let store: Option<Arc<dyn Store>> = match (given, config.store.storage) {
        (Some(store), _) => Some(store),
        (None, StorageKind::Memory) => None,
        (None, StorageKind::Sled) => Some(Arc::new(sled_store(config)?)),
    };
    let store_health = Arc::new(StoreHealth::default());
    let (min_free, reserve) = (config.store.min_free_disk_bytes, config.store.disk_reserve_bytes);
    if config.store.storage == StorageKind::Sled && (min_free > 0 || reserve > 0) {
        store_health.watch_disk(config.data_dir.clone(), min_free, reserve);
    }
    let store = store.map(|s| Arc::new(Monitored::new(s, store_health.clone())) as Arc<dyn Store>);
    Ok((store, store_health))
}

/// The sled store `config` names: in `data_dir`, with a page cache of
/// `store_cache_bytes`.
fn sled_store(config: &Config) -> Result<SledStore, crate::store::StoreError> {
    SledStore::open_with_cache(&config.data_dir, config.store.store_cache_bytes)
}

/// The authenticator `given` (an embedder's) or the configured one; warns
/// about a configuration that lets anyone in, or no one.
pub(super) fn authenticator(
    config: &Config,
    given: Option<Arc<dyn Authenticator>>,
    local_addrs: &[(ListenerKind, SocketAddr)],
) -> Result<Arc<dyn Authenticator>, StartError> {
    let allow_anonymous = config.effective_allow_anonymous();
    let auth: Arc<dyn Authenticator> = match given {
        Some(auth) => auth,
        None => Arc::new(ConfiguredAuth::load(config).map_err(StartError::Config)?),
    };
    if !allow_anonymous && !auth.verifies_names() {
        tracing::warn!("auth.allow_anonymous is false and no password_file, jwt_secret, jwt_public_key or certificate identity is configured: every CONNECT will be refused");
    }
    if allow_anonymous && !auth.verifies_names() && config.rooms.iter().any(|r| !r.members.is_empty()) {
        tracing::warn!("rooms declare members but no authenticator is configured: names are claims, so anyone can connect as a member");
    }
    let public = local_addrs.iter().find(|(_, a)| !a.ip().is_loopback());
    if let (true, Some((kind, addr))) = (allow_anonymous, public) {
        tracing::warn!(%kind, %addr, "anonymous clients are allowed on a non-loopback listener (auth.allow_anonymous)");
    }
    Ok(auth)
}

/// The state every task shares, with the cluster's store, group commit
/// and chat replication when `nodes` is a cluster.
pub(super) fn shared(
    config: Config,
    store: Option<Arc<dyn Store>>,
    store_health: Arc<StoreHealth>,
    auth: Arc<dyn Authenticator>,
    nodes: &Nodes,
) -> Result<Shared<Registry>, StartError> {
    let metrics = Arc::new(Metrics::default());
    let budgets = Arc::new(Budgets::new(BudgetLimits::from_config(&config)));
    let (shutdown, _) = watch::channel(false);
    // In a cluster, persistent sessions are also in JetStream (kept in
    // memory here with `storage = "memory"`).
    let store = nodes.store(store);
    let commit = group_commit(&config, &store, nodes, &metrics);
    let router = Arc::new(Router::new(
        config.limits.retain_available,
        store.clone().filter(|_| !nodes.clustered()),
        RetainedStore::new(
            config.limits.max_retained_messages,
            config.limits.max_retained_bytes,
        )
        .with_budgets(budgets.clone()),
    ));
    let chat = open_chat(&config, &router, &store, &commit, nodes, &budgets)?;
    Ok(Shared {
        router,
        registry: Registry::default(),
        metrics,
        auth,
        shutdown,
        connections: AtomicUsize::new(0),
        commit,
        store_health,
        gate: Gate {
            acl: Arc::new(Acl::new(config.acl.clone())),
            membership: chat.membership.clone(),
            max_name_length: config.chat.max_chat_name_length,
        },
        chat,
        directory: nodes.directory(),
        login_backoff: LoginBackoff::new(Duration::from_millis(config.auth.login_backoff_max_ms)),
        logins: LoginPool::new(
            config.limits.max_concurrent_logins,
            config.limits.max_pending_logins,
            config.limits.max_pending_logins_per_ip,
        ),
        budgets,
        store,
        config,
    })
}

/// The group commit acknowledgements wait for: with `durability =
/// "flush"`, and always in a cluster (JetStream's acknowledgement).
fn group_commit(
    config: &Config,
    store: &Option<Arc<dyn Store>>,
    nodes: &Nodes,
    metrics: &Arc<Metrics>,
) -> Option<Arc<GroupCommit>> {
    let commit_delay = Duration::from_micros(config.store.commit_delay_us);
    let commit = match (store, config.store.durability, nodes.barrier()) {
        // In a cluster an acknowledgement also waits for JetStream's.
        (_, _, Some(barrier)) => Some(GroupCommit::start_with_barrier(
            store.clone().unwrap_or_else(|| Arc::new(MemoryStore::default())),
            commit_delay,
            Some(barrier),
        )),
        (Some(store), Durability::Flush, None) => Some(GroupCommit::start(store.clone(), commit_delay)),
        _ => None,
    };
    if let Some(commit) = &commit {
        commit.observe_in(metrics.clone());
    }
    commit
}

/// The chat layer, on this node's store or, in a cluster, on the room logs
/// in JetStream (this node keeps a copy in memory, loaded from the stream
/// at start).
fn open_chat(
    config: &Config,
    router: &Arc<Router>,
    store: &Option<Arc<dyn Store>>,
    commit: &Option<Arc<GroupCommit>>,
    nodes: &Nodes,
    budgets: &Arc<Budgets>,
) -> Result<Chat, StartError> {
    let replication = nodes.chat();
    let (chat_store, chat_commit) = match replication.rooms {
        Some(_) => (None, None),
        None => (store.clone(), commit.clone()),
    };
    let mut chat = Chat::open(
        config,
        router.clone(),
        chat_store,
        chat_commit,
        replication,
        budgets.clone(),
    )?;
    chat.load_signed_alerts(store.clone())
        .map_err(StartError::Config)?;
    Ok(chat)
}

/// Brings back what the store kept: retained messages (in a cluster they
/// come from JetStream) and sessions; then publishes the chat state a
/// restart starts from (in a cluster, users online on other nodes stay
/// online).
pub(super) fn restore(shared: &Arc<Shared<Registry>>, clustered: bool) -> Result<(), StartError> {
    if let Some(store) = &shared.store {
        if !clustered {
            for record in store.load_retained()? {
                let mut message = record.into_message();
                if shared.chat.restore_retained(&mut message) {
                    shared.router.restore_retained(message);
                } else if let Err(e) = store.put_retained(&message.topic, None) {
                    tracing::warn!(topic = %message.topic, error = %e, "could not drop a stale read receipt");
                }
            }
        }
        crate::session::restore_from_store(shared, store)?;
    }
    shared.chat.publish_startup_state(!clustered);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StoreConfig;
    use crate::store::Store;

    /// `store_cache_bytes` is the page cache sled runs with (its own
    /// default is 1 GiB); below 1 MiB start-up stops with the key named
    /// (sled would panic below 256 bytes).
    #[test]
    fn store_cache_bytes_reaches_sled() {
        let dir = tempfile::tempdir().unwrap();
        let config = |bytes| Config {
            data_dir: dir.path().to_path_buf(),
            store: StoreConfig {
                storage: StorageKind::Sled,
                store_cache_bytes: bytes,
                ..Default::default()
            },
            ..Config::default()
        };
        assert_eq!(
            Config::default().store.store_cache_bytes,
            crate::store::DEFAULT_CACHE_BYTES
        );
        let store = sled_store(&config(8 << 20)).unwrap();
        assert_eq!(store.cache_capacity(), Some(8 << 20));
        store.close();
        drop(store);
        let refused = sled_store(&config(1000)).err().unwrap().to_string();
        assert!(refused.contains("`store_cache_bytes`"), "{refused}");
    }
}
