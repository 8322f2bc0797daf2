//! `orgkey cluster status [--json]`

use super::{clock, load_config, runtime};
use crate::service::cluster_status;
use clap::Subcommand;
use std::path::Path;
use std::process::ExitCode;

/// Cluster commands (they read the store directly; no token access).
#[derive(Debug, Subcommand)]
pub enum ClusterCmd {
    /// The leader lease (holder, epoch, expiry) and every node that sent a
    /// heartbeat (role, epoch, last heartbeat), as `/v1/status` shows admins.
    Status {
        /// One JSON object (`node`, `lease`, `members`) instead of text.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(config: &Path, cmd: ClusterCmd) -> anyhow::Result<ExitCode> {
    let cfg = load_config(config)?;
    let rt = runtime()?;
    match cmd {
        ClusterCmd::Status { json } => {
            let view = rt.block_on(cluster_status(&cfg, clock()))?;
            let role = view.role_of(&cfg.node_id);
            let status = view.status_json(&cfg.node_id, role, view.lease.epoch);
            if json {
                println!("{}", serde_json::Value::Object(status));
                return Ok(ExitCode::SUCCESS);
            }
            let lease = &view.lease;
            if view.lease_live() {
                println!(
                    "leader: {} (epoch {}, lease ends in {:.1} s)",
                    super::escape::field(&lease.holder),
                    lease.epoch,
                    (lease.expires_at - view.now) as f64 / 1000.0
                );
            } else {
                println!(
                    "leader: none (epoch {}; the next node to try takes the lease)",
                    lease.epoch
                );
            }
            println!("this node: {} ({role})", super::escape::field(&cfg.node_id));
            println!("NODE\tROLE\tEPOCH\tLAST HEARTBEAT\tSTARTED");
            for m in status["members"].as_array().into_iter().flatten() {
                let age = m["heartbeat_age_ms"].as_i64().unwrap_or(0);
                println!(
                    "{}\t{}\t{}\t{:.1} s ago\t{}",
                    super::escape::field(m["id"].as_str().unwrap_or_default()),
                    m["role"].as_str().unwrap_or_default(),
                    m["epoch"],
                    age as f64 / 1000.0,
                    m["started_at"].as_str().unwrap_or_default()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
