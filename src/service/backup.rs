//! Backup ceremonies and ignition recovery: key backup export (wrapped in
//! the token under an SO-trusted key derived from the backup passphrase),
//! restore into another token with proof, state backups encrypted to the
//! org key, and changing or resetting the ignition passphrase.

use super::org_key::kinds;
use super::{ServiceError, decode_id, open_store, open_token};
use crate::api::SigningKey;
use crate::backup::BackupError;
use crate::backup::keyfile::{
    self, Body, Kdf, StoredKey, StoredOrgCert, StoredOrgKey, StoredPublic,
};
use crate::clock::{Clock, unix_secs};
use crate::config::{Config, OrgKeyAlgorithm};
use crate::openpgp::{
    OrgKey, RecipientCert, SignedPlaintext, decrypt_signed_by_org_key, decrypt_with_org_key,
    encrypt_to_org_key, sign_and_encrypt_to_org_key,
};
use crate::signer::{EcCurve, PublicKey, rsa_bits};
use crate::store::{AuditEvent, OrgCertRecord, OrgKeyRecord, Store};
use crate::token::{KeyKind, KeyUsage, Token, UnwrapSpec};
use crate::x509::X509Cert;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use secrecy::SecretString;
use std::path::{Path, PathBuf};
use std::sync::Arc;

impl From<BackupError> for ServiceError {
    fn from(e: BackupError) -> Self {
        ServiceError::Refused(e.to_string())
    }
}

/// Writes `bytes` to `path` (mode 0600) without ever leaving a partial file
/// there, and without replacing an existing file.
pub(crate) fn write_new_file_atomically(path: &Path, bytes: &[u8]) -> Result<(), ServiceError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".orgkey-tmp-{}",
        hex::encode(rand::random::<[u8; 8]>())
    ));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        // hard_link fails if the target exists: no clobbering, no partial file.
        std::fs::hard_link(&tmp, path)
    })();
    let _ = std::fs::remove_file(&tmp);
    result.map_err(ServiceError::io(format!("writing {}", path.display())))
}

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
    let kdf2 = kdf.clone();
    let (kek, mac_key) = tokio::task::spawn_blocking(move || kdf2.derive(&backup_pass))
        .await
        .map_err(|e| ServiceError::Refused(format!("key derivation task failed: {e}")))??;
    let cfg2 = cfg.clone();
    let ids: Vec<Vec<u8>> = plan
        .iter()
        .map(|(_, id, ..)| decode_id(id))
        .collect::<Result<_, _>>()?;
    let (wrapped, publics, token_name) =
        tokio::task::spawn_blocking(move || -> Result<_, ServiceError> {
            let token = open_token(&cfg2)?;
            let mut publics = Vec::new();
            for id in &ids {
                publics.push(token.public_key(id, "backed-up key")?);
            }
            let wrapped = token
                .wrap_under_trusted_key(&secrets.so_pin, &secrets.ignition, &kek, &ids)
                .map_err(|e| match e {
                    crate::token::TokenError::Pkcs11 { code, .. }
                        if code == "CKR_KEY_NOT_WRAPPABLE" =>
                    {
                        ServiceError::Refused(
                            "the token refused to wrap a key (CKR_KEY_NOT_WRAPPABLE): it was not \
                         generated extractable-under-trusted-key, or this key type cannot be \
                         wrapped by this token; use the vendor's backup scheme"
                                .into(),
                        )
                    }
                    e => e.into(),
                })?;
            let d = token.description();
            Ok((
                wrapped,
                publics,
                format!("{} (serial {})", d.label, d.serial),
            ))
        })
        .await
        .map_err(|e| ServiceError::Refused(format!("token task failed: {e}")))??;
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
    let mut find = |role: &str| -> Result<(Vec<u8>, PublicKey), ServiceError> {
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
                    exportable: k.exportable,
                    public: &public,
                },
            )
            .map_err(|e| ServiceError::Refused(format!("unwrapping the {role} key failed: {e}")))?;
        created.ids.push(id.clone());
        Ok((id, public))
    };
    let (primary_id, primary) = find("certify")?;
    let (signing_id, signing) = find("sign")?;
    let (enc_id, encryption) = find("encrypt")?;
    let org_cert_key = if body.org_cert.is_some() {
        Some(find("org-cert")?)
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
        .map_err(|e| ServiceError::Refused(format!("key derivation task failed: {e}")))??;
    let store = open_store(cfg, Arc::clone(&clock)).await?;
    if let Some(existing) = store.active_org_key().await? {
        if existing.fingerprint == body.org_key.fingerprint {
            return Err(ServiceError::Refused(format!(
                "this appliance already has org key {}",
                existing.fingerprint
            )));
        }
        if !replace {
            return Err(ServiceError::Refused(format!(
                "this appliance has a different org key ({}); pass --replace to restore over it",
                existing.fingerprint
            )));
        }
    }
    let cfg2 = cfg.clone();
    let body2 = body.clone();
    let (token, ids) = tokio::task::spawn_blocking(move || -> Result<_, ServiceError> {
        let token = Arc::new(open_token(&cfg2)?);
        token.login(&ignition)?;
        match restore_into_token(&token, &body2, &kek) {
            Ok(ids) => Ok((token, ids)),
            Err(e) => {
                let _ = token.logout();
                Err(e)
            }
        }
    })
    .await
    .map_err(|e| ServiceError::Refused(format!("token task failed: {e}")))??;
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
        exportable: p.exportable,
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
    let mut stored = store
        .insert_org_key(&rec, replace, &event)
        .await
        .map_err(ServiceError::from);
    if stored.is_ok()
        && let (Some(c), Some(k)) = (&body.org_cert, key("org-cert"))
    {
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
        stored = store
            .insert_org_cert(
                &oc,
                true,
                &AuditEvent::new(actor, "org-cert-restore", "ok").key(oc.fingerprint.clone()),
            )
            .await
            .map_err(ServiceError::from);
    }
    let failed = stored.is_err();
    tokio::task::spawn_blocking(move || {
        if failed {
            drop(Created { token: &token, ids });
        }
        let _ = token.logout();
    })
    .await
    .map_err(|e| ServiceError::Refused(format!("cleanup task failed: {e}")))?;
    store.close().await;
    stored?;
    Ok(rec.fingerprint)
}

