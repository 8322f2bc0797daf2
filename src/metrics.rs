//! Metrics: the process's instruments and their rendering in the Prometheus
//! text format (version 0.0.4). The only user of prometheus-client
//! (docs/decisions/0021-metrics.md).
//!
//! Two kinds of values:
//! - Events are counted where they happen: the layer that sees one calls a
//!   function here (an HTTP request ends, the token signs, the audit writer
//!   commits, an ignition fails). The instruments are process-wide, like
//!   the OpenPGP verification cache: one appliance is one process. An
//!   observation is an atomic add or one uncontended lock, with no
//!   allocation once its label set exists.
//! - State (sealed, token up, expiry dates, the audit chain head) is read
//!   when scraped: `api` gathers a [`Snapshot`] and [`render`] writes it
//!   after the instruments. Nothing has to be kept up to date between
//!   scrapes, and a scrape never touches the token.
//!
//! Label values come only from fixed sets (route templates, status codes,
//! operation and reason names): never an email, a serial, a fingerprint, a
//! client name or a raw path, so no label carries a secret or grows without
//! bound.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::prometheus_text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

/// The `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Buckets of the HTTP request durations (seconds): a signature takes
/// about a millisecond, a CSR issuance a few, a body upload up to
/// `[server] body_timeout`.
const HTTP_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Buckets of token operations (seconds): from tens of microseconds (P-256
/// in SoftHSM2) to the `[token] deadline` (10 s).
const TOKEN_BUCKETS: [f64; 15] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0,
];

/// Buckets of audit group commits (seconds): up to `[store] busy_timeout`.
const AUDIT_BUCKETS: [f64; 13] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// The route label of a request that matched no route.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// A token operation whose duration is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenOperation {
    /// C_Sign: every signature (OpenPGP, X.509, CRLs, backups).
    Sign,
    /// C_Login: ignition and relogin.
    Login,
}

impl TokenOperation {
    const ALL: [TokenOperation; 2] = [TokenOperation::Sign, TokenOperation::Login];

    fn label(self) -> &'static str {
        match self {
            TokenOperation::Sign => "sign",
            TokenOperation::Login => "login",
        }
    }
}

/// Why an ignition attempt (or a passphrase change, which proves the
/// current passphrase the same way) failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum IgnitionFailure {
    /// The token refused the passphrase.
    BadPassphrase,
    /// The token locked the PIN.
    Locked,
    /// Refused without trying: the back-off after wrong passphrases.
    Backoff,
    /// The token's keys are not the stored org key or org certs.
    Mismatch,
    /// The token or the store did not answer.
    Unavailable,
    /// Anything else.
    Other,
}

impl IgnitionFailure {
    const ALL: [IgnitionFailure; 6] = [
        IgnitionFailure::BadPassphrase,
        IgnitionFailure::Locked,
        IgnitionFailure::Backoff,
        IgnitionFailure::Mismatch,
        IgnitionFailure::Unavailable,
        IgnitionFailure::Other,
    ];

