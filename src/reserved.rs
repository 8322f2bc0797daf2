//! Addresses that belong to the organization itself: every address in the
//! user IDs of every org key (the active one and each one it replaced, which
//! relying parties may still trust) and the emails of the active org cert.
//! No user key is certified for them (`/v1/certify` and maintenance), and
//! the keyserver and the S/MIME bridge serve no user for them, so a relying
//! party that trusts the org key never finds a second key for its address.

use crate::openpgp::{OrgKey, PgpError};
use crate::store::{Store, StoreError};
use crate::x509::{X509Cert, X509Error};
use std::collections::HashMap;

/// Errors reading the reserved addresses. A stored org key or org cert
/// that cannot be read is an error, not an empty set: reservation fails
/// closed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReservedError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored org key certificate does not parse.
    #[error("stored org key {fingerprint} is unreadable: {source}")]
    OrgKey {
        /// Its fingerprint
        fingerprint: String,
        /// Cause
        #[source]
        source: PgpError,
    },
    /// The stored org cert does not parse.
    #[error("stored org cert {fingerprint} is unreadable: {source}")]
    OrgCert {
        /// Its fingerprint
        fingerprint: String,
        /// Cause
        #[source]
        source: X509Error,
    },
}

/// The organization's addresses (lower-case), each with the reason a user
/// cannot have it.
#[derive(Debug, Clone, Default)]
pub struct ReservedEmails {
    reasons: HashMap<String, String>,
}

impl ReservedEmails {
    /// Reads them from the store.
    pub async fn load(store: &Store) -> Result<Self, ReservedError> {
        let mut reasons = HashMap::new();
        for rec in store.org_key_certs().await? {
            let org =
                OrgKey::parse(rec.cert.as_bytes()).map_err(|source| ReservedError::OrgKey {
                    fingerprint: rec.fingerprint.clone(),
                    source,
                })?;
            let whose = if rec.active {
                "the org key"
            } else {
                "a replaced org key"
            };
            for e in org.emails() {
                reasons.entry(e).or_insert_with(|| {
                    format!(
                        "{whose} ({}) uses this address; it cannot be certified on another key",
                        rec.fingerprint
                    )
                });
            }
        }
        if let Some(rec) = store.active_org_cert().await? {
            let cert =
                X509Cert::parse(rec.cert.as_bytes()).map_err(|source| ReservedError::OrgCert {
                    fingerprint: rec.fingerprint.clone(),
                    source,
                })?;
            for e in cert.emails() {
                reasons.entry(e).or_insert_with(|| {
                    "the org cert uses this address; it cannot be a user's".to_string()
                });
            }
        }
        Ok(ReservedEmails { reasons })
    }

    /// Why `email` (normalized) is reserved, if it is.
    pub fn reason(&self, email: &str) -> Option<&str> {
        self.reasons.get(email).map(String::as_str)
    }

    /// Normalized email -> reason, as [`crate::openpgp::CertifyRequest`]
    /// takes it.
    pub fn as_map(&self) -> &HashMap<String, String> {
        &self.reasons
    }
}
