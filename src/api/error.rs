//! `ApiError`: a status, a stable machine-readable code and a fixed public
//! message. Internal detail goes to the log, never into the response. The
//! errors of the layers below that reach several routes (the store's, the
//! igniter's) are mapped to the wire here, once.

use super::IgniteError;
use crate::store::StoreError;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// An error response: `{"error": "...", "code": "..."}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable code, e.g. `bad_passphrase`.
    pub code: &'static str,
    /// Human-readable message (public; never internal detail).
    pub message: String,
    /// Seconds for a Retry-After header.
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// A new error.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// Adds Retry-After.
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs.max(1));
        self
    }

    /// 400 with code `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 401: no or unknown bearer token.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid bearer token is required",
        )
    }

    /// 503 while sealed.
    pub fn sealed() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "sealed",
            "the appliance is sealed: an operator must ignite it",
        )
    }

    /// 503 when the token cannot be reached.
    pub fn token_unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "token_unavailable",
            "the key token is unavailable",
        )
        .retry_after(5)
    }

    /// 503 when the audit log cannot be written (nothing is signed without it).
    pub fn audit_unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "audit_unavailable",
            "the audit log cannot be written; nothing was signed",
        )
        .retry_after(5)
    }

    /// 503 when the store cannot be reached in time (another writer holds
    /// it, no connection is free, disk trouble).
    pub fn store_unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            "the store is busy or unavailable; try again",
        )
        .retry_after(5)
    }

    /// The answer to a store failure (log the detail before returning this):
    /// an audit row that could not be written is `audit_unavailable`, a
    /// store that cannot be reached now is `store_unavailable` (both 503,
    /// worth a retry), anything else is `internal`.
    pub fn from_store(e: &StoreError) -> Self {
        match e {
            StoreError::Audit(_) | StoreError::WriterStopped => Self::audit_unavailable(),
            StoreError::Unavailable { .. } => Self::store_unavailable(),
            _ => Self::internal(),
        }
    }

    /// The answer to a failed ignition, passphrase change or seal (log the
    /// detail before returning this). A wrong passphrase also needs the
    /// back-off's Retry-After, which the route adds.
    pub fn from_ignite(e: &IgniteError) -> Self {
        match e {
            IgniteError::BadPassphrase => Self::new(
                StatusCode::UNAUTHORIZED,
                "bad_passphrase",
                "bad ignition passphrase",
            ),
            IgniteError::Locked => Self::new(
                StatusCode::FORBIDDEN,
                "passphrase_locked",
                "the token has locked the ignition passphrase",
            ),
            IgniteError::Mismatch(_) => Self::new(
                StatusCode::CONFLICT,
                "org_key_mismatch",
                "the token's keys do not match the stored org key; the appliance stays sealed (see the log)",
            ),
            IgniteError::Unavailable(_) => Self::token_unavailable(),
            IgniteError::Store(e) => Self::from_store(e),
            IgniteError::Internal(_) => Self::internal(),
        }
    }

    /// 500 with a fixed message; log the detail before returning this.
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error (see the appliance log)",
        )
    }

    /// 408 for a request body that did not arrive within `[server]
    /// body_timeout`; the connection is closed after it.
    pub fn body_timeout(after: std::time::Duration) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!(
                "the request body did not arrive within {}",
                humantime::format_duration(after)
            ),
        )
    }

    /// 413 for bodies over the limit.
    pub fn too_large(limit: u64) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the request body exceeds the limit of {limit} bytes"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.message, "code": self.code });
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(s) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if self.status == StatusCode::REQUEST_TIMEOUT {
            // The rest of the body may still be on its way: this connection
            // cannot carry another request.
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if self.status == StatusCode::UNAUTHORIZED && self.code == "unauthorized" {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::DbError;
    use std::sync::Arc;

    fn busy() -> StoreError {
        StoreError::Unavailable {
            context: "reserving a serial",
            source: DbError::new(std::io::Error::other("database is locked")),
        }
    }

    #[test]
    fn store_failures_are_told_apart_on_the_wire() {
        let audit = ApiError::from_store(&busy().audit());
        assert_eq!(
            (audit.status, audit.code, audit.retry_after),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "audit_unavailable",
                Some(5)
            )
        );
        let stopped = ApiError::from_store(&StoreError::WriterStopped.audit());
        assert_eq!(stopped.code, "audit_unavailable");
        let unavailable = ApiError::from_store(&busy());
        assert_eq!(
            (
                unavailable.status,
                unavailable.code,
                unavailable.retry_after
            ),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                Some(5)
            )
        );
        for other in [
            StoreError::Corrupt("a row".into()),
            StoreError::Conflict("certificate 01 is no longer pending".into()),
            StoreError::Db {
                context: "reading a certificate",
                source: DbError::new(std::io::Error::other("no such column")),
            },
        ] {
            let e = ApiError::from_store(&other);
            assert_eq!(
                (e.status, e.code),
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            );
        }
    }

    #[test]
    fn only_a_key_mismatch_is_a_409_at_ignition() {
        let cases: [(IgniteError, StatusCode, &str); 7] = [
            (
                IgniteError::BadPassphrase,
                StatusCode::UNAUTHORIZED,
                "bad_passphrase",
            ),
            (
                IgniteError::Locked,
                StatusCode::FORBIDDEN,
                "passphrase_locked",
            ),
            (
                IgniteError::Mismatch("the token's org cert key is not its key".into()),
                StatusCode::CONFLICT,
                "org_key_mismatch",
            ),
            (
                IgniteError::Unavailable("token unavailable".into()),
                StatusCode::SERVICE_UNAVAILABLE,
                "token_unavailable",
            ),
            (
                IgniteError::Store(busy()),
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
            ),
            (
                IgniteError::Store(StoreError::Corrupt("a row".into())),
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
            ),
            (
                IgniteError::Internal("no org key: run `orgkey org-key generate` first".into()),
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
            ),
        ];
        for (e, status, code) in cases {
            let api = ApiError::from_ignite(&e);
            assert_eq!((api.status, api.code), (status, code), "{e:?}");
        }
        // The cause stays with the error.
        let e = IgniteError::Store(StoreError::Audit(Arc::new(busy())));
        assert!(std::error::Error::source(&e).is_some());
    }
}
