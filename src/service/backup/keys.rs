//! The key backup ceremony: export (wrapped in the token) and restore into
//! another token, every key proven before anything is recorded.

use super::write_new_file_atomically;
use crate::backup::keyfile::{
    self, Body, Kdf, StoredKey, StoredOrgCert, StoredOrgKey, StoredPublic,
};
use crate::clock::{Clock, unix_secs};
use crate::config::profile::ProfileKeys;
use crate::config::{Config, OrgKeyAlgorithm};
use crate::openpgp::{OrgKey, decrypt_with_org_key, encrypt_to_org_key};
use crate::service::org_key::kinds;
use crate::service::{ServiceError, decode_id, open_store, open_token};
use crate::signer::{EcCurve, PublicKey, rsa_bits};
use crate::store::{AuditEvent, OrgCertRecord, OrgKeyRecord};
use crate::task::TaskFailed;
use crate::token::{KeyKind, KeyUsage, Token, UnwrapSpec};
use crate::x509::X509Cert;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use secrecy::SecretString;
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn stored_public(pk: &PublicKey) -> StoredPublic {
    match pk {
        PublicKey::Ec { curve, point } => StoredPublic::Ec {
            curve: match curve {
                EcCurve::P256 => "p256".into(),
                EcCurve::P384 => "p384".into(),
            },
            point: hex::encode(point),
        },
        PublicKey::Ed25519(a) => StoredPublic::Ed25519 {
            point: hex::encode(a),
        },
        PublicKey::Rsa { n, e } => StoredPublic::Rsa {
            n: hex::encode(n),
            e: hex::encode(e),
        },
    }
}

fn public_from_stored(s: &StoredPublic) -> Result<PublicKey, ServiceError> {
    let bad = || ServiceError::Refused("the backup holds a malformed public key".into());
    let h = |x: &str| hex::decode(x).map_err(|_| bad());
    Ok(match s {
        StoredPublic::Ec { curve, point } => PublicKey::Ec {
            curve: match curve.as_str() {
                "p256" => EcCurve::P256,
                "p384" => EcCurve::P384,
                _ => return Err(bad()),
            },
            point: h(point)?,
        },
        StoredPublic::Ed25519 { point } => {
            PublicKey::Ed25519(h(point)?.try_into().map_err(|_| bad())?)
        }
        StoredPublic::Rsa { n, e } => PublicKey::Rsa { n: h(n)?, e: h(e)? },
    })
}

fn kind_of(pk: &PublicKey) -> KeyKind {
    match pk {
        PublicKey::Ec { curve, .. } => KeyKind::Ec(*curve),
        PublicKey::Ed25519(_) => KeyKind::Ed25519,
        PublicKey::Rsa { n, .. } => KeyKind::Rsa(rsa_bits(n) as u32),
    }
}

fn usage_name(u: KeyUsage) -> &'static str {
    match u {
        KeyUsage::Sign => "sign",
        KeyUsage::Derive => "derive",
        KeyUsage::Decrypt => "decrypt",
    }
}

fn usage_from(s: &str) -> Result<KeyUsage, ServiceError> {
    match s {
        "sign" => Ok(KeyUsage::Sign),
        "derive" => Ok(KeyUsage::Derive),
        "decrypt" => Ok(KeyUsage::Decrypt),
        other => Err(ServiceError::Refused(format!(
            "unknown key usage {other:?} in the backup"
        ))),
    }
}

fn algorithm(name: &str) -> Result<OrgKeyAlgorithm, ServiceError> {
    OrgKeyAlgorithm::from_name(name)
        .ok_or_else(|| ServiceError::Refused(format!("unknown org key algorithm {name:?}")))
}

/// Secrets of the export ceremony.
pub struct ExportSecrets {
    /// The ignition passphrase (user PIN).
    pub ignition: SecretString,
    /// The security officer PIN (marks the wrapping key trusted).
    pub so_pin: SecretString,
    /// The backup passphrase the wrapping key is derived from.
    pub backup: SecretString,
}

/// What an export wrote.
#[derive(Debug, Clone)]
pub struct ExportReport {
    /// The file.
    pub path: PathBuf,
    /// Keys in it (role names).
    pub keys: Vec<String>,
}

