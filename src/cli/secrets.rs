//! Reading passphrases: from a file (automation) or a no-echo prompt, into
//! `SecretString` at once.

use anyhow::{Context, bail};
use secrecy::{ExposeSecret, SecretString};
use std::io::IsTerminal;
use std::path::Path;
use zeroize::Zeroizing;

/// Reads a secret from a file: the first line, without its line ending.
pub fn from_file(path: &Path, what: &str) -> anyhow::Result<SecretString> {
    let raw = Zeroizing::new(
        std::fs::read(path)
            .with_context(|| format!("reading the {what} from {}", path.display()))?,
    );
    let text =
        std::str::from_utf8(&raw).with_context(|| format!("the {what} file is not UTF-8"))?;
    let line = text.split(['\n', '\r']).next().unwrap_or("");
    if line.is_empty() {
        bail!("the {what} file {} is empty", path.display());
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(m) = std::fs::metadata(path)
            && m.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(file = %path.display(), "the {what} file is readable by group or others; chmod 600 it");
        }
    }
    Ok(SecretString::from(line.to_string()))
}

/// Prompts without echo; with `confirm`, asks twice and compares.
pub fn prompt(what: &str, confirm: bool) -> anyhow::Result<SecretString> {
    if !std::io::stdin().is_terminal() {
        bail!("no terminal to ask for the {what}: pass it with the matching --*-file option");
    }
    let first = SecretString::from(
        rpassword::prompt_password(format!("{what}: ")).context("reading the passphrase")?,
    );
    if confirm {
        let second = Zeroizing::new(rpassword::prompt_password(format!("{what} (again): "))?);
        if first.expose_secret() != second.as_str() {
            bail!("the two entries of the {what} differ");
        }
    }
    Ok(first)
}

/// From the file when given, else the prompt.
pub fn obtain(file: Option<&Path>, what: &str, confirm: bool) -> anyhow::Result<SecretString> {
    match file {
        Some(p) => from_file(p, what),
        None => prompt(what, confirm),
    }
}

/// Refuses short passphrases for new tokens.
pub fn require_strength(s: &SecretString, what: &str, min: usize) -> anyhow::Result<()> {
    let n = s.expose_secret().chars().count();
    if n < min {
        bail!("the {what} must have at least {min} characters (it has {n})");
    }
    if n > 255 {
        bail!("the {what} must have at most 255 characters (PKCS#11 PIN limit)");
    }
    Ok(())
}
