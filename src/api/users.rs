//! Users of the managed domains: certification of their keys, lookup,
//! removal and activity.

use super::auth::{Client, Credentials, Scope, authenticate};
use super::shared::{
    AppState, PathParam, internal, normalize_email, path_param, read_body, reserved_emails,
    rfc3339, signer_error, signing_key, within_deadline,
};
use super::{ApiError, ApiState};
use crate::config::managed_domain_of;
use crate::openpgp::{CertifyOutcome, CertifyRequest, PgpError, UserKey, certify as certify_key};
use crate::store::{AuditEvent, SaveUserKey, StoreError, UserRecord, UserState};
use axum::Json;
use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Largest certificate accepted by `/v1/certify`.
pub(super) const MAX_CERT_BODY: usize = 1024 * 1024;

/// Attempts when a concurrent write to the same key wins the race.
const SAVE_ATTEMPTS: usize = 3;

fn pgp_error(st: &ApiState, e: PgpError, client: &str) -> ApiError {
    match e {
        PgpError::Invalid(m) => ApiError::new(StatusCode::BAD_REQUEST, "bad_certificate", m),
        PgpError::Unacceptable(m) => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "certificate_refused", m)
        }
        PgpError::OrgKeyExpired => ApiError::new(
            StatusCode::CONFLICT,
            "org_key_expired",
            "the org key has expired; run maintenance to renew it",
        ),
        PgpError::Signer(e) => {
            tracing::error!(error = %e, client, "token refused a certification");
            signer_error(st, &e)
        }
        e @ (PgpError::Mismatch(_) | PgpError::Sequoia { .. }) => {
            tracing::error!(error = %e, client, "certification failed");
            ApiError::internal()
        }
    }
}

fn store_err(what: &'static str) -> impl FnOnce(StoreError) -> ApiError {
    internal(what)
}

/// `POST /v1/certify`: certify the managed user IDs of a user key.
pub(super) async fn certify(
    axum::extract::State(st): AppState,
    creds: Credentials,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let client = authenticate(&st, &creds, Some(Scope::Certify)).await?;
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > MAX_CERT_BODY as u64
    {
        return Err(ApiError::too_large(MAX_CERT_BODY as u64));
    }
    let bytes = read_body(&st, &client.name, body, MAX_CERT_BODY).await?;
    if bytes.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_certificate",
            "empty body: send the user's OpenPGP certificate (armored or binary)",
        ));
    }
    let key = signing_key(&st)?;
    let submitted = tokio::task::spawn_blocking(move || UserKey::parse(&bytes))
        .await
        .map_err(internal("parsing task failed"))?
        .map_err(|e| pgp_error(&st, e, &client.name))?;

    for _ in 0..SAVE_ATTEMPTS {
        let fpr = submitted.fingerprint();
        let stored = st
            .store
            .user_key(&fpr)
            .await
            .map_err(store_err("reading a user key failed"))?;
        let merged = match &stored {
            Some(rec) => UserKey::parse(rec.cert.as_bytes())
                .and_then(|old| old.merge(submitted.clone()))
                .map_err(internal("stored user key is unreadable"))?,
            None => submitted.clone(),
        };
        let now = st.now();
        let selection = selection(&st, &merged, now).await?;
        let org_fprs = st
            .store
            .org_key_fingerprints()
            .await
            .map_err(store_err("reading org keys failed"))?;
        let reserved = reserved_emails(&st).await?;
        let k = Arc::clone(&key);
        let validity = st.users.certification_validity;
        let task = tokio::task::spawn_blocking(move || {
            let select = |email: &str| match selection.get(email) {
                Some(None) => Ok(()),
                Some(Some(reason)) => Err(reason.clone()),
                None => Err("not in a managed domain".to_string()),
            };
            certify_key(
                &k.org,
                k.certifier.as_ref(),
                merged,
                &CertifyRequest {
                    now,
                    validity,
                    select: &select,
                    reserved: reserved.as_map(),
                    org_fingerprints: &org_fprs,
                },
            )
        });
        let outcome = within_deadline(&st, "certifying", task)
            .await?
            .map_err(|e| pgp_error(&st, e, &client.name))?;
        if outcome.certified.is_empty() {
            return Err(no_managed_user_id(&outcome));
        }
        if !outcome.refused.is_empty() {
            tracing::info!(
                client = %client.name,
                key = %outcome.key.fingerprint(),
                refused = outcome.refused.len(),
                "some user IDs were not certified"
            );
        }
        crate::failpoint("certify-after-sign");
        match save(
            &st,
            &client,
            &key.org.fingerprint(),
            &outcome,
            stored.map(|r| r.version),
        )
        .await
        {
            Ok(()) => {
                let armored = outcome
                    .key
                    .armored()
                    .map_err(internal("armoring a user key failed"))?;
                return Ok(
                    ([(header::CONTENT_TYPE, "application/pgp-keys")], armored).into_response()
                );
            }
            Err(StoreError::Conflict(m)) => {
                tracing::info!(client = %client.name, "{m}; certifying again");
            }
            Err(e) => {
                tracing::error!(error = %e, client = %client.name, "storing a certification failed; withheld");
                return Err(ApiError::from_store(&e));
            }
        }
    }
    Err(ApiError::new(
        StatusCode::CONFLICT,
        "concurrent_update",
        "the key was changed concurrently too often; try again",
    ))
}

