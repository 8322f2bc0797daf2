//! The HTTP API: the only code that uses the HTTP stack (axum on hyper,
//! rustls for TLS, reqwest for the CLI's own client).
//!
//! The API sees the appliance through [`ApiState`]: the store, the audit
//! writer, the seal state and an [`Igniter`] that the service layer
//! implements on top of the token. Every error is `{"error", "code"}` JSON.

pub mod auth;
pub mod client;
mod directory;
mod error;
mod hkp;
mod ignition;
mod limits;
mod metrics;
mod openapi;
mod routes;
mod shared;
mod sign;
mod status;
mod tls;
mod transport;
mod users;
mod x509;

pub use directory::ClientDirectory;
pub use error::ApiError;
pub use limits::RateLimiter;
pub use transport::ConnectionLimits;

use crate::clock::Clock;
use crate::config::{IgnitionConfig, TlsFiles};
use crate::openpgp::OrgKey;
use crate::signer::Signer;
use crate::store::{AuditWriter, Store, StoreError};
use secrecy::SecretString;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

/// The org key as the API uses it once ignited.
#[derive(Clone)]
pub struct SigningKey {
    /// The public certificate.
    pub org: OrgKey,
    /// The signing subkey in the token (data signatures).
    pub signer: Arc<dyn Signer>,
    /// The certify-only primary key in the token (certifications,
    /// self-signatures).
    pub certifier: Arc<dyn Signer>,
    /// The org certs whose keys are loaded (active first).
    pub cas: crate::ca::CaSet,
}

/// How users of the managed domains are certified.
#[derive(Debug, Clone)]
pub struct UserPolicy {
    /// Managed domains, lower-case.
    pub domains: Vec<String>,
    /// Lifetime of a certification.
    pub certification_validity: Duration,
}

/// Sealed or ignited.
#[derive(Clone, Default)]
pub enum SealState {
    /// Token not logged in; signing routes answer 503.
    #[default]
    Sealed,
    /// Logged in; `None` when no org key has been generated yet.
    Ignited(Option<Arc<SigningKey>>),
}

/// Any error, as the cause of an error that keeps it.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why ignition (or sealing, recovery, a passphrase change, loading the org
/// cert keys) failed: one variant for each answer a caller gives.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IgniteError {
    /// The token refused the passphrase.
    #[error("bad ignition passphrase")]
    BadPassphrase,
    /// The token locked the PIN.
    #[error("the ignition passphrase is locked on the token")]
    Locked,
    /// The token's keys are not the stored org key, or not the keys of the
    /// stored org certs.
    #[error(transparent)]
    Mismatch(BoxError),
    /// Token or its link down.
    #[error(transparent)]
    Unavailable(BoxError),
    /// The store failed while the org key or org cert records were read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Anything else, a failed task included (logged, not shown to clients).
    #[error(transparent)]
    Internal(BoxError),
}

/// Logs in to the token and loads the org key. Implemented by the service
/// layer; both methods block and are called from blocking threads.
pub trait Igniter: Send + Sync + 'static {
    /// Logs in with the ignition passphrase and returns the org signing key
    /// (None if no org key exists yet). On error the token is left logged out.
    fn ignite(&self, passphrase: &SecretString) -> Result<Option<Arc<SigningKey>>, IgniteError>;
    /// Logs out.
    fn seal(&self) -> Result<(), IgniteError>;
    /// After device or link loss: initializes the module again, logs in
    /// with the passphrase held since ignition (`relogin`), and reloads the
    /// org key. Fails when no passphrase is held.
    fn recover(&self) -> Result<Option<Arc<SigningKey>>, IgniteError>;
    /// Changes the ignition passphrase on the token (the token checks
    /// `old`); a passphrase held for relogin becomes `new`.
    fn change_passphrase(&self, old: &SecretString, new: &SecretString) -> Result<(), IgniteError>;
    /// Sessions open on the token (for `/v1/status` and soak tests).
    fn token_sessions(&self) -> usize;
    /// Loads the keys of the live org certs again (a new org cert was made
    /// while ignited). Needs the token logged in.
    fn load_cas(&self) -> Result<crate::ca::CaSet, IgniteError>;
}

/// The last scheduled state backup as `/v1/status` reports it (to admins):
/// `{"outcome": "ok"|"failed"|"skipped", ...}`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
#[non_exhaustive]
pub enum BackupStatus {
    /// Written.
    Ok {
        /// The backup file.
        file: String,
        /// Plaintext bytes of store in it.
        bytes: u64,
        /// Unix seconds.
        at: u64,
    },
    /// Failed (also audited).
    Failed {
        /// Why (the error and its causes).
        error: String,
        /// Unix seconds.
        at: u64,
    },
    /// Not due yet, or waiting for ignition.
    Skipped {
        /// Why.
        reason: String,
        /// Unix seconds.
        at: u64,
    },
}