/// `orgkey backup export-keys`.
pub async fn export_keys(
    cfg: &Config,
    secrets: ExportSecrets,
    out: Option<PathBuf>,
    actor: &str,
    clock: Arc<dyn Clock>,
) -> Result<ExportReport, ServiceError> {
    let store = open_store(cfg, Arc::clone(&clock)).await?;
    let rec = store
        .active_org_key()
        .await?
        .ok_or_else(|| ServiceError::Refused("no org key: nothing to back up".into()))?;
    let org_cert = store.active_org_cert().await?;
    let profile = &cfg.token.profile;
    let alg = algorithm(&rec.algorithm)?;
    let vendor = || profile.wrap.vendor_backup.clone();
    if !profile.wrap.supported {
        return Err(ServiceError::Refused(format!(
            "the {} token cannot export keys wrapped under a trusted key. Back the token up \
             with the vendor's scheme instead: {}",
            profile.name,
            vendor()
        )));
    }
    if profile.wrap.not_wrappable.contains(&alg) {
        return Err(ServiceError::Refused(format!(
            "the {} token cannot wrap {} keys (the org key is {}). Back the token up with the \
             vendor's scheme instead: {}",
            profile.name,
            alg.name(),
            alg.name(),
            vendor()
        )));
    }
    if !rec.exportable {
        return Err(ServiceError::Refused(format!(
            "the org key was generated non-exportable (CKA_EXTRACTABLE false); only the \
             vendor's backup scheme can copy it: {}",
            vendor()
        )));
    }
    let (_, _, enc_usage) = kinds(alg);
    let mut plan: Vec<(String, String, KeyUsage, String, i64)> = vec![
        (
            "certify".into(),
            rec.primary_id.clone(),
            KeyUsage::Sign,
            "orgkey certify".into(),
            rec.primary_created,
        ),
        (
            "sign".into(),
            rec.signing_id.clone(),
            KeyUsage::Sign,
            "orgkey sign".into(),
            rec.signing_created,
        ),
        (
            "encrypt".into(),
            rec.encryption_id.clone(),
            enc_usage,
            "orgkey encrypt".into(),
            rec.encryption_created,
        ),
    ];
    if let Some(c) = &org_cert {
        plan.push((
            "org-cert".into(),
            c.key_id.clone(),
            KeyUsage::Sign,
            "orgkey org cert".into(),
            c.created_at,
        ));
    }
    let kdf = Kdf::new();
    let backup_pass = secrets.backup.clone();
    let kdf_params = kdf.clone();
    let (kek, mac_key) = tokio::task::spawn_blocking(move || kdf_params.derive(&backup_pass))
        .await
        .map_err(TaskFailed::doing("deriving the backup wrapping key"))??;
    let token_cfg = cfg.clone();
    let ids: Vec<Vec<u8>> = plan
        .iter()
        .map(|(_, id, ..)| decode_id(id))
        .collect::<Result<_, _>>()?;
    let (wrapped, publics, token_name) =
        tokio::task::spawn_blocking(move || -> Result<_, ServiceError> {
            let token = open_token(&token_cfg)?;
            let mut publics = Vec::new();
            for id in &ids {
                publics.push(token.public_key(id, "backed-up key")?);
            }
            let wrapped = token
                .wrap_under_trusted_key(&secrets.so_pin, &secrets.ignition, &kek, &ids)
                .map_err(|e| {
                    if e.is_key_not_wrappable() {
                        ServiceError::Refused(
                            "the token refused to wrap a key (CKR_KEY_NOT_WRAPPABLE): it was not \
                             generated extractable-under-trusted-key, or this key type cannot be \
                             wrapped by this token; use the vendor's backup scheme"
                                .into(),
                        )
                    } else {
                        e.into()
                    }
                })?;
            let d = token.description();
            Ok((
                wrapped,
                publics,
                format!("{} (serial {})", d.label, d.serial),
            ))
        })
        .await
        .map_err(TaskFailed::doing("wrapping the keys"))??;
    let mut keys = Vec::new();
    for (((role, id, usage, label, created), w), public) in
        plan.into_iter().zip(wrapped).zip(publics)
    {
        keys.push(StoredKey {
            role,
            id,
            usage: usage_name(usage).into(),
            label,
            created,
            exportable: true,
            public: stored_public(&public),
            blob: B64.encode(&w.blob),
        });
    }
    let body = Body {
        created: unix_secs(clock.now()) as i64,
        token: token_name,
        wrap: "CKM_AES_KEY_WRAP_PAD".into(),
        kdf,
        org_key: StoredOrgKey {
            fingerprint: rec.fingerprint.clone(),
            algorithm: rec.algorithm.clone(),
            user_id: rec.user_id.clone(),
            cert: rec.cert.clone(),
        },
        org_cert: org_cert.map(|c| StoredOrgCert {
            fingerprint: c.fingerprint,
            source: c.source,
            cert: c.cert,
            chain: c.chain,
        }),
        keys,
    };
    let text = keyfile::write(&body, &mac_key)?;
    let path =
        out.unwrap_or_else(|| PathBuf::from(format!("orgkey-keys-{}.backup", rec.fingerprint)));
    write_new_file_atomically(&path, text.as_bytes())?;
    let roles: Vec<String> = body.keys.iter().map(|k| k.role.clone()).collect();
    let audit = store
        .append_audit(&[AuditEvent::new(actor, "key-backup-export", "ok")
            .key(rec.fingerprint.clone())
            .detail(format!(
                "{} keys ({}) to {}",
                roles.len(),
                roles.join(", "),
                path.display()
            ))])
        .await;
    if let Err(e) = audit {
        // No backup without its audit row.
        let _ = std::fs::remove_file(&path);
        return Err(e.into());
    }
    store.close().await;
    Ok(ExportReport { path, keys: roles })
}

