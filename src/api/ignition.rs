//! Ignition and sealing: `POST /v1/ignition` (log in to the token with the
//! ignition passphrase, under the back-off), `DELETE /v1/ignition` (seal)
//! and `POST /v1/ignition/passphrase` (change the passphrase on the token).

use super::auth::{Client, Credentials, Scope, authenticate};
use super::shared::{AppState, small_json_body, within_deadline};
use super::{ApiError, ApiState, Backoff, IgniteError, SealState};
use crate::metrics::IgnitionFailure;
use crate::store::AuditEvent;
use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use secrecy::SecretString;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Instant;
use zeroize::Zeroize;

pub(super) fn parse_ignition_body(raw: &[u8]) -> Result<IgnitionRequest, serde_json::Error> {
    serde_json::from_slice(raw)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct IgnitionRequest {
    passphrase: SecretString,
}

fn wipe(bytes: Bytes) {
    // Best effort: the passphrase bytes are overwritten when this is the
    // only reference to the buffer.
    if let Ok(mut m) = bytes.try_into_mut() {
        m.as_mut().zeroize();
    }
}

pub(super) async fn ignite(
    State(st): AppState,
    creds: Credentials,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let client = authenticate(&st, &creds, Some(Scope::Admin)).await?;
    let raw = small_json_body(&st, &client.name, &headers, body).await?;
    let parsed = parse_ignition_body(&raw);
    wipe(raw);
    let req = parsed
        .map_err(|_| ApiError::bad_request("expected a JSON object {\"passphrase\": \"...\"}"))?;
    audited_ignition(&st, &client, req.passphrase).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PassphraseChange {
    passphrase: SecretString,
    new_passphrase: SecretString,
}

pub(super) fn parse_passphrase_change(raw: &[u8]) -> Result<PassphraseChange, serde_json::Error> {
    serde_json::from_slice(raw)
}

/// Shortest new ignition passphrase (the CLI's rule too).
const MIN_PASSPHRASE_CHARS: usize = 10;

/// `POST /v1/ignition/passphrase`: changes the ignition passphrase on the
/// token through the running appliance, so the passphrase it holds for
/// relogin stays the token's. A wrong current passphrase counts as a failed
/// ignition (same back-off).
pub(super) async fn change_passphrase(
    State(st): AppState,
    creds: Credentials,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    use secrecy::ExposeSecret;
    let client = authenticate(&st, &creds, Some(Scope::Admin)).await?;
    let raw = small_json_body(&st, &client.name, &headers, body).await?;
    let parsed = parse_passphrase_change(&raw);
    wipe(raw);
    let req = parsed.map_err(|_| {
        ApiError::bad_request(
            "expected a JSON object {\"passphrase\": \"...\", \"new_passphrase\": \"...\"}",
        )
    })?;
    if req.new_passphrase.expose_secret().chars().count() < MIN_PASSPHRASE_CHARS {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "weak_passphrase",
            format!("the new ignition passphrase needs at least {MIN_PASSPHRASE_CHARS} characters"),
        ));
    }
    let mut backoff = ignition_lock(&st).await?;
    if let Some(wait) = shared_backoff(&st, &mut backoff, Instant::now()).await? {
        let secs = wait.as_secs_f64().ceil() as u64;
        crate::metrics::ignition_failed(IgnitionFailure::Backoff);
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "ignition_backoff",
            format!("too many wrong passphrases; try again in {secs} s"),
        )
        .retry_after(secs));
    }
    let igniter = Arc::clone(&st.igniter);
    let result = within_deadline(
        &st,
        "changing the ignition passphrase",
        tokio::task::spawn_blocking(move || {
            igniter.change_passphrase(&req.passphrase, &req.new_passphrase)
        }),
    )
    .await
    .inspect_err(count_unanswered)?;
    if let Err(e) = &result {
        count_failure(e);
    }
    match result {
        Ok(()) => {
            backoff_cleared(&st, &mut backoff).await;
            audit_or_503(&st, AuditEvent::new(&client.name, "ignition-change", "ok")).await?;
            tracing::info!(client = %client.name, "ignition passphrase changed");
            Ok(Json(serde_json::json!({ "changed": true })).into_response())
        }
        Err(IgniteError::BadPassphrase) => Err(refused_passphrase(
            &st,
            &client,
            &mut backoff,
            "ignition-change",
            "bad current passphrase",
        )
        .await),
        Err(e) => {
            tracing::error!(error = %e, client = %client.name, "changing the ignition passphrase failed");
            audit_or_503(
                &st,
                AuditEvent::new(&client.name, "ignition-change", "failed").detail(e.to_string()),
            )
            .await?;
            Err(ApiError::from_ignite(&e))
        }
    }
}

