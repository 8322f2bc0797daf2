//! The portable logical snapshot of a store (decision 0032): every row of
//! every table as JSON lines, read in one consistent snapshot on either
//! backend and loaded into either backend. It is what a state backup of a
//! PostgreSQL store holds (SQLite's are the database file itself), and how a
//! restore moves rows between backends.
//!
//! Layout: a header line `{"format": "orgkey-logical-snapshot", "version":
//! 1}`; per table a line `{"table": NAME, "columns": [...]}` followed by one
//! JSON array of values per row; a last line `{"end": true, "rows": N}`, so
//! a cut-off file is refused. Columns are TEXT (string), BIGINT (number) or
//! BOOLEAN, each possibly null.

use super::db::{Pool, Row, Tx, on_exec};
use super::{Backend, Store, StoreError};
use serde_json::Value;
use std::io::{BufRead, Write};

/// The first line's `format`.
pub const FORMAT: &str = "orgkey-logical-snapshot";
const VERSION: u64 = 1;
/// Rows read per query while exporting (memory stays flat).
const PAGE: i64 = 1000;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Ty {
    Text,
    Int,
    Bool,
}
use Ty::{Bool, Int, Text};

/// A table: name, columns, and how many leading columns are its primary
/// key (export pages through it in key order).
struct Table {
    name: &'static str,
    columns: &'static [(&'static str, Ty)],
    key: usize,
}

/// Every table, parents before children (foreign keys), as of schema 6.
/// `audit_head` is derived from `audit_log` and not part of a snapshot.
const TABLES: &[Table] = &[
    Table {
        name: "org_keys",
        key: 1,
        columns: &[
            ("fingerprint", Text),
            ("state", Text),
            ("algorithm", Text),
            ("user_id", Text),
            ("cert", Text),
            ("primary_id", Text),
            ("signing_id", Text),
            ("encryption_id", Text),
            ("primary_created", Int),
            ("signing_created", Int),
            ("encryption_created", Int),
            ("exportable", Bool),
            ("generated_at", Int),
            ("superseded_at", Int),
        ],
    },
    Table {
        name: "api_clients",
        key: 1,
        columns: &[
            ("name", Text),
            ("client_id", Text),
            ("secret_hash", Text),
            ("scopes", Text),
            ("created_at", Int),
            ("cert_sha256", Text),
            ("cert_subject", Text),
            ("cert_issuer", Text),
            ("require_cert", Bool),
        ],
    },
    Table {
        name: "user_keys",
        key: 1,
        columns: &[
            ("fingerprint", Text),
            ("keyid", Text),
            ("cert", Text),
            ("certified_by", Text),
            ("cert_expires", Int),
            ("version", Int),
            ("created_at", Int),
            ("updated_at", Int),
        ],
    },
    Table {
        name: "users",
        key: 1,
        columns: &[
            ("email", Text),
            ("fingerprint", Text),
            ("user_id", Text),
            ("state", Text),
            ("last_activity", Int),
            ("created_at", Int),
            ("removed_at", Int),
        ],
    },
    Table {
        name: "org_certs",
        key: 1,
        columns: &[
            ("fingerprint", Text),
            ("org_key", Text),
            ("state", Text),
            ("source", Text),
            ("key_id", Text),
            ("cert", Text),
            ("chain", Text),
            ("subject", Text),
            ("not_after", Int),
            ("created_at", Int),
            ("retired_at", Int),
        ],
    },
    Table {
        name: "org_cert_requests",
        key: 1,
        columns: &[
            ("key_id", Text),
            ("org_key", Text),
            ("subject", Text),
            ("csr", Text),
            ("created_at", Int),
        ],
    },
    Table {
        name: "user_certs",
        key: 1,
        columns: &[
            ("serial", Text),
            ("org_cert", Text),
            ("state", Text),
            ("email", Text),
            ("emails", Text),
            ("key_id", Text),
            ("spki", Text),
            ("common_name", Text),
            ("source", Text),
            ("tbs", Text),
            ("cert", Text),
            ("not_before", Int),
            ("not_after", Int),
            ("created_at", Int),
            ("issued_at", Int),
            ("revoked_at", Int),
            ("reason", Text),
        ],
    },
    Table {
        name: "crls",
        key: 2,
        columns: &[
            ("org_cert", Text),
            ("number", Int),
            ("crl", Text),
            ("this_update", Int),
            ("next_update", Int),
        ],
    },
    Table {
        name: "audit_log",
        key: 1,
        columns: &[
            ("seq", Int),
            ("at", Int),
            ("actor", Text),
            ("operation", Text),
            ("outcome", Text),
            ("key_fingerprint", Text),
            ("data_digest", Text),
            ("detail", Text),
            ("prev_hash", Text),
            ("hash", Text),
            ("node", Text),
        ],
    },
];

