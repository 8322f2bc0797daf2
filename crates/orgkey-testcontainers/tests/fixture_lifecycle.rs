//! The orgkey:dev fixture over its life: a restarted container serves the
//! same org key again (ignited by itself), and bad options stop it with a
//! clear message instead of a half-made appliance.

mod common;

use common::*;
use orgkey_testcontainers::secrecy::ExposeSecret;
use orgkey_testcontainers::testcontainers::core::WaitFor;
use orgkey_testcontainers::testcontainers::core::wait::ExitWaitStrategy;
use orgkey_testcontainers::testcontainers::runners::AsyncRunner;
use orgkey_testcontainers::testcontainers::{ContainerRequest, GenericImage, ImageExt};
use orgkey_testcontainers::{API_PORT, OrgkeyDev, OrgkeyDevContainer};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_fixture_serves_the_same_org_key() {
    if !containers_available() {
        return;
    }
    let orgkey = OrgkeyDevContainer::start(OrgkeyDev::default())
        .await
        .unwrap();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let gpg = Gpg::new();
    let fpr = gpg.fingerprint(orgkey.org_key());

    let c = orgkey.container();
    c.stop().await.unwrap();
    c.start().await.unwrap();
    // Ready conditions are not run again and the host port may change.
    let base = format!(
        "http://{}:{}",
        c.get_host().await.unwrap(),
        c.get_host_port_ipv4(API_PORT).await.unwrap()
    );
    let mut tries = 0;
    let signature = loop {
        let r = http
            .post(format!("{base}/v1/sign"))
            .bearer_auth(orgkey.gateway_token().expose_secret())
            .body("after a restart")
            .send()
            .await;
        if let Ok(r) = r
            && r.status() == 200
        {
            break r.text().await.unwrap();
        }
        tries += 1;
        assert!(tries < 600, "the restarted fixture never signed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let published = http
        .get(format!("{base}/v1/org-key"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        gpg.fingerprint(&published),
        fpr,
        "the same org key after a restart"
    );
    gpg.import(&published);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("d"), "after a restart").unwrap();
    std::fs::write(dir.path().join("d.asc"), signature).unwrap();
    run(gpg
        .cmd()
        .arg("--verify")
        .arg(dir.path().join("d.asc"))
        .arg(dir.path().join("d")));
    let stdout = String::from_utf8_lossy(&c.stdout_to_vec().await.unwrap()).into_owned();
    assert_eq!(
        stdout.matches("orgkey dev appliance ready").count(),
        2,
        "{stdout}"
    );
}

/// Starts orgkey:dev with one bad option; its exit code and log.
async fn bad_option(name: &str, value: &str) -> (Option<i64>, String) {
    bad_options(&[(name, value)]).await
}

/// Starts orgkey:dev with these options; its exit code and log.
async fn bad_options(options: &[(&str, &str)]) -> (Option<i64>, String) {
    let mut c: ContainerRequest<GenericImage> = GenericImage::new("orgkey", "dev")
        .with_wait_for(WaitFor::exit(ExitWaitStrategy::new()))
        .into();
    for (name, value) in options {
        c = c.with_env_var(*name, *value);
    }
    let c = c.start().await.unwrap();
    let log = String::from_utf8_lossy(&c.stderr_to_vec().await.unwrap()).into_owned();
    let out = String::from_utf8_lossy(&c.stdout_to_vec().await.unwrap()).into_owned();
    assert!(!out.contains("ready"), "{out}");
    (c.exit_code().await.unwrap(), log)
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_fixture_options_stop_the_container_with_a_clear_message() {
    if !containers_available() {
        return;
    }
    let (code, log) = bad_option("ORGKEY_DEV_ORG_CERT", "yes").await;
    assert_eq!(code, Some(2), "{log}");
    assert!(log.contains("ORGKEY_DEV_ORG_CERT must be 0 or 1"), "{log}");

    let (code, log) = bad_option("ORGKEY_DEV_DOMAINS", " , ").await;
    assert_eq!(code, Some(2), "{log}");
    assert!(log.contains("ORGKEY_DEV_DOMAINS names no domain"), "{log}");

    let (code, log) = bad_option("ORGKEY_DEV_ALGORITHM", "dsa").await;
    assert_ne!(code, Some(0), "{log}");
    assert!(
        log.contains("dsa") && log.contains("p256"),
        "the CLI names the value and the choices:\n{log}"
    );
}

/// Cluster options are checked before anything is made: a role without a
/// database, a database without a role, an org key SoftHSM2 cannot back up,
/// a bad node id; a joining node with no first node, and a node with no
/// database, give up after their timeouts.
#[tokio::test(flavor = "multi_thread")]
async fn bad_cluster_options_stop_the_container_with_a_clear_message() {
    if !containers_available() {
        return;
    }
    let url = ("ORGKEY_DEV_STORE_URL", "postgres://orgkey@db:5432/orgkey");
    for (options, code, message) in [
        (
            vec![("ORGKEY_DEV_CLUSTER", "second")],
            2,
            "ORGKEY_DEV_CLUSTER must be first",
        ),
        (
            vec![("ORGKEY_DEV_CLUSTER", "join")],
            2,
            "ORGKEY_DEV_CLUSTER=join needs ORGKEY_DEV_STORE_URL",
        ),
        (
            vec![url],
            2,
            "ORGKEY_DEV_STORE_URL is set without ORGKEY_DEV_CLUSTER",
        ),
        (
            vec![
                ("ORGKEY_DEV_CLUSTER", "first"),
                ("ORGKEY_DEV_STORE_URL", "mysql://db/orgkey"),
            ],
            2,
            "must be a postgres:// URL",
        ),
        (
            vec![
                ("ORGKEY_DEV_CLUSTER", "first"),
                url,
                ("ORGKEY_DEV_ALGORITHM", "ed25519"),
            ],
            2,
            "not ed25519",
        ),
        (
            vec![("ORGKEY_DEV_NODE_ID", "node a")],
            2,
            "ORGKEY_DEV_NODE_ID must be",
        ),
        (
            vec![
                ("ORGKEY_DEV_CLUSTER", "first"),
                url,
                ("ORGKEY_DEV_STORE_BUSY_TIMEOUT", "soon"),
            ],
            2,
            "ORGKEY_DEV_STORE_BUSY_TIMEOUT must be a duration",
        ),
        (
            vec![
                ("ORGKEY_DEV_CLUSTER", "join"),
                url,
                ("ORGKEY_DEV_JOIN_TIMEOUT", "1"),
            ],
            1,
            "no key backup from a first node appeared",
        ),
        (
            vec![
                ("ORGKEY_DEV_CLUSTER", "first"),
                url,
                ("ORGKEY_DEV_STORE_WAIT", "2"),
            ],
            1,
            "took no connection in 2s",
        ),
    ] {
        let (exit, log) = bad_options(&options).await;
        assert_eq!(exit, Some(code), "{options:?}: {log}");
        assert!(log.contains(message), "{options:?}: {log}");
        assert!(
            !log.contains("creating a SoftHSM2 token"),
            "{options:?}: nothing is made: {log}"
        );
    }
}
