//! Appliance lifecycle: init, org key generation rules, token check, auth,
//! ignition back-off, seal, restart, audit tamper detection, listener rules.

mod common;
use common::*;
use std::process::Command;

#[test]
fn init_refuses_weak_secrets_and_an_existing_appliance() {
    let dir = tempfile::tempdir().unwrap();
    let weak = dir.path().join("weak");
    let so = dir.path().join("so");
    write_secret(&weak, "short");
    write_secret(&so, SO_PIN);
    let out = Command::new(bin())
        .args(["init", "--create-softhsm-token", "--data-dir"])
        .arg(dir.path().join("d"))
        .arg("--ignition-passphrase-file")
        .arg(&weak)
        .arg("--so-pin-file")
        .arg(&so)
        .output()
        .unwrap();
    assert_refused(&out, "at least 10 characters");
    assert!(
        !dir.path().join("d").exists(),
        "nothing written after a refused init"
    );

    let a = Appliance::new();
    let out = Command::new(bin())
        .args(["init", "--data-dir"])
        .arg(a.dir.path().join("data"))
        .output()
        .unwrap();
    assert_refused(&out, "already exists");

    let out = Command::new(bin())
        .args(["init", "--domain", "not a domain", "--data-dir"])
        .arg(dir.path().join("e"))
        .output()
        .unwrap();
    assert_refused(&out, "not a valid DNS name");
    assert!(!dir.path().join("e").exists());

    // Only software token profiles can make a token; a hardware profile says
    // so, and a module that is not there is named. Nothing is written.
    let pin = dir.path().join("pin");
    write_secret(&pin, PASSPHRASE);
    for (profile, module, expect) in [
        ("yubihsm2", None, "not a software token"),
        (
            "kryoptic",
            Some("/nonexistent/libkryoptic_pkcs11.so"),
            "/nonexistent/libkryoptic_pkcs11.so",
        ),
    ] {
        let mut c = Command::new(bin());
        c.args(["init", "--create-token", "--profile", profile, "--data-dir"])
            .arg(dir.path().join("f"))
            .arg("--ignition-passphrase-file")
            .arg(&pin)
            .arg("--so-pin-file")
            .arg(&so);
        if let Some(m) = module {
            c.args(["--module", m]);
        }
        assert_refused(&c.output().unwrap(), expect);
        assert!(!dir.path().join("f").exists(), "{profile}: nothing written");
    }

    // Files holding state are private.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let conf = a.module_env().1;
        let conf = conf
            .strip_prefix(a.dir.path())
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        let mut files = vec!["data/orgkey.toml", &conf];
        // On PostgreSQL there is no store file to check.
        if !on_postgres() {
            files.push("data/orgkey.db");
        }
        for f in files {
            let mode = std::fs::metadata(a.dir.path().join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "{f} is {mode:o}");
        }
    }
}

#[test]
fn generation_refuses_replacement_without_flag_and_token_check_passes() {
    let a = Appliance::with_org_key("p256");
    let first = a.ok(&["org-key", "show"], false);
    let out = a.run(
        &["org-key", "generate", "--uid", "Second <x@example.com>"],
        true,
    );
    let err = assert_refused(&out, "already exists");
    assert!(err.contains("--replace"), "{err}");
    assert_eq!(
        a.ok(&["org-key", "show"], false),
        first,
        "refused generation changed nothing"
    );

    let check = a.ok(&["token", "check"], true);
    assert!(check.contains("3 private key object(s)"), "{check}");
    assert!(check.contains("token check passed"), "{check}");
    // The profile's backup posture: exportable only under a trusted key, or
    // never extractable (tokens that cannot wrap under a trusted key).
    let posture = if profile().keys.exportable {
        "WRAP_WITH_TRUSTED=true"
    } else {
        "EXTRACTABLE=false NEVER_EXTRACTABLE=true"
    };
    assert!(
        check.matches(posture).count() == 3 && check.contains("SENSITIVE=true"),
        "{check}"
    );
    assert_eq!(check.matches("  ok").count(), 3, "{check}");

    // Replacement works with the flag; the old objects stay and still pass.
    let out = a.ok(
        &[
            "org-key",
            "generate",
            "--replace",
            "--non-exportable",
            "--uid",
            "New <n@example.com>",
        ],
        true,
    );
    assert!(out.contains("non-exportable"), "{out}");
    let show = a.ok(&["org-key", "show"], false);
    assert_ne!(show, first);
    assert!(show.contains("New <n@example.com>"));
    let check = a.ok(&["token", "check"], true);
    assert!(check.contains("6 private key object(s)"), "{check}");
    let never_extractable = if profile().keys.exportable { 3 } else { 6 };
    assert_eq!(
        check.matches(" EXTRACTABLE=false").count(),
        never_extractable,
        "{check}"
    );
    assert!(check.contains("token check passed"), "{check}");

    // Bad input: unknown algorithm, bad expiry, wrong passphrase.
    a.refused(
        &["org-key", "generate", "--algorithm", "dsa", "--uid", "x"],
        true,
        "invalid value 'dsa' for '--algorithm",
    );
    a.refused(
        &[
            "org-key",
            "generate",
            "--replace",
            "--expires",
            "soon",
            "--uid",
            "x",
        ],
        true,
        "--expires",
    );
    let wrong = a.path("wrong");
    write_secret(&wrong, "wrong passphrase here");
    a.refused(
        &[
            "org-key",
            "generate",
            "--replace",
            "--uid",
            "x",
            "--passphrase-file",
            wrong.to_str().unwrap(),
        ],
        false,
        "bad ignition passphrase",
    );
    assert!(
        a.ok(&["token", "check"], true)
            .contains("6 private key object(s)"),
        "nothing half-made"
    );
}

