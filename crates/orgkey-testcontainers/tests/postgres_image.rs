//! The orgkey-postgres:15 image (scripts/images.sh): a cluster made at first
//! start, ready when it logs so, reachable without a password from another
//! container on its network, and kept across a restart.

mod common;

use common::*;
use orgkey_testcontainers::testcontainers::core::wait::ExitWaitStrategy;
use orgkey_testcontainers::testcontainers::core::{ExecCommand, WaitFor};
use orgkey_testcontainers::testcontainers::runners::AsyncRunner;
use orgkey_testcontainers::testcontainers::{GenericImage, ImageExt};

const READY: &str = "database system is ready to accept connections";

/// Runs psql in a container of its own on `network` against `host`.
async fn psql_from_another_container(
    network: &str,
    host: &str,
    sql: &str,
) -> (Option<i64>, String) {
    let client = GenericImage::new("orgkey-postgres", "15")
        .with_wait_for(WaitFor::exit(ExitWaitStrategy::new()))
        .with_entrypoint("/usr/bin/psql")
        .with_cmd([
            "-h",
            host,
            "-U",
            "postgres",
            "-d",
            "orgkey",
            "-v",
            "ON_ERROR_STOP=1",
            "-Atc",
            sql,
        ])
        .with_network(network)
        .start()
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&client.stdout_to_vec().await.unwrap()).into_owned();
    let err = String::from_utf8_lossy(&client.stderr_to_vec().await.unwrap()).into_owned();
    (client.exit_code().await.unwrap(), format!("{out}{err}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_takes_connections_from_the_network_and_keeps_its_data() {
    if !containers_available() {
        return;
    }
    let suffix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let network = format!("orgkey-test-pg-{}-{suffix}", std::process::id());
    let name = format!("orgkey-test-pg-{suffix}");
    let pg = GenericImage::new("orgkey-postgres", "15")
        .with_wait_for(WaitFor::message_on_stderr(READY))
        .with_network(&network)
        .with_container_name(&name)
        .start()
        .await
        .unwrap();
    let log = String::from_utf8_lossy(&pg.stderr_to_vec().await.unwrap()).into_owned();
    assert_eq!(
        log.matches(READY).count(),
        1,
        "ready is logged once:\n{log}"
    );
    assert!(log.contains("first start: initdb"), "{log}");

    // Trust authentication on the network: no password, database orgkey.
    let (code, out) =
        psql_from_another_container(&network, &name, "CREATE TABLE t (x int); INSERT INTO t VALUES (42); SELECT current_database(), sum(x) FROM t").await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("orgkey|42"), "{out}");

    // A bad statement is an error, not silence (the check above can fail).
    let (code, out) =
        psql_from_another_container(&network, &name, "SELECT * FROM no_such_table").await;
    assert_ne!(code, Some(0), "{out}");

    // Restarted, it keeps its cluster (no second initdb) and its data.
    pg.stop().await.unwrap();
    pg.start().await.unwrap();
    let mut waited = 0;
    loop {
        let mut r = pg
            .exec(ExecCommand::new([
                "pg_isready",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
            ]))
            .await
            .unwrap();
        let _ = r.stdout_to_vec().await;
        if r.exit_code().await.unwrap() == Some(0) {
            break;
        }
        waited += 1;
        assert!(waited < 600, "postgres did not come back after a restart");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (code, out) = psql_from_another_container(&network, &name, "SELECT sum(x) FROM t").await;
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(out.trim(), "42");
    let log = String::from_utf8_lossy(&pg.stderr_to_vec().await.unwrap()).into_owned();
    assert_eq!(log.matches("first start: initdb").count(), 1, "{log}");
}
