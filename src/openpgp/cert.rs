//! The Organization Key certificate: built from token public keys with
//! token-made self-signatures, parsed back from the store, and compared with
//! what the token holds.

use super::token_signer::{PacketUse, SeamSigner, key_packet, preferred_hash};
use super::{PgpError, PgpResultExt};
use crate::signer::{PublicKey, Signer};
use pgp::cert::prelude::*;
use pgp::packet::key::{PrimaryRole, PublicParts, SubordinateRole, UnspecifiedRole};
use pgp::packet::signature::SignatureBuilder;
use pgp::packet::{Key, UserID};
use pgp::parse::Parse;
use pgp::policy::StandardPolicy;
use pgp::serialize::SerializeInto;
use pgp::types::{Features, HashAlgorithm, KeyFlags, SignatureType, SymmetricAlgorithm};
use sequoia_openpgp as pgp;
use std::time::{Duration, SystemTime};

/// What the new org key should say about itself.
#[derive(Debug, Clone)]
pub struct OrgKeyDraft {
    /// The user ID, e.g. "Example Org Key <orgkey@example.com>".
    pub user_id: String,
    /// Creation time of all three keys (whole seconds).
    pub created: SystemTime,
    /// Key validity from `created`; `None` never expires.
    pub validity: Option<Duration>,
}

/// The three token keys of a new org key.
pub struct OrgKeyKeys<'a> {
    /// Certify-only primary key.
    pub primary: &'a dyn Signer,
    /// Data-signing subkey (also makes its own back-signature).
    pub signing: &'a dyn Signer,
    /// Encryption subkey (its private half never signs).
    pub encryption: &'a PublicKey,
}

/// Facts about one subkey.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubkeyInfo {
    /// Upper-case hex fingerprint.
    pub fingerprint: String,
    /// Creation time.
    pub created: SystemTime,
    /// Algorithm, e.g. "ECDSA NIST P-256".
    pub algorithm: String,
}

/// A parsed Organization Key certificate (public parts only).
#[derive(Clone)]
pub struct OrgKey {
    cert: Cert,
    signing: Key<PublicParts, UnspecifiedRole>,
    encryption: Key<PublicParts, UnspecifiedRole>,
}

impl std::fmt::Debug for OrgKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrgKey")
            .field("fingerprint", &self.fingerprint())
            .finish()
    }
}

fn validate_user_id(uid: &str) -> Result<(), PgpError> {
    if uid.trim().is_empty() {
        return Err(PgpError::Invalid("the user ID must not be empty".into()));
    }
    if uid.chars().any(char::is_control) {
        return Err(PgpError::Invalid(
            "the user ID must not contain control characters".into(),
        ));
    }
    if uid.len() > 1024 {
        return Err(PgpError::Invalid(
            "the user ID is longer than 1024 bytes".into(),
        ));
    }
    Ok(())
}

fn algorithm_name(k: &Key<PublicParts, UnspecifiedRole>) -> String {
    use pgp::crypto::mpi::PublicKey as M;
    match k.mpis() {
        M::ECDSA { curve, .. } => format!("ECDSA {curve}"),
        M::ECDH { curve, .. } => format!("ECDH {curve}"),
        M::EdDSA { curve, .. } => format!("EdDSA {curve}"),
        M::RSA { .. } => format!("RSA {}", k.mpis().bits().unwrap_or(0)),
        _ => k.pk_algo().to_string(),
    }
}

