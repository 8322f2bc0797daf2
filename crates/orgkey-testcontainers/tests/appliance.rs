//! The orgkey:dev image through this crate, as a gateway team's tests would
//! use it: sign and verify with gpg on the host, certify a user key and check
//! the certification with gpg, issue an S/MIME certificate that openssl
//! verifies against the container's org cert; and the image with a config of
//! its own, which is a normal sealed appliance.

mod common;

use common::*;
use orgkey_testcontainers::secrecy::ExposeSecret;
use orgkey_testcontainers::testcontainers::core::wait::ExitWaitStrategy;
use orgkey_testcontainers::testcontainers::core::{ContainerPort, WaitFor};
use orgkey_testcontainers::testcontainers::runners::AsyncRunner;
use orgkey_testcontainers::testcontainers::{GenericImage, ImageExt};
use orgkey_testcontainers::{Algorithm, OrgkeyDev, OrgkeyDevContainer};
use std::process::Command;

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

#[tokio::test(flavor = "multi_thread")]
async fn signs_and_gpg_verifies_with_the_org_key() {
    if !containers_available() {
        return;
    }
    let orgkey = OrgkeyDevContainer::start(OrgkeyDev::default())
        .await
        .unwrap();
    let data = b"line one\nline two\n".to_vec();
    let res = client()
        .post(format!("{}/v1/sign", orgkey.base_url()))
        .bearer_auth(orgkey.gateway_token().expose_secret())
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let signature = res.text().await.unwrap();
    assert!(
        signature.starts_with("-----BEGIN PGP SIGNATURE-----"),
        "{signature}"
    );

    let gpg = Gpg::new();
    gpg.import(orgkey.org_key());
    let org_fpr = gpg.fingerprint(orgkey.org_key());
    // The key the server publishes is the one the handle gives.
    let published = client()
        .get(format!("{}/v1/org-key", orgkey.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(published.status(), 200);
    assert_eq!(gpg.fingerprint(&published.text().await.unwrap()), org_fpr);

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("data"), &data).unwrap();
    std::fs::write(dir.path().join("data.asc"), &signature).unwrap();
    let out = run(gpg
        .cmd()
        .arg("--verify")
        .arg(dir.path().join("data.asc"))
        .arg(dir.path().join("data")));
    let status = String::from_utf8_lossy(&out.stderr);
    // VALIDSIG <signing subkey> ... <primary key fingerprint>
    let validsig = status
        .lines()
        .find(|l| l.starts_with("[GNUPG:] VALIDSIG "))
        .expect(&status);
    assert_eq!(
        validsig.split(' ').next_back(),
        Some(org_fpr.as_str()),
        "{status}"
    );

    // The same signature over other data does not verify.
    std::fs::write(dir.path().join("data"), b"line one\nline 2\n").unwrap();
    let out = gpg
        .cmd()
        .arg("--verify")
        .arg(dir.path().join("data.asc"))
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("BADSIG"));

    // No token, the admin token (no sign scope): refused.
    let res = client()
        .post(format!("{}/v1/sign", orgkey.base_url()))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let res = client()
        .post(format!("{}/v1/sign", orgkey.base_url()))
        .bearer_auth(orgkey.admin_token().expose_secret())
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    // The admin token is an admin's: it reads the status.
    let res = client()
        .get(format!("{}/v1/status", orgkey.base_url()))
        .bearer_auth(orgkey.admin_token().expose_secret())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let status: serde_json::Value = res.json().await.unwrap();
    assert!(status.to_string().contains(&org_fpr), "{status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn certifies_a_user_key_that_gpg_then_trusts() {
    if !containers_available() {
        return;
    }
    let orgkey = OrgkeyDevContainer::start(
        OrgkeyDev::default()
            .with_algorithm(Algorithm::Ed25519)
            .with_domains(["example.org", "example.net"]),
    )
    .await
    .unwrap();
    let gpg = Gpg::new();
    run(gpg.cmd().args([
        "--passphrase",
        "",
        "--pinentry-mode",
        "loopback",
        "--quick-gen-key",
        "Alice <alice@example.net>",
        "ed25519",
        "sign",
        "never",
    ]));
    let alice = run(gpg.cmd().args(["--armor", "--export", "alice@example.net"])).stdout;

    let res = client()
        .post(format!("{}/v1/certify", orgkey.base_url()))
        .bearer_auth(orgkey.gateway_token().expose_secret())
        .body(alice)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let certified = res.text().await.unwrap();

    // For a relying party (a keyring of its own) Alice's user ID is fully
    // valid once it trusts the org key: the certification is the org key's,
    // and good.
    let relying = Gpg::new();
    relying.import(orgkey.org_key());
    relying.import(&certified);
    let org_fpr = relying.fingerprint(orgkey.org_key());
    run_ok_with_input(
        relying.cmd().arg("--import-ownertrust"),
        format!("{org_fpr}:6:\n").as_bytes(),
    );
    let listing = String::from_utf8(
        run(relying
            .cmd()
            .args(["--with-colons", "--check-sigs", "alice@example.net"]))
        .stdout,
    )
    .unwrap();
    let org_keyid = &org_fpr[org_fpr.len() - 16..];
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("sig:!:") && l.split(':').nth(4) == Some(org_keyid)),
        "no good certification by {org_keyid}:\n{listing}"
    );
    let uid = listing
        .lines()
        .find(|l| l.starts_with("uid:"))
        .expect(&listing);
    assert_eq!(
        uid.split(':').nth(1),
        Some("f"),
        "user ID not fully valid: {uid}"
    );

    // A key outside the managed domains is not certified.
    run(gpg.cmd().args([
        "--passphrase",
        "",
        "--pinentry-mode",
        "loopback",
        "--quick-gen-key",
        "Mallory <mallory@example.com>",
        "ed25519",
        "sign",
        "never",
    ]));
    let mallory = run(gpg
        .cmd()
        .args(["--armor", "--export", "mallory@example.com"]))
    .stdout;
    let res = client()
        .post(format!("{}/v1/certify", orgkey.base_url()))
        .bearer_auth(orgkey.gateway_token().expose_secret())
        .body(mallory)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 422);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["code"], "no_managed_user_id", "{body}");
}

