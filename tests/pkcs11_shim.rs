//! A token that misbehaves on schedule: our PKCS#11 shim (pkcs11-shim/, a
//! test-only module wrapping SoftHSM2) answers CKR_PIN_LOCKED, flips a bit
//! in every Nth signature, or fails every Nth C_Sign with CKR_DEVICE_ERROR.
//! The appliance must report a locked PIN, never return a bad signature,
//! and recover from the device error by itself. The shim also plays a token
//! that refuses CKA_WRAP_WITH_TRUSTED in key templates, which the HSM
//! profile must account for.

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
/// configured with `settings` (environment variables).
fn behind_shim(settings: &[(&str, &str)]) -> Appliance {
    let a = Appliance::with_org_key("p256");
    through_shim(&a, settings);
    a
}

/// From now on `a` reaches its token through the shim configured with
/// `settings`.
fn through_shim(a: &Appliance, settings: &[(&str, &str)]) {
    a.edit_config(|t| {
        let token = config_table(t, "token");
        token.insert("module".into(), shim().display().to_string().into());
        let env = config_table(token, "environment");
        env.insert(
            "ORGKEY_SHIM_MODULE".into(),
            a.module().display().to_string().into(),
        );
        for (k, v) in settings {
            env.insert(k.to_string(), (*v).into());
        }
    });
}

