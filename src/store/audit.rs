//! The hash-chained audit log. Each row carries the hash of the row before it,
//! so editing or deleting a row breaks the chain at that row. Concurrent
//! writers are batched into one transaction (group commit) by a single writer
//! task, which keeps the chain linear and the per-signature cost low.

use super::{Store, StoreError};
use crate::clock::unix_secs;
use sha2::{Digest, Sha256};
use sqlx::pool::PoolConnection;
use sqlx::{Connection, Row, Sqlite};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Hash of the row before the first.
pub const GENESIS: [u8; 32] = [0u8; 32];

/// What happened, by whom, to which key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// Client name, "cli:<user>" or "appliance".
    pub actor: String,
    /// Operation, e.g. "sign", "ignition", "org-key-generate".
    pub operation: String,
    /// "ok", "denied" or "failed".
    pub outcome: String,
    /// Fingerprint of the key used, if any.
    pub key_fingerprint: Option<String>,
    /// Hex SHA-256 of the signed data, if any.
    pub data_digest: Option<String>,
    /// Free text (never secrets).
    pub detail: Option<String>,
}

impl AuditEvent {
    /// An event with the required fields.
    pub fn new(actor: impl Into<String>, operation: &str, outcome: &str) -> Self {
        Self {
            actor: actor.into(),
            operation: operation.into(),
            outcome: outcome.into(),
            key_fingerprint: None,
            data_digest: None,
            detail: None,
        }
    }

    /// Sets the key fingerprint.
    pub fn key(mut self, fpr: impl Into<String>) -> Self {
        self.key_fingerprint = Some(fpr.into());
        self
    }

    /// Sets the data digest.
    pub fn digest(mut self, d: impl Into<String>) -> Self {
        self.data_digest = Some(d.into());
        self
    }

    /// Sets the detail text.
    pub fn detail(mut self, d: impl Into<String>) -> Self {
        self.detail = Some(d.into());
        self
    }
}

/// A stored audit row.
#[derive(Debug, Clone)]
pub struct AuditRow {
    /// Position in the chain, from 1.
    pub seq: i64,
    /// Unix seconds.
    pub at: i64,
    /// The event.
    pub event: AuditEvent,
    /// Hex hash of the previous row.
    pub prev_hash: String,
    /// Hex hash of this row.
    pub hash: String,
}

fn put_str(h: &mut Sha256, s: Option<&str>) {
    match s {
        Some(s) => {
            h.update((s.len() as u32).to_be_bytes());
            h.update(s.as_bytes());
        }
        None => h.update(u32::MAX.to_be_bytes()),
    }
}

/// The chain hash of a row: SHA-256 over a domain tag, the previous hash and
/// every field, length-prefixed so that no two rows encode alike.
pub fn row_hash(prev: &[u8; 32], seq: i64, at: i64, e: &AuditEvent) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"orgkey-audit-v1\0");
    h.update(prev);
    h.update(seq.to_be_bytes());
    h.update(at.to_be_bytes());
    put_str(&mut h, Some(&e.actor));
    put_str(&mut h, Some(&e.operation));
    put_str(&mut h, Some(&e.outcome));
    put_str(&mut h, e.key_fingerprint.as_deref());
    put_str(&mut h, e.data_digest.as_deref());
    put_str(&mut h, e.detail.as_deref());
    h.finalize().into()
}

fn parse_hash(s: &str) -> Option<[u8; 32]> {
    let v = hex::decode(s).ok()?;
    v.try_into().ok()
}

/// Result of `audit verify`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Rows checked.
    pub rows: u64,
    /// The first row that breaks the chain and why.
    pub first_broken: Option<(i64, String)>,
}

const VERIFY_PAGE: i64 = 1000;

/// Rows per audit INSERT statement, largest first (10 parameters a row:
/// 640 at most, well under SQLite's and PostgreSQL's limits).
const INSERT_CHUNKS: [usize; 7] = [64, 32, 16, 8, 4, 2, 1];