fn column_list(t: &Table) -> String {
    t.columns
        .iter()
        .map(|(c, _)| *c)
        .collect::<Vec<_>>()
        .join(", ")
}

fn value_of(r: &Row, col: &str, ty: Ty) -> Value {
    match ty {
        Text => r
            .get::<Option<String>>(col)
            .map_or(Value::Null, Value::from),
        Int => r.get::<Option<i64>>(col).map_or(Value::Null, Value::from),
        Bool => r.get::<Option<bool>>(col).map_or(Value::Null, Value::from),
    }
}

fn io_err(context: &str) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        context: context.to_string(),
        source,
    }
}

fn bad(why: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("not a usable logical snapshot: {why}"))
}

/// Binds a JSON value as a column of type `ty` (null as a typed NULL).
macro_rules! bind_value {
    ($q:expr, $v:expr, $ty:expr) => {
        match $ty {
            Text => $q.bind($v.as_str().map(str::to_string)),
            Int => $q.bind($v.as_i64()),
            Bool => $q.bind($v.as_bool()),
        }
    };
}

impl Store {
    /// Writes every row of the store as a logical snapshot to `out`, read in
    /// one consistent snapshot while writers may keep going (PostgreSQL:
    /// a REPEATABLE READ, READ ONLY transaction; SQLite: one read
    /// transaction). Returns the number of rows.
    pub async fn write_logical_snapshot(
        &self,
        out: &mut (dyn Write + Send),
    ) -> Result<u64, StoreError> {
        let mut tx = match &self.pool {
            Pool::Sqlite(p) => Tx::Sqlite(
                p.begin()
                    .await
                    .map_err(StoreError::db("starting a snapshot"))?,
            ),
            Pool::Postgres(p) => Tx::Postgres(
                p.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    .await
                    .map_err(StoreError::db("starting a snapshot"))?,
            ),
        };
        let w = io_err("writing the logical snapshot");
        let header = serde_json::json!({ "format": FORMAT, "version": VERSION });
        writeln!(out, "{header}").map_err(w)?;
        let mut total = 0u64;
        for t in TABLES {
            let cols = column_list(t);
            let key: Vec<&str> = t.columns[..t.key].iter().map(|(c, _)| *c).collect();
            let line = serde_json::json!({
                "table": t.name,
                "columns": t.columns.iter().map(|(c, _)| *c).collect::<Vec<_>>(),
            });
            writeln!(out, "{line}").map_err(io_err("writing the logical snapshot"))?;
            let order = key.join(", ");
            let mut last: Option<Vec<Value>> = None;
            loop {
                let sql = match &last {
                    None => format!(
                        "SELECT {cols} FROM {} ORDER BY {order} LIMIT {PAGE}",
                        t.name
                    ),
                    Some(_) => {
                        let params: Vec<String> =
                            (1..=key.len()).map(|i| format!("${i}")).collect();
                        format!(
                            "SELECT {cols} FROM {} WHERE ({order}) > ({}) ORDER BY {order} LIMIT {PAGE}",
                            t.name,
                            params.join(", ")
                        )
                    }
                };
                let key_values = last.clone().unwrap_or_default();
                let rows: Vec<Row> = on_exec!(tx.exec(), |e| {
                    let mut q = sqlx::query(&sql);
                    for (v, (_, ty)) in key_values.iter().zip(t.columns) {
                        q = bind_value!(q, v, *ty);
                    }
                    q.fetch_all(e)
                        .await
                        .map(|v| v.into_iter().map(Row::from).collect::<Vec<_>>())
                })
                .map_err(StoreError::db("reading rows for the logical snapshot"))?;
                let Some(final_row) = rows.last() else { break };
                last = Some(
                    t.columns[..t.key]
                        .iter()
                        .map(|(c, ty)| value_of(final_row, c, *ty))
                        .collect(),
                );
                for r in &rows {
                    let values: Vec<Value> = t
                        .columns
                        .iter()
                        .map(|(c, ty)| value_of(r, c, *ty))
                        .collect();
                    writeln!(out, "{}", Value::Array(values))
                        .map_err(io_err("writing the logical snapshot"))?;
                    total += 1;
                }
                if (rows.len() as i64) < PAGE {
                    break;
                }
            }
        }
        writeln!(out, "{}", serde_json::json!({ "end": true, "rows": total }))
            .map_err(io_err("writing the logical snapshot"))?;
        drop(tx);
        Ok(total)
    }

