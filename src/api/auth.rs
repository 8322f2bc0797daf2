//! API clients: bearer tokens and TLS client certificates.
//!
//! A token is `okc_<client id>_<secret>`. The store keeps the client id and
//! the SHA-256 of the secret (the secret has 256 bits of entropy, so a plain
//! hash is enough); lookup is by id and the hash comparison is constant-time.
//!
//! With `[server] client_ca`, rustls verifies the certificate a client may
//! present, and the connection's certificate reaches every request on it
//! ([`PeerCertificate`], put there by `tls.rs`, never by a header). A client
//! can be bound to a certificate (by its SHA-256, or by subject and issuer)
//! and then authenticates with that certificate alone, or, with
//! `require_cert`, with the certificate and its bearer token together
//! (decision 0022). Whatever is presented must agree: a token and a
//! certificate of two different clients are refused, and so is a
//! certificate that two clients' bindings match.

use super::ApiError;
use super::directory::{ClientDirectory, Directory};
use crate::store::{CertBinding, ClientRecord, PresentedCert};
use axum::extract::FromRequestParts;
use axum::http::HeaderValue;
use axum::http::request::Parts;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// What a client may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Detached data signatures.
    Sign,
    /// Certify user keys.
    Certify,
    /// Issue S/MIME certificates.
    Issue,
    /// Revoke certificates.
    Revoke,
    /// Ignite, seal, administer.
    Admin,
}

impl Scope {
    /// All scopes.
    pub const ALL: [Scope; 5] = [
        Scope::Sign,
        Scope::Certify,
        Scope::Issue,
        Scope::Revoke,
        Scope::Admin,
    ];

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Scope::Sign => "sign",
            Scope::Certify => "certify",
            Scope::Issue => "issue",
            Scope::Revoke => "revoke",
            Scope::Admin => "admin",
        }
    }

    /// Parses a comma-separated list; rejects unknown and empty lists.
    pub fn parse_list(s: &str) -> Result<Vec<Scope>, String> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let scope = Scope::ALL
                .into_iter()
                .find(|sc| sc.name() == part)
                .ok_or_else(|| {
                    format!("unknown scope {part:?} (scopes: sign, certify, issue, revoke, admin)")
                })?;
            if !out.contains(&scope) {
                out.push(scope);
            }
        }
        if out.is_empty() {
            return Err("at least one scope is required".into());
        }
        Ok(out)
    }

    /// Comma-separated names.
    pub fn join(scopes: &[Scope]) -> String {
        scopes
            .iter()
            .map(|s| s.name())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Client {
    /// Client name (audit actor).
    pub name: String,
    /// Granted scopes.
    pub scopes: Vec<Scope>,
}

const PREFIX: &str = "okc_";

fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// New credentials for a client: the record to store and the bearer token
/// to show once.
pub fn new_client(
    name: &str,
    scopes: &[Scope],
    cert: Option<CertBinding>,
    require_cert: bool,
    now: i64,
) -> Result<(ClientRecord, SecretString), String> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err("client names are 1-64 characters of A-Z, a-z, 0-9, '-', '_', '.'".into());
    }
    if require_cert && cert.is_none() {
        return Err("--require-cert needs a certificate binding".into());
    }
    let id: [u8; 8] = rand::random();
    let secret: [u8; 32] = rand::random();
    let client_id = hex::encode(id);
    let secret = zeroize::Zeroizing::new(URL_SAFE_NO_PAD.encode(secret));
    let token = SecretString::from(format!("{PREFIX}{client_id}_{}", secret.as_str()));
    let rec = ClientRecord {
        name: name.into(),
        client_id,
        secret_hash: hash_secret(&secret),
        scopes: Scope::join(scopes),
        created_at: now,
        cert,
        require_cert,
    };
    Ok((rec, token))
}

/// A certificate binding from the command line: a SHA-256 fingerprint (64
/// hex digits, `:` separators allowed, as `openssl x509 -fingerprint
/// -sha256` prints it), or a subject and an issuer DN (RFC 4514), both
/// stored in canonical form.
pub fn cert_binding(
    sha256: Option<&str>,
    subject: Option<&str>,
    issuer: Option<&str>,
) -> Result<Option<CertBinding>, String> {
    match (sha256, subject, issuer) {
        (None, None, None) => Ok(None),
        (Some(h), None, None) => {
            let hex_digits: String = h.chars().filter(|c| *c != ':').collect();
            if hex_digits.len() != 64 || !hex_digits.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!(
                    "--cert-sha256 {h:?}: expected the SHA-256 of the DER certificate, 64 hex \
                     digits (openssl x509 -in CERT -noout -fingerprint -sha256)"
                ));
            }
            Ok(Some(CertBinding::Sha256(hex_digits.to_ascii_lowercase())))
        }
        (None, Some(s), Some(i)) => {
            let canonical = |what: &str, dn: &str| {
                crate::x509::canonical_dn(dn).map_err(|e| format!("--cert-{what}: {e}"))
            };
            Ok(Some(CertBinding::Name {
                subject: canonical("subject", s)?,
                issuer: canonical("issuer", i)?,
            }))
        }
        (None, _, _) => Err("--cert-subject and --cert-issuer go together".into()),
        (Some(_), _, _) => {
            Err("bind by --cert-sha256 or by --cert-subject and --cert-issuer, not both".into())
        }
    }
}

