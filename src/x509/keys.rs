//! Public keys and signatures in X.509 form: SubjectPublicKeyInfo from token
//! public keys, the org cert key as an x509-cert signer (the signature itself
//! is made through the seam), and software verification of CSR and issued
//! certificate signatures with the RustCrypto verifiers.

use super::X509Error;
use crate::signer::{DigestAlgorithm, EcCurve, PublicKey, Signer};
use der::asn1::{BitString, ObjectIdentifier, UintRef};
use der::referenced::OwnedToRef;
use der::{Decode, Encode, Sequence};
use sha2_11::Digest;
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned, SubjectPublicKeyInfoRef};

pub(crate) const ID_EC_PUBLIC_KEY: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
pub(crate) const SECP256R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
pub(crate) const SECP384R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
pub(crate) const RSA_ENCRYPTION: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
pub(crate) const ID_ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");
const ECDSA_WITH_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
const ECDSA_WITH_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");
const ECDSA_WITH_SHA512: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.4");
const SHA256_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");
const SHA384_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.12");
const SHA512_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.13");

#[derive(Sequence)]
struct RsaPublicKeyDer<'a> {
    modulus: UintRef<'a>,
    public_exponent: UintRef<'a>,
}

#[derive(Sequence)]
struct EcdsaSigDer<'a> {
    r: UintRef<'a>,
    s: UintRef<'a>,
}

fn der_err(what: &str) -> impl FnOnce(der::Error) -> X509Error + '_ {
    move |e| X509Error::Encoding(format!("{what}: {e}"))
}

/// The SubjectPublicKeyInfo of a token public key.
pub(crate) fn spki_of(pk: &PublicKey) -> Result<SubjectPublicKeyInfoOwned, X509Error> {
    let (algorithm, key) = match pk {
        PublicKey::Ec { curve, point } => {
            let curve_oid = match curve {
                EcCurve::P256 => SECP256R1,
                EcCurve::P384 => SECP384R1,
            };
            (
                AlgorithmIdentifierOwned {
                    oid: ID_EC_PUBLIC_KEY,
                    parameters: Some(der::Any::from(curve_oid)),
                },
                point.clone(),
            )
        }
        PublicKey::Rsa { n, e } => {
            let der = RsaPublicKeyDer {
                modulus: UintRef::new(n).map_err(der_err("RSA modulus"))?,
                public_exponent: UintRef::new(e).map_err(der_err("RSA exponent"))?,
            }
            .to_der()
            .map_err(der_err("RSA public key"))?;
            (
                AlgorithmIdentifierOwned {
                    oid: RSA_ENCRYPTION,
                    parameters: Some(der::asn1::Null.into()),
                },
                der,
            )
        }
        PublicKey::Ed25519(a) => (
            AlgorithmIdentifierOwned {
                oid: ID_ED25519,
                parameters: None,
            },
            a.to_vec(),
        ),
    };
    Ok(SubjectPublicKeyInfoOwned {
        algorithm,
        subject_public_key: BitString::from_bytes(&key).map_err(der_err("public key bits"))?,
    })
}

/// How a CA key signs: the X.509 signature algorithm and the digest it
/// signs in the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CaAlgorithm {
    EcdsaSha256,
    EcdsaSha384,
    RsaSha256,
}

impl CaAlgorithm {
    pub(crate) fn for_key(pk: &PublicKey) -> Result<CaAlgorithm, X509Error> {
        match pk {
            PublicKey::Ec {
                curve: EcCurve::P256,
                ..
            } => Ok(CaAlgorithm::EcdsaSha256),
            PublicKey::Ec {
                curve: EcCurve::P384,
                ..
            } => Ok(CaAlgorithm::EcdsaSha384),
            PublicKey::Rsa { .. } => Ok(CaAlgorithm::RsaSha256),
            PublicKey::Ed25519(_) => Err(X509Error::Refused(
                "the org cert key must be P-256, P-384 or RSA: Ed25519 CA certificates are not \
                 accepted by most S/MIME clients"
                    .into(),
            )),
        }
    }

    fn identifier(self) -> AlgorithmIdentifierOwned {
        match self {
            CaAlgorithm::EcdsaSha256 => AlgorithmIdentifierOwned {
                oid: ECDSA_WITH_SHA256,
                parameters: None,
            },
            CaAlgorithm::EcdsaSha384 => AlgorithmIdentifierOwned {
                oid: ECDSA_WITH_SHA384,
                parameters: None,
            },
            CaAlgorithm::RsaSha256 => AlgorithmIdentifierOwned {
                oid: SHA256_WITH_RSA,
                parameters: Some(der::asn1::Null.into()),
            },
        }
    }

