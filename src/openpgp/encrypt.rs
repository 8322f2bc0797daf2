//! Streaming encryption to the org key and decryption with the org
//! encryption subkey in the token. State backups are signed by the org
//! signing subkey inside the encryption (sign, then encrypt, as gpg does),
//! and a restore accepts only a message whose signature checks out against
//! the org key. Memory stays bounded: data moves through in buffer-sized
//! pieces whatever its size.

use super::cert::OrgKey;
use super::{PendingSignature, PgpError, PgpResultExt, SignMode};
use crate::signer::{Decrypter, PublicKey, Signer};
use pgp::cert::prelude::*;
use pgp::crypto::{SessionKey, mpi};
use pgp::packet::key::{PublicParts, UnspecifiedRole};
use pgp::packet::one_pass_sig::OnePassSig3;
use pgp::packet::{Key, PKESK, Packet, SKESK};
use pgp::parse::Parse;
use pgp::parse::stream::{
    DecryptionHelper, DecryptorBuilder, MessageLayer, MessageStructure, VerificationHelper,
};
use pgp::policy::StandardPolicy;
use pgp::serialize::Serialize;
use pgp::serialize::stream::{Encryptor, LiteralWriter, Message, Recipient};
use pgp::types::{Features, SignatureType, SymmetricAlgorithm};
use pgp::{Fingerprint, KeyHandle};
use sequoia_openpgp as pgp;
use std::io::{Read, Write};
use std::time::{Duration, SystemTime};

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

/// Opens an encryption layer to the org encryption subkey and `extra`
/// recipients (SEIPDv1, so gpg 2.2 reads it).
fn encryptor<'a, W: Write + Send + Sync + 'a>(
    org: &'a OrgKey,
    extra: &'a [RecipientCert],
    writer: W,
) -> Result<Message<'a>, PgpError> {
    static POLICY: StandardPolicy = StandardPolicy::new();
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
            .with_policy(&POLICY, None)
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
    Encryptor::for_recipients(message, recipients)
        .symmetric_algo(SymmetricAlgorithm::AES256)
        .build()
        .pgp("starting the encryption")
}

/// Encrypts everything `reader` yields to the org encryption subkey (and
/// `extra` recipients) as a binary OpenPGP message on `writer`, unsigned.
/// Returns the plaintext byte count. (Key restore proves the encryption
/// subkey with this; state backups use [`sign_and_encrypt_to_org_key`].)
pub fn encrypt_to_org_key<W: Write + Send + Sync>(
    org: &OrgKey,
    extra: &[RecipientCert],
    reader: &mut dyn Read,
    writer: W,
) -> Result<u64, PgpError> {
    let message = encryptor(org, extra, writer)?;
    let mut literal = LiteralWriter::new(message)
        .build()
        .pgp("starting the literal data")?;
    let n = std::io::copy(reader, &mut literal)
        .map_err(|e| PgpError::Invalid(format!("encrypting: {e}")))?;
    literal.finalize().pgp("finishing the encryption")?;
    Ok(n)
}

/// Signs everything `reader` yields with the org signing subkey (`signer`,
/// in the token) and encrypts the signed message to the org encryption
/// subkey and `extra` recipients: one-pass signature, literal data, then the
/// signature, all inside the encryption, so `gpg --decrypt` reports a good
/// signature by the org key. The token's signature is checked before it is
/// written. Returns the plaintext byte count.
pub fn sign_and_encrypt_to_org_key<W: Write + Send + Sync>(
    org: &OrgKey,
    signer: &dyn Signer,
    extra: &[RecipientCert],
    reader: &mut dyn Read,
    writer: W,
    now: SystemTime,
) -> Result<u64, PgpError> {
    let mut pending = PendingSignature::new(org, signer, SignMode::Binary)?;
    let key = org.signing_key();
    let mut ops = OnePassSig3::new(SignatureType::Binary);
    ops.set_hash_algo(org.signing_hash(signer));
    ops.set_pk_algo(key.pk_algo());
    ops.set_issuer(key.keyid());
    ops.set_last(true);
    let mut message = encryptor(org, extra, writer)?;
    Packet::from(ops)
        .serialize(&mut message)
        .pgp("writing the one-pass signature")?;
    let mut literal = LiteralWriter::new(message)
        .build()
        .pgp("starting the literal data")?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(PgpError::Invalid(format!(
                    "reading the data to back up: {e}"
                )));
            }
        };
        pending.update(&buf[..n]);
        literal
            .write_all(&buf[..n])
            .map_err(|e| PgpError::Invalid(format!("encrypting: {e}")))?;
    }
    let mut message = literal
        .finalize_one()
        .pgp("finishing the literal data")?
        .ok_or_else(|| PgpError::Invalid("the encryption layer vanished".into()))?;
    let n = pending.len();
    // Made and checked in the token before a byte of it is written.
    let signature = pending.sign(org, signer, now, false)?;
    message
        .write_all(&signature.bytes)
        .map_err(|e| PgpError::Invalid(format!("writing the signature: {e}")))?;
    message.finalize().pgp("finishing the encryption")?;
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
    /// For signed messages: the org key, whose signing subkey must have
    /// made the one signature, and when it did.
    signed_by: Option<(Cert, Fingerprint)>,
    signed_at: Option<SystemTime>,
}

/// Signatures dated this far ahead of our clock are still accepted (clock
/// skew between the appliance that wrote a backup and the one restoring).
const SIGNATURE_SKEW: Duration = Duration::from_secs(300);

