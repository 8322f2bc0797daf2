//! The org cert and S/MIME user certificates: issuance from a CSR or from a
//! managed user's OpenPGP key, revocation, CRLs and certificate status.

use super::auth::{Credentials, Scope, authenticate};
use super::shared::{
    AppState, PathParam, internal, normalize_email, path_param, read_body, reserved_emails,
    servable_user, signer_error, signing_key, small_json_body, store_failed, within_deadline,
};
use super::{ApiError, ApiState, SigningKey};
use crate::ca::{self, CaError, Issue, LoadedCa, Source};
use crate::openpgp::UserKey;
use crate::store::{RevokeOutcome, UserCertRecord, UserState};
use crate::x509::{RevocationReason, X509Cert, crl_pem, parse_user_csr, user_request_for_key};
use axum::Json;
use axum::body::Body;
use axum::extract::Query;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

/// Largest CSR accepted.
const MAX_CSR_BODY: usize = 64 * 1024;

fn no_org_cert() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "no_org_cert",
        "no org cert: create one with `orgkey org-cert self-sign`, `csr` + `import`, or `import-ca`",
    )
}

pub(super) fn ca_error(st: &ApiState, e: CaError, client: &str) -> ApiError {
    match e {
        CaError::NoOrgCert => no_org_cert(),
        CaError::Invalid(m) => ApiError::new(StatusCode::BAD_REQUEST, "bad_request", m),
        CaError::Refused(m) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "refused", m),
        CaError::UnknownSerial(s) => ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_serial",
            format!("no issued certificate with serial {s}"),
        ),
        CaError::Signer(s) => {
            tracing::error!(error = %s, client, "token refused to sign a certificate");
            signer_error(st, &s)
        }
        CaError::Store(e) => {
            tracing::error!(error = %e, client, "store failed during a CA operation");
            ApiError::from_store(&e)
        }
        CaError::Encoding(m) => {
            tracing::error!(error = %m, client, "CA operation failed");
            ApiError::internal()
        }
        CaError::TaskFailed(e) => {
            tracing::error!(error = %e, client, "CA operation failed");
            ApiError::internal()
        }
    }
}

fn rfc3339(s: i64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(s.max(0) as u64)).to_string()
}

/// The active org cert with its key, reloading the keys when the store has
/// a newer org cert than the one loaded at ignition.
async fn active_ca(st: &ApiState, key: &Arc<SigningKey>) -> Result<Arc<LoadedCa>, ApiError> {
    let stored = st
        .store
        .active_org_cert()
        .await
        .map_err(store_failed("reading the org cert failed"))?
        .ok_or_else(no_org_cert)?;
    if let Some(ca) = key.cas.active()
        && ca.record.fingerprint == stored.fingerprint
    {
        return Ok(Arc::clone(ca));
    }
    let ig = Arc::clone(&st.igniter);
    let cas = within_deadline(
        st,
        "loading org cert keys",
        tokio::task::spawn_blocking(move || ig.load_cas()),
    )
    .await?
    .map_err(|e| {
        tracing::error!(error = %e, "loading the org cert keys failed");
        ApiError::token_unavailable()
    })?;
    let active = cas.active().cloned().ok_or_else(no_org_cert)?;
    st.update_cas(cas);
    Ok(active)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RenewQuery {
    renew: Option<bool>,
}

/// Issues (or reuses) under `ca` and answers with the chain.
async fn issue_and_respond(
    st: &ApiState,
    ca: &Arc<LoadedCa>,
    request: &crate::x509::UserCertRequest,
    source: Source,
    client: &str,
    renew: bool,
) -> Result<Response, ApiError> {
    // The organization's own addresses (every org key's, the org cert's) are
    // never a user's, here as in certification.
    let reserved = reserved_emails(st).await?;
    if let Some((email, why)) = request
        .emails
        .iter()
        .find_map(|e| reserved.reason(e).map(|why| (e, why)))
    {
        tracing::warn!(client, email = ?email, "issuance refused for a reserved address");
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "refused",
            format!("{email}: {why}"),
        ));
    }
    let (rec, fresh) = ca::issue(
        &st.store,
        ca,
        &st.x509,
        &st.users.domains,
        Issue {
            request,
            source,
            actor: client,
            renew,
            now: st.now(),
            deadline: st.deadline,
            commits: Some(&st.issuance),
        },
    )
    .await
    .map_err(|e| ca_error(st, e, client))?;
    issued_response(&rec, ca, fresh)
}