/// `INSERT INTO audit_log ... VALUES (...), (...)` for `INSERT_CHUNKS[i]`
/// rows, built once per size.
fn insert_rows_sql(i: usize) -> &'static str {
    static SQL: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let all = SQL.get_or_init(|| {
        INSERT_CHUNKS
            .iter()
            .map(|&n| {
                let tuples: Vec<String> = (0..n)
                    .map(|r| {
                        let p: Vec<String> = (1..=10).map(|c| format!("${}", r * 10 + c)).collect();
                        format!("({})", p.join(", "))
                    })
                    .collect();
                format!(
                    "INSERT INTO audit_log (seq, at, actor, operation, outcome, key_fingerprint, \
                     data_digest, detail, prev_hash, hash) VALUES {}",
                    tuples.join(", ")
                )
            })
            .collect()
    });
    &all[i]
}

impl Store {
    /// Appends events in one transaction, chained after the current last
    /// row; returns their sequence numbers. Any failure is a
    /// [`StoreError::Audit`]: nothing was recorded.
    pub async fn append_audit(&self, events: &[AuditEvent]) -> Result<Vec<i64>, StoreError> {
        let appended = async {
            let mut tx = self.begin_write().await?;
            let seqs = self.append_audit_in(&mut tx, events).await?;
            tx.commit()
                .await
                .map_err(StoreError::db("committing audit rows"))?;
            Ok(seqs)
        };
        appended.await.map_err(StoreError::audit)
    }

    /// Like [`Store::append_audit`], on a connection the caller keeps
    /// between calls (`None`: one is taken from the pool and kept). Giving
    /// a connection back to the pool costs sqlx a round trip to the
    /// connection's thread each time; the group-commit writer keeps one
    /// instead. After a failure the connection goes back to the pool (it
    /// may be mid-transaction) and the next call takes another.
    async fn append_audit_held(
        &self,
        held: &mut Option<PoolConnection<Sqlite>>,
        events: &[AuditEvent],
    ) -> Result<Vec<i64>, StoreError> {
        let appended = async {
            let conn = match held {
                Some(c) => c,
                None => held.insert(
                    self.pool
                        .acquire()
                        .await
                        .map_err(StoreError::db("taking a store connection"))?,
                ),
            };
            let mut tx = conn
                .begin_with("BEGIN IMMEDIATE")
                .await
                .map_err(StoreError::db("starting a transaction"))?;
            let seqs = self.append_audit_in(&mut tx, events).await?;
            tx.commit()
                .await
                .map_err(StoreError::db("committing audit rows"))?;
            Ok(seqs)
        }
        .await;
        if appended.is_err() {
            *held = None;
        }
        appended.map_err(StoreError::audit)
    }

