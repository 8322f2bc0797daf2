//! The org cert records, user certificates in their issuance states,
//! revocations and CRLs.

use super::db::{Exec, Row, Tx, query, scalar};
use super::{AuditEvent, Store, StoreError};
use crate::clock::unix_secs;

/// A stored org cert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgCertRecord {
    /// Hex SHA-256 of the DER certificate.
    pub fingerprint: String,
    /// The org key it belongs to.
    pub org_key: String,
    /// "active" or "retired".
    pub state: String,
    /// "self-signed", "ca-issued" or "imported".
    pub source: String,
    /// CKA_ID (hex) of its key pair.
    pub key_id: String,
    /// PEM certificate.
    pub cert: String,
    /// PEM chain above it.
    pub chain: String,
    /// Subject (RFC 4514).
    pub subject: String,
    /// Unix seconds.
    pub not_after: i64,
    /// Unix seconds.
    pub created_at: i64,
}

/// A pending CSR for an external CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgCertRequestRecord {
    /// CKA_ID (hex) of the key generated for it.
    pub key_id: String,
    /// The org key.
    pub org_key: String,
    /// Requested subject.
    pub subject: String,
    /// PEM CSR.
    pub csr: String,
    /// Unix seconds.
    pub created_at: i64,
}

/// A user certificate row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserCertRecord {
    /// Lower-case hex serial.
    pub serial: String,
    /// Issuing org cert fingerprint.
    pub org_cert: String,
    /// pending, issued, revoked or abandoned.
    pub state: String,
    /// First email.
    pub email: String,
    /// All emails, comma-separated.
    pub emails: String,
    /// Hex SHA-256 of the SPKI.
    pub key_id: String,
    /// Hex DER SPKI.
    pub spki: String,
    /// Requested common name.
    pub common_name: Option<String>,
    /// "csr" or "openpgp".
    pub source: String,
    /// PEM certificate once issued.
    pub cert: Option<String>,
    /// Unix seconds.
    pub not_before: i64,
    /// Unix seconds.
    pub not_after: i64,
    /// Unix seconds.
    pub revoked_at: Option<i64>,
    /// Revocation reason name.
    pub reason: Option<String>,
}

/// A user certificate about to be signed.
#[derive(Debug, Clone)]
pub struct PendingUserCert {
    /// Serial.
    pub serial: String,
    /// Issuing org cert.
    pub org_cert: String,
    /// Emails (first is primary).
    pub emails: Vec<String>,
    /// Key id.
    pub key_id: String,
    /// Hex DER SPKI.
    pub spki: String,
    /// Common name.
    pub common_name: Option<String>,
    /// "csr" or "openpgp".
    pub source: &'static str,
    /// DER TBSCertificate.
    pub tbs: Vec<u8>,
    /// Unix seconds.
    pub not_before: i64,
    /// Unix seconds.
    pub not_after: i64,
}

/// One write of the crash-safe issuance order, for
/// [`Store::apply_issuance_writes`].
#[derive(Debug, Clone)]
pub enum IssuanceWrite {
    /// Record a pending certificate before it is signed.
    Reserve(PendingUserCert),
    /// Mark a pending certificate issued, with its audit row.
    Issued {
        /// Serial.
        serial: String,
        /// PEM certificate.
        pem: String,
        /// The audit row of the issuance.
        audit: AuditEvent,
    },
    /// Mark a pending certificate abandoned (signing failed).
    Abandon(String),
}

/// How a revocation request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevokeOutcome {
    /// Revoked now; the issuing org cert's fingerprint.
    Revoked(String),
    /// It was revoked before.
    AlreadyRevoked(String),
    /// No issued certificate with that serial.
    Unknown,
}

/// A stored CRL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlRecord {
    /// CRL number.
    pub number: i64,
    /// DER.
    pub der: Vec<u8>,
    /// Unix seconds.
    pub this_update: i64,
    /// Unix seconds.
    pub next_update: i64,
}

const ORG_CERT_COLUMNS: &str =
    "fingerprint, org_key, state, source, key_id, cert, chain, subject, not_after, created_at";
const USER_CERT_COLUMNS: &str = "serial, org_cert, state, email, emails, key_id, spki, common_name, source, cert, \
     not_before, not_after, revoked_at, reason";

