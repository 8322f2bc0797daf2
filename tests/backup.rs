//! Key backup drill (token A -> file -> token B, checked by gpg and openssl),
//! refusals that leave token B empty, state backups encrypted to the org key
//! (gpg --list-packets) and restored through the token, and ignition
//! passphrase change and reset.

mod common;
use common::*;
use std::path::PathBuf;

const BACKUP_PASS: &str = "a long backup passphrase 42";

fn secret_file(a: &Appliance, name: &str, value: &str) -> PathBuf {
    let p = a.path(name);
    write_secret(&p, value);
    p
}

fn export(a: &Appliance, out: &str) -> std::process::Output {
    let so = secret_file(a, "so-pin", SO_PIN);
    let bp = secret_file(a, "backup-pass", BACKUP_PASS);
    a.run(
        &[
            "backup",
            "export-keys",
            "--out",
            out,
            "--so-pin-file",
            so.to_str().unwrap(),
            "--backup-passphrase-file",
            bp.to_str().unwrap(),
        ],
        true,
    )
}

fn restore(b: &Appliance, file: &str, pass: &str) -> std::process::Output {
    let bp = secret_file(b, "restore-pass", pass);
    b.run(
        &[
            "backup",
            "restore-keys",
            "--in",
            file,
            "--backup-passphrase-file",
            bp.to_str().unwrap(),
        ],
        true,
    )
}