/// The self-signature template shared by the direct-key and user ID binding
/// signatures: certify-only, expiry, SEIPDv1 only (gpg 2.2 senders), modern
/// algorithm preferences.
fn primary_template(
    typ: SignatureType,
    draft: &OrgKeyDraft,
    hash: HashAlgorithm,
) -> Result<SignatureBuilder, PgpError> {
    SignatureBuilder::new(typ)
        .set_hash_algo(hash)
        .set_signature_creation_time(draft.created)
        .and_then(|b| b.set_key_flags(KeyFlags::empty().set_certification()))
        .and_then(|b| b.set_key_validity_period(draft.validity))
        .and_then(|b| b.set_features(Features::empty().set_seipdv1()))
        .and_then(|b| {
            b.set_preferred_hash_algorithms(vec![
                HashAlgorithm::SHA512,
                HashAlgorithm::SHA384,
                HashAlgorithm::SHA256,
            ])
        })
        .and_then(|b| {
            b.set_preferred_symmetric_algorithms(vec![
                SymmetricAlgorithm::AES256,
                SymmetricAlgorithm::AES128,
            ])
        })
        .pgp("preparing a self-signature")
}

impl OrgKey {
    /// Builds and self-signs a new org key certificate from token keys.
    pub fn generate(draft: &OrgKeyDraft, keys: OrgKeyKeys<'_>) -> Result<OrgKey, PgpError> {
        validate_user_id(&draft.user_id)?;
        let primary: Key<PublicParts, PrimaryRole> =
            key_packet(keys.primary.public_key(), PacketUse::Signing, draft.created)?;
        let signing: Key<PublicParts, SubordinateRole> =
            key_packet(keys.signing.public_key(), PacketUse::Signing, draft.created)?;
        let encryption: Key<PublicParts, SubordinateRole> =
            key_packet(keys.encryption, PacketUse::Encryption, draft.created)?;

        let mut sub_signer = SeamSigner::new(keys.signing, signing.clone().role_into_unspecified());
        let backsig = SignatureBuilder::new(SignatureType::PrimaryKeyBinding)
            .set_hash_algo(sub_signer.hash())
            .set_signature_creation_time(draft.created)
            .pgp("preparing the back-signature")?
            .sign_primary_key_binding(&mut sub_signer, &primary, &signing)
            .pgp("signing the back-signature with the signing subkey")?;
        let uid = UserID::from(draft.user_id.as_str());
        let SelfSignatures {
            direct,
            uid_binding,
            signing_binding,
            encryption_binding,
        } = SelfSignatures::make(
            keys.primary,
            &primary,
            draft,
            &uid,
            (&signing, backsig),
            &encryption,
        )?;

        let packets: Vec<pgp::Packet> = vec![
            primary.into(),
            direct.into(),
            uid.into(),
            uid_binding.into(),
            signing.into(),
            signing_binding.into(),
            encryption.into(),
            encryption_binding.into(),
        ];
        let cert = Cert::from_packets(packets.into_iter()).pgp("assembling the certificate")?;
        Self::from_cert(cert, draft.created)
    }

    fn from_cert(cert: Cert, at: SystemTime) -> Result<OrgKey, PgpError> {
        if cert.is_tsk() {
            return Err(PgpError::Invalid(
                "refusing a certificate that carries secret key material".into(),
            ));
        }
        let policy = StandardPolicy::new();
        let vc = cert.with_policy(&policy, at).map_err(|e| {
            PgpError::Invalid(format!("the org key certificate is not valid: {e:#}"))
        })?;
        let signing = vc
            .keys()
            .subkeys()
            .for_signing()
            .next()
            .ok_or_else(|| PgpError::Invalid("the org key has no signing subkey".into()))?
            .key()
            .clone()
            .role_into_unspecified();
        let encryption = vc
            .keys()
            .subkeys()
            .for_transport_encryption()
            .next()
            .ok_or_else(|| PgpError::Invalid("the org key has no encryption subkey".into()))?
            .key()
            .clone()
            .role_into_unspecified();
        Ok(OrgKey {
            cert,
            signing,
            encryption,
        })
    }

    /// Parses a stored (armored or binary) org key certificate.
    pub fn parse(bytes: &[u8]) -> Result<OrgKey, PgpError> {
        let cert = Cert::from_bytes(bytes)
            .map_err(|e| PgpError::Invalid(format!("not an OpenPGP certificate: {e:#}")))?;
        let created = cert.primary_key().key().creation_time();
        Self::from_cert(cert, created)
    }

