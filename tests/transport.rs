//! Slow and idle clients against a real `orgkey serve`: connections that
//! send half a request head, nothing at all or a stalled HTTP/2 preface are
//! closed after `[server] header_read_timeout`; connections over
//! `[server] max_connections` are closed at once; a body that stops coming
//! is cut off at `[server] body_timeout` without a signature; an idle
//! keep-alive connection is closed after `[server] idle_timeout`; `serve`
//! raises its open-file limit to fit `max_connections`. Real clients keep
//! being served meanwhile.
//!
//! The timeouts here are short and every wait for the server is long (tens
//! of seconds, ended as soon as the awaited thing happens): the tests hold
//! on a loaded machine and never depend on exact timings.

mod common;
use common::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest any test waits for the server to do something it should do in
/// about a second.
const PATIENCE: Duration = Duration::from_secs(30);

fn addr(s: &Server) -> String {
    s.url.strip_prefix("http://").unwrap().to_string()
}

/// Open sockets of the server process on its API port.
fn server_sockets(s: &Server) -> usize {
    // Only sockets on the API port (the listener and its connections): a
    // PostgreSQL store's pool opens database connections as it likes.
    let port: u16 = addr(s)
        .parse::<std::net::SocketAddr>()
        .expect("the server's address")
        .port();
    let mut api = std::collections::HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // Field 1 is the local "ADDR:PORT" in hex, field 9 the inode.
            let local = f.get(1).and_then(|a| a.rsplit(':').next());
            if local.and_then(|p| u16::from_str_radix(p, 16).ok()) == Some(port)
                && let Some(inode) = f.get(9)
            {
                api.insert(format!("socket:[{inode}]"));
            }
        }
    }
    std::fs::read_dir(format!("/proc/{}/fd", s.child.id()))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|l| api.contains(&*l.to_string_lossy()))
        .count()
}

/// Whether the server closed `c` (end of stream, or a reset) within `wait`;
/// whatever it sent before is returned too.
async fn closed_within(c: &mut TcpStream, wait: Duration) -> (bool, Vec<u8>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let until = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(until, c.read(&mut buf)).await {
            Err(_) => return (false, got),
            Ok(Ok(0)) | Ok(Err(_)) => return (true, got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// An ignited appliance with a p256 org key and `settings` under
/// `[server]`, served; returns it with a sign client's token.
fn serve_with(settings: &[(&str, toml::Value)]) -> (Appliance, Server, String) {
    let a = Appliance::with_org_key("p256");
    for (k, v) in settings {
        a.set_config(&format!("server.{k}"), v.clone());
    }
    let gw = a.client("gateway", "sign");
    let s = a.serve(&["--ignition-passphrase-file", a.pin_file.to_str().unwrap()]);
    (a, s, gw)
}

async fn sign_status(client: &reqwest::Client, s: &Server, token: &str) -> u16 {
    match client
        .post(s.url("/v1/sign"))
        .bearer_auth(token)
        .body("data")
        .send()
        .await
    {
        Ok(r) => r.status().as_u16(),
        Err(e) => panic!("a real client's request failed: {e}"),
    }
}

#[tokio::test]
async fn slow_and_silent_connections_are_closed_while_signing_goes_on() {
    const CAP: usize = 20;
    const FLOOD: usize = 120;
    let (_a, s, gw) = serve_with(&[
        ("header_read_timeout", "1s".into()),
        ("max_connections", (CAP as i64).into()),
    ]);
    // The gateway's connection is open before the flood, as a pooled
    // keep-alive connection is.
    let client = http();
    assert_eq!(sign_status(&client, &s, &gw).await, 200);
    let baseline = server_sockets(&s);

    let stop = Arc::new(AtomicBool::new(false));
    let signed = Arc::new(AtomicUsize::new(0));
    let gateway = {
        let (stop, signed, client, gw) = (
            Arc::clone(&stop),
            Arc::clone(&signed),
            client.clone(),
            gw.clone(),
        );
        let url = s.url("/v1/sign");
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let r = client.post(&url).bearer_auth(&gw).body("data").send().await;
                let status = r.map(|r| r.status().as_u16()).map_err(|e| e.to_string());
                assert_eq!(status, Ok(200), "signing during the flood");
                signed.fetch_add(1, Ordering::SeqCst);
            }
        })
    };

    // Half a request head, nothing at all, the start of the HTTP/2 preface.
    let mut flood = Vec::new();
    for i in 0..FLOOD {
        let mut c = TcpStream::connect(addr(&s)).await.unwrap();
        let start: &[u8] = match i % 3 {
            0 => b"POST /v1/sign HTTP/1.1\r\nHost: orgkey\r\nAuthorization: Bearer okc_",
            1 => b"",
            _ => b"PRI * HTTP/2.0\r\n",
        };
        // A connection over the cap may be closed already.
        let _ = c.write_all(start).await;
        flood.push(c);
    }
    let signed_before = signed.load(Ordering::SeqCst);
    let mut most_sockets = 0;
    let started = Instant::now();
    let mut open: Vec<TcpStream> = flood;
    while !open.is_empty() {
        most_sockets = most_sockets.max(server_sockets(&s));
        assert!(
            started.elapsed() < PATIENCE,
            "{} of {FLOOD} connections still open after {PATIENCE:?}",
            open.len()
        );
        let mut still = Vec::new();
        for mut c in open {
            if !closed_within(&mut c, Duration::from_millis(20)).await.0 {
                still.push(c);
            }
        }
        open = still;
    }
    // The gateway kept signing while the flood was held and closed.
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::SeqCst);
    gateway
        .await
        .expect("every signature during the flood was a 200");
    assert!(
        signed.load(Ordering::SeqCst) > signed_before,
        "signatures during the flood"
    );
    // The cap held: never more than CAP flood sockets (on top of the
    // listener and the gateway's connection: the one being accepted).
    assert!(
        most_sockets <= CAP + baseline + 1,
        "{most_sockets} server sockets with a cap of {CAP} (baseline {baseline})"
    );
    // Nothing of the flood is left in the server, and new clients are served.
    assert!(server_sockets(&s) <= baseline + 1, "{}", server_sockets(&s));
    assert_eq!(sign_status(&http(), &s, &gw).await, 200);
    assert_eq!(sign_status(&client, &s, &gw).await, 200);
    assert!(
        s.stop().success(),
        "the server stops cleanly after the flood"
    );
}

