//! Configuration: one TOML file (`orgkey.toml`), read into raw serde structs
//! that refuse unknown keys, then validated into [`Config`] with every default
//! applied here and nowhere else. Secrets are never part of the config.

pub mod pkcs11_uri;
pub mod profile;

use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use pkcs11_uri::Pkcs11Uri;
pub use profile::{HsmProfile, OrgKeyAlgorithm, ProfileSoftwareToken};

/// Configuration errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// File
        path: PathBuf,
        /// Cause
        source: std::io::Error,
    },
    /// The TOML is malformed or has unknown keys.
    #[error("{path}: {message}")]
    Parse {
        /// File
        path: PathBuf,
        /// Parser message
        message: String,
    },
    /// A value is out of range or inconsistent.
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// A `pkcs11:` URI is malformed or carries forbidden attributes.
    #[error("invalid pkcs11: URI: {0}")]
    Pkcs11Uri(String),
}

/// Default listen address: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8443";
/// Default limit for `/v1/sign` bodies.
pub const DEFAULT_MAX_BODY: u64 = 64 * 1024 * 1024;
/// Default time a client has to send a request head (and a TLS handshake).
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time a connection may wait between requests.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default time a client has to send a request body.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(60);
/// Default cap on open client connections.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Default SQLite file name inside the data dir.
pub const DEFAULT_DB_FILE: &str = "orgkey.db";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    data_dir: Option<PathBuf>,
    node_id: Option<String>,
    #[serde(default)]
    domains: Vec<String>,
    certification_validity: Option<String>,
    token: RawToken,
    #[serde(default)]
    store: RawStore,
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    ignition: RawIgnition,
    #[serde(default)]
    maintenance: RawMaintenance,
    #[serde(default)]
    x509: RawX509,
    #[serde(default)]
    backup: RawBackup,
    #[serde(default)]
    rate_limits: RawRateLimits,
    #[serde(default)]
    metrics: RawMetrics,
    #[serde(default)]
    cluster: RawCluster,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    lease_ttl: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimits {
    default: Option<String>,
    #[serde(default)]
    clients: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackup {
    dir: Option<PathBuf>,
    interval: Option<String>,
    keep: Option<usize>,
    #[serde(default)]
    recipients: Vec<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawX509 {
    user_cert_validity: Option<String>,
    crl_validity: Option<String>,
    public_url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMaintenance {
    interval: Option<String>,
    renew_margin: Option<String>,
    inactive_after: Option<String>,
    org_key_renew_before: Option<String>,
    batch_size: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToken {
    profile: Option<String>,
    module: Option<PathBuf>,
    label: Option<String>,
    serial: Option<String>,
    uri: Option<String>,
    #[serde(default)]
    environment: BTreeMap<String, String>,
    sessions: Option<usize>,
    relogin: Option<bool>,
    deadline: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    sqlite: Option<PathBuf>,
    url: Option<String>,
    password_file: Option<PathBuf>,
    busy_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
    client_crls: Option<Vec<PathBuf>>,
    max_body: Option<String>,
    header_read_timeout: Option<String>,
    idle_timeout: Option<String>,
    body_timeout: Option<String>,
    max_connections: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIgnition {
    backoff_after: Option<u32>,
    backoff_initial: Option<String>,
    backoff_max: Option<String>,
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this came from.
    pub path: PathBuf,
    /// Directory holding the store and (for SoftHSM) the token.
    pub data_dir: PathBuf,
    /// This node's name in the audit log and (on a cluster) among the
    /// members: `node_id`, the host name by default.
    pub node_id: String,
    /// Managed mail domains, lower-case.
    pub domains: Vec<String>,
    /// Lifetime of an org key certification of a user ID.
    pub certification_validity: Duration,
    /// Token selection.
    pub token: TokenConfig,
    /// Store location.
    pub store: StoreConfig,
    /// HTTP server.
    pub server: ServerConfig,
    /// Ignition back-off.
    pub ignition: IgnitionConfig,
    /// Scheduled maintenance.
    pub maintenance: MaintenanceConfig,
    /// The org cert and S/MIME user certificates.
    pub x509: X509Config,
    /// Scheduled state backups.
    pub backup: BackupConfig,
    /// Per-client request rate limits.
    pub rate_limits: RateLimits,
    /// Where `/metrics` is served.
    pub metrics: MetricsConfig,
    /// The leader lease of the singleton jobs.
    pub cluster: ClusterConfig,
}

/// `[cluster]`: the leader lease under which one node runs the singleton
/// jobs (maintenance, CRL refresh, org key renewal, scheduled backups).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterConfig {
    /// How long the lease holds without renewal: a dead leader is replaced
    /// within it. Renewed every third of it.
    pub lease_ttl: Duration,
}

/// Default `[cluster] lease_ttl`.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(15);

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            lease_ttl: DEFAULT_LEASE_TTL,
        }
    }
}

/// Where `GET /metrics` (Prometheus) is served.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricsConfig {
    /// A listen address of its own (plain HTTP, `/metrics` only); `None`:
    /// `/metrics` is a route of the API listener.
    pub listen: Option<SocketAddr>,
}

/// A token bucket: `per_second` requests on average, bursts of up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Sustained requests per second.
    pub per_second: f64,
    /// Largest burst.
    pub burst: f64,
}

impl Rate {
    /// Parses "100/s", "600/m", "36000/h" (burst = one second's worth, at
    /// least 1) or "off".
    pub fn parse(s: &str) -> Result<Option<Rate>, ConfigError> {
        let s = s.trim();
        if s == "off" {
            return Ok(None);
        }
        let bad = || {
            ConfigError::Invalid(format!(
                "rate {s:?}: expected N/s, N/m, N/h or \"off\" (e.g. \"100/s\")"
            ))
        };
        let (n, unit) = s.split_once('/').ok_or_else(bad)?;
        let n: f64 = n.trim().parse().map_err(|_| bad())?;
        let secs = match unit.trim() {
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        if !(n.is_finite() && n > 0.0) {
            return Err(bad());
        }
        let per_second = n / secs;
        Ok(Some(Rate {
            per_second,
            burst: per_second.max(1.0),
        }))
    }
}

/// Rate limits by client name (`None`: unlimited).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RateLimits {
    /// For clients without their own entry.
    pub default: Option<Rate>,
    /// Per client name.
    pub clients: BTreeMap<String, Option<Rate>>,
}

impl RateLimits {
    /// The limit that applies to `client`.
    pub fn for_client(&self, client: &str) -> Option<Rate> {
        match self.clients.get(client) {
            Some(r) => *r,
            None => self.default,
        }
    }
}

/// Scheduled state backups (encrypted to the org key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupConfig {
    /// Where scheduled backups go.
    pub dir: PathBuf,
    /// Time between scheduled backups; `None`: no scheduled backups.
    pub interval: Option<Duration>,
    /// How many scheduled backups to keep (older ones are deleted).
    pub keep: usize,
    /// Extra recipient certificates (armored OpenPGP files), e.g. an offline
    /// recovery key.
    pub recipients: Vec<PathBuf>,
}

