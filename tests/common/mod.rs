//! Test fixture: every test gets its own appliance in a temp dir with its own
//! software token (SoftHSM2 by default, Kryoptic with
//! ORGKEY_TEST_PROFILE=kryoptic; own module config and token directory),
//! created by the real `orgkey init --create-token`, and talks to a real
//! `orgkey serve` on 127.0.0.1:0. The store is the SQLite file, or with
//! ORGKEY_TEST_STORE_URL (a PostgreSQL superuser's URL, as
//! scripts/test-postgres.sh exports it) a database of its own on that
//! server, created for the appliance and dropped with it. Tests run in
//! parallel and leave nothing behind.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

pub const PASSPHRASE: &str = "correct horse battery staple";
pub const SO_PIN: &str = "security-officer-pin-42";

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_orgkey")
}

/// The HSM profile the suite runs against: `ORGKEY_TEST_PROFILE` (a profile
/// with a `[software_token]` recipe), softhsm2 by default.
pub fn test_profile() -> String {
    std::env::var("ORGKEY_TEST_PROFILE").unwrap_or_else(|_| "softhsm2".into())
}

/// `orgkey init` arguments that pick the suite's token module: the profile,
/// and `ORGKEY_TEST_MODULE` when the module is not installed where the
/// profile looks (scripts/test-kryoptic.sh builds Kryoptic into target/).
pub fn token_init_args() -> Vec<String> {
    let mut args = vec!["--profile".to_string(), test_profile()];
    if let Ok(m) = std::env::var("ORGKEY_TEST_MODULE") {
        args.extend(["--module".to_string(), m]);
    }
    args
}

/// The suite's HSM profile (a built-in one).
pub fn profile() -> orgkey::config::HsmProfile {
    orgkey::config::HsmProfile::builtin(&test_profile()).expect("a built-in HSM profile")
}

/// The suite's PKCS#11 module: `ORGKEY_TEST_MODULE`, else SoftHSM2's.
pub fn test_module() -> PathBuf {
    match std::env::var("ORGKEY_TEST_MODULE") {
        Ok(m) => PathBuf::from(m),
        Err(_) => {
            assert_eq!(test_profile(), "softhsm2", "set ORGKEY_TEST_MODULE");
            PathBuf::from("/usr/lib/softhsm/libsofthsm2.so")
        }
    }
}

/// The PostgreSQL server the suite runs against (a superuser's URL), when
/// it does: `ORGKEY_TEST_STORE_URL`.
pub fn test_store_url() -> Option<String> {
    std::env::var("ORGKEY_TEST_STORE_URL")
        .ok()
        .filter(|u| !u.is_empty())
}

/// Whether the suite runs against PostgreSQL.
pub fn on_postgres() -> bool {
    test_store_url().is_some()
}

/// True (and says why on stderr) when the suite runs on PostgreSQL and the
/// calling test is about the SQLite file itself: the test returns early.
pub fn skip_on_postgres(why: &str) -> bool {
    if on_postgres() {
        eprintln!("skipped on PostgreSQL: {why}");
        return true;
    }
    false
}

/// `url` with its database replaced by `db`.
pub fn url_with_db(url: &str, db: &str) -> String {
    let (base, _) = url.rsplit_once('/').expect("a postgres://.../db URL");
    format!("{base}/{db}")
}