#[tokio::test]
async fn connections_over_the_cap_are_closed_at_once() {
    const CAP: usize = 20;
    let (_a, s, gw) = serve_with(&[
        ("header_read_timeout", "1m".into()),
        ("max_connections", (CAP as i64).into()),
    ]);
    let mut conns = Vec::new();
    for _ in 0..CAP + 10 {
        conns.push(TcpStream::connect(addr(&s)).await.unwrap());
    }
    // The ten over the cap are closed at once; the others stay open (their
    // header timeout is a minute away).
    let started = Instant::now();
    let mut held = conns;
    let mut refused = 0;
    while refused < 10 {
        assert!(started.elapsed() < PATIENCE, "only {refused} of 10 refused");
        let mut still = Vec::new();
        for mut c in held {
            if closed_within(&mut c, Duration::from_millis(10)).await.0 {
                refused += 1;
            } else {
                still.push(c);
            }
        }
        held = still;
    }
    assert_eq!(held.len(), CAP);
    for c in &mut held {
        assert!(
            !closed_within(c, Duration::from_millis(50)).await.0,
            "a connection within the cap was closed"
        );
    }
    // While the cap is taken, a new client is turned away, not queued.
    let r = http()
        .post(s.url("/v1/sign"))
        .bearer_auth(&gw)
        .body("x")
        .send()
        .await;
    assert!(r.is_err(), "{r:?}");
    // Once connections end, new ones are served.
    drop(held);
    let started = Instant::now();
    loop {
        match http()
            .post(s.url("/v1/sign"))
            .bearer_auth(&gw)
            .body("x")
            .send()
            .await
        {
            Ok(r) => {
                assert_eq!(r.status(), 200);
                break;
            }
            Err(e) => assert!(started.elapsed() < PATIENCE, "{e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_body_that_stops_coming_is_cut_off_without_a_signature() {
    let (a, s, gw) = serve_with(&[("body_timeout", "2s".into())]);
    let admin = a.client("admin", "admin");
    let issuer = a.client("issuer", "issue");
    // /v1/sign streams its body (chunked here); the others read it whole.
    let requests = [
        format!(
            "POST /v1/sign HTTP/1.1\r\nHost: orgkey\r\nAuthorization: Bearer {gw}\r\n\
             Transfer-Encoding: chunked\r\n\r\n400\r\n{}\r\n",
            "a".repeat(0x400)
        ),
        format!(
            "POST /v1/sign HTTP/1.1\r\nHost: orgkey\r\nAuthorization: Bearer {gw}\r\n\
             Content-Length: 100000\r\n\r\n{}",
            "b".repeat(1000)
        ),
        format!(
            "POST /v1/ignition HTTP/1.1\r\nHost: orgkey\r\nAuthorization: Bearer {admin}\r\n\
             Content-Type: application/json\r\nContent-Length: 200\r\n\r\n{{\"passphrase\": \""
        ),
        format!(
            "POST /v1/x509/issue HTTP/1.1\r\nHost: orgkey\r\nAuthorization: Bearer {issuer}\r\n\
             Content-Length: 2000\r\n\r\n-----BEGIN CERTIFICATE REQUEST-----\n"
        ),
    ];
    let mut conns = Vec::new();
    for req in &requests {
        let mut c = TcpStream::connect(addr(&s)).await.unwrap();
        c.write_all(req.as_bytes()).await.unwrap();
        conns.push(c);
    }
    for (mut c, req) in conns.into_iter().zip(&requests) {
        let what = req.lines().next().unwrap();
        let (closed, got) = closed_within(&mut c, PATIENCE).await;
        let got = String::from_utf8_lossy(&got);
        assert!(closed, "{what}: still open after {PATIENCE:?}");
        assert!(got.starts_with("HTTP/1.1 408"), "{what}: {got}");
        assert!(got.contains("\"body_timeout\""), "{what}: {got}");
        assert!(!got.contains("PGP"), "{what}: {got}");
    }
    // Real clients are served as before.
    assert_eq!(sign_status(&http(), &s, &gw).await, 200);
    assert!(s.stop().success());
    let audit = a.ok(&["audit", "list"], false);
    assert_eq!(
        audit.matches("\tsign\tok").count(),
        1,
        "only the real client's signature: {audit}"
    );
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let (_a, s, _gw) = serve_with(&[
        ("header_read_timeout", "1s".into()),
        ("idle_timeout", "5s".into()),
    ]);
    let mut c = TcpStream::connect(addr(&s)).await.unwrap();
    c.write_all(b"GET /v1/health HTTP/1.1\r\nHost: orgkey\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&got).contains("\"ok\"") {
        let n = tokio::time::timeout(PATIENCE, c.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed before the response");
        got.extend_from_slice(&buf[..n]);
    }
    let answered = Instant::now();
    // Between requests the idle timeout counts, not the header timeout.
    let (closed, _) = closed_within(&mut c, Duration::from_secs(2)).await;
    assert!(
        !closed,
        "closed {:?} after the response",
        answered.elapsed()
    );
    let (closed, _) = closed_within(&mut c, PATIENCE).await;
    assert!(closed, "an idle connection stays open");
}

/// `(soft, hard)` RLIMIT_NOFILE of a process (`None`: unlimited).
fn open_file_limits(pid: u32) -> (Option<u64>, Option<u64>) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    let value = |f: &str| f.parse::<u64>().ok();
    (value(fields[3]), value(fields[4]))
}

#[tokio::test]
async fn serve_raises_its_open_file_limit_to_fit_max_connections() {
    let a = Appliance::with_org_key("p256");
    let gw = a.client("gateway", "sign");
    // One cap that fits common hard limits, one that does not.
    for cap in [4000u64, 1 << 20] {
        a.set_config("server.max_connections", cap as i64);
        // Start with a soft limit far below the cap, as many systems do.
        let mut c = std::process::Command::new("bash");
        c.args(["-c", "ulimit -S -n 512; exec \"$0\" \"$@\"", bin()]);
        let s = a.serve_command(c);
        let (soft, hard) = open_file_limits(s.child.id());
        let wanted = cap + 256;
        match hard {
            Some(hard) if hard < wanted => {
                // Raised as far as allowed, and the shortfall is reported.
                assert_eq!(soft, Some(hard), "cap {cap}");
                let log = std::fs::read_to_string(&s.log).unwrap();
                assert!(log.contains("fewer client connections"), "{log}");
            }
            _ => assert!(
                soft.is_none_or(|soft| soft >= wanted),
                "cap {cap}: {soft:?}"
            ),
        }
        let r = post(&s, "/v1/sign", &gw, b"x".to_vec()).await;
        assert_error(r, 503, "sealed").await;
    }
}
