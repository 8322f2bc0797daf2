//! orgkey: an HSM-backed Organization Key appliance.
//!
//! The organization's OpenPGP Organization Key lives in a PKCS#11 token; the
//! appliance unlocks the token at ignition, signs for authenticated clients over
//! a small HTTP API and keeps a hash-chained audit log of everything it signs.
//! Private key material never leaves the token in the clear.
//!
//! Layering (see `shared/ARCHITECTURE.md`): `cli -> service -> {api,
//! maintenance} -> {ca, backup, reserved} -> {openpgp, x509, store} -> signer
//! <- token`: `ca` is the org cert at work (issuance, revocation, CRLs),
//! `backup` the key backup file format, `reserved` the organization's own
//! addresses. `config`, `clock`, `task` (failed background tasks) and `text`
//! (the characters that never pass unescaped) are leaves anyone may use;
//! `fuzzing` holds the fuzz targets' entry points. `metrics` (the process's
//! instruments, rendered for Prometheus) is a leaf too: the layers that see
//! an event record it there. Only `token` uses cryptoki, only `openpgp` uses
//! sequoia, only `x509` uses the X.509 crates, only `api` uses the HTTP
//! stack, only `metrics` uses prometheus-client.

#![forbid(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod api;
pub mod backup;
pub mod ca;
pub mod cli;
pub mod clock;
pub mod config;
#[doc(hidden)]
pub mod fuzzing;
pub mod maintenance;
pub mod metrics;
pub mod openpgp;
pub mod reserved;
pub mod service;
pub mod signer;
pub mod store;
pub mod task;
pub mod text;
pub mod token;
pub mod x509;

/// Crash hook for the crash-safety tests: in debug builds, when the
/// environment variable `ORGKEY_CRASH_AT` names `point`, the process aborts
/// on the spot (no unwinding, no cleanup: like kill -9). Release builds
/// compile it to nothing.
#[inline]
pub fn failpoint(point: &str) {
    #[cfg(debug_assertions)]
    if std::env::var("ORGKEY_CRASH_AT").is_ok_and(|p| p == point) {
        eprintln!("failpoint {point}: aborting");
        std::process::abort();
    }
    #[cfg(not(debug_assertions))]
    let _ = point;
}

/// Failure hook for the failure-path tests: in debug builds, when the
/// environment variable `ORGKEY_FAIL_AT` names `point`, returns an error for
/// the caller to fail that step with, as if it had failed for real (unlike
/// [`failpoint`], the process goes on and cleans up after itself). Release
/// builds compile it to `Ok(())`.
#[inline]
pub fn fail_at(point: &str) -> std::io::Result<()> {
    #[cfg(debug_assertions)]
    if std::env::var("ORGKEY_FAIL_AT").is_ok_and(|p| p == point) {
        return Err(std::io::Error::other(format!(
            "failure injected at {point} (ORGKEY_FAIL_AT)"
        )));
    }
    #[cfg(not(debug_assertions))]
    let _ = point;
    Ok(())
}