/// The verified TLS client certificate of the connection a request came
/// on: its SHA-256 and canonical names, worked out once per connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCertificate {
    sha256: String,
    names: Option<(String, String)>,
}

impl PeerCertificate {
    /// From the DER end-entity certificate rustls verified.
    pub(super) fn from_der(der: &[u8]) -> Self {
        let sha256 = hex::encode(Sha256::digest(der));
        let names = match crate::x509::certificate_dns(der) {
            Ok(names) => Some(names),
            Err(e) => {
                // rustls accepted it; only a fingerprint binding can match.
                tracing::warn!(
                    error = %e,
                    cert_sha256 = %sha256,
                    "the names of a client certificate could not be read"
                );
                None
            }
        };
        Self { sha256, names }
    }

    fn presented(&self) -> PresentedCert<'_> {
        PresentedCert {
            sha256: &self.sha256,
            names: self.names.as_ref().map(|(s, i)| (s.as_str(), i.as_str())),
        }
    }
}

/// What a request presents to authenticate: its `Authorization` header and
/// the client certificate of its connection.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    authorization: Option<HeaderValue>,
    peer: Option<Arc<PeerCertificate>>,
}

impl<S: Send + Sync> FromRequestParts<S> for Credentials {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Credentials {
            authorization: parts
                .headers
                .get(axum::http::header::AUTHORIZATION)
                .cloned(),
            peer: parts.extensions.get::<Arc<PeerCertificate>>().cloned(),
        })
    }
}

/// Checks the presented credentials, that the client holds `scope`
/// (`None`: any valid client), and the client's rate limit.
pub async fn authenticate(
    st: &super::ApiState,
    creds: &Credentials,
    scope: Option<Scope>,
) -> Result<Client, ApiError> {
    match authenticate_if_presented(st, creds, scope).await? {
        Some(client) => Ok(client),
        None => Err(ApiError::unauthorized()),
    }
}

/// Like [`authenticate`] for routes that also serve anonymous callers:
/// `None` when the request presents no bearer token and no certificate
/// bound to a client. Whatever is presented must be valid.
pub async fn authenticate_if_presented(
    st: &super::ApiState,
    creds: &Credentials,
    scope: Option<Scope>,
) -> Result<Option<Client>, ApiError> {
    let Some(client) = authenticate_in(&st.clients, creds, scope).await? else {
        return Ok(None);
    };
    if let Err(wait) = st.limiter.check(&client.name, std::time::Instant::now()) {
        let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
        return Err(ApiError::new(
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("this client's request rate limit is exhausted; retry in {secs} s"),
        )
        .retry_after(secs));
    }
    Ok(Some(client))
}

async fn authenticate_in(
    clients: &ClientDirectory,
    creds: &Credentials,
    scope: Option<Scope>,
) -> Result<Option<Client>, ApiError> {
    if creds.authorization.is_none() && creds.peer.is_none() {
        return Ok(None);
    }
    let directory = clients.current().await.map_err(|e| {
        tracing::error!(error = %e, "client lookup failed");
        ApiError::from_store(&e)
    })?;
    let Some(rec) = identify(&directory, creds)? else {
        return Ok(None);
    };
    let scopes: Vec<Scope> = Scope::parse_list(&rec.scopes).unwrap_or_default();
    if let Some(needed) = scope
        && !scopes.contains(&needed)
    {
        return Err(ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            "forbidden",
            format!("this client lacks the {} scope", needed.name()),
        ));
    }
    Ok(Some(Client {
        name: rec.name,
        scopes,
    }))
}

/// The client the credentials name (`None`: they name none), or 401:
/// - a bearer token that is presented must be valid;
/// - a certificate names the client bound to it, if any;
/// - a token and a certificate that name two clients are refused;
/// - a `require_cert` client needs its certificate and its token.
fn identify(directory: &Directory, creds: &Credentials) -> Result<Option<ClientRecord>, ApiError> {
    let by_token = match &creds.authorization {
        Some(value) => Some(bearer_client(directory, value)?),
        None => None,
    };
    let by_cert = match &creds.peer {
        Some(peer) => cert_client(directory, peer)?,
        None => None,
    };
    match (by_token, by_cert) {
        (None, None) => Ok(None),
        (Some(t), Some(c)) if t.name != c.name => {
            tracing::warn!(
                token_client = %t.name,
                cert_client = %c.name,
                "bearer token and client certificate of different clients; refused"
            );
            Err(ApiError::unauthorized())
        }
        (Some(t), c) => {
            if t.require_cert && c.is_none() {
                tracing::warn!(
                    client = %t.name,
                    "bearer token without the client's certificate; refused (require-cert)"
                );
                return Err(ApiError::unauthorized());
            }
            Ok(Some(t))
        }
        (None, Some(c)) => {
            if c.require_cert {
                tracing::warn!(
                    client = %c.name,
                    "client certificate without the client's bearer token; refused (require-cert)"
                );
                return Err(ApiError::unauthorized());
            }
            Ok(Some(c))
        }
    }
}

