//! Scheduled state backups inside `orgkey serve`.

use super::state::write_state_backup;
use crate::api::SigningKey;
use crate::clock::unix_secs;
use crate::config::Config;
use crate::service::ServiceError;
use crate::store::Store;
use std::path::PathBuf;
use std::sync::Arc;

/// While sealed, a due scheduled backup is retried this often (it needs the
/// org signing subkey, which only an ignited appliance can use).
const SEALED_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

/// Scheduled state backups inside `orgkey serve`: one as soon as the
/// appliance is ignited with an org key, then every interval; keeps the
/// newest `keep` files. Backups are signed in the token, so while sealed a
/// due backup waits (reported as skipped) until ignition.
pub(crate) async fn schedule_state_backups(
    cfg: Config,
    state: Arc<crate::api::ApiState>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let Some(interval) = cfg.backup.interval else {
        return;
    };
    loop {
        if *stop.borrow() {
            break;
        }
        let key = match state.seal_state() {
            crate::api::SealState::Ignited(Some(k)) if !state.is_token_down() => Some(k),
            _ => None,
        };
        let result = match &key {
            Some(k) => Some(scheduled_backup(&cfg, &state.store, k).await),
            None => None,
        };
        let report = match result {
            None => serde_json::json!({
                "outcome": "skipped",
                "reason": "waiting for an ignited org key (state backups are signed in the token)",
                "at": unix_secs(state.clock.now()),
            }),
            Some(Ok((path, size))) => {
                tracing::info!(file = %path.display(), size, "state backup written");
                serde_json::json!({
                    "outcome": "ok",
                    "file": path.display().to_string(),
                    "bytes": size,
                    "at": unix_secs(state.clock.now()),
                })
            }
            Some(Err(e)) => {
                tracing::error!(error = %e, "scheduled state backup FAILED");
                serde_json::json!({
                    "outcome": "failed",
                    "error": e.to_string(),
                    "at": unix_secs(state.clock.now()),
                })
            }
        };
        state.set_backup_report(report);
        let wait = if key.is_some() {
            interval
        } else {
            SEALED_RETRY
        };
        tokio::select! {
            _ = stop.changed() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}

async fn scheduled_backup(
    cfg: &Config,
    store: &Store,
    key: &SigningKey,
) -> Result<(PathBuf, u64), ServiceError> {
    let dir = &cfg.backup.dir;
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(ServiceError::io(format!("creating {}", dir.display())))?;
    }
    let stamp = humantime::format_rfc3339_seconds(store.clock().now())
        .to_string()
        .replace([':', '-'], "");
    let path = dir.join(format!("orgkey-state-{stamp}.pgp"));
    let size = write_state_backup(cfg, store, &path, "appliance", key).await?;
    // Keep the newest `keep` scheduled backups (names sort by time).
    let mut ours: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(ServiceError::io(format!("listing {}", dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("orgkey-state-") && n.ends_with(".pgp"))
        })
        .collect();
    ours.sort();
    let excess = ours.len().saturating_sub(cfg.backup.keep);
    for old in &ours[..excess] {
        if let Err(e) = std::fs::remove_file(old) {
            tracing::warn!(file = %old.display(), error = %e, "could not remove an old state backup");
        }
    }
    Ok((path, size))
}