fn private_keys_in_token(a: &Appliance) -> usize {
    let out = a.run(&["token", "check"], true);
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text.lines().next().unwrap_or_default().to_string();
    first
        .split(": ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("token check output: {text}"))
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test]
async fn key_backup_restores_into_another_token_and_signs_there() {
    if !profile().wrap.supported {
        // tokens_that_cannot_wrap_say_so_and_name_the_vendor_path covers it.
        eprintln!(
            "skipped under {}: the token cannot wrap org keys",
            test_profile()
        );
        return;
    }
    let a = Appliance::with_org_key("p256");
    a.ok(
        &["org-cert", "self-sign", "--subject", "CN=Example Org CA"],
        true,
    );
    let file = a.path("keys.backup");
    let file_s = file.to_str().unwrap();

    // The SO PIN is part of the ceremony.
    let so_wrong = secret_file(&a, "so-wrong", "not-the-so-pin");
    let bp = secret_file(&a, "bp", BACKUP_PASS);
    let out = a.run(
        &[
            "backup",
            "export-keys",
            "--out",
            file_s,
            "--so-pin-file",
            so_wrong.to_str().unwrap(),
            "--backup-passphrase-file",
            bp.to_str().unwrap(),
        ],
        true,
    );
    assert_refused(&out, "security officer PIN");
    assert!(!file.exists(), "nothing written after a failed ceremony");
    // Weak backup passphrases are refused.
    let weak = secret_file(&a, "weak", "short");
    let so = secret_file(&a, "so", SO_PIN);
    let out = a.run(
        &[
            "backup",
            "export-keys",
            "--out",
            file_s,
            "--so-pin-file",
            so.to_str().unwrap(),
            "--backup-passphrase-file",
            weak.to_str().unwrap(),
        ],
        true,
    );
    assert_refused(&out, "at least 12");
    assert!(!file.exists(), "nothing written after a weak passphrase");

    let out = export(&a, file_s);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.starts_with("orgkey-key-backup 1\n"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let shown = a.ok(&["backup", "inspect", file_s], false);
    for want in [
        "certify",
        "sign",
        "encrypt",
        "org-cert",
        "argon2id m=65536 KiB t=3",
    ] {
        assert!(shown.contains(want), "{want:?} missing from:\n{shown}");
    }
    // The file is never overwritten.
    assert_refused(&export(&a, file_s), "File exists");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), text);

    // Token B: wrong passphrase, modified and truncated files leave nothing behind.
    let b = Appliance::new();
    assert_eq!(private_keys_in_token(&b), 0);
    const MODIFIED: &str = "the backup passphrase is wrong, or the backup file was modified";
    assert_refused(
        &restore(&b, file_s, "the wrong backup passphrase"),
        MODIFIED,
    );
    // Changes the parser accepts (`inspect` reads the file) are caught by the
    // MAC: the backup's creation time, and one base64 digit of a wrapped key.
    let (header, rest) = text.split_once('\n').unwrap();
    let (json, mac) = rest.split_once('\n').unwrap();
    let created: i64 = json
        .strip_prefix("{\"created\":")
        .and_then(|r| r.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the body starts with its creation time: {json}"));
    let blob_at = json.find("\"blob\":\"").unwrap() + "\"blob\":\"".len() + 8;
    let mut flipped = json.as_bytes().to_vec();
    flipped[blob_at] = if flipped[blob_at] == b'A' { b'B' } else { b'A' };
    for (what, body) in [
        (
            "creation time",
            json.replacen(
                &format!("\"created\":{created},"),
                &format!("\"created\":{},", created - 86_400),
                1,
            ),
        ),
        ("wrapped key", String::from_utf8(flipped).unwrap()),
    ] {
        assert_ne!(body, json, "{what}");
        let tampered = b.path("tampered.backup");
        std::fs::write(&tampered, format!("{header}\n{body}\n{mac}")).unwrap();
        let tampered = tampered.to_str().unwrap();
        b.ok(&["backup", "inspect", tampered], false);
        let err = assert_refused(&restore(&b, tampered, BACKUP_PASS), MODIFIED);
        assert!(!err.contains("damaged"), "{what}: {err}");
        std::fs::remove_file(tampered).unwrap();
    }
    // Cut short in the body, or in the MAC line.
    let truncated = b.path("truncated.backup");
    std::fs::write(&truncated, &text[..text.len() / 2]).unwrap();
    let out = restore(&b, truncated.to_str().unwrap(), BACKUP_PASS);
    assert_refused(&out, "the key backup is truncated (no MAC)");
    std::fs::write(&truncated, &text[..text.len() - 10]).unwrap();
    let out = restore(&b, truncated.to_str().unwrap(), BACKUP_PASS);
    assert_refused(
        &out,
        "the key backup is truncated or its MAC line is damaged",
    );
    assert_eq!(
        private_keys_in_token(&b),
        0,
        "failed restores left objects in the token"
    );

    let out = restore(&b, file_s, BACKUP_PASS);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(private_keys_in_token(&b), 4);
    assert!(
        b.ok(&["token", "check"], true)
            .contains("token check passed")
    );
    // Restoring again into B is refused (and changes nothing).
    assert_refused(
        &restore(&b, file_s, BACKUP_PASS),
        "this appliance already has org key",
    );
    assert_eq!(private_keys_in_token(&b), 4);
    // So is another organization's org key, unless --replace says so.
    let c = Appliance::with_org_key("p384");
    let other = c.path("other.backup");
    assert!(export(&c, other.to_str().unwrap()).status.success());
    let out = restore(&b, other.to_str().unwrap(), BACKUP_PASS);
    assert_refused(&out, "--replace");
    assert_eq!(private_keys_in_token(&b), 4);

    // Disaster recovery: A's state backup restores into B's fresh store
    // (another audit history, but nothing in it to lose), and A's API
    // clients work on B.
    let gw_a = a.client("gateway-a", "sign");
    let state_a = a.path("state-a.pgp");
    a.ok(
        &["backup", "state", "--out", state_a.to_str().unwrap()],
        true,
    );
    let out = b.run(
        &["backup", "restore-state", "--in", state_a.to_str().unwrap()],
        true,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        said.contains("signed by the org key") && said.contains("another history"),
        "{said}"
    );
    assert!(b.ok(&["client", "list"], false).contains("gateway-a"));
    assert!(b.ok(&["audit", "verify"], false).contains("intact"));

    // B signs; gpg verifies with A's certificate.
    let org_a = a.ok(&["org-key", "export"], false);
    let admin = b.client("admin", "admin");
    let signer = b.client("signer", "sign,issue");
    let s = b.serve(&[]);
    assert_eq!(ignite(&s, &admin, PASSPHRASE).await.status(), 200);
    let r = post(&s, "/v1/sign", &gw_a, b"restored".to_vec()).await;
    assert_eq!(r.status(), 200, "A's gateway client signs on B");
    let r = post(&s, "/v1/sign", &signer, b"restored".to_vec()).await;
    assert_eq!(r.status(), 200);
    let sig = r.bytes().await.unwrap();
    let gpg = Gpg::new();
    gpg.import(org_a.as_bytes());
    let (ok, err) = gpg.verify(&sig, b"restored");
    assert!(ok, "gpg: {err}");
    // B issues S/MIME certificates that chain to A's org cert.
    let dir = b.dir.path();
    std::fs::write(dir.join("org-a.pem"), a.ok(&["org-cert", "export"], false)).unwrap();
    openssl_ok(
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "u.key",
            "-out",
            "u.csr",
            "-subj",
            "/emailAddress=u@example.com",
        ],
    );
    let r = post(
        &s,
        "/v1/x509/issue",
        &signer,
        std::fs::read(dir.join("u.csr")).unwrap(),
    )
    .await;
    assert_eq!(r.status(), 201);
    std::fs::write(dir.join("u.pem"), r.text().await.unwrap()).unwrap();
    openssl_ok(
        dir,
        &[
            "verify",
            "-CAfile",
            "org-a.pem",
            "-purpose",
            "smimesign",
            "u.pem",
        ],
    );
}

