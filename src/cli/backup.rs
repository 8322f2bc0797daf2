//! `orgkey backup export-keys|inspect|restore-keys|state|restore-state` and
//! `orgkey ignition change|reset`

use super::{clock, load_config, runtime, secrets};
use crate::service::{
    ExportSecrets, RestoreStateOptions, backup_state, change_ignition, export_keys,
    inspect_key_backup, reset_ignition, restore_keys, restore_state,
};
use clap::{Args, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Shortest backup passphrase accepted.
const MIN_BACKUP_PASSPHRASE: usize = 12;

/// Backup commands.
#[derive(Debug, Subcommand)]
pub enum BackupCmd {
    /// Export the org private keys (org key and org cert key), wrapped inside
    /// the token under a key derived from a backup passphrase. A ceremony: it
    /// needs the ignition passphrase AND the security officer PIN.
    ExportKeys(ExportArgs),
    /// Show what a key backup holds (no passphrase needed; not authenticated).
    Inspect {
        /// The backup file.
        file: PathBuf,
    },
    /// Restore a key backup into this appliance's (fresh) token and prove
    /// every key against the certificates before recording it.
    RestoreKeys(RestoreArgs),
    /// Write a state backup: a snapshot of the store, signed by the org
    /// signing subkey in the token and encrypted to the org key.
    State {
        /// Output file (must not exist).
        #[arg(long)]
        out: PathBuf,
        /// Read the ignition passphrase from this file instead of prompting.
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
    },
    /// Restore a state backup (decrypted through the token; refused unless
    /// the org key signed it). Stop `orgkey serve` first.
    ///
    /// The backup's audit chain must continue this store's: restoring an
    /// older backup of this store (a rollback), or one with another history
    /// over a store that has users, certificates or clients, needs
    /// --allow-rollback, and the restore's audit row records what was
    /// discarded.
    RestoreState {
        /// The state backup file.
        #[arg(long = "in")]
        input: PathBuf,
        /// Overwrite a store that already has users, certificates or clients.
        #[arg(long)]
        replace: bool,
        /// Accept a backup whose audit chain lacks rows this store has
        /// (an older backup: every change since it is lost).
        #[arg(long)]
        allow_rollback: bool,
        /// Read the ignition passphrase from this file instead of prompting.
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
    },
}

/// `backup export-keys`
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Output file (default: orgkey-keys-<fingerprint>.backup here; never overwritten).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Read the ignition passphrase from this file instead of prompting.
    #[arg(long)]
    pub passphrase_file: Option<PathBuf>,
    /// Read the security officer PIN from this file instead of prompting.
    #[arg(long)]
    pub so_pin_file: Option<PathBuf>,
    /// Read the backup passphrase from this file instead of prompting (twice).
    #[arg(long)]
    pub backup_passphrase_file: Option<PathBuf>,
}

/// `backup restore-keys`
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The key backup file.
    #[arg(long = "in")]
    pub input: PathBuf,
    /// Replace a different org key recorded in this appliance.
    #[arg(long)]
    pub replace: bool,
    /// Read the ignition passphrase from this file instead of prompting.
    #[arg(long)]
    pub passphrase_file: Option<PathBuf>,
    /// Read the backup passphrase from this file instead of prompting.
    #[arg(long)]
    pub backup_passphrase_file: Option<PathBuf>,
}

/// Ignition passphrase recovery.
#[derive(Debug, Subcommand)]
pub enum IgnitionCmd {
    /// Change the ignition passphrase (needs the current one; C_SetPIN).
    ///
    /// With --url or --token-file the running appliance changes it (so the
    /// passphrase it holds for relogin stays right); without them orgkey
    /// opens the token itself, and a running appliance that still holds the
    /// old passphrase seals itself at its next relogin instead of retrying.
    Change {
        /// Read the current passphrase from this file instead of prompting.
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
        /// Read the new passphrase from this file instead of prompting (twice).
        #[arg(long)]
        new_passphrase_file: Option<PathBuf>,
        #[command(flatten)]
        remote: super::ignite::Remote,
    },
    /// Set a new ignition passphrase with the security officer PIN, for a
    /// lost one (C_InitPIN).
    Reset {
        /// Read the security officer PIN from this file instead of prompting.
        #[arg(long)]
        so_pin_file: Option<PathBuf>,
        /// Read the new passphrase from this file instead of prompting (twice).
        #[arg(long)]
        new_passphrase_file: Option<PathBuf>,
    },
}

