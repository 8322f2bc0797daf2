//! Org cert operations: a self-signed CA, a CSR for an external CA and the
//! import of its answer, the import of an existing internal root CA keypair
//! into the token, and loading the org cert keys at ignition.

use super::{ServiceError, decode_id, open_store, open_token};
use crate::ca::{CaSet, LoadedCa};
use crate::clock::{Clock, unix_secs};
use crate::config::{Config, OrgKeyAlgorithm};
use crate::openpgp::OrgKey;
use crate::signer::EcCurve;
use crate::store::{AuditEvent, OrgCertRecord, OrgCertRequestRecord, Store};
use crate::task::TaskFailed;
use crate::token::{KeyKind, KeySpec, KeyUsage, Token};
use crate::x509::{
    CaKeypairFile, X509Cert, org_cert_request, read_ca_keypair, self_signed_org_cert,
};
use secrecy::SecretString;
use std::sync::Arc;
use std::time::Duration;

/// Validity of a self-signed org cert when the org key never expires.
const NEVER_EXPIRING_ORG_KEY_CA_VALIDITY: Duration =
    Duration::from_secs(10 * 365 * 86_400 + 2 * 86_400);

/// Loads the key of every live org cert from the (logged-in) token and
/// checks that each certificate is for its key. Blocking.
pub(crate) fn load_cas(
    token: &Arc<Token>,
    records: Vec<OrgCertRecord>,
) -> Result<CaSet, ServiceError> {
    let mut cas = Vec::with_capacity(records.len());
    for rec in records {
        let cert = X509Cert::parse(rec.cert.as_bytes())?;
        let chain = if rec.chain.trim().is_empty() {
            Vec::new()
        } else {
            X509Cert::parse_chain(rec.chain.as_bytes())?
        };
        let id = decode_id(&rec.key_id)?;
        let public = token.public_key(&id, "org cert key")?;
        if !cert.has_key(&public)? {
            return Err(ServiceError::KeyMismatch(format!(
                "the token's org cert key {} is not the key of org cert {}",
                rec.key_id, rec.fingerprint
            )));
        }
        let signer = token.signer(&id, public, "org cert key")?;
        cas.push(Arc::new(LoadedCa {
            record: rec,
            cert,
            chain,
            signer: Arc::new(signer),
        }));
    }
    Ok(CaSet { cas })
}

fn kind_for(alg: OrgKeyAlgorithm) -> Result<KeyKind, ServiceError> {
    match alg {
        OrgKeyAlgorithm::P256 => Ok(KeyKind::Ec(EcCurve::P256)),
        OrgKeyAlgorithm::P384 => Ok(KeyKind::Ec(EcCurve::P384)),
        OrgKeyAlgorithm::Rsa3072 => Ok(KeyKind::Rsa(3072)),
        OrgKeyAlgorithm::Rsa4096 => Ok(KeyKind::Rsa(4096)),
        OrgKeyAlgorithm::Ed25519 => Err(ServiceError::Refused(
            "the org cert key cannot be Ed25519: most S/MIME clients do not accept Ed25519 CA \
             certificates. Use --algorithm p256, p384, rsa3072 or rsa4096"
                .into(),
        )),
    }
}

/// The org cert key algorithm: as asked, else the org key's family (P-256
/// for an Ed25519 org key, see docs/decisions/0008).
fn choose_algorithm(
    asked: Option<OrgKeyAlgorithm>,
    org_key_algorithm: &str,
) -> Result<OrgKeyAlgorithm, ServiceError> {
    if let Some(a) = asked {
        return Ok(a);
    }
    Ok(match org_key_algorithm {
        "p384" => OrgKeyAlgorithm::P384,
        "rsa3072" => OrgKeyAlgorithm::Rsa3072,
        "rsa4096" => OrgKeyAlgorithm::Rsa4096,
        _ => OrgKeyAlgorithm::P256,
    })
}

/// What to do.
#[derive(Debug, Clone)]
pub struct OrgCertRequest {
    /// Subject (RFC 4514), for self-sign and CSR.
    pub subject: String,
    /// Key algorithm (default: the org key's family).
    pub algorithm: Option<OrgKeyAlgorithm>,
    /// Replace an active org cert.
    pub replace: bool,
    /// Audit actor.
    pub actor: String,
}

struct Context {
    store: Store,
    org_key_fpr: String,
    org_key_algorithm: String,
    org: OrgKey,
}

