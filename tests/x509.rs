//! The org cert and S/MIME user certificates, judged by openssl: a
//! self-signed org cert issuing from CSRs (verify -purpose smimesign, cms
//! sign/verify, CRLs with -crl_check), an org cert issued by an external CA
//! from our CSR, an imported PKCS#12 / encrypted PKCS#8 root CA, the
//! OpenPGP bridge, and the refusals: email addresses are plain mailboxes or
//! refused, `audit list` shows every field escaped, and fetching a CRL never
//! makes the token sign (every CRL has its audit row).

mod common;
use common::*;
use std::path::Path;

/// An ignited appliance with a p256 org key, an org cert made by `make`, and
/// issue / revoke / certify clients.
struct Ca {
    a: Appliance,
    s: Server,
    issuer: String,
    revoker: String,
    gw: String,
}

fn configure_public_url(a: &Appliance) {
    a.set_config("x509.public_url", "http://orgkey.test:8443");
}

async fn ca_with(make: impl FnOnce(&Appliance)) -> Ca {
    let a = Appliance::with_org_key("p256");
    configure_public_url(&a);
    make(&a);
    let admin = a.client("admin", "admin");
    let issuer = a.client("issuer", "issue");
    let revoker = a.client("revoker", "revoke");
    let gw = a.client("gateway", "certify");
    let s = a.serve(&[]);
    assert_eq!(ignite(&s, &admin, PASSPHRASE).await.status(), 200);
    // The tests below make CRLs stale and count them: the first scheduled
    // run (which refreshes stale CRLs) is behind them.
    first_maintenance_done(&s, &admin).await;
    Ca {
        a,
        s,
        issuer,
        revoker,
        gw,
    }
}

fn self_signed(a: &Appliance) {
    a.ok(
        &[
            "org-cert",
            "self-sign",
            "--subject",
            "CN=Example Org CA,O=Example",
        ],
        true,
    );
}

/// A CSR made by openssl (`key_opts` like ["-newkey", "ec", "-pkeyopt", ...]).
fn csr(dir: &Path, name: &str, key_opts: &[&str], subj: &str, san: Option<&str>) -> Vec<u8> {
    let key = format!("{name}.key");
    let out = format!("{name}.csr");
    let mut args = vec![
        "req", "-new", "-nodes", "-keyout", &key, "-out", &out, "-subj", subj,
    ];
    args.extend_from_slice(key_opts);
    let ext;
    if let Some(s) = san {
        ext = format!("subjectAltName={s}");
        args.extend_from_slice(&["-addext", &ext]);
    }
    openssl_ok(dir, &args);
    std::fs::read(dir.join(out)).unwrap()
}

const P256: &[&str] = &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"];

async fn issue(ca: &Ca, path: &str, body: Vec<u8>) -> reqwest::Response {
    post(&ca.s, path, &ca.issuer, body).await
}

async fn get_bytes(ca: &Ca, path: &str) -> Vec<u8> {
    let r = get(&ca.s, path).await;
    assert_eq!(r.status(), 200, "{path}");
    r.bytes().await.unwrap().to_vec()
}

async fn json(r: reqwest::Response) -> serde_json::Value {
    r.json().await.unwrap()
}