    /// Loads a logical snapshot into this store in one transaction, which
    /// first deletes every row the store holds (its audit chain included:
    /// the snapshot's replaces it). Without `replace`, a store that holds
    /// users, certificates or clients is refused. A snapshot that is
    /// malformed, cut off or of another schema changes nothing.
    pub async fn load_logical_snapshot(
        &self,
        input: &mut (dyn BufRead + Send),
        replace: bool,
    ) -> Result<u64, StoreError> {
        let mut tx = self.begin_write().await?;
        if !replace && self.has_state().await? {
            return Err(StoreError::Conflict(
                "the store to load a snapshot into is not empty".into(),
            ));
        }
        for t in TABLES.iter().rev() {
            on_exec!(tx.exec(), |e| sqlx::query(&format!(
                "DELETE FROM {}",
                t.name
            ))
            .execute(e)
            .await
            .map(|_| ()))
            .map_err(StoreError::db("emptying the store"))?;
        }
        let mut lines = input.lines();
        let mut next = || -> Result<Option<Value>, StoreError> {
            match lines.next() {
                None => Ok(None),
                Some(l) => {
                    let l = l.map_err(io_err("reading the logical snapshot"))?;
                    serde_json::from_str(&l).map(Some).map_err(bad)
                }
            }
        };
        let header = next()?.ok_or_else(|| bad("empty"))?;
        if header["format"] != FORMAT {
            return Err(bad("no orgkey-logical-snapshot header"));
        }
        if header["version"] != VERSION {
            return Err(bad(format!(
                "version {} (this orgkey reads {VERSION})",
                header["version"]
            )));
        }
        let mut table: Option<(&Table, String)> = None;
        let mut total = 0u64;
        loop {
            let line = next()?.ok_or_else(|| bad("cut off (no end line)"))?;
            match line {
                Value::Array(values) => {
                    let Some((t, sql)) = &table else {
                        return Err(bad("a row before its table"));
                    };
                    if values.len() != t.columns.len() {
                        return Err(bad(format!("a {} row of the wrong width", t.name)));
                    }
                    for (v, (c, ty)) in values.iter().zip(t.columns) {
                        let fits = match (ty, v) {
                            (_, Value::Null) => true,
                            (Text, Value::String(_)) => true,
                            (Int, Value::Number(n)) => n.is_i64(),
                            (Bool, Value::Bool(_)) => true,
                            _ => false,
                        };
                        if !fits {
                            return Err(bad(format!("{}.{c} holds {v}", t.name)));
                        }
                    }
                    on_exec!(tx.exec(), |e| {
                        let mut q = sqlx::query(sql);
                        for (v, (_, ty)) in values.iter().zip(t.columns) {
                            q = bind_value!(q, v, *ty);
                        }
                        q.execute(e).await.map(|_| ())
                    })
                    .map_err(StoreError::db("loading a row of the snapshot"))?;
                    total += 1;
                }
                Value::Object(o) if o.contains_key("table") => {
                    let name = o["table"].as_str().unwrap_or_default();
                    let t = TABLES
                        .iter()
                        .find(|t| t.name == name)
                        .ok_or_else(|| bad(format!("unknown table {name:?}")))?;
                    let cols: Vec<&str> = t.columns.iter().map(|(c, _)| *c).collect();
                    if o["columns"] != serde_json::json!(cols) {
                        return Err(bad(format!(
                            "table {name} has other columns than this orgkey's"
                        )));
                    }
                    let params: Vec<String> = (1..=cols.len()).map(|i| format!("${i}")).collect();
                    let sql = format!(
                        "INSERT INTO {name} ({}) VALUES ({})",
                        cols.join(", "),
                        params.join(", ")
                    );
                    table = Some((t, sql));
                }
                Value::Object(o) if o.get("end") == Some(&Value::Bool(true)) => {
                    if o.get("rows").and_then(Value::as_u64) != Some(total) {
                        return Err(bad("the row count does not match"));
                    }
                    break;
                }
                other => return Err(bad(format!("unexpected line {other}"))),
            }
        }
        if next()?.is_some() {
            return Err(bad("lines after the end"));
        }
        if self.backend() == Backend::Postgres {
            on_exec!(tx.exec(), |e| sqlx::query(
                "UPDATE audit_head SET \
                 seq = COALESCE((SELECT MAX(seq) FROM audit_log), 0), \
                 hash = COALESCE((SELECT hash FROM audit_log ORDER BY seq DESC LIMIT 1), $1) \
                 WHERE id = 1"
            )
            .bind(hex::encode(super::audit::GENESIS))
            .execute(e)
            .await
            .map(|_| ()))
            .map_err(StoreError::db("moving the audit chain head"))?;
        }
        // The client table was replaced: nodes that keep it in memory
        // must read it again (decision 0025).
        Self::clients_changed(&mut tx).await?;
        tx.commit()
            .await
            .map_err(StoreError::db("committing the loaded snapshot"))?;
        Ok(total)
    }
}

