//! The leader lease (decision 0038) with real `orgkey serve` processes: a
//! single appliance is always the leader; two nodes on one PostgreSQL
//! database elect exactly one, which alone runs maintenance; when it is
//! killed (SIGKILL), the other takes over within the lease's TTL with a
//! higher epoch and resumes maintenance without renewing anyone twice.
//! The two-node test runs in the PostgreSQL pass (scripts/test-postgres.sh).

mod common;
use common::*;
use std::time::{Duration, Instant};

/// The lease TTL the tests run with.
const TTL: Duration = Duration::from_secs(2);

/// (role, epoch) of a node, from its admin status.
async fn role(s: &Server, admin: &str) -> (String, i64) {
    let st = admin_status(s, admin).await;
    (
        st["node"]["role"].as_str().unwrap_or_default().to_string(),
        st["node"]["epoch"].as_i64().unwrap_or(-1),
    )
}

/// Waits (polling every 100 ms, at most `limit`) until `s` reports the
/// leader role; returns its epoch and the time it took.
async fn until_leader(s: &Server, admin: &str, limit: Duration) -> (i64, Duration) {
    let start = Instant::now();
    loop {
        let (r, epoch) = role(s, admin).await;
        if r == "leader" {
            return (epoch, start.elapsed());
        }
        assert!(
            start.elapsed() < limit,
            "not the leader within {limit:?}: {r}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The value of `orgkey_leader` on the node's `/metrics`.
async fn leader_gauge(s: &Server) -> String {
    let text = get(s, "/metrics").await.text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("orgkey_leader "))
        .unwrap_or_else(|| panic!("no orgkey_leader in:\n{text}"))
        .to_string()
}

fn cluster_status(a: &Appliance) -> serde_json::Value {
    serde_json::from_str(&a.ok(&["cluster", "status", "--json"], false)).unwrap()
}

/// A single appliance (SQLite, or a database of its own in the PostgreSQL
/// pass) takes the lease once ignited (not while sealed: it could not run
/// the jobs) and says so in the admin status and in `orgkey cluster
/// status`; the public status names no node. Stopped gracefully or sealed
/// it gives the lease up; started again it is the leader at once with a new
/// epoch, also after a crash.
#[tokio::test(flavor = "multi_thread")]
async fn a_single_appliance_is_the_leader() {
    let a = Appliance::with_org_key("p256");
    a.set_config("node_id", "solo");
    let admin = a.client("admin", "admin");
    let s = a.serve(&[]);
    // Sealed, it could not run the jobs: it does not take the lease.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(role(&s, &admin).await, ("follower".to_string(), 0));
    assert_eq!(leader_gauge(&s).await, "0");
    assert_eq!(ignite(&s, &admin, PASSPHRASE).await.status(), 200);
    let (epoch, took) = until_leader(&s, &admin, Duration::from_secs(10)).await;
    assert!(epoch >= 1, "{epoch}");
    assert!(
        took < Duration::from_secs(2),
        "leader right after ignition: {took:?}"
    );
    assert_eq!(leader_gauge(&s).await, "1");
    let st = admin_status(&s, &admin).await;
    assert_eq!(st["node"]["id"], "solo");
    assert_eq!(st["lease"]["holder"], "solo");
    assert_eq!(st["lease"]["live"], true);
    let members = st["members"].as_array().unwrap();
    assert_eq!(members.len(), 1, "{st}");
    assert_eq!(members[0]["id"], "solo");
    let public = get_json(&s, "/v1/status").await;
    assert!(
        public.get("node").is_none() && public.get("members").is_none(),
        "{public}"
    );
    // The CLI reads the same from the store, without the server.
    let cs = cluster_status(&a);
    assert_eq!(cs["node"]["role"], "leader", "{cs}");
    assert_eq!(cs["node"]["epoch"], epoch);
    let text = a.ok(&["cluster", "status"], false);
    assert!(text.contains("leader: solo (epoch"), "{text}");
    s.stop();
    let cs = cluster_status(&a);
    assert_eq!(cs["lease"]["live"], false, "given up at stop: {cs}");
    assert_eq!(cs["members"][0]["role"], "stopped", "{cs}");
    let s = a.serve(&[]);
    assert_eq!(ignite(&s, &admin, PASSPHRASE).await.status(), 200);
    let (again, took) = until_leader(&s, &admin, Duration::from_secs(10)).await;
    assert!(again > epoch, "a new process is a new epoch");
    assert!(
        took < TTL * 2,
        "a released lease is taken at once: {took:?}"
    );
    // A crash (SIGKILL) leaves a live lease; the restarted node takes its
    // own lease back at once instead of waiting it out.
    drop(s);
    let s = a.serve(&[]);
    assert_eq!(ignite(&s, &admin, PASSPHRASE).await.status(), 200);
    let (third, took) = until_leader(&s, &admin, Duration::from_secs(10)).await;
    assert!(third > again);
    assert!(took < Duration::from_secs(5), "{took:?}");
    // Sealed, the leader gives the lease up at once.
    let r = http()
        .delete(s.url("/v1/ignition"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(role(&s, &admin).await.0, "follower");
    assert_eq!(cluster_status(&a)["lease"]["live"], false);
    s.stop();
}

/// (fingerprint, version) of every stored user key: the version grows by
/// one with every write of the key, so a renewal made twice shows.
fn key_versions(a: &Appliance) -> Vec<(String, i64)> {
    a.sql("SELECT fingerprint, version FROM user_keys ORDER BY fingerprint")
        .lines()
        .map(|l| {
            let (f, v) = l.split_once('|').unwrap();
            (f.to_string(), v.parse().unwrap())
        })
        .collect()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Two nodes on one PostgreSQL database with a 2 s lease: exactly one is
/// the leader and it alone runs maintenance. Killed with SIGKILL while its
/// users are due, it is replaced within the TTL (plus a renewal period and
/// slack) by the other node, with a higher epoch, and the new leader renews
/// every due user once. The killed node, restarted, stays a follower and
/// runs nothing; when the leader stops, it takes over and finds nothing
/// left to do: no user was renewed twice. `orgkey cluster status --json`
/// lists both members.
#[tokio::test(flavor = "multi_thread")]
async fn a_dead_leader_is_replaced_within_the_ttl_and_maintenance_runs_once_per_user() {
    if test_store_url().is_none() {
        eprintln!("skipped: runs in the PostgreSQL pass (ORGKEY_TEST_STORE_URL)");
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
    let url = a.database.as_ref().unwrap().url.clone();
    let b = Appliance::new_on(Some(&url));
    for (app, id) in [(&a, "node-a"), (&b, "node-b")] {
        app.set_config("node_id", id);
        app.set_config("cluster.lease_ttl", "2s");
    }
    // Node B gets the org key from A's key backup (the join ceremony).
    let keys = a.path("org.keys");
    let bp = a.path("backup-pass");
    write_secret(&bp, "a long backup passphrase for the test");
    let so = a.path("so-pin");
    write_secret(&so, SO_PIN);
    let (keys_s, bp_s, so_s) = (
        keys.to_str().unwrap(),
        bp.to_str().unwrap(),
        so.to_str().unwrap(),
    );
    a.ok(
        &[
            "backup",
            "export-keys",
            "--out",
            keys_s,
            "--backup-passphrase-file",
            bp_s,
            "--so-pin-file",
            so_s,
        ],
        true,
    );
    b.ok(
        &[
            "backup",
            "restore-keys",
            "--in",
            keys_s,
            "--backup-passphrase-file",
            bp_s,
        ],
        true,
    );
    let admin = a.client("admin", "admin");
    let gw = a.client("gateway", "certify");
    let apps = [&a, &b];
    let mut servers = [Some(a.serve(&[])), Some(b.serve(&[]))];
    for s in servers.iter().flatten() {
        assert_eq!(ignite(s, &admin, PASSPHRASE).await.status(), 200);
    }

    // Exactly one leader.
    let start = Instant::now();
    let (leader, epoch1) = loop {
        let mut roles = Vec::new();
        for s in servers.iter().flatten() {
            roles.push(role(s, &admin).await);
        }
        let leaders: Vec<usize> = (0..2).filter(|&i| roles[i].0 == "leader").collect();
        let followers = roles.iter().filter(|r| r.0 == "follower").count();
        assert!(leaders.len() <= 1, "two leaders: {roles:?}");
        if leaders.len() == 1 && followers == 1 {
            break (leaders[0], roles[leaders[0]].1);
        }
        assert!(start.elapsed() < Duration::from_secs(15), "{roles:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let follower = 1 - leader;
    let ids = ["node-a", "node-b"];
    // Only the leader ran maintenance (right after ignition).
    let s_leader = servers[leader].as_ref().unwrap();
    let s_follower = servers[follower].as_ref().unwrap();
    let start = Instant::now();
    while admin_status(s_leader, &admin).await["maintenance"].is_null() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no run on the leader"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(admin_status(s_follower, &admin).await["maintenance"].is_null());
    let cs = cluster_status(&a);
    let members: Vec<(&str, &str)> = cs["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["id"].as_str().unwrap(), m["role"].as_str().unwrap()))
        .collect();
    let mut expected = vec![(ids[leader], "leader"), (ids[follower], "follower")];
    expected.sort();
    assert_eq!(members, expected, "{cs}");
    assert_eq!(cs["lease"]["holder"], ids[leader]);

    // Users, certified through the follower (the API is not fenced).
    let mut users = Vec::new();
    for name in ["alice", "bob", "carol"] {
        let gpg = Gpg::new();
        let fpr = gpg.gen_key(
            &format!("{name} <{name}@example.com>"),
            "ed25519",
            "1y",
            &[],
        );
        let r = post(s_follower, "/v1/certify", &gw, gpg.export(&fpr)).await;
        assert_eq!(r.status(), 200, "certify {name}");
        users.push(gpg);
    }
    // Every certification now falls due (within the maintenance horizon).
    a.sql(&format!(
        "UPDATE user_keys SET cert_expires = {}",
        unix_now() + 3600
    ));
    let before = key_versions(&a);
    assert_eq!(before.len(), 3);

    // The leader dies.
    let killed_at = Instant::now();
    drop(servers[leader].take());
    let s_new = servers[follower].as_ref().unwrap();
    let (epoch2, _) = until_leader(s_new, &admin, TTL + Duration::from_secs(8)).await;
    let took = killed_at.elapsed();
    assert!(
        took < TTL + TTL / 3 + Duration::from_secs(3),
        "takeover took {took:?}"
    );
    assert!(epoch2 > epoch1, "{epoch2} > {epoch1}");
    // It resumes maintenance at once: every due user renewed.
    let start = Instant::now();
    let report = loop {
        let st = admin_status(s_new, &admin).await;
        if st["maintenance"]["outcome"] == "ok" {
            break st["maintenance"]["report"].clone();
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{st}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        (report["due"].as_u64(), report["renewed"].as_u64()),
        (Some(3), Some(3)),
        "{report}"
    );
    let once: Vec<(String, i64)> = before.iter().map(|(f, v)| (f.clone(), v + 1)).collect();
    assert_eq!(key_versions(&a), once, "each user renewed exactly once");

    // The dead node comes back: a follower (the lease is held), running nothing.
    let back = apps[leader].serve(&[]);
    assert_eq!(ignite(&back, &admin, PASSPHRASE).await.status(), 200);
    tokio::time::sleep(TTL * 2).await;
    assert_eq!(role(&back, &admin).await.0, "follower");
    assert!(admin_status(&back, &admin).await["maintenance"].is_null());
    // The leader stops (gracefully: it gives the lease up): the returned
    // node takes over and finds nothing left to renew.
    servers[follower].take().unwrap().stop();
    let (epoch3, took) = until_leader(&back, &admin, TTL * 4).await;
    assert!(epoch3 > epoch2);
    assert!(
        took < TTL * 2,
        "a released lease is taken at once: {took:?}"
    );
    let start = Instant::now();
    let report = loop {
        let st = admin_status(&back, &admin).await;
        if st["maintenance"]["outcome"] == "ok" {
            break st["maintenance"]["report"].clone();
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{st}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        (report["due"].as_u64(), report["renewed"].as_u64()),
        (Some(0), Some(0)),
        "{report}"
    );
    assert_eq!(key_versions(&a), once, "no user renewed twice");
    let cs = cluster_status(&b);
    assert_eq!(cs["lease"]["holder"], ids[leader], "{cs}");
    assert_eq!(cs["members"].as_array().unwrap().len(), 2, "{cs}");
    back.stop();
    // Maintenance rows name their nodes; the chain verifies.
    let audit = a.ok(&["audit", "list", "--last", "200"], false);
    let runs: Vec<&str> = audit
        .lines()
        .filter(|l| l.contains("\tmaintenance\tok"))
        .collect();
    assert_eq!(runs.len(), 3, "one run per term as leader:\n{audit}");
    assert!(a.ok(&["audit", "verify"], false).contains("intact"));
    drop(users);
}
