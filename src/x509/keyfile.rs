//! Reading an existing internal root CA keypair for import into the token:
//! PKCS#12, or a PEM PKCS#8 key (plain or encrypted) with a PEM certificate.
//! The private key exists in this process only between parsing and the
//! token import, in zeroizing buffers.

use super::{X509Cert, X509Error};
use crate::signer::{EcCurve, ImportedKey, RsaPrivateParts};
use der::asn1::ObjectIdentifier;
use pkcs8::DecodePrivateKey;
use zeroize::Zeroizing;

/// Where the CA keypair comes from.
pub enum CaKeypairFile<'a> {
    /// A PKCS#12 file with its password.
    Pkcs12 {
        /// File contents.
        data: &'a [u8],
        /// Its password.
        password: &'a str,
    },
    /// A PEM private key (PKCS#8, optionally encrypted) and a PEM certificate.
    Pem {
        /// Key file contents.
        key: &'a [u8],
        /// Password of an encrypted key.
        password: Option<&'a str>,
        /// Certificate file contents.
        cert: &'a [u8],
    },
}

fn strip(b: &[u8]) -> Vec<u8> {
    let start = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    b[start..].to_vec()
}

fn from_pkcs8(der_bytes: &[u8]) -> Result<ImportedKey, X509Error> {
    let info = pkcs8::PrivateKeyInfoRef::try_from(der_bytes)
        .map_err(|e| X509Error::Invalid(format!("not a PKCS#8 private key: {e}")))?;
    let oid = info.algorithm.oid;
    if oid == super::keys::ID_EC_PUBLIC_KEY {
        let curve = info
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
        if curve == Some(super::keys::SECP256R1) {
            let sk = p256::SecretKey::from_pkcs8_der(der_bytes)
                .map_err(|e| X509Error::Invalid(format!("bad P-256 key: {e}")))?;
            return Ok(ImportedKey::Ec {
                curve: EcCurve::P256,
                scalar: Zeroizing::new(sk.to_bytes().to_vec()),
                point: sk.public_key().to_sec1_bytes().to_vec(),
            });
        }
        if curve == Some(super::keys::SECP384R1) {
            let sk = p384::SecretKey::from_pkcs8_der(der_bytes)
                .map_err(|e| X509Error::Invalid(format!("bad P-384 key: {e}")))?;
            return Ok(ImportedKey::Ec {
                curve: EcCurve::P384,
                scalar: Zeroizing::new(sk.to_bytes().to_vec()),
                point: sk.public_key().to_sec1_bytes().to_vec(),
            });
        }
        return Err(X509Error::Refused(
            "the CA key must be on P-256 or P-384, or RSA".into(),
        ));
    }
    if oid == super::keys::RSA_ENCRYPTION {
        use rsa::traits::{PrivateKeyParts, PublicKeyParts};
        let sk = rsa::PrivateKey::from_pkcs8_der(der_bytes)
            .map_err(|e| X509Error::Invalid(format!("bad RSA key: {e}")))?;
        let bits = sk.n().bit_width() as usize;
        if bits < 2048 {
            return Err(X509Error::Refused(format!(
                "the CA key has {bits} bits; at least 2048 are required"
            )));
        }
        let primes = sk.primes();
        if primes.len() != 2 {
            return Err(X509Error::Refused(
                "multi-prime RSA keys are not supported".into(),
            ));
        }
        let (dp, dq, qinv) = match (sk.dp(), sk.dq(), sk.crt_coefficient()) {
            (Some(dp), Some(dq), Some(qinv)) => {
                (dp.to_be_bytes(), dq.to_be_bytes(), qinv.to_be_bytes())
            }
            _ => {
                return Err(X509Error::Invalid(
                    "the RSA key lacks its CRT parameters".into(),
                ));
            }
        };
        let mut private = Zeroizing::new(RsaPrivateParts::default());
        private.d = strip(&sk.d().to_be_bytes());
        private.p = strip(&primes[0].to_be_bytes());
        private.q = strip(&primes[1].to_be_bytes());
        private.dp = strip(&dp);
        private.dq = strip(&dq);
        private.qinv = strip(&qinv);
        return Ok(ImportedKey::Rsa {
            n: strip(&sk.n().to_be_bytes()),
            e: strip(&sk.e().to_be_bytes()),
            private,
        });
    }
    Err(X509Error::Refused(format!(
        "unsupported CA key algorithm {oid} (P-256, P-384 or RSA)"
    )))
}

fn pem_key(text: &[u8], password: Option<&str>) -> Result<ImportedKey, X509Error> {
    let text = std::str::from_utf8(text)
        .map_err(|_| X509Error::Invalid("the key file is not PEM text".into()))?;
    let (label, doc) = der::SecretDocument::from_pem(text)
        .map_err(|e| X509Error::Invalid(format!("the key file is not PEM: {e}")))?;
    match (label, password) {
        ("PRIVATE KEY", _) => from_pkcs8(doc.as_bytes()),
        ("ENCRYPTED PRIVATE KEY", Some(pw)) => {
            let enc = pkcs8::EncryptedPrivateKeyInfoRef::try_from(doc.as_bytes())
                .map_err(|e| X509Error::Invalid(format!("bad encrypted key: {e}")))?;
            let plain = enc.decrypt(pw).map_err(|_| {
                X509Error::Invalid(
                    "wrong password for the encrypted key (or unsupported cipher)".into(),
                )
            })?;
            from_pkcs8(plain.as_bytes())
        }
        ("ENCRYPTED PRIVATE KEY", None) => Err(X509Error::Invalid(
            "the key is encrypted: give its password".into(),
        )),
        (other, _) => Err(X509Error::Invalid(format!(
            "unsupported PEM key type {other:?}: convert it to PKCS#8 with \
             `openssl pkcs8 -topk8 -in KEY -out KEY.p8` (add -nocrypt for no password)"
        ))),
    }
}

/// Reads the CA certificate and its private key, and checks that they
/// belong together and that the certificate is a CA.
pub fn read_ca_keypair(src: CaKeypairFile<'_>) -> Result<(X509Cert, ImportedKey), X509Error> {
    let (cert, key) = match src {
        CaKeypairFile::Pkcs12 { data, password } => {
            let store = p12_keystore::KeyStore::from_pkcs12(
                data,
                password,
                p12_keystore::Pkcs12ImportPolicy::Strict,
            )
            .map_err(|e| {
                X509Error::Invalid(format!(
                    "cannot read the PKCS#12 file (wrong password, or not PKCS#12): {e}"
                ))
            })?;
            let (_, chain) = store.private_key_chain().ok_or_else(|| {
                X509Error::Invalid(
                    "the PKCS#12 file holds no private key with a certificate".into(),
                )
            })?;
            let leaf = chain
                .certs()
                .first()
                .ok_or_else(|| X509Error::Invalid("the PKCS#12 key has no certificate".into()))?;
            let cert = X509Cert::parse(leaf.as_der())?;
            (cert, from_pkcs8(chain.key().as_der())?)
        }
        CaKeypairFile::Pem {
            key,
            password,
            cert,
        } => (X509Cert::parse(cert)?, pem_key(key, password)?),
    };
    if !cert.has_key(&key.public_key())? {
        return Err(X509Error::Invalid(
            "the private key does not belong to the certificate".into(),
        ));
    }
    if !cert.is_ca() {
        return Err(X509Error::Refused(
            "the certificate is not a CA certificate (basicConstraints cA and keyCertSign)".into(),
        ));
    }
    Ok((cert, key))
}
