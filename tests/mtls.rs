//! Client identities over mTLS (decision 0022) against a real `orgkey
//! serve`: openssl makes the PKI (a server CA, a client CA with two client
//! certificates and one bound to nobody, a second trusted client CA, and an
//! untrusted CA), the CLI binds clients by what openssl prints (SHA-256
//! fingerprint; RFC 2253 subject and issuer), and reqwest (rustls, with an
//! `Identity`) is the client. Certificates alone, certificates with bearer
//! tokens, and bearer tokens alone share one TLS listener.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The test PKI, made by openssl in the appliance's temp dir.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new(dir: &Path) -> Self {
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n\
             extendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("client.ext"),
            "basicConstraints=critical,CA:FALSE\nextendedKeyUsage=clientAuth\n",
        )
        .unwrap();
        let pki = Pki {
            dir: dir.to_path_buf(),
        };
        pki.ca("server-ca", "/CN=orgkey test server CA");
        pki.cert("tls", "server-ca", "/CN=127.0.0.1", "server.ext");
        pki.ca("clients-ca", "/O=Example/CN=Example Client CA");
        pki.ca("partner-ca", "/O=Partner/CN=Partner Client CA");
        pki.ca("rogue-ca", "/O=Example/CN=Example Client CA");
        for (name, ca, subject) in [
            ("gw", "clients-ca", "/O=Example/CN=mail gateway"),
            ("ops", "clients-ca", "/O=Example/CN=ops"),
            ("stranger", "clients-ca", "/O=Example/CN=stranger"),
            // The gateway's subject, from another trusted CA.
            ("partner-gw", "partner-ca", "/O=Example/CN=mail gateway"),
            // The gateway's subject and issuer name, from a CA the
            // appliance does not trust.
            ("rogue", "rogue-ca", "/O=Example/CN=mail gateway"),
        ] {
            pki.cert(name, ca, subject, "client.ext");
        }
        let bundle = ["clients-ca", "partner-ca"]
            .map(|ca| std::fs::read_to_string(pki.path(&format!("{ca}.pem"))).unwrap())
            .concat();
        std::fs::write(pki.path("client-cas.pem"), bundle).unwrap();
        pki
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    fn ca(&self, name: &str, subject: &str) {
        openssl_ok(
            &self.dir,
            &[
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
                subject,
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.pem"),
            ],
        );
    }

    fn cert(&self, name: &str, ca: &str, subject: &str, ext: &str) {
        openssl_ok(
            &self.dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-subj",
                subject,
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ],
        );
        openssl_ok(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                &format!("{ca}.pem"),
                "-CAkey",
                &format!("{ca}.key"),
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                ext,
                "-out",
                &format!("{name}.pem"),
            ],
        );
    }

    /// What `openssl x509 -noout OPTION` prints after the `=`: the SHA-256
    /// fingerprint, or a name in RFC 2253 form.
    fn openssl_field(&self, name: &str, option: &[&str]) -> String {
        let mut args = vec!["x509", "-in"];
        let file = format!("{name}.pem");
        args.push(&file);
        args.push("-noout");
        args.extend_from_slice(option);
        let out = openssl_ok(&self.dir, &args);
        out.trim()
            .split_once('=')
            .unwrap_or_else(|| panic!("openssl printed {out:?}"))
            .1
            .to_string()
    }

    fn sha256(&self, name: &str) -> String {
        self.openssl_field(name, &["-fingerprint", "-sha256"])
    }

    fn subject(&self, name: &str) -> String {
        self.openssl_field(name, &["-subject", "-nameopt", "RFC2253"])
    }

    fn issuer(&self, name: &str) -> String {
        self.openssl_field(name, &["-issuer", "-nameopt", "RFC2253"])
    }

    /// An HTTPS client trusting the server CA, presenting the certificate
    /// `identity` (its key and certificate) when given.
    fn client(&self, identity: Option<&str>) -> reqwest::Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca = std::fs::read(self.path("server-ca.pem")).unwrap();
        let mut b = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap());
        if let Some(name) = identity {
            let mut pem = std::fs::read(self.path(&format!("{name}.key"))).unwrap();
            pem.extend(std::fs::read(self.path(&format!("{name}.pem"))).unwrap());
            b = b.identity(reqwest::Identity::from_pem(&pem).unwrap());
        }
        b.build().unwrap()
    }
}

