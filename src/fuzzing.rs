//! Entry points for the fuzz targets in `fuzz/` and for their smoke test in
//! the suite: every parser that sees outside bytes, driven the way the
//! appliance drives it. None of them may panic, whatever the input.

use crate::openpgp::{OrgKey, UserKey};
use crate::signer::{Decrypter, EcCurve, PublicKey, SignerError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

/// `POST /v1/certify` bodies: parse, judge, prune, index.
pub fn user_key(data: &[u8]) {
    if let Ok(k) = UserKey::parse(data) {
        let t = now();
        let _ = k.check(t);
        let _ = k.user_ids(t);
        let _ = k.x509_signing_key(t);
        let _ = k.hkp_index_entry(t);
        let _ = k.certification_expiry(
            "a@example.com",
            "0000000000000000000000000000000000000000",
            t,
        );
        let _ = k.prune(&[], t);
    }
}

/// `POST /v1/x509/issue` bodies (PKCS#10, PEM or DER).
pub fn csr(data: &[u8]) {
    let _ = crate::x509::parse_user_csr(data);
}

/// TLS client certificates (DER; their canonical subject and issuer are
/// what client bindings match) and the distinguished names operators give
/// `client add|bind --cert-subject/--cert-issuer`.
pub fn client_cert(data: &[u8]) {
    let _ = crate::x509::certificate_dns(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::x509::canonical_dn(text);
    }
}

/// `org-cert import-ca` files: the first byte picks PKCS#12 or PEM
/// key + certificate (split at the second byte's position).
pub fn ca_keypair(data: &[u8]) {
    use crate::x509::{CaKeypairFile, read_ca_keypair};
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        let _ = read_ca_keypair(CaKeypairFile::Pkcs12 {
            data: rest,
            password: "fuzz",
        });
    } else if let Some((&cut, rest)) = rest.split_first() {
        let cut = (cut as usize * rest.len()) / 256;
        let (key, cert) = rest.split_at(cut);
        let _ = read_ca_keypair(CaKeypairFile::Pem {
            key,
            password: Some("fuzz"),
            cert,
        });
    }
}

/// Key backup files (`backup inspect` / `restore-keys` before the KDF).
pub fn key_backup(data: &[u8]) {
    let _ = crate::backup::keyfile::parse(data);
}

/// A decrypter that answers with fixed bytes: the message parser and the
/// session key unwrapping then see whatever the input says.
struct FixedDecrypter(PublicKey);

impl Decrypter for FixedDecrypter {
    fn public_key(&self) -> &PublicKey {
        &self.0
    }
    fn ecdh(&self, _peer: &[u8]) -> Result<zeroize::Zeroizing<Vec<u8>>, SignerError> {
        Ok(zeroize::Zeroizing::new(vec![0x42; 32]))
    }
    fn rsa_decrypt(&self, _c: &[u8]) -> Result<zeroize::Zeroizing<Vec<u8>>, SignerError> {
        Ok(zeroize::Zeroizing::new(vec![0x42; 35]))
    }
}

/// State backup files (`backup restore-state`), decrypted with the org key
/// in `org_cert` (armored) and a decrypter that answers fixed bytes.
pub fn state_backup(org_cert: &[u8], data: &[u8]) {
    let Ok(org) = OrgKey::parse(org_cert) else {
        return;
    };
    let dec = FixedDecrypter(PublicKey::Ec {
        curve: EcCurve::P256,
        point: [&[4u8][..], &[1u8; 64][..]].concat(),
    });
    let _ = crate::openpgp::decrypt_signed_by_org_key(&org, &dec, data, &mut std::io::sink());
}

/// HKP search strings and the JSON bodies of the small JSON routes.
pub fn request_input(data: &[u8]) {
    let _ = crate::api::fuzz_request_input(data);
}

/// Configuration files.
pub fn config(data: &[u8]) {
    // Profile files named by absolute path are read: keep the fuzzer away
    // from device files that never end.
    if let Ok(text) = std::str::from_utf8(data)
        && !text.contains("/dev")
        && !text.contains("/proc")
        && !text.contains("/sys")
    {
        let _ = crate::config::Config::from_toml(
            text,
            std::path::Path::new("/nonexistent/orgkey.toml"),
        );
    }
}
