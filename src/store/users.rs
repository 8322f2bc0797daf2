//! Users of the managed domains: their keys (as served, with current org
//! certifications), the emails bound to them, activity and removal, and the
//! batched queries maintenance streams through.

use super::db::{Row, on_exec, query, scalar};
use super::{AuditEvent, Store, StoreError};
use crate::clock::unix_secs;
use sqlx::QueryBuilder;

/// A stored user key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserKeyRecord {
    /// Upper-case hex fingerprint.
    pub fingerprint: String,
    /// Upper-case hex key ID (for HKP lookups by key ID).
    pub keyid: String,
    /// Armored certificate as served.
    pub cert: String,
    /// Org key that made the newest certifications.
    pub certified_by: Option<String>,
    /// Earliest expiry (Unix seconds) among those certifications.
    pub cert_expires: Option<i64>,
    /// Bumped on every write; writes name the version they read.
    pub version: i64,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub updated_at: i64,
}

/// Whether orgkey still certifies an email.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserState {
    /// Certified and renewed while active.
    Active,
    /// An administrator stopped certifying it.
    Removed,
}

impl UserState {
    /// Name as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            UserState::Active => "active",
            UserState::Removed => "removed",
        }
    }

    fn parse(s: &str) -> Result<Self, StoreError> {
        match s {
            "active" => Ok(UserState::Active),
            "removed" => Ok(UserState::Removed),
            other => Err(StoreError::Corrupt(format!("unknown user state {other:?}"))),
        }
    }
}

/// A managed email address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    /// Normalized email.
    pub email: String,
    /// The key it is bound to.
    pub fingerprint: String,
    /// The user ID on that key.
    pub user_id: String,
    /// Active or removed.
    pub state: UserState,
    /// Unix seconds.
    pub last_activity: i64,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds, when removed.
    pub removed_at: Option<i64>,
}

/// A user key to write after certification.
#[derive(Debug, Clone)]
pub struct SaveUserKey {
    /// Fingerprint.
    pub fingerprint: String,
    /// Key ID.
    pub keyid: String,
    /// Armored certificate.
    pub cert: String,
    /// Org key that certified it now.
    pub certified_by: Option<String>,
    /// Earliest expiry of the certifications just made.
    pub cert_expires: Option<i64>,
    /// The version read before certifying (`None`: the key was not stored).
    pub expected_version: Option<i64>,
    /// Emails certified now, with their user IDs; bound to this key.
    pub emails: Vec<(String, String)>,
    /// Count this write as activity of those emails.
    pub touch: bool,
}

/// A key maintenance should renew, with its active emails.
#[derive(Debug, Clone)]
pub struct DueUserKey {
    /// The stored key.
    pub key: UserKeyRecord,
    /// Its active, recently active emails.
    pub emails: Vec<String>,
}

/// What the maintenance selection is based on.
#[derive(Debug, Clone, Copy)]
pub struct DueQuery<'a> {
    /// Keyset pagination: fingerprints after this one.
    pub after: &'a str,
    /// Batch size.
    pub limit: i64,
    /// Certifications expiring at or before this (Unix seconds) are due.
    pub horizon: i64,
    /// Emails active at or after this (Unix seconds) count.
    pub active_since: i64,
    /// The active org key: keys certified by another one are due.
    pub org: &'a str,
}

const KEY_COLUMNS: &str = "k.fingerprint, k.keyid, k.cert, k.certified_by, k.cert_expires, k.version, k.created_at, k.updated_at";
/// Keys due for renewal ($1 after, $2 horizon, $3 active org key, $4 active since).
const DUE_WHERE: &str = "k.fingerprint > $1 \
     AND (k.cert_expires IS NULL OR k.cert_expires <= $2 OR k.certified_by IS NULL OR k.certified_by <> $3) \
     AND EXISTS (SELECT 1 FROM users u WHERE u.fingerprint = k.fingerprint AND u.state = 'active' \
                 AND u.last_activity >= $4)";
const USER_COLUMNS: &str =
    "email, fingerprint, user_id, state, last_activity, created_at, removed_at";

