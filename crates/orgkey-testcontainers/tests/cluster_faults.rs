//! Cluster faults across containers (issue 12, cluster faults items 1-4):
//! `orgkey-postgres:15` and three `orgkey:dev` nodes in cluster mode (one
//! store, one org key restored into each node's own SoftHSM2 token), under a
//! gateway signing load spread over all three, while the test kills a node,
//! cuts a node off the database, freezes the database, and restarts every
//! node in turn.
//!
//! The database is on an internal Docker network of its own; each node is on
//! it and on a second network that carries its published port, so cutting a
//! node off the database leaves it reachable from the test. Faults are made
//! with testcontainers and its re-exported bollard client (kill with
//! SIGKILL, network connect/disconnect, pause/unpause).
//!
//! The load also issues S/MIME certificates (one worker per node, always a
//! new certificate for the same CSR), so serial numbers are reserved from
//! all three nodes at once.
//!
//! After each scenario: a node's failures fall inside that node's fault
//! window (the others keep serving), every 2xx carried a signature or a
//! certificate and every other answer none, every returned signature has
//! exactly one `sign` audit row written by the node that answered (the
//! request bodies are unique, the rows carry their SHA-256), every returned
//! certificate's serial is issued in the store with one `x509-issue` row and
//! no serial came back twice, and `orgkey audit verify` finds the one chain
//! intact.
//!
//! The scenarios share one cluster and run in order in one test: each starts
//! from a healthy cluster, which the previous one's end checks.

mod common;

use common::*;
use orgkey_testcontainers::secrecy::ExposeSecret;
use orgkey_testcontainers::testcontainers::bollard::Docker;
use orgkey_testcontainers::testcontainers::bollard::models::{
    NetworkConnectRequest, NetworkCreateRequest, NetworkDisconnectRequest,
};
use orgkey_testcontainers::testcontainers::bollard::query_parameters::KillContainerOptionsBuilder;
use orgkey_testcontainers::testcontainers::core::{ExecCommand, WaitFor};
use orgkey_testcontainers::testcontainers::runners::AsyncRunner;
use orgkey_testcontainers::testcontainers::{ContainerAsync, GenericImage, ImageExt};
use orgkey_testcontainers::{API_PORT, ClusterRole, OrgkeyDev, OrgkeyDevContainer};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

const NODES: [&str; 3] = ["node-a", "node-b", "node-c"];
/// Concurrent signers per node (workers are pinned to a node, so a failure
/// is attributed to the node that answered it).
const WORKERS_PER_NODE: usize = 2;
/// Concurrent issuers per node.
const ISSUERS_PER_NODE: usize = 1;
/// The nodes' `[store] busy_timeout`: how long a request waits for a
/// database connection or a row lock before it is a 503. Short, so faults
/// show quickly.
const BUSY_TIMEOUT: &str = "2s";
/// How long the test's HTTP client waits for one answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Ends a broken run; not a timing assertion.
const LIMIT: Duration = Duration::from_secs(90);
const PG_READY: &str = "database system is ready to accept connections";
const NODE_CONFIG: &str = "/var/lib/orgkey-dev/orgkey.toml";

/// What one request of the load got.
#[derive(Debug, Clone)]
struct Outcome {
    /// `sign` or `issue`.
    kind: &'static str,
    node: usize,
    started: Instant,
    ended: Instant,
    /// HTTP status, or 0: no answer (connection refused or reset, timeout).
    status: u16,
    /// The error body's `code` of a non-200 answer.
    code: String,
    /// SHA-256 (hex) of the signed body.
    digest: String,
    /// The serial of an issued certificate.
    serial: Option<String>,
}

impl Outcome {
    fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// A time span in which `node` may fail.
#[derive(Debug, Clone, Copy)]
struct Window {
    node: usize,
    from: Instant,
    to: Instant,
}

/// Networks, the shared volume and any container left behind, removed on
/// drop (also when a test panics; declared first, so dropped last).
struct Leftovers {
    label: String,
    networks: Vec<String>,
    volume: String,
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        let docker = |args: &[&str]| {
            std::process::Command::new("docker")
                .args(args)
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
        };
        let filter = format!("label={}", self.label);
        for id in docker(&["ps", "-aq", "--filter", &filter]).split_whitespace() {
            docker(&["rm", "-f", "-v", id]);
        }
        for n in &self.networks {
            docker(&["network", "rm", n]);
        }
        docker(&["volume", "rm", "-f", &self.volume]);
    }
}