    fn digest(self) -> DigestAlgorithm {
        match self {
            CaAlgorithm::EcdsaSha256 | CaAlgorithm::RsaSha256 => DigestAlgorithm::Sha256,
            CaAlgorithm::EcdsaSha384 => DigestAlgorithm::Sha384,
        }
    }
}

fn hash(alg: DigestAlgorithm, msg: &[u8]) -> Vec<u8> {
    match alg {
        DigestAlgorithm::Sha256 => sha2_11::Sha256::digest(msg).to_vec(),
        DigestAlgorithm::Sha384 => sha2_11::Sha384::digest(msg).to_vec(),
        DigestAlgorithm::Sha512 => sha2_11::Sha512::digest(msg).to_vec(),
    }
}

/// The public half of a CA key, as x509-cert's builders want it.
#[derive(Clone)]
pub(crate) struct CaPublicKey(SubjectPublicKeyInfoOwned);

impl spki::EncodePublicKey for CaPublicKey {
    fn to_public_key_der(&self) -> spki::Result<der::Document> {
        Ok(der::Document::encode_msg(&self.0)?)
    }
}

/// A token key that signs certificates, requests and CRLs. The builders
/// only learn its public key and algorithm from it; the signature is made by
/// [`CaKey::sign`] through the seam, so the caller controls the order of
/// recording, signing and verifying.
pub(crate) struct CaKey<'a> {
    signer: &'a dyn Signer,
    spki: SubjectPublicKeyInfoOwned,
    algorithm: CaAlgorithm,
}

impl<'a> CaKey<'a> {
    pub(crate) fn new(signer: &'a dyn Signer) -> Result<CaKey<'a>, X509Error> {
        let algorithm = CaAlgorithm::for_key(signer.public_key())?;
        Ok(CaKey {
            signer,
            spki: spki_of(signer.public_key())?,
            algorithm,
        })
    }

    pub(crate) fn spki(&self) -> &SubjectPublicKeyInfoOwned {
        &self.spki
    }

    /// Signs `tbs` in the token and checks the signature in software
    /// before it is used: a faulty token never yields a bad certificate.
    pub(crate) fn sign(&self, tbs: &[u8]) -> Result<BitString, X509Error> {
        let digest = hash(self.algorithm.digest(), tbs);
        let raw = self
            .signer
            .sign_digest(self.algorithm.digest(), &digest)
            .map_err(X509Error::Signer)?;
        let sig = match self.signer.public_key() {
            PublicKey::Ec { curve, .. } => {
                let n = curve.field_len();
                if raw.len() != 2 * n {
                    return Err(X509Error::Encoding("bad ECDSA signature length".into()));
                }
                EcdsaSigDer {
                    r: UintRef::new(&raw[..n]).map_err(der_err("ECDSA r"))?,
                    s: UintRef::new(&raw[n..]).map_err(der_err("ECDSA s"))?,
                }
                .to_der()
                .map_err(der_err("ECDSA signature"))?
            }
            PublicKey::Rsa { .. } | PublicKey::Ed25519(_) => raw,
        };
        verify(
            self.spki.owned_to_ref(),
            &self.algorithm.identifier(),
            tbs,
            &sig,
        )
        .map_err(|e| {
            X509Error::Signer(crate::signer::SignerError::Failed(
                format!("the token returned a signature that does not verify: {e}").into(),
            ))
        })?;
        BitString::from_bytes(&sig).map_err(der_err("signature bits"))
    }
}

impl signature::Keypair for CaKey<'_> {
    type VerifyingKey = CaPublicKey;
    fn verifying_key(&self) -> CaPublicKey {
        CaPublicKey(self.spki.clone())
    }
}

impl spki::DynSignatureAlgorithmIdentifier for CaKey<'_> {
    fn signature_algorithm_identifier(&self) -> spki::Result<AlgorithmIdentifierOwned> {
        Ok(self.algorithm.identifier())
    }
}

/// What kind of key a SubjectPublicKeyInfo holds, checked against the user
/// key policy: RSA 2048..=16384 bits, P-256, P-384, Ed25519.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UserKeyKind {
    Rsa(usize),
    P256,
    P384,
    Ed25519,
}