fn org_cert_from_row(r: &Row) -> OrgCertRecord {
    OrgCertRecord {
        fingerprint: r.get("fingerprint"),
        org_key: r.get("org_key"),
        state: r.get("state"),
        source: r.get("source"),
        key_id: r.get("key_id"),
        cert: r.get("cert"),
        chain: r.get("chain"),
        subject: r.get("subject"),
        not_after: r.get("not_after"),
        created_at: r.get("created_at"),
    }
}

fn user_cert_from_row(r: &Row) -> UserCertRecord {
    UserCertRecord {
        serial: r.get("serial"),
        org_cert: r.get("org_cert"),
        state: r.get("state"),
        email: r.get("email"),
        emails: r.get("emails"),
        key_id: r.get("key_id"),
        spki: r.get("spki"),
        common_name: r.get("common_name"),
        source: r.get("source"),
        cert: r.get("cert"),
        not_before: r.get("not_before"),
        not_after: r.get("not_after"),
        revoked_at: r.get("revoked_at"),
        reason: r.get("reason"),
    }
}

impl Store {
    fn now_secs_i64(&self) -> i64 {
        unix_secs(self.clock.now()) as i64
    }

    /// The active org cert.
    pub async fn active_org_cert(&self) -> Result<Option<OrgCertRecord>, StoreError> {
        let row = query!(
            self.pool.exec(),
            fetch_optional,
            &format!("SELECT {ORG_CERT_COLUMNS} FROM org_certs WHERE state = 'active'")
        )
        .map_err(StoreError::db("reading the org cert"))?;
        Ok(row.as_ref().map(org_cert_from_row))
    }

    /// Org certs that have not expired at `now` (active first): the ones
    /// whose keys must be usable for issuing, revoking and CRLs.
    pub async fn live_org_certs(&self, now: i64) -> Result<Vec<OrgCertRecord>, StoreError> {
        let rows = query!(
            self.pool.exec(),
            fetch_all,
            &format!(
                "SELECT {ORG_CERT_COLUMNS} FROM org_certs WHERE not_after > $1 \
             ORDER BY CASE state WHEN 'active' THEN 0 ELSE 1 END, created_at DESC"
            ),
            now
        )
        .map_err(StoreError::db("reading org certs"))?;
        Ok(rows.iter().map(org_cert_from_row).collect())
    }

    /// CKA_IDs of every org cert key (for `token check`).
    pub async fn org_cert_key_ids(&self) -> Result<Vec<(String, String)>, StoreError> {
        let rows = query!(
            self.pool.exec(),
            fetch_all,
            "SELECT key_id, fingerprint AS owner FROM org_certs \
             UNION ALL SELECT key_id, 'pending request' AS owner FROM org_cert_requests"
        )
        .map_err(StoreError::db("reading org cert key ids"))?;
        Ok(rows
            .iter()
            .map(|r| (r.get("key_id"), r.get("owner")))
            .collect())
    }

    /// Records a new active org cert with its audit row. With `replace` the
    /// active one is retired in the same transaction; otherwise an active one
    /// is a conflict. A pending request for the same key is consumed.
    pub async fn insert_org_cert(
        &self,
        rec: &OrgCertRecord,
        replace: bool,
        audit: &AuditEvent,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        self.insert_org_cert_in(&mut tx, rec, replace).await?;
        self.commit_audited(tx, audit, "committing the org cert")
            .await
    }

