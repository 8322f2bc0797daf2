//! A network HSM across containers (issue 12, cluster faults item 5):
//! SoftHSM2 behind `p11-kit server` in a container of its own, its socket
//! shared with an orgkey node through a Docker volume; the node reaches its
//! token only through the p11-kit client module. The HSM container is
//! killed during a signing load: the node answers 503 and returns no
//! signature, and heals by itself when the HSM container is back. Every 2xx
//! has exactly one audit row and the audit chain verifies.

mod common;

use common::*;
use orgkey_testcontainers::testcontainers::core::{ContainerPort, ExecCommand, Mount, WaitFor};
use orgkey_testcontainers::testcontainers::runners::AsyncRunner;
use orgkey_testcontainers::testcontainers::{ContainerAsync, GenericImage, ImageExt};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The user PIN of the HSM's token, which is the node's ignition passphrase.
const PIN: &str = "network-hsm-user-pin";

/// The socket is in the volume both containers mount at /run/orgkey (a new
/// volume takes that directory's owner from the image: the `orgkey` user
/// both run as). A restart keeps the token: it is initialized once.
const HSM_SCRIPT: &str = r#"set -e
conf=/var/lib/orgkey-dev/hsm/softhsm2.conf
if [ ! -f "$conf" ]; then
  mkdir -p /var/lib/orgkey-dev/hsm/tokens
  echo "directories.tokendir = /var/lib/orgkey-dev/hsm/tokens" > "$conf"
  SOFTHSM2_CONF=$conf softhsm2-util --init-token --free --label orgkey \
    --so-pin network-hsm-so-pin --pin "$HSM_PIN" >/dev/null
fi
rm -f /run/orgkey/hsm.sock
export SOFTHSM2_CONF=$conf
exec p11-kit server -f -n /run/orgkey/hsm.sock --provider /usr/lib/softhsm/libsofthsm2.so "pkcs11:"
"#;

/// The node: an appliance on the p11-kit client module (no token of its
/// own), started ignited with the PIN from a file.
const NODE_SCRIPT: &str = r#"set -e
umask 077
d=/var/lib/orgkey-dev/node
export ORGKEY_CONFIG=$d/orgkey.toml
if [ ! -f "$ORGKEY_CONFIG" ]; then
  mkdir -p "$d"
  printf '%s\n' "$HSM_PIN" > /var/lib/orgkey-dev/pin
  orgkey init --data-dir "$d" --domain example.com --token-label orgkey \
    --module /usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so --listen 0.0.0.0:8443
  orgkey org-key generate --uid "network HSM node <orgkey@example.com>" --passphrase-file /var/lib/orgkey-dev/pin
  orgkey client add gateway --scopes sign --token-out "$d/gateway.token" >/dev/null
fi
exec orgkey serve --insecure-plaintext --ignition-passphrase-file /var/lib/orgkey-dev/pin
"#;

async fn exec(c: &ContainerAsync<GenericImage>, cmd: &[&str]) -> (Option<i64>, String) {
    let mut r = c.exec(ExecCommand::new(cmd.iter().copied())).await.unwrap();
    let out = String::from_utf8_lossy(&r.stdout_to_vec().await.unwrap()).into_owned();
    let err = String::from_utf8_lossy(&r.stderr_to_vec().await.unwrap()).into_owned();
    (r.exit_code().await.unwrap(), format!("{out}{err}"))
}