    fn label(self) -> &'static str {
        match self {
            IgnitionFailure::BadPassphrase => "bad_passphrase",
            IgnitionFailure::Locked => "locked",
            IgnitionFailure::Backoff => "backoff",
            IgnitionFailure::Mismatch => "mismatch",
            IgnitionFailure::Unavailable => "unavailable",
            IgnitionFailure::Other => "other",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    code: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every instrument, registered once.
struct Instruments {
    registry: Registry,
    http_requests: Family<RequestLabels, Counter>,
    http_duration: HistogramFamily<RouteLabels>,
    token_duration: HistogramFamily<OperationLabels>,
    token_sessions_in_use: Gauge,
    audit_commit: Histogram,
    audit_failures: Counter,
    ignition_failures: Family<ReasonLabels, Counter>,
}

fn http_histogram() -> Histogram {
    Histogram::new(HTTP_BUCKETS)
}

fn token_histogram() -> Histogram {
    Histogram::new(TOKEN_BUCKETS)
}

impl Instruments {
    fn new() -> Self {
        let mut registry = Registry::default();
        let http_requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "orgkey_http_requests",
            "HTTP requests answered, by route template and status code",
            http_requests.clone(),
        );
        let http_duration: HistogramFamily<RouteLabels> =
            Family::new_with_constructor(http_histogram);
        registry.register(
            "orgkey_http_request_duration_seconds",
            "Time from a request's arrival at the router to its response head, by route template",
            http_duration.clone(),
        );
        let token_duration: HistogramFamily<OperationLabels> =
            Family::new_with_constructor(token_histogram);
        registry.register(
            "orgkey_token_operation_duration_seconds",
            "Time the token took for an operation (sign: C_Sign; login: C_Login)",
            token_duration.clone(),
        );
        for op in TokenOperation::ALL {
            // Every series exists from the start, so rates see the first one.
            let _ = token_duration.get_or_create(&OperationLabels {
                operation: op.label(),
            });
        }
        let token_sessions_in_use = Gauge::default();
        registry.register(
            "orgkey_token_sessions_in_use",
            "Token sessions in use by an operation right now",
            token_sessions_in_use.clone(),
        );
        let audit_commit = Histogram::new(AUDIT_BUCKETS);
        registry.register(
            "orgkey_audit_commit_duration_seconds",
            "Time a group commit of audit rows took (the rows of signatures, certifications and issuances wait for it)",
            audit_commit.clone(),
        );
        let audit_failures = Counter::default();
        registry.register(
            "orgkey_audit_write_failures",
            "Group commits of audit rows that failed (their signatures were withheld)",
            audit_failures.clone(),
        );
        let ignition_failures = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "orgkey_ignition_failures",
            "Failed ignition attempts and passphrase changes, by reason",
            ignition_failures.clone(),
        );
        for reason in IgnitionFailure::ALL {
            let _ = ignition_failures.get_or_create(&ReasonLabels {
                reason: reason.label(),
            });
        }
        Instruments {
            registry,
            http_requests,
            http_duration,
            token_duration,
            token_sessions_in_use,
            audit_commit,
            audit_failures,
            ignition_failures,
        }
    }
}

static INSTRUMENTS: LazyLock<Instruments> = LazyLock::new(Instruments::new);

/// Unix seconds of the last successful maintenance run of this process (0:
/// none yet).
static MAINTENANCE_OK_AT: AtomicI64 = AtomicI64::new(0);
/// Unix seconds of the last successful scheduled state backup (0: none yet).
static BACKUP_OK_AT: AtomicI64 = AtomicI64::new(0);

/// Counts an answered HTTP request. `route` is the router's path template
/// (or [`UNMATCHED_ROUTE`]), never the raw path.
pub fn http_request(route: &'static str, code: u16, elapsed: Duration) {
    let m = &*INSTRUMENTS;
    m.http_requests
        .get_or_create(&RequestLabels { route, code })
        .inc();
    m.http_duration
        .get_or_create(&RouteLabels { route })
        .observe(elapsed.as_secs_f64());
}

/// Records how long the token took for `op`.
pub fn token_operation(op: TokenOperation, elapsed: Duration) {
    INSTRUMENTS
        .token_duration
        .get_or_create(&OperationLabels {
            operation: op.label(),
        })
        .observe(elapsed.as_secs_f64());
}

/// Counts a token session as in use until the guard drops.
pub fn token_session_in_use() -> SessionInUse {
    INSTRUMENTS.token_sessions_in_use.inc();
    SessionInUse(())
}

/// A token session in use (see [`token_session_in_use`]).
#[derive(Debug)]
pub struct SessionInUse(());

impl Drop for SessionInUse {
    fn drop(&mut self) {
        INSTRUMENTS.token_sessions_in_use.dec();
    }
}

