//! The broker's own tasks, started by `Broker::start` (`spawn_all`): chat
//! delivery after the group commit, room member lists, chat and budget
//! upkeep, buffered flushes, the store watch and `$SYS`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio_util::task::TaskTracker;

use super::nodes::Nodes;
use crate::config::Durability;
use crate::context::Shared;
use crate::protocol::QoS;
use crate::router::Message;
use crate::session::Registry;
use crate::store::Store;

/// Starts every task the configuration asks for; each ends at shutdown.
pub(super) fn spawn_all(shared: &Arc<Shared<Registry>>, nodes: &Arc<Nodes>, tracker: &TaskTracker) {
    tracker.spawn(chat_upkeep(shared.clone()));
    // Also without a store on disk: the chat's log is then in memory.
    tracker.spawn(purge_edits(shared.clone()));
    if shared.commit.is_some() {
        let delivery = shared.clone();
        tracker.spawn(async move {
            let stop = delivery.shutdown.subscribe();
            delivery.chat.run_delivery(stop).await;
        });
    }
    let members = shared.clone();
    tracker.spawn(async move {
        let stop = members.shutdown.subscribe();
        members.chat.run_members(stop).await;
    });
    if shared.config.sys_interval_secs > 0 {
        tracker.spawn(publish_sys(shared.clone(), nodes.clone()));
    }
    if let (Some(store), Durability::Buffered) = (&shared.store, shared.config.store.durability) {
        tracker.spawn(flush_periodically(store.clone(), shared.clone()));
    }
    if let Some(store) = &shared.store {
        tracker.spawn(watch_store(shared.clone()));
        tracker.spawn(purge_reactions(store.clone(), shared.clone()));
    }
}

/// Every minute: `run_upkeep`.
async fn chat_upkeep(shared: Arc<Shared<Registry>>) {
    let mut shutdown = shared.shutdown.subscribe();
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {
                let worker = shared.clone();
                let _ = tokio::task::spawn_blocking(move || run_upkeep(&worker)).await;
            }
        }
    }
}

/// Every second: removes the reactions of removed messages, one chunk
/// (`reaction_purge_chunk` keys) per step, until none is left. A failed
/// step leaves the queue for the next tick (the store's health logs it).
async fn purge_reactions(store: Arc<dyn Store>, shared: Arc<Shared<Registry>>) {
    let chunk = shared.config.chat.reaction_purge_chunk.max(1);
    drain_every_second(
        shared,
        move || matches!(store.purge_reactions(chunk), Ok(removed) if removed >= chunk),
    )
    .await;
}

/// Every second: empties the queued edit bodies of deleted messages
/// (`chat/edit_purges.rs`), one step (`room_max_edits_per_message`
/// edits) at a time, until none is left: a post to the room waits for one
/// step at most.
async fn purge_edits(shared: Arc<Shared<Registry>>) {
    let worker = shared.clone();
    drain_every_second(shared, move || match worker.chat.purge_edits() {
        Ok(more) => more,
        Err(error) => {
            // The queue stays for the next tick; a failing store is
            // logged by its health, not here every second.
            tracing::debug!(%error, "could not empty the edits of a deleted message");
            false
        }
    })
    .await;
}

/// Every second, runs `step` again and again until it says nothing is
/// left (or the broker shuts down): each step in a blocking task of its
/// own, not the whole queue in one, so that other rooms' commits and
/// flushes go between two steps.
async fn drain_every_second(shared: Arc<Shared<Registry>>, step: impl Fn() -> bool + Clone + Send + 'static) {
    let mut stop = shared.shutdown.subscribe();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        loop {
            let step = step.clone();
            match tokio::task::spawn_blocking(step).await {
                Ok(true) if !*stop.borrow() => {}
                _ => break,
            }
        }
    }
}

/// Removes every queued reaction of removed messages, a chunk at a time
/// (for `run_upkeep`, off the runtime).
fn purge_all_reactions(shared: &Shared<Registry>) {
    let Some(store) = &shared.store else { return };
    let chunk = shared.config.chat.reaction_purge_chunk.max(1);
    while let Ok(removed) = store.purge_reactions(chunk) {
        if removed < chunk {
            break;
        }
    }
}

/// One round of upkeep (see `BrokerHandle::run_upkeep`).
pub(super) fn run_upkeep(shared: &Shared<Registry>) -> usize {
    shared.budgets.forget_idle();
    shared
        .chat
        .upkeep(Duration::from_millis(shared.config.chat.typing_min_interval_ms));
    purge_all_reactions(shared);
    let retention = Duration::from_secs(shared.config.chat.presence_retention_secs);
    if retention.is_zero() {
        return 0;
    }
    let expired = shared.chat.expire_presence(retention);
    if expired > 0 {
        tracing::info!(
            expired,
            "stale offline presence forgotten (presence_retention_secs)"
        );
    }
    expired
}

/// With `durability = "buffered"`: flushes every `flush_interval_ms`.
async fn flush_periodically(store: Arc<dyn Store>, shared: Arc<Shared<Registry>>) {
    let mut stop = shared.shutdown.subscribe();
    let mut tick = tokio::time::interval(Duration::from_millis(
        shared.config.store.flush_interval_ms.max(1),
    ));
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        let store = store.clone();
        // A failure is recorded and logged by the store's health.
        let _ = tokio::task::spawn_blocking(move || store.flush()).await;
    }
}

/// Every second: measures the free disk space (`min_free_disk_bytes`) and
/// publishes `$SYS/broker/store/status` (retained) when it changes: "ok",
/// or "failing since {unix ms}: {why}" while the store refuses writes
/// (unless `$SYS` is off: `sys_interval_secs = 0`).
async fn watch_store(shared: Arc<Shared<Registry>>) {
    let mut stop = shared.shutdown.subscribe();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut published: Option<String> = None;
    let reopens = || shared.store.as_ref().map_or(0, |s| s.reopens());
    let mut reopened = reopens();
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        // Sets the estimate writes are admitted against (`store/space.rs`).
        shared.store_health.measure_disk();
        if reopens() != reopened {
            reopened = reopens();
            // The store was reopened (`store/sled_db.rs`): session records
            // written since the last flush that worked are lost.
            let saved = shared.registry.resave_online();
            tracing::warn!(
                sessions = saved,
                "store reopened: the records of connected sessions were written again"
            );
        }
        let status = match shared.store_health.failure() {
            None => "ok".to_string(),
            Some(failure) => format!("failing since {}: {}", failure.since_unix_ms, failure.error),
        };
        // `$SYS` is off with `sys_interval_secs = 0`, as in Mosquitto.
        if shared.config.sys_interval_secs > 0 && published.as_deref() != Some(&status) {
            shared.router.publish(Message::new(
                "$SYS/broker/store/status",
                Bytes::from(status.clone()),
                QoS::AtMostOnce,
                true,
            ));
            published = Some(status);
        }
    }
}

/// Publishes the `$SYS/broker/...` topics as retained messages every
/// `sys_interval_secs`.
async fn publish_sys(shared: Arc<Shared<Registry>>, nodes: Arc<Nodes>) {
    let mut stop = shared.shutdown.subscribe();
    let mut tick = tokio::time::interval(Duration::from_secs(shared.config.sys_interval_secs));
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        shared.publish_sys(true);
        let topics = nodes.sys_topics();
        for (topic, value) in topics {
            shared
                .router
                .publish(Message::new(topic, value, QoS::AtMostOnce, true));
        }
    }
}