fn extra_recipients(cfg: &Config) -> Result<Vec<RecipientCert>, ServiceError> {
    cfg.backup
        .recipients
        .iter()
        .map(|p| {
            let bytes =
                std::fs::read(p).map_err(ServiceError::io(format!("reading {}", p.display())))?;
            RecipientCert::parse(&bytes).map_err(|e| {
                ServiceError::Refused(format!("[backup] recipient {}: {e}", p.display()))
            })
        })
        .collect()
}

/// Removes a plaintext snapshot (and any SQLite side files) whatever happens.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        for suffix in ["-wal", "-shm", "-journal"] {
            let mut side = self.0.clone().into_os_string();
            side.push(suffix);
            let _ = std::fs::remove_file(side);
        }
    }
}

fn temp_path(dir: &Path, what: &str) -> PathBuf {
    dir.join(format!(
        ".orgkey-{what}-{}",
        hex::encode(rand::random::<[u8; 8]>())
    ))
}

/// Writes a state backup of `store` to `out` (which must not exist): a
/// consistent snapshot, signed by the org signing subkey in the token (`key`,
/// ignited) and encrypted to the org key, streamed. Returns the plaintext
/// size.
///
/// The backup's audit row is appended before the snapshot is taken, so the
/// backup holds its own row: restoring the newest backup over the store it
/// came from discards nothing (the restore's chain check sees no rollback).
/// A backup that fails afterwards gets a `failed` row.
pub(crate) async fn write_state_backup(
    cfg: &Config,
    store: &Store,
    out: &Path,
    actor: &str,
    key: &SigningKey,
) -> Result<u64, ServiceError> {
    let rec = store
        .active_org_key()
        .await?
        .ok_or_else(|| ServiceError::Refused("no org key to encrypt the backup to".into()))?;
    if rec.fingerprint != key.org.fingerprint() {
        return Err(ServiceError::Refused(
            "the org key changed since ignition; ignite again before backing up".into(),
        ));
    }
    if out.exists() {
        return Err(ServiceError::Refused(format!(
            "{} exists already; state backups never overwrite a file",
            out.display()
        )));
    }
    // The stored certificate is the newest (renewed) one of the same keys.
    let org = OrgKey::parse(rec.cert.as_bytes())?;
    let extra = extra_recipients(cfg)?;
    store
        .append_audit(&[AuditEvent::new(actor, "state-backup", "snapshot")
            .key(rec.fingerprint.clone())
            .detail(format!(
                "to {}, signed by {}",
                out.display(),
                key.org.signing_subkey().fingerprint
            ))])
        .await?;
    let written = write_signed_snapshot(store, out, org, extra, key, &cfg.data_dir).await;
    if let Err(e) = &written {
        // `out` is created by the last step only: nothing to remove.
        let _ = store
            .append_audit(&[AuditEvent::new(actor, "state-backup", "failed")
                .key(rec.fingerprint.clone())
                .detail(e.to_string())])
            .await;
    }
    written
}