fn key_from_row(r: &Row) -> UserKeyRecord {
    UserKeyRecord {
        fingerprint: r.get("fingerprint"),
        keyid: r.get("keyid"),
        cert: r.get("cert"),
        certified_by: r.get("certified_by"),
        cert_expires: r.get("cert_expires"),
        version: r.get("version"),
        created_at: r.get("created_at"),
        updated_at: r.get("updated_at"),
    }
}

fn user_from_row(r: &Row) -> Result<UserRecord, StoreError> {
    Ok(UserRecord {
        email: r.get("email"),
        fingerprint: r.get("fingerprint"),
        user_id: r.get("user_id"),
        state: UserState::parse(&r.get::<String>("state"))?,
        last_activity: r.get("last_activity"),
        created_at: r.get("created_at"),
        removed_at: r.get("removed_at"),
    })
}

impl Store {
    fn now_i64(&self) -> i64 {
        unix_secs(self.clock.now()) as i64
    }

    /// A user key by fingerprint.
    pub async fn user_key(&self, fingerprint: &str) -> Result<Option<UserKeyRecord>, StoreError> {
        let row = query!(
            self.pool.exec(),
            fetch_optional,
            &format!("SELECT {KEY_COLUMNS} FROM user_keys k WHERE k.fingerprint = $1"),
            fingerprint
        )
        .map_err(StoreError::db("reading a user key"))?;
        Ok(row.as_ref().map(key_from_row))
    }

    /// User keys with an active email, by fingerprint or key ID (HKP).
    pub async fn published_user_keys(
        &self,
        fingerprint: Option<&str>,
        keyid: Option<&str>,
    ) -> Result<Vec<UserKeyRecord>, StoreError> {
        let rows = query!(
            self.pool.exec(),
            fetch_all,
            &format!(
            "SELECT {KEY_COLUMNS} FROM user_keys k WHERE (k.fingerprint = $1 OR k.keyid = $2) \
             AND EXISTS (SELECT 1 FROM users u WHERE u.fingerprint = k.fingerprint AND u.state = 'active') \
             ORDER BY k.fingerprint"
        ),
            fingerprint,
            keyid
        )
        .map_err(StoreError::db("looking up user keys"))?;
        Ok(rows.iter().map(key_from_row).collect())
    }

    /// A managed email.
    pub async fn user(&self, email: &str) -> Result<Option<UserRecord>, StoreError> {
        let row = query!(
            self.pool.exec(),
            fetch_optional,
            &format!("SELECT {USER_COLUMNS} FROM users WHERE email = $1"),
            email
        )
        .map_err(StoreError::db("reading a user"))?;
        row.as_ref().map(user_from_row).transpose()
    }

    /// Users by email, after `after` (keyset pagination), at most `limit`.
    pub async fn list_users(&self, after: &str, limit: i64) -> Result<Vec<UserRecord>, StoreError> {
        let rows = query!(
            self.pool.exec(),
            fetch_all,
            &format!("SELECT {USER_COLUMNS} FROM users WHERE email > $1 ORDER BY email LIMIT $2"),
            after,
            limit
        )
        .map_err(StoreError::db("listing users"))?;
        rows.iter().map(user_from_row).collect()
    }

    /// Number of active and removed users.
    pub async fn user_counts(&self) -> Result<(i64, i64), StoreError> {
        let row = query!(
            self.pool.exec(),
            fetch_one,
            "SELECT COALESCE(SUM(CASE WHEN state = 'active' THEN 1 ELSE 0 END), 0) AS active, \
             COALESCE(SUM(CASE WHEN state = 'removed' THEN 1 ELSE 0 END), 0) AS removed FROM users"
        )
        .map_err(StoreError::db("counting users"))?;
        Ok((row.get("active"), row.get("removed")))
    }