    /// Appends events inside a caller's write transaction (begun with
    /// BEGIN IMMEDIATE so the chain head cannot move underneath).
    pub(super) async fn append_audit_in(
        &self,
        conn: &mut sqlx::SqliteConnection,
        events: &[AuditEvent],
    ) -> Result<Vec<i64>, StoreError> {
        let last = sqlx::query("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut *conn)
            .await
            .map_err(StoreError::db("reading the audit chain head"))?;
        let (mut seq, mut prev) = match last {
            Some(r) => {
                let h: String = r.get("hash");
                let prev = parse_hash(&h).ok_or_else(|| {
                    StoreError::Corrupt("audit chain head hash is not hex".into())
                })?;
                (r.get::<i64, _>("seq"), prev)
            }
            None => (0, GENESIS),
        };
        let at = unix_secs(self.clock.now()) as i64;
        let mut rows = Vec::with_capacity(events.len());
        for e in events {
            seq += 1;
            let hash = row_hash(&prev, seq, at, e);
            rows.push((seq, e, hex::encode(prev), hex::encode(hash)));
            prev = hash;
        }
        // A few multi-row INSERTs instead of one statement per row: each
        // statement is a round trip to the driver's connection thread. The
        // chunk sizes are powers of two so that only a handful of distinct
        // statements end up in the prepared-statement cache.
        let mut rest = &rows[..];
        while !rest.is_empty() {
            // The last size is 1, which fits any non-empty rest.
            let i = INSERT_CHUNKS
                .iter()
                .position(|&c| c <= rest.len())
                .unwrap_or(INSERT_CHUNKS.len() - 1);
            let (chunk, tail) = rest.split_at(INSERT_CHUNKS[i]);
            let mut q = sqlx::query(insert_rows_sql(i));
            for (seq, e, prev_hash, hash) in chunk {
                q = q
                    .bind(*seq)
                    .bind(at)
                    .bind(&e.actor)
                    .bind(&e.operation)
                    .bind(&e.outcome)
                    .bind(&e.key_fingerprint)
                    .bind(&e.data_digest)
                    .bind(&e.detail)
                    .bind(prev_hash)
                    .bind(hash);
            }
            q.execute(&mut *conn)
                .await
                .map_err(StoreError::db("writing an audit row"))?;
            rest = tail;
        }
        Ok(rows.iter().map(|(seq, ..)| *seq).collect())
    }

    /// Sequence number of the last row (0 when empty).
    pub async fn audit_head(&self) -> Result<i64, StoreError> {
        let seq: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM audit_log")
            .fetch_one(&self.pool)
            .await
            .map_err(StoreError::db("reading the audit chain head"))?;
        Ok(seq.unwrap_or(0))
    }

    /// The last row's sequence number and hash (`None` when empty).
    pub async fn audit_tip(&self) -> Result<Option<(i64, String)>, StoreError> {
        let row = sqlx::query("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&self.pool)
            .await
            .map_err(StoreError::db("reading the audit chain head"))?;
        Ok(row.map(|r| (r.get("seq"), r.get("hash"))))
    }

    /// The hash of row `seq`, if the chain has that row.
    pub async fn audit_hash_at(&self, seq: i64) -> Result<Option<String>, StoreError> {
        sqlx::query_scalar("SELECT hash FROM audit_log WHERE seq = $1")
            .bind(seq)
            .fetch_optional(&self.pool)
            .await
            .map_err(StoreError::db("reading the audit chain"))
    }

    /// Rows with `seq > after`, oldest first, at most `limit`.
    pub async fn audit_rows(&self, after: i64, limit: i64) -> Result<Vec<AuditRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, at, actor, operation, outcome, key_fingerprint, data_digest, detail, prev_hash, hash \
             FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::db("reading the audit log"))?;
        Ok(rows
            .into_iter()
            .map(|r| AuditRow {
                seq: r.get("seq"),
                at: r.get("at"),
                event: AuditEvent {
                    actor: r.get("actor"),
                    operation: r.get("operation"),
                    outcome: r.get("outcome"),
                    key_fingerprint: r.get("key_fingerprint"),
                    data_digest: r.get("data_digest"),
                    detail: r.get("detail"),
                },
                prev_hash: r.get("prev_hash"),
                hash: r.get("hash"),
            })
            .collect())
    }

    /// Recomputes the whole chain page by page (memory stays flat).
    pub async fn verify_audit(&self) -> Result<VerifyReport, StoreError> {
        let mut prev = GENESIS;
        let mut expected_seq = 1i64;
        let mut rows = 0u64;
        loop {
            let page = self.audit_rows(expected_seq - 1, VERIFY_PAGE).await?;
            if page.is_empty() {
                return Ok(VerifyReport {
                    rows,
                    first_broken: None,
                });
            }
            for r in page {
                let broken = |why: String| {
                    Ok(VerifyReport {
                        rows,
                        first_broken: Some((r.seq, why)),
                    })
                };
                if r.seq != expected_seq {
                    return broken(format!(
                        "row {expected_seq} is missing (next row is {})",
                        r.seq
                    ));
                }
                if parse_hash(&r.prev_hash) != Some(prev) {
                    return broken("prev_hash does not match the previous row's hash".into());
                }
                let h = row_hash(&prev, r.seq, r.at, &r.event);
                if parse_hash(&r.hash) != Some(h) {
                    return broken("row contents do not match its hash (row was modified)".into());
                }
                prev = h;
                expected_seq += 1;
                rows += 1;
            }
        }
    }
}

