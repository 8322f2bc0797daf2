//! The hash-chained audit log. Each row carries the hash of the row before it,
//! so editing or deleting a row breaks the chain at that row. Concurrent
//! writers are batched into one transaction (group commit) by a single writer
//! task, which keeps the chain linear and the per-signature cost low. On a
//! cluster every node appends to the same chain, serialized on its head
//! (decision 0030), and each row names its node (decision 0031).

use super::db::{Tx, on_exec, query, scalar};
use super::{Store, StoreError};
use crate::clock::unix_secs;
use sha2::{Digest, Sha256};
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

    /// The event as it is stored and hashed: NUL characters, which
    /// PostgreSQL's TEXT cannot hold, become U+FFFD on both backends, so a
    /// row reads back exactly as it was hashed and a chain means the same
    /// on either backend. Everything else is kept as is (display escapes
    /// it).
    fn storable(&self) -> std::borrow::Cow<'_, AuditEvent> {
        let has_nul = |s: &str| s.contains('\0');
        let fields = [
            Some(self.actor.as_str()),
            Some(self.operation.as_str()),
            Some(self.outcome.as_str()),
            self.key_fingerprint.as_deref(),
            self.data_digest.as_deref(),
            self.detail.as_deref(),
        ];
        if !fields.into_iter().flatten().any(has_nul) {
            return std::borrow::Cow::Borrowed(self);
        }
        let clean = |s: &str| s.replace('\0', "\u{fffd}");
        std::borrow::Cow::Owned(AuditEvent {
            actor: clean(&self.actor),
            operation: clean(&self.operation),
            outcome: clean(&self.outcome),
            key_fingerprint: self.key_fingerprint.as_deref().map(clean),
            data_digest: self.data_digest.as_deref().map(clean),
            detail: self.detail.as_deref().map(clean),
        })
    }
}

