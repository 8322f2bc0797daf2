//! Streaming encryption to the org key (state backups) and decryption with
//! the org encryption subkey in the token. Memory stays bounded: data moves
//! through in buffer-sized pieces whatever its size.

use super::cert::OrgKey;
use super::{PgpError, PgpResultExt};
use crate::signer::{Decrypter, PublicKey};
use pgp::cert::prelude::*;
use pgp::crypto::{SessionKey, mpi};
use pgp::packet::key::{PublicParts, UnspecifiedRole};
use pgp::packet::{Key, PKESK, SKESK};
use pgp::parse::Parse;
use pgp::parse::stream::{
    DecryptionHelper, DecryptorBuilder, MessageStructure, VerificationHelper,
};
use pgp::policy::StandardPolicy;
use pgp::serialize::stream::{Encryptor, LiteralWriter, Message, Recipient};
use pgp::types::{Features, SymmetricAlgorithm};
use pgp::{Fingerprint, KeyHandle};
use sequoia_openpgp as pgp;
use std::io::{Read, Write};

/// An additional recipient of state backups (e.g. an offline recovery key).
#[derive(Clone)]
pub struct RecipientCert {
    cert: Cert,
}

impl std::fmt::Debug for RecipientCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RecipientCert({})", self.cert.fingerprint())
    }
}

impl RecipientCert {
    /// Parses an armored or binary public certificate that can encrypt.
    pub fn parse(bytes: &[u8]) -> Result<RecipientCert, PgpError> {
        let cert = Cert::from_bytes(bytes)
            .map_err(|e| PgpError::Invalid(format!("not an OpenPGP certificate: {e:#}")))?;
        let policy = StandardPolicy::new();
        let has_key = cert
            .keys()
            .with_policy(&policy, None)
            .supported()
            .alive()
            .revoked(false)
            .for_storage_encryption()
            .next()
            .is_some();
        if !has_key {
            return Err(PgpError::Invalid(format!(
                "certificate {} has no valid storage encryption key",
                cert.fingerprint()
            )));
        }
        Ok(RecipientCert { cert })
    }

    /// Fingerprint.
    pub fn fingerprint(&self) -> String {
        self.cert.fingerprint().to_hex()
    }
}

/// Encrypts everything `reader` yields to the org encryption subkey (and
/// `extra` recipients) as a binary OpenPGP message on `writer` (SEIPDv1, so
/// gpg 2.2 reads it). Returns the plaintext byte count.
pub fn encrypt_to_org_key<W: Write + Send + Sync>(
    org: &OrgKey,
    extra: &[RecipientCert],
    reader: &mut dyn Read,
    writer: W,
) -> Result<u64, PgpError> {
    let policy = StandardPolicy::new();
    let features = Features::empty().set_seipdv1();
    let enc = org.encryption_key();
    let mut recipients = vec![Recipient::new(
        features.clone(),
        KeyHandle::from(enc.keyid()),
        enc,
    )];
    for r in extra {
        for ka in r
            .cert
            .keys()
            .with_policy(&policy, None)
            .supported()
            .alive()
            .revoked(false)
            .for_storage_encryption()
        {
            recipients.push(Recipient::new(
                features.clone(),
                KeyHandle::from(ka.key().keyid()),
                ka.key(),
            ));
        }
    }
    let message = Message::new(writer);
    let message = Encryptor::for_recipients(message, recipients)
        .symmetric_algo(SymmetricAlgorithm::AES256)
        .build()
        .pgp("starting the encryption")?;
    let mut literal = LiteralWriter::new(message)
        .build()
        .pgp("starting the literal data")?;
    let n = std::io::copy(reader, &mut literal)
        .map_err(|e| PgpError::Invalid(format!("encrypting: {e}")))?;
    literal.finalize().pgp("finishing the encryption")?;
    Ok(n)
}

/// The org encryption subkey as sequoia's decryptor; the private-key step
/// happens in the token behind the seam.
struct SeamDecryptor<'a> {
    inner: &'a dyn Decrypter,
    key: Key<PublicParts, UnspecifiedRole>,
    /// Why the last attempt failed (PKESK decryption only says "no").
    failure: Option<String>,
}

