//! Maintenance and user certificates, with a moved clock: an active user's
//! S/MIME certificate is re-issued for the same key before it expires, an
//! inactive user's is not, renewals do not pile up, and the CRL is renewed
//! before its nextUpdate. openssl (`verify -attime`, `crl`) judges.
//! One test per file: maintenance runs in this process (module environment).

mod common;
use common::*;
use orgkey::clock::{Clock, ManualClock};
use orgkey::config::Config;
use orgkey::store::Store;
use secrecy::SecretString;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const DAY: u64 = 86_400;

fn at(secs: u64) -> Arc<dyn Clock> {
    Arc::new(ManualClock::new(UNIX_EPOCH + Duration::from_secs(secs)))
}

async fn run(cfg: &Config, t: u64) -> orgkey::maintenance::Report {
    orgkey::service::run_maintenance(
        cfg,
        SecretString::from(PASSPHRASE),
        "test",
        at(t),
        &|_, _| {},
    )
    .await
    .expect("maintenance run")
}

async fn store_at(cfg: &Config, t: u64) -> Store {
    Store::open_configured(&cfg.store, &cfg.node_id, false, at(t))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn user_certificates_and_crls_are_renewed_for_active_users() {
    let a = Appliance::with_org_key("p256");
    a.set_config("maintenance.inactive_after", "10d");
    a.ok(
        &["org-cert", "self-sign", "--subject", "CN=Example Org CA"],
        true,
    );
    let admin = a.client("admin", "admin");
    let gw = a.client("gateway", "certify");
    let issuer = a.client("issuer", "issue");
    let dir = a.dir.path().to_path_buf();

    // Day 0: Alice and Bob are users (certified OpenPGP keys) with S/MIME certificates.
    let users = Gpg::new();
    let s = a.serve(&[]);
    assert_eq!(ignite(&s, &admin, PASSPHRASE).await.status(), 200);
    let mut serials = Vec::new();
    for name in ["alice", "bob"] {
        let fpr = users.gen_key(
            &format!("{name} <{name}@example.com>"),
            "nistp256",
            "2y",
            &[],
        );
        assert_eq!(
            post(&s, "/v1/certify", &gw, users.export(&fpr))
                .await
                .status(),
            200
        );
        let r = http()
            .post(s.url("/v1/x509/issue-from-openpgp"))
            .bearer_auth(&issuer)
            .json(&serde_json::json!({ "email": format!("{name}@example.com") }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        serials.push(r.headers()["orgkey-serial"].to_str().unwrap().to_string());
    }
    std::fs::write(
        dir.join("org.pem"),
        get(&s, "/v1/org-cert").await.bytes().await.unwrap(),
    )
    .unwrap();
    s.stop();
    let t0 = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let cfg = a.config_loaded();
    // SAFETY: the only test in this binary; no other thread reads the environment.
    unsafe { orgkey::token::set_module_environment(cfg.token.environment.iter()) };

    // Day 13: Alice was active on day 12, Bob not since day 0.
    let store = store_at(&cfg, t0 + 12 * DAY).await;
    assert!(store.touch_user("alice@example.com").await.unwrap());
    store.close().await;
    let r1 = run(&cfg, t0 + 13 * DAY).await;
    assert_eq!(
        (r1.user_certs_renewed, r1.user_certs_failed),
        (1, 0),
        "{r1:?}"
    );
    assert!(r1.crls_refreshed >= 1, "{r1:?}");

    // Alice's new certificate: same key, valid on day 20 when the first is not.
    let store = store_at(&cfg, t0 + 13 * DAY).await;
    let first = store.user_cert(&serials[0]).await.unwrap().unwrap();
    let newest = current_after_renewal(&store, &first.key_id, &serials[0]).await;
    assert_eq!(newest.key_id, first.key_id);
    assert_eq!(newest.emails, "alice@example.com");
    let bob_first = store.user_cert(&serials[1]).await.unwrap().unwrap();
    store.close().await;
    std::fs::write(dir.join("a1.pem"), first.cert.unwrap()).unwrap();
    std::fs::write(dir.join("a2.pem"), newest.cert.unwrap()).unwrap();
    std::fs::write(dir.join("b1.pem"), bob_first.cert.unwrap()).unwrap();
    let day20 = (t0 + 20 * DAY).to_string();
    let verify = |cert: &str| {
        openssl_in(
            &dir,
            &[
                "verify",
                "-attime",
                &day20,
                "-CAfile",
                "org.pem",
                "-purpose",
                "smimesign",
                cert,
            ],
        )
    };
    assert!(
        verify("a2.pem").0,
        "renewed certificate valid on day 20: {}",
        verify("a2.pem").1
    );
    assert!(!verify("a1.pem").0, "the first one has expired by day 20");
    assert!(!verify("b1.pem").0, "Bob's lapsed: he was inactive");
    let pk = |f: &str| openssl_ok(&dir, &["x509", "-in", f, "-noout", "-pubkey"]);
    assert_eq!(pk("a1.pem"), pk("a2.pem"), "renewal keeps the key");

    // An hour later nothing is due: no pile-up, and the CRL is still fresh.
    let r2 = run(&cfg, t0 + 13 * DAY + 3600).await;
    assert_eq!((r2.user_certs_renewed, r2.crls_refreshed), (0, 0), "{r2:?}");
    // A day later the CRL (24 h) is renewed again, and it verifies.
    let r3 = run(&cfg, t0 + 14 * DAY).await;
    assert_eq!(r3.crls_refreshed, 1, "{r3:?}");
    let store = store_at(&cfg, t0 + 14 * DAY).await;
    let org = store.active_org_cert().await.unwrap().unwrap();
    let crl = store.latest_crl(&org.fingerprint).await.unwrap().unwrap();
    store.close().await;
    std::fs::write(dir.join("crl.der"), &crl.der).unwrap();
    assert!(crl.number >= 2);
    let out = openssl_ok(
        &dir,
        &[
            "crl",
            "-inform",
            "DER",
            "-in",
            "crl.der",
            "-CAfile",
            "org.pem",
            "-noout",
            "-nextupdate",
        ],
    );
    assert!(out.contains("verify OK"), "{out}");
    // Each CRL was signed under audit: the first with the first certificate,
    // the others by maintenance.
    let sql = |q: &str| a.sql(q).trim().to_string();
    let crls: usize = sql("SELECT COUNT(*) FROM crls").parse().unwrap();
    let actors = sql(
        "SELECT actor FROM audit_log WHERE operation = 'x509-crl' AND outcome = 'ok' ORDER BY seq",
    );
    let actors: Vec<&str> = actors.lines().collect();
    assert_eq!(actors.len(), crls, "{actors:?}");
    assert_eq!(actors[0], "issuer");
    assert!(
        actors[1..].iter().all(|a| *a == "maintenance"),
        "{actors:?}"
    );
}

/// The newest certificate for a key other than `not`.
async fn current_after_renewal(
    store: &Store,
    key_id: &str,
    not: &str,
) -> orgkey::store::UserCertRecord {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let cur = store
        .current_user_cert(key_id, "alice@example.com", now + 13 * DAY as i64)
        .await
        .unwrap()
        .expect("a current certificate on day 13");
    assert_ne!(cur.serial, not, "a new certificate was issued");
    cur
}
