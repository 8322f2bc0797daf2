//! Route handlers.

use super::auth::{Client, Scope, authenticate};
use super::{ApiError, ApiState, IgniteError, SealState, SigningKey};
use crate::openpgp::{PendingSignature, PgpError, SignMode};
use crate::reserved::ReservedEmails;
use crate::signer::SignerError;
use crate::store::{AuditEvent, UserRecord};
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http_body_util::BodyExt;
use secrecy::SecretString;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Instant;
use zeroize::Zeroize;

pub(super) type AppState = State<Arc<ApiState>>;

/// Logs an internal failure and answers 500 with the fixed public message.
pub(super) fn internal<E: std::fmt::Display>(what: &'static str) -> impl FnOnce(E) -> ApiError {
    move |e| {
        tracing::error!(error = %e, "{what}");
        ApiError::internal()
    }
}

/// Waits for token work up to the configured deadline: a hung token gets
/// the request a 503, never a hang (the work itself finishes or fails later,
/// and its result is dropped). A missed deadline counts as the token being
/// in trouble, like an error: it is marked down, which starts recovery.
pub(super) async fn within_deadline<T>(
    st: &ApiState,
    what: &'static str,
    task: tokio::task::JoinHandle<T>,
) -> Result<T, ApiError> {
    match tokio::time::timeout(st.deadline, task).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(internal(what)(e)),
        Err(_) => {
            tracing::error!(deadline = ?st.deadline, "{what}: the token did not answer in time");
            st.mark_token_down();
            Err(ApiError::token_unavailable())
        }
    }
}

/// Largest JSON body accepted by the small JSON routes.
const MAX_JSON_BODY: usize = 16 * 1024;

pub(super) fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/ready", get(ready))
        .route("/v1/status", get(status))
        .route("/v1/org-key", get(org_key))
        .route("/v1/sign", post(sign))
        .route("/v1/ignition", post(ignite).delete(seal))
        .route("/v1/ignition/passphrase", post(change_passphrase))
        .route("/v1/certify", post(super::users::certify))
        .route(
            "/v1/users/{email}",
            get(super::users::show).delete(super::users::remove),
        )
        .route("/v1/users/{email}/activity", post(super::users::activity))
        .route("/pks/lookup", get(super::hkp::lookup))
        .route("/v1/org-cert", get(super::x509::org_cert))
        .route("/v1/x509/issue", post(super::x509::issue))
        .route(
            "/v1/x509/issue-from-openpgp",
            post(super::x509::issue_from_openpgp),
        )
        .route("/v1/x509/revoke", post(super::x509::revoke))
        .route("/v1/x509/crl", get(super::x509::crl))
        .route("/v1/x509/crl/{id}", get(super::x509::crl_by_id))
        .route("/v1/x509/certs/{serial}", get(super::x509::cert_status))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this route",
    )
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn ready(State(st): AppState) -> Result<Json<serde_json::Value>, ApiError> {
    if st.is_token_down() {
        return Err(ApiError::token_unavailable());
    }
    match st.seal_state() {
        SealState::Sealed => Err(ApiError::sealed()),
        SealState::Ignited(None) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_org_key",
            "no org key has been generated",
        )),
        SealState::Ignited(Some(_)) => Ok(Json(serde_json::json!({ "ready": true }))),
    }
}