/// The client whose bearer token `value` is, or 401.
fn bearer_client(directory: &Directory, value: &HeaderValue) -> Result<ClientRecord, ApiError> {
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .and_then(|t| t.strip_prefix(PREFIX))
        .ok_or_else(ApiError::unauthorized)?;
    let (client_id, secret) = token.split_once('_').ok_or_else(ApiError::unauthorized)?;
    if client_id.len() != 16 || !client_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::unauthorized());
    }
    let Some(rec) = directory.by_id(client_id) else {
        return Err(ApiError::unauthorized());
    };
    let presented = hash_secret(secret);
    if !bool::from(presented.as_bytes().ct_eq(rec.secret_hash.as_bytes())) {
        tracing::warn!(client = %rec.name, "bearer token with a wrong secret");
        return Err(ApiError::unauthorized());
    }
    Ok(rec.clone())
}

/// The client bound to `peer`, if any; 401 if bindings of two clients
/// match it (a fingerprint binding of one and a name binding of another:
/// the store refuses every other way to bind one certificate twice).
fn cert_client(
    directory: &Directory,
    peer: &PeerCertificate,
) -> Result<Option<ClientRecord>, ApiError> {
    let mut found = directory.by_cert(&peer.presented());
    match found.len() {
        0 | 1 => Ok(found.pop()),
        _ => {
            let names: Vec<&str> = found.iter().map(|c| c.name.as_str()).collect();
            tracing::error!(
                clients = ?names,
                cert_sha256 = %peer.sha256,
                "a client certificate matches the bindings of several clients; refused. \
                 Bind each certificate to one client (orgkey client bind|unbind)"
            );
            Err(ApiError::unauthorized())
        }
    }
}

/// Exposes a token's text (for the CLI to print once).
pub fn reveal(token: &SecretString) -> &str {
    token.expose_secret()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_lists_parse_strictly() {
        assert_eq!(
            Scope::parse_list("sign, admin,sign").unwrap(),
            vec![Scope::Sign, Scope::Admin]
        );
        assert!(Scope::parse_list("sign,root").is_err());
        assert!(Scope::parse_list(" , ").is_err());
    }

    #[test]
    fn new_client_tokens_hash_to_the_stored_value() {
        let (rec, token) = new_client("gw-1", &[Scope::Sign], None, false, 7).unwrap();
        let t = reveal(&token);
        let rest = t.strip_prefix("okc_").unwrap();
        let (id, secret) = rest.split_once('_').unwrap();
        assert_eq!(id, rec.client_id);
        assert_eq!(hash_secret(secret), rec.secret_hash);
        assert!(!rec.secret_hash.contains(secret));
        assert!(new_client("bad name", &[Scope::Sign], None, false, 7).is_err());
        assert!(new_client("", &[Scope::Sign], None, false, 7).is_err());
        assert!(new_client("gw", &[Scope::Sign], None, true, 7).is_err());
    }

    #[test]
    fn bindings_from_the_command_line_are_checked_and_canonical() {
        let hash = "AB:".repeat(31) + "AB";
        assert_eq!(
            cert_binding(Some(&hash), None, None).unwrap(),
            Some(CertBinding::Sha256("ab".repeat(32)))
        );
        assert_eq!(cert_binding(None, None, None).unwrap(), None);
        assert!(cert_binding(Some("abcd"), None, None).is_err());
        assert!(cert_binding(Some(&"zz".repeat(32)), None, None).is_err());
        assert_eq!(
            cert_binding(None, Some("CN=Gateway,O=Example"), Some("CN=Client  CA")).unwrap(),
            Some(CertBinding::Name {
                subject: "CN=gateway,O=example".into(),
                issuer: "CN=client ca".into(),
            })
        );
        assert!(cert_binding(None, Some("CN=gw"), None).is_err());
        assert!(cert_binding(None, None, Some("CN=ca")).is_err());
        assert!(cert_binding(Some(&"ab".repeat(32)), Some("CN=gw"), Some("CN=ca")).is_err());
        let e = cert_binding(None, Some("CN = gw"), Some("CN=ca")).unwrap_err();
        assert!(e.starts_with("--cert-subject: "), "{e}");
    }
}
