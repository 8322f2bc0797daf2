//! The signing seam between the token and the formats.
//!
//! `openpgp/` and `x509/` build signatures through [`Signer`] without
//! knowing that a PKCS#11 token is behind it; `token/` implements it without
//! knowing anything about OpenPGP or X.509. The types here carry no
//! crypto-library types.

use std::fmt;

/// Digest algorithms a signer accepts for prehashed signing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DigestAlgorithm {
    /// SHA-256
    Sha256,
    /// SHA-384
    Sha384,
    /// SHA-512
    Sha512,
}

impl DigestAlgorithm {
    /// Digest length in bytes.
    pub fn output_len(self) -> usize {
        match self {
            DigestAlgorithm::Sha256 => 32,
            DigestAlgorithm::Sha384 => 48,
            DigestAlgorithm::Sha512 => 64,
        }
    }

    /// DER prefix of the PKCS#1 v1.5 `DigestInfo` for this digest (RFC 8017,
    /// section 9.2, note 1); the digest bytes follow it.
    pub fn digest_info_prefix(self) -> &'static [u8] {
        match self {
            DigestAlgorithm::Sha256 => &[
                0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x01, 0x05, 0x00, 0x04, 0x20,
            ],
            DigestAlgorithm::Sha384 => &[
                0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x02, 0x05, 0x00, 0x04, 0x30,
            ],
            DigestAlgorithm::Sha512 => &[
                0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x03, 0x05, 0x00, 0x04, 0x40,
            ],
        }
    }
}

/// Elliptic curves used with ECDSA / ECDH.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EcCurve {
    /// NIST P-256 (secp256r1)
    P256,
    /// NIST P-384 (secp384r1)
    P384,
}

impl EcCurve {
    /// Length of one field element (coordinate or signature half) in bytes.
    pub fn field_len(self) -> usize {
        match self {
            EcCurve::P256 => 32,
            EcCurve::P384 => 48,
        }
    }
}

/// A public key as the token reports it.
#[derive(Clone, PartialEq, Eq)]
pub enum PublicKey {
    /// NIST curve key; `point` is the SEC1 uncompressed point `04 || X || Y`.
    Ec {
        /// The curve.
        curve: EcCurve,
        /// Uncompressed point.
        point: Vec<u8>,
    },
    /// Ed25519 key (32-byte compressed point).
    Ed25519([u8; 32]),
    /// RSA key (big-endian, no leading zeros).
    Rsa {
        /// Modulus.
        n: Vec<u8>,
        /// Public exponent.
        e: Vec<u8>,
    },
}

impl PublicKey {
    /// Short human name, e.g. "ECDSA P-256", "RSA 3072".
    pub fn describe(&self) -> String {
        match self {
            PublicKey::Ec {
                curve: EcCurve::P256,
                ..
            } => "EC P-256".into(),
            PublicKey::Ec {
                curve: EcCurve::P384,
                ..
            } => "EC P-384".into(),
            PublicKey::Ed25519(_) => "Ed25519".into(),
            PublicKey::Rsa { n, .. } => format!("RSA {}", rsa_bits(n)),
        }
    }
}

/// Bit length of a big-endian modulus.
pub fn rsa_bits(n: &[u8]) -> usize {
    let n = strip_leading_zeros(n);
    match n.first() {
        Some(b) => n.len() * 8 - b.leading_zeros() as usize,
        None => 0,
    }
}