/// `orgkey backup inspect`: what the file says (not authenticated).
pub fn inspect_key_backup(path: &Path) -> Result<Body, ServiceError> {
    let bytes =
        std::fs::read(path).map_err(ServiceError::io(format!("reading {}", path.display())))?;
    Ok(keyfile::parse(&bytes)?.body)
}

/// Destroys the key pairs created so far unless disarmed.
struct Created<'a> {
    token: &'a Token,
    ids: Vec<Vec<u8>>,
}

/// Logs the token out at the end of a restore; when recording the restore
/// in the store failed, the key pairs it created go first, so a failed
/// restore leaves nothing in the token.
async fn end_restore(token: Arc<Token>, ids: Vec<Vec<u8>>, failed: bool) -> Result<(), TaskFailed> {
    tokio::task::spawn_blocking(move || {
        if failed {
            drop(Created { token: &token, ids });
        }
        let _ = token.logout();
    })
    .await
    .map_err(TaskFailed::doing("cleaning up the token"))
}

impl Drop for Created<'_> {
    fn drop(&mut self) {
        for id in &self.ids {
            if let Err(e) = self.token.destroy_key_pair(id) {
                tracing::error!(error = %e, id = %hex::encode(id), "could not remove a restored key pair");
            }
        }
    }
}

