//! The key backup file (docs/backup-format.md): three lines of UTF-8 text.
//!
//! ```text
//! orgkey-key-backup 1
//! {"created": ..., "org_key": {...}, "org_cert": {...}, "kdf": {...}, "keys": [...]}
//! mac <hex HMAC-SHA256 over the first two lines, each with its newline>
//! ```
//!
//! The wrapping key (32 bytes) and the MAC key (32 bytes) are the two halves
//! of Argon2id(backup passphrase, salt) with the parameters in the body, so a
//! wrong passphrase and a modified file look the same: the MAC fails, and
//! nothing is unwrapped.

use super::BackupError;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// First line.
pub const MAGIC: &str = "orgkey-key-backup";
/// Format version.
pub const VERSION: u32 = 1;

/// A 256-bit key that is wiped on drop.
pub type Key32 = Zeroizing<[u8; 32]>;

/// Argon2id parameters (stored in the file, covered by the MAC).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kdf {
    /// Always "argon2id".
    pub alg: String,
    /// Memory in KiB (at least 65536).
    pub m_kib: u32,
    /// Passes (at least 3).
    pub t: u32,
    /// Lanes.
    pub p: u32,
    /// Base64 salt (16 bytes).
    pub salt: String,
}

impl Kdf {
    /// Fresh parameters with a random salt.
    pub fn new() -> Kdf {
        let salt: [u8; 16] = rand::random();
        Kdf {
            alg: "argon2id".into(),
            m_kib: 64 * 1024,
            t: 3,
            p: 1,
            salt: B64.encode(salt),
        }
    }

    /// The wrapping key and the MAC key.
    pub fn derive(&self, passphrase: &SecretString) -> Result<(Key32, Key32), BackupError> {
        if self.alg != "argon2id" || self.m_kib < 64 * 1024 || self.t < 3 || self.p == 0 {
            return Err(BackupError::Format(format!(
                "key derivation {} m={} KiB t={} p={} is weaker than this version accepts",
                self.alg, self.m_kib, self.t, self.p
            )));
        }
        if self.m_kib > 4 * 1024 * 1024 || self.t > 100 || self.p > 16 {
            return Err(BackupError::Format(
                "key derivation parameters are unreasonably large".into(),
            ));
        }
        let salt = B64
            .decode(&self.salt)
            .map_err(|_| BackupError::Format("salt is not base64".into()))?;
        let params = argon2::Params::new(self.m_kib, self.t, self.p, Some(64))
            .map_err(|e| BackupError::Format(format!("key derivation parameters: {e}")))?;
        let argon =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut out = Zeroizing::new([0u8; 64]);
        argon
            .hash_password_into(passphrase.expose_secret().as_bytes(), &salt, out.as_mut())
            .map_err(|e| BackupError::Format(format!("key derivation: {e}")))?;
        let mut kek = Zeroizing::new([0u8; 32]);
        let mut mac = Zeroizing::new([0u8; 32]);
        kek.copy_from_slice(&out[..32]);
        mac.copy_from_slice(&out[32..]);
        Ok((kek, mac))
    }
}

impl Default for Kdf {
    fn default() -> Self {
        Self::new()
    }
}

/// A public key as stored in the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum StoredPublic {
    /// NIST curve.
    Ec {
        /// "p256" or "p384".
        curve: String,
        /// Hex uncompressed point.
        point: String,
    },
    /// Ed25519.
    Ed25519 {
        /// Hex 32 bytes.
        point: String,
    },
    /// RSA.
    Rsa {
        /// Hex modulus.
        n: String,
        /// Hex exponent.
        e: String,
    },
}

/// One wrapped private key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredKey {
    /// "certify", "sign", "encrypt" or "org-cert".
    pub role: String,
    /// Hex CKA_ID.
    pub id: String,
    /// "sign", "derive" or "decrypt".
    pub usage: String,
    /// CKA_LABEL.
    pub label: String,
    /// Key creation time (Unix seconds).
    pub created: i64,
    /// Extractable under a trusted wrapping key.
    pub exportable: bool,
    /// The public key.
    pub public: StoredPublic,
    /// Base64 RFC 5649 wrap of the PKCS#8 private key.
    pub blob: String,
}