type Ack = oneshot::Sender<Result<i64, StoreError>>;

/// Handle to the group-commit audit writer task.
#[derive(Clone, Debug)]
pub struct AuditWriter {
    tx: mpsc::Sender<(AuditEvent, Ack)>,
}

/// Most rows committed in one transaction.
const MAX_BATCH: usize = 512;

impl AuditWriter {
    /// Starts the writer task on the current runtime.
    pub fn spawn(store: Store) -> Self {
        let (tx, mut rx) = mpsc::channel::<(AuditEvent, Ack)>(4 * MAX_BATCH);
        tokio::spawn(async move {
            let mut held = None;
            loop {
                // Closing the store waits for every connection: the kept one
                // goes back as soon as that starts.
                let first = tokio::select! {
                    item = rx.recv() => match item {
                        Some(item) => item,
                        None => break,
                    },
                    () = store.pool.close_event(), if held.is_some() => {
                        held = None;
                        continue;
                    }
                };
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(item) => batch.push(item),
                        Err(_) => break,
                    }
                }
                let (events, acks): (Vec<AuditEvent>, Vec<Ack>) = batch.into_iter().unzip();
                let started = std::time::Instant::now();
                let appended = store.append_audit_held(&mut held, &events).await;
                crate::metrics::audit_commit(started.elapsed(), appended.is_ok());
                match appended {
                    Ok(seqs) => {
                        for (ack, seq) in acks.into_iter().zip(seqs) {
                            let _ = ack.send(Ok(seq));
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, rows = events.len(), "audit write failed");
                        // Every waiter gets the same cause.
                        let cause = match e {
                            StoreError::Audit(cause) => cause,
                            other => Arc::new(other),
                        };
                        for ack in acks {
                            let _ = ack.send(Err(StoreError::Audit(Arc::clone(&cause))));
                        }
                    }
                }
            }
        });
        Self { tx }
    }

    /// Appends one event and waits until it is committed.
    pub async fn append(&self, event: AuditEvent) -> Result<i64, StoreError> {
        let (ack, done) = oneshot::channel();
        let stopped = || StoreError::WriterStopped.audit();
        self.tx.send((event, ack)).await.map_err(|_| stopped())?;
        done.await.map_err(|_| stopped())?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_depends_on_every_field_and_on_absence() {
        let e = AuditEvent::new("gw", "sign", "ok")
            .key("AB")
            .digest("cd")
            .detail("x");
        let base = row_hash(&GENESIS, 1, 100, &e);
        let variants = [
            AuditEvent {
                actor: "gx".into(),
                ..e.clone()
            },
            AuditEvent {
                operation: "sigm".into(),
                ..e.clone()
            },
            AuditEvent {
                outcome: "ko".into(),
                ..e.clone()
            },
            AuditEvent {
                key_fingerprint: None,
                ..e.clone()
            },
            AuditEvent {
                data_digest: Some(String::new()),
                ..e.clone()
            },
            AuditEvent {
                detail: None,
                ..e.clone()
            },
        ];
        for v in &variants {
            assert_ne!(row_hash(&GENESIS, 1, 100, v), base, "{v:?}");
        }
        assert_ne!(row_hash(&GENESIS, 2, 100, &e), base);
        assert_ne!(row_hash(&GENESIS, 1, 101, &e), base);
        assert_ne!(row_hash(&[1u8; 32], 1, 100, &e), base);
        // Moving bytes between adjacent fields changes the hash.
        let a = AuditEvent::new("ab", "c", "ok");
        let b = AuditEvent::new("a", "bc", "ok");
        assert_ne!(row_hash(&GENESIS, 1, 1, &a), row_hash(&GENESIS, 1, 1, &b));
    }

    /// A store on a fresh file, and a second one on the same file whose
    /// writes give up after 100 ms.
    async fn two_handles() -> (tempfile::TempDir, Store, Store) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let clock = Arc::new(crate::clock::ManualClock::new(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000),
        ));
        let holder = Store::open(&path, true, clock.clone()).await.unwrap();
        let impatient =
            Store::open_with(&path, false, clock, std::time::Duration::from_millis(100))
                .await
                .unwrap();
        (dir, holder, impatient)
    }

    #[tokio::test]
    async fn a_busy_store_is_unavailable_and_an_unwritable_audit_row_is_an_audit_failure() {
        let (_d, holder, impatient) = two_handles().await;
        let lock = holder.begin_write().await.unwrap();
        // A plain write waiting for the lock: unavailable, worth a retry.
        let busy = impatient
            .add_client(
                &super::super::ClientRecord {
                    name: "gw".into(),
                    client_id: "id".into(),
                    secret_hash: "00".into(),
                    scopes: "sign".into(),
                    created_at: 1,
                    cert: None,
                    require_cert: false,
                },
                &AuditEvent::new("t", "client-add", "ok"),
            )
            .await
            .unwrap_err();
        assert!(matches!(busy, StoreError::Unavailable { .. }), "{busy:?}");
        // The same trouble while writing an audit row: an audit failure,
        // whose cause is kept.
        let audit = impatient
            .append_audit(&[AuditEvent::new("t", "sign", "ok")])
            .await
            .unwrap_err();
        let StoreError::Audit(cause) = &audit else {
            panic!("{audit:?}")
        };
        assert!(
            matches!(**cause, StoreError::Unavailable { .. }),
            "{cause:?}"
        );
        assert!(audit.to_string().starts_with("audit log unavailable: "));
        // And through the group-commit writer, for every waiter.
        let writer = AuditWriter::spawn(impatient.clone());
        let (a, b) = tokio::join!(
            writer.append(AuditEvent::new("t", "sign", "ok")),
            writer.append(AuditEvent::new("u", "sign", "ok"))
        );
        for e in [a.unwrap_err(), b.unwrap_err()] {
            assert!(matches!(e, StoreError::Audit(_)), "{e:?}");
        }
        drop(lock);
        assert_eq!(
            writer
                .append(AuditEvent::new("t", "sign", "ok"))
                .await
                .unwrap(),
            1
        );
    }

    #[tokio::test]
    async fn a_broken_chain_head_fails_the_audited_change_as_an_audit_failure() {
        let (_d, store, _) = two_handles().await;
        store
            .append_audit(&[AuditEvent::new("t", "x", "ok")])
            .await
            .unwrap();
        sqlx::query("UPDATE audit_log SET hash = 'not hex'")
            .execute(store.pool())
            .await
            .unwrap();
        let e = store
            .append_audit(&[AuditEvent::new("t", "x", "ok")])
            .await
            .unwrap_err();
        let StoreError::Audit(cause) = &e else {
            panic!("{e:?}")
        };
        assert!(matches!(**cause, StoreError::Corrupt(_)), "{cause:?}");
    }

    #[test]
    fn driver_failures_that_a_retry_may_cure_are_unavailable() {
        for e in [
            sqlx::Error::PoolTimedOut,
            sqlx::Error::PoolClosed,
            sqlx::Error::Io(std::io::Error::other("EIO")),
        ] {
            let e = StoreError::db("reading")(e);
            assert!(matches!(e, StoreError::Unavailable { .. }), "{e:?}");
        }
        let e = StoreError::db("reading")(sqlx::Error::RowNotFound);
        assert!(matches!(e, StoreError::Db { .. }), "{e:?}");
        // The driver's error is kept, opaque, as the source.
        assert!(std::error::Error::source(&e).is_some());
    }
}
