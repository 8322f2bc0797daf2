//! The router: every route and the handler that serves it. Handlers live in
//! one file per route group (`status`, `sign`, `ignition`, `users`, `hkp`,
//! `x509`, `metrics`, `openapi`), which share `shared` and never import each
//! other. Every request is measured (`metrics::RequestMetrics`), and every
//! route here is in docs/openapi.json (tests/openapi.rs checks it).

use super::{ApiError, ApiState, hkp, ignition, metrics, openapi, sign, status, users, x509};
use axum::Router;
use axum::http::StatusCode;
use axum::routing::{get, post};
use std::sync::Arc;

pub(super) fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/v1/health", get(status::health))
        .route("/v1/ready", get(status::ready))
        .route("/v1/status", get(status::status))
        .route("/v1/org-key", get(status::org_key))
        .route("/v1/openapi.json", get(openapi::document))
        .route("/v1/sign", post(sign::sign))
        .route(
            "/v1/ignition",
            post(ignition::ignite).delete(ignition::seal),
        )
        .route("/v1/ignition/passphrase", post(ignition::change_passphrase))
        .route("/v1/certify", post(users::certify))
        .route("/v1/users/{email}", get(users::show).delete(users::remove))
        .route("/v1/users/{email}/activity", post(users::activity))
        .route("/pks/lookup", get(hkp::lookup))
        .route("/v1/org-cert", get(x509::org_cert))
        .route("/v1/x509/issue", post(x509::issue))
        .route(
            "/v1/x509/issue-from-openpgp",
            post(x509::issue_from_openpgp),
        )
        .route("/v1/x509/revoke", post(x509::revoke))
        .route("/v1/x509/crl", get(x509::crl))
        .route("/v1/x509/crl/{id}", get(x509::crl_by_id))
        .route("/v1/x509/certs/{serial}", get(x509::cert_status))
        .merge(metrics_route(&state))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(metrics::RequestMetrics)
        .with_state(state)
}

/// `/metrics` on the API listener, unless `[metrics] listen` gives it a
/// listener of its own (then it is served only there).
fn metrics_route(state: &ApiState) -> Router<Arc<ApiState>> {
    let router = Router::new();
    if state.metrics_on_api {
        router.route("/metrics", get(metrics::metrics))
    } else {
        router
    }
}

/// The router of the `[metrics] listen` listener: `/metrics` only.
pub(super) fn metrics_router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics::metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(metrics::RequestMetrics)
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
