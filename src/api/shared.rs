//! What the route files share: the handlers' state type, the mapping of
//! internal and token failures to public errors, the deadline for token
//! work, request body reading, and lookups several routes make (the org
//! key, the organization's reserved addresses, whether a stored user may be
//! served). Route files import this module and never each other.

use super::{ApiError, ApiState, SealState, SigningKey};
use crate::reserved::ReservedEmails;
use crate::signer::SignerError;
use crate::store::{StoreError, UserRecord};
use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use http_body_util::BodyExt;
use std::sync::Arc;

pub(super) type AppState = State<Arc<ApiState>>;

/// A route's one path parameter as the handler takes it: decoded, or the
/// reason it could not be (percent-encoded bytes that are not UTF-8).
pub(super) type PathParam = Result<Path<String>, PathRejection>;

/// The path parameter, or 400 `bad_request` with the JSON error body. Taken
/// in the handler, after authentication: axum's own rejection would answer
/// before it, in plain text.
pub(super) fn path_param(p: PathParam) -> Result<String, ApiError> {
    p.map(|Path(s)| s)
        .map_err(|e| ApiError::bad_request(format!("bad path: {}", e.body_text())))
}

/// Logs a store failure and answers as [`ApiError::from_store`] does: 503
/// when the store cannot be reached now (a database that is down), 500
/// otherwise.
pub(super) fn store_failed(what: &'static str) -> impl FnOnce(StoreError) -> ApiError {
    move |e| {
        tracing::error!(error = %e, "{what}");
        ApiError::from_store(&e)
    }
}

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
pub(super) const MAX_JSON_BODY: usize = 16 * 1024;

pub(super) fn rfc3339(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

pub(super) async fn load_org_key(
    st: &ApiState,
) -> Result<Option<crate::openpgp::OrgKey>, ApiError> {
    let rec = st
        .store
        .active_org_key()
        .await
        .map_err(store_failed("reading the org key record failed"))?;
    rec.map(|r| {
        crate::openpgp::OrgKey::parse(r.cert.as_bytes())
            .map_err(internal("stored org key certificate is unreadable"))
    })
    .transpose()
}

/// The organization's own addresses (every org key's, the org cert's).
pub(super) async fn reserved_emails(st: &ApiState) -> Result<ReservedEmails, ApiError> {
    // A store that cannot answer now is a 503 like everywhere, not a 500
    // (a frozen database made issuance answer 500: cluster_faults.rs).
    ReservedEmails::load(&st.store).await.map_err(|e| match e {
        crate::reserved::ReservedError::Store(e) => {
            store_failed("reading the organization's addresses failed")(e)
        }
        e => internal("reading the organization's addresses failed")(e),
    })
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

/// When a request body must have arrived by: `[server] body_timeout` from
/// now (when the handler starts reading it). A client that sends slowly, or
/// stops mid-body, holds a request no longer than that.
pub(super) fn body_deadline(st: &ApiState) -> tokio::time::Instant {
    tokio::time::Instant::now() + st.body_timeout
}

/// The answer to a body that missed its deadline: 408, and the connection
/// is closed after it (the rest of the body may still be coming).
pub(super) fn body_too_slow(st: &ApiState, client: &str, received: u64) -> ApiError {
    tracing::warn!(
        client,
        received,
        body_timeout = ?st.body_timeout,
        "a request body did not arrive within [server] body_timeout; connection closed"
    );
    ApiError::body_timeout(st.body_timeout)
}

/// Reads a whole request body of at most `limit` bytes by the body
/// deadline.
pub(super) async fn read_body(
    st: &ApiState,
    client: &str,
    body: Body,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let collect = http_body_util::Limited::new(body, limit).collect();
    match tokio::time::timeout_at(body_deadline(st), collect).await {
        Err(_) => Err(body_too_slow(st, client, 0)),
        Ok(Ok(c)) => Ok(c.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            Err(ApiError::too_large(limit as u64))
        }
        Ok(Err(_)) => Err(ApiError::bad_request("could not read the request body")),
    }
}

/// Reads a small JSON body with a size limit and the right content type,
/// by the body deadline.
pub(super) async fn small_json_body(
    st: &ApiState,
    client: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Bytes, ApiError> {
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
    read_body(st, client, body, MAX_JSON_BODY).await
}

/// Normalizes an email from a URL or query the way user IDs are normalized
/// (ASCII domains): lower-case, no surrounding angle brackets.
pub(super) fn normalize_email(s: &str) -> Option<String> {
    let s = s.trim().trim_start_matches('<').trim_end_matches('>');
    let (local, domain) = s.rsplit_once('@')?;
    if local.is_empty() || domain.is_empty() || s.chars().any(|c| c.is_whitespace()) {
        return None;
    }
    Some(s.to_lowercase())
}
