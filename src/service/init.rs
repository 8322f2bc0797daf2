//! `orgkey init`: a new data directory with its config, store and
//! (optionally) its own software token, made by the recipe in the HSM
//! profile's `[software_token]` (SoftHSM2, Kryoptic).

use super::ServiceError;
use crate::clock::SystemClock;
use crate::config::{Config, HsmProfile, ProfileSoftwareToken};
use crate::store::{AuditEvent, Store};
use crate::token::Token;
use secrecy::SecretString;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What to set up.
pub struct InitRequest {
    /// The data directory (created if missing; must not hold a config yet).
    pub data_dir: PathBuf,
    /// Managed mail domains.
    pub domains: Vec<String>,
    /// Create a software token inside the data dir (profiles with a
    /// `[software_token]` recipe).
    pub create_token: bool,
    /// PKCS#11 module to write into the config (`[token] module`), overriding
    /// the profile's module paths.
    pub module: Option<PathBuf>,
    /// Token label (created or existing).
    pub token_label: String,
    /// HSM profile name (built-in) or path.
    pub profile: String,
    /// Listen address to write into the config.
    pub listen: String,
    /// Ignition passphrase (user PIN) for a created token.
    pub ignition_passphrase: Option<SecretString>,
    /// Security officer PIN for a created token.
    pub so_pin: Option<SecretString>,
    /// Audit actor.
    pub actor: String,
    /// A PostgreSQL store (`[store] url`, no password) instead of the
    /// SQLite file; the database must exist.
    pub store_url: Option<String>,
    /// The file holding the store's password (`[store] password_file`).
    pub store_password_file: Option<PathBuf>,
    /// This node's id (`node_id`); the host name when `None`.
    pub node_id: Option<String>,
}

/// What was set up.
#[derive(Debug)]
pub struct InitResult {
    /// The config file written.
    pub config_path: PathBuf,
    /// Serial of the created token, if one was created.
    pub token_serial: Option<String>,
    /// The store already held this org key (fingerprint): the node joined
    /// a cluster, and the org key must be brought into its token.
    pub joined: Option<String>,
}

/// Creates `path` (which must not exist) with mode 0600 and writes `text`.
#[cfg(unix)]
pub(crate) fn write_private(path: &Path, text: &str) -> Result<(), ServiceError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(ServiceError::io(format!("creating {}", path.display())))?;
    f.write_all(text.as_bytes())
        .map_err(ServiceError::io(format!("writing {}", path.display())))
}

#[cfg(unix)]
fn make_private_dir(path: &Path) -> Result<(), ServiceError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(ServiceError::io(format!("creating {}", path.display())))
}

