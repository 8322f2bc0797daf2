//! HKP keyserver lookups (`GET /pks/lookup`) so that standard OpenPGP
//! clients (`gpg --recv-keys`, `--search-keys`) find the org key and the
//! current keys of managed users, each with its org certification.
//!
//! Searches are exact (an email address, a fingerprint or a 64-bit key ID):
//! no substring search, so the keyserver cannot be used to list the
//! directory. A caller authenticated as a client with the certify scope
//! (bearer token or client certificate) counts as activity of the user it
//! looks up.

use super::auth::{Credentials, Scope, authenticate_if_presented};
use super::shared::{
    AppState, internal, load_org_key, normalize_email, servable_user, store_failed,
};
use super::{ApiError, ApiState};
use crate::openpgp::{OrgKey, UserKey, hkp_index};
use crate::store::UserState;
use axum::extract::Query;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
pub(super) struct LookupQuery {
    op: Option<String>,
    search: Option<String>,
    options: Option<String>,
    // Accepted and ignored (sent by some clients).
    #[allow(dead_code)]
    fingerprint: Option<String>,
    #[allow(dead_code)]
    exact: Option<String>,
}

pub(super) enum Search {
    Email(String),
    Fingerprint(String),
    KeyId(String),
}

pub(super) fn parse_search(s: &str) -> Result<Search, ApiError> {
    let s = s.trim().trim_start_matches('=');
    let hex = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    if hex.len() >= 8 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return match hex.len() {
            40 => Ok(Search::Fingerprint(hex.to_ascii_uppercase())),
            16 => Ok(Search::KeyId(hex.to_ascii_uppercase())),
            _ => Err(ApiError::bad_request(
                "search by full fingerprint (40 hex digits) or 64-bit key ID (16 hex digits); short key IDs are not accepted",
            )),
        };
    }
    normalize_email(s).map(Search::Email).ok_or_else(|| {
        ApiError::bad_request(
            "search must be an email address, a fingerprint or a key ID (exact match only)",
        )
    })
}

fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no key matches")
}

/// Keys matching the search: the org key and published user keys.
async fn find(
    st: &ApiState,
    search: &Search,
    certify_client: bool,
) -> Result<(Option<OrgKey>, Vec<UserKey>), ApiError> {
    let org = load_org_key(st).await?;
    let org_match = org.filter(|o| {
        let fpr = o.fingerprint();
        match search {
            Search::Fingerprint(f) => *f == fpr,
            Search::KeyId(k) => fpr.ends_with(k.as_str()),
            Search::Email(e) => o.emails().contains(e),
        }
    });
    let records = match search {
        Search::Email(e) => match st
            .store
            .user(e)
            .await
            .map_err(store_failed("reading a user failed"))?
        {
            // A row whose user ID is not canonical (stored before that was
            // required) or whose address is reserved is not served.
            Some(u) if u.state == UserState::Active && !servable_user(st, &u).await? => Vec::new(),
            Some(u) if u.state == UserState::Active => {
                if certify_client {
                    st.store
                        .touch_user(e)
                        .await
                        .map_err(store_failed("recording activity failed"))?;
                }
                st.store
                    .published_user_keys(Some(&u.fingerprint), None)
                    .await
                    .map_err(store_failed("reading a user key failed"))?
            }
            Some(_) | None => Vec::new(),
        },
        Search::Fingerprint(f) => st
            .store
            .published_user_keys(Some(f), None)
            .await
            .map_err(store_failed("reading a user key failed"))?,
        Search::KeyId(k) => st
            .store
            .published_user_keys(None, Some(k))
            .await
            .map_err(store_failed("reading a user key failed"))?,
    };
    let mut keys = Vec::with_capacity(records.len());
    for r in records {
        keys.push(
            UserKey::parse(r.cert.as_bytes()).map_err(internal("stored user key is unreadable"))?,
        );
    }
    Ok((org_match, keys))
}

/// `GET /pks/lookup?op=get|index&search=...`.
pub(super) async fn lookup(
    axum::extract::State(st): AppState,
    creds: Credentials,
    query: Result<Query<LookupQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let certify_client = authenticate_if_presented(&st, &creds, None)
        .await?
        .is_some_and(|client| client.scopes.contains(&Scope::Certify));
    let Query(q) =
        query.map_err(|e| ApiError::bad_request(format!("bad query: {}", e.body_text())))?;
    let search = q
        .search
        .as_deref()
        .ok_or_else(|| ApiError::bad_request("missing search parameter"))
        .and_then(parse_search)?;
    match q.op.as_deref() {
        Some("get") => {
            let (org, users) = find(&st, &search, certify_client).await?;
            let mut armored = String::new();
            if let Some(o) = org {
                armored.push_str(
                    &o.armored()
                        .map_err(internal("armoring the org key failed"))?,
                );
            }
            for u in users {
                armored.push_str(
                    &u.armored()
                        .map_err(internal("armoring a user key failed"))?,
                );
            }
            if armored.is_empty() {
                return Err(not_found());
            }
            Ok(([(header::CONTENT_TYPE, "application/pgp-keys")], armored).into_response())
        }
        Some("index") | Some("vindex") => {
            let mr = q
                .options
                .as_deref()
                .is_some_and(|o| o.split(',').any(|x| x.trim() == "mr"));
            if !mr {
                return Err(ApiError::new(
                    StatusCode::NOT_IMPLEMENTED,
                    "not_implemented",
                    "only the machine-readable index is served: add options=mr",
                ));
            }
            let (org, users) = find(&st, &search, certify_client).await?;
            let now = st.clock.now();
            let mut entries = Vec::new();
            if let Some(o) = org {
                entries.push(o.hkp_index_entry(now));
            }
            entries.extend(users.iter().map(|u| u.hkp_index_entry(now)));
            if entries.is_empty() {
                return Err(not_found());
            }
            Ok((
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                hkp_index(&entries),
            )
                .into_response())
        }
        Some(other) => Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "not_implemented",
            format!("operation {other:?} is not supported (get, index)"),
        )),
        None => Err(ApiError::bad_request("missing op parameter (get or index)")),
    }
}