/// The counts of a maintenance run, as `/v1/status` shows them.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct MaintenanceCounts {
    /// Unix seconds the run used as "now".
    pub at: u64,
    /// New org key expiry (Unix seconds) if the org key was renewed.
    pub org_key_renewed_until: Option<u64>,
    /// Keys that were due.
    pub due: u64,
    /// Keys whose certifications were renewed.
    pub renewed: u64,
    /// User IDs certified in those keys.
    pub certifications: u64,
    /// Keys that could not be certified any more.
    pub refused: u64,
    /// Keys a concurrent certify call certified during the run.
    pub concurrent: u64,
    /// Stored users no longer certified (non-canonical or reserved).
    pub skipped_user_ids: u64,
    /// Users skipped for inactivity.
    pub inactive_users: u64,
    /// S/MIME user certificates renewed.
    pub user_certs_renewed: u64,
    /// User certificates that could not be renewed.
    pub user_certs_failed: u64,
    /// CRLs made because the last one's nextUpdate was near.
    pub crls_refreshed: u64,
    /// Pending issuances left by a crash, marked abandoned.
    pub stale_issuances: u64,
}

/// The last maintenance run as `/v1/status` reports it (to admins).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
#[non_exhaustive]
pub enum MaintenanceStatus {
    /// The run finished.
    Ok {
        /// What it did.
        report: MaintenanceCounts,
    },
    /// The run failed (it is retried sooner).
    Failed {
        /// Why.
        error: String,
        /// Unix seconds.
        at: u64,
    },
}

/// Facts for `/v1/status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TokenFacts {
    /// Token label.
    pub label: String,
    /// Token serial.
    pub serial: String,
    /// HSM profile name.
    pub profile: String,
}

/// Consecutive-failure back-off for ignition (SoftHSM and some HSMs never
/// lock the PIN, so this is the brake on guessing).
#[derive(Debug, Default)]
pub struct Backoff {
    failures: u32,
    blocked_until: Option<Instant>,
}

impl Backoff {
    /// Seconds left before another attempt is allowed, if blocked.
    pub fn blocked_for(&self, now: Instant) -> Option<Duration> {
        self.blocked_until.filter(|t| *t > now).map(|t| t - now)
    }

    /// Records a failure and returns the delay now imposed, if any.
    pub fn failed(&mut self, cfg: &IgnitionConfig, now: Instant) -> Option<Duration> {
        self.failures = self.failures.saturating_add(1);
        let delay = Self::delay_after(cfg, self.failures);
        if let Some(d) = delay {
            self.blocked_until = Some(now + d);
        }
        delay
    }

    /// The block that `failures` consecutive failures impose: none before
    /// `backoff_after`, then doubling from `backoff_initial` to
    /// `backoff_max`.
    pub fn delay_after(cfg: &IgnitionConfig, failures: u32) -> Option<Duration> {
        if failures < cfg.backoff_after {
            return None;
        }
        let doublings = (failures - cfg.backoff_after).min(30);
        Some(
            cfg.backoff_initial
                .saturating_mul(1u32 << doublings)
                .min(cfg.backoff_max),
        )
    }

    /// Takes the state the store holds for every node (failures, and the
    /// time left of the current block).
    pub fn mirror(&mut self, failures: u32, left: Option<Duration>, now: Instant) {
        self.failures = failures;
        self.blocked_until = left.map(|d| now + d);
    }

