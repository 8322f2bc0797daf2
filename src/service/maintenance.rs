//! Maintenance wiring: the one-shot run (`orgkey maintenance run`) and the
//! scheduler inside `orgkey serve`.

use super::{ServiceError, load_signing_key, open_store};
use crate::api::{ApiState, MaintenanceCounts, MaintenanceStatus, SealState};
use crate::clock::Clock;
use crate::config::Config;
use crate::maintenance::{Maintenance, OrgSigner, Report};
use crate::openpgp::OrgKey;
use crate::store::{NodeRole, Store};
use secrecy::SecretString;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(super) fn maintenance_for(cfg: &Config, store: Store, clock: Arc<dyn Clock>) -> Maintenance {
    Maintenance {
        store,
        config: cfg.maintenance,
        certification_validity: cfg.certification_validity,
        concurrency: cfg.token.sessions,
        clock,
        x509: cfg.x509.clone(),
        domains: cfg.domains.clone(),
        token_deadline: crate::maintenance::TOKEN_DEADLINE,
    }
}

/// Runs maintenance once: logs in with the ignition passphrase, renews what
/// is due, logs out. `progress` gets (done, total).
pub async fn run_maintenance(
    cfg: &Config,
    passphrase: SecretString,
    actor: &str,
    clock: Arc<dyn Clock>,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<Report, ServiceError> {
    let store = open_store(cfg, Arc::clone(&clock)).await?;
    let rec = store.active_org_key().await?.ok_or_else(|| {
        ServiceError::Refused("no org key: run `orgkey org-key generate` first".into())
    })?;
    let ca_records = store
        .live_org_certs(crate::clock::unix_secs(clock.now()) as i64)
        .await?;
    let (token, key) =
        super::logged_in_token(cfg, passphrase, "loading the org keys", move |token| {
            let mut key = load_signing_key(token, &rec)?;
            key.cas = super::org_cert::load_cas(token, ca_records)?;
            Ok(key)
        })
        .await?;
    let m = maintenance_for(cfg, store.clone(), clock);
    let signer = OrgSigner {
        org: key.org.clone(),
        certifier: Arc::clone(&key.certifier),
        cas: key.cas.clone(),
    };
    let result = m.run(&signer, actor, progress).await;
    drop(key);
    let _ = tokio::task::spawn_blocking(move || token.logout()).await;
    store.close().await;
    Ok(result?.0)
}

/// Reloads the stored org key: a renewal made by `orgkey maintenance run`
/// is swapped in. Returns false if the stored org key is another key (it was
/// replaced): the running appliance must not certify with the old one.
async fn sync_org_key(state: &ApiState, org: &OrgKey) -> bool {
    match state.store.active_org_key().await {
        Ok(Some(rec)) if rec.fingerprint == org.fingerprint() => {
            if org.armored().ok().as_deref() != Some(rec.cert.as_str())
                && let Ok(stored) = OrgKey::parse(rec.cert.as_bytes())
            {
                state.update_org_key(stored);
            }
            true
        }
        Ok(_) => {
            tracing::warn!(
                "the stored org key is no longer the one this appliance was ignited with; \
                 maintenance is paused until the appliance is sealed and ignited again"
            );
            false
        }
        Err(e) => {
            tracing::error!(error = %e, "maintenance could not read the org key");
            false
        }
    }
}

/// The scheduler: while ignited and this node holds the leader lease, runs
/// maintenance every `interval` (the first run right after ignition, or
/// right after this node became the leader: a leader that died mid-run left
/// per-item progress in the store, and the new one resumes at once), until
/// `stop` turns true. Each run writes through a store handle fenced with the
/// lease's epoch, so a node that lost the lease during a run writes nothing
/// more. A failed run is retried after a tenth of the interval. A run that
/// found the token down or hung marks it down, which starts recovery; while
/// it is down no run starts.
pub(super) async fn schedule(
    state: Arc<ApiState>,
    m: Maintenance,
    mut role: tokio::sync::watch::Receiver<NodeRole>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let poll = Duration::from_secs(30).min(m.config.interval);
    let mut next_run = Instant::now();
    let mut was_leader = false;
    loop {
        if *stop.borrow() {
            break;
        }
        let fence = match &*role.borrow_and_update() {
            NodeRole::Leader(f) => Some(f.clone()),
            NodeRole::Follower => None,
        };
        if fence.is_some() && !was_leader {
            next_run = Instant::now();
        }
        was_leader = fence.is_some();
        if let Some(fence) = fence
            && Instant::now() >= next_run
            && !state.is_token_down()
            && let SealState::Ignited(Some(key)) = state.seal_state()
            && sync_org_key(&state, &key.org).await
        {
            let key = match state.seal_state() {
                SealState::Ignited(Some(k)) => k,
                SealState::Ignited(None) | SealState::Sealed => continue,
            };
            let signer = OrgSigner {
                org: key.org.clone(),
                certifier: Arc::clone(&key.certifier),
                cas: key.cas.clone(),
            };
            let epoch = fence.epoch();
            let fenced = Maintenance {
                store: m.store.fenced(fence),
                ..m.clone()
            };
            tracing::info!(epoch, "maintenance run starting");
            // Progress in the log at every further tenth of the due keys.
            let logged_tenths = std::sync::atomic::AtomicU64::new(0);
            let progress = |done: u64, total: u64| {
                let tenths = (done * 10).checked_div(total).unwrap_or(0);
                if logged_tenths.fetch_max(tenths, std::sync::atomic::Ordering::Relaxed) < tenths {
                    tracing::info!(done, total, "maintenance progress");
                }
            };
            match fenced.run(&signer, "maintenance", &progress).await {
                Ok((report, renewed)) => {
                    if let Some(org) = renewed {
                        state.update_org_key(org);
                    }
                    tracing::info!(
                        due = report.due,
                        renewed = report.renewed,
                        refused = report.refused,
                        skipped_user_ids = report.skipped_user_ids,
                        inactive = report.inactive_users,
                        org_key_renewed = report.org_key_renewed_until.is_some(),
                        "maintenance run done"
                    );
                    state.set_maintenance_report(MaintenanceStatus::Ok {
                        report: counts(&report),
                    });
                    next_run = Instant::now() + m.config.interval;
                }
                Err(e) if e.is_fenced() => {
                    // Another node took the lease during the run: what was
                    // written stays (each batch is one transaction), the new
                    // leader resumes from there.
                    tracing::warn!(
                        epoch,
                        "maintenance run stopped: another node took the leader lease"
                    );
                    next_run = Instant::now();
                }
                Err(e) => {
                    tracing::error!(error = %e, "maintenance run failed; retrying later");
                    if e.token_unavailable() {
                        state.mark_token_down();
                    }
                    state.set_maintenance_report(MaintenanceStatus::Failed {
                        error: crate::text::error_chain(&e),
                        at: crate::clock::unix_secs(m.clock.now()),
                    });
                    next_run = Instant::now() + m.config.interval / 10;
                }
            }
        }
        tokio::select! {
            _ = stop.changed() => {}
            () = super::cluster::role_changed(&mut role) => {}
            () = tokio::time::sleep(poll) => {}
        }
    }
}

/// What the API shows of a run's report.
fn counts(r: &crate::maintenance::Report) -> MaintenanceCounts {
    MaintenanceCounts {
        at: r.at,
        org_key_renewed_until: r.org_key_renewed_until,
        due: r.due,
        renewed: r.renewed,
        certifications: r.certifications,
        refused: r.refused,
        concurrent: r.concurrent,
        skipped_user_ids: r.skipped_user_ids,
        inactive_users: r.inactive_users,
        user_certs_renewed: r.user_certs_renewed,
        user_certs_failed: r.user_certs_failed,
        crls_refreshed: r.crls_refreshed,
        stale_issuances: r.stale_issuances,
    }
}