impl UserKeyKind {
    pub(crate) fn of(spki: SubjectPublicKeyInfoRef<'_>) -> Result<UserKeyKind, X509Error> {
        let oid = spki.algorithm.oid;
        if oid == RSA_ENCRYPTION {
            let key = rsa::PublicKey::try_from(spki)
                .map_err(|e| X509Error::Invalid(format!("bad RSA public key: {e}")))?;
            let bits = rsa::traits::PublicKeyParts::n(&key).bit_width() as usize;
            if !(2048..=16384).contains(&bits) {
                return Err(X509Error::Refused(format!(
                    "RSA keys must have 2048 to 16384 bits, this one has {bits}"
                )));
            }
            return Ok(UserKeyKind::Rsa(bits));
        }
        if oid == ID_EC_PUBLIC_KEY {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
            return match curve {
                Some(c) if c == SECP256R1 => {
                    p256::PublicKey::from_sec1_bytes(spki.subject_public_key.raw_bytes())
                        .map_err(|_| X509Error::Invalid("bad P-256 public key".into()))?;
                    Ok(UserKeyKind::P256)
                }
                Some(c) if c == SECP384R1 => {
                    p384::PublicKey::from_sec1_bytes(spki.subject_public_key.raw_bytes())
                        .map_err(|_| X509Error::Invalid("bad P-384 public key".into()))?;
                    Ok(UserKeyKind::P384)
                }
                _ => Err(X509Error::Refused(
                    "only the P-256 and P-384 curves are accepted".into(),
                )),
            };
        }
        if oid == ID_ED25519 {
            if spki.subject_public_key.raw_bytes().len() != 32 {
                return Err(X509Error::Invalid("bad Ed25519 public key".into()));
            }
            return Ok(UserKeyKind::Ed25519);
        }
        Err(X509Error::Refused(format!(
            "unsupported key algorithm {oid} (RSA 2048+, P-256, P-384 or Ed25519)"
        )))
    }

    /// Key usage bits besides digitalSignature: RSA encrypts keys, EC agrees
    /// on them, Ed25519 only signs.
    pub(crate) fn describe(self) -> String {
        match self {
            UserKeyKind::Rsa(b) => format!("RSA {b}"),
            UserKeyKind::P256 => "ECDSA P-256".into(),
            UserKeyKind::P384 => "ECDSA P-384".into(),
            UserKeyKind::Ed25519 => "Ed25519".into(),
        }
    }
}

