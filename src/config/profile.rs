//! HSM profiles: one TOML file per HSM family (hsm-profiles/), describing where
//! its PKCS#11 module lives, which org key algorithms it supports, the default
//! backup posture of generated keys and its known quirks. Quirks are data:
//! code reads these fields instead of branching on vendor names.

use super::ConfigError;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Profiles compiled into the binary, by name.
pub const BUILTIN: &[(&str, &str)] = &[
    ("softhsm2", include_str!("../../hsm-profiles/softhsm2.toml")),
    ("kryoptic", include_str!("../../hsm-profiles/kryoptic.toml")),
    ("yubihsm2", include_str!("../../hsm-profiles/yubihsm2.toml")),
    (
        "thales-luna",
        include_str!("../../hsm-profiles/thales-luna.toml"),
    ),
    (
        "aws-cloudhsm",
        include_str!("../../hsm-profiles/aws-cloudhsm.toml"),
    ),
    (
        "entrust-nshield",
        include_str!("../../hsm-profiles/entrust-nshield.toml"),
    ),
    (
        "opensc-nitrokey",
        include_str!("../../hsm-profiles/opensc-nitrokey.toml"),
    ),
];

/// Org key algorithms, as named on the command line and in profiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OrgKeyAlgorithm {
    /// ECDSA/ECDH on NIST P-256
    P256,
    /// ECDSA/ECDH on NIST P-384
    P384,
    /// EdDSA Ed25519 (encryption subkey: ECDH P-256, see docs/decisions)
    Ed25519,
    /// RSA 3072
    Rsa3072,
    /// RSA 4096
    Rsa4096,
}

impl OrgKeyAlgorithm {
    /// The name used in profiles and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            OrgKeyAlgorithm::P256 => "p256",
            OrgKeyAlgorithm::P384 => "p384",
            OrgKeyAlgorithm::Ed25519 => "ed25519",
            OrgKeyAlgorithm::Rsa3072 => "rsa3072",
            OrgKeyAlgorithm::Rsa4096 => "rsa4096",
        }
    }

    /// Parses a profile/command-line name.
    pub fn from_name(s: &str) -> Option<Self> {
        [
            Self::P256,
            Self::P384,
            Self::Ed25519,
            Self::Rsa3072,
            Self::Rsa4096,
        ]
        .into_iter()
        .find(|a| a.name() == s)
    }
}

/// How CKA_EC_PARAMS names Ed25519 on a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ed25519Params {
    /// DER OID 1.3.101.112
    Oid,
    /// DER PrintableString "edwards25519"
    Printable,
}

/// A parsed HSM profile.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HsmProfile {
    /// Short name (file stem).
    pub name: String,
    /// One-line description.
    pub description: String,
    /// Whether orgkey's test suite ran against this module.
    pub tested: bool,
    /// Candidate module paths, tried in order.
    pub module_paths: Vec<PathBuf>,
    /// Environment variables the module reads (documentation).
    #[serde(default)]
    pub module_environment: Vec<String>,
    /// Algorithm support.
    pub algorithms: ProfileAlgorithms,
    /// Key template defaults.
    pub keys: ProfileKeys,
    /// Key wrapping (backup) capability.
    pub wrap: ProfileWrap,
    /// Session limits.
    pub limits: ProfileLimits,
    /// Known quirks.
    pub quirks: ProfileQuirks,
    /// How `orgkey init --create-token` makes a private token of a software
    /// module inside the data directory (absent for hardware HSMs).
    #[serde(default)]
    pub software_token: Option<ProfileSoftwareToken>,
}

/// `[software_token]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileSoftwareToken {
    /// The environment variable that points the module at its config file.
    pub environment: String,
    /// The config file's name in the data directory.
    pub config_file: String,
    /// The config file's text; `{tokens}` stands for the absolute path of the
    /// token directory (`tokens/` in the data directory).
    pub config: String,
}

/// `[algorithms]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileAlgorithms {
    /// Org key algorithms the token can generate and use.
    pub supported: Vec<OrgKeyAlgorithm>,
    /// CKA_EC_PARAMS encoding for Ed25519.
    pub ed25519_params: Ed25519Params,
    /// Whether CKM_ECDSA_SHA256 and friends exist (informational).
    pub ecdsa_with_hash_mechanisms: bool,
}

/// `[keys]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileKeys {
    /// Default: create org keys extractable under a trusted wrapping key only.
    pub exportable: bool,
    /// Whether the token accepts CKA_WRAP_WITH_TRUSTED in key templates
    /// (when absent: yes, it is standard PKCS#11). Some refuse it
    /// (CKR_ATTRIBUTE_TYPE_INVALID); their keys are never exportable, since
    /// an extractable key without the attribute could be wrapped out under
    /// any wrapping key.
    #[serde(default = "standard_attribute")]
    pub wrap_with_trusted: bool,
}

fn standard_attribute() -> bool {
    true
}

impl ProfileKeys {
    /// Whether org keys are made exportable (under a trusted wrapping key
    /// only): as `requested` (`None`: the profile's `exportable`), and only
    /// on a token that accepts CKA_WRAP_WITH_TRUSTED.
    pub fn exportable_keys(&self, requested: Option<bool>) -> bool {
        requested.unwrap_or(self.exportable) && self.wrap_with_trusted
    }
}

