//! The PostgreSQL store (decision 0030): several store handles on one
//! database behave like nodes of a cluster (one linear audit chain, unique
//! serials, no lost update, migrations applied once when they start
//! together); a `[store] password_file` logs in where a password is
//! required and a URL carrying a password is refused; a node whose database
//! goes away answers 503 and serves again by itself when it returns.
//! These tests run in the PostgreSQL pass (scripts/test-postgres.sh) and
//! skip elsewhere.

mod common;
use common::*;
use orgkey::clock::{Clock, SystemClock};
use orgkey::store::{
    AuditEvent, AuditWriter, OrgCertRecord, PendingUserCert, PostgresTarget, SaveUserKey, Store,
    StoreError,
};
use std::sync::Arc;
use std::time::Duration;

/// The suite's PostgreSQL server, or None (and why on stderr).
fn server() -> Option<String> {
    let url = test_store_url();
    if url.is_none() {
        eprintln!("skipped: runs in the PostgreSQL pass (ORGKEY_TEST_STORE_URL)");
    }
    url
}

async fn open(url: &str) -> Store {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let target = PostgresTarget {
        url,
        password: None,
    };
    Store::open_postgres(&target, clock, Duration::from_secs(10))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_starting_together_migrate_once_and_share_one_linear_audit_chain() {
    let Some(admin) = server() else { return };
    let db = TestDatabase::create(&admin);
    // Four "nodes" open the empty database at once: every migration is
    // applied once, and all of them come up.
    let mut opening = Vec::new();
    for _ in 0..4 {
        let url = db.url.clone();
        opening.push(tokio::spawn(async move { open(&url).await }));
    }
    let mut nodes = Vec::new();
    for (i, o) in opening.into_iter().enumerate() {
        nodes.push(o.await.unwrap().with_node(&format!("node-{i}")));
    }
    let applied = psql(
        &db.url,
        "SELECT COUNT(*), COUNT(DISTINCT version) FROM _sqlx_migrations",
    );
    let applied = String::from_utf8_lossy(&applied.stdout).trim().to_string();
    let (all, distinct) = applied.split_once('|').unwrap();
    assert_eq!(all, distinct, "a migration was applied twice");

    // Each node's group-commit writer appends concurrently.
    let mut appends = Vec::new();
    for node in &nodes {
        let writer = AuditWriter::spawn(node.clone());
        for i in 0..40 {
            let w = writer.clone();
            appends.push(tokio::spawn(async move {
                w.append(AuditEvent::new(format!("c{i}"), "sign", "ok"))
                    .await
            }));
        }
        // And direct appends of several rows at once.
        for _ in 0..5 {
            let n = node.clone();
            appends.push(tokio::spawn(async move {
                n.append_audit(&[
                    AuditEvent::new("batch", "x", "ok"),
                    AuditEvent::new("batch", "y", "ok"),
                ])
                .await
                .map(|s| s[0])
            }));
        }
    }
    for a in appends {
        a.await.unwrap().unwrap();
    }
    let report = nodes[0].verify_audit().await.unwrap();
    assert_eq!(report.first_broken, None);
    assert_eq!(report.rows, 4 * (40 + 5 * 2));
    assert_eq!(nodes[3].audit_head().await.unwrap(), 4 * (40 + 5 * 2));
    for n in &nodes {
        n.close().await;
    }
}

fn org_cert() -> OrgCertRecord {
    OrgCertRecord {
        fingerprint: "C1".into(),
        org_key: "AA".into(),
        state: "active".into(),
        source: "self-signed".into(),
        key_id: "04".into(),
        cert: "-----BEGIN CERTIFICATE-----".into(),
        chain: String::new(),
        subject: "CN=Org".into(),
        not_after: 4_000_000_000,
        created_at: 0,
    }
}

fn pending(serial: &str) -> PendingUserCert {
    PendingUserCert {
        serial: serial.into(),
        org_cert: "C1".into(),
        emails: vec!["u@example.com".into()],
        key_id: "k".into(),
        spki: "00".into(),
        common_name: None,
        source: "csr",
        tbs: vec![1, 2, 3],
        not_before: 0,
        not_after: 1,
    }
}

fn key(version: Option<i64>, cert: &str) -> SaveUserKey {
    SaveUserKey {
        fingerprint: "FPR1".into(),
        keyid: "ID1".into(),
        cert: cert.into(),
        certified_by: Some("AA".into()),
        cert_expires: Some(10),
        expected_version: version,
        emails: vec![("u@example.com".into(), "<u@example.com>".into())],
        touch: true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_on_two_nodes_never_share_a_serial_or_lose_an_update() {
    let Some(admin) = server() else { return };
    let db = TestDatabase::create(&admin);
    let a = open(&db.url).await.with_node("a");
    let b = open(&db.url).await.with_node("b");
    a.insert_org_cert(&org_cert(), false, &AuditEvent::new("t", "org-cert", "ok"))
        .await
        .unwrap();

    // The same serial reserved on both nodes at once, many times over:
    // exactly one reservation of each wins.
    let mut tries = Vec::new();
    for i in 0..20 {
        for node in [&a, &b] {
            let n = node.clone();
            let serial = format!("{i:04x}");
            tries.push(tokio::spawn(async move {
                n.reserve_user_cert(&pending(&serial)).await
            }));
        }
    }
    let (mut won, mut lost) = (0, 0);
    for t in tries {
        match t.await.unwrap() {
            Ok(()) => won += 1,
            Err(StoreError::Conflict(_)) => lost += 1,
            Err(e) => panic!("{e:?}"),
        }
    }
    assert_eq!((won, lost), (20, 20));

    // The same user key certified on both nodes at once: one stored
    // version per round, the loser told to re-read (no lost update, no
    // pile-up of audit rows for writes that did not happen).
    let audit_before = a.audit_head().await.unwrap();
    let ev = AuditEvent::new("gw", "certify", "ok");
    let (ka, kb) = (key(None, "from a"), key(None, "from b"));
    let (r1, r2) = tokio::join!(a.save_user_key(&ka, &ev), b.save_user_key(&kb, &ev));
    assert_eq!(r1.is_ok() as u8 + r2.is_ok() as u8, 1, "{r1:?} {r2:?}");
    for round in 1..=5 {
        let ka = key(Some(round), &format!("a{round}"));
        let kb = key(Some(round), &format!("b{round}"));
        let (r1, r2) = tokio::join!(a.save_user_key(&ka, &ev), b.save_user_key(&kb, &ev));
        let errs: Vec<_> = [r1, r2].into_iter().filter_map(|r| r.err()).collect();
        assert_eq!(errs.len(), 1, "round {round}: {errs:?}");
        assert!(matches!(errs[0], StoreError::Conflict(_)), "{errs:?}");
    }
    let stored = b.user_key("FPR1").await.unwrap().unwrap();
    assert_eq!(stored.version, 6);
    assert_eq!(a.audit_head().await.unwrap(), audit_before + 6);
    assert_eq!(a.verify_audit().await.unwrap().first_broken, None);
    a.close().await;
    b.close().await;
}

/// The leader lease on PostgreSQL (decision 0038), with two store handles
/// standing for two nodes: taken, renewed by its holder, refused to the
/// other while live, taken over with a higher epoch once expired, on the
/// database's clock (node A's own clock is a century off and changes
/// nothing); a write fenced with the old epoch is refused and writes
/// nothing, while the new leader's and the API's unfenced writes go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_leader_lease_runs_on_the_database_clock_and_fences_the_old_leader() {
    let Some(admin) = server() else { return };
    let db = TestDatabase::create(&admin);
    let far_future: Arc<dyn Clock> = Arc::new(orgkey::clock::ManualClock::new(
        std::time::UNIX_EPOCH + Duration::from_secs(4_100_000_000),
    ));
    let target = PostgresTarget {
        url: &db.url,
        password: None,
    };
    let a = Store::open_postgres(&target, far_future, Duration::from_secs(10))
        .await
        .unwrap()
        .with_node("node-a");
    let b = open(&db.url).await.with_node("node-b");
    let ttl = Duration::from_millis(300);
    let fa = a.acquire_lease("node-a", "ia", ttl, false).await.unwrap();
    let fa = fa.expect("a free lease is taken");
    assert_eq!(
        b.acquire_lease("node-b", "ib", ttl, true).await.unwrap(),
        None
    );
    let renewed = a.acquire_lease("node-a", "ia", ttl, false).await.unwrap();
    assert_eq!(renewed.as_ref(), Some(&fa), "a renewal keeps the epoch");
    let job = a.fenced(fa.clone());
    job.append_audit(&[AuditEvent::new("maintenance", "maintenance", "ok")])
        .await
        .unwrap();
    let head = a.audit_head().await.unwrap();
    // Node A pauses past its lease; node B takes over.
    let start = std::time::Instant::now();
    let fb = loop {
        if let Some(f) = b.acquire_lease("node-b", "ib", ttl, false).await.unwrap() {
            break f;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "no takeover");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        start.elapsed() >= ttl / 2,
        "taken over before the lease could expire"
    );
    assert!(fb.epoch() > fa.epoch(), "{} > {}", fb.epoch(), fa.epoch());
    let view = a.cluster_view().await.unwrap();
    assert_eq!(
        (view.lease.holder.as_str(), view.lease.epoch),
        ("node-b", fb.epoch())
    );
    // A resumes: its renewal fails and its fenced writes are refused.
    assert_eq!(
        a.acquire_lease("node-a", "ia", ttl, false).await.unwrap(),
        None
    );
    let e = job
        .append_audit(&[AuditEvent::new("maintenance", "maintenance", "ok")])
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Fenced { .. }), "{e:?}");
    let e = job.abandon_stale_user_certs(i64::MAX).await.unwrap_err();
    assert!(e.is_fenced(), "{e:?}");
    let e = job.save_renewed_keys(&[]).await.unwrap_err();
    assert!(e.is_fenced(), "{e:?}");
    assert_eq!(a.audit_head().await.unwrap(), head, "nothing was written");
    b.fenced(fb)
        .append_audit(&[AuditEvent::new("maintenance", "maintenance", "ok")])
        .await
        .unwrap();
    a.append_audit(&[AuditEvent::new("client", "sign", "ok")])
        .await
        .unwrap();
    assert_eq!(a.audit_head().await.unwrap(), head + 2);
    assert!(a.verify_audit().await.unwrap().first_broken.is_none());
    // Heartbeats are stamped by the database clock too.
    a.heartbeat("node-a", "ia", "follower", None).await.unwrap();
    b.heartbeat("node-b", "ib", "leader", Some(2))
        .await
        .unwrap();
    let view = a.cluster_view().await.unwrap();
    assert_eq!(view.members.len(), 2);
    for m in &view.members {
        assert!(
            (view.now - m.last_heartbeat).abs() < 60_000,
            "{m:?} at {}",
            view.now
        );
    }
    assert_eq!(
        view.members[0].epoch, view.lease.epoch,
        "a follower reports the lease's epoch"
    );
}

