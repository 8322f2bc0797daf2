//! `orgkey serve`

use super::{clock, load_config, runtime, secrets};
use crate::service::{ServeOptions, serve};
use clap::Args;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Run the HTTP API.
///
/// The process turns core dumps off and marks itself not dumpable before it
/// reads any secret: it holds the ignition passphrase for relogin.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Unattended start: ignite with the passphrase in this file (logged as a warning).
    #[arg(long)]
    pub ignition_passphrase_file: Option<PathBuf>,
    /// Allow plaintext HTTP on a non-loopback address (only behind a TLS-terminating proxy).
    #[arg(long)]
    pub insecure_plaintext: bool,
    /// Listen address, overriding [server] listen (e.g. 127.0.0.1:0 for a free port).
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
}

pub fn run(config: &Path, a: ServeArgs) -> anyhow::Result<ExitCode> {
    // First of all, before a passphrase file is read.
    crate::service::disable_core_dumps()?;
    let cfg = load_config(config)?;
    let pass = match &a.ignition_passphrase_file {
        Some(p) => Some(secrets::from_file(p, "ignition passphrase")?),
        None => None,
    };
    let rt = runtime()?;
    let result = rt.block_on(serve(
        cfg,
        ServeOptions {
            ignition_passphrase: pass,
            insecure_plaintext: a.insecure_plaintext,
            listen: a.listen,
        },
        clock(),
    ));
    // A token call stuck on a lost HSM link never returns; do not let it
    // keep the process from exiting (the store is closed by now).
    rt.shutdown_timeout(std::time::Duration::from_secs(5));
    result?;
    Ok(ExitCode::SUCCESS)
}
