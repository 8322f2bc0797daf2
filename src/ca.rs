//! The org cert at work as a CA: issuing user certificates in the
//! crash-safe order, revoking, and keeping CRLs fresh. It sits beside
//! `api/` and `maintenance/` (both use it) and uses `x509/` and `store/`;
//! the keys come in as signer-seam objects loaded at ignition.
//!
//! Issuance order: reserve a random serial and record the to-be-signed
//! certificate; sign in the token; verify the signature against the org
//! cert's key; mark it issued with its audit row. A crash before the last
//! step leaves a pending row whose serial is never reused, and no signed
//! certificate that the store does not know. A token that fails or does
//! not answer within the deadline leaves the serial abandoned.
//!
//! Every CRL the org cert key signs is stored together with its audit row
//! (one transaction), or audited as discarded when a concurrent writer took
//! its number, or as failed when the token failed or missed the deadline. CRLs are made by revocation, by the first issuance under an
//! org cert, and by maintenance; fetching a CRL never signs (decision 0017).

use crate::clock::unix_secs;
use crate::config::X509Config;
use crate::signer::{Signer, SignerError};
use crate::store::{
    AuditEvent, CrlRecord, DbError, IssuanceWrite, OrgCertRecord, PendingUserCert, RevokeOutcome,
    Store, StoreError, UserCertRecord,
};
use crate::task::TaskFailed;
use crate::x509::{
    IssueParams, RevocationReason, RevokedEntry, UserCertDraft, UserCertRequest, X509Cert,
    X509Error, build_crl, random_serial,
};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// CA errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// No org cert exists (or none is loaded).
    #[error(
        "no org cert: create one with `orgkey org-cert self-sign`, `csr` + `import`, or `import-ca`"
    )]
    NoOrgCert,
    /// Bad input (not a CSR, bad signature, unknown serial...).
    #[error("{0}")]
    Invalid(String),
    /// Refused by policy (foreign domain, weak key...).
    #[error("{0}")]
    Refused(String),
    /// Nothing with that serial was issued.
    #[error("no issued certificate with serial {0}")]
    UnknownSerial(String),
    /// The token failed.
    #[error(transparent)]
    Signer(SignerError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Encoding trouble.
    #[error("{0}")]
    Encoding(String),
    /// The token work panicked or was cancelled (a bug or a shutdown).
    #[error(transparent)]
    TaskFailed(#[from] TaskFailed),
}

/// The token did not answer within the deadline (the source of a
/// [`SignerError::Unavailable`]: a hung token is a token in trouble).
#[derive(Debug, thiserror::Error)]
#[error("the token did not answer within {deadline:?} ({what})")]
pub struct DeadlinePassed {
    /// What was waited for.
    pub what: &'static str,
    /// The deadline.
    pub deadline: Duration,
}

/// Runs blocking token work and waits for it until `until` at the latest
/// (`None`: as long as it takes). After the deadline the work is left to
/// finish or fail on its own; its result is dropped.
async fn on_token<T, F>(
    what: &'static str,
    until: Option<(Instant, Duration)>,
    work: F,
) -> Result<T, CaError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let task = tokio::task::spawn_blocking(work);
    let joined = match until {
        Some((at, deadline)) => tokio::time::timeout_at(at, task).await.map_err(|_| {
            CaError::Signer(SignerError::Unavailable(Box::new(DeadlinePassed {
                what,
                deadline,
            })))
        })?,
        None => task.await,
    };
    joined.map_err(|e| CaError::TaskFailed(TaskFailed::new(what, e)))
}

/// The deadline of a request that starts now.
fn deadline_from_now(deadline: Option<Duration>) -> Option<(Instant, Duration)> {
    deadline.map(|d| (Instant::now() + d, d))
}

impl From<X509Error> for CaError {
    fn from(e: X509Error) -> Self {
        match e {
            X509Error::Invalid(m) => CaError::Invalid(m),
            X509Error::Refused(m) => CaError::Refused(m),
            X509Error::Signer(s) => CaError::Signer(s),
            X509Error::Encoding(m) => CaError::Encoding(m),
        }
    }
}

/// An org cert with its key in the token.
pub struct LoadedCa {
    /// The stored record.
    pub record: OrgCertRecord,
    /// The certificate.
    pub cert: X509Cert,
    /// Its issuers (for the chain served with user certificates).
    pub chain: Vec<X509Cert>,
    /// The key.
    pub signer: Arc<dyn Signer>,
}

impl std::fmt::Debug for LoadedCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedCa")
            .field("fingerprint", &self.record.fingerprint)
            .finish_non_exhaustive()
    }
}

impl LoadedCa {
    /// Short id used in CRL URLs: the first 16 hex digits of the fingerprint.
    pub fn id(&self) -> &str {
        &self.record.fingerprint[..16.min(self.record.fingerprint.len())]
    }

    /// PEM of the org cert followed by its chain.
    pub fn chain_pem(&self) -> Result<String, CaError> {
        let mut out = self.cert.pem()?;
        for c in &self.chain {
            out.push_str(&c.pem()?);
        }
        Ok(out)
    }
}