#[test]
fn token_check_flags_a_key_that_can_be_exported_in_the_clear() {
    let a = Appliance::with_org_key("p256");
    let module = a.module();
    let (var, conf) = a.module_env();
    // An independent tool makes a key the way a careless admin would.
    let out = Command::new("pkcs11-tool")
        .env(var, conf)
        .args([
            "--module",
            module.to_str().unwrap(),
            "--token-label",
            "orgkey",
            "--login",
            "--pin",
            PASSPHRASE,
        ])
        .args([
            "--keypairgen",
            "--key-type",
            "EC:prime256v1",
            "--label",
            "careless",
            "--id",
            "c0ffee",
        ])
        .args(["--usage-sign", "--usage-decrypt", "--extractable"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pkcs11-tool: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = a.run(&["token", "check"], true);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "check must fail:\n{text}");
    assert!(text.contains("careless"), "{text}");
    assert!(
        text.contains("extractable without CKA_WRAP_WITH_TRUSTED"),
        "{text}"
    );
    assert!(text.contains("token check FAILED"), "{text}");
    // The org keys themselves are still fine.
    assert_eq!(text.matches("  ok").count(), 3, "{text}");
}

#[tokio::test]
async fn bearer_tokens_and_scopes_are_enforced() {
    let a = Appliance::with_org_key("p256");
    let admin = a.client("admin", "admin");
    let gw = a.client("gw", "sign,certify");
    let s = a.serve(&["--ignition-passphrase-file", a.pin_file.to_str().unwrap()]);
    let post = |tok: Option<String>| {
        let mut r = http().post(s.url("/v1/sign")).body("x");
        if let Some(t) = tok {
            r = r.header("authorization", t);
        }
        r.send()
    };
    for bad in [
        None,
        Some("Bearer".to_string()),
        Some("Basic YWRtaW46YWRtaW4=".into()),
        Some("Bearer okc_0000000000000000_AAAA".into()),
        Some(format!("Bearer {}x", &gw)),
        Some(format!("Bearer {}", gw.replace("okc_", "okx_"))),
    ] {
        let r = post(bad.clone()).await.unwrap();
        assert_eq!(r.status(), 401, "{bad:?}");
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        assert_eq!(error_code(r).await, "unauthorized");
    }
    // Admin cannot sign; the gateway cannot ignite or seal.
    let r = post(Some(format!("Bearer {admin}"))).await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(error_code(r).await, "forbidden");
    assert_error(ignite(&s, &gw, PASSPHRASE).await, 403, "forbidden").await;
    let r = http()
        .delete(s.url("/v1/ignition"))
        .bearer_auth(&gw)
        .send()
        .await
        .unwrap();
    assert_error(r, 403, "forbidden").await;
    assert_eq!(
        post(Some(format!("Bearer {gw}"))).await.unwrap().status(),
        200
    );

    // Removing a client revokes its token at once.
    a.ok(&["client", "remove", "gw"], false);
    assert_error(
        post(Some(format!("Bearer {gw}"))).await.unwrap(),
        401,
        "unauthorized",
    )
    .await;
    let list = a.ok(&["client", "list"], false);
    assert!(
        list.contains("admin\tadmin") && !list.contains("gw"),
        "{list}"
    );
    a.refused(
        &["client", "add", "admin", "--scopes", "sign"],
        false,
        "a client named \"admin\" already exists",
    );
    a.refused(
        &["client", "add", "x", "--scopes", "root"],
        false,
        "unknown scope \"root\"",
    );
    // A token file is never overwritten.
    let admin_file = a.path("admin.token");
    let before = std::fs::read(&admin_file).unwrap();
    a.refused(
        &[
            "client",
            "add",
            "other",
            "--scopes",
            "sign",
            "--token-out",
            admin_file.to_str().unwrap(),
        ],
        false,
        "exists; refusing to overwrite it",
    );
    assert_eq!(std::fs::read(&admin_file).unwrap(), before);
    let list2 = a.ok(&["client", "list"], false);
    assert_eq!(list2, list, "refused additions changed nothing");
}

#[tokio::test]
async fn ignition_backs_off_after_five_failures_and_bad_bodies_are_refused() {
    let a = Appliance::with_org_key("p256");
    let admin = a.client("admin", "admin");
    let s = a.serve(&[]);

    // Malformed ignition requests are refused without counting as guesses.
    let r = http()
        .post(s.url("/v1/ignition"))
        .bearer_auth(&admin)
        .body("passphrase=x")
        .send()
        .await
        .unwrap();
    assert_error(r, 415, "unsupported_media_type").await;
    for body in [
        "{",
        "[]",
        "{\"pass\": \"x\"}",
        "{\"passphrase\": 5}",
        "{\"passphrase\": \"x\", \"y\": 1}",
    ] {
        let r = http()
            .post(s.url("/v1/ignition"))
            .bearer_auth(&admin)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{body}");
        assert_eq!(error_code(r).await, "bad_request");
    }
    let huge = format!("{{\"passphrase\": \"{}\"}}", "a".repeat(100_000));
    let r = http()
        .post(s.url("/v1/ignition"))
        .bearer_auth(&admin)
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_error(r, 413, "body_too_large").await;

    for i in 1..=5 {
        let r = ignite(&s, &admin, &format!("guess number {i}")).await;
        if i == 5 {
            assert!(
                r.headers().contains_key("retry-after"),
                "the fifth failure announces the back-off"
            );
        }
        assert_error(r, 401, "bad_passphrase").await;
    }
    let r = ignite(&s, &admin, PASSPHRASE).await;
    assert_eq!(
        r.status(),
        429,
        "even the right passphrase waits out the back-off"
    );
    let wait: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=10).contains(&wait), "{wait}");
    assert_eq!(error_code(r).await, "ignition_backoff");
    let st: serde_json::Value = get_json(&s, "/v1/status").await;
    assert_eq!(st["state"], "sealed");

    drop(s);
    let list = a.ok(&["audit", "list"], false);
    assert_eq!(list.matches("\tignition\tdenied").count(), 5, "{list}");
    assert_eq!(list.matches("\tignition\trefused").count(), 1, "{list}");
}

