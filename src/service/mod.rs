//! Wiring and operations: builds the token, store and signers and hands them
//! to the API, and implements the operator commands (init, org key
//! generation, token check, serve). The CLI calls in here; nothing in here
//! parses arguments or prompts.

mod backup;
mod cluster;
mod harden;
mod ignition;
mod init;
mod maintenance;
mod org_cert;
mod org_key;
mod serve;
mod systemd;
mod users;

pub use backup::{
    ExportReport, ExportSecrets, RestoreStateOptions, RestoreStateReport, backup_state,
    export_keys, inspect_key_backup, restore_keys, restore_state,
};
pub use cluster::cluster_status;
pub use harden::disable_core_dumps;
pub use ignition::{change_ignition, reset_ignition};
pub(crate) use init::write_private;
pub use init::{InitRequest, InitResult, init_appliance};
pub use maintenance::run_maintenance;
pub use org_cert::{
    OrgCertRequest, import_ca_keypair, import_org_cert, org_cert_csr, org_cert_summary,
    revoke_user_cert, self_sign_org_cert,
};
pub use org_key::{
    GenerateRequest, OrgKeySummary, TokenCheck, bench_raw_sign, check_token, generate_org_key,
    org_key_summary,
};
pub use serve::{ServeOptions, serve};
pub use users::{UserDetails, list_users, set_user_state, user_details};

use crate::api::{IgniteError, Igniter, SigningKey};
use crate::clock::Clock;
use crate::config::{Config, ConfigError};
use crate::openpgp::{OrgKey, PgpError};
use crate::store::{OrgKeyRecord, Store, StoreError};
use crate::token::{Token, TokenError, TokenOptions};
use secrecy::SecretString;
use std::sync::Arc;