    /// Writes a certified user key, binds its emails and appends the audit
    /// row, in one transaction. A key changed since it was read (version
    /// mismatch) is a [`StoreError::Conflict`]; the caller re-reads and
    /// retries.
    pub async fn save_user_key(
        &self,
        s: &SaveUserKey,
        audit: &AuditEvent,
    ) -> Result<(), StoreError> {
        let now = self.now_i64();
        let mut tx = self.begin_write().await?;
        let res = match s.expected_version {
            None => query!(
                tx.exec(),
                execute,
                "INSERT INTO user_keys (fingerprint, keyid, cert, certified_by, cert_expires, version, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, 1, $6, $6) ON CONFLICT (fingerprint) DO NOTHING",
                &s.fingerprint,
                &s.keyid,
                &s.cert,
                &s.certified_by,
                s.cert_expires,
                now
            ),
            Some(v) => query!(
                tx.exec(),
                execute,
                "UPDATE user_keys SET cert = $1, certified_by = $2, cert_expires = $3, version = version + 1, \
                 updated_at = $4 WHERE fingerprint = $5 AND version = $6",
                &s.cert,
                &s.certified_by,
                s.cert_expires,
                now,
                &s.fingerprint,
                v
            ),
        }
        .map_err(StoreError::db("writing a user key"))?;
        if res != 1 {
            return Err(StoreError::Conflict(format!(
                "user key {} changed concurrently",
                s.fingerprint
            )));
        }
        for (email, user_id) in &s.emails {
            query!(
                tx.exec(),
                execute,
                "INSERT INTO users (email, fingerprint, user_id, state, last_activity, created_at) \
                 VALUES ($1, $2, $3, 'active', $4, $4) \
                 ON CONFLICT (email) DO UPDATE SET fingerprint = excluded.fingerprint, \
                 user_id = excluded.user_id, \
                 last_activity = CASE WHEN $5 THEN excluded.last_activity ELSE users.last_activity END \
                 WHERE users.state = 'active'",
                email,
                &s.fingerprint,
                user_id,
                now,
                s.touch
            )
            .map_err(StoreError::db("binding a user email"))?;
        }
        self.append_audit_in(&mut tx, std::slice::from_ref(audit))
            .await?;
        crate::failpoint("certify-before-commit");
        tx.commit()
            .await
            .map_err(StoreError::db("committing a user key"))
    }

    /// Bulk load of user keys (directory migration, benchmarks): one
    /// transaction, one audit row for the whole batch, existing keys and
    /// emails left untouched. Returns how many keys were new.
    pub async fn import_user_keys(
        &self,
        keys: &[SaveUserKey],
        audit: &AuditEvent,
    ) -> Result<u64, StoreError> {
        let now = self.now_i64();
        let mut tx = self.begin_write().await?;
        let mut added = 0;
        for s in keys {
            added += query!(
                tx.exec(),
                execute,
                "INSERT INTO user_keys (fingerprint, keyid, cert, certified_by, cert_expires, version, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, 1, $6, $6) ON CONFLICT (fingerprint) DO NOTHING",
                &s.fingerprint,
                &s.keyid,
                &s.cert,
                &s.certified_by,
                s.cert_expires,
                now
            )
            .map_err(StoreError::db("importing a user key"))?;
            for (email, user_id) in &s.emails {
                query!(
                    tx.exec(),
                    execute,
                    "INSERT INTO users (email, fingerprint, user_id, state, last_activity, created_at) \
                     VALUES ($1, $2, $3, 'active', $4, $4) ON CONFLICT (email) DO NOTHING",
                    email,
                    &s.fingerprint,
                    user_id,
                    now
                )
                .map_err(StoreError::db("importing a user email"))?;
            }
        }
        self.commit_audited(tx, audit, "committing imported user keys")
            .await?;
        Ok(added)
    }

    /// Marks an email active or removed, with its audit row; false if the
    /// email is unknown or already in that state.
    pub async fn set_user_state(
        &self,
        email: &str,
        state: UserState,
        audit: &AuditEvent,
    ) -> Result<bool, StoreError> {
        let now = self.now_i64();
        let mut tx = self.begin_write().await?;
        let res = query!(
            tx.exec(),
            execute,
            "UPDATE users SET state = $1, removed_at = $2, \
             last_activity = CASE WHEN $1 = 'active' THEN $3 ELSE last_activity END \
             WHERE email = $4 AND state <> $1",
            state.as_str(),
            match state {
                UserState::Removed => Some(now),
                UserState::Active => None,
            },
            now,
            email
        )
        .map_err(StoreError::db("changing a user's state"))?;
        if res == 0 {
            return Ok(false);
        }
        self.commit_audited(tx, audit, "committing a user's state")
            .await?;
        Ok(true)
    }