/// Runs SQL on the appliance's store (SQLite or PostgreSQL).
fn sql(a: &Appliance, q: &str) -> String {
    a.sql(q).trim().to_string()
}

#[tokio::test]
async fn a_restore_whose_org_cert_cannot_be_recorded_leaves_neither_row_nor_key() {
    if !profile().wrap.supported {
        eprintln!(
            "skipped under {}: the token cannot wrap org keys",
            test_profile()
        );
        return;
    }
    let a = Appliance::with_org_key("p256");
    a.ok(
        &["org-cert", "self-sign", "--subject", "CN=Restore CA"],
        true,
    );
    let file = a.path("keys.backup");
    let out = export(&a, file.to_str().unwrap());
    assert!(out.status.success(), "{}", stderr(&out));

    // Recording the org cert fails after the org key was recorded in the
    // same transaction (debug-build failure hook).
    let b = Appliance::new();
    let audit_before = sql(&b, "SELECT COUNT(*) FROM audit_log");
    let bp = secret_file(&b, "restore-pass", BACKUP_PASS);
    let out = std::process::Command::new(bin())
        .args(["backup", "restore-keys", "--in"])
        .arg(&file)
        .arg("--backup-passphrase-file")
        .arg(&bp)
        .arg("--passphrase-file")
        .arg(&b.pin_file)
        .env("ORGKEY_CONFIG", &b.config)
        .env("ORGKEY_LOG", "warn")
        .env("ORGKEY_FAIL_AT", "restore-before-org-cert")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("recording the org cert"),
        "{}",
        stderr(&out)
    );
    assert_eq!(sql(&b, "SELECT COUNT(*) FROM org_keys"), "0");
    assert_eq!(sql(&b, "SELECT COUNT(*) FROM org_certs"), "0");
    assert_eq!(sql(&b, "SELECT COUNT(*) FROM audit_log"), audit_before);
    assert_eq!(
        private_keys_in_token(&b),
        0,
        "the restored keys were removed again"
    );
    assert!(b.ok(&["audit", "verify"], false).contains("intact"));

    // Nothing is in the way of the same restore afterwards.
    let out = restore(&b, file.to_str().unwrap(), BACKUP_PASS);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(private_keys_in_token(&b), 4);
    assert_eq!(sql(&b, "SELECT COUNT(*) FROM org_keys"), "1");
    assert_eq!(
        sql(&b, "SELECT COUNT(*) FROM org_certs WHERE state = 'active'"),
        "1"
    );
    assert!(
        b.ok(&["token", "check"], true)
            .contains("token check passed")
    );
}

#[tokio::test]
async fn tokens_that_cannot_wrap_say_so_and_name_the_vendor_path() {
    // SoftHSM2 wraps EC and RSA keys but not Ed25519; Kryoptic wraps nothing
    // under a trusted key. Either way the profile's vendor path is named.
    let p = profile();
    let (alg, why) = if p.wrap.supported {
        assert!(
            p.wrap
                .not_wrappable
                .contains(&orgkey::config::OrgKeyAlgorithm::Ed25519)
        );
        ("ed25519", "cannot wrap ed25519")
    } else {
        ("p256", "cannot export keys wrapped under a trusted key")
    };
    let a = Appliance::with_org_key(alg);
    let out = export(&a, a.path("x.backup").to_str().unwrap());
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(
        e.contains(why) && e.contains(&p.wrap.vendor_backup[..40]),
        "{e}"
    );
    assert!(!a.path("x.backup").exists());
}