/// Errors of operator-level operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// Configuration problem.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Token problem.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// Store problem.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// OpenPGP problem.
    #[error(transparent)]
    Pgp(#[from] PgpError),
    /// X.509 problem.
    #[error(transparent)]
    X509(#[from] crate::x509::X509Error),
    /// CA operation problem.
    #[error(transparent)]
    Ca(#[from] crate::ca::CaError),
    /// HTTP server problem.
    #[error(transparent)]
    Serve(#[from] crate::api::ServeError),
    /// A key backup file that is not one, or whose passphrase is wrong.
    #[error(transparent)]
    Backup(#[from] crate::backup::BackupError),
    /// The token's keys are not the keys the store names (an org cert key
    /// that is not its certificate's key).
    #[error("{0}")]
    KeyMismatch(String),
    /// The ignition at start (from a passphrase file) failed.
    #[error("unattended ignition failed: {0}")]
    Ignition(#[source] IgniteError),
    /// A maintenance run failed.
    #[error("maintenance failed: {0}")]
    Maintenance(#[from] crate::maintenance::MaintenanceError),
    /// The token did not make a signature.
    #[error("{context}: {source}")]
    Signer {
        /// What orgkey was doing
        context: &'static str,
        /// Cause
        #[source]
        source: crate::signer::SignerError,
    },
    /// A key of a key backup could not be unwrapped into the token.
    #[error("unwrapping the {role} key failed: {source}")]
    Unwrap {
        /// Role of the key in the backup
        role: String,
        /// Cause
        #[source]
        source: TokenError,
    },
    /// Blocking work panicked or was cancelled: a bug or a shutdown, not
    /// something the operator did.
    #[error(transparent)]
    TaskFailed(#[from] crate::task::TaskFailed),
    /// The operation was refused for a reason the operator must act on.
    #[error("{0}")]
    Refused(String),
    /// File system problem.
    #[error("{context}: {source}")]
    Io {
        /// What orgkey was doing
        context: String,
        /// Cause
        #[source]
        source: std::io::Error,
    },
}

impl ServiceError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServiceError {
        let context = context.into();
        move |source| ServiceError::Io { context, source }
    }
}

/// Opens the configured token (module load, token lookup). Blocking.
pub fn open_token(cfg: &Config) -> Result<Token, ServiceError> {
    let module = cfg.token.module_path()?;
    let options = TokenOptions {
        max_sessions: cfg.token.sessions,
        ed25519_params: cfg.token.profile.algorithms.ed25519_params,
        wrap_with_trusted: cfg.token.profile.keys.wrap_with_trusted,
        session_wait: cfg.token.deadline,
    };
    Ok(Token::open(&module, &cfg.token.selector, options)?)
}

/// Opens the configured token and logs in with the ignition passphrase, then
/// runs `work` with it, all on a blocking thread. Returns the token, still
/// logged in, with what `work` made (the caller logs out when it is done);
/// if the login or `work` fails, the token is logged out again.
pub(crate) async fn logged_in_token<T: Send + 'static>(
    cfg: &Config,
    passphrase: SecretString,
    doing: &'static str,
    work: impl FnOnce(&Arc<Token>) -> Result<T, ServiceError> + Send + 'static,
) -> Result<(Arc<Token>, T), ServiceError> {
    let cfg = cfg.clone();
    tokio::task::spawn_blocking(move || {
        let token = Arc::new(open_token(&cfg)?);
        token.login(&passphrase)?;
        match work(&token) {
            Ok(made) => Ok((token, made)),
            Err(e) => {
                let _ = token.logout();
                Err(e)
            }
        }
    })
    .await
    .map_err(crate::task::TaskFailed::doing(doing))?
}

/// Opens the existing store.
pub async fn open_store(cfg: &Config, clock: Arc<dyn Clock>) -> Result<Store, ServiceError> {
    Ok(Store::open_configured(&cfg.store, &cfg.node_id, false, clock).await?)
}

fn decode_id(hex_id: &str) -> Result<Vec<u8>, ServiceError> {
    hex::decode(hex_id).map_err(|_| {
        ServiceError::Store(StoreError::Corrupt(format!("CKA_ID {hex_id:?} is not hex")))
    })
}

/// Loads the org key from the store and checks that the (logged-in) token
/// holds exactly its keys; returns the signing key. Blocking.
pub(crate) fn load_signing_key(
    token: &Arc<Token>,
    rec: &OrgKeyRecord,
) -> Result<SigningKey, ServiceError> {
    let org = OrgKey::parse(rec.cert.as_bytes())?;
    if crate::clock::unix_secs(org.created()) as i64 != rec.primary_created {
        return Err(ServiceError::Store(StoreError::Corrupt(
            "stored creation time does not match the stored certificate".into(),
        )));
    }
    let primary_id = decode_id(&rec.primary_id)?;
    let primary = token.public_key(&primary_id, "org key primary")?;
    let signing_id = decode_id(&rec.signing_id)?;
    let signing = token.public_key(&signing_id, "org signing subkey")?;
    let encryption = token.public_key(&decode_id(&rec.encryption_id)?, "org encryption subkey")?;
    org.check_token_keys(&primary, &signing, &encryption)?;
    let signer = token.signer(&signing_id, signing, "org signing subkey")?;
    let certifier = token.signer(&primary_id, primary, "org key primary")?;
    Ok(SigningKey {
        org,
        signer: Arc::new(signer),
        certifier: Arc::new(certifier),
        cas: crate::ca::CaSet::default(),
    })
}

/// The service's [`Igniter`]: token login plus org key check.
pub struct TokenIgniter {
    token: Arc<Token>,
    store: Store,
    runtime: tokio::runtime::Handle,
    /// Keep the ignition passphrase (zeroized on drop) for relogin after
    /// device or link loss.
    relogin: bool,
    held: std::sync::Mutex<Option<harden::HeldPassphrase>>,
}

impl TokenIgniter {
    /// An igniter for `token` with the org key record from `store`.
    pub fn new(
        token: Arc<Token>,
        store: Store,
        runtime: tokio::runtime::Handle,
        relogin: bool,
    ) -> Self {
        Self {
            token,
            store,
            runtime,
            relogin,
            held: std::sync::Mutex::new(None),
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Option<harden::HeldPassphrase>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn load(&self) -> Result<Option<Arc<SigningKey>>, IgniteError> {
        let rec = self.runtime.block_on(self.store.active_org_key())?;
        let Some(rec) = rec else { return Ok(None) };
        let mut key = load_signing_key(&self.token, &rec).map_err(ignite_error)?;
        key.cas = self.load_cas()?;
        Ok(Some(Arc::new(key)))
    }
}

/// What an ignition caller acts on: only keys that are not the stored
/// ones are a mismatch.
fn ignite_error(e: ServiceError) -> IgniteError {
    match e {
        e @ (ServiceError::Pgp(PgpError::Mismatch(_))
        | ServiceError::Token(TokenError::KeyNotFound { .. })
        | ServiceError::KeyMismatch(_)) => IgniteError::Mismatch(Box::new(e)),
        ServiceError::Token(e) if e.is_unavailable() => IgniteError::Unavailable(Box::new(e)),
        ServiceError::Store(e) => IgniteError::Store(e),
        e => IgniteError::Internal(Box::new(e)),
    }
}

fn login_error(e: TokenError) -> IgniteError {
    match e {
        TokenError::BadPin => IgniteError::BadPassphrase,
        TokenError::PinLocked => IgniteError::Locked,
        e if e.is_unavailable() => IgniteError::Unavailable(Box::new(e)),
        e => IgniteError::Internal(Box::new(e)),
    }
}

impl Igniter for TokenIgniter {
    fn ignite(&self, passphrase: &SecretString) -> Result<Option<Arc<SigningKey>>, IgniteError> {
        // Whatever happens next, the passphrase held so far is no longer the
        // one this ignition is about.
        *self.held() = None;
        let login = match self.token.login(passphrase) {
            // A module whose link was lost keeps failing until it is
            // initialized again (p11-kit): do that once, then log in.
            Err(e) if e.is_unavailable() => {
                tracing::warn!(error = %e, "token unavailable at ignition; initializing the module again");
                self.token.reconnect(passphrase)
            }
            r => r,
        };
        login.map_err(login_error)?;
        // Only now, proven by C_Login, may the passphrase be held.
        let loaded = self.load();
        if loaded.is_err() {
            let _ = self.token.logout();
        } else if self.relogin {
            *self.held() = Some(harden::HeldPassphrase::new(passphrase.clone()));
        }
        loaded
    }

    fn seal(&self) -> Result<(), IgniteError> {
        *self.held() = None;
        self.token.logout().map_err(login_error)
    }

    fn change_passphrase(&self, old: &SecretString, new: &SecretString) -> Result<(), IgniteError> {
        self.token.set_user_pin(old, new).map_err(login_error)?;
        let mut held = self.held();
        if held.is_some() {
            *held = Some(harden::HeldPassphrase::new(new.clone()));
        }
        Ok(())
    }

    fn token_sessions(&self) -> usize {
        self.token.open_sessions()
    }

    fn recover(&self) -> Result<Option<Arc<SigningKey>>, IgniteError> {
        let Some(pass) = self.held().as_ref().map(|h| h.secret().clone()) else {
            return Err(IgniteError::Unavailable(
                "token unavailable, and no ignition passphrase is held to log in again \
                 (relogin is off or the appliance was sealed)"
                    .into(),
            ));
        };
        if let Err(e) = self.token.reconnect(&pass) {
            let e = login_error(e);
            if matches!(e, IgniteError::BadPassphrase | IgniteError::Locked) {
                // Never try a refused passphrase again: a token that counts
                // failures would be locked by the appliance itself.
                *self.held() = None;
            }
            return Err(e);
        }
        self.load()
    }

    fn load_cas(&self) -> Result<crate::ca::CaSet, IgniteError> {
        let now = crate::clock::unix_secs(self.store.clock().now()) as i64;
        let records = self.runtime.block_on(self.store.live_org_certs(now))?;
        org_cert::load_cas(&self.token, records).map_err(ignite_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_not_found() -> TokenError {
        TokenError::KeyNotFound {
            what: "org signing subkey".into(),
            id: "01".into(),
        }
    }

    #[test]
    fn only_keys_that_are_not_the_stored_ones_are_an_ignition_mismatch() {
        let mismatches = [
            ServiceError::Pgp(PgpError::Mismatch("signing subkey".into())),
            ServiceError::Token(key_not_found()),
            ServiceError::KeyMismatch("org cert key".into()),
        ];
        for e in mismatches {
            let shown = e.to_string();
            match ignite_error(e) {
                IgniteError::Mismatch(cause) => assert_eq!(cause.to_string(), shown),
                other => panic!("{shown}: {other:?}"),
            }
        }
        let gone = ignite_error(ServiceError::Token(TokenError::Unavailable {
            function: "C_FindObjects".into(),
            code: "CKR_DEVICE_REMOVED".into(),
        }));
        assert!(matches!(gone, IgniteError::Unavailable(_)), "{gone:?}");
        // A refusal is not a mismatch (it used to become a 409).
        let refused = ignite_error(ServiceError::Refused("no org key".into()));
        assert!(matches!(refused, IgniteError::Internal(_)), "{refused:?}");
        let store = ignite_error(ServiceError::Store(StoreError::Corrupt("bad row".into())));
        assert!(
            matches!(store, IgniteError::Store(StoreError::Corrupt(_))),
            "{store:?}"
        );
        let x509 = ignite_error(ServiceError::X509(crate::x509::X509Error::Encoding(
            "bad PEM".into(),
        )));
        assert!(matches!(x509, IgniteError::Internal(_)), "{x509:?}");
    }

    #[tokio::test]
    async fn a_failed_task_keeps_its_cause_through_ignition() {
        let failed = tokio::task::spawn_blocking(|| -> () { panic!("a bug") })
            .await
            .map_err(crate::task::TaskFailed::doing("loading the org key"))
            .unwrap_err();
        let e = ignite_error(ServiceError::from(failed));
        let IgniteError::Internal(cause) = &e else {
            panic!("{e:?}")
        };
        let task = cause
            .downcast_ref::<ServiceError>()
            .expect("the service error is the cause");
        assert!(
            matches!(task, ServiceError::TaskFailed(t) if t.is_panic()),
            "{task:?}"
        );
    }
}
