//! The API's own client, used by `orgkey ignite`, `orgkey seal` and
//! `orgkey ignition change --token-file` to talk to
//! a running appliance (plaintext on loopback, or TLS with a CA file and,
//! for a client that requires it, a client certificate).

use secrecy::{ExposeSecret, SecretString};
use std::path::Path;
use std::time::Duration;

/// Client-side failures, with the server's error message when it sent one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Connection or TLS failure.
    #[error("cannot reach the appliance at {url}: {message}")]
    Connect {
        /// URL
        url: String,
        /// Cause
        message: String,
    },
    /// The server answered with an error.
    #[error("{message} (HTTP {status}, code {code})")]
    Api {
        /// HTTP status
        status: u16,
        /// Error code
        code: String,
        /// Server message
        message: String,
        /// Retry-After seconds
        retry_after: Option<u64>,
    },
    /// Bad local input (CA file, client certificate file).
    #[error("{0}")]
    Setup(String),
}

/// A client for one appliance.
pub struct ApiClient {
    base: String,
    http: reqwest::Client,
    token: SecretString,
}

impl ApiClient {
    /// `base` like `http://127.0.0.1:8443`; `ca` adds a trusted CA (PEM) for
    /// TLS; `identity` is a TLS client certificate to present (PEM: private
    /// key and certificate chain).
    pub fn new(
        base: &str,
        token: SecretString,
        ca: Option<&Path>,
        identity: Option<&Path>,
    ) -> Result<Self, ClientError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut b = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .use_rustls_tls();
        if let Some(ca) = ca {
            let pem = std::fs::read(ca)
                .map_err(|e| ClientError::Setup(format!("reading {}: {e}", ca.display())))?;
            let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| {
                ClientError::Setup(format!("{}: not a PEM certificate: {e}", ca.display()))
            })?;
            b = b.add_root_certificate(cert);
        }
        if let Some(file) = identity {
            let pem = zeroize::Zeroizing::new(
                std::fs::read(file)
                    .map_err(|e| ClientError::Setup(format!("reading {}: {e}", file.display())))?,
            );
            let id = reqwest::Identity::from_pem(&pem).map_err(|e| {
                ClientError::Setup(format!(
                    "{}: not a PEM private key and certificate: {e}",
                    file.display()
                ))
            })?;
            b = b.identity(id);
        }
        let http = b.build().map_err(|e| ClientError::Setup(e.to_string()))?;
        Ok(Self {
            base: base.trim_end_matches('/').to_string(),
            http,
            token,
        })
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<serde_json::Value, ClientError> {
        let resp = req
            .bearer_auth(self.token.expose_secret())
            .send()
            .await
            .map_err(|e| ClientError::Connect {
                url: self.base.clone(),
                message: format!("{e:#}"),
            })?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let body: serde_json::Value = resp.json().await.unwrap_or(serde_json::Value::Null);
        if status.is_success() {
            return Ok(body);
        }
        Err(ClientError::Api {
            status: status.as_u16(),
            code: body["code"].as_str().unwrap_or("unknown").to_string(),
            message: body["error"]
                .as_str()
                .unwrap_or("request failed")
                .to_string(),
            retry_after,
        })
    }

    /// `POST /v1/ignition`.
    pub async fn ignite(
        &self,
        passphrase: &SecretString,
    ) -> Result<serde_json::Value, ClientError> {
        // Our serialized copy is wiped on drop; the HTTP stack's own buffer
        // is not under our control (see SECURITY.md).
        let body = zeroize::Zeroizing::new(
            serde_json::to_vec(&serde_json::json!({ "passphrase": passphrase.expose_secret() }))
                .map_err(|e| ClientError::Setup(e.to_string()))?,
        );
        let req = self
            .http
            .post(format!("{}/v1/ignition", self.base))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_vec());
        self.send(req).await
    }

    /// `POST /v1/ignition/passphrase`.
    pub async fn change_passphrase(
        &self,
        old: &SecretString,
        new: &SecretString,
    ) -> Result<serde_json::Value, ClientError> {
        let body = zeroize::Zeroizing::new(
            serde_json::to_vec(&serde_json::json!({
                "passphrase": old.expose_secret(),
                "new_passphrase": new.expose_secret(),
            }))
            .map_err(|e| ClientError::Setup(e.to_string()))?,
        );
        let req = self
            .http
            .post(format!("{}/v1/ignition/passphrase", self.base))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_vec());
        self.send(req).await
    }

    /// `DELETE /v1/ignition`.
    pub async fn seal(&self) -> Result<serde_json::Value, ClientError> {
        self.send(self.http.delete(format!("{}/v1/ignition", self.base)))
            .await
    }
}