pub(super) fn rfc3339(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

async fn status(State(st): AppState) -> Result<Json<serde_json::Value>, ApiError> {
    let state = match st.seal_state() {
        SealState::Sealed => "sealed",
        SealState::Ignited(_) => "ignited",
    };
    let org = load_org_key(&st).await?;
    let org_json = match org {
        Some(org) => {
            let expires = org
                .expires(st.clock.now())
                .map_err(internal("stored org key is unreadable"))?;
            serde_json::json!({
                "fingerprint": org.fingerprint(),
                "algorithm": org.algorithm(),
                "user_ids": org.user_ids(),
                "created": rfc3339(org.created()),
                "expires": expires.map(rfc3339),
                "signing_subkey": org.signing_subkey().fingerprint,
            })
        }
        None => serde_json::Value::Null,
    };
    Ok(Json(serde_json::json!({
        "state": state,
        "version": env!("CARGO_PKG_VERSION"),
        "token": st.token,
        "token_sessions": st.igniter.token_sessions(),
        "token_down": st.is_token_down(),
        "openpgp_verification_cache": crate::openpgp::verification_cache_entries(),
        "org_key": org_json,
        "maintenance": st.maintenance.read().unwrap_or_else(|p| p.into_inner()).clone(),
        "backup": st.backup.read().unwrap_or_else(|p| p.into_inner()).clone(),
    })))
}

pub(super) async fn load_org_key(
    st: &ApiState,
) -> Result<Option<crate::openpgp::OrgKey>, ApiError> {
    let rec = st
        .store
        .active_org_key()
        .await
        .map_err(internal("reading the org key record failed"))?;
    rec.map(|r| {
        crate::openpgp::OrgKey::parse(r.cert.as_bytes())
            .map_err(internal("stored org key certificate is unreadable"))
    })
    .transpose()
}

/// The organization's own addresses (every org key's, the org cert's).
pub(super) async fn reserved_emails(st: &ApiState) -> Result<ReservedEmails, ApiError> {
    ReservedEmails::load(&st.store)
        .await
        .map_err(internal("reading the organization's addresses failed"))
}

/// Whether a stored user may be served by email (keyserver, S/MIME
/// bridge): its user ID is in canonical form and names the row's address,
/// and the address is not the organization's. Rows stored before user IDs
/// had to be canonical, or for an address reserved since, are not served.
pub(super) async fn servable_user(st: &ApiState, user: &UserRecord) -> Result<bool, ApiError> {
    let canonical = matches!(
        crate::openpgp::parse_user_id(user.user_id.as_bytes()),
        Ok(Some(c)) if c.email == user.email
    );
    if !canonical {
        tracing::warn!(
            email = ?user.email,
            key = %user.fingerprint,
            "stored user ID is not in canonical form; the user is not served by email"
        );
        return Ok(false);
    }
    if let Some(why) = reserved_emails(st).await?.reason(&user.email) {
        tracing::warn!(
            email = ?user.email,
            key = %user.fingerprint,
            reason = why,
            "stored user has a reserved address; not served"
        );
        return Ok(false);
    }
    Ok(true)
}

async fn org_key(State(st): AppState) -> Result<Response, ApiError> {
    let org = load_org_key(&st).await?.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "no_org_key",
            "no org key has been generated",
        )
    })?;
    let armored = org
        .armored()
        .map_err(internal("armoring the org key failed"))?;
    Ok(([(header::CONTENT_TYPE, "application/pgp-keys")], armored).into_response())
}

/// The ignited signing key, or the right 503/409.
pub(super) fn signing_key(st: &ApiState) -> Result<Arc<SigningKey>, ApiError> {
    if st.is_token_down() {
        return Err(ApiError::token_unavailable());
    }
    match st.seal_state() {
        SealState::Sealed => Err(ApiError::sealed()),
        SealState::Ignited(None) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "no_org_key",
            "no org key has been generated (orgkey org-key generate)",
        )),
        SealState::Ignited(Some(k)) => Ok(k),
    }
}

pub(super) fn signer_error(st: &ApiState, e: &SignerError) -> ApiError {
    match e {
        SignerError::Sealed => ApiError::sealed(),
        SignerError::Unavailable(_) => {
            st.mark_token_down();
            ApiError::token_unavailable()
        }
        SignerError::InvalidInput(_) | SignerError::Failed(_) => ApiError::internal(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignQuery {
    armor: Option<bool>,
    mode: Option<String>,
}

async fn sign(
    State(st): AppState,
    headers: HeaderMap,
    query: Result<Query<SignQuery>, axum::extract::rejection::QueryRejection>,
    body: Body,
) -> Result<Response, ApiError> {
    let client = authenticate(&st, &headers, Some(Scope::Sign)).await?;
    let Query(q) =
        query.map_err(|e| ApiError::bad_request(format!("bad query: {}", e.body_text())))?;
    let mode = match q.mode.as_deref() {
        None | Some("binary") => SignMode::Binary,
        Some("text") => SignMode::Text,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "mode must be binary or text, not {other:?}"
            )));
        }
    };
    let armor = q.armor.unwrap_or(true);
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > st.max_body
    {
        return Err(ApiError::too_large(st.max_body));
    }
    let key = signing_key(&st)?;
    let mut pending = PendingSignature::new(&key.org, key.signer.as_ref(), mode)
        .map_err(internal("starting a signature failed"))?;
    let mut body = body;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::bad_request(format!("reading the body: {e}")))?;
        if let Ok(chunk) = frame.into_data() {
            if pending.len() + chunk.len() as u64 > st.max_body {
                return Err(ApiError::too_large(st.max_body));
            }
            pending.update(&chunk);
        }
    }
    let now = st.now();
    let k = Arc::clone(&key);
    let task =
        tokio::task::spawn_blocking(move || pending.sign(&k.org, k.signer.as_ref(), now, armor));
    let out = match tokio::time::timeout(st.deadline, task).await {
        Ok(joined) => joined.map_err(internal("signing task failed"))?,
        Err(_) => {
            tracing::error!(client = %client.name, deadline = ?st.deadline, "the token did not answer in time");
            st.mark_token_down();
            return Err(ApiError::token_unavailable());
        }
    };
    let out = match out {
        Ok(o) => o,
        Err(PgpError::Signer(e)) => {
            tracing::error!(error = %e, source = ?std::error::Error::source(&e), client = %client.name, "token signing failed");
            return Err(signer_error(&st, &e));
        }
        Err(e) => {
            tracing::error!(error = %e, client = %client.name, "signing failed");
            return Err(ApiError::internal());
        }
    };
    let event = AuditEvent::new(&client.name, "sign", "ok")
        .key(key.org.signing_subkey().fingerprint)
        .digest(hex::encode(out.data_sha256))
        .detail(format!(
            "{} bytes, {}{}",
            out.data_len,
            if mode == SignMode::Text {
                "text"
            } else {
                "binary"
            },
            if armor { ", armored" } else { "" }
        ));
    if let Err(e) = st.audit.append(event).await {
        // No audit row, no signature.
        tracing::error!(error = %e, client = %client.name, "audit write failed; signature withheld");
        return Err(ApiError::audit_unavailable());
    }
    let ctype = if armor {
        "application/pgp-signature"
    } else {
        "application/octet-stream"
    };
    Ok((
        [(header::CONTENT_TYPE, HeaderValue::from_static(ctype))],
        out.bytes,
    )
        .into_response())
}