pub fn run(config: &Path, cmd: BackupCmd) -> anyhow::Result<ExitCode> {
    if let BackupCmd::Inspect { file } = &cmd {
        let body = inspect_key_backup(file)?;
        println!(
            "key backup of org key {} ({})",
            body.org_key.fingerprint, body.org_key.algorithm
        );
        println!("user ID: {}", body.org_key.user_id);
        println!(
            "made from token {} on {}",
            body.token,
            fmt_secs(body.created)
        );
        println!(
            "key derivation: {} m={} KiB t={} p={}; wrapping: {}",
            body.kdf.alg, body.kdf.m_kib, body.kdf.t, body.kdf.p, body.wrap
        );
        if let Some(c) = &body.org_cert {
            println!("org cert: {} ({})", c.fingerprint, c.source);
        }
        for k in &body.keys {
            println!(
                "key {:8} CKA_ID {} usage {} created {}",
                k.role,
                k.id,
                k.usage,
                fmt_secs(k.created)
            );
        }
        println!("(contents not authenticated: restore-keys checks the MAC with the passphrase)");
        return Ok(ExitCode::SUCCESS);
    }
    let cfg = load_config(config)?;
    let rt = runtime()?;
    let actor = super::cli_actor();
    match cmd {
        BackupCmd::Inspect { .. } => {}
        BackupCmd::ExportKeys(a) => {
            let ignition =
                secrets::obtain(a.passphrase_file.as_deref(), "ignition passphrase", false)?;
            let so_pin = secrets::obtain(a.so_pin_file.as_deref(), "security officer PIN", false)?;
            let backup = secrets::obtain(
                a.backup_passphrase_file.as_deref(),
                "backup passphrase",
                true,
            )?;
            secrets::require_strength(&backup, "backup passphrase", MIN_BACKUP_PASSPHRASE)?;
            let report = rt.block_on(export_keys(
                &cfg,
                ExportSecrets {
                    ignition,
                    so_pin,
                    backup,
                },
                a.out,
                &actor,
                clock(),
            ))?;
            println!(
                "wrote {} ({})",
                report.path.display(),
                report.keys.join(", ")
            );
            println!(
                "keep it and the backup passphrase apart; `orgkey backup restore-keys --in {}` restores it",
                report.path.display()
            );
        }
        BackupCmd::RestoreKeys(a) => {
            let ignition =
                secrets::obtain(a.passphrase_file.as_deref(), "ignition passphrase", false)?;
            let backup = secrets::obtain(
                a.backup_passphrase_file.as_deref(),
                "backup passphrase",
                false,
            )?;
            let fpr = rt.block_on(restore_keys(
                &cfg,
                ignition,
                backup,
                &a.input,
                a.replace,
                &actor,
                clock(),
            ))?;
            println!(
                "restored org key {fpr}: every key signed (or decrypted) a challenge that verified against its certificate"
            );
        }
        BackupCmd::State {
            out,
            passphrase_file,
        } => {
            let ignition =
                secrets::obtain(passphrase_file.as_deref(), "ignition passphrase", false)?;
            let size = rt.block_on(backup_state(&cfg, ignition, &out, &actor, clock()))?;
            println!(
                "wrote {} ({size} bytes of store, signed by the org key and encrypted to it)",
                out.display()
            );
        }
        BackupCmd::RestoreState {
            input,
            replace,
            allow_rollback,
            passphrase_file,
        } => {
            let ignition =
                secrets::obtain(passphrase_file.as_deref(), "ignition passphrase", false)?;
            let report = rt.block_on(restore_state(
                &cfg,
                ignition,
                &input,
                RestoreStateOptions {
                    replace,
                    allow_rollback,
                },
                &actor,
                clock(),
            ))?;
            println!(
                "restored the store ({} bytes) from {}, signed by the org key on {}",
                report.bytes,
                input.display(),
                humantime::format_rfc3339_seconds(report.signed_at)
            );
            if let Some(d) = report.discarded {
                println!("{d}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn fmt_secs(s: i64) -> String {
    humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(s.max(0) as u64),
    )
    .to_string()
}

pub fn run_ignition(config: &Path, cmd: IgnitionCmd) -> anyhow::Result<ExitCode> {
    let cfg = load_config(config)?;
    let rt = runtime()?;
    let actor = super::cli_actor();
    match cmd {
        IgnitionCmd::Change {
            passphrase_file,
            new_passphrase_file,
            remote,
        } => {
            let old = secrets::obtain(
                passphrase_file.as_deref(),
                "current ignition passphrase",
                false,
            )?;
            let new = secrets::obtain(
                new_passphrase_file.as_deref(),
                "new ignition passphrase",
                true,
            )?;
            secrets::require_strength(&new, "ignition passphrase", 10)?;
            if remote.url.is_some() || remote.token_file.is_some() {
                let c = super::ignite::client(config, &remote)?;
                rt.block_on(c.change_passphrase(&old, &new))?;
                println!("ignition passphrase changed by the running appliance");
            } else {
                rt.block_on(change_ignition(&cfg, old, new, &actor, clock()))?;
                println!("ignition passphrase changed");
                eprintln!(
                    "note: an `orgkey serve` already running on this token still holds the old \
                     passphrase for relogin; after a token outage it seals itself and waits to be \
                     ignited with the new one (use --token-file to change it through the running \
                     appliance instead)"
                );
            }
        }
        IgnitionCmd::Reset {
            so_pin_file,
            new_passphrase_file,
        } => {
            let so = secrets::obtain(so_pin_file.as_deref(), "security officer PIN", false)?;
            let new = secrets::obtain(
                new_passphrase_file.as_deref(),
                "new ignition passphrase",
                true,
            )?;
            secrets::require_strength(&new, "ignition passphrase", 10)?;
            rt.block_on(reset_ignition(&cfg, so, new, &actor, clock()))?;
            println!("ignition passphrase reset by the security officer");
        }
    }
    Ok(ExitCode::SUCCESS)
}
