//! HKP keyserver formatting: the machine-readable index (`op=index&options=mr`)
//! that `gpg --search-keys` parses, per draft-shaw-openpgp-hkp section 5.2.

use pgp::cert::prelude::*;
use pgp::policy::StandardPolicy;
use pgp::types::RevocationStatus;
use sequoia_openpgp as pgp;
use std::fmt::Write;
use std::time::SystemTime;

fn secs(t: SystemTime) -> String {
    crate::clock::unix_secs(t).to_string()
}

/// Percent-escapes what the index format cannot carry verbatim: the field
/// separator, `%` itself, and anything that is not printable ASCII.
fn escape(s: &[u8]) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s {
        if b == b':' || b == b'%' || !(0x20..0x7f).contains(&b) {
            let _ = write!(out, "%{b:02X}");
        } else {
            out.push(b as char);
        }
    }
    out
}

/// The `pub:` and `uid:` lines of one certificate.
pub(crate) fn index_entry(cert: &Cert, now: SystemTime) -> String {
    let policy = StandardPolicy::new();
    let vc = cert.with_policy(&policy, now).ok();
    let key = cert.primary_key().key();
    let mut flags = String::new();
    let mut expires = None;
    if let Some(vc) = &vc {
        if let RevocationStatus::Revoked(_) = vc.revocation_status() {
            flags.push('r');
        }
        expires = vc.primary_key().key_expiration_time();
        if vc.alive().is_err() {
            flags.push('e');
        }
    }
    let mut out = format!(
        "pub:{}:{}:{}:{}:{}:{}\n",
        cert.fingerprint().to_hex(),
        u8::from(key.pk_algo()),
        key.mpis().bits().unwrap_or(0),
        secs(key.creation_time()),
        expires.map(secs).unwrap_or_default(),
        flags
    );
    for ua in cert.userids() {
        let created = ua
            .self_signatures()
            .next()
            .and_then(|s| s.signature_creation_time())
            .map(secs)
            .unwrap_or_default();
        let _ = writeln!(out, "uid:{}:{}::", escape(ua.userid().value()), created);
    }
    out
}

/// A full machine-readable index from entries made by `index_entry`.
pub fn hkp_index(entries: &[String]) -> String {
    let mut out = format!("info:1:{}\n", entries.len());
    for e in entries {
        out.push_str(e);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_fields_are_escaped() {
        assert_eq!(escape(b"Alice <a@example.com>"), "Alice <a@example.com>");
        assert_eq!(escape(b"a:b%c"), "a%3Ab%25c");
        assert_eq!(escape("Jörg".as_bytes()), "J%C3%B6rg");
        assert_eq!(escape(b"x\ny"), "x%0Ay");
    }

    #[test]
    fn index_counts_entries() {
        assert_eq!(hkp_index(&[]), "info:1:0\n");
        assert_eq!(
            hkp_index(&["pub:A\n".into(), "pub:B\n".into()]),
            "info:1:2\npub:A\npub:B\n"
        );
    }
}