#[tokio::test]
async fn a_locked_pin_is_reported_as_such() {
    let a = behind_shim(&[("ORGKEY_SHIM_LOGIN", "locked")]);
    let admin = a.client("admin", "admin");
    let s = a.serve(&[]);
    let r = ignite(&s, &admin, PASSPHRASE).await;
    assert_eq!(r.status(), 403);
    assert_eq!(error_code(r).await, "passphrase_locked");
    assert_error(get(&s, "/v1/ready").await, 503, "sealed").await;
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
            assert_error(r, 500, "internal").await;
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

/// Polls `/v1/status` until `state` is `want` (at most `secs` seconds).
async fn wait_for_state(s: &Server, want: &str, secs: u64) -> serde_json::Value {
    let t = std::time::Instant::now();
    loop {
        let st = get_json(s, "/v1/status").await;
        if st["state"] == want && st["token_down"] == false {
            return st;
        }
        assert!(
            t.elapsed() < std::time::Duration::from_secs(secs),
            "not {want}: {st}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Signs until the shim's injected device error answers 503.
async fn sign_until_device_error(s: &Server, gw: &str) {
    for _ in 0..10 {
        let r = post(s, "/v1/sign", gw, b"data".to_vec()).await;
        if r.status() == 503 {
            assert_eq!(error_code(r).await, "token_unavailable");
            return;
        }
        assert_eq!(r.status(), 200);
    }
    panic!("no injected device error within 10 signatures");
}

/// The shim's C_Login log: `start` lines and return values.
fn login_log(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn without_relogin_a_device_error_seals_and_only_the_right_passphrase_ignites_again() {
    let a = behind_shim(&[("ORGKEY_SHIM_FAIL_EVERY", "3")]);
    a.set_config("token.relogin", false);
    let admin = a.client("admin", "admin");
    let gw = a.client("gateway", "sign");
    let s = a.serve(&[]);
    assert_eq!(ignite(&s, &admin, PASSPHRASE).await.status(), 200);
    sign_until_device_error(&s, &gw).await;
    wait_for_state(&s, "sealed", 10).await;
    // The token is logged out too: a wrong passphrase is refused by C_Login.
    let r = ignite(&s, &admin, "totally-wrong-passphrase").await;
    assert_eq!(r.status(), 401);
    assert_eq!(error_code(r).await, "bad_passphrase");
    let r = post(&s, "/v1/sign", &gw, b"x".to_vec()).await;
    assert_eq!(error_code(r).await, "sealed");
    assert_eq!(ignite(&s, &admin, PASSPHRASE).await.status(), 200);
    assert_eq!(get_json(&s, "/v1/status").await["state"], "ignited");
    s.stop();
    let audit = a.ok(&["audit", "list", "--last", "20"], false);
    assert!(audit.contains("token-lost\tsealed"), "{audit}");
}

#[tokio::test]
async fn a_relogin_passphrase_the_token_refuses_is_tried_once_and_the_appliance_seals() {
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("logins");
    let a = behind_shim(&[
        ("ORGKEY_SHIM_FAIL_EVERY", "3"),
        ("ORGKEY_SHIM_LOGIN_LOG", log.to_str().unwrap()),
    ]);
    let admin = a.client("admin", "admin");
    let gw = a.client("gateway", "sign");
    let s = a.serve(&[]);
    assert_eq!(ignite(&s, &admin, PASSPHRASE).await.status(), 200);
    // The passphrase changes on the token behind the running appliance.
    let new = a.path("new-pass");
    write_secret(&new, "a brand new passphrase");
    a.ok(
        &[
            "ignition",
            "change",
            "--passphrase-file",
            a.pin_file.to_str().unwrap(),
            "--new-passphrase-file",
            new.to_str().unwrap(),
        ],
        false,
    );
    let before = login_log(&log).len();
    sign_until_device_error(&s, &gw).await;
    wait_for_state(&s, "sealed", 10).await;
    // Long enough for several more attempts at the old once-a-second pace.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let attempts: Vec<String> = login_log(&log)[before..]
        .iter()
        .filter(|l| *l != "start")
        .cloned()
        .collect();
    // CKR_PIN_INCORRECT is 0xA0.
    assert_eq!(attempts, ["160"], "one refused relogin, then no more");
    assert_eq!(get_json(&s, "/v1/status").await["state"], "sealed");
    assert_error(ignite(&s, &admin, PASSPHRASE).await, 401, "bad_passphrase").await;
    assert_eq!(
        ignite(&s, &admin, "a brand new passphrase").await.status(),
        200
    );
    s.stop();
    let audit = a.ok(&["audit", "list", "--last", "20"], false);
    assert!(audit.contains("relogin refused"), "{audit}");
}

#[tokio::test]
async fn a_passphrase_changed_through_the_appliance_is_the_one_relogin_uses() {
    let a = behind_shim(&[("ORGKEY_SHIM_FAIL_EVERY", "3")]);
    let admin = a.client("admin", "admin");
    let gw = a.client("gateway", "sign");
    let s = a.serve(&[]);
    assert_eq!(ignite(&s, &admin, PASSPHRASE).await.status(), 200);
    let change = |old: &str, new: &str| {
        http()
            .post(s.url("/v1/ignition/passphrase"))
            .bearer_auth(&admin)
            .json(&serde_json::json!({ "passphrase": old, "new_passphrase": new }))
            .send()
    };
    let r = change("not the passphrase", "a brand new passphrase")
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(error_code(r).await, "bad_passphrase");
    let r = change(PASSPHRASE, "short").await.unwrap();
    assert_eq!(r.status(), 422);
    assert_eq!(error_code(r).await, "weak_passphrase");
    let r = http()
        .post(s.url("/v1/ignition/passphrase"))
        .bearer_auth(&gw)
        .json(&serde_json::json!({ "passphrase": PASSPHRASE, "new_passphrase": "a brand new passphrase" }))
        .send()
        .await
        .unwrap();
    // The sign scope cannot change it.
    assert_error(r, 403, "forbidden").await;
    // The CLI goes through the running appliance with --token-file.
    let new = a.path("new-pass");
    write_secret(&new, "a brand new passphrase");
    let admin_file = a.path("admin.token");
    let out = a.run(
        &[
            "ignition",
            "change",
            "--url",
            &s.url,
            "--token-file",
            admin_file.to_str().unwrap(),
            "--passphrase-file",
            a.pin_file.to_str().unwrap(),
            "--new-passphrase-file",
            new.to_str().unwrap(),
        ],
        false,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The token lost: relogin uses the new passphrase and the appliance heals.
    sign_until_device_error(&s, &gw).await;
    wait_for_state(&s, "ignited", 10).await;
    let r = post(&s, "/v1/sign", &gw, b"after".to_vec()).await;
    assert_eq!(r.status(), 200);
    s.stop();
    let audit = a.ok(&["audit", "list", "--last", "30"], false);
    assert!(audit.contains("ignition-change\tdenied"), "{audit}");
    assert!(audit.contains("ignition-change\tok"), "{audit}");
    assert!(audit.contains("token-recovered\tok"), "{audit}");
}

#[tokio::test]
async fn a_seal_while_the_token_is_recovering_is_not_undone() {
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("logins");
    let a = behind_shim(&[
        ("ORGKEY_SHIM_FAIL_EVERY", "3"),
        ("ORGKEY_SHIM_LOGIN_LOG", log.to_str().unwrap()),
        ("ORGKEY_SHIM_LOGIN_DELAY_MS", "1500"),
    ]);
    let admin = a.client("admin", "admin");
    let gw = a.client("gateway", "sign");
    let s = a.serve(&[]);
    assert_eq!(ignite(&s, &admin, PASSPHRASE).await.status(), 200);
    let before = login_log(&log).len();
    sign_until_device_error(&s, &gw).await;
    // Wait until the recovery's C_Login is under way, then seal.
    let t = std::time::Instant::now();
    while !login_log(&log)[before..].iter().any(|l| l == "start") {
        assert!(t.elapsed() < std::time::Duration::from_secs(10));
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let r = http()
        .delete(s.url("/v1/ignition"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The recovery's login finishes after the seal; the seal stands.
    wait_for_state(&s, "sealed", 10).await;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(get_json(&s, "/v1/status").await["state"], "sealed");
    let r = post(&s, "/v1/sign", &gw, b"x".to_vec()).await;
    assert_eq!(error_code(r).await, "sealed");
    // And the token is logged out: only the right passphrase ignites.
    assert_error(
        ignite(&s, &admin, "totally-wrong-passphrase").await,
        401,
        "bad_passphrase",
    )
    .await;
}

/// Polls the audit log until a row contains `what` (at most `secs` seconds).
async fn wait_for_audit(a: &Appliance, what: &str, secs: u64) -> String {
    let t = std::time::Instant::now();
    loop {
        let audit = a.ok(&["audit", "list", "--last", "50"], false);
        if audit.contains(what) {
            return audit;
        }
        assert!(
            t.elapsed() < std::time::Duration::from_secs(secs),
            "no {what:?} in the audit log:\n{audit}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_device_error_during_maintenance_starts_recovery() {
    // The org cert has no CRL yet: the first maintenance run after ignition
    // makes one, and that signature meets the device error (no scheduled
    // state backup signs before it).
    let a = Appliance::with_org_key("p256");
    a.ok(
        &["org-cert", "self-sign", "--subject", "CN=Maintenance CA"],
        true,
    );
    through_shim(&a, &[("ORGKEY_SHIM_FAIL_EVERY", "1")]);
    a.set_config("backup.interval", "off");
    // Ignited at start, so the scheduler's first look finds it ignited.
    let s = a.serve(&["--ignition-passphrase-file", a.pin_file.to_str().unwrap()]);
    wait_for_audit(&a, "\tmaintenance\tfailed", 30).await;
    // Recovery initializes the module again and logs in with the held
    // passphrase, as after a failed request.
    let audit = wait_for_audit(&a, "token-recovered\tok", 15).await;
    assert!(audit.contains("x509-crl\tfailed"), "{audit}");
    assert!(!audit.contains("state-backup"), "{audit}");
    wait_for_state(&s, "ignited", 10).await;
    s.stop();
}

#[tokio::test]
async fn a_device_error_during_a_scheduled_state_backup_starts_recovery() {
    let a = behind_shim(&[("ORGKEY_SHIM_FAIL_EVERY", "1")]);
    a.set_config("backup.dir", "scheduled");
    a.set_config("backup.interval", "1h");
    let admin = a.client("admin", "admin");
    let s = a.serve(&[]);
    assert_eq!(ignite(&s, &admin, PASSPHRASE).await.status(), 200);
    let audit = wait_for_audit(&a, "state-backup\tfailed", 30).await;
    assert!(audit.contains("token unavailable"), "{audit}");
    wait_for_audit(&a, "token-recovered\tok", 15).await;
    wait_for_state(&s, "ignited", 10).await;
    let status = admin_status(&s, &admin).await;
    assert_eq!(status["backup"]["outcome"], "failed", "{status}");
    s.stop();
}

/// Points `a` at a copy of the suite's HSM profile changed by `edit`.
fn use_profile(a: &Appliance, edit: impl FnOnce(&mut toml::Table)) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join(format!("hsm-profiles/{}.toml", test_profile())))
        .unwrap();
    let mut profile: toml::Table = text.parse().unwrap();
    edit(&mut profile);
    let path = a.path("profile.toml");
    std::fs::write(&path, toml::to_string(&profile).unwrap()).unwrap();
    a.set_config("token.profile", path.display().to_string());
}

const GENERATE: &[&str] = &[
    "org-key",
    "generate",
    "--algorithm",
    "p256",
    "--uid",
    "Example Org Key <orgkey@example.com>",
];

/// A token that refuses CKA_WRAP_WITH_TRUSTED in key templates (the
/// YubiHSM 2 does): with a profile that says so, org keys are generated
/// without it, non-exportable, and pass `token check`; with a profile that
/// does not, the refusal names the profile setting and leaves nothing behind.
#[test]
fn a_token_that_refuses_wrap_with_trusted_is_handled_by_its_profile() {
    let refusing = [("ORGKEY_SHIM_REJECT_WRAP_WITH_TRUSTED", "1")];

    // The default profile (exportable keys, the attribute taken as
    // accepted): the token's refusal says which setting to change.
    let a = Appliance::new();
    through_shim(&a, &refusing);
    if !profile().keys.exportable {
        use_profile(&a, |p| {
            config_table(p, "keys").insert("exportable".into(), true.into());
        });
    }
    let err = a.refused(GENERATE, true, "CKR_ATTRIBUTE_TYPE_INVALID");
    assert!(err.contains("wrap_with_trusted = false"), "{err}");
    assert!(err.contains("[keys]"), "{err}");
    a.refused(&["org-key", "show"], false, "no org key yet");
    let check = a.ok(&["token", "check"], true);
    assert!(check.contains("0 private key object(s)"), "{check}");

    // A profile that says the token lacks it: the keys are made without it.
    let b = Appliance::new();
    through_shim(&b, &refusing);
    use_profile(&b, |p| {
        let keys = config_table(p, "keys");
        keys.insert("exportable".into(), true.into());
        keys.insert("wrap_with_trusted".into(), false.into());
    });
    let out = b.ok(GENERATE, true);
    assert!(out.contains("non-exportable"), "{out}");
    assert!(out.contains("wrap_with_trusted = false"), "{out}");
    let show = b.ok(&["org-key", "show"], false);
    assert!(show.contains("exportable:       no"), "{show}");
    let check = b.ok(&["token", "check"], true);
    assert!(check.contains("token check passed"), "{check}");
    assert_eq!(
        check
            .matches("EXTRACTABLE=false NEVER_EXTRACTABLE=true WRAP_WITH_TRUSTED=false")
            .count(),
        3,
        "{check}"
    );
}
