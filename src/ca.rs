//! The org cert at work as a CA: issuing user certificates in the
//! crash-safe order, revoking, and keeping CRLs fresh. It sits beside
//! `api/` and `maintenance/` (both use it) and uses `x509/` and `store/`;
//! the keys come in as signer-seam objects loaded at ignition.
//!
//! Issuance order: reserve a random serial and record the to-be-signed
//! certificate; sign in the token; verify the signature against the org
//! cert's key; mark it issued with its audit row. A crash before the last
//! step leaves a pending row whose serial is never reused, and no signed
//! certificate that the store does not know.

use crate::clock::unix_secs;
use crate::config::X509Config;
use crate::signer::{Signer, SignerError};
use crate::store::{
    AuditEvent, CrlRecord, OrgCertRecord, PendingUserCert, RevokeOutcome, Store, StoreError,
    UserCertRecord,
};
use crate::x509::{
    IssueParams, RevocationReason, RevokedEntry, UserCertDraft, UserCertRequest, X509Cert,
    X509Error, build_crl, random_serial,
};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// CA errors.
#[derive(Debug, thiserror::Error)]
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
    /// Longest wait for the token's signature.
    pub deadline: Duration,
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
    let emails = req.request.emails.join(",");
    let key_id = req.request.key_id();
    let now = secs(req.now);
    if !req.renew
        && let Some(existing) = store.current_user_cert(&key_id, &emails, now).await?
    {
        return Ok((existing, false));
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
        match store.reserve_user_cert(&pending).await {
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
    let ca2 = Arc::clone(ca);
    // `sign` verifies the token's signature against the key, which
    // ignition checked is the org cert's key.
    let signed = tokio::task::spawn_blocking(move || draft.sign(ca2.signer.as_ref()))
        .await
        .map_err(|e| CaError::Encoding(format!("signing task failed: {e}")))?;
    let cert = match signed {
        Ok(c) => c,
        Err(e) => {
            store.abandon_user_cert(&serial).await?;
            return Err(e.into());
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
    store.mark_user_cert_issued(&serial, &pem, &event).await?;
    let rec = store
        .user_cert(&serial)
        .await?
        .ok_or_else(|| CaError::Encoding("issued certificate vanished".into()))?;
    Ok((rec, true))
}

/// Revokes an issued certificate and makes a fresh CRL for its org cert.
pub async fn revoke(
    store: &Store,
    cas: &CaSet,
    cfg: &X509Config,
    serial: &str,
    reason: RevocationReason,
    actor: &str,
    now: SystemTime,
) -> Result<RevokeOutcome, CaError> {
    let serial = serial.trim().trim_start_matches("0x").to_ascii_lowercase();
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
                refresh_crl(store, ca, cfg, now).await?;
            }
        }
    }
    Ok(outcome)
}

/// Makes and stores a new CRL for `ca`.
pub async fn refresh_crl(
    store: &Store,
    ca: &Arc<LoadedCa>,
    cfg: &X509Config,
    now: SystemTime,
) -> Result<CrlRecord, CaError> {
    let revoked: Vec<RevokedEntry> = store
        .revoked_user_certs(&ca.record.fingerprint)
        .await?
        .into_iter()
        .map(|(serial, at, reason)| RevokedEntry {
            serial,
            at: from_secs(at),
            reason: RevocationReason::parse(&reason).unwrap_or(RevocationReason::Unspecified),
        })
        .collect();
    for _ in 0..3 {
        let number = store
            .latest_crl(&ca.record.fingerprint)
            .await?
            .map_or(1, |c| c.number + 1);
        let this_update = UNIX_EPOCH + Duration::from_secs(unix_secs(now));
        let next_update = this_update + cfg.crl_validity;
        let ca2 = Arc::clone(ca);
        let entries = revoked.clone();
        let der = tokio::task::spawn_blocking(move || {
            build_crl(
                &ca2.cert,
                ca2.signer.as_ref(),
                number as u64,
                this_update,
                next_update,
                &entries,
            )
        })
        .await
        .map_err(|e| CaError::Encoding(format!("CRL task failed: {e}")))??;
        let rec = CrlRecord {
            number,
            der,
            this_update: secs(this_update),
            next_update: secs(next_update),
        };
        match store.save_crl(&ca.record.fingerprint, &rec).await {
            Ok(()) => return Ok(rec),
            // Another writer took the number: make the next one.
            Err(StoreError::Conflict(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(CaError::Encoding(
        "could not store a CRL in three attempts".into(),
    ))
}

/// The current CRL of `ca`, made anew when there is none or its nextUpdate
/// is less than `margin` away.
pub async fn current_crl(
    store: &Store,
    ca: &Arc<LoadedCa>,
    cfg: &X509Config,
    now: SystemTime,
    margin: Duration,
) -> Result<CrlRecord, CaError> {
    if let Some(c) = store.latest_crl(&ca.record.fingerprint).await?
        && from_secs(c.next_update) > now + margin
    {
        return Ok(c);
    }
    refresh_crl(store, ca, cfg, now).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::signer::testing::SoftP256;
    use crate::x509::{self_signed_org_cert, user_request_for_key};

    const T0: u64 = 1_800_000_000;

    async fn setup(corrupt: bool) -> (tempfile::TempDir, Store, Arc<LoadedCa>, X509Config) {
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
            signer: Arc::new(SoftP256::new(1, corrupt)),
        });
        (dir, store, ca, X509Config::default())
    }

    fn request() -> UserCertRequest {
        user_request_for_key(SoftP256::new(9, false).public_key(), "a@example.com", None).unwrap()
    }

    fn issue_req<'a>(req: &'a UserCertRequest, renew: bool) -> Issue<'a> {
        Issue {
            request: req,
            source: Source::Csr,
            actor: "t",
            renew,
            now: from_secs(T0 as i64 + 60),
            deadline: Duration::from_secs(10),
        }
    }

    #[tokio::test]
    async fn a_failed_signature_burns_the_serial_and_issues_nothing() {
        let (_d, store, ca, cfg) = setup(true).await;
        let domains = vec!["example.com".to_string()];
        let req = request();
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
        // Only the org cert's audit row: nothing was issued.
        assert_eq!(store.verify_audit().await.unwrap().rows, 1);
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
            .reserve_user_cert(&PendingUserCert {
                serial: "0101".into(),
                org_cert: ca.record.fingerprint.clone(),
                emails: vec!["a@example.com".into()],
                key_id: req.key_id(),
                spki: hex::encode(&req.spki),
                common_name: None,
                source: "csr",
                tbs: vec![1, 2, 3],
                not_before: T0 as i64,
                not_after: T0 as i64 + 86_400,
            })
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
}