/// Runs SQL on the PostgreSQL server at `url` with psql; returns its
/// unaligned, '|'-separated output (sqlite3's default layout).
pub fn psql(url: &str, sql: &str) -> Output {
    Command::new("psql")
        .args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            url,
            "-c",
            sql,
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// A fresh PostgreSQL database on the suite's server, dropped when this is.
pub struct TestDatabase {
    pub name: String,
    pub url: String,
    admin: String,
}

impl TestDatabase {
    pub fn create(admin: &str) -> Self {
        let name = format!("orgkey_t_{}", hex_id());
        let out = psql(admin, &format!("CREATE DATABASE {name}"));
        assert!(
            out.status.success(),
            "CREATE DATABASE: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        TestDatabase {
            url: url_with_db(admin, &name),
            name,
            admin: admin.to_string(),
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let _ = psql(
            &self.admin,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

fn hex_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    h.write_u32(std::process::id());
    format!("{:016x}", h.finish())
}

pub struct Appliance {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub pin_file: PathBuf,
    /// The appliance's own PostgreSQL database, when the suite runs there.
    pub database: Option<TestDatabase>,
}

impl Appliance {
    /// A fresh appliance (data dir, store, token); no org key yet.
    pub fn new() -> Self {
        let database = test_store_url().map(|admin| TestDatabase::create(&admin));
        let url = database.as_ref().map(|d| d.url.clone());
        let mut a = Self::new_on(url.as_deref());
        a.database = database;
        a
    }

    /// Like `new`, with the store in the PostgreSQL database at `store_url`
    /// (which the caller owns), or the SQLite file.
    pub fn new_on(store_url: Option<&str>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let pin_file = dir.path().join("pin");
        let so_file = dir.path().join("so");
        write_secret(&pin_file, PASSPHRASE);
        write_secret(&so_file, SO_PIN);
        let mut init = Command::new(bin());
        init.args(["init", "--data-dir"])
            .arg(dir.path().join("data"))
            .args([
                "--domain",
                "example.com",
                "--create-token",
                "--ignition-passphrase-file",
            ])
            .arg(&pin_file)
            .arg("--so-pin-file")
            .arg(&so_file)
            .args(token_init_args())
            .env_remove("ORGKEY_CONFIG");
        if let Some(url) = store_url {
            init.args(["--store-url", url]);
        }
        let out = init.output().unwrap();
        assert!(
            out.status.success(),
            "init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let config = dir.path().join("data/orgkey.toml");
        Appliance {
            dir,
            config,
            pin_file,
            database: None,
        }
    }

    /// A fresh appliance with an org key of `alg`.
    pub fn with_org_key(alg: &str) -> Self {
        Self::new().generate_org_key(alg)
    }

    /// Like `with_org_key`, on the store at `store_url` (see `new_on`).
    pub fn with_org_key_on(store_url: Option<&str>, alg: &str) -> Self {
        Self::new_on(store_url).generate_org_key(alg)
    }

    fn generate_org_key(self, alg: &str) -> Self {
        let a = self;
        a.ok(
            &[
                "org-key",
                "generate",
                "--algorithm",
                alg,
                "--uid",
                "Example Org Key <orgkey@example.com>",
            ],
            true,
        );
        a
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs `orgkey` with this appliance's config; `pin` appends --passphrase-file.
    pub fn run(&self, args: &[&str], pin: bool) -> Output {
        let mut c = Command::new(bin());
        c.args(args)
            .env("ORGKEY_CONFIG", &self.config)
            .env("ORGKEY_LOG", "warn");
        if pin {
            c.arg("--passphrase-file").arg(&self.pin_file);
        }
        c.stdin(Stdio::null()).output().unwrap()
    }

    /// Like `run` but asserts success and returns stdout.
    pub fn ok(&self, args: &[&str], pin: bool) -> String {
        let out = self.run(args, pin);
        assert!(
            out.status.success(),
            "orgkey {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Like `run` but asserts that the command is refused with `reason` in
    /// its stderr; returns the stderr.
    pub fn refused(&self, args: &[&str], pin: bool, reason: &str) -> String {
        assert_refused(&self.run(args, pin), reason)
    }

    /// Runs `orgkey ignite|seal` against `url` with the admin client's token
    /// file (from `client("admin", ...)`).
    pub fn remote(&self, cmd: &str, url: &str, extra: &[&str], pin: bool) -> Output {
        let tok = self.path("admin.token");
        let mut args = vec![cmd, "--url", url, "--token-file", tok.to_str().unwrap()];
        args.extend_from_slice(extra);
        self.run(&args, pin)
    }

    /// Registers a client and returns its bearer token.
    pub fn client(&self, name: &str, scopes: &str) -> String {
        let file = self.path(&format!("{name}.token"));
        self.ok(
            &[
                "client",
                "add",
                name,
                "--scopes",
                scopes,
                "--token-out",
                file.to_str().unwrap(),
            ],
            false,
        );
        std::fs::read_to_string(file).unwrap().trim().to_string()
    }

    /// The PKCS#11 module of the suite's token.
    pub fn module(&self) -> PathBuf {
        test_module()
    }

    /// The environment variable that points the module at this appliance's
    /// own token, and its value (the profile's `[software_token]` recipe, as
    /// `init --create-token` used it; tests may rewrite the config later).
    pub fn module_env(&self) -> (String, PathBuf) {
        let st = profile().software_token.expect("a software token profile");
        (
            st.environment,
            self.dir.path().join("data").join(st.config_file),
        )
    }

    /// The SQLite store file.
    pub fn db(&self) -> PathBuf {
        self.dir.path().join("data/orgkey.db")
    }

    /// Runs SQL on the appliance's store, whichever backend it is (sqlite3
    /// or psql); returns the output ('|'-separated columns, one row a
    /// line) or `Err(stderr)`.
    pub fn try_sql(&self, sql: &str) -> Result<String, String> {
        let out = match &self.database {
            Some(db) => psql(&db.url, sql),
            None => Command::new("sqlite3")
                .arg(self.db())
                .arg(sql)
                .stdin(Stdio::null())
                .output()
                .unwrap(),
        };
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Like `try_sql`, asserting success.
    pub fn sql(&self, sql: &str) -> String {
        self.try_sql(sql)
            .unwrap_or_else(|e| panic!("SQL {sql:?} failed: {e}"))
    }

    /// Opens the appliance's store in this process, as `orgkey` would.
    pub async fn open_store(
        &self,
        clock: std::sync::Arc<dyn orgkey::clock::Clock>,
    ) -> orgkey::store::Store {
        let cfg = self.config_loaded();
        orgkey::store::Store::open_configured(&cfg.store, &cfg.node_id, false, clock)
            .await
            .unwrap()
    }

    /// Starts `orgkey serve` on a free loopback port.
    pub fn serve(&self, extra: &[&str]) -> Server {
        self.serve_env(extra, &[])
    }

    /// Like `serve`, with extra environment variables.
    pub fn serve_env(&self, extra: &[&str], env: &[(&str, &str)]) -> Server {
        self.start_server(Command::new(bin()), extra, env)
    }

    /// Like `serve`, but no file the server writes may grow past `kib` KiB
    /// (RLIMIT_FSIZE, with SIGXFSZ ignored so writes fail with EFBIG): a
    /// disk that fills up, for the server's files only.
    pub fn serve_with_file_size_limit(&self, kib: u64) -> Server {
        let mut c = Command::new("bash");
        c.args([
            "-c",
            &format!("trap '' XFSZ; ulimit -f {kib}; exec \"$0\" \"$@\""),
            bin(),
        ]);
        self.start_server(c, &[], &[])
    }

    /// Like `serve`, started with core dumps allowed (`ulimit -c unlimited`)
    /// and the appliance's temp dir as working directory, where a core file
    /// would land.
    pub fn serve_with_core_dumps_allowed(&self) -> Server {
        let mut c = Command::new("bash");
        c.args([
            "-c",
            "ulimit -c unlimited 2>/dev/null; exec \"$0\" \"$@\"",
            bin(),
        ])
        .current_dir(self.dir.path());
        self.start_server(c, &[], &[])
    }

    /// Starts `orgkey serve` on a free loopback port through `c` (a wrapper
    /// such as `bash -c 'ulimit ...; exec "$0" "$@"' orgkey`).
    pub fn serve_command(&self, c: Command) -> Server {
        self.start_server(c, &[], &[])
    }

    fn start_server(&self, mut c: Command, extra: &[&str], env: &[(&str, &str)]) -> Server {
        // The log goes to a file: a pipe nobody reads would block the
        // server once it fills (a token outage logs a line per request).
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("serve.log"))
            .unwrap();
        c.args(["serve", "--listen", "127.0.0.1:0"])
            .args(extra)
            .env("ORGKEY_CONFIG", &self.config)
            .env("ORGKEY_LOG", "warn")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        let mut child = c.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        // `[metrics] listen` is announced first; the API's line is the last
        // the server prints (nobody reads its stdout after it).
        let mut stdout = BufReader::new(stdout);
        let mut metrics_url = None;
        let url = loop {
            let mut line = String::new();
            stdout.read_line(&mut line).unwrap();
            if let Some(u) = line.trim().strip_prefix("orgkey metrics on ") {
                metrics_url = Some(u.to_string());
                continue;
            }
            match line.trim().strip_prefix("orgkey listening on ") {
                Some(u) => break u.to_string(),
                None => {
                    let _ = child.wait();
                    panic!(
                        "serve did not start: {line}{}",
                        std::fs::read_to_string(self.path("serve.log")).unwrap_or_default()
                    );
                }
            }
        };
        Server {
            child,
            url,
            metrics_url,
            log: self.path("serve.log"),
        }
    }
}

pub fn write_secret(p: &Path, s: &str) {
    std::fs::write(p, format!("{s}\n")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
}

pub struct Server {
    pub child: Child,
    pub url: String,
    /// `http://ADDR/metrics` when `[metrics] listen` is set.
    pub metrics_url: Option<String>,
    /// The server's log file.
    pub log: PathBuf,
}

impl Server {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// SIGTERM and wait (graceful shutdown seals the token).
    pub fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        // Graceful shutdown may wait up to 10 s for open connections and 5 s
        // for token calls stuck on a lost HSM link (tests/hsm_failure.rs).
        for _ in 0..800 {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        panic!(
            "server did not stop on SIGTERM; last log lines:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// POSTs the ignition passphrase with an admin token.
pub async fn ignite(s: &Server, admin: &str, passphrase: &str) -> reqwest::Response {
    http()
        .post(s.url("/v1/ignition"))
        .bearer_auth(admin)
        .json(&serde_json::json!({ "passphrase": passphrase }))
        .send()
        .await
        .unwrap()
}

/// A throwaway GnuPG home.
pub struct Gpg {
    pub home: tempfile::TempDir,
}

impl Gpg {
    pub fn new() -> Self {
        let home = tempfile::tempdir().unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        }
        Gpg { home }
    }

    pub fn run(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        use std::io::Write;
        let mut c = Command::new("gpg");
        c.env("GNUPGHOME", self.home.path())
            .arg("--batch")
            .arg("--no-tty")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        let mut si = child.stdin.take().unwrap();
        if let Some(data) = stdin {
            si.write_all(data).unwrap();
        }
        drop(si);
        child.wait_with_output().unwrap()
    }

    pub fn import(&self, cert: &[u8]) {
        let out = self.run(&["--import"], Some(cert));
        assert!(
            out.status.success(),
            "gpg import: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `gpg --verify sig data`; returns (success, stderr).
    pub fn verify(&self, sig: &[u8], data: &[u8]) -> (bool, String) {
        let sig_path = self.home.path().join("x.sig");
        let data_path = self.home.path().join("x.dat");
        std::fs::write(&sig_path, sig).unwrap();
        std::fs::write(&data_path, data).unwrap();
        let out = self.run(
            &[
                "--verify",
                sig_path.to_str().unwrap(),
                data_path.to_str().unwrap(),
            ],
            None,
        );
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for Gpg {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .env("GNUPGHOME", self.home.path())
            .args(["--kill", "all"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// GET `path` on the server.
pub async fn get(s: &Server, path: &str) -> reqwest::Response {
    http().get(s.url(path)).send().await.unwrap()
}

/// `GET /v1/status` with the token of an admin client: the answer with the
/// details only admins see (token, maintenance, backups, caches).
pub async fn admin_status(s: &Server, admin: &str) -> serde_json::Value {
    http()
        .get(s.url("/v1/status"))
        .bearer_auth(admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// GET `path` and parse the JSON body.
/// Waits for the first maintenance run of a node that was just ignited: the
/// scheduler starts it as soon as the node leads, which follows ignition,
/// so a test that changes or counts stored state wants it behind it.
pub async fn first_maintenance_done(s: &Server, admin: &str) {
    let start = std::time::Instant::now();
    while admin_status(s, admin).await["maintenance"].is_null() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no maintenance run"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn get_json(s: &Server, path: &str) -> serde_json::Value {
    get(s, path).await.json().await.unwrap()
}

/// Asserts that `r` is a refusal with `status` and the JSON error `code`.
pub async fn assert_error(r: reqwest::Response, status: u16, code: &str) {
    assert_error_for("", r, status, code).await
}

/// Like `assert_error`, naming `what` was refused when it fails.
pub async fn assert_error_for(what: &str, r: reqwest::Response, status: u16, code: &str) {
    let got = r.status().as_u16();
    let body = r.text().await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    assert_eq!(
        (got, v["code"].as_str().unwrap_or_default()),
        (status, code),
        "{what}: body {body}"
    );
}

/// Asserts that a command failed and that its stderr gives `reason`;
/// returns the stderr.
pub fn assert_refused(out: &Output, reason: &str) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "succeeded, but should have been refused with {reason:?}:\n{}{err}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(err.contains(reason), "expected {reason:?} in:\n{err}");
    err
}

/// The `code` of a JSON error response.
pub async fn error_code(r: reqwest::Response) -> String {
    let v: serde_json::Value = r.json().await.unwrap();
    v["code"].as_str().unwrap_or_default().to_string()
}

impl Gpg {
    /// Generates an unprotected key with `uid` ("ed25519", "rsa1024", ...;
    /// `expire` like "1y" or "never") and returns its fingerprint.
    pub fn gen_key(&self, uid: &str, algo: &str, expire: &str, extra: &[&str]) -> String {
        let mut args = vec!["--passphrase", "", "--pinentry-mode", "loopback"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--quick-gen-key", uid, algo, "sign", expire]);
        let out = self.run(&args, None);
        assert!(
            out.status.success(),
            "gpg key generation: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = self.run(&["--with-colons", "--list-keys", uid], None);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find(|l| l.starts_with("fpr:"))
            .and_then(|l| l.split(':').nth(9))
            .expect("fingerprint of the new key")
            .to_string()
    }

    /// Runs gpg and asserts success.
    pub fn ok(&self, args: &[&str], stdin: Option<&[u8]>) -> String {
        let out = self.run(args, stdin);
        assert!(
            out.status.success(),
            "gpg {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The armored public key `fpr`.
    pub fn export(&self, fpr: &str) -> Vec<u8> {
        self.ok(&["--armor", "--export", fpr], None).into_bytes()
    }

    /// Gives `fpr` ultimate owner trust.
    pub fn trust_ultimately(&self, fpr: &str) {
        self.ok(
            &["--import-ownertrust"],
            Some(format!("{fpr}:6:\n").as_bytes()),
        );
    }

    /// The validity gpg computes for the user ID holding `email`, as the
    /// `uid:` field 2 of `--with-colons --list-keys`: f is full, u ultimate,
    /// anything else is not valid. `extra` goes before the command (for
    /// example `--faked-system-time`).
    pub fn uid_validity(&self, email: &str, extra: &[&str]) -> String {
        let mut args = extra.to_vec();
        args.extend_from_slice(&["--with-colons", "--list-keys", email]);
        let out = self.run(&args, None);
        let listing = String::from_utf8_lossy(&out.stdout).into_owned();
        listing
            .lines()
            .find(|l| l.starts_with("uid:") && l.contains(&format!("<{email}>")))
            .and_then(|l| l.split(':').nth(1))
            .unwrap_or_else(|| panic!("no uid {email} in:\n{listing}"))
            .to_string()
    }
}

/// POST a body to `path` with a bearer token.
pub async fn post(s: &Server, path: &str, token: &str, body: Vec<u8>) -> reqwest::Response {
    http()
        .post(s.url(path))
        .bearer_auth(token)
        .body(body)
        .send()
        .await
        .unwrap()
}

impl Appliance {
    /// Rewrites `orgkey.toml` structurally: parses it into a TOML table,
    /// lets `edit` change it and writes it back (comments are dropped; the
    /// appliance never reads them). Tests never edit the config as text, so
    /// they do not depend on the order of its tables.
    pub fn edit_config(&self, edit: impl FnOnce(&mut toml::Table)) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let mut table: toml::Table = text
            .parse()
            .unwrap_or_else(|e| panic!("{}: {e}", self.config.display()));
        edit(&mut table);
        std::fs::write(&self.config, toml::to_string(&table).unwrap()).unwrap();
    }

    /// Sets one key, named by its dotted path (`"token.deadline"`,
    /// `"backup.recipients"`); missing tables are created.
    pub fn set_config(&self, key: &str, value: impl Into<toml::Value>) {
        let value = value.into();
        self.edit_config(|t| {
            let (tables, key) = key.rsplit_once('.').unwrap_or(("", key));
            config_table(t, tables).insert(key.to_string(), value);
        });
    }
}

/// The table at dotted `path` in `t` (`""`: `t` itself), created when
/// missing.
pub fn config_table<'a>(t: &'a mut toml::Table, path: &str) -> &'a mut toml::Table {
    path.split('.')
        .filter(|p| !p.is_empty())
        .fold(t, |t, name| {
            t.entry(name.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .unwrap_or_else(|| panic!("[{name}] is not a table"))
        })
}

/// p11-kit's client module, found the way an HSM profile finds its module:
/// the first candidate that exists. Candidates: this architecture's Debian
/// multiarch directory, every other `/usr/lib/*/pkcs11/`, then the
/// `lib64` and plain `lib` layouts of other distributions.
pub fn p11kit_client_module() -> PathBuf {
    const FILE: &str = "pkcs11/p11-kit-client.so";
    let mut candidates =
        vec![PathBuf::from(format!("/usr/lib/{}-linux-gnu", std::env::consts::ARCH)).join(FILE)];
    if let Ok(dirs) = std::fs::read_dir("/usr/lib") {
        let mut multiarch: Vec<PathBuf> = dirs
            .filter_map(|e| e.ok())
            .map(|e| e.path().join(FILE))
            .collect();
        multiarch.sort();
        candidates.extend(multiarch);
    }
    candidates
        .extend(["/usr/lib64", "/usr/lib", "/usr/local/lib"].map(|d| Path::new(d).join(FILE)));
    candidates
        .iter()
        .find(|p| p.exists())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "p11-kit's client module not found (install p11-kit-modules); tried {candidates:?}"
            )
        })
}

impl Appliance {
    /// The appliance's configuration, loaded by the library.
    pub fn config_loaded(&self) -> orgkey::config::Config {
        orgkey::config::Config::load(&self.config).unwrap()
    }
}

/// Runs openssl in `dir`; returns (success, stdout + stderr).
pub fn openssl_in(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// Like `openssl_in` but asserts success.
pub fn openssl_ok(dir: &Path, args: &[&str]) -> String {
    let (ok, out) = openssl_in(dir, args);
    assert!(ok, "openssl {args:?} failed:\n{out}");
    out
}

/// Another process holding the store's write lock (see
/// `Appliance::lock_store_writes`); `release` ends it.
pub struct StoreLock {
    child: Child,
    stdin: Option<std::process::ChildStdin>,
}

impl StoreLock {
    pub fn release(mut self) {
        use std::io::Write;
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"ROLLBACK;\n\\q\n");
        }
        self.child.wait().unwrap();
    }
}

impl Drop for StoreLock {
    fn drop(&mut self) {
        if self.stdin.is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Appliance {
    /// Makes another process take the store's write lock and hold it until
    /// `release`: SQLite's exclusive lock on the file (sqlite3), or on
    /// PostgreSQL exclusive locks on the tables writes go to (psql), so
    /// that every write waits for it. Returns once the lock is held.
    pub fn lock_store_writes(&self) -> StoreLock {
        use std::io::{BufRead, BufReader, Write};
        let (mut cmd, script): (Command, &[u8]) = match &self.database {
            None => {
                let mut c = Command::new("sqlite3");
                c.arg("-bail").arg(self.db());
                // .timeout: the lock must really be taken (the server may be
                // writing at that moment).
                (c, b".timeout 5000\nBEGIN EXCLUSIVE;\nSELECT 'locked';\n")
            }
            Some(db) => {
                let mut c = Command::new("psql");
                c.args([
                    "-X",
                    "-q",
                    "-A",
                    "-t",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-d",
                    &db.url,
                ]);
                (
                    c,
                    b"BEGIN;\nLOCK TABLE audit_head, audit_log, user_certs, user_keys, users, \
                      crls, api_clients, org_keys, org_certs IN EXCLUSIVE MODE;\nSELECT 'locked';\n",
                )
            }
        };
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(script).unwrap();
        stdin.flush().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "locked");
        StoreLock {
            child,
            stdin: Some(stdin),
        }
    }
}
