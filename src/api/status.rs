//! Public appliance routes: liveness, readiness, status and the public org
//! key.

use super::auth::{Credentials, Scope, authenticate_if_presented};
use super::shared::{AppState, internal, load_org_key, rfc3339};
use super::{ApiError, SealState};
use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

pub(super) async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// How long `/v1/ready` waits for the store to answer: well inside a load
/// balancer's probe timeout.
const READY_STORE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

pub(super) async fn ready(State(st): AppState) -> Result<Json<serde_json::Value>, ApiError> {
    if st.is_token_down() {
        return Err(ApiError::token_unavailable());
    }
    // A node that cannot reach its store (a PostgreSQL server that is down
    // or partitioned away) would answer every signature with 503: it is
    // not ready, and the load balancer sends the traffic elsewhere.
    if let Err(e) = st.store.ping(READY_STORE_TIMEOUT).await {
        tracing::warn!(error = %crate::text::error_chain(&e), "readiness: the store does not answer");
        return Err(ApiError::store_unavailable());
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

/// `GET /v1/status`. Anyone gets what a load balancer or a monitoring
/// probe needs: seal state, whether the token is down, the version and the
/// org key's fingerprint and expiry. A caller with a bearer token of the
/// admin scope also gets the details an operator needs, which would tell an
/// outsider about the host: the token's label, serial and sessions, the
/// last maintenance run, the last state backup (its file, or the error) and
/// the verification cache, and the cluster: this node (`node`: its id,
/// role under the leader lease and the lease's epoch), the lease and the
/// members with their last heartbeats (node ids are usually host names).
/// Credentials that are presented must be valid
/// (401 otherwise, as on every route); a client without the admin scope
/// gets the public answer. An admin client may also authenticate with its
/// client certificate.
pub(super) async fn status(
    State(st): AppState,
    creds: Credentials,
) -> Result<Json<serde_json::Value>, ApiError> {
    let admin = authenticate_if_presented(&st, &creds, None)
        .await?
        .is_some_and(|client| client.scopes.contains(&Scope::Admin));
    let state = match st.seal_state() {
        SealState::Sealed => "sealed",
        SealState::Ignited(_) => "ignited",
    };
    let org_json = match load_org_key(&st).await? {
        Some(org) => {
            let expires = org
                .expires(st.clock.now())
                .map_err(internal("stored org key is unreadable"))?
                .map(rfc3339);
            if admin {
                serde_json::json!({
                    "fingerprint": org.fingerprint(),
                    "algorithm": org.algorithm(),
                    "user_ids": org.user_ids(),
                    "created": rfc3339(org.created()),
                    "expires": expires,
                    "signing_subkey": org.signing_subkey().fingerprint,
                })
            } else {
                serde_json::json!({ "fingerprint": org.fingerprint(), "expires": expires })
            }
        }
        None => serde_json::Value::Null,
    };
    let mut out = serde_json::Map::new();
    out.insert("state".into(), state.into());
    out.insert("version".into(), env!("CARGO_PKG_VERSION").into());
    out.insert("token_down".into(), st.is_token_down().into());
    out.insert("org_key".into(), org_json);
    if admin {
        let details = [
            ("token", serde_json::json!(st.token)),
            ("token_sessions", st.igniter.token_sessions().into()),
            (
                "openpgp_verification_cache",
                crate::openpgp::verification_cache_entries().into(),
            ),
            (
                "maintenance",
                serde_json::json!(
                    st.maintenance
                        .read()
                        .unwrap_or_else(|p| p.into_inner())
                        .clone()
                ),
            ),
            (
                "backup",
                serde_json::json!(st.backup.read().unwrap_or_else(|p| p.into_inner()).clone()),
            ),
        ];
        out.extend(details.map(|(k, v)| (k.to_string(), v)));
        out.extend(cluster_details(&st).await);
    }
    Ok(Json(serde_json::Value::Object(out)))
}

/// `node`, `lease` and `members` for an admin's `/v1/status`. The role is
/// this node's own view (the one its singleton jobs follow); the rest is
/// read from the store, and left out (null) when the store does not answer.
async fn cluster_details(st: &super::ApiState) -> serde_json::Map<String, serde_json::Value> {
    let role = st.role.borrow().clone();
    let node = st.store.node().to_string();
    let view = match st.store.cluster_view().await {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(error = %crate::text::error_chain(&e), "status: the cluster members could not be read");
            let mut out = serde_json::Map::new();
            let epoch = match &role {
                crate::store::NodeRole::Leader(f) => Some(f.epoch()),
                crate::store::NodeRole::Follower => None,
            };
            out.insert(
                "node".into(),
                serde_json::json!({ "id": node, "role": role.as_str(), "epoch": epoch }),
            );
            out.insert("lease".into(), serde_json::Value::Null);
            out.insert("members".into(), serde_json::Value::Null);
            return out;
        }
    };
    let epoch = match &role {
        crate::store::NodeRole::Leader(f) => f.epoch(),
        crate::store::NodeRole::Follower => view.lease.epoch,
    };
    view.status_json(&node, role.as_str(), epoch)
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
