//! Process hardening for `orgkey serve`, which holds the ignition
//! passphrase in memory for relogin: no core dumps (a crash must not write
//! the passphrase, or anything the token handed out, to disk), not dumpable
//! (other processes of the same user cannot ptrace it or read its memory
//! through /proc), and the held passphrase locked in RAM so it is never
//! swapped out, where the memory-lock limit allows.

use super::ServiceError;
use rustix::process::{DumpableBehavior, Resource, Rlimit};
use secrecy::{ExposeSecret, SecretString};

/// Sets the core file size limit to zero (soft and hard, so it cannot be
/// raised again) and marks the process not dumpable. Called once at the
/// start of `serve`, before any secret is read.
pub fn disable_core_dumps() -> Result<(), ServiceError> {
    rustix::process::setrlimit(
        Resource::Core,
        Rlimit {
            current: Some(0),
            maximum: Some(0),
        },
    )
    .map_err(|e| ServiceError::io("disabling core dumps (RLIMIT_CORE)")(e.into()))?;
    rustix::process::set_dumpable_behavior(DumpableBehavior::NotDumpable).map_err(|e| {
        ServiceError::io("marking the process not dumpable (PR_SET_DUMPABLE)")(e.into())
    })
}

/// The ignition passphrase held for relogin: zeroized on drop (it is a
/// `SecretString`), and its bytes locked in RAM while held.
pub(crate) struct HeldPassphrase {
    secret: SecretString,
    locked: bool,
}

impl HeldPassphrase {
    /// Holds `secret`, locking its pages in RAM if the platform allows
    /// (RLIMIT_MEMLOCK); a failure to lock is logged, not fatal: core dumps
    /// are off either way.
    pub(crate) fn new(secret: SecretString) -> Self {
        let bytes = secret.expose_secret().as_bytes();
        let locked = !bytes.is_empty()
            // SAFETY: the range is the string's own live allocation; mlock
            // only changes the paging of the pages that contain it.
            && match unsafe { rustix::mm::mlock(bytes.as_ptr() as *mut _, bytes.len()) } {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(error = %e, "could not lock the held ignition passphrase in RAM (RLIMIT_MEMLOCK?); it may be swapped out");
                    false
                }
            };
        Self { secret, locked }
    }

    /// The passphrase.
    pub(crate) fn secret(&self) -> &SecretString {
        &self.secret
    }
}

impl Drop for HeldPassphrase {
    fn drop(&mut self) {
        if self.locked {
            let bytes = self.secret.expose_secret().as_bytes();
            // SAFETY: the same range that was locked, still allocated (the
            // secret is zeroized and freed after this).
            let _ = unsafe { rustix::mm::munlock(bytes.as_ptr() as *mut _, bytes.len()) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_passphrase_keeps_its_value() {
        let held = HeldPassphrase::new(SecretString::from("correct horse battery staple"));
        assert_eq!(
            held.secret().expose_secret(),
            "correct horse battery staple"
        );
    }
}