/// `[wrap]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileWrap {
    /// Whether wrapping org keys under an SO-trusted key works.
    pub supported: bool,
    /// The wrapping mechanism name.
    pub mechanism: String,
    /// Algorithms the token refuses to wrap.
    #[serde(default)]
    pub not_wrappable: Vec<OrgKeyAlgorithm>,
    /// The vendor's own backup scheme, for operators.
    pub vendor_backup: String,
}

/// `[limits]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileLimits {
    /// Upper bound for the session pool.
    pub max_sessions: usize,
}

/// `[quirks]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileQuirks {
    /// Slot ids change when tokens are initialized.
    pub random_slot_ids: bool,
    /// Whether the token locks the user PIN after repeated failures.
    pub pin_lockout: bool,
    /// Whether EC signing is serialized inside one process.
    pub ec_signing_serialized: bool,
    /// Free-form notes.
    #[serde(default)]
    pub notes: Vec<String>,
}

impl HsmProfile {
    /// Parses a profile from TOML text.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let p: HsmProfile = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from(origin),
            message: e.to_string(),
        })?;
        if let Some(st) = &p.software_token
            && (!p.module_environment.contains(&st.environment)
                || st.config_file.contains('/')
                || !st.config.contains("{tokens}"))
        {
            return Err(ConfigError::Invalid(format!(
                "profile {origin}: software_token needs an environment variable listed in \
                 module_environment, a plain config_file name and a config that uses {{tokens}}"
            )));
        }
        if p.limits.max_sessions == 0 {
            return Err(ConfigError::Invalid(format!(
                "profile {origin}: limits.max_sessions must be at least 1"
            )));
        }
        Ok(p)
    }

    /// A built-in profile by name.
    pub fn builtin(name: &str) -> Option<Self> {
        BUILTIN
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(n, text)| Self::parse(text, n).expect("built-in profiles are checked by tests"))
    }

    /// Loads a profile given as a built-in name or a path to a TOML file.
    pub fn load(name_or_path: &str, base: &Path) -> Result<Self, ConfigError> {
        if let Some(p) = Self::builtin(name_or_path) {
            return Ok(p);
        }
        if name_or_path.ends_with(".toml") || name_or_path.contains('/') {
            let path = base.join(name_or_path);
            let text = std::fs::read_to_string(&path).map_err(|e| ConfigError::Read {
                path: path.clone(),
                source: e,
            })?;
            return Self::parse(&text, &path.display().to_string());
        }
        let names: Vec<&str> = BUILTIN.iter().map(|(n, _)| *n).collect();
        Err(ConfigError::Invalid(format!(
            "unknown HSM profile {name_or_path:?}; built-in profiles: {}; or give a path to a .toml file",
            names.join(", ")
        )))
    }

    /// First module path of the profile that exists on this machine.
    pub fn find_module(&self) -> Option<&Path> {
        self.module_paths
            .iter()
            .map(PathBuf::as_path)
            .find(|p| p.exists())
    }

    /// Whether the profile lists `alg` as supported.
    pub fn supports(&self, alg: OrgKeyAlgorithm) -> bool {
        self.algorithms.supported.contains(&alg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_profile_parses_and_names_itself() {
        for (name, text) in BUILTIN {
            let p = HsmProfile::parse(text, name).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(&p.name, name);
            assert!(!p.module_paths.is_empty(), "{name} lists no module path");
            assert!(
                !p.algorithms.supported.is_empty(),
                "{name} supports nothing"
            );
        }
    }

    #[test]
    fn only_the_software_tokens_the_suite_runs_claim_to_be_tested() {
        for (name, _) in BUILTIN {
            let p = HsmProfile::builtin(name).unwrap();
            let suite_runs_it = *name == "softhsm2" || *name == "kryoptic";
            assert_eq!(p.tested, suite_runs_it, "{name}");
            assert_eq!(p.software_token.is_some(), suite_runs_it, "{name}");
        }
    }

    #[test]
    fn unknown_profile_names_list_the_builtins() {
        let e = HsmProfile::load("nosuchhsm", Path::new("/"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("softhsm2") && e.contains("yubihsm2"), "{e}");
    }

    #[test]
    fn keys_are_exportable_only_where_the_token_takes_wrap_with_trusted() {
        let keys = |exportable, wrap_with_trusted| ProfileKeys {
            exportable,
            wrap_with_trusted,
        };
        assert!(keys(true, true).exportable_keys(None));
        assert!(!keys(true, true).exportable_keys(Some(false)));
        assert!(keys(false, true).exportable_keys(Some(true)));
        assert!(!keys(true, false).exportable_keys(None));
        assert!(!keys(true, false).exportable_keys(Some(true)));
        // Absent, the attribute is taken to be accepted (standard PKCS#11).
        let text: String = BUILTIN[0]
            .1
            .lines()
            .filter(|l| !l.starts_with("wrap_with_trusted"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_ne!(text.len(), BUILTIN[0].1.len());
        assert!(
            HsmProfile::parse(&text, "x")
                .unwrap()
                .keys
                .wrap_with_trusted
        );
        // The YubiHSM 2 refuses it (its profile notes).
        assert!(
            !HsmProfile::builtin("yubihsm2")
                .unwrap()
                .keys
                .wrap_with_trusted
        );
    }

    #[test]
    fn profile_with_unknown_key_is_refused() {
        let mut text = BUILTIN[0].1.to_string();
        text.push_str("\nsurprise = 1\n");
        assert!(HsmProfile::parse(&text, "x").is_err());
    }
}