fn issued_response(rec: &UserCertRecord, ca: &LoadedCa, fresh: bool) -> Result<Response, ApiError> {
    let leaf = rec
        .cert
        .clone()
        .ok_or_else(|| internal("issued certificate without PEM")("missing"))?;
    let chain = ca
        .chain_pem()
        .map_err(|e| internal("encoding the chain failed")(e.to_string()))?;
    let mut resp = (
        if fresh {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        [(header::CONTENT_TYPE, "application/pem-certificate-chain")],
        format!("{leaf}{chain}"),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&rec.serial) {
        resp.headers_mut().insert("orgkey-serial", v);
    }
    Ok(resp)
}

/// `POST /v1/x509/issue`: body is a PEM or DER PKCS#10 CSR.
pub(super) async fn issue(
    axum::extract::State(st): AppState,
    creds: Credentials,
    query: Result<Query<RenewQuery>, axum::extract::rejection::QueryRejection>,
    body: Body,
) -> Result<Response, ApiError> {
    let client = authenticate(&st, &creds, Some(Scope::Issue)).await?;
    let Query(q) =
        query.map_err(|e| ApiError::bad_request(format!("bad query: {}", e.body_text())))?;
    let bytes = read_body(&st, &client.name, body, MAX_CSR_BODY).await?;
    let key = signing_key(&st)?;
    let mut req = parse_user_csr(&bytes).map_err(|e| ca_error(&st, e.into(), &client.name))?;
    // The only name a certificate carries is one the org key certified.
    req.common_name = match st
        .store
        .user(&req.emails[0])
        .await
        .map_err(store_failed("reading a user failed"))?
        .filter(|u| u.state == UserState::Active)
    {
        Some(user) if servable_user(&st, &user).await? => certified_name(&user),
        _ => None,
    };
    let ca = active_ca(&st, &key).await?;
    issue_and_respond(
        &st,
        &ca,
        &req,
        Source::Csr,
        &client.name,
        q.renew.unwrap_or(false),
    )
    .await
}

/// The name of a stored user's canonical (certified) user ID, if it has one
/// that fits a common name.
fn certified_name(user: &crate::store::UserRecord) -> Option<String> {
    crate::openpgp::parse_user_id(user.user_id.as_bytes())
        .ok()
        .flatten()
        .and_then(|c| c.name)
        .filter(|n| n.len() <= 64)
}

pub(super) fn parse_bridge_body(raw: &[u8]) -> Result<FromOpenPgp, serde_json::Error> {
    serde_json::from_slice(raw)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FromOpenPgp {
    email: String,
}

/// `POST /v1/x509/issue-from-openpgp`: `{"email": "..."}` of a managed user
/// whose OpenPGP key has an RSA or NIST-curve signing key.
pub(super) async fn issue_from_openpgp(
    axum::extract::State(st): AppState,
    creds: Credentials,
    headers: HeaderMap,
    query: Result<Query<RenewQuery>, axum::extract::rejection::QueryRejection>,
    body: Body,
) -> Result<Response, ApiError> {
    let client = authenticate(&st, &creds, Some(Scope::Issue)).await?;
    let Query(q) =
        query.map_err(|e| ApiError::bad_request(format!("bad query: {}", e.body_text())))?;
    let raw = small_json_body(&st, &client.name, &headers, body).await?;
    let req = parse_bridge_body(&raw)
        .map_err(|_| ApiError::bad_request("expected a JSON object {\"email\": \"...\"}"))?;
    let email = normalize_email(&req.email)
        .ok_or_else(|| ApiError::bad_request(format!("{:?} is not an email address", req.email)))?;
    let key = signing_key(&st)?;
    let user = st
        .store
        .user(&email)
        .await
        .map_err(store_failed("reading a user failed"))?
        .filter(|u| u.state == UserState::Active)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_user",
                "no active user with that email (certify their OpenPGP key first)",
            )
        })?;
    // Not a row stored before user IDs had to be canonical, nor a reserved address.
    if !servable_user(&st, &user).await? {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_user",
            "no active user with that email (certify their OpenPGP key first)",
        ));
    }
    let rec = st
        .store
        .user_key(&user.fingerprint)
        .await
        .map_err(store_failed("reading a user key failed"))?
        .ok_or_else(|| internal("user without a key")("missing"))?;
    let pgp = UserKey::parse(rec.cert.as_bytes()).map_err(internal("stored key unreadable"))?;
    let pk = pgp.x509_signing_key(st.clock.now()).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "refused",
            "the user's OpenPGP key has no valid RSA or NIST-curve signing key to certify \
             (Ed25519 OpenPGP keys need a CSR)",
        )
    })?;
    let name = certified_name(&user);
    let request = user_request_for_key(&pk, &email, name)
        .map_err(|e| ca_error(&st, e.into(), &client.name))?;
    let ca = active_ca(&st, &key).await?;
    issue_and_respond(
        &st,
        &ca,
        &request,
        Source::OpenPgp,
        &client.name,
        q.renew.unwrap_or(false),
    )
    .await
}