async fn context(cfg: &Config, clock: Arc<dyn Clock>) -> Result<Context, ServiceError> {
    let store = open_store(cfg, clock).await?;
    let rec = store.active_org_key().await?.ok_or_else(|| {
        ServiceError::Refused("no org key: run `orgkey org-key generate` first".into())
    })?;
    let org = OrgKey::parse(rec.cert.as_bytes())?;
    Ok(Context {
        store,
        org_key_fpr: rec.fingerprint,
        org_key_algorithm: rec.algorithm,
        org,
    })
}

async fn refuse_if_active(store: &Store, replace: bool) -> Result<(), ServiceError> {
    if let Some(existing) = store.active_org_cert().await?
        && !replace
    {
        return Err(ServiceError::Refused(format!(
            "an org cert already exists ({}, {}). Replacing it keeps the old one for verifying \
             and revoking what it issued; new certificates come from the new one. If that is \
             intended, run again with --replace",
            existing.subject, existing.fingerprint
        )));
    }
    Ok(())
}

async fn refuse_user_emails(store: &Store, cert: &X509Cert) -> Result<(), ServiceError> {
    for e in cert.emails() {
        if store.email_in_use(&e).await? {
            return Err(ServiceError::Refused(format!(
                "the org cert names {e}, which is a user's address; give the org cert no email \
                 address or one no user has"
            )));
        }
    }
    Ok(())
}

/// Runs `f` with a logged-in token, logging out afterwards. Blocking work
/// happens on a blocking thread.
async fn with_token<T: Send + 'static>(
    cfg: &Config,
    passphrase: SecretString,
    f: impl FnOnce(&Arc<Token>) -> Result<T, ServiceError> + Send + 'static,
) -> Result<T, ServiceError> {
    let cfg = cfg.clone();
    tokio::task::spawn_blocking(move || {
        let token = Arc::new(open_token(&cfg)?);
        token.login(&passphrase)?;
        let out = f(&token);
        let _ = token.logout();
        out
    })
    .await
    .map_err(TaskFailed::doing("working in the token"))?
}

fn generate_ca_key(
    token: &Arc<Token>,
    kind: KeyKind,
    exportable: bool,
) -> Result<crate::token::TokenKey, ServiceError> {
    Ok(token.generate_key_pair(&KeySpec {
        kind,
        usage: KeyUsage::Sign,
        label: "orgkey org cert".into(),
        exportable,
    })?)
}

fn record(
    cert: &X509Cert,
    chain: &str,
    org_key: &str,
    source: &str,
    key_id: &[u8],
) -> Result<OrgCertRecord, ServiceError> {
    Ok(OrgCertRecord {
        fingerprint: cert.fingerprint(),
        org_key: org_key.to_string(),
        state: "active".into(),
        source: source.into(),
        key_id: hex::encode(key_id),
        cert: cert.pem()?,
        chain: chain.to_string(),
        subject: cert.subject(),
        not_after: unix_secs(cert.not_after()) as i64,
        created_at: 0,
    })
}

/// Stores `rec`; if that fails the token key is destroyed again.
async fn store_or_destroy(
    cfg: &Config,
    passphrase: SecretString,
    store: &Store,
    rec: &OrgCertRecord,
    replace: bool,
    event: AuditEvent,
) -> Result<(), ServiceError> {
    if let Err(e) = store.insert_org_cert(rec, replace, &event).await {
        let id = decode_id(&rec.key_id)?;
        with_token(cfg, passphrase, move |t| Ok(t.destroy_key_pair(&id)?)).await?;
        return Err(e.into());
    }
    Ok(())
}

