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

/// File descriptors `serve` needs besides its client connections: the
/// store (a few SQLite connections, each with its database, WAL and
/// shared-memory files), the token module's files or sockets, the listener,
/// the log, a state backup being written. Generous on purpose.
const FDS_BESIDES_CONNECTIONS: u64 = 256;

/// Raises the soft limit on open files (RLIMIT_NOFILE) as far as
/// `max_connections` client connections and orgkey's own files need (never
/// past the hard limit), and returns how many client connections fit:
/// `max_connections`, or fewer, with a warning, when the hard limit is
/// lower. A connection cap above what the process may open would not
/// protect it: accepting and opening the store would fail first.
pub fn fit_connections_to_fd_limit(max_connections: usize) -> usize {
    let wanted = (max_connections as u64).saturating_add(FDS_BESIDES_CONNECTIONS);
    let limit = rustix::process::getrlimit(Resource::Nofile);
    // None is "unlimited".
    let target = limit.maximum.map_or(wanted, |hard| wanted.min(hard));
    let available = match limit.current {
        Some(soft) if soft < target => {
            let raised = Rlimit {
                current: Some(target),
                maximum: limit.maximum,
            };
            match rustix::process::setrlimit(Resource::Nofile, raised) {
                Ok(()) => target,
                Err(e) => {
                    tracing::warn!(error = %e, soft, target, "could not raise the open-file limit (RLIMIT_NOFILE)");
                    soft
                }
            }
        }
        Some(soft) => soft,
        None => u64::MAX,
    };
    if available >= wanted {
        return max_connections;
    }
    let reserve = FDS_BESIDES_CONNECTIONS.min(available / 2);
    let fits = usize::try_from(available - reserve)
        .unwrap_or(usize::MAX)
        .clamp(1, max_connections);
    tracing::warn!(
        open_file_limit = available,
        max_connections,
        serving = fits,
        "the open-file limit leaves room for fewer client connections than [server] \
         max_connections: raise it (LimitNOFILE= in a systemd unit, ulimit -n) or lower \
         max_connections"
    );
    fits
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
