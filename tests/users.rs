//! Managed-domain users: certification through the API checked by gpg as the
//! relying party, HKP lookups with gpg's own keyserver client, removal, and
//! the refusals (garbage, no managed user ID, revoked, expired, weak,
//! oversized, secret keys).

mod common;
use common::*;

const DAY: u64 = 86_400;

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An ignited appliance with a p256 org key and a certify client.
async fn ignited() -> (Appliance, Server, String, String) {
    let a = Appliance::with_org_key("p256");
    let admin = a.client("admin", "admin");
    let gw = a.client("gateway", "certify");
    let s = a.serve(&[]);
    assert_eq!(ignite(&s, &admin, PASSPHRASE).await.status(), 200);
    (a, s, admin, gw)
}

/// Org key certification lines (`sig:` records issued by `org_keyid`) under
/// the uid holding `email`, from `gpg --check-sigs --with-colons`.
fn org_sigs_on_uid(gpg: &Gpg, email: &str, org_keyid: &str) -> Vec<Vec<String>> {
    let listing = gpg.ok(&["--with-colons", "--check-sigs", email], None);
    let mut in_uid = false;
    let mut out = Vec::new();
    for l in listing.lines() {
        let f: Vec<String> = l.split(':').map(str::to_string).collect();
        match f[0].as_str() {
            "uid" => in_uid = l.contains(&format!("<{email}>")),
            "sub" | "pub" => in_uid = false,
            "sig" if in_uid && f[4] == org_keyid => out.push(f),
            _ => {}
        }
    }
    out
}

