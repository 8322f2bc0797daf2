//! Maintenance with a moved clock: certifications are renewed for active
//! users and lapse for inactive ones, the org key renews itself the day
//! before it expires and certifications made before the renewal stay valid,
//! and replacing the org key leaves users unverified until the next run.
//! gpg (with `--faked-system-time`) is the relying party throughout.
//!
//! Maintenance runs in this process against the appliance's real token and
//! store, with a `ManualClock`: that is the injectable clock, and the reason
//! this file holds a single test (the module environment is per process).

mod common;
use common::*;
use orgkey::clock::{Clock, ManualClock};
use orgkey::config::Config;
use orgkey::store::Store;
use secrecy::SecretString;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const DAY: u64 = 86_400;

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// gpg's verdict on `email` at `at`, trusting only `org` (fresh home each
/// time, so no trustdb cache carries over between times).
fn validity_at(org: &[u8], org_fpr: &str, user: &[u8], email: &str, at: u64) -> String {
    let gpg = Gpg::new();
    let t = format!("{at}!");
    let faked = ["--faked-system-time", t.as_str()];
    let mut import = faked.to_vec();
    import.push("--import");
    gpg.ok(&import, Some(org));
    gpg.ok(&import, Some(user));
    gpg.trust_ultimately(org_fpr);
    gpg.uid_validity(email, &faked)
}

async fn run(cfg: &Config, at: u64) -> orgkey::maintenance::Report {
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(UNIX_EPOCH + Duration::from_secs(at)));
    orgkey::service::run_maintenance(
        cfg,
        SecretString::from(PASSPHRASE),
        "test",
        clock,
        &|_, _| {},
    )
    .await
    .expect("maintenance run")
}

async fn touch(cfg: &Config, email: &str, at: u64) {
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(UNIX_EPOCH + Duration::from_secs(at)));
    let store = Store::open_configured(&cfg.store, &cfg.node_id, false, clock)
        .await
        .unwrap();
    assert!(store.touch_user(email).await.unwrap());
    store.close().await;
}

async fn stored(cfg: &Config) -> (Vec<u8>, String) {
    let store = Store::open_configured(
        &cfg.store,
        &cfg.node_id,
        false,
        Arc::new(orgkey::clock::SystemClock),
    )
    .await
    .unwrap();
    let rec = store.active_org_key().await.unwrap().unwrap();
    store.close().await;
    (rec.cert.into_bytes(), rec.fingerprint)
}

async fn user_cert(cfg: &Config, fpr: &str) -> Vec<u8> {
    let store = Store::open_configured(
        &cfg.store,
        &cfg.node_id,
        false,
        Arc::new(orgkey::clock::SystemClock),
    )
    .await
    .unwrap();
    let rec = store.user_key(fpr).await.unwrap().unwrap();
    store.close().await;
    rec.cert.into_bytes()
}