/// The org cert (X.509 CA) and the user certificates it issues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct X509Config {
    /// Lifetime of a user certificate (never past the org cert's).
    pub user_cert_validity: Duration,
    /// How long a CRL is valid (its nextUpdate); it is renewed before.
    pub crl_validity: Duration,
    /// Base URL under which relying parties reach this appliance, for the
    /// CRL distribution point in user certificates (`None`: no CRL DP).
    pub public_url: Option<String>,
}

impl Default for X509Config {
    fn default() -> Self {
        Self {
            user_cert_validity: Duration::from_secs(14 * 86400),
            crl_validity: Duration::from_secs(86400),
            public_url: None,
        }
    }
}

/// Scheduled maintenance: certification renewal and org key renewal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaintenanceConfig {
    /// Time between runs inside `orgkey serve`.
    pub interval: Duration,
    /// A certification is renewed when it expires before the next run plus
    /// this margin, so a missed run or two leaves no gap.
    pub renew_margin: Duration,
    /// Users without activity for this long are no longer renewed.
    pub inactive_after: Duration,
    /// The org key renews its own expiry this long before it expires.
    pub org_key_renew_before: Duration,
    /// Users read from the store per batch.
    pub batch_size: usize,
}

impl Default for MaintenanceConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(12 * 3600),
            renew_margin: Duration::from_secs(2 * 86400),
            inactive_after: Duration::from_secs(90 * 86400),
            org_key_renew_before: Duration::from_secs(86400),
            batch_size: 500,
        }
    }
}

/// Default lifetime of a certification.
pub const DEFAULT_CERTIFICATION_VALIDITY: Duration = Duration::from_secs(14 * 86400);

impl Config {
    /// Whether `email`'s domain is one of the managed domains (exact match,
    /// case-insensitive; subdomains only when listed themselves).
    pub fn is_managed_email(&self, email: &str) -> bool {
        managed_domain_of(&self.domains, email).is_some()
    }
}

/// The managed domain `email` belongs to, if any.
pub fn managed_domain_of<'a>(domains: &'a [String], email: &str) -> Option<&'a str> {
    let (local, domain) = email.rsplit_once('@')?;
    if local.is_empty() {
        return None;
    }
    let domain = domain.trim_end_matches('.');
    domains
        .iter()
        .find(|d| d.eq_ignore_ascii_case(domain))
        .map(String::as_str)
}

/// Which token, through which module.
#[derive(Debug, Clone)]
pub struct TokenConfig {
    /// The HSM profile.
    pub profile: HsmProfile,
    /// Explicit module path (from `module` or the URI's module-path).
    pub module: Option<PathBuf>,
    /// Token selection criteria.
    pub selector: TokenSelector,
    /// Environment variables set before the module is loaded.
    pub environment: BTreeMap<String, String>,
    /// Session pool size.
    pub sessions: usize,
    /// After device or link loss, log in again with the ignition passphrase
    /// held in memory (false: go back to sealed and wait for ignition).
    pub relogin: bool,
    /// Longest a request waits for a token operation.
    pub deadline: Duration,
}

/// How the token is found: label and/or serial (never slot number).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenSelector {
    /// CK_TOKEN_INFO label.
    pub label: Option<String>,
    /// CK_TOKEN_INFO serial number.
    pub serial: Option<String>,
    /// CK_TOKEN_INFO manufacturer.
    pub manufacturer: Option<String>,
    /// CK_TOKEN_INFO model.
    pub model: Option<String>,
}

impl std::fmt::Display for TokenSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if let Some(l) = &self.label {
            parts.push(format!("label {l:?}"));
        }
        if let Some(s) = &self.serial {
            parts.push(format!("serial {s:?}"));
        }
        if let Some(m) = &self.manufacturer {
            parts.push(format!("manufacturer {m:?}"));
        }
        if let Some(m) = &self.model {
            parts.push(format!("model {m:?}"));
        }
        f.write_str(&parts.join(", "))
    }
}

impl TokenConfig {
    /// The module to load: explicit path, else the first profile path present.
    pub fn module_path(&self) -> Result<PathBuf, ConfigError> {
        if let Some(m) = &self.module {
            return Ok(m.clone());
        }
        self.profile.find_module().map(Path::to_path_buf).ok_or_else(|| {
            ConfigError::Invalid(format!(
                "no PKCS#11 module of profile {} found (tried {}); install it or set [token] module",
                self.profile.name,
                self.profile
                    .module_paths
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
    }
}

/// Store location.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// SQLite database file (the store unless `postgres` is set).
    pub sqlite: PathBuf,
    /// The PostgreSQL store several nodes share (`[store] url`), instead of
    /// the SQLite file.
    pub postgres: Option<PostgresConfig>,
    /// Longest wait for a lock another writer holds before a write fails
    /// (and a signature that needs its audit row is refused with 503).
    pub busy_timeout: Duration,
}

/// A PostgreSQL store: where it is, and where its password is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresConfig {
    /// `postgres://user@host:port/db`, without a password.
    pub url: String,
    /// A file holding the password (one line), absolute.
    pub password_file: Option<PathBuf>,
}

impl PostgresConfig {
    /// The password from `password_file` (its first line), if one is set.
    pub fn read_password(&self) -> std::io::Result<Option<secrecy::SecretString>> {
        let Some(path) = &self.password_file else {
            return Ok(None);
        };
        let text = zeroize::Zeroizing::new(
            std::fs::read_to_string(path)
                .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?,
        );
        let line = text.lines().next().unwrap_or_default();
        if line.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} is empty", path.display()),
            ));
        }
        Ok(Some(secrecy::SecretString::from(line.to_string())))
    }
}

/// Checks a `[store] url`: a `postgres://` or `postgresql://` URL that
/// carries no password (a password belongs in `password_file`, never in
/// the config or on a command line).
pub fn check_store_url(url: &str) -> Result<(), ConfigError> {
    let bad = |why: &str| ConfigError::Invalid(format!("[store] url: {why}"));
    let parsed = url::Url::parse(url).map_err(|e| bad(&format!("not a URL ({e})")))?;
    if !matches!(parsed.scheme(), "postgres" | "postgresql") {
        return Err(bad(&format!(
            "unsupported scheme {:?}: expected postgres://user@host:port/db",
            parsed.scheme()
        )));
    }
    if parsed.password().is_some()
        || parsed
            .query_pairs()
            .any(|(k, _)| k.eq_ignore_ascii_case("password"))
    {
        return Err(bad(
            "the URL carries a password; put the password in a file named by \
             [store] password_file (mode 0600) and remove it from the URL",
        ));
    }
    if parsed.path().trim_start_matches('/').is_empty() {
        return Err(bad("name the database: postgres://user@host:port/db"));
    }
    Ok(())
}

/// Checks a node id: 1 to 64 letters, digits, '.', '-' or '_'.
pub fn check_node_id(id: &str) -> Result<(), ConfigError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::Invalid(format!(
            "node_id = {id:?}: use 1 to 64 letters, digits, '.', '-' or '_'"
        )))
    }
}

