//! Adapts the signing seam to sequoia's `crypto::Signer`, and token public
//! keys to OpenPGP v4 key packets.

use super::{PgpError, PgpResultExt};
use crate::signer::{DigestAlgorithm, EcCurve, PublicKey, Signer};
use pgp::crypto::mpi;
use pgp::packet::Key;
use pgp::packet::key::{Key4, KeyRole, PublicParts};
use pgp::types::{Curve, HashAlgorithm, PublicKeyAlgorithm, SymmetricAlgorithm};
use sequoia_openpgp as pgp;
use std::time::SystemTime;

/// What an OpenPGP key packet is for; decides ECDSA vs ECDH for NIST curves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PacketUse {
    Signing,
    Encryption,
}

fn curve(c: EcCurve) -> Curve {
    match c {
        EcCurve::P256 => Curve::NistP256,
        EcCurve::P384 => Curve::NistP384,
    }
}

/// The hash a key signs with: matched to the curve size for P-384 (gpg
/// refuses shorter hashes there), SHA-256 otherwise.
pub(crate) fn preferred_hash(pk: &PublicKey) -> HashAlgorithm {
    match pk {
        PublicKey::Ec {
            curve: EcCurve::P384,
            ..
        } => HashAlgorithm::SHA384,
        PublicKey::Ec {
            curve: EcCurve::P256,
            ..
        }
        | PublicKey::Ed25519(_)
        | PublicKey::Rsa { .. } => HashAlgorithm::SHA256,
    }
}

pub(crate) fn digest_algorithm(h: HashAlgorithm) -> Option<DigestAlgorithm> {
    match h {
        HashAlgorithm::SHA256 => Some(DigestAlgorithm::Sha256),
        HashAlgorithm::SHA384 => Some(DigestAlgorithm::Sha384),
        HashAlgorithm::SHA512 => Some(DigestAlgorithm::Sha512),
        _ => None,
    }
}

/// Builds the v4 key packet for a token public key.
pub(crate) fn key_packet<R: KeyRole>(
    pk: &PublicKey,
    usage: PacketUse,
    created: SystemTime,
) -> Result<Key<PublicParts, R>, PgpError> {
    let k: Key4<PublicParts, R> = match (pk, usage) {
        (PublicKey::Ec { curve: c, point }, PacketUse::Signing) => Key4::new(
            created,
            PublicKeyAlgorithm::ECDSA,
            mpi::PublicKey::ECDSA {
                curve: curve(*c),
                q: mpi::MPI::new(point),
            },
        )
        .pgp("building an ECDSA key packet")?,
        (PublicKey::Ec { curve: c, point }, PacketUse::Encryption) => {
            let (hash, sym) = match c {
                EcCurve::P256 => (HashAlgorithm::SHA256, SymmetricAlgorithm::AES128),
                EcCurve::P384 => (HashAlgorithm::SHA384, SymmetricAlgorithm::AES256),
            };
            Key4::new(
                created,
                PublicKeyAlgorithm::ECDH,
                mpi::PublicKey::ECDH {
                    curve: curve(*c),
                    q: mpi::MPI::new(point),
                    hash,
                    sym,
                },
            )
            .pgp("building an ECDH key packet")?
        }
        (PublicKey::Ed25519(a), PacketUse::Signing) => {
            Key4::import_public_ed25519(a, created).pgp("building an EdDSA key packet")?
        }
        (PublicKey::Ed25519(_), PacketUse::Encryption) => {
            return Err(PgpError::Invalid(
                "an Ed25519 key cannot be an encryption key".into(),
            ));
        }
        (PublicKey::Rsa { n, e }, PacketUse::Signing | PacketUse::Encryption) => {
            Key4::import_public_rsa(e, n, created).pgp("building an RSA key packet")?
        }
    };
    Ok(k.into())
}

/// A seam signer dressed as a sequoia signer.
pub(crate) struct SeamSigner<'a> {
    inner: &'a dyn Signer,
    key: Key<PublicParts, pgp::packet::key::UnspecifiedRole>,
    hashes: [HashAlgorithm; 1],
}

impl<'a> SeamSigner<'a> {
    pub(crate) fn new(
        inner: &'a dyn Signer,
        key: Key<PublicParts, pgp::packet::key::UnspecifiedRole>,
    ) -> Self {
        let hashes = [preferred_hash(inner.public_key())];
        Self { inner, key, hashes }
    }

    pub(crate) fn hash(&self) -> HashAlgorithm {
        self.hashes[0]
    }
}

impl pgp::crypto::Signer for SeamSigner<'_> {
    fn public(&self) -> &Key<PublicParts, pgp::packet::key::UnspecifiedRole> {
        &self.key
    }

    fn acceptable_hashes(&self) -> &[HashAlgorithm] {
        &self.hashes
    }

    fn sign(&mut self, hash_algo: HashAlgorithm, digest: &[u8]) -> pgp::Result<mpi::Signature> {
        let alg = digest_algorithm(hash_algo).ok_or_else(|| {
            pgp::Error::InvalidOperation(format!(
                "hash {hash_algo} is not accepted by the token signer"
            ))
        })?;
        let sig = self.inner.sign_digest(alg, digest)?;
        Ok(match self.inner.public_key() {
            PublicKey::Ec { curve, .. } => {
                let n = curve.field_len();
                if sig.len() != 2 * n {
                    return Err(
                        pgp::Error::InvalidOperation("bad ECDSA signature length".into()).into(),
                    );
                }
                mpi::Signature::ECDSA {
                    r: mpi::MPI::new(&sig[..n]),
                    s: mpi::MPI::new(&sig[n..]),
                }
            }
            PublicKey::Ed25519(_) => {
                if sig.len() != 64 {
                    return Err(
                        pgp::Error::InvalidOperation("bad EdDSA signature length".into()).into(),
                    );
                }
                mpi::Signature::EdDSA {
                    r: mpi::MPI::new(&sig[..32]),
                    s: mpi::MPI::new(&sig[32..]),
                }
            }
            PublicKey::Rsa { .. } => mpi::Signature::RSA {
                s: mpi::MPI::new(&sig),
            },
        })
    }
}
