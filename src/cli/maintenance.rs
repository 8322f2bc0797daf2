//! `orgkey maintenance run`

use super::{clock, load_config, runtime, secrets};
use crate::service::run_maintenance;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Maintenance commands.
#[derive(Debug, Subcommand)]
pub enum MaintenanceCmd {
    /// Run maintenance once now: renew the org key if it expires soon, and
    /// the certifications of active users that expire before the next
    /// scheduled run (plus the margin). Needs the ignition passphrase.
    Run(RunArgs),
}

/// `maintenance run`
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Read the ignition passphrase from this file instead of prompting.
    #[arg(long)]
    pub passphrase_file: Option<PathBuf>,
    /// No progress bar (also off when stderr is not a terminal).
    #[arg(long)]
    pub quiet: bool,
}

pub fn run(config: &Path, cmd: MaintenanceCmd) -> anyhow::Result<ExitCode> {
    let cfg = load_config(config)?;
    let rt = runtime()?;
    match cmd {
        MaintenanceCmd::Run(a) => {
            let pass = secrets::obtain(a.passphrase_file.as_deref(), "ignition passphrase", false)?;
            let bar = if a.quiet {
                ProgressBar::hidden()
            } else {
                ProgressBar::new(0)
            };
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} renewing certifications {bar:40} {pos}/{len} keys ({per_sec}, eta {eta})",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            let progress = |done: u64, total: u64| {
                bar.set_length(total);
                bar.set_position(done);
            };
            let report = rt.block_on(run_maintenance(
                &cfg,
                pass,
                &super::cli_actor(),
                clock(),
                &progress,
            ));
            bar.finish_and_clear();
            let report = report?;
            if let Some(until) = report.org_key_renewed_until {
                println!(
                    "org key renewed: now expires {}",
                    humantime::format_rfc3339_seconds(
                        std::time::UNIX_EPOCH + std::time::Duration::from_secs(until)
                    )
                );
            }
            println!(
                "{} keys due, {} renewed ({} user IDs certified), {} refused, {} changed concurrently, {} inactive users skipped",
                report.due,
                report.renewed,
                report.certifications,
                report.refused,
                report.concurrent,
                report.inactive_users
            );
            if report.skipped_user_ids > 0 {
                println!(
                    "{} stored user(s) no longer certified: user ID not in canonical form or a \
                     reserved address (see the log; remove them or have the users submit a key \
                     with a canonical user ID)",
                    report.skipped_user_ids
                );
            }
            println!(
                "{} user certificates renewed ({} failed), {} CRLs renewed, {} stale issuances abandoned",
                report.user_certs_renewed,
                report.user_certs_failed,
                report.crls_refreshed,
                report.stale_issuances
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
