//! `orgkey users list|show|remove|restore`

use super::{clock, load_config, runtime};
use crate::service::{list_users, set_user_state, user_details};
use crate::store::UserState;
use anyhow::bail;
use clap::Subcommand;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

/// User commands (they read the store directly; no token access).
#[derive(Debug, Subcommand)]
pub enum UsersCmd {
    /// List users of the managed domains, by email.
    List {
        /// Start after this email (for paging).
        #[arg(long, default_value = "")]
        after: String,
        /// At most this many.
        #[arg(long, default_value_t = 1000)]
        limit: i64,
    },
    /// Show one user: key, state, certification expiry, last activity.
    Show {
        /// Email address.
        email: String,
    },
    /// Stop certifying a user; the last certification simply expires.
    Remove {
        /// Email address.
        email: String,
    },
    /// Certify a removed user again (at the next certify call or maintenance run).
    Restore {
        /// Email address.
        email: String,
    },
}

fn fmt_secs(s: i64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(s.max(0) as u64)).to_string()
}

pub fn run(config: &Path, cmd: UsersCmd) -> anyhow::Result<ExitCode> {
    let cfg = load_config(config)?;
    let rt = runtime()?;
    match cmd {
        UsersCmd::List { after, limit } => {
            if !(1..=100_000).contains(&limit) {
                bail!("--limit must be between 1 and 100000");
            }
            let users = rt.block_on(list_users(&cfg, &after, limit, clock()))?;
            for u in &users {
                println!(
                    "{}\t{}\t{}\tlast activity {}",
                    super::escape::field(&u.email),
                    u.state.as_str(),
                    u.fingerprint,
                    fmt_secs(u.last_activity)
                );
            }
            if users.len() as i64 == limit
                && let Some(last) = users.last()
            {
                eprintln!("(more: --after {})", super::escape::field(&last.email));
            }
        }
        UsersCmd::Show { email } => {
            let Some(d) = rt.block_on(user_details(&cfg, &email, clock()))? else {
                bail!("no user {email:?}");
            };
            // Key contents come from outside: shown escaped.
            println!("email:          {}", super::escape::field(&d.user.email));
            println!("state:          {}", d.user.state.as_str());
            println!("key:            {}", d.user.fingerprint);
            for uid in &d.user_ids {
                println!("user ID:        {}", super::escape::field(uid));
            }
            println!(
                "certified until: {}",
                d.certified_until
                    .map(|t| humantime::format_rfc3339_seconds(t).to_string())
                    .unwrap_or_else(|| match d.org_key {
                        Some(_) => "not certified by the current org key (unverified)".into(),
                        None => "no org key".into(),
                    })
            );
            println!("last activity:  {}", fmt_secs(d.user.last_activity));
            println!("added:          {}", fmt_secs(d.user.created_at));
            if let Some(r) = d.user.removed_at {
                println!("removed:        {}", fmt_secs(r));
            }
        }
        UsersCmd::Remove { email } => {
            if rt.block_on(set_user_state(
                &cfg,
                &email,
                UserState::Removed,
                &super::cli_actor(),
                clock(),
            ))? {
                println!(
                    "removed {email}: it is no longer certified; its last certification expires on its own"
                );
            } else {
                bail!("no active user {email:?}");
            }
        }
        UsersCmd::Restore { email } => {
            if rt.block_on(set_user_state(
                &cfg,
                &email,
                UserState::Active,
                &super::cli_actor(),
                clock(),
            ))? {
                println!(
                    "restored {email}: certified again at the next certify call or maintenance run"
                );
            } else {
                bail!("no removed user {email:?}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
