//! `POST /v1/sign`: a detached OpenPGP signature by the org signing subkey
//! over a streamed request body.

use super::ApiError;
use super::auth::{Credentials, Scope, authenticate};
use super::shared::{AppState, body_deadline, body_too_slow, internal, signer_error, signing_key};
use crate::openpgp::{PendingSignature, PgpError, SignMode};
use crate::store::AuditEvent;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use serde::Deserialize;
use std::sync::Arc;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SignQuery {
    armor: Option<bool>,
    mode: Option<String>,
}

pub(super) async fn sign(
    State(st): AppState,
    creds: Credentials,
    headers: HeaderMap,
    query: Result<Query<SignQuery>, axum::extract::rejection::QueryRejection>,
    body: Body,
) -> Result<Response, ApiError> {
    let client = authenticate(&st, &creds, Some(Scope::Sign)).await?;
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
    let deadline = body_deadline(&st);
    let mut body = body;
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            // No signature for a body that did not arrive in time.
            Err(_) => return Err(body_too_slow(&st, &client.name, pending.len())),
        };
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