/// Counts an ignition (or passphrase change) the token did not answer in
/// time, or whose task failed, in the metrics.
fn count_unanswered(e: &ApiError) {
    crate::metrics::ignition_failed(if e.status == StatusCode::SERVICE_UNAVAILABLE {
        IgnitionFailure::Unavailable
    } else {
        IgnitionFailure::Other
    });
}

/// Counts a failed ignition (or passphrase change) in the metrics.
fn count_failure(e: &IgniteError) {
    crate::metrics::ignition_failed(match e {
        IgniteError::BadPassphrase => IgnitionFailure::BadPassphrase,
        IgniteError::Locked => IgnitionFailure::Locked,
        IgniteError::Mismatch(_) => IgnitionFailure::Mismatch,
        IgniteError::Unavailable(_) | IgniteError::Store(_) => IgnitionFailure::Unavailable,
        IgniteError::Internal(_) => IgnitionFailure::Other,
    });
}

async fn audit_or_503(st: &ApiState, event: AuditEvent) -> Result<(), ApiError> {
    st.audit.append(event).await.map(|_| ()).map_err(|e| {
        tracing::error!(error = %e, "audit write failed");
        ApiError::audit_unavailable()
    })
}

/// Unix milliseconds of the wall clock: the shared back-off's blocks are
/// compared across nodes.
fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Brings the node's back-off up to the store's, which every node of the
/// store counts into (wrong passphrases on any node add up), and says how
/// long attempts are still blocked. A store that cannot be read fails
/// closed (503): no guess goes uncounted.
async fn shared_backoff(
    st: &ApiState,
    backoff: &mut Backoff,
    now: Instant,
) -> Result<Option<std::time::Duration>, ApiError> {
    let (failures, until_ms) = st.store.ignition_backoff().await.map_err(|e| {
        tracing::error!(error = %e, "reading the ignition back-off failed");
        ApiError::from_store(&e)
    })?;
    let left_ms = until_ms.saturating_sub(wall_ms());
    let left = (left_ms > 0).then(|| std::time::Duration::from_millis(left_ms as u64));
    backoff.mirror(failures, left, now);
    Ok(backoff.blocked_for(now))
}

/// Clears the shared back-off after a right passphrase.
async fn backoff_cleared(st: &ApiState, backoff: &mut Backoff) {
    backoff.succeeded();
    if let Err(e) = st.store.clear_ignition_backoff().await {
        // The passphrase was right; a stale count only delays the next
        // wrong guess's block, never a right passphrase's success.
        tracing::warn!(error = %e, "could not clear the shared ignition back-off");
    }
}

/// The ignition lock (ignition attempts, seals and token recovery take
/// turns), waited for up to the token deadline.
pub(super) async fn ignition_lock(
    st: &ApiState,
) -> Result<tokio::sync::MutexGuard<'_, super::Backoff>, ApiError> {
    tokio::time::timeout(st.deadline, st.backoff.lock())
        .await
        .map_err(|_| {
            tracing::error!(
                "the ignition lock was not free within the deadline (token recovery hangs?)"
            );
            ApiError::token_unavailable()
        })
}

fn already_ignited(fpr: String) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "already_ignited",
        format!(
            "the appliance is already ignited with org key {fpr}; the passphrase was not used \
             (seal it first to ignite again)"
        ),
    )
}