/// Unwraps every key of `body` into the (logged-in) token and proves each
/// against the public certificates. On any failure nothing stays behind.
fn restore_into_token(
    token: &Arc<Token>,
    body: &Body,
    kek: &zeroize::Zeroizing<[u8; 32]>,
    keys: &ProfileKeys,
) -> Result<Vec<Vec<u8>>, ServiceError> {
    let org = OrgKey::parse(body.org_key.cert.as_bytes())?;
    if org.fingerprint() != body.org_key.fingerprint {
        return Err(ServiceError::Refused(
            "the backup's certificate does not match its fingerprint".into(),
        ));
    }
    let mut created = Created {
        token,
        ids: Vec::new(),
    };
    let mut unwrap_into_token = |role: &str| -> Result<(Vec<u8>, PublicKey), ServiceError> {
        let k = body
            .keys
            .iter()
            .find(|k| k.role == role)
            .ok_or_else(|| ServiceError::Refused(format!("the backup has no {role} key")))?;
        let id = decode_id(&k.id)?;
        if token.public_key(&id, "existing key").is_ok() {
            return Err(ServiceError::Refused(format!(
                "the token already holds a key with CKA_ID {} ({role}); restore into a token \
                 without these keys",
                k.id
            )));
        }
        let public = public_from_stored(&k.public)?;
        let blob = B64
            .decode(&k.blob)
            .map_err(|_| ServiceError::Refused("a wrapped key is not base64".into()))?;
        token
            .unwrap_key_pair(
                kek,
                &blob,
                &UnwrapSpec {
                    kind: kind_of(&public),
                    usage: usage_from(&k.usage)?,
                    id: &id,
                    label: &k.label,
                    // Exportable again where this token allows it.
                    exportable: keys.exportable_keys(Some(k.exportable)),
                    public: &public,
                },
            )
            .map_err(|source| ServiceError::Unwrap {
                role: role.to_string(),
                source,
            })?;
        created.ids.push(id.clone());
        Ok((id, public))
    };
    let (primary_id, primary) = unwrap_into_token("certify")?;
    let (signing_id, signing) = unwrap_into_token("sign")?;
    let (enc_id, encryption) = unwrap_into_token("encrypt")?;
    let org_cert_key = if body.org_cert.is_some() {
        Some(unwrap_into_token("org-cert")?)
    } else {
        None
    };
    // Proofs: the restored private keys are the ones the certificates name.
    org.check_token_keys(&primary, &signing, &encryption)?;
    let primary_signer = token.signer(&primary_id, primary, "restored org key primary")?;
    org.prove_signing_key(true, &primary_signer)?;
    let signing_signer = token.signer(&signing_id, signing, "restored org signing subkey")?;
    org.prove_signing_key(false, &signing_signer)?;
    let challenge: [u8; 32] = rand::random();
    let mut ciphertext = Vec::new();
    encrypt_to_org_key(&org, &[], &mut &challenge[..], &mut ciphertext)?;
    let decrypter = token.decrypter(&enc_id, encryption);
    let mut plain = Vec::new();
    decrypt_with_org_key(&org, &decrypter, &ciphertext[..], &mut plain)?;
    if plain != challenge {
        return Err(ServiceError::Refused(
            "the restored encryption subkey does not decrypt".into(),
        ));
    }
    if let (Some(c), Some((id, public))) = (&body.org_cert, org_cert_key) {
        let cert = X509Cert::parse(c.cert.as_bytes())?;
        let signer = token.signer(&id, public, "restored org cert key")?;
        cert.prove_key(&signer)?;
    }
    Ok(std::mem::take(&mut created.ids))
}