/// Verifies `sig` over `msg` by the key in `spki` with the X.509 signature
/// algorithm `alg`.
pub(crate) fn verify(
    spki: SubjectPublicKeyInfoRef<'_>,
    alg: &AlgorithmIdentifierOwned,
    msg: &[u8],
    sig: &[u8],
) -> Result<(), X509Error> {
    let bad = |what: &str| X509Error::Invalid(format!("signature does not verify ({what})"));
    let digest = |d: DigestAlgorithm| hash(d, msg);
    let oid = alg.oid;
    if oid == ECDSA_WITH_SHA256 || oid == ECDSA_WITH_SHA384 || oid == ECDSA_WITH_SHA512 {
        let d = if oid == ECDSA_WITH_SHA256 {
            DigestAlgorithm::Sha256
        } else if oid == ECDSA_WITH_SHA384 {
            DigestAlgorithm::Sha384
        } else {
            DigestAlgorithm::Sha512
        };
        use signature::hazmat::PrehashVerifier;
        let kind = UserKeyKind::of(spki.clone())?;
        if let Some(fast) = ring_ecdsa(kind, d) {
            return ring::signature::UnparsedPublicKey::new(
                fast,
                spki.subject_public_key.raw_bytes(),
            )
            .verify(msg, sig)
            .map_err(|_| bad("ECDSA"));
        }
        return match kind {
            UserKeyKind::P256 => {
                let vk =
                    p256::ecdsa::VerifyingKey::from_sec1_bytes(spki.subject_public_key.raw_bytes())
                        .map_err(|_| bad("P-256 key"))?;
                let s = p256::ecdsa::DerSignature::from_bytes(sig).map_err(|_| bad("encoding"))?;
                vk.verify_prehash(&digest(d), &s).map_err(|_| bad("ECDSA"))
            }
            UserKeyKind::P384 => {
                let vk =
                    p384::ecdsa::VerifyingKey::from_sec1_bytes(spki.subject_public_key.raw_bytes())
                        .map_err(|_| bad("P-384 key"))?;
                let s = p384::ecdsa::DerSignature::from_bytes(sig).map_err(|_| bad("encoding"))?;
                vk.verify_prehash(&digest(d), &s).map_err(|_| bad("ECDSA"))
            }
            UserKeyKind::Rsa(_) | UserKeyKind::Ed25519 => {
                Err(bad("ECDSA algorithm with a non-EC key"))
            }
        };
    }
    if oid == SHA256_WITH_RSA || oid == SHA384_WITH_RSA || oid == SHA512_WITH_RSA {
        if let UserKeyKind::Rsa(bits) = UserKeyKind::of(spki.clone())?
            && bits <= 8192
        {
            let fast: &'static ring::signature::RsaParameters = if oid == SHA256_WITH_RSA {
                &ring::signature::RSA_PKCS1_2048_8192_SHA256
            } else if oid == SHA384_WITH_RSA {
                &ring::signature::RSA_PKCS1_2048_8192_SHA384
            } else {
                &ring::signature::RSA_PKCS1_2048_8192_SHA512
            };
            // The SPKI's key bits are the PKCS#1 RSAPublicKey ring reads.
            return ring::signature::UnparsedPublicKey::new(
                fast,
                spki.subject_public_key.raw_bytes(),
            )
            .verify(msg, sig)
            .map_err(|_| bad("RSA PKCS#1 v1.5"));
        }
        let key = rsa::PublicKey::try_from(spki).map_err(|_| bad("RSA key"))?;
        let (scheme, d) = if oid == SHA256_WITH_RSA {
            (
                rsa::Pkcs1v15Sign::new::<sha2_11::Sha256>(),
                DigestAlgorithm::Sha256,
            )
        } else if oid == SHA384_WITH_RSA {
            (
                rsa::Pkcs1v15Sign::new::<sha2_11::Sha384>(),
                DigestAlgorithm::Sha384,
            )
        } else {
            (
                rsa::Pkcs1v15Sign::new::<sha2_11::Sha512>(),
                DigestAlgorithm::Sha512,
            )
        };
        return key
            .verify(scheme, &digest(d), sig)
            .map_err(|_| bad("RSA PKCS#1 v1.5"));
    }
    if oid == ID_ED25519 {
        let bytes: [u8; 32] = spki
            .subject_public_key
            .raw_bytes()
            .try_into()
            .map_err(|_| bad("Ed25519 key"))?;
        let vk = ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(|_| bad("Ed25519 key"))?;
        let s = ed25519_dalek::Signature::from_slice(sig).map_err(|_| bad("encoding"))?;
        return vk.verify_strict(msg, &s).map_err(|_| bad("Ed25519"));
    }
    Err(X509Error::Refused(format!(
        "unsupported signature algorithm {oid} (ECDSA or RSA PKCS#1 v1.5 with SHA-2, or Ed25519)"
    )))
}

/// ring's verifier for ECDSA with this key and digest, where it has one
/// (not for SHA-512, which the RustCrypto verifiers handle). ring's
/// assembly P-256 and P-384 verify several times faster than the portable
/// RustCrypto code, and every issuance verifies two ECDSA signatures (the
/// CSR's and the token's); both accept only DER signatures and points on
/// the curve (decision 0027).
fn ring_ecdsa(
    kind: UserKeyKind,
    d: DigestAlgorithm,
) -> Option<&'static ring::signature::EcdsaVerificationAlgorithm> {
    match (kind, d) {
        (UserKeyKind::P256, DigestAlgorithm::Sha256) => {
            Some(&ring::signature::ECDSA_P256_SHA256_ASN1)
        }
        (UserKeyKind::P256, DigestAlgorithm::Sha384) => {
            Some(&ring::signature::ECDSA_P256_SHA384_ASN1)
        }
        (UserKeyKind::P384, DigestAlgorithm::Sha256) => {
            Some(&ring::signature::ECDSA_P384_SHA256_ASN1)
        }
        (UserKeyKind::P384, DigestAlgorithm::Sha384) => {
            Some(&ring::signature::ECDSA_P384_SHA384_ASN1)
        }
        (UserKeyKind::P256 | UserKeyKind::P384, DigestAlgorithm::Sha512)
        | (UserKeyKind::Rsa(_) | UserKeyKind::Ed25519, _) => None,
    }
}

/// DER bytes of an SPKI (for comparing keys).
pub(crate) fn spki_der(spki: &SubjectPublicKeyInfoOwned) -> Result<Vec<u8>, X509Error> {
    spki.to_der().map_err(der_err("encoding a public key"))
}

/// Parses SPKI DER.
pub(crate) fn parse_spki(der_bytes: &[u8]) -> Result<SubjectPublicKeyInfoOwned, X509Error> {
    SubjectPublicKeyInfoOwned::from_der(der_bytes).map_err(der_err("parsing a public key"))
}