/// For every email on the key: `None` = certify, `Some(reason)` = do not.
/// Emails outside the managed domains are absent. The organization's own
/// addresses (org keys, org cert) are refused by `certify` itself.
async fn selection(
    st: &ApiState,
    key: &UserKey,
    now: SystemTime,
) -> Result<HashMap<String, Option<String>>, ApiError> {
    let mut out = HashMap::new();
    for info in key.user_ids(now) {
        let Some(email) = info.email else { continue };
        if managed_domain_of(&st.users.domains, &email).is_none() {
            continue;
        }
        let user = st
            .store
            .user(&email)
            .await
            .map_err(store_err("reading a user failed"))?;
        let verdict = match user {
            Some(u) if u.state == UserState::Removed => Some(
                "the user was removed by an administrator (orgkey users restore to certify again)"
                    .to_string(),
            ),
            _ => None,
        };
        out.insert(email, verdict);
    }
    Ok(out)
}

fn no_managed_user_id(outcome: &CertifyOutcome) -> ApiError {
    let mut msg = String::from("no user ID of this key can be certified");
    if outcome.refused.is_empty() {
        msg.push_str(": none has an email address in a managed domain");
    } else {
        let reasons: Vec<String> = outcome
            .refused
            .iter()
            .map(|r| format!("{:?}: {}", r.user_id, r.reason))
            .collect();
        msg.push_str(": ");
        msg.push_str(&reasons.join("; "));
    }
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "no_managed_user_id", msg)
}

async fn save(
    st: &ApiState,
    client: &Client,
    org_fpr: &str,
    outcome: &CertifyOutcome,
    expected_version: Option<i64>,
) -> Result<(), StoreError> {
    let cert = outcome
        .key
        .armored()
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let earliest = outcome.certified.iter().map(|c| c.expires).min();
    let save = SaveUserKey {
        fingerprint: outcome.key.fingerprint(),
        keyid: outcome.key.keyid(),
        cert,
        certified_by: Some(org_fpr.to_string()),
        cert_expires: earliest.map(|t| crate::clock::unix_secs(t) as i64),
        expected_version,
        emails: outcome
            .certified
            .iter()
            .map(|c| (c.email.clone(), c.user_id.clone()))
            .collect(),
        touch: true,
    };
    let emails: Vec<&str> = outcome.certified.iter().map(|c| c.email.as_str()).collect();
    let mut detail = format!(
        "certified {} until {} by org key {org_fpr}",
        emails.join(", "),
        earliest.map(rfc3339).unwrap_or_default()
    );
    if outcome.withdrawn > 0 {
        detail.push_str(&format!(
            "; withdrew {} org certification(s) from user IDs that must not carry one",
            outcome.withdrawn
        ));
    }
    let event = AuditEvent::new(&client.name, "certify", "ok")
        .key(outcome.key.fingerprint())
        .detail(detail);
    st.store.save_user_key(&save, &event).await
}

fn secs_to_rfc3339(s: i64) -> String {
    rfc3339(UNIX_EPOCH + Duration::from_secs(s.max(0) as u64))
}

async fn known_user(st: &ApiState, raw: &str) -> Result<UserRecord, ApiError> {
    let email = normalize_email(raw)
        .ok_or_else(|| ApiError::bad_request(format!("{raw:?} is not an email address")))?;
    st.store
        .user(&email)
        .await
        .map_err(store_err("reading a user failed"))?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "unknown_user", "no such user"))
}