    pub(super) async fn insert_org_cert_in(
        &self,
        tx: &mut Tx,
        rec: &OrgCertRecord,
        replace: bool,
    ) -> Result<(), StoreError> {
        let now = self.now_secs_i64();
        let existing: Option<String> = scalar!(
            tx.exec(),
            fetch_optional,
            "SELECT fingerprint FROM org_certs WHERE state = 'active'"
        )
        .map_err(StoreError::db("reading the org cert"))?;
        if let Some(fpr) = existing {
            if !replace {
                return Err(StoreError::Conflict(format!(
                    "an org cert ({fpr}) already exists; use --replace to replace it"
                )));
            }
            query!(
                tx.exec(),
                execute,
                "UPDATE org_certs SET state = 'retired', retired_at = $1 WHERE fingerprint = $2",
                now,
                &fpr
            )
            .map_err(StoreError::db("retiring the old org cert"))?;
        }
        let res = query!(
            tx.exec(),
            execute,
            "INSERT INTO org_certs (fingerprint, org_key, state, source, key_id, cert, chain, subject, not_after, created_at) \
             VALUES ($1, $2, 'active', $3, $4, $5, $6, $7, $8, $9)",
            &rec.fingerprint,
            &rec.org_key,
            &rec.source,
            &rec.key_id,
            &rec.cert,
            &rec.chain,
            &rec.subject,
            rec.not_after,
            now
        );
        match res {
            Ok(_) => {}
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                return Err(StoreError::Conflict(
                    "this certificate is already an org cert".into(),
                ));
            }
            Err(e) => {
                return Err(StoreError::db("recording the org cert")(e));
            }
        }
        query!(
            tx.exec(),
            execute,
            "DELETE FROM org_cert_requests WHERE key_id = $1",
            &rec.key_id
        )
        .map_err(StoreError::db("consuming the org cert request"))?;
        Ok(())
    }

    /// Records a CSR waiting for an external CA.
    pub async fn insert_org_cert_request(
        &self,
        rec: &OrgCertRequestRecord,
        audit: &AuditEvent,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        query!(
            tx.exec(),
            execute,
            "INSERT INTO org_cert_requests (key_id, org_key, subject, csr, created_at) VALUES ($1, $2, $3, $4, $5)",
            &rec.key_id,
            &rec.org_key,
            &rec.subject,
            &rec.csr,
            self.now_secs_i64()
        )
        .map_err(StoreError::db("recording the org cert request"))?;
        self.commit_audited(tx, audit, "committing the org cert request")
            .await
    }

    /// Pending CSRs, newest first.
    pub async fn org_cert_requests(&self) -> Result<Vec<OrgCertRequestRecord>, StoreError> {
        let rows = query!(
            self.pool.exec(),
            fetch_all,
            "SELECT key_id, org_key, subject, csr, created_at FROM org_cert_requests ORDER BY created_at DESC"
        )
        .map_err(StoreError::db("reading org cert requests"))?;
        Ok(rows
            .iter()
            .map(|r| OrgCertRequestRecord {
                key_id: r.get("key_id"),
                org_key: r.get("org_key"),
                subject: r.get("subject"),
                csr: r.get("csr"),
                created_at: r.get("created_at"),
            })
            .collect())
    }

    /// Writes a pending user certificate (its to-be-signed bytes) before it
    /// is signed. A serial already in use is a [`StoreError::Conflict`].
    pub async fn reserve_user_cert(&self, p: &PendingUserCert) -> Result<(), StoreError> {
        let now = self.now_secs_i64();
        let mut tx = self.begin_fenced().await?;
        let exec = match &mut tx {
            Some(tx) => tx.exec(),
            None => self.pool.exec(),
        };
        let inserted = insert_pending(exec, p, now)
            .await
            .map_err(StoreError::db("reserving a serial"))?;
        serial_reserved(inserted, p)?;
        if let Some(tx) = tx {
            tx.commit()
                .await
                .map_err(StoreError::db("committing a reserved serial"))?;
        }
        Ok(())
    }

    /// Marks a pending certificate issued, with its audit row. A failure to
    /// write the row or to commit it is a [`StoreError::Audit`].
    pub async fn mark_user_cert_issued(
        &self,
        serial: &str,
        pem: &str,
        audit: &AuditEvent,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let res = query!(
            tx.exec(),
            execute,
            "UPDATE user_certs SET state = 'issued', cert = $1, issued_at = $2 WHERE serial = $3 AND state = 'pending'",
            pem,
            self.now_secs_i64(),
            serial
        )
        .map_err(StoreError::db("recording an issued certificate"))?;
        if res != 1 {
            return Err(StoreError::Conflict(format!(
                "certificate {serial} is no longer pending"
            )));
        }
        self.append_audit_in(&mut tx, std::slice::from_ref(audit))
            .await
            .map_err(StoreError::audit)?;
        crate::failpoint("issue-before-commit");
        tx.commit()
            .await
            .map_err(|e| StoreError::db("committing an issued certificate")(e).audit())
    }

    /// Applies the issuance writes of several requests in one transaction
    /// (one durable commit for all of them): each write gets its own
    /// outcome, as [`Store::reserve_user_cert`],
    /// [`Store::mark_user_cert_issued`] and [`Store::abandon_user_cert`]
    /// would give it (a taken serial or a certificate no longer pending is
    /// a [`StoreError::Conflict`] for that write alone). The audit rows of
    /// the certificates marked issued are appended in the same transaction.
    /// When the transaction fails, every write fails with its cause (as a
    /// [`StoreError::Audit`] for the issued marks): nothing was recorded.
    pub async fn apply_issuance_writes(
        &self,
        writes: &[IssuanceWrite],
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        let mut tx = self.begin_write().await?;
        let now = self.now_secs_i64();
        let mut outcomes = Vec::with_capacity(writes.len());
        let mut audit = Vec::new();
        for w in writes {
            let outcome = match w {
                IssuanceWrite::Reserve(p) => {
                    let inserted = insert_pending(tx.exec(), p, now)
                        .await
                        .map_err(StoreError::db("reserving a serial"))?;
                    serial_reserved(inserted, p)
                }
                IssuanceWrite::Issued {
                    serial,
                    pem,
                    audit: event,
                } => {
                    let res = query!(
                        tx.exec(),
                        execute,
                        "UPDATE user_certs SET state = 'issued', cert = $1, issued_at = $2 \
                         WHERE serial = $3 AND state = 'pending'",
                        pem,
                        now,
                        serial
                    )
                    .map_err(StoreError::db("recording an issued certificate"))?;
                    if res == 1 {
                        audit.push(event.clone());
                        Ok(())
                    } else {
                        Err(StoreError::Conflict(format!(
                            "certificate {serial} is no longer pending"
                        )))
                    }
                }
                IssuanceWrite::Abandon(serial) => {
                    query!(
                        tx.exec(),
                        execute,
                        "UPDATE user_certs SET state = 'abandoned' WHERE serial = $1 AND state = 'pending'",
                        serial
                    )
                    .map_err(StoreError::db("abandoning a certificate"))?;
                    Ok(())
                }
            };
            outcomes.push(outcome);
        }
        if !audit.is_empty() {
            self.append_audit_in(&mut tx, &audit)
                .await
                .map_err(StoreError::audit)?;
            crate::failpoint("issue-before-commit");
        }
        let committed = tx
            .commit()
            .await
            .map_err(StoreError::db("committing issuance writes"));
        match committed {
            Ok(()) => Ok(outcomes),
            Err(e) if audit.is_empty() => Err(e),
            Err(e) => Err(e.audit()),
        }
    }

    /// Marks a pending certificate abandoned (signing failed; the serial is
    /// burnt, never reused).
    pub async fn abandon_user_cert(&self, serial: &str) -> Result<(), StoreError> {
        let mut tx = self.begin_fenced().await?;
        let exec = match &mut tx {
            Some(tx) => tx.exec(),
            None => self.pool.exec(),
        };
        query!(
            exec,
            execute,
            "UPDATE user_certs SET state = 'abandoned' WHERE serial = $1 AND state = 'pending'",
            serial
        )
        .map_err(StoreError::db("abandoning a certificate"))?;
        if let Some(tx) = tx {
            tx.commit()
                .await
                .map_err(StoreError::db("committing an abandoned certificate"))?;
        }
        Ok(())
    }

    /// Pending rows older than `before` (a crash between reserving and
    /// issuing) become abandoned; returns how many.
    pub async fn abandon_stale_user_certs(&self, before: i64) -> Result<u64, StoreError> {
        let mut tx = self.begin_fenced().await?;
        let exec = match &mut tx {
            Some(tx) => tx.exec(),
            None => self.pool.exec(),
        };
        let res = query!(
            exec,
            execute,
            "UPDATE user_certs SET state = 'abandoned' WHERE state = 'pending' AND created_at < $1",
            before
        )
        .map_err(StoreError::db("abandoning stale certificates"))?;
        if let Some(tx) = tx {
            tx.commit()
                .await
                .map_err(StoreError::db("committing abandoned certificates"))?;
        }
        Ok(res)
    }

    /// A user certificate by serial.
    pub async fn user_cert(&self, serial: &str) -> Result<Option<UserCertRecord>, StoreError> {
        let row = query!(
            self.pool.exec(),
            fetch_optional,
            &format!("SELECT {USER_CERT_COLUMNS} FROM user_certs WHERE serial = $1"),
            serial
        )
        .map_err(StoreError::db("reading a user certificate"))?;
        Ok(row.as_ref().map(user_cert_from_row))
    }

    /// The newest issued, unrevoked certificate for this key and emails that
    /// is valid at `now`.
    pub async fn current_user_cert(
        &self,
        key_id: &str,
        emails: &str,
        now: i64,
    ) -> Result<Option<UserCertRecord>, StoreError> {
        let row = query!(
            self.pool.exec(),
            fetch_optional,
            &format!(
            "SELECT {USER_CERT_COLUMNS} FROM user_certs WHERE key_id = $1 AND emails = $2 \
             AND state = 'issued' AND not_before <= $3 AND not_after > $3 ORDER BY not_after DESC LIMIT 1"
        ),
            key_id,
            emails,
            now
        )
        .map_err(StoreError::db("looking up a current certificate"))?;
        Ok(row.as_ref().map(user_cert_from_row))
    }

    /// Certificates maintenance should renew: the newest issued certificate
    /// per key and emails, expiring by `horizon`, whose first email is an
    /// active user active since `active_since`; after `after` (serial order).
    pub async fn due_user_certs(
        &self,
        after: &str,
        limit: i64,
        horizon: i64,
        active_since: i64,
    ) -> Result<Vec<UserCertRecord>, StoreError> {
        let rows = query!(
            self.pool.exec(),
            fetch_all,
            &format!(
            "SELECT {USER_CERT_COLUMNS} FROM user_certs c WHERE c.serial > $1 AND c.state = 'issued' \
             AND c.not_after <= $2 \
             AND NOT EXISTS (SELECT 1 FROM user_certs n WHERE n.key_id = c.key_id AND n.emails = c.emails \
                             AND n.state IN ('issued', 'pending') AND n.not_after > c.not_after) \
             AND EXISTS (SELECT 1 FROM users u WHERE u.email = c.email AND u.state = 'active' \
                         AND u.last_activity >= $3) \
             ORDER BY c.serial LIMIT $4"
        ),
            after,
            horizon,
            active_since,
            limit
        )
        .map_err(StoreError::db("selecting certificates due for renewal"))?;
        Ok(rows.iter().map(user_cert_from_row).collect())
    }

    /// Revokes an issued certificate, with its audit row.
    pub async fn revoke_user_cert(
        &self,
        serial: &str,
        reason: &str,
        audit: &AuditEvent,
    ) -> Result<RevokeOutcome, StoreError> {
        let mut tx = self.begin_write().await?;
        let row = query!(
            tx.exec(),
            fetch_optional,
            "SELECT state, org_cert FROM user_certs WHERE serial = $1",
            serial
        )
        .map_err(StoreError::db("reading a certificate"))?;
        let Some(row) = row else {
            return Ok(RevokeOutcome::Unknown);
        };
        let state: String = row.get("state");
        let org_cert: String = row.get("org_cert");
        match state.as_str() {
            "revoked" => return Ok(RevokeOutcome::AlreadyRevoked(org_cert)),
            "issued" => {}
            _ => return Ok(RevokeOutcome::Unknown),
        }
        query!(
            tx.exec(),
            execute,
            "UPDATE user_certs SET state = 'revoked', revoked_at = $1, reason = $2 WHERE serial = $3",
            self.now_secs_i64(),
            reason,
            serial
        )
        .map_err(StoreError::db("revoking a certificate"))?;
        self.commit_audited(tx, audit, "committing a revocation")
            .await?;
        Ok(RevokeOutcome::Revoked(org_cert))
    }

    /// Revoked certificates of one org cert: (serial, revoked at, reason).
    pub async fn revoked_user_certs(
        &self,
        org_cert: &str,
    ) -> Result<Vec<(String, i64, String)>, StoreError> {
        let rows = query!(
            self.pool.exec(),
            fetch_all,
            "SELECT serial, revoked_at, reason FROM user_certs WHERE org_cert = $1 AND state = 'revoked' ORDER BY serial",
            org_cert
        )
        .map_err(StoreError::db("reading revocations"))?;
        Ok(rows
            .iter()
            .map(|r| {
                (
                    r.get("serial"),
                    r.get::<Option<i64>>("revoked_at").unwrap_or(0),
                    r.get::<Option<String>>("reason").unwrap_or_default(),
                )
            })
            .collect())
    }

    /// The earliest nextUpdate among the newest CRLs of the org certs that
    /// have not expired at `now` (the ones maintenance keeps fresh): the CRL
    /// that goes stale first. `None` when none of them has a CRL yet.
    pub async fn earliest_crl_next_update(&self, now: i64) -> Result<Option<i64>, StoreError> {
        scalar!(
            self.pool.exec(),
            fetch_one,
            "SELECT MIN((SELECT c.next_update FROM crls c WHERE c.org_cert = o.fingerprint \
                         ORDER BY c.number DESC LIMIT 1)) \
             FROM org_certs o WHERE o.not_after > $1",
            now
        )
        .map_err(StoreError::db("reading the CRLs' next updates"))
    }

    /// The newest CRL of an org cert.
    pub async fn latest_crl(&self, org_cert: &str) -> Result<Option<CrlRecord>, StoreError> {
        let row = query!(
            self.pool.exec(),
            fetch_optional,
            "SELECT number, crl, this_update, next_update FROM crls WHERE org_cert = $1 ORDER BY number DESC LIMIT 1",
            org_cert
        )
        .map_err(StoreError::db("reading the CRL"))?;
        row.map(|r| {
            let hex_der: String = r.get("crl");
            Ok(CrlRecord {
                number: r.get("number"),
                der: hex::decode(&hex_der)
                    .map_err(|_| StoreError::Corrupt("stored CRL is not hex".into()))?,
                this_update: r.get("this_update"),
                next_update: r.get("next_update"),
            })
        })
        .transpose()
    }

    /// Stores a CRL with the audit row of its signature, in one
    /// transaction; its number must be above every stored one (a taken
    /// number is a [`StoreError::Conflict`] and writes nothing).
    pub async fn save_crl(
        &self,
        org_cert: &str,
        crl: &CrlRecord,
        audit: &AuditEvent,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let res = query!(
            tx.exec(),
            execute,
            "INSERT INTO crls (org_cert, number, crl, this_update, next_update) VALUES ($1, $2, $3, $4, $5)",
            org_cert,
            crl.number,
            hex::encode(&crl.der),
            crl.this_update,
            crl.next_update
        );
        match res {
            Ok(_) => {}
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                return Err(StoreError::Conflict(format!(
                    "CRL number {} exists",
                    crl.number
                )));
            }
            Err(e) => {
                return Err(StoreError::db("storing a CRL")(e));
            }
        }
        self.commit_audited(tx, audit, "committing a CRL").await
    }

    /// Whether any user (active or removed) has this email.
    pub async fn email_in_use(&self, email: &str) -> Result<bool, StoreError> {
        let n: i64 = scalar!(
            self.pool.exec(),
            fetch_one,
            "SELECT COUNT(*) FROM users WHERE email = $1",
            email
        )
        .map_err(StoreError::db("checking an email"))?;
        Ok(n > 0)
    }
}

/// Writes a pending user certificate; a serial already in use writes
/// nothing (0 rows), inside a transaction too (no unique-violation error to
/// abort a PostgreSQL transaction).
async fn insert_pending(exec: Exec<'_>, p: &PendingUserCert, now: i64) -> Result<u64, sqlx::Error> {
    query!(
        exec,
        execute,
        "INSERT INTO user_certs (serial, org_cert, state, email, emails, key_id, spki, \
         common_name, source, tbs, not_before, not_after, created_at) \
         VALUES ($1, $2, 'pending', $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
         ON CONFLICT (serial) DO NOTHING",
        &p.serial,
        &p.org_cert,
        &p.emails[0],
        p.emails.join(","),
        &p.key_id,
        &p.spki,
        &p.common_name,
        p.source,
        hex::encode(&p.tbs),
        p.not_before,
        p.not_after,
        now
    )
}

/// A serial already in use is a [`StoreError::Conflict`].
fn serial_reserved(inserted: u64, p: &PendingUserCert) -> Result<(), StoreError> {
    if inserted == 1 {
        Ok(())
    } else {
        Err(StoreError::Conflict(format!(
            "serial {} is taken",
            p.serial
        )))
    }
}
