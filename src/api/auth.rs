//! API clients and bearer tokens.
//!
//! A token is `okc_<client id>_<secret>`. The store keeps the client id and
//! the SHA-256 of the secret (the secret has 256 bits of entropy, so a plain
//! hash is enough); lookup is by id and the hash comparison is constant-time.

use super::ApiError;
use crate::store::{ClientRecord, Store};
use axum::http::HeaderMap;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
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
    };
    Ok((rec, token))
}

/// Checks the bearer token in `headers`, that the client holds `scope`
/// (`None`: any valid client), and the client's rate limit.
pub async fn authenticate(
    st: &super::ApiState,
    headers: &HeaderMap,
    scope: Option<Scope>,
) -> Result<Client, ApiError> {
    let client = authenticate_in(&st.store, headers, scope).await?;
    if let Err(wait) = st.limiter.check(&client.name, std::time::Instant::now()) {
        let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
        return Err(ApiError::new(
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("this client's request rate limit is exhausted; retry in {secs} s"),
        )
        .retry_after(secs));
    }
    Ok(client)
}

async fn authenticate_in(
    store: &Store,
    headers: &HeaderMap,
    scope: Option<Scope>,
) -> Result<Client, ApiError> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(ApiError::unauthorized)?;
    let token = value
        .strip_prefix("Bearer ")
        .map(str::trim)
        .and_then(|t| t.strip_prefix(PREFIX))
        .ok_or_else(ApiError::unauthorized)?;
    let (client_id, secret) = token.split_once('_').ok_or_else(ApiError::unauthorized)?;
    if client_id.len() != 16 || !client_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::unauthorized());
    }
    let rec = store.client_by_id(client_id).await.map_err(|e| {
        tracing::error!(error = %e, "client lookup failed");
        ApiError::internal()
    })?;
    let Some(rec) = rec else {
        return Err(ApiError::unauthorized());
    };
    let presented = hash_secret(secret);
    if !bool::from(presented.as_bytes().ct_eq(rec.secret_hash.as_bytes())) {
        tracing::warn!(client = %rec.name, "bearer token with a wrong secret");
        return Err(ApiError::unauthorized());
    }
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
    Ok(Client {
        name: rec.name,
        scopes,
    })
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
        let (rec, token) = new_client("gw-1", &[Scope::Sign], 7).unwrap();
        let t = reveal(&token);
        let rest = t.strip_prefix("okc_").unwrap();
        let (id, secret) = rest.split_once('_').unwrap();
        assert_eq!(id, rec.client_id);
        assert_eq!(hash_secret(secret), rec.secret_hash);
        assert!(!rec.secret_hash.contains(secret));
        assert!(new_client("bad name", &[Scope::Sign], 7).is_err());
        assert!(new_client("", &[Scope::Sign], 7).is_err());
    }
}
