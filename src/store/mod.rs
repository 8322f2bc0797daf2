//! Persistence: the org key record, users of the managed domains and their
//! keys, API clients and the audit log, behind one API with two native sqlx
//! backends (`db`): SQLite (WAL, one file in the data dir, mode 0600), the
//! embedded default, and PostgreSQL, which several nodes share. SQL is kept
//! portable (`$n` parameters, BIGINT/TEXT/BOOLEAN) and written once.

mod audit;
mod db;
mod lease;
mod logical;
mod users;
mod x509;

pub use audit::{AuditEvent, AuditRow, AuditWriter, VerifyReport, row_hash};
pub use users::{DueQuery, DueUserKey, SaveUserKey, UserKeyRecord, UserRecord, UserState};
pub use x509::{
    CrlRecord, IssuanceWrite, OrgCertRecord, OrgCertRequestRecord, PendingUserCert, RevokeOutcome,
    UserCertRecord,
};

use crate::clock::Clock;
pub(crate) use db::Tx;
use db::{Pool, Row, query, scalar};
pub use lease::{ClusterView, Fence, LeaseRecord, MemberRecord, NodeRole, new_instance};
pub use logical::is_logical_snapshot;
use secrecy::{ExposeSecret, SecretString};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Store errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A database operation failed.
    #[error("{context}: {source}")]
    Db {
        /// What orgkey was doing
        context: &'static str,
        /// Cause
        #[source]
        source: DbError,
    },
    /// The database could not be reached in time: another writer held the
    /// lock past the busy timeout, no connection was free, or the disk
    /// failed or is full. Trying again later may work.
    #[error("{context}: {source}")]
    Unavailable {
        /// What orgkey was doing
        context: &'static str,
        /// Cause
        #[source]
        source: DbError,
    },
    /// Schema migration failed.
    #[error("migrating the store: {0}")]
    Migrate(#[source] DbError),
    /// File system trouble around the database file.
    #[error("{context}: {source}")]
    Io {
        /// What orgkey was doing
        context: String,
        /// Cause
        #[source]
        source: std::io::Error,
    },
    /// The store does not exist (run `orgkey init`).
    #[error("no store at {0} (run `orgkey init` first)")]
    Missing(String),
    /// A row holds something impossible.
    #[error("store is corrupt: {0}")]
    Corrupt(String),
    /// A uniqueness rule was broken (duplicate name, second active key).
    #[error("{0}")]
    Conflict(String),
    /// The audit log could not be written, nor therefore the change its row
    /// records: nothing was recorded. Shared by everyone whose row was in
    /// the failed group commit.
    #[error("audit log unavailable: {0}")]
    Audit(#[source] Arc<StoreError>),
    /// The audit writer task has stopped (the server is shutting down).
    #[error("the audit writer has stopped")]
    WriterStopped,
    /// The operation does not exist on this store's backend.
    #[error("{0}")]
    Unsupported(String),
    /// A singleton job's write was refused, and nothing written, because
    /// this node no longer holds the leader lease it started with (another
    /// node took over: its epoch is newer).
    #[error(
        "this node no longer holds the leader lease (epoch {epoch}); another node took over \
         the singleton jobs and nothing was written"
    )]
    Fenced {
        /// The epoch the refused write carried.
        epoch: i64,
    },
}

/// Key of the transaction-scoped advisory lock migrations run under
/// (PostgreSQL): "orgkey" in ASCII.
const MIGRATION_LOCK: i64 = 0x6f72_676b_6579;

/// How often a transaction that failed on a serialization failure or a
/// deadlock runs again.
const MAX_RETRIES: u32 = 3;

impl StoreError {
    /// Classifies a driver error raised while doing `context`: a busy,
    /// locked, full or unreachable database is [`StoreError::Unavailable`].
    fn db(context: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
        move |source| {
            if is_unavailable(&source) {
                StoreError::Unavailable {
                    context,
                    source: DbError::new(source),
                }
            } else {
                StoreError::Db {
                    context,
                    source: DbError::new(source),
                }
            }
        }
    }

    /// An error of writing an audit row (or of committing it with the
    /// change it records) as [`StoreError::Audit`].
    pub(crate) fn audit(self) -> StoreError {
        match self {
            // A fenced write is refused on purpose, before any row: the
            // audit log is fine.
            e @ (StoreError::Audit(_) | StoreError::Fenced { .. }) => e,
            e => StoreError::Audit(Arc::new(e)),
        }
    }

    /// Whether this is (or wraps) a [`StoreError::Fenced`]: the node lost
    /// the leader lease, and its singleton job stops.
    pub fn is_fenced(&self) -> bool {
        match self {
            StoreError::Fenced { .. } => true,
            StoreError::Audit(cause) => cause.is_fenced(),
            _ => false,
        }
    }
}

/// SQLite primary result codes of a database that is there but cannot be
/// used now: BUSY, LOCKED, IOERR, FULL, CANTOPEN.
const UNAVAILABLE_CODES: [i64; 5] = [5, 6, 10, 13, 14];

/// PostgreSQL SQLSTATE classes of a server that cannot serve now: 08
/// connection exception, 53 insufficient resources (too many connections,
/// disk full), 57 operator intervention (shutdown, cannot connect now), 58
/// system error (I/O).
const PG_UNAVAILABLE_CLASSES: [&str; 4] = ["08", "53", "57", "58"];

/// The server ended a session left idle in a transaction (ours, set at
/// connect: a node cut off from the database mid-transaction). The node
/// finds out when it is back; its transaction was rolled back.
const PG_IDLE_IN_TRANSACTION_TIMEOUT: &str = "25P03";

/// PostgreSQL SQLSTATEs that a retry of the same transaction may cure:
/// serialization failure, deadlock, lock wait past `lock_timeout`.
const PG_RETRY_CODES: [&str; 3] = ["40001", "40P01", "55P03"];

fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(d) => {
            if d.try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                .is_some()
            {
                let code = d.code();
                let code = code.as_deref().unwrap_or_default();
                PG_RETRY_CODES.contains(&code)
                    || code == PG_IDLE_IN_TRANSACTION_TIMEOUT
                    || PG_UNAVAILABLE_CLASSES.iter().any(|c| code.starts_with(c))
            } else {
                d.code()
                    .and_then(|c| c.parse::<i64>().ok())
                    // The extended code carries the primary code in its low byte.
                    .is_some_and(|c| UNAVAILABLE_CODES.contains(&(c & 0xff)))
            }
        }
        _ => false,
    }
}

/// Whether `e` is a PostgreSQL serialization failure or deadlock, after
/// which the whole transaction may simply run again.
fn is_retryable(e: &StoreError) -> bool {
    let source = match e {
        StoreError::Db { source, .. } | StoreError::Unavailable { source, .. } => source,
        StoreError::Audit(cause) => return is_retryable(cause),
        _ => return false,
    };
    source
        .0
        .downcast_ref::<sqlx::Error>()
        .and_then(|e| match e {
            sqlx::Error::Database(d) => d.code().map(|c| c == "40001" || c == "40P01"),
            _ => None,
        })
        .unwrap_or(false)
}