/// HTTP server settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Listen address.
    pub listen: SocketAddr,
    /// TLS certificate chain (PEM) and key, when TLS is on.
    pub tls: Option<TlsFiles>,
    /// Maximum `/v1/sign` body size in bytes.
    pub max_body: u64,
    /// How long a client has, on a new connection (after the TLS
    /// handshake, which has as long again) or once it sent the first byte
    /// of a further request, to send the whole request head.
    pub header_read_timeout: Duration,
    /// How long a connection may sit between requests (after a response,
    /// before the next request's first byte), and how long a response may
    /// wait for a client that does not read it.
    pub idle_timeout: Duration,
    /// How long a client has to send a request body, from when the server
    /// starts reading it.
    pub body_timeout: Duration,
    /// Most client connections open at once; further ones are closed at
    /// once until one ends.
    pub max_connections: usize,
}

/// TLS certificate and key files.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM file of the CA certificates client certificates are verified
    /// against (mTLS client identities, decision 0022); `None`: no client
    /// certificates are asked for.
    pub client_ca: Option<PathBuf>,
    /// CRLs (PEM or DER files) of the client CAs, read at start; empty:
    /// no revocation check.
    pub client_crls: Vec<PathBuf>,
}

/// Ignition back-off: after `after` consecutive wrong passphrases, further
/// attempts are refused for `initial`, doubling per failure up to `max`.
#[derive(Debug, Clone, Copy)]
pub struct IgnitionConfig {
    /// Failures before back-off starts.
    pub backoff_after: u32,
    /// First delay.
    pub backoff_initial: Duration,
    /// Longest delay.
    pub backoff_max: Duration,
}

impl Default for IgnitionConfig {
    fn default() -> Self {
        Self {
            backoff_after: 5,
            backoff_initial: Duration::from_secs(10),
            backoff_max: Duration::from_secs(3600),
        }
    }
}

/// Parses sizes like `64MiB`, `512KiB`, `1GiB`, `1000` (bytes).
pub fn parse_size(s: &str) -> Result<u64, ConfigError> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| ConfigError::Invalid(format!("size {s:?}: expected a number like 64MiB")))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => {
            return Err(ConfigError::Invalid(format!(
                "size {s:?}: unknown unit {other:?} (use B, KiB, MiB or GiB)"
            )));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| ConfigError::Invalid(format!("size {s:?} is too large")))
}

fn parse_duration(what: &str, s: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(s)
        .map_err(|e| ConfigError::Invalid(format!("{what} = {s:?}: {e} (examples: 10s, 5m, 1h)")))
}

fn normalize_domain(d: &str) -> Result<String, ConfigError> {
    let d = d.trim().trim_end_matches('.').to_ascii_lowercase();
    let ok = !d.is_empty()
        && d.contains('.')
        && d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if ok {
        Ok(d)
    } else {
        Err(ConfigError::Invalid(format!(
            "domain {d:?} is not a valid DNS name (use the ASCII/punycode form, e.g. example.com)"
        )))
    }
}

fn maintenance_config(
    raw: RawMaintenance,
    certification_validity: Duration,
) -> Result<MaintenanceConfig, ConfigError> {
    let d = MaintenanceConfig::default();
    let dur = |what: &str, v: Option<String>, default: Duration| match v {
        Some(s) => parse_duration(&format!("[maintenance] {what}"), &s),
        None => Ok(default),
    };
    let m = MaintenanceConfig {
        interval: dur("interval", raw.interval, d.interval)?,
        renew_margin: dur("renew_margin", raw.renew_margin, d.renew_margin)?,
        inactive_after: dur("inactive_after", raw.inactive_after, d.inactive_after)?,
        org_key_renew_before: dur(
            "org_key_renew_before",
            raw.org_key_renew_before,
            d.org_key_renew_before,
        )?,
        batch_size: raw.batch_size.unwrap_or(d.batch_size),
    };
    if m.interval < Duration::from_secs(60) {
        return Err(ConfigError::Invalid(
            "[maintenance] interval must be at least 1m".into(),
        ));
    }
    if m.interval + m.renew_margin >= certification_validity {
        return Err(ConfigError::Invalid(format!(
            "[maintenance] interval + renew_margin ({}) must be shorter than certification_validity ({}), \
             or every run would renew every certification",
            humantime::format_duration(m.interval + m.renew_margin),
            humantime::format_duration(certification_validity)
        )));
    }
    if m.org_key_renew_before < m.interval {
        return Err(ConfigError::Invalid(
            "[maintenance] org_key_renew_before must not be shorter than interval, or the org key \
             could expire between two runs"
                .into(),
        ));
    }
    if !(1..=100_000).contains(&m.batch_size) {
        return Err(ConfigError::Invalid(
            "[maintenance] batch_size must be between 1 and 100000".into(),
        ));
    }
    Ok(m)
}

fn x509_config(raw: RawX509) -> Result<X509Config, ConfigError> {
    let d = X509Config::default();
    let c = X509Config {
        user_cert_validity: match raw.user_cert_validity.as_deref() {
            Some(s) => parse_duration("[x509] user_cert_validity", s)?,
            None => d.user_cert_validity,
        },
        crl_validity: match raw.crl_validity.as_deref() {
            Some(s) => parse_duration("[x509] crl_validity", s)?,
            None => d.crl_validity,
        },
        public_url: raw.public_url.map(|u| u.trim_end_matches('/').to_string()),
    };
    if c.user_cert_validity < Duration::from_secs(3600) {
        return Err(ConfigError::Invalid(
            "[x509] user_cert_validity must be at least 1h".into(),
        ));
    }
    if c.crl_validity < Duration::from_secs(3600) {
        return Err(ConfigError::Invalid(
            "[x509] crl_validity must be at least 1h".into(),
        ));
    }
    if let Some(u) = &c.public_url {
        let ok = (u.starts_with("http://") || u.starts_with("https://"))
            && u.is_ascii()
            && !u.contains(char::is_whitespace)
            && u.len() < 512;
        if !ok {
            return Err(ConfigError::Invalid(format!(
                "[x509] public_url = {u:?}: expected an http:// or https:// URL"
            )));
        }
    }
    Ok(c)
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.to_path_buf(),
            source: e,
        })?;
        Self::from_toml(&text, path)
    }

    /// Validates config text; relative paths are resolved against the file's
    /// directory. Three steps: parse the TOML into raw structs (no file is
    /// read), load the HSM profile it names (a built-in one, or a file
    /// beside the config), then validate and apply every default.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let raw = parse(text, path)?;
        let base = config_dir(path);
        let profile = load_profile(&raw.token, &base)?;
        validate(raw, profile, path, &base)
    }
}

/// Step 1: TOML into the raw structs; unknown keys are refused.
fn parse(text: &str, path: &Path) -> Result<RawConfig, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// The absolute directory of the config file, which relative paths in it
/// are relative to.
fn config_dir(path: &Path) -> PathBuf {
    let base = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    std::path::absolute(&base).unwrap_or(base)
}

/// Step 2: the HSM profile `[token] profile` names (softhsm2 by default);
/// a path is read from disk, relative to the config file.
fn load_profile(token: &RawToken, base: &Path) -> Result<HsmProfile, ConfigError> {
    HsmProfile::load(token.profile.as_deref().unwrap_or("softhsm2"), base)
}