    /// Clears the failure count after a success.
    pub fn succeeded(&mut self) {
        *self = Backoff::default();
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// Everything the handlers need.
pub struct ApiState {
    /// The store (clients, org key record).
    pub store: Store,
    /// Group-commit audit writer.
    pub audit: AuditWriter,
    /// Group commit of the issuance order's writes.
    pub issuance: crate::ca::IssuanceCommits,
    /// The API clients, kept in memory and checked against the store's
    /// change counter for every request.
    pub clients: ClientDirectory,
    /// Time source for signatures.
    pub clock: Arc<dyn Clock>,
    /// Token login.
    pub igniter: Arc<dyn Igniter>,
    /// Sealed or ignited.
    pub seal: RwLock<SealState>,
    /// Ignition attempts are serialized through this lock.
    pub backoff: tokio::sync::Mutex<Backoff>,
    /// Back-off settings.
    pub ignition: IgnitionConfig,
    /// `/v1/sign` body limit in bytes.
    pub max_body: u64,
    /// How long a client has to send a request body (`[server]
    /// body_timeout`), from when the handler starts reading it.
    pub body_timeout: Duration,
    /// Token facts for `/v1/status`.
    pub token: TokenFacts,
    /// Certification of managed-domain users.
    pub users: UserPolicy,
    /// Outcome of the last maintenance run, for `/v1/status`.
    pub maintenance: RwLock<Option<MaintenanceStatus>>,
    /// Org cert and user certificate settings.
    pub x509: crate::config::X509Config,
    /// Outcome of the last scheduled state backup, for `/v1/status`.
    pub backup: RwLock<Option<BackupStatus>>,
    /// Per-client rate limits.
    pub limiter: RateLimiter,
    /// Longest a request waits for the token.
    pub deadline: Duration,
    /// Set when the token (or the link to it) was lost; cleared by recovery.
    pub token_down: std::sync::atomic::AtomicBool,
    /// Wakes the recovery task.
    pub token_event: tokio::sync::Notify,
    /// `/metrics` is a route of the API listener (no `[metrics] listen` of
    /// its own; see [`serve_metrics`]).
    pub metrics_on_api: bool,
    /// This node's role under the leader lease, as its lease task last
    /// saw it (for `/v1/status` and `/metrics`).
    pub role: tokio::sync::watch::Receiver<crate::store::NodeRole>,
}

impl ApiState {
    /// The current seal state.
    pub fn seal_state(&self) -> SealState {
        self.seal.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the seal state.
    pub fn set_seal_state(&self, s: SealState) {
        *self.seal.write().unwrap_or_else(|p| p.into_inner()) = s;
    }

    /// Marks the appliance ignited with `key` unless it has been sealed
    /// meanwhile; the check and the change are one step, so a seal that
    /// lands while the token recovery is logging in is never undone.
    /// Returns whether the appliance is now ignited.
    pub fn ignite_unless_sealed(&self, key: Option<Arc<SigningKey>>) -> bool {
        let mut guard = self.seal.write().unwrap_or_else(|p| p.into_inner());
        if matches!(*guard, SealState::Sealed) {
            return false;
        }
        *guard = SealState::Ignited(key);
        true
    }

    /// Signature creation time.
    pub fn now(&self) -> SystemTime {
        self.clock.now_secs()
    }

    /// Swaps in a renewed org key certificate (same key, new
    /// self-signatures) if the appliance is ignited with that key.
    pub fn update_org_key(&self, org: OrgKey) {
        let mut guard = self.seal.write().unwrap_or_else(|p| p.into_inner());
        if let SealState::Ignited(Some(k)) = &*guard
            && k.org.fingerprint() == org.fingerprint()
        {
            let mut renewed = SigningKey::clone(k);
            renewed.org = org;
            *guard = SealState::Ignited(Some(Arc::new(renewed)));
        }
    }

    /// Marks the token lost: requests get 503 at once and the recovery task
    /// starts.
    pub fn mark_token_down(&self) {
        if !self
            .token_down
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            tracing::error!("token lost: answering 503 until it is back");
            self.token_event.notify_one();
        }
    }

    /// Whether the token is marked lost.
    pub fn is_token_down(&self) -> bool {
        self.token_down.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Swaps in freshly loaded org cert keys.
    pub fn update_cas(&self, cas: crate::ca::CaSet) {
        let mut guard = self.seal.write().unwrap_or_else(|p| p.into_inner());
        if let SealState::Ignited(Some(k)) = &*guard {
            let mut updated = SigningKey::clone(k);
            updated.cas = cas;
            *guard = SealState::Ignited(Some(Arc::new(updated)));
        }
    }

    /// Records the outcome of a scheduled state backup for `/v1/status`.
    pub fn set_backup_report(&self, report: BackupStatus) {
        if let BackupStatus::Ok { at, .. } = &report {
            crate::metrics::backup_succeeded(*at);
        }
        *self.backup.write().unwrap_or_else(|p| p.into_inner()) = Some(report);
    }

    /// Records the outcome of a maintenance run for `/v1/status`.
    pub fn set_maintenance_report(&self, report: MaintenanceStatus) {
        if let MaintenanceStatus::Ok { report } = &report {
            crate::metrics::maintenance_succeeded(report.at);
        }
        *self.maintenance.write().unwrap_or_else(|p| p.into_inner()) = Some(report);
    }
}

/// The router with every route.
pub fn router(state: Arc<ApiState>) -> axum::Router {
    routes::router(state)
}

/// Where and how to listen.
#[derive(Debug, Clone)]
pub struct Listener {
    /// Address.
    pub addr: SocketAddr,
    /// TLS files; None for plaintext.
    pub tls: Option<TlsFiles>,
    /// Connection cap and timeouts.
    pub limits: ConnectionLimits,
}

/// API server errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// TLS files (server certificate and key, client CAs, CRLs)
    /// unreadable or invalid.
    #[error("TLS setup: {files}: {source}")]
    Tls {
        /// Certificate and key file
        files: String,
        /// Cause
        #[source]
        source: std::io::Error,
    },
    /// Bind or serve failure.
    #[error("server: {0}")]
    Io(#[from] std::io::Error),
}

/// Runs the server until `shutdown` resolves; calls `on_listening` with
/// the bound address (useful with port 0).
pub async fn serve(
    state: Arc<ApiState>,
    listener: Listener,
    on_listening: impl FnOnce(SocketAddr, bool) + Send,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let app = router(state);
    let handle = axum_server::Handle::new();
    let shutdown_handle = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        shutdown_handle.graceful_shutdown(Some(Duration::from_secs(10)));
    });
    let tls = listener.tls.is_some();
    let limits = listener.limits;
    let server = async {
        match &listener.tls {
            Some(files) => {
                let _ = rustls::crypto::ring::default_provider().install_default();
                let cfg = tls::server_config(files)?;
                let mut server = axum_server::bind_rustls(listener.addr, cfg)
                    .map(|tls| {
                        transport::WatchingAcceptor::new(
                            tls::ClientCertAcceptor::new(
                                tls.handshake_timeout(limits.header_read_timeout),
                            ),
                            limits,
                        )
                    })
                    .handle(handle.clone());
                server
                    .http_builder()
                    .http1()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(limits.hyper_header_read_timeout());
                server
                    .serve(transport::Admission::new(
                        app.into_make_service(),
                        limits.max_connections,
                    ))
                    .await
                    .map_err(ServeError::from)
            }
            None => {
                let mut server = axum_server::bind(listener.addr)
                    .acceptor(transport::WatchingAcceptor::new(
                        axum_server::accept::DefaultAcceptor::new(),
                        limits,
                    ))
                    .handle(handle.clone());
                server
                    .http_builder()
                    .http1()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(limits.hyper_header_read_timeout());
                server
                    .serve(transport::Admission::new(
                        app.into_make_service(),
                        limits.max_connections,
                    ))
                    .await
                    .map_err(ServeError::from)
            }
        }
    };
    // A server that fails before it listens (TLS files, the bind) never
    // announces: its error ends the wait for the address.
    tokio::pin!(server);
    let listening = tokio::select! {
        res = &mut server => return res,
        addr = handle.listening() => addr,
    };
    if let Some(addr) = listening {
        on_listening(addr, tls);
    }
    server.await
}

/// Most connections the `[metrics] listen` listener keeps open: a
/// Prometheus server scrapes over one, a few more leave room for a second
/// server and an operator's curl.
const METRICS_MAX_CONNECTIONS: usize = 16;

/// Serves `GET /metrics` alone on `listener` (`[metrics] listen`) until
/// `shutdown` resolves. Plain HTTP: no credential crosses it, and the
/// operator picks a management address for it. Slow and idle clients are
/// cut off as on the API listener (`limits`), and at most
/// [`METRICS_MAX_CONNECTIONS`] connections are open.
pub async fn serve_metrics(
    state: Arc<ApiState>,
    listener: std::net::TcpListener,
    limits: ConnectionLimits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    listener.set_nonblocking(true)?;
    let limits = ConnectionLimits {
        max_connections: limits.max_connections.min(METRICS_MAX_CONNECTIONS),
        ..limits
    };
    let handle = axum_server::Handle::new();
    let shutdown_handle = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        shutdown_handle.graceful_shutdown(Some(Duration::from_secs(10)));
    });
    let mut server = axum_server::from_tcp(listener)
        .acceptor(transport::WatchingAcceptor::new(
            axum_server::accept::DefaultAcceptor::new(),
            limits,
        ))
        .handle(handle);
    server
        .http_builder()
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.hyper_header_read_timeout());
    server
        .serve(transport::Admission::new(
            routes::metrics_router(state).into_make_service(),
            limits.max_connections,
        ))
        .await
        .map_err(ServeError::from)
}

