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
    for (q, status, code) in [
        ("op=get&search=nobody%40example.com", 404, "not_found"),
        (
            "op=get&search=0xDEADBEEFDEADBEEFDEADBEEFDEADBEEFDEADBEEF",
            404,
            "not_found",
        ),
        ("op=get&search=0xDEADBEEF", 400, "bad_request"),
        ("op=get", 400, "bad_request"),
        (
            "op=stats&search=alice%40example.com",
            501,
            "not_implemented",
        ),
        (
            "op=index&search=alice%40example.com",
            501,
            "not_implemented",
        ),
    ] {
        let r = get(&s, &format!("/pks/lookup?{q}")).await;
        assert_error_for(q, r, status, code).await;
    }

    // Removal: no longer published or certified; the record says so.
    let r = http()
        .delete(s.url("/v1/users/alice@example.com"))
        .bearer_auth(&gw)
        .send()
        .await
        .unwrap();
    // Removal needs the admin scope.
    assert_error(r, 403, "forbidden").await;
    let r = http()
        .delete(s.url("/v1/users/alice@example.com"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_error(
        get(&s, &format!("/pks/lookup?op=get&search=0x{fpr}")).await,
        404,
        "not_found",
    )
    .await;
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
    assert_error(r, 403, "forbidden").await;
    let r = http()
        .post(s.url("/v1/certify"))
        .body(user.export(&good))
        .send()
        .await
        .unwrap();
    assert_error(r, 401, "unauthorized").await;
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
    let (a, s, admin, gw) = ignited().await;
    // The first maintenance run follows ignition at once (on the leader):
    // it reads the stored org key, so let it finish before counting.
    first_maintenance_done(&s, &admin).await;
    let signer = a.client("signer", "sign");
    let alice = Gpg::new();
    let fpr = alice.gen_key("Alice <alice@example.com>", "ed25519", "1y", &[]);
    let key = alice.export(&fpr);
    let cache = |v: &serde_json::Value| v["openpgp_verification_cache"].as_u64().unwrap();

    assert_eq!(
        post(&s, "/v1/certify", &gw, key.clone()).await.status(),
        200
    );
    let before = cache(&admin_status(&s, &admin).await);
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
    assert_eq!(cache(&admin_status(&s, &admin).await), before);

    // A key it has not seen before is verified (and cached) once.
    let bob = Gpg::new();
    let bob_fpr = bob.gen_key("Bob <bob@example.com>", "ed25519", "1y", &[]);
    assert_eq!(
        post(&s, "/v1/certify", &gw, bob.export(&bob_fpr))
            .await
            .status(),
        200
    );
    assert!(cache(&admin_status(&s, &admin).await) > before);
}

/// `(key fingerprint, validity, user ID)` of every user ID gpg lists for
/// `search` (an exact `<address>` search or a substring) that contains the
/// search text, case-insensitively (gpg lists every user ID of a key that
/// matches); empty if gpg finds nothing.
fn uid_lines(gpg: &Gpg, search: &str) -> Vec<(String, String, String)> {
    let out = gpg.run(&["--with-colons", "--list-keys", search], None);
    let mut key = String::new();
    let mut in_primary = false;
    let mut lines = Vec::new();
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        let f: Vec<&str> = l.split(':').collect();
        match f[0] {
            "pub" => in_primary = true,
            "sub" => in_primary = false,
            "fpr" if in_primary => {
                key = f[9].to_string();
                in_primary = false;
            }
            "uid" if f[9].to_lowercase().contains(&search.to_lowercase()) => {
                lines.push((key.clone(), f[1].to_string(), f[9].to_string()))
            }
            _ => {}
        }
    }
    lines
}