pub(super) fn parse_revoke_body(raw: &[u8]) -> Result<RevokeRequest, serde_json::Error> {
    serde_json::from_slice(raw)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RevokeRequest {
    serial: String,
    reason: Option<String>,
}

/// `POST /v1/x509/revoke`: `{"serial": "<hex>", "reason": "keyCompromise"}`.
pub(super) async fn revoke(
    axum::extract::State(st): AppState,
    creds: Credentials,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let client = authenticate(&st, &creds, Some(Scope::Revoke)).await?;
    let raw = small_json_body(&st, &client.name, &headers, body).await?;
    let req = parse_revoke_body(&raw).map_err(|_| {
        ApiError::bad_request("expected a JSON object {\"serial\": \"<hex>\", \"reason\": \"...\"}")
    })?;
    let reason = match req.reason.as_deref() {
        None => RevocationReason::Unspecified,
        Some(r) => RevocationReason::parse(r).map_err(ApiError::bad_request)?,
    };
    let key = signing_key(&st)?;
    // Make sure the keys of a newly made org cert are loaded.
    let _ = active_ca(&st, &key).await;
    let key = signing_key(&st)?;
    // The revocation is recorded before the CRL is signed: after a timeout
    // (503, the token counts as down) a retry answers already_revoked and
    // makes the CRL again.
    let revocation = ca::Revocation {
        serial: &req.serial,
        reason,
        actor: &client.name,
        now: st.now(),
        deadline: Some(st.deadline),
    };
    let outcome = ca::revoke_within(&st.store, &key.cas, &st.x509, &revocation)
        .await
        .map_err(|e| ca_error(&st, e, &client.name))?;
    let already = matches!(outcome, RevokeOutcome::AlreadyRevoked(_));
    Ok(Json(serde_json::json!({
        "serial": req.serial.trim().trim_start_matches("0x").to_ascii_lowercase(),
        "state": "revoked",
        "already_revoked": already,
        "reason": reason.name(),
    }))
    .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FormatQuery {
    format: Option<String>,
}

enum Format {
    Pem,
    Der,
}

fn format(q: &FormatQuery, default: Format) -> Result<Format, ApiError> {
    match q.format.as_deref() {
        None => Ok(default),
        Some("pem") => Ok(Format::Pem),
        Some("der") => Ok(Format::Der),
        Some(other) => Err(ApiError::bad_request(format!(
            "format must be pem or der, not {other:?}"
        ))),
    }
}

/// `GET /v1/org-cert`: the active org cert (PEM, or `?format=der`).
pub(super) async fn org_cert(
    axum::extract::State(st): AppState,
    query: Result<Query<FormatQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) =
        query.map_err(|e| ApiError::bad_request(format!("bad query: {}", e.body_text())))?;
    let fmt = format(&q, Format::Pem)?;
    let rec = st
        .store
        .active_org_cert()
        .await
        .map_err(store_failed("reading the org cert failed"))?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "no_org_cert",
                "no org cert has been made",
            )
        })?;
    match fmt {
        Format::Pem => Ok((
            [(header::CONTENT_TYPE, "application/x-pem-file")],
            format!("{}{}", rec.cert, rec.chain),
        )
            .into_response()),
        Format::Der => {
            let cert = X509Cert::parse(rec.cert.as_bytes())
                .map_err(internal("stored org cert unreadable"))?;
            Ok((
                [(header::CONTENT_TYPE, "application/pkix-cert")],
                cert.der().to_vec(),
            )
                .into_response())
        }
    }
}