    /// ASCII-armored public certificate.
    pub fn armored(&self) -> Result<String, PgpError> {
        let bytes = self
            .cert
            .armored()
            .to_vec()
            .pgp("armoring the certificate")?;
        String::from_utf8(bytes).map_err(|_| PgpError::Invalid("armor is not UTF-8".into()))
    }

    /// Binary public certificate.
    pub fn to_bytes(&self) -> Result<Vec<u8>, PgpError> {
        self.cert.to_vec().pgp("serializing the certificate")
    }

    /// Upper-case hex fingerprint of the primary key.
    pub fn fingerprint(&self) -> String {
        self.cert.fingerprint().to_hex()
    }

    /// Primary key creation time.
    pub fn created(&self) -> SystemTime {
        self.cert.primary_key().key().creation_time()
    }

    /// Primary key algorithm, e.g. "ECDSA NIST P-256".
    pub fn algorithm(&self) -> String {
        algorithm_name(
            &self
                .cert
                .primary_key()
                .key()
                .clone()
                .role_into_unspecified(),
        )
    }

    /// User IDs.
    pub fn user_ids(&self) -> Vec<String> {
        self.cert
            .userids()
            .map(|u| String::from_utf8_lossy(u.userid().value()).into_owned())
            .collect()
    }

    /// Every address an OpenPGP implementation may read in the user IDs
    /// (canonical, GnuPG's and sequoia's readings), lower-case: the
    /// addresses that belong to this org key and to no user.
    pub fn emails(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for ua in self.cert.userids() {
            for e in super::users::user_id_readings(ua.userid()) {
                if !out.contains(&e) {
                    out.push(e);
                }
            }
        }
        out
    }

    /// Expiry of the primary key as of `now` (None: never expires).
    pub fn expires(&self, now: SystemTime) -> Result<Option<SystemTime>, PgpError> {
        let policy = StandardPolicy::new();
        let vc = self
            .cert
            .with_policy(&policy, now.max(self.created()))
            .map_err(|e| {
                PgpError::Invalid(format!("the org key certificate is not valid: {e:#}"))
            })?;
        Ok(vc.primary_key().key_expiration_time())
    }

    /// The signing subkey.
    pub fn signing_subkey(&self) -> SubkeyInfo {
        info(&self.signing)
    }

    /// The encryption subkey.
    pub fn encryption_subkey(&self) -> SubkeyInfo {
        info(&self.encryption)
    }

    /// Checks that the token's public keys are the ones this certificate
    /// names (same key material and creation time give the same fingerprint).
    pub fn check_token_keys(
        &self,
        primary: &PublicKey,
        signing: &PublicKey,
        encryption: &PublicKey,
    ) -> Result<(), PgpError> {
        let p: Key<PublicParts, PrimaryRole> =
            key_packet(primary, PacketUse::Signing, self.created())?;
        if p.fingerprint() != self.cert.fingerprint() {
            return Err(PgpError::Mismatch(format!(
                "token primary key {} is not the stored org key {}",
                p.fingerprint().to_hex(),
                self.fingerprint()
            )));
        }
        for (pk, usage, expected, what) in [
            (signing, PacketUse::Signing, &self.signing, "signing subkey"),
            (
                encryption,
                PacketUse::Encryption,
                &self.encryption,
                "encryption subkey",
            ),
        ] {
            let k: Key<PublicParts, SubordinateRole> =
                key_packet(pk, usage, expected.creation_time())?;
            if k.fingerprint() != expected.fingerprint() {
                return Err(PgpError::Mismatch(format!(
                    "token {what} {} is not the stored {}",
                    k.fingerprint().to_hex(),
                    expected.fingerprint().to_hex()
                )));
            }
        }
        Ok(())
    }

    /// This key's entry in a machine-readable HKP index.
    pub fn hkp_index_entry(&self, now: SystemTime) -> String {
        super::hkp::index_entry(&self.cert, now)
    }