/// The org certs whose keys are loaded: the active one first, then retired
/// ones that still have unexpired certificates to revoke.
#[derive(Debug, Clone, Default)]
pub struct CaSet {
    /// Active first.
    pub cas: Vec<Arc<LoadedCa>>,
}

impl CaSet {
    /// The active org cert.
    pub fn active(&self) -> Option<&Arc<LoadedCa>> {
        self.cas.first().filter(|c| c.record.state == "active")
    }

    /// By fingerprint.
    pub fn by_fingerprint(&self, fpr: &str) -> Option<&Arc<LoadedCa>> {
        self.cas.iter().find(|c| c.record.fingerprint == fpr)
    }

    /// By short id or full fingerprint (case-insensitive).
    pub fn by_id(&self, id: &str) -> Option<&Arc<LoadedCa>> {
        let id = id.to_ascii_uppercase();
        self.cas
            .iter()
            .find(|c| c.id() == id || c.record.fingerprint == id)
    }
}

fn secs(t: SystemTime) -> i64 {
    unix_secs(t) as i64
}

fn from_secs(s: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(s.max(0) as u64)
}

/// The CRL distribution point for certificates of `ca`.
pub fn crl_url(cfg: &X509Config, ca: &LoadedCa) -> Option<String> {
    cfg.public_url
        .as_ref()
        .map(|base| format!("{base}/v1/x509/crl/{}", ca.id()))
}

/// Where a certificate request came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A PKCS#10 CSR.
    Csr,
    /// The key of a managed user's OpenPGP certificate.
    OpenPgp,
}

impl Source {
    fn name(self) -> &'static str {
        match self {
            Source::Csr => "csr",
            Source::OpenPgp => "openpgp",
        }
    }
}

type IssuanceReply = oneshot::Sender<Result<(), StoreError>>;

/// Group commit of the issuance order's writes: one task collects the
/// reservations, issued marks and abandonments of concurrent issuances and
/// commits them in one transaction ([`Store::apply_issuance_writes`]), so
/// that each certificate no longer costs two durable commits of its own.
/// Every write is still committed before the step after it starts (the
/// token signs only a reserved serial; the certificate leaves only after
/// its issued mark and audit row are committed), so the crash-safe order is
/// the same; only the commits are shared (decision 0026).
#[derive(Debug, Clone)]
pub struct IssuanceCommits {
    tx: mpsc::Sender<(IssuanceWrite, IssuanceReply)>,
}

/// Most writes committed in one transaction.
const MAX_ISSUANCE_BATCH: usize = 256;

impl IssuanceCommits {
    /// Starts the writer task on the current runtime; it ends when the last
    /// handle is dropped.
    pub fn spawn(store: Store) -> Self {
        let (tx, mut rx) = mpsc::channel::<(IssuanceWrite, IssuanceReply)>(4 * MAX_ISSUANCE_BATCH);
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while batch.len() < MAX_ISSUANCE_BATCH {
                    match rx.try_recv() {
                        Ok(item) => batch.push(item),
                        Err(_) => break,
                    }
                }
                let (writes, replies): (Vec<IssuanceWrite>, Vec<IssuanceReply>) =
                    batch.into_iter().unzip();
                match store.apply_issuance_writes(&writes).await {
                    Ok(outcomes) => {
                        for (reply, outcome) in replies.into_iter().zip(outcomes) {
                            let _ = reply.send(outcome);
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, writes = writes.len(), "issuance commit failed");
                        let unavailable = matches!(e, StoreError::Unavailable { .. });
                        let cause = match e {
                            StoreError::Audit(cause) => cause,
                            other => Arc::new(other),
                        };
                        // Every waiter gets the same cause: an issued mark as
                        // an audit failure, the other writes as the store's.
                        for (w, reply) in writes.iter().zip(replies) {
                            let shared = DbError::new(Arc::clone(&cause));
                            let context = "committing issuance writes";
                            let e = match w {
                                IssuanceWrite::Issued { .. } => {
                                    StoreError::Audit(Arc::clone(&cause))
                                }
                                _ if unavailable => StoreError::Unavailable {
                                    context,
                                    source: shared,
                                },
                                _ => StoreError::Db {
                                    context,
                                    source: shared,
                                },
                            };
                            let _ = reply.send(Err(e));
                        }
                    }
                }
            }
        });
        Self { tx }
    }

    async fn write(&self, w: IssuanceWrite) -> Result<(), StoreError> {
        let (reply, done) = oneshot::channel();
        self.tx
            .send((w, reply))
            .await
            .map_err(|_| StoreError::WriterStopped)?;
        done.await.map_err(|_| StoreError::WriterStopped)?
    }
}

/// Where the issuance order's writes go: through the group commit when
/// there is one (the API), else one transaction each (maintenance, the CLI).
async fn issuance_write(
    store: &Store,
    commits: Option<&IssuanceCommits>,
    w: IssuanceWrite,
) -> Result<(), StoreError> {
    match (commits, w) {
        (Some(c), w) => c.write(w).await,
        (None, IssuanceWrite::Reserve(p)) => store.reserve_user_cert(&p).await,
        (None, IssuanceWrite::Issued { serial, pem, audit }) => {
            store.mark_user_cert_issued(&serial, &pem, &audit).await
        }
        (None, IssuanceWrite::Abandon(serial)) => store.abandon_user_cert(&serial).await,
    }
}

