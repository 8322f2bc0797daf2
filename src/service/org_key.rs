//! Org key operations: generation in the token, summary, token check and the
//! raw token signing rate for benchmarks.

use super::{ServiceError, decode_id, load_signing_key, open_store, open_token};
use crate::clock::{Clock, unix_secs};
use crate::config::{Config, OrgKeyAlgorithm};
use crate::openpgp::{OrgKey, OrgKeyDraft, OrgKeyKeys};
use crate::signer::{DigestAlgorithm, EcCurve};
use crate::store::{AuditEvent, OrgKeyRecord};
use crate::task::TaskFailed;
use crate::token::{KeyKind, KeyObjectReport, KeyRole, KeySpec, KeyUsage, Token, TokenKey};
use secrecy::SecretString;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    /// Algorithm family.
    pub algorithm: OrgKeyAlgorithm,
    /// User ID of the org key.
    pub user_id: String,
    /// Validity from now; None never expires.
    pub validity: Option<Duration>,
    /// Replace an existing org key.
    pub replace: bool,
    /// Override the profile's exportable default.
    pub exportable: Option<bool>,
    /// The operator confirmed replacing an org key that certifies users.
    pub confirmed: bool,
    /// Audit actor.
    pub actor: String,
}

pub(super) fn kinds(alg: OrgKeyAlgorithm) -> (KeyKind, KeyKind, KeyUsage) {
    match alg {
        OrgKeyAlgorithm::P256 => (
            KeyKind::Ec(EcCurve::P256),
            KeyKind::Ec(EcCurve::P256),
            KeyUsage::Derive,
        ),
        OrgKeyAlgorithm::P384 => (
            KeyKind::Ec(EcCurve::P384),
            KeyKind::Ec(EcCurve::P384),
            KeyUsage::Derive,
        ),
        // No widely available PKCS#11 X25519 key generation: the encryption
        // subkey is ECDH P-256 (docs/decisions/0002-ed25519-encryption-subkey.md).
        OrgKeyAlgorithm::Ed25519 => (
            KeyKind::Ed25519,
            KeyKind::Ec(EcCurve::P256),
            KeyUsage::Derive,
        ),
        OrgKeyAlgorithm::Rsa3072 => (KeyKind::Rsa(3072), KeyKind::Rsa(3072), KeyUsage::Decrypt),
        OrgKeyAlgorithm::Rsa4096 => (KeyKind::Rsa(4096), KeyKind::Rsa(4096), KeyUsage::Decrypt),
    }
}

/// Destroys the key pairs made so far when dropped, unless disarmed.
struct Rollback<'a> {
    token: &'a Token,
    ids: Vec<Vec<u8>>,
}

impl Drop for Rollback<'_> {
    fn drop(&mut self) {
        for id in &self.ids {
            if let Err(e) = self.token.destroy_key_pair(id) {
                tracing::error!(error = %e, id = %hex::encode(id), "could not remove a half-made key pair");
            }
        }
    }
}

