//! `orgkey client add|list|remove`

use super::{clock, load_config, runtime};
use crate::api::auth::{Scope, new_client, reveal};
use crate::clock::unix_secs;
use crate::service::open_store;
use crate::store::AuditEvent;
use anyhow::bail;
use clap::Subcommand;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

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
    },
    /// List clients and their scopes.
    List,
    /// Remove a client; its token stops working at once.
    Remove {
        /// Client name.
        name: String,
    },
}

pub fn run(config: &Path, cmd: ClientCmd) -> anyhow::Result<ExitCode> {
    let cfg = load_config(config)?;
    let rt = runtime()?;
    rt.block_on(async {
        let clock = clock();
        let store = open_store(&cfg, clock.clone()).await?;
        let actor = super::cli_actor();
        match cmd {
            ClientCmd::Add {
                name,
                scopes,
                token_out,
            } => {
                let scopes = Scope::parse_list(&scopes).map_err(anyhow::Error::msg)?;
                let (rec, token) = new_client(&name, &scopes, unix_secs(clock.now()) as i64)
                    .map_err(anyhow::Error::msg)?;
                if let Some(p) = &token_out
                    && p.exists()
                {
                    bail!("{} exists; refusing to overwrite it", p.display());
                }
                store.add_client(&rec).await?;
                store
                    .append_audit(&[AuditEvent::new(&actor, "client-add", "ok")
                        .detail(format!("{name} scopes {}", rec.scopes))])
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
                    println!("{}\t{}\tcreated {created}", c.name, c.scopes);
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
        }
        store.close().await;
        Ok(ExitCode::SUCCESS)
    })
}
