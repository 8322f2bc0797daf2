//! Changing or resetting the ignition passphrase from the CLI (the token's
//! user PIN), audited whether it works or not.

use super::{ServiceError, open_store, open_token};
use crate::clock::Clock;
use crate::config::Config;
use crate::store::AuditEvent;
use crate::task::TaskFailed;
use secrecy::SecretString;
use std::sync::Arc;

/// Runs a PIN operation on the token and audits it as `operation`, whether
/// it worked or not.
async fn audited_pin_change(
    cfg: &Config,
    operation: &str,
    actor: &str,
    clock: Arc<dyn Clock>,
    op: impl FnOnce(&crate::token::Token) -> Result<(), crate::token::TokenError> + Send + 'static,
) -> Result<(), ServiceError> {
    let store = open_store(cfg, clock).await?;
    let token_cfg = cfg.clone();
    let res = tokio::task::spawn_blocking(move || -> Result<(), ServiceError> {
        Ok(op(&open_token(&token_cfg)?)?)
    })
    .await
    .map_err(TaskFailed::doing("changing the ignition passphrase"))?;
    let mut ev = AuditEvent::new(actor, operation, if res.is_ok() { "ok" } else { "failed" });
    if let Err(e) = &res {
        ev = ev.detail(e.to_string());
    }
    store.append_audit(&[ev]).await?;
    store.close().await;
    res
}

/// `orgkey ignition change`.
pub async fn change_ignition(
    cfg: &Config,
    old: SecretString,
    new: SecretString,
    actor: &str,
    clock: Arc<dyn Clock>,
) -> Result<(), ServiceError> {
    audited_pin_change(cfg, "ignition-change", actor, clock, move |t| {
        t.change_user_pin(&old, &new)
    })
    .await
}

/// `orgkey ignition reset` (security officer).
pub async fn reset_ignition(
    cfg: &Config,
    so_pin: SecretString,
    new: SecretString,
    actor: &str,
    clock: Arc<dyn Clock>,
) -> Result<(), ServiceError> {
    audited_pin_change(cfg, "ignition-reset", actor, clock, move |t| {
        t.reset_user_pin(&so_pin, &new)
    })
    .await
}
