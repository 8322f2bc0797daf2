//! Crash safety: the server is made to abort (like kill -9) at each step of
//! certificate issuance and of certification, through the debug-build
//! failpoints. After a restart: the audit chain is intact, no serial is
//! reused, no certificate is recorded as issued that was not committed with
//! its audit row, nothing half-written remains, and the same request works.

mod common;
use common::*;
use std::time::Duration;

/// Runs SQL on the appliance's store (SQLite or PostgreSQL).
fn sql(a: &Appliance, q: &str) -> String {
    a.sql(q).trim().to_string()
}

/// Serves with the failpoint armed, sends the request, and waits for the
/// abort. The client must not get a success.
async fn crash_at(a: &Appliance, admin: &str, point: &str, path: &str, token: &str, body: Vec<u8>) {
    let mut s = a.serve_env(&[], &[("ORGKEY_CRASH_AT", point)]);
    assert_eq!(ignite(&s, admin, PASSPHRASE).await.status(), 200);
    let r = http()
        .post(s.url(path))
        .bearer_auth(token)
        .body(body)
        .send()
        .await;
    assert!(
        r.is_err() || !r.unwrap().status().is_success(),
        "{point}: a response came back"
    );
    for _ in 0..100 {
        if let Some(status) = s.child.try_wait().unwrap() {
            assert!(!status.success(), "{point}: the server must have aborted");
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{point}: the server did not abort");
}

#[tokio::test]
async fn aborting_at_every_issuance_and_certification_step_loses_nothing() {
    let a = Appliance::with_org_key("p256");
    a.ok(&["org-cert", "self-sign", "--subject", "CN=Crash CA"], true);
    let admin = a.client("admin", "admin");
    let issuer = a.client("issuer", "issue");
    let gw = a.client("gateway", "certify");
    let dir = a.dir.path().to_path_buf();
    openssl_ok(
        &dir,
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
    let csr = std::fs::read(dir.join("u.csr")).unwrap();

    for (n, point) in [
        "issue-after-reserve",
        "issue-after-sign",
        "issue-before-commit",
    ]
    .into_iter()
    .enumerate()
    {
        crash_at(&a, &admin, point, "/v1/x509/issue", &issuer, csr.clone()).await;
        assert!(
            a.ok(&["audit", "verify"], false).contains("intact"),
            "{point}"
        );
        assert_eq!(
            sql(&a, "SELECT COUNT(*) FROM user_certs WHERE state = 'issued'"),
            "0",
            "{point}"
        );
        assert_eq!(
            sql(
                &a,
                "SELECT COUNT(*) FROM user_certs WHERE state = 'pending'"
            ),
            (n + 1).to_string(),
            "{point}"
        );
        assert_eq!(
            sql(
                &a,
                "SELECT COUNT(*) FROM audit_log WHERE operation = 'x509-issue'"
            ),
            "0"
        );
    }
    for point in ["certify-after-sign", "certify-before-commit"] {
        let user = Gpg::new();
        let fpr = user.gen_key("Una <una@example.com>", "ed25519", "1y", &[]);
        crash_at(&a, &admin, point, "/v1/certify", &gw, user.export(&fpr)).await;
        assert!(
            a.ok(&["audit", "verify"], false).contains("intact"),
            "{point}"
        );
        assert_eq!(
            sql(&a, "SELECT COUNT(*) FROM user_keys"),
            "0",
            "{point}: nothing half-written"
        );
        assert_eq!(sql(&a, "SELECT COUNT(*) FROM users"), "0", "{point}");
    }

    // After the crashes the same requests work, with a serial never seen before.
    let pending = sql(&a, "SELECT serial FROM user_certs WHERE state = 'pending'");
    let s = a.serve(&[]);
    assert_eq!(ignite(&s, &admin, PASSPHRASE).await.status(), 200);
    let r = post(&s, "/v1/x509/issue", &issuer, csr).await;
    assert_eq!(r.status(), 201);
    let serial = r.headers()["orgkey-serial"].to_str().unwrap().to_string();
    assert!(!pending.contains(&serial), "serial {serial} reused");
    std::fs::write(dir.join("u.pem"), r.text().await.unwrap()).unwrap();
    std::fs::write(dir.join("org.pem"), a.ok(&["org-cert", "export"], false)).unwrap();
    openssl_ok(
        &dir,
        &[
            "verify",
            "-CAfile",
            "org.pem",
            "-purpose",
            "smimesign",
            "u.pem",
        ],
    );
    let user = Gpg::new();
    let fpr = user.gen_key("Una <una@example.com>", "ed25519", "1y", &[]);
    assert_eq!(
        post(&s, "/v1/certify", &gw, user.export(&fpr))
            .await
            .status(),
        200
    );
    s.stop();
    assert!(a.ok(&["audit", "verify"], false).contains("intact"));
    assert_eq!(
        sql(&a, "SELECT COUNT(*) FROM user_certs WHERE state = 'issued'"),
        "1"
    );
}