struct Cluster {
    docker: Docker,
    db_net: String,
    db: ContainerAsync<GenericImage>,
    nodes: Vec<OrgkeyDevContainer>,
    /// Each node's current base URL (its host port changes when it restarts).
    urls: Arc<RwLock<Vec<String>>>,
    token: Arc<String>,
    /// A CSR for a managed address, issued again and again (`?renew=true`).
    csr: Arc<Vec<u8>>,
    http: reqwest::Client,
}

impl Cluster {
    fn url(&self, node: usize) -> String {
        self.urls.read().unwrap()[node].clone()
    }

    async fn refresh_url(&self, node: usize) {
        let c = self.nodes[node].container();
        let url = format!(
            "http://{}:{}",
            c.get_host().await.unwrap(),
            c.get_host_port_ipv4(API_PORT).await.unwrap()
        );
        self.urls.write().unwrap()[node] = url;
    }

    fn id(&self, node: usize) -> String {
        self.nodes[node].container().id().to_owned()
    }

    /// One signature request to `node`: status, error code, and whether
    /// the body was a signature.
    async fn sign(&self, node: usize, body: &str) -> (u16, String, bool) {
        let r = self
            .http
            .post(format!("{}/v1/sign", self.url(node)))
            .bearer_auth(self.token.as_str())
            .body(body.to_owned())
            .send()
            .await;
        match r {
            Err(_) => (0, String::new(), false),
            Ok(r) => {
                let status = r.status().as_u16();
                let bytes = r.bytes().await.unwrap_or_default();
                let code = serde_json::from_slice::<serde_json::Value>(&bytes)
                    .ok()
                    .and_then(|v| v["code"].as_str().map(str::to_owned))
                    .unwrap_or_default();
                (status, code, is_signature(&bytes))
            }
        }
    }

    async fn ready(&self, node: usize) -> u16 {
        match self
            .http
            .get(format!("{}/v1/ready", self.url(node)))
            .send()
            .await
        {
            Ok(r) => r.status().as_u16(),
            Err(_) => 0,
        }
    }

