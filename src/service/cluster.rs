//! The leader lease inside `orgkey serve` (decision 0038), and `orgkey
//! cluster status`. Every node runs the same lease task: it takes or renews
//! the lease every third of `[cluster] lease_ttl`, publishes this node's
//! role to the singleton jobs (maintenance and scheduled state backups run
//! only while it is the leader, their writes fenced with its epoch) and
//! leaves a heartbeat in the members table. Only an ignited node with an org
//! key contends. A single appliance goes through the same code: it is the
//! leader whenever it is ignited.

use super::{ServiceError, open_store};
use crate::clock::Clock;
use crate::config::Config;
use crate::store::{ClusterView, NodeRole, Store};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How often a node that may not hold the lease (sealed) looks whether it
/// may now: a local check, no database round trip, so that ignition is
/// followed by the lease and the first maintenance run at once.
const ELIGIBILITY_POLL: Duration = Duration::from_millis(200);

/// Runs the lease task until `stop`; `role` gets this node's role as it
/// changes. Only a node that can run the singleton jobs (`eligible`:
/// ignited with an org key) takes or keeps the lease: a sealed node holding
/// it would keep the jobs from running anywhere, so a leader that is sealed
/// gives it up at once. On a graceful stop a leader gives the lease up
/// too, so another node takes over at its next attempt rather than after
/// the TTL.
pub(super) async fn hold_lease(
    store: Store,
    node: String,
    ttl: Duration,
    eligible: impl Fn() -> bool + Send,
    role: watch::Sender<NodeRole>,
    mut stop: watch::Receiver<bool>,
) {
    let instance = crate::store::new_instance();
    let period = ttl / 3;
    // The first attempt of a process may take back a lease its node held
    // before a crash, without waiting it out.
    let mut reclaim = true;
    // When the last successful renewal was sent: the lease lasts at least
    // `ttl` from then on the database's clock.
    let mut renewed_at: Option<Instant> = None;
    'run: loop {
        if *stop.borrow() {
            break;
        }
        let sent = Instant::now();
        let may_lead = eligible();
        let now = if may_lead {
            let attempt =
                tokio::time::timeout(period, store.acquire_lease(&node, &instance, ttl, reclaim))
                    .await;
            match attempt {
                Ok(Ok(Some(fence))) => {
                    reclaim = false;
                    renewed_at = Some(sent);
                    NodeRole::Leader(fence)
                }
                Ok(Ok(None)) => {
                    reclaim = false;
                    NodeRole::Follower
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %crate::text::error_chain(&e), "the leader lease could not be renewed");
                    keep_until_expiry(&role.borrow(), renewed_at, ttl)
                }
                Err(_) => {
                    tracing::warn!(wait = ?period, "the leader lease could not be renewed in time");
                    keep_until_expiry(&role.borrow(), renewed_at, ttl)
                }
            }
        } else {
            if matches!(*role.borrow(), NodeRole::Leader(_)) {
                give_up(&store, &instance).await;
            }
            NodeRole::Follower
        };
        publish(&role, now.clone());
        let epoch = match &now {
            NodeRole::Leader(f) => Some(f.epoch()),
            NodeRole::Follower => None,
        };
        if let Err(e) = store.heartbeat(&node, &instance, now.as_str(), epoch).await {
            tracing::debug!(error = %e, "heartbeat not recorded");
        }
        // The next attempt after a period, or at once when this node
        // becomes able to lead or stops being able to.
        let next = sent + period;
        loop {
            let left = next.saturating_duration_since(Instant::now());
            if left.is_zero() || eligible() != may_lead {
                break;
            }
            tokio::select! {
                stopped = stop.changed() => {
                    // The sender gone is a stop too (serve returned early).
                    if stopped.is_err() || *stop.borrow() {
                        break 'run;
                    }
                }
                () = tokio::time::sleep(left.min(ELIGIBILITY_POLL)) => {}
            }
        }
    }
    if matches!(*role.borrow(), NodeRole::Leader(_)) {
        publish(&role, NodeRole::Follower);
        give_up(&store, &instance).await;
    }
    let _ = store.heartbeat(&node, &instance, "stopped", None).await;
}

/// Gives the lease up (bounded: a database that does not answer lets it
/// expire by itself).
async fn give_up(store: &Store, instance: &str) {
    match tokio::time::timeout(Duration::from_secs(2), store.release_lease(instance)).await {
        Ok(Ok(())) => tracing::info!("leader lease given up"),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "the leader lease could not be given up; it expires by itself")
        }
        Err(_) => {
            tracing::warn!("the leader lease could not be given up in time; it expires by itself")
        }
    }
}

/// After a failed renewal: a leader stays one while its last renewal is
/// younger than the TTL (the lease cannot have expired in the database
/// yet), then steps down. Its writes are fenced either way.
fn keep_until_expiry(current: &NodeRole, renewed_at: Option<Instant>, ttl: Duration) -> NodeRole {
    match (current, renewed_at) {
        (NodeRole::Leader(f), Some(t)) if t.elapsed() < ttl => NodeRole::Leader(f.clone()),
        _ => NodeRole::Follower,
    }
}

fn publish(role: &watch::Sender<NodeRole>, now: NodeRole) {
    role.send_if_modified(|current| {
        if *current == now {
            return false;
        }
        match &now {
            NodeRole::Leader(f) => tracing::info!(
                epoch = f.epoch(),
                "this node is the leader: it runs maintenance and scheduled backups"
            ),
            NodeRole::Follower => {
                tracing::warn!("this node is no longer the leader: its singleton jobs stop")
            }
        }
        *current = now;
        true
    });
}

/// Waits until `role` changes (forever once its sender is gone).
pub(super) async fn role_changed(role: &mut watch::Receiver<NodeRole>) {
    if role.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// `orgkey cluster status`: the lease and the members from the store (no
/// token needed), with this node's config's id.
pub async fn cluster_status(
    cfg: &Config,
    clock: Arc<dyn Clock>,
) -> Result<ClusterView, ServiceError> {
    let store = open_store(cfg, clock).await?;
    let view = store.cluster_view().await;
    store.close().await;
    Ok(view?)
}
