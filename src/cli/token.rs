//! `orgkey token check|bench-sign`

use super::{clock, load_config, runtime, secrets};
use crate::service::{bench_raw_sign, check_token};
use clap::Subcommand;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// Token commands.
#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Print every private key's security attributes; exit 1 if any is readable,
    /// extractable without CKA_WRAP_WITH_TRUSTED, or has usages beyond its role.
    Check {
        /// Read the ignition passphrase from this file instead of prompting.
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
    },
    /// Measure raw C_Sign/s with the org signing subkey on one session (benchmarks).
    BenchSign {
        /// Read the ignition passphrase from this file instead of prompting.
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
        /// How long to measure, in seconds.
        #[arg(long, default_value_t = 3)]
        seconds: u64,
    },
}

fn flag(v: Option<bool>) -> &'static str {
    match v {
        Some(true) => "true",
        Some(false) => "false",
        None => "n/a",
    }
}

pub fn run(config: &Path, cmd: TokenCmd) -> anyhow::Result<ExitCode> {
    let cfg = load_config(config)?;
    let rt = runtime()?;
    match cmd {
        TokenCmd::Check { passphrase_file } => {
            let pass = secrets::obtain(passphrase_file.as_deref(), "ignition passphrase", false)?;
            let report = rt.block_on(check_token(&cfg, pass, clock()))?;
            println!(
                "token {}: {} private key object(s)",
                report.token,
                report.objects.len()
            );
            let mut failed = false;
            for o in &report.objects {
                let role = o.role.map(|r| r.name()).unwrap_or("unknown");
                println!(
                    "\n{} [{}] CKA_ID {} role {}",
                    o.label, o.key_type, o.id, role
                );
                let attrs: Vec<String> = o
                    .attributes
                    .iter()
                    .map(|(n, v)| format!("{n}={}", flag(*v)))
                    .collect();
                println!("  {}", attrs.join(" "));
                for w in &o.warnings {
                    println!("  warning: {w}");
                }
                for p in &o.problems {
                    println!("  PROBLEM: {p}");
                    failed = true;
                }
                if o.problems.is_empty() {
                    println!("  ok");
                }
            }
            if failed {
                println!("\ntoken check FAILED");
                return Ok(ExitCode::FAILURE);
            }
            println!("\ntoken check passed");
        }
        TokenCmd::BenchSign {
            passphrase_file,
            seconds,
        } => {
            let pass = secrets::obtain(passphrase_file.as_deref(), "ignition passphrase", false)?;
            let (n, elapsed) = rt.block_on(bench_raw_sign(
                &cfg,
                pass,
                Duration::from_secs(seconds.max(1)),
                clock(),
            ))?;
            let rate = n as f64 / elapsed.as_secs_f64();
            println!("raw_sign_per_sec {rate:.0}");
            println!(
                "signatures {n} in {:.2} s on one session",
                elapsed.as_secs_f64()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