async fn audited_ignition(
    st: &Arc<ApiState>,
    client: &Client,
    passphrase: SecretString,
) -> Result<Response, ApiError> {
    // Ignited with an org key: refuse rather than answer "ignited" to a
    // passphrase nobody checked. Ignited without one (the key was generated
    // after ignition) goes through a full ignition again to load it.
    let already = |st: &ApiState| match st.seal_state() {
        SealState::Ignited(Some(k)) => Some(k.org.fingerprint()),
        SealState::Ignited(None) | SealState::Sealed => None,
    };
    if let Some(fpr) = already(st) {
        return Err(already_ignited(fpr));
    }
    // Held across the attempt: concurrent guesses are counted one by one.
    let mut backoff = ignition_lock(st).await?;
    if let Some(fpr) = already(st) {
        return Err(already_ignited(fpr));
    }
    let now = Instant::now();
    if let Some(wait) = shared_backoff(st, &mut backoff, now).await? {
        let secs = wait.as_secs_f64().ceil() as u64;
        crate::metrics::ignition_failed(IgnitionFailure::Backoff);
        audit_or_503(
            st,
            AuditEvent::new(&client.name, "ignition", "refused").detail(format!(
                "back-off after {} failures, {secs}s left",
                backoff.failures()
            )),
        )
        .await?;
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "ignition_backoff",
            format!("too many wrong passphrases; try again in {secs} s"),
        )
        .retry_after(secs));
    }
    // Every attempt ends the current login (the passphrase must be proven
    // by the token): until it succeeds the appliance is sealed.
    st.set_seal_state(SealState::Sealed);
    let igniter = Arc::clone(&st.igniter);
    let result = within_deadline(
        st,
        "ignition",
        tokio::task::spawn_blocking(move || igniter.ignite(&passphrase)),
    )
    .await
    .inspect_err(count_unanswered)?;
    if let Err(e) = &result {
        count_failure(e);
    }
    match result {
        Ok(key) => {
            let fpr = key.as_ref().map(|k| k.org.fingerprint());
            let mut ev = AuditEvent::new(&client.name, "ignition", "ok");
            if let Some(f) = &fpr {
                ev = ev.key(f.clone());
            }
            if let Err(e) = st.audit.append(ev).await {
                // Do not stay ignited without a record of it.
                tracing::error!(error = %e, "audit write failed; sealing again");
                let ig = Arc::clone(&st.igniter);
                let _ = tokio::task::spawn_blocking(move || ig.seal()).await;
                return Err(ApiError::audit_unavailable());
            }
            backoff_cleared(st, &mut backoff).await;
            st.set_seal_state(SealState::Ignited(key));
            tracing::info!(client = %client.name, org_key = ?fpr, "appliance ignited");
            Ok(Json(serde_json::json!({ "state": "ignited", "org_key": fpr })).into_response())
        }
        Err(IgniteError::BadPassphrase) => {
            Err(refused_passphrase(st, client, &mut backoff, "ignition", "bad passphrase").await)
        }
        Err(e) => {
            let outcome = match &e {
                IgniteError::Locked => "denied",
                _ => "failed",
            };
            let err = ApiError::from_ignite(&e);
            tracing::error!(error = %e, client = %client.name, "ignition failed");
            audit_or_503(
                st,
                AuditEvent::new(&client.name, "ignition", outcome).detail(e.to_string()),
            )
            .await?;
            Err(err)
        }
    }
}

/// A passphrase the token refused (ignition or passphrase change): it counts
/// in the back-off, is audited as `operation` `denied`, and answers 401, with
/// Retry-After once a back-off starts (or 503 if it cannot be audited).
async fn refused_passphrase(
    st: &ApiState,
    client: &Client,
    backoff: &mut Backoff,
    operation: &str,
    what: &str,
) -> ApiError {
    let cfg = &st.ignition;
    let delay = match st
        .store
        .record_ignition_failure(wall_ms(), |n| Backoff::delay_after(cfg, n))
        .await
    {
        Ok((failures, delay)) => {
            backoff.mirror(failures, delay, Instant::now());
            delay
        }
        Err(e) => {
            // Fail closed: an uncounted guess must not be answered as one.
            tracing::error!(error = %e, "counting a wrong passphrase failed");
            return ApiError::from_store(&e);
        }
    };
    tracing::warn!(client = %client.name, failures = backoff.failures(), operation, "{what}");
    let event = AuditEvent::new(&client.name, operation, "denied").detail(format!(
        "{what} (consecutive failures: {})",
        backoff.failures()
    ));
    if let Err(e) = audit_or_503(st, event).await {
        return e;
    }
    let mut err = ApiError::from_ignite(&IgniteError::BadPassphrase);
    if let Some(d) = delay {
        err = err.retry_after(d.as_secs());
    }
    err
}

pub(super) async fn seal(State(st): AppState, creds: Credentials) -> Result<Response, ApiError> {
    let client = authenticate(&st, &creds, Some(Scope::Admin)).await?;
    // Sealed in memory at once: nothing is signed from here on, whatever
    // the token does. Token recovery re-checks this before it marks the
    // appliance ignited, so a recovery that is logging in now cannot undo
    // the seal.
    st.set_seal_state(SealState::Sealed);
    let guard = ignition_lock(&st).await;
    st.set_seal_state(SealState::Sealed);
    let ig = Arc::clone(&st.igniter);
    // A hung token only delays the logout.
    let res = within_deadline(
        &st,
        "sealing",
        tokio::task::spawn_blocking(move || ig.seal()),
    )
    .await
    .unwrap_or_else(|_| {
        Err(IgniteError::Unavailable(
            "token unavailable: the token did not answer".into(),
        ))
    });
    drop(guard);
    if let Err(e) = &res {
        tracing::error!(error = %e, "logout failed (the appliance refuses to sign either way)");
    }
    audit_or_503(
        &st,
        AuditEvent::new(
            &client.name,
            "seal",
            if res.is_ok() { "ok" } else { "failed" },
        ),
    )
    .await?;
    tracing::info!(client = %client.name, "appliance sealed");
    Ok(Json(serde_json::json!({ "state": "sealed" })).into_response())
}