/// Whether `head` (a file's first bytes) starts a logical snapshot.
pub fn is_logical_snapshot(head: &[u8]) -> bool {
    let text = String::from_utf8_lossy(head);
    text.trim_start().starts_with('{') && text.contains(FORMAT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::store::{AuditEvent, ClientRecord, SaveUserKey};
    use std::sync::Arc;
    use std::time::{Duration, UNIX_EPOCH};

    async fn fresh(dir: &tempfile::TempDir, name: &str) -> Store {
        let clock = Arc::new(ManualClock::new(
            UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        ));
        Store::open(&dir.path().join(name), true, clock)
            .await
            .unwrap()
            .with_node("n1")
    }

    async fn snapshot(store: &Store) -> Vec<u8> {
        let mut out = Vec::new();
        store.write_logical_snapshot(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn a_snapshot_loads_into_another_store_and_a_damaged_one_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let a = fresh(&dir, "a.db").await;
        let client = ClientRecord {
            name: "gw".into(),
            client_id: "0123456789abcdef".into(),
            secret_hash: "00".into(),
            scopes: "sign".into(),
            created_at: 5,
            cert: None,
            require_cert: true,
        };
        a.add_client(&client, &AuditEvent::new("t", "client-add", "ok"))
            .await
            .unwrap();
        a.save_user_key(
            &SaveUserKey {
                fingerprint: "F1".into(),
                keyid: "K1".into(),
                cert: "cert \"quoted\"\nwith a newline".into(),
                certified_by: None,
                cert_expires: None,
                expected_version: None,
                emails: vec![("u@example.com".into(), "<u@example.com>".into())],
                touch: true,
            },
            &AuditEvent::new("t", "certify", "ok").detail("ü\u{2028}"),
        )
        .await
        .unwrap();
        let snap = snapshot(&a).await;
        assert!(is_logical_snapshot(&snap));

        let b = fresh(&dir, "b.db").await;
        b.append_audit(&[AuditEvent::new("t", "init", "ok")])
            .await
            .unwrap();
        assert_eq!(
            b.load_logical_snapshot(&mut snap.as_slice(), false)
                .await
                .unwrap(),
            1 + 1 + 1 + 2 // a client, a user key, its user, two audit rows
        );
        assert_eq!(
            b.client_by_id("0123456789abcdef").await.unwrap(),
            Some(client)
        );
        assert_eq!(
            b.user_key("F1").await.unwrap(),
            a.user_key("F1").await.unwrap()
        );
        assert_eq!(b.verify_audit().await.unwrap().rows, 2);
        // The copy's snapshot is the original's, byte for byte.
        assert_eq!(snapshot(&b).await, snap);

        // Cut off, edited, of another format or schema: refused, b unchanged.
        let text = String::from_utf8(snap.clone()).unwrap();
        let cut = text.lines().take(4).collect::<Vec<_>>().join("\n");
        let wider = text.replace("\"require_cert\"]", "\"require_cert\",\"extra\"]");
        let recount = text.replace("\"rows\":5", "\"rows\":6");
        for (bad, why) in [
            (cut.as_str(), "cut off"),
            (wider.as_str(), "other columns"),
            (recount.as_str(), "row count"),
            ("{\"format\":\"something else\"}\n", "header"),
            ("", "empty"),
        ] {
            let e = b
                .load_logical_snapshot(&mut bad.as_bytes(), true)
                .await
                .unwrap_err();
            assert!(e.to_string().contains(why), "{why}: {e}");
            assert_eq!(snapshot(&b).await, snap, "{why}: the store changed");
        }
        // A store with state is not overwritten unless asked to.
        let e = b
            .load_logical_snapshot(&mut snap.as_slice(), false)
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::Conflict(_)), "{e}");
    }
}