/// An appliance with an org key, serving TLS with client certificates
/// verified against the clients CA and the partner CA.
fn appliance() -> (Appliance, Pki) {
    let a = Appliance::with_org_key("p256");
    let pki = Pki::new(a.dir.path());
    a.edit_config(|t| {
        let server = config_table(t, "server");
        for (key, file) in [
            ("tls_cert", "tls.pem"),
            ("tls_key", "tls.key"),
            ("client_ca", "client-cas.pem"),
        ] {
            server.insert(key.into(), pki.path(file).display().to_string().into());
        }
    });
    (a, pki)
}

/// `POST /v1/sign` with `bearer` if given.
async fn sign(
    s: &Server,
    client: &reqwest::Client,
    bearer: Option<&str>,
) -> reqwest::Result<reqwest::Response> {
    let mut req = client.post(s.url("/v1/sign")).body("signed over mTLS");
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    req.send().await
}

/// Asserts the answer to `what` has `status`.
async fn expect(what: &str, r: reqwest::Result<reqwest::Response>, status: u16) {
    let r = r.unwrap_or_else(|e| panic!("{what}: {e:?}"));
    let got = r.status().as_u16();
    let body = r.text().await.unwrap_or_default();
    assert_eq!(got, status, "{what}: {body}");
}

/// Asserts that the server refused the TLS handshake over the client's
/// certificate: the request failed on a TLS alert, without an answer.
fn assert_handshake_refused(what: &str, r: reqwest::Result<reqwest::Response>) {
    let e = match r {
        Ok(r) => panic!("{what}: the handshake went through: {}", r.status()),
        Err(e) => e,
    };
    let chain = format!("{e:?}");
    assert!(chain.contains("AlertReceived"), "{what}: {chain}");
}