/// What an issuance request asks for.
pub struct Issue<'a> {
    /// The request.
    pub request: &'a UserCertRequest,
    /// Its origin.
    pub source: Source,
    /// Audit actor.
    pub actor: &'a str,
    /// Issue a new certificate even if a valid one exists for the key.
    pub renew: bool,
    /// "now".
    pub now: SystemTime,
    /// Longest wait for the token, all token work of the issuance together.
    pub deadline: Duration,
    /// The group commit to write through (`None`: a transaction per write).
    pub commits: Option<&'a IssuanceCommits>,
}

/// Issues a user certificate under `ca`, or returns the current valid one
/// for the same key and emails (from any org cert) unless `renew`. Returns
/// the record and whether it is new.
pub async fn issue(
    store: &Store,
    ca: &Arc<LoadedCa>,
    cfg: &X509Config,
    domains: &[String],
    req: Issue<'_>,
) -> Result<(UserCertRecord, bool), CaError> {
    let until = deadline_from_now(Some(req.deadline));
    let emails = req.request.emails.join(",");
    let key_id = req.request.key_id();
    let now = secs(req.now);
    if !req.renew
        && let Some(existing) = store.current_user_cert(&key_id, &emails, now).await?
    {
        return Ok((existing, false));
    }
    // The CRL a certificate points at exists before the certificate does.
    if store.latest_crl(&ca.record.fingerprint).await?.is_none() {
        make_crl(store, ca, cfg, req.now, req.actor, until).await?;
    }
    let url = crl_url(cfg, ca);
    let mut reserved = None;
    for _ in 0..3 {
        let params = IssueParams {
            serial: random_serial(),
            not_before: req.now,
            not_after: req.now + cfg.user_cert_validity,
            crl_url: url.as_deref(),
            domains,
        };
        let draft = UserCertDraft::new(&ca.cert, ca.signer.as_ref(), req.request, &params)?;
        let (nb, na) = draft.validity();
        let pending = PendingUserCert {
            serial: draft.serial().to_string(),
            org_cert: ca.record.fingerprint.clone(),
            emails: req.request.emails.clone(),
            key_id: key_id.clone(),
            spki: hex::encode(&req.request.spki),
            common_name: req.request.common_name.clone(),
            source: req.source.name(),
            tbs: draft.tbs().to_vec(),
            not_before: secs(nb),
            not_after: secs(na),
        };
        match issuance_write(store, req.commits, IssuanceWrite::Reserve(pending)).await {
            Ok(()) => {
                reserved = Some(draft);
                break;
            }
            Err(StoreError::Conflict(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    let draft = reserved.ok_or_else(|| {
        CaError::Encoding("could not find a free serial number in three attempts".into())
    })?;
    let serial = draft.serial().to_string();
    crate::failpoint("issue-after-reserve");
    let issuer = Arc::clone(ca);
    // `sign` verifies the token's signature against the key, which
    // ignition checked is the org cert's key.
    let signed = on_token("signing a user certificate", until, move || {
        draft.sign(issuer.signer.as_ref())
    })
    .await;
    // A failed, broken or late signature burns the serial: the row is
    // abandoned (never issued, never reused), and a signature that arrives
    // after the deadline is dropped with the task.
    let cert = match signed {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            issuance_write(store, req.commits, IssuanceWrite::Abandon(serial)).await?;
            return Err(e.into());
        }
        Err(e) => {
            issuance_write(store, req.commits, IssuanceWrite::Abandon(serial)).await?;
            return Err(e);
        }
    };
    crate::failpoint("issue-after-sign");
    let pem = cert.pem()?;
    let event = AuditEvent::new(req.actor, "x509-issue", "ok")
        .key(ca.record.fingerprint.clone())
        .digest(cert.fingerprint())
        .detail(format!(
            "serial {serial} for {emails} ({}, from {}), until {}",
            req.request.key,
            req.source.name(),
            humantime::format_rfc3339_seconds(cert.not_after())
        ));
    issuance_write(
        store,
        req.commits,
        IssuanceWrite::Issued {
            serial: serial.clone(),
            pem,
            audit: event,
        },
    )
    .await?;
    let rec = store
        .user_cert(&serial)
        .await?
        .ok_or_else(|| CaError::Encoding("issued certificate vanished".into()))?;
    Ok((rec, true))
}

/// Revokes an issued certificate and makes a fresh CRL for its org cert,
/// waiting for the token as long as it takes (the CLI).
pub async fn revoke(
    store: &Store,
    cas: &CaSet,
    cfg: &X509Config,
    serial: &str,
    reason: RevocationReason,
    actor: &str,
    now: SystemTime,
) -> Result<RevokeOutcome, CaError> {
    let r = Revocation {
        serial,
        reason,
        actor,
        now,
        deadline: None,
    };
    revoke_within(store, cas, cfg, &r).await
}

/// A revocation request.
#[derive(Debug, Clone)]
pub struct Revocation<'a> {
    /// Hex serial (a `0x` prefix and surrounding space are ignored).
    pub serial: &'a str,
    /// Why.
    pub reason: RevocationReason,
    /// Audit actor.
    pub actor: &'a str,
    /// "now".
    pub now: SystemTime,
    /// Longest wait for the token's CRL signature (`None`: no limit). The
    /// revocation itself is committed before the token is asked: after a
    /// timeout, a retry answers "already revoked" and makes the CRL.
    pub deadline: Option<Duration>,
}

/// Revokes an issued certificate and makes a fresh CRL for its org cert.
pub async fn revoke_within(
    store: &Store,
    cas: &CaSet,
    cfg: &X509Config,
    r: &Revocation<'_>,
) -> Result<RevokeOutcome, CaError> {
    let until = deadline_from_now(r.deadline);
    let (reason, actor, now) = (r.reason, r.actor, r.now);
    let serial = r
        .serial
        .trim()
        .trim_start_matches("0x")
        .to_ascii_lowercase();
    if serial.is_empty() || serial.len() > 40 || !serial.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(CaError::Invalid(format!(
            "serial {serial:?} is not a hex serial number"
        )));
    }
    let event = AuditEvent::new(actor, "x509-revoke", "ok")
        .detail(format!("serial {serial}, reason {}", reason.name()));
    let outcome = store
        .revoke_user_cert(&serial, reason.name(), &event)
        .await?;
    match &outcome {
        RevokeOutcome::Unknown => return Err(CaError::UnknownSerial(serial)),
        RevokeOutcome::Revoked(org_cert) | RevokeOutcome::AlreadyRevoked(org_cert) => {
            if let Some(ca) = cas.by_fingerprint(org_cert) {
                make_crl(store, ca, cfg, now, actor, until).await?;
            }
        }
    }
    Ok(outcome)
}

/// Makes a new CRL for `ca` in the token and stores it with its audit row
/// (as `actor`), waiting for the token `deadline` at most (`None`: as long
/// as it takes).
pub async fn refresh_crl(
    store: &Store,
    ca: &Arc<LoadedCa>,
    cfg: &X509Config,
    now: SystemTime,
    actor: &str,
    deadline: Option<Duration>,
) -> Result<CrlRecord, CaError> {
    make_crl(store, ca, cfg, now, actor, deadline_from_now(deadline)).await
}

async fn make_crl(
    store: &Store,
    ca: &Arc<LoadedCa>,
    cfg: &X509Config,
    now: SystemTime,
    actor: &str,
    until: Option<(Instant, Duration)>,
) -> Result<CrlRecord, CaError> {
    let fpr = &ca.record.fingerprint;
    let revoked: Vec<RevokedEntry> = store
        .revoked_user_certs(fpr)
        .await?
        .into_iter()
        .map(|(serial, at, reason)| RevokedEntry {
            serial,
            at: from_secs(at),
            reason: RevocationReason::parse(&reason).unwrap_or(RevocationReason::Unspecified),
        })
        .collect();
    for _ in 0..3 {
        let number = store.latest_crl(fpr).await?.map_or(1, |c| c.number + 1);
        let this_update = UNIX_EPOCH + Duration::from_secs(unix_secs(now));
        let next_update = this_update + cfg.crl_validity;
        let issuer = Arc::clone(ca);
        let entries = revoked.clone();
        let signed = on_token("signing a CRL", until, move || {
            build_crl(
                &issuer.cert,
                issuer.signer.as_ref(),
                number as u64,
                this_update,
                next_update,
                &entries,
            )
        })
        .await
        .and_then(|r| r.map_err(CaError::from));
        let der = match signed {
            Ok(der) => der,
            Err(e) => {
                // The token may have signed (late or wrongly) without the CRL
                // being kept: the attempt is on record too.
                let failed = AuditEvent::new(actor, "x509-crl", "failed")
                    .key(fpr.clone())
                    .detail(format!("CRL {number}: {}", crate::text::error_chain(&e)));
                if let Err(audit) = store.append_audit(&[failed]).await {
                    tracing::error!(error = %audit, "recording a failed CRL signature failed");
                }
                return Err(e);
            }
        };
        let rec = CrlRecord {
            number,
            der,
            this_update: secs(this_update),
            next_update: secs(next_update),
        };
        let event = |outcome: &str| {
            AuditEvent::new(actor, "x509-crl", outcome)
                .key(fpr.clone())
                .digest(hex::encode(Sha256::digest(&rec.der)))
                .detail(format!(
                    "CRL {number}: {} revoked, next update {}",
                    revoked.len(),
                    humantime::format_rfc3339_seconds(next_update)
                ))
        };
        match store.save_crl(fpr, &rec, &event("ok")).await {
            Ok(()) => return Ok(rec),
            // Another writer took the number: this signature is recorded as
            // discarded (it never leaves the process), and the next number
            // is made with the revocations as they are now.
            Err(StoreError::Conflict(_)) => {
                store.append_audit(&[event("discarded")]).await?;
                continue;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(CaError::Encoding(
        "could not store a CRL in three attempts".into(),
    ))
}

/// The current CRL of `ca`, made anew (as `actor`, see [`refresh_crl`])
/// when there is none or its nextUpdate is less than `margin` away.
pub async fn current_crl(
    store: &Store,
    ca: &Arc<LoadedCa>,
    cfg: &X509Config,
    now: SystemTime,
    margin: Duration,
    actor: &str,
    deadline: Option<Duration>,
) -> Result<CrlRecord, CaError> {
    if let Some(c) = store.latest_crl(&ca.record.fingerprint).await?
        && from_secs(c.next_update) > now + margin
    {
        return Ok(c);
    }
    refresh_crl(store, ca, cfg, now, actor, deadline).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::signer::testing::SoftP256;
    use crate::x509::{self_signed_org_cert, user_request_for_key};

    const T0: u64 = 1_800_000_000;

    async fn setup(corrupt: bool) -> (tempfile::TempDir, Store, Arc<LoadedCa>, X509Config) {
        setup_with(Arc::new(SoftP256::new(1, corrupt))).await
    }

    /// The org cert of key 1 with `signer` as its key in the "token".
    async fn setup_with(
        signer: Arc<dyn Signer>,
    ) -> (tempfile::TempDir, Store, Arc<LoadedCa>, X509Config) {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(UNIX_EPOCH + Duration::from_secs(T0)));
        let store = Store::open(&dir.path().join("s.db"), true, clock)
            .await
            .unwrap();
        let good = SoftP256::new(1, false);
        let cert = self_signed_org_cert(
            &good,
            "CN=Test CA",
            from_secs(T0 as i64),
            from_secs((T0 + 365 * 86_400) as i64),
        )
        .unwrap();
        let record = OrgCertRecord {
            fingerprint: cert.fingerprint(),
            org_key: "ORGKEY".into(),
            state: "active".into(),
            source: "self-signed".into(),
            key_id: "01".into(),
            cert: cert.pem().unwrap(),
            chain: String::new(),
            subject: cert.subject(),
            not_after: secs(cert.not_after()),
            created_at: T0 as i64,
        };
        store
            .insert_org_cert(&record, false, &AuditEvent::new("t", "org-cert", "ok"))
            .await
            .unwrap();
        let ca = Arc::new(LoadedCa {
            record,
            cert,
            chain: Vec::new(),
            signer,
        });
        (dir, store, ca, X509Config::default())
    }

    /// The same org cert with a working key.
    fn working(ca: &LoadedCa) -> Arc<LoadedCa> {
        Arc::new(LoadedCa {
            record: ca.record.clone(),
            cert: ca.cert.clone(),
            chain: Vec::new(),
            signer: Arc::new(SoftP256::new(1, false)),
        })
    }

    /// A token key that runs `hook` before each signature (to hang, or to
    /// let a concurrent writer in).
    struct Hooked {
        inner: SoftP256,
        hook: Box<dyn Fn() + Send + Sync>,
    }

    impl Signer for Hooked {
        fn public_key(&self) -> &crate::signer::PublicKey {
            self.inner.public_key()
        }

        fn sign_digest(
            &self,
            alg: crate::signer::DigestAlgorithm,
            digest: &[u8],
        ) -> Result<Vec<u8>, SignerError> {
            (self.hook)();
            self.inner.sign_digest(alg, digest)
        }
    }

    async fn count(store: &Store, sql: &str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(store.pool())
            .await
            .unwrap()
    }

    fn request() -> UserCertRequest {
        user_request_for_key(SoftP256::new(9, false).public_key(), "a@example.com", None).unwrap()
    }

    /// A pending row for `req` under serial `serial`, as a crash
    /// mid-issuance leaves one.
    fn pending_row(ca: &LoadedCa, req: &UserCertRequest, serial: &str) -> PendingUserCert {
        PendingUserCert {
            serial: serial.into(),
            org_cert: ca.record.fingerprint.clone(),
            emails: vec!["a@example.com".into()],
            key_id: req.key_id(),
            spki: hex::encode(&req.spki),
            common_name: None,
            source: "csr",
            tbs: vec![1, 2, 3],
            not_before: T0 as i64,
            not_after: T0 as i64 + 86_400,
        }
    }

    fn issue_req<'a>(req: &'a UserCertRequest, renew: bool) -> Issue<'a> {
        Issue {
            request: req,
            source: Source::Csr,
            actor: "t",
            renew,
            now: from_secs(T0 as i64 + 60),
            deadline: Duration::from_secs(10),
            commits: None,
        }
    }

    #[tokio::test]
    async fn concurrent_issuances_through_the_group_commit_are_each_issued_and_audited_once() {
        let (_d, store, ca, cfg) = setup(false).await;
        refresh_crl(&store, &ca, &cfg, from_secs(T0 as i64), "t", None)
            .await
            .unwrap();
        let commits = IssuanceCommits::spawn(store.clone());
        let tasks: Vec<_> = (0..24)
            .map(|_| {
                let (store, ca, cfg, commits) =
                    (store.clone(), Arc::clone(&ca), cfg.clone(), commits.clone());
                tokio::spawn(async move {
                    let domains = vec!["example.com".to_string()];
                    let req = request();
                    let mut r = issue_req(&req, true);
                    r.commits = Some(&commits);
                    issue(&store, &ca, &cfg, &domains, r).await.unwrap()
                })
            })
            .collect();
        let mut serials = std::collections::HashSet::new();
        for t in tasks {
            let (rec, fresh) = t.await.unwrap();
            assert!(fresh);
            assert_eq!(rec.state, "issued");
            let cert = X509Cert::parse(rec.cert.unwrap().as_bytes()).unwrap();
            cert.verify_signed_by(&ca.cert).unwrap();
            assert!(serials.insert(rec.serial));
        }
        assert_eq!(
            count(
                &store,
                "SELECT COUNT(*) FROM user_certs WHERE state = 'issued'"
            )
            .await,
            24
        );
        assert_eq!(
            count(
                &store,
                "SELECT COUNT(*) FROM audit_log WHERE operation = 'x509-issue' AND outcome = 'ok'"
            )
            .await,
            24
        );
        let report = store.verify_audit().await.unwrap();
        assert!(report.first_broken.is_none(), "{report:?}");
    }

    #[tokio::test]
    async fn a_group_commit_gives_each_write_its_own_outcome() {
        let (_d, store, ca, _cfg) = setup(false).await;
        let req = request();
        let pending = |serial: &str| pending_row(&ca, &req, serial);
        let issued = |serial: &str| IssuanceWrite::Issued {
            serial: serial.into(),
            pem: "PEM".into(),
            audit: AuditEvent::new("t", "x509-issue", "ok").detail(serial.to_string()),
        };
        let audit_before = store.verify_audit().await.unwrap().rows;
        let outcomes = store
            .apply_issuance_writes(&[
                IssuanceWrite::Reserve(pending("0a")),
                IssuanceWrite::Reserve(pending("0a")),
                IssuanceWrite::Reserve(pending("0b")),
                issued("0c"),
            ])
            .await
            .unwrap();
        assert!(outcomes[0].is_ok());
        assert!(
            matches!(outcomes[1], Err(StoreError::Conflict(_))),
            "taken serial"
        );
        assert!(outcomes[2].is_ok());
        assert!(
            matches!(outcomes[3], Err(StoreError::Conflict(_))),
            "never reserved"
        );
        // Nothing was issued: no audit row.
        assert_eq!(store.verify_audit().await.unwrap().rows, audit_before);
        let outcomes = store
            .apply_issuance_writes(&[
                issued("0a"),
                IssuanceWrite::Abandon("0b".into()),
                issued("0b"),
            ])
            .await
            .unwrap();
        assert!(outcomes[0].is_ok());
        assert!(outcomes[1].is_ok());
        assert!(
            matches!(outcomes[2], Err(StoreError::Conflict(_))),
            "abandoned"
        );
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT serial, state FROM user_certs ORDER BY serial")
                .fetch_all(store.pool())
                .await
                .unwrap();
        assert_eq!(
            rows,
            vec![
                ("0a".to_string(), "issued".to_string()),
                ("0b".to_string(), "abandoned".to_string())
            ]
        );
        // One audit row, for the one certificate issued.
        assert_eq!(store.verify_audit().await.unwrap().rows, audit_before + 1);
    }

    #[tokio::test]
    async fn a_failed_signature_burns_the_serial_and_issues_nothing() {
        let (_d, store, ca, cfg) = setup(true).await;
        let domains = vec!["example.com".to_string()];
        let req = request();
        // No CRL: the broken key fails on the first CRL, before any serial
        // (and the failed CRL signature is on record).
        let e = issue(&store, &ca, &cfg, &domains, issue_req(&req, false))
            .await
            .unwrap_err();
        assert!(matches!(e, CaError::Signer(_)), "{e}");
        assert_eq!(count(&store, "SELECT COUNT(*) FROM user_certs").await, 0);
        assert_eq!(count(&store, "SELECT COUNT(*) FROM crls").await, 0);
        assert_eq!(
            count(
                &store,
                "SELECT COUNT(*) FROM audit_log WHERE operation = 'x509-crl' AND outcome = 'failed'"
            )
            .await,
            1
        );
        refresh_crl(&store, &working(&ca), &cfg, from_secs(T0 as i64), "t", None)
            .await
            .unwrap();
        let e = issue(&store, &ca, &cfg, &domains, issue_req(&req, false))
            .await
            .unwrap_err();
        assert!(matches!(e, CaError::Signer(_)), "{e}");
        let rows: Vec<(String, Option<String>)> =
            sqlx::query_as("SELECT state, cert FROM user_certs")
                .fetch_all(store.pool())
                .await
                .unwrap();
        assert_eq!(rows, vec![("abandoned".to_string(), None)]);
        // The org cert's and the two CRL rows: nothing was issued.
        assert_eq!(store.verify_audit().await.unwrap().rows, 3);
    }

    #[tokio::test]
    async fn a_valid_certificate_for_the_same_key_is_reused_unless_renewed() {
        let (_d, store, ca, cfg) = setup(false).await;
        let domains = vec!["example.com".to_string()];
        let req = request();
        let (first, fresh) = issue(&store, &ca, &cfg, &domains, issue_req(&req, false))
            .await
            .unwrap();
        assert!(fresh);
        assert_eq!(first.state, "issued");
        let (again, fresh) = issue(&store, &ca, &cfg, &domains, issue_req(&req, false))
            .await
            .unwrap();
        assert!(!fresh);
        assert_eq!(again.serial, first.serial);
        let (renewed, fresh) = issue(&store, &ca, &cfg, &domains, issue_req(&req, true))
            .await
            .unwrap();
        assert!(fresh);
        assert_ne!(renewed.serial, first.serial);
        // A stale pending row (a crash mid-issuance) is abandoned, never issued.
        store
            .reserve_user_cert(&pending_row(&ca, &req, "0101"))
            .await
            .unwrap();
        assert_eq!(
            store.abandon_stale_user_certs(T0 as i64 + 1).await.unwrap(),
            1
        );
        assert_eq!(
            store.user_cert("0101").await.unwrap().unwrap().state,
            "abandoned"
        );
        assert!(matches!(
            store
                .mark_user_cert_issued("0101", "pem", &AuditEvent::new("t", "x", "ok"))
                .await,
            Err(StoreError::Conflict(_))
        ));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_token_that_misses_the_deadline_burns_the_serial_and_counts_as_unavailable() {
        // The "token" answers only when the test ends.
        let (release, hang) = std::sync::mpsc::channel::<()>();
        let hang = std::sync::Mutex::new(hang);
        let hung: Arc<dyn Signer> = Arc::new(Hooked {
            inner: SoftP256::new(1, false),
            hook: Box::new(move || {
                let _ = hang.lock().unwrap_or_else(|p| p.into_inner()).recv();
            }),
        });
        let (_d, store, ca, cfg) = setup_with(hung).await;
        refresh_crl(&store, &working(&ca), &cfg, from_secs(T0 as i64), "t", None)
            .await
            .unwrap();
        let domains = vec!["example.com".to_string()];
        let req = request();
        let mut late = issue_req(&req, false);
        late.deadline = Duration::from_millis(200);
        let started = std::time::Instant::now();
        let e = issue(&store, &ca, &cfg, &domains, late).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        match &e {
            CaError::Signer(SignerError::Unavailable(why)) => {
                assert!(why.to_string().contains("did not answer"), "{why}")
            }
            other => panic!("expected the token to count as unavailable: {other:?}"),
        }
        let rows: Vec<(String, Option<String>)> =
            sqlx::query_as("SELECT state, cert FROM user_certs")
                .fetch_all(store.pool())
                .await
                .unwrap();
        assert_eq!(rows, vec![("abandoned".to_string(), None)]);
        // The CRL signature of a revocation waits no longer either.
        let e = refresh_crl(
            &store,
            &ca,
            &cfg,
            from_secs(T0 as i64 + 60),
            "t",
            Some(Duration::from_millis(200)),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(e, CaError::Signer(SignerError::Unavailable(_))),
            "{e}"
        );
        // The attempt is on record: the token may still sign it late.
        let failed: Vec<String> = sqlx::query_scalar(
            "SELECT detail FROM audit_log WHERE operation = 'x509-crl' AND outcome = 'failed'",
        )
        .fetch_all(store.pool())
        .await
        .unwrap();
        assert_eq!(failed.len(), 1);
        assert!(
            failed[0].contains("did not answer within 200ms"),
            "{failed:?}"
        );
        assert_eq!(count(&store, "SELECT COUNT(*) FROM crls").await, 1);
        drop(release);
        // A late signature changes nothing: the serial stays burnt.
        let serial: String = sqlx::query_scalar("SELECT serial FROM user_certs")
            .fetch_one(store.pool())
            .await
            .unwrap();
        assert!(matches!(
            store
                .mark_user_cert_issued(&serial, "pem", &AuditEvent::new("t", "x", "ok"))
                .await,
            Err(StoreError::Conflict(_))
        ));
    }

    /// The org cert of `ca` with a key that runs `hook` before it signs.
    fn hooked(ca: &LoadedCa, hook: impl Fn() + Send + Sync + 'static) -> Arc<LoadedCa> {
        Arc::new(LoadedCa {
            record: ca.record.clone(),
            cert: ca.cert.clone(),
            chain: Vec::new(),
            signer: Arc::new(Hooked {
                inner: SoftP256::new(1, false),
                hook: Box::new(hook),
            }),
        })
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_issuance_whose_audit_row_cannot_be_written_is_an_audit_failure() {
        let (_d, store, ca, cfg) = setup(false).await;
        refresh_crl(&store, &working(&ca), &cfg, from_secs(T0 as i64), "t", None)
            .await
            .unwrap();
        // While the token signs, the audit chain's head becomes unreadable.
        let rt = tokio::runtime::Handle::current();
        let breaker = store.clone();
        let ca = hooked(&ca, move || {
            rt.block_on(
                sqlx::query("UPDATE audit_log SET hash = 'not hex'").execute(breaker.pool()),
            )
            .unwrap();
        });
        let domains = vec!["example.com".to_string()];
        let req = request();
        let e = issue(&store, &ca, &cfg, &domains, issue_req(&req, false))
            .await
            .unwrap_err();
        assert!(matches!(e, CaError::Store(StoreError::Audit(_))), "{e:?}");
        assert_eq!(
            count(
                &store,
                "SELECT COUNT(*) FROM user_certs WHERE state = 'issued'"
            )
            .await,
            0
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_issuance_that_finds_the_store_busy_is_not_an_audit_failure() {
        let (dir, store, ca, cfg) = setup(false).await;
        refresh_crl(&store, &working(&ca), &cfg, from_secs(T0 as i64), "t", None)
            .await
            .unwrap();
        // This handle's writes give up after 100 ms.
        let impatient = Store::open_with(
            &dir.path().join("s.db"),
            false,
            Arc::clone(store.clock()),
            Duration::from_millis(100),
        )
        .await
        .unwrap();
        // While the token signs, another writer takes the write lock.
        let rt = tokio::runtime::Handle::current();
        let holder = store.clone();
        let lock = Arc::new(std::sync::Mutex::new(None));
        let held = Arc::clone(&lock);
        let ca = hooked(&ca, move || {
            let tx = rt.block_on(holder.begin_write()).unwrap();
            *held.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        });
        let domains = vec!["example.com".to_string()];
        let req = request();
        let e = issue(&impatient, &ca, &cfg, &domains, issue_req(&req, false))
            .await
            .unwrap_err();
        assert!(
            matches!(e, CaError::Store(StoreError::Unavailable { .. })),
            "{e:?}"
        );
        drop(lock.lock().unwrap_or_else(|p| p.into_inner()).take());
        assert_eq!(
            count(
                &store,
                "SELECT COUNT(*) FROM user_certs WHERE state = 'issued'"
            )
            .await,
            0
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn every_crl_signature_has_exactly_one_audit_row() {
        // While the token signs CRL 2, a concurrent writer stores its own
        // CRL 2: ours is discarded (and audited so), then CRL 3 is made.
        let (_d, store, ca, cfg) = setup(false).await;
        let other = working(&ca);
        refresh_crl(&store, &other, &cfg, from_secs(T0 as i64), "t", None)
            .await
            .unwrap();
        let rt = tokio::runtime::Handle::current();
        let (racing_store, racing_ca) = (store.clone(), Arc::clone(&other));
        let racing_cfg = cfg.clone();
        let raced = std::sync::atomic::AtomicBool::new(false);
        let racing: Arc<dyn Signer> = Arc::new(Hooked {
            inner: SoftP256::new(1, false),
            hook: Box::new(move || {
                if !raced.swap(true, std::sync::atomic::Ordering::SeqCst) {
                    rt.block_on(refresh_crl(
                        &racing_store,
                        &racing_ca,
                        &racing_cfg,
                        from_secs(T0 as i64),
                        "concurrent",
                        None,
                    ))
                    .unwrap();
                }
            }),
        });
        let racer = Arc::new(LoadedCa {
            record: ca.record.clone(),
            cert: ca.cert.clone(),
            chain: Vec::new(),
            signer: racing,
        });
        let crl = refresh_crl(&store, &racer, &cfg, from_secs(T0 as i64 + 60), "t", None)
            .await
            .unwrap();
        assert_eq!(crl.number, 3);
        // Four signatures (CRL 1, the concurrent 2, our discarded 2, our 3):
        // three stored with an "ok" row each, one audited as discarded.
        assert_eq!(count(&store, "SELECT COUNT(*) FROM crls").await, 3);
        let rows: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT actor, outcome, data_digest FROM audit_log WHERE operation = 'x509-crl' ORDER BY seq",
        )
        .fetch_all(store.pool())
        .await
        .unwrap();
        let outcomes: Vec<(&str, &str)> = rows
            .iter()
            .map(|(a, o, _)| (a.as_str(), o.as_str()))
            .collect();
        assert_eq!(
            outcomes,
            [
                ("t", "ok"),
                ("concurrent", "ok"),
                ("t", "discarded"),
                ("t", "ok")
            ]
        );
        // Each stored CRL is named by the digest of exactly one "ok" row.
        let stored: Vec<String> = sqlx::query_scalar("SELECT crl FROM crls ORDER BY number")
            .fetch_all(store.pool())
            .await
            .unwrap();
        for hex_der in stored {
            let digest = hex::encode(Sha256::digest(hex::decode(hex_der).unwrap()));
            let n = rows
                .iter()
                .filter(|(_, o, d)| o == "ok" && *d == digest)
                .count();
            assert_eq!(n, 1);
        }
        assert!(store.verify_audit().await.unwrap().first_broken.is_none());
    }
}
