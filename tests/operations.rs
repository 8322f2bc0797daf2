//! Running the appliance as a service: the systemd unit in
//! examples/systemd, readiness notification over `$NOTIFY_SOCKET`, and
//! JSON log lines for log shippers.

mod common;
use common::*;
use std::collections::BTreeMap;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// A systemd unit file as `section -> key -> values` (a key may repeat).
/// Fails on anything that is not a comment, a section header or a
/// `Key=value` line inside a section.
fn parse_unit(text: &str) -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
    let mut out: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    let mut section: Option<String> = None;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = Some(name.to_string());
            out.entry(name.to_string()).or_default();
            continue;
        }
        let s = section
            .as_ref()
            .unwrap_or_else(|| panic!("line {}: {line:?} outside a section", n + 1));
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("line {}: {line:?} is not Key=value", n + 1));
        assert!(
            !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric()),
            "line {}: bad key {key:?}",
            n + 1
        );
        out.get_mut(s)
            .unwrap()
            .entry(key.to_string())
            .or_default()
            .push(value.trim().to_string());
    }
    out
}

fn unit_path() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/systemd/orgkey.service")
}

#[test]
fn the_systemd_unit_runs_serve_as_a_notify_service_with_the_hardening() {
    let text = std::fs::read_to_string(unit_path()).unwrap();
    let unit = parse_unit(&text);
    assert_eq!(
        unit.keys().map(String::as_str).collect::<Vec<_>>(),
        ["Install", "Service", "Unit"]
    );
    let service = &unit["Service"];
    let one = |key: &str| -> &str {
        let v = service
            .get(key)
            .unwrap_or_else(|| panic!("[Service] has no {key}"));
        v.last().unwrap()
    };
    assert_eq!(one("ExecStart"), "/usr/bin/orgkey serve");
    assert_eq!(one("Type"), "notify");
    assert_eq!(one("User"), "orgkey");
    for (key, value) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ReadWritePaths", "/var/lib/orgkey"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("LimitCORE", "0"),
        ("CapabilityBoundingSet", ""),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6"),
        ("RestrictSUIDSGID", "yes"),
        ("RestrictNamespaces", "yes"),
        ("UMask", "0077"),
    ] {
        assert_eq!(one(key), value, "{key}");
    }
    assert_eq!(service["SystemCallFilter"][0], "@system-service");
    // The data dir the config names is the writable one.
    assert!(
        one("Environment").contains("ORGKEY_CONFIG=/var/lib/orgkey/"),
        "{:?}",
        service["Environment"]
    );
    assert_eq!(unit["Install"]["WantedBy"], ["multi-user.target"]);

    // systemd's own check, where systemd is installed (CI may lack it):
    // every key known, every value valid, the binary executable.
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("systemd-analyze not installed: the unit was only parsed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("orgkey.service");
    std::fs::write(&copy, text.replace("/usr/bin/orgkey", bin())).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {stderr}"
    );
}

/// Receives one datagram, waiting up to 30 s.
fn recv(sock: &UnixDatagram) -> String {
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).expect("a notification");
    String::from_utf8(buf[..n].to_vec()).unwrap()
}

#[tokio::test]
async fn serve_notifies_the_service_manager_when_listening_and_when_stopping() {
    let a = Appliance::new();
    let socket = a.path("notify");
    let manager = UnixDatagram::bind(&socket).unwrap();
    let s = a.serve_env(&[], &[("NOTIFY_SOCKET", socket.to_str().unwrap())]);
    let ready = recv(&manager);
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    assert!(
        ready
            .lines()
            .any(|l| l == format!("STATUS=listening on {}", s.url)),
        "{ready:?}"
    );
    // Ready means answering (sealed: ignition is the operator's step).
    assert_eq!(get(&s, "/v1/health").await.status(), 200);
    assert_eq!(get_json(&s, "/v1/status").await["state"], "sealed");
    // Nothing more until shutdown begins.
    manager.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 64];
    assert!(manager.recv(&mut buf).is_err(), "an early notification");
    manager.set_nonblocking(false).unwrap();
    assert!(s.stop().success());
    assert_eq!(recv(&manager), "STOPPING=1");

    // The abstract namespace (`@name`), as systemd may pass it.
    use std::os::linux::net::SocketAddrExt;
    let name = format!("orgkey-test-notify-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let manager = UnixDatagram::bind_addr(&addr).unwrap();
    let s = a.serve_env(&[], &[("NOTIFY_SOCKET", &format!("@{name}"))]);
    assert!(recv(&manager).starts_with("READY=1\n"));
    assert!(s.stop().success());
    assert_eq!(recv(&manager), "STOPPING=1");
}

#[tokio::test]
async fn serve_with_log_format_json_writes_one_object_per_line() {
    let a = Appliance::with_org_key("p256");
    let admin = a.client("admin", "admin");
    let s = a.serve_env(&["--log-format", "json"], &[("ORGKEY_LOG", "info")]);
    assert_eq!(ignite(&s, &admin, PASSPHRASE).await.status(), 200);
    // A bearer token of a known client with a wrong secret is logged with
    // the client's name.
    let (id, _) = admin.strip_prefix("okc_").unwrap().split_once('_').unwrap();
    let forged = format!("okc_{id}_{}", "A".repeat(43));
    let r = http()
        .get(s.url("/v1/status"))
        .bearer_auth(&forged)
        .send()
        .await
        .unwrap();
    assert_error(r, 401, "unauthorized").await;
    let url = s.url.clone();
    assert!(s.stop().success());

    let log = std::fs::read_to_string(a.path("serve.log")).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: not JSON: {l:?}")))
        .collect();
    assert!(lines.len() >= 4, "{log}");
    for l in &lines {
        for key in ["timestamp", "level", "target"] {
            assert!(l[key].is_string(), "no {key} in {l}");
        }
        assert!(l["fields"]["message"].is_string(), "no message in {l}");
    }
    let find = |message: &str| {
        lines
            .iter()
            .find(|l| l["fields"]["message"] == message)
            .unwrap_or_else(|| panic!("no {message:?} line in:\n{log}"))
    };
    let listening = find("listening");
    assert_eq!(listening["level"], "INFO");
    assert_eq!(
        format!("http://{}", listening["fields"]["addr"].as_str().unwrap()),
        url
    );
    let ignited = find("appliance ignited");
    assert_eq!(ignited["fields"]["client"], "admin");
    assert_eq!(ignited["target"], "orgkey::api::ignition");
    let refused = find("bearer token with a wrong secret");
    assert_eq!(refused["level"], "WARN");
    assert_eq!(refused["fields"]["client"], "admin");
    // Neither the passphrase nor a bearer secret is ever logged.
    let secret = admin.rsplit_once('_').unwrap().1;
    for text in [PASSPHRASE, secret, &"A".repeat(43)] {
        assert!(!log.contains(text), "{text:?} in the log");
    }
}