async fn write_signed_snapshot(
    store: &Store,
    out: &Path,
    org: OrgKey,
    extra: Vec<RecipientCert>,
    key: &SigningKey,
    scratch: &Path,
) -> Result<u64, ServiceError> {
    let snapshot = TempFile(temp_path(scratch, "snapshot"));
    store.snapshot_to(&snapshot.0).await?;
    let out_tmp = TempFile(temp_path(out.parent().unwrap_or(Path::new(".")), "backup"));
    let snap = snapshot.0.clone();
    let tmp = out_tmp.0.clone();
    let signer = Arc::clone(&key.signer);
    let now = store.clock().now_secs();
    let size = tokio::task::spawn_blocking(move || -> Result<u64, ServiceError> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut input = std::io::BufReader::new(
            std::fs::File::open(&snap).map_err(ServiceError::io("reading the snapshot"))?,
        );
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(ServiceError::io(format!("creating {}", tmp.display())))?;
        let mut writer = std::io::BufWriter::new(file);
        let n = sign_and_encrypt_to_org_key(
            &org,
            signer.as_ref(),
            &extra,
            &mut input,
            &mut writer,
            now,
        )?;
        let file = writer
            .into_inner()
            .map_err(|e| ServiceError::Refused(format!("writing the backup: {e}")))?;
        file.sync_all()
            .map_err(ServiceError::io("syncing the backup"))?;
        Ok(n)
    })
    .await
    .map_err(|e| ServiceError::Refused(format!("backup task failed: {e}")))??;
    std::fs::hard_link(&out_tmp.0, out)
        .map_err(ServiceError::io(format!("writing {}", out.display())))?;
    Ok(size)
}

/// `orgkey backup state`: logs in with the ignition passphrase (the backup
/// is signed by the org signing subkey in the token).
pub async fn backup_state(
    cfg: &Config,
    ignition: SecretString,
    out: &Path,
    actor: &str,
    clock: Arc<dyn Clock>,
) -> Result<u64, ServiceError> {
    let store = open_store(cfg, clock).await?;
    let result = async {
        let rec = store.active_org_key().await?.ok_or_else(|| {
            ServiceError::Refused("no org key: generate or restore one first".into())
        })?;
        let cfg2 = cfg.clone();
        let (token, key) = tokio::task::spawn_blocking(move || -> Result<_, ServiceError> {
            let token = Arc::new(open_token(&cfg2)?);
            token.login(&ignition)?;
            match super::load_signing_key(&token, &rec) {
                Ok(key) => Ok((token, key)),
                Err(e) => {
                    let _ = token.logout();
                    Err(e)
                }
            }
        })
        .await
        .map_err(|e| ServiceError::Refused(format!("token task failed: {e}")))??;
        let r = write_state_backup(cfg, &store, out, actor, &key).await;
        drop(key);
        let _ = tokio::task::spawn_blocking(move || token.logout()).await;
        r
    }
    .await;
    store.close().await;
    result
}

/// How a backup's audit chain relates to the chain of the store it replaces.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ChainRelation {
    /// The backup's chain contains every row of the current one (or the
    /// current store has no rows): nothing recorded is lost.
    Extends,
    /// The backup's chain is an older part of the current one: rows
    /// `from..=to` of the current chain would be lost (a rollback).
    Older { from: i64, to: i64, tip: String },
    /// The chains do not share their history.
    Unrelated { rows: i64, tip: String },
}

