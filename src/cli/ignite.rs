//! `orgkey ignite` and `orgkey seal`: talk to a running appliance.

use super::{runtime, secrets};
use crate::api::client::ApiClient;
use anyhow::Context;
use clap::Args;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Where the appliance is and how to authenticate.
#[derive(Debug, Args)]
pub struct Remote {
    /// Appliance URL (default: from the config's listen address).
    #[arg(long)]
    pub url: Option<String>,
    /// File holding an admin client's bearer token (or set ORGKEY_TOKEN).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// CA certificate (PEM) to trust for an https URL.
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// TLS client certificate to present: a PEM file with its private key
    /// and certificate (for an admin client added with --require-cert).
    #[arg(long, value_name = "PEM")]
    pub client_cert: Option<PathBuf>,
}

/// `orgkey ignite`
#[derive(Debug, Args)]
pub struct IgniteArgs {
    #[command(flatten)]
    pub remote: Remote,
    /// Read the ignition passphrase from this file instead of prompting.
    #[arg(long)]
    pub passphrase_file: Option<PathBuf>,
}

/// `orgkey seal`
#[derive(Debug, Args)]
pub struct SealArgs {
    #[command(flatten)]
    pub remote: Remote,
}

pub(super) fn client(config: &Path, r: &Remote) -> anyhow::Result<ApiClient> {
    let url = match &r.url {
        Some(u) => u.clone(),
        None => {
            let cfg = crate::config::Config::load(config)
                .context("no --url given and the config cannot be read")?;
            let mut addr = cfg.server.listen;
            if addr.ip().is_unspecified() {
                addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            let scheme = if cfg.server.tls.is_some() {
                "https"
            } else {
                "http"
            };
            format!("{scheme}://{addr}")
        }
    };
    let token = match (&r.token_file, std::env::var("ORGKEY_TOKEN")) {
        (Some(f), _) => secrets::from_file(f, "bearer token")?,
        (None, Ok(t)) if !t.is_empty() => secrecy::SecretString::from(t),
        _ => anyhow::bail!("an admin bearer token is needed: --token-file FILE or ORGKEY_TOKEN"),
    };
    Ok(ApiClient::new(
        &url,
        token,
        r.ca_file.as_deref(),
        r.client_cert.as_deref(),
    )?)
}

pub fn run_ignite(config: &Path, a: IgniteArgs) -> anyhow::Result<ExitCode> {
    let c = client(config, &a.remote)?;
    let pass = secrets::obtain(a.passphrase_file.as_deref(), "ignition passphrase", false)?;
    let rt = runtime()?;
    let v = match rt.block_on(c.ignite(&pass)) {
        Ok(v) => v,
        Err(crate::api::client::ClientError::Api { code, message, .. })
            if code == "already_ignited" =>
        {
            // Nothing to do, and nothing was proven: say so plainly.
            println!("{message}");
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) => return Err(e.into()),
    };
    match v["org_key"].as_str() {
        Some(f) => println!("ignited; org key {f}"),
        None => println!("ignited"),
    }
    Ok(ExitCode::SUCCESS)
}

pub fn run_seal(config: &Path, a: SealArgs) -> anyhow::Result<ExitCode> {
    let c = client(config, &a.remote)?;
    let rt = runtime()?;
    rt.block_on(c.seal())?;
    println!("sealed");
    Ok(ExitCode::SUCCESS)
}
