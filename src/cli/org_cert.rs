//! `orgkey org-cert self-sign|csr|import|import-ca|show|export` and
//! `orgkey x509 revoke|crl`

use super::{clock, load_config, runtime, secrets};
use crate::config::OrgKeyAlgorithm;
use crate::service::{
    OrgCertRequest, import_ca_keypair, import_org_cert, org_cert_csr, org_cert_summary,
    revoke_user_cert, self_sign_org_cert,
};
use crate::x509::{CaKeypairFile, RevocationReason};
use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use secrecy::ExposeSecret;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use zeroize::Zeroizing;

/// Org cert commands.
#[derive(Debug, Subcommand)]
pub enum OrgCertCmd {
    /// Make a self-signed org cert (CA) with a new key in the token.
    SelfSign(SubjectArgs),
    /// Make a key in the token and a PKCS#10 request for an external CA to sign.
    Csr {
        #[command(flatten)]
        subject: SubjectArgs,
        /// Write the CSR here (default: stdout).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Install the external CA's answer to `org-cert csr`.
    Import {
        /// The CA certificate issued for our CSR (PEM or DER).
        #[arg(long)]
        cert: PathBuf,
        /// The issuing CA's chain (PEM), issuer first.
        #[arg(long)]
        chain: Option<PathBuf>,
        /// Replace the active org cert.
        #[arg(long)]
        replace: bool,
        /// Read the ignition passphrase from this file instead of prompting.
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
    },
    /// Import an existing internal root CA keypair INTO the token. The key file
    /// is read once and never copied: destroy it afterwards.
    ImportCa(ImportCaArgs),
    /// Show the active org cert and pending CSRs.
    Show,
    /// Write the active org cert (PEM) to stdout or --out.
    Export {
        /// Output file.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// Subject and key options.
#[derive(Debug, Args)]
pub struct SubjectArgs {
    /// Subject as an RFC 4514 name, e.g. "CN=Example Org CA,O=Example".
    #[arg(long)]
    pub subject: String,
    /// Key algorithm (default: the org key's family; P-256 for an Ed25519 org key).
    #[arg(long, value_enum)]
    pub algorithm: Option<OrgKeyAlgorithm>,
    /// Replace the active org cert (the old one keeps verifying and revoking what it issued).
    #[arg(long)]
    pub replace: bool,
    /// Read the ignition passphrase from this file instead of prompting.
    #[arg(long)]
    pub passphrase_file: Option<PathBuf>,
}

/// `org-cert import-ca`
#[derive(Debug, Args)]
pub struct ImportCaArgs {
    /// PKCS#12 file with the CA key and certificate.
    #[arg(long, conflicts_with_all = ["key", "cert"])]
    pub pkcs12: Option<PathBuf>,
    /// PEM PKCS#8 private key (plain or encrypted), with --cert.
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
    /// PEM CA certificate, with --key.
    #[arg(long, requires = "key")]
    pub cert: Option<PathBuf>,
    /// File holding the PKCS#12 / key password (default: prompt; none for an unencrypted key).
    #[arg(long)]
    pub key_password_file: Option<PathBuf>,
    /// Replace the active org cert.
    #[arg(long)]
    pub replace: bool,
    /// Read the ignition passphrase from this file instead of prompting.
    #[arg(long)]
    pub passphrase_file: Option<PathBuf>,
}

/// X.509 user certificate commands.
#[derive(Debug, Subcommand)]
pub enum X509Cmd {
    /// Revoke an issued user certificate and publish a new CRL.
    Revoke {
        /// Serial number (hex).
        serial: String,
        /// keyCompromise, superseded, affiliationChanged, cessationOfOperation, privilegeWithdrawn or unspecified.
        #[arg(long, default_value = "unspecified")]
        reason: String,
        /// Read the ignition passphrase from this file instead of prompting.
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
    },
}

fn read(path: &Path, what: &str) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    Ok(Zeroizing::new(std::fs::read(path).with_context(|| {
        format!("reading the {what} {}", path.display())
    })?))
}

fn print_record(rec: &crate::store::OrgCertRecord) {
    println!("org cert {} ({})", rec.fingerprint, rec.source);
    println!("subject: {}", rec.subject);
    println!(
        "valid until: {}",
        humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(rec.not_after.max(0) as u64)
        )
    );
    println!("token key CKA_ID: {}", rec.key_id);
}

pub fn run(config: &Path, cmd: OrgCertCmd) -> anyhow::Result<ExitCode> {
    let cfg = load_config(config)?;
    let rt = runtime()?;
    let actor = super::cli_actor();
    match cmd {
        OrgCertCmd::SelfSign(a) => {
            let pass = secrets::obtain(a.passphrase_file.as_deref(), "ignition passphrase", false)?;
            let rec = rt.block_on(self_sign_org_cert(
                &cfg,
                pass,
                OrgCertRequest {
                    subject: a.subject,
                    algorithm: a.algorithm,
                    replace: a.replace,
                    actor,
                },
                clock(),
            ))?;
            print_record(&rec);
        }
        OrgCertCmd::Csr { subject: a, out } => {
            let pass = secrets::obtain(a.passphrase_file.as_deref(), "ignition passphrase", false)?;
            let rec = rt.block_on(org_cert_csr(
                &cfg,
                pass,
                OrgCertRequest {
                    subject: a.subject,
                    algorithm: a.algorithm,
                    replace: a.replace,
                    actor,
                },
                clock(),
            ))?;
            match out {
                Some(p) => {
                    std::fs::write(&p, &rec.csr)
                        .with_context(|| format!("writing {}", p.display()))?;
                    eprintln!(
                        "wrote {}: have your CA sign it as a CA certificate, then run \
                         `orgkey org-cert import --cert FILE [--chain FILE]`",
                        p.display()
                    );
                }
                None => print!("{}", rec.csr),
            }
        }
        OrgCertCmd::Import {
            cert,
            chain,
            replace,
            passphrase_file,
        } => {
            let cert_bytes = read(&cert, "certificate")?;
            let chain_bytes = chain.as_deref().map(|c| read(c, "chain")).transpose()?;
            let pass = secrets::obtain(passphrase_file.as_deref(), "ignition passphrase", false)?;
            let rec = rt.block_on(import_org_cert(
                &cfg,
                pass,
                &cert_bytes,
                chain_bytes.as_ref().map(|c| c.as_slice()),
                replace,
                &actor,
                clock(),
            ))?;
            print_record(&rec);
        }
        OrgCertCmd::ImportCa(a) => {
            let key_password = match &a.key_password_file {
                Some(f) => Some(secrets::from_file(f, "key password")?),
                None => None,
            };
            let pass = secrets::obtain(a.passphrase_file.as_deref(), "ignition passphrase", false)?;
            let (key_file, rec) = if let Some(p12) = &a.pkcs12 {
                let data = read(p12, "PKCS#12 file")?;
                let pw = match &key_password {
                    Some(p) => p.clone(),
                    None => secrets::prompt("PKCS#12 password", false)?,
                };
                let pw = Zeroizing::new(pw.expose_secret().to_string());
                let rec = rt.block_on(import_ca_keypair(
                    &cfg,
                    pass,
                    CaKeypairFile::Pkcs12 {
                        data: &data,
                        password: &pw,
                    },
                    a.replace,
                    &actor,
                    clock(),
                ))?;
                (p12.clone(), rec)
            } else {
                let (Some(k), Some(c)) = (&a.key, &a.cert) else {
                    bail!("give --pkcs12 FILE, or --key KEY.pem with --cert CERT.pem");
                };
                let key = read(k, "private key")?;
                let cert = read(c, "certificate")?;
                let pw = key_password
                    .as_ref()
                    .map(|p| Zeroizing::new(p.expose_secret().to_string()));
                let rec = rt.block_on(import_ca_keypair(
                    &cfg,
                    pass,
                    CaKeypairFile::Pem {
                        key: &key,
                        password: pw.as_ref().map(|p| p.as_str()),
                        cert: &cert,
                    },
                    a.replace,
                    &actor,
                    clock(),
                ))?;
                (k.clone(), rec)
            };
            print_record(&rec);
            eprintln!(
                "The CA key is now in the token. {} still holds it in software: destroy it \
                 (and every copy) now, e.g. `shred -u {}`.",
                key_file.display(),
                key_file.display()
            );
        }
        OrgCertCmd::Show => {
            let (active, requests) = rt.block_on(org_cert_summary(&cfg, clock()))?;
            match active {
                Some(rec) => print_record(&rec),
                None => println!("no org cert"),
            }
            for r in requests {
                println!("pending CSR: {} (key {})", r.subject, r.key_id);
            }
        }
        OrgCertCmd::Export { out } => {
            let (active, _) = rt.block_on(org_cert_summary(&cfg, clock()))?;
            let Some(rec) = active else {
                bail!(
                    "no org cert: run `orgkey org-cert self-sign` (or csr + import, or import-ca)"
                );
            };
            let pem = format!("{}{}", rec.cert, rec.chain);
            match out {
                Some(p) => {
                    std::fs::write(&p, pem).with_context(|| format!("writing {}", p.display()))?
                }
                None => print!("{pem}"),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn run_x509(config: &Path, cmd: X509Cmd) -> anyhow::Result<ExitCode> {
    let cfg = load_config(config)?;
    let rt = runtime()?;
    match cmd {
        X509Cmd::Revoke {
            serial,
            reason,
            passphrase_file,
        } => {
            let reason = RevocationReason::parse(&reason).map_err(anyhow::Error::msg)?;
            let pass = secrets::obtain(passphrase_file.as_deref(), "ignition passphrase", false)?;
            let already = rt.block_on(revoke_user_cert(
                &cfg,
                pass,
                &serial,
                reason,
                &super::cli_actor(),
                clock(),
            ))?;
            if already {
                println!("{serial} was already revoked; the CRL was renewed");
            } else {
                println!("revoked {serial} ({}); the CRL was renewed", reason.name());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