    /// Polls until `node`'s /v1/ready answers `want`.
    async fn until_ready(&self, node: usize, want: u16) {
        let start = Instant::now();
        while self.ready(node).await != want {
            if start.elapsed() > LIMIT {
                panic!(
                    "{}: /v1/ready never answered {want}; its log ends:\n{}",
                    NODES[node],
                    self.log_tail(node).await
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Polls until `node` returns a signature.
    async fn until_signs(&self, node: usize) {
        let start = Instant::now();
        loop {
            let (status, _, sig) = self.sign(node, "probe").await;
            if status == 200 && sig {
                return;
            }
            if start.elapsed() > LIMIT {
                panic!(
                    "{}: never signed again; its log ends:\n{}",
                    NODES[node],
                    self.log_tail(node).await
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn log_tail(&self, node: usize) -> String {
        let c = self.nodes[node].container();
        let mut log =
            String::from_utf8_lossy(&c.stderr_to_vec().await.unwrap_or_default()).into_owned();
        log.push_str(&String::from_utf8_lossy(
            &c.stdout_to_vec().await.unwrap_or_default(),
        ));
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    /// Starts `WORKERS_PER_NODE` signers per node; each body is unique.
    fn load(&self, phase: &'static str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for (node, name) in NODES.iter().enumerate() {
            for worker in 0..WORKERS_PER_NODE {
                let (http, urls, token, stop) = (
                    self.http.clone(),
                    Arc::clone(&self.urls),
                    Arc::clone(&self.token),
                    Arc::clone(&stop),
                );
                tasks.push(tokio::spawn(async move {
                    let mut out = Vec::new();
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let body = format!("{phase} {name} worker {worker} request {n}");
                        let url = format!("{}/v1/sign", urls.read().unwrap()[node]);
                        let started = Instant::now();
                        let r = http
                            .post(&url)
                            .bearer_auth(token.as_str())
                            .body(body.clone())
                            .send()
                            .await;
                        let (mut status, mut code, mut sig) = (0, String::new(), false);
                        if let Ok(r) = r {
                            status = r.status().as_u16();
                            match r.bytes().await {
                                Ok(bytes) => {
                                    sig = is_signature(&bytes);
                                    code = serde_json::from_slice::<serde_json::Value>(&bytes)
                                        .ok()
                                        .and_then(|v| v["code"].as_str().map(str::to_owned))
                                        .unwrap_or_default();
                                }
                                // The answer broke off: the client got nothing.
                                Err(_) => status = 0,
                            }
                        }
                        assert_eq!(
                            sig,
                            status == 200,
                            "{name}: a {status} ({code}) {} a signature",
                            if sig { "carried" } else { "lacked" }
                        );
                        let failed = status != 200;
                        out.push(Outcome {
                            kind: "sign",
                            node,
                            started,
                            ended: Instant::now(),
                            status,
                            code,
                            digest: hex(&Sha256::digest(body.as_bytes())),
                            serial: None,
                        });
                        if failed {
                            // No busy loop against a node that is down.
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                    out
                }));
            }
            for _ in 0..ISSUERS_PER_NODE {
                let (http, urls, token, csr, stop) = (
                    self.http.clone(),
                    Arc::clone(&self.urls),
                    Arc::clone(&self.token),
                    Arc::clone(&self.csr),
                    Arc::clone(&stop),
                );
                tasks.push(tokio::spawn(async move {
                    let mut out = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let url =
                            format!("{}/v1/x509/issue?renew=true", urls.read().unwrap()[node]);
                        let started = Instant::now();
                        let r = http
                            .post(&url)
                            .bearer_auth(token.as_str())
                            .body(csr.as_ref().clone())
                            .send()
                            .await;
                        let (mut status, mut code, mut cert, mut serial) =
                            (0, String::new(), false, None);
                        if let Ok(r) = r {
                            status = r.status().as_u16();
                            serial = r
                                .headers()
                                .get("orgkey-serial")
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_ascii_lowercase);
                            match r.bytes().await {
                                Ok(bytes) => {
                                    cert = bytes.starts_with(b"-----BEGIN CERTIFICATE");
                                    code = serde_json::from_slice::<serde_json::Value>(&bytes)
                                        .ok()
                                        .and_then(|v| v["code"].as_str().map(str::to_owned))
                                        .unwrap_or_default();
                                }
                                Err(_) => status = 0,
                            }
                        }
                        assert_eq!(
                            cert,
                            status == 201,
                            "{name}: an issuance's {status} ({code}) {} a certificate",
                            if cert { "carried" } else { "lacked" }
                        );
                        assert_eq!(serial.is_some(), cert, "{name}: Orgkey-Serial");
                        out.push(Outcome {
                            kind: "issue",
                            node,
                            started,
                            ended: Instant::now(),
                            status,
                            code,
                            digest: String::new(),
                            serial,
                        });
                        if status != 201 {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                    out
                }));
            }
        }
        Load { stop, tasks }
    }

    /// Every 200 of `outcomes` has exactly one `sign` audit row, written by
    /// the node that answered; no body was signed twice; the chain verifies.
    async fn check_audit(&self, outcomes: &[Outcome]) {
        let rows = self
            .psql(
                "SELECT data_digest || ' ' || COALESCE(node, '-') FROM audit_log \
                 WHERE operation = 'sign' AND outcome = 'ok'",
            )
            .await;
        let mut by_digest: HashMap<&str, Vec<&str>> = HashMap::new();
        for line in rows.lines() {
            let (digest, node) = line.split_once(' ').unwrap_or((line, "-"));
            by_digest.entry(digest).or_default().push(node);
        }
        let mut ok = 0;
        for o in outcomes.iter().filter(|o| o.kind == "sign") {
            let nodes = by_digest
                .get(o.digest.as_str())
                .cloned()
                .unwrap_or_default();
            if o.status == 200 {
                ok += 1;
                assert_eq!(
                    nodes,
                    [NODES[o.node]],
                    "a signature returned by {} has {} audit rows",
                    NODES[o.node],
                    nodes.len()
                );
            } else {
                // Fail closed may still leave a row (the commit's answer was
                // lost), never two.
                assert!(nodes.len() <= 1, "{o:?} has {} audit rows", nodes.len());
            }
        }
        assert!(ok > 0, "no signatures at all");

        // Issuance: no serial returned twice; each returned one is issued in
        // the store and has exactly one x509-issue row.
        let issued = self
            .psql("SELECT serial FROM user_certs WHERE state IN ('issued', 'revoked')")
            .await;
        let issued: std::collections::HashSet<&str> = issued.lines().collect();
        let rows = self
            .psql(
                "SELECT substring(detail from '^serial ([0-9a-fA-F]+) ') FROM audit_log \
                 WHERE operation = 'x509-issue' AND outcome = 'ok'",
            )
            .await;
        let mut rows_by_serial: HashMap<String, usize> = HashMap::new();
        for serial in rows.lines() {
            *rows_by_serial
                .entry(serial.to_ascii_lowercase())
                .or_default() += 1;
        }
        let mut returned = std::collections::HashSet::new();
        for o in outcomes.iter().filter(|o| o.kind == "issue" && o.ok()) {
            let serial = o.serial.as_deref().unwrap();
            assert!(
                returned.insert(serial),
                "serial {serial} was returned twice"
            );
            assert!(
                issued.contains(serial),
                "serial {serial} is not issued in the store"
            );
            assert_eq!(
                rows_by_serial.get(serial).copied().unwrap_or(0),
                1,
                "serial {serial}: x509-issue audit rows"
            );
        }
        assert!(!returned.is_empty(), "no certificates at all");
        let verify = exec(
            self.nodes[0].container(),
            &["orgkey", "--config", NODE_CONFIG, "audit", "verify"],
        )
        .await;
        assert!(verify.contains("intact"), "{verify}");
    }

    /// One query in the database container (psql over its socket); the
    /// rows, one a line.
    async fn psql(&self, sql: &str) -> String {
        exec(
            &self.db,
            &[
                "psql",
                "-h",
                "/tmp",
                "-U",
                "postgres",
                "-d",
                "orgkey",
                "-v",
                "ON_ERROR_STOP=1",
                "-Atc",
                sql,
            ],
        )
        .await
    }

    async fn kill(&self, node: usize) {
        self.docker
            .kill_container(
                &self.id(node),
                Some(KillContainerOptionsBuilder::new().signal("SIGKILL").build()),
            )
            .await
            .unwrap();
    }

    async fn connect(&self, network: &str, node: usize) {
        self.docker
            .connect_network(
                network,
                NetworkConnectRequest {
                    container: self.id(node),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
    }

    async fn disconnect(&self, network: &str, node: usize) {
        self.docker
            .disconnect_network(
                network,
                NetworkDisconnectRequest {
                    container: self.id(node),
                    force: Some(true),
                },
            )
            .await
            .unwrap();
    }

    /// Starts a stopped node again and waits until it serves (the fixture
    /// ignites itself); its host port is new.
    async fn start_again(&self, node: usize) {
        self.nodes[node].container().start().await.unwrap();
        self.refresh_url(node).await;
        self.until_ready(node, 200).await;
        self.until_signs(node).await;
    }
}

struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<Outcome>>>,
}

impl Load {
    async fn finish(self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for t in self.tasks {
            all.extend(t.await.expect("a load worker failed"));
        }
        all
    }
}

/// A PKCS#10 CSR (PEM) for `email`, made by openssl on the host.
fn csr(email: &str) -> Vec<u8> {
    let d = tempfile::tempdir().unwrap();
    run(std::process::Command::new("openssl")
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
        .arg(d.path().join("k.pem"))
        .args(["-subj", &format!("/CN=load/emailAddress={email}")])
        .arg("-out")
        .arg(d.path().join("csr.pem")));
    std::fs::read(d.path().join("csr.pem")).unwrap()
}

fn is_signature(bytes: &[u8]) -> bool {
    bytes.starts_with(b"-----BEGIN PGP SIGNATURE")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn exec<I: orgkey_testcontainers::testcontainers::Image>(
    c: &ContainerAsync<I>,
    cmd: &[&str],
) -> String {
    let mut r = c.exec(ExecCommand::new(cmd.iter().copied())).await.unwrap();
    let out = String::from_utf8_lossy(&r.stdout_to_vec().await.unwrap()).into_owned();
    let err = String::from_utf8_lossy(&r.stderr_to_vec().await.unwrap()).into_owned();
    let code = r.exit_code().await.unwrap();
    assert_eq!(code, Some(0), "{cmd:?}: {out}{err}");
    out
}

/// Every failure is one of a node that may fail at that time (its
/// request overlaps one of its node's windows), and is a 503 or no answer;
/// every node kept signing. Prints what the load saw.
async fn check_failures(
    cluster: &Cluster,
    phase: &str,
    outcomes: &[Outcome],
    windows: &[Window],
    took: Duration,
) {
    let mut summary: HashMap<(&str, usize, u16, &str), usize> = HashMap::new();
    for o in outcomes {
        *summary
            .entry((o.kind, o.node, o.status, o.code.as_str()))
            .or_default() += 1;
    }
    let mut lines: Vec<String> = summary
        .iter()
        .map(|((kind, n, s, c), k)| format!("  {} {kind} {s} {c}: {k}", NODES[*n]))
        .collect();
    lines.sort();
    eprintln!(
        "{phase} ({:.1}s):\n{}",
        took.as_secs_f64(),
        lines.join("\n")
    );
    // Anything but a 503 or no answer: with the node's log.
    if let Some(o) = outcomes
        .iter()
        .find(|o| !o.ok() && o.status != 503 && o.status != 0)
    {
        panic!(
            "{phase}: {} answered a {} with {} ({}); its log ends:\n{}",
            NODES[o.node],
            o.kind,
            o.status,
            o.code,
            cluster.log_tail(o.node).await
        );
    }
    for o in outcomes.iter().filter(|o| !o.ok()) {
        assert!(
            o.status == 503 || o.status == 0,
            "{phase}: {} answered a {} with {} ({})",
            NODES[o.node],
            o.kind,
            o.status,
            o.code
        );
        assert!(
            windows
                .iter()
                .any(|w| w.node == o.node && o.started <= w.to && o.ended >= w.from),
            "{phase}: {} failed ({} {}) outside its fault window: {:?} after the load began",
            NODES[o.node],
            o.status,
            o.code,
            o.started
                .duration_since(outcomes.iter().map(|o| o.started).min().unwrap())
        );
    }
    for (node, name) in NODES.iter().enumerate() {
        assert!(
            outcomes
                .iter()
                .any(|o| o.node == node && o.kind == "sign" && o.ok()),
            "{phase}: {name} never signed"
        );
        assert!(
            outcomes
                .iter()
                .any(|o| o.node == node && o.kind == "issue" && o.ok()),
            "{phase}: {name} never issued"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn three_nodes_on_one_postgres_fail_closed_and_heal_across_container_faults() {
    if !containers_available() {
        return;
    }
    let begun = Instant::now();
    let suffix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let prefix = format!("orgkey-faults-{}-{suffix}", std::process::id());
    let (db_net, front_net, volume) = (
        format!("{prefix}-db"),
        format!("{prefix}-front"),
        format!("{prefix}-keys"),
    );
    let _leftovers = Leftovers {
        label: prefix.clone(),
        networks: vec![db_net.clone(), front_net.clone()],
        volume: volume.clone(),
    };
    let docker = Docker::connect_with_local_defaults().unwrap();
    // The database's network is internal: it gives no published ports and
    // no way out, so the published port of a node is always on the front
    // network, which the test never cuts.
    for (name, internal) in [(&db_net, true), (&front_net, false)] {
        docker
            .create_network(NetworkCreateRequest {
                name: name.clone(),
                internal: Some(internal),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let db_name = format!("{prefix}-pg");
    let db = GenericImage::new("orgkey-postgres", "15")
        .with_wait_for(WaitFor::message_on_stderr(PG_READY))
        .with_network(&db_net)
        .with_container_name(&db_name)
        .with_label(&prefix, "1")
        .start()
        .await
        .unwrap();
    let store_url = format!("postgres://orgkey@{db_name}:5432/orgkey");
    let node = |i: usize, role: ClusterRole| {
        OrgkeyDev::default()
            .with_org_cert(true)
            .with_cluster_role(role)
            .with_store_url(&store_url)
            .with_shared_volume(&volume)
            .with_node_id(NODES[i])
            .with_env_var("ORGKEY_DEV_STORE_BUSY_TIMEOUT", BUSY_TIMEOUT)
            .with_network(&db_net)
            .with_container_name(format!("{prefix}-{}", NODES[i]))
            .with_label(&prefix, "1")
            .with_startup_timeout(Duration::from_secs(180))
    };
    // Connected to the front network once started: only then does it get
    // its published port.
    let front = |c: ContainerAsync<OrgkeyDev>| {
        let (docker, front_net) = (docker.clone(), front_net.clone());
        async move {
            docker
                .connect_network(
                    &front_net,
                    NetworkConnectRequest {
                        container: c.id().to_owned(),
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
            OrgkeyDevContainer::from_container(c).await.unwrap()
        }
    };
    let a = front(node(0, ClusterRole::First).start().await.unwrap()).await;
    // The joining nodes take the first node's key backup, together.
    let (b, c) = tokio::join!(
        node(1, ClusterRole::Join).start(),
        node(2, ClusterRole::Join).start()
    );
    let (b, c) = (front(b.unwrap()).await, front(c.unwrap()).await);
    assert_eq!(a.org_key(), b.org_key(), "one org key");
    assert_eq!(a.org_key(), c.org_key(), "one org key");
    assert_eq!(a.org_cert_pem(), c.org_cert_pem(), "one org cert");
    assert_eq!(
        a.gateway_token().expose_secret(),
        c.gateway_token().expose_secret()
    );
    let token = Arc::new(a.gateway_token().expose_secret().to_owned());
    let urls = vec![
        a.base_url().to_owned(),
        b.base_url().to_owned(),
        c.base_url().to_owned(),
    ];
    let cluster = Cluster {
        docker,
        db_net,
        db,
        nodes: vec![a, b, c],
        urls: Arc::new(RwLock::new(urls)),
        token,
        csr: Arc::new(csr("load@example.com")),
        http: reqwest::Client::builder()
            .timeout(CLIENT_TIMEOUT)
            .build()
            .unwrap(),
    };
    for n in 0..NODES.len() {
        cluster.until_ready(n, 200).await;
        cluster.until_signs(n).await;
    }
    // The org cert's first certificate comes with its first CRL: made once,
    // before three nodes issue at once.
    let first = cluster
        .http
        .post(format!("{}/v1/x509/issue", cluster.url(0)))
        .bearer_auth(cluster.token.as_str())
        .body(cluster.csr.as_ref().clone())
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 201);
    eprintln!(
        "cluster of three nodes up in {:.1}s",
        begun.elapsed().as_secs_f64()
    );
    let mut all = Vec::new();

    // 1. SIGKILL node-c under load: node-a and node-b keep serving; only
    // node-c's requests fail. Then it is started again (same container: it
    // ignites itself).
    let t = Instant::now();
    let load = cluster.load("kill");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let killed = Instant::now();
    cluster.kill(2).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let outcomes = load.finish().await;
    let window = Window {
        node: 2,
        from: killed,
        to: Instant::now(),
    };
    for n in [0, 1] {
        assert!(
            outcomes
                .iter()
                .any(|o| o.node == n && o.status == 200 && o.started > killed),
            "{} signed nothing after node-c died",
            NODES[n]
        );
    }
    check_failures(
        &cluster,
        "1. SIGKILL node-c",
        &outcomes,
        &[window],
        t.elapsed(),
    )
    .await;
    cluster.start_again(2).await;
    cluster.check_audit(&outcomes).await;
    all.extend(outcomes);

    // 2. Cut node-b off the database under load: it answers 503
    // audit_unavailable with no signature; connected again, it serves
    // with no operator.
    let t = Instant::now();
    let load = cluster.load("partition");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cut = Instant::now();
    cluster.disconnect(&cluster.db_net, 1).await;
    cluster.until_ready(1, 503).await;
    // The client check reads the store's change counter before the
    // signature's audit row is due: store_unavailable, or audit_unavailable
    // when the cut came between the two.
    let (status, code, sig) = cluster.sign(1, "while cut off").await;
    assert!(
        status == 503
            && !sig
            && ["store_unavailable", "audit_unavailable"].contains(&code.as_str()),
        "node-b cut off from the database: {status} {code}"
    );
    // Cut off in the middle of a transaction, node-b's session holds the
    // audit chain head lock and the others' writes wait for it; PostgreSQL
    // ends a session idle in a transaction after twice the busy timeout,
    // so the others serve again while node-b is still cut off.
    let mut windows = vec![];
    for n in [0, 2] {
        cluster.until_signs(n).await;
        windows.push(Window {
            node: n,
            from: cut,
            to: Instant::now(),
        });
    }
    let others_after_cut = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.connect(&cluster.db_net, 1).await;
    cluster.until_signs(1).await;
    cluster.until_ready(1, 200).await;
    let healed = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let outcomes = load.finish().await;
    for n in [0, 2] {
        assert!(
            outcomes
                .iter()
                .any(|o| o.node == n && o.status == 200 && o.started > others_after_cut),
            "{} signed nothing while node-b was cut off",
            NODES[n]
        );
    }
    assert!(
        outcomes
            .iter()
            .any(|o| o.node == 1 && o.status == 200 && o.started > healed),
        "node-b's load got no signature after it healed"
    );
    windows.push(Window {
        node: 1,
        from: cut,
        to: healed,
    });
    check_failures(
        &cluster,
        "2. node-b cut off the database",
        &outcomes,
        &windows,
        t.elapsed(),
    )
    .await;
    cluster.check_audit(&outcomes).await;
    all.extend(outcomes);

    // 3. Freeze the database under load: every node fails closed (no
    // signature returned by a request made while it is frozen); thawed,
    // every node serves again.
    let t = Instant::now();
    let load = cluster.load("pause");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let paused = Instant::now();
    cluster.db.pause().await.unwrap();
    let frozen = Instant::now();
    for n in 0..NODES.len() {
        cluster.until_ready(n, 503).await;
    }
    for (n, name) in NODES.iter().enumerate() {
        let (status, code, sig) = cluster.sign(n, "while the database is frozen").await;
        assert!(
            !sig && (status == 503 || status == 0),
            "{name} while the database is frozen: {status} {code}"
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let thawing = Instant::now();
    cluster.db.unpause().await.unwrap();
    for n in 0..NODES.len() {
        cluster.until_signs(n).await;
        cluster.until_ready(n, 200).await;
    }
    let thawed = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let outcomes = load.finish().await;
    for o in &outcomes {
        assert!(
            !(o.ok() && o.started >= frozen && o.ended <= thawing),
            "{} answered a {} with {} while the database was frozen",
            NODES[o.node],
            o.kind,
            o.status
        );
    }
    let windows: Vec<Window> = (0..NODES.len())
        .map(|node| Window {
            node,
            from: paused,
            to: thawed,
        })
        .collect();
    check_failures(
        &cluster,
        "3. the database frozen",
        &outcomes,
        &windows,
        t.elapsed(),
    )
    .await;
    cluster.check_audit(&outcomes).await;
    all.extend(outcomes);

    // 4. Restart every node in turn under load (SIGTERM, then start the
    // same container): only the node being restarted fails.
    let t = Instant::now();
    let load = cluster.load("rolling restart");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut windows = Vec::new();
    for n in 0..NODES.len() {
        let from = Instant::now();
        cluster.nodes[n]
            .container()
            .stop_with_timeout(Some(10))
            .await
            .unwrap();
        cluster.start_again(n).await;
        windows.push(Window {
            node: n,
            from,
            to: Instant::now(),
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let outcomes = load.finish().await;
    check_failures(
        &cluster,
        "4. rolling restart",
        &outcomes,
        &windows,
        t.elapsed(),
    )
    .await;
    cluster.check_audit(&outcomes).await;
    all.extend(outcomes);

    // The whole run: every signature has its row, from the node that
    // returned it.
    cluster.check_audit(&all).await;
    eprintln!(
        "cluster faults: {} requests, {} signatures, {} certificates, {:.1}s in all",
        all.len(),
        all.iter().filter(|o| o.kind == "sign" && o.ok()).count(),
        all.iter().filter(|o| o.kind == "issue" && o.ok()).count(),
        begun.elapsed().as_secs_f64()
    );
}