/// Records a group commit of audit rows: its duration, or its failure.
pub fn audit_commit(elapsed: Duration, ok: bool) {
    if ok {
        INSTRUMENTS.audit_commit.observe(elapsed.as_secs_f64());
    } else {
        INSTRUMENTS.audit_failures.inc();
    }
}

/// Counts a failed ignition attempt.
pub fn ignition_failed(reason: IgnitionFailure) {
    INSTRUMENTS
        .ignition_failures
        .get_or_create(&ReasonLabels {
            reason: reason.label(),
        })
        .inc();
}

/// Records a successful maintenance run at `at` (Unix seconds).
pub fn maintenance_succeeded(at: u64) {
    MAINTENANCE_OK_AT.fetch_max(clamp(at), Ordering::Relaxed);
}

/// Records a successful scheduled state backup at `at` (Unix seconds).
pub fn backup_succeeded(at: u64) {
    BACKUP_OK_AT.fetch_max(clamp(at), Ordering::Relaxed);
}

fn clamp(at: u64) -> i64 {
    i64::try_from(at).unwrap_or(i64::MAX)
}

/// The appliance's state at a scrape, gathered by `api`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The appliance is sealed.
    pub sealed: bool,
    /// The token (or the link to it) is not marked lost.
    pub token_up: bool,
    /// This node holds the leader lease (runs the singleton jobs).
    pub leader: bool,
    /// What the store says; `None` when it could not be read in time.
    pub store: Option<StoreFacts>,
}

/// The part of a [`Snapshot`] read from the store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreFacts {
    /// Rows in the audit chain (its head's sequence number).
    pub audit_rows: u64,
    /// The active org key's expiry (Unix seconds); `None`: no org key, or
    /// one that never expires.
    pub org_key_expiry: Option<i64>,
    /// The active org cert's notAfter (Unix seconds).
    pub org_cert_expiry: Option<i64>,
    /// The earliest nextUpdate among the newest CRLs of the org certs that
    /// have not expired (Unix seconds): the CRL that goes stale first.
    pub crl_next_update: Option<i64>,
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: i64) {
    let g: Gauge = Gauge::default();
    g.set(value);
    registry.register(name, help, g);
}

/// The state metrics of `s`, in a registry of their own (made per scrape).
fn state_registry(s: &Snapshot) -> Registry {
    let mut r = Registry::default();
    gauge(
        &mut r,
        "orgkey_sealed",
        "1 while the appliance is sealed (nothing can be signed), 0 while ignited",
        i64::from(s.sealed),
    );
    gauge(
        &mut r,
        "orgkey_token_up",
        "0 while the token or the link to it is lost and being recovered, else 1",
        i64::from(s.token_up),
    );
    gauge(
        &mut r,
        "orgkey_leader",
        "1 while this node holds the leader lease (it runs maintenance, CRL refresh, org key renewal and scheduled backups), else 0",
        i64::from(s.leader),
    );
    gauge(
        &mut r,
        "orgkey_store_up",
        "1 when this scrape could read the store, else 0 (and the series read from it are missing)",
        i64::from(s.store.is_some()),
    );
    if let Some(f) = &s.store {
        let rows = Counter::<u64>::default();
        rows.inc_by(f.audit_rows);
        r.register(
            "orgkey_audit_rows",
            "Rows in the audit chain (every signature, certification, issuance and operator action has one)",
            rows,
        );
        let expiries = [
            (
                "orgkey_org_key_expiry_timestamp_seconds",
                "When the active org key expires (Unix seconds); missing when it never does",
                f.org_key_expiry,
            ),
            (
                "orgkey_org_cert_expiry_timestamp_seconds",
                "When the active org cert expires (notAfter, Unix seconds)",
                f.org_cert_expiry,
            ),
            (
                "orgkey_crl_next_update_timestamp_seconds",
                "The earliest nextUpdate of the current CRLs of the org certs that have not expired (Unix seconds)",
                f.crl_next_update,
            ),
        ];
        for (name, help, value) in expiries {
            if let Some(v) = value {
                gauge(&mut r, name, help, v);
            }
        }
    }
    let successes = [
        (
            "orgkey_maintenance_last_success_timestamp_seconds",
            "When the last successful maintenance run of this process started (Unix seconds); missing before the first",
            &MAINTENANCE_OK_AT,
        ),
        (
            "orgkey_backup_last_success_timestamp_seconds",
            "When this process last wrote a scheduled state backup (Unix seconds); missing before the first",
            &BACKUP_OK_AT,
        ),
    ];
    for (name, help, at) in successes {
        let at = at.load(Ordering::Relaxed);
        if at > 0 {
            gauge(&mut r, name, help, at);
        }
    }
    r
}