impl pgp::crypto::Decryptor for SeamDecryptor<'_> {
    fn public(&self) -> &Key<PublicParts, UnspecifiedRole> {
        &self.key
    }

    fn decrypt(
        &mut self,
        ciphertext: &mpi::Ciphertext,
        plaintext_len: Option<usize>,
    ) -> pgp::Result<SessionKey> {
        let result = (|| -> pgp::Result<SessionKey> {
            match (ciphertext, self.inner.public_key()) {
                (mpi::Ciphertext::ECDH { e, .. }, PublicKey::Ec { .. }) => {
                    let z = self.inner.ecdh(e.value())?;
                    let z: pgp::crypto::mem::Protected = z.as_slice().into();
                    pgp::crypto::ecdh::decrypt_unwrap(&self.key, &z, ciphertext, plaintext_len)
                }
                (mpi::Ciphertext::RSA { c }, PublicKey::Rsa { n, .. }) => {
                    // The token wants the ciphertext as long as the modulus.
                    let mut padded = vec![0u8; n.len().saturating_sub(c.value().len())];
                    padded.extend_from_slice(c.value());
                    let plain = self.inner.rsa_decrypt(&padded)?;
                    Ok(SessionKey::from(plain.as_slice()))
                }
                _ => Err(pgp::Error::InvalidOperation(
                    "ciphertext does not match the org encryption key".into(),
                )
                .into()),
            }
        })();
        if let Err(e) = &result {
            self.failure = Some(format!("{e:#}"));
        }
        result
    }
}

struct Helper<'a> {
    dec: SeamDecryptor<'a>,
    enc_fpr: Fingerprint,
}

impl VerificationHelper for Helper<'_> {
    fn get_certs(&mut self, _ids: &[KeyHandle]) -> pgp::Result<Vec<Cert>> {
        Ok(Vec::new())
    }

    fn check(&mut self, _structure: MessageStructure) -> pgp::Result<()> {
        // State backups are not signed: their integrity comes from the
        // encryption (MDC) and the store's own audit chain.
        Ok(())
    }
}

impl DecryptionHelper for Helper<'_> {
    fn decrypt(
        &mut self,
        pkesks: &[PKESK],
        _skesks: &[SKESK],
        sym_algo: Option<SymmetricAlgorithm>,
        decrypt: &mut dyn FnMut(Option<SymmetricAlgorithm>, &SessionKey) -> bool,
    ) -> pgp::Result<Option<Cert>> {
        let ours = KeyHandle::from(self.enc_fpr.clone());
        for pkesk in pkesks {
            let addressed = pkesk.recipient().is_none_or(|r| r.aliases(&ours));
            if !addressed {
                continue;
            }
            if let Some((algo, sk)) = pkesk.decrypt(&mut self.dec, sym_algo)
                && decrypt(algo, &sk)
            {
                return Ok(None);
            }
        }
        let why =
            self.dec.failure.take().unwrap_or_else(|| {
                "the message is not encrypted to the org encryption subkey".into()
            });
        Err(pgp::Error::InvalidOperation(why).into())
    }
}

/// Decrypts an OpenPGP message encrypted to the org key with the token's
/// org encryption subkey, streaming the plaintext to `writer`. Returns the
/// plaintext byte count.
pub fn decrypt_with_org_key<R: Read + Send + Sync>(
    org: &OrgKey,
    decrypter: &dyn Decrypter,
    reader: R,
    writer: &mut dyn Write,
) -> Result<u64, PgpError> {
    let policy = StandardPolicy::new();
    let enc = org.encryption_key().clone();
    let helper = Helper {
        enc_fpr: enc.fingerprint(),
        dec: SeamDecryptor {
            inner: decrypter,
            key: enc,
            failure: None,
        },
    };
    let mut decryptor = DecryptorBuilder::from_reader(reader)
        .map_err(|e| PgpError::Invalid(format!("not an OpenPGP message: {e:#}")))?
        // Nothing is signed, so nothing needs holding back for a signature
        // check: keep the buffer small.
        .buffer_size(1 << 20)
        .with_policy(&policy, None, helper)
        .map_err(|e| PgpError::wrap("decrypting the state backup", e))?;
    let n = std::io::copy(&mut decryptor, writer).map_err(|e| PgpError::Sequoia {
        context: "decrypting the state backup",
        message: e.to_string(),
    })?;
    Ok(n)
}