    /// When the org key should renew itself: `renew_before` ahead of its
    /// expiry. `None` if it never expires.
    pub fn renewal_due(
        &self,
        now: SystemTime,
        renew_before: Duration,
    ) -> Result<Option<SystemTime>, PgpError> {
        Ok(self
            .expires(now)?
            .map(|e| e.checked_sub(renew_before).unwrap_or(e)))
    }

    /// Renews the expiry: new self-signatures made at `now` by the primary
    /// key (in the token) that move the expiry of the primary key and both
    /// subkeys to `now` plus the validity the key was last given. Same key
    /// material, same fingerprint, so every certification it made stays
    /// valid. Returns `None` for a key that never expires.
    pub fn renew(&self, primary: &dyn Signer, now: SystemTime) -> Result<Option<OrgKey>, PgpError> {
        let policy = StandardPolicy::new();
        let vc = self
            .cert
            .with_policy(&policy, now.max(self.created()))
            .map_err(|e| {
                PgpError::Invalid(format!("the org key certificate is not valid: {e:#}"))
            })?;
        let pka = vc.primary_key();
        let Some(expiry) = pka.key_expiration_time() else {
            return Ok(None);
        };
        let last_signed = pka
            .binding_signature()
            .signature_creation_time()
            .unwrap_or_else(|| self.created());
        let validity = expiry
            .duration_since(last_signed)
            .map_err(|_| PgpError::Invalid("the org key expires before it was signed".into()))?;
        let new_expiry = now + validity;
        let key_validity = new_expiry
            .duration_since(self.created())
            .map_err(|_| PgpError::Invalid("renewal time is before the key's creation".into()))?;
        let uid = vc
            .primary_userid()
            .map_err(|e| PgpError::Invalid(format!("the org key has no primary user ID: {e:#}")))?
            .userid()
            .clone();
        let draft = OrgKeyDraft {
            user_id: String::from_utf8_lossy(uid.value()).into_owned(),
            created: now,
            validity: Some(key_validity),
        };
        let backsig = self
            .cert
            .keys()
            .subkeys()
            .find(|k| k.key().fingerprint() == self.signing.fingerprint())
            .and_then(|k| {
                k.self_signatures()
                    .find_map(|s| s.embedded_signatures().next().cloned())
            })
            .ok_or_else(|| {
                PgpError::Invalid("the signing subkey binding has no back-signature".into())
            })?;
        let primary_key: Key<PublicParts, PrimaryRole> = self.cert.primary_key().key().clone();
        let signing: Key<PublicParts, SubordinateRole> =
            self.signing.clone().role_into_subordinate();
        let encryption: Key<PublicParts, SubordinateRole> =
            self.encryption.clone().role_into_subordinate();
        let sigs = SelfSignatures::make(
            primary,
            &primary_key,
            &draft,
            &uid,
            (&signing, backsig),
            &encryption,
        )?;
        let packets: Vec<pgp::Packet> = vec![
            primary_key.into(),
            sigs.direct.into(),
            uid.into(),
            sigs.uid_binding.into(),
            signing.into(),
            sigs.signing_binding.into(),
            encryption.into(),
            sigs.encryption_binding.into(),
        ];
        let (cert, _) = self
            .cert
            .clone()
            .insert_packets(packets)
            .pgp("adding the renewed self-signatures")?;
        Self::from_cert(cert, now).map(Some)
    }

    pub(crate) fn primary_key(&self) -> Key<PublicParts, UnspecifiedRole> {
        self.cert
            .primary_key()
            .key()
            .clone()
            .role_into_unspecified()
    }

    pub(crate) fn encryption_key(&self) -> &Key<PublicParts, UnspecifiedRole> {
        &self.encryption
    }

