//! Scheduled state backups inside `orgkey serve`.

use super::state::write_state_backup;
use crate::api::{BackupStatus, SigningKey};
use crate::clock::unix_secs;
use crate::config::Config;
use crate::openpgp::PgpError;
use crate::service::ServiceError;
use crate::signer::{DigestAlgorithm, PublicKey, Signer, SignerError};
use crate::store::{NodeRole, Store};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// While sealed, a due scheduled backup is retried this often (it needs the
/// org signing subkey, which only an ignited appliance can use).
const SEALED_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

/// Scheduled state backups inside `orgkey serve`, on the node that holds
/// the leader lease only: one as soon as the appliance is ignited with an
/// org key and the leader, then every interval; keeps the newest `keep`
/// files. The backup's audit row is written through a store handle fenced
/// with the lease's epoch, so a node that lost the lease writes no backup.
/// Backups are signed in the token, so while sealed (or while the token is
/// down) a due backup waits (reported as skipped) until ignition. A backup
/// whose signature the token failed or did not make within
/// [`crate::maintenance::TOKEN_DEADLINE`] marks the token down, which
/// starts recovery.
pub(crate) async fn schedule_state_backups(
    cfg: Config,
    state: Arc<crate::api::ApiState>,
    mut role: tokio::sync::watch::Receiver<NodeRole>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let Some(interval) = cfg.backup.interval else {
        return;
    };
    loop {
        if *stop.borrow() {
            break;
        }
        let fence = match &*role.borrow_and_update() {
            NodeRole::Leader(f) => Some(f.clone()),
            NodeRole::Follower => None,
        };
        let key = match state.seal_state() {
            crate::api::SealState::Ignited(Some(k)) if !state.is_token_down() => Some(k),
            _ => None,
        };
        let result = match (&key, fence) {
            (Some(k), Some(fence)) => {
                Some(scheduled_backup(&cfg, &state.store.fenced(fence), k).await)
            }
            _ => None,
        };
        let at = unix_secs(state.clock.now());
        let ran = result.is_some();
        let report = match result {
            None if key.is_none() => BackupStatus::Skipped {
                reason: "waiting for an ignited org key (state backups are signed in the token)"
                    .into(),
                at,
            },
            None => BackupStatus::Skipped {
                reason: "this node is not the leader: the node holding the leader lease backs up"
                    .into(),
                at,
            },
            Some(Ok((path, bytes))) => {
                tracing::info!(file = %path.display(), bytes, "state backup written");
                BackupStatus::Ok {
                    file: path.display().to_string(),
                    bytes,
                    at,
                }
            }
            Some(Err(e)) => {
                tracing::error!(error = %e, "scheduled state backup FAILED");
                if token_unavailable(&e) {
                    state.mark_token_down();
                }
                BackupStatus::Failed {
                    error: crate::text::error_chain(&e),
                    at,
                }
            }
        };
        state.set_backup_report(report);
        if ran {
            // The next one after a whole interval, unless this node loses
            // the lease meanwhile (and then takes it again: a new leader
            // backs up at once).
            let deadline = tokio::time::Instant::now() + interval;
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    () = tokio::time::sleep_until(deadline) => break,
                    () = super::super::cluster::role_changed(&mut role) => {
                        if !matches!(*role.borrow(), NodeRole::Leader(_)) {
                            break;
                        }
                    }
                }
            }
        } else {
            tokio::select! {
                _ = stop.changed() => {}
                () = super::super::cluster::role_changed(&mut role) => {}
                () = tokio::time::sleep(SEALED_RETRY) => {}
            }
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
    let bounded = SigningKey {
        signer: Arc::new(WithDeadline {
            inner: Arc::clone(&key.signer),
            deadline: crate::maintenance::TOKEN_DEADLINE,
        }),
        ..key.clone()
    };
    let size = write_state_backup(cfg, store, &path, "appliance", &bounded).await?;
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

/// Whether a backup failed because the token is down or did not answer.
fn token_unavailable(e: &ServiceError) -> bool {
    match e {
        ServiceError::Pgp(PgpError::Signer(e)) => e.is_unavailable(),
        ServiceError::Token(e) => e.is_unavailable(),
        _ => false,
    }
}

/// A signer that waits for the token's signature `deadline` at most. The
/// backup signature is made deep inside a blocking task that also streams
/// the snapshot, so the wait is bounded here, per signature: the token call
/// runs on a helper thread, which is left to finish or fail on its own after
/// the deadline (its signature is dropped).
struct WithDeadline {
    inner: Arc<dyn Signer>,
    deadline: Duration,
}

impl Signer for WithDeadline {
    fn public_key(&self) -> &PublicKey {
        self.inner.public_key()
    }

    fn sign_digest(&self, alg: DigestAlgorithm, digest: &[u8]) -> Result<Vec<u8>, SignerError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let inner = Arc::clone(&self.inner);
        let digest = digest.to_vec();
        std::thread::Builder::new()
            .name("backup-signature".into())
            .spawn(move || {
                // The receiver is gone after the deadline: nobody to tell.
                let _ = tx.send(inner.sign_digest(alg, &digest));
            })
            .map_err(|e| SignerError::Failed(Box::new(e)))?;
        match rx.recv_timeout(self.deadline) {
            Ok(result) => result,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(SignerError::Unavailable(
                Box::new(crate::ca::DeadlinePassed {
                    what: "signing a state backup",
                    deadline: self.deadline,
                }),
            )),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(SignerError::Failed(
                "the signing thread ended without an answer".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signer::testing::{Hung, SoftP256};

    #[test]
    fn a_backup_signature_waits_for_the_token_until_the_deadline() {
        let digest = [7u8; 32];
        let working = WithDeadline {
            inner: Arc::new(SoftP256::new(1, false)),
            deadline: Duration::from_secs(10),
        };
        assert_eq!(
            working
                .sign_digest(DigestAlgorithm::Sha256, &digest)
                .unwrap()
                .len(),
            64
        );
        let (hung_signer, release) = Hung::new(1);
        let hung = WithDeadline {
            inner: Arc::new(hung_signer),
            deadline: Duration::from_millis(200),
        };
        let started = std::time::Instant::now();
        let e = hung
            .sign_digest(DigestAlgorithm::Sha256, &digest)
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(e.is_unavailable(), "{e:?}");
        let why = std::error::Error::source(&e).map(|s| s.to_string());
        assert!(
            why.as_deref()
                .is_some_and(|w| w.contains("did not answer within 200ms")),
            "{why:?}"
        );
        // Marks the token down (the scheduler's test for it).
        assert!(token_unavailable(&ServiceError::Pgp(PgpError::Signer(e))));
        assert!(!token_unavailable(&ServiceError::Pgp(PgpError::Signer(
            SignerError::Sealed
        ))));
        drop(release);
    }
}
