//! `orgkey init`

use super::secrets;
use crate::service::{InitRequest, init_appliance};
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

/// Minimum length of a new ignition passphrase or SO PIN.
const MIN_SECRET: usize = 10;

/// Set up a new appliance.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Data directory for config, store and (with --create-token) the token.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// A managed mail domain (repeat for several).
    #[arg(long = "domain")]
    pub domains: Vec<String>,
    /// Create the appliance's own software token inside the data dir
    /// (development, CI, evaluation). Works for profiles that carry a
    /// [software_token] recipe: softhsm2 and kryoptic.
    #[arg(long, visible_alias = "create-softhsm-token")]
    pub create_token: bool,
    /// Token label to create or to use.
    #[arg(long, default_value = "orgkey")]
    pub token_label: String,
    /// HSM profile (built-in name such as softhsm2, kryoptic, yubihsm2, thales-luna, or a .toml path).
    #[arg(long, default_value = "softhsm2")]
    pub profile: String,
    /// PKCS#11 module to load instead of the profile's usual paths (written
    /// into the config as [token] module).
    #[arg(long)]
    pub module: Option<PathBuf>,
    /// Listen address written into the config.
    #[arg(long, default_value = crate::config::DEFAULT_LISTEN)]
    pub listen: String,
    /// Read the new ignition passphrase from this file instead of prompting.
    #[arg(long)]
    pub ignition_passphrase_file: Option<PathBuf>,
    /// Read the new security officer PIN from this file instead of prompting.
    #[arg(long)]
    pub so_pin_file: Option<PathBuf>,
    /// Keep the store in this PostgreSQL database, shared with the
    /// cluster's other nodes (postgres://user@host:port/db; the database
    /// must exist). Never put a password in the URL: use
    /// --store-password-file. A store that holds an org key already is
    /// joined, never given a second one.
    #[arg(long, value_name = "URL")]
    pub store_url: Option<String>,
    /// The file holding the PostgreSQL password (written into the config as
    /// [store] password_file; the password itself is not copied).
    #[arg(long, value_name = "FILE", requires = "store_url")]
    pub store_password_file: Option<PathBuf>,
    /// This node's id in the audit log and the cluster (default: the host
    /// name).
    #[arg(long, value_name = "NAME")]
    pub node_id: Option<String>,
}

pub fn run(a: InitArgs) -> anyhow::Result<ExitCode> {
    // Checked before anything is prompted for or created.
    if let Some(url) = &a.store_url {
        crate::config::check_store_url(url)?;
    }
    if let Some(id) = &a.node_id {
        crate::config::check_node_id(id)?;
    }
    let (pin, so) = if a.create_token {
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
        create_token: a.create_token,
        module: a.module.map(std::path::absolute).transpose()?,
        token_label: a.token_label,
        profile: a.profile,
        listen: a.listen,
        ignition_passphrase: pin,
        so_pin: so,
        actor: super::cli_actor(),
        store_url: a.store_url,
        store_password_file: a.store_password_file.map(std::path::absolute).transpose()?,
        node_id: a.node_id,
    })?;
    println!("wrote {}", res.config_path.display());
    if let Some(serial) = res.token_serial {
        println!("created the appliance's token (serial {serial})");
    }
    match res.joined {
        Some(fpr) => println!(
            "joined a store that holds org key {fpr}: bring it into this node's token with \
             `orgkey backup restore-keys` from a key backup (export ORGKEY_CONFIG={} first); \
             until then this node stays sealed",
            res.config_path.display()
        ),
        None => println!(
            "next: export ORGKEY_CONFIG={} and run `orgkey org-key generate --uid ...`",
            res.config_path.display()
        ),
    }
    Ok(ExitCode::SUCCESS)
}