/// `GET /v1/users/{email}`.
pub(super) async fn show(
    axum::extract::State(st): AppState,
    creds: Credentials,
    email: PathParam,
) -> Result<Json<serde_json::Value>, ApiError> {
    let client = authenticate(&st, &creds, None).await?;
    if !client.scopes.contains(&Scope::Certify) && !client.scopes.contains(&Scope::Admin) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this client lacks the certify or admin scope",
        ));
    }
    let email = path_param(email)?;
    let mut user = known_user(&st, &email).await?;
    if client.scopes.contains(&Scope::Certify) && user.state == UserState::Active {
        st.store
            .touch_user(&user.email)
            .await
            .map_err(store_err("recording activity failed"))?;
        user = known_user(&st, &user.email).await?;
    }
    let rec = st
        .store
        .user_key(&user.fingerprint)
        .await
        .map_err(store_err("reading a user key failed"))?
        .ok_or_else(|| internal("user row without its key")("missing user_keys row"))?;
    let key =
        UserKey::parse(rec.cert.as_bytes()).map_err(internal("stored user key is unreadable"))?;
    let org = st
        .store
        .active_org_key()
        .await
        .map_err(store_err("reading the org key failed"))?;
    let now = st.clock.now();
    let current = org
        .as_ref()
        .and_then(|o| key.certification_expiry(&user.email, &o.fingerprint, now));
    let mut previous = None;
    for fpr in st
        .store
        .org_key_fingerprints()
        .await
        .map_err(store_err("reading org keys failed"))?
    {
        if org.as_ref().is_some_and(|o| o.fingerprint == fpr) {
            continue;
        }
        if let Some(e) = key.certification_expiry(&user.email, &fpr, now) {
            previous = Some((fpr, e));
            break;
        }
    }
    let status = match (user.state, current, &previous) {
        (UserState::Removed, Some(_), _) => "removed (certification still valid until it expires)",
        (UserState::Removed, None, _) => "removed",
        (UserState::Active, Some(_), _) => "certified",
        (UserState::Active, None, Some(_)) => "unverified",
        (UserState::Active, None, None) => "uncertified",
    };
    let user_ids: Vec<serde_json::Value> = key
        .user_ids(now)
        .into_iter()
        .map(
            |u| serde_json::json!({ "user_id": u.user_id, "email": u.email, "problem": u.problem }),
        )
        .collect();
    Ok(Json(serde_json::json!({
        "email": user.email,
        "state": user.state.as_str(),
        "fingerprint": user.fingerprint,
        "user_id": user.user_id,
        "user_ids": user_ids,
        "certification": {
            "status": status,
            "org_key": org.as_ref().map(|o| o.fingerprint.clone()),
            "expires": current.map(rfc3339),
            "previous_org_key": previous.as_ref().map(|(f, _)| f.clone()),
            "previous_expires": previous.as_ref().map(|(_, e)| rfc3339(*e)),
        },
        "last_activity": secs_to_rfc3339(user.last_activity),
        "created": secs_to_rfc3339(user.created_at),
        "removed": user.removed_at.map(secs_to_rfc3339),
    })))
}

/// `DELETE /v1/users/{email}`: stop certifying; the last certification
/// simply expires.
pub(super) async fn remove(
    axum::extract::State(st): AppState,
    creds: Credentials,
    email: PathParam,
) -> Result<Json<serde_json::Value>, ApiError> {
    let client = authenticate(&st, &creds, Some(Scope::Admin)).await?;
    let email = path_param(email)?;
    let user = known_user(&st, &email).await?;
    let event = AuditEvent::new(&client.name, "user-remove", "ok")
        .key(user.fingerprint.clone())
        .detail(user.email.clone());
    let changed = st
        .store
        .set_user_state(&user.email, UserState::Removed, &event)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "removing a user failed");
            ApiError::from_store(&e)
        })?;
    if changed {
        tracing::info!(client = %client.name, email = %user.email, "user removed");
    }
    Ok(Json(
        serde_json::json!({ "email": user.email, "state": "removed" }),
    ))
}

/// `POST /v1/users/{email}/activity`: the gateway saw this user.
pub(super) async fn activity(
    axum::extract::State(st): AppState,
    creds: Credentials,
    email: PathParam,
) -> Result<Response, ApiError> {
    authenticate(&st, &creds, Some(Scope::Certify)).await?;
    let email = path_param(email)?;
    let user = known_user(&st, &email).await?;
    if user.state == UserState::Removed {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "user_removed",
            "the user was removed by an administrator",
        ));
    }
    st.store
        .touch_user(&user.email)
        .await
        .map_err(store_err("recording activity failed"))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
