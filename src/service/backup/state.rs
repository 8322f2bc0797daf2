//! State backups: a snapshot of the store, signed by the org signing subkey
//! in the token and encrypted to the org key; a restore accepts only what
//! the org key signed, with an audit chain that continues the store's.

use crate::api::SigningKey;
use crate::clock::Clock;
use crate::config::Config;
use crate::openpgp::{
    OrgKey, RecipientCert, SignedPlaintext, decrypt_signed_by_org_key, sign_and_encrypt_to_org_key,
};
use crate::service::{ServiceError, decode_id, open_store, open_token};
use crate::store::{AuditEvent, Backend, Store};
use crate::task::TaskFailed;
use secrecy::SecretString;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
            .map_err(|e| ServiceError::io("writing the backup")(e.into_error()))?;
        file.sync_all()
            .map_err(ServiceError::io("syncing the backup"))?;
        Ok(n)
    })
    .await
    .map_err(TaskFailed::doing("writing the state backup"))??;
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
        let (token, key) =
            crate::service::logged_in_token(cfg, ignition, "loading the org key", move |token| {
                crate::service::load_signing_key(token, &rec)
            })
            .await?;
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
    let backend = current.backend();
    let result = restore_state_over(cfg, &current, ignition, input, options, actor, &clock).await;
    current.close().await;
    let (restored_db, _plain, report) = result?;
    if backend == Backend::Postgres {
        // Loaded into the database in one transaction already.
        return Ok(report);
    }
    // Nothing was replaced until here; now in one rename.
    let db = &cfg.store.sqlite;
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    std::fs::rename(&restored_db.0, db)
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
) -> Result<(TempFile, Option<TempFile>, RestoreStateReport), ServiceError> {
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
    let token_cfg = cfg.clone();
    let backup = input.to_path_buf();
    let dest = plain.0.clone();
    let enc_id = decode_id(&rec.encryption_id)?;
    let signed = tokio::task::spawn_blocking(move || -> Result<SignedPlaintext, ServiceError> {
        use std::os::unix::fs::OpenOptionsExt;
        let token = Arc::new(open_token(&token_cfg)?);
        token.login(&ignition)?;
        let result = (|| {
            let public = token.public_key(&enc_id, "org encryption subkey")?;
            let decrypter = token.decrypter(&enc_id, public);
            let reader = std::io::BufReader::new(
                std::fs::File::open(&backup)
                    .map_err(ServiceError::io(format!("reading {}", backup.display())))?,
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
                .map_err(|e| ServiceError::io("writing the restored store")(e.into_error()))?;
            file.sync_all()
                .map_err(ServiceError::io("syncing the restored store"))?;
            Ok(signed)
        })();
        let _ = token.logout();
        result
    })
    .await
    .map_err(TaskFailed::doing("decrypting the state backup"))??;
    // From here on the bytes are the org key's own: open them as a store.
    // A logical snapshot (a PostgreSQL store's backup) is loaded into a
    // SQLite store of its own first, so the checks below are the same for
    // both kinds.
    let (db_file, plain) = if starts_logical_snapshot(&plain.0)? {
        let db_file = TempFile(temp_path(&cfg.data_dir, "restore-db"));
        let fresh = Store::open(&db_file.0, true, Arc::clone(clock)).await?;
        let loaded = load_snapshot_file(&fresh, &plain.0).await;
        fresh.close().await;
        loaded?;
        (db_file, Some(plain))
    } else {
        (plain, None)
    };
    let restored = Store::open(&db_file.0, false, Arc::clone(clock))
        .await?
        .with_node(&cfg.node_id);
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
        Ok(_) => match current.backend() {
            Backend::Sqlite => restored.checkpoint().await.map_err(ServiceError::from),
            // The checked store, its restore row included, replaces the
            // database's rows in one transaction.
            Backend::Postgres => copy_store(&restored, current, &cfg.data_dir).await,
        },
        Err(_) => Ok(()),
    };
    restored.close().await;
    let report = checked?;
    checkpointed?;
    Ok((db_file, plain, report))
}

/// Whether the file at `path` holds a logical snapshot (else a SQLite
/// database file).
fn starts_logical_snapshot(path: &Path) -> Result<bool, ServiceError> {
    use std::io::Read;
    let mut head = [0u8; 128];
    let mut f =
        std::fs::File::open(path).map_err(ServiceError::io("reading the restored store"))?;
    let n = f
        .read(&mut head)
        .map_err(ServiceError::io("reading the restored store"))?;
    Ok(crate::store::is_logical_snapshot(&head[..n]))
}

async fn load_snapshot_file(store: &Store, path: &Path) -> Result<u64, ServiceError> {
    let file = std::fs::File::open(path).map_err(ServiceError::io("reading the snapshot"))?;
    let mut reader = std::io::BufReader::new(file);
    Ok(store.load_logical_snapshot(&mut reader, true).await?)
}

/// Replaces every row of `to` with the rows of `from`, through a logical
/// snapshot in a temp file in `scratch` (removed afterwards).
async fn copy_store(from: &Store, to: &Store, scratch: &Path) -> Result<(), ServiceError> {
    let tmp = TempFile(temp_path(scratch, "copy"));
    {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp.0)
            .map_err(ServiceError::io("writing the snapshot"))?;
        let mut out = std::io::BufWriter::new(file);
        from.write_logical_snapshot(&mut out).await?;
        std::io::Write::flush(&mut out).map_err(ServiceError::io("writing the snapshot"))?;
    }
    load_snapshot_file(to, &tmp.0).await?;
    Ok(())
}
