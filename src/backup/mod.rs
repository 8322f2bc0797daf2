//! Backups: the key backup file format (the wrap and unwrap happen in the
//! token, driven by the service layer) and state backups of the store,
//! streamed as OpenPGP messages encrypted to the org key.

pub mod keyfile;

/// Backup errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    /// The file is not a backup, is truncated, or is of another version.
    #[error("{0}")]
    Format(String),
    /// The MAC does not verify: wrong passphrase or a modified file.
    #[error("the backup passphrase is wrong, or the backup file was modified")]
    Authentication,
}
