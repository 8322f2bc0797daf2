//! Maintenance: renews the org key's expiry before it lapses and renews the
//! certifications of active users before theirs do. One run streams through
//! the store in keyset-paginated batches (memory depends on the batch size,
//! not on the number of users), certifies each batch concurrently through
//! the token's session pool, and writes each batch in one transaction. Time
//! comes from the injected clock, so tests move it instead of sleeping.
//!
//! `orgkey serve` runs it on a schedule while ignited; `orgkey maintenance
//! run` runs it once.

use crate::clock::{Clock, unix_secs};
use crate::config::MaintenanceConfig;
use crate::openpgp::{CertifyRequest, OrgKey, PgpError, RefusalKind, UserKey, certify};
use crate::reserved::{ReservedEmails, ReservedError};
use crate::signer::{Signer, SignerError};
use crate::store::{AuditEvent, DueQuery, SaveUserKey, Store, StoreError};
use crate::task::TaskFailed;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::task::JoinSet;

/// Longest a scheduled job (maintenance, scheduled state backups) waits for
/// the token: one certification, the org key's renewal, one user
/// certificate or CRL, one backup signature. A token that misses it counts
/// as unavailable, like one that fails.
pub const TOKEN_DEADLINE: Duration = Duration::from_secs(60);

/// Maintenance errors (a run that fails is retried by the next one).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MaintenanceError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Renewing the org key failed (token down, sealed, ...).
    #[error("renewing the org key: {0}")]
    OrgKey(PgpError),
    /// The token stopped signing during the run.
    #[error("certifying: {0}")]
    Token(PgpError),
    /// A worker task panicked or was cancelled.
    #[error(transparent)]
    TaskFailed(#[from] TaskFailed),
    /// A CRL could not be made (other than for the store or the token).
    #[error("CRL: {0}")]
    Crl(#[source] crate::ca::CaError),
    /// The organization's own addresses could not be read (nothing is
    /// certified without them).
    #[error(transparent)]
    Reserved(#[from] ReservedError),
}

impl MaintenanceError {
    /// Whether the run stopped because this node lost the leader lease (a
    /// write was fenced): not a failure of the run's work.
    pub fn is_fenced(&self) -> bool {
        matches!(self, MaintenanceError::Store(e) if e.is_fenced())
    }

    /// Whether the run failed because the token is down or did not answer
    /// within the deadline: the token is to be treated as lost (recovered).
    pub fn token_unavailable(&self) -> bool {
        match self {
            MaintenanceError::OrgKey(PgpError::Signer(e))
            | MaintenanceError::Token(PgpError::Signer(e)) => e.is_unavailable(),
            MaintenanceError::OrgKey(_)
            | MaintenanceError::Token(_)
            | MaintenanceError::Store(_)
            | MaintenanceError::TaskFailed(_)
            | MaintenanceError::Crl(_)
            | MaintenanceError::Reserved(_) => false,
        }
    }
}

/// The token did not answer within `deadline` while doing `what`.
fn missed_deadline(what: &'static str, deadline: Duration) -> PgpError {
    PgpError::Signer(SignerError::Unavailable(Box::new(
        crate::ca::DeadlinePassed { what, deadline },
    )))
}

/// What one run did.
/// Serialized, it is the detail of the run's audit row.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Report {
    /// Unix seconds the run used as "now".
    pub at: u64,
    /// New org key expiry (Unix seconds) if the org key was renewed.
    pub org_key_renewed_until: Option<u64>,
    /// Keys that were due.
    pub due: u64,
    /// Keys whose certifications were renewed.
    pub renewed: u64,
    /// User IDs certified in those keys.
    pub certifications: u64,
    /// Keys that could not be certified any more (revoked, expired, too weak).
    pub refused: u64,
    /// Keys changed by a concurrent certify call during the run (it
    /// certified them itself).
    pub concurrent: u64,
    /// Stored users (email of a due key) no longer certified because their
    /// user ID is not in canonical form or their address is reserved for
    /// the organization (stored before that was refused); each is logged.
    pub skipped_user_ids: u64,
    /// Active users skipped because they were inactive too long.
    pub inactive_users: u64,
    /// S/MIME user certificates issued anew before the old one expired.
    pub user_certs_renewed: u64,
    /// User certificates that could not be renewed (see the log).
    pub user_certs_failed: u64,
    /// CRLs made because the last one's nextUpdate was near.
    pub crls_refreshed: u64,
    /// Pending issuances left by a crash, marked abandoned.
    pub stale_issuances: u64,
}

/// The org key as maintenance uses it.
#[derive(Clone)]
pub struct OrgSigner {
    /// Public certificate.
    pub org: OrgKey,
    /// The certify-only primary key in the token.
    pub certifier: Arc<dyn Signer>,
    /// Org cert keys (active first); empty without an org cert.
    pub cas: crate::ca::CaSet,
}

/// Settings of a run.
#[derive(Clone)]
pub struct Maintenance {
    /// The store.
    pub store: Store,
    /// Schedule and windows.
    pub config: MaintenanceConfig,
    /// Lifetime of a certification.
    pub certification_validity: Duration,
    /// Concurrent certifications (the token's session count is a good value).
    pub concurrency: usize,
    /// Time source.
    pub clock: Arc<dyn Clock>,
    /// Org cert and user certificate settings.
    pub x509: crate::config::X509Config,
    /// Managed domains.
    pub domains: Vec<String>,
    /// Longest the run waits for the token at a time (one certification,
    /// the org key renewal, one user certificate or CRL); then the run fails
    /// with the token unavailable. [`TOKEN_DEADLINE`] unless a test says
    /// otherwise.
    pub token_deadline: Duration,
}

fn secs(t: SystemTime) -> i64 {
    unix_secs(t) as i64
}

enum Outcome {
    Renewed(SaveUserKey, u64),
    Refused(String, String),
}

/// A stored user of a due key that is not certified any more: (key,
/// email, why).
struct Skipped(String, String, String);

impl Maintenance {
    /// Runs once as `actor`. Returns the report and, if the org key was
    /// renewed, its new certificate (the caller swaps it in). `progress` is
    /// called with (keys done, keys due).
    pub async fn run(
        &self,
        key: &OrgSigner,
        actor: &str,
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<(Report, Option<OrgKey>), MaintenanceError> {
        let now = self.clock.now_secs();
        let mut report = Report {
            at: unix_secs(now),
            ..Report::default()
        };
        let result = self.run_inner(key, now, &mut report, progress).await;
        let (outcome, detail) = match &result {
            Ok(_) => ("ok", serde_json::to_string(&report).unwrap_or_default()),
            Err(e) => (
                "failed",
                format!(
                    "{e}; {}",
                    serde_json::to_string(&report).unwrap_or_default()
                ),
            ),
        };
        self.store
            .append_audit(&[AuditEvent::new(actor, "maintenance", outcome)
                .key(key.org.fingerprint())
                .detail(detail)])
            .await?;
        result.map(|renewed| (report, renewed))
    }

    async fn run_inner(
        &self,
        key: &OrgSigner,
        now: SystemTime,
        report: &mut Report,
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<Option<OrgKey>, MaintenanceError> {
        let renewed_org = self.renew_org_key(key, now, report).await?;
        let current = OrgSigner {
            org: renewed_org.clone().unwrap_or_else(|| key.org.clone()),
            certifier: Arc::clone(&key.certifier),
            cas: key.cas.clone(),
        };
        self.renew_certifications(&current, now, report, progress)
            .await?;
        self.x509_upkeep(&key.cas, now, report).await?;
        Ok(renewed_org)
    }

    async fn renew_org_key(
        &self,
        key: &OrgSigner,
        now: SystemTime,
        report: &mut Report,
    ) -> Result<Option<OrgKey>, MaintenanceError> {
        let due = key
            .org
            .renewal_due(now, self.config.org_key_renew_before)
            .map_err(MaintenanceError::OrgKey)?;
        if due.is_none_or(|d| d > now) {
            return Ok(None);
        }
        let k = key.clone();
        let task = tokio::task::spawn_blocking(move || k.org.renew(k.certifier.as_ref(), now));
        // After the deadline the renewal is left to finish or fail on its
        // own; its result is dropped and nothing is stored.
        let renewed = tokio::time::timeout(self.token_deadline, task)
            .await
            .map_err(|_| {
                MaintenanceError::OrgKey(missed_deadline(
                    "renewing the org key",
                    self.token_deadline,
                ))
            })?
            .map_err(TaskFailed::doing("renewing the org key"))?
            .map_err(MaintenanceError::OrgKey)?;
        let Some(renewed) = renewed else {
            return Ok(None);
        };
        let expires = renewed.expires(now).map_err(MaintenanceError::OrgKey)?;
        let armored = renewed.armored().map_err(MaintenanceError::OrgKey)?;
        let until = expires.map(unix_secs);
        self.store
            .update_org_key_cert(
                &renewed.fingerprint(),
                &armored,
                &AuditEvent::new("maintenance", "org-key-renew", "ok")
                    .key(renewed.fingerprint())
                    .detail(format!(
                        "expiry moved to {}",
                        expires
                            .map(|e| humantime::format_rfc3339_seconds(e).to_string())
                            .unwrap_or_else(|| "never".into())
                    )),
            )
            .await?;
        tracing::info!(org_key = %renewed.fingerprint(), ?until, "org key renewed");
        report.org_key_renewed_until = until;
        Ok(Some(renewed))
    }

    async fn renew_certifications(
        &self,
        key: &OrgSigner,
        now: SystemTime,
        report: &mut Report,
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<(), MaintenanceError> {
        let org_fpr = key.org.fingerprint();
        let horizon = now + self.config.interval + self.config.renew_margin;
        let active_since = now
            .checked_sub(self.config.inactive_after)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        report.inactive_users = self.store.count_inactive_users(secs(active_since)).await? as u64;
        let org_fprs = Arc::new(self.store.org_key_fingerprints().await?);
        let reserved = Arc::new(ReservedEmails::load(&self.store).await?);
        let mut after = String::new();
        let template = DueQuery {
            after: "",
            limit: self.config.batch_size as i64,
            horizon: secs(horizon),
            active_since: secs(active_since),
            org: &org_fpr,
        };
        let total = self.store.count_due_user_keys(template).await? as u64;
        report.due = total;
        progress(0, total);
        let mut done = 0u64;
        let permits = Arc::new(tokio::sync::Semaphore::new(self.concurrency.max(1)));
        // One shared instance: sequoia caches the org key's verified
        // self-signatures inside it, so workers do not verify them again.
        let shared = Arc::new(key.clone());
        loop {
            let batch = self
                .store
                .due_user_keys(DueQuery {
                    after: &after,
                    ..template
                })
                .await?;
            let Some(last) = batch.last() else { break };
            after = last.key.fingerprint.clone();
            let n = batch.len() as u64;
            // Waiting for a permit or a result is waiting for the token: when
            // no certification finishes within the deadline, the token hangs.
            // The hung ones are left to finish or fail on their own.
            let hung =
                || MaintenanceError::Token(missed_deadline("certifying", self.token_deadline));
            let mut tasks = JoinSet::new();
            for due in batch {
                // The semaphore is never closed, so acquiring only waits.
                let Ok(permit) =
                    tokio::time::timeout(self.token_deadline, Arc::clone(&permits).acquire_owned())
                        .await
                        .map_err(|_| hung())?
                else {
                    unreachable!("the permit semaphore is never closed")
                };
                let k = Arc::clone(&shared);
                let org_fprs = Arc::clone(&org_fprs);
                let reserved = Arc::clone(&reserved);
                let validity = self.certification_validity;
                tasks.spawn_blocking(move || {
                    let _permit = permit;
                    renew_one(&k, due, now, validity, &org_fprs, &reserved)
                });
            }
            let mut saves = Vec::new();
            while let Some(res) = tokio::time::timeout(self.token_deadline, tasks.join_next())
                .await
                .map_err(|_| hung())?
            {
                let res = res.map_err(TaskFailed::doing("certifying a user key"))?;
                if let Ok((_, skipped)) = &res {
                    for Skipped(fpr, email, why) in skipped {
                        tracing::warn!(
                            key = %fpr,
                            email = ?email,
                            reason = %why,
                            "stored user no longer certified (remove it, or have the user submit a key with a canonical user ID)"
                        );
                    }
                    report.skipped_user_ids += skipped.len() as u64;
                }
                match res.map(|(outcome, _)| outcome) {
                    Ok(Outcome::Renewed(save, certs)) => {
                        report.certifications += certs;
                        saves.push(save);
                    }
                    Ok(Outcome::Refused(fpr, why)) => {
                        tracing::warn!(key = %fpr, reason = %why, "user key can no longer be certified");
                        report.refused += 1;
                    }
                    Err(e) => {
                        tasks.abort_all();
                        return Err(MaintenanceError::Token(e));
                    }
                }
            }
            let written = self.store.save_renewed_keys(&saves).await? as u64;
            report.renewed += written;
            report.concurrent += saves.len() as u64 - written;
            done += n;
            progress(done, total.max(done));
            tracing::debug!(done, total, "maintenance batch written");
        }
        Ok(())
    }
}

impl Maintenance {
    /// Abandons issuances a crash left pending, renews user certificates of
    /// active users before they expire (same key, active org cert), and
    /// makes CRLs whose nextUpdate falls before the next run.
    async fn x509_upkeep(
        &self,
        cas: &crate::ca::CaSet,
        now: SystemTime,
        report: &mut Report,
    ) -> Result<(), MaintenanceError> {
        report.stale_issuances = self
            .store
            .abandon_stale_user_certs(secs(now) - 3600)
            .await?;
        let horizon = now + self.config.interval + self.config.renew_margin;
        if let Some(active) = cas.active() {
            let active_since = now
                .checked_sub(self.config.inactive_after)
                .unwrap_or(SystemTime::UNIX_EPOCH);
            let mut after = String::new();
            loop {
                let batch = self
                    .store
                    .due_user_certs(
                        &after,
                        self.config.batch_size as i64,
                        secs(horizon),
                        secs(active_since),
                    )
                    .await?;
                let Some(last) = batch.last() else { break };
                after = last.serial.clone();
                for due in batch {
                    match self.renew_user_cert(active, &due, now).await {
                        Ok(()) => report.user_certs_renewed += 1,
                        Err(crate::ca::CaError::Signer(e)) => {
                            return Err(MaintenanceError::Token(PgpError::Signer(e)));
                        }
                        Err(crate::ca::CaError::Store(e)) => return Err(e.into()),
                        Err(e) => {
                            tracing::warn!(serial = %due.serial, error = %e, "user certificate not renewed");
                            report.user_certs_failed += 1;
                        }
                    }
                }
            }
        }
        for ca in &cas.cas {
            // Renewed when it would lapse before the next run.
            let margin = self.config.interval;
            let before = self.store.latest_crl(&ca.record.fingerprint).await?;
            let crl = crate::ca::current_crl(
                &self.store,
                ca,
                &self.x509,
                now,
                margin,
                "maintenance",
                Some(self.token_deadline),
            )
            .await
            .map_err(|e| match e {
                crate::ca::CaError::Store(s) => MaintenanceError::Store(s),
                crate::ca::CaError::Signer(e) => MaintenanceError::Token(PgpError::Signer(e)),
                other => MaintenanceError::Crl(other),
            })?;
            if before.map(|b| b.number) != Some(crl.number) {
                report.crls_refreshed += 1;
            }
        }
        Ok(())
    }

    async fn renew_user_cert(
        &self,
        ca: &Arc<crate::ca::LoadedCa>,
        due: &crate::store::UserCertRecord,
        now: SystemTime,
    ) -> Result<(), crate::ca::CaError> {
        let spki = hex::decode(&due.spki)
            .map_err(|_| crate::ca::CaError::Encoding("stored key is not hex".into()))?;
        let emails: Vec<String> = due.emails.split(',').map(str::to_string).collect();
        // The name comes from the user's certified user ID as it is now, not
        // from the old certificate (whose name an older version copied from
        // the CSR unchecked).
        let common_name = match emails.first() {
            Some(primary) => self
                .store
                .user(primary)
                .await?
                .filter(|u| u.state == crate::store::UserState::Active)
                .and_then(|u| {
                    crate::openpgp::parse_user_id(u.user_id.as_bytes())
                        .ok()
                        .flatten()
                })
                .and_then(|c| c.name)
                .filter(|n| n.len() <= 64),
            None => None,
        };
        let request = crate::x509::UserCertRequest {
            key: "renewal".into(),
            emails,
            common_name,
            spki,
        };
        let source = if due.source == "openpgp" {
            crate::ca::Source::OpenPgp
        } else {
            crate::ca::Source::Csr
        };
        crate::ca::issue(
            &self.store,
            ca,
            &self.x509,
            &self.domains,
            crate::ca::Issue {
                request: &request,
                source,
                actor: "maintenance",
                renew: true,
                now,
                deadline: self.token_deadline,
                commits: None,
            },
        )
        .await
        .map(|_| ())
    }
}

/// Certifies one due key again. Its stored users whose user ID is not in
/// canonical form or whose address is reserved are skipped (and returned):
/// they may have been certified before that was refused, and must not be
/// renewed.
fn renew_one(
    key: &OrgSigner,
    due: crate::store::DueUserKey,
    now: SystemTime,
    validity: Duration,
    org_fprs: &[String],
    reserved: &ReservedEmails,
) -> Result<(Outcome, Vec<Skipped>), PgpError> {
    let fpr = due.key.fingerprint.clone();
    let user = match UserKey::parse(due.key.cert.as_bytes()) {
        Ok(u) => u,
        Err(e) => {
            let why = format!("stored key unreadable: {e}");
            return Ok((Outcome::Refused(fpr, why), Vec::new()));
        }
    };
    let emails: HashSet<String> = due.emails.into_iter().collect();
    let select = |email: &str| {
        if emails.contains(email) {
            Ok(())
        } else {
            Err("not an active user".to_string())
        }
    };
    let req = CertifyRequest {
        now,
        validity,
        select: &select,
        reserved: reserved.as_map(),
        org_fingerprints: org_fprs,
    };
    let outcome = match certify(&key.org, key.certifier.as_ref(), user, &req) {
        Ok(o) => o,
        Err(PgpError::Unacceptable(why) | PgpError::Invalid(why)) => {
            return Ok((Outcome::Refused(fpr, why), Vec::new()));
        }
        Err(e) => return Err(e),
    };
    let skipped: Vec<Skipped> = outcome
        .refused
        .iter()
        .filter(|r| matches!(r.kind, RefusalKind::NonCanonical | RefusalKind::Reserved))
        .filter_map(|r| {
            let email = r.email.as_ref().filter(|e| emails.contains(*e))?;
            Some(Skipped(
                fpr.clone(),
                email.clone(),
                format!("{:?}: {}", r.user_id, r.reason),
            ))
        })
        .collect();
    if outcome.certified.is_empty() {
        let why = outcome
            .refused
            .iter()
            .map(|r| format!("{:?}: {}", r.user_id, r.reason))
            .collect::<Vec<_>>()
            .join("; ");
        return Ok((Outcome::Refused(fpr, why), skipped));
    }
    let earliest = outcome.certified.iter().map(|c| c.expires).min();
    let save = SaveUserKey {
        fingerprint: fpr,
        keyid: due.key.keyid,
        cert: outcome.key.armored()?,
        certified_by: Some(key.org.fingerprint()),
        cert_expires: earliest.map(secs),
        expected_version: Some(due.key.version),
        emails: Vec::new(),
        touch: false,
    };
    Ok((
        Outcome::Renewed(save, outcome.certified.len() as u64),
        skipped,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::openpgp::{OrgKeyDraft, OrgKeyKeys};
    use crate::signer::testing::{Hung, SoftP256};

    use std::time::UNIX_EPOCH;

    const T0: u64 = 1_800_000_000;
    const DAY: u64 = 86_400;

    #[tokio::test(flavor = "multi_thread")]
    async fn a_token_that_hangs_fails_the_run_as_unavailable_at_the_deadline() {
        let org = OrgKey::generate(
            &OrgKeyDraft {
                user_id: "Org <org@example.com>".into(),
                created: UNIX_EPOCH + Duration::from_secs(T0),
                validity: Some(Duration::from_secs(10 * DAY)),
            },
            OrgKeyKeys {
                primary: &SoftP256::new(1, false),
                signing: &SoftP256::new(2, false),
                encryption: SoftP256::new(3, false).public_key(),
            },
        )
        .unwrap();
        // Half a day before expiry: the org key's renewal is due.
        let now = UNIX_EPOCH + Duration::from_secs(T0 + 10 * DAY - DAY / 2);
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(now));
        let store = Store::open(&dir.path().join("s.db"), true, clock.clone())
            .await
            .unwrap();
        let (hung_signer, release) = Hung::new(1);
        let key = OrgSigner {
            org,
            certifier: Arc::new(hung_signer),
            cas: crate::ca::CaSet::default(),
        };
        let m = Maintenance {
            store: store.clone(),
            config: MaintenanceConfig::default(),
            certification_validity: Duration::from_secs(14 * DAY),
            concurrency: 2,
            clock,
            x509: crate::config::X509Config::default(),
            domains: vec!["example.com".into()],
            token_deadline: Duration::from_millis(200),
        };
        let started = std::time::Instant::now();
        let run = tokio::time::timeout(Duration::from_secs(5), m.run(&key, "t", &|_, _| {}));
        let e = match run.await.expect("the run ends at the token deadline") {
            Err(e) => e,
            Ok(_) => panic!("a run with a hung token succeeded"),
        };
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(e.token_unavailable(), "{e}");
        assert!(e.to_string().contains("renewing the org key"), "{e}");
        let why = match &e {
            MaintenanceError::OrgKey(PgpError::Signer(s)) => {
                std::error::Error::source(s).map(|w| w.to_string())
            }
            other => panic!("not the org key renewal: {other}"),
        };
        assert!(
            why.as_deref()
                .is_some_and(|w| w.contains("did not answer within 200ms")),
            "{why:?}"
        );
        // The failed run is on record.
        let rows = store.audit_rows(0, 10).await.unwrap();
        assert!(
            rows.iter()
                .any(|r| r.event.operation == "maintenance" && r.event.outcome == "failed"),
            "{rows:?}"
        );
        drop(release);
    }

    /// A leader paused past its lease resumes its run after another node
    /// took over: the org key renewal it made in the token is not stored,
    /// nor is the run's audit row, and the error says the lease was lost.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_run_that_lost_the_leader_lease_writes_nothing() {
        let primary = SoftP256::new(1, false);
        let org = OrgKey::generate(
            &OrgKeyDraft {
                user_id: "Org <org@example.com>".into(),
                created: UNIX_EPOCH + Duration::from_secs(T0),
                validity: Some(Duration::from_secs(10 * DAY)),
            },
            OrgKeyKeys {
                primary: &primary,
                signing: &SoftP256::new(2, false),
                encryption: SoftP256::new(3, false).public_key(),
            },
        )
        .unwrap();
        // Half a day before expiry: the org key's renewal is due.
        let now = UNIX_EPOCH + Duration::from_secs(T0 + 10 * DAY - DAY / 2);
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(now));
        let path = dir.path().join("s.db");
        let store = Store::open(&path, true, clock.clone()).await.unwrap();
        let other = Store::open(&path, false, clock.clone()).await.unwrap();
        let ttl = Duration::from_secs(15);
        let fence = store
            .acquire_lease("node-a", "a", ttl, false)
            .await
            .unwrap()
            .unwrap();
        clock.advance(ttl + Duration::from_secs(1));
        let newer = other
            .acquire_lease("node-b", "b", ttl, false)
            .await
            .unwrap();
        assert!(newer.is_some_and(|f| f.epoch() > fence.epoch()));
        let m = Maintenance {
            store: store.fenced(fence),
            config: MaintenanceConfig::default(),
            certification_validity: Duration::from_secs(14 * DAY),
            concurrency: 2,
            clock,
            x509: crate::config::X509Config::default(),
            domains: vec!["example.com".into()],
            token_deadline: Duration::from_secs(10),
        };
        let key = OrgSigner {
            org,
            certifier: Arc::new(primary),
            cas: crate::ca::CaSet::default(),
        };
        let e = match m.run(&key, "maintenance", &|_, _| {}).await {
            Err(e) => e,
            Ok(_) => panic!("a fenced run succeeded"),
        };
        assert!(e.is_fenced(), "{e}");
        assert!(!e.token_unavailable());
        assert_eq!(store.audit_head().await.unwrap(), 0, "nothing was written");
    }

    #[test]
    fn only_token_trouble_counts_as_unavailable() {
        let down = || SignerError::Unavailable("device error".into());
        assert!(MaintenanceError::Token(PgpError::Signer(down())).token_unavailable());
        assert!(MaintenanceError::OrgKey(PgpError::Signer(down())).token_unavailable());
        assert!(
            !MaintenanceError::Token(PgpError::Signer(SignerError::Sealed)).token_unavailable()
        );
        assert!(
            !MaintenanceError::Token(PgpError::Signer(SignerError::Failed(
                "bad signature".into()
            )))
            .token_unavailable()
        );
        assert!(
            !MaintenanceError::Crl(crate::ca::CaError::Refused("no".into())).token_unavailable()
        );
    }
}