    /// Records activity of an active email; false if there is none.
    pub async fn touch_user(&self, email: &str) -> Result<bool, StoreError> {
        let res = query!(
            self.pool.exec(),
            execute,
            "UPDATE users SET last_activity = $1 WHERE email = $2 AND state = 'active' AND last_activity < $1",
            self.now_i64(),
            email
        )
        .map_err(StoreError::db("recording user activity"))?;
        if res > 0 {
            return Ok(true);
        }
        Ok(matches!(self.user(email).await?, Some(u) if u.state == UserState::Active))
    }

    /// How many keys [`Store::due_user_keys`] would return in all.
    pub async fn count_due_user_keys(&self, q: DueQuery<'_>) -> Result<i64, StoreError> {
        scalar!(
            self.pool.exec(),
            fetch_one,
            &format!("SELECT COUNT(*) FROM user_keys k WHERE {DUE_WHERE}"),
            q.after,
            q.horizon,
            q.org,
            q.active_since
        )
        .map_err(StoreError::db("counting keys due for renewal"))
    }

    /// The next batch of keys that maintenance should renew: keys with an
    /// email that is active and was active since `q.active_since`, whose
    /// certifications expire by `q.horizon` or were made by another org key.
    pub async fn due_user_keys(&self, q: DueQuery<'_>) -> Result<Vec<DueUserKey>, StoreError> {
        let rows = query!(
            self.pool.exec(),
            fetch_all,
            &format!(
            "SELECT {KEY_COLUMNS} FROM user_keys k WHERE {DUE_WHERE} ORDER BY k.fingerprint LIMIT $5"
        ),
            q.after,
            q.horizon,
            q.org,
            q.active_since,
            q.limit
        )
        .map_err(StoreError::db("selecting keys due for renewal"))?;
        let keys: Vec<UserKeyRecord> = rows.iter().map(key_from_row).collect();
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let email_rows = on_exec!(self.pool.exec(), |e| {
            let mut qb = QueryBuilder::new(
                "SELECT email, fingerprint FROM users WHERE state = 'active' AND last_activity >= ",
            );
            qb.push_bind(q.active_since);
            qb.push(" AND fingerprint IN (");
            let mut sep = qb.separated(", ");
            for k in &keys {
                sep.push_bind(&k.fingerprint);
            }
            sep.push_unseparated(") ORDER BY email");
            qb.build()
                .fetch_all(e)
                .await
                .map(|v| v.into_iter().map(Row::from).collect::<Vec<_>>())
        })
        .map_err(StoreError::db("reading emails of due keys"))?;
        let mut out: Vec<DueUserKey> = keys
            .into_iter()
            .map(|key| DueUserKey {
                key,
                emails: Vec::new(),
            })
            .collect();
        for r in email_rows {
            let fpr: String = r.get("fingerprint");
            if let Some(d) = out.iter_mut().find(|d| d.key.fingerprint == fpr) {
                d.emails.push(r.get("email"));
            }
        }
        Ok(out)
    }

    /// Active emails inactive since before `active_since` (maintenance skips them).
    pub async fn count_inactive_users(&self, active_since: i64) -> Result<i64, StoreError> {
        scalar!(
            self.pool.exec(),
            fetch_one,
            "SELECT COUNT(*) FROM users WHERE state = 'active' AND last_activity < $1",
            active_since
        )
        .map_err(StoreError::db("counting inactive users"))
    }

    /// Writes renewed keys of one maintenance batch in one transaction; a
    /// key changed since it was read is skipped (the change came with its own
    /// certification). Returns how many were written.
    pub async fn save_renewed_keys(&self, keys: &[SaveUserKey]) -> Result<usize, StoreError> {
        let now = self.now_i64();
        let mut tx = self.begin_write().await?;
        let mut written = 0;
        for s in keys {
            let res = query!(
                tx.exec(),
                execute,
                "UPDATE user_keys SET cert = $1, certified_by = $2, cert_expires = $3, version = version + 1, \
                 updated_at = $4 WHERE fingerprint = $5 AND version = $6",
                &s.cert,
                &s.certified_by,
                s.cert_expires,
                now,
                &s.fingerprint,
                s.expected_version
            )
            .map_err(StoreError::db("writing a renewed user key"))?;
            written += res as usize;
        }
        tx.commit()
            .await
            .map_err(StoreError::db("committing renewed user keys"))?;
        Ok(written)
    }

