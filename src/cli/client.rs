//! `orgkey client add|list|remove|bind|unbind`

use super::{clock, load_config, runtime};
use crate::api::auth::{Scope, cert_binding, new_client, reveal};
use crate::clock::unix_secs;
use crate::service::open_store;
use crate::store::{AuditEvent, CertBinding, ClientRecord};
use anyhow::bail;
use clap::{Args, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// A client's TLS client certificate (needs `[server] client_ca`).
#[derive(Debug, Args)]
pub struct BindingArgs {
    /// Bind to exactly one certificate: the SHA-256 of its DER, as
    /// `openssl x509 -in CERT -noout -fingerprint -sha256` prints it.
    #[arg(long, value_name = "HEX", conflicts_with_all = ["cert_subject", "cert_issuer"])]
    cert_sha256: Option<String>,
    /// Bind to the certificates with this subject DN (RFC 4514, as `openssl
    /// x509 -noout -subject -nameopt RFC2253` prints it) from --cert-issuer;
    /// renewed certificates keep working.
    #[arg(long, value_name = "DN", requires = "cert_issuer")]
    cert_subject: Option<String>,
    /// The issuer DN (RFC 4514) of the --cert-subject certificates.
    #[arg(long, value_name = "DN", requires = "cert_subject")]
    cert_issuer: Option<String>,
}

impl BindingArgs {
    fn binding(&self) -> anyhow::Result<Option<CertBinding>> {
        cert_binding(
            self.cert_sha256.as_deref(),
            self.cert_subject.as_deref(),
            self.cert_issuer.as_deref(),
        )
        .map_err(anyhow::Error::msg)
    }
}

/// Client commands.
#[derive(Debug, Subcommand)]
pub enum ClientCmd {
    /// Register a client and print its bearer token (shown once; only a hash is stored).
    Add {
        /// Client name (A-Z a-z 0-9 - _ .).
        name: String,
        /// Comma-separated scopes: sign, certify, issue, revoke, admin.
        #[arg(long)]
        scopes: String,
        /// Write the token to this new file (mode 0600) instead of stdout.
        #[arg(long)]
        token_out: Option<PathBuf>,
        /// Its TLS client certificate, which then authenticates it alone.
        #[command(flatten)]
        binding: BindingArgs,
        /// Refuse the bearer token alone: the client needs its certificate
        /// and its token.
        #[arg(long)]
        require_cert: bool,
    },
    /// List clients: scopes, how they authenticate, certificate bindings.
    List,
    /// Remove a client; its token and certificate binding stop working at once.
    Remove {
        /// Client name.
        name: String,
    },
    /// Bind a client to its TLS client certificate (replacing its binding, at once).
    Bind {
        /// Client name.
        name: String,
        /// The certificate.
        #[command(flatten)]
        binding: BindingArgs,
        /// Refuse the bearer token alone from now on (unchanged if not given).
        #[arg(long, conflicts_with = "no_require_cert")]
        require_cert: bool,
        /// Accept the bearer token alone again.
        #[arg(long)]
        no_require_cert: bool,
    },
    /// Remove a client's certificate binding; the certificate stops working at once.
    /// A client with require-cert is then locked out until it is bound again.
    Unbind {
        /// Client name.
        name: String,
        /// Accept the client's bearer token alone again.
        #[arg(long)]
        no_require_cert: bool,
    },
}

/// How a client authenticates, for `client list`.
fn auth_column(c: &ClientRecord) -> &'static str {
    match (&c.cert, c.require_cert) {
        (None, false) => "token",
        (Some(_), false) => "token-or-cert",
        (Some(_), true) => "cert-and-token",
        (None, true) => "locked:require-cert-without-binding",
    }
}