#[test]
fn a_password_file_logs_in_and_a_url_with_a_password_is_refused() {
    let Some(admin) = server() else { return };
    let pg_dir = std::path::PathBuf::from(std::env::var("ORGKEY_TEST_PG_DIR").unwrap());
    let name = format!("orgkey_pw_{}", std::process::id());
    let out = psql(&admin, &format!("CREATE DATABASE {name} OWNER orgkey_pw"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port = std::fs::read_to_string(pg_dir.join("port")).unwrap();
    let url = format!("postgres://orgkey_pw@127.0.0.1:{}/{name}", port.trim());
    let password = std::fs::read_to_string(pg_dir.join("orgkey_pw.password")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pw_file = dir.path().join("db-password");
    write_secret(&pw_file, password.trim());
    let init = |extra: &[&str]| {
        std::process::Command::new(bin())
            .args(["init", "--domain", "example.com", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(extra)
            .env_remove("ORGKEY_CONFIG")
            .env_remove("PGPASSWORD")
            .output()
            .unwrap()
    };
    // A password in the URL, in either form, is refused before anything is
    // created, and the message says where it belongs.
    let with_pw = url.replace("orgkey_pw@", &format!("orgkey_pw:{}@", password.trim()));
    for bad in [with_pw.clone(), format!("{url}?password=x")] {
        let err = assert_refused(&init(&["--store-url", &bad]), "password_file");
        assert!(
            !err.contains(password.trim()),
            "the password was echoed: {err}"
        );
        assert!(!dir.path().join("data").exists());
    }
    // Without the password the server refuses the login: init fails and
    // leaves no config.
    assert_refused(&init(&["--store-url", &url]), "password");
    assert!(!dir.path().join("data/orgkey.toml").exists());
    let _ = std::fs::remove_dir_all(dir.path().join("data"));
    // With the password file it works, and the config names the file, not
    // the password.
    let out = init(&[
        "--store-url",
        &url,
        "--store-password-file",
        pw_file.to_str().unwrap(),
        "--node-id",
        "node-a",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = std::fs::read_to_string(dir.path().join("data/orgkey.toml")).unwrap();
    assert!(config.contains("password_file"), "{config}");
    assert!(!config.contains(password.trim()), "{config}");
    assert!(config.contains("node_id = \"node-a\""), "{config}");
    let audit = std::process::Command::new(bin())
        .args(["audit", "verify"])
        .env("ORGKEY_CONFIG", dir.path().join("data/orgkey.toml"))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&audit.stdout).contains("intact: 1 rows"),
        "{}{}",
        String::from_utf8_lossy(&audit.stdout),
        String::from_utf8_lossy(&audit.stderr)
    );
    let _ = psql(&admin, &format!("DROP DATABASE {name} WITH (FORCE)"));
}

/// A PostgreSQL cluster of this test's own (the suite's is shared by tests
/// running in parallel and must not stop), removed at the end.
struct PrivateCluster {
    dir: tempfile::TempDir,
    url: String,
}

impl PrivateCluster {
    fn script(&self, cmd: &str) {
        let out = std::process::Command::new("bash")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/postgres.sh"))
            .arg(cmd)
            .arg(self.dir.path().join("pg"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "postgres.sh {cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("bash")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/postgres.sh"))
            .arg("start")
            .arg(dir.path().join("pg"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "postgres.sh start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let url = String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap()
            .to_string();
        PrivateCluster { dir, url }
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let _ = std::process::Command::new("bash")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/postgres.sh"))
            .arg("remove")
            .arg(self.dir.path().join("pg"))
            .output();
    }
}

async fn sign(s: &Server, token: &str, body: &[u8]) -> reqwest::Response {
    post(s, "/v1/sign", token, body.to_vec()).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_answers_503_while_its_database_is_down_and_recovers_by_itself() {
    if server().is_none() {
        return;
    }
    let cluster = PrivateCluster::start();
    let db = TestDatabase::create(&cluster.url);
    // The suite's fixture, pointed at the private cluster.
    let a = Appliance::with_org_key_on(Some(&db.url), "p256");
    a.set_config("store.busy_timeout", "1s");
    let admin = a.client("admin", "admin");
    let gw = a.client("gateway", "sign");
    let certifier = a.client("certifier", "certify");
    let s = a.serve(&[]);
    assert_eq!(ignite(&s, &admin, PASSPHRASE).await.status(), 200);
    assert_eq!(sign(&s, &gw, b"before").await.status(), 200);
    assert_eq!(get(&s, "/v1/ready").await.status(), 200);
    let user = Gpg::new();
    let fpr = user.gen_key("Grace <grace@example.com>", "ed25519", "1y", &[]);
    let grace = user.export(&fpr);
    assert_eq!(
        post(&s, "/v1/certify", &certifier, grace.clone())
            .await
            .status(),
        200
    );

    cluster.script("stop");
    // No signature without its audit row: only 503s, and not ready.
    for i in 0..3 {
        let r = sign(&s, &gw, format!("down {i}").as_bytes()).await;
        assert_eq!(
            r.status(),
            503,
            "{}",
            std::fs::read_to_string(&s.log).unwrap_or_default()
        );
        let code = error_code(r).await;
        assert!(
            code == "audit_unavailable" || code == "store_unavailable",
            "{code}"
        );
    }
    // Certifying and removing a user fail the same way: a 503 to retry,
    // never a certification without its stored row, never a 500.
    let r = post(&s, "/v1/certify", &certifier, grace.clone()).await;
    assert_eq!(r.status(), 503);
    let code = error_code(r).await;
    assert!(
        code == "audit_unavailable" || code == "store_unavailable",
        "{code}"
    );
    let r = http()
        .delete(s.url("/v1/users/grace@example.com"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let code = error_code(r).await;
    assert!(
        code == "audit_unavailable" || code == "store_unavailable",
        "{code}"
    );
    let r = get(&s, "/v1/ready").await;
    assert_error(r, 503, "store_unavailable").await;

    cluster.script("resume");
    // No operator: the node reconnects by itself (bounded wait, no timing
    // asserted).
    let mut ok = false;
    for _ in 0..100 {
        if get(&s, "/v1/ready").await.status() == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "the node did not become ready again");
    assert_eq!(sign(&s, &gw, b"after").await.status(), 200);
    s.stop();
    assert!(a.ok(&["audit", "verify"], false).contains("intact"));
    let audit = a.ok(&["audit", "list", "--last", "50"], false);
    let signed = audit
        .lines()
        .filter(|l| l.contains("\tgateway\tsign\tok"))
        .count();
    assert_eq!(signed, 2, "{audit}");
    let certified = audit
        .lines()
        .filter(|l| l.contains("\tcertifier\tcertify\tok"))
        .count();
    assert_eq!(certified, 1, "{audit}");
    assert!(!audit.contains("user-remove"), "{audit}");
    drop(a);
    drop(db);
}

#[tokio::test(flavor = "multi_thread")]
async fn ignition_while_the_database_is_down_is_refused_and_spends_no_guess() {
    if server().is_none() {
        return;
    }
    let cluster = PrivateCluster::start();
    let db = TestDatabase::create(&cluster.url);
    let a = Appliance::with_org_key_on(Some(&db.url), "p256");
    a.set_config("store.busy_timeout", "1s");
    let admin = a.client("admin", "admin");
    let s = a.serve(&[]);
    cluster.script("stop");
    // The shared back-off cannot be read: the node neither tries the
    // passphrase (a guess the cluster would not count) nor ignites.
    for pass in ["a wrong passphrase", PASSPHRASE] {
        let r = ignite(&s, &admin, pass).await;
        assert_eq!(
            r.status(),
            503,
            "{}",
            std::fs::read_to_string(&s.log).unwrap_or_default()
        );
        assert_eq!(error_code(r).await, "store_unavailable");
    }
    cluster.script("resume");
    let mut status = 0;
    for _ in 0..100 {
        status = ignite(&s, &admin, PASSPHRASE).await.status().as_u16();
        if status != 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Still sealed (not already_ignited), and the right passphrase works at
    // once: the refused attempts counted nothing against the back-off.
    assert_eq!(status, 200);
    s.stop();
    let audit = a.ok(&["audit", "list", "--last", "20"], false);
    let ignitions: Vec<&str> = audit
        .lines()
        .filter(|l| l.contains("\tignition\t"))
        .collect();
    assert_eq!(ignitions.len(), 1, "{audit}");
    assert!(ignitions[0].contains("\tignition\tok"), "{audit}");
    drop(a);
    drop(db);
}

const BACKUP_PASS: &str = "a long backup passphrase for the test";

/// Runs `orgkey backup export-keys` (a) or `restore-keys` (b) with secret
/// files.
fn key_backup(a: &Appliance, cmd: &str, file: &str) -> std::process::Output {
    let bp = a.path("backup-pass");
    write_secret(&bp, BACKUP_PASS);
    let so = a.path("so-pin");
    write_secret(&so, SO_PIN);
    let mut args = vec![
        "backup",
        cmd,
        if cmd == "export-keys" {
            "--out"
        } else {
            "--in"
        },
        file,
        "--backup-passphrase-file",
        bp.to_str().unwrap(),
    ];
    if cmd == "export-keys" {
        args.extend(["--so-pin-file", so.to_str().unwrap()]);
    }
    a.run(&args, true)
}

/// Node B joins node A's store with a token of its own: init makes no second
/// org key, B stays sealed until the org key is restored into its token from
/// A's key backup (no --replace: it is the store's own key), then both
/// nodes sign for the same clients, a client removed through A is refused
/// by B at once, and the one audit chain names both nodes.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_node_joins_the_store_and_signs_with_the_org_key_from_a_key_backup() {
    if server().is_none() {
        return;
    }
    if !profile().wrap.supported {
        eprintln!(
            "skipped under {}: the token cannot wrap org keys",
            test_profile()
        );
        return;
    }
    let a = Appliance::with_org_key("p256");
    a.set_config("node_id", "node-a");
    let backup = a.path("org.keys");
    let out = key_backup(&a, "export-keys", backup.to_str().unwrap());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let url = a.database.as_ref().unwrap().url.clone();
    let b = Appliance::new_on(Some(&url));
    b.set_config("node_id", "node-b");
    let org_before = a.ok(&["org-key", "show"], false);
    assert_eq!(b.ok(&["org-key", "show"], false), org_before, "one org key");

    // Clients live in the shared store: one registration serves both nodes.
    let admin = a.client("admin", "admin");
    let gw = a.client("gateway", "sign");
    let sb = b.serve(&[]);
    let r = ignite(&sb, &admin, PASSPHRASE).await;
    assert_error(r, 409, "org_key_mismatch").await;
    sb.stop();

    let out = key_backup(&b, "restore-keys", backup.to_str().unwrap());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let again = key_backup(&b, "restore-keys", backup.to_str().unwrap());
    assert_refused(&again, "already has org key");
    assert_eq!(a.ok(&["org-key", "show"], false), org_before);

    let sa = a.serve(&[]);
    let sb = b.serve(&[]);
    let gpg = Gpg::new();
    gpg.import(a.ok(&["org-key", "export"], false).as_bytes());
    for (s, data) in [(&sa, b"from node a".as_slice()), (&sb, b"from node b")] {
        assert_eq!(ignite(s, &admin, PASSPHRASE).await.status(), 200);
        let r = sign(s, &gw, data).await;
        assert_eq!(r.status(), 200);
        let (ok, err) = gpg.verify(&r.bytes().await.unwrap(), data);
        assert!(ok, "gpg: {err}");
    }
    // A client removed through node A is refused by node B at once: nodes
    // read clients from the shared store (a cache would need invalidating).
    a.ok(&["client", "remove", "gateway"], false);
    let r = sign(&sb, &gw, b"after removal").await;
    assert_error(r, 401, "unauthorized").await;
    sa.stop();
    sb.stop();
    let audit = b.ok(&["audit", "list", "--last", "100"], false);
    for (node, op) in [
        ("node-a", "\tsign\tok"),
        ("node-b", "\tsign\tok"),
        ("node-b", "\tkey-backup-restore\tok"),
    ] {
        assert!(
            audit
                .lines()
                .any(|l| l.contains(op) && l.ends_with(&format!("\t{node}"))),
            "no {op} row of {node} in:\n{audit}"
        );
    }
    assert!(a.ok(&["audit", "verify"], false).contains("intact"));
    drop(b);
}

/// A state backup moves between backends: a PostgreSQL store's backup (a
/// logical snapshot) restores into a SQLite appliance, and that
/// appliance's backup (its database file) restores into another
/// PostgreSQL store, each time with the audit chain checked and continued,
/// and the last store signs (its chain head follows the loaded rows).
#[tokio::test(flavor = "multi_thread")]
async fn state_backups_move_between_postgres_and_sqlite_with_the_chain_intact() {
    if server().is_none() {
        return;
    }
    if !profile().wrap.supported {
        eprintln!(
            "skipped under {}: the token cannot wrap org keys",
            test_profile()
        );
        return;
    }
    let a = Appliance::with_org_key("p256");
    a.client("gw-a", "sign");
    let keys = a.path("org.keys");
    let out = key_backup(&a, "export-keys", keys.to_str().unwrap());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let state_a = a.path("a.state");
    a.ok(
        &["backup", "state", "--out", state_a.to_str().unwrap()],
        true,
    );

    // Into SQLite.
    let b = Appliance::new_on(None);
    let out = key_backup(&b, "restore-keys", keys.to_str().unwrap());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    b.ok(
        &["backup", "restore-state", "--in", state_a.to_str().unwrap()],
        true,
    );
    assert!(b.db().exists());
    assert!(b.ok(&["client", "list"], false).contains("gw-a"));
    assert!(b.ok(&["audit", "verify"], false).contains("intact"));
    let gw_b = b.client("gw-b", "sign");
    let state_b = b.path("b.state");
    b.ok(
        &["backup", "state", "--out", state_b.to_str().unwrap()],
        true,
    );

    // And back into another PostgreSQL store.
    let c = Appliance::new();
    let out = key_backup(&c, "restore-keys", keys.to_str().unwrap());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.ok(
        &["backup", "restore-state", "--in", state_b.to_str().unwrap()],
        true,
    );
    let clients = c.ok(&["client", "list"], false);
    assert!(
        clients.contains("gw-a") && clients.contains("gw-b"),
        "{clients}"
    );
    let admin = c.client("admin", "admin");
    let s = c.serve(&[]);
    assert_eq!(ignite(&s, &admin, PASSPHRASE).await.status(), 200);
    assert_eq!(sign(&s, &gw_b, b"restored").await.status(), 200);
    s.stop();
    let verified = c.ok(&["audit", "verify"], false);
    assert!(verified.contains("intact"), "{verified}");
    let audit = c.ok(&["audit", "list", "--last", "200"], false);
    let restores = audit
        .lines()
        .filter(|l| l.contains("\tstate-restore\tok\t"))
        .count();
    assert_eq!(restores, 2, "both restores are in the chain:\n{audit}");
}

/// Wrong passphrases spread over two nodes of one store count into one
/// back-off: alternating guesses between the nodes block ignition on both
/// after `backoff_after` failures in all, so an attacker with two nodes
/// gets no more guesses than with one. Each node audits its own guesses.
#[tokio::test(flavor = "multi_thread")]
async fn wrong_passphrases_spread_over_two_nodes_trigger_the_shared_back_off() {
    if server().is_none() {
        return;
    }
    let a = Appliance::with_org_key("p256");
    let url = a.database.as_ref().unwrap().url.clone();
    let b = Appliance::new_on(Some(&url));
    let admin = a.client("admin", "admin");
    let (sa, sb) = (a.serve(&[]), b.serve(&[]));
    // The default back-off starts at the fifth failure: A, B, A, B, A.
    for i in 1..=5 {
        let s = if i % 2 == 1 { &sa } else { &sb };
        let r = ignite(s, &admin, &format!("guess number {i}")).await;
        assert_eq!(
            r.headers().contains_key("retry-after"),
            i == 5,
            "guess {i}: only the fifth failure in all starts the back-off"
        );
        assert_error(r, 401, "bad_passphrase").await;
    }
    // Node B saw two wrong guesses itself, yet even the right passphrase
    // waits out the back-off there (and on A).
    for s in [&sb, &sa] {
        let r = ignite(s, &admin, PASSPHRASE).await;
        assert_eq!(r.status(), 429);
        assert!(r.headers().contains_key("retry-after"));
        assert_error(r, 429, "ignition_backoff").await;
    }
    sa.stop();
    sb.stop();
    let audit = a.ok(&["audit", "list", "--last", "100"], false);
    assert_eq!(audit.matches("\tignition\tdenied").count(), 5, "{audit}");
    assert_eq!(audit.matches("\tignition\trefused").count(), 2, "{audit}");
}
