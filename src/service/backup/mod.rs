//! Backups: the key backup ceremony (org keys wrapped in the token under an
//! SO-trusted key derived from the backup passphrase, restored into another
//! token with proof), state backups (the store, signed by and encrypted to
//! the org key) and their schedule inside `serve`. One file each.

mod keys;
mod schedule;
mod state;

pub use keys::{ExportReport, ExportSecrets, export_keys, inspect_key_backup, restore_keys};
pub(crate) use schedule::schedule_state_backups;
pub use state::{RestoreStateOptions, RestoreStateReport, backup_state, restore_state};

use super::ServiceError;
use std::path::Path;

/// Writes `bytes` to `path` (mode 0600) without ever leaving a partial file
/// there, and without replacing an existing file.
pub(crate) fn write_new_file_atomically(path: &Path, bytes: &[u8]) -> Result<(), ServiceError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".orgkey-tmp-{}",
        hex::encode(rand::random::<[u8; 8]>())
    ));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        // hard_link fails if the target exists: no clobbering, no partial file.
        std::fs::hard_link(&tmp, path)
    })();
    let _ = std::fs::remove_file(&tmp);
    result.map_err(ServiceError::io(format!("writing {}", path.display())))
}