pub fn run(config: &Path, cmd: ClientCmd) -> anyhow::Result<ExitCode> {
    let cfg = load_config(config)?;
    let rt = runtime()?;
    rt.block_on(async {
        let clock = clock();
        let store = open_store(&cfg, clock.clone()).await?;
        let actor = super::cli_actor();
        let no_client_ca = cfg
            .server
            .tls
            .as_ref()
            .is_none_or(|t| t.client_ca.is_none());
        let warn_no_client_ca = || {
            if no_client_ca {
                eprintln!(
                    "note: [server] client_ca is not set, so the server asks for no client \
                     certificates and this binding authenticates nothing until it is"
                );
            }
        };
        match cmd {
            ClientCmd::Add {
                name,
                scopes,
                token_out,
                binding,
                require_cert,
            } => {
                let scopes = Scope::parse_list(&scopes).map_err(anyhow::Error::msg)?;
                let cert = binding.binding()?;
                let (rec, token) = new_client(
                    &name,
                    &scopes,
                    cert,
                    require_cert,
                    unix_secs(clock.now()) as i64,
                )
                .map_err(anyhow::Error::msg)?;
                if let Some(p) = &token_out
                    && p.exists()
                {
                    bail!("{} exists; refusing to overwrite it", p.display());
                }
                let mut detail = format!("{name} scopes {}", rec.scopes);
                if let Some(b) = &rec.cert {
                    detail.push_str(&format!(" {}", b.describe()));
                    warn_no_client_ca();
                }
                if rec.require_cert {
                    detail.push_str(" require-cert");
                }
                store
                    .add_client(
                        &rec,
                        &AuditEvent::new(&actor, "client-add", "ok").detail(detail),
                    )
                    .await?;
                match token_out {
                    Some(p) => {
                        crate::service::write_private(&p, &format!("{}\n", reveal(&token)))?;
                        eprintln!(
                            "client {name} added; bearer token written to {}",
                            p.display()
                        );
                    }
                    None => {
                        eprintln!("client {name} added; its bearer token (shown only now):");
                        println!("{}", reveal(&token));
                    }
                }
            }
            ClientCmd::List => {
                for c in store.list_clients().await? {
                    let created = humantime::format_rfc3339_seconds(
                        std::time::UNIX_EPOCH
                            + std::time::Duration::from_secs(c.created_at.max(0) as u64),
                    );
                    let binding = c.cert.as_ref().map_or("-".into(), CertBinding::describe);
                    println!(
                        "{}\t{}\t{}\t{binding}\tcreated {created}",
                        c.name,
                        c.scopes,
                        auth_column(&c)
                    );
                }
            }
            ClientCmd::Remove { name } => {
                if !store.remove_client(&name).await? {
                    bail!("no client named {name:?}");
                }
                store
                    .append_audit(&[
                        AuditEvent::new(&actor, "client-remove", "ok").detail(name.clone())
                    ])
                    .await?;
                println!("removed client {name}");
            }
            ClientCmd::Bind {
                name,
                binding,
                require_cert,
                no_require_cert,
            } => {
                let Some(cert) = binding.binding()? else {
                    bail!("give --cert-sha256, or --cert-subject and --cert-issuer");
                };
                let require = match (require_cert, no_require_cert) {
                    (true, _) => Some(true),
                    (_, true) => Some(false),
                    _ => None,
                };
                let mut detail = format!("{name} {}", cert.describe());
                match require {
                    Some(true) => detail.push_str(" require-cert"),
                    Some(false) => detail.push_str(" no-require-cert"),
                    None => {}
                }
                let event = AuditEvent::new(&actor, "client-bind", "ok").detail(detail);
                if !store
                    .set_client_binding(&name, Some(&cert), require, &event)
                    .await?
                {
                    bail!("no client named {name:?}");
                }
                warn_no_client_ca();
                println!("bound client {name} to {}", cert.describe());
            }
            ClientCmd::Unbind {
                name,
                no_require_cert,
            } => {
                let mut detail = name.clone();
                if no_require_cert {
                    detail.push_str(" no-require-cert");
                }
                let event = AuditEvent::new(&actor, "client-unbind", "ok").detail(detail);
                let require = no_require_cert.then_some(false);
                if !store
                    .set_client_binding(&name, None, require, &event)
                    .await?
                {
                    bail!("no client named {name:?}");
                }
                println!("removed the certificate binding of client {name}");
                let locked = store
                    .list_clients()
                    .await?
                    .iter()
                    .any(|c| c.name == name && c.require_cert);
                if locked {
                    eprintln!(
                        "client {name} requires its certificate: it is locked out until it is \
                         bound again (or `orgkey client unbind {name} --no-require-cert` lets \
                         its bearer token work alone)"
                    );
                }
            }
        }
        store.close().await;
        Ok(ExitCode::SUCCESS)
    })
}