impl VerificationHelper for Helper<'_> {
    fn get_certs(&mut self, _ids: &[KeyHandle]) -> pgp::Result<Vec<Cert>> {
        Ok(self
            .signed_by
            .as_ref()
            .map(|(cert, _)| vec![cert.clone()])
            .unwrap_or_default())
    }

    fn check(&mut self, structure: MessageStructure) -> pgp::Result<()> {
        let Some((_, want)) = &self.signed_by else {
            return Ok(());
        };
        let refuse =
            |why: String| -> pgp::Result<()> { Err(pgp::Error::InvalidOperation(why).into()) };
        let mut signed_at = None;
        let mut groups = 0;
        for layer in structure.into_iter() {
            match layer {
                MessageLayer::Encryption { .. } => {}
                MessageLayer::Compression { .. } => {
                    return refuse("the message is compressed; orgkey never writes that".into());
                }
                MessageLayer::SignatureGroup { results } => {
                    groups += 1;
                    if results.len() != 1 {
                        return refuse(format!(
                            "expected exactly one signature, found {}",
                            results.len()
                        ));
                    }
                    for r in results {
                        match r {
                            Ok(good) if good.ka.key().fingerprint() == *want => {
                                signed_at = good.sig.signature_creation_time();
                            }
                            Ok(good) => {
                                return refuse(format!(
                                    "signed by {}, not by the org signing subkey",
                                    good.ka.key().fingerprint()
                                ));
                            }
                            Err(e) => return refuse(format!("the signature does not verify: {e}")),
                        }
                    }
                }
            }
        }
        let Some(at) = signed_at.filter(|_| groups == 1) else {
            return refuse("the message is not signed by the org key".into());
        };
        if at > SystemTime::now() + SIGNATURE_SKEW {
            return refuse("the signature is dated in the future".into());
        }
        self.signed_at = Some(at);
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

/// What [`decrypt_signed_by_org_key`] read.
#[derive(Debug, Clone, Copy)]
pub struct SignedPlaintext {
    /// Plaintext bytes written.
    pub bytes: u64,
    /// When the org signing subkey signed it.
    pub signed_at: SystemTime,
}

fn decrypt(
    org: &OrgKey,
    decrypter: &dyn Decrypter,
    reader: impl Read + Send + Sync,
    writer: &mut dyn Write,
    signed: bool,
) -> Result<(u64, Option<SystemTime>), PgpError> {
    let policy = StandardPolicy::new();
    let enc = org.encryption_key().clone();
    let helper = Helper {
        enc_fpr: enc.fingerprint(),
        dec: SeamDecryptor {
            inner: decrypter,
            key: enc,
            failure: None,
        },
        signed_by: signed.then(|| (org.cert().clone(), org.signing_key().fingerprint())),
        signed_at: None,
    };
    let mut decryptor = DecryptorBuilder::from_reader(reader)
        .map_err(|e| PgpError::Invalid(format!("not an OpenPGP message: {e:#}")))?
        // A signature is checked at the end of the data: whatever came
        // before it is written out, and the caller uses none of it unless
        // this returns Ok. So the buffer can stay small.
        .buffer_size(1 << 20)
        .with_policy(&policy, None, helper)
        .map_err(|e| PgpError::wrap("decrypting the message", e))?;
    let n = std::io::copy(&mut decryptor, writer).map_err(|e| PgpError::Sequoia {
        context: "decrypting the message",
        message: e.to_string(),
    })?;
    let signed_at = decryptor.helper_ref().signed_at;
    Ok((n, signed_at))
}

/// Decrypts an OpenPGP message encrypted to the org key with the token's
/// org encryption subkey, streaming the plaintext to `writer`; signatures
/// are not required. Returns the plaintext byte count.
pub fn decrypt_with_org_key<R: Read + Send + Sync>(
    org: &OrgKey,
    decrypter: &dyn Decrypter,
    reader: R,
    writer: &mut dyn Write,
) -> Result<u64, PgpError> {
    Ok(decrypt(org, decrypter, reader, writer, false)?.0)
}

/// Decrypts a message made by [`sign_and_encrypt_to_org_key`]: it must be
/// encrypted to the org key and carry exactly one signature, a good one by
/// the org signing subkey. The plaintext streams to `writer` as it is
/// decrypted; when this returns an error, nothing written may be used.
pub fn decrypt_signed_by_org_key<R: Read + Send + Sync>(
    org: &OrgKey,
    decrypter: &dyn Decrypter,
    reader: R,
    writer: &mut dyn Write,
) -> Result<SignedPlaintext, PgpError> {
    let (bytes, signed_at) = decrypt(org, decrypter, reader, writer, true)?;
    let signed_at = signed_at
        .ok_or_else(|| PgpError::Invalid("the message is not signed by the org key".into()))?;
    Ok(SignedPlaintext { bytes, signed_at })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openpgp::users::faulty_token_tests::org_key;
    use crate::signer::testing::SoftP256;

    #[test]
    fn a_state_backup_is_never_finished_with_a_bad_token_signature() {
        let org = org_key();
        let now = SystemTime::now();
        let mut good = Vec::new();
        let n = sign_and_encrypt_to_org_key(
            &org,
            &SoftP256::new(2, false),
            &[],
            &mut &b"store bytes"[..],
            &mut good,
            now,
        )
        .unwrap();
        assert_eq!(n, 11);
        let mut bad = Vec::new();
        let e = sign_and_encrypt_to_org_key(
            &org,
            &SoftP256::new(2, true),
            &[],
            &mut &b"store bytes"[..],
            &mut bad,
            now,
        )
        .unwrap_err();
        assert!(
            matches!(e, PgpError::Signer(crate::signer::SignerError::Failed(ref m)) if m.to_string().contains("does not verify")),
            "{e:?}"
        );
        // The message was never finished: no signature packet, no MDC.
        assert!(bad.len() < good.len(), "{} vs {}", bad.len(), good.len());
    }
}