fn toml_str(s: &str) -> String {
    // TOML basic strings share JSON's escaping for everything we write.
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

fn config_text(req: &InitRequest, software: Option<&ProfileSoftwareToken>) -> String {
    let domains: Vec<String> = req.domains.iter().map(|d| toml_str(d)).collect();
    let mut t = String::new();
    t.push_str("# orgkey appliance configuration, written by `orgkey init`.\n");
    t.push_str("# Every option is explained in orgkey.example.toml. No secrets belong here.\n\n");
    t.push_str("# Paths are relative to this file.\ndata_dir = \".\"\n");
    if let Some(id) = &req.node_id {
        t.push_str(&format!("node_id = {}\n", toml_str(id)));
    }
    t.push_str(&format!("domains = [{}]\n\n", domains.join(", ")));
    t.push_str("[token]\n");
    t.push_str(&format!("profile = {}\n", toml_str(&req.profile)));
    t.push_str(&format!("label = {}\n", toml_str(&req.token_label)));
    if let Some(module) = &req.module {
        t.push_str(&format!(
            "module = {}\n",
            toml_str(&module.display().to_string())
        ));
    }
    if let Some(st) = software {
        t.push_str("\n[token.environment]\n# This appliance's own software token.\n");
        t.push_str(&format!(
            "{} = {}\n",
            st.environment,
            toml_str(&format!("./{}", st.config_file))
        ));
    }
    if let Some(url) = &req.store_url {
        t.push_str("\n[store]\n# The PostgreSQL database this node shares with the cluster's other nodes.\n");
        t.push_str(&format!("url = {}\n", toml_str(url)));
        if let Some(p) = &req.store_password_file {
            t.push_str(&format!(
                "password_file = {}\n",
                toml_str(&p.display().to_string())
            ));
        }
    }
    t.push_str("\n[server]\n");
    t.push_str(&format!("listen = {}\n", toml_str(&req.listen)));
    t
}

/// Sets up a new appliance. Creates the token first (when asked), so a
/// failure there leaves no config behind that points at a missing token.
///
/// Must be called before the process starts other threads: a created
/// software token is found through the environment variable of its profile,
/// which this sets.
pub fn init_appliance(req: InitRequest) -> Result<InitResult, ServiceError> {
    let dir =
        &std::path::absolute(&req.data_dir).map_err(ServiceError::io("resolving the data dir"))?;
    let config_path = dir.join("orgkey.toml");
    if config_path.exists() {
        return Err(ServiceError::Refused(format!(
            "{} already exists: this data directory is set up already",
            config_path.display()
        )));
    }
    let profile = HsmProfile::load(&req.profile, Path::new("."))?;
    let software = match (req.create_token, &profile.software_token) {
        (false, _) => None,
        (true, Some(st)) => Some(st),
        (true, None) => {
            return Err(ServiceError::Refused(format!(
                "profile {} is not a software token: set up its tokens with the vendor's tools \
                 and run init without --create-token",
                profile.name
            )));
        }
    };
    // Validate what we will write with the code that will read it, before
    // anything is created.
    let text = config_text(&req, software);
    let cfg = Config::from_toml(&text, &config_path)?;
    let module = match software {
        Some(_) => {
            let m = cfg.token.module_path()?;
            if !m.is_file() {
                return Err(ServiceError::Refused(format!(
                    "the PKCS#11 module {} does not exist",
                    m.display()
                )));
            }
            Some(m)
        }
        None => None,
    };
    make_private_dir(dir)?;

    let mut token_serial = None;
    if let (Some(st), Some(module)) = (software, module) {
        let (Some(pin), Some(so_pin)) = (&req.ignition_passphrase, &req.so_pin) else {
            return Err(ServiceError::Refused(
                "creating a token needs the ignition passphrase and the SO PIN".into(),
            ));
        };
        let conf = dir.join(&st.config_file);
        let tokens = dir.join("tokens");
        if conf.exists() || tokens.exists() {
            return Err(ServiceError::Refused(format!(
                "{} or {} already exists; refusing to create a second token here",
                conf.display(),
                tokens.display()
            )));
        }
        make_private_dir(&tokens)?;
        let created = write_private(
            &conf,
            &st.config.replace("{tokens}", &tokens.display().to_string()),
        )
        .and_then(|()| {
            let env = [(st.environment.clone(), conf.display().to_string())];
            // SAFETY: documented precondition of this function: no other thread runs yet.
            unsafe { crate::token::set_module_environment(env.iter().map(|(k, v)| (k, v))) };
            Ok(Token::initialize_new_token(
                &module,
                &req.token_label,
                so_pin,
                pin,
            )?)
        });
        match created {
            Ok(serial) => token_serial = Some(serial),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tokens);
                let _ = std::fs::remove_file(&conf);
                return Err(e);
            }
        }
    }

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ServiceError::io("starting the runtime"))?;
    let joined = runtime.block_on(async {
        let store =
            Store::open_configured(&cfg.store, &cfg.node_id, true, Arc::new(SystemClock)).await?;
        // A PostgreSQL store that holds an org key already: this node joins
        // that cluster (it never makes a second org key).
        let joined = store.active_org_key().await?.map(|k| k.fingerprint);
        let mut ev = AuditEvent::new(&req.actor, "init", "ok").detail(format!(
            "token {:?}, domains {:?}",
            req.token_label, req.domains
        ));
        if let Some(s) = &token_serial {
            ev = ev.detail(format!(
                "created {} token {:?} (serial {s}), domains {:?}",
                profile.name, req.token_label, req.domains
            ));
        }
        if let Some(fpr) = &joined {
            ev = ev.detail(format!(
                "node {:?} joined the store of org key {fpr}, token {:?}",
                cfg.node_id, req.token_label
            ));
        }
        let appended = store.append_audit(&[ev]).await;
        store.close().await;
        appended?;
        Ok::<_, ServiceError>(joined)
    });
    let joined = match joined {
        Ok(j) => j,
        Err(e) => {
            // A token made for a store that could not be set up would be
            // left without a config: remove what this run created.
            if let Some(st) = software {
                let _ = std::fs::remove_dir_all(dir.join("tokens"));
                let _ = std::fs::remove_file(dir.join(&st.config_file));
            }
            return Err(e);
        }
    };
    write_private(&config_path, &text)?;
    Ok(InitResult {
        config_path,
        token_serial,
        joined,
    })
}
