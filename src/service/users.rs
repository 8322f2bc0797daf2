//! Operator views of the managed-domain users (`orgkey users ...`), read
//! from the store without the token.

use super::{ServiceError, open_store};
use crate::clock::Clock;
use crate::config::Config;
use crate::openpgp::UserKey;
use crate::store::{AuditEvent, UserRecord, UserState};
use std::sync::Arc;
use std::time::SystemTime;

/// One user with the facts `orgkey users show` prints.
#[derive(Debug, Clone)]
pub struct UserDetails {
    /// The stored row.
    pub user: UserRecord,
    /// Expiry of the current org key's newest valid certification.
    pub certified_until: Option<SystemTime>,
    /// The active org key.
    pub org_key: Option<String>,
    /// User IDs of the key.
    pub user_ids: Vec<String>,
}

/// Users in email order, `limit` at most, after `after`.
pub async fn list_users(
    cfg: &Config,
    after: &str,
    limit: i64,
    clock: Arc<dyn Clock>,
) -> Result<Vec<UserRecord>, ServiceError> {
    let store = open_store(cfg, clock).await?;
    let users = store.list_users(after, limit).await?;
    store.close().await;
    Ok(users)
}

/// One user, if known.
pub async fn user_details(
    cfg: &Config,
    email: &str,
    clock: Arc<dyn Clock>,
) -> Result<Option<UserDetails>, ServiceError> {
    let store = open_store(cfg, Arc::clone(&clock)).await?;
    let email = email.trim().to_lowercase();
    let Some(user) = store.user(&email).await? else {
        store.close().await;
        return Ok(None);
    };
    let rec = store.user_key(&user.fingerprint).await?;
    let org = store.active_org_key().await?;
    store.close().await;
    let key = rec.map(|r| UserKey::parse(r.cert.as_bytes())).transpose()?;
    let now = clock.now();
    Ok(Some(UserDetails {
        certified_until: match (&key, &org) {
            (Some(k), Some(o)) => k.certification_expiry(&user.email, &o.fingerprint, now),
            _ => None,
        },
        user_ids: key
            .map(|k| k.user_ids(now).into_iter().map(|u| u.user_id).collect())
            .unwrap_or_default(),
        org_key: org.map(|o| o.fingerprint),
        user,
    }))
}

/// Removes (stops certifying) or restores a user; false if unknown or
/// already in that state.
pub async fn set_user_state(
    cfg: &Config,
    email: &str,
    state: UserState,
    actor: &str,
    clock: Arc<dyn Clock>,
) -> Result<bool, ServiceError> {
    let store = open_store(cfg, clock).await?;
    let email = email.trim().to_lowercase();
    let op = match state {
        UserState::Removed => "user-remove",
        UserState::Active => "user-restore",
    };
    let fpr = store.user(&email).await?.map(|u| u.fingerprint);
    let mut ev = AuditEvent::new(actor, op, "ok").detail(email.clone());
    if let Some(f) = fpr {
        ev = ev.key(f);
    }
    let changed = store.set_user_state(&email, state, &ev).await?;
    store.close().await;
    Ok(changed)
}