#[tokio::test]
async fn self_signed_org_cert_issues_smime_certificates_that_openssl_accepts() {
    let ca = ca_with(self_signed).await;
    let dir = ca.a.dir.path();
    std::fs::write(dir.join("org.pem"), get_bytes(&ca, "/v1/org-cert").await).unwrap();
    let text = openssl_ok(dir, &["x509", "-in", "org.pem", "-noout", "-text"]);
    assert!(text.contains("CA:TRUE, pathlen:0"), "{text}");
    assert!(text.contains("Certificate Sign, CRL Sign"), "{text}");
    openssl_ok(dir, &["verify", "-CAfile", "org.pem", "org.pem"]);
    let der = get_bytes(&ca, "/v1/org-cert?format=der").await;
    std::fs::write(dir.join("org.der"), der).unwrap();
    openssl_ok(dir, &["x509", "-inform", "DER", "-in", "org.der", "-noout"]);

    // Alice's OpenPGP key is certified as "Alice Example": that is the only
    // name her certificate may carry, whatever her CSR asks for.
    let alice = Gpg::new();
    let afpr = alice.gen_key("Alice Example <alice@example.com>", "ed25519", "1y", &[]);
    assert_eq!(
        post(&ca.s, "/v1/certify", &ca.gw, alice.export(&afpr))
            .await
            .status(),
        200
    );
    // Alice's CSR: P-256, email in the subject and the SAN, and a name
    // nobody checked.
    let body = csr(
        dir,
        "alice",
        P256,
        "/CN=Mallory The CEO/emailAddress=alice@example.com",
        Some("email:alice@example.com"),
    );
    let r = issue(&ca, "/v1/x509/issue", body.clone()).await;
    assert_eq!(r.status(), 201);
    assert_eq!(
        r.headers()["content-type"],
        "application/pem-certificate-chain"
    );
    let serial = r.headers()["orgkey-serial"].to_str().unwrap().to_string();
    let chain = r.text().await.unwrap();
    assert_eq!(
        chain.matches("BEGIN CERTIFICATE").count(),
        2,
        "leaf + org cert"
    );
    std::fs::write(dir.join("alice.pem"), &chain).unwrap();
    openssl_ok(
        dir,
        &[
            "verify",
            "-CAfile",
            "org.pem",
            "-purpose",
            "smimesign",
            "alice.pem",
        ],
    );
    let text = openssl_ok(dir, &["x509", "-in", "alice.pem", "-noout", "-text"]);
    for want in [
        "E-mail Protection",
        "email:alice@example.com",
        "CA:FALSE",
        "Digital Signature, Key Agreement",
        "URI:http://orgkey.test:8443/v1/x509/crl/",
        "CN = Alice Example",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    assert!(
        !text.contains("Mallory"),
        "the CSR's name was copied:\n{text}"
    );
    // Bob has no certified OpenPGP key: his certificate names no one.
    let bob_csr = csr(
        dir,
        "bob",
        P256,
        "/CN=Bob The Admin/emailAddress=bob@example.com",
        None,
    );
    let r = issue(&ca, "/v1/x509/issue", bob_csr).await;
    assert_eq!(r.status(), 201);
    std::fs::write(dir.join("bob.pem"), r.text().await.unwrap()).unwrap();
    let subject = openssl_ok(dir, &["x509", "-in", "bob.pem", "-noout", "-subject"]);
    assert_eq!(subject.trim(), "subject=emailAddress = bob@example.com");
    let dates = openssl_ok(
        dir,
        &[
            "x509",
            "-in",
            "alice.pem",
            "-noout",
            "-startdate",
            "-enddate",
        ],
    );
    assert!(dates.contains("notAfter"), "{dates}");
    // 128-bit positive serial.
    assert_eq!(serial.len(), 32, "{serial}");

    // S/MIME: openssl signs with the issued certificate, and verifies.
    std::fs::write(dir.join("msg.txt"), b"hello from alice\n").unwrap();
    openssl_ok(
        dir,
        &[
            "cms",
            "-sign",
            "-nodetach",
            "-binary",
            "-in",
            "msg.txt",
            "-signer",
            "alice.pem",
            "-inkey",
            "alice.key",
            "-outform",
            "DER",
            "-out",
            "msg.p7m",
        ],
    );
    let out = openssl_ok(
        dir,
        &[
            "cms", "-verify", "-inform", "DER", "-in", "msg.p7m", "-CAfile", "org.pem", "-out",
            "msg.out",
        ],
    );
    assert!(out.contains("Verification successful"), "{out}");

    // The same key again: the valid certificate comes back; renew=true makes a new one.
    let again = issue(&ca, "/v1/x509/issue", body.clone()).await;
    assert_eq!(again.status(), 200);
    assert_eq!(again.headers()["orgkey-serial"], serial.as_str());
    let renewed = issue(&ca, "/v1/x509/issue?renew=true", body).await;
    assert_eq!(renewed.status(), 201);
    let serial2 = renewed.headers()["orgkey-serial"]
        .to_str()
        .unwrap()
        .to_string();
    assert_ne!(serial2, serial);
    std::fs::write(dir.join("alice2.pem"), renewed.text().await.unwrap()).unwrap();

    // A CRL before any revocation verifies and lists nothing.
    std::fs::write(dir.join("crl0.der"), get_bytes(&ca, "/v1/x509/crl").await).unwrap();
    let out = openssl_ok(
        dir,
        &[
            "crl", "-inform", "DER", "-in", "crl0.der", "-CAfile", "org.pem", "-noout", "-text",
        ],
    );
    assert!(
        out.contains("verify OK") || out.contains("No Revoked Certificates"),
        "{out}"
    );

    // Revoke the first: the CRL lists it, -crl_check refuses it and accepts the second.
    let r = http()
        .post(ca.s.url("/v1/x509/revoke"))
        .bearer_auth(&ca.revoker)
        .json(&serde_json::json!({"serial": serial, "reason": "keyCompromise"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let crl_pem = get_bytes(&ca, "/v1/x509/crl?format=pem").await;
    std::fs::write(dir.join("crl.pem"), &crl_pem).unwrap();
    let text = openssl_ok(
        dir,
        &[
            "crl", "-in", "crl.pem", "-CAfile", "org.pem", "-noout", "-text",
        ],
    );
    assert!(text.contains("verify OK"), "{text}");
    assert!(
        text.to_uppercase().contains(&serial.to_uppercase()),
        "{text}"
    );
    assert!(text.contains("Key Compromise"), "{text}");
    let (ok, out) = openssl_in(
        dir,
        &[
            "verify",
            "-crl_check",
            "-CAfile",
            "org.pem",
            "-CRLfile",
            "crl.pem",
            "alice.pem",
        ],
    );
    assert!(
        !ok && out.contains("revoked"),
        "revoked certificate accepted:\n{out}"
    );
    openssl_ok(
        dir,
        &[
            "verify",
            "-crl_check",
            "-CAfile",
            "org.pem",
            "-CRLfile",
            "crl.pem",
            "alice2.pem",
        ],
    );
    // The CRL at the distribution point URL (per org cert) is the same CRL.
    let dp = openssl_ok(
        dir,
        &[
            "x509",
            "-in",
            "alice2.pem",
            "-noout",
            "-ext",
            "crlDistributionPoints",
        ],
    );
    let path = dp
        .split("http://orgkey.test:8443")
        .nth(1)
        .map(|p| p.trim().to_string())
        .expect("a CRL distribution point");
    assert_eq!(get_bytes(&ca, &format!("{path}?format=pem")).await, crl_pem);
    let status = http()
        .get(ca.s.url(&format!("/v1/x509/certs/{serial}")))
        .bearer_auth(&ca.revoker)
        .send()
        .await
        .unwrap();
    let st = json(status).await;
    assert_eq!(st["status"], "revoked");
    assert_eq!(st["reason"], "keyCompromise");
    let st2 = http()
        .get(ca.s.url(&format!("/v1/x509/certs/{serial2}")))
        .bearer_auth(&ca.issuer)
        .send()
        .await
        .unwrap();
    assert_eq!(json(st2).await["status"], "valid");

    // Revocation refusals.
    for (body, status, code) in [
        (
            serde_json::json!({"serial": "00ff00ff"}),
            404,
            "unknown_serial",
        ),
        (serde_json::json!({"serial": "not hex"}), 400, "bad_request"),
        (
            serde_json::json!({"serial": serial2, "reason": "because"}),
            400,
            "bad_request",
        ),
        (
            serde_json::json!({"serial": serial2, "extra": 1}),
            400,
            "bad_request",
        ),
    ] {
        let r = http()
            .post(ca.s.url("/v1/x509/revoke"))
            .bearer_auth(&ca.revoker)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_error_for(&body.to_string(), r, status, code).await;
    }
    let r = http()
        .post(ca.s.url("/v1/x509/revoke"))
        .bearer_auth(&ca.issuer)
        .json(&serde_json::json!({"serial": serial2}))
        .send()
        .await
        .unwrap();
    // The issue scope cannot revoke.
    assert_error(r, 403, "forbidden").await;

    // The audit log has each issuance and the revocation.
    let audit = ca.a.ok(&["audit", "list", "--last", "50"], false);
    assert_eq!(
        audit.matches("x509-issue").count(),
        3,
        "alice twice, bob: {audit}"
    );
    assert!(audit.contains("x509-revoke"), "{audit}");
    assert!(ca.a.ok(&["audit", "verify"], false).contains("intact"));
}

#[tokio::test]
async fn bad_certificate_requests_are_refused_and_leave_no_certificate() {
    let ca = ca_with(self_signed).await;
    let dir = ca.a.dir.path();
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (b"garbage".to_vec(), 400, "bad_request"),
        (Vec::new(), 400, "bad_request"),
        // Email outside the managed domains.
        (
            csr(
                dir,
                "eve",
                P256,
                "/CN=Eve/emailAddress=eve@evil.example",
                None,
            ),
            422,
            "refused",
        ),
        // No email at all.
        (csr(dir, "noname", P256, "/CN=Nobody", None), 422, "refused"),
        // A weak key.
        (
            csr(
                dir,
                "weak",
                &["-newkey", "rsa:1024"],
                "/emailAddress=weak@example.com",
                None,
            ),
            422,
            "refused",
        ),
        (vec![b'A'; 100 * 1024], 413, "body_too_large"),
    ];
    for (body, status, code) in cases {
        let r = issue(&ca, "/v1/x509/issue", body).await;
        assert_error(r, status, code).await;
    }
    // A CSR whose signature does not match (one byte of the signature flipped).
    let good = csr(dir, "bob", P256, "/emailAddress=bob@example.com", None);
    openssl_ok(
        dir,
        &[
            "req", "-in", "bob.csr", "-outform", "DER", "-out", "bob.der",
        ],
    );
    let mut der = std::fs::read(dir.join("bob.der")).unwrap();
    let n = der.len();
    der[n - 5] ^= 0x01;
    let r = issue(&ca, "/v1/x509/issue", der).await;
    assert_eq!(r.status(), 400);
    let e = json(r).await;
    assert_eq!(e["code"], "bad_request", "{e}");
    assert!(e["error"].as_str().unwrap().contains("signature"), "{e}");
    // Wrong scope, no token.
    assert_error(
        post(&ca.s, "/v1/x509/issue", &ca.gw, good.clone()).await,
        403,
        "forbidden",
    )
    .await;
    let r = http()
        .post(ca.s.url("/v1/x509/issue"))
        .body(good)
        .send()
        .await
        .unwrap();
    assert_error(r, 401, "unauthorized").await;
    // Nothing was issued.
    let audit = ca.a.ok(&["audit", "list", "--last", "50"], false);
    assert!(!audit.contains("x509-issue"), "{audit}");
}

#[tokio::test]
async fn org_cert_from_an_external_ca_via_our_csr() {
    let a = Appliance::with_org_key("p384");
    configure_public_url(&a);
    let dir = a.dir.path().to_path_buf();
    let out = a.ok(
        &[
            "org-cert",
            "csr",
            "--subject",
            "CN=Example Issuing CA,O=Example",
            "--out",
            dir.join("org.csr").to_str().unwrap(),
        ],
        true,
    );
    let _ = out;
    let v = openssl_ok(
        &dir,
        &["req", "-in", "org.csr", "-verify", "-noout", "-text"],
    );
    assert!(
        v.contains("verify OK") || v.contains("Certificate request self-signature verify OK"),
        "{v}"
    );
    assert!(
        v.contains("secp384r1") || v.contains("P-384"),
        "same family as the org key: {v}"
    );

    // The external root CA signs it as a subordinate CA.
    openssl_ok(
        &dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "root.key",
            "-out",
            "root.pem",
            "-subj",
            "/CN=External Root",
            "-days",
            "3650",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    std::fs::write(
        dir.join("sub.ext"),
        "basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\n",
    )
    .unwrap();
    openssl_ok(
        &dir,
        &[
            "x509",
            "-req",
            "-in",
            "org.csr",
            "-CA",
            "root.pem",
            "-CAkey",
            "root.key",
            "-CAcreateserial",
            "-out",
            "sub.pem",
            "-days",
            "365",
            "-extfile",
            "sub.ext",
        ],
    );
    // A certificate for some other key is refused.
    openssl_ok(
        &dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "other.key",
            "-out",
            "other.pem",
            "-subj",
            "/CN=Other CA",
            "-days",
            "30",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    let out = a.run(
        &[
            "org-cert",
            "import",
            "--cert",
            dir.join("other.pem").to_str().unwrap(),
        ],
        true,
    );
    assert_refused(&out, "not the key");
    a.ok(
        &[
            "org-cert",
            "import",
            "--cert",
            dir.join("sub.pem").to_str().unwrap(),
            "--chain",
            dir.join("root.pem").to_str().unwrap(),
        ],
        true,
    );

    let admin = a.client("admin", "admin");
    let issuer = a.client("issuer", "issue");
    let s = a.serve(&[]);
    assert_eq!(ignite(&s, &admin, PASSPHRASE).await.status(), 200);
    let body = csr(&dir, "carol", P256, "/emailAddress=carol@example.com", None);
    let r = post(&s, "/v1/x509/issue", &issuer, body).await;
    assert_eq!(r.status(), 201);
    let chain = r.text().await.unwrap();
    assert_eq!(
        chain.matches("BEGIN CERTIFICATE").count(),
        3,
        "leaf, org cert, root"
    );
    std::fs::write(dir.join("carol-chain.pem"), &chain).unwrap();
    openssl_ok(
        &dir,
        &[
            "verify",
            "-CAfile",
            "root.pem",
            "-untrusted",
            "carol-chain.pem",
            "-purpose",
            "smimesign",
            "carol-chain.pem",
        ],
    );
    // The CRL is signed by the org cert key and names it by its own key id.
    let crl = get(&s, "/v1/x509/crl?format=pem")
        .await
        .bytes()
        .await
        .unwrap();
    std::fs::write(dir.join("crl.pem"), crl).unwrap();
    std::fs::write(
        dir.join("sub-root.pem"),
        [
            std::fs::read(dir.join("sub.pem")).unwrap(),
            std::fs::read(dir.join("root.pem")).unwrap(),
        ]
        .concat(),
    )
    .unwrap();
    let out = openssl_ok(
        &dir,
        &["crl", "-in", "crl.pem", "-CAfile", "sub-root.pem", "-noout"],
    );
    assert!(out.contains("verify OK"), "{out}");
}

#[tokio::test]
async fn imported_root_ca_keypairs_issue_certificates_that_chain_to_them() {
    let a = Appliance::with_org_key("p256");
    let dir = a.dir.path().to_path_buf();
    openssl_ok(
        &dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:3072",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-subj",
            "/CN=Internal Root CA/O=Example",
            "-days",
            "3650",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    std::fs::write(dir.join("pw"), "p12-password-123\n").unwrap();
    openssl_ok(
        &dir,
        &[
            "pkcs12", "-export", "-inkey", "ca.key", "-in", "ca.pem", "-out", "ca.p12", "-passout",
            "file:pw",
        ],
    );
    // A wrong password is refused and leaves no key in the token.
    std::fs::write(dir.join("wrong"), "not-the-password\n").unwrap();
    let out = a.run(
        &[
            "org-cert",
            "import-ca",
            "--pkcs12",
            dir.join("ca.p12").to_str().unwrap(),
            "--key-password-file",
            dir.join("wrong").to_str().unwrap(),
        ],
        true,
    );
    assert_refused(&out, "password");
    let check = a.run(&["token", "check"], true);
    let objects = String::from_utf8_lossy(&check.stdout)
        .lines()
        .filter(|l| l.contains("orgkey org cert"))
        .count();
    assert_eq!(objects, 0, "{}", String::from_utf8_lossy(&check.stdout));

    a.ok(
        &[
            "org-cert",
            "import-ca",
            "--pkcs12",
            dir.join("ca.p12").to_str().unwrap(),
            "--key-password-file",
            dir.join("pw").to_str().unwrap(),
        ],
        true,
    );
    // The imported key is in the token, sensitive and only wrappable under a trusted key.
    let check = a.ok(&["token", "check"], true);
    assert_eq!(
        check.matches("orgkey org cert (imported)").count(),
        1,
        "{check}"
    );
    assert!(check.contains("token check passed"), "{check}");

    let admin = a.client("admin", "admin");
    let issuer = a.client("issuer", "issue");
    let s = a.serve(&[]);
    assert_eq!(ignite(&s, &admin, PASSPHRASE).await.status(), 200);
    let body = csr(
        &dir,
        "dave",
        &["-newkey", "rsa:2048"],
        "/emailAddress=dave@example.com",
        None,
    );
    let r = post(&s, "/v1/x509/issue", &issuer, body).await;
    assert_eq!(r.status(), 201);
    std::fs::write(dir.join("dave.pem"), r.text().await.unwrap()).unwrap();
    openssl_ok(
        &dir,
        &[
            "verify",
            "-CAfile",
            "ca.pem",
            "-purpose",
            "smimesign",
            "dave.pem",
        ],
    );
    let text = openssl_ok(&dir, &["x509", "-in", "dave.pem", "-noout", "-text"]);
    assert!(
        text.contains("Digital Signature, Key Encipherment"),
        "{text}"
    );

    // Replacing it with an encrypted PKCS#8 P-256 root keeps the old one for its certificates.
    openssl_ok(
        &dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca2.plain",
            "-out",
            "ca2.pem",
            "-subj",
            "/CN=Second Root",
            "-days",
            "365",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    openssl_ok(
        &dir,
        &[
            "pkcs8",
            "-topk8",
            "-in",
            "ca2.plain",
            "-out",
            "ca2.key",
            "-passout",
            "file:pw",
        ],
    );
    let out = a.run(
        &[
            "org-cert",
            "import-ca",
            "--key",
            dir.join("ca2.key").to_str().unwrap(),
            "--cert",
            dir.join("ca2.pem").to_str().unwrap(),
            "--key-password-file",
            dir.join("pw").to_str().unwrap(),
        ],
        true,
    );
    // An active org cert needs --replace.
    assert_refused(&out, "--replace");
    a.ok(
        &[
            "org-cert",
            "import-ca",
            "--key",
            dir.join("ca2.key").to_str().unwrap(),
            "--cert",
            dir.join("ca2.pem").to_str().unwrap(),
            "--key-password-file",
            dir.join("pw").to_str().unwrap(),
            "--replace",
        ],
        true,
    );
    let body = csr(&dir, "erin", P256, "/emailAddress=erin@example.com", None);
    let r = post(&s, "/v1/x509/issue", &issuer, body).await;
    assert_eq!(r.status(), 201);
    std::fs::write(dir.join("erin.pem"), r.text().await.unwrap()).unwrap();
    openssl_ok(
        &dir,
        &[
            "verify",
            "-CAfile",
            "ca2.pem",
            "-purpose",
            "smimesign",
            "erin.pem",
        ],
    );
    // Dave's certificate from the old root can still be revoked, in the old root's CRL.
    let dave_serial = openssl_ok(&dir, &["x509", "-in", "dave.pem", "-noout", "-serial"]);
    let dave_serial = dave_serial
        .trim()
        .trim_start_matches("serial=")
        .to_lowercase();
    let revoker = a.client("revoker", "revoke");
    let r = http()
        .post(s.url("/v1/x509/revoke"))
        .bearer_auth(&revoker)
        .json(&serde_json::json!({"serial": dave_serial, "reason": "superseded"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn users_openpgp_keys_get_smime_certificates_through_the_bridge() {
    let ca = ca_with(self_signed).await;
    let dir = ca.a.dir.path();
    let user = Gpg::new();
    let fpr = user.gen_key("Frank Example <frank@example.com>", "nistp256", "1y", &[]);
    assert_eq!(
        post(&ca.s, "/v1/certify", &ca.gw, user.export(&fpr))
            .await
            .status(),
        200
    );
    let r = http()
        .post(ca.s.url("/v1/x509/issue-from-openpgp"))
        .bearer_auth(&ca.issuer)
        .json(&serde_json::json!({"email": "Frank@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    std::fs::write(dir.join("org.pem"), get_bytes(&ca, "/v1/org-cert").await).unwrap();
    std::fs::write(dir.join("frank.pem"), r.text().await.unwrap()).unwrap();
    openssl_ok(
        dir,
        &[
            "verify",
            "-CAfile",
            "org.pem",
            "-purpose",
            "smimesign",
            "frank.pem",
        ],
    );
    let text = openssl_ok(dir, &["x509", "-in", "frank.pem", "-noout", "-text"]);
    assert!(
        text.contains("CN = Frank Example") && text.contains("email:frank@example.com"),
        "{text}"
    );

    // Ed25519 OpenPGP keys and unknown users are refused.
    let eddie = user.gen_key("Eddie <eddie@example.com>", "ed25519", "1y", &[]);
    assert_eq!(
        post(&ca.s, "/v1/certify", &ca.gw, user.export(&eddie))
            .await
            .status(),
        200
    );
    for (email, status, code) in [
        ("eddie@example.com", 422, "refused"),
        ("nobody@example.com", 404, "unknown_user"),
    ] {
        let r = http()
            .post(ca.s.url("/v1/x509/issue-from-openpgp"))
            .bearer_auth(&ca.issuer)
            .json(&serde_json::json!({ "email": email }))
            .send()
            .await
            .unwrap();
        assert_error_for(email, r, status, code).await;
    }
}

#[tokio::test]
async fn the_organizations_addresses_cannot_become_a_users() {
    let ca = ca_with(|a| {
        a.ok(
            &[
                "org-cert",
                "self-sign",
                "--subject",
                "CN=Example Org CA,emailAddress=pki@example.com",
            ],
            true,
        );
    })
    .await;
    let user = Gpg::new();
    let fpr = user.gen_key("PKI <pki@example.com>", "ed25519", "1y", &[]);
    let r = post(&ca.s, "/v1/certify", &ca.gw, user.export(&fpr)).await;
    assert_eq!(r.status(), 422);
    let e = json(r).await;
    assert_eq!(e["code"], "no_managed_user_id", "{e}");
    assert!(e["error"].as_str().unwrap().contains("org cert"), "{e}");
    // Nor can the organization's addresses get an S/MIME certificate: the
    // org cert's, and the org key's own.
    let dir = ca.a.dir.path();
    for (name, addr) in [("pki", "pki@example.com"), ("org", "orgkey@example.com")] {
        let body = csr(dir, name, P256, &format!("/emailAddress={addr}"), None);
        let r = issue(&ca, "/v1/x509/issue", body).await;
        assert_eq!(r.status(), 422, "{addr}");
        let e = json(r).await;
        assert_eq!(e["code"], "refused", "{e}");
        assert!(e["error"].as_str().unwrap().contains(addr), "{e}");
    }
    let body = csr(dir, "user", P256, "/emailAddress=user@example.com", None);
    assert_eq!(issue(&ca, "/v1/x509/issue", body).await.status(), 201);
    let _ = &ca.revoker;
}

#[tokio::test]
async fn malformed_requests_to_every_route_get_json_4xx_errors() {
    let ca = ca_with(self_signed).await;
    let admin = ca.a.client("admin2", "admin");
    let json_ct = "application/json";
    // (method, path, token, content type, body, expected status and code)
    type Case<'a> = (
        &'a str,
        &'a str,
        &'a str,
        Option<&'a str>,
        &'a [u8],
        u16,
        &'a str,
    );
    let signer = ca.a.client("signer", "sign");
    let cases: Vec<Case> = vec![
        (
            "POST",
            "/v1/sign?mode=poetry",
            &signer,
            None,
            b"x",
            400,
            "bad_request",
        ),
        (
            "POST",
            "/v1/sign?armor=maybe",
            &signer,
            None,
            b"x",
            400,
            "bad_request",
        ),
        (
            "POST",
            "/v1/sign?unknown=1",
            &signer,
            None,
            b"x",
            400,
            "bad_request",
        ),
        (
            "GET",
            "/v1/sign",
            &signer,
            None,
            b"",
            405,
            "method_not_allowed",
        ),
        (
            "POST",
            "/v1/sign",
            "okc_not_a_token",
            None,
            b"x",
            401,
            "unauthorized",
        ),
        (
            "POST",
            "/v1/ignition",
            &admin,
            Some("text/plain"),
            b"{}",
            415,
            "unsupported_media_type",
        ),
        (
            "POST",
            "/v1/ignition",
            &admin,
            Some(json_ct),
            b"{\"passphrase\"",
            400,
            "bad_request",
        ),
        (
            "POST",
            "/v1/ignition",
            &admin,
            Some(json_ct),
            br#"{"passphrase":"x","extra":1}"#,
            400,
            "bad_request",
        ),
        (
            "POST",
            "/v1/ignition",
            &admin,
            Some(json_ct),
            &[b' '; 20_000],
            413,
            "body_too_large",
        ),
        (
            "PUT",
            "/v1/ignition",
            &admin,
            None,
            b"",
            405,
            "method_not_allowed",
        ),
        (
            "POST",
            "/v1/status",
            &admin,
            None,
            b"",
            405,
            "method_not_allowed",
        ),
        (
            "DELETE",
            "/v1/health",
            &admin,
            None,
            b"",
            405,
            "method_not_allowed",
        ),
        (
            "POST",
            "/v1/org-key",
            &admin,
            None,
            b"",
            405,
            "method_not_allowed",
        ),
        (
            "GET",
            "/v1/nothing-here",
            &admin,
            None,
            b"",
            404,
            "not_found",
        ),
        ("GET", "/v1/health/", &admin, None, b"", 404, "not_found"),
        (
            "POST",
            "/v1/certify",
            &ca.gw,
            None,
            b"\x00\x01garbage",
            400,
            "bad_certificate",
        ),
        (
            "GET",
            "/v1/users/not-an-email",
            &ca.gw,
            None,
            b"",
            400,
            "bad_request",
        ),
        (
            "DELETE",
            "/v1/users/nobody@example.com",
            &admin,
            None,
            b"",
            404,
            "unknown_user",
        ),
        (
            "POST",
            "/v1/users/nobody@example.com/activity",
            &ca.gw,
            None,
            b"",
            404,
            "unknown_user",
        ),
        (
            "POST",
            "/v1/users/x@example.com/activity",
            &ca.issuer,
            None,
            b"",
            403,
            "forbidden",
        ),
        (
            "PUT",
            "/v1/certify",
            &ca.gw,
            None,
            b"x",
            405,
            "method_not_allowed",
        ),
        (
            "GET",
            "/v1/x509/certs/zz-not-hex",
            &ca.issuer,
            None,
            b"",
            400,
            "bad_request",
        ),
        (
            "GET",
            "/v1/x509/certs/00ff",
            &ca.issuer,
            None,
            b"",
            404,
            "unknown_serial",
        ),
        (
            "GET",
            "/v1/x509/certs/00ff",
            &ca.gw,
            None,
            b"",
            403,
            "forbidden",
        ),
        (
            "GET",
            "/v1/x509/crl?format=txt",
            &ca.gw,
            None,
            b"",
            400,
            "bad_request",
        ),
        (
            "GET",
            "/v1/x509/crl/0000000000000000",
            &ca.gw,
            None,
            b"",
            404,
            "not_found",
        ),
        (
            "GET",
            "/v1/org-cert?format=jpeg",
            &ca.gw,
            None,
            b"",
            400,
            "bad_request",
        ),
        (
            "GET",
            "/v1/x509/issue?renew=maybe",
            &ca.issuer,
            None,
            b"",
            405,
            "method_not_allowed",
        ),
        (
            "POST",
            "/v1/x509/issue?renew=maybe",
            &ca.issuer,
            None,
            b"x",
            400,
            "bad_request",
        ),
        (
            "POST",
            "/v1/x509/issue-from-openpgp",
            &ca.issuer,
            Some(json_ct),
            b"{not json",
            400,
            "bad_request",
        ),
        (
            "POST",
            "/v1/x509/issue-from-openpgp",
            &ca.issuer,
            Some("text/plain"),
            b"{}",
            415,
            "unsupported_media_type",
        ),
        (
            "POST",
            "/v1/x509/issue-from-openpgp",
            &ca.issuer,
            Some(json_ct),
            br#"{"email":"nope"}"#,
            400,
            "bad_request",
        ),
        (
            "POST",
            "/v1/x509/revoke",
            &ca.revoker,
            Some(json_ct),
            b"[]",
            400,
            "bad_request",
        ),
        (
            "POST",
            "/v1/x509/revoke",
            &ca.revoker,
            Some(json_ct),
            &[b'x'; 20_000],
            413,
            "body_too_large",
        ),
        (
            "GET",
            "/pks/lookup?op=get&search=",
            &ca.gw,
            None,
            b"",
            400,
            "bad_request",
        ),
    ];
    for (method, path, token, ctype, body, status, code) in cases {
        let mut req = http()
            .request(method.parse().unwrap(), ca.s.url(path))
            .bearer_auth(token)
            .body(body.to_vec());
        if let Some(c) = ctype {
            req = req.header("content-type", c);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), status, "{method} {path}");
        let e: serde_json::Value = r
            .json()
            .await
            .unwrap_or_else(|_| panic!("{method} {path}: not JSON"));
        assert_eq!(e["code"], code, "{method} {path}: {e}");
        assert!(e["error"].is_string(), "{method} {path}: {e}");
    }
}

/// Runs SQL on the appliance's store (SQLite or PostgreSQL).
fn sql(a: &Appliance, q: &str) -> String {
    a.sql(q).trim().to_string()
}

/// A DER subjectAltName of rfc822Names, as hex for `-addext subjectAltName=DER:`.
fn san_der(emails: &[&[u8]]) -> String {
    let mut inner = Vec::new();
    for e in emails {
        inner.push(0x81);
        inner.push(u8::try_from(e.len()).unwrap());
        inner.extend_from_slice(e);
    }
    let mut der = vec![0x30, u8::try_from(inner.len()).unwrap()];
    der.extend(inner);
    hex::encode(der)
}

#[tokio::test]
async fn addresses_in_csrs_are_parsed_strictly() {
    let ca = ca_with(self_signed).await;
    let dir = ca.a.dir.path();
    let der = |e: &[u8]| format!("DER:{}", san_der(&[e]));
    // (subject, subjectAltName) of CSRs whose addresses are all in example.com.
    let cases: Vec<(&str, String)> = vec![
        ("/CN=Victim", "email:victim@bank.com@example.com".into()),
        ("/CN=Nul", der(b"alice\0@example.com")),
        (
            "/CN=Newline",
            der(b"eve\n42\t2026-01-01T00:00:00Z\tadmin\tsign\tok\t-\tforged@example.com"),
        ),
        ("/CN=Tab", der(b"eve\tx@example.com")),
        ("/CN=Quote", der(b"\"eve\"@example.com")),
        ("/CN=Bracket", der(b"<eve>@example.com")),
        ("/CN=Comma", der(b"eve,alice@example.com")),
        ("/CN=Dot", "email:eve@example.com.".into()),
        ("/CN=Host", der(b"eve@exa_mple.com")),
        // One good address does not carry a bad one.
        (
            "/CN=Mixed",
            format!(
                "DER:{}",
                san_der(&[b"alice@example.com", b"eve@example.com\n"])
            ),
        ),
        ("/emailAddress=eve x@example.com", String::new()),
    ];
    for (n, (subj, san)) in cases.iter().enumerate() {
        let body = csr(
            dir,
            &format!("bad{n}"),
            P256,
            subj,
            (!san.is_empty()).then_some(san.as_str()),
        );
        let r = issue(&ca, "/v1/x509/issue", body).await;
        assert_eq!(r.status(), 400, "{subj} {san}");
        let e = json(r).await;
        assert_eq!(e["code"], "bad_request", "{e}");
        let msg = e["error"].as_str().unwrap();
        assert!(msg.contains("not a valid email address"), "{msg}");
        assert!(!msg.chars().any(char::is_control), "{msg:?}");
    }
    // Plain addresses still pass, in the subject and the SAN alike.
    let good = csr(
        dir,
        "good",
        P256,
        "/emailAddress=Alice.O'Neil\\+smime@example.com",
        Some("email:alice.o'neil+smime@example.com,email:a-l_i.c~e@example.com"),
    );
    let r = issue(&ca, "/v1/x509/issue", good).await;
    assert_eq!(r.status(), 201);
    std::fs::write(dir.join("good.pem"), r.text().await.unwrap()).unwrap();
    std::fs::write(dir.join("org.pem"), get_bytes(&ca, "/v1/org-cert").await).unwrap();
    openssl_ok(
        dir,
        &[
            "verify",
            "-CAfile",
            "org.pem",
            "-purpose",
            "smimesign",
            "good.pem",
        ],
    );
    let text = openssl_ok(
        dir,
        &[
            "x509",
            "-in",
            "good.pem",
            "-noout",
            "-ext",
            "subjectAltName",
        ],
    );
    assert!(text.contains("email:a-l_i.c~e@example.com"), "{text}");
    // Only that one was issued, and every audit line is one row.
    let audit = ca.a.ok(&["audit", "list", "--last", "100"], false);
    assert_eq!(audit.matches("x509-issue").count(), 1, "{audit}");
    for line in audit.lines() {
        assert!(
            line.split('\t').next().unwrap().parse::<u64>().is_ok(),
            "{line:?}"
        );
    }
    assert_eq!(sql(&ca.a, "SELECT COUNT(*) FROM user_certs"), "1");
}

#[tokio::test]
async fn audit_list_shows_control_characters_escaped_in_every_field() {
    use orgkey::store::AuditEvent;
    let a = Appliance::new();
    let store = a
        .open_store(std::sync::Arc::new(orgkey::clock::SystemClock))
        .await;
    let forged = "\n99\t2026-01-01T00:00:00Z\tadmin\tsign\tok\t-\tforged";
    store
        .append_audit(&[AuditEvent {
            actor: format!("gw{forged}"),
            operation: "sign\r".into(),
            outcome: "ok\u{1b}[2K".into(),
            key_fingerprint: Some("\u{202e}FEDCBA\u{2066}".into()),
            data_digest: Some("ab\0cd".into()),
            detail: Some(format!("x\\ny{forged}\u{2028}\u{85}\u{200f}")),
        }])
        .await
        .unwrap();
    store.close().await;
    let out = a.ok(&["audit", "list", "--last", "1"], false);
    assert_eq!(out.lines().count(), 1, "one row, one line: {out:?}");
    let line = out.trim_end_matches('\n');
    assert_eq!(line.matches('\t').count(), 7, "eight columns: {line:?}");
    let hidden = |c: char| {
        (c.is_control() && c != '\t')
            || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{2028}' | '\u{200f}')
    };
    assert!(!line.chars().any(hidden), "{line:?}");
    let cols: Vec<&str> = line.split('\t').collect();
    assert_eq!(
        cols[2],
        "gw\\n99\\t2026-01-01T00:00:00Z\\tadmin\\tsign\\tok\\t-\\tforged"
    );
    assert_eq!(cols[3], "sign\\r");
    assert_eq!(cols[4], "ok\\u{1b}[2K");
    assert_eq!(cols[5], "\\u{202e}FEDCBA\\u{2066}");
    assert!(
        cols[6].starts_with("x\\\\ny\\n99\\t")
            && cols[6].ends_with("forged\\u{2028}\\u{85}\\u{200f}"),
        "{:?}",
        cols[6]
    );
    // Escaping is for display: the stored row and the chain are untouched.
    assert!(a.ok(&["audit", "verify"], false).contains("intact"));
}

#[tokio::test]
async fn fetching_a_crl_never_signs_and_every_crl_is_audited() {
    use sha2::Digest;
    let ca = ca_with(self_signed).await;
    let dir = ca.a.dir.path();
    let crls = || -> u64 { sql(&ca.a, "SELECT COUNT(*) FROM crls").parse().unwrap() };
    // Maintenance (its first run follows ignition, and ca_with waited for
    // it) makes each org cert's CRL; asking for a CRL never makes one.
    let made_by_maintenance = crls();
    assert!(made_by_maintenance <= 1);
    let r = get(&ca.s, "/v1/x509/crl").await;
    if made_by_maintenance == 0 {
        assert_eq!(r.status(), 404);
        assert_eq!(error_code(r).await, "no_crl");
    } else {
        assert_eq!(r.status(), 200);
    }
    assert_eq!(crls(), made_by_maintenance);

    // The first certificate comes with the CRL its distribution point names
    // (made with it when there was none yet).
    let body = csr(
        dir,
        "alice",
        P256,
        "/emailAddress=alice@example.com",
        Some("email:alice@example.com"),
    );
    let r = issue(&ca, "/v1/x509/issue", body).await;
    assert_eq!(r.status(), 201);
    let serial = r.headers()["orgkey-serial"].to_str().unwrap().to_string();
    std::fs::write(dir.join("alice.pem"), r.text().await.unwrap()).unwrap();
    assert_eq!(crls(), 1);
    let fpr = sql(
        &ca.a,
        "SELECT fingerprint FROM org_certs WHERE state = 'active'",
    );

    // Unauthenticated clients hammer the CRL, fresh and then past its
    // nextUpdate: they get the stored CRL, the token signs nothing.
    let hammer = |n: usize| {
        let paths: Vec<String> = (0..n)
            .map(|i| match i % 3 {
                0 => ca.s.url("/v1/x509/crl"),
                1 => ca.s.url(&format!("/v1/x509/crl/{}", &fpr[..16])),
                _ => ca.s.url("/v1/x509/crl?format=pem"),
            })
            .collect();
        async move {
            let mut tasks = Vec::new();
            for p in paths {
                tasks.push(tokio::spawn(async move {
                    let r = http().get(p).send().await.unwrap();
                    (r.status().as_u16(), r.bytes().await.unwrap().to_vec())
                }));
            }
            let mut ders = Vec::new();
            for t in tasks {
                let (status, body) = t.await.unwrap();
                assert_eq!(status, 200);
                if !body.starts_with(b"-----") {
                    ders.push(body);
                }
            }
            ders
        }
    };
    let first = hammer(30).await;
    assert!(first.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(crls(), 1);
    sql(&ca.a, "UPDATE crls SET next_update = 1");
    let stale = hammer(30).await;
    assert_eq!(stale[0], first[0], "the stored CRL, stale as it is");
    assert_eq!(crls(), 1, "an unauthenticated GET made the token sign");

    // A revocation makes the next CRL, under the revoker's name.
    let r = http()
        .post(ca.s.url("/v1/x509/revoke"))
        .bearer_auth(&ca.revoker)
        .json(&serde_json::json!({"serial": serial}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(crls(), 2);
    std::fs::write(dir.join("org.pem"), get_bytes(&ca, "/v1/org-cert").await).unwrap();
    std::fs::write(
        dir.join("now.crl"),
        get_bytes(&ca, "/v1/x509/crl?format=pem").await,
    )
    .unwrap();
    let (ok, out) = openssl_in(
        dir,
        &[
            "verify",
            "-crl_check",
            "-CAfile",
            "org.pem",
            "-CRLfile",
            "now.crl",
            "alice.pem",
        ],
    );
    assert!(!ok && out.contains("revoked"), "{out}");
    ca.s.stop();

    // Every CRL signature has exactly one audit row, naming its digest.
    let stored = sql(&ca.a, "SELECT crl FROM crls ORDER BY number");
    let audited = sql(
        &ca.a,
        "SELECT actor || ' ' || outcome || ' ' || data_digest FROM audit_log \
         WHERE operation = 'x509-crl' ORDER BY seq",
    );
    let audited: Vec<&str> = audited.lines().collect();
    assert_eq!(audited.len(), stored.lines().count(), "{audited:?}");
    for (i, (hex_der, row)) in stored.lines().zip(&audited).enumerate() {
        let der = hex::decode(hex_der).unwrap();
        let digest = hex::encode(sha2::Sha256::digest(&der));
        let actor = match i {
            0 if made_by_maintenance == 1 => "maintenance",
            0 => "issuer",
            _ => "revoker",
        };
        assert_eq!(*row, format!("{actor} ok {digest}"));
        std::fs::write(dir.join(format!("{i}.crl")), &der).unwrap();
        let out = openssl_ok(
            dir,
            &[
                "crl",
                "-inform",
                "DER",
                "-in",
                &format!("{i}.crl"),
                "-CAfile",
                "org.pem",
                "-noout",
            ],
        );
        assert!(out.contains("verify OK"), "{out}");
    }
    assert!(ca.a.ok(&["audit", "verify"], false).contains("intact"));
}

/// Another process holds the store's write lock: an issuance answers 503
/// `store_unavailable` (a retry may work), not `audit_unavailable`, and
/// issues nothing; once the lock is gone the same request issues.
#[tokio::test]
async fn issuance_while_another_writer_holds_the_store_is_store_unavailable() {
    let ca = ca_with(|a| {
        self_signed(a);
        a.set_config("store.busy_timeout", "200ms");
    })
    .await;
    let dir = ca.a.dir.path();
    // The first issuance makes the org cert's first CRL.
    let first = csr(
        dir,
        "first",
        P256,
        "/emailAddress=first@example.com",
        Some("email:first@example.com"),
    );
    assert_eq!(issue(&ca, "/v1/x509/issue", first).await.status(), 201);
    let body = csr(
        dir,
        "alice",
        P256,
        "/emailAddress=alice@example.com",
        Some("email:alice@example.com"),
    );

    let lock = ca.a.lock_store_writes();
    let r = issue(&ca, "/v1/x509/issue", body.clone()).await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "5");
    assert_eq!(error_code(r).await, "store_unavailable");

    lock.release();
    assert_eq!(issue(&ca, "/v1/x509/issue", body).await.status(), 201);
    let issued = sql(
        &ca.a,
        "SELECT COUNT(*) FROM user_certs WHERE state = 'issued'",
    );
    assert_eq!(issued.trim(), "2");
    assert!(ca.a.ok(&["audit", "verify"], false).contains("intact"));
}

/// The token's org cert key is not the stored org cert's key: ignition
/// refuses with 409 `org_key_mismatch` and the appliance stays sealed.
#[tokio::test]
async fn ignition_stays_sealed_when_the_org_cert_key_does_not_match() {
    let a = Appliance::with_org_key("p256");
    self_signed(&a);
    let admin = a.client("admin", "admin");
    // Point the org cert at the org key's primary key pair.
    sql(
        &a,
        "UPDATE org_certs SET key_id = (SELECT primary_id FROM org_keys WHERE state = 'active');",
    );
    let s = a.serve(&[]);
    let r = ignite(&s, &admin, PASSPHRASE).await;
    assert_eq!(r.status(), 409);
    assert_eq!(error_code(r).await, "org_key_mismatch");
    let st: serde_json::Value = get_json(&s, "/v1/status").await;
    assert_eq!(st["state"], "sealed");
}