async fn serve_crl(st: &ApiState, id: Option<&str>, q: FormatQuery) -> Result<Response, ApiError> {
    let fmt = format(&q, Format::Der)?;
    let wanted = match id {
        Some(id) => {
            let now = crate::clock::unix_secs(st.clock.now()) as i64;
            let certs = st
                .store
                .live_org_certs(now)
                .await
                .map_err(store_failed("reading org certs failed"))?;
            let up = id.to_ascii_uppercase();
            certs
                .into_iter()
                .find(|c| c.fingerprint.starts_with(&up) && up.len() >= 16)
                .ok_or_else(|| {
                    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such org cert")
                })?
        }
        None => st
            .store
            .active_org_cert()
            .await
            .map_err(store_failed("reading the org cert failed"))?
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "no_org_cert",
                    "no org cert has been made",
                )
            })?,
    };
    // Never the token: an unauthenticated fetch serves the newest CRL made
    // (past its nextUpdate if maintenance could not renew it; relying
    // parties judge that), and cannot make the org cert key sign
    // (decision 0017).
    let crl = st
        .store
        .latest_crl(&wanted.fingerprint)
        .await
        .map_err(store_failed("reading the CRL failed"))?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "no_crl",
                "no CRL has been made for this org cert yet (the first is made with its first \
                 certificate, or by maintenance)",
            )
        })?;
    match fmt {
        Format::Der => {
            Ok(([(header::CONTENT_TYPE, "application/pkix-crl")], crl.der).into_response())
        }
        Format::Pem => Ok((
            [(header::CONTENT_TYPE, "application/x-pem-file")],
            crl_pem(&crl.der).map_err(internal("encoding the CRL failed"))?,
        )
            .into_response()),
    }
}

/// `GET /v1/x509/crl`: the active org cert's CRL.
pub(super) async fn crl(
    axum::extract::State(st): AppState,
    query: Result<Query<FormatQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) =
        query.map_err(|e| ApiError::bad_request(format!("bad query: {}", e.body_text())))?;
    serve_crl(&st, None, q).await
}

/// `GET /v1/x509/crl/{id}`: the CRL of one org cert (the URL in its
/// certificates' CRL distribution point).
pub(super) async fn crl_by_id(
    axum::extract::State(st): AppState,
    id: PathParam,
    query: Result<Query<FormatQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let id = path_param(id)?;
    let Query(q) =
        query.map_err(|e| ApiError::bad_request(format!("bad query: {}", e.body_text())))?;
    serve_crl(&st, Some(&id), q).await
}

/// `GET /v1/x509/certs/{serial}`: one certificate and its status.
pub(super) async fn cert_status(
    axum::extract::State(st): AppState,
    creds: Credentials,
    serial: PathParam,
) -> Result<Json<serde_json::Value>, ApiError> {
    let client = authenticate(&st, &creds, None).await?;
    if ![Scope::Issue, Scope::Revoke, Scope::Admin]
        .iter()
        .any(|s| client.scopes.contains(s))
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this client lacks the issue, revoke or admin scope",
        ));
    }
    let serial = path_param(serial)?;
    let serial = serial.trim().trim_start_matches("0x").to_ascii_lowercase();
    if serial.is_empty() || serial.len() > 40 || !serial.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::bad_request("the serial must be hex"));
    }
    let rec = st
        .store
        .user_cert(&serial)
        .await
        .map_err(store_failed("reading a certificate failed"))?
        .filter(|r| r.state == "issued" || r.state == "revoked")
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_serial",
                "no issued certificate with that serial",
            )
        })?;
    let now = crate::clock::unix_secs(st.clock.now()) as i64;
    let status = match rec.state.as_str() {
        "revoked" => "revoked",
        _ if rec.not_after <= now => "expired",
        _ => "valid",
    };
    Ok(Json(serde_json::json!({
        "serial": rec.serial,
        "status": status,
        "emails": rec.emails.split(',').collect::<Vec<_>>(),
        "common_name": rec.common_name,
        "source": rec.source,
        "org_cert": rec.org_cert,
        "not_before": rfc3339(rec.not_before),
        "not_after": rfc3339(rec.not_after),
        "revoked_at": rec.revoked_at.map(rfc3339),
        "reason": rec.reason,
        "pem": rec.cert,
    })))
}