/// The org key part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredOrgKey {
    /// Fingerprint.
    pub fingerprint: String,
    /// Algorithm name (p256, ...).
    pub algorithm: String,
    /// Primary user ID.
    pub user_id: String,
    /// Armored public certificate.
    pub cert: String,
}

/// The org cert part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredOrgCert {
    /// SHA-256 fingerprint.
    pub fingerprint: String,
    /// "self-signed", "ca-issued" or "imported".
    pub source: String,
    /// PEM certificate.
    pub cert: String,
    /// PEM chain.
    pub chain: String,
}

/// Everything between the magic line and the MAC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Body {
    /// Unix seconds.
    pub created: i64,
    /// Token it came from (label, serial).
    pub token: String,
    /// Wrapping mechanism.
    pub wrap: String,
    /// Key derivation.
    pub kdf: Kdf,
    /// The org key.
    pub org_key: StoredOrgKey,
    /// The active org cert, if any.
    pub org_cert: Option<StoredOrgCert>,
    /// Wrapped keys.
    pub keys: Vec<StoredKey>,
}

type HmacSha256 = Hmac<sha2::Sha256>;

fn mac_over(key: &[u8; 32], header: &str, body: &str) -> Result<HmacSha256, BackupError> {
    let mut m = <HmacSha256 as Mac>::new_from_slice(key)
        .map_err(|_| BackupError::Format("MAC key".into()))?;
    m.update(header.as_bytes());
    m.update(b"\n");
    m.update(body.as_bytes());
    m.update(b"\n");
    Ok(m)
}

/// Serializes and MACs a body.
pub fn write(body: &Body, mac_key: &[u8; 32]) -> Result<String, BackupError> {
    let header = format!("{MAGIC} {VERSION}");
    let json = serde_json::to_string(body).map_err(|e| BackupError::Format(e.to_string()))?;
    let mac = mac_over(mac_key, &header, &json)?.finalize().into_bytes();
    Ok(format!("{header}\n{json}\nmac {}\n", hex::encode(mac)))
}

/// A parsed, not yet authenticated backup file.
#[derive(Debug)]
pub struct Unverified {
    header: String,
    json: String,
    mac: Vec<u8>,
    /// The body, for `inspect` (not authenticated).
    pub body: Body,
}

/// Parses the three lines.
pub fn parse(text: &[u8]) -> Result<Unverified, BackupError> {
    let text = std::str::from_utf8(text)
        .map_err(|_| BackupError::Format("not an orgkey key backup (not UTF-8 text)".into()))?;
    let mut lines = text.split('\n');
    let header = lines.next().unwrap_or_default();
    let (magic, version) = header.split_once(' ').unwrap_or((header, ""));
    if magic != MAGIC {
        return Err(BackupError::Format("not an orgkey key backup".into()));
    }
    if version != VERSION.to_string() {
        return Err(BackupError::Format(format!(
            "key backup format version {version:?}; this orgkey reads version {VERSION}"
        )));
    }
    let json = lines
        .next()
        .ok_or_else(|| BackupError::Format("the key backup is truncated".into()))?;
    let mac_line = lines
        .next()
        .ok_or_else(|| BackupError::Format("the key backup is truncated (no MAC)".into()))?;
    let mac = mac_line
        .strip_prefix("mac ")
        .and_then(|h| hex::decode(h).ok())
        .filter(|m| m.len() == 32)
        .ok_or_else(|| {
            BackupError::Format("the key backup is truncated or its MAC line is damaged".into())
        })?;
    if lines.any(|l| !l.is_empty()) {
        return Err(BackupError::Format("unexpected data after the MAC".into()));
    }
    let body: Body = serde_json::from_str(json)
        .map_err(|e| BackupError::Format(format!("the key backup body is damaged: {e}")))?;
    Ok(Unverified {
        header: header.to_string(),
        json: json.to_string(),
        mac,
        body,
    })
}

impl Unverified {
    /// Derives the keys from `passphrase`, checks the MAC and returns the
    /// body and the wrapping key.
    pub fn open(
        self,
        passphrase: &SecretString,
    ) -> Result<(Body, Zeroizing<[u8; 32]>), BackupError> {
        let (kek, mac_key) = self.body.kdf.derive(passphrase)?;
        mac_over(&mac_key, &self.header, &self.json)?
            .verify_slice(&self.mac)
            .map_err(|_| BackupError::Authentication)?;
        Ok((self.body, kek))
    }
}