/// Every metric in the Prometheus text format: the instruments, then the
/// state in `snapshot`.
pub fn render(snapshot: &Snapshot) -> Result<String, std::fmt::Error> {
    let mut out = String::with_capacity(16 * 1024);
    encode(&mut out, &INSTRUMENTS.registry)?;
    encode(&mut out, &state_registry(snapshot))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sample lines of `text` named `name` (with labels).
    fn samples<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.starts_with(&format!("{name} ")) || l.starts_with(&format!("{name}{{")))
            .collect()
    }

    #[test]
    fn state_is_rendered_from_the_snapshot_and_unknown_values_are_left_out() {
        let mut s = Snapshot {
            sealed: true,
            token_up: true,
            leader: true,
            store: Some(StoreFacts {
                audit_rows: 42,
                org_key_expiry: Some(1_900_000_000),
                org_cert_expiry: None,
                crl_next_update: Some(1_800_000_000),
            }),
        };
        let text = render(&s).unwrap();
        assert_eq!(samples(&text, "orgkey_sealed"), ["orgkey_sealed 1"]);
        assert_eq!(samples(&text, "orgkey_token_up"), ["orgkey_token_up 1"]);
        assert_eq!(samples(&text, "orgkey_leader"), ["orgkey_leader 1"]);
        assert_eq!(
            samples(&text, "orgkey_audit_rows_total"),
            ["orgkey_audit_rows_total 42"]
        );
        assert!(text.contains("# TYPE orgkey_audit_rows_total counter"));
        assert_eq!(
            samples(&text, "orgkey_org_key_expiry_timestamp_seconds"),
            ["orgkey_org_key_expiry_timestamp_seconds 1900000000"]
        );
        assert!(samples(&text, "orgkey_org_cert_expiry_timestamp_seconds").is_empty());
        s.store = None;
        let text = render(&s).unwrap();
        assert_eq!(samples(&text, "orgkey_store_up"), ["orgkey_store_up 0"]);
        assert!(samples(&text, "orgkey_audit_rows_total").is_empty());
    }

    #[test]
    fn events_are_counted_under_fixed_labels() {
        http_request("/v1/users/{email}", 404, Duration::from_millis(3));
        ignition_failed(IgnitionFailure::BadPassphrase);
        token_operation(TokenOperation::Sign, Duration::from_micros(80));
        {
            let _in_use = token_session_in_use();
        }
        let text = render(&Snapshot::default()).unwrap();
        let requests = samples(&text, "orgkey_http_requests_total");
        assert!(
            requests.iter().any(|l| l.starts_with(
                "orgkey_http_requests_total{route=\"/v1/users/{email}\",code=\"404\"} "
            )),
            "{requests:?}"
        );
        assert!(
            samples(&text, "orgkey_http_request_duration_seconds_bucket")
                .iter()
                .any(|l| l.contains("route=\"/v1/users/{email}\",le=\"0.005\"}")),
            "{text}"
        );
        // Every reason has a series from the start.
        assert_eq!(
            samples(&text, "orgkey_ignition_failures_total").len(),
            IgnitionFailure::ALL.len()
        );
        assert!(
            samples(&text, "orgkey_token_operation_duration_seconds_count")
                .iter()
                .any(|l| l.contains("operation=\"sign\"")),
            "{text}"
        );
    }
}