/// Step 3: checks every value and applies the defaults; reads no file.
fn validate(
    raw: RawConfig,
    profile: HsmProfile,
    path: &Path,
    base: &Path,
) -> Result<Config, ConfigError> {
    let data_dir = base.join(raw.data_dir.unwrap_or_else(|| PathBuf::from(".")));
    let domains = domains(&raw.domains)?;
    let token = token_config(raw.token, profile, base)?;
    let store = store_config(raw.store, &data_dir, base)?;
    let node_id = match raw.node_id {
        Some(id) => {
            check_node_id(&id)?;
            id
        }
        None => crate::store::host_name(),
    };
    let server = server_config(raw.server, base)?;
    let ignition = ignition_config(raw.ignition)?;
    let certification_validity = certification_validity(raw.certification_validity.as_deref())?;
    let maintenance = maintenance_config(raw.maintenance, certification_validity)?;
    let x509 = x509_config(raw.x509)?;
    crl_outlives_maintenance_interval(&x509, &maintenance)?;
    let backup = backup_config(raw.backup, &data_dir, base, store.postgres.is_some())?;
    let rate_limits = rate_limits(raw.rate_limits)?;
    let metrics = metrics_config(raw.metrics, &server)?;
    let cluster = cluster_config(raw.cluster)?;
    Ok(Config {
        path: path.to_path_buf(),
        data_dir,
        node_id,
        domains,
        certification_validity,
        token,
        store,
        server,
        ignition,
        maintenance,
        x509,
        backup,
        rate_limits,
        metrics,
        cluster,
    })
}

/// `[cluster] lease_ttl`: at least 1 s (it is renewed every third of it,
/// and each renewal is a database round trip), at most 10 min (a dead
/// leader's jobs wait that long).
fn cluster_config(raw: RawCluster) -> Result<ClusterConfig, ConfigError> {
    let lease_ttl = match raw.lease_ttl.as_deref() {
        None => DEFAULT_LEASE_TTL,
        Some(s) => parse_duration("[cluster] lease_ttl", s)?,
    };
    if lease_ttl < Duration::from_secs(1) || lease_ttl > Duration::from_secs(600) {
        return Err(ConfigError::Invalid(format!(
            "[cluster] lease_ttl = {}: must be between 1s and 10m (the lease is renewed every \
             third of it; a dead leader is replaced within it)",
            humantime::format_duration(lease_ttl)
        )));
    }
    Ok(ClusterConfig { lease_ttl })
}

/// `[metrics] listen`: an address of its own, never the API's.
fn metrics_config(raw: RawMetrics, server: &ServerConfig) -> Result<MetricsConfig, ConfigError> {
    let listen = match raw.listen.as_deref() {
        None => None,
        Some(s) => {
            let addr: SocketAddr = s.parse().map_err(|_| {
                ConfigError::Invalid(format!("[metrics] listen = {s:?}: expected IP:PORT"))
            })?;
            if addr.port() != 0 && addr == server.listen {
                return Err(ConfigError::Invalid(format!(
                    "[metrics] listen = {s:?} is [server] listen too: give /metrics an address of its own, \
                     or leave [metrics] listen out to serve it on the API listener"
                )));
            }
            Some(addr)
        }
    };
    Ok(MetricsConfig { listen })
}

/// Lower-case, deduplicated, each a DNS name.
fn domains(raw: &[String]) -> Result<Vec<String>, ConfigError> {
    let mut domains = Vec::new();
    for d in raw {
        let d = normalize_domain(d)?;
        if !domains.contains(&d) {
            domains.push(d);
        }
    }
    Ok(domains)
}

fn token_config(t: RawToken, profile: HsmProfile, base: &Path) -> Result<TokenConfig, ConfigError> {
    let (selector, module) = token_selector(t.label, t.serial, t.uri.as_deref(), t.module, base)?;
    let deadline = match t.deadline.as_deref() {
        Some(s) => parse_duration("[token] deadline", s)?,
        None => Duration::from_secs(10),
    };
    if deadline < Duration::from_millis(100) || deadline > Duration::from_secs(600) {
        return Err(ConfigError::Invalid(
            "[token] deadline must be between 100ms and 10m".into(),
        ));
    }
    let sessions = t.sessions.unwrap_or(profile.limits.max_sessions.min(16));
    if sessions == 0 || sessions > profile.limits.max_sessions {
        return Err(ConfigError::Invalid(format!(
            "[token] sessions = {sessions}: must be between 1 and {} (profile {})",
            profile.limits.max_sessions, profile.name
        )));
    }
    Ok(TokenConfig {
        profile,
        module,
        selector,
        environment: module_environment(t.environment, base),
        sessions,
        relogin: t.relogin.unwrap_or(true),
        deadline,
    })
}

/// Which token (label, serial or a `pkcs11:` URI, never a slot) and the
/// module path given explicitly (`module` or the URI's module-path).
fn token_selector(
    label: Option<String>,
    serial: Option<String>,
    uri: Option<&str>,
    module: Option<PathBuf>,
    base: &Path,
) -> Result<(TokenSelector, Option<PathBuf>), ConfigError> {
    let mut selector = TokenSelector {
        label,
        serial,
        ..Default::default()
    };
    let mut module = module.map(|m| base.join(m));
    if let Some(uri) = uri {
        if selector.label.is_some() || selector.serial.is_some() {
            return Err(ConfigError::Invalid(
                "[token]: give either uri or label/serial, not both".into(),
            ));
        }
        let u = Pkcs11Uri::parse(uri)?;
        selector = TokenSelector {
            label: u.token,
            serial: u.serial,
            manufacturer: u.manufacturer,
            model: u.model,
        };
        if let Some(mp) = u.module_path {
            if module.is_some() {
                return Err(ConfigError::Invalid(
                    "[token]: module given both as module and in the URI's module-path".into(),
                ));
            }
            module = Some(PathBuf::from(mp));
        }
    }
    if selector.label.is_none() && selector.serial.is_none() {
        return Err(ConfigError::Invalid(
            "[token] must name the token by label, serial or uri (slot numbers are not stable)"
                .into(),
        ));
    }
    Ok((selector, module))
}

/// The module's environment; `./` and `../` values are paths relative to
/// the config file too.
fn module_environment(env: BTreeMap<String, String>, base: &Path) -> BTreeMap<String, String> {
    env.into_iter()
        .map(|(k, v)| {
            let v = if v.starts_with("./") || v.starts_with("../") {
                base.join(&v).display().to_string()
            } else {
                v
            };
            (k, v)
        })
        .collect()
}