    /// Fingerprints of every org key ever generated (active first).
    pub async fn org_key_fingerprints(&self) -> Result<Vec<String>, StoreError> {
        scalar!(
            self.pool.exec(),
            fetch_all,
            "SELECT fingerprint FROM org_keys ORDER BY CASE state WHEN 'active' THEN 0 ELSE 1 END, generated_at DESC"
        )
        .map_err(StoreError::db("reading org key fingerprints"))
    }

    /// Replaces the stored certificate of the active org key (renewal: same
    /// key, new self-signatures), with its audit row.
    pub async fn update_org_key_cert(
        &self,
        fingerprint: &str,
        cert: &str,
        audit: &AuditEvent,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let res = query!(
            tx.exec(),
            execute,
            "UPDATE org_keys SET cert = $1 WHERE fingerprint = $2 AND state = 'active'",
            cert,
            fingerprint
        )
        .map_err(StoreError::db("updating the org key certificate"))?;
        if res != 1 {
            return Err(StoreError::Conflict(format!(
                "org key {fingerprint} is no longer the active org key"
            )));
        }
        self.commit_audited(tx, audit, "committing the org key certificate")
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use std::sync::Arc;
    use std::time::{Duration, UNIX_EPOCH};

    const T0: u64 = 1_800_000_000;

    async fn fresh() -> (tempfile::TempDir, Store, Arc<ManualClock>) {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(UNIX_EPOCH + Duration::from_secs(T0)));
        let store = Store::open(&dir.path().join("s.db"), true, clock.clone())
            .await
            .unwrap();
        (dir, store, clock)
    }

    fn save(fpr: &str, emails: &[&str], version: Option<i64>, expires: i64) -> SaveUserKey {
        SaveUserKey {
            fingerprint: fpr.into(),
            keyid: fpr[fpr.len() - 4..].into(),
            cert: format!("cert of {fpr}"),
            certified_by: Some("ORG1".into()),
            cert_expires: Some(expires),
            expected_version: version,
            emails: emails
                .iter()
                .map(|e| (e.to_string(), format!("<{e}>")))
                .collect(),
            touch: true,
        }
    }

    fn ev() -> AuditEvent {
        AuditEvent::new("gw", "certify", "ok")
    }

    fn due<'a>(after: &'a str, horizon: u64, active_since: u64, org: &'a str) -> DueQuery<'a> {
        DueQuery {
            after,
            limit: 2,
            horizon: horizon as i64,
            active_since: active_since as i64,
            org,
        }
    }

