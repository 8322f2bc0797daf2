//! `orgkey init`

use super::secrets;
use crate::service::{InitRequest, init_appliance};
use anyhow::bail;
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

/// Minimum length of a new ignition passphrase or SO PIN.
const MIN_SECRET: usize = 10;

/// Set up a new appliance.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Data directory for config, store and (with --create-softhsm-token) the token.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// A managed mail domain (repeat for several).
    #[arg(long = "domain")]
    pub domains: Vec<String>,
    /// Create a SoftHSM2 token inside the data dir (development, CI, evaluation).
    #[arg(long)]
    pub create_softhsm_token: bool,
    /// Token label to create or to use.
    #[arg(long, default_value = "orgkey")]
    pub token_label: String,
    /// HSM profile (built-in name such as softhsm2, yubihsm2, thales-luna, or a .toml path).
    #[arg(long, default_value = "softhsm2")]
    pub profile: String,
    /// Listen address written into the config.
    #[arg(long, default_value = crate::config::DEFAULT_LISTEN)]
    pub listen: String,
    /// Read the new ignition passphrase from this file instead of prompting.
    #[arg(long)]
    pub ignition_passphrase_file: Option<PathBuf>,
    /// Read the new security officer PIN from this file instead of prompting.
    #[arg(long)]
    pub so_pin_file: Option<PathBuf>,
}

pub fn run(a: InitArgs) -> anyhow::Result<ExitCode> {
    if a.create_softhsm_token && a.profile != "softhsm2" {
        bail!(
            "--create-softhsm-token needs --profile softhsm2; set up real HSM tokens with the vendor's tools"
        );
    }
    let (pin, so) = if a.create_softhsm_token {
        let pin = secrets::obtain(
            a.ignition_passphrase_file.as_deref(),
            "new ignition passphrase",
            true,
        )?;
        secrets::require_strength(&pin, "ignition passphrase", MIN_SECRET)?;
        let so = secrets::obtain(a.so_pin_file.as_deref(), "new security officer PIN", true)?;
        secrets::require_strength(&so, "security officer PIN", MIN_SECRET)?;
        (Some(pin), Some(so))
    } else {
        (None, None)
    };
    let res = init_appliance(InitRequest {
        data_dir: a.data_dir,
        domains: a.domains,
        create_softhsm_token: a.create_softhsm_token,
        token_label: a.token_label,
        profile: a.profile,
        listen: a.listen,
        ignition_passphrase: pin,
        so_pin: so,
        actor: super::cli_actor(),
    })?;
    println!("wrote {}", res.config_path.display());
    if let Some(serial) = res.token_serial {
        println!("created SoftHSM2 token (serial {serial})");
    }
    println!(
        "next: export ORGKEY_CONFIG={} and run `orgkey org-key generate --uid ...`",
        res.config_path.display()
    );
    Ok(ExitCode::SUCCESS)
}