#[tokio::test(flavor = "multi_thread")]
async fn certifications_renew_lapse_and_survive_org_key_renewal_and_replacement() {
    let a = Appliance::new();
    // Users count as inactive after 10 days in this appliance.
    a.set_config("maintenance.inactive_after", "10d");
    a.ok(
        &[
            "org-key",
            "generate",
            "--uid",
            "Example Org Key <orgkey@example.com>",
            "--expires",
            "20d",
        ],
        true,
    );
    let admin = a.client("admin", "admin");
    let gw = a.client("gateway", "certify");

    // Day 0: Alice and Bob are certified through the API (real clock).
    let users = Gpg::new();
    let alice = users.gen_key("Alice <alice@example.com>", "ed25519", "2y", &[]);
    let bob = users.gen_key("Bob <bob@example.com>", "ed25519", "2y", &[]);
    let s = a.serve(&[]);
    assert_eq!(ignite(&s, &admin, PASSPHRASE).await.status(), 200);
    for fpr in [&alice, &bob] {
        let r = post(&s, "/v1/certify", &gw, users.export(fpr)).await;
        assert_eq!(r.status(), 200);
    }
    s.stop();
    let t0 = secs(SystemTime::now());
    let (org1, org_fpr) = stored(&a.config_loaded()).await;

    let cfg = a.config_loaded();
    // SAFETY: single test in this binary; no other thread reads the environment yet.
    unsafe { orgkey::token::set_module_environment(cfg.token.environment.iter()) };

    // Day 13.6: Alice was active on day 13, Bob never since day 0.
    touch(&cfg, "alice@example.com", t0 + 13 * DAY).await;
    let r1 = run(&cfg, t0 + 13 * DAY + 14 * 3600).await;
    assert_eq!((r1.due, r1.renewed, r1.inactive_users), (1, 1, 1), "{r1:?}");
    assert_eq!(r1.org_key_renewed_until, None);
    let alice1 = user_cert(&cfg, &alice).await;
    let bob0 = user_cert(&cfg, &bob).await;

    // Day 15: Alice is still vouched for; Bob's certification has lapsed.
    let day15 = t0 + 15 * DAY;
    assert_eq!(
        validity_at(&org1, &org_fpr, &alice1, "alice@example.com", day15),
        "f"
    );
    let bob15 = validity_at(&org1, &org_fpr, &bob0, "bob@example.com", day15);
    assert!(
        bob15 != "f" && bob15 != "u",
        "Bob must have lapsed, got {bob15}"
    );
    // ... while on day 10 both were valid.
    assert_eq!(
        validity_at(&org1, &org_fpr, &bob0, "bob@example.com", t0 + 10 * DAY),
        "f"
    );

    // Day 19.2: the org key (expiring on day 20) renews itself; Alice's
    // certification, capped at the old expiry, is renewed too.
    touch(&cfg, "alice@example.com", t0 + 19 * DAY).await;
    let at2 = t0 + 19 * DAY + 5 * 3600;
    let r2 = run(&cfg, at2).await;
    assert_eq!(r2.org_key_renewed_until, Some(at2 + 20 * DAY), "{r2:?}");
    assert_eq!(r2.renewed, 1, "{r2:?}");
    let (org2, fpr2) = stored(&cfg).await;
    assert_eq!(fpr2, org_fpr, "renewal keeps the key");
    let alice2 = user_cert(&cfg, &alice).await;

    // A certification made before the renewal is valid under the renewed key.
    assert_eq!(
        validity_at(&org2, &org_fpr, &alice1, "alice@example.com", at2 + 3600),
        "f"
    );
    // After the old expiry only the renewed org key works.
    let day25 = t0 + 25 * DAY;
    assert_eq!(
        validity_at(&org2, &org_fpr, &alice2, "alice@example.com", day25),
        "f"
    );
    let old = validity_at(&org1, &org_fpr, &alice2, "alice@example.com", day25);
    assert!(
        old != "f",
        "the unrenewed org key expired on day 20, got {old}"
    );
    // Renewals do not pile up: one org certification on Alice's user ID.
    let gpg = Gpg::new();
    gpg.import(&alice2);
    let packets = gpg.ok(&["--list-packets"], Some(&alice2));
    let org_keyid = &org_fpr[24..];
    let org_sigs = packets
        .lines()
        .filter(|l| l.starts_with(":signature packet:") && l.contains(org_keyid))
        .count();
    assert_eq!(org_sigs, 1, "{packets}");

    // Back to the real clock: the gateway submits Alice's key again (what
    // the time travel above certified lies in the future now).
    let s = a.serve(&[]);
    assert_eq!(ignite(&s, &admin, PASSPHRASE).await.status(), 200);
    let r = post(&s, "/v1/certify", &gw, users.export(&alice)).await;
    assert_eq!(r.status(), 200);
    s.stop();

    // Replacing the org key needs --yes when users exist.
    let out = a.run(
        &[
            "org-key",
            "generate",
            "--uid",
            "New Org Key <orgkey@example.com>",
            "--replace",
        ],
        true,
    );
    assert_refused(&out, "--yes");
    assert_eq!(
        stored(&cfg).await.1,
        org_fpr,
        "refused replacement changes nothing"
    );
    a.ok(
        &[
            "org-key",
            "generate",
            "--uid",
            "New Org Key <orgkey@example.com>",
            "--replace",
            "--yes",
        ],
        true,
    );
    let (org3, new_fpr) = stored(&cfg).await;
    assert_ne!(new_fpr, org_fpr);

    // Until maintenance runs, Alice is unverified under the new key.
    let s = a.serve(&[]);
    let show = |s: &Server| {
        let url = s.url("/v1/users/alice@example.com");
        let gw = gw.clone();
        async move {
            http()
                .get(url)
                .bearer_auth(gw)
                .send()
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()
        }
    };
    let u = show(&s).await;
    assert_eq!(u["certification"]["status"], "unverified", "{u}");
    assert_eq!(u["certification"]["previous_org_key"], org_fpr.as_str());

    // `orgkey maintenance run` (real clock) re-certifies her with the new key.
    let out = a.ok(&["maintenance", "run", "--quiet"], true);
    assert!(
        out.contains("2 keys due, 2 renewed"),
        "Alice and Bob (active again on the real clock): {out}"
    );
    let u = show(&s).await;
    assert_eq!(u["certification"]["status"], "certified", "{u}");
    assert_eq!(u["certification"]["org_key"], new_fpr.as_str());
    let alice3 = user_cert(&cfg, &alice).await;
    let now = secs(SystemTime::now());
    assert_eq!(
        validity_at(&org3, &new_fpr, &alice3, "alice@example.com", now + 60),
        "f"
    );
    drop(s);

    // Every run is in the audit log, and the chain is intact.
    let audit = a.ok(&["audit", "list"], false);
    assert!(audit.matches("maintenance").count() >= 3, "{audit}");
    assert!(audit.contains("org-key-renew"), "{audit}");
    assert!(a.ok(&["audit", "verify"], false).contains("intact"));
}
