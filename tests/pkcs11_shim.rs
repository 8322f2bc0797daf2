//! A token that misbehaves on schedule: our PKCS#11 shim (pkcs11-shim/, a
//! test-only module wrapping SoftHSM2) answers CKR_PIN_LOCKED, flips a bit
//! in every Nth signature, or fails every Nth C_Sign with CKR_DEVICE_ERROR.
//! The appliance must report a locked PIN, never return a bad signature,
//! and recover from the device error by itself.

mod common;
use common::*;
use std::path::PathBuf;
use std::sync::OnceLock;

/// Builds the shim once per test binary (its own target dir, so the outer
/// cargo's lock is not in the way).
fn shim() -> &'static PathBuf {
    static SHIM: OnceLock<PathBuf> = OnceLock::new();
    SHIM.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let target = root.join("target/pkcs11-shim");
        let out = std::process::Command::new(env!("CARGO"))
            .args(["build", "--release", "--manifest-path"])
            .arg(root.join("pkcs11-shim/Cargo.toml"))
            .env("CARGO_TARGET_DIR", &target)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "building the shim: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        target.join("release/liborgkey_pkcs11_shim.so")
    })
}

/// An appliance with a p256 org key whose token is reached through the shim
/// configured with `settings` (environment lines).
fn behind_shim(settings: &[(&str, &str)]) -> Appliance {
    let a = Appliance::with_org_key("p256");
    let toml = std::fs::read_to_string(&a.config).unwrap();
    let mut out = String::new();
    for line in toml.lines() {
        if line.starts_with("module = ") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
        if line.starts_with("profile = ") {
            out.push_str(&format!("module = \"{}\"\n", shim().display()));
        }
        if line.trim() == "[token.environment]" {
            out.push_str(&format!(
                "ORGKEY_SHIM_MODULE = \"{}\"\n",
                a.module().display()
            ));
            for (k, v) in settings {
                out.push_str(&format!("{k} = \"{v}\"\n"));
            }
        }
    }
    std::fs::write(&a.config, out).unwrap();
    a
}

#[tokio::test]
async fn a_locked_pin_is_reported_as_such() {
    let a = behind_shim(&[("ORGKEY_SHIM_LOGIN", "locked")]);
    let admin = a.client("admin", "admin");
    let s = a.serve(&[]);
    let r = ignite(&s, &admin, PASSPHRASE).await;
    assert_eq!(r.status(), 403);
    assert_eq!(error_code(r).await, "passphrase_locked");
    assert_eq!(get(&s, "/v1/ready").await.status(), 503);
}

#[tokio::test]
async fn a_token_that_flips_signature_bits_never_gets_a_bad_signature_out() {
    let a = behind_shim(&[("ORGKEY_SHIM_FLIP_EVERY", "3")]);
    let admin = a.client("admin", "admin");
    let gw = a.client("gateway", "sign");
    let s = a.serve(&[]);
    assert_eq!(ignite(&s, &admin, PASSPHRASE).await.status(), 200);
    let gpg = Gpg::new();
    gpg.import(&get(&s, "/v1/org-key").await.bytes().await.unwrap());
    let mut refused = 0;
    for i in 0..9 {
        let data = format!("message {i}");
        let r = post(&s, "/v1/sign", &gw, data.clone().into_bytes()).await;
        if r.status() == 200 {
            let (ok, err) = gpg.verify(&r.bytes().await.unwrap(), data.as_bytes());
            assert!(ok, "a returned signature must verify: {err}");
        } else {
            assert_eq!(r.status(), 500);
            refused += 1;
        }
    }
    assert_eq!(refused, 3, "every third token signature was corrupted");
    s.stop();
    let audit = a.ok(&["audit", "list", "--last", "50"], false);
    let signed = audit
        .lines()
        .filter(|l| l.contains("\tgateway\tsign\tok"))
        .count();
    assert_eq!(
        signed, 6,
        "audit rows only for returned signatures: {audit}"
    );
}

#[tokio::test]
async fn a_rare_device_error_is_a_503_and_the_appliance_recovers() {
    let a = behind_shim(&[("ORGKEY_SHIM_FAIL_EVERY", "4")]);
    let admin = a.client("admin", "admin");
    let gw = a.client("gateway", "sign");
    let s = a.serve(&[]);
    assert_eq!(ignite(&s, &admin, PASSPHRASE).await.status(), 200);
    let (mut ok, mut unavailable) = (0, 0);
    let started = std::time::Instant::now();
    while ok < 12 {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "{ok} signatures, {unavailable} 503s"
        );
        let r = post(&s, "/v1/sign", &gw, b"data".to_vec()).await;
        match r.status().as_u16() {
            200 => ok += 1,
            503 => {
                assert_eq!(error_code(r).await, "token_unavailable");
                unavailable += 1;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(unavailable >= 1, "the injected device errors were seen");
    s.stop();
    let audit = a.ok(&["audit", "list", "--last", "100"], false);
    assert!(audit.contains("token-recovered"), "{audit}");
}
