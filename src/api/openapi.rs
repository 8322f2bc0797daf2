//! `GET /v1/openapi.json`: the API's OpenAPI 3.1 document, docs/openapi.json
//! compiled in (decision 0023). tests/openapi.rs holds it to the router and
//! to docs/api.md, and schemathesis holds it to the running server.

use axum::http::header;
use axum::response::{IntoResponse, Response};

/// The document, as checked in.
pub(super) const DOCUMENT: &str = include_str!("../../docs/openapi.json");

pub(super) async fn document() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], DOCUMENT).into_response()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_document_is_json_of_this_version() {
        let doc: serde_json::Value = serde_json::from_str(super::DOCUMENT).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    }
}
