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
pub use encrypt::{
    RecipientCert, SignedPlaintext, decrypt_signed_by_org_key, decrypt_with_org_key,
    encrypt_to_org_key, sign_and_encrypt_to_org_key,
};
pub use hkp::hkp_index;
pub use sign::{PendingSignature, SignMode, SignatureOutput};
pub use users::{
    CanonicalUserId, Certification, CertifyOutcome, CertifyRequest, Refusal, RefusalKind,
    UserIdInfo, UserKey, certify, parse_user_id,
};

use crate::signer::SignerError;

/// OpenPGP errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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

/// Entries in sequoia's process-global signature verification cache.
///
/// sequoia remembers every signature it has verified (about 100 bytes each)
/// and never evicts. orgkey keeps its own new signatures out of it
/// ([`check_token_signature`]), so what remains is the self-signatures of
/// distinct user keys and of the org key: it grows with the set of keys seen,
/// not with requests. `/v1/status` shows it so that can be watched.
pub fn verification_cache_entries() -> usize {
    sequoia_openpgp::packet::signature::cache::SignatureVerificationCache::insertions()
}

/// What a freshly made signature is checked against: the hash context the
/// signed data went into (data signatures), or the user ID it binds to the
/// user's primary key (certifications).
enum Signed<'a> {
    Data(sequoia_openpgp::crypto::hash::Context),
    UserId(
        &'a sequoia_openpgp::packet::Key<
            sequoia_openpgp::packet::key::PublicParts,
            sequoia_openpgp::packet::key::PrimaryRole,
        >,
        &'a sequoia_openpgp::packet::UserID,
    ),
}

/// Checks a signature the token has just made against `key`, so that a faulty
/// token never yields a returned bad signature.
///
/// This recomputes the digest and calls the public-key check directly instead
/// of `Signature::verify_*`: those remember every good signature in sequoia's
/// process-global verification cache, which never evicts. A signature orgkey
/// has just made is never looked up again, so caching it would make memory
/// grow with every request (decision 0013).
fn check_token_signature<P, R>(
    sig: &sequoia_openpgp::packet::Signature,
    key: &sequoia_openpgp::packet::Key<P, R>,
    signed: Signed<'_>,
) -> Result<(), PgpError>
where
    P: sequoia_openpgp::packet::key::KeyParts,
    R: sequoia_openpgp::packet::key::KeyRole,
{
    use sequoia_openpgp::crypto::hash::Hash as _;
    let digest = match signed {
        Signed::Data(mut ctx) => {
            sig.hash(&mut ctx).pgp("hashing the new signature")?;
            ctx.into_digest().pgp("hashing the new signature")?
        }
        Signed::UserId(primary, userid) => {
            let mut ctx = sig
                .hash_algo()
                .context()
                .pgp("hashing the new certification")?
                .for_signature(sig.version());
            sig.hash_userid_binding(&mut ctx, primary, userid)
                .pgp("hashing the new certification")?;
            ctx.into_digest().pgp("hashing the new certification")?
        }
    };
    key.verify(sig.mpis(), sig.hash_algo(), &digest)
        .map_err(|e| {
            PgpError::Signer(SignerError::Failed(
                format!("the token returned a signature that does not verify: {e:#}").into(),
            ))
        })
}