    #[tokio::test]
    async fn writes_are_version_checked_and_audited_together() {
        let (_d, store, _c) = fresh().await;
        store
            .save_user_key(&save("AAAA0001", &["a@example.com"], None, 10), &ev())
            .await
            .unwrap();
        // A second "new" insert of the same key lost a race: conflict, no audit row.
        let e = store
            .save_user_key(&save("AAAA0001", &["a@example.com"], None, 10), &ev())
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::Conflict(_)), "{e}");
        let stale = store
            .save_user_key(&save("AAAA0001", &["a@example.com"], Some(7), 10), &ev())
            .await
            .unwrap_err();
        assert!(matches!(stale, StoreError::Conflict(_)));
        store
            .save_user_key(&save("AAAA0001", &["a@example.com"], Some(1), 20), &ev())
            .await
            .unwrap();
        let k = store.user_key("AAAA0001").await.unwrap().unwrap();
        assert_eq!((k.version, k.cert_expires), (2, Some(20)));
        assert_eq!(store.verify_audit().await.unwrap().rows, 2);
    }

    #[tokio::test]
    async fn emails_move_to_a_new_key_but_removed_ones_stay_removed() {
        let (_d, store, _c) = fresh().await;
        store
            .save_user_key(&save("AAAA0001", &["a@example.com"], None, 10), &ev())
            .await
            .unwrap();
        store
            .save_user_key(&save("BBBB0002", &["a@example.com"], None, 10), &ev())
            .await
            .unwrap();
        assert_eq!(
            store
                .user("a@example.com")
                .await
                .unwrap()
                .unwrap()
                .fingerprint,
            "BBBB0002"
        );
        // The old key has no active email left: not published any more.
        assert!(
            store
                .published_user_keys(Some("AAAA0001"), None)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            store
                .published_user_keys(None, Some("0002"))
                .await
                .unwrap()
                .len(),
            1
        );
        assert!(
            store
                .set_user_state("a@example.com", UserState::Removed, &ev())
                .await
                .unwrap()
        );
        assert!(
            !store
                .set_user_state("a@example.com", UserState::Removed, &ev())
                .await
                .unwrap(),
            "already removed"
        );
        store
            .save_user_key(&save("CCCC0003", &["a@example.com"], None, 10), &ev())
            .await
            .unwrap();
        let u = store.user("a@example.com").await.unwrap().unwrap();
        assert_eq!(
            (u.state, u.fingerprint.as_str()),
            (UserState::Removed, "BBBB0002")
        );
        assert!(!store.touch_user("a@example.com").await.unwrap());
        assert_eq!(store.user_counts().await.unwrap(), (0, 1));
    }

    #[tokio::test]
    async fn due_keys_are_paged_and_skip_inactive_and_current_ones() {
        let (_d, store, clock) = fresh().await;
        // Five keys: expiring at T0+1..5 days; the fifth is certified by
        // another org key; the fourth's user goes quiet.
        for i in 1..=5u64 {
            let mut s = save(
                &format!("KEY0000{i}"),
                &[&format!("u{i}@example.com")],
                None,
                (T0 + i * 86_400) as i64,
            );
            if i == 5 {
                s.certified_by = Some("ORG0".into());
            }
            store.save_user_key(&s, &ev()).await.unwrap();
        }
        clock.advance(Duration::from_secs(3600));
        for i in [1, 2, 3, 5] {
            assert!(
                store
                    .touch_user(&format!("u{i}@example.com"))
                    .await
                    .unwrap()
            );
        }
        let active_since = T0 + 60;
        // Horizon T0+3.5d: keys 1-3 expire before it; 4 is inactive; 5 has the old org.
        let horizon = T0 + 3 * 86_400 + 43_200;
        assert_eq!(
            store
                .count_due_user_keys(due("", horizon, active_since, "ORG1"))
                .await
                .unwrap(),
            4
        );
        let mut seen = Vec::new();
        let mut after = String::new();
        loop {
            let page = store
                .due_user_keys(due(&after, horizon, active_since, "ORG1"))
                .await
                .unwrap();
            let Some(last) = page.last() else { break };
            assert!(page.len() <= 2);
            after = last.key.fingerprint.clone();
            for d in page {
                assert_eq!(d.emails.len(), 1);
                seen.push(d.key.fingerprint);
            }
        }
        assert_eq!(seen, ["KEY00001", "KEY00002", "KEY00003", "KEY00005"]);
        assert_eq!(
            store
                .count_inactive_users(active_since as i64)
                .await
                .unwrap(),
            1
        );
        // A renewal written with a stale version is skipped, not applied.
        let mut renewed = save("KEY00001", &[], Some(1), (T0 + 20 * 86_400) as i64);
        let stale = save("KEY00002", &[], Some(9), (T0 + 20 * 86_400) as i64);
        renewed.touch = false;
        assert_eq!(store.save_renewed_keys(&[renewed, stale]).await.unwrap(), 1);
        assert_eq!(
            store
                .user_key("KEY00001")
                .await
                .unwrap()
                .unwrap()
                .cert_expires,
            Some((T0 + 20 * 86_400) as i64)
        );
        assert_eq!(
            store
                .count_due_user_keys(due("", horizon, active_since, "ORG1"))
                .await
                .unwrap(),
            3
        );
    }
}