async fn chain_relation(current: &Store, restored: &Store) -> Result<ChainRelation, ServiceError> {
    let Some((c_seq, c_hash)) = current.audit_tip().await? else {
        return Ok(ChainRelation::Extends);
    };
    if restored.audit_hash_at(c_seq).await?.as_deref() == Some(c_hash.as_str()) {
        return Ok(ChainRelation::Extends);
    }
    let b_tip = restored.audit_tip().await?;
    if let Some((b_seq, b_hash)) = &b_tip
        && current.audit_hash_at(*b_seq).await?.as_deref() == Some(b_hash.as_str())
    {
        return Ok(ChainRelation::Older {
            from: b_seq + 1,
            to: c_seq,
            tip: c_hash,
        });
    }
    Ok(ChainRelation::Unrelated {
        rows: c_seq,
        tip: c_hash,
    })
}

/// How `backup restore-state` may replace the store.
#[derive(Debug, Clone, Copy, Default)]
pub struct RestoreStateOptions {
    /// Replace a store that holds users, certificates or clients.
    pub replace: bool,
    /// Accept a backup whose audit chain does not contain every row of the
    /// store it replaces (an older backup of this store, or a store with
    /// another history): those rows are discarded, and the restore's audit
    /// row records the discarded chain's last row.
    pub allow_rollback: bool,
}

/// What `backup restore-state` did.
#[derive(Debug, Clone)]
pub struct RestoreStateReport {
    /// Plaintext bytes restored.
    pub bytes: u64,
    /// When the org key signed the backup.
    pub signed_at: std::time::SystemTime,
    /// Audit rows of the current store that the restore discarded (a
    /// rollback the operator allowed, or a fresh store's setup rows).
    pub discarded: Option<String>,
}

/// `orgkey backup restore-state`: decrypts through the token, accepts the
/// backup only if the org signing subkey signed it, checks its audit chain
/// against the store's, and replaces the store (the server must be
/// stopped).
pub async fn restore_state(
    cfg: &Config,
    ignition: SecretString,
    input: &Path,
    options: RestoreStateOptions,
    actor: &str,
    clock: Arc<dyn Clock>,
) -> Result<RestoreStateReport, ServiceError> {
    let current = open_store(cfg, Arc::clone(&clock)).await?;
    let result = restore_state_over(cfg, &current, ignition, input, options, actor, &clock).await;
    current.close().await;
    let (plain, report) = result?;
    // Nothing was replaced until here; now in one rename.
    let db = &cfg.store.sqlite;
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    std::fs::rename(&plain.0, db)
        .map_err(ServiceError::io(format!("replacing {}", db.display())))?;
    Ok(report)
}