/// Polls `url` until it answers `want` (or panics after `limit`, with the
/// node's log). Not a timing assertion: the limit only ends a broken run.
async fn until_status(
    http: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    want: u16,
    node: &ContainerAsync<GenericImage>,
) {
    let limit = Duration::from_secs(90);
    let start = std::time::Instant::now();
    loop {
        let req = match token {
            Some(t) => http.post(url).bearer_auth(t).body("probe"),
            None => http.get(url),
        };
        if let Ok(r) = req.send().await
            && r.status().as_u16() == want
        {
            return;
        }
        if start.elapsed() > limit {
            let log = String::from_utf8_lossy(&node.stderr_to_vec().await.unwrap()).into_owned();
            let tail: Vec<&str> = log
                .lines()
                .rev()
                .take(30)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            panic!(
                "{url} never answered {want}; the node's log ends:\n{}",
                tail.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_on_a_network_hsm_fails_closed_while_the_hsm_container_is_dead_and_heals() {
    if !containers_available() {
        return;
    }
    // A volume of its own for this test's socket, removed after the
    // containers (locals drop in reverse order).
    let volume = Volume(format!(
        "orgkey-test-p11-{}-{}",
        std::process::id(),
        unique_suffix()
    ));
    let hsm = GenericImage::new("orgkey", "dev")
        .with_wait_for(WaitFor::message_on_stdout("P11_KIT_SERVER_ADDRESS="))
        .with_entrypoint("/bin/bash")
        .with_cmd(["-c", HSM_SCRIPT])
        .with_env_var("HSM_PIN", PIN)
        .with_mount(Mount::volume_mount(&volume.0, "/run/orgkey"))
        .start()
        .await
        .unwrap();
    let node = GenericImage::new("orgkey", "dev")
        .with_exposed_port(ContainerPort::Tcp(8443))
        .with_wait_for(WaitFor::message_on_stdout("orgkey listening on"))
        .with_entrypoint("/bin/bash")
        .with_cmd(["-c", NODE_SCRIPT])
        .with_env_var("HSM_PIN", PIN)
        .with_env_var("P11_KIT_SERVER_ADDRESS", "unix:path=/run/orgkey/hsm.sock")
        .with_mount(Mount::volume_mount(&volume.0, "/run/orgkey"))
        .start()
        .await
        .unwrap();
    let base = format!(
        "http://{}:{}",
        node.get_host().await.unwrap(),
        node.get_host_port_ipv4(8443).await.unwrap()
    );
    let token = String::from_utf8(
        node.copy_file_from("/var/lib/orgkey-dev/node/gateway.token", Vec::new())
            .await
            .unwrap(),
    )
    .unwrap()
    .trim()
    .to_owned();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let sign = format!("{base}/v1/sign");
    until_status(&http, &format!("{base}/v1/ready"), None, 200, &node).await;
    assert_eq!(
        http.post(&sign)
            .bearer_auth(&token)
            .body("before")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // 8 clients sign in a loop while the HSM container dies and comes back.
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..8 {
        let (http, sign, token, stop) =
            (http.clone(), sign.clone(), token.clone(), Arc::clone(&stop));
        load.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let r = http
                    .post(&sign)
                    .bearer_auth(&token)
                    .body("load")
                    .send()
                    .await;
                let status = r.as_ref().map(|r| r.status().as_u16()).unwrap_or(0);
                if let Ok(r) = r {
                    let body = r.bytes().await.unwrap_or_default();
                    // A 503 never carries a signature.
                    if status != 200 {
                        assert!(
                            !body.starts_with(b"-----BEGIN PGP SIGNATURE"),
                            "signature with {status}"
                        );
                    }
                }
                statuses.push(status);
            }
            statuses
        }));
    }
    // Some signatures under load first.
    until_status(&http, &sign, Some(&token), 200, &node).await;

    // SIGKILL: the whole HSM container, server and per-connection children.
    hsm.stop_with_timeout(Some(0)).await.unwrap();
    until_status(&http, &format!("{base}/v1/ready"), None, 503, &node).await;
    let r = http
        .post(&sign)
        .bearer_auth(&token)
        .body("down")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["code"], "token_unavailable", "{body}");

    // The HSM container is back (same token): the node heals, no operator.
    hsm.start().await.unwrap();
    until_status(&http, &sign, Some(&token), 200, &node).await;
    until_status(&http, &format!("{base}/v1/ready"), None, 200, &node).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in load {
        all.extend(t.await.unwrap());
    }
    let ok = all.iter().filter(|s| **s == 200).count();
    let unavailable = all.iter().filter(|s| **s == 503).count();
    eprintln!(
        "load while the HSM container died and came back: {ok} signatures, {unavailable} 503"
    );
    assert!(
        ok > 0 && unavailable > 0,
        "{ok} ok, {unavailable} 503 under load"
    );
    let mut other: Vec<_> = all.iter().filter(|s| **s != 200 && **s != 503).collect();
    other.dedup();
    assert!(
        other.is_empty(),
        "only 200 and 503 under load, also: {other:?}"
    );

    // Every 2xx is one audit row; the chain is intact; recovery is audited.
    let (code, out) = exec(
        &node,
        &[
            "orgkey",
            "--config",
            "/var/lib/orgkey-dev/node/orgkey.toml",
            "audit",
            "verify",
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("intact"), "{out}");
    let (code, audit) = exec(
        &node,
        &[
            "orgkey",
            "--config",
            "/var/lib/orgkey-dev/node/orgkey.toml",
            "audit",
            "list",
            "--last",
            "1000000",
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{audit}");
    assert!(
        audit.contains("token-recovered"),
        "recovery is audited:\n{audit}"
    );
    let signed = audit
        .lines()
        .filter(|l| l.contains("\tgateway\tsign\tok"))
        .count();
    // The load's 200s, "before", and the probes that got 200 (two).
    assert_eq!(signed, ok + 3, "one audit row per returned signature");
}

/// A named Docker volume, removed on drop (testcontainers removes
/// containers, not the volumes they mounted).
struct Volume(String);

impl Drop for Volume {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker")
            .args(["volume", "rm", "-f", &self.0])
            .output();
    }
}

fn unique_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}
