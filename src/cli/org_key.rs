//! `orgkey org-key generate|show|export`

use super::{clock, load_config, runtime, secrets};
use crate::config::OrgKeyAlgorithm;
use crate::service::{GenerateRequest, generate_org_key, org_key_summary};
use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// Org key commands.
#[derive(Debug, Subcommand)]
pub enum OrgKeyCmd {
    /// Generate the org key inside the token (certify-only primary, signing and encryption subkeys).
    Generate(GenerateArgs),
    /// Show fingerprint, algorithm, expiry and token object ids.
    Show,
    /// Write the armored public certificate to stdout or --out.
    Export {
        /// Output file (default stdout).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// `org-key generate`
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Key algorithm.
    #[arg(long, value_enum, default_value = "p256")]
    pub algorithm: OrgKeyAlgorithm,
    /// User ID, e.g. "Example Org Key <orgkey@example.com>".
    #[arg(long)]
    pub uid: String,
    /// Validity: a duration such as 2y, 18months, 90d, or "never".
    #[arg(long, default_value = "2y")]
    pub expires: String,
    /// Replace an existing org key (every user certification must then be redone).
    #[arg(long)]
    pub replace: bool,
    /// With --replace: confirm replacing an org key that certifies users.
    #[arg(long, requires = "replace")]
    pub yes: bool,
    /// Create the keys with CKA_EXTRACTABLE false (for HSMs whose own backup scheme is used).
    #[arg(long)]
    pub non_exportable: bool,
    /// Read the ignition passphrase from this file instead of prompting.
    #[arg(long)]
    pub passphrase_file: Option<PathBuf>,
}

fn parse_expiry(s: &str) -> anyhow::Result<Option<Duration>> {
    if s == "never" {
        return Ok(None);
    }
    let d = humantime::parse_duration(s).with_context(|| {
        format!("--expires {s:?}: use a duration like 2y, 18months, 90d, or never")
    })?;
    if d < Duration::from_secs(86_400) {
        bail!("--expires {s:?}: an org key valid for less than a day makes no sense");
    }
    if d > Duration::from_secs(100 * 366 * 86_400) {
        bail!("--expires {s:?}: more than 100 years; use never");
    }
    Ok(Some(d))
}

fn fmt_time(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

pub fn run(config: &Path, cmd: OrgKeyCmd) -> anyhow::Result<ExitCode> {
    let cfg = load_config(config)?;
    let rt = runtime()?;
    match cmd {
        OrgKeyCmd::Generate(a) => {
            let validity = parse_expiry(&a.expires)?;
            let pass = secrets::obtain(a.passphrase_file.as_deref(), "ignition passphrase", false)?;
            let req = GenerateRequest {
                algorithm: a.algorithm,
                user_id: a.uid,
                validity,
                replace: a.replace,
                exportable: if a.non_exportable { Some(false) } else { None },
                confirmed: a.yes,
                actor: super::cli_actor(),
            };
            if a.replace {
                eprintln!(
                    "warning: replacing the org key. Certifications made by the old key are not renewed by it \
                     any more and state backups encrypted to it need the old key to decrypt."
                );
            }
            let rec = rt.block_on(generate_org_key(&cfg, pass, req, clock()))?;
            println!("generated org key {} ({})", rec.fingerprint, rec.algorithm);
            if a.replace {
                println!(
                    "users are re-certified by the new key at the next maintenance run \
                     (run `orgkey maintenance run` to do it now); a running `orgkey serve` must be \
                     sealed and ignited again to use the new key"
                );
            }
            println!("user ID: {}", rec.user_id);
            println!(
                "keys are {}",
                if rec.exportable {
                    "exportable only under a security-officer-trusted wrapping key (CKA_WRAP_WITH_TRUSTED)"
                } else {
                    "non-exportable (CKA_EXTRACTABLE false): use the HSM vendor's backup scheme"
                }
            );
            let profile = &cfg.token.profile;
            if !rec.exportable && !a.non_exportable && !profile.keys.wrap_with_trusted {
                println!(
                    "(the {} HSM profile says this token does not accept CKA_WRAP_WITH_TRUSTED, \
                     [keys] wrap_with_trusted = false, so its keys are never exportable)",
                    profile.name
                );
            }
        }
        OrgKeyCmd::Show => {
            let Some(s) = rt.block_on(org_key_summary(&cfg, clock()))? else {
                bail!("no org key yet: run `orgkey org-key generate`");
            };
            println!("fingerprint:      {}", s.org.fingerprint());
            println!(
                "algorithm:        {} ({})",
                s.org.algorithm(),
                s.record.algorithm
            );
            for uid in s.org.user_ids() {
                println!("user ID:          {uid}");
            }
            println!("created:          {}", fmt_time(s.org.created()));
            println!(
                "expires:          {}",
                s.expires.map(fmt_time).unwrap_or_else(|| "never".into())
            );
            let sk = s.org.signing_subkey();
            let ek = s.org.encryption_subkey();
            println!("signing subkey:   {} ({})", sk.fingerprint, sk.algorithm);
            println!("encryption subkey: {} ({})", ek.fingerprint, ek.algorithm);
            println!(
                "token CKA_IDs:    certify {}, sign {}, encrypt {}",
                s.record.primary_id, s.record.signing_id, s.record.encryption_id
            );
            println!(
                "exportable:       {}",
                if s.record.exportable {
                    "under a trusted wrapping key only"
                } else {
                    "no"
                }
            );
        }
        OrgKeyCmd::Export { out } => {
            let Some(s) = rt.block_on(org_key_summary(&cfg, clock()))? else {
                bail!("no org key yet: run `orgkey org-key generate`");
            };
            let armored = s.org.armored()?;
            match out {
                Some(p) => {
                    std::fs::write(&p, armored)
                        .with_context(|| format!("writing {}", p.display()))?;
                    eprintln!("wrote {}", p.display());
                }
                None => print!("{armored}"),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