/// Generates the org key in the token, self-signs it there and records it.
/// On any failure the token objects made so far are destroyed.
pub async fn generate_org_key(
    cfg: &Config,
    passphrase: SecretString,
    req: GenerateRequest,
    clock: Arc<dyn Clock>,
) -> Result<OrgKeyRecord, ServiceError> {
    let profile = &cfg.token.profile;
    if !profile.supports(req.algorithm) {
        return Err(ServiceError::Refused(format!(
            "the {} profile does not support {} (supported: {})",
            profile.name,
            req.algorithm.name(),
            profile
                .algorithms
                .supported
                .iter()
                .map(|a| a.name())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let store = open_store(cfg, Arc::clone(&clock)).await?;
    if let Some(existing) = store.active_org_key().await?
        && !req.replace
    {
        return Err(ServiceError::Refused(format!(
            "an org key already exists ({}). Replacing it means every user certification and \
             every backup encrypted to it must be redone with the new key; if that is really \
             intended, run again with --replace",
            existing.fingerprint
        )));
    }
    let (active_users, _) = store.user_counts().await?;
    if req.replace && active_users > 0 && !req.confirmed {
        return Err(ServiceError::Refused(format!(
            "{active_users} users are certified by the current org key. Replacing it is rarely \
             right: until the next maintenance run re-certifies them with the new key, their keys \
             are unverified for everyone who trusts only the new one, and the old key's \
             certifications are left to expire. If that is intended, run again with --replace --yes"
        )));
    }
    // Profile data: a token that refuses CKA_WRAP_WITH_TRUSTED gets
    // non-exportable keys whatever was asked.
    let exportable = profile.keys.exportable_keys(req.exportable);
    let created = clock.now_secs();
    let request = req.clone();
    let (token, rec) =
        super::logged_in_token(cfg, passphrase, "generating the org key", move |token| {
            generate_in_token(token, &request, exportable, created)
        })
        .await?;

    let event = AuditEvent::new(&req.actor, "org-key-generate", "ok")
        .key(rec.0.fingerprint.clone())
        .detail(format!(
            "{} {:?}, {}{}",
            req.algorithm.name(),
            req.user_id,
            if exportable {
                "exportable under a trusted wrapping key"
            } else {
                "non-exportable"
            },
            if req.replace {
                ", replacing the previous org key"
            } else {
                ""
            }
        ));
    let (record, ids) = rec;
    let stored = store.insert_org_key(&record, req.replace, &event).await;
    let failed = stored.is_err();
    tokio::task::spawn_blocking(move || {
        if failed {
            // Not recorded: leave nothing behind in the token either.
            drop(Rollback { token: &token, ids });
        }
        let _ = token.logout();
    })
    .await
    .map_err(TaskFailed::doing("cleaning up the token"))?;
    store.close().await;
    stored?;
    Ok(record)
}

fn generate_in_token(
    token: &Arc<Token>,
    req: &GenerateRequest,
    exportable: bool,
    created: SystemTime,
) -> Result<(OrgKeyRecord, Vec<Vec<u8>>), ServiceError> {
    let (sign_kind, enc_kind, enc_usage) = kinds(req.algorithm);
    let mut rollback = Rollback {
        token,
        ids: Vec::new(),
    };
    let mut make = |kind, usage, label: &str| -> Result<TokenKey, ServiceError> {
        let k = token.generate_key_pair(&KeySpec {
            kind,
            usage,
            label: label.into(),
            exportable,
        })?;
        rollback.ids.push(k.id.clone());
        Ok(k)
    };
    let primary = make(sign_kind, KeyUsage::Sign, "orgkey certify")?;
    let signing = make(sign_kind, KeyUsage::Sign, "orgkey sign")?;
    let encryption = make(enc_kind, enc_usage, "orgkey encrypt")?;
    let primary_signer = token.signer(&primary.id, primary.public.clone(), "org key primary")?;
    let signing_signer = token.signer(&signing.id, signing.public.clone(), "org signing subkey")?;
    let draft = OrgKeyDraft {
        user_id: req.user_id.clone(),
        created,
        validity: req.validity,
    };
    let org = OrgKey::generate(
        &draft,
        OrgKeyKeys {
            primary: &primary_signer,
            signing: &signing_signer,
            encryption: &encryption.public,
        },
    )?;
    let t = unix_secs(created) as i64;
    let rec = OrgKeyRecord {
        fingerprint: org.fingerprint(),
        algorithm: req.algorithm.name().into(),
        user_id: req.user_id.clone(),
        cert: org.armored()?,
        primary_id: hex::encode(&primary.id),
        signing_id: hex::encode(&signing.id),
        encryption_id: hex::encode(&encryption.id),
        primary_created: t,
        signing_created: t,
        encryption_created: t,
        exportable,
        generated_at: t,
    };
    // Success: the caller owns the objects now (and removes them if the
    // store refuses the record).
    let ids = std::mem::take(&mut rollback.ids);
    Ok((rec, ids))
}

/// What `org-key show` prints.
#[derive(Debug, Clone)]
pub struct OrgKeySummary {
    /// The stored record.
    pub record: OrgKeyRecord,
    /// The parsed certificate.
    pub org: OrgKey,
    /// Expiry as of now.
    pub expires: Option<SystemTime>,
}

/// The active org key from the store (no token access needed).
pub async fn org_key_summary(
    cfg: &Config,
    clock: Arc<dyn Clock>,
) -> Result<Option<OrgKeySummary>, ServiceError> {
    let store = open_store(cfg, Arc::clone(&clock)).await?;
    let rec = store.active_org_key().await?;
    store.close().await;
    let Some(record) = rec else { return Ok(None) };
    let org = OrgKey::parse(record.cert.as_bytes())?;
    let expires = org.expires(clock.now())?;
    Ok(Some(OrgKeySummary {
        record,
        org,
        expires,
    }))
}

/// Result of `token check`.
#[derive(Debug)]
pub struct TokenCheck {
    /// Token label and serial.
    pub token: String,
    /// One report per private key object.
    pub objects: Vec<KeyObjectReport>,
}

/// Logs in and judges every private key object in the token.
pub async fn check_token(
    cfg: &Config,
    passphrase: SecretString,
    clock: Arc<dyn Clock>,
) -> Result<TokenCheck, ServiceError> {
    let store = open_store(cfg, clock).await?;
    let mut roles = Vec::new();
    for (id, role, _) in store.org_key_object_ids().await? {
        let role = match role {
            "certify" => KeyRole::Certify,
            "sign" => KeyRole::Sign,
            _ => KeyRole::Encrypt,
        };
        roles.push((decode_id(&id)?, role));
    }
    for (id, _) in store.org_cert_key_ids().await? {
        roles.push((decode_id(&id)?, KeyRole::Sign));
    }
    store.close().await;
    let cfg = cfg.clone();
    tokio::task::spawn_blocking(move || {
        let token = open_token(&cfg)?;
        token.login(&passphrase)?;
        let objects = token.inspect_private_keys(&roles);
        let _ = token.logout();
        let d = token.description();
        Ok(TokenCheck {
            token: format!("{:?} (serial {})", d.label, d.serial),
            objects: objects?,
        })
    })
    .await
    .map_err(TaskFailed::doing("checking the token"))?
}

/// Signs a fixed digest with the org signing subkey on one session for
/// `duration` and returns signatures per second: the raw token rate that
/// benchmarks compare the API against.
pub async fn bench_raw_sign(
    cfg: &Config,
    passphrase: SecretString,
    duration: Duration,
    clock: Arc<dyn Clock>,
) -> Result<(u64, Duration), ServiceError> {
    let store = open_store(cfg, clock).await?;
    let rec = store.active_org_key().await?.ok_or_else(|| {
        ServiceError::Refused("no org key: run `orgkey org-key generate` first".into())
    })?;
    store.close().await;
    let cfg = cfg.clone();
    tokio::task::spawn_blocking(move || {
        let token = Arc::new(open_token(&cfg)?);
        token.login(&passphrase)?;
        let key = load_signing_key(&token, &rec)?;
        let alg = match key.signer.public_key() {
            crate::signer::PublicKey::Ec {
                curve: EcCurve::P384,
                ..
            } => DigestAlgorithm::Sha384,
            _ => DigestAlgorithm::Sha256,
        };
        let digest = vec![0x5a; alg.output_len()];
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < duration {
            key.signer
                .sign_digest(alg, &digest)
                .map_err(|source| ServiceError::Signer {
                    context: "raw signing failed",
                    source,
                })?;
            n += 1;
        }
        let elapsed = start.elapsed();
        drop(key);
        let _ = token.logout();
        Ok((n, elapsed))
    })
    .await
    .map_err(TaskFailed::doing("signing in the token"))?
}
