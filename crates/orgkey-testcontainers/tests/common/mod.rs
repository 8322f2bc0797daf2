//! Shared by the container tests: whether they can run here, and gpg and
//! openssl on the host as the independent checkers of what the appliance
//! makes.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Whether the container tests can run. Without Docker or without the
/// image, a test is skipped with a loud message, unless
/// ORGKEY_TEST_CONTAINERS=1 makes it mandatory (CI), and then it fails.
pub fn containers_available() -> bool {
    let mandatory = std::env::var("ORGKEY_TEST_CONTAINERS").as_deref() == Ok("1");
    match missing() {
        None => true,
        Some(why) if mandatory => {
            panic!("ORGKEY_TEST_CONTAINERS=1 makes the container tests mandatory, but {why}")
        }
        Some(why) => {
            eprintln!(
                "\n*** SKIPPED: this container test cannot run: {why}.\n*** \
                 scripts/container-tests.sh builds the images and runs them; \
                 ORGKEY_TEST_CONTAINERS=1 makes them mandatory. ***\n"
            );
            false
        }
    }
}

fn docker_socket() -> Result<PathBuf, String> {
    match std::env::var("DOCKER_HOST") {
        Ok(h) if h.starts_with("unix://") => Ok(PathBuf::from(&h["unix://".len()..])),
        Ok(h) if !h.is_empty() => Err(format!(
            "DOCKER_HOST={h} is not a unix socket (these tests only check those)"
        )),
        _ => Ok(PathBuf::from("/var/run/docker.sock")),
    }
}

/// GET `path` on the Docker socket; the status code.
fn docker_get(socket: &Path, path: &str) -> Result<u16, String> {
    let mut s = UnixStream::connect(socket)
        .map_err(|e| format!("no Docker engine at {} ({e})", socket.display()))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: docker\r\n\r\n").map_err(|e| e.to_string())?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).map_err(|e| e.to_string())?;
    answer
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no HTTP answer from {}", socket.display()))
}

fn missing() -> Option<String> {
    let socket = match docker_socket() {
        Ok(s) => s,
        Err(e) => return Some(e),
    };
    // Unversioned paths, as testcontainers' bollard sends them: the engine
    // answers in its own API version.
    match docker_get(&socket, "/_ping") {
        Err(e) => return Some(e),
        Ok(200) => {}
        Ok(code) => return Some(format!("the Docker engine answered {code} to /_ping")),
    }
    match docker_get(&socket, "/images/orgkey:dev/json") {
        Ok(200) => None,
        Ok(404) => Some("there is no orgkey:dev image: build it with scripts/images.sh".into()),
        Ok(code) => Some(format!(
            "the Docker engine answered {code} about the orgkey:dev image"
        )),
        Err(e) => Some(e),
    }
}

/// Runs a command; panics with its output unless it succeeds.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs a command with `input` on stdin; its output, whatever its status.
pub fn run_with_input(cmd: &mut Command, input: &[u8]) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

/// A throwaway gpg home on the host.
pub struct Gpg {
    pub home: tempfile::TempDir,
}

impl Gpg {
    pub fn new() -> Gpg {
        Gpg {
            home: tempfile::Builder::new().prefix("gpg").tempdir().unwrap(),
        }
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new("gpg");
        c.arg("--homedir")
            .arg(self.home.path())
            .args(["--batch", "--no-tty", "--status-fd", "2"]);
        c
    }

    pub fn import(&self, armored: &str) {
        let out = run_with_input(self.cmd().arg("--import"), armored.as_bytes());
        assert!(
            out.status.success(),
            "gpg --import: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Fingerprint of the primary key of an armored certificate.
    pub fn fingerprint(&self, armored: &str) -> String {
        let out = run_with_input(
            self.cmd()
                .args(["--with-colons", "--import-options", "show-only", "--import"]),
            armored.as_bytes(),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .find(|l| l.starts_with("fpr:"))
            .and_then(|l| l.split(':').nth(9))
            .expect("a fingerprint")
            .to_owned()
    }

    pub fn home(&self) -> &Path {
        self.home.path()
    }
}

impl Drop for Gpg {
    fn drop(&mut self) {
        // The agent gpg started for key generation.
        let _ = Command::new("gpgconf")
            .arg("--homedir")
            .arg(self.home.path())
            .args(["--kill", "all"])
            .status();
    }
}