#[tokio::test]
async fn certified_user_ids_are_fully_valid_for_gpg_and_served_over_hkp() {
    let (a, s, admin, gw) = ignited().await;
    let org_cert = get(&s, "/v1/org-key").await.bytes().await.unwrap();
    let org_fpr = get_json(&s, "/v1/status").await["org_key"]["fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    let org_keyid = &org_fpr[24..];

    // Alice's own key: one managed user ID and one private one.
    let alice = Gpg::new();
    let fpr = alice.gen_key("Alice <alice@example.com>", "ed25519", "1y", &[]);
    alice.ok(
        &[
            "--passphrase",
            "",
            "--pinentry-mode",
            "loopback",
            "--quick-add-uid",
            &fpr,
            "Alice Private <alice@private.example.org>",
        ],
        None,
    );
    let r = post(&s, "/v1/certify", &gw, alice.export(&fpr)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/pgp-keys");
    let certified = r.bytes().await.unwrap();
    let t_certified = now_secs();

    // The relying party trusts the org key and nothing else.
    let rp = Gpg::new();
    rp.import(&org_cert);
    rp.trust_ultimately(&org_fpr);
    rp.import(&certified);
    assert_eq!(rp.uid_validity("alice@example.com", &[]), "f");
    let private = rp.uid_validity("alice@private.example.org", &[]);
    assert!(
        private != "f" && private != "u",
        "unmanaged uid got {private}"
    );

    // One good org certification, expiring 14 days out (signature check by gpg: "!").
    let sigs = org_sigs_on_uid(&rp, "alice@example.com", org_keyid);
    assert_eq!(sigs.len(), 1, "{sigs:?}");
    assert_eq!(sigs[0][1], "!", "gpg must find the certification good");
    let expires: u64 = sigs[0][6].parse().expect("certification has an expiry");
    let created: u64 = sigs[0][5].parse().unwrap();
    assert_eq!(expires - created, 14 * DAY);
    assert!(created.abs_diff(t_certified) < 120);
    assert!(org_sigs_on_uid(&rp, "alice@private.example.org", org_keyid).is_empty());

    // Resubmitting merges and does not pile up certifications.
    let again = post(&s, "/v1/certify", &gw, alice.export(&fpr)).await;
    assert_eq!(again.status(), 200);
    let rp2 = Gpg::new();
    rp2.import(&org_cert);
    rp2.import(&again.bytes().await.unwrap());
    assert_eq!(
        org_sigs_on_uid(&rp2, "alice@example.com", org_keyid).len(),
        1
    );

    // The user record.
    let r = http()
        .get(s.url("/v1/users/Alice@Example.com"))
        .bearer_auth(&gw)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let u: serde_json::Value = r.json().await.unwrap();
    assert_eq!(u["fingerprint"], fpr.as_str());
    assert_eq!(u["state"], "active");
    assert_eq!(u["certification"]["status"], "certified");
    assert_eq!(u["certification"]["org_key"], org_fpr.as_str());
    assert!(u["certification"]["expires"].is_string());
    let r = http()
        .get(s.url("/v1/users/nobody@example.com"))
        .bearer_auth(&gw)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "unknown_user");

    // HKP with gpg's own keyserver client: by fingerprint and by email.
    let keyserver = format!("hkp://{}", s.url.trim_start_matches("http://"));
    let hkp = Gpg::new();
    let out = hkp.run(&["--keyserver", &keyserver, "--recv-keys", &fpr], None);
    assert!(
        out.status.success(),
        "recv-keys: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listing = hkp.ok(&["--with-colons", "--list-keys", &fpr], None);
    assert!(listing.contains("alice@example.com"), "{listing}");
    let out = hkp.run(
        &[
            "--keyserver",
            &keyserver,
            "--search-keys",
            "alice@example.com",
        ],
        None,
    );
    let found =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(found.contains("alice@example.com"), "search-keys: {found}");
    // The org key is on the keyserver too.
    let out = hkp.run(&["--keyserver", &keyserver, "--recv-keys", &org_fpr], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The raw HKP answers.
    let idx = get(
        &s,
        "/pks/lookup?op=index&options=mr&search=alice%40example.com",
    )
    .await;
    assert_eq!(idx.status(), 200);
    let text = idx.text().await.unwrap();
    assert!(text.starts_with("info:1:1\n"), "{text}");
    assert!(text.contains(&format!("pub:{fpr}:")), "{text}");
    let keyid = &fpr[24..];
    let r = get(&s, &format!("/pks/lookup?op=get&search=0x{keyid}")).await;
    assert_eq!(r.status(), 200);
    for (q, status) in [
        ("op=get&search=nobody%40example.com", 404),
        (
            "op=get&search=0xDEADBEEFDEADBEEFDEADBEEFDEADBEEFDEADBEEF",
            404,
        ),
        ("op=get&search=0xDEADBEEF", 400),
        ("op=get", 400),
        ("op=stats&search=alice%40example.com", 501),
        ("op=index&search=alice%40example.com", 501),
    ] {
        let r = get(&s, &format!("/pks/lookup?{q}")).await;
        assert_eq!(r.status(), status, "{q}");
    }

    // Removal: no longer published or certified; the record says so.
    let r = http()
        .delete(s.url("/v1/users/alice@example.com"))
        .bearer_auth(&gw)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "removal needs the admin scope");
    let r = http()
        .delete(s.url("/v1/users/alice@example.com"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        get(&s, &format!("/pks/lookup?op=get&search=0x{fpr}"))
            .await
            .status(),
        404
    );
    let r = post(&s, "/v1/certify", &gw, alice.export(&fpr)).await;
    assert_eq!(r.status(), 422);
    let e: serde_json::Value = r.json().await.unwrap();
    assert_eq!(e["code"], "no_managed_user_id");
    assert!(e["error"].as_str().unwrap().contains("removed"), "{e}");
    let shown = a.ok(&["users", "show", "alice@example.com"], false);
    assert!(shown.contains("removed"), "{shown}");
    a.ok(&["users", "restore", "alice@example.com"], false);
    assert_eq!(
        post(&s, "/v1/certify", &gw, alice.export(&fpr))
            .await
            .status(),
        200
    );
    let listed = a.ok(&["users", "list"], false);
    assert!(listed.contains("alice@example.com\tactive"), "{listed}");

    // Every certification and removal is in the audit chain.
    let audit = a.ok(&["audit", "verify"], false);
    assert!(audit.contains("intact") || audit.contains("ok"), "{audit}");
}

#[tokio::test]
async fn bad_certify_requests_get_clear_errors_and_change_nothing() {
    let (a, s, _admin, gw) = ignited().await;
    let signer = a.client("signer", "sign");
    let user = Gpg::new();
    let expect = |status: u16, code: &'static str| (status, code);

    // Garbage, empty, a secret key, too large.
    let secret = user.gen_key("Mallory <mallory@example.com>", "ed25519", "1y", &[]);
    let tsk = user
        .ok(
            &[
                "--passphrase",
                "",
                "--pinentry-mode",
                "loopback",
                "--armor",
                "--export-secret-keys",
                &secret,
            ],
            None,
        )
        .into_bytes();
    let cases: Vec<(Vec<u8>, (u16, &str))> = vec![
        (
            b"this is not a key".to_vec(),
            expect(400, "bad_certificate"),
        ),
        (Vec::new(), expect(400, "bad_certificate")),
        (tsk, expect(400, "bad_certificate")),
        (vec![b'A'; 2 * 1024 * 1024], expect(413, "body_too_large")),
    ];
    for (body, (status, code)) in cases {
        let r = post(&s, "/v1/certify", &gw, body).await;
        assert_eq!(r.status(), status);
        assert_eq!(error_code(r).await, code);
    }

    // No user ID in a managed domain.
    let fpr = user.gen_key("Outsider <out@elsewhere.example.net>", "ed25519", "1y", &[]);
    let r = post(&s, "/v1/certify", &gw, user.export(&fpr)).await;
    assert_eq!(r.status(), 422);
    assert_eq!(error_code(r).await, "no_managed_user_id");

    // A revoked managed user ID (the key also has an unmanaged one).
    let fpr = user.gen_key("Bob <bob@elsewhere.example.net>", "ed25519", "1y", &[]);
    let pass = ["--passphrase", "", "--pinentry-mode", "loopback"];
    let mut add = pass.to_vec();
    add.extend_from_slice(&["--quick-add-uid", &fpr, "Bob <bob@example.com>"]);
    user.ok(&add, None);
    let mut revoke = pass.to_vec();
    revoke.extend_from_slice(&["--quick-revoke-uid", &fpr, "Bob <bob@example.com>"]);
    user.ok(&revoke, None);
    let r = post(&s, "/v1/certify", &gw, user.export(&fpr)).await;
    assert_eq!(r.status(), 422);
    let e: serde_json::Value = r.json().await.unwrap();
    assert_eq!(e["code"], "no_managed_user_id");
    assert!(e["error"].as_str().unwrap().contains("revoked"), "{e}");

    // An expired key (made in 2020, valid for a day).
    let fpr = user.gen_key(
        "Old <old@example.com>",
        "ed25519",
        "1d",
        &["--faked-system-time", "20200101T000000"],
    );
    let r = post(&s, "/v1/certify", &gw, user.export(&fpr)).await;
    assert_eq!(r.status(), 422);
    let e: serde_json::Value = r.json().await.unwrap();
    assert_eq!(e["code"], "certificate_refused");
    assert!(e["error"].as_str().unwrap().contains("expired"), "{e}");

    // A key too weak for sequoia's standard policy.
    let fpr = user.gen_key("Weak <weak@example.com>", "rsa1024", "1y", &[]);
    let r = post(&s, "/v1/certify", &gw, user.export(&fpr)).await;
    assert_eq!(r.status(), 422);
    assert_eq!(error_code(r).await, "certificate_refused");

    // Wrong scope, no token, sealed.
    let good = user.gen_key("Carol <carol@example.com>", "ed25519", "1y", &[]);
    let r = post(&s, "/v1/certify", &signer, user.export(&good)).await;
    assert_eq!(r.status(), 403);
    let r = http()
        .post(s.url("/v1/certify"))
        .body(user.export(&good))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let out = a.remote("seal", &s.url, &[], false);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = post(&s, "/v1/certify", &gw, user.export(&good)).await;
    assert_eq!(r.status(), 503);
    assert_eq!(error_code(r).await, "sealed");

    // Nothing was recorded for any of them.
    let listed = a.ok(&["users", "list"], false);
    assert_eq!(listed.trim(), "", "no user may be stored: {listed}");
}

/// sequoia keeps every signature it verifies in a process-global cache that
/// never evicts. The appliance checks its own fresh signatures outside it, so
/// signing and re-certifying a known key must not grow it; only a new user
/// key's self-signatures may (decision 0013).
#[tokio::test]
async fn requests_do_not_grow_the_openpgp_verification_cache() {
    let (a, s, _admin, gw) = ignited().await;
    let signer = a.client("signer", "sign");
    let alice = Gpg::new();
    let fpr = alice.gen_key("Alice <alice@example.com>", "ed25519", "1y", &[]);
    let key = alice.export(&fpr);
    let cache = |v: &serde_json::Value| v["openpgp_verification_cache"].as_u64().unwrap();

    assert_eq!(
        post(&s, "/v1/certify", &gw, key.clone()).await.status(),
        200
    );
    let before = cache(&get_json(&s, "/v1/status").await);
    for i in 0..20 {
        let r = post(&s, "/v1/sign", &signer, format!("message {i}").into()).await;
        assert_eq!(r.status(), 200);
    }
    for _ in 0..3 {
        assert_eq!(
            post(&s, "/v1/certify", &gw, key.clone()).await.status(),
            200
        );
    }
    assert_eq!(cache(&get_json(&s, "/v1/status").await), before);

    // A key it has not seen before is verified (and cached) once.
    let bob = Gpg::new();
    let bob_fpr = bob.gen_key("Bob <bob@example.com>", "ed25519", "1y", &[]);
    assert_eq!(
        post(&s, "/v1/certify", &gw, bob.export(&bob_fpr))
            .await
            .status(),
        200
    );
    assert!(cache(&get_json(&s, "/v1/status").await) > before);
}