#[tokio::test]
async fn state_backups_are_encrypted_to_the_org_key_and_restore_through_the_token() {
    let a = Appliance::with_org_key("p256");
    let admin = a.client("admin", "admin");
    let gw = a.client("gateway", "certify");
    let s = a.serve(&[]);
    assert_eq!(ignite(&s, &admin, PASSPHRASE).await.status(), 200);
    let user = Gpg::new();
    let fpr = user.gen_key("Grace <grace@example.com>", "ed25519", "1y", &[]);
    assert_eq!(
        post(&s, "/v1/certify", &gw, user.export(&fpr))
            .await
            .status(),
        200
    );
    s.stop();

    // An offline recovery key as an extra recipient: gpg can then read the
    // backup without the token.
    let recovery = Gpg::new();
    let rfpr = recovery.gen_key("Recovery <recovery@example.com>", "default", "never", &[]);
    recovery.ok(
        &[
            "--passphrase",
            "",
            "--pinentry-mode",
            "loopback",
            "--quick-add-key",
            &rfpr,
            "default",
            "encr",
            "never",
        ],
        None,
    );
    std::fs::write(a.path("data/recovery.asc"), recovery.export(&rfpr)).unwrap();
    a.set_config("backup.recipients", vec!["recovery.asc"]);
    let out = a.path("state.pgp");
    // Signed in the token: the ignition passphrase is needed.
    let o = a.run(&["backup", "state", "--out", out.to_str().unwrap()], false);
    assert_refused(&o, "no terminal to ask for the ignition passphrase");
    assert!(!out.exists());
    a.ok(&["backup", "state", "--out", out.to_str().unwrap()], true);
    // Never overwritten.
    let made = std::fs::read(&out).unwrap();
    a.refused(
        &["backup", "state", "--out", out.to_str().unwrap()],
        true,
        "state backups never overwrite a file",
    );
    assert_eq!(std::fs::read(&out).unwrap(), made);
    // gpg decrypts with the recovery key and checks the org key's signature.
    let org = a.ok(&["org-key", "export"], false);
    recovery.import(org.as_bytes());
    let plain = recovery.run(
        &[
            "--pinentry-mode",
            "loopback",
            "--passphrase",
            "",
            "--status-fd",
            "2",
            "--decrypt",
            out.to_str().unwrap(),
        ],
        None,
    );
    let status = String::from_utf8_lossy(&plain.stderr).into_owned();
    assert!(plain.status.success(), "{status}");
    // A SQLite store's backup is the database file; a PostgreSQL store's a
    // logical snapshot.
    let magic: &[u8] = if on_postgres() {
        b"{\"format\":\"orgkey-logical-snapshot\""
    } else {
        b"SQLite format 3"
    };
    assert!(
        plain.stdout.starts_with(magic),
        "gpg decrypted the store: {}",
        String::from_utf8_lossy(&plain.stdout[..plain.stdout.len().min(80)])
    );
    let gpg = Gpg::new();
    gpg.import(org.as_bytes());
    let listing = gpg.ok(&["--with-colons", "--list-keys"], None);
    let signing_fpr = listing
        .lines()
        .skip_while(|l| !l.starts_with("sub:"))
        .collect::<Vec<_>>()
        .windows(2)
        .find(|w| w[0].split(':').nth(11).is_some_and(|c| c.contains('s')))
        .and_then(|w| w[1].split(':').nth(9).map(str::to_string))
        .expect("a signing subkey");
    assert!(
        status.contains("[GNUPG:] GOODSIG")
            && status.contains(&format!("[GNUPG:] VALIDSIG {signing_fpr}")),
        "gpg: a good signature by the org signing subkey: {status}"
    );
    let listing = gpg.ok(&["--with-colons", "--list-keys"], None);
    let enc_keyid = listing
        .lines()
        .skip_while(|l| !l.starts_with("sub:"))
        .filter(|l| l.starts_with("sub:") && l.split(':').nth(11).is_some_and(|c| c.contains('e')))
        .find_map(|l| l.split(':').nth(4).map(str::to_string))
        .expect("an encryption subkey");
    let packets = gpg.run(&["--list-packets", out.to_str().unwrap()], None);
    let text = String::from_utf8_lossy(&packets.stdout).into_owned()
        + &String::from_utf8_lossy(&packets.stderr);
    assert!(
        text.contains(":pubkey enc packet:") && text.contains(&format!("keyid {enc_keyid}")),
        "{text}"
    );
    assert!(
        !std::fs::read(&out)
            .unwrap()
            .windows(magic.len())
            .any(|w| w == magic)
    );

    // Restoring over a store with users needs --replace; then the users come back.
    let restore = |extra: &[&str]| {
        let mut args = vec!["backup", "restore-state", "--in", out.to_str().unwrap()];
        args.extend_from_slice(extra);
        a.run(&args, true)
    };
    let o = restore(&[]);
    assert!(
        !o.status.success() && stderr(&o).contains("--replace"),
        "{}",
        stderr(&o)
    );
    // The store moved on after the backup: restoring it is a rollback,
    // refused unless asked for, and then recorded.
    a.ok(&["users", "remove", "grace@example.com"], false);
    let o = restore(&["--replace"]);
    assert!(
        !o.status.success()
            && stderr(&o).contains("older than this store")
            && stderr(&o).contains("--allow-rollback"),
        "{}",
        stderr(&o)
    );
    assert!(a.ok(&["users", "list"], false).contains("removed"));
    let o = restore(&["--replace", "--allow-rollback"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let audit = a.ok(&["audit", "list", "--last", "5"], false);
    assert!(
        audit.contains("state-restore\tok") && audit.contains("rollback allowed by the operator"),
        "{audit}"
    );
    let listed = a.ok(&["users", "list"], false);
    assert!(
        listed.contains("grace@example.com\tactive"),
        "the backup's state is back: {listed}"
    );
    assert!(a.ok(&["audit", "verify"], false).contains("intact"));
    // A damaged backup is refused and the store stays as it is.
    let mut bytes = std::fs::read(&out).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    std::fs::write(&out, &bytes).unwrap();
    let o = restore(&["--replace", "--allow-rollback"]);
    assert_refused(&o, "Message has been manipulated");
    assert!(
        a.ok(&["users", "list"], false)
            .contains("grace@example.com\tactive")
    );
}

#[tokio::test]
async fn the_ignition_passphrase_can_be_changed_and_reset_by_the_security_officer() {
    let a = Appliance::with_org_key("p256");
    let admin = a.client("admin", "admin");
    let new1 = secret_file(&a, "new1", "a brand new passphrase");
    let wrong = secret_file(&a, "wrong", "not the current one");
    let out = a.run(
        &[
            "ignition",
            "change",
            "--passphrase-file",
            wrong.to_str().unwrap(),
            "--new-passphrase-file",
            new1.to_str().unwrap(),
        ],
        false,
    );
    assert!(
        !out.status.success() && stderr(&out).contains("bad ignition passphrase"),
        "{}",
        stderr(&out)
    );
    a.ok(
        &[
            "ignition",
            "change",
            "--passphrase-file",
            a.pin_file.to_str().unwrap(),
            "--new-passphrase-file",
            new1.to_str().unwrap(),
        ],
        false,
    );
    let s = a.serve(&[]);
    assert_error(ignite(&s, &admin, PASSPHRASE).await, 401, "bad_passphrase").await;
    assert_eq!(
        ignite(&s, &admin, "a brand new passphrase").await.status(),
        200
    );
    s.stop();
    // Lost it: the security officer sets another.
    let new2 = secret_file(&a, "new2", "the officer's fresh passphrase");
    let so = secret_file(&a, "so", SO_PIN);
    let bad_so = secret_file(&a, "bad-so", "wrong-officer-pin");
    let out = a.run(
        &[
            "ignition",
            "reset",
            "--so-pin-file",
            bad_so.to_str().unwrap(),
            "--new-passphrase-file",
            new2.to_str().unwrap(),
        ],
        false,
    );
    assert!(
        !out.status.success() && stderr(&out).contains("security officer"),
        "{}",
        stderr(&out)
    );
    a.ok(
        &[
            "ignition",
            "reset",
            "--so-pin-file",
            so.to_str().unwrap(),
            "--new-passphrase-file",
            new2.to_str().unwrap(),
        ],
        false,
    );
    let s = a.serve(&[]);
    assert_error(
        ignite(&s, &admin, "a brand new passphrase").await,
        401,
        "bad_passphrase",
    )
    .await;
    assert_eq!(
        ignite(&s, &admin, "the officer's fresh passphrase")
            .await
            .status(),
        200
    );
    let audit = a.ok(&["audit", "list", "--last", "20"], false);
    assert!(
        audit.contains("ignition-change") && audit.contains("ignition-reset"),
        "{audit}"
    );
}

#[tokio::test]
async fn serve_writes_scheduled_state_backups_and_reports_them() {
    let a = Appliance::with_org_key("p256");
    a.edit_config(|t| {
        let backup = config_table(t, "backup");
        backup.insert("dir".into(), "scheduled".into());
        backup.insert("interval".into(), "1m".into());
        backup.insert("keep".into(), 1.into());
    });
    let admin = a.client("admin", "admin");
    let s = a.serve(&[]);
    // Sealed, the org key cannot sign a backup: it waits for ignition.
    let mut status = serde_json::Value::Null;
    for _ in 0..100 {
        status = admin_status(&s, &admin).await;
        if !status["backup"].is_null() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(status["backup"]["outcome"], "skipped", "{status}");
    assert_eq!(ignite(&s, &admin, PASSPHRASE).await.status(), 200);
    for _ in 0..200 {
        status = admin_status(&s, &admin).await;
        if status["backup"]["outcome"] != "skipped" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(status["backup"]["outcome"], "ok", "{status}");
    let file = std::path::PathBuf::from(status["backup"]["file"].as_str().unwrap());
    assert!(
        file.starts_with(a.dir.path().join("data/scheduled")),
        "{}",
        file.display()
    );
    let gpg = Gpg::new();
    let packets = gpg.run(&["--list-packets", file.to_str().unwrap()], None);
    let text = String::from_utf8_lossy(&packets.stdout);
    assert!(text.contains(":pubkey enc packet:"), "{text}");
    s.stop();
    assert!(a.ok(&["audit", "list"], false).contains("state-backup"));
}

#[tokio::test]
async fn state_backups_the_org_key_did_not_sign_are_refused_and_change_nothing() {
    if skip_on_postgres("the forged store is made with sqlite3 from the SQLite file") {
        return;
    }
    let a = Appliance::with_org_key("p256");
    let admin = a.client("admin", "admin");
    // The attacker's store: this appliance's own, plus a client with every
    // scope and a token the attacker knows.
    let evil = a.client("evil", "sign,certify,issue,revoke,admin");
    let forged_db = a.path("forged.db");
    let o = std::process::Command::new("sqlite3")
        .arg(a.db())
        .arg(format!(".backup {}", forged_db.display()))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    a.ok(&["client", "remove", "evil"], false);
    let before = a.ok(&["audit", "verify"], false);

    // Anyone can encrypt to the public org key; an attacker can also sign.
    let gpg = Gpg::new();
    let org = a.ok(&["org-key", "export"], false);
    gpg.import(org.as_bytes());
    let org_fpr = a
        .ok(&["org-key", "show"], false)
        .lines()
        .find_map(|l| {
            l.split_whitespace()
                .find(|w| w.len() == 40)
                .map(str::to_string)
        })
        .expect("the org key fingerprint");
    let attacker = gpg.gen_key("Mallory <mallory@example.net>", "ed25519", "1y", &[]);
    let unsigned = a.path("unsigned.pgp");
    let foreign = a.path("foreign.pgp");
    for (out, sign) in [(&unsigned, false), (&foreign, true)] {
        let mut args = vec![
            "--batch",
            "--yes",
            "--trust-model",
            "always",
            "--pinentry-mode",
            "loopback",
            "--passphrase",
            "",
            "--recipient",
            &org_fpr,
            "--output",
            out.to_str().unwrap(),
        ];
        if sign {
            args.extend(["--local-user", &attacker, "--sign"]);
        }
        args.extend(["--encrypt", forged_db.to_str().unwrap()]);
        gpg.ok(&args, None);
    }
    for file in [&unsigned, &foreign] {
        let o = a.run(
            &[
                "backup",
                "restore-state",
                "--in",
                file.to_str().unwrap(),
                "--replace",
                "--allow-rollback",
            ],
            true,
        );
        assert!(
            !o.status.success() && stderr(&o).contains("not a backup this org key made and signed"),
            "{}: {}",
            file.display(),
            stderr(&o)
        );
    }
    // Nothing changed: no injected client, the same audit chain.
    assert!(!a.ok(&["client", "list"], false).contains("evil"));
    assert_eq!(a.ok(&["audit", "verify"], false), before);
    let s = a.serve(&[]);
    assert_error(ignite(&s, &evil, PASSPHRASE).await, 401, "unauthorized").await;
    assert_eq!(ignite(&s, &admin, PASSPHRASE).await.status(), 200);
}
