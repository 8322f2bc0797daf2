//! `orgkey audit verify|list`: the whole chain, whichever backend the
//! store is on; a listed row ends with the node that appended it.

use super::escape::field;
use super::{clock, load_config, runtime};
use crate::service::open_store;
use clap::Subcommand;
use std::path::Path;
use std::process::ExitCode;

/// Audit commands.
#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// Recompute the hash chain; exit 1 and name the first broken row if it does not hold.
    Verify,
    /// Print the most recent rows.
    List {
        /// How many rows.
        #[arg(long, default_value_t = 50)]
        last: i64,
    },
}

pub fn run(config: &Path, cmd: AuditCmd) -> anyhow::Result<ExitCode> {
    let cfg = load_config(config)?;
    let rt = runtime()?;
    rt.block_on(async {
        let store = open_store(&cfg, clock()).await?;
        let code = match cmd {
            AuditCmd::Verify => {
                let r = store.verify_audit().await?;
                match r.first_broken {
                    None => {
                        println!("audit chain intact: {} rows", r.rows);
                        ExitCode::SUCCESS
                    }
                    Some((seq, why)) => {
                        println!(
                            "audit chain BROKEN at row {seq}: {} ({} rows before it are intact)",
                            field(&why),
                            r.rows
                        );
                        ExitCode::FAILURE
                    }
                }
            }
            AuditCmd::List { last } => {
                let total = store.audit_head().await?;
                for r in store.audit_rows((total - last).max(0), last.max(0)).await? {
                    let at = humantime::format_rfc3339_seconds(
                        std::time::UNIX_EPOCH + std::time::Duration::from_secs(r.at.max(0) as u64),
                    );
                    // Every field may hold outside text: escaped, so no
                    // row can forge another row or column.
                    // The node comes last: the columns before it are
                    // as they were before rows named their node.
                    println!(
                        "{}\t{at}\t{}\t{}\t{}\t{}\t{}\t{}",
                        r.seq,
                        field(&r.event.actor),
                        field(&r.event.operation),
                        field(&r.event.outcome),
                        field(r.event.key_fingerprint.as_deref().unwrap_or("-")),
                        field(r.event.detail.as_deref().unwrap_or("")),
                        field(r.node.as_deref().unwrap_or("-"))
                    );
                }
                ExitCode::SUCCESS
            }
        };
        store.close().await;
        Ok(code)
    })
}
