//! The command line: argument parsing (clap), prompts and output. Each
//! command group has its own file; the work happens in [`crate::service`].
//! This is the only module that uses `anyhow`.

mod audit;
mod backup;
mod client;
mod cluster;
mod escape;
mod ignite;
mod init;
mod maintenance;
mod org_cert;
mod org_key;
mod secrets;
mod serve;
mod token;
mod users;

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// orgkey: the organization's OpenPGP key, kept in an HSM, signing on request.
#[derive(Debug, Parser)]
#[command(
    name = "orgkey",
    version,
    about = "HSM-backed Organization Key appliance",
    long_about = "HSM-backed Organization Key appliance.\n\n\
        The org key lives in a PKCS#11 token; `orgkey serve` starts sealed and signs only after an \
        operator ignites it with the ignition passphrase (the token's user PIN).\n\n\
        Typical first run:\n  \
        orgkey init --data-dir /srv/orgkey --domain example.com --create-token\n  \
        export ORGKEY_CONFIG=/srv/orgkey/orgkey.toml\n  \
        orgkey org-key generate --uid 'Example Org Key <orgkey@example.com>'\n  \
        orgkey client add admin --scopes admin --token-out admin.token\n  \
        orgkey serve &\n  \
        orgkey ignite --token-file admin.token"
)]
pub struct Cli {
    /// Configuration file.
    #[arg(
        long,
        global = true,
        env = "ORGKEY_CONFIG",
        default_value = "orgkey.toml"
    )]
    pub config: PathBuf,
    /// Log filter (error, warn, info, debug or a tracing filter).
    #[arg(long, global = true, env = "ORGKEY_LOG", default_value = "info")]
    pub log: String,
    /// Log line format: `text` for people, `json` (one JSON object per line) for log shippers.
    #[arg(
        long,
        global = true,
        env = "ORGKEY_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text
    )]
    pub log_format: LogFormat,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Set up a new appliance: data dir, config, store and optionally its own software token (SoftHSM2 or Kryoptic).
    Init(init::InitArgs),
    /// Generate, show and export the Organization Key.
    #[command(subcommand)]
    OrgKey(org_key::OrgKeyCmd),
    /// The Organization Certificate (X.509 CA) for S/MIME user certificates.
    #[command(subcommand)]
    OrgCert(org_cert::OrgCertCmd),
    /// S/MIME user certificates: revocation.
    #[command(subcommand)]
    X509(org_cert::X509Cmd),
    /// Inspect the PKCS#11 token.
    #[command(subcommand)]
    Token(token::TokenCmd),
    /// Run the HTTP API (starts sealed).
    Serve(serve::ServeArgs),
    /// Ignite a running appliance with the ignition passphrase.
    Ignite(ignite::IgniteArgs),
    /// Seal a running appliance (log out of the token).
    Seal(ignite::SealArgs),
    /// Manage API clients and their bearer tokens.
    #[command(subcommand)]
    Client(client::ClientCmd),
    /// Inspect and verify the audit log.
    #[command(subcommand)]
    Audit(audit::AuditCmd),
    /// Key backups (wrapped in the token) and state backups (encrypted to the org key).
    #[command(subcommand)]
    Backup(backup::BackupCmd),
    /// Change or reset the ignition passphrase (the token's user PIN).
    #[command(subcommand)]
    Ignition(backup::IgnitionCmd),
    /// Users of the managed domains and their certifications.
    #[command(subcommand)]
    Users(users::UsersCmd),
    /// Renew certifications and the org key's expiry now (serve does it on a schedule).
    #[command(subcommand)]
    Maintenance(maintenance::MaintenanceCmd),
    /// The nodes sharing this store and the leader lease (reads the store; no token).
    #[command(subcommand)]
    Cluster(cluster::ClusterCmd),
}

/// How log lines are written (`--log-format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One line of text per event, for people (the default).
    #[default]
    Text,
    /// One JSON object per line (timestamp, level, target, fields), for log
    /// shippers.
    Json,
}

fn init_logging(filter: &str, format: LogFormat) {
    use tracing_subscriber::util::SubscriberInitExt;
    let _ = log_subscriber(filter, format, std::io::stderr, None).try_init();
}

/// The log subscriber. Text: tracing's fmt layer with every field value
/// and message escaped (`escape::EscapedFields`), so request-supplied text
/// cannot forge log lines. JSON: tracing's JSON formatter, whose encoding
/// escapes line breaks and the other C0 controls, with the remaining hidden
/// characters (DEL, C1 controls, bidi and invisible format characters)
/// written as `\uXXXX` escapes too (`escape::JsonHiddenEscapes`): the values
/// decode unchanged, and no line holds a raw hidden character. `ansi`
/// overrides the colour default of the text format (tests).
fn log_subscriber<W>(
    filter: &str,
    format: LogFormat,
    writer: W,
    ansi: Option<bool>,
) -> Box<dyn tracing::Subscriber + Send + Sync + 'static>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    match format {
        LogFormat::Json => Box::new(
            tracing_subscriber::fmt()
                .json()
                .with_env_filter(filter)
                .with_writer(escape::JsonHiddenEscapes(writer))
                .finish(),
        ),
        LogFormat::Text => {
            let builder = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(writer)
                .fmt_fields(escape::EscapedFields);
            match ansi {
                Some(a) => Box::new(builder.with_ansi(a).finish()),
                None => Box::new(builder.finish()),
            }
        }
    }
}

/// Loads the config and prepares the module environment. Must run before
/// any other thread starts (it sets environment variables).
fn load_config(path: &Path) -> anyhow::Result<crate::config::Config> {
    let cfg = crate::config::Config::load(path).context(
        "loading the configuration (use --config FILE or ORGKEY_CONFIG; `orgkey init` writes one)",
    )?;
    // SAFETY: called from `run` before the async runtime or any thread starts.
    unsafe { crate::token::set_module_environment(cfg.token.environment.iter()) };
    Ok(cfg)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// The actor recorded in the audit log for CLI operations.
fn cli_actor() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    format!("cli:{user}")
}

fn clock() -> std::sync::Arc<dyn crate::clock::Clock> {
    std::sync::Arc::new(crate::clock::SystemClock)
}

/// Runs a parsed command line; errors are printed with their causes.
pub fn run(cli: Cli) -> ExitCode {
    init_logging(&cli.log, cli.log_format);
    let result = match cli.command {
        Command::Init(a) => init::run(a),
        Command::OrgKey(c) => org_key::run(&cli.config, c),
        Command::Token(c) => token::run(&cli.config, c),
        Command::OrgCert(c) => org_cert::run(&cli.config, c),
        Command::X509(c) => org_cert::run_x509(&cli.config, c),
        Command::Serve(a) => serve::run(&cli.config, a),
        Command::Ignite(a) => ignite::run_ignite(&cli.config, a),
        Command::Seal(a) => ignite::run_seal(&cli.config, a),
        Command::Client(c) => client::run(&cli.config, c),
        Command::Audit(c) => audit::run(&cli.config, c),
        Command::Users(c) => users::run(&cli.config, c),
        Command::Backup(c) => backup::run(&cli.config, c),
        Command::Ignition(c) => backup::run_ignition(&cli.config, c),
        Command::Maintenance(c) => maintenance::run(&cli.config, c),
        Command::Cluster(c) => cluster::run(&cli.config, c),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", crate::text::error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}