/// A failure as the database driver reported it. Opaque, so that no driver
/// type is part of orgkey's API: its text and its causes are the driver's.
pub struct DbError(Box<dyn std::error::Error + Send + Sync + 'static>);

impl DbError {
    pub(crate) fn new(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self(Box::new(e))
    }
}

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::fmt::Debug for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for DbError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// The stored facts about an org key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgKeyRecord {
    /// Upper-case hex fingerprint.
    pub fingerprint: String,
    /// Algorithm name as on the command line (p256, ed25519, ...).
    pub algorithm: String,
    /// Primary user ID.
    pub user_id: String,
    /// Armored public certificate.
    pub cert: String,
    /// Hex CKA_IDs of the primary, signing and encryption key pairs.
    pub primary_id: String,
    /// Signing subkey CKA_ID.
    pub signing_id: String,
    /// Encryption subkey CKA_ID.
    pub encryption_id: String,
    /// Creation times (Unix seconds) of the three keys.
    pub primary_created: i64,
    /// Signing subkey creation time.
    pub signing_created: i64,
    /// Encryption subkey creation time.
    pub encryption_created: i64,
    /// Generated with CKA_EXTRACTABLE + CKA_WRAP_WITH_TRUSTED.
    pub exportable: bool,
    /// When orgkey generated it.
    pub generated_at: i64,
}

/// An org key's public certificate: the active one or one it replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgKeyCert {
    /// Upper-case hex fingerprint.
    pub fingerprint: String,
    /// Whether it is the active org key (else superseded).
    pub active: bool,
    /// Armored public certificate (as last stored).
    pub cert: String,
}

/// A registered API client (the secret itself is never stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRecord {
    /// Unique name.
    pub name: String,
    /// Public id embedded in the bearer token.
    pub client_id: String,
    /// Hex SHA-256 of the secret part of the bearer token.
    pub secret_hash: String,
    /// Comma-separated scopes.
    pub scopes: String,
    /// Unix seconds.
    pub created_at: i64,
    /// The TLS client certificate the client is bound to, if any.
    pub cert: Option<CertBinding>,
    /// The bearer token alone is refused: the client needs its certificate
    /// too. Kept when the binding is removed (the client is then locked out).
    pub require_cert: bool,
}

/// How an API client is bound to a TLS client certificate (decision 0022).
/// One certificate identifies at most one client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertBinding {
    /// Exactly one certificate: lower-case hex SHA-256 of its DER.
    Sha256(String),
    /// Every certificate with this subject from this issuer (renewals
    /// included): distinguished names in canonical form
    /// (`x509::canonical_dn`).
    Name {
        /// Canonical subject DN.
        subject: String,
        /// Canonical issuer DN.
        issuer: String,
    },
}

impl CertBinding {
    /// The binding as one line for listings and audit rows.
    pub fn describe(&self) -> String {
        match self {
            CertBinding::Sha256(h) => format!("cert-sha256 {h}"),
            // Canonical DNs escape '"' and every hidden character.
            CertBinding::Name { subject, issuer } => {
                format!("cert-subject \"{subject}\" cert-issuer \"{issuer}\"")
            }
        }
    }

    /// Whether `cert` is a certificate this binding names: the rule of
    /// [`Store::clients_by_cert`], for callers that hold the clients in
    /// memory.
    pub fn matches(&self, cert: &PresentedCert<'_>) -> bool {
        match self {
            CertBinding::Sha256(h) => h == cert.sha256,
            CertBinding::Name { subject, issuer } => {
                cert.names == Some((subject.as_str(), issuer.as_str()))
            }
        }
    }

    /// The columns (cert_sha256, cert_subject, cert_issuer).
    fn columns(b: Option<&CertBinding>) -> (Option<&str>, Option<&str>, Option<&str>) {
        match b {
            None => (None, None, None),
            Some(CertBinding::Sha256(h)) => (Some(h), None, None),
            Some(CertBinding::Name { subject, issuer }) => (None, Some(subject), Some(issuer)),
        }
    }
}

/// A presented TLS client certificate, as bindings are matched against it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresentedCert<'a> {
    /// Lower-case hex SHA-256 of the DER certificate.
    pub sha256: &'a str,
    /// Canonical subject and issuer DNs; `None` when they could not be read.
    pub names: Option<(&'a str, &'a str)>,
}

/// The columns of an API client row.
const CLIENT_COLUMNS: &str = "name, client_id, secret_hash, scopes, created_at, \
     cert_sha256, cert_subject, cert_issuer, require_cert";

const CLIENT_GENERATION: &str = "SELECT generation FROM change_counters WHERE name = 'api_clients'";

/// The store.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    clock: Arc<dyn Clock>,
    /// The node id stamped on every audit row this handle appends.
    node: Arc<str>,
    /// The leader's fencing token every write transaction of this handle
    /// checks (the singleton jobs' handle; [`Store::fenced`]).
    fence: Option<Fence>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend())
            .field("node", &self.node)
            .field("fence", &self.fence)
            .finish_non_exhaustive()
    }
}

/// Which backend a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The embedded SQLite file.
    Sqlite,
    /// A PostgreSQL database (several nodes may share it).
    Postgres,
}

/// How to reach a PostgreSQL store: the `[store] url` (which never holds a
/// password) and the password read from `[store] password_file`.
pub struct PostgresTarget<'a> {
    /// `postgres://user@host:port/db`, checked by the config (no password).
    pub url: &'a str,
    /// The password, when the server asks for one.
    pub password: Option<&'a SecretString>,
}

#[cfg(unix)]
fn create_private_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map(|_| ())
}

/// Connections a PostgreSQL store keeps per node: the group-commit audit
/// writer, a transaction or two of certification or issuance, readers.
const PG_MAX_CONNECTIONS: u32 = 8;

/// The host name, the default node id: the kernel's node name.
pub fn host_name() -> String {
    let uname = rustix::system::uname();
    let name = uname.nodename().to_string_lossy().into_owned();
    if name.is_empty() {
        "localhost".into()
    } else {
        name
    }
}

impl Store {
    /// Opens the SQLite store at `path`; with `create`, makes a new one
    /// (mode 0600) and refuses to touch an existing file.
    pub async fn open(
        path: &Path,
        create: bool,
        clock: Arc<dyn Clock>,
    ) -> Result<Store, StoreError> {
        Self::open_with(path, create, clock, Duration::from_secs(10)).await
    }