    /// Proves that `signer` holds the private half of the primary key
    /// (`primary`) or of the signing subkey: it signs a random challenge
    /// and the signature is verified against this certificate's key.
    pub fn prove_signing_key(&self, primary: bool, signer: &dyn Signer) -> Result<(), PgpError> {
        let key = if primary {
            self.primary_key()
        } else {
            self.signing.clone()
        };
        let challenge: [u8; 32] = rand::random();
        let mut seam = SeamSigner::new(signer, key.clone());
        let sig = SignatureBuilder::new(SignatureType::Binary)
            .set_hash_algo(seam.hash())
            .sign_message(&mut seam, challenge)
            .pgp("signing a challenge")?;
        sig.verify_message(&key, challenge).map_err(|e| {
            PgpError::Mismatch(format!(
                "the token key does not verify against {}: {e:#}",
                key.fingerprint()
            ))
        })
    }

    pub(crate) fn cert(&self) -> &Cert {
        &self.cert
    }

    pub(crate) fn signing_key(&self) -> &Key<PublicParts, UnspecifiedRole> {
        &self.signing
    }

    /// The hash used for data signatures by the signing subkey.
    pub(crate) fn signing_hash(&self, signer: &dyn Signer) -> HashAlgorithm {
        preferred_hash(signer.public_key())
    }
}

/// The primary key's self-signatures: made at generation and again at each
/// renewal (with `draft.created` as the signature time).
struct SelfSignatures {
    direct: pgp::packet::Signature,
    uid_binding: pgp::packet::Signature,
    signing_binding: pgp::packet::Signature,
    encryption_binding: pgp::packet::Signature,
}

impl SelfSignatures {
    fn make(
        primary_signer: &dyn Signer,
        primary: &Key<PublicParts, PrimaryRole>,
        draft: &OrgKeyDraft,
        uid: &UserID,
        (signing, backsig): (&Key<PublicParts, SubordinateRole>, pgp::packet::Signature),
        encryption: &Key<PublicParts, SubordinateRole>,
    ) -> Result<SelfSignatures, PgpError> {
        let mut signer = SeamSigner::new(primary_signer, primary.clone().role_into_unspecified());
        let hash = signer.hash();
        let direct = primary_template(SignatureType::DirectKey, draft, hash)?
            .sign_direct_key(&mut signer, Some(primary))
            .pgp("signing the direct-key signature")?;
        let uid_binding = primary_template(SignatureType::PositiveCertification, draft, hash)?
            .set_primary_userid(true)
            .pgp("marking the primary user ID")?
            .sign_userid_binding(&mut signer, Some(primary), uid)
            .pgp("signing the user ID binding")?;
        let signing_binding = SignatureBuilder::new(SignatureType::SubkeyBinding)
            .set_hash_algo(hash)
            .set_signature_creation_time(draft.created)
            .and_then(|b| b.set_key_flags(KeyFlags::empty().set_signing()))
            .and_then(|b| b.set_key_validity_period(draft.validity))
            .and_then(|b| b.set_embedded_signature(backsig))
            .pgp("preparing the signing subkey binding")?
            .sign_subkey_binding(&mut signer, Some(primary), signing)
            .pgp("signing the signing subkey binding")?;
        let encryption_binding = SignatureBuilder::new(SignatureType::SubkeyBinding)
            .set_hash_algo(hash)
            .set_signature_creation_time(draft.created)
            .and_then(|b| {
                b.set_key_flags(
                    KeyFlags::empty()
                        .set_transport_encryption()
                        .set_storage_encryption(),
                )
            })
            .and_then(|b| b.set_key_validity_period(draft.validity))
            .pgp("preparing the encryption subkey binding")?
            .sign_subkey_binding(&mut signer, Some(primary), encryption)
            .pgp("signing the encryption subkey binding")?;
        Ok(SelfSignatures {
            direct,
            uid_binding,
            signing_binding,
            encryption_binding,
        })
    }
}

fn info(k: &Key<PublicParts, UnspecifiedRole>) -> SubkeyInfo {
    SubkeyInfo {
        fingerprint: k.fingerprint().to_hex(),
        created: k.creation_time(),
        algorithm: algorithm_name(k),
    }
}