/// The org key certificate and fingerprint, from the server.
async fn org_key_of(s: &Server) -> (Vec<u8>, String) {
    let cert = get(s, "/v1/org-key").await.bytes().await.unwrap().to_vec();
    let fpr = get_json(s, "/v1/status").await["org_key"]["fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    (cert, fpr)
}

/// A relying party that trusts the org key (and nothing else) and holds `keys`.
fn relying_party(org_cert: &[u8], org_fpr: &str, keys: &[&[u8]]) -> Gpg {
    let rp = Gpg::new();
    rp.import(org_cert);
    rp.trust_ultimately(org_fpr);
    for k in keys {
        rp.import(k);
    }
    rp
}

/// Asserts gpg finds user IDs for `search` and holds none of them valid
/// except those of the org key `org_fpr` itself, if given.
fn none_valid_but_org(rp: &Gpg, search: &str, org_fpr: Option<&str>) {
    let lines = uid_lines(rp, search);
    assert!(!lines.is_empty(), "gpg found nothing for {search}");
    for (key, validity, uid) in &lines {
        if Some(key.as_str()) == org_fpr {
            assert_eq!(validity, "u", "the org key's own user ID");
        } else {
            assert!(
                validity != "f" && validity != "u",
                "{search}: gpg holds {uid:?} on {key} valid ({validity}): {lines:?}"
            );
        }
    }
}

/// Issue 15, item 3: sequoia and gpg read different addresses in
/// non-canonical user IDs, so certifying them made the CEO's address fully
/// valid on Mallory's key for a relying party that trusts the org key.
#[tokio::test]
async fn user_ids_that_gpg_reads_as_another_address_are_refused_and_never_valid() {
    let (_a, s, _admin, gw) = ignited().await;
    let (org_cert, org_fpr) = org_key_of(&s).await;
    let tricks = [
        "Mallory (<ceo@example.com>) <mallory4@example.com>",
        "ceo@example.com <mallory2@example.com>",
    ];
    let mallory = Gpg::new();
    let fpr = mallory.gen_key(tricks[0], "ed25519", "1y", &[]);
    let pass = ["--passphrase", "", "--pinentry-mode", "loopback"];
    let add_uid = |uid: &str| {
        let mut args = pass.to_vec();
        args.extend_from_slice(&["--quick-add-uid", &fpr, uid]);
        mallory.ok(&args, None);
    };
    add_uid(tricks[1]);

    // Nothing to certify: each user ID is refused with what is wrong.
    let r = post(&s, "/v1/certify", &gw, mallory.export(&fpr)).await;
    assert_eq!(r.status(), 422);
    let e: serde_json::Value = r.json().await.unwrap();
    assert_eq!(e["code"], "no_managed_user_id", "{e}");
    let msg = e["error"].as_str().unwrap();
    for (uid, why) in [
        (tricks[0], "more than one '<'"),
        (tricks[1], "'@' outside the angle brackets"),
    ] {
        let entry = format!("{uid:?}: the user ID is not in canonical form");
        assert!(msg.contains(&entry), "{entry} in {msg}");
        assert!(msg.contains(why), "{why} in {msg}");
    }

    // With a canonical managed user ID as well, only that one is certified.
    add_uid("Mallory <mallory@example.com>");
    let r = post(&s, "/v1/certify", &gw, mallory.export(&fpr)).await;
    assert_eq!(r.status(), 200);
    let certified = r.bytes().await.unwrap();
    let rp = relying_party(&org_cert, &org_fpr, &[&certified]);
    assert_eq!(rp.uid_validity("mallory@example.com", &[]), "f");
    // gpg's own address lookup finds Mallory's key, and does not hold the
    // CEO's address valid on it; neither does any user ID showing it.
    let exact = uid_lines(&rp, "<ceo@example.com>");
    assert_eq!(exact.len(), 1, "{exact:?}");
    none_valid_but_org(&rp, "<ceo@example.com>", None);
    none_valid_but_org(&rp, "ceo@example.com", None);
    assert_eq!(uid_lines(&rp, "ceo@example.com").len(), 2);
    let org_keyid = &org_fpr[24..];
    for uid in tricks {
        let sigs = rp.ok(&["--with-colons", "--check-sigs", &fpr], None);
        let mut under = false;
        for l in sigs.lines() {
            if l.starts_with("uid:") {
                under = l.contains(uid);
            } else if under && l.starts_with("sig:") {
                assert!(!l.contains(org_keyid), "org certification on {uid}: {l}");
            }
        }
    }
    // Nothing is stored or served under the addresses of the refused ones.
    for email in ["mallory4%40example.com", "mallory2%40example.com"] {
        let r = get(&s, &format!("/pks/lookup?op=get&search={email}")).await;
        assert_error_for(email, r, 404, "not_found").await;
    }
    assert_eq!(
        get(&s, "/pks/lookup?op=get&search=mallory%40example.com")
            .await
            .status(),
        200
    );

    // Control, invisible and bidirectional characters: refused, and the
    // reasons name them by code point instead of echoing them.
    let uids = [
        "Eve\0 <eve@example.com>",
        "Eve\n<eve2@example.com>",
        "Eve \u{202E}moc.elpmaxe@oec\u{202C} <eve3@example.com>",
        "\u{202E}eve4@example.com",
    ];
    let mut b = sequoia_openpgp::cert::CertBuilder::general_purpose(None::<&str>);
    for u in uids {
        b = b.add_userid(u);
    }
    let (eve, _) = b.generate().unwrap();
    let eve = {
        use sequoia_openpgp::serialize::SerializeInto;
        eve.strip_secret_key_material().armored().to_vec().unwrap()
    };
    let r = post(&s, "/v1/certify", &gw, eve).await;
    assert_eq!(r.status(), 422);
    let body = r.text().await.unwrap();
    let e: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(e["code"], "no_managed_user_id", "{e}");
    let msg = e["error"].as_str().unwrap();
    for part in [
        "control character (U+0000)",
        "control character (U+000A)",
        "bidirectional formatting character (U+202E)",
    ] {
        assert!(msg.contains(part), "{part} in {msg}");
    }
    assert_eq!(msg.matches("not in canonical form").count(), 4, "{msg}");
    assert!(
        !msg.chars()
            .any(|c| c.is_control() || c == '\u{202E}' || c == '\u{202C}'),
        "raw special characters in {msg:?}"
    );
    assert!(!body.contains('\u{202E}'), "{body:?}");
}

/// Issue 15, item 4: a user key with the org key's own user ID was
/// certified, and the keyserver then served two keys for the org key's
/// address. The addresses of every org key, current and replaced, are the
/// organization's.
#[tokio::test]
async fn addresses_of_current_and_replaced_org_keys_are_never_certified_on_user_keys() {
    let (a, s, admin, gw) = ignited().await;
    let (org_cert, org_fpr) = org_key_of(&s).await;
    let org_uid = "Example Org Key <orgkey@example.com>";
    let mallory = Gpg::new();
    let fpr = mallory.gen_key(org_uid, "ed25519", "1y", &[]);
    let r = post(&s, "/v1/certify", &gw, mallory.export(&fpr)).await;
    assert_eq!(r.status(), 422);
    let e: serde_json::Value = r.json().await.unwrap();
    assert_eq!(e["code"], "no_managed_user_id", "{e}");
    let msg = e["error"].as_str().unwrap();
    assert!(
        msg.contains(&format!(
            "{org_uid:?}: the org key ({org_fpr}) uses this address; it cannot be certified on another key"
        )),
        "{msg}"
    );
    // Also refused (rather than certified) case-insensitively.
    let fpr2 = mallory.gen_key("Org <OrgKey@Example.COM>", "ed25519", "1y", &[]);
    let r = post(&s, "/v1/certify", &gw, mallory.export(&fpr2)).await;
    assert_error(r, 422, "no_managed_user_id").await;

    // With another, ordinary user ID the key is certified for that one only.
    mallory.ok(
        &[
            "--passphrase",
            "",
            "--pinentry-mode",
            "loopback",
            "--quick-add-uid",
            &fpr,
            "Mallory <mallory@example.com>",
        ],
        None,
    );
    let r = post(&s, "/v1/certify", &gw, mallory.export(&fpr)).await;
    assert_eq!(r.status(), 200);
    let certified = r.bytes().await.unwrap();
    let rp = relying_party(&org_cert, &org_fpr, &[&certified]);
    assert_eq!(rp.uid_validity("mallory@example.com", &[]), "f");
    assert_eq!(uid_lines(&rp, "<orgkey@example.com>").len(), 2);
    none_valid_but_org(&rp, "<orgkey@example.com>", Some(&org_fpr));
    // The keyserver has one key for the org key's address: the org key.
    let idx = get(
        &s,
        "/pks/lookup?op=index&options=mr&search=orgkey%40example.com",
    )
    .await
    .text()
    .await
    .unwrap();
    assert!(idx.starts_with("info:1:1\n"), "{idx}");
    assert!(idx.contains(&format!("pub:{org_fpr}:")), "{idx}");

    // Replaced org keys keep their addresses: relying parties may still trust them.
    drop(s);
    a.ok(
        &[
            "org-key",
            "generate",
            "--uid",
            "Example Org Key 2 <pgp@example.com>",
            "--replace",
            "--yes",
        ],
        true,
    );
    let s = a.serve(&[]);
    assert_eq!(ignite(&s, &admin, PASSPHRASE).await.status(), 200);
    let (_, new_fpr) = org_key_of(&s).await;
    assert_ne!(new_fpr, org_fpr);
    for (uid, whose) in [
        (org_uid, format!("a replaced org key ({org_fpr})")),
        (
            "Example Org Key 2 <pgp@example.com>",
            format!("the org key ({new_fpr})"),
        ),
    ] {
        let user = Gpg::new();
        let f = user.gen_key(uid, "ed25519", "1y", &[]);
        let r = post(&s, "/v1/certify", &gw, user.export(&f)).await;
        assert_eq!(r.status(), 422, "{uid}");
        let e: serde_json::Value = r.json().await.unwrap();
        assert_eq!(e["code"], "no_managed_user_id", "{uid}");
        let msg = e["error"].as_str().unwrap();
        assert!(msg.contains(&whose), "{whose} in {msg}");
    }
}

/// A store written before these rules may hold users whose user ID is not
/// canonical or whose address is an org key's (certified back then, filed
/// under sequoia's reading). Maintenance does not renew them (it counts
/// and logs them), the keyserver and the S/MIME bridge do not serve them.
#[tokio::test]
async fn stored_users_from_before_the_rules_are_neither_renewed_nor_served() {
    use orgkey::store::{AuditEvent, SaveUserKey};
    let a = Appliance::with_org_key("p256");
    let admin = a.client("admin", "admin");
    let issuer = a.client("issuer", "issue");
    a.ok(
        &[
            "org-cert",
            "self-sign",
            "--subject",
            "CN=Example Org CA,O=Example",
        ],
        true,
    );
    let mallory = Gpg::new();
    let tricky = mallory.gen_key(
        "ceo@example.com <mallory2@example.com>",
        "nistp256",
        "1y",
        &[],
    );
    let org_uid = "Example Org Key <orgkey@example.com>";
    let twin = mallory.gen_key(org_uid, "nistp256", "1y", &[]);
    let store = a
        .open_store(std::sync::Arc::new(orgkey::clock::SystemClock))
        .await;
    for (fpr, email, uid) in [
        (
            &tricky,
            "mallory2@example.com",
            "ceo@example.com <mallory2@example.com>",
        ),
        (&twin, "orgkey@example.com", org_uid),
    ] {
        let save = SaveUserKey {
            fingerprint: fpr.clone(),
            keyid: fpr[24..].to_string(),
            cert: String::from_utf8(mallory.export(fpr)).unwrap(),
            certified_by: None,
            cert_expires: None,
            expected_version: None,
            emails: vec![(email.to_string(), uid.to_string())],
            touch: true,
        };
        store
            .save_user_key(&save, &AuditEvent::new("old-version", "certify", "ok"))
            .await
            .unwrap();
    }
    store.close().await;

    // Maintenance skips both (an earlier version would certify them again).
    let out = a.ok(&["maintenance", "run", "--quiet"], true);
    assert!(out.contains("2 keys due, 0 renewed"), "{out}");
    assert!(
        out.contains("2 stored user(s) no longer certified"),
        "{out}"
    );
    let log = a.run(&["maintenance", "run", "--quiet"], true);
    let stderr = String::from_utf8_lossy(&log.stderr);
    assert!(
        stderr.contains("stored user no longer certified")
            && stderr.contains("mallory2@example.com"),
        "{stderr}"
    );

    let s = a.serve(&[]);
    assert_eq!(ignite(&s, &admin, PASSPHRASE).await.status(), 200);
    let (org_cert, org_fpr) = org_key_of(&s).await;
    // The stored keys carry no org certification: gpg holds neither address valid.
    let store = a
        .open_store(std::sync::Arc::new(orgkey::clock::SystemClock))
        .await;
    let mut keys = Vec::new();
    for fpr in [&tricky, &twin] {
        keys.push(
            store
                .user_key(fpr)
                .await
                .unwrap()
                .unwrap()
                .cert
                .into_bytes(),
        );
    }
    store.close().await;
    let refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
    let rp = relying_party(&org_cert, &org_fpr, &refs);
    none_valid_but_org(&rp, "ceo@example.com", None);
    none_valid_but_org(&rp, "<orgkey@example.com>", Some(&org_fpr));

    // Not served by email: the keyserver and the S/MIME bridge.
    let r = get(&s, "/pks/lookup?op=get&search=mallory2%40example.com").await;
    assert_error(r, 404, "not_found").await;
    let idx = get(
        &s,
        "/pks/lookup?op=index&options=mr&search=orgkey%40example.com",
    )
    .await
    .text()
    .await
    .unwrap();
    assert!(idx.starts_with("info:1:1\n"), "only the org key: {idx}");
    for email in ["mallory2@example.com", "orgkey@example.com"] {
        let r = http()
            .post(s.url("/v1/x509/issue-from-openpgp"))
            .bearer_auth(&issuer)
            .json(&serde_json::json!({ "email": email }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{email}");
        assert_eq!(error_code(r).await, "unknown_user");
    }
}

#[tokio::test]
async fn users_show_prints_key_contents_escaped() {
    let (a, s, _admin, gw) = ignited().await;
    let alice = Gpg::new();
    let fpr = alice.gen_key("Alice <alice@example.com>", "ed25519", "1y", &[]);
    // A second user ID (not certifiable, but stored with the key) that
    // would reorder what the operator's terminal shows.
    alice.ok(
        &[
            "--passphrase",
            "",
            "--pinentry-mode",
            "loopback",
            "--quick-add-uid",
            &fpr,
            "Admin \u{202e}moc.elpmaxe",
        ],
        None,
    );
    let r = post(&s, "/v1/certify", &gw, alice.export(&fpr)).await;
    assert_eq!(r.status(), 200);
    s.stop();
    let shown = a.ok(&["users", "show", "alice@example.com"], false);
    assert!(!shown.contains('\u{202e}'), "{shown:?}");
    assert!(shown.contains("Admin \\u{202e}moc.elpmaxe"), "{shown}");
}
