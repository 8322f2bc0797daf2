//! Public appliance routes: liveness, readiness, status and the public org
//! key.

use super::shared::{AppState, internal, load_org_key, rfc3339};
use super::{ApiError, SealState};
use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

pub(super) async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

pub(super) async fn ready(State(st): AppState) -> Result<Json<serde_json::Value>, ApiError> {
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

pub(super) async fn status(State(st): AppState) -> Result<Json<serde_json::Value>, ApiError> {
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

pub(super) async fn org_key(State(st): AppState) -> Result<Response, ApiError> {
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
