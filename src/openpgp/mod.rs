//! OpenPGP: the only code that uses sequoia-openpgp.
//!
//! It builds the Organization Key certificate from public keys the token
//! reports (every self-signature is made by the token through the
//! [`crate::signer::Signer`] seam), checks that a token still holds the keys a
//! stored certificate names, makes detached data signatures with the org
//! signing subkey, certifies user keys and formats keyserver answers. No
//! sequoia type leaves this module.

mod cert;
mod encrypt;
mod hkp;
mod sign;
mod token_signer;
mod users;

pub use cert::{OrgKey, OrgKeyDraft, OrgKeyKeys, SubkeyInfo};
pub use encrypt::{RecipientCert, decrypt_with_org_key, encrypt_to_org_key};
pub use hkp::hkp_index;
pub use sign::{PendingSignature, SignMode, SignatureOutput};
pub use users::{
    Certification, CertifyOutcome, CertifyRequest, Refusal, UserIdInfo, UserKey, certify,
};

use crate::signer::SignerError;

/// OpenPGP errors.
#[derive(Debug, thiserror::Error)]
pub enum PgpError {
    /// The signer behind the seam failed (token sealed, down, refused).
    #[error(transparent)]
    Signer(#[from] SignerError),
    /// Input that is not what it should be (not a certificate, wrong key...).
    #[error("{0}")]
    Invalid(String),
    /// A well-formed key that orgkey will not certify (revoked, expired,
    /// too weak).
    #[error("{0}")]
    Unacceptable(String),
    /// The org key has expired: nothing can be certified until it is renewed.
    #[error("the org key has expired")]
    OrgKeyExpired,
    /// The token's keys do not match the stored certificate.
    #[error("the token's keys do not match the stored org key certificate: {0}")]
    Mismatch(String),
    /// Any other sequoia failure, with what was being done.
    #[error("{context}: {message}")]
    Sequoia {
        /// What orgkey was doing
        context: &'static str,
        /// sequoia's message chain
        message: String,
    },
}

impl PgpError {
    /// Wraps a sequoia (anyhow) error; a seam error inside it is recovered so
    /// callers can tell "token down" from "bad input".
    fn wrap(context: &'static str, e: anyhow::Error) -> Self {
        match e.downcast::<SignerError>() {
            Ok(s) => PgpError::Signer(s),
            Err(e) => PgpError::Sequoia {
                context,
                message: format!("{e:#}"),
            },
        }
    }
}

/// `.pgp("doing x")?` for sequoia results.
trait PgpResultExt<T> {
    fn pgp(self, context: &'static str) -> Result<T, PgpError>;
}

impl<T> PgpResultExt<T> for sequoia_openpgp::Result<T> {
    fn pgp(self, context: &'static str) -> Result<T, PgpError> {
        self.map_err(|e| PgpError::wrap(context, e))
    }
}