/// Parsers of request input, for the fuzz targets (`orgkey::fuzzing`): an
/// HKP search string and the JSON bodies of the ignition, revocation and
/// OpenPGP-bridge routes. Returns whether the input was accepted.
#[doc(hidden)]
pub fn fuzz_request_input(data: &[u8]) -> bool {
    let hkp = std::str::from_utf8(data)
        .ok()
        .is_some_and(|s| hkp::parse_search(s).is_ok());
    let ignition = ignition::parse_ignition_body(data).is_ok();
    let change = ignition::parse_passphrase_change(data).is_ok();
    let revoke = x509::parse_revoke_body(data).is_ok();
    let bridge = x509::parse_bridge_body(data).is_ok();
    hkp || ignition || change || revoke || bridge
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_reports_keep_their_wire_shape() {
        let ok = BackupStatus::Ok {
            file: "backups/orgkey-state-1.pgp".into(),
            bytes: 42,
            at: 7,
        };
        assert_eq!(
            serde_json::to_value(&ok).unwrap(),
            serde_json::json!({"outcome": "ok", "file": "backups/orgkey-state-1.pgp", "bytes": 42, "at": 7})
        );
        let skipped = BackupStatus::Skipped {
            reason: "sealed".into(),
            at: 7,
        };
        assert_eq!(
            serde_json::to_value(&skipped).unwrap()["outcome"],
            "skipped"
        );
        let failed = MaintenanceStatus::Failed {
            error: "token unavailable".into(),
            at: 9,
        };
        assert_eq!(
            serde_json::to_value(&failed).unwrap(),
            serde_json::json!({"outcome": "failed", "error": "token unavailable", "at": 9})
        );
        let run = MaintenanceStatus::Ok {
            report: MaintenanceCounts {
                due: 3,
                ..Default::default()
            },
        };
        let v = serde_json::to_value(&run).unwrap();
        assert_eq!(
            (v["outcome"].as_str(), v["report"]["due"].as_u64()),
            (Some("ok"), Some(3))
        );
    }

    /// The route files, by module name.
    const ROUTE_FILES: &[(&str, &str)] = &[
        ("status", include_str!("status.rs")),
        ("sign", include_str!("sign.rs")),
        ("ignition", include_str!("ignition.rs")),
        ("users", include_str!("users.rs")),
        ("hkp", include_str!("hkp.rs")),
        ("x509", include_str!("x509.rs")),
        ("metrics", include_str!("metrics.rs")),
        ("openapi", include_str!("openapi.rs")),
    ];

    /// The names a file reaches through `super::`: `super::a::b` gives
    /// `a`, `use super::{a, b::c}` gives `a` and `b`.
    fn super_names(text: &str) -> Vec<String> {
        let ident = |s: &str| -> String {
            s.trim_start()
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect()
        };
        let mut names = Vec::new();
        for (i, _) in text.match_indices("super::") {
            let rest = &text[i + "super::".len()..];
            match rest.strip_prefix('{') {
                Some(inner) => {
                    let group = &inner[..inner.find('}').unwrap_or(inner.len())];
                    names.extend(group.split(',').map(ident).filter(|n| !n.is_empty()));
                }
                None => names.push(ident(rest)),
            }
        }
        names
    }

    #[test]
    fn route_files_share_only_the_shared_module_never_each_other() {
        let route_modules = [
            "routes", "status", "sign", "ignition", "users", "hkp", "x509", "metrics", "openapi",
        ];
        for (name, text) in ROUTE_FILES {
            for used in super_names(text) {
                assert!(
                    used == *name || !route_modules.contains(&used.as_str()),
                    "src/api/{name}.rs reaches into the route file {used}.rs: \
                     move what both need to shared.rs"
                );
            }
        }
        assert!(super_names("use super::shared::{a, b};").contains(&"shared".to_string()));
        assert_eq!(
            super_names("use super::{ApiError, users::x};"),
            ["ApiError", "users"]
        );
    }

    #[test]
    fn backoff_starts_after_the_configured_failures_and_doubles_to_a_cap() {
        let cfg = IgnitionConfig {
            backoff_after: 3,
            backoff_initial: Duration::from_secs(10),
            backoff_max: Duration::from_secs(35),
        };
        let t0 = Instant::now();
        let mut b = Backoff::default();
        assert_eq!(b.failed(&cfg, t0), None);
        assert_eq!(b.failed(&cfg, t0), None);
        assert_eq!(b.blocked_for(t0), None);
        assert_eq!(b.failed(&cfg, t0), Some(Duration::from_secs(10)));
        assert_eq!(b.blocked_for(t0), Some(Duration::from_secs(10)));
        assert_eq!(b.blocked_for(t0 + Duration::from_secs(11)), None);
        assert_eq!(b.failed(&cfg, t0), Some(Duration::from_secs(20)));
        assert_eq!(b.failed(&cfg, t0), Some(Duration::from_secs(35)));
        b.succeeded();
        assert_eq!(b.failures(), 0);
        assert_eq!(b.blocked_for(t0), None);
    }
}