fn store_config(raw: RawStore, data_dir: &Path, base: &Path) -> Result<StoreConfig, ConfigError> {
    let postgres = match raw.url {
        Some(url) => {
            check_store_url(&url)?;
            if raw.sqlite.is_some() {
                return Err(ConfigError::Invalid(
                    "[store] sets both sqlite and url: a store is either the SQLite file or \
                     the PostgreSQL database"
                        .into(),
                ));
            }
            Some(PostgresConfig {
                url,
                password_file: raw.password_file.map(|p| base.join(p)),
            })
        }
        None => {
            if raw.password_file.is_some() {
                return Err(ConfigError::Invalid(
                    "[store] password_file is set without url".into(),
                ));
            }
            None
        }
    };
    Ok(StoreConfig {
        postgres,
        sqlite: data_dir.join(raw.sqlite.unwrap_or_else(|| DEFAULT_DB_FILE.into())),
        busy_timeout: match raw.busy_timeout.as_deref() {
            Some(s) => parse_duration("[store] busy_timeout", s)?,
            None => Duration::from_secs(10),
        },
    })
}

fn server_config(raw: RawServer, base: &Path) -> Result<ServerConfig, ConfigError> {
    let listen_s = raw.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
    let listen: SocketAddr = listen_s.parse().map_err(|_| {
        ConfigError::Invalid(format!("[server] listen = {listen_s:?}: expected IP:PORT"))
    })?;
    let client_crls: Vec<PathBuf> = raw
        .client_crls
        .unwrap_or_default()
        .into_iter()
        .map(|p| base.join(p))
        .collect();
    let tls = match (raw.tls_cert, raw.tls_key) {
        (Some(c), Some(k)) => Some(TlsFiles {
            cert: base.join(c),
            key: base.join(k),
            client_ca: raw.client_ca.map(|p| base.join(p)),
            client_crls,
        }),
        (None, None) => {
            if raw.client_ca.is_some() || !client_crls.is_empty() {
                return Err(ConfigError::Invalid(
                    "[server] client_ca and client_crls need TLS: set tls_cert and tls_key too"
                        .into(),
                ));
            }
            None
        }
        _ => {
            return Err(ConfigError::Invalid(
                "[server]: tls_cert and tls_key must be given together".into(),
            ));
        }
    };
    if let Some(t) = &tls
        && t.client_ca.is_none()
        && !t.client_crls.is_empty()
    {
        return Err(ConfigError::Invalid(
            "[server] client_crls needs client_ca (the CAs whose CRLs they are)".into(),
        ));
    }
    let max_body = match raw.max_body.as_deref() {
        Some(s) => parse_size(s)?,
        None => DEFAULT_MAX_BODY,
    };
    if max_body == 0 {
        return Err(ConfigError::Invalid(
            "[server] max_body must be above 0".into(),
        ));
    }
    let timeout = |name: &str, raw: Option<&str>, default: Duration, max: Duration| {
        let what = format!("[server] {name}");
        let d = match raw {
            Some(s) => parse_duration(&what, s)?,
            None => default,
        };
        if d < Duration::from_millis(100) || d > max {
            return Err(ConfigError::Invalid(format!(
                "{what} must be between 100ms and {}",
                humantime::format_duration(max)
            )));
        }
        Ok(d)
    };
    let header_read_timeout = timeout(
        "header_read_timeout",
        raw.header_read_timeout.as_deref(),
        DEFAULT_HEADER_READ_TIMEOUT,
        Duration::from_secs(600),
    )?;
    let idle_timeout = timeout(
        "idle_timeout",
        raw.idle_timeout.as_deref(),
        DEFAULT_IDLE_TIMEOUT,
        Duration::from_secs(3600),
    )?;
    let body_timeout = timeout(
        "body_timeout",
        raw.body_timeout.as_deref(),
        DEFAULT_BODY_TIMEOUT,
        Duration::from_secs(3600),
    )?;
    let max_connections = raw.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
    if !(1..=1 << 20).contains(&max_connections) {
        return Err(ConfigError::Invalid(
            "[server] max_connections must be between 1 and 1048576".into(),
        ));
    }
    Ok(ServerConfig {
        listen,
        tls,
        max_body,
        header_read_timeout,
        idle_timeout,
        body_timeout,
        max_connections,
    })
}

fn ignition_config(raw: RawIgnition) -> Result<IgnitionConfig, ConfigError> {
    let d = IgnitionConfig::default();
    let ignition = IgnitionConfig {
        backoff_after: raw.backoff_after.unwrap_or(d.backoff_after),
        backoff_initial: match raw.backoff_initial.as_deref() {
            Some(s) => parse_duration("[ignition] backoff_initial", s)?,
            None => d.backoff_initial,
        },
        backoff_max: match raw.backoff_max.as_deref() {
            Some(s) => parse_duration("[ignition] backoff_max", s)?,
            None => d.backoff_max,
        },
    };
    if ignition.backoff_after == 0 || ignition.backoff_initial.is_zero() {
        return Err(ConfigError::Invalid(
            "[ignition]: backoff_after and backoff_initial must be above 0".into(),
        ));
    }
    if ignition.backoff_max < ignition.backoff_initial {
        return Err(ConfigError::Invalid(
            "[ignition]: backoff_max must not be below backoff_initial".into(),
        ));
    }
    Ok(ignition)
}

fn certification_validity(raw: Option<&str>) -> Result<Duration, ConfigError> {
    let v = match raw {
        Some(s) => parse_duration("certification_validity", s)?,
        None => DEFAULT_CERTIFICATION_VALIDITY,
    };
    if v < Duration::from_secs(3600) {
        return Err(ConfigError::Invalid(
            "certification_validity must be at least 1h".into(),
        ));
    }
    Ok(v)
}

/// Only revocations and maintenance renew CRLs (fetching one never signs):
/// a CRL must outlive the gap between two runs.
fn crl_outlives_maintenance_interval(
    x509: &X509Config,
    maintenance: &MaintenanceConfig,
) -> Result<(), ConfigError> {
    if x509.crl_validity <= maintenance.interval {
        return Err(ConfigError::Invalid(format!(
            "[x509] crl_validity ({}) must be longer than [maintenance] interval ({}), or \
             the CRL would lapse between two maintenance runs",
            humantime::format_duration(x509.crl_validity),
            humantime::format_duration(maintenance.interval)
        )));
    }
    Ok(())
}

fn backup_config(
    raw: RawBackup,
    data_dir: &Path,
    base: &Path,
    postgres: bool,
) -> Result<BackupConfig, ConfigError> {
    let interval = match raw.interval.as_deref() {
        // A PostgreSQL store is shared and backed up by whichever node
        // holds the leader lease, into that node's own directory: off
        // unless the operator says where backups should land.
        None if postgres => None,
        None => Some(Duration::from_secs(86_400)),
        Some("off") => None,
        Some(s) => {
            let d = parse_duration("[backup] interval", s)?;
            if d < Duration::from_secs(60) {
                return Err(ConfigError::Invalid(
                    "[backup] interval must be at least 1m (or \"off\")".into(),
                ));
            }
            Some(d)
        }
    };
    let keep = raw.keep.unwrap_or(7);
    if keep == 0 {
        return Err(ConfigError::Invalid(
            "[backup] keep must be at least 1".into(),
        ));
    }
    Ok(BackupConfig {
        dir: data_dir.join(raw.dir.unwrap_or_else(|| "backups".into())),
        interval,
        keep,
        recipients: raw.recipients.iter().map(|p| base.join(p)).collect(),
    })
}