/// `backup restore-keys` of the org key the store already holds, into a
/// token that lacks it: a node that joined a cluster store (docs/cluster.md)
/// or an appliance whose token was replaced. The keys are unwrapped and
/// proven by signing, then checked against the stored org key record (the
/// key ids ignition will look up); the store gains only the audit row. A
/// token that holds the org key already is refused; on any failure nothing
/// stays in the token.
#[allow(clippy::too_many_arguments)]
async fn restore_into_joined_node(
    cfg: &Config,
    ignition: SecretString,
    store: &crate::store::Store,
    existing: &OrgKeyRecord,
    body: Body,
    kek: zeroize::Zeroizing<[u8; 32]>,
    path: &Path,
    actor: &str,
) -> Result<String, ServiceError> {
    let keys = cfg.token.profile.keys.clone();
    let rec = existing.clone();
    let (token, ids) =
        crate::service::logged_in_token(cfg, ignition, "restoring the keys", move |token| {
            let primary = decode_id(&rec.primary_id)?;
            match token.public_key(&primary, "org key primary") {
                Ok(_) => {
                    return Err(ServiceError::Refused(format!(
                        "this appliance already has org key {} in its token",
                        rec.fingerprint
                    )));
                }
                Err(crate::token::TokenError::KeyNotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
            let ids = restore_into_token(token, &body, &kek, &keys)?;
            // The restored keys are the ones the store names: ignition will
            // find them. Otherwise remove them again.
            if let Err(e) = crate::service::load_signing_key(token, &rec) {
                drop(Created {
                    token,
                    ids: ids.clone(),
                });
                return Err(e);
            }
            Ok(ids)
        })
        .await?;
    let event = AuditEvent::new(actor, "key-backup-restore", "ok")
        .key(existing.fingerprint.clone())
        .detail(format!(
            "the store's org key into node {:?}'s token, from {}",
            store.node(),
            path.display()
        ));
    let recorded = store.append_audit(&[event]).await;
    let failed = recorded.is_err();
    end_restore(token, ids, failed).await?;
    recorded?;
    Ok(existing.fingerprint.clone())
}

/// `orgkey backup restore-keys`.
pub async fn restore_keys(
    cfg: &Config,
    ignition: SecretString,
    backup_pass: SecretString,
    path: &Path,
    replace: bool,
    actor: &str,
    clock: Arc<dyn Clock>,
) -> Result<String, ServiceError> {
    let bytes =
        std::fs::read(path).map_err(ServiceError::io(format!("reading {}", path.display())))?;
    let unverified = keyfile::parse(&bytes)?;
    let (body, kek) = tokio::task::spawn_blocking(move || unverified.open(&backup_pass))
        .await
        .map_err(TaskFailed::doing("opening the key backup"))??;
    let store = open_store(cfg, Arc::clone(&clock)).await?;
    if let Some(existing) = store.active_org_key().await? {
        if existing.fingerprint == body.org_key.fingerprint {
            // The store has this org key; this node's token may not (a node
            // that joined a cluster store): bring it in, record nothing new.
            let joined =
                restore_into_joined_node(cfg, ignition, &store, &existing, body, kek, path, actor)
                    .await;
            store.close().await;
            return joined;
        }
        if !replace {
            return Err(ServiceError::Refused(format!(
                "this appliance has a different org key ({}); pass --replace to restore over it",
                existing.fingerprint
            )));
        }
    }
    // Everything the store records is made before the token is touched, so
    // nothing between the restore into the token and the one store
    // transaction can fail on its own.
    let key = |role: &str| body.keys.iter().find(|k| k.role == role);
    let (Some(p), Some(s), Some(e)) = (key("certify"), key("sign"), key("encrypt")) else {
        return Err(ServiceError::Refused(
            "the backup lacks org key parts".into(),
        ));
    };
    let rec = OrgKeyRecord {
        fingerprint: body.org_key.fingerprint.clone(),
        algorithm: body.org_key.algorithm.clone(),
        user_id: body.org_key.user_id.clone(),
        cert: body.org_key.cert.clone(),
        primary_id: p.id.clone(),
        signing_id: s.id.clone(),
        encryption_id: e.id.clone(),
        primary_created: p.created,
        signing_created: s.created,
        encryption_created: e.created,
        exportable: cfg.token.profile.keys.exportable_keys(Some(p.exportable)),
        generated_at: p.created,
    };
    let event = AuditEvent::new(actor, "key-backup-restore", "ok")
        .key(rec.fingerprint.clone())
        .detail(format!(
            "{} keys from {} (made on {})",
            body.keys.len(),
            path.display(),
            body.token
        ));
    let org_cert = match (&body.org_cert, key("org-cert")) {
        (Some(c), Some(k)) => {
            let cert = X509Cert::parse(c.cert.as_bytes())?;
            let oc = OrgCertRecord {
                fingerprint: c.fingerprint.clone(),
                org_key: rec.fingerprint.clone(),
                state: "active".into(),
                source: c.source.clone(),
                key_id: k.id.clone(),
                cert: c.cert.clone(),
                chain: c.chain.clone(),
                subject: cert.subject(),
                not_after: unix_secs(cert.not_after()) as i64,
                created_at: 0,
            };
            let ev = AuditEvent::new(actor, "org-cert-restore", "ok").key(oc.fingerprint.clone());
            Some((oc, ev))
        }
        // restore_into_token refuses an org cert without its key.
        _ => None,
    };
    let backup = body.clone();
    let keys = cfg.token.profile.keys.clone();
    let (token, ids) =
        crate::service::logged_in_token(cfg, ignition, "restoring the keys", move |token| {
            restore_into_token(token, &backup, &kek, &keys)
        })
        .await?;
    // One transaction: the org key and its org cert are recorded together
    // or not at all, and then the restored keys are removed again.
    let stored = store
        .insert_restored_org_key(
            &rec,
            replace,
            &event,
            org_cert.as_ref().map(|(oc, ev)| (oc, ev)),
        )
        .await
        .map_err(ServiceError::from);
    let failed = stored.is_err();
    end_restore(token, ids, failed).await?;
    store.close().await;
    stored?;
    Ok(rec.fingerprint)
}