fn strip_leading_zeros(b: &[u8]) -> &[u8] {
    let i = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    &b[i..]
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

/// Why a signature could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignerError {
    /// The token is not logged in (appliance sealed).
    #[error("the appliance is sealed")]
    Sealed,
    /// The token or its link is down; retrying later may succeed.
    #[error("token unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The caller passed something the signer cannot sign (wrong digest size).
    #[error("invalid signing input: {0}")]
    InvalidInput(&'static str),
    /// The token refused or failed the operation.
    #[error("signing failed")]
    Failed(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl SignerError {
    /// Whether the token is down or did not answer in time (recovery may
    /// help), as opposed to a sealed appliance or a refused signature.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, SignerError::Unavailable(_))
    }
}

/// A private key that can sign prehashed data. Implementations block (a
/// PKCS#11 call may take milliseconds): call from a blocking thread.
pub trait Signer: Send + Sync {
    /// The public half of the key.
    fn public_key(&self) -> &PublicKey;

    /// Signs `digest`, the output of `alg`:
    /// - ECDSA: returns `r || s`, each `field_len` bytes;
    /// - Ed25519: returns the 64-byte signature over the digest bytes (OpenPGP v4 style);
    /// - RSA: PKCS#1 v1.5 over `DigestInfo(alg) || digest`, returns the modulus-sized signature.
    fn sign_digest(&self, alg: DigestAlgorithm, digest: &[u8]) -> Result<Vec<u8>, SignerError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_info_prefixes_announce_the_digest_length() {
        for alg in [
            DigestAlgorithm::Sha256,
            DigestAlgorithm::Sha384,
            DigestAlgorithm::Sha512,
        ] {
            let p = alg.digest_info_prefix();
            assert_eq!(p[p.len() - 1] as usize, alg.output_len());
            assert_eq!(p[1] as usize, p.len() - 2 + alg.output_len());
        }
    }

    #[test]
    fn rsa_bits_ignores_leading_zero_bytes() {
        let mut n = vec![0u8, 0x80];
        n.extend([0u8; 383]);
        assert_eq!(rsa_bits(&n), 3072);
        assert_eq!(rsa_bits(&[0, 0, 1]), 1);
    }
}

/// Private key material on its way into the token (importing an existing
/// CA keypair). The secret parts are wiped on drop and never printed.
pub enum ImportedKey {
    /// NIST curve key: private scalar and uncompressed public point.
    Ec {
        /// Curve.
        curve: EcCurve,
        /// Big-endian private scalar (field length).
        scalar: zeroize::Zeroizing<Vec<u8>>,
        /// Uncompressed public point `04 || X || Y`.
        point: Vec<u8>,
    },
    /// RSA key with its CRT components (big-endian, no leading zeros).
    Rsa {
        /// Modulus.
        n: Vec<u8>,
        /// Public exponent.
        e: Vec<u8>,
        /// Private exponent, primes, CRT exponents and coefficient.
        private: zeroize::Zeroizing<RsaPrivateParts>,
    },
}

/// The secret parts of an RSA key.
#[derive(Default, zeroize::Zeroize)]
pub struct RsaPrivateParts {
    /// Private exponent.
    pub d: Vec<u8>,
    /// First prime.
    pub p: Vec<u8>,
    /// Second prime.
    pub q: Vec<u8>,
    /// d mod (p-1).
    pub dp: Vec<u8>,
    /// d mod (q-1).
    pub dq: Vec<u8>,
    /// q^-1 mod p.
    pub qinv: Vec<u8>,
}

impl ImportedKey {
    /// The public half.
    pub fn public_key(&self) -> PublicKey {
        match self {
            ImportedKey::Ec { curve, point, .. } => PublicKey::Ec {
                curve: *curve,
                point: point.clone(),
            },
            ImportedKey::Rsa { n, e, .. } => PublicKey::Rsa {
                n: n.clone(),
                e: e.clone(),
            },
        }
    }
}

impl fmt::Debug for ImportedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ImportedKey({}, secret parts redacted)",
            self.public_key().describe()
        )
    }
}

/// An in-memory P-256 signer for unit tests of pure logic (x509, ca).
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use signature::hazmat::PrehashSigner;

    /// Deterministic key from `seed`; `corrupt` flips a bit of every
    /// signature (a faulty token).
    pub(crate) struct SoftP256 {
        key: p256::ecdsa::SigningKey,
        public: PublicKey,
        corrupt: bool,
    }

    impl SoftP256 {
        pub(crate) fn new(seed: u8, corrupt: bool) -> SoftP256 {
            let key = p256::ecdsa::SigningKey::from_slice(&[seed; 32]).expect("valid scalar");
            let point = key.verifying_key().to_sec1_bytes().to_vec();
            SoftP256 {
                key,
                public: PublicKey::Ec {
                    curve: EcCurve::P256,
                    point,
                },
                corrupt,
            }
        }
    }

    impl Signer for SoftP256 {
        fn public_key(&self) -> &PublicKey {
            &self.public
        }

        fn sign_digest(
            &self,
            _alg: DigestAlgorithm,
            digest: &[u8],
        ) -> Result<Vec<u8>, SignerError> {
            let sig: p256::ecdsa::Signature = self
                .key
                .sign_prehash(digest)
                .map_err(|e| SignerError::Failed(e.to_string().into()))?;
            let mut out = sig.to_bytes().to_vec();
            if self.corrupt {
                out[10] ^= 0x01;
            }
            Ok(out)
        }
    }

    /// A token that hangs: signs (as [`SoftP256`]) only once the sender
    /// returned with it is dropped.
    pub(crate) struct Hung {
        inner: SoftP256,
        wait: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
    }

    impl Hung {
        /// A hung signer with the key of `SoftP256::new(seed, false)`, and
        /// the sender whose drop releases it.
        pub(crate) fn new(seed: u8) -> (Hung, std::sync::mpsc::Sender<()>) {
            let (release, wait) = std::sync::mpsc::channel();
            (
                Hung {
                    inner: SoftP256::new(seed, false),
                    wait: std::sync::Mutex::new(wait),
                },
                release,
            )
        }
    }

    impl Signer for Hung {
        fn public_key(&self) -> &PublicKey {
            self.inner.public_key()
        }

        fn sign_digest(&self, alg: DigestAlgorithm, digest: &[u8]) -> Result<Vec<u8>, SignerError> {
            let _ = self.wait.lock().unwrap_or_else(|p| p.into_inner()).recv();
            self.inner.sign_digest(alg, digest)
        }
    }
}

/// A private key that decrypts (the org encryption subkey), behind the seam
/// like [`Signer`]: ECDH derivation or RSA decryption happen in the token.
pub trait Decrypter: Send + Sync {
    /// The public half.
    fn public_key(&self) -> &PublicKey;
    /// ECDH with the peer's uncompressed point; returns the shared x coordinate.
    fn ecdh(&self, peer_point: &[u8]) -> Result<zeroize::Zeroizing<Vec<u8>>, SignerError>;
    /// RSA PKCS#1 v1.5 decryption of a ciphertext as long as the modulus.
    fn rsa_decrypt(&self, ciphertext: &[u8]) -> Result<zeroize::Zeroizing<Vec<u8>>, SignerError>;
}