/// `orgkey org-cert self-sign`.
pub async fn self_sign_org_cert(
    cfg: &Config,
    passphrase: SecretString,
    req: OrgCertRequest,
    clock: Arc<dyn Clock>,
) -> Result<OrgCertRecord, ServiceError> {
    let ctx = context(cfg, Arc::clone(&clock)).await?;
    refuse_if_active(&ctx.store, req.replace).await?;
    let alg = choose_algorithm(req.algorithm, &ctx.org_key_algorithm)?;
    let kind = kind_for(alg)?;
    let now = clock.now_secs();
    let not_after = match ctx.org.expires(now)? {
        Some(e) if e > now + Duration::from_secs(86_400) => e,
        Some(_) => {
            return Err(ServiceError::Refused(
                "the org key expires within a day; renew it (orgkey maintenance run) first".into(),
            ));
        }
        None => now + NEVER_EXPIRING_ORG_KEY_CA_VALIDITY,
    };
    let exportable = cfg.token.profile.keys.exportable_keys(None);
    let subject = req.subject.clone();
    let (cert, key_id) = with_token(cfg, passphrase.clone(), move |token| {
        let key = generate_ca_key(token, kind, exportable)?;
        let signer = token.signer(&key.id, key.public.clone(), "org cert key")?;
        match self_signed_org_cert(&signer, &subject, now, not_after) {
            Ok(cert) => Ok((cert, key.id)),
            Err(e) => {
                let _ = token.destroy_key_pair(&key.id);
                Err(e.into())
            }
        }
    })
    .await?;
    if let Err(e) = refuse_user_emails(&ctx.store, &cert).await {
        with_token(cfg, passphrase, move |t| Ok(t.destroy_key_pair(&key_id)?)).await?;
        return Err(e);
    }
    let rec = record(&cert, "", &ctx.org_key_fpr, "self-signed", &key_id)?;
    let event = AuditEvent::new(&req.actor, "org-cert-self-sign", "ok")
        .key(rec.fingerprint.clone())
        .detail(format!(
            "{} ({}), until {}",
            rec.subject,
            alg.name(),
            rec.not_after
        ));
    store_or_destroy(cfg, passphrase, &ctx.store, &rec, req.replace, event).await?;
    ctx.store.close().await;
    Ok(rec)
}

/// `orgkey org-cert csr`: a key in the token and a PKCS#10 request for it.
pub async fn org_cert_csr(
    cfg: &Config,
    passphrase: SecretString,
    req: OrgCertRequest,
    clock: Arc<dyn Clock>,
) -> Result<OrgCertRequestRecord, ServiceError> {
    let ctx = context(cfg, Arc::clone(&clock)).await?;
    let alg = choose_algorithm(req.algorithm, &ctx.org_key_algorithm)?;
    let kind = kind_for(alg)?;
    let exportable = cfg.token.profile.keys.exportable_keys(None);
    let subject = req.subject.clone();
    let (csr, key_id) = with_token(cfg, passphrase.clone(), move |token| {
        let key = generate_ca_key(token, kind, exportable)?;
        let signer = token.signer(&key.id, key.public.clone(), "org cert key")?;
        match org_cert_request(&signer, &subject) {
            Ok(csr) => Ok((csr, key.id)),
            Err(e) => {
                let _ = token.destroy_key_pair(&key.id);
                Err(e.into())
            }
        }
    })
    .await?;
    let rec = OrgCertRequestRecord {
        key_id: hex::encode(&key_id),
        org_key: ctx.org_key_fpr.clone(),
        subject: req.subject.clone(),
        csr,
        created_at: unix_secs(clock.now()) as i64,
    };
    let event = AuditEvent::new(&req.actor, "org-cert-csr", "ok").detail(format!(
        "{} ({}), key {}",
        rec.subject,
        alg.name(),
        rec.key_id
    ));
    if let Err(e) = ctx.store.insert_org_cert_request(&rec, &event).await {
        with_token(cfg, passphrase, move |t| Ok(t.destroy_key_pair(&key_id)?)).await?;
        return Err(e.into());
    }
    ctx.store.close().await;
    Ok(rec)
}