/// Reads a small JSON body with a size limit and the right content type.
pub(super) async fn small_json_body(headers: &HeaderMap, body: Body) -> Result<Bytes, ApiError> {
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = ctype.split(';').next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case("application/json") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "expected Content-Type: application/json",
        ));
    }
    let limited = http_body_util::Limited::new(body, MAX_JSON_BODY);
    match limited.collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(ApiError::too_large(MAX_JSON_BODY as u64))
        }
        Err(_) => Err(ApiError::bad_request("could not read the request body")),
    }
}

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

async fn ignite(State(st): AppState, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let client = authenticate(&st, &headers, Some(Scope::Admin)).await?;
    let raw = small_json_body(&headers, body).await?;
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
async fn change_passphrase(
    State(st): AppState,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    use secrecy::ExposeSecret;
    let client = authenticate(&st, &headers, Some(Scope::Admin)).await?;
    let raw = small_json_body(&headers, body).await?;
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
    if let Some(wait) = backoff.blocked_for(Instant::now()) {
        let secs = wait.as_secs_f64().ceil() as u64;
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
    .await?;
    match result {
        Ok(()) => {
            backoff.succeeded();
            audit_or_503(&st, AuditEvent::new(&client.name, "ignition-change", "ok")).await?;
            tracing::info!(client = %client.name, "ignition passphrase changed");
            Ok(Json(serde_json::json!({ "changed": true })).into_response())
        }
        Err(IgniteError::BadPassphrase) => {
            let delay = backoff.failed(&st.ignition, Instant::now());
            tracing::warn!(client = %client.name, failures = backoff.failures(), "wrong current ignition passphrase");
            audit_or_503(
                &st,
                AuditEvent::new(&client.name, "ignition-change", "denied").detail(format!(
                    "bad current passphrase (consecutive failures: {})",
                    backoff.failures()
                )),
            )
            .await?;
            let mut err = ApiError::from_ignite(&IgniteError::BadPassphrase);
            if let Some(d) = delay {
                err = err.retry_after(d.as_secs());
            }
            Err(err)
        }
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

async fn audit_or_503(st: &ApiState, event: AuditEvent) -> Result<(), ApiError> {
    st.audit.append(event).await.map(|_| ()).map_err(|e| {
        tracing::error!(error = %e, "audit write failed");
        ApiError::audit_unavailable()
    })
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
    if let Some(wait) = backoff.blocked_for(now) {
        let secs = wait.as_secs_f64().ceil() as u64;
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
    .await?;
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
            backoff.succeeded();
            st.set_seal_state(SealState::Ignited(key));
            tracing::info!(client = %client.name, org_key = ?fpr, "appliance ignited");
            Ok(Json(serde_json::json!({ "state": "ignited", "org_key": fpr })).into_response())
        }
        Err(IgniteError::BadPassphrase) => {
            let delay = backoff.failed(&st.ignition, Instant::now());
            tracing::warn!(client = %client.name, failures = backoff.failures(), "wrong ignition passphrase");
            audit_or_503(
                st,
                AuditEvent::new(&client.name, "ignition", "denied").detail(format!(
                    "bad passphrase (consecutive failures: {})",
                    backoff.failures()
                )),
            )
            .await?;
            let mut err = ApiError::from_ignite(&IgniteError::BadPassphrase);
            if let Some(d) = delay {
                err = err.retry_after(d.as_secs());
            }
            Err(err)
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

async fn seal(State(st): AppState, headers: HeaderMap) -> Result<Response, ApiError> {
    let client = authenticate(&st, &headers, Some(Scope::Admin)).await?;
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
