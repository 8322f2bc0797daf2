//! `orgkey init`: a new data directory with its config, store and
//! (optionally) its own SoftHSM2 token.

use super::ServiceError;
use crate::clock::SystemClock;
use crate::config::{Config, HsmProfile};
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
    /// Create a SoftHSM2 token inside the data dir.
    pub create_softhsm_token: bool,
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
}

/// What was set up.
#[derive(Debug)]
pub struct InitResult {
    /// The config file written.
    pub config_path: PathBuf,
    /// Serial of the created token, if one was created.
    pub token_serial: Option<String>,
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

fn config_text(req: &InitRequest, softhsm: bool) -> String {
    let domains: Vec<String> = req.domains.iter().map(|d| toml_str(d)).collect();
    let mut t = String::new();
    t.push_str("# orgkey appliance configuration, written by `orgkey init`.\n");
    t.push_str("# Every option is explained in orgkey.example.toml. No secrets belong here.\n\n");
    t.push_str("# Paths are relative to this file.\ndata_dir = \".\"\n");
    t.push_str(&format!("domains = [{}]\n\n", domains.join(", ")));
    t.push_str("[token]\n");
    t.push_str(&format!("profile = {}\n", toml_str(&req.profile)));
    t.push_str(&format!("label = {}\n", toml_str(&req.token_label)));
    if softhsm {
        t.push_str("\n[token.environment]\n# This appliance's own SoftHSM2 token directory.\n");
        t.push_str("SOFTHSM2_CONF = \"./softhsm2.conf\"\n");
    }
    t.push_str("\n[server]\n");
    t.push_str(&format!("listen = {}\n", toml_str(&req.listen)));
    t
}

/// Sets up a new appliance. Creates the token first (when asked), so a
/// failure there leaves no config behind that points at a missing token.
///
/// Must be called before the process starts other threads: a created
/// SoftHSM2 token is found through SOFTHSM2_CONF, which this sets.
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
    // Validate what we will write with the code that will read it, before
    // anything is created.
    let text = config_text(&req, req.create_softhsm_token);
    let cfg = Config::from_toml(&text, &config_path)?;
    make_private_dir(dir)?;

    let mut token_serial = None;
    if req.create_softhsm_token {
        let (Some(pin), Some(so_pin)) = (&req.ignition_passphrase, &req.so_pin) else {
            return Err(ServiceError::Refused(
                "creating a token needs the ignition passphrase and the SO PIN".into(),
            ));
        };
        let conf = dir.join("softhsm2.conf");
        let tokens = dir.join("tokens");
        if conf.exists() || tokens.exists() {
            return Err(ServiceError::Refused(format!(
                "{} or {} already exists; refusing to create a second token here",
                conf.display(),
                tokens.display()
            )));
        }
        make_private_dir(&tokens)?;
        write_private(
            &conf,
            &format!(
                "# SoftHSM2 configuration of this orgkey appliance (token files live in tokens/).\n\
                 directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
                tokens.display()
            ),
        )?;
        let module = profile.find_module().map(Path::to_path_buf).ok_or_else(|| {
            ServiceError::Refused(format!(
                "the SoftHSM2 module is not installed (looked for {}); install the softhsm2 package",
                profile.module_paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
            ))
        })?;
        let env = [("SOFTHSM2_CONF".to_string(), conf.display().to_string())];
        // SAFETY: documented precondition of this function: no other thread runs yet.
        unsafe { crate::token::set_module_environment(env.iter().map(|(k, v)| (k, v))) };
        let created = Token::initialize_new_token(&module, &req.token_label, so_pin, pin);
        match created {
            Ok(serial) => token_serial = Some(serial),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tokens);
                let _ = std::fs::remove_file(&conf);
                return Err(e.into());
            }
        }
    }

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ServiceError::io("starting the runtime"))?;
    runtime.block_on(async {
        let store = Store::open(&cfg.store.sqlite, true, Arc::new(SystemClock)).await?;
        let mut ev = AuditEvent::new(&req.actor, "init", "ok").detail(format!(
            "token {:?}, domains {:?}",
            req.token_label, req.domains
        ));
        if let Some(s) = &token_serial {
            ev = ev.detail(format!(
                "created SoftHSM2 token {:?} (serial {s}), domains {:?}",
                req.token_label, req.domains
            ));
        }
        store.append_audit(&[ev]).await?;
        store.close().await;
        Ok::<_, ServiceError>(())
    })?;
    write_private(&config_path, &text)?;
    Ok(InitResult {
        config_path,
        token_serial,
    })
}