#[tokio::test]
async fn seal_and_restart_return_to_sealed() {
    let a = Appliance::with_org_key("p256");
    let admin = a.client("admin", "admin");
    let gw = a.client("gw", "sign");
    let s = a.serve(&[]);
    // The CLI ignites through the API.
    let out = a.remote("ignite", &s.url, &[], true);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st: serde_json::Value = admin_status(&s, &admin).await;
    assert_eq!(st["state"], "ignited");
    assert_eq!(st["token"]["label"], "orgkey");
    assert!(!st.to_string().contains(PASSPHRASE));
    let r = http()
        .post(s.url("/v1/sign"))
        .bearer_auth(&gw)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Seal over the API: signing stops.
    let r = http()
        .delete(s.url("/v1/ignition"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http()
        .post(s.url("/v1/sign"))
        .bearer_auth(&gw)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_error(r, 503, "sealed").await;

    // Ignite again, then restart: the new process is sealed.
    assert_eq!(ignite(&s, &admin, PASSPHRASE).await.status(), 200);
    assert!(s.stop().success(), "graceful shutdown");
    let s = a.serve(&[]);
    let st: serde_json::Value = get_json(&s, "/v1/status").await;
    assert_eq!(st["state"], "sealed");
    let r = http()
        .post(s.url("/v1/sign"))
        .bearer_auth(&gw)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_error(r, 503, "sealed").await;
    // The CLI reports a wrong passphrase clearly.
    let wrong = a.path("wrong");
    write_secret(&wrong, "definitely wrong");
    let out = a.remote(
        "ignite",
        &s.url,
        &["--passphrase-file", wrong.to_str().unwrap()],
        false,
    );
    assert_refused(&out, "bad ignition passphrase");
    drop(s);
    let list = a.ok(&["audit", "list"], false);
    assert!(list.contains("\tseal\tok"), "{list}");
}

/// `/v1/status` without a token tells a probe what it needs and nothing
/// about the host; the details (token, backups with their file, maintenance)
/// need an admin token, and a bad token is refused as everywhere.
#[tokio::test]
async fn status_details_are_for_admins_only() {
    let a = Appliance::with_org_key("p256");
    a.set_config("backup.dir", "scheduled");
    a.set_config("backup.interval", "1m");
    let admin = a.client("admin", "admin");
    let gw = a.client("gw", "sign");
    let s = a.serve(&["--ignition-passphrase-file", a.pin_file.to_str().unwrap()]);
    // Wait for the scheduled backup: its report names the file.
    let mut details = serde_json::Value::Null;
    for _ in 0..300 {
        details = admin_status(&s, &admin).await;
        if details["backup"]["outcome"] == "ok" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(details["backup"]["outcome"], "ok", "{details}");
    let file = details["backup"]["file"].as_str().unwrap().to_string();
    assert!(file.contains("scheduled"), "{file}");
    assert_eq!(details["token"]["label"], "orgkey");
    assert!(details["token_sessions"].is_u64(), "{details}");
    assert!(details["openpgp_verification_cache"].is_u64(), "{details}");
    assert!(
        details["org_key"]["signing_subkey"].is_string(),
        "{details}"
    );
    let fpr = details["org_key"]["fingerprint"].as_str().unwrap();

    let public_view = |st: serde_json::Value| {
        let keys: Vec<&String> = st.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            ["org_key", "state", "token_down", "version"],
            "public status: {st}"
        );
        assert_eq!(st["state"], "ignited");
        assert_eq!(st["token_down"], false);
        assert_eq!(st["org_key"]["fingerprint"], fpr);
        assert!(st["org_key"].as_object().unwrap().contains_key("expires"));
        assert_eq!(st["org_key"].as_object().unwrap().len(), 2, "{st}");
        let text = st.to_string();
        assert!(!text.contains(&file), "{text}");
        assert!(!text.contains(a.dir.path().to_str().unwrap()), "{text}");
    };
    public_view(get_json(&s, "/v1/status").await);
    // A valid client without the admin scope sees the public answer.
    let r = http()
        .get(s.url("/v1/status"))
        .bearer_auth(&gw)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    public_view(r.json().await.unwrap());
    // A bad token is 401, not a silent public answer.
    for bad in [
        format!("{}x", &admin),
        "okc_0123456789abcdef_nope".to_string(),
    ] {
        let r = http()
            .get(s.url("/v1/status"))
            .bearer_auth(&bad)
            .send()
            .await
            .unwrap();
        assert_error(r, 401, "unauthorized").await;
    }
    let r = http()
        .get(s.url("/v1/status"))
        .header("authorization", "Basic YWRtaW46YWRtaW4=")
        .send()
        .await
        .unwrap();
    assert_error(r, 401, "unauthorized").await;
}

#[tokio::test]
async fn ignition_stays_sealed_when_the_token_keys_do_not_match_the_store() {
    let a = Appliance::with_org_key("p256");
    let admin = a.client("admin", "admin");
    // Point the signing subkey record at the primary key's objects.
    a.sql("UPDATE org_keys SET signing_id = primary_id WHERE state = 'active';");
    let s = a.serve(&[]);
    let r = ignite(&s, &admin, PASSPHRASE).await;
    assert_eq!(r.status(), 409);
    assert_eq!(error_code(r).await, "org_key_mismatch");
    let st: serde_json::Value = get_json(&s, "/v1/status").await;
    assert_eq!(st["state"], "sealed");
}

#[test]
fn audit_verify_names_the_first_tampered_row() {
    let a = Appliance::with_org_key("p256");
    a.client("one", "sign");
    a.client("two", "sign");
    assert!(a.ok(&["audit", "verify"], false).contains("intact: 4 rows"));
    a.sql("UPDATE audit_log SET detail = 'nothing to see' WHERE seq = 3;");
    let out = a.run(&["audit", "verify"], false);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("BROKEN at row 3"), "{text}");
}

#[test]
fn serve_refuses_plaintext_off_loopback_and_a_missing_token() {
    let a = Appliance::with_org_key("p256");
    a.refused(
        &["serve", "--listen", "0.0.0.0:0"],
        false,
        "refusing to serve plaintext",
    );

    a.set_config("token.label", "elsewhere");
    let err = a.refused(
        &["serve", "--listen", "127.0.0.1:0"],
        false,
        "no token with label \"elsewhere\"",
    );
    assert!(err.contains("\"orgkey\""), "{err}");
}

#[tokio::test]
async fn serves_tls_when_configured() {
    let a = Appliance::with_org_key("p256");
    let (ca, ca_key, cert, key) = (
        a.path("ca.pem"),
        a.path("ca.key"),
        a.path("tls.pem"),
        a.path("tls.key"),
    );
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(a.dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "tls.key",
        "-out",
        "tls.csr",
    ]);
    std::fs::write(
        a.path("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "tls.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "tls.pem",
    ]);
    let _ = ca_key;
    a.edit_config(|t| {
        let server = config_table(t, "server");
        server.insert("tls_cert".into(), cert.display().to_string().into());
        server.insert("tls_key".into(), key.display().to_string().into());
    });
    let s = a.serve(&[]);
    assert!(s.url.starts_with("https://"), "{}", s.url);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let pem = std::fs::read(&ca).unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .build()
        .unwrap();
    let r = client.get(s.url("/v1/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // The CLI ignites over TLS with the CA file.
    a.client("admin", "admin");
    let out = a.remote("ignite", &s.url, &["--ca-file", ca.to_str().unwrap()], true);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Without trusting the CA it fails.
    let out = a.remote("seal", &s.url, &[], false);
    // The message does not say why yet (reqwest's Display drops the
    // certificate error; left to the error-types rework of src/api/).
    assert_refused(&out, "cannot reach the appliance at https://");
    let st: serde_json::Value = client
        .get(s.url("/v1/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(st["state"], "ignited", "the refused seal changed nothing");
}

#[tokio::test]
async fn every_ignition_is_proven_by_the_token_even_while_it_is_logged_in() {
    let a = Appliance::new();
    let admin = a.client("admin", "admin");
    let gw = a.client("gateway", "sign");
    let s = a.serve(&[]);
    let r = ignite(&s, &admin, PASSPHRASE).await;
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(v["org_key"].is_null(), "{v}");
    // The org key is generated while the appliance is logged in without one.
    a.ok(
        &[
            "org-key",
            "generate",
            "--algorithm",
            "p256",
            "--uid",
            "Example Org Key <orgkey@example.com>",
        ],
        true,
    );
    // Loading it takes a full ignition: a wrong passphrase is refused by
    // the token, and the appliance is sealed afterwards.
    let r = ignite(&s, &admin, "totally-wrong-passphrase").await;
    assert_eq!(r.status(), 401);
    assert_eq!(error_code(r).await, "bad_passphrase");
    let st = get_json(&s, "/v1/status").await;
    assert_eq!(st["state"], "sealed", "{st}");
    let r = post(&s, "/v1/sign", &gw, b"x".to_vec()).await;
    assert_eq!(error_code(r).await, "sealed");
    let r = ignite(&s, &admin, PASSPHRASE).await;
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(v["org_key"].is_string(), "{v}");
    assert_eq!(post(&s, "/v1/sign", &gw, b"x".to_vec()).await.status(), 200);
    // Ignited with the org key: a second ignition is refused without using
    // its passphrase, and signing goes on.
    let r = ignite(&s, &admin, "totally-wrong-passphrase").await;
    assert_eq!(r.status(), 409);
    assert_eq!(error_code(r).await, "already_ignited");
    assert_eq!(post(&s, "/v1/sign", &gw, b"y".to_vec()).await.status(), 200);
    let out = a.remote("ignite", &s.url, &[], true);
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("already ignited"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::test]
async fn serve_holding_the_passphrase_never_writes_a_core_file() {
    use std::os::unix::process::ExitStatusExt;
    let a = Appliance::with_org_key("p256");
    let admin = a.client("admin", "admin");
    let mut s = a.serve_with_core_dumps_allowed();
    // Ignited: the passphrase is held for relogin.
    assert_eq!(ignite(&s, &admin, PASSPHRASE).await.status(), 200);
    let pid = s.child.id();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    let fields: Vec<&str> = core.split_whitespace().collect();
    assert_eq!(&fields[4..6], ["0", "0"], "{core}");
    Command::new("kill")
        .args(["-ABRT", &pid.to_string()])
        .status()
        .unwrap();
    let status = s.child.wait().unwrap();
    assert_eq!(status.signal(), Some(6), "{status:?}");
    assert!(!status.core_dumped(), "the crash wrote a core dump");
    let cores: Vec<_> = std::fs::read_dir(a.dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("core"))
        .collect();
    assert!(cores.is_empty(), "{cores:?}");
}

/// Every route with the scopes that may use it (`None`: public).
const ROUTES: &[(&str, &str, Option<&[&str]>)] = &[
    ("GET", "/v1/health", None),
    ("GET", "/v1/ready", None),
    ("GET", "/v1/status", None),
    ("GET", "/v1/org-key", None),
    ("GET", "/v1/openapi.json", None),
    ("GET", "/pks/lookup?op=get&search=alice%40example.com", None),
    ("GET", "/v1/org-cert", None),
    ("GET", "/v1/x509/crl", None),
    ("GET", "/v1/x509/crl/1", None),
    // Public by decision 0021; `[metrics] listen` moves it off this listener.
    ("GET", "/metrics", None),
    ("POST", "/v1/sign", Some(&["sign"])),
    ("POST", "/v1/ignition", Some(&["admin"])),
    ("DELETE", "/v1/ignition", Some(&["admin"])),
    ("POST", "/v1/ignition/passphrase", Some(&["admin"])),
    ("POST", "/v1/certify", Some(&["certify"])),
    (
        "GET",
        "/v1/users/alice@example.com",
        Some(&["certify", "admin"]),
    ),
    ("DELETE", "/v1/users/alice@example.com", Some(&["admin"])),
    (
        "POST",
        "/v1/users/alice@example.com/activity",
        Some(&["certify"]),
    ),
    ("POST", "/v1/x509/issue", Some(&["issue"])),
    ("POST", "/v1/x509/issue-from-openpgp", Some(&["issue"])),
    ("POST", "/v1/x509/revoke", Some(&["revoke"])),
    (
        "GET",
        "/v1/x509/certs/01",
        Some(&["issue", "revoke", "admin"]),
    ),
];

#[tokio::test]
async fn every_route_needs_exactly_its_scopes() {
    // The table covers every route the router has.
    let router = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/api/routes.rs"),
    )
    .unwrap();
    let mut routed: Vec<&str> = router
        .split(".route(")
        .skip(1)
        .filter_map(|r| r.trim_start().strip_prefix('"')?.split('"').next())
        .collect();
    routed.sort_unstable();
    routed.dedup();
    let shape = |p: &str| {
        p.split('?')
            .next()
            .unwrap()
            .replace("alice@example.com", "{email}")
            .replace("/crl/1", "/crl/{id}")
            .replace("/certs/01", "/certs/{serial}")
    };
    let mut tabled: Vec<String> = ROUTES.iter().map(|(_, p, _)| shape(p)).collect();
    tabled.sort_unstable();
    tabled.dedup();
    assert_eq!(routed, tabled, "a route is missing from this table");

    let a = Appliance::with_org_key("p256");
    let scopes = ["sign", "certify", "issue", "revoke", "admin"];
    let tokens: Vec<(&str, String)> = scopes
        .iter()
        .map(|s| (*s, a.client(&format!("only-{s}"), s)))
        .collect();
    let s = a.serve(&["--ignition-passphrase-file", a.pin_file.to_str().unwrap()]);
    let send = |method: &str, path: &str, token: Option<&str>| {
        let mut r = http().request(method.parse().unwrap(), s.url(path));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if method == "POST" {
            r = r.header("content-type", "application/json").body("{}");
        }
        r.send()
    };
    for (method, path, allowed) in ROUTES {
        let anonymous = send(method, path, None).await.unwrap();
        match allowed {
            None => assert!(
                anonymous.status() != 401 && anonymous.status() != 403,
                "{method} {path} is public: {}",
                anonymous.status()
            ),
            Some(allowed) => {
                let what = format!("{method} {path} without a token");
                assert_error_for(&what, anonymous, 401, "unauthorized").await;
                for (scope, token) in &tokens {
                    if allowed.contains(scope) {
                        continue;
                    }
                    let r = send(method, path, Some(token)).await.unwrap();
                    let what = format!("{method} {path} with only {scope}");
                    assert_error_for(&what, r, 403, "forbidden").await;
                }
            }
        }
    }
    // The wrong-scope requests changed nothing: still ignited.
    assert_eq!(get_json(&s, "/v1/status").await["state"], "ignited");
}