/// `orgkey org-cert import`: the external CA's answer to our CSR.
pub async fn import_org_cert(
    cfg: &Config,
    passphrase: SecretString,
    cert_bytes: &[u8],
    chain_bytes: Option<&[u8]>,
    replace: bool,
    actor: &str,
    clock: Arc<dyn Clock>,
) -> Result<OrgCertRecord, ServiceError> {
    let ctx = context(cfg, Arc::clone(&clock)).await?;
    refuse_if_active(&ctx.store, replace).await?;
    let cert = X509Cert::parse(cert_bytes)?;
    if !cert.is_ca() {
        return Err(ServiceError::Refused(
            "the certificate is not a CA certificate (basicConstraints cA and keyUsage \
             keyCertSign are required): ask the CA for a subordinate CA certificate"
                .into(),
        ));
    }
    let now = clock.now();
    if cert.not_after() <= now || cert.not_before() > now + Duration::from_secs(300) {
        return Err(ServiceError::Refused(
            "the certificate is not valid now".into(),
        ));
    }
    let (chain_pem, chain) = match chain_bytes {
        Some(b) => {
            let chain = X509Cert::parse_chain(b)?;
            let mut pem = String::new();
            for c in &chain {
                pem.push_str(&c.pem()?);
            }
            (pem, chain)
        }
        None => (String::new(), Vec::new()),
    };
    if let Some(issuer) = chain.first() {
        cert.verify_signed_by(issuer).map_err(|e| {
            ServiceError::Refused(format!(
                "the chain's first certificate did not issue it: {e}"
            ))
        })?;
    }
    refuse_user_emails(&ctx.store, &cert).await?;
    let requests = ctx.store.org_cert_requests().await?;
    let imported = cert.clone();
    let key_id = with_token(cfg, passphrase, move |token| {
        for r in requests {
            let id = decode_id(&r.key_id)?;
            if let Ok(pk) = token.public_key(&id, "org cert request key")
                && imported.has_key(&pk)?
            {
                return Ok(id);
            }
        }
        Err(ServiceError::Refused(
            "the certificate's public key is not the key of any pending `orgkey org-cert csr` \
             request in this token"
                .into(),
        ))
    })
    .await?;
    let rec = record(&cert, &chain_pem, &ctx.org_key_fpr, "ca-issued", &key_id)?;
    let event = AuditEvent::new(actor, "org-cert-import", "ok")
        .key(rec.fingerprint.clone())
        .detail(format!("{} issued by {}", rec.subject, cert.issuer()));
    ctx.store.insert_org_cert(&rec, replace, &event).await?;
    ctx.store.close().await;
    Ok(rec)
}

/// `orgkey org-cert import-ca`: an existing internal root CA keypair moves
/// into the token.
pub async fn import_ca_keypair(
    cfg: &Config,
    passphrase: SecretString,
    src: CaKeypairFile<'_>,
    replace: bool,
    actor: &str,
    clock: Arc<dyn Clock>,
) -> Result<OrgCertRecord, ServiceError> {
    let ctx = context(cfg, Arc::clone(&clock)).await?;
    refuse_if_active(&ctx.store, replace).await?;
    let (cert, key) = read_ca_keypair(src)?;
    if cert.not_after() <= clock.now() {
        return Err(ServiceError::Refused(
            "the CA certificate has expired".into(),
        ));
    }
    refuse_user_emails(&ctx.store, &cert).await?;
    let exportable = cfg.token.profile.keys.exportable_keys(None);
    let token_key = with_token(cfg, passphrase.clone(), move |token| {
        let k = token.import_key_pair(&key, "orgkey org cert (imported)", exportable)?;
        drop(key);
        Ok(k)
    })
    .await?;
    let rec = record(&cert, "", &ctx.org_key_fpr, "imported", &token_key.id)?;
    let event = AuditEvent::new(actor, "org-cert-import-ca", "ok")
        .key(rec.fingerprint.clone())
        .detail(format!("{} imported into the token", rec.subject));
    store_or_destroy(cfg, passphrase, &ctx.store, &rec, replace, event).await?;
    ctx.store.close().await;
    Ok(rec)
}

/// The active org cert and pending requests (no token needed).
pub async fn org_cert_summary(
    cfg: &Config,
    clock: Arc<dyn Clock>,
) -> Result<(Option<OrgCertRecord>, Vec<OrgCertRequestRecord>), ServiceError> {
    let store = open_store(cfg, clock).await?;
    let active = store.active_org_cert().await?;
    let requests = store.org_cert_requests().await?;
    store.close().await;
    Ok((active, requests))
}

/// `orgkey x509 revoke`: revokes and renews the CRL. Returns whether it was
/// revoked already.
pub async fn revoke_user_cert(
    cfg: &Config,
    passphrase: SecretString,
    serial: &str,
    reason: crate::x509::RevocationReason,
    actor: &str,
    clock: Arc<dyn Clock>,
) -> Result<bool, ServiceError> {
    let store = open_store(cfg, Arc::clone(&clock)).await?;
    let now = clock.now();
    let records = store.live_org_certs(unix_secs(now) as i64).await?;
    let (token, cas) =
        super::logged_in_token(cfg, passphrase, "loading the org cert keys", move |token| {
            load_cas(token, records)
        })
        .await?;
    let result = crate::ca::revoke(&store, &cas, &cfg.x509, serial, reason, actor, now).await;
    drop(cas);
    let _ = tokio::task::spawn_blocking(move || token.logout()).await;
    store.close().await;
    Ok(matches!(
        result?,
        crate::store::RevokeOutcome::AlreadyRevoked(_)
    ))
}