fn rate_limits(raw: RawRateLimits) -> Result<RateLimits, ConfigError> {
    let mut limits = RateLimits {
        default: match raw.default.as_deref() {
            Some(r) => Rate::parse(r)?,
            None => None,
        },
        clients: BTreeMap::new(),
    };
    for (name, r) in &raw.clients {
        limits.clients.insert(name.clone(), Rate::parse(r)?);
    }
    Ok(limits)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "[token]\nlabel = \"orgkey\"\n";

    fn load(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, Path::new("/srv/orgkey/orgkey.toml"))
    }

    #[test]
    fn parsing_reads_no_file_and_refuses_unknown_keys() {
        let path = Path::new("/srv/orgkey/orgkey.toml");
        // The profile file does not exist: parsing does not look for it...
        let text = "[token]\nlabel = \"x\"\nprofile = \"nowhere/custom.toml\"\n";
        let raw = parse(text, path).unwrap();
        assert_eq!(raw.token.profile.as_deref(), Some("nowhere/custom.toml"));
        // ...loading does, beside the config file.
        let e = load_profile(&raw.token, &config_dir(path)).unwrap_err();
        assert!(
            matches!(&e, ConfigError::Read { path, .. }
                if path == Path::new("/srv/orgkey/nowhere/custom.toml")),
            "{e}"
        );
        let e = parse("[token]\nlabel = \"x\"\nlable = \"typo\"\n", path).unwrap_err();
        assert!(matches!(&e, ConfigError::Parse { .. }), "{e}");
    }

    #[test]
    fn profiles_load_by_name_or_from_a_file_beside_the_config() {
        let base = Path::new("/srv/orgkey");
        let raw = parse(MINIMAL, &base.join("orgkey.toml")).unwrap();
        assert_eq!(load_profile(&raw.token, base).unwrap().name, "softhsm2");
        let raw = parse(
            "[token]\nlabel = \"x\"\nprofile = \"nonesuch\"\n",
            &base.join("orgkey.toml"),
        )
        .unwrap();
        let e = load_profile(&raw.token, base).unwrap_err().to_string();
        assert!(
            e.contains("unknown HSM profile \"nonesuch\"") && e.contains("softhsm2"),
            "{e}"
        );

        let dir = tempfile::tempdir().unwrap();
        let builtin = profile::BUILTIN
            .iter()
            .find(|(n, _)| *n == "softhsm2")
            .unwrap()
            .1;
        let custom = builtin.replacen("name = \"softhsm2\"", "name = \"custom\"", 1);
        std::fs::write(dir.path().join("custom.toml"), custom).unwrap();
        let cfg = dir.path().join("orgkey.toml");
        std::fs::write(&cfg, "[token]\nlabel = \"x\"\nprofile = \"custom.toml\"\n").unwrap();
        assert_eq!(Config::load(&cfg).unwrap().token.profile.name, "custom");
    }

    #[test]
    fn validation_takes_the_loaded_profile_and_resolves_paths() {
        let path = Path::new("/srv/orgkey/orgkey.toml");
        let raw = parse(
            "data_dir = \"data\"\n[token]\nlabel = \"x\"\nprofile = \"nowhere/custom.toml\"\n\
             [token.environment]\nSOFTHSM2_CONF = \"./softhsm2.conf\"\nOTHER = \"as is\"\n\
             [backup]\nrecipients = [\"recovery.asc\"]\n",
            path,
        )
        .unwrap();
        let mut profile = HsmProfile::builtin("softhsm2").unwrap();
        profile.limits.max_sessions = 2;
        let c = validate(raw, profile, path, &config_dir(path)).unwrap();
        assert_eq!(c.token.sessions, 2, "bounded by the profile it was given");
        assert_eq!(c.data_dir, Path::new("/srv/orgkey/data"));
        assert_eq!(c.store.sqlite, Path::new("/srv/orgkey/data/orgkey.db"));
        assert_eq!(c.backup.dir, Path::new("/srv/orgkey/data/backups"));
        assert_eq!(c.backup.recipients, [Path::new("/srv/orgkey/recovery.asc")]);
        assert_eq!(
            c.token.environment["SOFTHSM2_CONF"],
            "/srv/orgkey/./softhsm2.conf"
        );
        assert_eq!(c.token.environment["OTHER"], "as is");
        let raw = parse("[token]\nlabel = \"x\"\nsessions = 3\n", path).unwrap();
        let mut profile = HsmProfile::builtin("softhsm2").unwrap();
        profile.limits.max_sessions = 2;
        let e = validate(raw, profile, path, &config_dir(path)).unwrap_err();
        assert!(e.to_string().contains("between 1 and 2"), "{e}");
    }

    #[test]
    fn ignition_backup_and_store_settings_are_checked() {
        let c = load(&format!(
            "{MINIMAL}[store]\nbusy_timeout = \"300ms\"\n[backup]\ninterval = \"off\"\nkeep = 2\n\
             [ignition]\nbackoff_after = 3\nbackoff_initial = \"1s\"\nbackoff_max = \"1m\"\n"
        ))
        .unwrap();
        assert_eq!(c.store.busy_timeout, Duration::from_millis(300));
        assert_eq!((c.backup.interval, c.backup.keep), (None, 2));
        assert_eq!(c.ignition.backoff_after, 3);
        assert_eq!(c.ignition.backoff_max, Duration::from_secs(60));
        for (bad, why) in [
            ("[backup]\nkeep = 0\n", "keep must be at least 1"),
            ("[backup]\ninterval = \"10s\"\n", "at least 1m"),
            ("[ignition]\nbackoff_after = 0\n", "must be above 0"),
            (
                "[ignition]\nbackoff_initial = \"1h\"\nbackoff_max = \"1m\"\n",
                "backoff_max must not be below",
            ),
            ("[server]\nmax_body = \"0\"\n", "max_body must be above 0"),
            (
                "[server]\nheader_read_timeout = \"0s\"\n",
                "header_read_timeout must be between 100ms and 10m",
            ),
            (
                "[server]\nidle_timeout = \"2h\"\n",
                "idle_timeout must be between 100ms and 1h",
            ),
            (
                "[server]\nbody_timeout = \"soon\"\n",
                "[server] body_timeout",
            ),
            (
                "[server]\nmax_connections = 0\n",
                "max_connections must be between 1",
            ),
            ("[token.x]\n", "unknown field"),
            ("[store]\nbusy_timeout = \"soon\"\n", "[store] busy_timeout"),
        ] {
            let e = load(&format!("{MINIMAL}{bad}")).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn a_postgres_store_is_a_url_without_a_password_and_a_node_has_an_id() {
        let c = load(&format!(
            "node_id = \"node-a\"\n{MINIMAL}[store]\nurl = \"postgres://orgkey@db.example:5432/orgkey\"\n\
             password_file = \"db-password\"\n"
        ))
        .unwrap();
        assert_eq!(c.node_id, "node-a");
        assert_eq!(
            c.store.postgres,
            Some(PostgresConfig {
                url: "postgres://orgkey@db.example:5432/orgkey".into(),
                password_file: Some(PathBuf::from("/srv/orgkey/db-password")),
            })
        );
        // Scheduled state backups of a shared store: off unless asked for.
        assert_eq!(c.backup.interval, None);
        // Without url: SQLite, the node named after the host.
        let c = load(MINIMAL).unwrap();
        assert_eq!(c.store.postgres, None);
        assert_eq!(c.node_id, crate::store::host_name());
        let pg = "[store]\nurl = \"postgres://orgkey@db/orgkey\"\n";
        for (bad, why) in [
            (
                "[store]\nurl = \"postgres://orgkey:s3cret@db/orgkey\"\n".to_string(),
                "carries a password",
            ),
            (
                "[store]\nurl = \"postgres://orgkey@db/orgkey?password=s3cret\"\n".into(),
                "carries a password",
            ),
            (
                "[store]\nurl = \"mysql://db/orgkey\"\n".into(),
                "unsupported scheme",
            ),
            (
                "[store]\nurl = \"postgres://db\"\n".into(),
                "name the database",
            ),
            ("[store]\nurl = \"not a url\"\n".into(), "not a URL"),
            (
                "[store]\nurl = \"postgres://db/x\"\nsqlite = \"x.db\"\n".into(),
                "both sqlite and url",
            ),
            ("[store]\npassword_file = \"pw\"\n".into(), "without url"),
        ] {
            let e = load(&format!("{MINIMAL}{bad}")).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
            assert!(!e.contains("s3cret"), "the password was echoed: {e}");
        }
        for bad in ["", "a b", "x/y", &"n".repeat(65)] {
            let e = load(&format!("node_id = {bad:?}\n{MINIMAL}")).unwrap_err();
            assert!(e.to_string().contains("node_id"), "{bad:?}: {e}");
        }
        // Scheduled backups on PostgreSQL only where asked for.
        let c = load(&format!("{MINIMAL}{pg}[backup]\ninterval = \"24h\"\n")).unwrap();
        assert_eq!(c.backup.interval, Some(Duration::from_secs(86_400)));
    }

    #[test]
    fn minimal_config_gets_safe_defaults() {
        let c = load(MINIMAL).unwrap();
        assert_eq!(c.data_dir, Path::new("/srv/orgkey/."));
        assert_eq!(c.server.listen.to_string(), DEFAULT_LISTEN);
        assert!(c.server.listen.ip().is_loopback());
        assert!(c.server.tls.is_none());
        assert_eq!(c.server.max_body, 64 << 20);
        assert_eq!(c.server.header_read_timeout, Duration::from_secs(10));
        assert_eq!(c.server.idle_timeout, Duration::from_secs(60));
        assert_eq!(c.server.body_timeout, Duration::from_secs(60));
        assert_eq!(c.server.max_connections, 1024);
        assert_eq!(c.store.sqlite, Path::new("/srv/orgkey/./orgkey.db"));
        assert_eq!(c.token.profile.name, "softhsm2");
        assert_eq!(c.ignition.backoff_after, 5);
        assert_eq!(c.certification_validity, DEFAULT_CERTIFICATION_VALIDITY);
        assert_eq!(c.maintenance, MaintenanceConfig::default());
    }

    #[test]
    fn managed_domains_match_exactly_and_case_insensitively() {
        let domains = vec!["example.com".to_string(), "eu.example.org".to_string()];
        assert_eq!(
            managed_domain_of(&domains, "Alice@EXAMPLE.com"),
            Some("example.com")
        );
        assert_eq!(
            managed_domain_of(&domains, "bob@eu.example.org"),
            Some("eu.example.org")
        );
        // Subdomains only when listed; parents of listed subdomains are not managed.
        assert_eq!(managed_domain_of(&domains, "carol@sub.example.com"), None);
        assert_eq!(managed_domain_of(&domains, "dave@example.org"), None);
        assert_eq!(managed_domain_of(&domains, "eve@notexample.com"), None);
        assert_eq!(managed_domain_of(&domains, "@example.com"), None);
        assert_eq!(managed_domain_of(&domains, "example.com"), None);
    }

    #[test]
    fn rate_limits_parse_per_client_with_a_default() {
        let c = load(
            "[token]\nlabel = \"x\"\n[rate_limits]\ndefault = \"600/m\"\n\
             [rate_limits.clients]\ngateway = \"200/s\"\nbatch = \"off\"\n",
        )
        .unwrap();
        let r = &c.rate_limits;
        assert_eq!(r.for_client("other").unwrap().per_second, 10.0);
        assert_eq!(r.for_client("gateway").unwrap().burst, 200.0);
        assert_eq!(r.for_client("batch"), None);
        assert_eq!(load(MINIMAL).unwrap().rate_limits.for_client("x"), None);
        for bad in ["10", "10/d", "-1/s", "x/s", "0/s"] {
            let text = format!("[token]\nlabel = \"x\"\n[rate_limits]\ndefault = \"{bad}\"\n");
            assert!(load(&text).is_err(), "{bad}");
        }
    }

    #[test]
    fn maintenance_settings_are_checked_against_each_other() {
        let c = load(
            "certification_validity = \"30d\"\n[token]\nlabel = \"x\"\n\
             [maintenance]\ninterval = \"1h\"\ninactive_after = \"10d\"\n",
        )
        .unwrap();
        assert_eq!(c.certification_validity, Duration::from_secs(30 * 86400));
        assert_eq!(c.maintenance.interval, Duration::from_secs(3600));
        assert_eq!(
            c.maintenance.inactive_after,
            Duration::from_secs(10 * 86400)
        );
        // Renewal window as long as the certification: every run would renew everything.
        let e = load("certification_validity = \"2d\"\n[token]\nlabel = \"x\"\n").unwrap_err();
        assert!(
            e.to_string()
                .contains("shorter than certification_validity"),
            "{e}"
        );
        // The org key could expire between two runs.
        let e = load(
            "[token]\nlabel = \"x\"\n[maintenance]\ninterval = \"2d\"\nrenew_margin = \"1d\"\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("org_key_renew_before"), "{e}");
        assert!(load("[token]\nlabel = \"x\"\n[maintenance]\nbatch_size = 0\n").is_err());
        assert!(load("[token]\nlabel = \"x\"\n[maintenance]\nintervall = \"1h\"\n").is_err());
        assert!(load("certification_validity = \"10m\"\n[token]\nlabel = \"x\"\n").is_err());
        // Only maintenance renews a CRL between revocations: it must outlive a run's gap.
        let e = load("[token]\nlabel = \"x\"\n[x509]\ncrl_validity = \"12h\"\n").unwrap_err();
        assert!(
            e.to_string().contains("lapse between two maintenance runs"),
            "{e}"
        );
        let c = load(
            "[token]\nlabel = \"x\"\n[maintenance]\ninterval = \"1h\"\n[x509]\ncrl_validity = \"2h\"\n",
        )
        .unwrap();
        assert_eq!(c.x509.crl_validity, Duration::from_secs(7200));
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = load("[token]\nlabel = \"x\"\nlable = \"typo\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("lable"), "{e}");
    }

    #[test]
    fn token_must_be_named_not_by_slot() {
        assert!(
            load("[token]\n")
                .unwrap_err()
                .to_string()
                .contains("label, serial or uri")
        );
        assert!(load("[token]\nslot = 0\n").is_err());
    }

    #[test]
    fn uri_selects_token_and_module() {
        let c = load("[token]\nuri = \"pkcs11:token=org;serial=42?module-path=/opt/hsm.so\"\n")
            .unwrap();
        assert_eq!(c.token.selector.label.as_deref(), Some("org"));
        assert_eq!(c.token.selector.serial.as_deref(), Some("42"));
        assert_eq!(c.token.module_path().unwrap(), Path::new("/opt/hsm.so"));
        assert!(load("[token]\nuri = \"pkcs11:token=org\"\nlabel = \"x\"\n").is_err());
    }

    #[test]
    fn domains_are_lowercased_deduplicated_and_checked() {
        let c = load(&format!(
            "domains = [\"Example.COM\", \"example.com.\"]\n{MINIMAL}"
        ))
        .unwrap();
        assert_eq!(c.domains, vec!["example.com"]);
        assert!(load(&format!("domains = [\"not a domain\"]\n{MINIMAL}")).is_err());
        assert!(load(&format!("domains = [\"localhost\"]\n{MINIMAL}")).is_err());
    }

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert!(parse_size("12MB").is_err());
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("99999999999999GiB").is_err());
    }

    #[test]
    fn tls_needs_both_files_and_listen_must_parse() {
        assert!(load(&format!("{MINIMAL}[server]\ntls_cert = \"c.pem\"\n")).is_err());
        assert!(load(&format!("{MINIMAL}[server]\nlisten = \"localhost\"\n")).is_err());
        let c = load(&format!(
            "{MINIMAL}[server]\nlisten = \"0.0.0.0:443\"\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n"
        ))
        .unwrap();
        assert_eq!(c.server.tls.unwrap().cert, Path::new("/srv/orgkey/c.pem"));
    }

    #[test]
    fn the_lease_ttl_defaults_to_15s_and_is_checked() {
        assert_eq!(load(MINIMAL).unwrap().cluster.lease_ttl, DEFAULT_LEASE_TTL);
        let c = load(&format!("{MINIMAL}[cluster]\nlease_ttl = \"2s\"\n")).unwrap();
        assert_eq!(c.cluster.lease_ttl, Duration::from_secs(2));
        for (ttl, says) in [
            ("500ms", "between 1s and 10m"),
            ("1h", "between 1s and 10m"),
            ("soon", "[cluster] lease_ttl = \"soon\""),
        ] {
            let e = load(&format!("{MINIMAL}[cluster]\nlease_ttl = \"{ttl}\"\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(says), "{ttl}: {e}");
        }
        assert!(load(&format!("{MINIMAL}[cluster]\nttl = \"2s\"\n")).is_err());
    }

    #[test]
    fn metrics_get_an_address_of_their_own_or_none() {
        assert_eq!(load(MINIMAL).unwrap().metrics.listen, None);
        let c = load(&format!("{MINIMAL}[metrics]\nlisten = \"10.0.0.5:9464\"\n")).unwrap();
        assert_eq!(c.metrics.listen, Some("10.0.0.5:9464".parse().unwrap()));
        assert!(
            load(&format!(
                "{MINIMAL}[metrics]\nlisten = \"localhost:9464\"\n"
            ))
            .is_err()
        );
        assert!(load(&format!("{MINIMAL}[metrics]\npath = \"/m\"\n")).is_err());
        let same = format!(
            "{MINIMAL}[server]\nlisten = \"127.0.0.1:8443\"\n[metrics]\nlisten = \"127.0.0.1:8443\"\n"
        );
        assert!(
            load(&same)
                .unwrap_err()
                .to_string()
                .contains("[metrics] listen")
        );
        // Port 0 (tests) is a new port each time.
        let both_any = format!(
            "{MINIMAL}[server]\nlisten = \"127.0.0.1:0\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n"
        );
        assert!(load(&both_any).is_ok());
    }

    #[test]
    fn client_certificates_need_tls_and_crls_need_a_client_ca() {
        let tls = "tls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n";
        let c = load(&format!(
            "{MINIMAL}[server]\n{tls}client_ca = \"clients.pem\"\nclient_crls = [\"a.crl\"]\n"
        ))
        .unwrap();
        let t = c.server.tls.unwrap();
        assert_eq!(t.client_ca.unwrap(), Path::new("/srv/orgkey/clients.pem"));
        assert_eq!(t.client_crls, [Path::new("/srv/orgkey/a.crl")]);
        let plain = load(&format!("{MINIMAL}[server]\n{tls}")).unwrap();
        assert!(plain.server.tls.unwrap().client_ca.is_none());
        let e = load(&format!("{MINIMAL}[server]\nclient_ca = \"clients.pem\"\n")).unwrap_err();
        assert!(e.to_string().contains("need TLS"), "{e}");
        let e = load(&format!(
            "{MINIMAL}[server]\n{tls}client_crls = [\"a.crl\"]\n"
        ))
        .unwrap_err();
        assert!(e.to_string().contains("needs client_ca"), "{e}");
    }

    #[test]
    fn session_count_is_bounded_by_profile() {
        assert!(load("[token]\nlabel = \"x\"\nsessions = 0\n").is_err());
        assert!(load("[token]\nlabel = \"x\"\nsessions = 100000\n").is_err());
        assert_eq!(
            load("[token]\nlabel = \"x\"\nsessions = 4\n")
                .unwrap()
                .token
                .sessions,
            4
        );
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    #[test]
    fn the_checked_in_example_config_is_valid() {
        let text = include_str!("../../orgkey.example.toml");
        let c = Config::from_toml(text, Path::new("/srv/orgkey/orgkey.toml")).unwrap();
        assert_eq!(c.token.selector.label.as_deref(), Some("orgkey"));
        assert_eq!(
            c.token.environment["SOFTHSM2_CONF"],
            "/srv/orgkey/./softhsm2.conf"
        );
    }

    #[test]
    fn the_example_gives_the_connection_limits_their_defaults() {
        let text = include_str!("../../orgkey.example.toml");
        let keys = [
            "header_read_timeout",
            "idle_timeout",
            "body_timeout",
            "max_connections",
        ];
        let uncommented: String = text
            .lines()
            .map(|l| match l.strip_prefix('#') {
                Some(setting) if keys.iter().any(|k| setting.starts_with(&format!("{k} = "))) => {
                    setting
                }
                _ => l,
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let set = uncommented
            .lines()
            .filter(|l| keys.iter().any(|k| l.starts_with(&format!("{k} = "))))
            .count();
        assert_eq!(set, keys.len(), "each setting is in the example once");
        let c = Config::from_toml(&uncommented, Path::new("/srv/orgkey/orgkey.toml")).unwrap();
        assert_eq!(c.server.header_read_timeout, DEFAULT_HEADER_READ_TIMEOUT);
        assert_eq!(c.server.idle_timeout, DEFAULT_IDLE_TIMEOUT);
        assert_eq!(c.server.body_timeout, DEFAULT_BODY_TIMEOUT);
        assert_eq!(c.server.max_connections, DEFAULT_MAX_CONNECTIONS);
    }
}