async fn restore_state_over(
    cfg: &Config,
    current: &Store,
    ignition: SecretString,
    input: &Path,
    options: RestoreStateOptions,
    actor: &str,
    clock: &Arc<dyn Clock>,
) -> Result<(TempFile, RestoreStateReport), ServiceError> {
    let rec = current.active_org_key().await?.ok_or_else(|| {
        ServiceError::Refused(
            "this appliance has no org key to decrypt with: restore the key backup first \
             (orgkey backup restore-keys)"
                .into(),
        )
    })?;
    let has_state = current.has_state().await?;
    if has_state && !options.replace {
        return Err(ServiceError::Refused(
            "the store already holds users, certificates or clients; pass --replace to \
             overwrite it with the backup"
                .into(),
        ));
    }
    let org = OrgKey::parse(rec.cert.as_bytes())?;
    let plain = TempFile(temp_path(&cfg.data_dir, "restore"));
    let cfg2 = cfg.clone();
    let input2 = input.to_path_buf();
    let dest = plain.0.clone();
    let enc_id = decode_id(&rec.encryption_id)?;
    let signed = tokio::task::spawn_blocking(move || -> Result<SignedPlaintext, ServiceError> {
        use std::os::unix::fs::OpenOptionsExt;
        let token = Arc::new(open_token(&cfg2)?);
        token.login(&ignition)?;
        let result = (|| {
            let public = token.public_key(&enc_id, "org encryption subkey")?;
            let decrypter = token.decrypter(&enc_id, public);
            let reader = std::io::BufReader::new(
                std::fs::File::open(&input2)
                    .map_err(ServiceError::io(format!("reading {}", input2.display())))?,
            );
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&dest)
                .map_err(ServiceError::io("creating the restored store"))?;
            let mut writer = std::io::BufWriter::new(file);
            let signed =
                decrypt_signed_by_org_key(&org, &decrypter, reader, &mut writer).map_err(|e| {
                    ServiceError::Refused(format!(
                        "the state backup is not a backup this org key made and signed: {e}"
                    ))
                })?;
            let file = writer
                .into_inner()
                .map_err(|e| ServiceError::Refused(format!("writing the restored store: {e}")))?;
            file.sync_all()
                .map_err(ServiceError::io("syncing the restored store"))?;
            Ok(signed)
        })();
        let _ = token.logout();
        result
    })
    .await
    .map_err(|e| ServiceError::Refused(format!("restore task failed: {e}")))??;
    // From here on the bytes are the org key's own: open them as a store.
    let restored = Store::open(&plain.0, false, Arc::clone(clock)).await?;
    let checked = async {
        let check = restored.verify_audit().await?;
        if let Some((seq, why)) = check.first_broken {
            return Err(ServiceError::Refused(format!(
                "the backup's audit chain is broken at row {seq}: {why}"
            )));
        }
        let restored_key = restored.active_org_key().await?;
        if restored_key.map(|k| k.fingerprint) != Some(rec.fingerprint.clone()) {
            return Err(ServiceError::Refused(
                "the backup is of a store with another org key".into(),
            ));
        }
        let relation = chain_relation(current, &restored).await?;
        let discarded = match &relation {
            ChainRelation::Extends => None,
            ChainRelation::Older { from, to, tip } => {
                if !options.allow_rollback {
                    return Err(ServiceError::Refused(format!(
                        "the backup is older than this store: restoring it would discard audit \
                         rows {from} to {to} and everything they record. Pass --allow-rollback \
                         to do that anyway (the restore's audit row records what was discarded)"
                    )));
                }
                Some(format!(
                    "rollback allowed by the operator: rows {from}..{to} discarded (last hash {tip})"
                ))
            }
            ChainRelation::Unrelated { rows, tip } => {
                if has_state && !options.allow_rollback {
                    return Err(ServiceError::Refused(format!(
                        "the backup's audit chain does not continue this store's ({rows} rows, \
                         which hold users, certificates or clients). Pass --allow-rollback to \
                         discard this store's history anyway (recorded in the audit)"
                    )));
                }
                Some(format!(
                    "replaced a store with another history: {rows} rows discarded (last hash {tip})"
                ))
            }
        };
        let mut detail = format!(
            "{} bytes from {}, signed {}",
            signed.bytes,
            input.display(),
            humantime::format_rfc3339_seconds(signed.signed_at)
        );
        if let Some(d) = &discarded {
            detail.push_str("; ");
            detail.push_str(d);
        }
        // The restore's own row goes into the restored chain before it
        // replaces anything.
        restored
            .append_audit(&[AuditEvent::new(actor, "state-restore", "ok")
                .key(rec.fingerprint.clone())
                .detail(detail)])
            .await?;
        Ok(RestoreStateReport {
            bytes: signed.bytes,
            signed_at: signed.signed_at,
            discarded,
        })
    }
    .await;
    let checkpointed = match &checked {
        Ok(_) => restored.checkpoint().await.map_err(ServiceError::from),
        Err(_) => Ok(()),
    };
    restored.close().await;
    let report = checked?;
    checkpointed?;
    Ok((plain, report))
}

/// Runs a PIN operation on the token and audits it as `operation`, whether
/// it worked or not.
async fn audited_pin_change(
    cfg: &Config,
    operation: &str,
    actor: &str,
    clock: Arc<dyn Clock>,
    op: impl FnOnce(&crate::token::Token) -> Result<(), crate::token::TokenError> + Send + 'static,
) -> Result<(), ServiceError> {
    let store = open_store(cfg, clock).await?;
    let cfg2 = cfg.clone();
    let res = tokio::task::spawn_blocking(move || -> Result<(), ServiceError> {
        Ok(op(&open_token(&cfg2)?)?)
    })
    .await
    .map_err(|e| ServiceError::Refused(format!("token task failed: {e}")))?;
    let mut ev = AuditEvent::new(actor, operation, if res.is_ok() { "ok" } else { "failed" });
    if let Err(e) = &res {
        ev = ev.detail(e.to_string());
    }
    store.append_audit(&[ev]).await?;
    store.close().await;
    res
}