/// A stored audit row.
#[derive(Debug, Clone)]
pub struct AuditRow {
    /// Position in the chain, from 1.
    pub seq: i64,
    /// Unix seconds.
    pub at: i64,
    /// The node that appended it (`None`: written before rows named their
    /// node).
    pub node: Option<String>,
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
/// every field, length-prefixed so that no two rows encode alike. A row
/// that names its node is hashed as format v2 (its own tag, the node after
/// the time); a row without one (written before nodes were recorded) as
/// format v1, so chains written before stay verifiable. The tag differs, so
/// a v2 row cannot be passed off as a v1 row by dropping its node.
pub fn row_hash(
    prev: &[u8; 32],
    seq: i64,
    at: i64,
    node: Option<&str>,
    e: &AuditEvent,
) -> [u8; 32] {
    let mut h = Sha256::new();
    match node {
        None => h.update(b"orgkey-audit-v1\0"),
        Some(_) => h.update(b"orgkey-audit-v2\0"),
    }
    h.update(prev);
    h.update(seq.to_be_bytes());
    h.update(at.to_be_bytes());
    if let Some(node) = node {
        put_str(&mut h, Some(node));
    }
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
                        let p: Vec<String> = (1..=11).map(|c| format!("${}", r * 11 + c)).collect();
                        format!("({})", p.join(", "))
                    })
                    .collect();
                format!(
                    "INSERT INTO audit_log (seq, at, actor, operation, outcome, key_fingerprint, \
                     data_digest, detail, prev_hash, hash, node) VALUES {}",
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
        let appended = || async {
            let mut tx = self.begin_write().await?;
            let seqs = self.append_audit_in(&mut tx, events).await?;
            tx.commit()
                .await
                .map_err(StoreError::db("committing audit rows"))?;
            Ok(seqs)
        };
        self.retrying(appended).await.map_err(StoreError::audit)
    }

    /// Appends events inside a caller's write transaction, begun with
    /// [`Store::begin_write`] so the chain head cannot move underneath.
    pub(super) async fn append_audit_in(
        &self,
        conn: &mut Tx,
        events: &[AuditEvent],
    ) -> Result<Vec<i64>, StoreError> {
        let head_sql = match conn {
            // BEGIN IMMEDIATE holds the file's write lock: the last row is
            // the head.
            Tx::Sqlite(_) => "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1",
            // The head row, locked by begin_write (locking it again in the
            // same transaction is free).
            Tx::Postgres(_) => "SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE",
        };
        let last = query!(conn.exec(), fetch_optional, head_sql)
            .map_err(StoreError::db("reading the audit chain head"))?
            .filter(|r| r.get::<i64>("seq") > 0);
        let (mut seq, mut prev) = match last {
            Some(r) => {
                let h: String = r.get("hash");
                let prev = parse_hash(&h).ok_or_else(|| {
                    StoreError::Corrupt("audit chain head hash is not hex".into())
                })?;
                (r.get::<i64>("seq"), prev)
            }
            None => (0, GENESIS),
        };
        let at = unix_secs(self.clock.now()) as i64;
        let mut rows = Vec::with_capacity(events.len());
        for e in events {
            let e = e.storable();
            seq += 1;
            let hash = row_hash(&prev, seq, at, Some(&self.node), &e);
            rows.push((seq, e, hex::encode(prev), hex::encode(hash)));
            prev = hash;
        }
        // A few multi-row INSERTs instead of one statement per row: each
        // statement is a round trip to the driver's connection (a thread
        // for SQLite, the network for PostgreSQL). The chunk sizes are
        // powers of two so that only a handful of distinct statements end
        // up in the prepared-statement caches.
        let node: &str = &self.node;
        let mut rest = &rows[..];
        while !rest.is_empty() {
            // The last size is 1, which fits any non-empty rest.
            let i = INSERT_CHUNKS
                .iter()
                .position(|&c| c <= rest.len())
                .unwrap_or(INSERT_CHUNKS.len() - 1);
            let (chunk, tail) = rest.split_at(INSERT_CHUNKS[i]);
            let sql = insert_rows_sql(i);
            on_exec!(conn.exec(), |ex| {
                let mut q = sqlx::query(sql);
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
                        .bind(hash)
                        .bind(node);
                }
                q.execute(ex).await.map(|_| ())
            })
            .map_err(StoreError::db("writing an audit row"))?;
            rest = tail;
        }
        if let Tx::Postgres(_) = conn {
            query!(
                conn.exec(),
                execute,
                "UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1",
                seq,
                hex::encode(prev)
            )
            .map_err(StoreError::db("moving the audit chain head"))?;
        }
        Ok(rows.iter().map(|(seq, ..)| *seq).collect())
    }

    /// Sequence number of the last row (0 when empty).
    pub async fn audit_head(&self) -> Result<i64, StoreError> {
        let seq: Option<i64> = scalar!(
            self.pool.exec(),
            fetch_one,
            "SELECT MAX(seq) FROM audit_log"
        )
        .map_err(StoreError::db("reading the audit chain head"))?;
        Ok(seq.unwrap_or(0))
    }

    /// The last row's sequence number and hash (`None` when empty).
    pub async fn audit_tip(&self) -> Result<Option<(i64, String)>, StoreError> {
        let row = query!(
            self.pool.exec(),
            fetch_optional,
            "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1"
        )
        .map_err(StoreError::db("reading the audit chain head"))?;
        Ok(row.map(|r| (r.get("seq"), r.get("hash"))))
    }

    /// The hash of row `seq`, if the chain has that row.
    pub async fn audit_hash_at(&self, seq: i64) -> Result<Option<String>, StoreError> {
        scalar!(
            self.pool.exec(),
            fetch_optional,
            "SELECT hash FROM audit_log WHERE seq = $1",
            seq
        )
        .map_err(StoreError::db("reading the audit chain"))
    }

    /// Rows with `seq > after`, oldest first, at most `limit`.
    pub async fn audit_rows(&self, after: i64, limit: i64) -> Result<Vec<AuditRow>, StoreError> {
        let rows = query!(
            self.pool.exec(),
            fetch_all,
            "SELECT seq, at, node, actor, operation, outcome, key_fingerprint, data_digest, detail, prev_hash, hash \
             FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2",
            after,
            limit
        )
        .map_err(StoreError::db("reading the audit log"))?;
        Ok(rows
            .into_iter()
            .map(|r| AuditRow {
                seq: r.get("seq"),
                at: r.get("at"),
                node: r.get("node"),
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
                let h = row_hash(&prev, r.seq, r.at, r.node.as_deref(), &r.event);
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
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(item) => batch.push(item),
                        Err(_) => break,
                    }
                }
                let (events, acks): (Vec<AuditEvent>, Vec<Ack>) = batch.into_iter().unzip();
                let started = std::time::Instant::now();
                let appended = store.append_audit(&events).await;
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
        let base = row_hash(&GENESIS, 1, 100, None, &e);
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
            assert_ne!(row_hash(&GENESIS, 1, 100, None, v), base, "{v:?}");
        }
        assert_ne!(row_hash(&GENESIS, 2, 100, None, &e), base);
        assert_ne!(row_hash(&GENESIS, 1, 101, None, &e), base);
        assert_ne!(row_hash(&[1u8; 32], 1, 100, None, &e), base);
        // Moving bytes between adjacent fields changes the hash.
        let a = AuditEvent::new("ab", "c", "ok");
        let b = AuditEvent::new("a", "bc", "ok");
        assert_ne!(
            row_hash(&GENESIS, 1, 1, None, &a),
            row_hash(&GENESIS, 1, 1, None, &b)
        );
    }

    #[test]
    fn a_row_naming_its_node_is_hashed_over_it_and_apart_from_rows_without() {
        let e = AuditEvent::new("gw", "sign", "ok");
        let v1 = row_hash(&GENESIS, 1, 100, None, &e);
        let a = row_hash(&GENESIS, 1, 100, Some("node-a"), &e);
        assert_ne!(a, v1);
        assert_ne!(a, row_hash(&GENESIS, 1, 100, Some("node-b"), &e));
        assert_ne!(a, row_hash(&GENESIS, 1, 100, Some(""), &e));
        // The node cannot trade bytes with the actor.
        let shifted = AuditEvent::new("-agw", "sign", "ok");
        assert_ne!(a, row_hash(&GENESIS, 1, 100, Some("node"), &shifted));
    }

    #[tokio::test]
    async fn a_chain_from_before_nodes_keeps_verifying_and_rows_with_nodes_follow_it() {
        let (_d, store, _) = two_handles().await;
        // Two rows as schema 5 wrote them: no node, format v1 hashes.
        let mut prev = GENESIS;
        for seq in 1..=2i64 {
            let e = AuditEvent::new("old", "sign", "ok");
            let h = row_hash(&prev, seq, 50, None, &e);
            sqlx::query(
                "INSERT INTO audit_log (seq, at, actor, operation, outcome, prev_hash, hash) \
                 VALUES ($1, 50, 'old', 'sign', 'ok', $2, $3)",
            )
            .bind(seq)
            .bind(hex::encode(prev))
            .bind(hex::encode(h))
            .execute(store.pool())
            .await
            .unwrap();
            prev = h;
        }
        let store = store.with_node("node-a");
        // A NUL (which PostgreSQL's TEXT cannot hold) is stored, and
        // hashed, as U+FFFD on either backend.
        store
            .append_audit(&[AuditEvent::new("new", "sign", "ok").detail("a\0b")])
            .await
            .unwrap();
        let rows = store.audit_rows(0, 10).await.unwrap();
        let nodes: Vec<Option<&str>> = rows.iter().map(|r| r.node.as_deref()).collect();
        assert_eq!(nodes, [None, None, Some("node-a")]);
        assert_eq!(rows[2].event.detail.as_deref(), Some("a\u{fffd}b"));
        assert_eq!(store.verify_audit().await.unwrap().first_broken, None);
        // Renaming the node, or dropping it, breaks the row.
        for edit in [
            "UPDATE audit_log SET node = 'node-b' WHERE seq = 3",
            "UPDATE audit_log SET node = NULL WHERE seq = 3",
        ] {
            sqlx::query(edit).execute(store.pool()).await.unwrap();
            let r = store.verify_audit().await.unwrap();
            assert_eq!(r.first_broken.map(|b| b.0), Some(3), "{edit}");
        }
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
