//! A network HSM that dies under load: the suite's software token (SoftHSM2,
//! or Kryoptic under ORGKEY_TEST_PROFILE) served by `p11-kit server`
//! in its own process group, the appliance on the p11-kit client module.
//! kill -9 during a 32-client load: requests fail with 503 only (no 500, no
//! hang), /v1/ready turns 503, and the appliance recovers on its own once the
//! server is back (relogin with the held passphrase). A hung HSM (SIGSTOP):
//! signing, issuance, revocation and certification answer 503 at
//! `[token] deadline`, the token counts as down until it answers again, and a
//! late issuance leaves its serial abandoned.

mod common;
use common::*;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

struct HsmServer {
    child: Child,
}

impl HsmServer {
    fn start(a: &Appliance, socket: &std::path::Path) -> HsmServer {
        let _ = std::fs::remove_file(socket);
        let child = Command::new("p11-kit")
            .args(["server", "-f", "-n"])
            .arg(socket)
            .arg("--provider")
            .arg(a.module())
            .arg("pkcs11:")
            .env(a.module_env().0, a.module_env().1)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("p11-kit server");
        for _ in 0..100 {
            if socket.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(socket.exists(), "p11-kit server did not create its socket");
        HsmServer { child }
    }

    /// Sends `signal` to the server's process group.
    fn signal(&self, signal: &str) {
        let pgid = self.child.id();
        Command::new("kill")
            .args([signal, "--", &format!("-{pgid}")])
            .status()
            .unwrap();
    }

    /// kill -9 the server and its per-connection children.
    fn kill(mut self) {
        let pgid = self.child.id();
        let _ = Command::new("kill")
            .args(["-9", "--", &format!("-{pgid}")])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for HsmServer {
    fn drop(&mut self) {
        let pgid = self.child.id();
        let _ = Command::new("kill")
            .args(["-9", "--", &format!("-{pgid}")])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.wait();
    }
}

/// An appliance with an org key that reaches its token only through
/// p11-kit: the client module instead of the token's own, and the server's
/// socket instead of the token's module environment.
fn behind_p11kit() -> (Appliance, std::path::PathBuf) {
    let a = Appliance::with_org_key("p256");
    let socket = a.dir.path().join("hsm.sock");
    let (var, _) = a.module_env();
    a.edit_config(|t| {
        let token = config_table(t, "token");
        token.insert(
            "module".into(),
            p11kit_client_module().display().to_string().into(),
        );
        let env = config_table(token, "environment");
        assert!(env.remove(&var).is_some(), "{var} in [token.environment]");
        env.insert(
            "P11_KIT_SERVER_ADDRESS".into(),
            format!("unix:path={}", socket.display()).into(),
        );
    });
    (a, socket)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_appliance_heals_itself_when_the_hsm_process_dies_and_comes_back() {
    let (a, socket) = behind_p11kit();
    let admin = a.client("admin", "admin");
    let gw = a.client("gateway", "sign");
    let hsm = HsmServer::start(&a, &socket);
    let s = a.serve(&[]);
    assert_eq!(ignite(&s, &admin, PASSPHRASE).await.status(), 200);
    assert_eq!(
        post(&s, "/v1/sign", &gw, b"before".to_vec()).await.status(),
        200
    );

    // 32 clients sign in a loop while the HSM dies and comes back.
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..32 {
        let (url, gw, stop) = (s.url("/v1/sign"), gw.clone(), Arc::clone(&stop));
        load.push(tokio::spawn(async move {
            let http = http();
            let mut statuses = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let r = tokio::time::timeout(
                    Duration::from_secs(15),
                    http.post(&url).bearer_auth(&gw).body("load").send(),
                )
                .await
                .expect("no request may hang");
                statuses.push(r.map(|r| r.status().as_u16()).unwrap_or(0));
            }
            statuses
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    hsm.kill();

    // Readiness reports the loss within a second of the first failure.
    let lost = Instant::now();
    let mut ready = 200;
    while lost.elapsed() < Duration::from_secs(5) {
        ready = get(&s, "/v1/ready").await.status().as_u16();
        if ready == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ready, 503, "/v1/ready while the HSM is down");
    let r = post(&s, "/v1/sign", &gw, b"down".to_vec()).await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(error_code(r).await, "token_unavailable");
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The HSM comes back: no operator, signing works again within 5 s.
    let _hsm = HsmServer::start(&a, &socket);
    let back = Instant::now();
    let mut healed = None;
    while back.elapsed() < Duration::from_secs(10) {
        if post(&s, "/v1/sign", &gw, b"after".to_vec()).await.status() == 200 {
            healed = Some(back.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let healed = healed.unwrap_or_else(|| {
        let log = std::fs::read_to_string(&s.log).unwrap_or_default();
        let tail: Vec<&str> = log
            .lines()
            .filter(|l| {
                !l.contains("Failed to close session") && !l.contains("token signing failed")
            })
            .collect();
        panic!(
            "the appliance did not recover within 10 s:\n{}",
            tail[tail.len().saturating_sub(25)..].join("\n")
        )
    });
    assert!(
        healed <= Duration::from_secs(5),
        "recovered after {healed:?}"
    );
    assert_eq!(get(&s, "/v1/ready").await.status(), 200);
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in load {
        all.extend(t.await.unwrap());
    }
    let ok = all.iter().filter(|s| **s == 200).count();
    let unavailable = all.iter().filter(|s| **s == 503).count();
    assert!(ok > 0 && unavailable > 0, "{ok} ok, {unavailable} 503");
    assert_eq!(ok + unavailable, all.len(), "only 200 and 503: {:?}", {
        let mut other: Vec<_> = all.iter().filter(|s| **s != 200 && **s != 503).collect();
        other.dedup();
        other
    });
    // Every signature that was returned is in the audit chain, which is intact.
    s.stop();
    assert!(a.ok(&["audit", "verify"], false).contains("intact"));
    let audit = a.ok(&["audit", "list", "--last", "100000"], false);
    assert!(audit.contains("token-recovered"), "recovery is audited");
    let signed = audit
        .lines()
        .filter(|l| l.contains("\tgateway\tsign\tok"))
        .count();
    // Plus "before" and the first successful "after".
    assert_eq!(signed, ok + 2, "one audit row per returned signature");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hung_hsm_fails_requests_at_the_deadline_and_other_routes_keep_answering() {
    let (a, socket) = behind_p11kit();
    a.set_config("token.deadline", "1s");
    let admin = a.client("admin", "admin");
    let gw = a.client("gateway", "sign");
    let hsm = HsmServer::start(&a, &socket);
    let s = a.serve(&[]);
    assert_eq!(ignite(&s, &admin, PASSPHRASE).await.status(), 200);
    assert_eq!(
        post(&s, "/v1/sign", &gw, b"before".to_vec()).await.status(),
        200
    );

    hsm.signal("-STOP");
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..24 {
        let (url, gw) = (s.url("/v1/sign"), gw.clone());
        tasks.push(tokio::spawn(async move {
            let r = http()
                .post(url)
                .bearer_auth(gw)
                .body("hung")
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), started.elapsed(), error_code(r).await)
        }));
    }
    // Health answers while the token hangs.
    let t = Instant::now();
    assert_eq!(get(&s, "/v1/health").await.status(), 200);
    assert!(t.elapsed() < Duration::from_secs(1));
    for task in tasks {
        let (status, took, code) = task.await.unwrap();
        assert_eq!((status, code.as_str()), (503, "token_unavailable"));
        assert!(
            took < Duration::from_secs(4),
            "a request took {took:?} with a 1 s deadline"
        );
    }
    hsm.signal("-CONT");
    let back = Instant::now();
    loop {
        if post(&s, "/v1/sign", &gw, b"after".to_vec()).await.status() == 200 {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(5),
            "throughput did not return after SIGCONT"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(hsm);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_relogin_a_lost_token_seals_the_appliance() {
    let (a, socket) = behind_p11kit();
    a.set_config("token.relogin", false);
    let admin = a.client("admin", "admin");
    let gw = a.client("gateway", "sign");
    let hsm = HsmServer::start(&a, &socket);
    let s = a.serve(&[]);
    assert_eq!(ignite(&s, &admin, PASSPHRASE).await.status(), 200);
    hsm.kill();
    let r = post(&s, "/v1/sign", &gw, b"x".to_vec()).await;
    assert_eq!(r.status(), 503);
    // This request finds the token gone, unless the start-up state backup
    // found it first and the appliance has sealed already.
    let code = error_code(r).await;
    assert!(code == "token_unavailable" || code == "sealed", "{code}");
    let _hsm = HsmServer::start(&a, &socket);
    let t = Instant::now();
    loop {
        let st = get_json(&s, "/v1/status").await;
        if st["state"] == "sealed" {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "{st}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = post(&s, "/v1/sign", &gw, b"x".to_vec()).await;
    assert_eq!(error_code(r).await, "sealed");
    // The link is back, but the module still fails until it is initialized
    // again: ignition does that, and still proves the passphrase.
    let r = ignite(&s, &admin, "totally-wrong-passphrase").await;
    assert_eq!(error_code(r).await, "bad_passphrase");
    assert_eq!(ignite(&s, &admin, PASSPHRASE).await.status(), 200);
    assert_eq!(post(&s, "/v1/sign", &gw, b"y".to_vec()).await.status(), 200);
}

/// A P-256 CSR for `email` made by openssl in the appliance's directory.
fn user_csr(a: &Appliance, name: &str, email: &str) -> Vec<u8> {
    let dir = a.dir.path();
    openssl_ok(
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/emailAddress={email}"),
        ],
    );
    std::fs::read(dir.join(format!("{name}.csr"))).unwrap()
}

/// Runs SQL on the appliance's store (SQLite or PostgreSQL).
fn sql(a: &Appliance, q: &str) -> String {
    a.sql(q).trim().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hung_hsm_fails_issuance_revocation_and_certification_at_the_deadline_and_recovers() {
    let (a, socket) = behind_p11kit();
    a.set_config("token.deadline", "1s");
    let hsm = HsmServer::start(&a, &socket);
    a.ok(&["org-cert", "self-sign", "--subject", "CN=Hung CA"], true);
    let admin = a.client("admin", "admin");
    let issuer = a.client("issuer", "issue");
    let revoker = a.client("revoker", "revoke");
    let gw = a.client("gateway", "certify");
    let s = a.serve(&[]);
    assert_eq!(ignite(&s, &admin, PASSPHRASE).await.status(), 200);
    let r = post(
        &s,
        "/v1/x509/issue",
        &issuer,
        user_csr(&a, "alice", "alice@example.com"),
    )
    .await;
    assert_eq!(r.status(), 201);
    let alice = r.headers()["orgkey-serial"].to_str().unwrap().to_string();
    let bob_csr = user_csr(&a, "bob", "bob@example.com");
    let users = Gpg::new();
    let carol = users.gen_key("Carol <carol@example.com>", "ed25519", "1y", &[]);
    let carol_key = users.export(&carol);

    // The HSM hangs while an issuance and a revocation wait for it.
    hsm.signal("-STOP");
    let started = Instant::now();
    let issuing = {
        let (url, issuer, body) = (s.url("/v1/x509/issue"), issuer.clone(), bob_csr.clone());
        tokio::spawn(async move {
            let r = http()
                .post(url)
                .bearer_auth(issuer)
                .body(body)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), started.elapsed(), error_code(r).await)
        })
    };
    let revoking = {
        let (url, revoker, serial) = (s.url("/v1/x509/revoke"), revoker.clone(), alice.clone());
        tokio::spawn(async move {
            let r = http()
                .post(url)
                .bearer_auth(revoker)
                .json(&serde_json::json!({ "serial": serial }))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), started.elapsed(), error_code(r).await)
        })
    };
    let certifying = {
        let (url, gw, body) = (s.url("/v1/certify"), gw.clone(), carol_key.clone());
        tokio::spawn(async move {
            let r = http()
                .post(url)
                .bearer_auth(gw)
                .body(body)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), started.elapsed(), error_code(r).await)
        })
    };
    for (what, task) in [
        ("issue", issuing),
        ("revoke", revoking),
        ("certify", certifying),
    ] {
        let (status, took, code) = tokio::time::timeout(Duration::from_secs(15), task)
            .await
            .unwrap_or_else(|_| panic!("{what} never answered"))
            .unwrap();
        assert_eq!(
            (status, code.as_str()),
            (503, "token_unavailable"),
            "{what}"
        );
        assert!(
            took < Duration::from_secs(4),
            "{what} took {took:?} with a 1 s deadline"
        );
    }
    // The missed deadline counts as a token in trouble.
    let r = get(&s, "/v1/ready").await;
    assert_eq!(r.status(), 503);
    assert_eq!(error_code(r).await, "token_unavailable");
    assert!(get_json(&s, "/v1/status").await["token_down"] == true);
    // The late issuance's serial is burnt, never issued.
    assert_eq!(
        sql(
            &a,
            "SELECT state || ' ' || email FROM user_certs WHERE email = 'bob@example.com'"
        ),
        "abandoned bob@example.com"
    );

    // The HSM comes back: the appliance recovers on its own and issues again.
    hsm.signal("-CONT");
    let back = Instant::now();
    let bob = loop {
        let r = post(&s, "/v1/x509/issue", &issuer, bob_csr.clone()).await;
        if r.status() == 201 {
            let serial = r.headers()["orgkey-serial"].to_str().unwrap().to_string();
            std::fs::write(a.dir.path().join("bob.pem"), r.text().await.unwrap()).unwrap();
            break serial;
        }
        assert_eq!(r.status(), 503);
        assert_eq!(error_code(r).await, "token_unavailable");
        assert!(
            back.elapsed() < Duration::from_secs(10),
            "issuance did not return after SIGCONT"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(get(&s, "/v1/ready").await.status(), 200);
    assert_eq!(post(&s, "/v1/certify", &gw, carol_key).await.status(), 200);
    // The revocation was recorded before the token was asked for the CRL:
    // the retry makes the CRL.
    let r = http()
        .post(s.url("/v1/x509/revoke"))
        .bearer_auth(&revoker)
        .json(&serde_json::json!({ "serial": alice }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["already_revoked"],
        true
    );
    let dir = a.dir.path();
    std::fs::write(
        dir.join("org.pem"),
        get(&s, "/v1/org-cert").await.bytes().await.unwrap(),
    )
    .unwrap();
    std::fs::write(
        dir.join("crl.pem"),
        get(&s, "/v1/x509/crl?format=pem")
            .await
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    let text = openssl_ok(
        dir,
        &[
            "crl", "-in", "crl.pem", "-CAfile", "org.pem", "-noout", "-text",
        ],
    );
    assert!(text.contains("verify OK"), "{text}");
    assert!(
        text.to_uppercase().contains(&alice.to_uppercase()),
        "{text}"
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
            "-purpose",
            "smimesign",
            "bob.pem",
        ],
    );
    s.stop();
    drop(hsm);

    assert!(a.ok(&["audit", "verify"], false).contains("intact"));
    let states = sql(
        &a,
        "SELECT state, COUNT(*) FROM user_certs GROUP BY state ORDER BY state",
    );
    assert_eq!(states, "abandoned|1\nissued|1\nrevoked|1");
    assert_ne!(
        sql(
            &a,
            "SELECT serial FROM user_certs WHERE state = 'abandoned'"
        ),
        bob,
        "a new serial"
    );
    assert_eq!(
        sql(
            &a,
            "SELECT COUNT(*) FROM audit_log WHERE operation = 'x509-issue'"
        ),
        "2"
    );
    // Every CRL is on record; so is the one the hung token was asked for.
    assert_eq!(
        sql(
            &a,
            "SELECT COUNT(*) FROM audit_log WHERE operation = 'x509-crl' AND outcome = 'ok'"
        ),
        sql(&a, "SELECT COUNT(*) FROM crls")
    );
    let failed = sql(
        &a,
        "SELECT actor || ' ' || detail FROM audit_log WHERE operation = 'x509-crl' AND outcome = 'failed'",
    );
    assert!(
        failed.starts_with("revoker CRL ") && failed.contains("did not answer within 1s"),
        "{failed}"
    );
}