async fn ignite_over_tls(s: &Server, pki: &Pki, admin: &str) {
    let r = pki
        .client(None)
        .post(s.url("/v1/ignition"))
        .bearer_auth(admin)
        .json(&serde_json::json!({ "passphrase": PASSPHRASE }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

#[tokio::test]
async fn client_certificates_authenticate_bound_clients_beside_bearer_tokens() {
    let (a, pki) = appliance();
    let admin = a.client("admin", "admin");
    let plain = a.client("plain", "sign");
    // gw: bound by subject and issuer as openssl prints them; its
    // certificate alone authenticates it.
    let (gw_subject, gw_issuer) = (pki.subject("gw"), pki.issuer("gw"));
    assert_eq!(gw_subject, "CN=mail gateway,O=Example");
    let gw_file = a.path("gw.token");
    a.ok(
        &[
            "client",
            "add",
            "gw",
            "--scopes",
            "sign",
            "--token-out",
            gw_file.to_str().unwrap(),
            "--cert-subject",
            &gw_subject,
            "--cert-issuer",
            &gw_issuer,
        ],
        false,
    );
    let gw = std::fs::read_to_string(&gw_file)
        .unwrap()
        .trim()
        .to_string();
    // ops: bound by fingerprint, and needs its certificate and its token.
    let ops_file = a.path("ops.token");
    a.ok(
        &[
            "client",
            "add",
            "ops",
            "--scopes",
            "sign,admin",
            "--token-out",
            ops_file.to_str().unwrap(),
            "--cert-sha256",
            &pki.sha256("ops"),
            "--require-cert",
        ],
        false,
    );
    let ops = std::fs::read_to_string(&ops_file)
        .unwrap()
        .trim()
        .to_string();
    let list = a.ok(&["client", "list"], false);
    assert!(
        list.contains(
            "gw\tsign\ttoken-or-cert\tcert-subject \"CN=mail gateway,O=example\" \
             cert-issuer \"CN=example client ca,O=example\"\t"
        ) && list.contains(&format!(
            "ops\tsign,admin\tcert-and-token\tcert-sha256 {}\t",
            pki.sha256("ops").replace(':', "").to_lowercase()
        )) && list.contains("plain\tsign\ttoken\t-\t"),
        "{list}"
    );

    let s = a.serve(&[]);
    assert!(s.url.starts_with("https://"), "{}", s.url);
    ignite_over_tls(&s, &pki, &admin).await;
    let (gw_tls, ops_tls, stranger_tls, partner_tls, no_cert) = (
        pki.client(Some("gw")),
        pki.client(Some("ops")),
        pki.client(Some("stranger")),
        pki.client(Some("partner-gw")),
        pki.client(None),
    );

    // The right certificate, alone or with its own token: signed, and the
    // audit row names the client.
    expect("gw's certificate", sign(&s, &gw_tls, None).await, 200).await;
    expect(
        "gw's certificate and token",
        sign(&s, &gw_tls, Some(&gw)).await,
        200,
    )
    .await;
    let audit = a.ok(&["audit", "list", "--last", "10"], false);
    assert_eq!(audit.matches("\tgw\tsign\tok\t").count(), 2, "{audit}");
    // gw's token alone still works (gw does not require its certificate).
    expect("gw's token alone", sign(&s, &no_cert, Some(&gw)).await, 200).await;
    // A certificate of one client with the token of another: refused.
    expect(
        "gw's certificate, plain's token",
        sign(&s, &gw_tls, Some(&plain)).await,
        401,
    )
    .await;
    // Valid chains bound to nobody: the stranger, and the gateway's subject
    // from the partner CA (the binding names the issuer too).
    for (what, c) in [("stranger", &stranger_tls), ("partner-gw", &partner_tls)] {
        let r = sign(&s, c, None).await.unwrap();
        assert_error_for(what, r, 401, "unauthorized").await;
    }
    // Bearer-only clients keep working on the same listener, with or
    // without an unbound certificate.
    expect("plain's token", sign(&s, &no_cert, Some(&plain)).await, 200).await;
    expect(
        "plain's token, stranger's certificate",
        sign(&s, &stranger_tls, Some(&plain)).await,
        200,
    )
    .await;

    // ops requires its certificate and its token.
    expect(
        "ops's token alone",
        sign(&s, &no_cert, Some(&ops)).await,
        401,
    )
    .await;
    expect(
        "ops's certificate alone",
        sign(&s, &ops_tls, None).await,
        401,
    )
    .await;
    expect(
        "ops's certificate and token",
        sign(&s, &ops_tls, Some(&ops)).await,
        200,
    )
    .await;
    let mut wrong = ops.clone();
    let last = wrong.pop().unwrap();
    wrong.push(if last == 'A' { 'B' } else { 'A' });
    expect(
        "ops's certificate, a wrong token",
        sign(&s, &ops_tls, Some(&wrong)).await,
        401,
    )
    .await;
    expect(
        "ops's token, gw's certificate",
        sign(&s, &gw_tls, Some(&ops)).await,
        401,
    )
    .await;
    let audit = a.ok(&["audit", "list", "--last", "20"], false);
    assert_eq!(audit.matches("\tops\tsign\tok\t").count(), 1, "{audit}");

    // Scopes hold for certificate clients: gw may not seal (403); status
    // shows a certificate client without admin the public view, and ops
    // (admin) the details.
    let r = gw_tls.delete(s.url("/v1/ignition")).send().await.unwrap();
    assert_error(r, 403, "forbidden").await;
    let status = |c: &reqwest::Client, bearer: Option<&str>| {
        let mut req = c.get(s.url("/v1/status"));
        if let Some(t) = bearer {
            req = req.bearer_auth(t);
        }
        req.send()
    };
    let public: serde_json::Value = status(&gw_tls, None).await.unwrap().json().await.unwrap();
    assert!(public.get("token").is_none(), "{public}");
    let public: serde_json::Value = status(&stranger_tls, None)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(public.get("token").is_none(), "{public}");
    let detail: serde_json::Value = status(&ops_tls, Some(&ops))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(detail.get("token").is_some(), "{detail}");
    assert_error(status(&ops_tls, None).await.unwrap(), 401, "unauthorized").await;

    // A certificate from a CA the appliance does not trust (with the very
    // subject and issuer name gw is bound to): no TLS connection at all.
    let rogue = sign(&s, &pki.client(Some("rogue")), Some(&plain)).await;
    assert_handshake_refused("the rogue certificate", rogue);
    let audit_after = a.ok(&["audit", "list", "--last", "20"], false);
    assert_eq!(
        audit_after.matches("\tsign\tok\t").count(),
        audit.matches("\tsign\tok\t").count(),
        "no signature for the refused ones"
    );
    // The binding changes are in the audit log.
    assert!(
        audit_after.contains("\tclient-add\tok\t-\tops scopes sign,admin cert-sha256 "),
        "{audit_after}"
    );

    // The CLI's own client presents ops's certificate with its token.
    let identity = pki.path("ops-identity.pem");
    let pem =
        [pki.path("ops.key"), pki.path("ops.pem")].map(|p| std::fs::read_to_string(p).unwrap());
    std::fs::write(&identity, pem.concat()).unwrap();
    let ca = pki.path("server-ca.pem");
    let seal = [
        "seal",
        "--url",
        &s.url,
        "--token-file",
        ops_file.to_str().unwrap(),
        "--ca-file",
        ca.to_str().unwrap(),
    ];
    a.refused(&seal, false, "HTTP 401");
    let mut with_cert = seal.to_vec();
    with_cert.extend(["--client-cert", identity.to_str().unwrap()]);
    assert!(a.ok(&with_cert, false).contains("sealed"));
    let audit = a.ok(&["audit", "list", "--last", "3"], false);
    assert!(audit.contains("\tops\tseal\tok"), "{audit}");
}

#[tokio::test]
async fn unbound_and_removed_bindings_are_refused_at_once_and_one_certificate_names_one_client() {
    let (a, pki) = appliance();
    let admin = a.client("admin", "admin");
    let gw_sha = pki.sha256("gw");
    a.ok(
        &[
            "client",
            "add",
            "gw",
            "--scopes",
            "sign",
            "--cert-sha256",
            &gw_sha,
        ],
        false,
    );
    let ops = a.client("ops", "sign");
    // No second client for the same certificate, however it is written.
    let refused = [
        vec![
            "client",
            "add",
            "gw2",
            "--scopes",
            "sign",
            "--cert-sha256",
            &gw_sha,
        ],
        vec!["client", "bind", "ops", "--cert-sha256", &gw_sha],
    ];
    for args in &refused {
        a.refused(
            args,
            false,
            "client \"gw\" is already bound to that certificate",
        );
    }
    a.ok(
        &[
            "client",
            "bind",
            "ops",
            "--cert-subject",
            "CN=ops,O=Example",
            "--cert-issuer",
            &pki.issuer("ops"),
            "--require-cert",
        ],
        false,
    );
    a.refused(
        &[
            "client",
            "add",
            "ops2",
            "--scopes",
            "sign",
            "--cert-subject",
            "cn=OPS,o=example",
            "--cert-issuer",
            "CN=Example  Client CA,O=EXAMPLE",
        ],
        false,
        "client \"ops\" is already bound to that certificate",
    );
    a.refused(
        &[
            "client",
            "bind",
            "ops",
            "--cert-subject",
            "CN = ops",
            "--cert-issuer",
            "CN=x",
        ],
        false,
        "RFC 4514",
    );
    a.refused(
        &["client", "bind", "nobody", "--cert-sha256", &gw_sha],
        false,
        "no client named",
    );
    a.refused(
        &["client", "add", "x", "--scopes", "sign", "--require-cert"],
        false,
        "needs a certificate binding",
    );

    let s = a.serve(&[]);
    ignite_over_tls(&s, &pki, &admin).await;
    // One client each, kept alive: the changes below hold for the next
    // request on the same connection.
    let gw_tls = pki.client(Some("gw"));
    let ops_tls = pki.client(Some("ops"));
    expect("gw's certificate", sign(&s, &gw_tls, None).await, 200).await;
    expect(
        "ops's certificate and token",
        sign(&s, &ops_tls, Some(&ops)).await,
        200,
    )
    .await;

    // Unbinding revokes the certificate at once.
    a.ok(&["client", "unbind", "gw"], false);
    expect(
        "gw's unbound certificate",
        sign(&s, &gw_tls, None).await,
        401,
    )
    .await;
    // Bound again (by subject and issuer now): back at once.
    a.ok(
        &[
            "client",
            "bind",
            "gw",
            "--cert-subject",
            &pki.subject("gw"),
            "--cert-issuer",
            &pki.issuer("gw"),
        ],
        false,
    );
    expect(
        "gw's certificate, bound again",
        sign(&s, &gw_tls, None).await,
        200,
    )
    .await;
    // A fingerprint binding of another client for the same certificate
    // cannot be refused when it is made (the store has only the hash); the
    // certificate then names two clients and is refused until one goes.
    let clash = a.client("clash", "sign");
    a.ok(
        &["client", "bind", "clash", "--cert-sha256", &gw_sha],
        false,
    );
    expect(
        "a certificate two clients are bound to",
        sign(&s, &gw_tls, None).await,
        401,
    )
    .await;
    expect(
        "clash's token with that certificate",
        sign(&s, &gw_tls, Some(&clash)).await,
        401,
    )
    .await;
    a.ok(&["client", "remove", "clash"], false);
    expect(
        "gw's certificate, clash removed",
        sign(&s, &gw_tls, None).await,
        200,
    )
    .await;
    // Removing the client revokes its binding at once.
    a.ok(&["client", "remove", "gw"], false);
    expect(
        "removed gw's certificate",
        sign(&s, &gw_tls, None).await,
        401,
    )
    .await;

    // Unbinding a require-cert client locks it out; its token does not
    // start to work alone.
    let out = a.run(&["client", "unbind", "ops"], false);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("locked out"));
    assert!(
        a.ok(&["client", "list"], false)
            .contains("ops\tsign\tlocked:require-cert-without-binding\t-\t")
    );
    expect(
        "unbound ops, certificate and token",
        sign(&s, &ops_tls, Some(&ops)).await,
        401,
    )
    .await;
    expect(
        "unbound ops, token alone",
        sign(&s, &pki.client(None), Some(&ops)).await,
        401,
    )
    .await;
    a.ok(&["client", "unbind", "ops", "--no-require-cert"], false);
    expect(
        "ops's token, require-cert lifted",
        sign(&s, &pki.client(None), Some(&ops)).await,
        200,
    )
    .await;

    let audit = a.ok(&["audit", "list", "--last", "40"], false);
    for op in [
        "\tclient-bind\tok\t",
        "\tclient-unbind\tok\t",
        "\tclient-remove\tok\t",
    ] {
        assert!(audit.contains(op), "{op} not in {audit}");
    }
    assert!(
        audit.contains("\tclient-unbind\tok\t-\tops no-require-cert\t"),
        "{audit}"
    );
}

#[tokio::test]
async fn client_crls_refuse_revoked_client_certificates_in_the_handshake() {
    let (a, pki) = appliance();
    // The client CA revokes the stranger's certificate (openssl ca).
    std::fs::write(
        pki.path("ca.cnf"),
        "[ca]\ndefault_ca = d\n[d]\ndatabase = index.txt\ncrlnumber = crlnumber\n\
         default_md = sha256\ndefault_crl_days = 2\n",
    )
    .unwrap();
    std::fs::write(pki.path("index.txt"), "").unwrap();
    std::fs::write(pki.path("crlnumber"), "01\n").unwrap();
    let ca_args = [
        "-config",
        "ca.cnf",
        "-keyfile",
        "clients-ca.key",
        "-cert",
        "clients-ca.pem",
    ];
    let mut revoke = vec!["ca"];
    revoke.extend(ca_args);
    revoke.extend(["-revoke", "stranger.pem"]);
    openssl_ok(&pki.dir, &revoke);
    let mut gencrl = vec!["ca"];
    gencrl.extend(ca_args);
    gencrl.extend(["-gencrl", "-out", "clients.crl"]);
    openssl_ok(&pki.dir, &gencrl);
    a.set_config(
        "server.client_crls",
        toml::Value::Array(vec![pki.path("clients.crl").display().to_string().into()]),
    );
    let plain = a.client("plain", "sign");
    a.ok(
        &[
            "client",
            "add",
            "gw",
            "--scopes",
            "sign",
            "--cert-subject",
            &pki.subject("gw"),
            "--cert-issuer",
            &pki.issuer("gw"),
        ],
        false,
    );
    let admin = a.client("admin", "admin");
    // Files that are not what they should be stop serve (it exits, it
    // does not wait to listen), naming them.
    let serve_fails = |why: &str| {
        let out = std::process::Command::new("timeout")
            .args(["-k", "5", "60", bin(), "serve", "--listen", "127.0.0.1:0"])
            .env("ORGKEY_CONFIG", &a.config)
            .env("ORGKEY_LOG", "warn")
            .output()
            .unwrap();
        assert_refused(&out, why);
    };
    let crl = pki.path("clients.crl");
    let good_crl = std::fs::read(&crl).unwrap();
    std::fs::write(
        &crl,
        "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
    )
    .unwrap();
    serve_fails(&format!("client_crls {}", crl.display()));
    std::fs::write(&crl, good_crl).unwrap();
    let cas = pki.path("client-cas.pem");
    let good_cas = std::fs::read(&cas).unwrap();
    std::fs::write(&cas, "no certificates here\n").unwrap();
    serve_fails(&format!("client_ca {}: no PEM certificate", cas.display()));
    std::fs::write(&cas, good_cas).unwrap();

    let s = a.serve(&[]);
    ignite_over_tls(&s, &pki, &admin).await;
    expect(
        "gw's certificate",
        sign(&s, &pki.client(Some("gw")), None).await,
        200,
    )
    .await;
    expect(
        "plain's token, no certificate",
        sign(&s, &pki.client(None), Some(&plain)).await,
        200,
    )
    .await;
    // Revoked: no connection, even for a bearer token.
    let r = sign(&s, &pki.client(Some("stranger")), Some(&plain)).await;
    assert_handshake_refused("a revoked certificate", r);
    // With CRLs, every client CA needs its CRL: the partner CA has none
    // listed, so its certificates' status is unknown and refused.
    let r = sign(&s, &pki.client(Some("partner-gw")), Some(&plain)).await;
    assert_handshake_refused("a certificate of unknown revocation status", r);
}