    /// Like [`Store::open`], waiting at most `busy_timeout` for a lock held
    /// by another writer before a write fails.
    pub async fn open_with(
        path: &Path,
        create: bool,
        clock: Arc<dyn Clock>,
        busy_timeout: Duration,
    ) -> Result<Store, StoreError> {
        if create {
            create_private_file(path).map_err(|e| StoreError::Io {
                context: format!("creating the store {}", path.display()),
                source: e,
            })?;
        } else if !path.exists() {
            return Err(StoreError::Missing(path.display().to_string()));
        }
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: an audit row is on disk before the signature it records leaves.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(busy_timeout)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            // Requests, jobs, the audit writer and the client change
            // counter's reader; SQLite has one writer at a time anyway.
            .max_connections(6)
            // No ping before each use: a connection to a local file cannot
            // have been dropped by a peer, and the ping was one more round
            // trip to the connection's thread for every query (a broken
            // connection still fails its query, as unavailable).
            .test_before_acquire(false)
            .connect_with(opts)
            .await
            .map_err(StoreError::db("opening the store"))?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&pool)
            .await
            .map_err(|e| StoreError::Migrate(DbError::new(e)))?;
        Ok(Store {
            pool: Pool::Sqlite(pool),
            clock,
            node: host_name().into(),
            fence: None,
        })
    }

    /// Opens the PostgreSQL store at `target` and brings its schema up to
    /// date. The database must exist; its schema is created on first use.
    /// Migrations run in one transaction under a transaction-scoped advisory
    /// lock, so nodes starting together apply each migration once (and a
    /// session lock, which breaks behind PgBouncer's transaction pooling, is
    /// never taken). `busy_timeout` bounds the wait for a row lock another
    /// node holds and for a connection (a database that is down answers
    /// [`StoreError::Unavailable`] after it).
    pub async fn open_postgres(
        target: &PostgresTarget<'_>,
        clock: Arc<dyn Clock>,
        busy_timeout: Duration,
    ) -> Result<Store, StoreError> {
        use std::str::FromStr;
        let mut opts = PgConnectOptions::from_str(target.url)
            .map_err(StoreError::db("reading the PostgreSQL store URL"))?
            .application_name("orgkey");
        if let Some(pw) = target.password {
            opts = opts.password(pw.expose_secret());
        }
        let lock_timeout = format!("{}ms", busy_timeout.as_millis().max(1));
        // A node cut off from the database in the middle of a transaction
        // leaves its session idle in that transaction, holding the audit
        // chain head row lock, and PostgreSQL notices a peer that sends
        // nothing only after TCP keepalive (hours): every other node's
        // writes would time out meanwhile. A transaction idle for twice the
        // time others wait for its locks is abandoned; the server ends the
        // session and releases its locks (crates/orgkey-testcontainers/tests/
        // cluster_faults.rs cuts a node off under load).
        let idle_in_tx = format!("{}ms", (2 * busy_timeout.as_millis()).max(1000));
        opts = opts.options([
            ("lock_timeout", lock_timeout.as_str()),
            ("idle_in_transaction_session_timeout", idle_in_tx.as_str()),
        ]);
        let pool = PgPoolOptions::new()
            .max_connections(PG_MAX_CONNECTIONS)
            .acquire_timeout(busy_timeout)
            // A connection the server dropped (restart, failover) is
            // noticed and replaced before it is handed out.
            .test_before_acquire(true)
            .connect_with(opts)
            .await
            .map_err(StoreError::db("connecting to the PostgreSQL store"))?;
        Self::migrate_postgres(&pool).await?;
        Ok(Store {
            pool: Pool::Postgres(pool),
            clock,
            node: host_name().into(),
            fence: None,
        })
    }

    async fn migrate_postgres(pool: &sqlx::PgPool) -> Result<(), StoreError> {
        let mut migrator = sqlx::migrate!("./migrations/postgres");
        // Our own transaction-scoped lock instead of sqlx's session lock.
        migrator.set_locking(false);
        let mut tx = pool
            .begin()
            .await
            .map_err(StoreError::db("migrating the store"))?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::db("locking the store for migration"))?;
        // run_direct, not run: run's `Acquire` bound on `&mut PgConnection`
        // makes the future not `Send` (sqlx's own comment on run_direct).
        migrator
            .run_direct(&mut *tx)
            .await
            .map_err(|e| StoreError::Migrate(DbError::new(e)))?;
        tx.commit()
            .await
            .map_err(StoreError::db("committing the store's migration"))
    }

    /// Opens the configured store: PostgreSQL when `[store] url` is set,
    /// else the SQLite file (which must exist unless `create`). Audit rows
    /// name `node`.
    pub async fn open_configured(
        cfg: &crate::config::StoreConfig,
        node: &str,
        create: bool,
        clock: Arc<dyn Clock>,
    ) -> Result<Store, StoreError> {
        let store = match &cfg.postgres {
            Some(pg) => {
                let password = pg.read_password().map_err(|e| StoreError::Io {
                    context: "reading [store] password_file".into(),
                    source: e,
                })?;
                let target = PostgresTarget {
                    url: &pg.url,
                    password: password.as_ref(),
                };
                Self::open_postgres(&target, clock, cfg.busy_timeout).await?
            }
            None => Self::open_with(&cfg.sqlite, create, clock, cfg.busy_timeout).await?,
        };
        Ok(store.with_node(node))
    }

    /// The same store, stamping `node` on the audit rows it appends.
    pub fn with_node(mut self, node: &str) -> Store {
        self.node = node.into();
        self
    }

    /// The node id stamped on audit rows.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The backend this store runs on.
    pub fn backend(&self) -> Backend {
        match self.pool {
            Pool::Sqlite(_) => Backend::Sqlite,
            Pool::Postgres(_) => Backend::Postgres,
        }
    }

    /// The SQLite connection pool, for unit tests that inspect rows
    /// directly (unit tests run on SQLite).
    #[cfg(test)]
    pub(crate) fn pool(&self) -> &sqlx::SqlitePool {
        match &self.pool {
            Pool::Sqlite(p) => p,
            Pool::Postgres(_) => panic!("unit tests run on SQLite"),
        }
    }

    /// A write transaction during which the audit chain head cannot move:
    /// on SQLite it takes the write lock at once (BEGIN IMMEDIATE); on
    /// PostgreSQL it locks the chain head row (`audit_head`, FOR UPDATE), so
    /// audited writes of every node are serialized on it as they are on the
    /// SQLite file, and a read-then-write inside sees every write committed
    /// before it.
    pub(crate) async fn begin_write(&self) -> Result<Tx, StoreError> {
        let mut tx = match &self.pool {
            Pool::Sqlite(p) => p
                .begin_with("BEGIN IMMEDIATE")
                .await
                .map(Tx::Sqlite)
                .map_err(StoreError::db("starting a transaction"))?,
            Pool::Postgres(p) => {
                let mut tx = p
                    .begin()
                    .await
                    .map_err(StoreError::db("starting a transaction"))?;
                sqlx::query("SELECT seq FROM audit_head WHERE id = 1 FOR UPDATE")
                    .execute(&mut *tx)
                    .await
                    .map_err(StoreError::db("locking the audit chain head"))?;
                Tx::Postgres(tx)
            }
        };
        // A fenced handle (a singleton job) writes only while it holds the
        // leader lease, checked in this very transaction.
        self.check_fence(&mut tx).await?;
        Ok(tx)
    }

    /// For a statement that writes on its own (outside a transaction): a
    /// write transaction when this handle is fenced, so the fence is
    /// checked with it; `None` (run it on the pool) otherwise.
    pub(crate) async fn begin_fenced(&self) -> Result<Option<Tx>, StoreError> {
        match self.fence {
            Some(_) => self.begin_write().await.map(Some),
            None => Ok(None),
        }
    }

    /// Runs `op` (a whole transaction) again while PostgreSQL reports a
    /// serialization failure or a deadlock, a few times: such a transaction
    /// did nothing and may simply run again. Anything else is returned.
    pub(crate) async fn retrying<T, F, Fut>(&self, mut op: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let mut tries = 0;
        loop {
            match op().await {
                Err(e) if tries < MAX_RETRIES && is_retryable(&e) => {
                    tries += 1;
                    tracing::debug!(error = %e, tries, "retrying a transaction");
                    tokio::time::sleep(Duration::from_millis(5 << tries)).await;
                }
                r => return r,
            }
        }
    }

    /// Appends `audit` to the chain inside `tx` and commits both. A failure
    /// of either step is a [`StoreError::Audit`].
    pub(crate) async fn commit_audited(
        &self,
        mut tx: Tx,
        audit: &AuditEvent,
        context: &'static str,
    ) -> Result<(), StoreError> {
        self.append_audit_in(&mut tx, std::slice::from_ref(audit))
            .await
            .map_err(StoreError::audit)?;
        tx.commit()
            .await
            .map_err(|e| StoreError::db(context)(e).audit())
    }

    /// The clock rows are stamped with.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Whether the database answers now: a round trip, bounded by
    /// `timeout` (the readiness probe's; a database that is down or
    /// unreachable is [`StoreError::Unavailable`]).
    pub async fn ping(&self, timeout: Duration) -> Result<(), StoreError> {
        let ping = async {
            let one: i64 = scalar!(self.pool.exec(), fetch_one, "SELECT CAST(1 AS BIGINT)")
                .map_err(StoreError::db("reaching the store"))?;
            debug_assert_eq!(one, 1);
            Ok(())
        };
        match tokio::time::timeout(timeout, ping).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Unavailable {
                context: "reaching the store",
                source: DbError::new(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no answer in time",
                )),
            }),
        }
    }

    /// Writes a consistent snapshot of the whole store to `path` (a new
    /// file, mode 0600), while writers may keep going: on SQLite the
    /// database file itself (VACUUM INTO), on PostgreSQL a logical snapshot
    /// (JSON lines, decision 0032) that loads into either backend.
    pub async fn snapshot_to(&self, path: &Path) -> Result<(), StoreError> {
        let Pool::Sqlite(pool) = &self.pool else {
            let io = |source| StoreError::Io {
                context: format!("writing {}", path.display()),
                source,
            };
            create_private_file(path).map_err(io)?;
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(io)?;
            let mut out = std::io::BufWriter::new(file);
            self.write_logical_snapshot(&mut out).await?;
            let file = out.into_inner().map_err(|e| io(e.into_error()))?;
            file.sync_all().map_err(io)?;
            return Ok(());
        };
        let p = path.to_str().ok_or_else(|| StoreError::Io {
            context: format!("snapshot path {}", path.display()),
            source: std::io::Error::other("not UTF-8"),
        })?;
        sqlx::query("VACUUM INTO $1")
            .bind(p)
            .execute(pool)
            .await
            .map_err(StoreError::db("writing a snapshot of the store"))?;
        Ok(())
    }

    /// Whether the store holds state beyond the org key and cert records:
    /// users, user certificates or API clients.
    pub async fn has_state(&self) -> Result<bool, StoreError> {
        let n: i64 = scalar!(
            self.pool.exec(),
            fetch_one,
            "SELECT (SELECT COUNT(*) FROM users) + (SELECT COUNT(*) FROM user_certs) \
             + (SELECT COUNT(*) FROM api_clients)"
        )
        .map_err(StoreError::db("inspecting the store"))?;
        Ok(n > 0)
    }

    /// Moves everything in the write-ahead log into the main file and
    /// empties the log, so the main file alone holds the whole store (before
    /// it is moved into place). SQLite only.
    pub async fn checkpoint(&self) -> Result<(), StoreError> {
        let Pool::Sqlite(pool) = &self.pool else {
            return Err(StoreError::Unsupported(
                "checkpointing is a SQLite operation".into(),
            ));
        };
        let (busy, _, _): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
            .fetch_one(pool)
            .await
            .map_err(StoreError::db("checkpointing the store"))?;
        if busy != 0 {
            return Err(StoreError::Corrupt(
                "the store could not be checkpointed: another connection is busy".into(),
            ));
        }
        Ok(())
    }

    /// Closes the connection pool (checkpoints the WAL).
    pub async fn close(&self) {
        self.pool.close().await;
    }
    /// The active org key, if one was generated.
    pub async fn active_org_key(&self) -> Result<Option<OrgKeyRecord>, StoreError> {
        let row = query!(
            self.pool.exec(),
            fetch_optional,
            "SELECT fingerprint, algorithm, user_id, cert, primary_id, signing_id, encryption_id, \
             primary_created, signing_created, encryption_created, exportable, generated_at \
             FROM org_keys WHERE state = 'active'"
        )
        .map_err(StoreError::db("reading the org key"))?;
        Ok(row.map(|r| OrgKeyRecord {
            fingerprint: r.get("fingerprint"),
            algorithm: r.get("algorithm"),
            user_id: r.get("user_id"),
            cert: r.get("cert"),
            primary_id: r.get("primary_id"),
            signing_id: r.get("signing_id"),
            encryption_id: r.get("encryption_id"),
            primary_created: r.get("primary_created"),
            signing_created: r.get("signing_created"),
            encryption_created: r.get("encryption_created"),
            exportable: r.get("exportable"),
            generated_at: r.get("generated_at"),
        }))
    }

    /// Certificates of every org key ever generated, active first, then
    /// superseded ones newest first: relying parties may still trust
    /// replaced org keys, so their addresses stay the organization's.
    pub async fn org_key_certs(&self) -> Result<Vec<OrgKeyCert>, StoreError> {
        let rows = query!(
            self.pool.exec(),
            fetch_all,
            "SELECT fingerprint, state, cert FROM org_keys \
             ORDER BY CASE state WHEN 'active' THEN 0 ELSE 1 END, generated_at DESC"
        )
        .map_err(StoreError::db("reading org key certificates"))?;
        Ok(rows
            .iter()
            .map(|r| OrgKeyCert {
                fingerprint: r.get("fingerprint"),
                active: r.get::<String>("state") == "active",
                cert: r.get("cert"),
            })
            .collect())
    }

    /// Records a new active org key and its audit row in one transaction.
    /// With `replace`, the current key becomes superseded in the same
    /// transaction; without it, an existing active key is a conflict.
    pub async fn insert_org_key(
        &self,
        rec: &OrgKeyRecord,
        replace: bool,
        audit: &AuditEvent,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        self.insert_org_key_in(&mut tx, rec, replace).await?;
        self.commit_audited(tx, audit, "committing the org key")
            .await
    }

    /// Records a restored org key and, when the backup held one, its org
    /// cert, each with its audit row, in one transaction: both or neither
    /// (the org key as [`Store::insert_org_key`] with `replace`, the org
    /// cert as [`Store::insert_org_cert`] replacing the active one).
    pub async fn insert_restored_org_key(
        &self,
        key: &OrgKeyRecord,
        replace: bool,
        key_audit: &AuditEvent,
        cert: Option<(&OrgCertRecord, &AuditEvent)>,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        self.insert_org_key_in(&mut tx, key, replace).await?;
        let mut audit = vec![key_audit.clone()];
        if let Some((rec, cert_audit)) = cert {
            crate::fail_at("restore-before-org-cert")
                .map_err(|e| StoreError::db("recording the org cert")(sqlx::Error::Io(e)))?;
            self.insert_org_cert_in(&mut tx, rec, true).await?;
            audit.push(cert_audit.clone());
        }
        self.append_audit_in(&mut tx, &audit).await?;
        tx.commit()
            .await
            .map_err(StoreError::db("committing the restored org key"))
    }

    async fn insert_org_key_in(
        &self,
        tx: &mut Tx,
        rec: &OrgKeyRecord,
        replace: bool,
    ) -> Result<(), StoreError> {
        let now = crate::clock::unix_secs(self.clock.now()) as i64;
        let existing: Option<String> = scalar!(
            tx.exec(),
            fetch_optional,
            "SELECT fingerprint FROM org_keys WHERE state = 'active'"
        )
        .map_err(StoreError::db("reading the org key"))?;
        if let Some(fpr) = existing {
            if !replace {
                return Err(StoreError::Conflict(format!(
                    "an org key ({fpr}) already exists"
                )));
            }
            query!(
                tx.exec(),
                execute,
                "UPDATE org_keys SET state = 'superseded', superseded_at = $1 WHERE fingerprint = $2",
                now,
                &fpr
            )
                .map_err(StoreError::db("superseding the old org key"))?;
        }
        query!(
            tx.exec(),
            execute,
            "INSERT INTO org_keys (fingerprint, state, algorithm, user_id, cert, primary_id, signing_id, \
             encryption_id, primary_created, signing_created, encryption_created, exportable, generated_at) \
             VALUES ($1, 'active', $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            &rec.fingerprint,
            &rec.algorithm,
            &rec.user_id,
            &rec.cert,
            &rec.primary_id,
            &rec.signing_id,
            &rec.encryption_id,
            rec.primary_created,
            rec.signing_created,
            rec.encryption_created,
            rec.exportable,
            rec.generated_at
        )
        .map_err(StoreError::db("recording the org key"))?;
        Ok(())
    }

    /// CKA_IDs (hex) of every org key ever generated, with their role names,
    /// for `token check`.
    pub async fn org_key_object_ids(
        &self,
    ) -> Result<Vec<(String, &'static str, String)>, StoreError> {
        let rows = query!(
            self.pool.exec(),
            fetch_all,
            "SELECT fingerprint, primary_id, signing_id, encryption_id FROM org_keys"
        )
        .map_err(StoreError::db("reading org key ids"))?;
        let mut out = Vec::new();
        for r in rows {
            let fpr: String = r.get("fingerprint");
            out.push((r.get("primary_id"), "certify", fpr.clone()));
            out.push((r.get("signing_id"), "sign", fpr.clone()));
            out.push((r.get("encryption_id"), "encrypt", fpr));
        }
        Ok(out)
    }

    /// Registers an API client, with its audit row in the same transaction.
    /// A name that exists, or a certificate binding that is another
    /// client's, is a [`StoreError::Conflict`].
    pub async fn add_client(
        &self,
        rec: &ClientRecord,
        audit: &AuditEvent,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        Self::check_binding_free(&mut tx, &rec.name, rec.cert.as_ref()).await?;
        let (sha256, subject, issuer) = CertBinding::columns(rec.cert.as_ref());
        let res = query!(
            tx.exec(),
            execute,
            "INSERT INTO api_clients (name, client_id, secret_hash, scopes, created_at, \
             cert_sha256, cert_subject, cert_issuer, require_cert) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            &rec.name,
            &rec.client_id,
            &rec.secret_hash,
            &rec.scopes,
            rec.created_at,
            sha256,
            subject,
            issuer,
            rec.require_cert
        );
        match res {
            Ok(_) => {}
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                return Err(StoreError::Conflict(format!(
                    "a client named {:?} already exists",
                    rec.name
                )));
            }
            Err(e) => return Err(StoreError::db("adding a client")(e)),
        }
        Self::clients_changed(&mut tx).await?;
        self.commit_audited(tx, audit, "committing the new client")
            .await
    }

    /// Bumps the client table's change counter, inside the transaction that
    /// changes the table: nodes that keep the table in memory re-read it
    /// when the counter moved ([`Store::client_generation`]).
    async fn clients_changed(tx: &mut Tx) -> Result<(), StoreError> {
        query!(
            tx.exec(),
            execute,
            "UPDATE change_counters SET generation = generation + 1 WHERE name = 'api_clients'"
        )
        .map_err(StoreError::db("recording a client change"))?;
        Ok(())
    }

    /// The ignition back-off shared by every node of the store: consecutive
    /// wrong passphrases and the end of the current block (unix ms, 0 for
    /// none).
    pub async fn ignition_backoff(&self) -> Result<(u32, i64), StoreError> {
        let row = query!(
            self.pool.exec(),
            fetch_one,
            "SELECT failures, blocked_until FROM ignition_backoff WHERE id = 1"
        )
        .map_err(StoreError::db("reading the ignition back-off"))?;
        let failures = u32::try_from(row.get::<i64>("failures")).unwrap_or(u32::MAX);
        Ok((failures, row.get::<i64>("blocked_until")))
    }

    /// Counts one more wrong passphrase, atomically across nodes, and
    /// blocks further attempts until `now_ms` plus the delay `policy` gives
    /// for the new count (never shortening a block another node set).
    /// Returns the new count and the delay.
    pub async fn record_ignition_failure(
        &self,
        now_ms: i64,
        policy: impl FnOnce(u32) -> Option<std::time::Duration>,
    ) -> Result<(u32, Option<std::time::Duration>), StoreError> {
        let mut tx = self.begin_write().await?;
        query!(
            tx.exec(),
            execute,
            "UPDATE ignition_backoff SET failures = failures + 1 WHERE id = 1"
        )
        .map_err(StoreError::db("counting a wrong passphrase"))?;
        let failures: i64 = scalar!(
            tx.exec(),
            fetch_one,
            "SELECT failures FROM ignition_backoff WHERE id = 1"
        )
        .map_err(StoreError::db("counting a wrong passphrase"))?;
        let failures = u32::try_from(failures).unwrap_or(u32::MAX);
        let delay = policy(failures);
        if let Some(d) = delay {
            let until = now_ms.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
            query!(
                tx.exec(),
                execute,
                "UPDATE ignition_backoff SET blocked_until = $1 WHERE id = 1 AND blocked_until < $1",
                until
            )
            .map_err(StoreError::db("blocking ignition"))?;
        }
        tx.commit()
            .await
            .map_err(StoreError::db("committing a wrong passphrase"))?;
        Ok((failures, delay))
    }

    /// Clears the shared back-off after a right passphrase.
    pub async fn clear_ignition_backoff(&self) -> Result<(), StoreError> {
        query!(
            self.pool.exec(),
            execute,
            "UPDATE ignition_backoff SET failures = 0, blocked_until = 0 WHERE id = 1"
        )
        .map_err(StoreError::db("clearing the ignition back-off"))?;
        Ok(())
    }

    /// The client table's change counter: it moves with every change to a
    /// client (added, bound, unbound, removed), in the change's transaction.
    pub async fn client_generation(&self) -> Result<i64, StoreError> {
        scalar!(self.pool.exec(), fetch_one, CLIENT_GENERATION)
            .map_err(StoreError::db("reading the client change counter"))
    }

    /// Refuses a binding that another client than `name` already has: one
    /// certificate must never identify two clients. (The unique indexes
    /// are the backstop; this names the other client.)
    async fn check_binding_free(
        tx: &mut Tx,
        name: &str,
        binding: Option<&CertBinding>,
    ) -> Result<(), StoreError> {
        let (sha256, subject, issuer) = CertBinding::columns(binding);
        if binding.is_none() {
            return Ok(());
        }
        let other: Option<String> = scalar!(
            tx.exec(),
            fetch_optional,
            "SELECT name FROM api_clients WHERE name <> $1 \
             AND (cert_sha256 = $2 OR (cert_subject = $3 AND cert_issuer = $4))",
            name,
            sha256,
            subject,
            issuer
        )
        .map_err(StoreError::db("checking certificate bindings"))?;
        match other {
            Some(other) => Err(StoreError::Conflict(format!(
                "client {other:?} is already bound to that certificate: one certificate \
                 identifies one client"
            ))),
            None => Ok(()),
        }
    }

    /// Binds `name` to a certificate (`None`: removes its binding) and
    /// sets or keeps its require-cert flag, with the audit row in the same
    /// transaction; the change holds for the next request. `Ok(false)`:
    /// no client by that name (nothing written).
    pub async fn set_client_binding(
        &self,
        name: &str,
        binding: Option<&CertBinding>,
        require_cert: Option<bool>,
        audit: &AuditEvent,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let exists: Option<bool> = scalar!(
            tx.exec(),
            fetch_optional,
            "SELECT require_cert FROM api_clients WHERE name = $1",
            name
        )
        .map_err(StoreError::db("reading a client"))?;
        let Some(current) = exists else {
            return Ok(false);
        };
        Self::check_binding_free(&mut tx, name, binding).await?;
        let (sha256, subject, issuer) = CertBinding::columns(binding);
        let res = query!(
            tx.exec(),
            execute,
            "UPDATE api_clients SET cert_sha256 = $1, cert_subject = $2, cert_issuer = $3, \
             require_cert = $4 WHERE name = $5",
            sha256,
            subject,
            issuer,
            require_cert.unwrap_or(current),
            name
        );
        match res {
            Ok(_) => {}
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                return Err(StoreError::Conflict(
                    "another client is already bound to that certificate".into(),
                ));
            }
            Err(e) => return Err(StoreError::db("binding a client")(e)),
        }
        Self::clients_changed(&mut tx).await?;
        self.commit_audited(tx, audit, "committing the client binding")
            .await?;
        Ok(true)
    }

    /// The clients a presented certificate is bound to: by its fingerprint,
    /// or by its subject and issuer. More than one means bindings of the
    /// two kinds name the same certificate; the caller refuses it.
    pub async fn clients_by_cert(
        &self,
        cert: &PresentedCert<'_>,
    ) -> Result<Vec<ClientRecord>, StoreError> {
        let (subject, issuer) = cert.names.unzip();
        let rows = query!(
            self.pool.exec(),
            fetch_all,
            &format!(
                "SELECT {CLIENT_COLUMNS} FROM api_clients \
             WHERE cert_sha256 = $1 OR (cert_subject = $2 AND cert_issuer = $3) ORDER BY name"
            ),
            cert.sha256,
            subject,
            issuer
        )
        .map_err(StoreError::db("looking up a client by certificate"))?;
        rows.into_iter().map(Self::client_from_row).collect()
    }

    fn client_from_row(r: Row) -> Result<ClientRecord, StoreError> {
        let sha256: Option<String> = r.get("cert_sha256");
        let subject: Option<String> = r.get("cert_subject");
        let issuer: Option<String> = r.get("cert_issuer");
        let name: String = r.get("name");
        let cert = match (sha256, subject, issuer) {
            (None, None, None) => None,
            (Some(h), None, None) => Some(CertBinding::Sha256(h)),
            (None, Some(subject), Some(issuer)) => Some(CertBinding::Name { subject, issuer }),
            _ => {
                return Err(StoreError::Corrupt(format!(
                    "client {name:?} has an incomplete certificate binding"
                )));
            }
        };
        Ok(ClientRecord {
            name,
            client_id: r.get("client_id"),
            secret_hash: r.get("secret_hash"),
            scopes: r.get("scopes"),
            created_at: r.get("created_at"),
            cert,
            require_cert: r.get("require_cert"),
        })
    }

    /// Looks a client up by the id in its bearer token.
    pub async fn client_by_id(&self, client_id: &str) -> Result<Option<ClientRecord>, StoreError> {
        let row = query!(
            self.pool.exec(),
            fetch_optional,
            &format!("SELECT {CLIENT_COLUMNS} FROM api_clients WHERE client_id = $1"),
            client_id
        )
        .map_err(StoreError::db("looking up a client"))?;
        row.map(Self::client_from_row).transpose()
    }

    /// All clients, by name.
    pub async fn list_clients(&self) -> Result<Vec<ClientRecord>, StoreError> {
        let rows = query!(
            self.pool.exec(),
            fetch_all,
            &format!("SELECT {CLIENT_COLUMNS} FROM api_clients ORDER BY name")
        )
        .map_err(StoreError::db("listing clients"))?;
        rows.into_iter().map(Self::client_from_row).collect()
    }

    /// Removes a client; false if there was none by that name.
    pub async fn remove_client(&self, name: &str) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let res = query!(
            tx.exec(),
            execute,
            "DELETE FROM api_clients WHERE name = $1",
            name
        )
        .map_err(StoreError::db("removing a client"))?;
        if res == 0 {
            return Ok(false);
        }
        Self::clients_changed(&mut tx).await?;
        tx.commit()
            .await
            .map_err(StoreError::db("committing the client removal"))?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use std::time::UNIX_EPOCH;

    async fn fresh() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(
            UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        ));
        let store = Store::open(&dir.path().join("s.db"), true, clock)
            .await
            .unwrap();
        (dir, store)
    }

    fn record(fpr: &str) -> OrgKeyRecord {
        OrgKeyRecord {
            fingerprint: fpr.into(),
            algorithm: "p256".into(),
            user_id: "Org <org@example.com>".into(),
            cert: "-----BEGIN PGP PUBLIC KEY BLOCK-----".into(),
            primary_id: "01".into(),
            signing_id: "02".into(),
            encryption_id: "03".into(),
            primary_created: 1,
            signing_created: 1,
            encryption_created: 1,
            exportable: true,
            generated_at: 1,
        }
    }

    #[tokio::test]
    async fn store_file_is_private_and_not_recreated() {
        let (dir, store) = fresh().await;
        store.close().await;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("s.db"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let clock = Arc::new(crate::clock::SystemClock);
        assert!(
            Store::open(&dir.path().join("s.db"), true, clock.clone())
                .await
                .is_err()
        );
        assert!(matches!(
            Store::open(&dir.path().join("none.db"), false, clock).await,
            Err(StoreError::Missing(_))
        ));
    }

    fn ev() -> AuditEvent {
        AuditEvent::new("cli", "org-key-generate", "ok")
    }

    #[tokio::test]
    async fn one_active_org_key_unless_replaced() {
        let (_d, store) = fresh().await;
        assert_eq!(store.active_org_key().await.unwrap(), None);
        store
            .insert_org_key(&record("AA"), false, &ev())
            .await
            .unwrap();
        let e = store
            .insert_org_key(&record("BB"), false, &ev())
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::Conflict(_)), "{e}");
        assert_eq!(
            store.active_org_key().await.unwrap().unwrap().fingerprint,
            "AA"
        );
        store
            .insert_org_key(&record("BB"), true, &ev())
            .await
            .unwrap();
        assert_eq!(
            store.active_org_key().await.unwrap().unwrap().fingerprint,
            "BB"
        );
        assert_eq!(store.org_key_object_ids().await.unwrap().len(), 6);
        // Two successful generations, two audit rows; the refused one left none.
        assert_eq!(store.verify_audit().await.unwrap().rows, 2);
    }

    #[tokio::test]
    async fn a_restored_org_key_is_recorded_with_its_org_cert_or_not_at_all() {
        let (_d, store) = fresh().await;
        let cert = |fpr: &str, key: &str| OrgCertRecord {
            fingerprint: fpr.into(),
            org_key: key.into(),
            state: "active".into(),
            source: "self-signed".into(),
            key_id: "04".into(),
            cert: "-----BEGIN CERTIFICATE-----".into(),
            chain: String::new(),
            subject: "CN=Org".into(),
            not_after: 2_000_000_000,
            created_at: 0,
        };
        let restore = AuditEvent::new("cli", "key-backup-restore", "ok");
        let cert_ev = AuditEvent::new("cli", "org-cert-restore", "ok");
        store
            .insert_org_cert(&cert("C1", "AA"), false, &ev())
            .await
            .unwrap();
        // The org cert cannot be recorded (it is one already): the org key
        // is not recorded either.
        let e = store
            .insert_restored_org_key(
                &record("BB"),
                false,
                &restore,
                Some((&cert("C1", "BB"), &cert_ev)),
            )
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::Conflict(_)), "{e}");
        assert_eq!(store.active_org_key().await.unwrap(), None);
        let active = store.active_org_cert().await.unwrap().unwrap();
        assert_eq!(
            (active.fingerprint.as_str(), active.org_key.as_str()),
            ("C1", "AA")
        );
        assert_eq!(store.verify_audit().await.unwrap().rows, 1);
        // Both, with both audit rows; the old org cert is retired.
        store
            .insert_restored_org_key(
                &record("BB"),
                false,
                &restore,
                Some((&cert("C2", "BB"), &cert_ev)),
            )
            .await
            .unwrap();
        assert_eq!(
            store.active_org_key().await.unwrap().unwrap().fingerprint,
            "BB"
        );
        assert_eq!(
            store.active_org_cert().await.unwrap().unwrap().fingerprint,
            "C2"
        );
        assert_eq!(store.verify_audit().await.unwrap().rows, 3);
    }

    fn client(name: &str, id: &str) -> ClientRecord {
        ClientRecord {
            name: name.into(),
            client_id: id.into(),
            secret_hash: "00".into(),
            scopes: "sign".into(),
            created_at: 5,
            cert: None,
            require_cert: false,
        }
    }

    fn add_ev() -> AuditEvent {
        AuditEvent::new("cli", "client-add", "ok")
    }

    #[tokio::test]
    async fn client_names_are_unique() {
        let (_d, store) = fresh().await;
        let c = client("gw", "id1");
        store.add_client(&c, &add_ev()).await.unwrap();
        let dup = ClientRecord {
            client_id: "id2".into(),
            ..c.clone()
        };
        assert!(matches!(
            store.add_client(&dup, &add_ev()).await,
            Err(StoreError::Conflict(_))
        ));
        // The refused client left no audit row.
        assert_eq!(store.verify_audit().await.unwrap().rows, 1);
        assert_eq!(store.client_by_id("id1").await.unwrap(), Some(c));
        assert!(store.remove_client("gw").await.unwrap());
        assert!(!store.remove_client("gw").await.unwrap());
        assert_eq!(store.client_by_id("id1").await.unwrap(), None);
    }

    #[tokio::test]
    async fn every_client_change_moves_the_client_generation_and_nothing_else_does() {
        let (_d, store) = fresh().await;
        let g0 = store.client_generation().await.unwrap();
        let c = client("gw", "id1");
        store.add_client(&c, &add_ev()).await.unwrap();
        let g1 = store.client_generation().await.unwrap();
        assert!(g1 > g0, "add");
        // Refused changes leave it alone.
        assert!(store.add_client(&c, &add_ev()).await.is_err());
        assert!(!store.remove_client("nobody").await.unwrap());
        assert!(
            !store
                .set_client_binding("nobody", None, None, &add_ev())
                .await
                .unwrap()
        );
        assert_eq!(store.client_generation().await.unwrap(), g1);
        // Other writes leave it alone too.
        store
            .append_audit(&[AuditEvent::new("t", "sign", "ok")])
            .await
            .unwrap();
        assert_eq!(store.client_generation().await.unwrap(), g1);
        let bind = CertBinding::Sha256("a".repeat(64));
        assert!(
            store
                .set_client_binding("gw", Some(&bind), Some(true), &add_ev())
                .await
                .unwrap()
        );
        let g2 = store.client_generation().await.unwrap();
        assert!(g2 > g1, "bind");
        assert!(
            store
                .set_client_binding("gw", None, None, &add_ev())
                .await
                .unwrap()
        );
        let g3 = store.client_generation().await.unwrap();
        assert!(g3 > g2, "unbind");
        assert!(store.remove_client("gw").await.unwrap());
        assert!(store.client_generation().await.unwrap() > g3, "remove");
    }

    #[tokio::test]
    async fn one_certificate_binds_at_most_one_client_and_bindings_change_at_once() {
        let (_d, store) = fresh().await;
        let h1 = "a".repeat(64);
        let h2 = "b".repeat(64);
        let name = |s: &str, i: &str| CertBinding::Name {
            subject: s.into(),
            issuer: i.into(),
        };
        fn by_hash(h: &str) -> PresentedCert<'_> {
            PresentedCert {
                sha256: h,
                names: None,
            }
        }
        let gw = ClientRecord {
            cert: Some(CertBinding::Sha256(h1.clone())),
            require_cert: true,
            ..client("gw", "id1")
        };
        store.add_client(&gw, &add_ev()).await.unwrap();
        let found = store.clients_by_cert(&by_hash(&h1)).await.unwrap();
        assert_eq!(found, std::slice::from_ref(&gw));
        assert_eq!(store.clients_by_cert(&by_hash(&h2)).await.unwrap(), []);
        // Another client with the same certificate: refused, nothing written.
        let e = store
            .add_client(
                &ClientRecord {
                    cert: Some(CertBinding::Sha256(h1.clone())),
                    ..client("other", "id2")
                },
                &add_ev(),
            )
            .await
            .unwrap_err();
        assert!(e.to_string().contains("\"gw\" is already bound"), "{e}");
        assert_eq!(store.list_clients().await.unwrap().len(), 1);
        // Bound by name; the same subject under another issuer is another
        // certificate, the same subject and issuer is refused.
        let ops = ClientRecord {
            cert: Some(name("cn=ops", "cn=ca")),
            ..client("ops", "id3")
        };
        store.add_client(&ops, &add_ev()).await.unwrap();
        store
            .add_client(
                &ClientRecord {
                    cert: Some(name("cn=ops", "cn=other ca")),
                    ..client("ops2", "id4")
                },
                &add_ev(),
            )
            .await
            .unwrap();
        let bind = |b: &str| AuditEvent::new("cli", "client-bind", "ok").detail(b);
        let e = store
            .set_client_binding("gw", Some(&name("cn=ops", "cn=ca")), None, &bind("refused"))
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::Conflict(_)), "{e}");
        let presented = PresentedCert {
            sha256: &h2,
            names: Some(("cn=ops", "cn=ca")),
        };
        assert_eq!(store.clients_by_cert(&presented).await.unwrap(), [ops]);
        // Rebinding moves the client to the new certificate, keeping its
        // require-cert flag; unbinding keeps the flag too.
        assert!(
            store
                .set_client_binding(
                    "gw",
                    Some(&CertBinding::Sha256(h2.clone())),
                    None,
                    &bind("1")
                )
                .await
                .unwrap()
        );
        assert_eq!(store.clients_by_cert(&by_hash(&h1)).await.unwrap(), []);
        let got = store.clients_by_cert(&by_hash(&h2)).await.unwrap();
        assert_eq!((got[0].name.as_str(), got[0].require_cert), ("gw", true));
        assert!(
            store
                .set_client_binding("gw", None, None, &bind("2"))
                .await
                .unwrap()
        );
        let gw_now = store.client_by_id("id1").await.unwrap().unwrap();
        assert_eq!((gw_now.cert, gw_now.require_cert), (None, true));
        assert_eq!(store.clients_by_cert(&by_hash(&h2)).await.unwrap(), []);
        assert!(
            !store
                .set_client_binding("nobody", None, Some(false), &bind("3"))
                .await
                .unwrap()
        );
        // Three clients added, two binding changes: one audit row each;
        // the refused changes wrote none.
        assert_eq!(store.verify_audit().await.unwrap().rows, 5);
        let ops_rows: Vec<String> =
            sqlx::query_scalar("SELECT operation FROM audit_log ORDER BY seq")
                .fetch_all(store.pool())
                .await
                .unwrap();
        assert_eq!(ops_rows.iter().filter(|o| *o == "client-bind").count(), 2);
    }

    #[tokio::test]
    async fn audit_chain_verifies_and_detects_edits_and_gaps() {
        let (_d, store) = fresh().await;
        let writer = AuditWriter::spawn(store.clone());
        let mut handles = Vec::new();
        for i in 0..50 {
            let w = writer.clone();
            handles.push(tokio::spawn(async move {
                w.append(AuditEvent::new(format!("c{i}"), "sign", "ok").digest("ab"))
                    .await
            }));
        }
        let mut seqs: Vec<i64> = Vec::new();
        for h in handles {
            seqs.push(h.await.unwrap().unwrap());
        }
        seqs.sort();
        assert_eq!(seqs, (1..=50).collect::<Vec<_>>());
        assert_eq!(
            store.verify_audit().await.unwrap(),
            VerifyReport {
                rows: 50,
                first_broken: None
            }
        );

        sqlx::query("UPDATE audit_log SET actor = 'mallory' WHERE seq = 17")
            .execute(store.pool())
            .await
            .unwrap();
        let r = store.verify_audit().await.unwrap();
        assert_eq!(r.first_broken.as_ref().map(|b| b.0), Some(17), "{r:?}");
        assert_eq!(r.rows, 16);

        let (_d2, store2) = fresh().await;
        for i in 0..5 {
            store2
                .append_audit(&[AuditEvent::new(format!("c{i}"), "x", "ok")])
                .await
                .unwrap();
        }
        sqlx::query("DELETE FROM audit_log WHERE seq = 3")
            .execute(store2.pool())
            .await
            .unwrap();
        let r = store2.verify_audit().await.unwrap();
        assert_eq!(r.first_broken.map(|b| b.0), Some(4));
    }
}
