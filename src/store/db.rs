//! The two native sqlx backends behind the store's API (decision 0030):
//! SQLite (the embedded default, one file) and PostgreSQL (several nodes on
//! one database). Not `sqlx::Any`: each backend keeps its own pool, types
//! and migrations. Most SQL is written once (`$n` parameters, BIGINT, TEXT,
//! BOOLEAN) and run on either pool by the macros here, which expand the same
//! query text once per backend; code that differs (locking, snapshots, error
//! codes) matches on [`Pool`] or [`Tx`] where it is.

use sqlx::postgres::{PgConnection, PgPool, PgRow, Postgres};
use sqlx::sqlite::{Sqlite, SqliteConnection, SqlitePool, SqliteRow};
use sqlx::{Decode, Type};

/// A connection pool of one of the two backends.
#[derive(Clone, Debug)]
pub(super) enum Pool {
    /// The SQLite file.
    Sqlite(SqlitePool),
    /// A PostgreSQL database shared by the cluster's nodes.
    Postgres(PgPool),
}

/// A write transaction of one of the two backends (see
/// [`super::Store::begin_write`] for how each keeps the audit chain head
/// still).
pub(crate) enum Tx {
    /// BEGIN IMMEDIATE on SQLite.
    Sqlite(sqlx::Transaction<'static, Sqlite>),
    /// BEGIN on PostgreSQL, with the audit chain head row locked.
    Postgres(sqlx::Transaction<'static, Postgres>),
}

/// Where a statement runs: a pool (each statement on its own) or an open
/// transaction.
pub(super) enum Exec<'a> {
    SqlitePool(&'a SqlitePool),
    PgPool(&'a PgPool),
    SqliteConn(&'a mut SqliteConnection),
    PgConn(&'a mut PgConnection),
}

impl Pool {
    pub(super) fn exec(&self) -> Exec<'_> {
        match self {
            Pool::Sqlite(p) => Exec::SqlitePool(p),
            Pool::Postgres(p) => Exec::PgPool(p),
        }
    }

    pub(super) async fn close(&self) {
        match self {
            Pool::Sqlite(p) => p.close().await,
            Pool::Postgres(p) => p.close().await,
        }
    }
}

impl Tx {
    pub(super) fn exec(&mut self) -> Exec<'_> {
        match self {
            Tx::Sqlite(t) => Exec::SqliteConn(t),
            Tx::Postgres(t) => Exec::PgConn(t),
        }
    }

    pub(super) async fn commit(self) -> Result<(), sqlx::Error> {
        match self {
            Tx::Sqlite(t) => t.commit().await,
            Tx::Postgres(t) => t.commit().await,
        }
    }
}

/// A result row of either backend. Columns are read by name into types both
/// backends decode (i64, String, bool and their Options).
pub(super) enum Row {
    Sqlite(SqliteRow),
    Postgres(PgRow),
}

impl From<SqliteRow> for Row {
    fn from(r: SqliteRow) -> Self {
        Row::Sqlite(r)
    }
}

impl From<PgRow> for Row {
    fn from(r: PgRow) -> Self {
        Row::Postgres(r)
    }
}

impl Row {
    /// The column `col`. Panics like sqlx's `Row::get` when the column is
    /// missing or of another type: the queries and the schema are both
    /// ours, so that is a bug caught by the tests, not bad input.
    pub(super) fn get<T>(&self, col: &str) -> T
    where
        T: for<'r> Decode<'r, Sqlite>
            + Type<Sqlite>
            + for<'r> Decode<'r, Postgres>
            + Type<Postgres>,
    {
        use sqlx::Row as _;
        match self {
            Row::Sqlite(r) => r.get(col),
            Row::Postgres(r) => r.get(col),
        }
    }
}

/// Runs `$body` with `$e` bound to the executor of `$exec` (an [`Exec`]),
/// once per backend: the same query text is compiled for both.
macro_rules! on_exec {
    ($exec:expr, |$e:ident| $body:expr) => {
        match $exec {
            $crate::store::db::Exec::SqlitePool($e) => $body,
            $crate::store::db::Exec::PgPool($e) => $body,
            $crate::store::db::Exec::SqliteConn($e) => $body,
            $crate::store::db::Exec::PgConn($e) => $body,
        }
    };
}

/// `sqlx::query(sql)` with binds, run with `$method` on `$exec`:
/// `execute` gives the rows affected; `fetch_optional`, `fetch_one` and
/// `fetch_all` give [`Row`]s.
macro_rules! query {
    ($exec:expr, execute, $sql:expr $(, $arg:expr)* $(,)?) => {
        $crate::store::db::on_exec!($exec, |e| sqlx::query($sql)$(.bind($arg))*.execute(e).await.map(|r| r.rows_affected()))
    };
    ($exec:expr, fetch_optional, $sql:expr $(, $arg:expr)* $(,)?) => {
        $crate::store::db::on_exec!($exec, |e| sqlx::query($sql)$(.bind($arg))*.fetch_optional(e).await
            .map(|r| r.map($crate::store::db::Row::from)))
    };
    ($exec:expr, fetch_one, $sql:expr $(, $arg:expr)* $(,)?) => {
        $crate::store::db::on_exec!($exec, |e| sqlx::query($sql)$(.bind($arg))*.fetch_one(e).await
            .map($crate::store::db::Row::from))
    };
    ($exec:expr, fetch_all, $sql:expr $(, $arg:expr)* $(,)?) => {
        $crate::store::db::on_exec!($exec, |e| sqlx::query($sql)$(.bind($arg))*.fetch_all(e).await
            .map(|v| v.into_iter().map($crate::store::db::Row::from).collect::<Vec<_>>()))
    };
}

/// `sqlx::query_scalar(sql)` with binds, run with `$method`
/// (`fetch_optional`, `fetch_one`, `fetch_all`) on `$exec`; the value's type
/// comes from the caller.
macro_rules! scalar {
    ($exec:expr, $method:ident, $sql:expr $(, $arg:expr)* $(,)?) => {
        $crate::store::db::on_exec!($exec, |e| sqlx::query_scalar($sql)$(.bind($arg))*.$method(e).await)
    };
}

pub(super) use {on_exec, query, scalar};