/// `orgkey ignition change`.
pub async fn change_ignition(
    cfg: &Config,
    old: SecretString,
    new: SecretString,
    actor: &str,
    clock: Arc<dyn Clock>,
) -> Result<(), ServiceError> {
    audited_pin_change(cfg, "ignition-change", actor, clock, move |t| {
        t.change_user_pin(&old, &new)
    })
    .await
}

/// `orgkey ignition reset` (security officer).
pub async fn reset_ignition(
    cfg: &Config,
    so_pin: SecretString,
    new: SecretString,
    actor: &str,
    clock: Arc<dyn Clock>,
) -> Result<(), ServiceError> {
    audited_pin_change(cfg, "ignition-reset", actor, clock, move |t| {
        t.reset_user_pin(&so_pin, &new)
    })
    .await
}

/// While sealed, a due scheduled backup is retried this often (it needs the
/// org signing subkey, which only an ignited appliance can use).
const SEALED_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

/// Scheduled state backups inside `orgkey serve`: one as soon as the
/// appliance is ignited with an org key, then every interval; keeps the
/// newest `keep` files. Backups are signed in the token, so while sealed a
/// due backup waits (reported as skipped) until ignition.
pub(super) async fn schedule_state_backups(
    cfg: Config,
    state: Arc<crate::api::ApiState>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let Some(interval) = cfg.backup.interval else {
        return;
    };
    loop {
        if *stop.borrow() {
            break;
        }
        let key = match state.seal_state() {
            crate::api::SealState::Ignited(Some(k)) if !state.is_token_down() => Some(k),
            _ => None,
        };
        let result = match &key {
            Some(k) => Some(scheduled_backup(&cfg, &state.store, k).await),
            None => None,
        };
        let report = match result {
            None => serde_json::json!({
                "outcome": "skipped",
                "reason": "waiting for an ignited org key (state backups are signed in the token)",
                "at": unix_secs(state.clock.now()),
            }),
            Some(Ok((path, size))) => {
                tracing::info!(file = %path.display(), size, "state backup written");
                serde_json::json!({
                    "outcome": "ok",
                    "file": path.display().to_string(),
                    "bytes": size,
                    "at": unix_secs(state.clock.now()),
                })
            }
            Some(Err(e)) => {
                tracing::error!(error = %e, "scheduled state backup FAILED");
                serde_json::json!({
                    "outcome": "failed",
                    "error": e.to_string(),
                    "at": unix_secs(state.clock.now()),
                })
            }
        };
        state.set_backup_report(report);
        let wait = if key.is_some() {
            interval
        } else {
            SEALED_RETRY
        };
        tokio::select! {
            _ = stop.changed() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}

async fn scheduled_backup(
    cfg: &Config,
    store: &Store,
    key: &SigningKey,
) -> Result<(PathBuf, u64), ServiceError> {
    let dir = &cfg.backup.dir;
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(ServiceError::io(format!("creating {}", dir.display())))?;
    }
    let stamp = humantime::format_rfc3339_seconds(store.clock().now())
        .to_string()
        .replace([':', '-'], "");
    let path = dir.join(format!("orgkey-state-{stamp}.pgp"));
    let size = write_state_backup(cfg, store, &path, "appliance", key).await?;
    // Keep the newest `keep` scheduled backups (names sort by time).
    let mut ours: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(ServiceError::io(format!("listing {}", dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("orgkey-state-") && n.ends_with(".pgp"))
        })
        .collect();
    ours.sort();
    let excess = ours.len().saturating_sub(cfg.backup.keep);
    for old in &ours[..excess] {
        if let Err(e) = std::fs::remove_file(old) {
            tracing::warn!(file = %old.display(), error = %e, "could not remove an old state backup");
        }
    }
    Ok((path, size))
}