fn run_ok_with_input(cmd: &mut Command, input: &[u8]) {
    let out = run_with_input(cmd, input);
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn issues_smime_certificates_that_openssl_verifies_against_the_org_cert() {
    if !containers_available() {
        return;
    }
    let orgkey = OrgkeyDevContainer::start(OrgkeyDev::default().with_org_cert(true))
        .await
        .unwrap();
    let org_cert = orgkey
        .org_cert_pem()
        .expect("org cert asked for")
        .to_owned();
    // The handle's org cert is the one the server publishes.
    let published = client()
        .get(format!("{}/v1/org-cert", orgkey.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(published.status(), 200);
    assert_eq!(published.text().await.unwrap().trim(), org_cert.trim());

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("org.pem"), &org_cert).unwrap();
    let csr = |email: &str, name: &str| -> Vec<u8> {
        run(Command::new("openssl")
            .args([
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
            ])
            .arg("-keyout")
            .arg(d.join(format!("{name}.key")))
            .args(["-subj", &format!("/CN={name}/emailAddress={email}")])
            .arg("-out")
            .arg(d.join(format!("{name}.csr"))));
        std::fs::read(d.join(format!("{name}.csr"))).unwrap()
    };

    let res = client()
        .post(format!("{}/v1/x509/issue", orgkey.base_url()))
        .bearer_auth(orgkey.gateway_token().expose_secret())
        .body(csr("bob@example.com", "bob"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let chain = res.text().await.unwrap();
    let leaf_end =
        chain.find("-----END CERTIFICATE-----").unwrap() + "-----END CERTIFICATE-----".len();
    std::fs::write(d.join("bob.pem"), &chain[..leaf_end]).unwrap();
    let out = run(Command::new("openssl")
        .args(["verify", "-purpose", "smimesign", "-CAfile"])
        .arg(d.join("org.pem"))
        .arg(d.join("bob.pem")));
    assert!(String::from_utf8_lossy(&out.stdout).contains(": OK"));
    // The certificate is Bob's: his address, the key of his CSR.
    let text = String::from_utf8(
        run(Command::new("openssl")
            .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
            .arg(d.join("bob.pem")))
        .stdout,
    )
    .unwrap();
    assert!(text.contains("email:bob@example.com"), "{text}");
    let cert_key = run(Command::new("openssl")
        .args(["x509", "-noout", "-pubkey", "-in"])
        .arg(d.join("bob.pem")))
    .stdout;
    let csr_key = run(Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(d.join("bob.key")))
    .stdout;
    assert_eq!(cert_key, csr_key);

    // Against another CA it does not verify.
    run(Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
        ])
        .args(["-subj", "/CN=Some other CA"])
        .arg("-keyout")
        .arg(d.join("other.key"))
        .arg("-out")
        .arg(d.join("other.pem")));
    let out = Command::new("openssl")
        .args(["verify", "-purpose", "smimesign", "-CAfile"])
        .arg(d.join("other.pem"))
        .arg(d.join("bob.pem"))
        .output()
        .unwrap();
    assert!(!out.status.success());

    // An address outside the managed domains gets no certificate.
    let res = client()
        .post(format!("{}/v1/x509/issue", orgkey.base_url()))
        .bearer_auth(orgkey.gateway_token().expose_secret())
        .body(csr("eve@example.net", "eve"))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_client_error(), "{}", res.status());
}

/// With a config of its own the image is a normal appliance: sealed until an
/// operator ignites it, and no plaintext off loopback unless asked for.
#[tokio::test(flavor = "multi_thread")]
async fn with_a_config_the_image_is_a_sealed_appliance() {
    if !containers_available() {
        return;
    }
    // The config is made in the container, as an operator would before
    // mounting it; then the image's own entry point takes over.
    let setup = "set -e; printf 'a-long-passphrase\\n' > /tmp/pass; printf 'a-long-so-pin-1234\\n' > /tmp/so; \
                 orgkey init --data-dir /var/lib/orgkey-dev/app --domain example.com --create-token \
                 --listen 0.0.0.0:8443 --ignition-passphrase-file /tmp/pass --so-pin-file /tmp/so >/dev/null; \
                 export ORGKEY_CONFIG=/var/lib/orgkey-dev/app/orgkey.toml; exec orgkey-entrypoint \"$@\"";
    let image = |wait: WaitFor| {
        GenericImage::new("orgkey", "dev")
            .with_exposed_port(ContainerPort::Tcp(8443))
            .with_wait_for(wait)
            .with_entrypoint("/bin/bash")
    };

    // Plaintext off loopback is refused: the container ends with an error.
    let refused = image(WaitFor::exit(ExitWaitStrategy::new()))
        .with_cmd(["-c", setup, "entrypoint"])
        .start()
        .await
        .unwrap();
    assert_ne!(refused.exit_code().await.unwrap(), Some(0));
    let log = String::from_utf8_lossy(&refused.stderr_to_vec().await.unwrap()).into_owned();
    assert!(log.contains("TLS") || log.contains("tls"), "{log}");
    assert!(!log.contains("TEST FIXTURE"), "{log}");

    // With --insecure-plaintext (behind a TLS proxy) it serves, sealed.
    let sealed = image(WaitFor::message_on_stdout("orgkey listening on"))
        .with_cmd(["-c", setup, "entrypoint", "--insecure-plaintext"])
        .start()
        .await
        .unwrap();
    let base = format!(
        "http://{}:{}",
        sealed.get_host().await.unwrap(),
        sealed.get_host_port_ipv4(8443).await.unwrap()
    );
    assert_eq!(
        client()
            .get(format!("{base}/v1/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        client()
            .get(format!("{base}/v1/ready"))
            .send()
            .await
            .unwrap()
            .status(),
        503
    );
    let res = client()
        .post(format!("{base}/v1/sign"))
        .bearer_auth("not-a-token")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let log = String::from_utf8_lossy(&sealed.stderr_to_vec().await.unwrap()).into_owned();
    assert!(log.contains("SEALED"), "{log}");
    assert!(!log.contains("TEST FIXTURE"), "{log}");
}
